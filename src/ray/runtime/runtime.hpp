// ray::runtime — the request pipeline between the API handlers and the backend (serving-core.md):
//
//   template render → [native] prompt-length degradation → prompt compiler → token estimate → context check
//   and defaulted-max clamp → pressure/queue degradation (or shedding) → cache lookup → single-flight join →
//   admission → queue → dispatch (always streamed) → usage/timings → cache store → respond.
//
// Every request becomes a waiter on a *flight*: the flight runs in its own coroutine (admission, queue wait,
// backend call) so identical requests can join it; the backend call is cancelled only when the last waiter
// leaves. Threading: confined to the executor it was made with (one io_context thread by default).
// Cancellation: cancelling infer() (the client left) removes the waiter; the last waiter's departure cancels
// the flight in every phase.
#pragma once

#include "ray/backend/backend.hpp"
#include "ray/config/config.hpp"
#include "ray/core/core.hpp"
#include "ray/telemetry/telemetry.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ray::system {
class sampler;
}

namespace ray::runtime {

// A decoded, validated /v1/infer request (api decodes; the runtime never sees JSON).
struct infer_request {
  std::string input;
  std::string system;
  std::optional<std::uint32_t> max_tokens{};  // already floored and clamped to [1, maxOutputTokens]
  double temperature{0.2};
  double top_p{0.95};
  std::optional<std::int64_t> seed{};
  std::vector<std::string> stop{};
  std::optional<std::string> response_format{};  // "text" | "json_object"
  bool cache{true};
  std::optional<std::string> dedupe_key{};
  // Who asks (opaque; "" when auth is off): a client's dedupeKey is joined only with the same caller's
  // requests, so one API key cannot receive another's answer by reusing its dedupeKey; with
  // cache.scope = key the cache and identical-request dedupe are scoped to it too.
  std::string caller{};
  std::map<std::string, std::string> metadata{};
  std::optional<std::string> template_id{};
  std::map<std::string, std::string> template_variables{};
};

// A decoded OpenAI chat or completion request (api decodes; no prompt compiler or truncation on these
// routes).
struct chat_request {
  std::vector<backend::chat_message> messages;  // chat; empty for a completion
  std::optional<std::string> prompt{};          // completion
  std::optional<std::uint32_t> max_tokens{};
  std::optional<double> temperature{}, top_p{};
  std::optional<std::int64_t> seed{};
  std::vector<std::string> stop{};
  bool json_mode{false};        // response_format json_object / json_schema: never clamped
  boost::json::object extra{};  // forwarded fields (penalties, top_k, min_p, response_format, …)
  bool cacheable{false};        // temperature 0 or a seed (and no tools), or x-ray-cache: on
  std::string canonical{};      // canonical messages or prompt (cache key)
  std::string extra_key{};      // canonical text of `extra` (cache key)
  std::string caller{};         // as infer_request::caller (cache.scope = key)
};

struct degradation_report {
  bool applied{false};
  std::vector<std::string> reasons{};
  std::uint32_t requested_max_tokens{0};
  std::uint32_t applied_max_tokens{0};
  std::size_t prompt_chars_before{0};  // when prompt_length applied
  std::size_t prompt_chars_after{0};
};

struct prompt_report {
  std::string family_key;
  std::size_t chars_before{0};
  std::size_t chars_after{0};
};

struct infer_result {
  std::string model;
  std::string output;
  std::string finish_reason;
  std::size_t prompt_chars{0};
  std::size_t completion_chars{0};
  std::optional<std::uint32_t> prompt_tokens{};
  std::optional<std::uint32_t> completion_tokens{};
  bool cached{false};
  bool deduplicated{false};
  bool truncated_by_deadline{false};
  boost::json::array tool_calls{};  // OpenAI routes with tools  // the total deadline cut the generation;
                                    // `output` is what was produced
  double queue_ms{0};
  double latency_ms{0};
  degradation_report degradation{};
  prompt_report prompt{};
  backend::generation_result provider{};  // text moved into `output`
};

// A decoded /v1/embeddings or /v1/embed request (api decodes; non-empty texts, at most the route's bound).
struct embed_call {
  std::vector<std::string> inputs;
  std::optional<std::uint32_t> dimensions{};  // as asked; must be the model's native size
  bool cache{true};                           // false: neither served from nor stored in the cache
  std::string caller{};                       // as infer_request::caller (cache.scope = key)
};

struct embed_result {
  std::string model;
  std::vector<std::vector<float>> vectors;  // vectors[i] belongs to inputs[i]
  std::vector<bool> cached;                 // cached[i]: served from the result cache
  std::uint32_t prompt_tokens{0};  // the backend's count (shared out by estimate within one call) + cached
  std::size_t sent{0};             // distinct inputs this request sent to the backend itself
  bool deduplicated{false};        // some input was taken from an identical one in flight
  double queue_ms{0};
  double latency_ms{0};
};

// A decoded /v1/rerank request (non-empty query and documents).
struct rerank_call {
  std::string query;
  std::vector<std::string> documents;
  std::optional<std::uint32_t> top_n{};
};

struct rerank_result {
  std::string model;
  std::vector<backend::rerank_item> results;  // best first, at most top_n
  std::uint32_t prompt_tokens{0};
  double queue_ms{0};
  double latency_ms{0};
};

// Receives a streamed answer's text as the backend produces it (on the runtime's executor). A waiter that
// joins a flight late first receives every delta produced so far, one call each, so every waiter sees the
// same sequence.
class stream_listener {
 public:
  virtual ~stream_listener() = default;
  virtual void on_text(std::string_view delta) = 0;
  virtual void on_tool_calls(boost::json::value const& delta) { (void)delta; }
  // A chunk's `logprobs` object (OpenAI chat), just before the on_text() of the same chunk.
  virtual void on_logprobs(boost::json::value const& logprobs) { (void)logprobs; }
};

struct runtime_stats {
  std::uint32_t queue_depth{0};
  std::uint32_t in_flight{0};
  std::uint64_t queued_tokens{0};
  std::uint64_t in_flight_tokens{0};
  std::uint32_t short_depth{0};  // of queue_depth, waiting in the short lane
  std::uint32_t draft_depth{0};  // of queue_depth, waiting in the draft lane
};

struct cache_view {
  std::size_t entries{0};
  std::uint64_t bytes{0}, max_bytes{0};
  std::uint32_t max_entries{0};
  std::uint64_t hits{0}, misses{0}, evictions{0}, expirations{0};
};

// The pressure picture /readyz and /health show.
struct pressure_view {
  bool queue{false};
  bool memory{false};
  bool cpu{false};
  bool shed{false};
  std::vector<std::string> sources{};
  std::string cgroup{};
  std::optional<double> process_rss_mib{}, cgroup_current_mib{}, cgroup_limit_mib{};
  std::optional<double> memory_psi_some_avg10{}, memory_psi_full_avg10{};
  std::optional<double> cpu_throttled_ratio{}, cpu_psi_some_avg10{}, cpu_psi_full_avg10{};
};

// The context-overflow error of the OpenAI routes, in the wording clients and frameworks recognise
// (http-api.md §3): errc::context_length_exceeded, param "messages", details {contextWindow, promptTokens,
// completionTokens}; the total is computed in 64 bits (max_tokens may be UINT32_MAX).
ray::error context_length_exceeded(std::uint32_t context, std::uint32_t prompt_tokens,
                                   std::uint32_t completion_tokens);

class runtime {
 public:
  // `sampler` may be null (no pressure signals); it must outlive the runtime. `clock` drives deadlines'
  // bookkeeping and the scheduler (timers themselves use the real steady clock).
  runtime(boost::asio::any_io_executor ex, config::config const& cfg, backend::backend& be,
          telemetry::registry& metrics, telemetry::logger& log, system::sampler* sampler = nullptr,
          ray::clock const& clock = ray::system_clock());
  ~runtime();
  runtime(runtime const&) = delete;
  runtime& operator=(runtime const&) = delete;

  // Runs one native inference. Errors are values (template, context, budget, queue, pressure, deadline,
  // backend) — never exceptions: whatever the pipeline throws is answered provider_request_failed.
  boost::asio::awaitable<result<infer_result>> infer(infer_request req);
  // Runs one OpenAI chat/completion (non-streaming). The applied max tokens is in
  // degradation.applied_max_tokens (clamped to the cap and to the context left, never an error); a prompt
  // that does not fit is errc::context_length_exceeded with OpenAI's wording.
  boost::asio::awaitable<result<infer_result>> chat(chat_request req, stream_listener* listener = nullptr);
  // Embeddings of a model of kind embedding (embed.cpp). Admission, queue, deadlines and shedding as a
  // generation (cost = the sum of the inputs' token estimates); each input's vector is cached on its own and
  // identical inputs in flight are shared, so only the misses reach the backend, in one call. A chat model is
  // errc::model_kind_mismatch. Errors are values.
  boost::asio::awaitable<result<embed_result>> embed(embed_call call);
  // Rerank of a model of kind rerank: admission and cancellation as above; never cached (a rerank answer
  // depends on the whole document list, so there is nothing per input to reuse).
  boost::asio::awaitable<result<rerank_result>> rerank(rerank_call call);
  // The embedding size the model produces when known: the mock's adapter.dimensions, else the length of the
  // last vectors the backend returned.
  std::optional<std::uint32_t> embedding_dimensions() const noexcept;

  // Counts a rejection decided outside the runtime (HTTP framing, decoding) in ray_rejections_total{reason}.
  void count_rejection(errc code);

  runtime_stats stats() const noexcept;
  cache_view cache_stats() const noexcept;
  pressure_view pressure();
  backend::backend& backend_ref() noexcept { return backend_; }
  config::config const& cfg() const noexcept { return cfg_; }

  // The per-request context (tokens) in force: the backend's, else model.contextWindow.
  std::uint32_t context_window() const;

 private:
  // The bodies of infer() and chat(); the public calls turn anything they throw into an error value.
  boost::asio::awaitable<result<infer_result>> infer_body(infer_request req);
  boost::asio::awaitable<result<infer_result>> chat_body(chat_request req, stream_listener* listener);
  struct impl;
  std::unique_ptr<impl> impl_;
  config::config const& cfg_;
  backend::backend& backend_;
};

}  // namespace ray::runtime
