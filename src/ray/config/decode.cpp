// The hand-written JSON -> config decoder (architecture.md "JSON"): tracks the JSON path of every value
// so each error names its field, merges objects over what the lower layers set, and rejects unknown keys
// with a suggestion.
#include "ray/config/detail.hpp"

#include <boost/json/serialize.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

namespace ray::config::detail {

std::string join(std::string_view path, std::string_view key) {
  std::string out;
  out.reserve(path.size() + key.size() + 1);
  out.append(path);
  if (!path.empty()) out.push_back('.');
  out.append(key);
  return out;
}

// Paths whose values are (or may hold) secrets: an error names their type, never their text.
bool secret_path(std::string_view path) {
  return path.find(".headers") != std::string_view::npos ||
         path.find("extraArgs") != std::string_view::npos || path.find("apiKey") != std::string_view::npos ||
         path.find("Secret") != std::string_view::npos;
}

std::string show(json::value const& v, std::string_view path) {
  if (!secret_path(path)) return show(v);
  switch (v.kind()) {
    case json::kind::string:
      return "a string (value not shown: it may be a secret)";
    case json::kind::array:
      return "an array";
    case json::kind::object:
      return "an object";
    case json::kind::null:
      return "null";
    case json::kind::bool_:
      return "a boolean";
    default:
      return "a number";
  }
}

std::string show(json::value const& v) {
  std::string s;
  if (v.is_double()) {
    // Shortest round-trip form ("0.9", not Boost's "9E-1").
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v.get_double());
    s.assign(buf, r.ptr);
  } else {
    s = json::serialize(v);
  }
  if (s.size() > 80) s = s.substr(0, utf8_safe_prefix(s, 77)) + "...";
  return s;
}

namespace {

char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string fold(std::string_view s) {
  std::string out;
  for (char c : s)
    if (c != '_' && c != '-') out.push_back(lower(c));
  return out;
}

}  // namespace

std::size_t key_distance(std::string_view a, std::string_view b) {
  if (fold(a) == fold(b)) return 0;
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j)
    prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t cost = lower(a[i - 1]) == lower(b[j - 1]) ? 0 : 1;
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string closest(std::string_view key, std::vector<std::string_view> const& candidates) {
  std::string_view best;
  std::size_t best_d = std::numeric_limits<std::size_t>::max();
  for (auto c : candidates) {
    auto d = key_distance(key, c);
    if (d < best_d) best_d = d, best = c;
  }
  // A typo changes a few characters; beyond that a suggestion is noise.
  std::size_t limit = std::max<std::size_t>(2, std::min(key.size(), best.size()) / 3);
  return best_d <= limit ? std::string(best) : std::string();
}

std::string origin_note(std::string_view source) {
  if (source.starts_with("env:")) return " (set by " + std::string(source.substr(4)) + ")";
  if (source.starts_with("flag:")) return " (set by " + std::string(source.substr(5)) + ")";
  return {};
}

error field_error(std::string const& path, std::string const& message, std::string_view source) {
  error e{errc::invalid_request,
          (path.empty() ? std::string("config") : path) + ": " + message + origin_note(source)};
  e.param = path;
  return e;
}

std::string find_source(source_map const& sources, std::string const& path) {
  std::string p = path;
  for (;;) {
    if (auto it = sources.find(p); it != sources.end()) return it->second;
    auto dot = p.rfind('.');
    if (dot == std::string::npos) return {};
    p.resize(dot);
  }
}

void decoder::fail(std::string const& path, std::string const& message) {
  if (!err_) err_ = field_error(path, message, source_);
}

void decoder::object(json::value const& v, std::string const& path, std::initializer_list<field> fields,
                     std::initializer_list<std::string_view> ignored) {
  if (err_) return;
  if (!v.is_object()) return fail(path, "expected an object, got " + show(v, path));
  for (auto const& kv : v.get_object()) {
    if (err_) return;
    std::string_view const key = kv.key();
    json::value const& child = kv.value();
    auto p = join(path, key);
    auto it = std::find_if(fields.begin(), fields.end(), [&](field const& f) { return f.key == key; });
    if (it != fields.end()) {
      it->fn(child, p);
    } else if (std::find(ignored.begin(), ignored.end(), key) != ignored.end()) {
      ignored_.push_back(p);
    } else {
      std::vector<std::string_view> keys;
      for (auto const& f : fields)
        keys.push_back(f.key);
      auto suggestion = closest(key, keys);
      if (!suggestion.empty()) {
        fail(p, "unknown key, did you mean \"" + suggestion + "\"?");
      } else {
        std::string list;
        for (auto k : keys)
          list += (list.empty() ? "" : ", ") + std::string(k);
        fail(p, "unknown key (valid keys here: " + list + ")");
      }
    }
  }
}

std::optional<std::int64_t> decoder::integer(json::value const& v, std::string const& path, std::int64_t lo,
                                             std::int64_t hi) {
  std::int64_t x = 0;
  if (v.is_int64()) {
    x = v.get_int64();
  } else if (v.is_uint64()) {
    if (v.get_uint64() > static_cast<std::uint64_t>(hi)) {
      fail(path, show(v, path) + " is above the maximum " + std::to_string(hi));
      return std::nullopt;
    }
    x = static_cast<std::int64_t>(v.get_uint64());
  } else if (v.is_double()) {
    double d = v.get_double();
    if (!std::isfinite(d) || d != std::floor(d)) {
      fail(path, "expected an integer, got " + show(v, path));
      return std::nullopt;
    }
    if (d < -9.2e18 || d > 9.2e18) {
      fail(path, show(v, path) + (d < 0 ? " is below the minimum " + std::to_string(lo)
                                        : " is above the maximum " + std::to_string(hi)));
      return std::nullopt;
    }
    x = static_cast<std::int64_t>(d);
  } else {
    fail(path, "expected an integer, got " + show(v, path));
    return std::nullopt;
  }
  if (x < lo) {
    fail(path, std::to_string(x) + " is below the minimum " + std::to_string(lo));
    return std::nullopt;
  }
  if (x > hi) {
    fail(path, std::to_string(x) + " is above the maximum " + std::to_string(hi));
    return std::nullopt;
  }
  return x;
}

decoder::handler decoder::u32(std::uint32_t& dst) {
  return [this, &dst](json::value const& v, std::string const& p) {
    if (auto x = integer(v, p, 0, std::numeric_limits<std::uint32_t>::max()))
      dst = static_cast<std::uint32_t>(*x), mark(p);
  };
}

decoder::handler decoder::u64(std::uint64_t& dst) {
  return [this, &dst](json::value const& v, std::string const& p) {
    if (auto x = integer(v, p, 0, std::numeric_limits<std::int64_t>::max()))
      dst = static_cast<std::uint64_t>(*x), mark(p);
  };
}

decoder::handler decoder::i64(std::int64_t& dst) {
  return [this, &dst](json::value const& v, std::string const& p) {
    if (auto x =
            integer(v, p, std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()))
      dst = *x, mark(p);
  };
}

decoder::handler decoder::opt_u32(std::optional<std::uint32_t>& dst) {
  return [this, &dst](json::value const& v, std::string const& p) {
    if (v.is_null()) return dst.reset(), mark(p);
    if (auto x = integer(v, p, 0, std::numeric_limits<std::uint32_t>::max()))
      dst = static_cast<std::uint32_t>(*x), mark(p);
  };
}

decoder::handler decoder::opt_i32(std::optional<std::int32_t>& dst) {
  return [this, &dst](json::value const& v, std::string const& p) {
    if (v.is_null()) return dst.reset(), mark(p);
    if (auto x =
            integer(v, p, std::numeric_limits<std::int32_t>::min(), std::numeric_limits<std::int32_t>::max()))
      dst = static_cast<std::int32_t>(*x), mark(p);
  };
}

decoder::handler decoder::opt_i64(std::optional<std::int64_t>& dst) {
  return [this, &dst](json::value const& v, std::string const& p) {
    if (v.is_null()) return dst.reset(), mark(p);
    if (auto x =
            integer(v, p, std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()))
      dst = *x, mark(p);
  };
}

decoder::handler decoder::number(double& dst) {
  return [this, &dst](json::value const& v, std::string const& p) {
    if (v.is_number()) return dst = v.to_number<double>(), mark(p);
    fail(p, "expected a number, got " + show(v, p));
  };
}

decoder::handler decoder::opt_number(std::optional<double>& dst) {
  return [this, &dst](json::value const& v, std::string const& p) {
    if (v.is_null()) return dst.reset(), mark(p);
    if (v.is_number()) return dst = v.to_number<double>(), mark(p);
    fail(p, "expected a number, got " + show(v, p));
  };
}

decoder::handler decoder::boolean(bool& dst) {
  return [this, &dst](json::value const& v, std::string const& p) {
    if (v.is_bool()) return dst = v.get_bool(), mark(p);
    fail(p, "expected a boolean, got " + show(v, p));
  };
}

decoder::handler decoder::string(std::string& dst) {
  return [this, &dst](json::value const& v, std::string const& p) {
    if (v.is_string()) return dst = std::string(v.get_string()), mark(p);
    fail(p, "expected a string, got " + show(v, p));
  };
}

decoder::handler decoder::opt_string(std::optional<std::string>& dst) {
  return [this, &dst](json::value const& v, std::string const& p) {
    if (v.is_null()) return dst.reset(), mark(p);
    if (v.is_string()) return dst = std::string(v.get_string()), mark(p);
    fail(p, "expected a string, got " + show(v, p));
  };
}

decoder::handler decoder::strings(std::vector<std::string>& dst) {
  return [this, &dst](json::value const& v, std::string const& p) {
    if (!v.is_array()) return fail(p, "expected an array of strings, got " + show(v, p));
    std::vector<std::string> out;
    for (std::size_t i = 0; i < v.get_array().size(); ++i) {
      auto const& e = v.get_array()[i];
      if (!e.is_string())
        return fail(p + "[" + std::to_string(i) + "]",
                    "expected a string, got " + show(e, p + "[" + std::to_string(i) + "]"));
      out.emplace_back(e.get_string());
    }
    dst = std::move(out);
    mark(p);
  };
}

decoder::handler decoder::string_map(std::map<std::string, std::string>& dst) {
  return [this, &dst](json::value const& v, std::string const& p) {
    if (!v.is_object()) return fail(p, "expected an object of strings, got " + show(v, p));
    for (auto const& [k, e] : v.get_object()) {
      auto ep = join(p, k);
      if (!e.is_string()) return fail(ep, "expected a string, got " + show(e, ep));
      dst[std::string(k)] = std::string(e.get_string());
      mark(ep);
    }
    if (v.get_object().empty()) mark(p);
  };
}

template <class E>
decoder::handler decoder::choice(E& dst, std::initializer_list<std::pair<std::string_view, E>> options) {
  std::vector<std::pair<std::string_view, E>> opts(options);
  return [this, &dst, opts = std::move(opts)](json::value const& v, std::string const& p) {
    if (v.is_string()) {
      for (auto const& [name, value] : opts)
        if (name == v.get_string()) return dst = value, mark(p);
    }
    std::string list;
    for (auto const& o : opts)
      list += (list.empty() ? "\"" : ", \"") + std::string(o.first) + "\"";
    fail(p, show(v, p) + " is not one of " + list);
  };
}

void decoder::root(json::value const& v, config& cfg) {
  object(
      v, "",
      {{"profile",
        [this](json::value const& pv, std::string const& p) {
          // The choice itself is made by the loader (flags win over the file); here only its validity.
          if (!pv.is_string()) return fail(p, "expected a string, got " + show(pv, p));
          if (auto r = profile_defaults(std::string_view(pv.get_string())); !r)
            fail(p, r.error().message.substr(std::string_view("profile: ").size()));
        }},
       {"server", [&](json::value const& x, std::string const& p) { server(x, p, cfg.server); }},
       {"openai", [&](json::value const& x, std::string const& p) { openai(x, p, cfg.openai); }},
       {"model",
        [&](json::value const& x, std::string const& p) {
          if (v.is_object() && v.get_object().contains("models"))
            return fail(p,
                        "`model` and `models` are both set: list every model under `models` (the first is "
                        "the default chat model) or configure one under `model`");
          model(x, p, cfg.model);
        }},
       {"models", [&](json::value const& x, std::string const& p) { models(x, p, cfg); }},
       {"residency", [&](json::value const& x, std::string const& p) { residency(x, p, cfg.residency); }},
       {"scheduler", [&](json::value const& x, std::string const& p) { scheduler(x, p, cfg.scheduler); }},
       {"cache", [&](json::value const& x, std::string const& p) { cache(x, p, cfg.cache); }},
       {"gracefulDegradation",
        [&](json::value const& x, std::string const& p) { degradation(x, p, cfg.graceful_degradation); }},
       {"promptCompiler",
        [&](json::value const& x, std::string const& p) { prompt_compiler(x, p, cfg.prompt_compiler); }},
       {"prompts", [&](json::value const& x, std::string const& p) { prompts(x, p, cfg.templates); }},
       {"asyncQueue",
        [&](json::value const& x, std::string const& p) { async_queue(x, p, cfg.async_queue); }},
       {"telemetry", [&](json::value const& x, std::string const& p) { telemetry(x, p, cfg.telemetry); }},
       {"auth", [&](json::value const& x, std::string const& p) { auth(x, p, cfg.auth); }},
       {"rateLimit", [&](json::value const& x, std::string const& p) { rate_limit(x, p, cfg.rate_limit); }},
       {"tags", string_map(cfg.tags)}},
      {"adaptiveTuning"});
}

void decoder::server(json::value const& v, std::string const& path, server_config& s) {
  object(v, path,
         {{"host", string(s.host)},
          {"port", u32(s.port)},
          {"requestBodyLimitBytes", u32(s.request_body_limit_bytes)},
          {"threads", u32(s.threads)},
          {"maxConnections", u32(s.max_connections)},
          {"maxConnectionsPerClient", u32(s.max_connections_per_client)},
          {"maxHeaderBytes", u32(s.max_header_bytes)},
          {"maxHeaders", u32(s.max_headers)},
          {"maxTargetBytes", u32(s.max_target_bytes)},
          {"headersTimeoutMs", u32(s.headers_timeout_ms)},
          {"headersTimeoutUnderPressureMs", u32(s.headers_timeout_under_pressure_ms)},
          {"bodyTimeoutMs", u32(s.body_timeout_ms)},
          {"minBodyBytesPerSecond", u32(s.min_body_bytes_per_second)},
          {"keepAliveTimeoutMs", u32(s.keep_alive_timeout_ms)},
          {"maxRequestsPerConnection", u32(s.max_requests_per_connection)},
          {"sseKeepAliveMs", u32(s.sse_keep_alive_ms)},
          {"streamBufferBytes", u32(s.stream_buffer_bytes)},
          {"shutdownGraceMs", u32(s.shutdown_grace_ms)},
          {"drainMs", u32(s.drain_ms)},
          {"corsAllowOrigins", strings(s.cors_allow_origins)},
          {"allowUnauthenticatedPublic", boolean(s.allow_unauthenticated_public)}});
}

void decoder::openai(json::value const& v, std::string const& path, openai_config& o) {
  object(v, path,
         {{"strictModelNames", boolean(o.strict_model_names)},
          {"defaultMaxTokens", opt_u32(o.default_max_tokens)}});
}

void decoder::model(json::value const& v, std::string const& path, model_config& m) {
  object(v, path,
         {{"id", string(m.id)},
          {"family", string(m.family)},
          {"quantization", string(m.quantization)},
          {"contextWindow", u32(m.context_window)},
          {"maxOutputTokens", u32(m.max_output_tokens)},
          {"warmOnBoot", boolean(m.warm_on_boot)},
          {"aliases", strings(m.aliases)},
          {"kind", choice<model_kind>(m.kind, {{"chat", model_kind::chat},
                                               {"embedding", model_kind::embedding},
                                               {"rerank", model_kind::rerank}})},
          {"pinned", boolean(m.pinned)},
          {"idleUnloadMs", opt_u32(m.idle_unload_ms)},
          {"adapter", [&](json::value const& x, std::string const& p) { adapter(x, p, m.adapter); }}},
         {"operational"});
}

void decoder::models(json::value const& v, std::string const& path, config& cfg) {
  if (!v.is_array()) return fail(path, "expected an array of model objects, got " + show(v, path));
  auto const& list = v.get_array();
  if (list.empty()) return fail(path, "must list at least one model");
  if (list.size() > 16) return fail(path, "lists " + std::to_string(list.size()) + " models; at most 16");
  // Every model starts from the profile's model defaults; models[0] is `model` (the first chat model).
  model_config const base = cfg.model;
  // A later layer (another file, the environment) that lists `models` replaces the list.
  cfg.more_models.clear();
  mark(path);
  for (std::size_t i = 0; i < list.size() && !err_; ++i) {
    auto const p = path + "[" + std::to_string(i) + "]";
    if (i == 0) {
      model(list[i], p, cfg.model);
      // The first model is `model` to everything after decoding (derived values, the sources a validation
      // error names): record its leaves under that path too.
      std::vector<std::pair<std::string, std::string>> alias;
      for (auto it = sources_.lower_bound(p); it != sources_.end() && it->first.starts_with(p); ++it)
        alias.emplace_back("model" + it->first.substr(p.size()), it->second);
      for (auto& [k, src] : alias)
        sources_[k] = src;
    } else {
      cfg.more_models.push_back(base);
      model(list[i], p, cfg.more_models.back());
    }
  }
}

void decoder::residency(json::value const& v, std::string const& path, residency_config& r) {
  object(v, path,
         {{"memoryBudgetMiB", opt_u32(r.memory_budget_mib)},
          {"reserveMiB", u32(r.reserve_mib)},
          {"countAttachedMiB", opt_u32(r.count_attached_mib)}});
}

void decoder::adapter(json::value const& v, std::string const& path, adapter_config& a) {
  object(v, path,
         {{"kind", choice<adapter_kind>(a.kind, {{"mock", adapter_kind::mock},
                                                 {"openai-compatible", adapter_kind::openai_compatible},
                                                 {"llama.cpp", adapter_kind::llama_cpp}})},
          {"latencyMs", u32(a.latency_ms)},
          {"seed", string(a.seed)},
          {"tokensPerSecond", u32(a.tokens_per_second)},
          {"dimensions", u32(a.dimensions)},
          {"pooling", opt_string(a.pooling)},
          {"baseUrl", string(a.base_url)},
          {"modelRef", string(a.model_ref)},
          {"timeoutMs", u32(a.timeout_ms)},
          {"apiKeyEnv", opt_string(a.api_key_env)},
          {"headers", string_map(a.headers)},
          {"warmupRequests",
           [&](json::value const& x, std::string const& p) { warmups(x, p, a.warmup_requests); }},
          {"cachePrompt", boolean(a.cache_prompt)},
          {"slotId", opt_i32(a.slot_id)},
          {"slotStateTtlMs", u32(a.slot_state_ttl_ms)},
          {"slotSnapshotTimeoutMs", u32(a.slot_snapshot_timeout_ms)},
          {"healthIntervalMs", u32(a.health_interval_ms)},
          {"healthTimeoutMs", u32(a.health_timeout_ms)},
          {"launchProfile", [&](json::value const& x, std::string const& p) { launch(x, p, a.launch); }}},
         {"promptScaffoldCacheEntries"});
}

void decoder::launch(json::value const& v, std::string const& path, std::optional<launch_profile>& lp) {
  if (v.is_null()) return lp.reset(), mark(path);
  if (!v.is_object()) return fail(path, "expected an object, got " + show(v, path));
  if (!lp) {
    // Created by this layer: the fields it does not name are built-in defaults attributed to it.
    lp.emplace();
    mark(path);
  }
  auto& l = *lp;
  object(v, path,
         {{"preset", string(l.preset)},
          {"binaryPath", string(l.binary_path)},
          {"modelPath", string(l.model_path)},
          {"host", string(l.host)},
          {"port", u32(l.port)},
          {"alias", string(l.alias)},
          {"ctxSize", u32(l.ctx_size)},
          {"parallel", u32(l.parallel)},
          {"threads", u32(l.threads)},
          {"threadsBatch", opt_u32(l.threads_batch)},
          {"threadsHttp", opt_u32(l.threads_http)},
          {"batchSize", u32(l.batch_size)},
          {"ubatchSize", u32(l.ubatch_size)},
          {"cacheReuse", u32(l.cache_reuse)},
          {"cacheRamMiB", i64(l.cache_ram_mib)},
          {"cachePrompt", boolean(l.cache_prompt)},
          {"continuousBatching", boolean(l.continuous_batching)},
          {"enableMetrics", boolean(l.enable_metrics)},
          {"exposeSlots", boolean(l.expose_slots)},
          {"warmup", boolean(l.warmup)},
          {"enableUnifiedKv", boolean(l.enable_unified_kv)},
          {"cacheIdleSlots", boolean(l.cache_idle_slots)},
          {"contextShift", boolean(l.context_shift)},
          {"extraArgs", strings(l.extra_args)},
          {"supervise", boolean(l.supervise)},
          {"loadTimeoutMs", u32(l.load_timeout_ms)}});
}

void decoder::warmups(json::value const& v, std::string const& path, std::vector<warmup_request>& out) {
  if (!v.is_array()) return fail(path, "expected an array of objects, got " + show(v, path));
  std::vector<warmup_request> list;
  for (std::size_t i = 0; i < v.get_array().size() && !err_; ++i) {
    warmup_request w;
    object(v.get_array()[i], path + "[" + std::to_string(i) + "]",
           {{"input", opt_string(w.input)},
            {"system", opt_string(w.system)},
            {"templateId", opt_string(w.template_id)},
            {"templateVariables", string_map(w.template_variables)},
            {"maxTokens", opt_u32(w.max_tokens)},
            {"temperature", opt_number(w.temperature)},
            {"seed", opt_i64(w.seed)}});
    list.push_back(std::move(w));
  }
  if (err_) return;
  out = std::move(list);
  mark(path);
}

void decoder::scheduler(json::value const& v, std::string const& path, scheduler_config& s) {
  object(v, path,
         {{"concurrency", u32(s.concurrency)},
          {"maxQueue", u32(s.max_queue)},
          {"maxQueuedTokens", u32(s.max_queued_tokens)},
          {"maxInflightTokens", u32(s.max_inflight_tokens)},
          {"requestTimeoutMs", u32(s.request_timeout_ms)},
          {"dedupeInflight", boolean(s.dedupe_inflight)},
          {"batchWindowMs", u32(s.batch_window_ms)},
          {"affinityLookahead", u32(s.affinity_lookahead)},
          {"shortJobMaxTokens", u32(s.short_job_max_tokens)},
          {"queueTimeoutMs", opt_u32(s.queue_timeout_ms)},
          {"firstTokenTimeoutMs", opt_u32(s.first_token_timeout_ms)},
          {"idleTokenTimeoutMs", u32(s.idle_token_timeout_ms)},
          {"starvationMs", u32(s.starvation_ms)}});
}

void decoder::cache(json::value const& v, std::string const& path, cache_config& c) {
  object(v, path,
         {{"enabled", boolean(c.enabled)},
          {"maxEntries", u32(c.max_entries)},
          {"maxBytes", u64(c.max_bytes)},
          {"ttlMs", u32(c.ttl_ms)},
          {"keyStrategy",
           choice<cache_key_strategy>(c.key_strategy, {{"input", cache_key_strategy::input},
                                                       {"input+params", cache_key_strategy::input_params}})},
          {"scope",
           choice<cache_scope>(c.scope, {{"global", cache_scope::global}, {"key", cache_scope::key}})}});
}

void decoder::degradation(json::value const& v, std::string const& path, degradation_config& g) {
  object(v, path,
         {{"enabled", boolean(g.enabled)},
          {"queueDepthThreshold", u32(g.queue_depth_threshold)},
          {"maxPromptChars", u32(g.max_prompt_chars)},
          {"degradeToMaxTokens", u32(g.degrade_to_max_tokens)},
          {"memoryRssThresholdMiB", u32(g.memory_rss_threshold_mib)},
          {"memoryCgroupPressureRatioThreshold", number(g.memory_cgroup_pressure_ratio_threshold)},
          {"cpuThrottledRatioThreshold", number(g.cpu_throttled_ratio_threshold)},
          {"memoryPsiSomeAvg10Threshold", number(g.memory_psi_some_avg10_threshold)},
          {"memoryPsiFullAvg10Threshold", number(g.memory_psi_full_avg10_threshold)},
          {"cpuPsiSomeAvg10Threshold", number(g.cpu_psi_some_avg10_threshold)},
          {"cpuPsiFullAvg10Threshold", number(g.cpu_psi_full_avg10_threshold)},
          {"shedAtMemoryPsiFullAvg10", number(g.shed_at_memory_psi_full_avg10)},
          {"watchCgroups", strings(g.watch_cgroups)}});
}

void decoder::prompt_compiler(json::value const& v, std::string const& path, prompt_compiler_config& p) {
  object(v, path,
         {{"enabled", boolean(p.enabled)},
          {"collapseWhitespace", boolean(p.collapse_whitespace)},
          {"dedupeRepeatedLines", boolean(p.dedupe_repeated_lines)},
          {"familyMetadataKeys", strings(p.family_metadata_keys)}});
}

void decoder::prompts(json::value const& v, std::string const& path,
                      std::map<std::string, template_config>& t) {
  object(v, path, {{"templates", [&](json::value const& tv, std::string const& tp) {
                      if (!tv.is_object())
                        return fail(tp, "expected an object of templates, got " + show(tv, tp));
                      for (auto const& [id, body] : tv.get_object()) {
                        if (err_) return;
                        auto p = join(tp, id);
                        auto it = t.find(std::string(id));
                        if (it != t.end()) {
                          one_template(body, p, it->second);
                          continue;
                        }
                        if (!body.is_object()) return fail(p, "expected an object, got " + show(body, p));
                        for (std::string_view required : {"family", "lane", "input", "variables"})
                          if (!body.get_object().contains(required))
                            return fail(p, "missing required key \"" + std::string(required) + "\"");
                        template_config fresh;
                        mark(p);
                        one_template(body, p, fresh);
                        t.emplace(std::string(id), std::move(fresh));
                      }
                      if (tv.get_object().empty()) mark(tp);
                    }}});
}

void decoder::one_template(json::value const& v, std::string const& path, template_config& t) {
  object(v, path,
         {{"family", string(t.family)},
          {"lane", choice<lane>(t.lane_, {{"short", lane::short_lane}, {"draft", lane::draft}})},
          {"system", opt_string(t.system)},
          {"input", string(t.input)},
          {"variables", strings(t.variables)},
          {"defaultMaxTokens", opt_u32(t.default_max_tokens)},
          {"responseFormat", opt_string(t.response_format)}});
}

void decoder::async_queue(json::value const& v, std::string const& path, async_queue_config& q) {
  object(v, path,
         {{"enabled", boolean(q.enabled)},
          {"store", choice<job_store_kind>(q.store, {{"sqlite", job_store_kind::sqlite},
                                                     {"postgres", job_store_kind::postgres}})},
          {"storageDir", string(q.storage_dir)},
          {"maxJobs", u32(q.max_jobs)},
          {"minFreeStorageMiB", u32(q.min_free_storage_mib)},
          {"completedTtlMs", u64(q.completed_ttl_ms)},
          {"pollIntervalMs", u32(q.poll_interval_ms)},
          {"dispatchConcurrency", u32(q.dispatch_concurrency)},
          {"maxAttempts", u32(q.max_attempts)},
          {"callbackTimeoutMs", u32(q.callback_timeout_ms)},
          {"maxCallbackAttempts", u32(q.max_callback_attempts)},
          {"callbackAllowedHosts", strings(q.callback_allowed_hosts)},
          {"callbackAllowPrivateNetwork", boolean(q.callback_allow_private_network)},
          {"callbackSecretEnv", opt_string(q.callback_secret_env)},
          {"postgresUrlEnv", opt_string(q.postgres_url_env)},
          {"leaseMs", u32(q.lease_ms)}});
}

void decoder::telemetry(json::value const& v, std::string const& path, telemetry_config& t) {
  object(v, path,
         {{"serviceName", string(t.service_name)},
          {"logLevel", choice<log_level>(t.level, {{"debug", log_level::debug},
                                                   {"info", log_level::info},
                                                   {"warn", log_level::warn},
                                                   {"error", log_level::error}})},
          {"slowRequestThresholdMs", u32(t.slow_request_threshold_ms)}},
         {"includeDebugMetrics"});
}

void decoder::auth(json::value const& v, std::string const& path, auth_config& a) {
  object(v, path,
         {{"enabled", boolean(a.enabled)},
          {"apiKeyEnv", string(a.api_key_env)},
          {"apiKeySha256", strings(a.api_key_sha256)}});
}

void decoder::rate_limit(json::value const& v, std::string const& path, rate_limit_config& r) {
  object(
      v, path,
      {{"enabled", boolean(r.enabled)},
       {"windowMs", u32(r.window_ms)},
       {"maxRequests", u32(r.max_requests)},
       {"maxKeys", u32(r.max_keys)},
       {"keyStrategy", choice<rate_limit_key>(r.key_strategy, {{"ip", rate_limit_key::ip},
                                                               {"api-key", rate_limit_key::api_key},
                                                               {"ip+api-key", rate_limit_key::ip_api_key}})},
       {"trustProxyHeaders", boolean(r.trust_proxy_headers)},
       {"trustedProxies", strings(r.trusted_proxies)}});
}

}  // namespace ray::config::detail
