// Lifecycle of the real `ray` binary (http-api.md §1, §8): startup refusals with exit code 2 and a message
// naming the cause, the public-bind guard, and graceful shutdown on SIGTERM with and without a request in
// flight.
#include "integration/http_test_util.hpp"

#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <string>

namespace {

using namespace ray::itest;
namespace rt = ray::test;
namespace json = boost::json;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// GET `target` on a fresh connection with `Connection: close`.
std::optional<rt::http_response> get_once(std::uint16_t port, std::string const& target,
                                          std::string const& host = "127.0.0.1") {
  rt::raw_client c(port, host);
  if (!c.send(get(target, "Connection: close\r\n"))) return std::nullopt;
  return c.read_response(rt::in(kIo));
}

// Polls GET /readyz until `pred(response)` or the deadline; the last response.
template <class Pred>
std::optional<rt::http_response> poll_readyz(std::uint16_t port, rt::deadline until, Pred pred) {
  std::optional<rt::http_response> last;
  while (std::chrono::steady_clock::now() < until) {
    last = get_once(port, "/readyz");
    if (last && pred(*last)) break;
    // Each probe is a full request/response, so this loop paces itself on the server.
  }
  return last;
}

bool has_reason(rt::http_response const& r, std::string_view reason) {
  auto body = json_body(r);
  if (!body) return false;
  auto const* reasons = body->if_contains("reasons");
  if (reasons == nullptr || !reasons->is_array()) return false;
  for (auto const& v : reasons->as_array()) {
    if (v.is_string() && v.as_string() == reason) return true;
  }
  return false;
}

std::int64_t int_field(rt::http_response const& r, std::string_view key) {
  auto body = json_body(r);
  if (!body) return -1;
  auto const* v = body->if_contains(key);
  return v != nullptr && v->is_int64() ? v->as_int64() : -1;
}

class Lifecycle : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure() && srv_) std::cerr << "ray output (tail):\n" << srv_->output_tail() << "\n";
  }
  std::unique_ptr<ray_server> srv_;
};

// ---- startup refusals
// -------------------------------------------------------------------------------------------

// Auth enabled with no key in RAY_API_KEYS (ray_process drops inherited RAY_* variables) and no digests.
TEST_F(Lifecycle, AuthEnabledWithoutKeysExitsWithCode2NamingTheKeyVariable) {
  srv_ = std::make_unique<ray_server>(with(test_config(), {{"auth", json::object{{"enabled", true}}}}));
  auto code = srv_->process().wait_exit(rt::in(kIo));
  ASSERT_TRUE(code) << "still running " << kIo.count() << " s after start with auth.enabled";
  EXPECT_EQ(*code, 2);
  auto out = srv_->process().stdout_text() + srv_->process().stderr_text();
  EXPECT_NE(lower(out).find("auth"), std::string::npos) << "output does not name auth:\n" << out;
  EXPECT_NE(out.find("RAY_API_KEYS"), std::string::npos) << "output does not name the key variable:\n" << out;
  EXPECT_EQ(out.find("gateway listening"), std::string::npos) << "it bound before refusing:\n" << out;
}

TEST_F(Lifecycle, InvalidConfigValueExitsWithCode2NamingTheField) {
  srv_ = std::make_unique<ray_server>(with(test_config(), {{"scheduler", json::object{{"maxQueue", 0}}}}));
  auto code = srv_->process().wait_exit(rt::in(kIo));
  ASSERT_TRUE(code) << "still running with scheduler.maxQueue 0";
  EXPECT_EQ(*code, 2);
  auto out = srv_->process().stdout_text() + srv_->process().stderr_text();
  EXPECT_NE(out.find("maxQueue"), std::string::npos) << "output does not name the field:\n" << out;
}

TEST_F(Lifecycle, PublicHostWithoutAuthIsRefused) {
  srv_ = std::make_unique<ray_server>(test_config({{"host", "0.0.0.0"}}));
  auto code = srv_->process().wait_exit(rt::in(kIo));
  ASSERT_TRUE(code) << "ray started on 0.0.0.0 with auth disabled and no allowUnauthenticatedPublic";
  EXPECT_NE(*code, 0);
  auto out = srv_->process().stdout_text() + srv_->process().stderr_text();
  EXPECT_NE(out.find("allowUnauthenticatedPublic"), std::string::npos)
      << "output does not say how to allow it:\n"
      << out;
  EXPECT_EQ(out.find("gateway listening"), std::string::npos) << "it bound before refusing:\n" << out;
}

TEST_F(Lifecycle, AllowUnauthenticatedPublicLetsItStart) {
  srv_ = std::make_unique<ray_server>(
      test_config({{"host", "127.0.0.2"}, {"allowUnauthenticatedPublic", true}}));
  ASSERT_TRUE(srv_->wait_listening());
  auto line = srv_->process().wait_for_json(
      [](json::object const& o) { return rt::string_field(o, "message") == "gateway listening"; },
      rt::in(kIo));
  ASSERT_TRUE(line);
  EXPECT_EQ(rt::string_field(*line, "host"), "127.0.0.2");
  EXPECT_EQ(rt::string_field(*line, "url"), "http://127.0.0.2:" + std::to_string(srv_->port()));
  auto r = get_once(srv_->port(), "/livez", "127.0.0.2");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->describe();
}

// ---- shutdown
// -------------------------------------------------------------------------------------------------

TEST_F(Lifecycle, SigtermWithoutTrafficExitsZeroWithinGrace) {
  constexpr auto grace = 1000ms;
  srv_ = std::make_unique<ray_server>(test_config({{"shutdownGraceMs", grace.count()}}));
  // No request at all: the signal follows the `gateway listening` line at once, so the handlers must be in
  // place before that line is written (a supervisor may stop the service as soon as it announced itself).
  ASSERT_TRUE(srv_->wait_listening());
  auto const t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(srv_->process().signal(SIGTERM));
  auto code = srv_->process().wait_exit(t0 + grace + 2s);
  ASSERT_TRUE(code) << "still running shutdownGraceMs + 2 s after SIGTERM";
  EXPECT_EQ(*code, 0);
}

TEST_F(Lifecycle, SigtermWithDrainMsSaysDrainingYetKeepsServingThenStops) {
  srv_ = std::make_unique<ray_server>(test_config({{"shutdownGraceMs", 1000}, {"drainMs", 1500}}));
  ASSERT_TRUE(srv_->wait_listening());
  auto const port = srv_->port();
  ASSERT_TRUE(srv_->process().signal(SIGTERM));
  ASSERT_TRUE(srv_->process().wait_for_log("draining", rt::in(kIo))) << srv_->output_tail();
  auto const draining_since = std::chrono::steady_clock::now();
  // The balancer's health check sees it at once…
  auto c = rt::raw_client(port);
  ASSERT_TRUE(c.send(get("/readyz")));
  auto ready = c.read_response(rt::in(kIo));
  ASSERT_TRUE(ready) << c.last_error();
  EXPECT_EQ(ready->status, 503) << ready->describe();
  auto body = json_body(*ready);
  ASSERT_TRUE(body);
  EXPECT_EQ(rt::string_field(*body, "status"), "draining");
  EXPECT_NE(boost::json::serialize(body->at("reasons")).find("\"draining\""), std::string::npos);
  // …while what still arrives is served (a new connection, new work).
  auto d = rt::raw_client(port);
  ASSERT_TRUE(d.send(post_json("/v1/infer", R"({"input":"arrived while draining"})")));
  auto served = d.read_response(rt::in(kIo));
  ASSERT_TRUE(served) << d.last_error();
  EXPECT_EQ(served->status, 200) << served->describe();
  EXPECT_LT(std::chrono::steady_clock::now() - draining_since, 1500ms)
      << "the checks above ran after the drain";
  // Then the graceful shutdown as without a drain.
  auto code = srv_->process().wait_exit(rt::in(kIo));
  ASSERT_TRUE(code);
  EXPECT_EQ(*code, 0);
  EXPECT_GE(*srv_->process().exited_at() - draining_since, 1000ms);  // it did wait (the drain is 1.5 s)
}

TEST_F(Lifecycle, ASecondSignalWhileDrainingShutsDownAtOnce) {
  srv_ = std::make_unique<ray_server>(test_config({{"shutdownGraceMs", 1000}, {"drainMs", 600000}}));
  ASSERT_TRUE(srv_->wait_listening());
  ASSERT_TRUE(srv_->process().signal(SIGTERM));
  ASSERT_TRUE(srv_->process().wait_for_log("draining", rt::in(kIo))) << srv_->output_tail();
  ASSERT_TRUE(srv_->process().signal(SIGTERM));
  auto code = srv_->process().wait_exit(rt::in(kIo));
  ASSERT_TRUE(code) << "a second SIGTERM did not end a 10-minute drain";
  EXPECT_EQ(*code, 0);
}

TEST_F(Lifecycle, SigintExitsZero) {
  constexpr auto grace = 1000ms;
  srv_ = std::make_unique<ray_server>(test_config({{"shutdownGraceMs", grace.count()}}));
  ASSERT_TRUE(srv_->wait_listening());
  auto const t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(srv_->process().signal(SIGINT));
  auto code = srv_->process().wait_exit(t0 + grace + 2s);
  ASSERT_TRUE(code) << "still running shutdownGraceMs + 2 s after SIGINT";
  EXPECT_EQ(*code, 0);
}

// Starts a slow /v1/infer on `c` and waits until /readyz reports it in flight.
::testing::AssertionResult start_slow_infer(rt::raw_client& c, std::uint16_t port) {
  auto ready = poll_readyz(port, rt::in(kIo), [](auto const& r) { return r.status == 200; });
  if (!ready || ready->status != 200) {
    return ::testing::AssertionFailure() << "/readyz never 200 before the test: "
                                         << (ready ? ready->describe() : std::string("no response"));
  }
  if (!c.send(post_json("/v1/infer", R"({"input":"slow request","cache":false})"))) {
    return ::testing::AssertionFailure() << c.last_error();
  }
  auto busy = poll_readyz(port, rt::in(kIo), [](auto const& r) { return int_field(r, "inFlight") >= 1; });
  if (!busy || int_field(*busy, "inFlight") < 1) {
    return ::testing::AssertionFailure() << "/readyz never reported the infer in flight: "
                                         << (busy ? busy->describe() : std::string("no response"));
  }
  return ::testing::AssertionSuccess();
}

TEST_F(Lifecycle, SigtermLetsTheInFlightRequestFinishThenExitsZero) {
  constexpr auto latency = 1000ms;
  constexpr auto grace = 3000ms;
  srv_ = std::make_unique<ray_server>(
      test_config({{"shutdownGraceMs", grace.count()}}, {{"latencyMs", latency.count()}}));
  ASSERT_TRUE(srv_->wait_listening());
  auto port = srv_->port();

  auto slow = srv_->connect();
  ASSERT_TRUE(start_slow_infer(slow, port));

  auto const t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(srv_->process().signal(SIGTERM));

  // /readyz turns 503 with reason shutting_down while the request is still running.
  auto r = poll_readyz(port, rt::in(kIo), [](auto const& r) { return r.status == 503; });
  ASSERT_TRUE(r) << "no /readyz answer after SIGTERM";
  EXPECT_EQ(r->status, 503) << r->describe();
  EXPECT_TRUE(has_reason(*r, "shutting_down")) << r->describe();
  EXPECT_FALSE(slow.wait_readable(rt::in(0ms)))
      << "the in-flight request finished before /readyz said shutting_down; the test proves nothing";

  // New work during the grace period: 503 shutting_down, Retry-After 5, connection: close.
  {
    auto c = srv_->connect();
    ASSERT_TRUE(c.send(post_json("/v1/infer", R"({"input":"late","cache":false})"))) << c.last_error();
    auto late = c.read_response(rt::in(kIo));
    ASSERT_TRUE(late) << c.last_error();
    EXPECT_TRUE(is_error(*late, 503, "shutting_down"));
    EXPECT_EQ(late->header("retry-after").value_or(""), "5") << late->describe();
    EXPECT_TRUE(closes_after(c, *late));
  }

  // The in-flight request completes normally.
  auto done = slow.read_response(rt::in(kIo));
  ASSERT_TRUE(done) << "in-flight request lost on SIGTERM: " << slow.last_error();
  EXPECT_EQ(done->status, 200) << done->describe();
  auto body = json_body(*done);
  ASSERT_TRUE(body) << done->describe();
  EXPECT_TRUE(body->contains("output")) << done->describe();

  auto code = srv_->process().wait_exit(t0 + grace + 2s);
  ASSERT_TRUE(code) << "still running shutdownGraceMs + 2 s after SIGTERM";
  EXPECT_EQ(*code, 0);
}

TEST_F(Lifecycle, SecondSignalExitsAtOnce) {
  constexpr auto latency = 5000ms;
  srv_ = std::make_unique<ray_server>(
      test_config({{"shutdownGraceMs", 20'000}}, {{"latencyMs", latency.count()}}));
  ASSERT_TRUE(srv_->wait_listening());
  auto port = srv_->port();
  auto slow = srv_->connect();
  ASSERT_TRUE(start_slow_infer(slow, port));
  ASSERT_TRUE(srv_->process().signal(SIGTERM));
  auto r = poll_readyz(port, rt::in(kIo), [](auto const& r) { return r.status == 503; });
  ASSERT_TRUE(r && r->status == 503) << "first SIGTERM not observed on /readyz";
  auto const t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(srv_->process().signal(SIGTERM));
  // "At once": well before the in-flight request (latencyMs) or the grace period could end.
  auto code = srv_->process().wait_exit(t0 + latency / 2);
  EXPECT_TRUE(code) << "second SIGTERM did not exit within latencyMs/2";
}

}  // namespace
