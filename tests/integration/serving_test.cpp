// The serving core through the real binary: single-flight dedupe, cancellation of shared calls, the result
// cache, overload with an honest Retry-After, and degradation from (fixture) pressure files.
#include "http_test_util.hpp"

#include <atomic>
#include <cmath>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

namespace ray::itest {
namespace {

boost::json::object slow_mock(int latency_ms, boost::json::object extra = {}) {
  auto cfg = test_config({}, {{"latencyMs", latency_ms}});
  return with(cfg, extra);
}

std::string infer_body(std::string const& input, std::string const& extra = "") {
  return "{\"input\":\"" + input + "\"" + extra + "}";
}

TEST(Serving, IdenticalConcurrentRequestsShareOneBackendCallWithDistinctIds) {
  ray_server s(slow_mock(200), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  constexpr int n = 6;
  std::vector<rt::raw_client> clients;
  for (int i = 0; i < n; ++i) {
    clients.push_back(s.connect());
    ASSERT_TRUE(clients.back().send(post_json("/v1/infer", infer_body("same question"))));
  }
  std::set<std::string> ids;
  int deduplicated = 0;
  for (auto& c : clients) {
    auto r = c.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c.last_error();
    ASSERT_EQ(r->status, 200) << r->describe();
    auto body = json_body(*r);
    ASSERT_TRUE(body);
    ids.insert(rt::string_field(*body, "id"));
    deduplicated += body->at("deduplicated").as_bool() ? 1 : 0;
    EXPECT_NE(rt::string_field(*body, "output").find("same question"), std::string::npos);
  }
  EXPECT_EQ(ids.size(), static_cast<std::size_t>(n));
  EXPECT_EQ(deduplicated, n - 1);
  EXPECT_EQ(metric(s.port(), "ray_backend_requests_total{outcome=\"ok\"}"), 1);
  EXPECT_EQ(metric(s.port(), "ray_dedupe_joins_total"), n - 1);
}

TEST(Serving, ADifferentSeedDoesNotJoinAndARepeatIsACacheHit) {
  ray_server s(slow_mock(200), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto a = s.connect();
  auto b = s.connect();
  ASSERT_TRUE(a.send(post_json("/v1/infer", infer_body("q", ",\"seed\":1"))));
  ASSERT_TRUE(b.send(post_json("/v1/infer", infer_body("q", ",\"seed\":2"))));
  auto ra = a.read_response(rt::in(kIo));
  auto rb = b.read_response(rt::in(kIo));
  ASSERT_TRUE(ra && rb);
  EXPECT_FALSE(json_body(*rb)->at("deduplicated").as_bool());
  EXPECT_EQ(metric(s.port(), "ray_backend_requests_total{outcome=\"ok\"}"), 2);

  auto c = s.connect();
  ASSERT_TRUE(c.send(post_json("/v1/infer", infer_body("q", ",\"seed\":1"))));
  auto rc = c.read_response(rt::in(kIo));
  ASSERT_TRUE(rc);
  EXPECT_TRUE(json_body(*rc)->at("cached").as_bool()) << rc->describe();
  EXPECT_EQ(metric(s.port(), "ray_backend_requests_total{outcome=\"ok\"}"), 2);
  EXPECT_EQ(metric(s.port(), "ray_cache_hits_total"), 1);
}

TEST(Serving, CancellingAllButOneWaiterKeepsTheSharedCall) {
  ray_server s(slow_mock(400), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  std::vector<rt::raw_client> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(s.connect());
    ASSERT_TRUE(clients.back().send(post_json("/v1/infer", infer_body("shared"))));
  }
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_dedupe_joins_total") == 2; }));
  clients[0].close();
  clients[1].close();
  auto r = clients[2].read_response(rt::in(kIo));
  ASSERT_TRUE(r) << clients[2].last_error();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(metric(s.port(), "ray_backend_requests_total{outcome=\"ok\"}"), 1);
  EXPECT_EQ(metric(s.port(), "ray_backend_requests_total{outcome=\"cancelled\"}"), 0);
}

TEST(Serving, CancellingEveryWaiterEndsTheBackendCall) {
  ray_server s(slow_mock(3000), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  std::vector<rt::raw_client> clients;
  for (int i = 0; i < 2; ++i) {
    clients.push_back(s.connect());
    ASSERT_TRUE(clients.back().send(post_json("/v1/infer", infer_body("abandoned"))));
  }
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_inflight_requests") == 1; }));
  for (auto& c : clients)
    c.close();
  // Well before the mock's 3 s latency, the shared call is cancelled and its slot is free.
  EXPECT_TRUE(eventually(
      [&] { return metric(s.port(), "ray_backend_requests_total{outcome=\"cancelled\"}") == 1; }, 2s));
  EXPECT_EQ(metric(s.port(), "ray_inflight_requests"), 0);
  EXPECT_EQ(metric(s.port(), "ray_cancellations_total{phase=\"prefill\"}"), 1);
}

TEST(Serving, AQueuedRequestWhoseClientLeavesNeverReachesTheBackend) {
  ray_server s(slow_mock(600), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto busy = s.connect();
  ASSERT_TRUE(busy.send(post_json("/v1/infer", infer_body("first"))));
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_inflight_requests") == 1; }));
  auto queued = s.connect();
  ASSERT_TRUE(queued.send(post_json("/v1/infer", infer_body("second"))));
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_queue_depth") == 1; }));
  queued.close();
  EXPECT_TRUE(eventually([&] { return metric(s.port(), "ray_queue_depth") == 0; }, 1s));
  EXPECT_EQ(metric(s.port(), "ray_queue_tokens"), 0);
  auto r = busy.read_response(rt::in(kIo));
  ASSERT_TRUE(r);
  EXPECT_EQ(metric(s.port(), "ray_cancellations_total{phase=\"queued\"}"), 1);
  EXPECT_EQ(metric(s.port(), "ray_backend_requests_total{outcome=\"ok\"}"), 1);
}

TEST(Serving, OverloadAnswersQueueFullWithAnHonestRetryAfter) {
  // One request at a time, 250 ms each (4 completions/s), 16 waiting at most: a full queue means
  // (16 + 1) / 4 ≈ 4.25 s until a new request would be served.
  auto cfg = slow_mock(250, {{"scheduler", boost::json::object{{"maxQueue", 16}, {"requestTimeoutMs", 8000}}},
                             {"gracefulDegradation", boost::json::object{{"queueDepthThreshold", 15}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  // Offer ~10x capacity (40 req/s) for 2.5 s, each request unique (no dedupe, no cache).
  std::mutex mu;
  std::vector<rt::http_response> responses;
  std::vector<std::thread> threads;
  auto const start = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i) {
    threads.emplace_back([&, i] {
      rt::raw_client c(s.port());
      if (!c.send(post_json("/v1/infer", infer_body("load " + std::to_string(i))))) return;
      auto r = c.read_response(rt::in(30s));
      if (!r) return;
      std::lock_guard lock(mu);
      responses.push_back(*r);
    });
    std::this_thread::sleep_until(start + (i + 1) * 25ms);  // pacing the offered load, not waiting for state
  }
  auto ready = s.connect();
  ASSERT_TRUE(ready.send(get("/readyz")));
  auto readyz = ready.read_response(rt::in(kIo));
  ASSERT_TRUE(readyz);
  EXPECT_EQ(readyz->status, 200) << readyz->describe();
  for (auto& t : threads)
    t.join();
  auto const elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  int ok = 0, full = 0;
  double completions = metric(s.port(), "ray_backend_requests_total{outcome=\"ok\"}");
  double observed_rate = completions / elapsed;
  double expected = std::ceil(17.0 / observed_rate);
  for (auto const& r : responses) {
    if (r.status == 200) {
      ++ok;
      continue;
    }
    if (r.status == 504) continue;
    ASSERT_TRUE(is_error(r, 503, "queue_full"));
    ++full;
    auto ra = std::stod(r.header("retry-after").value_or("0"));
    EXPECT_GE(ra, expected / 2) << "observed rate " << observed_rate << "/s";
    EXPECT_LE(ra, expected * 2) << "observed rate " << observed_rate << "/s";
    EXPECT_TRUE(r.has_header("retry-after-ms"));
  }
  EXPECT_EQ(responses.size(), 100u);
  EXPECT_GT(ok, 5);
  EXPECT_GT(full, 20);
  EXPECT_GE(expected, 4);
#ifndef RAY_SANITIZED
  auto status = std::ifstream("/proc/" + std::to_string(s.process().pid()) + "/status");
  std::string line;
  long rss_kib = 0;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) rss_kib = std::stol(line.substr(6));
  EXPECT_LT(rss_kib, 64 * 1024) << "RSS ceiling 64 MiB under 10x overload (debug build)";
#else
  std::puts("RSS ceiling skipped: sanitizer build");
#endif
}

// A fake /proc + cgroup v2 tree for --system-root.
rt::temp_dir const& pressure_root(rt::temp_dir const& dir, double mem_some, double mem_full,
                                  double cpu_some) {
  std::filesystem::create_directories(dir.path() / "proc/self");
  std::filesystem::create_directories(dir.path() / "sys/fs/cgroup/ray.service");
  dir.write_file("proc/self/cgroup", "0::/ray.service\n");
  dir.write_file("proc/self/statm", "1000 500 100 10 0 200 0\n");
  auto psi = [](double some, double full) {
    return "some avg10=" + std::to_string(some) +
           " avg60=0.00 avg300=0.00 total=1\nfull avg10=" + std::to_string(full) +
           " avg60=0.00 avg300=0.00 total=1\n";
  };
  dir.write_file("sys/fs/cgroup/ray.service/memory.pressure", psi(mem_some, mem_full));
  dir.write_file("sys/fs/cgroup/ray.service/cpu.pressure", psi(cpu_some, 0));
  dir.write_file("sys/fs/cgroup/ray.service/memory.current", "1048576\n");
  dir.write_file("sys/fs/cgroup/ray.service/memory.max", "max\n");
  dir.write_file("sys/fs/cgroup/ray.service/cgroup.type", "domain\n");
  dir.write_file("sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
  return dir;
}

rt::http_response infer_once(ray_server& s, std::string const& body) {
  auto c = s.connect();
  EXPECT_TRUE(c.send(post_json("/v1/infer", body)));
  auto r = c.read_response(rt::in(kIo));
  EXPECT_TRUE(r) << c.last_error();
  return r.value_or(rt::http_response{});
}

TEST(Serving, MemoryPressureClampsMaxTokensAndReportsTheReason) {
  rt::temp_dir root;
  pressure_root(root, 30.0, 0.0, 0.0);
  ray_server s(slow_mock(0), {"--system-root", root.path().string()});
  ASSERT_TRUE(s.wait_listening());
  auto r = infer_once(s, infer_body("hello"));
  ASSERT_EQ(r.status, 200) << r.describe();
  auto body = json_body(r);
  EXPECT_TRUE(body->at("degraded").as_bool());
  auto const& d = body->at("diagnostics").at("degradation").as_object();
  EXPECT_EQ(d.at("reasons").as_array().size(), 1u);
  EXPECT_EQ(d.at("reasons").as_array()[0].as_string(), "memory_pressure");
  EXPECT_EQ(d.at("appliedMaxTokens").as_int64(), 96);  // tiny: degradeToMaxTokens
  EXPECT_EQ(r.header("x-ray-degraded").value_or(""), "true");
}

TEST(Serving, MemoryAndCpuPressureAtOnceListBothReasons) {
  rt::temp_dir root;
  pressure_root(root, 30.0, 0.0, 90.0);
  ray_server s(slow_mock(0), {"--system-root", root.path().string()});
  ASSERT_TRUE(s.wait_listening());
  auto r = infer_once(s, infer_body("hello"));
  auto reasons = json_body(r)->at("diagnostics").at("degradation").at("reasons").as_array();
  ASSERT_EQ(reasons.size(), 2u) << r.describe();
  EXPECT_EQ(reasons[0].as_string(), "memory_pressure");
  EXPECT_EQ(reasons[1].as_string(), "cpu_pressure");
  // /readyz shows the pressure but stays 200.
  auto c = s.connect();
  ASSERT_TRUE(c.send(get("/readyz")));
  auto ready = c.read_response(rt::in(kIo));
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);
  auto rb = json_body(*ready);
  EXPECT_EQ(rt::string_field(*rb, "status"), "degraded");
  EXPECT_TRUE(rb->at("pressure").at("memory").as_bool());
  EXPECT_TRUE(rb->at("pressure").at("cpu").as_bool());
}

TEST(Serving, AJsonModeRequestUnderPressureIsRefusedRatherThanClamped) {
  rt::temp_dir root;
  pressure_root(root, 30.0, 0.0, 0.0);
  ray_server s(slow_mock(0), {"--system-root", root.path().string()});
  ASSERT_TRUE(s.wait_listening());
  auto r = infer_once(s, infer_body("classify", ",\"responseFormat\":{\"type\":\"json_object\"}"));
  EXPECT_TRUE(is_error(r, 503, "overloaded"));
  EXPECT_TRUE(r.has_header("retry-after"));
}

TEST(Serving, SevereMemoryPressureShedsNewWork) {
  rt::temp_dir root;
  pressure_root(root, 80.0, 40.0, 0.0);  // full avg10 40 > shedAtMemoryPsiFullAvg10 (20)
  ray_server s(slow_mock(0), {"--system-root", root.path().string()});
  ASSERT_TRUE(s.wait_listening());
  auto r = infer_once(s, infer_body("hello"));
  EXPECT_TRUE(is_error(r, 503, "overloaded"));
  EXPECT_EQ(metric(s.port(), "ray_rejections_total{reason=\"overloaded\"}"), 1);
}

TEST(Serving, ALongPromptIsTruncatedOnNativeRoutes) {
  ray_server s(slow_mock(0), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto r = infer_once(s, infer_body(std::string(5000, 'a')));  // tiny: maxPromptChars 4000
  ASSERT_EQ(r.status, 200) << r.describe();
  auto d = json_body(r)->at("diagnostics").at("degradation").as_object();
  EXPECT_EQ(d.at("reasons").as_array()[0].as_string(), "prompt_length");
}

TEST(Serving, APromptOverTheContextWindowIs413WithItsNumbers) {
  ray_server s(slow_mock(0, {{"gracefulDegradation", boost::json::object{{"enabled", false}}},
                             {"server", boost::json::object{{"requestBodyLimitBytes", 60000}}}}),
               no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto r = infer_once(s, infer_body(std::string(20000, 'a')));  // ~5000 tokens > 4096
  ASSERT_TRUE(is_error(r, 413, "request_context_window_exceeded"));
  auto details = json_body(r)->at("error").at("details").as_object();
  EXPECT_EQ(details.at("contextWindow").as_int64(), 4096);
  EXPECT_EQ(details.at("promptTokens").as_int64(), 5000);
}

TEST(Serving, TheTotalDeadlineAnswers504) {
  ray_server s(
      slow_mock(3000, {{"scheduler", boost::json::object{{"requestTimeoutMs", 300}, {"batchWindowMs", 0}}}}),
      no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto r = infer_once(s, infer_body("slow"));
  EXPECT_TRUE(is_error(r, 504, "request_timeout"));
  EXPECT_EQ(r.header("retry-after").value_or(""), "5");
}

}  // namespace
}  // namespace ray::itest
