// Private to ray::runtime (runtime.cpp, flight.cpp, embed.cpp): the runtime's state (`runtime::impl`), the
// shared *flight* (one backend call that one or more waiters share), the prepared request and the helpers the
// pipeline stages share. Not installed; nothing outside src/ray/runtime includes it.
//
// Who holds what (docs/architecture.md, "Spawned work"): a flight is owned jointly by its waiters and by the
// coroutine that runs it (impl::fly); whoever leaves last frees it.
#pragma once

#include "ray/cache/cache.hpp"
#include "ray/http/stop.hpp"
#include "ray/runtime/runtime.hpp"
#include "ray/scheduler/scheduler.hpp"
#include "ray/system/system.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_state.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace ray::runtime {

namespace detail {
namespace asio = boost::asio;
inline constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
using steady = std::chrono::steady_clock;

inline double ms_between(ray::clock::time_point a, ray::clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// What the result cache keeps of an answer.
struct cached_value {
  std::string output;
  std::string finish_reason;
  std::optional<std::uint32_t> prompt_tokens, completion_tokens;
  std::size_t completion_chars{0};
  backend::generation_result provider;  // without text
  std::vector<float> embedding{};       // an embedding input's vector (route "embed"; the rest unset)
};

enum class phase : std::uint8_t { queued, prefill, decode };
std::string_view phase_name(phase p);  // flight.cpp

// What a flight's backend call is: a generation (infer, chat, completions, responses), an embedding batch or
// a rerank (embed.cpp). All three share admission, the queue, deadlines and cancellation.
enum class flight_kind : std::uint8_t { generate, embed, rerank };

// Completes when `t` expires; a re-arm (expires_after while waiting) keeps it waiting, a cancellation of the
// awaiting operation ends it (flight.cpp).
asio::awaitable<std::tuple<boost::system::error_code>> deadline_watch(asio::steady_timer& t);

// One backend call that one or more waiters share. Owned jointly by its waiters and by the coroutine that
// runs it (fly): whoever leaves last frees it, so nothing here is ever touched after it is gone.
struct flight {
  explicit flight(asio::any_io_executor const& ex)
      : done(ex, steady::time_point::max()), dispatch(ex), stop(ex) {}
  std::uint64_t id{0};
  std::string key;              // single-flight key; empty = not joinable
  asio::steady_timer done;      // cancelled when the outcome is set: wakes every waiter
  asio::steady_timer dispatch;  // cancelled when the scheduler dispatches the flight
  http::stop_source stop;       // requested by the last waiter to leave
  std::size_t waiters{0};
  bool dispatched{false};
  bool finished{false};
  bool abandoned{false};  // every waiter left
  std::string failure;    // what run_flight threw (fly turns it into the outcome)
  phase ph{phase::queued};
  std::optional<result<infer_result>> outcome;
  // The prepared request.
  backend::generation_request gen;
  std::uint64_t cost{0};
  config::lane lane{config::lane::draft};
  ray::clock::time_point arrived{};
  std::optional<cache::cache_key> cache_key;
  infer_result base;                // model, prompt chars, degradation and prompt reports
  std::string produced;             // text streamed so far
  std::vector<std::string> deltas;  // the same, delta by delta (replayed to late joiners of streams)
  std::vector<ray::runtime::stream_listener*> listeners;
  // Streams are bounded by a first-token and an idle-token deadline instead of the total one: the sink
  // re-arms `deadline` on every delta.
  bool streaming{false};
  std::chrono::milliseconds idle_token{0};
  asio::steady_timer* deadline{nullptr};
  // kind embed: the distinct inputs sent in one call and, per input, its cache key (also its single-flight
  // key in impl::embed_joinable while the flight runs); the answer lands in `embedded`, `outcome` then holds
  // `base` (queue time). kind rerank: the request, the answer in `reranked`.
  flight_kind kind{flight_kind::generate};
  backend::embedding_request embed_req{};
  std::vector<cache::cache_key> embed_keys{};
  std::vector<std::uint32_t> embed_estimates{};  // token estimate of each input (shares out the usage)
  bool embed_store{false};                       // store each vector in the result cache
  bool embed_registered{false};                  // embed_keys are in impl::embed_joinable
  std::optional<backend::embedding_result> embedded{};
  std::vector<std::uint32_t> embed_tokens{};  // per input: the backend's count shared out by estimate
  backend::rerank_request rerank_req{};
  std::optional<backend::rerank_result> reranked{};
};

// A request ready for single-flight and admission (both routes build one).
struct prepared {
  backend::generation_request gen;
  std::uint64_t cost{0};
  config::lane lane{config::lane::draft};
  std::string flight_key;                     // empty = not joinable
  std::optional<cache::cache_key> cache_key;  // set when the result may be stored
  infer_result base;
  ray::clock::time_point arrived{};
  bool shed{false};
  ray::runtime::stream_listener* listener{nullptr};
  bool streaming{false};  // first-token/idle-token deadlines instead of the total one
};

// What a public entry point answers when its body threw: a value, never an exception (callers race these
// calls with `||`, where a throw would not end the other side). runtime.cpp.
ray::error internal_failure(telemetry::logger& log, std::exception_ptr ep);

}  // namespace detail

struct runtime::impl {
  using flight = detail::flight;
  using prepared = detail::prepared;
  using cached_value = detail::cached_value;

  impl(boost::asio::any_io_executor e, config::config const& c, backend::backend& b, telemetry::registry& m,
       telemetry::logger& l, system::sampler* s, ray::clock const& clk);  // runtime.cpp: every metric

  void reject(ray::error const& e) { rejections.with({code_name(e.code)}).inc(); }
  void refresh_limits();
  void pump();
  void finish(std::shared_ptr<flight> const& f, result<infer_result> outcome);
  system::decision pressure_decision();
  // The coroutine a flight runs in: run_flight raced against the flight's stop request, and a clean end
  // (outcome set, scheduler entries released) whatever happens inside, exceptions included.
  boost::asio::awaitable<void> fly(std::shared_ptr<flight> f);
  boost::asio::awaitable<void> run_flight(std::shared_ptr<flight> f);
  boost::asio::awaitable<void> guarded_run(
      std::shared_ptr<flight> f);  // run_flight, exceptions into f->failure
  boost::asio::awaitable<bool> warm_up();
  boost::asio::awaitable<result<infer_result>> join_or_start(prepared p);
  // The last waiter left an unfinished flight: nobody may join it any more, and its coroutine is stopped.
  void abandon(std::shared_ptr<flight> const& f);
  // Removes an embed flight's inputs from embed_joinable (finish() and abandon()).
  void unjoin_inputs(flight const& f);
  // A new flight of `f`'s kind: id, joinable registration, its coroutine spawned (fly).
  void launch(std::shared_ptr<flight> const& f);
  // embed.cpp: the bodies of runtime::embed()/rerank(), and the backend-call stage of their flights
  // (run_flight hands over once the flight is dispatched; `cs` is run_flight's cancellation state).
  boost::asio::awaitable<result<embed_result>> embed_body(embed_call call);
  boost::asio::awaitable<result<rerank_result>> rerank_body(rerank_call call);
  boost::asio::awaitable<void> call_auxiliary(std::shared_ptr<flight> f, ray::clock::time_point dispatched_at,
                                              boost::asio::cancellation_state cs);
  // Waits as one waiter of each flight; false when this waiter left first (its client went away): it has
  // then left every one of them, and the last waiter out of a flight stops it.
  boost::asio::awaitable<bool> wait_all(std::vector<std::shared_ptr<flight>> const& flights);
  // errc::model_kind_mismatch unless this runtime's model is of kind `k` (`what`: the route family).
  std::optional<ray::error> kind_mismatch(config::model_kind k, std::string_view what) const;
  // A cache hit answered with the current request's view (its degradation, its prompt report).
  std::optional<infer_result> lookup(cache::cache_key const& key, infer_result const& base,
                                     ray::clock::time_point arrived);
  // 413 request_token_budget_exceeded when `cost` can never fit the budgets.
  std::optional<ray::error> over_budget(std::uint64_t cost, std::string_view what);

  boost::asio::any_io_executor ex;
  config::config const& cfg;
  backend::backend& be;
  telemetry::logger& log;
  system::sampler* sampler;
  ray::clock const& clock;
  backend::description desc;
  scheduler::scheduler sched;
  cache::result_cache<cached_value> cache;
  boost::asio::steady_timer batch_timer;
  bool batch_armed{false};
  std::unordered_map<std::string, std::shared_ptr<flight>> joinable;
  // Embedding inputs being computed: cache-key hex → (flight, index into its embed_req.inputs).
  std::unordered_map<std::string, std::pair<std::shared_ptr<flight>, std::size_t>> embed_joinable;
  std::optional<std::uint32_t> embed_dims;  // length of the last vectors the backend returned
  std::unordered_map<std::uint64_t, std::shared_ptr<flight>> waiting;  // admitted, not yet dispatched
  std::uint64_t next_id{1};
  system::decision last_decision{};

  telemetry::counter_family rejections, cancellations, degradations;
  telemetry::counter backend_ok, backend_error, backend_cancelled, backend_timeout;
  telemetry::counter cache_hits, cache_misses, dedupe_joins, chars_saved;
  telemetry::histogram queue_wait, ttft;
};

}  // namespace ray::runtime
