// Micro-benchmarks of ray::telemetry: the cost of a /metrics render at Ray's realistic size and of the
// hot-path updates (counter increment, histogram observe, handle lookup, a log line).
//
// Target: a Prometheus render of 15 routes × 8 statuses + 3 histograms × 12 buckets + 20 foreign series
// (plus the standard series) under 200 µs.
#include "ray/telemetry/telemetry.hpp"

#include <benchmark/benchmark.h>

#include <array>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace tele = ray::telemetry;

namespace {

constexpr std::array<std::string_view, 15> routes{
    "/v1/infer",     "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/jobs",
    "/v1/jobs/{id}", "/v1/embeddings",       "/health",         "/livez",     "/readyz",
    "/metrics",      "/v1/tokenize",         "/v1/detokenize",  "/props",     "other"};
constexpr std::array<std::string_view, 8> statuses{"200", "400", "401", "404", "413", "429", "503", "504"};
constexpr std::array<double, 12> bounds{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60};

// Ray's registry at its realistic size, every series populated.
struct realistic_registry {
  tele::registry reg;
  std::string foreign;

  realistic_registry() {
    auto requests =
        reg.add_counter("ray_requests_total", "Completed HTTP requests by route template and status.",
                        {"route", "code"}, {.json_name = "requests.total"});
    std::uint64_t n = 1;
    for (auto r : routes) {
      for (auto s : statuses)
        requests.with({r, s}).inc(n++ * 7919);
    }
    for (auto name :
         {"ray_queue_wait_seconds", "ray_time_to_first_token_seconds", "ray_request_duration_seconds"}) {
      auto h = reg.add_histogram(name, "Latency in seconds.", {}, bounds, {.json_name = name}).with();
      for (int i = 0; i < 1000; ++i)
        h.observe(0.001 * i * i / 10);
    }
    for (int i = 0; i < 20; ++i) {
      auto name = "ray_backend_llamacpp_series_" + std::to_string(i);
      foreign += "# HELP " + name + " Re-exported llama-server series.\n# TYPE " + name + " gauge\n" + name +
                 " " + std::to_string(i * 1.5) + "\n";
    }
    reg.add_text_source([this](std::string& out) { out += foreign; });
  }
};

void BM_RenderPrometheus(benchmark::State& state) {
  realistic_registry r;
  std::string out;
  for (auto _ : state) {
    out.clear();
    r.reg.render_prometheus(out);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["bytes"] = static_cast<double>(out.size());
}
BENCHMARK(BM_RenderPrometheus)->Unit(benchmark::kMicrosecond);

void BM_RenderJson(benchmark::State& state) {
  realistic_registry r;
  std::string out;
  for (auto _ : state) {
    out.clear();
    r.reg.render_json(out);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["bytes"] = static_cast<double>(out.size());
}
BENCHMARK(BM_RenderJson)->Unit(benchmark::kMicrosecond);

void BM_CounterIncrement(benchmark::State& state) {
  static tele::registry reg(tele::registry_options{.standard_series = false});
  static auto c = reg.add_counter("ray_requests_total", "R.", {"route", "code"}).with({"/v1/infer", "200"});
  for (auto _ : state)
    c.inc();
  benchmark::DoNotOptimize(c.value());
}
BENCHMARK(BM_CounterIncrement);
BENCHMARK(BM_CounterIncrement)->Threads(2);  // both threads on one cell: the contended worst case

void BM_HistogramObserve(benchmark::State& state) {
  tele::registry reg(tele::registry_options{.standard_series = false});
  auto h = reg.add_histogram("ray_request_duration_seconds", "D.").with();
  double v = 0.0;
  for (auto _ : state) {
    h.observe(v);
    v = v > 70 ? 0.0 : v + 0.37;
  }
  benchmark::DoNotOptimize(h.count());
}
BENCHMARK(BM_HistogramObserve);

void BM_SeriesLookup(benchmark::State& state) {
  realistic_registry r;
  auto requests = r.reg.add_counter("ray_lookup_total", "L.", {"route", "code"});
  for (auto rt : routes) {
    for (auto s : statuses)
      requests.with({rt, s});
  }
  std::size_t i = 0;
  for (auto _ : state) {
    auto c = requests.with({routes[i % routes.size()], statuses[i % statuses.size()]});
    benchmark::DoNotOptimize(c);
    ++i;
  }
}
BENCHMARK(BM_SeriesLookup);

void BM_LogLine(benchmark::State& state) {
  int devnull = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  {
    tele::logger log(tele::logger_options{.out_fd = devnull, .err_fd = devnull});
    for (auto _ : state) {
      log.info(
          "request completed",
          {{"requestId", "req_0123456789abcdef"}, {"route", "/v1/infer"}, {"status", 200}, {"ms", 12.5}});
    }
    log.flush();
    state.counters["dropped"] = static_cast<double>(log.dropped_lines());
  }
  ::close(devnull);
}
BENCHMARK(BM_LogLine);

void BM_LogLineBelowLevel(benchmark::State& state) {
  int devnull = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  {
    tele::logger log(
        tele::logger_options{.min_level = tele::level::info, .out_fd = devnull, .err_fd = devnull});
    for (auto _ : state)
      log.debug("probe");
  }
  ::close(devnull);
}
BENCHMARK(BM_LogLineBelowLevel);

}  // namespace
