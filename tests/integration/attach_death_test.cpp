// An attached llama-server's death shows on /readyz at once, not at the next /health poll: Ray (`ray serve
// --backend-url`, the llama.cpp adapter) keeps one connection of its own to the backend with a read pending
// (remote.cpp, watch_loop); when it closes, one probe runs at once. The double
// (tests/support/fake_llama_server) is killed with SIGKILL, restarted on the same port, and made to close
// idle connections quickly.
//
// The poll interval is set far above every wait here, so the poll cannot explain a flip: each flip is
// measured against the kill and printed ("[ measured ] …").
#include "fake_llama.hpp"

#include <csignal>
#include <cstdio>
#include <thread>

namespace ray::itest {
namespace {

namespace json = boost::json;
using steady = std::chrono::steady_clock;

constexpr int kLongPollMs = 30000;                    // no poll happens during any wait of a test using it
constexpr auto kFlipWait = std::chrono::seconds(10);  // far below kLongPollMs
// A flip this soon after the kill was the watch's doing (the poll is kLongPollMs, or 4 s in the restart test,
// and its last probe ran just before the kill). The measured figure is printed; it is milliseconds.
constexpr double kFlipBoundMs = 1000;

// Attached to the double by --backend-url, polling /health every `interval_ms`.
json::object attach_config(int interval_ms) {
  json::object a{{"kind", "llama.cpp"},
                 {"healthIntervalMs", interval_ms},
                 {"healthTimeoutMs", 2000},
                 {"timeoutMs", 5000},
                 {"launchProfile", nullptr}};
  return {{"profile", "sub1b"},
          {"model", json::object{{"id", "tiny-llama"}, {"adapter", a}}},
          {"rateLimit", json::object{{"enabled", false}}}};
}

struct readiness {
  int status{0};
  std::string provider;
};

readiness readyz(std::uint16_t port) {
  auto r = roundtrip(port, get("/readyz"));
  if (!r) return {};
  auto b = json_body(*r);
  return {r->status, b ? rt::string_field(*b, "providerStatus") : std::string()};
}

::testing::AssertionResult ready(ray_server& s, steady::duration within = kIo) {
  if (eventually(
          [&] {
            auto r = readyz(s.port());
            return r.status == 200 && r.provider == "ready";
          },
          within))
    return ::testing::AssertionSuccess();
  auto r = readyz(s.port());
  return ::testing::AssertionFailure()
         << "Ray not ready: /readyz " << r.status << " providerStatus `" << r.provider << "`\n"
         << s.output_tail();
}

std::int64_t stat(fake_llama const& f, std::string_view key) {
  return num(f.stats(), key);
}

// GET /health requests the double received.
std::int64_t health_requests(fake_llama const& f) {
  auto st = f.stats();
  auto const* req = st.if_contains("requests");
  if (!req || !req->is_object()) return 0;
  return std::max<std::int64_t>(0, num(req->as_object(), "/health"));
}

// Ray's watch is connected to the double: an open connection on which no request ever came.
::testing::AssertionResult watched(fake_llama const& f, ray_server& s) {
  if (eventually([&] { return stat(f, "silent_connections") >= 1; })) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "no watch connection on the double: " << json::serialize(f.stats()) << "\n"
         << s.output_tail();
}

// SIGKILLs the double, then polls /readyz about every 20 ms (bounded by kFlipWait) until it says 503; returns
// the milliseconds from the kill to that answer, nullopt when it never came.
std::optional<double> kill_and_time_the_flip(fake_llama& f, ray_server& s, std::string const& label) {
  auto const killed = steady::now();
  if (!f.process().signal(SIGKILL)) return std::nullopt;
  while (steady::now() - killed < kFlipWait) {
    auto r = readyz(s.port());
    if (r.status == 503) {
      double const ms = rt::ms(steady::now() - killed);
      std::printf("[ measured ] %s: /readyz 503 (providerStatus %s) %.1f ms after SIGKILL\n", label.c_str(),
                  r.provider.c_str(), ms);
      std::fflush(stdout);
      EXPECT_EQ(r.provider, "unreachable");
      return ms;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the polling period of a bounded wait
  }
  return std::nullopt;
}

// ---- 1. death

TEST(AttachDeath, AKilledBackendShowsOnReadyzLongBeforeTheNextPoll) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(attach_config(kLongPollMs), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  EXPECT_TRUE(watched(f, s));  // not fatal: without a watch, the flip below must fail too
  auto const polls = health_requests(f);

  auto flip = kill_and_time_the_flip(f, s, "killed");
  ASSERT_TRUE(flip) << "/readyz still " << readyz(s.port()).status << " " << rt::ms(kFlipWait)
                    << " ms after SIGKILL (the poll is every " << kLongPollMs << " ms)\n"
                    << s.output_tail();
  EXPECT_LT(*flip, kFlipBoundMs);
  EXPECT_EQ(polls, 1) << "only the first probe ran before the kill";
  EXPECT_EQ(f.process().wait_exit(rt::in(kIo)), -SIGKILL);
  EXPECT_FALSE(s.process().has_exited());
}

// ---- 2. restart on the same port

TEST(AttachDeath, ABackendRestartedOnTheSamePortIsReadyAgainAndWatchedAgain) {
  // The poll brings the restarted double back (nothing else probes an unreachable backend), so it is short
  // enough to wait for; the second kill follows the probe that found the new double at once, so a flip
  // within kFlipBoundMs (< interval / 2) is again the watch's.
  constexpr int kPollMs = 4000;
  static_assert(kFlipBoundMs < kPollMs / 2);
  auto f = std::make_unique<fake_llama>(std::vector<std::string>{"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f->ok()) << f->output();
  ray_server s(attach_config(kPollMs), attach(*f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  ASSERT_TRUE(watched(*f, s));

  auto first = kill_and_time_the_flip(*f, s, "first kill");
  ASSERT_TRUE(first) << s.output_tail();
  EXPECT_LT(*first, kFlipBoundMs);
  ASSERT_EQ(f->process().wait_exit(rt::in(kIo)), -SIGKILL);

  auto const port = f->port();
  f = std::make_unique<fake_llama>(std::vector<std::string>{"-c", "2048", "-np", "2"}, port);
  ASSERT_TRUE(f->ok()) << f->output();
  ASSERT_TRUE(ready(s, kIo + std::chrono::milliseconds(kPollMs)));
  EXPECT_EQ(metric(s.port(), "ray_backend_restarts_total"), 1) << "refused, then answering: one restart";
  ASSERT_TRUE(watched(*f, s)) << "the watch did not reconnect to the restarted double";

  auto second = kill_and_time_the_flip(*f, s, "second kill (restarted double)");
  ASSERT_TRUE(second) << s.output_tail();
  EXPECT_LT(*second, kFlipBoundMs);
  EXPECT_FALSE(s.process().has_exited());
}

// ---- 3. a backend that keeps closing idle connections

TEST(AttachDeath, ABackendClosingIdleConnectionsCausesNoReconnectStorm) {
  // Every idle connection is closed after 100 ms: the watch's too. Each close is followed by one probe (it
  // could have been a death); the probe says ok, so the watch reconnects — at once the first time, then not
  // before healthIntervalMs (30 s) has passed. Over 3 s: the first probe and two after closes, not ~30.
  constexpr std::int64_t kExpected = 3;
  constexpr std::int64_t kBound = 5;
  fake_llama f({"-c", "2048", "-np", "2", "--keep-alive-ms", "100"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(attach_config(kLongPollMs), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));

  // The watch saw the double close it, probed, reconnected once, and saw that close too.
  ASSERT_TRUE(eventually([&] { return health_requests(f) >= kExpected; }))
      << "GET /health received: " << health_requests(f) << " (the watch never saw a close?)\n"
      << s.output_tail();
  auto const settled_at = steady::now();
  // Then ~3 s of idle attach: a storm would show here (a deadline-bounded wait for the failure).
  bool const storm = eventually([&] { return health_requests(f) > kBound; }, std::chrono::seconds(3));
  auto const n = health_requests(f);
  std::printf(
      "[ measured ] %lld GET /health in all, %.0f ms of idle attach with a 100 ms keep-alive after the "
      "watch's first reconnect\n",
      static_cast<long long>(n), rt::ms(steady::now() - settled_at));
  std::fflush(stdout);
  EXPECT_FALSE(storm) << n << " GET /health: the watch reconnects in a loop";
  EXPECT_LE(n, kBound);
  // Closes the probe found harmless are no state change.
  auto r = readyz(s.port());
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.provider, "ready");
  for (auto const& line : s.process().json_lines()) {
    if (rt::string_field(line, "message") != "provider state changed") continue;
    EXPECT_NE(rt::string_field(line, "from"), "ready") << json::serialize(line);
  }

  // stop() ends the watch: a SIGTERMed Ray exits 0 promptly (no sanitizer report), its watch closed.
  ASSERT_TRUE(s.process().signal(SIGTERM));
  auto code = s.process().wait_exit(rt::in(kIo));
  ASSERT_TRUE(code) << "Ray still running after SIGTERM\n" << s.output_tail();
  EXPECT_EQ(*code, 0) << s.output_tail();
  EXPECT_EQ(s.process().output().find("Sanitizer"), std::string::npos) << s.output_tail();
  EXPECT_TRUE(eventually([&] { return stat(f, "silent_connections") == 0; }));
}

}  // namespace
}  // namespace ray::itest
