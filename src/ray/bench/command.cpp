// `ray bench`: checks the arguments, loads the workload and the baseline, runs the driver, prints the table,
// writes --json and judges the baseline.
#include "ray/bench/bench.hpp"
#include "ray/telemetry/telemetry.hpp"

#include <csignal>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>

namespace ray::bench {

namespace {

int usage_error(std::ostream& err, std::string const& message) {
  err << "ray bench: " << message << "\n";
  return 2;
}

}  // namespace

int run_bench(options const& o, std::ostream& out, std::ostream& err) {
  auto url = parse_url(o.url);
  if (!url) return usage_error(err, url.error().message);
  if (o.concurrency < 1) return usage_error(err, "--concurrency must be at least 1");
  if (o.rate < 0) return usage_error(err, "--rate must be a positive number of requests per second");
  if (o.requests && o.duration_s) return usage_error(err, "give --requests or --duration, not both");
  if (o.requests && *o.requests == 0) return usage_error(err, "--requests must be at least 1");
  if (o.duration_s && !(*o.duration_s > 0)) return usage_error(err, "--duration must be positive");
  if (o.timeout_ms == 0) return usage_error(err, "--timeout-ms must be at least 1");
  for (auto const& h : o.headers) {
    auto colon = h.find(':');
    if (colon == std::string::npos || colon == 0 || h.find_first_of("\r\n") != std::string::npos)
      return usage_error(err, "--header \"" + h + "\": write it as \"Name: value\"");
  }
  auto items = load_workload(o.workload, workload_options{.openai = o.openai, .stream = o.stream});
  if (!items) return usage_error(err, items.error().message);
  std::optional<boost::json::object> baseline;
  if (!o.baseline.empty()) {
    auto b = load_baseline(o.baseline);
    if (!b) return usage_error(err, b.error().message);
    auto check = evaluate_baseline(*b, summary{});  // unknown keys and non-numbers fail before the run
    if (!check) return usage_error(err, o.baseline + ": " + check.error().message);
    baseline = std::move(*b);
  }
  std::ofstream json_file;
  if (!o.json.empty() && o.json != "-") {
    json_file.open(o.json, std::ios::binary | std::ios::trunc);
    if (!json_file) return usage_error(err, "cannot write --json " + o.json + ": " + std::strerror(errno));
  }

  std::signal(SIGPIPE, SIG_IGN);
  result<run_result> run = ray::error{};
  try {
    run = drive(o, *url, *items, err);
  } catch (std::exception const& e) {
    err << "ray bench: the run failed: " << e.what() << "\n";
    return 1;
  }
  if (!run) return usage_error(err, run.error().message);
  summary const s = summarize(run->stats, run->elapsed_s);

  std::ostream& table = o.json == "-" ? err : out;
  print_table(table, o, items->size(), *run, s);
  if (!o.json.empty()) {
    auto doc = telemetry::to_json(to_json(o, items->size(), *run, s));
    if (o.json == "-") {
      out << doc << "\n";
    } else {
      json_file << doc << "\n";
      json_file.close();
      if (!json_file) return usage_error(err, "cannot write --json " + o.json);
    }
  }

  int code = 0;
  if (run->stats.responses == 0) {
    std::string why;
    for (auto const& [k, v] : run->stats.by_code)
      why += (why.empty() ? "" : ", ") + k + " " + std::to_string(v);
    err << "ray bench: no request got a response from " << o.url << (why.empty() ? "" : " (" + why + ")")
        << "\n";
    code = 1;
  }
  if (baseline) {
    auto violations = evaluate_baseline(*baseline, s);
    if (!violations) return usage_error(err, violations.error().message);
    if (violations->empty()) {
      table << "baseline " << o.baseline << ": all " << baseline->size() << " thresholds hold\n";
    } else {
      err << "ray bench: baseline " << o.baseline << " FAILED — " << violations->size() << " of "
          << baseline->size() << " thresholds violated:\n";
      for (auto const& v : *violations)
        err << "  " << v << "\n";
      code = 1;
    }
  }
  return code;
}

}  // namespace ray::bench
