// Embeddings and rerank through the serving core (runtime.hpp, models.md "Embeddings and rerank").
//
// Both are flights (detail.hpp) of their own kind, so they share the generations' admission (scheduler
// budgets, maxQueue / maxQueuedTokens, 413 for what can never fit, Retry-After), queue deadlines, total
// deadline, pressure shedding and cancellation; only the backend-call stage differs (call_auxiliary).
//
// Embeddings are deterministic, so each input is its own cache entry and its own single-flight key: an
// embed request is served from (1) the result cache, (2) the flights already computing some of its inputs
// (embed_joinable) and (3) at most one new flight holding the rest, sent to the backend in one call. The
// answer is reassembled in input order. Rerank is one flight per request and never cached: its scores
// depend on the query and the whole document list, so there is no per-input answer to reuse.
#include "ray/runtime/detail.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/this_coro.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>

namespace ray::runtime {

using namespace detail;

namespace {
using namespace asio::experimental::awaitable_operators;

std::uint32_t clamp32(std::uint64_t n) {
  return static_cast<std::uint32_t>(std::min<std::uint64_t>(n, std::numeric_limits<std::uint32_t>::max()));
}

// An input's admission cost: its token estimate, at least 1 (an empty text still takes a backend pass).
std::uint32_t input_tokens(std::string_view text) {
  return std::max<std::uint32_t>(1, clamp32(estimate_tokens(text)));
}

std::uint32_t context_of(backend::backend& be, config::config const& cfg) {
  auto const d = be.describe();
  return d.context_per_request > 0 ? std::min(d.context_per_request, cfg.model.context_window)
                                   : cfg.model.context_window;
}

ray::error too_long(std::string const& path, std::uint32_t tokens, std::uint32_t context) {
  ray::error err{errc::context_length_exceeded,
                 path + " is ~" + std::to_string(tokens) + " tokens; this model's context window is " +
                     std::to_string(context) + " tokens. Shorten or split it."};
  err.param = path.substr(0, path.find('['));
  err.details["contextWindow"] = context;
  err.details["promptTokens"] = tokens;
  return err;
}

ray::error dimensions_mismatch(std::uint32_t asked, std::uint32_t native) {
  ray::error err{errc::unsupported_parameter, "dimensions: this model's embeddings have " +
                                                  std::to_string(native) +
                                                  " dimensions and Ray does not shorten them; send " +
                                                  std::to_string(native) + " or leave dimensions out"};
  err.param = "dimensions";
  err.details["dimensions"] = asked;
  err.details["nativeDimensions"] = native;
  return err;
}

// backend.embed()/rerank() with their exceptions turned into an error value (see guarded_generate in
// flight.cpp: inside `a || b` a throw would not end the other side).
asio::awaitable<result<backend::embedding_result>> guarded_embed(backend::backend& be,
                                                                 backend::embedding_request const& req) {
  std::string what;
  try {
    co_return co_await be.embed(req);
  } catch (std::exception const& e) {
    what = e.what();
  } catch (...) {
    what = "unknown exception";
  }
  co_return ray::error{errc::provider_request_failed, "the backend call failed inside the gateway: " + what};
}

asio::awaitable<result<backend::rerank_result>> guarded_rerank(backend::backend& be,
                                                               backend::rerank_request const& req) {
  std::string what;
  try {
    co_return co_await be.rerank(req);
  } catch (std::exception const& e) {
    what = e.what();
  } catch (...) {
    what = "unknown exception";
  }
  co_return ray::error{errc::provider_request_failed, "the backend call failed inside the gateway: " + what};
}

// What a backend answered that Ray cannot hand on (the remote adapter checks the wire format; this checks
// the shape against the request, for every backend).
std::optional<ray::error> check_embeddings(backend::embedding_result const& r, std::size_t inputs) {
  auto bad = [](std::string what) {
    return ray::error{errc::provider_invalid_response, "the backend's embeddings answer " + what};
  };
  if (r.vectors.size() != inputs)
    return bad("holds " + std::to_string(r.vectors.size()) + " vectors for " + std::to_string(inputs) +
               " inputs");
  for (auto const& v : r.vectors) {
    if (v.empty()) return bad("holds an empty vector");
    if (v.size() != r.vectors.front().size()) return bad("holds vectors of different lengths");
    if (!std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); }))
      return bad("holds a number that is not finite");
  }
  return std::nullopt;
}

std::optional<ray::error> check_rerank(backend::rerank_result const& r, std::size_t documents) {
  std::vector<bool> seen(documents, false);
  for (auto const& item : r.results) {
    if (item.index >= documents || seen[item.index])
      return ray::error{errc::provider_invalid_response, "the backend's rerank answer names document " +
                                                             std::to_string(item.index) +
                                                             " out of range or twice"};
    seen[item.index] = true;
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::uint32_t> runtime::embedding_dimensions() const noexcept {
  if (cfg_.model.adapter.kind == config::adapter_kind::mock) return cfg_.model.adapter.dimensions;
  return impl_->embed_dims;
}

asio::awaitable<result<embed_result>> runtime::embed(embed_call call) {
  std::exception_ptr failed;
  try {
    co_return co_await impl_->embed_body(std::move(call));
  } catch (...) {
    failed = std::current_exception();
  }
  impl_->reject(ray::error{errc::provider_request_failed, ""});
  co_return internal_failure(impl_->log, failed);
}

asio::awaitable<result<rerank_result>> runtime::rerank(rerank_call call) {
  std::exception_ptr failed;
  try {
    co_return co_await impl_->rerank_body(std::move(call));
  } catch (...) {
    failed = std::current_exception();
  }
  impl_->reject(ray::error{errc::provider_request_failed, ""});
  co_return internal_failure(impl_->log, failed);
}

asio::awaitable<bool> runtime::impl::wait_all(std::vector<std::shared_ptr<flight>> const& flights) {
  auto cs = co_await asio::this_coro::cancellation_state;
  for (auto const& f : flights)
    ++f->waiters;
  bool left = false;
  for (auto const& f : flights) {
    if (f->finished) continue;
    // A cancellation that came while the previous wait's completion was already queued is recorded here
    // only: the next wait would never see it.
    if (cs.cancelled() != asio::cancellation_type::none) {
      left = true;
      break;
    }
    co_await f->done.async_wait(use_tuple);
    if (!f->finished) {  // woken by the cancellation: the client left
      left = true;
      break;
    }
  }
  for (auto const& f : flights) {
    --f->waiters;
    if (!f->finished && f->waiters == 0) abandon(f);  // the last one out stops the shared call
  }
  co_return !left;
}

asio::awaitable<result<embed_result>> runtime::impl::embed_body(embed_call call) {
  auto const arrived = clock.now();
  auto fail = [this](ray::error err) -> result<embed_result> {
    reject(err);
    return err;
  };
  refresh_limits();
  if (auto e = kind_mismatch(config::model_kind::embedding, "embeddings")) co_return fail(*e);
  if (call.inputs.empty()) {
    ray::error err{errc::invalid_request, "input: must not be empty"};
    err.param = "input";
    co_return fail(err);
  }
  std::optional<std::uint32_t> const native = cfg.model.adapter.kind == config::adapter_kind::mock
                                                  ? std::optional(cfg.model.adapter.dimensions)
                                                  : embed_dims;
  if (call.dimensions && native && *call.dimensions != *native)
    co_return fail(dimensions_mismatch(*call.dimensions, *native));

  // Every input must fit the context; the batch as sent must fit the budgets. Checked before the cache, so
  // the same request always gets the same answer whatever is cached.
  std::uint32_t const context = context_of(be, cfg);
  std::size_t const n = call.inputs.size();
  std::vector<std::uint32_t> estimate(n);
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < n; ++i) {
    estimate[i] = input_tokens(call.inputs[i]);
    if (estimate[i] > context)
      co_return fail(too_long("input[" + std::to_string(i) + "]", estimate[i], context));
    total += estimate[i];
  }
  if (auto err = over_budget(total, "the token estimates of the inputs, summed")) co_return fail(*err);

  // The distinct inputs, each with its cache key (= its single-flight key).
  struct distinct {
    std::size_t first{0};  // index of its first occurrence in call.inputs
    cache::cache_key key{};
    std::optional<std::vector<float>> cached{};  // a cache hit
    std::uint32_t cached_tokens{0};
    std::shared_ptr<flight> f{};  // else the flight computing it, and its index there
    std::size_t at{0};
  };
  std::vector<distinct> inputs;
  std::vector<std::size_t> slot_of(n);
  {
    std::unordered_map<std::string_view, std::size_t> seen;
    cache::request_key_fields kf;
    kf.route = "embed";
    kf.model_id = cfg.model.id;
    if (cfg.cache.scope == config::cache_scope::key) kf.scope = call.caller;
    kf.backend_identity = desc.identity;
    for (std::size_t i = 0; i < n; ++i) {
      auto [it, fresh] = seen.try_emplace(call.inputs[i], inputs.size());
      slot_of[i] = it->second;
      if (!fresh) continue;
      kf.input = call.inputs[i];
      inputs.push_back({i, cache::request_key(kf, cache::key_strategy::input)});
    }
  }

  // (1) the cache, (2) identical inputs in flight, (3) one new flight for the rest.
  bool const use_cache = cfg.cache.enabled && call.cache;
  bool const dedupe = cfg.scheduler.dedupe_inflight;
  std::vector<std::shared_ptr<flight>> flights;
  std::shared_ptr<flight> mine;
  for (auto& d : inputs) {
    if (use_cache) {
      if (auto const* hit = cache.get(d.key)) {
        cache_hits.inc();
        d.cached = hit->embedding;
        d.cached_tokens = hit->prompt_tokens.value_or(estimate[d.first]);
        continue;
      }
      cache_misses.inc();
    }
    if (dedupe) {
      if (auto it = embed_joinable.find(d.key.hex()); it != embed_joinable.end()) {
        auto const& [other, at] = it->second;
        if (!other->finished && !other->abandoned) {
          d.f = other;
          d.at = at;
          if (std::find(flights.begin(), flights.end(), other) == flights.end()) flights.push_back(other);
          continue;
        }
      }
    }
    if (!mine) {
      mine = std::make_shared<flight>(ex);
      mine->kind = flight_kind::embed;
      mine->arrived = arrived;
      mine->lane = config::lane::short_lane;  // no decode: a short job
      mine->base.model = cfg.model.id;
      mine->embed_store = use_cache;
      mine->embed_registered = dedupe;
    }
    d.f = mine;
    d.at = mine->embed_req.inputs.size();
    mine->embed_req.inputs.push_back(call.inputs[d.first]);
    mine->embed_keys.push_back(d.key);
    mine->embed_estimates.push_back(estimate[d.first]);
    mine->cost += estimate[d.first];
  }
  std::size_t const joined = flights.size();
  if (mine) {
    if (pressure_decision().shed) {
      ray::error err{errc::overloaded,
                     "memory pressure is severe (PSI full avg10 over "
                     "gracefulDegradation.shedAtMemoryPsiFullAvg10); new work is refused"};
      err.retry_after_ms = sched.retry_after_ms(sched.stats().queue_depth);
      co_return fail(err);
    }
    launch(mine);
    flights.push_back(mine);
  }
  if (joined > 0) dedupe_joins.inc(joined);

  if (!flights.empty() && !(co_await wait_all(flights)))
    co_return ray::error{errc::provider_request_failed, "the client left"};
  double queue_ms = 0;
  for (auto const& f : flights) {
    if (!*f->outcome) co_return f->outcome->error();  // counted once, by the flight
    queue_ms = std::max(queue_ms, (*f->outcome)->queue_ms);
  }

  embed_result r;
  r.model = cfg.model.id;
  r.vectors.reserve(n);
  r.cached.reserve(n);
  std::uint64_t tokens = 0;
  for (std::size_t i = 0; i < n; ++i) {
    auto const& d = inputs[slot_of[i]];
    if (d.cached) {
      r.vectors.push_back(*d.cached);
      tokens += d.cached_tokens;
    } else {
      r.vectors.push_back(d.f->embedded->vectors[d.at]);
      tokens += d.f->embed_tokens[d.at];
    }
    r.cached.push_back(d.cached.has_value());
  }
  r.prompt_tokens = clamp32(tokens);
  r.sent = mine ? mine->embed_req.inputs.size() : 0;
  r.deduplicated = joined > 0;
  r.queue_ms = queue_ms;
  r.latency_ms = ms_between(arrived, clock.now());
  if (call.dimensions && r.vectors.front().size() != *call.dimensions)  // native size learnt only now
    co_return fail(dimensions_mismatch(*call.dimensions, clamp32(r.vectors.front().size())));
  co_return r;
}

asio::awaitable<result<rerank_result>> runtime::impl::rerank_body(rerank_call call) {
  auto const arrived = clock.now();
  auto fail = [this](ray::error err) -> result<rerank_result> {
    reject(err);
    return err;
  };
  refresh_limits();
  if (auto e = kind_mismatch(config::model_kind::rerank, "rerank")) co_return fail(*e);
  if (call.query.empty() || call.documents.empty()) {
    ray::error err{errc::invalid_request,
                   call.query.empty() ? "query: must be a non-empty string" : "documents: must not be empty"};
    err.param = call.query.empty() ? "query" : "documents";
    co_return fail(err);
  }
  // Each (query, document) pair is one pass through the model.
  std::uint32_t const context = context_of(be, cfg);
  std::uint32_t const query = input_tokens(call.query);
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < call.documents.size(); ++i) {
    std::uint32_t const pair = clamp32(std::uint64_t{query} + input_tokens(call.documents[i]));
    if (pair > context) co_return fail(too_long("documents[" + std::to_string(i) + "]", pair, context));
    total += pair;
  }
  if (auto err = over_budget(total, "the query with each document, summed")) co_return fail(*err);
  if (pressure_decision().shed) {
    ray::error err{errc::overloaded,
                   "memory pressure is severe (PSI full avg10 over "
                   "gracefulDegradation.shedAtMemoryPsiFullAvg10); new work is refused"};
    err.retry_after_ms = sched.retry_after_ms(sched.stats().queue_depth);
    co_return fail(err);
  }

  auto f = std::make_shared<flight>(ex);
  f->kind = flight_kind::rerank;
  f->arrived = arrived;
  f->lane = config::lane::short_lane;
  f->cost = total;
  f->base.model = cfg.model.id;
  f->rerank_req.query = std::move(call.query);
  f->rerank_req.documents = std::move(call.documents);
  f->rerank_req.top_n = call.top_n;
  launch(f);
  std::vector<std::shared_ptr<flight>> const flights{f};
  if (!(co_await wait_all(flights))) co_return ray::error{errc::provider_request_failed, "the client left"};
  if (!*f->outcome) co_return f->outcome->error();

  rerank_result r;
  r.model = cfg.model.id;
  r.results = f->reranked->results;
  // Best first and at most top_n, whatever the backend did (ties keep its order).
  std::stable_sort(
      r.results.begin(), r.results.end(),
      [](backend::rerank_item const& x, backend::rerank_item const& y) { return x.score > y.score; });
  if (f->rerank_req.top_n && r.results.size() > *f->rerank_req.top_n) r.results.resize(*f->rerank_req.top_n);
  r.prompt_tokens = f->reranked->prompt_tokens.value_or(clamp32(total));
  r.queue_ms = (*f->outcome)->queue_ms;
  r.latency_ms = ms_between(arrived, clock.now());
  co_return r;
}

asio::awaitable<void> runtime::impl::call_auxiliary(std::shared_ptr<flight> f,
                                                    ray::clock::time_point dispatched_at,
                                                    asio::cancellation_state cs) {
  auto const cancelled = [&] { return f->abandoned || cs.cancelled() != asio::cancellation_type::none; };
  auto const total = std::chrono::milliseconds(cfg.scheduler.request_timeout_ms);
  f->ph = phase::prefill;
  asio::steady_timer deadline(ex);
  deadline.expires_after(std::chrono::duration_cast<steady::duration>(
      total - std::chrono::duration_cast<std::chrono::milliseconds>(dispatched_at - f->arrived)));

  // The timer goes first (see run_flight: an operation launched after one that completed inline loses its
  // cancellation).
  bool timed_out = false;
  std::optional<ray::error> failed;
  if (f->kind == flight_kind::embed) {
    auto out = co_await (deadline_watch(deadline) || guarded_embed(be, f->embed_req));
    if (out.index() == 0)
      timed_out = true;
    else if (auto& r = std::get<1>(out); !r)
      failed = r.error();
    else
      f->embedded = std::move(*r);
  } else {
    auto out = co_await (deadline_watch(deadline) || guarded_rerank(be, f->rerank_req));
    if (out.index() == 0)
      timed_out = true;
    else if (auto& r = std::get<1>(out); !r)
      failed = r.error();
    else
      f->reranked = std::move(*r);
  }

  if (cancelled()) {
    sched.cancel(f->id);
    pump();
    cancellations.with({phase_name(f->ph)}).inc();
    backend_cancelled.inc();
    finish(f, ray::error{errc::provider_request_failed, "the client left"});
    co_return;
  }
  if (timed_out) {
    sched.cancel(f->id);
    pump();
    cancellations.with({phase_name(f->ph)}).inc();
    backend_timeout.inc();
    ray::error err{errc::request_timeout, "the request did not complete within scheduler.requestTimeoutMs (" +
                                              std::to_string(cfg.scheduler.request_timeout_ms) + " ms)"};
    reject(err);
    finish(f, err);
    co_return;
  }
  sched.complete(f->id);
  pump();
  if (!failed) {
    failed = f->kind == flight_kind::embed ? check_embeddings(*f->embedded, f->embed_req.inputs.size())
                                           : check_rerank(*f->reranked, f->rerank_req.documents.size());
  }
  if (failed) {
    backend_error.inc();
    reject(*failed);
    finish(f, *failed);
    co_return;
  }
  backend_ok.inc();

  if (f->kind == flight_kind::embed) {
    auto& vectors = f->embedded->vectors;
    embed_dims = clamp32(vectors.front().size());
    // The backend counts the batch; each input gets its share by estimate (the last one the remainder), so
    // the shares add up to the backend's count and a later cache hit reports its own share.
    std::size_t const k = vectors.size();
    f->embed_tokens = f->embed_estimates;
    if (auto counted = f->embedded->prompt_tokens) {
      std::uint64_t sum = 0;
      for (auto e : f->embed_estimates)
        sum += e;
      std::uint64_t given = 0;
      for (std::size_t i = 0; i + 1 < k; ++i) {
        f->embed_tokens[i] =
            clamp32(std::uint64_t{*counted} * f->embed_estimates[i] / std::max<std::uint64_t>(sum, 1));
        given += f->embed_tokens[i];
      }
      f->embed_tokens[k - 1] = clamp32(*counted > given ? *counted - given : 0);
    }
    if (f->embed_store) {
      for (std::size_t i = 0; i < k; ++i) {
        cached_value v;
        v.embedding = vectors[i];
        v.prompt_tokens = f->embed_tokens[i];
        std::size_t const payload = v.embedding.size() * sizeof(float) + sizeof(cached_value);
        cache.put(f->embed_keys[i], std::move(v), payload);
      }
    }
  }
  infer_result r = f->base;
  r.queue_ms = ms_between(f->arrived, dispatched_at);
  finish(f, std::move(r));
}

}  // namespace ray::runtime
