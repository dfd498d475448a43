// The request pipeline's stages (runtime.hpp): the runtime's state and metrics, budgets and pressure, the
// cache lookup, warm-up, and the native and OpenAI entry points up to the single-flight join (flight.cpp runs
// the flights; embed.cpp serves embeddings and rerank).
#include "ray/runtime/runtime.hpp"

#include "ray/prompt/prompt.hpp"
#include "ray/runtime/detail.hpp"
#include "ray/system/system.hpp"

#include <algorithm>

namespace ray::runtime {

using namespace detail;

runtime::impl::impl(asio::any_io_executor e, config::config const& c, backend::backend& b,
                    telemetry::registry& m, telemetry::logger& l, system::sampler* s, ray::clock const& clk)
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
                                  "Requests whose client left or whose deadline fired, by phase.", {"phase"},
                                  {.json_name = "cancellations"})),
      degradations(m.add_counter("ray_degradations_total", "Requests served degraded, by reason.", {"reason"},
                                 {.json_name = "degradations"})) {
  auto backend_requests =
      m.add_counter("ray_backend_requests_total",
                    "Calls sent to the backend (generations, embeddings, rerank), by outcome.", {"outcome"},
                    {.json_name = "backend.requests"});
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
    states.set_function({backend::state_name(s)}, [this, s] { return be.current_state() == s ? 1.0 : 0.0; });
  }
}

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

asio::awaitable<bool> runtime::impl::warm_up() {
  // Embedding and rerank models are warmed with one call of their own kind (the configured warm-up
  // requests are generations).
  if (cfg.model.kind != config::model_kind::chat) {
    std::optional<ray::error> failed;
    if (cfg.model.kind == config::model_kind::embedding) {
      backend::embedding_request req;
      req.inputs.emplace_back("Hello");
      auto r = co_await be.embed(std::move(req));
      if (!r) failed = r.error();
    } else {
      backend::rerank_request req;
      req.query = "Hello";
      req.documents.emplace_back("Hello");
      auto r = co_await be.rerank(std::move(req));
      if (!r) failed = r.error();
    }
    if (failed) log.warn("warm-up request failed", {{"reason", failed->message}});
    co_return !failed;
  }
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

std::optional<ray::error> runtime::impl::kind_mismatch(config::model_kind k, std::string_view what) const {
  auto const have = cfg.model.kind;
  if (have == k) return std::nullopt;
  ray::error err{errc::model_kind_mismatch, "the model '" + cfg.model.id + "' is of kind " +
                                                std::string(config::model_kind_name(have)) + "; " +
                                                std::string(what) + " requests need a model of kind " +
                                                std::string(config::model_kind_name(k))};
  err.param = "model";
  err.details["model"] = cfg.model.id;
  err.details["kind"] = config::model_kind_name(have);
  err.details["expectedKind"] = config::model_kind_name(k);
  return err;
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

ray::error detail::internal_failure(telemetry::logger& log, std::exception_ptr ep) {
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
  if (auto e = im.kind_mismatch(config::model_kind::chat, "chat and completion")) co_return fail(*e);

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
  if (auto e = im.kind_mismatch(config::model_kind::chat, "chat and completion")) co_return fail(*e);

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
