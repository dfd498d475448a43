// The overload-crash issue and the review findings that go with it, each against the real binary. Test names
// carry the finding they guard (see the issue's closing note for the map).
#include "fake_llama.hpp"

#include <csignal>
#include <fstream>
#include <mutex>
#include <thread>

namespace ray::itest {
namespace {

constexpr std::string_view kKeyA = "key-A-0123456789abcdef";
constexpr std::string_view kKeyB = "key-B-fedcba9876543210";

std::string bearer(std::string_view key) {
  return "Authorization: Bearer " + std::string(key) + "\r\n";
}

// Outcome counts of a burst: status → count, plus answers that broke the contract.
struct tally {
  std::mutex mu;
  std::map<int, int> statuses;
  std::vector<std::string> broken;  // 5xx other than 503, 503 without Retry-After, no answer at all

  void add(std::optional<rt::http_response> const& r, std::string const& why_missing) {
    std::lock_guard lock(mu);
    if (!r) {
      broken.push_back("no answer: " + why_missing);
      return;
    }
    ++statuses[r->status];
    if (r->status >= 500 && r->status != 503) broken.push_back(r->describe());
    if (r->status == 503 && !r->has_header("retry-after")) broken.push_back("503 without Retry-After");
  }
  int count(int status) {
    std::lock_guard lock(mu);
    return statuses.contains(status) ? statuses[status] : 0;
  }
};

// `total` distinct /v1/infer requests from `connections` concurrent clients, one request per connection
// (Connection: close), as the crash recipe sent them.
void burst(std::uint16_t port, int total, int connections, tally& t, std::string const& tag) {
  std::atomic<int> next{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < connections; ++c) {
    clients.emplace_back([&] {
      for (int i = next++; i < total; i = next++) {
        rt::raw_client cl(port);
        std::string body = R"({"input":"distinct )" + tag + "-" + std::to_string(i) + R"(","cache":false})";
        if (!cl.send(post_json("/v1/infer", body, "Connection: close\r\n"))) {
          t.add(std::nullopt, "send failed: " + cl.last_error());
          continue;
        }
        auto r = cl.read_response(rt::in(30s));
        t.add(r, cl.last_error());
      }
    });
  }
  for (auto& th : clients)
    th.join();
}

boost::json::object crash_recipe(int latency_ms) {
  return boost::json::object{
      {"profile", "tiny"},
      {"model",
       boost::json::object{{"adapter", boost::json::object{{"kind", "mock"}, {"latencyMs", latency_ms}}}}},
      {"scheduler", boost::json::object{{"concurrency", 2}, {"maxQueue", 8}}},
      {"gracefulDegradation", boost::json::object{{"queueDepthThreshold", 4}}}};
}

// Finding: the overload crash (a flight's cancellation signal freed under the co_spawn bound to it).
TEST(Overload, TheCrashRecipeLeavesRayAliveWithOnly200And503) {
  ray_server s(crash_recipe(20), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  tally t;
  burst(s.port(), 300, 20, t, "a");
  EXPECT_TRUE(t.broken.empty()) << t.broken.size() << " broken, first: " << t.broken.front();
  EXPECT_GT(t.count(200), 0);
  EXPECT_GT(t.count(503), 0);
  EXPECT_EQ(t.count(200) + t.count(503), 300);
  EXPECT_FALSE(s.process().has_exited()) << s.output_tail();
  auto live = roundtrip(s.port(), get("/livez"));
  ASSERT_TRUE(live);
  EXPECT_EQ(live->status, 200);
}

TEST(Overload, TheCrashRecipeAt100ConnectionsAnd200msLeavesRayAlive) {
  ray_server s(crash_recipe(200), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  tally t;
  burst(s.port(), 300, 100, t, "b");
  EXPECT_TRUE(t.broken.empty()) << t.broken.size() << " broken, first: " << t.broken.front();
  EXPECT_EQ(t.count(200) + t.count(503), 300);
  EXPECT_FALSE(s.process().has_exited()) << s.output_tail();
  // And it shuts down cleanly afterwards (exit 0; under ASan a leak or use after free would fail it).
  ASSERT_TRUE(s.process().signal(SIGTERM));
  auto st = s.process().wait_exit(rt::in(kIo));
  ASSERT_TRUE(st) << s.output_tail();
  EXPECT_EQ(*st, 0) << s.output_tail();
}

// Finding (the quieter sibling): requests that were neither queued, running nor answered.
TEST(Overload, EveryRequestOfABurstAfterDedupeAndACacheHitIsAnswered) {
  auto cfg = boost::json::object{
      {"profile", "tiny"},
      {"model", boost::json::object{{"adapter", boost::json::object{{"kind", "mock"}, {"latencyMs", 300}}}}},
      {"scheduler", boost::json::object{{"concurrency", 1}, {"maxQueue", 4}, {"affinityLookahead", 2}}},
      {"gracefulDegradation", boost::json::object{{"queueDepthThreshold", 2}}}};
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  for (int round = 0; round < 3; ++round) {
    tally t;
    {
      std::vector<std::thread> same;
      for (int i = 0; i < 5; ++i)
        same.emplace_back([&] {
          auto r =
              roundtrip(s.port(), post_json("/v1/infer", R"({"input":"the same question"})"), rt::in(30s));
          t.add(r, "identical request");
        });
      for (auto& th : same)
        th.join();
    }
    t.add(roundtrip(s.port(), post_json("/v1/infer", R"({"input":"the same question"})"), rt::in(30s)),
          "cache hit");
    burst(s.port(), 20, 20, t, "r" + std::to_string(round));
    EXPECT_TRUE(t.broken.empty()) << "round " << round << ": " << t.broken.front();
    EXPECT_EQ(t.count(200) + t.count(503), 26) << "round " << round;
  }
  EXPECT_TRUE(eventually([&] {
    auto h = roundtrip(s.port(), get("/health"));
    auto o = h ? json_body(*h) : std::nullopt;
    return o && num(*o, "queueDepth") == 0 && num(*o, "inFlight") == 0;
  }));
}

// Finding: `request_id().substr(4)` threw for a client x-request-id of 1–3 characters (a use after free in
// the streaming handler); both chat routes dropped the connection.
TEST(Overload, ShortRequestIdsOnTheOpenAiRoutesAreAnswered) {
  ray_server s(test_config(), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  for (std::string id : {"a", "ab", "abc", "req_", "x.y-z"}) {
    SCOPED_TRACE(id);
    std::string const h = "x-request-id: " + id + "\r\n";
    auto plain = roundtrip(
        s.port(), post_json("/v1/chat/completions", R"({"messages":[{"role":"user","content":"hi"}]})", h));
    ASSERT_TRUE(plain);
    ASSERT_EQ(plain->status, 200) << plain->describe();
    std::string const want = "chatcmpl-" + (id == "req_" ? std::string() : id);
    EXPECT_EQ(rt::string_field(*json_body(*plain), "id"), want);
    auto streamed =
        roundtrip(s.port(), post_json("/v1/chat/completions",
                                      R"({"messages":[{"role":"user","content":"hi"}],"stream":true})", h));
    ASSERT_TRUE(streamed);
    ASSERT_EQ(streamed->status, 200) << streamed->describe();
    EXPECT_NE(streamed->body.find("\"id\":\"" + want + "\""), std::string::npos) << streamed->body;
    EXPECT_NE(streamed->body.find("data: [DONE]"), std::string::npos);
    auto completion = roundtrip(s.port(), post_json("/v1/completions", R"({"prompt":"hi"})", h));
    ASSERT_TRUE(completion);
    EXPECT_EQ(completion->status, 200) << completion->describe();
  }
  EXPECT_FALSE(s.process().has_exited());
}

// Finding: the flight key was the client's dedupeKey alone: another API key reusing it got someone else's
// answer.
TEST(Overload, ADedupeKeyIsNotSharedAcrossApiKeys) {
  auto cfg = with(test_config({}, {{"latencyMs", 300}}),
                  {{"auth", boost::json::object{{"enabled", true}, {"apiKeyEnv", "TEST_RAY_KEYS"}}}});
  ray_server s(cfg, no_host_pressure(), {{"TEST_RAY_KEYS", std::string(kKeyA) + "," + std::string(kKeyB)}});
  ASSERT_TRUE(s.wait_listening());
  auto a = s.connect();
  auto b = s.connect();
  auto a2 = s.connect();
  ASSERT_TRUE(
      a.send(post_json("/v1/infer", R"({"input":"alpha","dedupeKey":"k1","cache":false})", bearer(kKeyA))));
  ASSERT_TRUE(
      b.send(post_json("/v1/infer", R"({"input":"beta","dedupeKey":"k1","cache":false})", bearer(kKeyB))));
  ASSERT_TRUE(a2.send(
      post_json("/v1/infer", R"({"input":"alpha again","dedupeKey":"k1","cache":false})", bearer(kKeyA))));
  auto ra = a.read_response(rt::in(kIo));
  auto rb = b.read_response(rt::in(kIo));
  auto ra2 = a2.read_response(rt::in(kIo));
  ASSERT_TRUE(ra && rb && ra2);
  ASSERT_EQ(rb->status, 200) << rb->describe();
  auto ob = *json_body(*rb);
  EXPECT_NE(rt::string_field(ob, "output").find("beta"), std::string::npos) << rb->body;
  EXPECT_EQ(rt::string_field(ob, "output").find("alpha"), std::string::npos) << rb->body;
  // The same key's dedupeKey still joins (its documented meaning).
  auto oa2 = *json_body(*ra2);
  EXPECT_NE(rt::string_field(oa2, "output").find("alpha"), std::string::npos) << ra2->body;
  EXPECT_EQ(rt::string_field(*json_body(*ra), "output"), rt::string_field(oa2, "output"));
}

// Finding: the router kept the FIRST 8 X-Forwarded-For lines while client_ip trusts the right end, so a
// client sending 8 lines pushed out the proxy's own.
TEST(Overload, ExtraForwardedForLinesCannotPushOutTheProxysOwn) {
  auto cfg =
      with(test_config(),
           {{"rateLimit",
             boost::json::object{
                 {"enabled", true}, {"maxRequests", 1}, {"windowMs", 60000}, {"trustProxyHeaders", true}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto forged = [](int base) {
    std::string h;
    for (int i = 0; i < 8; ++i)
      h += "X-Forwarded-For: 203.0.113." + std::to_string(base + i) + "\r\n";
    return h + "X-Forwarded-For: 198.51.100.77\r\n";  // the line our proxy appended: the real client
  };
  auto first = roundtrip(s.port(), post_json("/v1/infer", R"({"input":"hi"})", forged(1)));
  auto second = roundtrip(s.port(), post_json("/v1/infer", R"({"input":"hi"})", forged(20)));
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->status, 200) << first->describe();
  EXPECT_TRUE(is_error(*second, 429, "rate_limited")) << second->describe();
}

// Finding: any private peer counted as a trusted proxy. Only rateLimit.trustedProxies are believed: with the
// loopback peer left out of the list, two clients behind it share one limit, and the log says once why.
TEST(Overload, OnlyListedProxiesAreBelievedAndAnUnlistedForwarderIsLoggedOnce) {
  auto cfg = with(test_config(),
                  {{"rateLimit", boost::json::object{{"enabled", true},
                                                     {"maxRequests", 1},
                                                     {"windowMs", 60000},
                                                     {"trustProxyHeaders", true},
                                                     {"trustedProxies", boost::json::array{"10.9.8.7"}}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto a =
      roundtrip(s.port(), post_json("/v1/infer", R"({"input":"hi"})", "X-Forwarded-For: 198.51.100.1\r\n"));
  auto b =
      roundtrip(s.port(), post_json("/v1/infer", R"({"input":"hi"})", "X-Forwarded-For: 198.51.100.2\r\n"));
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->status, 200) << a->describe();
  EXPECT_TRUE(is_error(*b, 429, "rate_limited")) << "the unlisted peer's X-Forwarded-For was believed";
  ASSERT_TRUE(s.process().wait_for_log("not in rateLimit.trustedProxies", rt::in(kIo))) << s.output_tail();
  auto const text = s.process().output();
  std::size_t n = 0;
  for (auto p = text.find("not in rateLimit.trustedProxies"); p != std::string::npos;
       p = text.find("not in rateLimit.trustedProxies", p + 1))
    ++n;
  EXPECT_EQ(n, 1u) << text;
}

// Finding: a SIGHUP reload never re-ran the public-bind auth guard, so it could switch auth off on a public
// address.
TEST(Overload, AReloadCannotSwitchAuthOffOnAPublicBind) {
  auto cfg = with(test_config({{"host", "0.0.0.0"}}),
                  {{"auth", boost::json::object{{"enabled", true}, {"apiKeyEnv", "TEST_RAY_KEYS"}}}});
  ray_server s(cfg, no_host_pressure(), {{"TEST_RAY_KEYS", std::string(kKeyA)}});
  ASSERT_TRUE(s.wait_listening());
  EXPECT_TRUE(is_error(*roundtrip(s.port(), get("/health")), 401, "unauthorized"));
  cfg["auth"].as_object()["enabled"] = false;
  std::ofstream(s.config_path()) << boost::json::serialize(cfg);
  ASSERT_TRUE(s.process().signal(SIGHUP));
  ASSERT_TRUE(s.process().wait_for_log(
      [](std::string_view l) { return l.find("configuration reload refused") != std::string_view::npos; },
      rt::in(kIo)))
      << s.output_tail();
  EXPECT_TRUE(is_error(*roundtrip(s.port(), get("/health")), 401, "unauthorized"));
  EXPECT_EQ(roundtrip(s.port(), get("/health", bearer(kKeyA)))->status, 200);
}

// Finding: at shutdown, frames still suspended in the backend (warm-up, probe) outlived it and wrote into it.
// SIGTERM while the backend's probe waits on a slow /health, and again while a generation hangs before its
// first token: a clean exit 0 each time (under ASan: no use after free).
TEST(Overload, ShutdownDuringTheBackendProbeExitsCleanly) {
  fake_llama fake({"-c", "2048", "-np", "2", "--slow-health-ms", "60000"});
  ASSERT_TRUE(fake.ok()) << fake.output();
  auto cfg = test_config({}, {{"kind", "llama.cpp"}, {"baseUrl", fake.url()}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(s.process().signal(SIGTERM));
  auto st = s.process().wait_exit(rt::in(kIo));
  ASSERT_TRUE(st) << s.output_tail();
  EXPECT_EQ(*st, 0) << s.output_tail();
}

TEST(Overload, ShutdownDuringAHangingGenerationExitsCleanly) {
  fake_llama fake({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(fake.ok()) << fake.output();
  auto cfg =
      with(test_config({{"shutdownGraceMs", 200}}, {{"kind", "llama.cpp"}, {"baseUrl", fake.url()}}), {});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(eventually([&] {
    auto r = roundtrip(s.port(), get("/readyz"));
    return r && r->status == 200;
  }));
  ASSERT_TRUE(fake.control({{"hang_before_first_token", true}}));
  auto c = s.connect();
  ASSERT_TRUE(c.send(post_json("/v1/infer", R"({"input":"hang here"})")));
  ASSERT_TRUE(eventually([&] { return num(fake.stats(), "active") >= 1; })) << fake.stats();
  ASSERT_TRUE(s.process().signal(SIGTERM));
  auto st = s.process().wait_exit(rt::in(kIo));
  ASSERT_TRUE(st) << s.output_tail();
  EXPECT_EQ(*st, 0) << s.output_tail();
}

// Finding: the detached stream generation never marked itself done when it failed, so the writer pinged on
// and shutdown waited out its grace; and the stream writer parsed with the throwing json::parse. A stream
// whose backend fails mid-answer (an error event from the backend, then malformed events) ends with one
// error event and no [DONE], the connection is released, and SIGTERM right after exits at once with 0.
TEST(Overload, AStreamWhoseGenerationFailsEndsWithAnErrorEventAndShutdownIsPrompt) {
  fake_llama fake({"-c", "2048", "-np", "2", "--fail-after-tokens", "2"});
  ASSERT_TRUE(fake.ok()) << fake.output();
  auto cfg = test_config({{"shutdownGraceMs", 20000}}, {{"kind", "llama.cpp"}, {"baseUrl", fake.url()}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(eventually([&] {
    auto r = roundtrip(s.port(), get("/readyz"));
    return r && r->status == 200;
  }));
  std::string const chat =
      R"({"messages":[{"role":"user","content":"fail soon"}],"stream":true,"max_tokens":20})";
  for (bool malformed : {false, true}) {
    SCOPED_TRACE(malformed ? "malformed events" : "error event");
    if (malformed) ASSERT_TRUE(fake.control({{"fail_after_tokens", -1}, {"malformed_json", true}}));
    auto c = s.connect();
    ASSERT_TRUE(c.send(post_json("/v1/chat/completions", chat)));
    auto r = c.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c.last_error();
    if (malformed) {
      // Garbage from the first event on: the stream never started, so it is a real status.
      EXPECT_TRUE(is_error(*r, 502, "provider_invalid_response"));
    } else {
      ASSERT_EQ(r->status, 200) << r->describe();
      EXPECT_NE(r->body.find("data: {\"error\""), std::string::npos) << r->body;
      EXPECT_EQ(r->body.find("data: [DONE]"), std::string::npos) << r->body;
    }
    // The same connection serves the next request: the stream's writer let go of it.
    EXPECT_TRUE(connection_consistent(c, *r));
  }
  EXPECT_TRUE(eventually([&] {
    auto h = roundtrip(s.port(), get("/health"));
    auto o = h ? json_body(*h) : std::nullopt;
    return o && num(*o, "inFlight") == 0;
  }));
  // Nothing is left running, so the exit comes well within the 20 s grace (wait_exit gives it 10 s).
  ASSERT_TRUE(s.process().signal(SIGTERM));
  auto st = s.process().wait_exit(rt::in(kIo));
  ASSERT_TRUE(st) << "still running 10 s after SIGTERM: a stream was left behind\n" << s.output_tail();
  EXPECT_EQ(*st, 0) << s.output_tail();
}

}  // namespace
}  // namespace ray::itest
