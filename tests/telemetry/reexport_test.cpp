#include "ray/telemetry/telemetry.hpp"
#include "support/require.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sys/wait.h>

namespace tele = ray::telemetry;
using namespace std::chrono_literals;

namespace {

// The body of a recorded HTTP exchange: everything after the response's blank line.
std::string fixture_body(std::string const& name) {
  std::ifstream in(std::string(RAY_TEST_FIXTURES) + "/llama-server/" + name, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string all = ss.str();
  auto at = all.find("\r\n\r\n");
  if (at == std::string::npos) return {};
  return all.substr(at + 4);
}

std::vector<std::string> lines_of(std::string const& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

// What a Prometheus text says, line by line: HELP and TYPE per family, value per series (name + labels).
struct parsed_text {
  std::vector<std::string> families;  // in order of their TYPE lines
  std::map<std::string, std::string> help, type, value;
};

parsed_text parse(std::string const& text) {
  parsed_text p;
  for (auto const& line : lines_of(text)) {
    if (line.rfind("# HELP ", 0) == 0) {
      auto sp = line.find(' ', 7);
      p.help[line.substr(7, sp - 7)] = line.substr(sp + 1);
    } else if (line.rfind("# TYPE ", 0) == 0) {
      auto sp = line.find(' ', 7);
      p.families.push_back(line.substr(7, sp - 7));
      p.type[line.substr(7, sp - 7)] = line.substr(sp + 1);
    } else if (!line.empty() && line[0] != '#') {
      auto sp = line.rfind(' ');
      p.value[line.substr(0, sp)] = line.substr(sp + 1);
    }
  }
  return p;
}

// Names llama-server uses (the fixture build) and the names Ray re-exports them under.
std::vector<std::pair<std::string, std::string>> const fixture_names{
    {"llamacpp:prompt_tokens_total", "ray_backend_llamacpp_prompt_tokens_total"},
    {"llamacpp:prompt_tokens_cached_total", "ray_backend_llamacpp_prompt_tokens_cached_total"},
    {"llamacpp:prompt_seconds_total", "ray_backend_llamacpp_prompt_seconds_total"},
    {"llamacpp:tokens_predicted_total", "ray_backend_llamacpp_tokens_predicted_total"},
    {"llamacpp:tokens_predicted_seconds_total", "ray_backend_llamacpp_tokens_predicted_seconds_total"},
    {"llamacpp:n_decode_total", "ray_backend_llamacpp_n_decode_total"},
    {"llamacpp:n_tokens_max", "ray_backend_llamacpp_n_tokens_max"},
    {"llamacpp:spec_decode_num_draft_tokens_total",
     "ray_backend_llamacpp_spec_decode_num_draft_tokens_total"},
    {"llamacpp:spec_decode_num_accepted_tokens_total",
     "ray_backend_llamacpp_spec_decode_num_accepted_tokens_total"},
    {"llamacpp:spec_decode_num_drafts_total", "ray_backend_llamacpp_spec_decode_num_drafts_total"},
    {"llamacpp:prompt_tokens_seconds", "ray_backend_llamacpp_prompt_tokens_per_second"},
    {"llamacpp:predicted_tokens_seconds", "ray_backend_llamacpp_predicted_tokens_per_second"},
    {"llamacpp:requests_processing", "ray_backend_llamacpp_requests_processing"},
    {"llamacpp:requests_deferred", "ray_backend_llamacpp_requests_deferred"},
    {"llamacpp:n_busy_slots_per_decode", "ray_backend_llamacpp_n_busy_slots_per_decode"},
};

void expect_faithful(std::string const& fixture) {
  std::string source = fixture_body(fixture);
  ASSERT_FALSE(source.empty()) << fixture;
  auto in = parse(source);
  auto out = parse(tele::reexport_llamacpp(source));

  std::vector<std::string> expected_families;
  for (auto const& [from, to] : fixture_names)
    expected_families.push_back(to);
  EXPECT_EQ(out.families, expected_families);
  ASSERT_EQ(in.families.size(), fixture_names.size()) << "the fixture changed: update fixture_names";
  for (auto const& [from, to] : fixture_names) {
    SCOPED_TRACE(from);
    EXPECT_EQ(out.help[to], in.help[from]);
    ASSERT_TRUE(in.value.count(from));
    ASSERT_TRUE(out.value.count(to));
    EXPECT_EQ(out.value[to], in.value[from]);
    EXPECT_EQ(std::strtod(out.value[to].c_str(), nullptr), std::strtod(in.value[from].c_str(), nullptr));
    // The source types n_tokens_max as a counter; everything else keeps its type.
    EXPECT_EQ(out.type[to], to == "ray_backend_llamacpp_n_tokens_max" ? "gauge" : in.type[from]);
  }
  EXPECT_EQ(out.value.size(), in.value.size());
}

// Runs `promtool check metrics` on `text`; its exit status, or -1 when it could not run. Its findings go to
// this test's output unless `quiet`.
int promtool_check_metrics(std::string const& text, bool quiet = false) {
  std::FILE* p = ::popen(
      quiet ? "/usr/bin/promtool check metrics >/dev/null 2>&1" : "/usr/bin/promtool check metrics 1>&2",
      "w");
  if (!p) return -1;
  std::fwrite(text.data(), 1, text.size(), p);
  int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool have_promtool() {
  return std::ifstream("/usr/bin/promtool").good();
}

}  // namespace

TEST(Reexport, IdleFixtureKeepsEveryNameHelpAndValue) {
  expect_faithful("metrics.http");
}

TEST(Reexport, BusyFixtureKeepsEveryNameHelpAndValue) {
  expect_faithful("metrics-busy.http");
}

TEST(Reexport, IdleFixtureRendersExactly) {
  std::string out = tele::reexport_llamacpp(fixture_body("metrics.http"));
  EXPECT_EQ(out.substr(0, out.find("# HELP ray_backend_llamacpp_prompt_seconds_total")),
            "# HELP ray_backend_llamacpp_prompt_tokens_total Number of prompt tokens processed, excluding "
            "cached tokens\n"
            "# TYPE ray_backend_llamacpp_prompt_tokens_total counter\n"
            "ray_backend_llamacpp_prompt_tokens_total 161\n"
            "# HELP ray_backend_llamacpp_prompt_tokens_cached_total Number of prompt tokens reused from the "
            "cache\n"
            "# TYPE ray_backend_llamacpp_prompt_tokens_cached_total counter\n"
            "ray_backend_llamacpp_prompt_tokens_cached_total 316\n");
  auto at = out.find("# HELP ray_backend_llamacpp_n_tokens_max");
  ASSERT_NE(at, std::string::npos);
  EXPECT_EQ(
      out.substr(at, out.find("# HELP", at + 1) - at),
      "# HELP ray_backend_llamacpp_n_tokens_max Largest observed sequence length (prompt + generation)\n"
      "# TYPE ray_backend_llamacpp_n_tokens_max gauge\n"
      "ray_backend_llamacpp_n_tokens_max 84\n");
  at = out.find("# HELP ray_backend_llamacpp_prompt_tokens_per_second");
  ASSERT_NE(at, std::string::npos);
  EXPECT_EQ(out.substr(at, out.find("# HELP", at + 1) - at),
            "# HELP ray_backend_llamacpp_prompt_tokens_per_second Average prompt throughput in tokens/s\n"
            "# TYPE ray_backend_llamacpp_prompt_tokens_per_second gauge\n"
            "ray_backend_llamacpp_prompt_tokens_per_second 1880.93\n");
  EXPECT_EQ(out.find("llamacpp:"), std::string::npos);
  EXPECT_EQ(out.back(), '\n');
}

TEST(Reexport, CountersWithoutTotalKeepTheirTypeAndGainTheSuffix) {
  std::string out = tele::reexport_llamacpp(
      "# HELP llamacpp:kv_cache_evictions Evictions.\n"
      "# TYPE llamacpp:kv_cache_evictions counter\n"
      "llamacpp:kv_cache_evictions 7\n");
  EXPECT_EQ(out,
            "# HELP ray_backend_llamacpp_kv_cache_evictions_total Evictions.\n"
            "# TYPE ray_backend_llamacpp_kv_cache_evictions_total counter\n"
            "ray_backend_llamacpp_kv_cache_evictions_total 7\n");
}

TEST(Reexport, OlderBuildsAveragesTypedAsCountersBecomeGauges) {
  // Builds before the fixture's typed n_busy_slots_per_decode (an average) as a counter.
  std::string out = tele::reexport_llamacpp(
      "# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call\n"
      "# TYPE llamacpp:n_busy_slots_per_decode counter\n"
      "llamacpp:n_busy_slots_per_decode 1.5\n");
  EXPECT_EQ(out,
            "# HELP ray_backend_llamacpp_n_busy_slots_per_decode Average number of busy slots per "
            "llama_decode() call\n"
            "# TYPE ray_backend_llamacpp_n_busy_slots_per_decode gauge\n"
            "ray_backend_llamacpp_n_busy_slots_per_decode 1.5\n");
}

TEST(Reexport, OnlyNamesEndingInTokensSecondsBecomePerSecond) {
  auto out =
      parse(tele::reexport_llamacpp("# TYPE llamacpp:tokens_seconds gauge\n"
                                    "llamacpp:tokens_seconds 1\n"
                                    "# TYPE llamacpp:tokens_predicted_seconds_total counter\n"
                                    "llamacpp:tokens_predicted_seconds_total 2\n"
                                    "# TYPE llamacpp:draft_tokens_seconds gauge\n"
                                    "llamacpp:draft_tokens_seconds 3\n"
                                    "# TYPE llamacpp:xtokens_seconds gauge\n"
                                    "llamacpp:xtokens_seconds 4\n"));
  EXPECT_EQ(out.families, (std::vector<std::string>{"ray_backend_llamacpp_tokens_per_second",
                                                    "ray_backend_llamacpp_tokens_predicted_seconds_total",
                                                    "ray_backend_llamacpp_draft_tokens_per_second",
                                                    "ray_backend_llamacpp_xtokens_seconds"}));
}

TEST(Reexport, DropsEverythingThatIsNotALlamacppSeries) {
  std::string out = tele::reexport_llamacpp(
      "# a comment\n"
      "# HELP go_goroutines Goroutines.\n"
      "# TYPE go_goroutines gauge\n"
      "go_goroutines 12\n"
      "\n"
      "   \n"
      "llamacpp_requests_processing 1\n"
      "other:requests_processing 1\n"
      "# HELP llamacpp:requests_processing Number of requests processing\n"
      "# TYPE llamacpp:requests_processing gauge\n"
      "llamacpp:requests_processing 1\n"
      "# EOF\n");
  EXPECT_EQ(out,
            "# HELP ray_backend_llamacpp_requests_processing Number of requests processing\n"
            "# TYPE ray_backend_llamacpp_requests_processing gauge\n"
            "ray_backend_llamacpp_requests_processing 1\n");
}

TEST(Reexport, EmptyOrForeignInputGivesEmptyOutput) {
  EXPECT_EQ(tele::reexport_llamacpp(""), "");
  EXPECT_EQ(tele::reexport_llamacpp("\n\n"), "");
  EXPECT_EQ(tele::reexport_llamacpp("<html>503 Service Unavailable</html>"), "");
  // A HELP and TYPE without a sample say nothing.
  EXPECT_EQ(tele::reexport_llamacpp("# HELP llamacpp:x X.\n# TYPE llamacpp:x gauge\n"), "");
}

TEST(Reexport, KeepsLabelSetsValuesAndTimestamps) {
  std::string out = tele::reexport_llamacpp(
      "# HELP llamacpp:slot_busy Busy slot.\n"
      "# TYPE llamacpp:slot_busy gauge\n"
      "llamacpp:slot_busy{slot=\"0\",model=\"a \\\"b\\\" \\\\ c\\n\"} 1 1700000000000\n"
      "llamacpp:slot_busy { slot = \"1\" , } -2.5e-3\n"
      "llamacpp:slot_busy{} NaN\n"
      "llamacpp:slot_busy{slot=\"2\"}\t+Inf\n"
      "llamacpp:slot_busy{slot=\"\xC3\xA9\"} -Inf\n");
  EXPECT_EQ(out,
            "# HELP ray_backend_llamacpp_slot_busy Busy slot.\n"
            "# TYPE ray_backend_llamacpp_slot_busy gauge\n"
            "ray_backend_llamacpp_slot_busy{slot=\"0\",model=\"a \\\"b\\\" \\\\ c\\n\"} 1 1700000000000\n"
            "ray_backend_llamacpp_slot_busy{slot=\"1\"} -2.5e-3\n"
            "ray_backend_llamacpp_slot_busy NaN\n"
            "ray_backend_llamacpp_slot_busy{slot=\"2\"} +Inf\n"
            "ray_backend_llamacpp_slot_busy{slot=\"\xC3\xA9\"} -Inf\n");
}

TEST(Reexport, SkipsMalformedLinesAndKeepsTheRest) {
  std::vector<std::string> const bad{
      "llamacpp:g",                      // no value
      "llamacpp:g abc",                  // not a number
      "llamacpp:g 0x10",                 // hex
      "llamacpp:g nan(1)",               // C's NaN payload syntax
      "llamacpp:g 1e999",                // out of range
      "llamacpp:g 1 2 3",                // trailing junk
      "llamacpp:g 1 1.5",                // timestamp not an integer
      "llamacpp:g-x 1",                  // junk glued to the name
      "llamacpp: 1",                     // empty name after the prefix
      "llamacpp:g{a=\"1\" 1",            // unterminated label set
      "llamacpp:g{a=\"1} 1",             // unterminated label value
      "llamacpp:g{a=1} 1",               // unquoted label value
      "llamacpp:g{1a=\"1\"} 1",          // bad label name
      "llamacpp:g{a:b=\"1\"} 1",         // colon in a label name
      "llamacpp:g{a=\"1\",a=\"2\"} 1",   // repeated label name
      "llamacpp:g{a=\"\\x\"} 1",         // unknown escape
      "llamacpp:g{a=\"\xFF\"} 1",        // ill-formed UTF-8
      "llamacpp:g{a=\"1\"}{b=\"2\"} 1",  // two label sets
      "# TYPE llamacpp:g gauge extra",   // unknown type
  };
  std::string input = "# HELP llamacpp:g G.\n";
  for (auto const& line : bad)
    input += line + "\n";
  input += "# TYPE llamacpp:g gauge\nllamacpp:g{a=\"ok\"} 4\n";
  EXPECT_EQ(tele::reexport_llamacpp(input),
            "# HELP ray_backend_llamacpp_g G.\n"
            "# TYPE ray_backend_llamacpp_g gauge\n"
            "ray_backend_llamacpp_g{a=\"ok\"} 4\n");
}

TEST(Reexport, AHelpWithABadEscapeOrBadUtf8IsReplacedByAGeneratedOne) {
  for (std::string help : {"bad \\t escape", "bad \xFF byte", "trailing backslash \\"}) {
    SCOPED_TRACE(help);
    EXPECT_EQ(
        tele::reexport_llamacpp("# HELP llamacpp:g " + help + "\n# TYPE llamacpp:g gauge\nllamacpp:g 1\n"),
        "# HELP ray_backend_llamacpp_g llama-server's llamacpp:g (no HELP given).\n"
        "# TYPE ray_backend_llamacpp_g gauge\n"
        "ray_backend_llamacpp_g 1\n");
  }
  EXPECT_EQ(tele::reexport_llamacpp(
                "# HELP llamacpp:g Kept: \\\\ and \\n, \xC3\xA9.\n# TYPE llamacpp:g gauge\nllamacpp:g 1\n"),
            "# HELP ray_backend_llamacpp_g Kept: \\\\ and \\n, \xC3\xA9.\n"
            "# TYPE ray_backend_llamacpp_g gauge\n"
            "ray_backend_llamacpp_g 1\n");
}

TEST(Reexport, FirstHelpAndTypeWinAndRepeatedSeriesAreSkipped) {
  EXPECT_EQ(tele::reexport_llamacpp("# HELP llamacpp:g First.\n"
                                    "# HELP llamacpp:g Second.\n"
                                    "# TYPE llamacpp:g gauge\n"
                                    "# TYPE llamacpp:g counter\n"
                                    "llamacpp:g{a=\"1\"} 1\n"
                                    "llamacpp:g{a=\"1\"} 2\n"
                                    "llamacpp:g 3\n"
                                    "llamacpp:g 4\n"),
            "# HELP ray_backend_llamacpp_g First.\n"
            "# TYPE ray_backend_llamacpp_g gauge\n"
            "ray_backend_llamacpp_g{a=\"1\"} 1\n"
            "ray_backend_llamacpp_g 3\n");
}

TEST(Reexport, AFamilyWhoseNewNameIsTakenIsDropped) {
  // `x_tokens_seconds` and `x_tokens_per_second` would both become `…_x_tokens_per_second`; a counter `c`
  // would become `c_total`, which `c_total` already is.
  auto out =
      parse(tele::reexport_llamacpp("# TYPE llamacpp:x_tokens_seconds gauge\n"
                                    "llamacpp:x_tokens_seconds 1\n"
                                    "# TYPE llamacpp:x_tokens_per_second gauge\n"
                                    "llamacpp:x_tokens_per_second 2\n"
                                    "# TYPE llamacpp:c_total counter\n"
                                    "llamacpp:c_total 3\n"
                                    "# TYPE llamacpp:c counter\n"
                                    "llamacpp:c 4\n"));
  EXPECT_EQ(out.families, (std::vector<std::string>{"ray_backend_llamacpp_x_tokens_per_second",
                                                    "ray_backend_llamacpp_c_total"}));
  EXPECT_EQ(out.value["ray_backend_llamacpp_x_tokens_per_second"], "1");
  EXPECT_EQ(out.value["ray_backend_llamacpp_c_total"], "3");
}

TEST(Reexport, UntypedSamplesGetAFamilyWithAGeneratedHelp) {
  EXPECT_EQ(tele::reexport_llamacpp("llamacpp:mystery 5\n"
                                    "# HELP llamacpp:known Known.\n"
                                    "llamacpp:known 6\n"),
            "# HELP ray_backend_llamacpp_known Known.\n"
            "# TYPE ray_backend_llamacpp_known untyped\n"
            "ray_backend_llamacpp_known 6\n"
            "# HELP ray_backend_llamacpp_mystery llama-server's llamacpp:mystery (no HELP given).\n"
            "# TYPE ray_backend_llamacpp_mystery untyped\n"
            "ray_backend_llamacpp_mystery 5\n");
}

TEST(Reexport, HistogramsAndSummariesKeepTheirSuffixedSamples) {
  EXPECT_EQ(tele::reexport_llamacpp("# HELP llamacpp:decode_seconds Decode time.\n"
                                    "# TYPE llamacpp:decode_seconds histogram\n"
                                    "llamacpp:decode_seconds_bucket{le=\"0.1\"} 1\n"
                                    "llamacpp:decode_seconds_bucket 9\n"  // no le: skipped
                                    "llamacpp:decode_seconds 9\n"         // no suffix: skipped
                                    "llamacpp:decode_seconds_bucket{le=\"+Inf\"} 2\n"
                                    "llamacpp:decode_seconds_sum 0.3\n"
                                    "llamacpp:decode_seconds_count 2\n"
                                    "# HELP llamacpp:latency Latency.\n"
                                    "# TYPE llamacpp:latency summary\n"
                                    "llamacpp:latency{quantile=\"0.5\"} 0.2\n"
                                    "llamacpp:latency 9\n"  // no quantile: skipped
                                    "llamacpp:latency_sum 1\n"
                                    "llamacpp:latency_count 4\n"),
            "# HELP ray_backend_llamacpp_decode_seconds Decode time.\n"
            "# TYPE ray_backend_llamacpp_decode_seconds histogram\n"
            "ray_backend_llamacpp_decode_seconds_bucket{le=\"0.1\"} 1\n"
            "ray_backend_llamacpp_decode_seconds_bucket{le=\"+Inf\"} 2\n"
            "ray_backend_llamacpp_decode_seconds_sum 0.3\n"
            "ray_backend_llamacpp_decode_seconds_count 2\n"
            "# HELP ray_backend_llamacpp_latency Latency.\n"
            "# TYPE ray_backend_llamacpp_latency summary\n"
            "ray_backend_llamacpp_latency{quantile=\"0.5\"} 0.2\n"
            "ray_backend_llamacpp_latency_sum 1\n"
            "ray_backend_llamacpp_latency_count 4\n");
}

TEST(Reexport, OpenMetricsStyleCounterSamplesJoinTheirFamily) {
  EXPECT_EQ(tele::reexport_llamacpp("# HELP llamacpp:decodes Decodes.\n"
                                    "# TYPE llamacpp:decodes counter\n"
                                    "llamacpp:decodes_total 8\n"),
            "# HELP ray_backend_llamacpp_decodes_total Decodes.\n"
            "# TYPE ray_backend_llamacpp_decodes_total counter\n"
            "ray_backend_llamacpp_decodes_total 8\n");
}

TEST(Reexport, AcceptsCrlfLineEndsAndColonsAfterThePrefix) {
  EXPECT_EQ(
      tele::reexport_llamacpp("# HELP llamacpp:a:b AB.\r\n# TYPE llamacpp:a:b gauge\r\nllamacpp:a:b 1\r\n"),
      "# HELP ray_backend_llamacpp_a_b AB.\n"
      "# TYPE ray_backend_llamacpp_a_b gauge\n"
      "ray_backend_llamacpp_a_b 1\n");
}

TEST(Reexport, OutputIsBoundedAndEndsAtALineBoundary) {
  std::string source = fixture_body("metrics-busy.http");
  std::string full = tele::reexport_llamacpp(source);
  ASSERT_GT(full.size(), 1000u);
  EXPECT_EQ(tele::reexport_llamacpp(source, full.size()), full);
  for (std::size_t max : {std::size_t{0}, std::size_t{1}, std::size_t{50}, std::size_t{500},
                          std::size_t{1000}, full.size() - 1}) {
    SCOPED_TRACE(max);
    std::string cut = tele::reexport_llamacpp(source, max);
    EXPECT_LE(cut.size(), max);
    EXPECT_EQ(full.compare(0, cut.size(), cut), 0) << "a prefix of the full output";
    if (!cut.empty()) {
      EXPECT_EQ(cut.back(), '\n');
    }
    // Each family has one sample here, so whole families only: every TYPE line is followed by its sample.
    auto lines = lines_of(cut);
    EXPECT_EQ(lines.size() % 3, 0u);
  }
}

TEST(Reexport, ACutFamilyKeepsTheSamplesThatFitButAHistogramIsNeverCut) {
  std::string gauges = "# HELP llamacpp:g G.\n# TYPE llamacpp:g gauge\n";
  for (int i = 0; i < 10; ++i)
    gauges += "llamacpp:g{slot=\"" + std::to_string(i) + "\"} 1\n";
  std::string full = tele::reexport_llamacpp(gauges);
  std::size_t line = std::string("ray_backend_llamacpp_g{slot=\"0\"} 1\n").size();
  std::size_t header = full.size() - 10 * line;
  EXPECT_EQ(tele::reexport_llamacpp(gauges, header + 3 * line + line / 2), full.substr(0, header + 3 * line));
  EXPECT_EQ(tele::reexport_llamacpp(gauges, header + line - 1), "") << "a header alone is not worth sending";

  std::string histogram =
      "# HELP llamacpp:h H.\n# TYPE llamacpp:h histogram\n"
      "llamacpp:h_bucket{le=\"1\"} 1\nllamacpp:h_bucket{le=\"+Inf\"} 1\nllamacpp:h_sum 1\nllamacpp:h_count "
      "1\n";
  std::string whole = tele::reexport_llamacpp(histogram);
  EXPECT_EQ(tele::reexport_llamacpp(histogram, whole.size() - 1), "");
}

TEST(Reexport, RayStyleOutputWithTheReexportPassesPromtool) {
  if (!have_promtool()) {
    RAY_SKIP_OR_FAIL("/usr/bin/promtool not found (Debian package prometheus)");
  }
  for (std::string fixture : {"metrics.http", "metrics-busy.http"}) {
    SCOPED_TRACE(fixture);
    tele::registry r;  // with the standard series
    auto requests = r.add_counter("ray_requests_total", "HTTP requests answered.", {"route", "code"});
    requests.with({"/v1/infer", "200"}).inc(3);
    r.add_gauge("ray_queue_depth", "Requests waiting for dispatch.").with().set(2);
    r.add_histogram("ray_request_duration_seconds", "Request durations.", {"route"})
        .with({"/v1/infer"})
        .observe(0.3);
    tele::metrics_cache cache;
    cache.store(tele::reexport_llamacpp(fixture_body(fixture)), ray::clock::time_point{});
    r.add_text_source([&cache](std::string& out) { cache.append_to(out); });
    std::string text;
    r.render_prometheus(text);
    ASSERT_NE(text.find("ray_backend_llamacpp_n_tokens_max "), std::string::npos);
    EXPECT_EQ(promtool_check_metrics(text), 0) << "--- input ---\n" << text;
  }
}

TEST(Reexport, SourceFixtureFailsPromtoolSoTheRenamingIsNeeded) {
  if (!have_promtool()) {
    RAY_SKIP_OR_FAIL("/usr/bin/promtool not found (Debian package prometheus)");
  }
  EXPECT_NE(promtool_check_metrics(fixture_body("metrics.http"), /*quiet=*/true), 0);
}

TEST(Reexport, EveryKindOfFamilyPassesPromtool) {
  if (!have_promtool()) {
    RAY_SKIP_OR_FAIL("/usr/bin/promtool not found (Debian package prometheus)");
  }
  std::string text = tele::reexport_llamacpp(
      "# TYPE llamacpp:evictions counter\n"
      "llamacpp:evictions{slot=\"0\"} 3\n"
      "# TYPE llamacpp:n_busy_slots_per_decode counter\n"
      "llamacpp:n_busy_slots_per_decode 1.5\n"
      "# HELP llamacpp:decode_seconds Decode time.\n"
      "# TYPE llamacpp:decode_seconds histogram\n"
      "llamacpp:decode_seconds_bucket{le=\"0.1\"} 1\n"
      "llamacpp:decode_seconds_bucket{le=\"+Inf\"} 2\n"
      "llamacpp:decode_seconds_sum 0.3\n"
      "llamacpp:decode_seconds_count 2\n"
      "# HELP llamacpp:latency_seconds Latency.\n"
      "# TYPE llamacpp:latency_seconds summary\n"
      "llamacpp:latency_seconds{quantile=\"0.5\"} 0.2\n"
      "llamacpp:latency_seconds_sum 1\n"
      "llamacpp:latency_seconds_count 4\n"
      "llamacpp:mystery{a=\"x\\\"y\"} 5 1700000000000\n");
  EXPECT_EQ(promtool_check_metrics(text), 0) << "--- input ---\n" << text;
}

TEST(MetricsCache, ServesNothingAndIsStaleBeforeTheFirstStore) {
  tele::metrics_cache cache;
  std::string out = "before\n";
  cache.append_to(out);
  EXPECT_EQ(out, "before\n");
  EXPECT_TRUE(cache.stale(ray::clock::time_point{}, 1s));
  EXPECT_FALSE(cache.stored_at().has_value());
}

TEST(MetricsCache, ServesTheLastStoredTextAppended) {
  ray::manual_clock clock;
  tele::metrics_cache cache;
  cache.store("a 1\n", clock.now());
  cache.store("b 2\n", clock.now());
  std::string out = "x 0\n";
  cache.append_to(out);
  cache.append_to(out);
  EXPECT_EQ(out, "x 0\nb 2\nb 2\n");
  EXPECT_EQ(cache.stored_at(), clock.now());
}

TEST(MetricsCache, AddsAMissingFinalNewline) {
  tele::metrics_cache cache;
  cache.store("a 1", {});
  std::string out;
  cache.append_to(out);
  EXPECT_EQ(out, "a 1\n");
  cache.store("", {});
  out.clear();
  cache.append_to(out);
  EXPECT_EQ(out, "");
}

TEST(MetricsCache, IsStaleOnceTheStoredTextReachesMaxAge) {
  ray::manual_clock clock;
  tele::metrics_cache cache;
  cache.store("a 1\n", clock.now());
  EXPECT_FALSE(cache.stale(clock.now(), 1s));
  clock.advance(999ms);
  EXPECT_FALSE(cache.stale(clock.now(), 1s));
  clock.advance(1ms);
  EXPECT_TRUE(cache.stale(clock.now(), 1s));
  // Staleness never hides the text: it is served until replaced or cleared.
  std::string out;
  cache.append_to(out);
  EXPECT_EQ(out, "a 1\n");
  cache.store("a 2\n", clock.now());
  EXPECT_FALSE(cache.stale(clock.now(), 1s));
}

TEST(MetricsCache, ClearServesNothingAndIsStale) {
  ray::manual_clock clock;
  tele::metrics_cache cache;
  cache.store("a 1\n", clock.now());
  cache.clear();
  std::string out;
  cache.append_to(out);
  EXPECT_EQ(out, "");
  EXPECT_TRUE(cache.stale(clock.now(), 1h));
  EXPECT_FALSE(cache.stored_at().has_value());
}

TEST(MetricsCache, RendersSeeOneWholeStoredTextWhileStoresRun) {
  tele::metrics_cache cache;
  std::string const a(4096, 'a'), b(8192, 'b');
  cache.store(a + "\n", {});
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int i = 0; !stop.load(); ++i)
      cache.store((i % 2 ? a : b) + "\n", {});
  });
  for (int i = 0; i < 20000; ++i) {
    std::string out;
    cache.append_to(out);
    ASSERT_TRUE(out == a + "\n" || out == b + "\n") << "torn text of " << out.size() << " bytes";
  }
  stop = true;
  writer.join();
}

TEST(MetricsCache, FeedsARegistryTextSource) {
  tele::registry r(tele::registry_options{.standard_series = false});
  r.add_gauge("ray_queue_depth", "Requests waiting for dispatch.").with().set(1);
  tele::metrics_cache cache;
  r.add_text_source([&cache](std::string& out) { cache.append_to(out); });
  std::string before;
  r.render_prometheus(before);
  EXPECT_EQ(before,
            "# HELP ray_queue_depth Requests waiting for dispatch.\n"
            "# TYPE ray_queue_depth gauge\n"
            "ray_queue_depth 1\n");
  cache.store(tele::reexport_llamacpp("# HELP llamacpp:requests_deferred Deferred.\n"
                                      "# TYPE llamacpp:requests_deferred gauge\n"
                                      "llamacpp:requests_deferred 2\n"),
              {});
  std::string after;
  r.render_prometheus(after);
  EXPECT_EQ(after, before +
                       "# HELP ray_backend_llamacpp_requests_deferred Deferred.\n"
                       "# TYPE ray_backend_llamacpp_requests_deferred gauge\n"
                       "ray_backend_llamacpp_requests_deferred 2\n");
}
