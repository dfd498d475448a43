// ray::bench — `ray bench`: replays a JSONL workload against Ray (or, with --openai, straight against an
// OpenAI-compatible backend such as llama-server) and reports what a client saw: requests, errors and
// rejections by status and error code, throughput, latency percentiles, time to first token and inter-token
// latency of streams, cache and dedupe hit rates from the response fields, and tokens/s from `usage`.
//
// Design:
// - Its own single-threaded event loop (one Asio io_context): one coroutine per virtual client, each owning
// one
//   keep-alive connection; no thread per connection, requests serialized once before the run.
// - Closed loop (`--concurrency N`: N clients, each sends its next request when the previous answer is in) or
//   open loop (`--rate R`: arrivals every 1/R s taken by at most N connections; latency is measured from the
//   scheduled arrival, so a server that falls behind is not flattered by the client waiting for it).
// - Latencies go into log-linear histograms (bounded memory whatever the duration, ≤ 0.4 % error).
//
// The pure parts (workload parsing, histograms, response accounting, summary, baseline) have no Asio and are
// what the unit tests drive; driver.cpp is the only translation unit with I/O.
#pragma once

#include "ray/core/core.hpp"

#include <boost/json/object.hpp>

#include <cstdint>
#include <iosfwd>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace CLI {
class App;
}

namespace ray::bench {

// ---------------------------------------------------------------------------------------------------------------
// Workload

// One request of the workload, ready to send.
struct workload_item {
  std::string target;   // "/v1/infer", "/v1/chat/completions" or "/v1/completions"
  std::string body;     // compact JSON
  bool openai{false};   // an OpenAI body (its errors and usage use OpenAI's shapes)
  std::size_t line{0};  // 1-based line of the file
};

struct workload_options {
  // --openai: every line becomes an OpenAI request (native `/v1/infer` lines are converted to chat bodies:
  // system/input → messages, maxTokens → max_tokens, topP → top_p, temperature, seed, stop, responseFormat),
  // so the same workload can be sent directly to a backend. Template lines cannot be converted (an error).
  bool openai{false};
  // --stream: OpenAI bodies get "stream": true (and stream_options.include_usage unless they set
  // stream_options). A native line is an error: /v1/infer does not stream.
  bool stream{false};
};

// Lines: a `/v1/infer` body (a JSON object), or `{"openai": {…}}` holding a chat body (`messages`, sent to
// /v1/chat/completions) or a completion body (`prompt`, sent to /v1/completions). Blank lines are skipped.
// Errors name the line: "line 3: not valid JSON (…)".
result<std::vector<workload_item>> parse_workload(std::string_view text, workload_options const& opts);
// Reads and parses a file (errors name the path).
result<std::vector<workload_item>> load_workload(std::string const& path, workload_options const& opts);

// ---------------------------------------------------------------------------------------------------------------
// Histogram: log-linear buckets of nanoseconds (exact below 512 ns, then 256 sub-buckets per power of two:
// a bucket is at most 1/256 of its value wide). Percentiles are nearest-rank: the smallest recorded value
// (bucket midpoint, clamped to the exact min/max) such that at least p % of the samples are ≤ it.
class histogram {
 public:
  void record(std::uint64_t ns);
  void merge(histogram const& other);
  std::uint64_t count() const noexcept { return count_; }
  std::uint64_t min() const noexcept { return count_ ? min_ : 0; }
  std::uint64_t max() const noexcept { return max_; }
  double mean() const noexcept {
    return count_ ? static_cast<double>(sum_) / static_cast<double>(count_) : 0;
  }
  // p in [0, 100]; 0 when empty.
  std::uint64_t percentile(double p) const;

 private:
  std::vector<std::uint64_t> buckets_;
  std::uint64_t count_{0}, sum_{0}, min_{0}, max_{0};
};

// ---------------------------------------------------------------------------------------------------------------
// Accounting

// What one SSE stream said, event by event (fed the `data:` payloads and when each arrived).
class stream_tracker {
 public:
  // `at_ns`: time since the request was sent (or scheduled, in open loop).
  void on_event(std::string_view data, std::uint64_t at_ns);

  std::optional<std::uint64_t> ttft_ns;  // first event carrying generated text (or a tool call)
  std::vector<std::uint64_t> gaps_ns;    // between consecutive token events
  std::uint64_t token_events{0};
  bool done{false};                  // `data: [DONE]` seen
  std::optional<std::string> error;  // a `data: {"error":…}` event: its code (or type, or "stream_error")
  std::optional<std::uint64_t> prompt_tokens, completion_tokens;  // from a usage chunk

 private:
  std::uint64_t last_token_ns_{0};
};

// One finished request as the driver saw it.
struct response_record {
  unsigned status{0};                // 0: no complete HTTP response (see transport_error)
  std::string_view transport_error;  // connect_failed | timeout | connection_closed | bad_response
  std::uint64_t latency_ns{0};       // to the last byte of the response
  bool openai{false};
  std::string_view body;                  // the body of a non-stream response
  bool x_ray_cache_hit{false};            // OpenAI routes: header `x-ray-cache: hit`
  stream_tracker const* stream{nullptr};  // an SSE response
};

// Everything counted during a run.
struct run_stats {
  std::uint64_t requests{0};    // finished: responses + transport errors
  std::uint64_t responses{0};   // complete HTTP responses, any status
  std::uint64_t ok{0};          // 2xx and, for streams, no error event
  std::uint64_t rejections{0};  // 429 and 503 (admission refusals: rate_limited, queue_full, overloaded, …)
  std::map<std::string, std::uint64_t> by_status;  // "200", "503", … and "transport"
  std::map<std::string, std::uint64_t> by_code;    // error codes from bodies, stream errors, transport errors
  histogram latency, ttft, itl;
  std::uint64_t cache_known{0}, cached{0};         // ok responses that say whether they were cache hits
  std::uint64_t dedupe_known{0}, deduplicated{0};  // … or joined an identical in-flight request
  std::uint64_t usage_responses{0}, prompt_tokens{0}, completion_tokens{0};
  std::uint64_t stream_responses{0}, token_events{0};
  std::uint64_t connections{0};  // TCP connections opened
  std::uint64_t late_starts{0};  // open loop: sent > 1 ms after their scheduled time (raise --concurrency)

  void add(response_record const& r);
};

// Derived figures: what the table, --json and --baseline use.
struct summary {
  double elapsed_s{0};
  double rps{0}, ok_rps{0};
  double error_rate{0};  // (requests - ok) / requests: everything that did not succeed, rejections included
  double rejection_rate{0};  // rejections / requests
  struct dist {
    double p50_ms{0}, p90_ms{0}, p99_ms{0}, max_ms{0}, min_ms{0}, mean_ms{0};
    std::uint64_t count{0};
  };
  std::optional<dist> latency, ttft, itl;
  std::optional<double> cache_hit_rate, dedupe_rate;
  std::optional<double> tokens_per_s;  // completion tokens / elapsed, when usage was reported
};

summary summarize(run_stats const& s, double elapsed_s);

// ---------------------------------------------------------------------------------------------------------------
// Baseline: a JSON object of thresholds. Keys: p50_ms, p90_ms, p99_ms, max_ms, mean_ms, ttft_p50_ms,
// ttft_p90_ms, ttft_p99_ms, itl_p50_ms, itl_p99_ms (upper bounds), min_rps, min_ok_rps, min_cache_hit_rate,
// min_tokens_per_s (lower bounds), max_error_rate, max_rejection_rate (upper bounds).
// Returns one message per violated threshold (empty: all hold); an unknown key or a non-number is an error.
// A threshold on a figure the run did not measure (e.g. ttft without streams) is a violation.
result<std::vector<std::string>> evaluate_baseline(boost::json::object const& thresholds, summary const& s);
result<boost::json::object> load_baseline(std::string const& path);

// ---------------------------------------------------------------------------------------------------------------
// The command

struct options {
  std::string url;
  std::string workload;
  unsigned concurrency{1};
  double rate{0};  // > 0: open loop, requests per second
  std::optional<std::uint64_t> requests;
  std::optional<double> duration_s;  // default 10 s when neither requests nor duration is given
  bool stream{false};
  bool openai{false};
  std::string json;      // file, or "-" for stdout (the table then goes to stderr)
  std::string baseline;  // thresholds file
  std::uint32_t timeout_ms{30000};
  std::vector<std::string> headers;  // "Name: value", sent with every request
  std::optional<bool> progress;      // default: when stderr is a terminal
};

// A parsed http:// URL.
struct endpoint_url {
  std::string host;
  std::uint16_t port{80};
  std::string base_path;  // without a trailing '/', may be empty
};
result<endpoint_url> parse_url(std::string_view url);

// What one run measured (the driver's result).
struct run_result {
  run_stats stats;
  double elapsed_s{0};
  bool interrupted{false};
};

// The JSON document of --json.
boost::json::object to_json(options const& o, std::size_t workload_lines, run_result const& r,
                            summary const& s);
// The terminal table.
void print_table(std::ostream& out, options const& o, std::size_t workload_lines, run_result const& r,
                 summary const& s);

// Runs the event loop against the URL (driver.cpp). Errors: unresolvable host.
result<run_result> drive(options const& o, endpoint_url const& url, std::vector<workload_item> const& items,
                         std::ostream& err);

// `ray bench`: exit 0 = done (and every baseline threshold held), 1 = a threshold failed or no request got a
// response, 2 = bad arguments, URL, workload or baseline.
int run_bench(options const& o, std::ostream& out, std::ostream& err);

// Registers `bench` and its flags on the CLI (cli.cpp); `out` is filled when it is parsed.
CLI::App* add_command(CLI::App& app, options& out);

}  // namespace ray::bench
