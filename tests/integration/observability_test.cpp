// Observability through the real binary (http-api.md §5 and §8): the /metrics text passes `promtool check
// metrics` with llama-server's series merged in, every rejection reason and cancellation phase is counted,
// histogram counts match the requests they describe, llama-server's /metrics is re-exported without ever
// delaying Ray's own answer, and an overload is summarised in the log instead of one warn line per refusal.
//
// Ray is attached to the llama-server test double (tests/support/fake_llama_server) with --backend-url where
// a real backend matters, and runs the mock backend elsewhere. Every wait polls against a deadline.
#include "fake_llama.hpp"
#include "support/require.hpp"

#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

namespace ray::itest {
namespace {

namespace json = boost::json;
using steady = std::chrono::steady_clock;

constexpr int kHealthMs = 100;

// ---- helpers
// -------------------------------------------------------------------------------------------------

// The sum of the samples whose line starts with `prefix` in a Prometheus text.
double sum_lines(std::string const& text, std::string const& prefix) {
  double total = 0;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) total += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return total;
}

// The sum of every sample of the family `name{…}` (all label sets).
double sum_of(std::string const& text, std::string const& name) {
  return sum_lines(text, name + "{") + sum_lines(text, name + " ");
}

std::string infer_body(std::string const& input, json::object extra = {}) {
  extra["input"] = input;
  return json::serialize(extra);
}

rt::http_response infer(std::uint16_t port, std::string const& body) {
  auto r = roundtrip(port, post_json("/v1/infer", body));
  EXPECT_TRUE(r) << "no answer to POST /v1/infer";
  return r.value_or(rt::http_response{});
}

// A POST /v1/infer declaring a body over the limit: answered 413 before the body is read.
rt::http_response declared_too_large(std::uint16_t port) {
  auto r = roundtrip(port, post_head("/v1/infer", 10'000'000, "application/json"));
  EXPECT_TRUE(r) << "no answer to an oversized declared Content-Length";
  return r.value_or(rt::http_response{});
}

// Attached to the double by --backend-url: profile sub1b, the llama.cpp adapter probing every 100 ms, no rate
// limit, a KV budget the double's `-c 2048` can hold.
json::object llama_config(json::object const& extra = {}) {
  json::object cfg{{"profile", "sub1b"},
                   {"model", json::object{{"id", "tiny-llama"},
                                          {"adapter", json::object{{"kind", "llama.cpp"},
                                                                   {"healthIntervalMs", kHealthMs},
                                                                   {"healthTimeoutMs", 500}}}}},
                   {"rateLimit", json::object{{"enabled", false}}},
                   {"scheduler", json::object{{"maxInflightTokens", 2048}}}};
  return with(cfg, extra);
}

::testing::AssertionResult ready(ray_server& s) {
  bool ok = eventually([&] {
    auto r = roundtrip(s.port(), get("/readyz"));
    if (!r || r->status != 200) return false;
    auto b = json_body(*r);
    return b && rt::string_field(*b, "providerStatus") == "ready";
  });
  if (ok) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "Ray never became ready on the double\n" << s.output_tail();
}

// A mock-backed Ray whose generation takes `latency_ms`, with `extra` merged into its config.
json::object slow_mock(int latency_ms, json::object const& extra = {}) {
  return with(test_config({}, {{"latencyMs", latency_ms}}), extra);
}

// Waits until the double is processing one request and a slot has decoded at least `tokens` tokens.
bool decoding(fake_llama const& f, std::int64_t tokens) {
  return eventually([&] {
    auto st = f.stats();
    if (num(st, "processing") != 1) return false;
    for (auto const& sl : st.at("slots").as_array())
      if (sl.at("is_processing").as_bool() && num(sl.as_object(), "n_decoded") >= tokens) return true;
    return false;
  });
}

// ---- 1. promtool
// ---------------------------------------------------------------------------------------------

constexpr char kPromtool[] = "/usr/bin/promtool";

struct promtool_result {
  int exit_status{-1};
  std::string output;
};

// `promtool check metrics` with `text` on its standard input.
promtool_result promtool_check(std::string const& text) {
  rt::temp_dir dir;
  auto out = dir.path() / "promtool.out";
  std::string cmd = std::string(kPromtool) + " check metrics >" + out.string() + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "w");
  if (p == nullptr) return {-1, "popen failed"};
  std::fwrite(text.data(), 1, text.size(), p);
  int status = ::pclose(p);
  std::ifstream in(out);
  std::stringstream ss;
  ss << in.rdbuf();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, ss.str()};
}

TEST(Observability, MetricsPassPromtoolAfterAMixedWorkloadWithTheBackendSeriesMerged) {
  if (!std::filesystem::exists(kPromtool))
    RAY_SKIP_OR_FAIL(kPromtool << " is not installed (Debian package `prometheus`): cannot lint the text");
  fake_llama f({"-c", "2048", "-np", "2", "--metrics"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  ASSERT_TRUE(f.control({{"gen_tps", 20}}));  // 8 tokens take 400 ms: room for an identical request to join

  // 200s, a dedupe join and a cache hit.
  auto first = s.connect();
  ASSERT_TRUE(first.send(post_json("/v1/infer", infer_body("shared question", {{"maxTokens", 8}}))));
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_inflight_requests") == 1; }));
  auto joiner = s.connect();
  ASSERT_TRUE(joiner.send(post_json("/v1/infer", infer_body("shared question", {{"maxTokens", 8}}))));
  for (auto* c : {&first, &joiner}) {
    auto r = c->read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c->last_error();
    ASSERT_EQ(r->status, 200) << r->describe();
  }
  auto hit = infer(s.port(), infer_body("shared question", {{"maxTokens", 8}}));
  ASSERT_EQ(hit.status, 200) << hit.describe();
  EXPECT_TRUE(json_body(hit)->at("cached").as_bool()) << hit.describe();
  EXPECT_EQ(infer(s.port(), infer_body("another question", {{"maxTokens", 4}})).status, 200);
  // A 404, a 400 invalid_json and a 413.
  auto missing = roundtrip(s.port(), get("/no/such/route"));
  ASSERT_TRUE(missing);
  EXPECT_TRUE(is_error(*missing, 404, "not_found"));
  EXPECT_TRUE(is_error(infer(s.port(), "{\"input\":"), 400, "invalid_json"));
  EXPECT_TRUE(is_error(declared_too_large(s.port()), 413, "body_too_large"));

  // llama-server's series merged in (fetched about every second).
  std::string text;
  ASSERT_TRUE(eventually([&] {
    text = scrape(s.port());
    return text.find("\nray_backend_llamacpp_") != std::string::npos;
  })) << "no ray_backend_llamacpp_ series in Ray's /metrics:\n"
      << text;
  EXPECT_EQ(value_in(text, "ray_dedupe_joins_total"), 1);
  EXPECT_EQ(value_in(text, "ray_cache_hits_total"), 1);
  EXPECT_EQ(value_in(text, "ray_requests_total{route=\"other\",code=\"404\"}"), 1);

  // The harness itself: promtool's verdict reaches us (a series without HELP fails the lint).
  ASSERT_NE(promtool_check("undocumented 1\n").exit_status, 0);
  auto lint = promtool_check(text);
  EXPECT_EQ(lint.exit_status, 0) << "promtool check metrics:\n" << lint.output << "\n--- text:\n" << text;
}

// ---- 2. counters and histograms
// ------------------------------------------------------------------------------

TEST(Observability, EachRejectionReasonIncrementsItsOwnSeries) {
  // One request at a time, 400 ms each, two waiting at most; prompts up to ~15 000 tokens fit the body limit
  // and are not cut (degradation off), so the context check sees them.
  auto cfg = slow_mock(
      400, {{"scheduler", json::object{{"concurrency", 1}, {"maxQueue", 2}, {"affinityLookahead", 2}}},
            {"gracefulDegradation", json::object{{"enabled", false}, {"queueDepthThreshold", 1}}},
            {"server", json::object{{"requestBodyLimitBytes", 60000}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto const rejected = [&](std::string const& reason) {
    return counter(s.port(), "ray_rejections_total{reason=\"" + reason + "\"}");
  };

  EXPECT_TRUE(is_error(infer(s.port(), "{not json"), 400, "invalid_json"));
  EXPECT_EQ(rejected("invalid_json"), 1);
  EXPECT_TRUE(is_error(infer(s.port(), "[1,2]"), 400, "invalid_request"));
  EXPECT_EQ(rejected("invalid_request"), 1);
  EXPECT_TRUE(is_error(declared_too_large(s.port()), 413, "body_too_large"));
  EXPECT_EQ(rejected("body_too_large"), 1);
  EXPECT_TRUE(is_error(infer(s.port(), infer_body(std::string(20000, 'a'))), 413,
                       "request_context_window_exceeded"));  // ~5000 tokens > 4096
  EXPECT_EQ(rejected("request_context_window_exceeded"), 1);
  auto missing = roundtrip(s.port(), get("/no/such/route"));
  ASSERT_TRUE(missing);
  EXPECT_TRUE(is_error(*missing, 404, "not_found"));
  EXPECT_EQ(rejected("not_found"), 1) << "router-level errors are refusals too";

  // queue_full: one in flight, two waiting, the fourth refused. Then a waiting client leaves.
  auto busy = s.connect();
  ASSERT_TRUE(busy.send(post_json("/v1/infer", infer_body("in flight"))));
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_inflight_requests") == 1; }));
  auto staying = s.connect();
  ASSERT_TRUE(staying.send(post_json("/v1/infer", infer_body("waiting to the end"))));
  auto queued = s.connect();
  ASSERT_TRUE(queued.send(post_json("/v1/infer", infer_body("waiting, then leaving"))));
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_queue_depth") == 2; }));
  EXPECT_TRUE(is_error(infer(s.port(), infer_body("one too many")), 503, "queue_full"));
  EXPECT_EQ(rejected("queue_full"), 1);
  queued.close();
  EXPECT_TRUE(
      eventually([&] { return counter(s.port(), "ray_cancellations_total{phase=\"queued\"}") == 1; }));
  for (auto* c : {&busy, &staying}) {
    auto r = c->read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c->last_error();
    EXPECT_EQ(r->status, 200) << r->describe();
  }

  // Each reason exactly once: no request was counted under two reasons or twice.
  auto text = scrape(s.port());
  EXPECT_EQ(sum_of(text, "ray_rejections_total"), 6) << text;
  EXPECT_EQ(sum_of(text, "ray_cancellations_total"), 1) << text;
}

TEST(Observability, CancellationsAreCountedByPhaseAndHistogramsFollowDispatch) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));

  // One answered request.
  EXPECT_EQ(infer(s.port(), infer_body("a plain answer", {{"maxTokens", 4}})).status, 200);

  // prefill: a 400-token prompt at 20 tokens/s takes 20 s; the client leaves during it.
  ASSERT_TRUE(f.control({{"prompt_tps", 20}}));
  auto pre = s.connect();
  ASSERT_TRUE(pre.send(post_json("/v1/infer", infer_body(std::string(1600, 'p'), {{"maxTokens", 16}}))));
  ASSERT_TRUE(eventually([&] { return num(f.stats(), "processing") == 1; }));
  pre.close();
  EXPECT_TRUE(
      eventually([&] { return counter(s.port(), "ray_cancellations_total{phase=\"prefill\"}") == 1; }));
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_inflight_requests") == 0; }));

  // decode: 10 tokens/s, 100 tokens; the client leaves after a few.
  ASSERT_TRUE(f.control({{"prompt_tps", 0}, {"gen_tps", 10}}));
  auto dec = s.connect();
  ASSERT_TRUE(dec.send(post_json("/v1/infer", infer_body("decode for a while", {{"maxTokens", 100}}))));
  ASSERT_TRUE(decoding(f, 3));
  dec.close();
  EXPECT_TRUE(
      eventually([&] { return counter(s.port(), "ray_cancellations_total{phase=\"decode\"}") == 1; }));
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_inflight_requests") == 0; }));

  auto text = scrape(s.port());
  EXPECT_EQ(value_in(text, "ray_cancellations_total{phase=\"prefill\"}"), 1) << text;
  EXPECT_EQ(value_in(text, "ray_cancellations_total{phase=\"decode\"}"), 1) << text;
  EXPECT_LE(value_in(text, "ray_cancellations_total{phase=\"queued\"}"), 0) << text;
  EXPECT_EQ(value_in(text, "ray_backend_requests_total{outcome=\"ok\"}"), 1) << text;
  EXPECT_EQ(value_in(text, "ray_backend_requests_total{outcome=\"cancelled\"}"), 2) << text;
  // Three dispatched requests waited in the queue; one of them reached its first token.
  EXPECT_EQ(value_in(text, "ray_queue_wait_seconds_count"), 3) << text;
  EXPECT_EQ(value_in(text, "ray_queue_wait_seconds_count"), sum_of(text, "ray_backend_requests_total"));
  EXPECT_EQ(value_in(text, "ray_time_to_first_token_seconds_count"), 1) << text;
}

TEST(Observability, HistogramCountsMatchTheRequestsTheyDescribe) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  ASSERT_TRUE(f.control({{"gen_tps", 10}}));  // 8 tokens take 800 ms: room for an identical request to join
  int answered = 0;
  auto answer = [&](rt::http_response const& r) {
    if (r.status != 0) ++answered;
    return r;
  };

  // Dispatched and ok (1 backend call for 2 clients), then a cache hit.
  auto first = s.connect();
  ASSERT_TRUE(first.send(post_json("/v1/infer", infer_body("same", {{"maxTokens", 8}}))));
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_inflight_requests") == 1; }));
  auto joiner = s.connect();
  ASSERT_TRUE(joiner.send(post_json("/v1/infer", infer_body("same", {{"maxTokens", 8}}))));
  for (auto* c : {&first, &joiner}) {
    auto r = c->read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c->last_error();
    EXPECT_EQ(answer(*r).status, 200) << r->describe();
  }
  EXPECT_EQ(metric(s.port(), "ray_dedupe_joins_total"), 1);
  auto hit = answer(infer(s.port(), infer_body("same", {{"maxTokens", 8}})));
  EXPECT_TRUE(json_body(hit)->at("cached").as_bool()) << hit.describe();

  // Dispatched, not ok: the backend answers 500.
  ASSERT_TRUE(f.control({{"gen_tps", 0}, {"fail_status", 500}}));
  auto failed = answer(infer(s.port(), infer_body("fails upstream", {{"maxTokens", 4}})));
  EXPECT_TRUE(is_error(failed, 502, "provider_upstream_error"));
  ASSERT_TRUE(f.control({{"fail_status", 0}}));

  // Never dispatched: refused before the queue.
  EXPECT_TRUE(is_error(answer(infer(s.port(), "{oops")), 400, "invalid_json"));
  EXPECT_TRUE(is_error(answer(infer(s.port(), "{\"input\":42}")), 400, "invalid_request"));
  EXPECT_TRUE(is_error(answer(declared_too_large(s.port())), 413, "body_too_large"));
  ASSERT_EQ(answered, 7);

  auto text = scrape(s.port());
  EXPECT_EQ(value_in(text, "ray_backend_requests_total{outcome=\"ok\"}"), 1) << text;
  EXPECT_EQ(value_in(text, "ray_backend_requests_total{outcome=\"error\"}"), 1) << text;
  EXPECT_EQ(sum_lines(text, "ray_requests_total{route=\"/v1/infer\","), answered)
      << "ray_requests_total{route=\"/v1/infer\"} over all codes\n"
      << text;
  EXPECT_EQ(value_in(text, "ray_request_duration_seconds_count{route=\"/v1/infer\"}"), answered)
      << "every answered /v1/infer request is observed once\n"
      << text;
  EXPECT_EQ(value_in(text, "ray_queue_wait_seconds_count"), 2) << text;
  EXPECT_EQ(value_in(text, "ray_queue_wait_seconds_count"), sum_of(text, "ray_backend_requests_total"));
  EXPECT_EQ(value_in(text, "ray_time_to_first_token_seconds_count"),
            value_in(text, "ray_backend_requests_total{outcome=\"ok\"}"))
      << text;
}

// ---- 3. llama-server's /metrics re-exported
// ------------------------------------------------------------------

TEST(Observability, BackendSeriesAreReexportedWithTheirHelpAndTheDoublesValues) {
  fake_llama f({"-c", "2048", "-np", "2", "--metrics"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  for (int n : {3, 5, 7})
    ASSERT_EQ(infer(s.port(), infer_body("count " + std::to_string(n), {{"maxTokens", n}})).status, 200);

  // Within ~1 s (the fetch interval) Ray's copy equals the double's own counter.
  double own = -1, copy = -1;
  std::string text;
  EXPECT_TRUE(eventually(
      [&] {
        own = value_in(f.own_metrics(), "llamacpp:tokens_predicted_total");
        text = scrape(s.port());
        copy = value_in(text, "ray_backend_llamacpp_tokens_predicted_total");
        return own >= 15 && copy == own;
      },
      3s))
      << "double " << own << ", Ray " << copy << "\n"
      << text;
  EXPECT_NE(text.find("# HELP ray_backend_llamacpp_tokens_predicted_total Number of generation tokens "
                      "processed\n"),
            std::string::npos)
      << "llama-server's HELP text is kept\n"
      << text;
  EXPECT_NE(text.find("# TYPE ray_backend_llamacpp_tokens_predicted_total counter\n"), std::string::npos);
  // The renaming rules of operations.md §2.
  EXPECT_NE(text.find("# TYPE ray_backend_llamacpp_n_tokens_max gauge\n"), std::string::npos) << text;
  EXPECT_GE(value_in(text, "ray_backend_llamacpp_prompt_tokens_per_second"), 0) << text;
  EXPECT_EQ(text.find("llamacpp:"), std::string::npos) << "a name with ':' leaked through\n" << text;
}

TEST(Observability, WithoutBackendMetricsNoBackendSeriesAppear) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  ASSERT_EQ(infer(s.port(), infer_body("hello", {{"maxTokens", 2}})).status, 200);
  // Two fetches answered 501 by the double: the first one's answer has certainly been handled.
  ASSERT_TRUE(eventually([&] { return f.metrics_requests() >= 2; }, 5s))
      << "Ray never asked the double for /metrics";
  auto text = scrape(s.port());
  ASSERT_NE(text.find("ray_requests_total"), std::string::npos) << text;
  EXPECT_EQ(text.find("ray_backend_llamacpp_"), std::string::npos) << text;
}

TEST(Observability, AHangingBackendMetricsFetchNeverDelaysRaysOwnMetrics) {
  // --slots-block-on-prefill: the double's /metrics waits while a prompt is being processed, like
  // llama-server's task loop. A 400-token prompt at 20 tokens/s keeps it waiting for 20 s.
  fake_llama f({"-c", "2048", "-np", "2", "--metrics", "--slots-block-on-prefill"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  ASSERT_TRUE(eventually([&] {
    return scrape(s.port()).find("\nray_backend_llamacpp_") != std::string::npos;
  })) << "the double's series never appeared";

  ASSERT_TRUE(f.control({{"prompt_tps", 20}}));
  auto pre = s.connect();
  ASSERT_TRUE(pre.send(post_json("/v1/infer", infer_body(std::string(1600, 'p'), {{"maxTokens", 4}}))));
  ASSERT_TRUE(eventually([&] { return num(f.stats(), "processing") == 1; }));
  // A fetch that arrives now hangs.
  auto const before = f.metrics_requests();
  ASSERT_TRUE(eventually([&] { return f.metrics_requests() > before; }, 3s))
      << "Ray did not fetch the double's /metrics again";
  auto const hang_seen = steady::now();

  // For 1.5 s — the hanging fetch, its timeout (healthTimeoutMs 500) and the next hanging fetch — every
  // scrape of Ray answers within 200 ms.
  int scrapes = 0;
  double slowest_ms = 0;
  bool stale_served = false;
  while (steady::now() - hang_seen < 1500ms) {
    auto const t0 = steady::now();
    auto r = roundtrip(s.port(), get("/metrics"), rt::in(2s));
    auto const took = rt::ms(steady::now() - t0);
    ASSERT_TRUE(r) << "Ray's /metrics did not answer within 2 s while the backend's /metrics hung";
    EXPECT_EQ(r->status, 200);
    slowest_ms = std::max(slowest_ms, took);
    if (scrapes == 0 && steady::now() - hang_seen < 300ms)
      stale_served = r->body.find("\nray_backend_llamacpp_") != std::string::npos;
    ++scrapes;
    std::this_thread::sleep_for(20ms);  // scrape interval of the timed window, not waiting for state
  }
  std::printf("hanging backend /metrics: %d scrapes of Ray in 1.5 s, slowest %.1f ms\n", scrapes, slowest_ms);
  // No wall-clock bound here (issue 12: timing goals live in benchmarks): every scrape answered within its 2
  // s deadline while the backend's own /metrics hung for 20 s, which is the behaviour under test.
  EXPECT_GE(scrapes, 5);
  EXPECT_TRUE(stale_served) << "while a fetch runs, the last copy is served (http-api.md §5)";
  // The knob did its job: the double's own /metrics still hangs (the prefill lasts 20 s).
  EXPECT_FALSE(roundtrip(f.port(), get("/metrics"), rt::in(300ms)))
      << "the double's own /metrics answered during the prefill: the check measured nothing";
  EXPECT_EQ(num(f.stats(), "processing"), 1) << "the prefill (and so the hang) lasted the whole check";
}

// ---- 4. overload in the log
// --------------------------------------------------------------------------------------------------

TEST(Observability, AnOverloadIsSummarisedInTheLogNotLoggedPerRefusal) {
  // 4 completions/s (250 ms, one at a time), 4 waiting at most; offered 40 requests/s for 2 s = 10x. The
  // served requests wait up to ~1.25 s in the queue: slowRequestThresholdMs is raised above that so each of
  // them is not also a `slow request` warn line (those are one per served request, bounded by the backend's
  // throughput rather than by the offered load: not what this test is about).
  auto cfg = slow_mock(
      250, {{"scheduler", json::object{{"concurrency", 1}, {"maxQueue", 4}, {"affinityLookahead", 4}}},
            {"gracefulDegradation", json::object{{"queueDepthThreshold", 3}}},
            {"telemetry", json::object{{"slowRequestThresholdMs", 5000}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto const warn_lines = [&] {
    std::vector<json::object> out;
    for (auto const& l : s.process().lines()) {
      if (l.from != rt::stream::out) continue;
      auto o = rt::parse_log_line(l.text);
      if (o && rt::string_field(*o, "level") == "warn") out.push_back(std::move(*o));
    }
    return out;
  };
  auto const warn_before = warn_lines().size();

  constexpr int n = 80;
  std::atomic<int> full{0}, ok{0}, other{0};
  std::vector<std::thread> threads;
  auto const start = steady::now();
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      auto r =
          roundtrip(s.port(), post_json("/v1/infer", infer_body("load " + std::to_string(i))), rt::in(30s));
      if (r && r->status == 503)
        ++full;
      else if (r && r->status == 200)
        ++ok;
      else
        ++other;
    });
    std::this_thread::sleep_until(start + (i + 1) * 25ms);  // pacing the offered load, not waiting for state
  }
  for (auto& t : threads)
    t.join();
  auto const elapsed = std::chrono::duration<double>(steady::now() - start).count();
  auto const warns = warn_lines();
  auto const warn_count = static_cast<double>(warns.size() - warn_before);

  std::printf("overload: %d answered 200, %d refused queue_full, %.0f warn lines in %.2f s (%.1f/s)\n",
              ok.load(), full.load(), warn_count, elapsed, warn_count / elapsed);
  EXPECT_EQ(other.load(), 0);
  EXPECT_GE(full.load(), 40) << "the overload was not 10x";
  EXPECT_EQ(counter(s.port(), "ray_rejections_total{reason=\"queue_full\"}"), full.load());
  EXPECT_LE(warn_count / elapsed, 5.0) << warn_count << " warn lines in " << elapsed << " s\n"
                                       << s.output_tail();
  EXPECT_GE(full.load(), 5 * warn_count) << "rejections should far outnumber warn lines";

  // The summary names the reason and carries a count; once the last window closes, the counts add up to
  // every refusal.
  auto const logged = [&] {
    std::uint64_t sum = 0;
    for (auto const& o : warn_lines()) {
      if (rt::string_field(o, "message") != "request rejected" ||
          rt::string_field(o, "reason") != "queue_full")
        continue;
      if (auto const* c = o.if_contains("count"); c && c->is_number()) sum += c->to_number<std::uint64_t>();
    }
    return sum;
  };
  bool any = false;
  for (auto const& o : warns) {
    if (rt::string_field(o, "reason") != "queue_full") continue;
    any = true;
    EXPECT_EQ(rt::string_field(o, "message"), "request rejected");
    ASSERT_TRUE(o.contains("count") && o.at("count").is_number()) << json::serialize(o);
    EXPECT_GE(o.at("count").to_number<std::int64_t>(), 1);
  }
  EXPECT_TRUE(any) << "no warn line with \"reason\":\"queue_full\"\n" << s.output_tail();
  EXPECT_TRUE(eventually([&] { return logged() == static_cast<std::uint64_t>(full.load()); }, 3s))
      << "the summaries' counts add up to " << logged() << ", refusals " << full.load();
}

// ---- 5. polled routes in the log
// ----------------------------------------------------------------------------------------------

TEST(Observability, PolledRoutesLogAtDebugAndApiRequestsAtInfo) {
  // The status page polls /health and /metrics every 2 s, load balancers poll /readyz: at the default level
  // (info) none of them may write a request line, while an API request still does.
  ray_server s(test_config(), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  for (auto const* path : {"/livez", "/readyz", "/health", "/metrics"}) {
    auto r = roundtrip(s.port(), get(path));
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 200) << path;
  }
  EXPECT_EQ(infer(s.port(), infer_body("logged")).status, 200);
  auto const request_lines = [&] {
    std::vector<std::string> routes;
    for (auto const& l : s.process().lines()) {
      auto o = rt::parse_log_line(l.text);
      if (o && rt::string_field(*o, "message") == "request completed")
        routes.push_back(rt::string_field(*o, "route"));
    }
    return routes;
  };
  // The log is written in order by one thread: once the API request's line is there, the probes' would be
  // too.
  ASSERT_TRUE(eventually([&] {
    auto const r = request_lines();
    return std::find(r.begin(), r.end(), "/v1/infer") != r.end();
  })) << s.output_tail();
  auto const routes = request_lines();
  EXPECT_EQ(routes, std::vector<std::string>{"/v1/infer"}) << s.output_tail();
}

TEST(Observability, HealthSplitsTheQueueByLane) {
  // One request generating (concurrency 1), then a short one (maxTokens 8 ≤ shortJobMaxTokens) and two long
  // ones waiting: /health's queue shows depth 3 as short 1 + draft 2.
  ray_server s(slow_mock(60'000, {{"scheduler", json::object{{"concurrency", 1}}}}), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto const queue = [&]() -> json::object {
    auto r = roundtrip(s.port(), get("/health"));
    if (!r) return {};
    auto b = json_body(*r);
    if (!b || !b->contains("runtime")) return {};
    return b->at("runtime").at("queue").as_object();
  };
  std::vector<rt::raw_client> clients;
  auto const send = [&](std::string const& input, int max_tokens) {
    clients.emplace_back(s.port());
    ASSERT_TRUE(clients.back().send(post_json("/v1/infer", infer_body(input, {{"maxTokens", max_tokens}}))));
  };
  send("generating", 200);
  ASSERT_TRUE(eventually([&] {
    auto q = queue();
    return q.contains("inFlight") && num(q, "inFlight") == 1;
  }));
  send("short one", 8);
  send("long one", 200);
  send("long two", 200);
  ASSERT_TRUE(eventually([&] {
    auto q = queue();
    return q.contains("depth") && num(q, "depth") == 3;
  })) << json::serialize(queue());
  auto const q = queue();
  ASSERT_TRUE(q.contains("lanes")) << json::serialize(q);
  EXPECT_EQ(num(q.at("lanes").as_object(), "short"), 1) << json::serialize(q);
  EXPECT_EQ(num(q.at("lanes").as_object(), "draft"), 2) << json::serialize(q);
}

}  // namespace
}  // namespace ray::itest
