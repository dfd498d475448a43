// Several models on one box (spec/models.md), against the real `ray` supervising two llama-server doubles
// whose estimated sizes fit residency.memoryBudgetMiB only one at a time: load on demand, eviction of an idle
// model, a busy model never unloaded (the other request waits, or gets 503 model_swap_busy with Retry-After),
// a pinned model never unloaded, idle unload and the reload's Retry-After from the measured load time.
#include "fake_llama.hpp"
#include "http_test_util.hpp"

#include <gtest/gtest.h>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <cmath>
#include <future>
#include <thread>

namespace {

using namespace ray::itest;
using namespace std::chrono_literals;
namespace json = boost::json;
namespace rt = ray::test;

// The tiny fixture GGUF: its estimate is about 257 MiB (the 256 MiB headroom floor dominates), so a
// 400 MiB budget holds one such model and never two.
constexpr int kBudgetMiB = 400;

json::object supervised_model(std::string const& id, std::uint16_t port, json::object extra = {},
                              json::array extra_args = {}) {
  json::object launch{{"host", "127.0.0.1"},
                      {"port", port},
                      {"ctxSize", 2048},
                      {"parallel", 2},
                      {"cacheRamMiB", 0},
                      {"binaryPath", FAKE_LLAMA_SERVER},
                      {"modelPath", std::string(RAY_TEST_FIXTURES) + "/models/tiny-llama-64x2.gguf"},
                      {"supervise", true},
                      {"extraArgs", std::move(extra_args)}};
  json::object adapter{{"kind", "llama.cpp"},     {"baseUrl", "http://127.0.0.1:" + std::to_string(port)},
                       {"healthIntervalMs", 100}, {"healthTimeoutMs", 1000},
                       {"timeoutMs", 20000},      {"launchProfile", launch}};
  json::object m{{"id", id}, {"adapter", adapter}};
  for (auto const& [k, v] : extra)
    m[k] = v;
  return m;
}

json::object two_model_config(json::array models, json::object scheduler = {}) {
  json::object sched{{"maxInflightTokens", 4096}, {"maxQueuedTokens", 20000}, {"requestTimeoutMs", 20000}};
  for (auto const& [k, v] : scheduler)
    sched[k] = v;
  return json::object{{"profile", "sub1b"},
                      {"models", std::move(models)},
                      {"residency", json::object{{"memoryBudgetMiB", kBudgetMiB}}},
                      {"scheduler", std::move(sched)},
                      {"cache", json::object{{"enabled", false}}},
                      {"rateLimit", json::object{{"enabled", false}}},
                      {"gracefulDegradation", json::object{{"enabled", false}}},
                      {"telemetry", json::object{{"logLevel", "info"}}}};
}

std::string chat_body(std::string const& model, std::string const& text = "hello") {
  return json::serialize(
      json::object{{"model", model},
                   {"max_tokens", 4},
                   {"messages", json::array{json::object{{"role", "user"}, {"content", text}}}}});
}

std::optional<rt::http_response> chat(std::uint16_t port, std::string const& model,
                                      rt::deadline until = rt::in(30s)) {
  return roundtrip(port, post_json("/v1/chat/completions", chat_body(model)), until);
}

// /v1/models as {id -> object}.
std::map<std::string, json::object> models_of(std::uint16_t port) {
  std::map<std::string, json::object> out;
  auto r = roundtrip(port, get("/v1/models"));
  if (!r || r->status != 200) return out;
  auto body = json::parse(r->body).as_object();
  for (auto const& m : body.at("data").as_array())
    out[std::string(m.at("id").as_string())] = m.as_object();
  return out;
}

std::string state_of(std::uint16_t port, std::string const& id) {
  auto m = models_of(port);
  auto it = m.find(id);
  return it == m.end() ? std::string("(absent)") : std::string(it->second.at("state").as_string());
}

bool becomes(std::uint16_t port, std::string const& id, std::string const& state,
             std::chrono::steady_clock::duration within = 30s) {
  return eventually([&] { return state_of(port, id) == state; }, within);
}

// Whether anything listens on a port (the double of an unloaded model must be gone).
bool listening(std::uint16_t port) {
  return roundtrip(port, get("/health"), rt::in(1s)).has_value();
}

TEST(Models, ARequestForAnotherModelUnloadsTheIdleOneAndLoadsIt) {
  auto const pa = rt::free_loopback_port(), pb = rt::free_loopback_port();
  ray_server s(two_model_config(json::array{supervised_model("chat-a", pa), supervised_model("chat-b", pb)}),
               no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(becomes(s.port(), "chat-a", "ready")) << s.output_tail();
  auto m = models_of(s.port());
  EXPECT_EQ(std::string(m["chat-b"].at("state").as_string()), "unloaded");
  EXPECT_EQ(std::string(m["chat-a"].at("kind").as_string()), "chat");
  EXPECT_GT(m["chat-a"].at("memoryMiB").at("estimated").to_number<double>(), kBudgetMiB / 2.0)
      << "the fixture's estimate must not let both fit, or this test proves nothing";
  EXPECT_FALSE(listening(pb));

  auto r = chat(s.port(), "chat-b");
  ASSERT_TRUE(r) << s.output_tail();
  EXPECT_EQ(r->status, 200) << r->body << s.output_tail();
  EXPECT_EQ(std::string(json::parse(r->body).at("model").as_string()), "chat-b");
  m = models_of(s.port());
  EXPECT_EQ(std::string(m["chat-b"].at("state").as_string()), "ready");
  EXPECT_EQ(std::string(m["chat-a"].at("state").as_string()), "unloaded");
  EXPECT_EQ(m["chat-b"].at("loadCount").to_number<int>(), 1);
  EXPECT_FALSE(listening(pa)) << "chat-a's process exited before chat-b was loaded";
  EXPECT_EQ(counter(s.port(), R"(ray_model_unloads_total{model="chat-a",reason="evicted"})"), 1);
  EXPECT_EQ(counter(s.port(), R"(ray_model_loads_total{model="chat-b",outcome="ok"})"), 1);
  EXPECT_EQ(metric(s.port(), R"(ray_model_state{model="chat-b",state="ready"})"), 1);

  // And back: an alias, case-insensitive, names the same model.
  r = chat(s.port(), "CHAT-A");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(state_of(s.port(), "chat-a"), "ready");
  EXPECT_EQ(state_of(s.port(), "chat-b"), "unloaded");
}

TEST(Models, ABusyModelIsNeverUnloadedTheOtherRequestWaitsOrGets503WithRetryAfter) {
  auto const pa = rt::free_loopback_port(), pb = rt::free_loopback_port();
  ray_server s(two_model_config(json::array{supervised_model("chat-a", pa), supervised_model("chat-b", pb)}),
               no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(becomes(s.port(), "chat-a", "ready")) << s.output_tail();
  auto const a_load_ms = models_of(s.port())["chat-a"].at("lastLoadMs").to_number<double>();

  // chat-a busy: its double holds every request after prefill.
  ASSERT_TRUE(roundtrip(pa, post_json("/__control", R"({"hang_before_first_token":true})")));
  auto const busy_since = std::chrono::steady_clock::now();
  auto busy = std::async(std::launch::async, [&] { return chat(s.port(), "chat-a", rt::in(60s)); });
  ASSERT_TRUE(eventually([&] {
    auto st = roundtrip(pa, get("/__stats"));
    return st && num(json::parse(st->body).as_object(), "processing") >= 1;
  })) << "the chat-a request never reached its double";

  // Right away, a chat-b request cannot be served before chat-a's request has drained and chat-b loaded:
  // 503 model_swap_busy with Retry-After, chat-a untouched.
  auto refused = chat(s.port(), "chat-b");
  ASSERT_TRUE(refused);
  EXPECT_TRUE(is_error(*refused, 503, "model_swap_busy")) << refused->body;
  ASSERT_TRUE(refused->header("retry-after")) << refused->raw_head;
  EXPECT_GE(std::stoi(*refused->header("retry-after")), 1);
  EXPECT_EQ(state_of(s.port(), "chat-a"), "ready");
  EXPECT_EQ(state_of(s.port(), "chat-b"), "unloaded");

  // Once chat-a's request has run longer than a load takes, chat-b's wait fits its deadline: it waits.
  std::this_thread::sleep_until(busy_since + std::chrono::milliseconds(static_cast<int>(a_load_ms)) + 1s);
  auto waiting = std::async(std::launch::async, [&] { return chat(s.port(), "chat-b", rt::in(60s)); });
  // While it waits (it holds chat-b: /health counts it), chat-a (busy) is not unloaded and chat-b not loaded.
  ASSERT_TRUE(eventually([&] {
    auto h = roundtrip(s.port(), get("/health"));
    if (!h || h->status != 200) return false;
    auto const health = json::parse(h->body);
    for (auto const& m : health.at("models").as_array())
      if (m.at("id") == "chat-b") return m.at("requests").to_number<int>() == 1;
    return false;
  })) << "the chat-b request never arrived";
  EXPECT_EQ(waiting.wait_for(300ms), std::future_status::timeout)
      << "chat-b was served while chat-a was busy";
  EXPECT_EQ(state_of(s.port(), "chat-a"), "ready");
  EXPECT_TRUE(listening(pa));
  EXPECT_EQ(state_of(s.port(), "chat-b"), "unloaded");

  // chat-a finishes; then chat-a is unloaded, chat-b loaded, and the waiting request answered.
  ASSERT_TRUE(roundtrip(pa, post_json("/__control", R"({"hang_before_first_token":false})")));
  auto done = busy.get();
  ASSERT_TRUE(done);
  EXPECT_EQ(done->status, 200) << done->body;
  auto served = waiting.get();
  ASSERT_TRUE(served) << s.output_tail();
  EXPECT_EQ(served->status, 200) << served->body << s.output_tail();
  EXPECT_EQ(state_of(s.port(), "chat-b"), "ready");
  EXPECT_EQ(state_of(s.port(), "chat-a"), "unloaded");
}

TEST(Models, APinnedModelIsNeverUnloaded) {
  auto const pa = rt::free_loopback_port(), pb = rt::free_loopback_port();
  ray_server s(two_model_config(json::array{supervised_model("chat-a", pa, {{"pinned", true}}),
                                            supervised_model("chat-b", pb)}),
               no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(becomes(s.port(), "chat-a", "ready")) << s.output_tail();
  EXPECT_TRUE(models_of(s.port())["chat-a"].at("pinned").as_bool());
  auto r = chat(s.port(), "chat-b");
  ASSERT_TRUE(r);
  EXPECT_TRUE(is_error(*r, 503, "model_swap_busy")) << r->body;
  EXPECT_NE(r->body.find("pinned"), std::string::npos) << r->body;
  EXPECT_TRUE(r->header("retry-after"));
  EXPECT_EQ(state_of(s.port(), "chat-a"), "ready");
  EXPECT_EQ(state_of(s.port(), "chat-b"), "unloaded");
  EXPECT_EQ(counter(s.port(), R"(ray_model_unloads_total{model="chat-a",reason="evicted"})"), 0);
  r = chat(s.port(), "chat-a");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

// chat-b loads slowly (its double answers 503 loading for 1.5 s) and unloads after 1 s idle; a request may
// wait 1 s for a load (queueTimeoutMs), so each load is answered 503 model_swap_busy with the expected load
// time — estimated the first time, then the measured one — and the reload indeed takes that long.
TEST(Models, IdleUnloadThenTheReloadsRetryAfterIsTheMeasuredLoadTime) {
  auto const pa = rt::free_loopback_port(), pb = rt::free_loopback_port();
  ray_server s(two_model_config(json::array{supervised_model("chat-a", pa),
                                            supervised_model("chat-b", pb, {{"idleUnloadMs", 1000}},
                                                             json::array{"--load-delay-ms", "1500"})},
                                json::object{{"queueTimeoutMs", 1000}}),
               no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(becomes(s.port(), "chat-a", "ready")) << s.output_tail();
  EXPECT_EQ(models_of(s.port())["chat-a"].count("idleUnloadMs"), 0u);

  // First load of chat-b: refused with the estimate, the load goes on; once ready, served.
  auto first = chat(s.port(), "chat-b");
  ASSERT_TRUE(first);
  ASSERT_TRUE(is_error(*first, 503, "model_swap_busy")) << first->body;
  ASSERT_TRUE(becomes(s.port(), "chat-b", "ready")) << s.output_tail();
  auto m = models_of(s.port())["chat-b"];
  auto const measured = m.at("lastLoadMs").to_number<double>();
  EXPECT_FALSE(m.contains("lastLoadMsEstimated"));
  EXPECT_GE(measured, 1400) << "the double's 1.5 s load delay is part of the measured load";
  auto ok = chat(s.port(), "chat-b");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;

  // Idle for idleUnloadMs → unloaded (its process gone).
  auto const last_use = std::chrono::steady_clock::now();
  ASSERT_TRUE(becomes(s.port(), "chat-b", "unloaded", 10s)) << s.output_tail();
  auto const idle_for =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - last_use);
  EXPECT_GE(idle_for.count(), 900) << "unloaded before idleUnloadMs";
  EXPECT_EQ(counter(s.port(), R"(ray_model_unloads_total{model="chat-b",reason="idle"})"), 1);
  EXPECT_TRUE(eventually([&] { return !listening(pb); }, 10s));

  // The next request reloads it and is told the measured load time.
  auto const asked = std::chrono::steady_clock::now();
  auto again = chat(s.port(), "chat-b");
  ASSERT_TRUE(again);
  ASSERT_TRUE(is_error(*again, 503, "model_swap_busy")) << again->body;
  ASSERT_TRUE(again->header("retry-after-ms")) << again->raw_head;
  double const told = std::stod(*again->header("retry-after-ms"));
  EXPECT_NEAR(told, measured, measured * 0.2) << "retry-after-ms vs the last measured load";
  ASSERT_TRUE(becomes(s.port(), "chat-b", "ready")) << s.output_tail();
  double const took =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - asked).count();
  EXPECT_NEAR(told, took, took * 0.2) << "retry-after-ms vs how long the reload took";
  std::cout << "[ models ] first load " << measured << " ms; reload told " << told << " ms, took " << took
            << " ms\n";
  auto served = chat(s.port(), "chat-b");
  ASSERT_TRUE(served);
  EXPECT_EQ(served->status, 200);
}

TEST(Models, AChatRequestToAnEmbeddingModelIsAKindMismatch) {
  ray_server s(json::object{{"profile", "tiny"},
                            {"models", json::array{json::object{{"id", "chat"}},
                                                   json::object{{"id", "embed"}, {"kind", "embedding"}}}}},
               no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto r = chat(s.port(), "embed");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400) << r->body;
  EXPECT_NE(r->body.find("model_kind_mismatch"), std::string::npos) << r->body;
  auto m = models_of(s.port());
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(std::string(m["embed"].at("kind").as_string()), "embedding");
  EXPECT_EQ(std::string(m["embed"].at("state").as_string()), "ready") << "a mock model is always resident";
  auto h = roundtrip(s.port(), get("/health"));
  ASSERT_TRUE(h);
  EXPECT_EQ(json::parse(h->body).at("models").as_array().size(), 2u);
  auto ready = roundtrip(s.port(), get("/readyz"));
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(json::parse(ready->body).at("models").as_array().size(), 2u);
}

TEST(Models, AModelThatCannotFitTheBudgetAloneIsRefusedAtStart) {
  auto const pa = rt::free_loopback_port();
  auto cfg = two_model_config(json::array{supervised_model("chat-a", pa)});
  cfg["residency"] = json::object{{"memoryBudgetMiB", 100}};
  ray_server s(cfg, no_host_pressure());
  auto code = s.process().wait_exit(rt::in(kIo));
  ASSERT_TRUE(code) << s.output_tail();
  EXPECT_EQ(*code, 1);
  EXPECT_NE(s.output_tail().find("residency.memoryBudgetMiB"), std::string::npos) << s.output_tail();
}

}  // namespace
