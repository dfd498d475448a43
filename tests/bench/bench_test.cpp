// ray bench, the pure parts: workload lines, URLs, histograms and percentiles, what responses and streams
// said, the summary and the baseline.
#include "ray/bench/bench.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <boost/json/parse.hpp>

namespace ray::bench {
namespace {

using ::testing::HasSubstr;

boost::json::object body_of(workload_item const& item) {
  return boost::json::parse(item.body).as_object();
}

// ---- workload

TEST(Workload, NativeAndOpenAiLinesGoToTheirRoutes) {
  auto items = parse_workload(
      "{\"input\":\"hi\",\"maxTokens\":8}\n"
      "\n"
      "   \n"
      "{\"templateId\":\"email.follow_up.v1\",\"templateVariables\":{\"a\":\"b\"}}\n"
      "{\"openai\":{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}}\n"
      "{\"openai\":{\"prompt\":\"Once upon\"}}",
      {});
  ASSERT_TRUE(items) << items.error().message;
  ASSERT_EQ(items->size(), 4u);
  EXPECT_EQ((*items)[0].target, "/v1/infer");
  EXPECT_FALSE((*items)[0].openai);
  EXPECT_EQ((*items)[0].line, 1u);
  EXPECT_EQ(body_of((*items)[0]).at("maxTokens").as_int64(), 8);
  EXPECT_EQ((*items)[1].target, "/v1/infer");
  EXPECT_EQ((*items)[1].line, 4u);  // blank lines are skipped but counted
  EXPECT_EQ((*items)[2].target, "/v1/chat/completions");
  EXPECT_TRUE((*items)[2].openai);
  EXPECT_FALSE(body_of((*items)[2]).contains("openai"));  // the wrapper is removed
  EXPECT_EQ((*items)[3].target, "/v1/completions");
}

TEST(Workload, StreamMarksOpenAiBodiesAndAsksForUsage) {
  auto items = parse_workload(
      "{\"openai\":{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}}\n"
      "{\"openai\":{\"messages\":[{\"role\":\"user\",\"content\":\"b\"}],\"stream_options\":{}}}\n",
      {.stream = true});
  ASSERT_TRUE(items) << items.error().message;
  auto first = body_of((*items)[0]);
  EXPECT_TRUE(first.at("stream").as_bool());
  EXPECT_TRUE(first.at("stream_options").at("include_usage").as_bool());
  auto second = body_of((*items)[1]);
  EXPECT_TRUE(second.at("stream_options").as_object().empty());  // the workload's own choice is kept
}

TEST(Workload, OpenAiModeConvertsNativeLines) {
  auto items = parse_workload(
      "{\"system\":\"Be brief.\",\"input\":\"hi\",\"maxTokens\":12,\"topP\":0.9,\"temperature\":0,\"seed\":7,"
      "\"stop\":[\"\\n\"],\"cache\":false}",
      {.openai = true});
  ASSERT_TRUE(items) << items.error().message;
  auto const& item = (*items)[0];
  EXPECT_EQ(item.target, "/v1/chat/completions");
  EXPECT_TRUE(item.openai);
  auto b = body_of(item);
  auto const& messages = b.at("messages").as_array();
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].at("role").as_string(), "system");
  EXPECT_EQ(messages[0].at("content").as_string(), "Be brief.");
  EXPECT_EQ(messages[1].at("role").as_string(), "user");
  EXPECT_EQ(messages[1].at("content").as_string(), "hi");
  EXPECT_EQ(b.at("max_tokens").as_int64(), 12);
  EXPECT_DOUBLE_EQ(b.at("top_p").as_double(), 0.9);
  EXPECT_EQ(b.at("seed").as_int64(), 7);
  EXPECT_EQ(b.at("stop").as_array().size(), 1u);
  EXPECT_FALSE(b.contains("cache"));  // Ray-only fields are not sent to a backend
  EXPECT_FALSE(b.contains("maxTokens"));
}

struct bad_line {
  std::string text;
  workload_options opts;
  std::string expected;  // part of the message
};

class WorkloadErrors : public ::testing::TestWithParam<bad_line> {};

TEST_P(WorkloadErrors, NameTheLineAndTheProblem) {
  auto const& p = GetParam();
  // Lines 1 and 4 are good in every mode.
  std::string const good = R"({"openai":{"messages":[{"role":"user","content":"fine"}]}})";
  auto items = parse_workload(good + "\n\n" + p.text + "\n" + good + "\n", p.opts);
  ASSERT_FALSE(items);
  EXPECT_THAT(items.error().message, HasSubstr("line 3: "));
  EXPECT_THAT(items.error().message, HasSubstr(p.expected));
}

INSTANTIATE_TEST_SUITE_P(
    Lines, WorkloadErrors,
    ::testing::Values(bad_line{"{\"input\": \"unterminated", {}, "not valid JSON"},
                      bad_line{"[1,2]", {}, "must be a JSON object"},
                      bad_line{"\"just a string\"", {}, "must be a JSON object"},
                      bad_line{"{\"opneai\":{\"messages\":[]}}", {}, "needs \"input\" or \"templateId\""},
                      bad_line{"{\"openai\":[]}", {}, "\"openai\" must be an object"},
                      bad_line{"{\"openai\":{\"model\":\"m\"}}", {}, "needs \"messages\""},
                      bad_line{"{\"openai\":{\"messages\":[]}}", {}, "non-empty array"},
                      bad_line{"{\"openai\":{\"prompt\":\"x\"},\"weight\":2}", {}, "unknown key \"weight\""},
                      bad_line{"{\"input\":\"hi\"}", {.stream = true}, "/v1/infer does not stream"},
                      bad_line{"{\"templateId\":\"t\"}", {.openai = true}, "template line"},
                      bad_line{"{\"input\":3}", {.openai = true}, "\"input\" must be a string"}));

TEST(Workload, AnEmptyFileIsAnError) {
  auto items = parse_workload("\n  \n", {});
  ASSERT_FALSE(items);
  EXPECT_THAT(items.error().message, HasSubstr("no requests"));
}

TEST(Workload, AMissingFileNamesThePath) {
  auto items = load_workload("/nonexistent/ray-bench-workload.jsonl", {});
  ASSERT_FALSE(items);
  EXPECT_THAT(items.error().message, HasSubstr("/nonexistent/ray-bench-workload.jsonl"));
}

TEST(Workload, TheExampleWorkloadsParse) {
  for (std::string name : {"email.jsonl", "chat-system-prompts.jsonl"}) {
    auto items = load_workload(std::string(RAY_SOURCE_DIR) + "/examples/workloads/" + name, {});
    ASSERT_TRUE(items) << name << ": " << items.error().message;
    EXPECT_GE(items->size(), 5u) << name;
  }
  // The chat workload streams, and (having no template lines) converts for a backend too.
  auto chat = std::string(RAY_SOURCE_DIR) + "/examples/workloads/chat-system-prompts.jsonl";
  EXPECT_TRUE(load_workload(chat, {.openai = true, .stream = true}));
}

// ---- URL

TEST(Url, HostPortAndBasePath) {
  auto u = parse_url("http://127.0.0.1:3000");
  ASSERT_TRUE(u) << u.error().message;
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 3000);
  EXPECT_EQ(u->base_path, "");
  auto v = parse_url("http://gateway.internal/ray/");
  ASSERT_TRUE(v) << v.error().message;
  EXPECT_EQ(v->host, "gateway.internal");
  EXPECT_EQ(v->port, 80);
  EXPECT_EQ(v->base_path, "/ray");
  auto w = parse_url("http://[::1]:8080/");
  ASSERT_TRUE(w) << w.error().message;
  EXPECT_EQ(w->host, "::1");
  EXPECT_EQ(w->port, 8080);
}

TEST(Url, BadUrlsSayWhy) {
  for (auto [url, why] : std::initializer_list<std::pair<char const*, char const*>>{
           {"127.0.0.1:3000", "must start with http://"},
           {"https://x", "https is not supported"},
           {"http://:3000", "no host"},
           {"http://h:0", "port must be"},
           {"http://h:99999", "port must be"},
           {"http://h:12ab", "port must be"},
           {"http://h:", "empty port"},
           {"http://h/x?y=1", "query"},
           {"http://user:pw@h", "credentials"}}) {
    auto u = parse_url(url);
    ASSERT_FALSE(u) << url;
    EXPECT_THAT(u.error().message, HasSubstr(why)) << url;
    EXPECT_THAT(u.error().message, HasSubstr(url));
  }
}

// ---- histogram

TEST(Histogram, NearestRankPercentilesAreExactForSmallValues) {
  histogram h;
  for (std::uint64_t v = 1; v <= 100; ++v)
    h.record(v);
  EXPECT_EQ(h.count(), 100u);
  EXPECT_EQ(h.percentile(50), 50u);
  EXPECT_EQ(h.percentile(90), 90u);
  EXPECT_EQ(h.percentile(99), 99u);
  EXPECT_EQ(h.percentile(99.5), 100u);
  EXPECT_EQ(h.percentile(100), 100u);
  EXPECT_EQ(h.percentile(0), 1u);
  EXPECT_EQ(h.min(), 1u);
  EXPECT_EQ(h.max(), 100u);
  EXPECT_DOUBLE_EQ(h.mean(), 50.5);
}

TEST(Histogram, OneSampleAndEmpty) {
  histogram empty;
  EXPECT_EQ(empty.percentile(50), 0u);
  EXPECT_EQ(empty.count(), 0u);
  histogram one;
  one.record(123'456'789);
  EXPECT_EQ(one.percentile(1), 123'456'789u);  // clamped to the exact min/max
  EXPECT_EQ(one.percentile(99), 123'456'789u);
}

TEST(Histogram, LargeValuesStayWithinTheBucketPrecision) {
  histogram h;
  // 1000 values from 1 ms to 1 s: the p-th percentile is the value p*10 (nearest rank).
  std::vector<std::uint64_t> values;
  for (int i = 1; i <= 1000; ++i)
    values.push_back(static_cast<std::uint64_t>(i) * 1'000'000);
  for (auto v : values)
    h.record(v);
  for (double p : {10.0, 50.0, 90.0, 99.0, 99.9}) {
    double expected = values[static_cast<std::size_t>(p * 10) - 1];
    double got = static_cast<double>(h.percentile(p));
    EXPECT_NEAR(got, expected, expected / 256) << "p" << p;
  }
  EXPECT_EQ(h.max(), 1'000'000'000u);
  // Order does not matter; skewed data: 99 fast and one slow request.
  histogram skew;
  skew.record(5'000'000'000);
  for (int i = 0; i < 99; ++i)
    skew.record(200'000);
  EXPECT_NEAR(static_cast<double>(skew.percentile(99)), 200'000, 200'000 / 256.0);
  EXPECT_EQ(skew.percentile(100), 5'000'000'000u);
}

TEST(Histogram, MergeEqualsRecordingEverything) {
  histogram a, b, all;
  for (std::uint64_t v = 0; v < 5000; v += 7) {
    (v % 2 ? a : b).record(v * 997);
    all.record(v * 997);
  }
  a.merge(b);
  EXPECT_EQ(a.count(), all.count());
  EXPECT_EQ(a.min(), all.min());
  EXPECT_EQ(a.max(), all.max());
  for (double p : {1.0, 50.0, 99.0})
    EXPECT_EQ(a.percentile(p), all.percentile(p));
}

// ---- streams

TEST(Stream, TimeToFirstTokenAndGapsCountOnlyTokenEvents) {
  stream_tracker t;
  t.on_event(R"({"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]})", 100);  // no text yet
  t.on_event(R"({"choices":[{"index":0,"delta":{"content":"Hel"}}]})", 1000);
  t.on_event(R"({"choices":[{"index":0,"delta":{"content":"lo"}}]})", 1500);
  t.on_event(R"({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})", 1600);
  t.on_event(R"({"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}})", 1700);
  t.on_event("[DONE]", 1800);
  ASSERT_TRUE(t.ttft_ns);
  EXPECT_EQ(*t.ttft_ns, 1000u);
  EXPECT_EQ(t.gaps_ns, std::vector<std::uint64_t>{500});
  EXPECT_EQ(t.token_events, 2u);
  EXPECT_TRUE(t.done);
  EXPECT_EQ(t.prompt_tokens, 5u);
  EXPECT_EQ(t.completion_tokens, 2u);
  EXPECT_FALSE(t.error);
}

TEST(Stream, CompletionTextAndToolCallsAreTokensAndErrorsAreNamed) {
  stream_tracker t;
  t.on_event(R"({"choices":[{"index":0,"text":"Once"}]})", 10);
  t.on_event(R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]})", 30);
  t.on_event(R"({"error":{"message":"too slow","type":"server_error","code":"overloaded"}})", 40);
  t.on_event("not json at all", 50);
  EXPECT_EQ(t.token_events, 2u);
  EXPECT_EQ(t.error, "overloaded");
  EXPECT_FALSE(t.done);
}

// ---- accounting

TEST(Stats, StatusesCodesCacheAndUsage) {
  run_stats s;
  std::string const hit =
      R"({"id":"req_1","output":"x","usage":{"chars":{"prompt":1,"completion":1,"total":2},"tokens":{"prompt":4,"completion":3,"total":7}},"cached":true,"deduplicated":false})";
  std::string const joined = R"({"id":"req_2","output":"x","cached":false,"deduplicated":true})";
  std::string const full = R"({"error":{"code":"queue_full","message":"the queue is full"}})";
  std::string const llama = R"({"error":{"code":503,"message":"Loading model","type":"unavailable_error"}})";
  s.add({.status = 200, .latency_ns = 1000, .body = hit});
  s.add({.status = 200, .latency_ns = 2000, .body = joined});
  s.add({.status = 503, .latency_ns = 300, .body = full});
  s.add({.status = 503, .latency_ns = 300, .openai = true, .body = llama});
  s.add({.status = 400, .latency_ns = 300, .body = "not json"});
  s.add({.status = 0, .transport_error = "timeout"});
  s.add({.status = 200,
         .latency_ns = 500,
         .openai = true,
         .body = R"({"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":6}})",
         .x_ray_cache_hit = true});
  EXPECT_EQ(s.requests, 7u);
  EXPECT_EQ(s.responses, 6u);
  EXPECT_EQ(s.ok, 3u);
  EXPECT_EQ(s.rejections, 2u);
  EXPECT_EQ(s.by_status.at("200"), 3u);
  EXPECT_EQ(s.by_status.at("503"), 2u);
  EXPECT_EQ(s.by_status.at("transport"), 1u);
  EXPECT_EQ(s.by_code.at("queue_full"), 1u);
  EXPECT_EQ(s.by_code.at("unavailable_error"), 1u);  // a numeric code falls back to the type
  EXPECT_EQ(s.by_code.at("http_400"), 1u);
  EXPECT_EQ(s.by_code.at("timeout"), 1u);
  EXPECT_EQ(s.cache_known, 3u);
  EXPECT_EQ(s.cached, 2u);
  EXPECT_EQ(s.dedupe_known, 2u);
  EXPECT_EQ(s.deduplicated, 1u);
  EXPECT_EQ(s.usage_responses, 2u);
  EXPECT_EQ(s.completion_tokens, 9u);
  EXPECT_EQ(s.prompt_tokens, 14u);
  EXPECT_EQ(s.latency.count(), 6u);  // every response, not the transport error

  auto sum = summarize(s, 2.0);
  EXPECT_DOUBLE_EQ(sum.rps, 3.0);
  EXPECT_DOUBLE_EQ(sum.ok_rps, 1.5);
  EXPECT_DOUBLE_EQ(sum.error_rate, 4.0 / 7.0);
  EXPECT_DOUBLE_EQ(sum.rejection_rate, 2.0 / 7.0);
  ASSERT_TRUE(sum.cache_hit_rate);
  EXPECT_DOUBLE_EQ(*sum.cache_hit_rate, 2.0 / 3.0);
  ASSERT_TRUE(sum.dedupe_rate);
  EXPECT_DOUBLE_EQ(*sum.dedupe_rate, 0.5);
  ASSERT_TRUE(sum.tokens_per_s);
  EXPECT_DOUBLE_EQ(*sum.tokens_per_s, 4.5);
  ASSERT_TRUE(sum.latency);
  EXPECT_DOUBLE_EQ(sum.latency->max_ms, 0.002);
  EXPECT_FALSE(sum.ttft);
}

TEST(Stats, StreamsWithoutDoneOrWithAnErrorAreNotOk) {
  run_stats s;
  stream_tracker good, cut, failed;
  good.on_event(R"({"choices":[{"delta":{"content":"a"}}]})", 5'000'000);
  good.on_event(R"({"choices":[{"delta":{"content":"b"}}]})", 7'000'000);
  good.on_event("[DONE]", 7'000'001);
  cut.on_event(R"({"choices":[{"delta":{"content":"a"}}]})", 1'000'000);
  failed.on_event(R"({"error":{"code":"provider_timeout","message":"…"}})", 1);
  s.add({.status = 200, .latency_ns = 8'000'000, .openai = true, .stream = &good});
  s.add({.status = 200, .latency_ns = 2'000'000, .openai = true, .stream = &cut});
  s.add({.status = 200, .latency_ns = 2'000'000, .openai = true, .stream = &failed});
  EXPECT_EQ(s.ok, 1u);
  EXPECT_EQ(s.by_code.at("stream_incomplete"), 1u);
  EXPECT_EQ(s.by_code.at("stream:provider_timeout"), 1u);
  EXPECT_EQ(s.ttft.count(), 2u);
  EXPECT_EQ(s.itl.count(), 1u);
  EXPECT_EQ(s.cache_known, 0u);  // a stream does not say
  auto sum = summarize(s, 1.0);
  ASSERT_TRUE(sum.ttft);
  EXPECT_DOUBLE_EQ(sum.ttft->max_ms, 5.0);
  ASSERT_TRUE(sum.itl);
  EXPECT_DOUBLE_EQ(sum.itl->p50_ms, 2.0);
}

// ---- baseline

summary sample_summary() {
  run_stats s;
  for (int i = 1; i <= 100; ++i)
    s.add({.status = 200,
           .latency_ns = static_cast<std::uint64_t>(i) * 1'000'000,
           .body = R"({"cached":false})"});
  s.add({.status = 503, .latency_ns = 1'000'000, .body = R"({"error":{"code":"queue_full"}})"});
  return summarize(s, 1.0);  // 101 req/s, p50 50 ms, p99 99 ms (nearest rank over 101 samples)
}

TEST(Baseline, AllThresholdsHold) {
  auto v =
      evaluate_baseline(boost::json::parse(R"({"p50_ms":60,"p99_ms":101,"min_rps":100,"max_error_rate":0.01,
    "max_rejection_rate":0.5,"min_cache_hit_rate":0})")
                            .as_object(),
                        sample_summary());
  ASSERT_TRUE(v) << v.error().message;
  EXPECT_TRUE(v->empty()) << (*v)[0];
}

TEST(Baseline, EachViolationIsNamed) {
  auto v = evaluate_baseline(
      boost::json::parse(R"({"p99_ms":50,"min_rps":1000,"max_error_rate":0.001,"p50_ms":1000})").as_object(),
      sample_summary());
  ASSERT_TRUE(v) << v.error().message;
  ASSERT_EQ(v->size(), 3u);
  EXPECT_THAT((*v)[0], HasSubstr("p99_ms"));
  EXPECT_THAT((*v)[0], HasSubstr("<= 50"));
  EXPECT_THAT((*v)[1], HasSubstr("min_rps"));
  EXPECT_THAT((*v)[1], HasSubstr(">= 1000"));
  EXPECT_THAT((*v)[2], HasSubstr("max_error_rate"));
}

TEST(Baseline, AFigureTheRunDidNotMeasureIsAViolation) {
  auto v = evaluate_baseline(boost::json::parse(R"({"ttft_p99_ms":100,"min_tokens_per_s":1})").as_object(),
                             sample_summary());
  ASSERT_TRUE(v) << v.error().message;
  ASSERT_EQ(v->size(), 2u);
  EXPECT_THAT((*v)[0], HasSubstr("not measured"));
  EXPECT_THAT((*v)[0], HasSubstr("--stream"));
}

TEST(Baseline, UnknownKeysAndNonNumbersAreErrors) {
  auto typo = evaluate_baseline(boost::json::parse(R"({"p99":50})").as_object(), summary{});
  ASSERT_FALSE(typo);
  EXPECT_THAT(typo.error().message, HasSubstr("unknown threshold \"p99\""));
  EXPECT_THAT(typo.error().message, HasSubstr("p99_ms"));
  auto text = evaluate_baseline(boost::json::parse(R"({"p99_ms":"50"})").as_object(), summary{});
  ASSERT_FALSE(text);
  EXPECT_THAT(text.error().message, HasSubstr("must be a number"));
}

}  // namespace
}  // namespace ray::bench
