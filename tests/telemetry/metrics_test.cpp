#include "ray/telemetry/telemetry.hpp"
#include "support/require.hpp"

#include <boost/json/parse.hpp>

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace tele = ray::telemetry;
using namespace std::chrono_literals;

namespace {

tele::registry_options bare() {
  return tele::registry_options{.standard_series = false};
}

std::string prometheus(tele::registry const& r) {
  std::string s;
  r.render_prometheus(s);
  return s;
}

std::string json(tele::registry const& r) {
  std::string s;
  r.render_json(s);
  return s;
}

constexpr std::array<double, 3> three_bounds{0.1, 0.5, 1};

// Registry with every kind of series (used by the exact-text and promtool tests).
void fill_small_registry(tele::registry& r) {
  auto requests = r.add_counter("ray_requests_total", "Completed HTTP requests.", {"route", "code"},
                                {.json_name = "requests.total"});
  requests.with({"/v1/infer", "200"}).inc(3);
  requests.with({"/v1/jobs/{id}", "404"}).inc();
  r.add_gauge("ray_queue_depth", "Requests waiting for a slot.", {}, {.json_name = "queue.depth"})
      .with()
      .set(2);
  auto wait = r.add_histogram("ray_queue_wait_seconds", "Time from admission to dispatch.", {}, three_bounds,
                              {.json_name = "queue.wait"})
                  .with();
  for (double v : {0.0625, 0.25, 0.5, 2.0})
    wait.observe(v);
}

}  // namespace

TEST(Metrics, SmallRegistryRendersExactPrometheusText) {
  tele::registry r(bare());
  fill_small_registry(r);
  EXPECT_EQ(prometheus(r),
            "# HELP ray_requests_total Completed HTTP requests.\n"
            "# TYPE ray_requests_total counter\n"
            "ray_requests_total{route=\"/v1/infer\",code=\"200\"} 3\n"
            "ray_requests_total{route=\"/v1/jobs/{id}\",code=\"404\"} 1\n"
            "# HELP ray_queue_depth Requests waiting for a slot.\n"
            "# TYPE ray_queue_depth gauge\n"
            "ray_queue_depth 2\n"
            "# HELP ray_queue_wait_seconds Time from admission to dispatch.\n"
            "# TYPE ray_queue_wait_seconds histogram\n"
            "ray_queue_wait_seconds_bucket{le=\"0.1\"} 1\n"
            "ray_queue_wait_seconds_bucket{le=\"0.5\"} 3\n"
            "ray_queue_wait_seconds_bucket{le=\"1\"} 3\n"
            "ray_queue_wait_seconds_bucket{le=\"+Inf\"} 4\n"
            "ray_queue_wait_seconds_sum 2.8125\n"
            "ray_queue_wait_seconds_count 4\n");
}

TEST(Metrics, RenderingAppendsToTheCallersString) {
  tele::registry r(bare());
  r.add_counter("ray_x_total", "X.");
  std::string s = "prefix\n";
  r.render_prometheus(s);
  EXPECT_EQ(s, "prefix\n# HELP ray_x_total X.\n# TYPE ray_x_total counter\nray_x_total 0\n");
}

TEST(Metrics, LabelledHistogramPutsLeAfterTheFamilyLabels) {
  tele::registry r(bare());
  auto h = r.add_histogram("ray_request_duration_seconds", "Request duration.", {"route"}, three_bounds);
  h.with({"/v1/infer"}).observe(0.75);
  auto text = prometheus(r);
  EXPECT_NE(text.find("ray_request_duration_seconds_bucket{route=\"/v1/infer\",le=\"0.5\"} 0\n"),
            std::string::npos);
  EXPECT_NE(text.find("ray_request_duration_seconds_bucket{route=\"/v1/infer\",le=\"1\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("ray_request_duration_seconds_bucket{route=\"/v1/infer\",le=\"+Inf\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("ray_request_duration_seconds_sum{route=\"/v1/infer\"} 0.75\n"), std::string::npos);
  EXPECT_NE(text.find("ray_request_duration_seconds_count{route=\"/v1/infer\"} 1\n"), std::string::npos);
}

TEST(Metrics, LabelValuesAndHelpAreEscaped) {
  tele::registry r(bare());
  auto c = r.add_counter("ray_odd_total", "Help with \\ and\nnewline.", {"v"});
  c.with({"a\\b\"c\nd"}).inc();
  EXPECT_EQ(prometheus(r),
            "# HELP ray_odd_total Help with \\\\ and\\nnewline.\n"
            "# TYPE ray_odd_total counter\n"
            "ray_odd_total{v=\"a\\\\b\\\"c\\nd\"} 1\n");
}

TEST(Metrics, SameLabelValuesGiveTheSameSeries) {
  tele::registry r(bare());
  auto c = r.add_counter("ray_requests_total", "R.", {"route", "code"});
  auto a = c.with({"/v1/infer", "200"});
  auto b = c.with({"/v1/infer", "200"});
  a.inc();
  b.inc(2);
  EXPECT_EQ(a.value(), 3u);
  EXPECT_EQ(c.series_count(), 1u);
  // Length-prefixed keys: these two label sets must not collide.
  c.with({"ab", "c"}).inc();
  c.with({"a", "bc"}).inc();
  EXPECT_EQ(c.series_count(), 3u);
}

TEST(Metrics, SeriesBeyondTheCardinalityBoundFoldIntoOther) {
  tele::registry r(bare());
  auto c = r.add_counter("ray_requests_total", "R.", {"route", "code"}, {.max_series = 3});
  for (int i = 0; i < 10; ++i)
    c.with({"/r" + std::to_string(i), "200"}).inc();
  c.with({"/r0", "200"}).inc();     // existing series keep working
  EXPECT_EQ(c.series_count(), 4u);  // 3 + the "other" series
  auto text = prometheus(r);
  EXPECT_NE(text.find("ray_requests_total{route=\"/r0\",code=\"200\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("ray_requests_total{route=\"/r2\",code=\"200\"} 1\n"), std::string::npos);
  EXPECT_EQ(text.find("/r3"), std::string::npos);
  EXPECT_NE(text.find("ray_requests_total{route=\"other\",code=\"other\"} 7\n"), std::string::npos);
  EXPECT_EQ(c.with({"/new", "500"}).value(), 7u);
}

TEST(Metrics, LongLabelValuesAreCut) {
  tele::registry r(bare());
  auto g = r.add_gauge("ray_g", "G.", {"v"});
  g.with({std::string(1000, 'x')}).set(1);
  EXPECT_NE(prometheus(r).find("ray_g{v=\"" + std::string(tele::max_label_value_bytes, 'x') + "\"} 1\n"),
            std::string::npos);
}

TEST(Metrics, LabelledFamilyWithoutSeriesIsOmitted) {
  tele::registry r(bare());
  r.add_counter("ray_rejections_total", "Rejections.", {"reason"});
  EXPECT_EQ(prometheus(r), "");
}

TEST(Metrics, HistogramCountsSumsAndCumulatesBuckets) {
  tele::registry r(bare());
  auto h = r.add_histogram("ray_ttft_seconds", "TTFT.").with();
  h.observe(0.005);  // on a bound: counted in that bucket
  h.observe(7ms);
  h.observe(3.0);
  h.observe(100.0);
  h.observe(std::nan(""));  // ignored
  EXPECT_EQ(h.count(), 4u);
  EXPECT_DOUBLE_EQ(h.sum(), 103.012);
  auto text = prometheus(r);
  EXPECT_NE(text.find("ray_ttft_seconds_bucket{le=\"0.005\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("ray_ttft_seconds_bucket{le=\"0.01\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("ray_ttft_seconds_bucket{le=\"2.5\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("ray_ttft_seconds_bucket{le=\"5\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("ray_ttft_seconds_bucket{le=\"60\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("ray_ttft_seconds_bucket{le=\"+Inf\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("ray_ttft_seconds_count 4\n"), std::string::npos);
}

TEST(Metrics, DefaultLatencyBucketsSpanFiveMillisecondsToOneMinute) {
  auto b = tele::default_latency_buckets();
  ASSERT_EQ(b.size(), 13u);
  EXPECT_DOUBLE_EQ(b.front(), 0.005);
  EXPECT_DOUBLE_EQ(b.back(), 60.0);
}

TEST(Metrics, GaugesSetAddAndEvaluateFunctionsAtRenderTime) {
  tele::registry r(bare());
  auto g = r.add_gauge("ray_inflight_requests", "In flight.").with();
  g.inc();
  g.inc();
  g.dec();
  g.add(0.5);
  EXPECT_DOUBLE_EQ(g.value(), 1.5);
  int calls = 0;
  r.add_gauge("ray_backend_up", "Backend up.").set_function({}, [&] { return static_cast<double>(++calls); });
  auto text = prometheus(r);
  EXPECT_NE(text.find("ray_inflight_requests 1.5\n"), std::string::npos);
  EXPECT_NE(text.find("ray_backend_up 1\n"), std::string::npos);
  EXPECT_NE(prometheus(r).find("ray_backend_up 2\n"), std::string::npos);
}

TEST(Metrics, OptionalGaugeFunctionsLeaveUnknownValuesOut) {
  tele::registry r(bare());
  std::optional<double> kv;  // unknown at first
  r.add_gauge("ray_before", "Before.", {}, {.json_name = "before"}).with().set(1);
  r.add_gauge("ray_kv_ratio", "KV in use.", {}, {.json_name = "kv"}).set_optional_function({}, [&] {
    return kv;
  });
  auto lanes = r.add_gauge("ray_lane", "Per lane.", {"lane"}, {.json_name = "lane"});
  lanes.set_optional_function({"a"}, [] { return std::optional<double>(2); });
  lanes.set_optional_function({"b"}, [] { return std::optional<double>(); });
  r.add_gauge("ray_after", "After.", {}, {.json_name = "after"}).with().set(3);

  // Unknown: no sample, and no HELP/TYPE of a family left without samples; the partly known family keeps
  // its known series.
  EXPECT_EQ(prometheus(r),
            "# HELP ray_before Before.\n# TYPE ray_before gauge\nray_before 1\n"
            "# HELP ray_lane Per lane.\n# TYPE ray_lane gauge\nray_lane{lane=\"a\"} 2\n"
            "# HELP ray_after After.\n# TYPE ray_after gauge\nray_after 3\n");
  EXPECT_EQ(json(r), R"({"counters":{},"gauges":{"before":1,"lane{lane=a}":2,"after":3}})");

  kv = 0.25;
  auto text = prometheus(r);
  EXPECT_NE(text.find("# TYPE ray_kv_ratio gauge\nray_kv_ratio 0.25\n"), std::string::npos) << text;
  EXPECT_EQ(json(r), R"({"counters":{},"gauges":{"before":1,"kv":0.25,"lane{lane=a}":2,"after":3}})");
}

TEST(Metrics, CountersCanBeComputedByAFunction) {
  tele::registry r(bare());
  r.add_counter("ray_log_dropped_lines_total", "Dropped log lines.").set_function({}, [] { return 42u; });
  EXPECT_NE(prometheus(r).find("ray_log_dropped_lines_total 42\n"), std::string::npos);
}

TEST(Metrics, GaugeValuesUseLocaleFreeNumbers) {
  tele::registry r(bare());
  auto g = r.add_gauge("ray_g", "G.", {"k"});
  g.with({"a"}).set(0.1);
  g.with({"b"}).set(1e20);
  g.with({"c"}).set(std::numeric_limits<double>::infinity());
  g.with({"d"}).set(-3);
  auto text = prometheus(r);
  EXPECT_NE(text.find("ray_g{k=\"a\"} 0.1\n"), std::string::npos);
  EXPECT_NE(text.find("ray_g{k=\"b\"} 1e+20\n"), std::string::npos);
  EXPECT_NE(text.find("ray_g{k=\"c\"} +Inf\n"), std::string::npos);
  EXPECT_NE(text.find("ray_g{k=\"d\"} -3\n"), std::string::npos);
}

TEST(Metrics, TextSourcesAreAppendedAfterOwnFamilies) {
  tele::registry r(bare());
  r.add_counter("ray_x_total", "X.");
  r.add_text_source(
      [](std::string& out) { out += "# HELP foreign_y Y.\n# TYPE foreign_y gauge\nforeign_y 1\n"; });
  EXPECT_EQ(prometheus(r),
            "# HELP ray_x_total X.\n# TYPE ray_x_total counter\nray_x_total 0\n"
            "# HELP foreign_y Y.\n# TYPE foreign_y gauge\nforeign_y 1\n");
}

TEST(Metrics, InvalidRegistrationsThrowAtStartup) {
  tele::registry r(bare());
  EXPECT_THROW(r.add_counter("ray_requests", "no _total"), std::invalid_argument);
  EXPECT_THROW(r.add_gauge("ray:colon", "colon"), std::invalid_argument);
  EXPECT_THROW(r.add_gauge("1abc", "digit first"), std::invalid_argument);
  EXPECT_THROW(r.add_gauge("ray_g", "bad label", {"bad-label"}), std::invalid_argument);
  EXPECT_THROW(r.add_gauge("ray_g", "reserved label", {"__x"}), std::invalid_argument);
  EXPECT_THROW(r.add_histogram("ray_h", "le label", {"le"}), std::invalid_argument);
  constexpr std::array<double, 2> descending{1, 0.5};
  EXPECT_THROW(r.add_histogram("ray_h", "bad bounds", {}, descending), std::invalid_argument);
  r.add_gauge("ray_g", "G.");
  EXPECT_THROW(r.add_gauge("ray_g", "duplicate"), std::invalid_argument);
}

TEST(Metrics, TrailingInfBoundIsImplied) {
  tele::registry r(bare());
  constexpr std::array<double, 2> bounds{1, std::numeric_limits<double>::infinity()};
  r.add_histogram("ray_h_seconds", "H.", {}, bounds).with().observe(2);
  auto text = prometheus(r);
  EXPECT_NE(text.find("ray_h_seconds_bucket{le=\"1\"} 0\nray_h_seconds_bucket{le=\"+Inf\"} 1\n"),
            std::string::npos);
}

TEST(Metrics, JsonViewMapsDottedNamesToValues) {
  tele::registry r(bare());
  fill_small_registry(r);
  r.add_counter("ray_hidden_total", "No json_name: not in the JSON view.").with().inc();
  r.add_gauge("ray_ratio", "Non-finite", {}, {.json_name = "ratio"}).with().set(std::nan(""));
  auto text = json(r);
  EXPECT_EQ(
      text,
      R"({"counters":{"requests.total{route=/v1/infer,code=200}":3,"requests.total{route=/v1/jobs/{id},code=404}":1,)"
      R"("queue.wait.count":4,"queue.wait.sum":2.8125},"gauges":{"queue.depth":2,"ratio":null}})");
  EXPECT_NO_THROW(boost::json::parse(text));
}

TEST(Metrics, EmptyJsonViewIsStillAnObject) {
  tele::registry r(bare());
  EXPECT_EQ(json(r), R"({"counters":{},"gauges":{}})");
}

TEST(Metrics, StandardSeriesDescribeTheBuildAndTheProcess) {
  tele::registry r(tele::registry_options{.version = "9.9.9"});
  auto text = prometheus(r);
  EXPECT_NE(text.find("ray_build_info{version=\"9.9.9\"} 1\n"), std::string::npos);
  auto value_of = [&](std::string const& name) {
    auto at = text.find("\n" + name + " ");
    EXPECT_NE(at, std::string::npos) << name;
    return std::strtod(text.c_str() + at + name.size() + 2, nullptr);
  };
  EXPECT_GT(value_of("process_resident_memory_bytes"), 1e5);
  double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  double started = value_of("process_start_time_seconds");
  EXPECT_LE(started, now + 1);
  EXPECT_GT(started, now - 3600);  // this test binary started within the hour
}

TEST(Metrics, DefaultConstructedHandlesDiscardUpdates) {
  tele::counter c;
  tele::gauge g;
  tele::histogram h;
  c.inc();
  g.set(5);
  h.observe(1.0);
  SUCCEED();
}

TEST(Metrics, IncrementsFromManyThreadsAreAllCountedWhileRendering) {
  tele::registry r(bare());
  auto fam = r.add_counter("ray_requests_total", "R.", {"code"});
  auto hist = r.add_histogram("ray_d_seconds", "D.").with();
  constexpr int threads = 4, per_thread = 50'000;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      auto own = fam.with({std::to_string(t)});
      auto shared = fam.with({"all"});
      for (int i = 0; i < per_thread; ++i) {
        own.inc();
        shared.inc();
        hist.observe(0.5);
      }
    });
  }
  std::string scratch;
  for (int i = 0; i < 50; ++i) {
    scratch.clear();
    r.render_prometheus(scratch);
  }
  for (auto& w : workers)
    w.join();
  EXPECT_EQ(fam.with({"all"}).value(), std::uint64_t{threads * per_thread});
  EXPECT_EQ(hist.count(), std::uint64_t{threads * per_thread});
  EXPECT_DOUBLE_EQ(hist.sum(), 0.5 * threads * per_thread);
}

TEST(Metrics, RenderedRegistryPassesPromtoolCheckMetrics) {
  if (std::system("command -v promtool >/dev/null 2>&1") != 0) {
    RAY_SKIP_OR_FAIL("promtool not on PATH (Debian package prometheus)");
  }
  tele::registry r;  // with the standard series
  fill_small_registry(r);
  auto h = r.add_histogram("ray_request_duration_seconds", "Duration of completed requests.", {"route"});
  h.with({"/v1/infer"}).observe(0.3);
  r.add_counter("ray_rejections_total", "Rejected requests by reason.", {"reason"})
      .with({"quo\"te\\\n"})
      .inc();
  r.add_text_source([](std::string& out) {
    out +=
        "# HELP ray_backend_llamacpp_prompt_tokens_total Number of prompt tokens processed.\n"
        "# TYPE ray_backend_llamacpp_prompt_tokens_total counter\n"
        "ray_backend_llamacpp_prompt_tokens_total 12\n";
  });
  std::string text = prometheus(r);
  // promtool reads the text on stdin; its findings (if any) go to this test's output.
  std::FILE* p = ::popen("promtool check metrics 1>&2", "w");
  ASSERT_NE(p, nullptr);
  std::fwrite(text.data(), 1, text.size(), p);
  int status = ::pclose(p);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "--- input ---\n" << text;
}
