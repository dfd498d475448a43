// JSON views of a config: to_json (complete, camelCase, loads back to an equal config), the redacted public
// view of /v1/config, and `ray config explain`.
#include "ray/config/detail.hpp"

#include <boost/json/serialize.hpp>

#include <charconv>

namespace ray::config {

namespace {

namespace json = boost::json;

// Whole numbers stored as double are written as integers ("10", not "1E1"); the loader reads either.
json::value num(double d) {
  if (d == static_cast<double>(static_cast<std::int64_t>(d)) && d > -1e15 && d < 1e15)
    return static_cast<std::int64_t>(d);
  return d;
}

template <class T>
json::value opt(std::optional<T> const& v) {
  if (!v) return nullptr;
  if constexpr (std::is_same_v<T, std::string>)
    return json::string(*v);
  else
    return json::value(*v);
}

json::array strings(std::vector<std::string> const& v) {
  json::array a;
  for (auto const& s : v)
    a.emplace_back(json::string(s));
  return a;
}

json::object string_map(std::map<std::string, std::string> const& m) {
  json::object o;
  for (auto const& [k, v] : m)
    o[k] = v;
  return o;
}

json::object launch_json(launch_profile const& l) {
  return json::object{{"preset", l.preset},
                      {"binaryPath", l.binary_path},
                      {"modelPath", l.model_path},
                      {"host", l.host},
                      {"port", l.port},
                      {"alias", l.alias},
                      {"ctxSize", l.ctx_size},
                      {"parallel", l.parallel},
                      {"threads", l.threads},
                      {"threadsBatch", opt(l.threads_batch)},
                      {"threadsHttp", opt(l.threads_http)},
                      {"batchSize", l.batch_size},
                      {"ubatchSize", l.ubatch_size},
                      {"cacheReuse", l.cache_reuse},
                      {"cacheRamMiB", l.cache_ram_mib},
                      {"cachePrompt", l.cache_prompt},
                      {"continuousBatching", l.continuous_batching},
                      {"enableMetrics", l.enable_metrics},
                      {"exposeSlots", l.expose_slots},
                      {"warmup", l.warmup},
                      {"enableUnifiedKv", l.enable_unified_kv},
                      {"cacheIdleSlots", l.cache_idle_slots},
                      {"contextShift", l.context_shift},
                      {"extraArgs", strings(l.extra_args)},
                      {"supervise", l.supervise},
                      {"loadTimeoutMs", l.load_timeout_ms}};
}

// A warm-up request carries only the fields it sets, like the request body it stands for.
json::object warmup_json(warmup_request const& w) {
  json::object o;
  if (w.input) o["input"] = *w.input;
  if (w.system) o["system"] = *w.system;
  if (w.template_id) o["templateId"] = *w.template_id;
  if (!w.template_variables.empty()) o["templateVariables"] = string_map(w.template_variables);
  if (w.max_tokens) o["maxTokens"] = *w.max_tokens;
  if (w.temperature) o["temperature"] = num(*w.temperature);
  if (w.seed) o["seed"] = *w.seed;
  return o;
}

json::object adapter_json(adapter_config const& a) {
  json::array warmups;
  for (auto const& w : a.warmup_requests)
    warmups.emplace_back(warmup_json(w));
  return json::object{
      {"kind", adapter_kind_name(a.kind)},
      {"latencyMs", a.latency_ms},
      {"seed", a.seed},
      {"tokensPerSecond", a.tokens_per_second},
      {"dimensions", a.dimensions},
      {"baseUrl", a.base_url},
      {"modelRef", a.model_ref},
      {"timeoutMs", a.timeout_ms},
      {"apiKeyEnv", opt(a.api_key_env)},
      {"headers", string_map(a.headers)},
      {"warmupRequests", std::move(warmups)},
      {"cachePrompt", a.cache_prompt},
      {"slotId", opt(a.slot_id)},
      {"slotStateTtlMs", a.slot_state_ttl_ms},
      {"slotSnapshotTimeoutMs", a.slot_snapshot_timeout_ms},
      {"healthIntervalMs", a.health_interval_ms},
      {"healthTimeoutMs", a.health_timeout_ms},
      {"launchProfile", a.launch ? json::value(launch_json(*a.launch)) : json::value(nullptr)},
      {"pooling", opt(a.pooling)}};
}

json::object templates_json(std::map<std::string, template_config> const& templates) {
  json::object o;
  for (auto const& [id, t] : templates) {
    o[id] = json::object{{"family", t.family},
                         {"lane", lane_name(t.lane_)},
                         {"system", opt(t.system)},
                         {"input", t.input},
                         {"variables", strings(t.variables)},
                         {"defaultMaxTokens", opt(t.default_max_tokens)},
                         {"responseFormat", opt(t.response_format)}};
  }
  return o;
}

// Shortest text that reads back to the same double ("0.9", not "9E-1").
std::string number_text(double d) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d);
  return std::string(buf, r.ptr);
}

std::string leaf_text(json::value const& v) {
  if (v.is_double()) return number_text(v.get_double());
  if (v.is_array()) {
    std::string s = "[";
    for (std::size_t i = 0; i < v.get_array().size(); ++i)
      s += (i ? ", " : "") + leaf_text(v.get_array()[i]);
    return s + "]";
  }
  return json::serialize(v);
}

}  // namespace

namespace detail {

void flatten(json::value const& v, std::string const& path,
             std::vector<std::pair<std::string, json::value const*>>& out) {
  if (v.is_object() && !v.get_object().empty()) {
    for (auto const& [k, child] : v.get_object())
      flatten(child, join(path, k), out);
    return;
  }
  out.emplace_back(path, &v);
}

}  // namespace detail

namespace {
json::object model_json(model_config const& m) {
  return json::object{{"id", m.id},
                      {"family", m.family},
                      {"quantization", m.quantization},
                      {"contextWindow", m.context_window},
                      {"maxOutputTokens", m.max_output_tokens},
                      {"warmOnBoot", m.warm_on_boot},
                      {"aliases", strings(m.aliases)},
                      {"kind", model_kind_name(m.kind)},
                      {"pinned", m.pinned},
                      {"idleUnloadMs", opt(m.idle_unload_ms)},
                      {"adapter", adapter_json(m.adapter)}};
}

// The models of a config as their JSON objects (`model` alone for a one-model config).
void put_models(json::object& o, config const& c) {
  if (c.more_models.empty()) {
    o["model"] = model_json(c.model);
    return;
  }
  json::array list;
  list.push_back(model_json(c.model));
  for (auto const& m : c.more_models)
    list.push_back(model_json(m));
  o["models"] = std::move(list);
}
}  // namespace

boost::json::object to_json(config const& c) {
  auto const& s = c.server;
  auto const& q = c.scheduler;
  auto const& g = c.graceful_degradation;
  auto const& aq = c.async_queue;
  auto o = json::object{
      {"profile", c.profile},
      {"server", json::object{{"host", s.host},
                              {"port", s.port},
                              {"requestBodyLimitBytes", s.request_body_limit_bytes},
                              {"threads", s.threads},
                              {"maxConnections", s.max_connections},
                              {"maxConnectionsPerClient", s.max_connections_per_client},
                              {"maxHeaderBytes", s.max_header_bytes},
                              {"maxHeaders", s.max_headers},
                              {"maxTargetBytes", s.max_target_bytes},
                              {"headersTimeoutMs", s.headers_timeout_ms},
                              {"headersTimeoutUnderPressureMs", s.headers_timeout_under_pressure_ms},
                              {"bodyTimeoutMs", s.body_timeout_ms},
                              {"minBodyBytesPerSecond", s.min_body_bytes_per_second},
                              {"keepAliveTimeoutMs", s.keep_alive_timeout_ms},
                              {"maxRequestsPerConnection", s.max_requests_per_connection},
                              {"sseKeepAliveMs", s.sse_keep_alive_ms},
                              {"streamBufferBytes", s.stream_buffer_bytes},
                              {"shutdownGraceMs", s.shutdown_grace_ms},
                              {"drainMs", s.drain_ms},
                              {"corsAllowOrigins", strings(s.cors_allow_origins)},
                              {"allowUnauthenticatedPublic", s.allow_unauthenticated_public}}},
      {"openai", json::object{{"strictModelNames", c.openai.strict_model_names},
                              {"defaultMaxTokens", opt(c.openai.default_max_tokens)}}},
      {"scheduler", json::object{{"concurrency", q.concurrency},
                                 {"maxQueue", q.max_queue},
                                 {"maxQueuedTokens", q.max_queued_tokens},
                                 {"maxInflightTokens", q.max_inflight_tokens},
                                 {"requestTimeoutMs", q.request_timeout_ms},
                                 {"dedupeInflight", q.dedupe_inflight},
                                 {"batchWindowMs", q.batch_window_ms},
                                 {"affinityLookahead", q.affinity_lookahead},
                                 {"shortJobMaxTokens", q.short_job_max_tokens},
                                 {"queueTimeoutMs", opt(q.queue_timeout_ms)},
                                 {"firstTokenTimeoutMs", opt(q.first_token_timeout_ms)},
                                 {"idleTokenTimeoutMs", q.idle_token_timeout_ms},
                                 {"starvationMs", q.starvation_ms}}},
      {"cache", json::object{{"enabled", c.cache.enabled},
                             {"maxEntries", c.cache.max_entries},
                             {"maxBytes", c.cache.max_bytes},
                             {"ttlMs", c.cache.ttl_ms},
                             {"keyStrategy", cache_key_strategy_name(c.cache.key_strategy)},
                             {"scope", cache_scope_name(c.cache.scope)}}},
      {"gracefulDegradation",
       json::object{{"enabled", g.enabled},
                    {"queueDepthThreshold", g.queue_depth_threshold},
                    {"maxPromptChars", g.max_prompt_chars},
                    {"degradeToMaxTokens", g.degrade_to_max_tokens},
                    {"memoryRssThresholdMiB", g.memory_rss_threshold_mib},
                    {"memoryCgroupPressureRatioThreshold", num(g.memory_cgroup_pressure_ratio_threshold)},
                    {"cpuThrottledRatioThreshold", num(g.cpu_throttled_ratio_threshold)},
                    {"memoryPsiSomeAvg10Threshold", num(g.memory_psi_some_avg10_threshold)},
                    {"memoryPsiFullAvg10Threshold", num(g.memory_psi_full_avg10_threshold)},
                    {"cpuPsiSomeAvg10Threshold", num(g.cpu_psi_some_avg10_threshold)},
                    {"cpuPsiFullAvg10Threshold", num(g.cpu_psi_full_avg10_threshold)},
                    {"shedAtMemoryPsiFullAvg10", num(g.shed_at_memory_psi_full_avg10)},
                    {"watchCgroups", strings(g.watch_cgroups)}}},
      {"promptCompiler",
       json::object{{"enabled", c.prompt_compiler.enabled},
                    {"collapseWhitespace", c.prompt_compiler.collapse_whitespace},
                    {"dedupeRepeatedLines", c.prompt_compiler.dedupe_repeated_lines},
                    {"familyMetadataKeys", strings(c.prompt_compiler.family_metadata_keys)}}},
      {"prompts", json::object{{"templates", templates_json(c.templates)}}},
      {"asyncQueue", json::object{{"enabled", aq.enabled},
                                  {"store", job_store_kind_name(aq.store)},
                                  {"storageDir", aq.storage_dir},
                                  {"maxJobs", aq.max_jobs},
                                  {"minFreeStorageMiB", aq.min_free_storage_mib},
                                  {"completedTtlMs", aq.completed_ttl_ms},
                                  {"pollIntervalMs", aq.poll_interval_ms},
                                  {"dispatchConcurrency", aq.dispatch_concurrency},
                                  {"maxAttempts", aq.max_attempts},
                                  {"callbackTimeoutMs", aq.callback_timeout_ms},
                                  {"maxCallbackAttempts", aq.max_callback_attempts},
                                  {"callbackAllowedHosts", strings(aq.callback_allowed_hosts)},
                                  {"callbackAllowPrivateNetwork", aq.callback_allow_private_network},
                                  {"callbackSecretEnv", opt(aq.callback_secret_env)},
                                  {"postgresUrlEnv", opt(aq.postgres_url_env)},
                                  {"leaseMs", aq.lease_ms}}},
      {"telemetry", json::object{{"serviceName", c.telemetry.service_name},
                                 {"logLevel", log_level_name(c.telemetry.level)},
                                 {"slowRequestThresholdMs", c.telemetry.slow_request_threshold_ms}}},
      {"auth", json::object{{"enabled", c.auth.enabled},
                            {"apiKeyEnv", c.auth.api_key_env},
                            {"apiKeySha256", strings(c.auth.api_key_sha256)}}},
      {"rateLimit", json::object{{"enabled", c.rate_limit.enabled},
                                 {"windowMs", c.rate_limit.window_ms},
                                 {"maxRequests", c.rate_limit.max_requests},
                                 {"maxKeys", c.rate_limit.max_keys},
                                 {"keyStrategy", rate_limit_key_name(c.rate_limit.key_strategy)},
                                 {"trustProxyHeaders", c.rate_limit.trust_proxy_headers},
                                 {"trustedProxies", strings(c.rate_limit.trusted_proxies)}}},
      {"tags", string_map(c.tags)},
  };
  // The models right after `openai`, where `model` always stood.
  json::object out;
  out.reserve(o.size() + 2);
  for (auto& kv : o) {
    out.emplace(kv.key(), std::move(kv.value()));
    if (kv.key() == "openai") put_models(out, c);
  }
  out.emplace("residency", json::object{{"memoryBudgetMiB", opt(c.residency.memory_budget_mib)},
                                        {"reserveMiB", c.residency.reserve_mib},
                                        {"countAttachedMiB", opt(c.residency.count_attached_mib)}});
  return out;
}

bool is_secret_flag(std::string_view flag) {
  std::string lower;
  for (char ch : flag)
    lower += static_cast<char>(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
  for (std::string_view word : {"key", "token", "secret", "password", "passwd"})
    if (lower.find(word) != std::string::npos) return true;
  return lower == "-hft";
}

std::vector<std::string> secret_arg_values(std::span<std::string const> args) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view arg = args[i];
    if (!arg.starts_with("-")) continue;
    if (auto eq = arg.find('='); eq != std::string_view::npos) {
      if (is_secret_flag(arg.substr(0, eq)) && eq + 1 < arg.size()) out.emplace_back(arg.substr(eq + 1));
    } else if (is_secret_flag(arg) && i + 1 < args.size()) {
      out.push_back(args[++i]);  // whatever it looks like: llama-server takes the next argument as the value
    }
  }
  return out;
}

namespace {

// launchProfile.extraArgs with the value of every secret-bearing flag ("--api-key X", "--api-key=X")
// redacted.
void redact_extra_args(json::array& args) {
  bool redact_next = false;
  for (auto& v : args) {
    if (!v.is_string()) continue;
    std::string_view arg = v.as_string();
    if (redact_next) {
      // The value of a secret flag, whatever it looks like ("-abc" too): llama-server takes the next
      // argument.
      redact_next = false;
      v = "[redacted]";
      continue;
    }
    if (!arg.starts_with("-")) continue;
    auto eq = arg.find('=');
    if (eq != std::string_view::npos) {
      if (is_secret_flag(arg.substr(0, eq))) v = std::string(arg.substr(0, eq + 1)) + "[redacted]";
    } else if (is_secret_flag(arg)) {
      redact_next = true;
    }
  }
}
}  // namespace

boost::json::object to_public_json(loaded_config const& loaded) {
  auto o = to_json(loaded.cfg);
  auto redact_model = [](json::object& model) {
    auto& adapter = model["adapter"].as_object();
    for (auto& [name, value] : adapter["headers"].as_object())
      value = "[redacted]";
    if (auto* lp = adapter.if_contains("launchProfile"); lp && lp->is_object())
      if (auto* extra = lp->as_object().if_contains("extraArgs"); extra && extra->is_array())
        redact_extra_args(extra->as_array());
  };
  if (auto* m = o.if_contains("model")) redact_model(m->as_object());
  if (auto* list = o.if_contains("models"))
    for (auto& m : list->as_array())
      redact_model(m.as_object());
  for (auto& digest : o["auth"].as_object()["apiKeySha256"].as_array())
    digest = "[redacted]";
  json::object sources;
  for (auto const& [path, source] : loaded.sources)
    sources[path] = source;
  o["_sources"] = std::move(sources);
  return o;
}

std::string explain(loaded_config const& loaded) {
  auto view = json::value(to_public_json(loaded));
  view.as_object().erase("_sources");
  std::vector<std::pair<std::string, json::value const*>> leaves;
  detail::flatten(view, "", leaves);
  std::string out;
  for (auto const& [path, v] : leaves) {
    auto it = loaded.sources.find(path);
    auto source = it != loaded.sources.end() ? it->second : "profile:" + loaded.cfg.profile;
    out += path + " = " + leaf_text(*v) + "  (" + source + ")\n";
  }
  return out;
}

}  // namespace ray::config
