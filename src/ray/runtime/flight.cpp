// Flights (detail.hpp): a request joins an identical one in flight or starts its own; the flight's coroutine
// runs admission, the queue wait and the backend call under the deadlines, and answers every waiter. The last
// waiter to leave cancels it in every phase.
#include "ray/runtime/detail.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/this_coro.hpp>

#include <algorithm>

namespace ray::runtime {

using namespace detail;

namespace {
using namespace asio::experimental::awaitable_operators;

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

}  // namespace

asio::awaitable<std::tuple<boost::system::error_code>> detail::deadline_watch(asio::steady_timer& t) {
  auto cs = co_await asio::this_coro::cancellation_state;
  co_await asio::this_coro::throw_if_cancelled(false);
  for (;;) {
    auto [ec] = co_await t.async_wait(use_tuple);
    if (!ec) co_return std::tuple<boost::system::error_code>{};
    if (cs.cancelled() != asio::cancellation_type::none) co_return std::tuple<boost::system::error_code>{ec};
  }
}

std::string_view detail::phase_name(phase p) {
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

void runtime::impl::finish(std::shared_ptr<flight> const& f, result<infer_result> outcome) {
  if (f->finished) return;
  f->finished = true;
  f->outcome = std::move(outcome);
  if (!f->key.empty()) {
    auto it = joinable.find(f->key);
    if (it != joinable.end() && it->second == f) joinable.erase(it);
  }
  unjoin_inputs(*f);
  f->done.cancel();
}

void runtime::impl::unjoin_inputs(flight const& f) {
  if (!f.embed_registered) return;
  for (auto const& k : f.embed_keys) {
    auto it = embed_joinable.find(k.hex());
    if (it != embed_joinable.end() && it->second.first.get() == &f) embed_joinable.erase(it);
  }
}

void runtime::impl::abandon(std::shared_ptr<flight> const& f) {
  // Nobody may join a flight that is being stopped (it would answer them "the client left"): an identical
  // request from now on starts a flight of its own.
  f->abandoned = true;
  if (auto it = joinable.find(f->key); !f->key.empty() && it != joinable.end() && it->second == f)
    joinable.erase(it);
  unjoin_inputs(*f);
  f->stop.request_stop();
}

void runtime::impl::launch(std::shared_ptr<flight> const& f) {
  f->id = next_id++;
  if (!f->key.empty()) joinable.emplace(f->key, f);
  if (f->embed_registered) {
    for (std::size_t i = 0; i < f->embed_keys.size(); ++i)
      embed_joinable.insert_or_assign(f->embed_keys[i].hex(), std::pair{f, i});
  }
  // The flight owns its stop request; fly() catches everything, so the completion has nothing to report.
  asio::co_spawn(ex, fly(f), [](std::exception_ptr) {});
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
  if (f->kind != flight_kind::generate) {
    co_await call_auxiliary(f, dispatched_at, cs);  // embeddings, rerank (embed.cpp)
    co_return;
  }
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
    f->key = flight_key;
    f->arrived = p.arrived;
    f->cost = p.cost;
    f->lane = p.lane;
    f->gen = std::move(p.gen);
    f->cache_key = p.cache_key;
    f->base = std::move(p.base);
    f->streaming = p.streaming;
    launch(f);
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
    if (f->waiters == 0) abandon(f);
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

}  // namespace ray::runtime
