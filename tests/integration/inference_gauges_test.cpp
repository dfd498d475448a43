// The Gateway API Inference Extension gauges through the real binary (docs/scale-out.md):
// ray_inference_requests_waiting (Ray's queue plus llama-server's deferred requests),
// ray_inference_requests_running (busy slots, any client) and ray_inference_kv_cache_usage_ratio (0..1, from
// /slots), on the llama-server double and on the mock backend; both the Prometheus text and the JSON view.
// Every wait polls against a deadline.
#include "fake_llama.hpp"

namespace ray::itest {
namespace {

namespace json = boost::json;

constexpr char kWaiting[] = "ray_inference_requests_waiting";
constexpr char kRunning[] = "ray_inference_requests_running";
constexpr char kKv[] = "ray_inference_kv_cache_usage_ratio";

// Attached to the double by --backend-url: the llama.cpp adapter probing every 100 ms, no rate limit.
json::object llama_config() {
  return {{"profile", "sub1b"},
          {"model", json::object{{"id", "tiny-llama"},
                                 {"adapter", json::object{{"kind", "llama.cpp"},
                                                          {"healthIntervalMs", 100},
                                                          {"healthTimeoutMs", 500}}}}},
          {"rateLimit", json::object{{"enabled", false}}},
          {"scheduler", json::object{{"maxInflightTokens", 2048}}}};
}

::testing::AssertionResult ready(ray_server& s) {
  bool ok = eventually([&] {
    auto r = roundtrip(s.port(), get("/readyz"));
    if (!r || r->status != 200) return false;
    auto b = json_body(*r);
    return b && rt::string_field(*b, "providerStatus") == "ready";
  });
  if (ok) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "Ray never became ready\n" << s.output_tail();
}

std::string infer_body(std::string const& input, int max_tokens) {
  return json::serialize(json::object{{"input", input}, {"maxTokens", max_tokens}});
}

// The JSON view of /metrics (its "gauges" object; {} when it does not answer).
json::object json_gauges(std::uint16_t port) {
  auto r = roundtrip(port, get("/metrics", "Accept: application/json\r\n"));
  if (!r || r->status != 200) return {};
  auto b = json_body(*r);
  if (!b || !b->contains("gauges")) return {};
  return b->at("gauges").as_object();
}

double json_number(json::object const& o, std::string_view key) {
  auto const* v = o.if_contains(key);
  return v && v->is_number() ? v->to_number<double>() : -1;
}

TEST(InferenceGauges, FollowTheDoublesSlotsAndBothQueues) {
  fake_llama f({"-c", "2048", "-np", "2", "--metrics"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));

  // Idle: nothing waits or runs, and the KV view is known (the double answers /slots) and empty.
  ASSERT_TRUE(eventually([&] { return metric(s.port(), kKv) == 0; })) << scrape(s.port());
  EXPECT_EQ(metric(s.port(), kWaiting), 0);
  EXPECT_EQ(metric(s.port(), kRunning), 0);

  // Every request stops after its prefill: both slots hold their prompts, the third request waits in Ray.
  ASSERT_TRUE(f.control({{"hang_before_first_token", true}}));
  std::vector<rt::raw_client> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(s.connect());
    ASSERT_TRUE(clients.back().send(
        post_json("/v1/infer", infer_body("request " + std::to_string(i) + std::string(400, 'x'), 8))));
  }
  ASSERT_TRUE(eventually([&] { return num(f.stats(), "processing") == 2; })) << f.stats();
  std::string text;
  ASSERT_TRUE(eventually([&] {
    text = scrape(s.port());
    return value_in(text, kRunning) == 2 && value_in(text, kKv) > 0 &&
           value_in(text, kWaiting) == value_in(text, "ray_queue_depth") + num(f.stats(), "queued") &&
           value_in(text, kWaiting) >= 1;
  })) << text;
  // Each slot holds its prompt (~100 tokens of 1024): a share, not the whole cache.
  EXPECT_LT(value_in(text, kKv), 0.5) << text;
  auto g = json_gauges(s.port());
  EXPECT_EQ(json_number(g, "inference.requestsRunning"), 2) << json::serialize(g);
  EXPECT_GT(json_number(g, "inference.kvCacheUsage"), 0) << json::serialize(g);

  // Another client of the same llama-server: the double defers it (both slots busy), and Ray's waiting gauge
  // adds llama-server's deferred requests (read from its /metrics) to Ray's own queue.
  rt::raw_client direct(f.port());
  ASSERT_TRUE(direct.send(
      post_json("/v1/chat/completions",
                R"({"messages":[{"role":"user","content":"from another client"}],"max_tokens":4})")));
  ASSERT_TRUE(eventually([&] { return num(f.stats(), "queued") == 1; })) << f.stats();
  ASSERT_TRUE(eventually([&] {
    text = scrape(s.port());
    return value_in(text, kWaiting) == value_in(text, "ray_queue_depth") + 1 && value_in(text, kWaiting) >= 2;
  })) << text;

  // Released: everything finishes, and the gauges return to idle.
  ASSERT_TRUE(f.control({{"hang_before_first_token", false}}));
  for (auto& c : clients) {
    auto r = c.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c.last_error();
    EXPECT_EQ(r->status, 200) << r->describe();
  }
  auto d = direct.read_response(rt::in(kIo));
  ASSERT_TRUE(d) << direct.last_error();
  EXPECT_EQ(d->status, 200) << d->describe();
  EXPECT_TRUE(eventually([&] {
    text = scrape(s.port());
    return value_in(text, kWaiting) == 0 && value_in(text, kRunning) == 0 && value_in(text, kKv) == 0;
  })) << text;
}

TEST(InferenceGauges, KvUsageIsLeftOutWhileSlotsAreUnknown) {
  // Without /slots (llama-server --no-slots answers 501) the KV share is unknown: the series is absent from
  // both views, while the request gauges still answer.
  fake_llama f({"-c", "2048", "-np", "2", "--no-slots", "--metrics"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  // The adapter has asked for /slots (and been refused) at least once.
  ASSERT_TRUE(eventually([&] {
    auto st = f.stats();
    auto const* req = st.if_contains("requests");
    return req && req->is_object() && num(req->as_object(), "/slots") >= 1;
  })) << f.stats();
  auto text = scrape(s.port());
  EXPECT_EQ(text.find(kKv), std::string::npos) << text;
  EXPECT_EQ(value_in(text, kRunning), 0) << text;
  EXPECT_EQ(value_in(text, kWaiting), 0) << text;
  auto g = json_gauges(s.port());
  EXPECT_FALSE(g.contains("inference.kvCacheUsage")) << json::serialize(g);
  EXPECT_EQ(json_number(g, "inference.requestsWaiting"), 0) << json::serialize(g);
}

TEST(InferenceGauges, TheMockReportsItsOwnSlots) {
  // One request at a time, streamed at 20 tokens/s: while it generates it runs and holds tokens, and the
  // second waits in Ray's queue.
  auto cfg =
      with(test_config({}, {{"tokensPerSecond", 20}}), {{"scheduler", json::object{{"concurrency", 1}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  EXPECT_EQ(metric(s.port(), kKv), 0);
  auto first = s.connect();
  ASSERT_TRUE(first.send(post_json("/v1/infer", infer_body(std::string(200, 'w') + " a b c d e f g h", 64))));
  auto second = s.connect();
  ASSERT_TRUE(second.send(post_json("/v1/infer", infer_body("second", 4))));
  std::string text;
  ASSERT_TRUE(eventually([&] {
    text = scrape(s.port());
    return value_in(text, kRunning) == 1 && value_in(text, kWaiting) == 1 && value_in(text, kKv) > 0;
  })) << text;
  EXPECT_LE(value_in(text, kKv), 1) << text;
  for (auto* c : {&first, &second}) {
    auto r = c->read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c->last_error();
    EXPECT_EQ(r->status, 200) << r->describe();
  }
  EXPECT_TRUE(eventually([&] {
    text = scrape(s.port());
    return value_in(text, kRunning) == 0 && value_in(text, kWaiting) == 0 && value_in(text, kKv) == 0;
  })) << text;
}

}  // namespace
}  // namespace ray::itest
