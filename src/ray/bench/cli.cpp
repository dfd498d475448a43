// The `ray bench` subcommand's flags (CLI11). main.cpp only registers it and calls run_bench.
#include "ray/bench/bench.hpp"

#include <CLI/CLI.hpp>

#include <charconv>

namespace ray::bench {

namespace {

// "10", "10s", "1.5s", "500ms", "2m" → seconds.
std::optional<double> parse_duration(std::string_view text) {
  double scale = 1;
  if (text.ends_with("ms")) {
    scale = 1e-3;
    text.remove_suffix(2);
  } else if (text.ends_with("s")) {
    text.remove_suffix(1);
  } else if (text.ends_with("m")) {
    scale = 60;
    text.remove_suffix(1);
  }
  double v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || p != text.data() + text.size() || !(v > 0)) return std::nullopt;
  return v * scale;
}

constexpr char const* footer = R"(Workload lines (JSONL, one request each; blank lines are skipped):
  {"input":"Summarise: …","maxTokens":64}                     → POST /v1/infer
  {"templateId":"email.follow_up.v1","templateVariables":{…}} → POST /v1/infer
  {"openai":{"messages":[{"role":"user","content":"hi"}]}}    → POST /v1/chat/completions
  {"openai":{"prompt":"Once upon"}}                           → POST /v1/completions

Examples:
  ray bench --url http://127.0.0.1:3000 --workload examples/workloads/email.jsonl -c 8 --duration 30s
  ray bench --url http://127.0.0.1:3000 --workload examples/workloads/chat-system-prompts.jsonl --stream -c 4 -n 200
  ray bench --url http://127.0.0.1:8080 --openai --workload chat.jsonl -c 8 -d 10s   # a backend directly
  ray bench --url http://127.0.0.1:3000 --workload w.jsonl --rate 50 -d 60s --json result.json
  ray bench --url http://127.0.0.1:3000 --workload w.jsonl -n 1000 --baseline ci-thresholds.json
    (thresholds: {"p99_ms": 50, "min_rps": 1000, "max_error_rate": 0.01, "ttft_p99_ms": 200})

Exit status: 0 done (every baseline threshold held), 1 a threshold failed or nothing answered, 2 bad input.
Latency counts every HTTP response (any status) from sending the request (open loop: from its scheduled
time) to its last byte; error rate = requests that did not succeed (rejections included) / requests.)";

}  // namespace

CLI::App* add_command(CLI::App& app, options& o) {
  auto* b = app.add_subcommand(
      "bench",
      "Replay a JSONL workload against Ray (or a backend) and report latency, throughput and errors");
  b->footer(footer);
  b->add_option("--url", o.url, "Base URL, e.g. http://127.0.0.1:3000 (Ray, or an OpenAI-compatible backend)")
      ->required();
  b->add_option("--workload", o.workload, "JSONL file of requests (see below)")->required();
  b->add_option("-c,--concurrency", o.concurrency,
                "Connections: closed loop, each sends its next request when its answer is in; open loop, at "
                "most this many requests in flight (default 1)")
      ->check(CLI::Range(1u, 100000u));
  b->add_option("--rate", o.rate, "Open loop: this many requests per second, at fixed intervals")
      ->check(CLI::PositiveNumber);
  auto* n = b->add_option_function<std::uint64_t>(
                 "-n,--requests", [&o](std::uint64_t const& v) { o.requests = v; },
                 "Stop after this many requests (the workload is cycled)")
                ->check(CLI::PositiveNumber);
  auto* d = b->add_option_function<std::string>(
      "-d,--duration",
      [&o](std::string const& v) {
        auto s = parse_duration(v);
        if (!s) throw CLI::ValidationError("--duration", "expected e.g. 30, 30s, 500ms or 2m");
        o.duration_s = s;
      },
      "Stop issuing requests after this long: 30s, 500ms, 2m (default 10s unless --requests)");
  n->excludes(d);
  b->add_flag("--stream", o.stream,
              "Stream OpenAI requests (\"stream\": true, usage included) and measure time to first token and "
              "inter-token latency");
  b->add_flag(
      "--openai", o.openai,
      "Send every line as an OpenAI chat request (native lines converted), e.g. to a backend directly");
  b->add_option("--json", o.json,
                "Write the results as JSON to FILE (- for stdout; the table then goes to stderr)");
  b->add_option("--baseline", o.baseline,
                "JSON thresholds; exit 1 naming each one violated (keys: p50_ms p90_ms p99_ms max_ms mean_ms "
                "ttft_p50_ms ttft_p90_ms ttft_p99_ms itl_p50_ms itl_p99_ms min_rps min_ok_rps max_error_rate "
                "max_rejection_rate min_cache_hit_rate min_tokens_per_s)");
  b->add_option("--timeout-ms", o.timeout_ms, "Per-request deadline, connect included (default 30000)")
      ->check(CLI::Range(1u, 3'600'000u));
  b->add_option("-H,--header", o.headers, "Extra request header \"Name: value\" (repeatable), e.g. for auth");
  b->add_flag_function(
      "--progress,!--no-progress", [&o](std::int64_t v) { o.progress = v > 0; },
      "Force the progress line on stderr on or off (default: on when stderr is a terminal)");
  return b;
}

}  // namespace ray::bench
