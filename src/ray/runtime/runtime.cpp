#include "ray/runtime/runtime.hpp"

#include "ray/cache/cache.hpp"
#include "ray/http/stop.hpp"
#include "ray/prompt/prompt.hpp"
#include "ray/scheduler/scheduler.hpp"
#include "ray/system/system.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <unordered_map>

namespace ray::runtime {

namespace {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
using steady = std::chrono::steady_clock;

double ms_between(ray::clock::time_point a, ray::clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// What the result cache keeps of an answer.
struct cached_value {
  std::string output;
  std::string finish_reason;
  std::optional<std::uint32_t> prompt_tokens, completion_tokens;
  std::size_t completion_chars{0};
  backend::generation_result provider;  // without text
};

enum class phase : std::uint8_t { queued, prefill, decode };
std::string_view phase_name(phase p) {
  switch (p) {
    case phase::queued:
      return "queued";
    case phase::prefill:
      return "prefill";
    case phase::decode:
      return "decode";
  }
  return "queued";
}

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
};

// Completes when `t` expires; a re-arm (expires_after while waiting) keeps it waiting, a cancellation of the
// awaiting operation ends it.
asio::awaitable<std::tuple<boost::system::error_code>> deadline_watch(asio::steady_timer& t) {
  auto cs = co_await asio::this_coro::cancellation_state;
  co_await asio::this_coro::throw_if_cancelled(false);
  for (;;) {
    auto [ec] = co_await t.async_wait(use_tuple);
    if (!ec) co_return std::tuple<boost::system::error_code>{};
    if (cs.cancelled() != asio::cancellation_type::none) co_return std::tuple<boost::system::error_code>{ec};
  }
}

// backend.generate() with its exceptions turned into an error value. Inside `a || b` an exception is not a
// completion that cancels the other side (Asio 1.81 waits for one *success*): a throwing backend would leave
// the request waiting for its deadline. Thrown before the awaitable exists or inside it: the same error.
asio::awaitable<result<backend::generation_result>> guarded_generate(backend::backend& be,
                                                                     backend::generation_request const& req,
                                                                     backend::token_sink* sink) {
  std::string what;
  try {
    co_return co_await be.generate(req, sink);
  } catch (std::exception const& e) {
    what = e.what();
  } catch (...) {
    what = "unknown exception";
  }
  co_return ray::error{errc::provider_request_failed, "the backend call failed inside the gateway: " + what};
}

class flight_sink final : public backend::token_sink {
 public:
  explicit flight_sink(flight& f) : f_(f) {}
  void on_delta(std::string_view text) override {
    if (f_.streaming && f_.deadline) f_.deadline->expires_after(f_.idle_token);
    f_.ph = phase::decode;
    f_.produced.append(text);
    f_.deltas.emplace_back(text);
    for (auto* l : f_.listeners)
      l->on_text(text);
  }
  void on_tool_calls(boost::json::value const& delta) override {
    if (f_.streaming && f_.deadline) f_.deadline->expires_after(f_.idle_token);
    f_.ph = phase::decode;
    for (auto* l : f_.listeners)
      l->on_tool_calls(delta);  // tool requests are never joined: no replay
  }
  void on_logprobs(boost::json::value const& logprobs) override {
    for (auto* l : f_.listeners)
      l->on_logprobs(logprobs);  // logprobs requests are never joined either (api's cacheable()): no replay
  }

 private:
  flight& f_;
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

}  // namespace

struct runtime::impl {
  impl(asio::any_io_executor e, config::config const& c, backend::backend& b, telemetry::registry& m,
       telemetry::logger& l, system::sampler* s, ray::clock const& clk)
      : ex(std::move(e)),
        cfg(c),
        be(b),
        log(l),
        sampler(s),
        clock(clk),
        desc(b.describe()),
        sched(scheduler::limits::from(c, desc.slots, desc.kv_pool), clk),
        cache({.max_entries = c.cache.max_entries, .max_bytes = c.cache.max_bytes, .ttl_ms = c.cache.ttl_ms},
              clk),
        batch_timer(ex),
        rejections(m.add_counter("ray_rejections_total", "Requests refused, by error code.", {"reason"},
                                 {.json_name = "rejections"})),
        cancellations(m.add_counter("ray_cancellations_total",
                                    "Requests whose client left or whose deadline fired, by phase.",
                                    {"phase"}, {.json_name = "cancellations"})),
        degradations(m.add_counter("ray_degradations_total", "Requests served degraded, by reason.",
                                   {"reason"}, {.json_name = "degradations"})) {
    auto backend_requests =
        m.add_counter("ray_backend_requests_total", "Generation calls sent to the backend, by outcome.",
                      {"outcome"}, {.json_name = "backend.requests"});
    backend_ok = backend_requests.with({"ok"});
    backend_error = backend_requests.with({"error"});
    backend_cancelled = backend_requests.with({"cancelled"});
    backend_timeout = backend_requests.with({"timeout"});
    cache_hits =
        m.add_counter("ray_cache_hits_total", "Result cache hits.", {}, {.json_name = "cache.hits"}).with();
    cache_misses =
        m.add_counter("ray_cache_misses_total", "Result cache misses.", {}, {.json_name = "cache.misses"})
            .with();
    dedupe_joins =
        m.add_counter("ray_dedupe_joins_total", "Requests that joined an identical in-flight request.", {},
                      {.json_name = "dedupe.joins"})
            .with();
    chars_saved = m.add_counter("ray_prompt_chars_saved_total", "Characters the prompt compiler removed.", {},
                                {.json_name = "promptCompiler.charsSaved"})
                      .with();
    queue_wait =
        m.add_histogram("ray_queue_wait_seconds", "Time dispatched requests waited in the queue.").with();
    ttft = m.add_histogram("ray_time_to_first_token_seconds",
                           "Time from dispatch to the first token, for requests that reached the backend.")
               .with();
    auto gauge = [&](char const* name, char const* help, char const* json, std::function<double()> fn) {
      m.add_gauge(name, help, {}, {.json_name = json}).set_function({}, std::move(fn));
    };
    gauge("ray_queue_depth", "Requests waiting for dispatch.", "queue.depth",
          [this] { return double(sched.stats().queue_depth); });
    gauge("ray_queue_tokens", "Token cost of the waiting requests.", "queue.tokens",
          [this] { return double(sched.stats().queued_tokens); });
    gauge("ray_inflight_requests", "Requests dispatched to the backend.", "inflight.requests",
          [this] { return double(sched.stats().in_flight); });
    gauge("ray_inflight_tokens", "Token cost of the dispatched requests.", "inflight.tokens",
          [this] { return double(sched.stats().in_flight_tokens); });
    gauge("ray_backend_up", "1 when the backend is ready or degraded.", "backend.up",
          [this] { return backend::is_serving(be.current_state()) ? 1.0 : 0.0; });
    gauge("ray_backend_slots_busy", "Backend slots busy with Ray's requests.", "backend.slotsBusy",
          [this] { return double(be.current_details().slots_busy); });
    gauge("ray_backend_load_seconds", "Duration of the backend's last model load (0 when unknown).",
          "backend.loadSeconds", [this] { return be.current_details().load_ms.value_or(0) / 1000.0; });
    // The Gateway API Inference Extension's model-server metrics (docs/scale-out.md maps the endpoint
    // picker's flags to them): waiting = Ray's queue plus the server's own (llama-server's deferred
    // requests), running = busy slots (Ray's and other clients'), KV cache in use 0..1 (left out while
    // unknown).
    gauge("ray_inference_requests_waiting",
          "Requests waiting for a slot: Ray's queue plus the backend's deferred requests.",
          "inference.requestsWaiting", [this] {
            return double(sched.stats().queue_depth) +
                   double(be.current_details().requests_deferred.value_or(0));
          });
    gauge("ray_inference_requests_running", "Requests running on the backend (busy slots, any client).",
          "inference.requestsRunning", [this] {
            auto const d = be.current_details();
            return double(d.slots_busy) + double(d.slots_foreign);
          });
    m.add_gauge("ray_inference_kv_cache_usage_ratio",
                "Fraction of the backend's KV cache held by running requests (0..1), from /slots; absent "
                "while unknown.",
                {}, {.json_name = "inference.kvCacheUsage"})
        .set_optional_function({}, [this] { return be.current_details().kv_cache_usage; });
    gauge("ray_memory_pressure", "1 while memory pressure degrades new work.", "pressure.memory",
          [this] { return last_decision.memory_pressure ? 1.0 : 0.0; });
    gauge("ray_cpu_pressure", "1 while CPU pressure degrades new work.", "pressure.cpu",
          [this] { return last_decision.cpu_pressure ? 1.0 : 0.0; });
    m.add_counter("ray_backend_restarts_total", "Backend restarts detected.", {},
                  {.json_name = "backend.restarts"})
        .set_function({}, [this] { return std::uint64_t{be.current_details().restarts}; });
    auto dispatches =
        m.add_counter("ray_scheduler_dispatches_total",
                      "Dispatch decisions: best score in the lookahead window, fallback beyond it, or a "
                      "starved request that reserved the budget.",
                      {"kind"}, {.json_name = "scheduler.dispatches"});
    dispatches.set_function({"scored"}, [this] { return sched.stats().dispatched_scored; });
    dispatches.set_function({"fallback"}, [this] { return sched.stats().dispatched_fallback; });
    dispatches.set_function({"starved"}, [this] { return sched.stats().dispatched_starved; });
    auto states = m.add_gauge("ray_backend_state", "1 for the backend's current state.", {"state"});
    for (auto s :
         {backend::state::unknown, backend::state::starting, backend::state::loading, backend::state::warming,
          backend::state::ready, backend::state::degraded, backend::state::unreachable,
          backend::state::restarting, backend::state::failed, backend::state::misconfigured}) {
      states.set_function({backend::state_name(s)},
                          [this, s] { return be.current_state() == s ? 1.0 : 0.0; });
    }
  }

  void reject(ray::error const& e) { rejections.with({code_name(e.code)}).inc(); }
  void refresh_limits();
  void pump();
  void finish(std::shared_ptr<flight> const& f, result<infer_result> outcome);
  system::decision pressure_decision();
  // The coroutine a flight runs in: run_flight raced against the flight's stop request, and a clean end
  // (outcome set, scheduler entries released) whatever happens inside, exceptions included.
  asio::awaitable<void> fly(std::shared_ptr<flight> f);
  asio::awaitable<void> run_flight(std::shared_ptr<flight> f);
  asio::awaitable<void> guarded_run(std::shared_ptr<flight> f);  // run_flight, exceptions into f->failure
  asio::awaitable<bool> warm_up();
  asio::awaitable<result<infer_result>> join_or_start(prepared p);
  // A cache hit answered with the current request's view (its degradation, its prompt report).
  std::optional<infer_result> lookup(cache::cache_key const& key, infer_result const& base,
                                     ray::clock::time_point arrived);
  // 413 request_token_budget_exceeded when `cost` can never fit the budgets.
  std::optional<ray::error> over_budget(std::uint64_t cost, std::string_view what);

  asio::any_io_executor ex;
  config::config const& cfg;
  backend::backend& be;
  telemetry::logger& log;
  system::sampler* sampler;
  ray::clock const& clock;
  backend::description desc;
  scheduler::scheduler sched;
  cache::result_cache<cached_value> cache;
  asio::steady_timer batch_timer;
  bool batch_armed{false};
  std::unordered_map<std::string, std::shared_ptr<flight>> joinable;
  std::unordered_map<std::uint64_t, std::shared_ptr<flight>> waiting;  // admitted, not yet dispatched
  std::uint64_t next_id{1};
  system::decision last_decision{};

  telemetry::counter_family rejections, cancellations, degradations;
  telemetry::counter backend_ok, backend_error, backend_cancelled, backend_timeout;
  telemetry::counter cache_hits, cache_misses, dedupe_joins, chars_saved;
  telemetry::histogram queue_wait, ttft;
};

void runtime::impl::refresh_limits() {
  auto d = be.describe();
  desc.identity = d.identity;  // part of every cache key: a model swap must change them at once
  if (d.slots == desc.slots && d.kv_pool == desc.kv_pool && d.context_per_request == desc.context_per_request)
    return;
  desc = d;
  auto evicted = sched.set_limits(scheduler::limits::from(cfg, desc.slots, desc.kv_pool));
  for (auto id : evicted) {
    auto it = waiting.find(id);
    if (it == waiting.end()) continue;
    auto f = it->second;
    waiting.erase(it);
    ray::error err{errc::request_token_budget_exceeded,
                   "the backend's budgets shrank and this request no longer fits them; lower maxTokens"};
    reject(err);
    finish(f, err);
    f->dispatch.cancel();  // wakes its run_flight, which sees the outcome and ends
  }
}

void runtime::impl::pump() {
  for (;;) {
    auto id = sched.next();
    if (!id) break;
    auto it = waiting.find(*id);
    if (it == waiting.end()) continue;
    auto f = it->second;
    waiting.erase(it);
    f->dispatched = true;
    f->dispatch.cancel();
  }
  if (auto w = sched.wake_at(); w && !batch_armed) {
    batch_armed = true;
    batch_timer.expires_after(std::chrono::duration_cast<steady::duration>(*w - clock.now()));
    batch_timer.async_wait([this](boost::system::error_code ec) {
      batch_armed = false;
      if (!ec) pump();
    });
  }
}

void runtime::impl::finish(std::shared_ptr<flight> const& f, result<infer_result> outcome) {
  if (f->finished) return;
  f->finished = true;
  f->outcome = std::move(outcome);
  if (!f->key.empty()) {
    auto it = joinable.find(f->key);
    if (it != joinable.end() && it->second == f) joinable.erase(it);
  }
  f->done.cancel();
}

system::decision runtime::impl::pressure_decision() {
  if (!sampler) {
    system::snapshot empty;
    last_decision = system::evaluate(empty, cfg.graceful_degradation, sched.stats().queue_depth);
  } else {
    last_decision =
        system::evaluate(sampler->sample(clock.now()), cfg.graceful_degradation, sched.stats().queue_depth);
  }
  return last_decision;
}

asio::awaitable<void> runtime::impl::guarded_run(std::shared_ptr<flight> f) {
  try {
    co_await run_flight(f);
  } catch (std::exception const& e) {
    f->failure = e.what();
  } catch (...) {
    f->failure = "unknown exception";
  }
}

asio::awaitable<void> runtime::impl::fly(std::shared_ptr<flight> f) {
  try {
    // The stop wait goes first and never completes inline (see stop.hpp). run_flight runs guarded: inside
    // `a || b` an exception does not end the other side (Asio 1.81 waits for one success), so a throw would
    // leave the flight waiting for its stop.
    if (!f->stop.stop_requested()) co_await (f->stop.wait() || guarded_run(f));
  } catch (std::exception const& e) {
    f->failure = e.what();
  } catch (...) {
    f->failure = "unknown exception";
  }
  auto const failure = f->failure;
  f->deadline = nullptr;  // pointed into run_flight's frame
  if (f->finished) co_return;
  // No outcome: every waiter left before it could start, or the flight threw. Release what it may hold.
  waiting.erase(f->id);
  sched.cancel(f->id);
  pump();
  if (!failure.empty()) {
    log.error("request failed inside the gateway", {{"reason", failure}});
    backend_error.inc();
    ray::error err{errc::provider_request_failed, "the request failed inside the gateway: " + failure};
    reject(err);
    finish(f, err);
    co_return;
  }
  cancellations.with({phase_name(f->ph)}).inc();
  finish(f, ray::error{errc::provider_request_failed, "the client left"});
}

asio::awaitable<void> runtime::impl::run_flight(std::shared_ptr<flight> f) {
  co_await asio::this_coro::throw_if_cancelled(false);
  auto cs = co_await asio::this_coro::cancellation_state;
  auto const cancelled = [&] { return f->abandoned || cs.cancelled() != asio::cancellation_type::none; };
  if (cancelled()) {
    cancellations.with({"queued"}).inc();
    finish(f, ray::error{errc::provider_request_failed, "cancelled before admission"});
    co_return;
  }

  auto admitted = sched.admit({f->id, f->cost, f->lane, f->gen.affinity_key, std::nullopt});
  if (!admitted) {
    reject(admitted.error());
    finish(f, admitted.error());
    co_return;
  }
  waiting.emplace(f->id, f);
  pump();

  auto const total = std::chrono::milliseconds(cfg.scheduler.request_timeout_ms);
  auto const queue_limit =
      std::chrono::milliseconds(cfg.scheduler.queue_timeout_ms.value_or(cfg.scheduler.request_timeout_ms));
  if (!f->dispatched) {
    f->dispatch.expires_at(steady::time_point::max());
    asio::steady_timer deadline(ex);
    deadline.expires_after(std::chrono::duration_cast<steady::duration>(
        std::min(queue_limit, total) -
        std::chrono::duration_cast<std::chrono::milliseconds>(clock.now() - f->arrived)));
    co_await (f->dispatch.async_wait(use_tuple) || deadline.async_wait(use_tuple));
    if (!f->dispatched) {
      waiting.erase(f->id);
      sched.cancel(f->id);
      pump();
      if (f->finished) co_return;  // answered while queued (evicted when the budgets shrank)
      if (cancelled()) {
        cancellations.with({"queued"}).inc();
        finish(f, ray::error{errc::provider_request_failed, "the client left while queued"});
      } else {
        ray::error err{errc::request_timeout,
                       "the request waited " + std::to_string(queue_limit.count()) +
                           " ms in the queue without being dispatched (scheduler.queueTimeoutMs)"};
        cancellations.with({"queued"}).inc();
        reject(err);
        finish(f, err);
      }
      co_return;
    }
  }

  // The last waiter may have left after pump() dispatched the flight but before this frame resumed: the stop
  // was then emitted while nothing was pending, so no operation below would see it.
  if (cancelled()) {
    sched.cancel(f->id);
    pump();
    cancellations.with({"queued"}).inc();
    finish(f, ray::error{errc::provider_request_failed, "the client left as it was dispatched"});
    co_return;
  }

  auto const dispatched_at = clock.now();
  queue_wait.observe(dispatched_at - f->arrived);
  f->ph = phase::prefill;
  flight_sink sink(*f);
  asio::steady_timer deadline(ex);
  if (f->streaming) {
    deadline.expires_after(std::chrono::milliseconds(
        cfg.scheduler.first_token_timeout_ms.value_or(cfg.scheduler.request_timeout_ms)));
    f->idle_token = std::chrono::milliseconds(cfg.scheduler.idle_token_timeout_ms);
    f->deadline = &deadline;
  } else {
    auto left = total - std::chrono::duration_cast<std::chrono::milliseconds>(dispatched_at - f->arrived);
    deadline.expires_after(std::chrono::duration_cast<steady::duration>(left));
  }
  // The timer goes first: Asio 1.81's parallel_group loses the cancellation of an operation launched after
  // one that completed inline (a mock with no latency does), so the one that never completes inline starts
  // first.
  auto out = co_await (deadline_watch(deadline) || guarded_generate(be, f->gen, &sink));
  f->deadline = nullptr;
  if (cancelled()) {
    sched.cancel(f->id);
    pump();
    cancellations.with({phase_name(f->ph)}).inc();
    backend_cancelled.inc();
    finish(f, ray::error{errc::provider_request_failed, "the client left"});
    co_return;
  }
  if (out.index() == 0) {
    sched.cancel(f->id);
    pump();
    cancellations.with({phase_name(f->ph)}).inc();
    backend_timeout.inc();
    if (!f->produced.empty()) {
      // Generation was under way: what was produced is the answer, cut by the deadline (OpenAI routes return
      // it with finish_reason "length"; /v1/infer keeps its 504). Never cached.
      infer_result r = f->base;
      r.output = f->produced;
      r.completion_chars = count_code_points(r.output);
      r.completion_tokens = static_cast<std::uint32_t>(f->deltas.size());
      r.finish_reason = "length";
      r.truncated_by_deadline = true;
      r.queue_ms = ms_between(f->arrived, dispatched_at);
      finish(f, std::move(r));
      co_return;
    }
    ray::error err{errc::request_timeout, "the request did not complete within scheduler.requestTimeoutMs (" +
                                              std::to_string(cfg.scheduler.request_timeout_ms) + " ms)"};
    reject(err);
    finish(f, err);
    co_return;
  }
  sched.complete(f->id);
  pump();
  auto& gen = std::get<1>(out);
  if (!gen) {
    backend_error.inc();
    reject(gen.error());
    finish(f, gen.error());
    co_return;
  }
  backend_ok.inc();
  ttft.observe(gen->ttft_ms / 1000.0);

  infer_result r = f->base;
  r.completion_chars = count_code_points(gen->text);
  if (gen->prompt_tokens) r.prompt_tokens = gen->prompt_tokens;  // else keep the admission estimate
  r.completion_tokens = gen->completion_tokens;
  r.finish_reason = gen->finish_reason;
  r.output = std::move(gen->text);
  r.tool_calls = std::move(gen->tool_calls);
  r.queue_ms = ms_between(f->arrived, dispatched_at);
  r.provider = std::move(*gen);
  r.provider.text.clear();
  if (f->cache_key && !r.degradation.applied) {
    cached_value v{r.output,           r.finish_reason, r.prompt_tokens, r.completion_tokens,
                   r.completion_chars, r.provider};
    std::size_t payload = v.output.size() + v.finish_reason.size() + sizeof(cached_value);
    cache.put(*f->cache_key, std::move(v), payload);
  }
  finish(f, std::move(r));
}

asio::awaitable<bool> runtime::impl::warm_up() {
  std::vector<config::warmup_request> reqs = cfg.model.adapter.warmup_requests;
  if (reqs.empty()) {
    config::warmup_request w;
    w.input = "Hello";
    w.max_tokens = 1;
    reqs.push_back(w);
  }
  for (auto const& w : reqs) {
    backend::generation_request gen;
    if (w.template_id) {
      auto r = prompt::render_template(cfg, *w.template_id, w.template_variables);
      if (!r) {
        log.warn("warm-up request skipped", {{"templateId", *w.template_id}, {"reason", r.error().message}});
        continue;
      }
      gen.system = std::move(r->system);
      gen.prompt = std::move(r->input);
    } else {
      gen.system = w.system.value_or("");
      gen.prompt = w.input.value_or("Hello");
    }
    gen.max_tokens = w.max_tokens.value_or(1);
    gen.temperature = w.temperature;
    gen.seed = w.seed;
    auto r = co_await be.generate(std::move(gen), nullptr);
    if (!r) {
      log.warn("warm-up request failed", {{"reason", r.error().message}});
      co_return false;
    }
  }
  co_return true;
}

std::optional<infer_result> runtime::impl::lookup(cache::cache_key const& key, infer_result const& base,
                                                  ray::clock::time_point arrived) {
  auto const* hit = cache.get(key);
  if (!hit) {
    cache_misses.inc();
    return std::nullopt;
  }
  cache_hits.inc();
  infer_result r = base;
  r.output = hit->output;
  r.finish_reason = hit->finish_reason;
  r.prompt_tokens = hit->prompt_tokens;
  r.completion_tokens = hit->completion_tokens;
  r.completion_chars = hit->completion_chars;
  r.provider = hit->provider;
  r.cached = true;
  r.latency_ms = ms_between(arrived, clock.now());
  return r;
}

std::optional<ray::error> runtime::impl::over_budget(std::uint64_t cost, std::string_view what) {
  auto const& lim = sched.current_limits();
  if (cost <= lim.max_inflight_tokens && cost <= lim.max_queued_tokens) return std::nullopt;
  std::uint64_t const budget = std::min(lim.max_inflight_tokens, lim.max_queued_tokens);
  ray::error err{errc::request_token_budget_exceeded,
                 "the request needs ~" + std::to_string(cost) + " tokens (" + std::string(what) +
                     "); the budget is " + std::to_string(budget) + "; shorten the input or lower " +
                     "the maximum output tokens"};
  err.details["requestTokens"] = cost;
  err.details["budgetTokens"] = budget;
  return err;
}

asio::awaitable<result<infer_result>> runtime::impl::join_or_start(prepared p) {
  std::string const flight_key = p.flight_key;
  std::shared_ptr<flight> f;
  bool joined = false;
  if (!flight_key.empty()) {
    if (auto it = joinable.find(flight_key);
        it != joinable.end() && !it->second->finished && !it->second->abandoned) {
      f = it->second;
      joined = true;
      dedupe_joins.inc();
    }
  }
  if (!f) {
    if (p.shed) {
      ray::error err{errc::overloaded,
                     "memory pressure is severe (PSI full avg10 over "
                     "gracefulDegradation.shedAtMemoryPsiFullAvg10); new work is refused"};
      err.retry_after_ms = sched.retry_after_ms(sched.stats().queue_depth);
      reject(err);
      co_return err;
    }
    f = std::make_shared<flight>(ex);
    f->id = next_id++;
    f->key = flight_key;
    f->arrived = p.arrived;
    f->cost = p.cost;
    f->lane = p.lane;
    f->gen = std::move(p.gen);
    f->cache_key = p.cache_key;
    f->base = std::move(p.base);
    f->streaming = p.streaming;
    if (!flight_key.empty()) joinable.emplace(flight_key, f);
    // The flight owns its stop request; fly() catches everything, so the completion has nothing to report.
    asio::co_spawn(ex, fly(f), [](std::exception_ptr) {});
  }

  // Wait as one of the flight's waiters (a streaming one first catches up on what was produced).
  ++f->waiters;
  if (p.listener && !f->finished) {
    for (auto const& d : f->deltas)
      p.listener->on_text(d);
    f->listeners.push_back(p.listener);
  }
  if (!f->finished) co_await f->done.async_wait(use_tuple);
  if (p.listener) std::erase(f->listeners, p.listener);
  --f->waiters;
  if (!f->finished) {
    // This waiter left (its client went away). The last one out cancels the shared call.
    if (f->waiters == 0) {
      // Nobody may join a flight that is being stopped (it would answer them "the client left"): an
      // identical request from now on starts a flight of its own.
      f->abandoned = true;
      if (auto it = joinable.find(f->key); !f->key.empty() && it != joinable.end() && it->second == f)
        joinable.erase(it);
      f->stop.request_stop();
    }
    co_return ray::error{errc::provider_request_failed, "the client left"};
  }
  if (!*f->outcome) co_return f->outcome->error();
  infer_result r = **f->outcome;
  if (joined) {
    r.deduplicated = true;
    r.degradation = p.base.degradation;  // a joiner reports its own degradation and prompt view
    r.prompt = p.base.prompt;
  }
  r.latency_ms = ms_between(p.arrived, clock.now());
  co_return r;
}

namespace {
// What a public entry point answers when its body threw: a value, never an exception (callers race these
// calls with `||`, where a throw would not end the other side).
ray::error internal_failure(telemetry::logger& log, std::exception_ptr ep) {
  std::string what = "unknown exception";
  try {
    std::rethrow_exception(ep);
  } catch (std::exception const& e) {
    what = e.what();
  } catch (...) {
  }
  log.error("request failed inside the gateway", {{"reason", what}});
  return ray::error{errc::provider_request_failed, "the request failed inside the gateway: " + what};
}
}  // namespace

asio::awaitable<result<infer_result>> runtime::chat(chat_request req, stream_listener* listener) {
  std::exception_ptr failed;
  try {
    co_return co_await chat_body(std::move(req), listener);
  } catch (...) {
    failed = std::current_exception();
  }
  impl_->reject(ray::error{errc::provider_request_failed, ""});
  co_return internal_failure(impl_->log, failed);
}

asio::awaitable<result<infer_result>> runtime::infer(infer_request req) {
  std::exception_ptr failed;
  try {
    co_return co_await infer_body(std::move(req));
  } catch (...) {
    failed = std::current_exception();
  }
  impl_->reject(ray::error{errc::provider_request_failed, ""});
  co_return internal_failure(impl_->log, failed);
}

asio::awaitable<result<infer_result>> runtime::chat_body(chat_request req, stream_listener* listener) {
  auto& im = *impl_;
  auto const arrived = im.clock.now();
  auto fail = [&im](ray::error err) -> result<infer_result> {
    im.reject(err);
    return err;
  };
  im.refresh_limits();

  infer_result base;
  base.model = cfg_.model.id;
  std::size_t chars = 0;
  std::uint64_t tokens = 0;
  if (req.prompt) {
    chars = count_code_points(*req.prompt);
    tokens = estimate_tokens(*req.prompt);
  } else {
    for (auto const& m : req.messages) {
      chars += count_code_points(m.content);
      tokens += estimate_tokens(m.content) + 4;  // role + template markers
    }
  }
  auto const prompt_tokens = static_cast<std::uint32_t>(std::min<std::uint64_t>(tokens, UINT32_MAX));
  base.prompt_chars = chars;
  base.prompt = {"openai", chars, chars};
  base.prompt_tokens = prompt_tokens;  // the admission estimate until the backend reports its count

  std::uint32_t const context = context_window();
  std::uint32_t const cap = cfg_.openai.default_max_tokens.value_or(cfg_.model.max_output_tokens);
  std::uint32_t const requested = req.max_tokens.value_or(cap);
  std::uint32_t max_tokens = std::min(requested, cfg_.model.max_output_tokens);  // above the cap: clamped
  if (prompt_tokens >= context) co_return fail(context_length_exceeded(context, prompt_tokens, requested));
  if (std::uint64_t{prompt_tokens} + max_tokens > context)
    max_tokens = context - prompt_tokens;  // clamped, never a 400

  auto decision = im.pressure_decision();
  auto& deg = base.degradation;
  if (decision.clamp_to) {
    if (req.json_mode) {
      ray::error err{errc::overloaded,
                     "the gateway is under pressure and does not cut JSON answers short; retry after the "
                     "Retry-After delay"};
      err.retry_after_ms = im.sched.retry_after_ms(im.sched.stats().queue_depth);
      co_return fail(err);
    }
    for (auto r : decision.reasons)
      deg.reasons.emplace_back(r);
    max_tokens = std::max<std::uint32_t>(1, std::min(max_tokens, *decision.clamp_to));
  }
  deg.applied = !deg.reasons.empty();
  deg.requested_max_tokens = requested;
  deg.applied_max_tokens = max_tokens;
  for (auto const& r : deg.reasons)
    im.degradations.with({r}).inc();

  std::optional<cache::cache_key> key;
  if (req.cacheable && cfg_.cache.enabled) {
    cache::request_key_fields f;
    f.route = req.prompt ? "completions" : "chat";
    f.model_id = cfg_.model.id;
    if (cfg_.cache.scope == config::cache_scope::key) f.scope = req.caller;
    f.backend_identity = im.desc.identity;
    f.input = req.canonical;
    f.seed = req.seed;
    f.stop = req.stop;
    f.max_tokens = requested;
    f.temperature = req.temperature;
    f.top_p = req.top_p;
    f.extra_params = req.extra_key;
    key = cache::request_key(f, cfg_.cache.key_strategy == config::cache_key_strategy::input
                                    ? cache::key_strategy::input
                                    : cache::key_strategy::input_params);
    if (auto hit = im.lookup(*key, base, arrived)) co_return std::move(*hit);
  }

  std::uint64_t const cost = std::uint64_t{prompt_tokens} + max_tokens;
  if (auto err = im.over_budget(cost, "prompt + max_tokens")) co_return fail(*err);

  prepared p;
  if (cfg_.scheduler.dedupe_inflight && key) {
    p.flight_key = "o:" + key->hex();
    if (deg.applied) p.flight_key += ":d" + std::to_string(max_tokens);
  }
  p.arrived = arrived;
  p.cost = cost;
  p.shed = decision.shed;
  p.lane =
      scheduler::classify_lane(req.json_mode, max_tokens, std::nullopt, cfg_.scheduler.short_job_max_tokens);
  if (req.prompt) {
    p.gen.prompt = std::move(*req.prompt);
    p.gen.raw_completion = true;
  } else {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (auto const& m : req.messages)
      if (m.role == "system")
        for (unsigned char c : m.content)
          h = (h ^ c) * 0x100000001b3ULL;
    p.gen.affinity_key = h;  // family key on OpenAI routes: the system/developer messages
    p.gen.messages = std::move(req.messages);
  }
  p.gen.max_tokens = max_tokens;
  p.gen.temperature = req.temperature;
  p.gen.top_p = req.top_p;
  p.gen.seed = req.seed;
  p.gen.stop = std::move(req.stop);
  p.gen.json_mode = false;  // response_format (json_object or json_schema) travels in `extra`
  p.gen.extra = std::move(req.extra);
  p.cache_key = key;
  p.base = std::move(base);
  p.listener = listener;
  p.streaming = listener != nullptr;
  auto out = co_await im.join_or_start(std::move(p));
  co_return out;
}

ray::error context_length_exceeded(std::uint32_t context, std::uint32_t prompt_tokens,
                                   std::uint32_t completion_tokens) {
  auto const requested = std::uint64_t{prompt_tokens} + completion_tokens;  // never wraps
  ray::error err{errc::context_length_exceeded,
                 "This model's maximum context length is " + std::to_string(context) +
                     " tokens. However, you requested " + std::to_string(requested) + " tokens (" +
                     std::to_string(prompt_tokens) + " in the messages, " +
                     std::to_string(completion_tokens) +
                     " in the completion). Please reduce the length of the messages or completion."};
  err.param = "messages";
  err.details["contextWindow"] = context;
  err.details["promptTokens"] = prompt_tokens;
  err.details["completionTokens"] = completion_tokens;
  return err;
}

runtime::runtime(asio::any_io_executor ex, config::config const& cfg, backend::backend& be,
                 telemetry::registry& metrics, telemetry::logger& log, system::sampler* sampler,
                 ray::clock const& clock)
    : impl_(std::make_unique<impl>(std::move(ex), cfg, be, metrics, log, sampler, clock)),
      cfg_(cfg),
      backend_(be) {
  be.set_warmup([this]() -> asio::awaitable<bool> {
    bool ok = co_await impl_->warm_up();
    co_return ok;
  });
  be.on_restart([this] {
    auto dropped = impl_->cache.stats().entries;
    impl_->cache.clear();
    impl_->log.info("result cache emptied after a backend restart", {{"entries", dropped}});
  });
}

runtime::~runtime() = default;

std::uint32_t runtime::context_window() const {
  auto d = backend_.describe();
  return d.context_per_request > 0 ? std::min(d.context_per_request, cfg_.model.context_window)
                                   : cfg_.model.context_window;
}

void runtime::count_rejection(errc code) {
  impl_->rejections.with({code_name(code)}).inc();
}

runtime_stats runtime::stats() const noexcept {
  auto s = impl_->sched.stats();
  return {s.queue_depth, s.in_flight, s.queued_tokens, s.in_flight_tokens, s.short_depth, s.draft_depth};
}

cache_view runtime::cache_stats() const noexcept {
  auto s = impl_->cache.stats();
  return {s.entries, s.bytes, s.max_bytes, s.max_entries, s.hits, s.misses, s.evictions, s.expirations};
}

pressure_view runtime::pressure() {
  auto d = impl_->pressure_decision();
  pressure_view v;
  v.queue = d.queue_pressure;
  v.memory = d.memory_pressure;
  v.cpu = d.cpu_pressure;
  v.shed = d.shed;
  if (impl_->sampler) {
    auto const& s = impl_->sampler->last();
    v.sources = s.sources;
    v.cgroup = s.cgroup;
    v.process_rss_mib = s.process_rss_mib;
    v.cgroup_current_mib = s.cgroup_current_mib;
    v.cgroup_limit_mib = s.cgroup_limit_mib;
    v.memory_psi_some_avg10 = s.memory_psi_some_avg10;
    v.memory_psi_full_avg10 = s.memory_psi_full_avg10;
    v.cpu_throttled_ratio = s.cpu_throttled_ratio;
    v.cpu_psi_some_avg10 = s.cpu_psi_some_avg10;
    v.cpu_psi_full_avg10 = s.cpu_psi_full_avg10;
  }
  return v;
}

asio::awaitable<result<infer_result>> runtime::infer_body(infer_request req) {
  auto& im = *impl_;
  auto const arrived = im.clock.now();
  auto fail = [&im](ray::error err) -> result<infer_result> {
    im.reject(err);
    return err;
  };
  im.refresh_limits();

  // Template.
  std::string template_family;
  std::optional<config::lane> template_lane;
  std::optional<std::uint32_t> template_default;
  if (req.template_id) {
    auto r = prompt::render_template(cfg_, *req.template_id, req.template_variables);
    if (!r) co_return fail(r.error());
    req.input = std::move(r->input);
    req.system = std::move(r->system);
    template_family = r->family;
    template_lane = r->lane;
    template_default = r->default_max_tokens;
    if (!req.response_format && r->response_format) req.response_format = r->response_format;
  }

  infer_result base;
  base.model = cfg_.model.id;
  auto& deg = base.degradation;
  auto const& dcfg = cfg_.graceful_degradation;

  // Prompt-length degradation (native routes), then the prompt compiler.
  if (dcfg.enabled) {
    std::size_t before = count_code_points(req.system) + count_code_points(req.input);
    if (prompt::truncate_prompt(req.system, req.input, dcfg.max_prompt_chars)) {
      deg.reasons.emplace_back("prompt_length");
      deg.prompt_chars_before = before;
      deg.prompt_chars_after = count_code_points(req.system) + count_code_points(req.input);
    }
  }
  auto compiled = prompt::compile(cfg_.prompt_compiler, std::move(req.system), std::move(req.input),
                                  template_family, req.metadata);
  base.prompt = {compiled.family_key, compiled.chars_before, compiled.chars_after};
  if (compiled.chars_before > compiled.chars_after)
    im.chars_saved.inc(compiled.chars_before - compiled.chars_after);
  base.prompt_chars = compiled.chars_after;

  // Context check: the prompt must fit; an explicit maxTokens must fit; a defaulted one is clamped.
  std::uint32_t const context = context_window();
  std::uint32_t prompt_tokens =
      static_cast<std::uint32_t>(estimate_tokens(compiled.system) + estimate_tokens(compiled.input));
  bool const defaulted = !req.max_tokens.has_value();
  std::uint32_t const requested = std::clamp<std::uint32_t>(
      req.max_tokens.value_or(template_default.value_or(cfg_.model.max_output_tokens)), 1,
      cfg_.model.max_output_tokens);
  std::uint32_t max_tokens = requested;
  // Near the limit the estimate is not good enough: ask the backend's tokenizer (cached) before refusing, and
  // before clamping a defaulted max tokens to what is left — the clamp must fit by the backend's own count.
  // An explicit max tokens that fits by the estimate goes on; the backend's own 400 is mapped if it does not.
  {
    std::uint64_t const need = std::uint64_t{prompt_tokens} + max_tokens;
    bool const over = need > context;
    bool const near = need * 4 >= std::uint64_t{context} * 3;
    if (over || (defaulted && near)) {
      std::string sys = compiled.system;
      std::string in = compiled.input;
      if (auto exact = co_await backend_.count_prompt_tokens(std::move(sys), std::move(in)))
        prompt_tokens = *exact;
    }
  }
  auto context_error = [&](std::uint32_t mt) {
    ray::error err{errc::request_context_window_exceeded,
                   "the prompt (~" + std::to_string(prompt_tokens) + " tokens) plus maxTokens (" +
                       std::to_string(mt) + ") exceeds the context window of " + std::to_string(context) +
                       " tokens; shorten the input or lower maxTokens"};
    err.details["promptTokens"] = prompt_tokens;
    err.details["maxTokens"] = mt;
    err.details["totalTokens"] = std::uint64_t{prompt_tokens} + mt;
    err.details["contextWindow"] = context;
    return err;
  };
  if (prompt_tokens >= context) co_return fail(context_error(max_tokens));
  if (std::uint64_t{prompt_tokens} + max_tokens > context) {
    if (!defaulted) co_return fail(context_error(max_tokens));
    max_tokens = context - prompt_tokens;
  }

  // Pressure and queue degradation: clamp, or refuse JSON (a cut JSON is invalid), or shed.
  bool const json_mode = req.response_format && *req.response_format == "json_object";
  auto decision = im.pressure_decision();
  if (decision.clamp_to) {
    if (json_mode) {
      ray::error err{errc::overloaded,
                     "the gateway is under pressure and does not cut JSON-mode answers short; retry "
                     "after the Retry-After delay"};
      err.retry_after_ms = im.sched.retry_after_ms(im.sched.stats().queue_depth);
      co_return fail(err);
    }
    for (auto r : decision.reasons)
      deg.reasons.emplace_back(r);
    max_tokens = std::min(max_tokens, *decision.clamp_to);
  }
  deg.applied = !deg.reasons.empty();
  deg.requested_max_tokens = requested;
  deg.applied_max_tokens = max_tokens;
  for (auto const& r : deg.reasons)
    im.degradations.with({r}).inc();

  // Cache.
  bool const cacheable = cfg_.cache.enabled && req.cache;
  std::optional<cache::cache_key> key;
  if (cacheable || req.dedupe_key) {
    cache::request_key_fields f;
    f.route = "infer";
    f.model_id = cfg_.model.id;
    if (cfg_.cache.scope == config::cache_scope::key) f.scope = req.caller;
    f.backend_identity = im.desc.identity;
    f.system = compiled.system;
    f.input = compiled.input;
    f.metadata = &req.metadata;
    f.seed = req.seed;
    f.stop = req.stop;
    if (req.response_format) f.response_format = *req.response_format;
    f.max_tokens = requested;
    f.temperature = req.temperature;
    f.top_p = req.top_p;
    key = cache::request_key(f, cfg_.cache.key_strategy == config::cache_key_strategy::input
                                    ? cache::key_strategy::input
                                    : cache::key_strategy::input_params);
  }
  if (cacheable && key) {
    if (auto hit = im.lookup(*key, base, arrived)) co_return std::move(*hit);
  }

  // Budget first (a request that can never fit is 413 whether or not an identical one runs).
  std::uint64_t const cost = std::uint64_t{prompt_tokens} + max_tokens;
  if (auto err = im.over_budget(cost, "prompt + maxTokens")) co_return fail(*err);

  // Single-flight.
  prepared p;
  if (cfg_.scheduler.dedupe_inflight && (req.dedupe_key || cacheable) && key) {
    if (req.dedupe_key) {
      // Length-prefixed caller scope, then the client's key: distinct callers never share a flight.
      p.flight_key = "k:" + std::to_string(req.caller.size()) + ":" + req.caller + *req.dedupe_key;
    } else {
      p.flight_key = "c:" + key->hex();
    }
    if (deg.applied) p.flight_key += ":d" + std::to_string(max_tokens);
  }
  p.arrived = arrived;
  p.cost = cost;
  p.shed = decision.shed;
  p.lane =
      scheduler::classify_lane(json_mode, max_tokens, template_lane, cfg_.scheduler.short_job_max_tokens);
  p.gen.system = compiled.system;
  p.gen.prompt = compiled.input;
  p.gen.max_tokens = max_tokens;
  p.gen.temperature = req.temperature;
  p.gen.top_p = req.top_p;
  p.gen.seed = req.seed;
  p.gen.stop = req.stop;
  p.gen.json_mode = json_mode;
  p.gen.affinity_key = compiled.affinity_key;
  if (cacheable) p.cache_key = key;
  p.base = std::move(base);
  auto out = co_await im.join_or_start(std::move(p));
  co_return out;
}

}  // namespace ray::runtime
