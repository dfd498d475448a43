// ray::backend — the inference backend interface and its implementations (mock today; llama.cpp and
// OpenAI-compatible next, shared/spec/backends.md).
//
// A backend streams token deltas into a sink and returns usage and timings. Every generate() is cancellable
// through the awaiting coroutine's cancellation slot (a cancelled call returns promptly and the backend stops
// working on it). Threading: a backend lives on the runtime's executor; call it only from there.
#pragma once

#include "ray/config/config.hpp"
#include "ray/core/core.hpp"
#include "ray/telemetry/telemetry.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ray::backend {

// providerStatus values (http-api.md §4, backends.md).
enum class state : std::uint8_t {
  unknown,
  starting,
  loading,
  warming,
  ready,
  degraded,
  unreachable,
  restarting,
  failed,
  misconfigured
};
std::string_view state_name(state s) noexcept;
inline bool is_serving(state s) noexcept {
  return s == state::ready || s == state::degraded;
}

// One chat message as the OpenAI routes forward it (tool fields passed through untouched).
struct chat_message {
  std::string role;
  std::string content;
  std::optional<std::string> name{};
  std::optional<std::string> tool_call_id{};
  boost::json::value tool_calls{};  // an assistant message's tool calls as sent (null when none)
};

struct generation_request {
  std::string system;  // empty = none
  std::string prompt;
  // OpenAI routes: the whole conversation (replaces system/prompt when non-empty), or a raw completion
  // prompt.
  std::vector<chat_message> messages{};
  bool raw_completion{false};  // `prompt` is sent as-is to /v1/completions (no chat template)
  boost::json::object
      extra{};  // forwarded sampling fields (penalties, top_k, min_p, repeat_penalty, logit_bias…)
  std::uint32_t max_tokens{1};
  std::optional<double> temperature{};
  std::optional<double> top_p{};
  std::optional<std::int64_t> seed{};
  std::vector<std::string> stop{};
  bool json_mode{false};
  std::uint64_t affinity_key{0};  // same key → same backend slot while it is free (prompt-cache reuse)
};

struct generation_result {
  std::string text;
  std::string finish_reason{"stop"};  // "stop" | "length" | "tool_calls"
  boost::json::array tool_calls{};    // assembled from the streamed deltas (OpenAI shape), empty when none
  std::optional<std::uint32_t> prompt_tokens{};
  std::optional<std::uint32_t> completion_tokens{};
  // usage.prompt_tokens_details.cached_tokens as the backend reported it (nullopt when it did not): the
  // client-facing figure, passed through unchanged; tokens_cached below is Ray's own (timings) bookkeeping.
  std::optional<std::uint32_t> cached_tokens{};
  // OpenAI chat `logprobs` asked for: {"content":[…]} concatenated from the streamed chunks (null otherwise).
  boost::json::value logprobs{};
  std::optional<std::int32_t> slot_id{};
  std::uint32_t tokens_cached{0};
  std::uint32_t tokens_evaluated{0};
  double ttft_ms{0};
  double total_ms{0};
  double prompt_tokens_per_second{0};
  double completion_tokens_per_second{0};
};

// Embeddings (models.md): one vector per input, in input order. llama-server: POST /v1/embeddings.
struct embedding_request {
  std::vector<std::string> inputs;  // each a text (token-array inputs are sent as their text by the caller)
};
struct embedding_result {
  std::vector<std::vector<float>> vectors;  // vectors[i] belongs to inputs[i]
  std::optional<std::uint32_t> prompt_tokens{};
};

// Rerank (llama-server's /v1/rerank shape): a relevance score per document.
struct rerank_request {
  std::string query;
  std::vector<std::string> documents;
  std::optional<std::uint32_t> top_n{};
};
struct rerank_item {
  std::uint32_t index{0};  // into rerank_request::documents
  double score{0};
};
struct rerank_result {
  std::vector<rerank_item> results;  // best first, at most top_n
  std::optional<std::uint32_t> prompt_tokens{};
};

// Receives text as it is produced. Called on the backend's executor.
class token_sink {
 public:
  virtual ~token_sink() = default;
  virtual void on_delta(std::string_view text) = 0;
  // A streamed `delta.tool_calls` array, as the backend sent it.
  virtual void on_tool_calls(boost::json::value const& delta) { (void)delta; }
  // A streamed chunk's `choices[0].logprobs` object, as sent; called just before on_delta() of the same
  // chunk (or alone when the chunk has no text).
  virtual void on_logprobs(boost::json::value const& logprobs) { (void)logprobs; }
};

// What the backend serves (from config, or from llama-server /props once attached).
struct description {
  std::string model_id;
  std::string kind;                      // "mock" | "llama.cpp" | "openai-compatible"
  std::uint32_t context_per_request{0};  // tokens one request (prompt + output) may use
  std::uint32_t kv_pool{0};              // tokens all in-flight requests may use together
  std::uint32_t slots{1};
  std::string identity;  // changes when the served model changes (cache key part)
};

// What /health shows under provider.details (http-api.md §4).
struct details {
  std::optional<double> load_ms{};
  std::uint32_t restarts{0};
  std::string last_restart_at{};
  std::string build{};
  std::string model_path{};
  std::uint32_t n_ctx{0};
  std::uint32_t total_slots{0};
  std::uint32_t slots_busy{0};
  // The load view of the Inference Extension gauges (docs/scale-out.md): slots the server reports processing
  // that Ray did not dispatch (another client), the server's own queue (llama-server's
  // `llamacpp:requests_deferred`, needs --metrics) and the KV cache in use, 0..1 (from /slots). nullopt =
  // unknown: the gauge is then left out of /metrics.
  std::uint32_t slots_foreign{0};
  std::optional<std::uint32_t> requests_deferred{};
  std::optional<double> kv_cache_usage{};
  std::string last_error{};
  std::string checked_at{};
  double probe_latency_ms{0};
};

// Runs the configured warm-up requests through the runtime's pipeline (template rendering lives there); true
// when every request succeeded. Set by the runtime before start().
using warmup_fn = std::function<boost::asio::awaitable<bool>()>;

class backend {
 public:
  virtual ~backend() = default;
  virtual state current_state() const noexcept = 0;
  virtual description describe() const = 0;
  virtual details current_details() const { return {}; }
  virtual void set_warmup(warmup_fn fn) { (void)fn; }
  // Called (on the backend's executor) when a restart of the backend was detected: the served model may have
  // changed, so cached results of the old one must go.
  virtual void on_restart(std::function<void()> fn) { (void)fn; }
  // A supervisor (backends.md) reports the process's side of the state: starting (spawned, not answering
  // yet), restarting (exited, respawn scheduled), failed (gave up). While one of these holds, a refused
  // connection means exactly that state, not `unreachable`; `failed` holds until the supervisor reports
  // starting again.
  virtual void set_process_state(state s, std::string const& reason) {
    (void)s;
    (void)reason;
  }
  // Where llama-server's own /metrics (re-exported as ray_backend_llamacpp_*) is kept; fetched in the
  // background about every second while the backend serves, so a slow backend never delays Ray's /metrics.
  virtual void set_metrics_cache(telemetry::metrics_cache* cache) { (void)cache; }
  // Called once on the first /health 200 after a `starting` report; returns the measured load time in ms.
  virtual void on_answering(std::function<std::optional<double>()> fn) { (void)fn; }
  // Attach / warm up in the background (returns at once). stop() ends background work.
  virtual void start() = 0;
  virtual void stop() = 0;
  virtual boost::asio::awaitable<result<generation_result>> generate(generation_request req,
                                                                     token_sink* sink) = 0;
  // The backend's own count of the prompt tokens of (system, prompt) with its chat template applied, when it
  // can tell (llama-server: /apply-template + /tokenize, cached); nullopt otherwise. Never an error: a
  // failure just leaves the caller with its estimate.
  virtual boost::asio::awaitable<std::optional<std::uint32_t>> count_prompt_tokens(std::string system,
                                                                                   std::string prompt);
  // Embeddings / rerank of a model of that kind; cancellable like generate(). The defaults answer
  // errc::not_implemented (a backend that cannot serve them).
  virtual boost::asio::awaitable<result<embedding_result>> embed(embedding_request req);
  virtual boost::asio::awaitable<result<rerank_result>> rerank(rerank_request req);
  // Number of generate() calls that reached the backend.
  virtual std::uint64_t requests_total() const noexcept = 0;
};

// The deterministic mock backend (backends.md "Mock backend"): output
// "[ray:mock model=<id> profile=<profile> seed=<seed>]\n<prompt>", cut to max_tokens tokens of 4 bytes
// (finish_reason "length" when cut), after adapter.latencyMs, streamed word by word at tokensPerSecond
// (0 = all at once).
std::unique_ptr<backend> make_mock(boost::asio::any_io_executor ex, config::config const& cfg);

// llama-server (kind "llama.cpp") or any OpenAI-compatible server (kind "openai-compatible") at
// model.adapter.baseUrl: the state machine of backends.md (health probe every healthIntervalMs and at once
// after a connection error, /props for context and slots, restart detection, warm-up), every generation
// streamed upstream and assembled here, slot affinity, error mapping. `log` must outlive the backend.
std::unique_ptr<backend> make_remote(boost::asio::any_io_executor ex, config::config const& cfg,
                                     telemetry::logger& log);

}  // namespace ray::backend
