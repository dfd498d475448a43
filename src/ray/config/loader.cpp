// The loader: profile defaults < JSON file < RAY_* environment < flags, then derived values, the
// maxInflightTokens cap and validation. Every layer goes through the same decoder, so an environment variable
// or a flag is checked exactly like the file key it overrides.
#include "ray/config/detail.hpp"

#include <boost/json/parser.hpp>
#include <boost/json/stream_parser.hpp>
#include <boost/url/parse.hpp>

#include <charconv>
#include <filesystem>
#include <fstream>

extern char** environ;

namespace ray::config {

namespace {

namespace json = boost::json;
using detail::decoder;
using detail::field_error;

constexpr std::size_t max_file_bytes = 256 * 1024;

enum class env_kind { integer, number, boolean, string, list };

struct env_var {
  std::string_view name;
  std::string_view path;  // JSON path it overrides
  env_kind kind;
  bool launch{false};  // applies only to llama.cpp with a launchProfile
};

using enum env_kind;

// Order matters where two variables set one field: the later one wins (RAY_MODEL_BASE_URL over its alias).
constexpr env_var env_vars[] = {
    {"RAY_HOST", "server.host", string},
    {"RAY_PORT", "server.port", integer},
    {"RAY_SERVER_DRAIN_MS", "server.drainMs", integer},
    {"RAY_REQUEST_BODY_LIMIT_BYTES", "server.requestBodyLimitBytes", integer},
    {"RAY_LOG_LEVEL", "telemetry.logLevel", string},
    {"RAY_MODEL_ID", "model.id", string},
    {"RAY_MODEL_FAMILY", "model.family", string},
    {"RAY_MODEL_QUANTIZATION", "model.quantization", string},
    {"RAY_MODEL_WARM_ON_BOOT", "model.warmOnBoot", boolean},
    {"RAY_MODEL_CONTEXT_WINDOW", "model.contextWindow", integer},
    {"RAY_MODEL_MAX_OUTPUT_TOKENS", "model.maxOutputTokens", integer},
    {"RAY_LLAMA_CPP_BASE_URL", "model.adapter.baseUrl", string},
    {"RAY_MODEL_BASE_URL", "model.adapter.baseUrl", string},
    {"RAY_MODEL_REF", "model.adapter.modelRef", string},
    {"RAY_MODEL_API_KEY_ENV", "model.adapter.apiKeyEnv", string},
    {"RAY_MODEL_TIMEOUT_MS", "model.adapter.timeoutMs", integer},
    {"RAY_MODEL_PATH", "model.adapter.launchProfile.modelPath", string, true},
    {"RAY_LLAMA_CPP_BINARY_PATH", "model.adapter.launchProfile.binaryPath", string, true},
    {"RAY_LLAMA_CPP_ALIAS", "model.adapter.launchProfile.alias", string, true},
    {"RAY_LLAMA_CPP_HOST", "model.adapter.launchProfile.host", string, true},
    {"RAY_LLAMA_CPP_PORT", "model.adapter.launchProfile.port", integer, true},
    {"RAY_LLAMA_CPP_CTX_SIZE", "model.adapter.launchProfile.ctxSize", integer, true},
    {"RAY_LLAMA_CPP_PARALLEL", "model.adapter.launchProfile.parallel", integer, true},
    {"RAY_LLAMA_CPP_THREADS", "model.adapter.launchProfile.threads", integer, true},
    {"RAY_LLAMA_CPP_THREADS_BATCH", "model.adapter.launchProfile.threadsBatch", integer, true},
    {"RAY_LLAMA_CPP_THREADS_HTTP", "model.adapter.launchProfile.threadsHttp", integer, true},
    {"RAY_LLAMA_CPP_BATCH_SIZE", "model.adapter.launchProfile.batchSize", integer, true},
    {"RAY_LLAMA_CPP_UBATCH_SIZE", "model.adapter.launchProfile.ubatchSize", integer, true},
    {"RAY_LLAMA_CPP_CACHE_REUSE", "model.adapter.launchProfile.cacheReuse", integer, true},
    {"RAY_LLAMA_CPP_CACHE_RAM_MIB", "model.adapter.launchProfile.cacheRamMiB", integer, true},
    {"RAY_LLAMA_CPP_CACHE_PROMPT", "model.adapter.launchProfile.cachePrompt", boolean, true},
    {"RAY_LLAMA_CPP_CONTINUOUS_BATCHING", "model.adapter.launchProfile.continuousBatching", boolean, true},
    {"RAY_LLAMA_CPP_ENABLE_METRICS", "model.adapter.launchProfile.enableMetrics", boolean, true},
    {"RAY_LLAMA_CPP_EXPOSE_SLOTS", "model.adapter.launchProfile.exposeSlots", boolean, true},
    {"RAY_LLAMA_CPP_WARMUP", "model.adapter.launchProfile.warmup", boolean, true},
    {"RAY_LLAMA_CPP_ENABLE_UNIFIED_KV", "model.adapter.launchProfile.enableUnifiedKv", boolean, true},
    {"RAY_LLAMA_CPP_CACHE_IDLE_SLOTS", "model.adapter.launchProfile.cacheIdleSlots", boolean, true},
    {"RAY_LLAMA_CPP_CONTEXT_SHIFT", "model.adapter.launchProfile.contextShift", boolean, true},
    {"RAY_SCHEDULER_CONCURRENCY", "scheduler.concurrency", integer},
    {"RAY_SCHEDULER_MAX_QUEUE", "scheduler.maxQueue", integer},
    {"RAY_SCHEDULER_MAX_QUEUED_TOKENS", "scheduler.maxQueuedTokens", integer},
    {"RAY_SCHEDULER_MAX_INFLIGHT_TOKENS", "scheduler.maxInflightTokens", integer},
    {"RAY_SCHEDULER_REQUEST_TIMEOUT_MS", "scheduler.requestTimeoutMs", integer},
    {"RAY_SCHEDULER_DEDUPE_INFLIGHT", "scheduler.dedupeInflight", boolean},
    {"RAY_SCHEDULER_BATCH_WINDOW_MS", "scheduler.batchWindowMs", integer},
    {"RAY_SCHEDULER_AFFINITY_LOOKAHEAD", "scheduler.affinityLookahead", integer},
    {"RAY_SCHEDULER_SHORT_JOB_MAX_TOKENS", "scheduler.shortJobMaxTokens", integer},
    {"RAY_CACHE_ENABLED", "cache.enabled", boolean},
    {"RAY_CACHE_MAX_ENTRIES", "cache.maxEntries", integer},
    {"RAY_CACHE_MAX_BYTES", "cache.maxBytes", integer},
    {"RAY_CACHE_TTL_MS", "cache.ttlMs", integer},
    {"RAY_CACHE_KEY_STRATEGY", "cache.keyStrategy", string},
    {"RAY_GRACEFUL_DEGRADATION_ENABLED", "gracefulDegradation.enabled", boolean},
    {"RAY_DEGRADATION_QUEUE_DEPTH_THRESHOLD", "gracefulDegradation.queueDepthThreshold", integer},
    {"RAY_DEGRADATION_MAX_PROMPT_CHARS", "gracefulDegradation.maxPromptChars", integer},
    {"RAY_DEGRADATION_MAX_TOKENS", "gracefulDegradation.degradeToMaxTokens", integer},
    {"RAY_DEGRADATION_MEMORY_RSS_THRESHOLD_MIB", "gracefulDegradation.memoryRssThresholdMiB", integer},
    {"RAY_DEGRADATION_MEMORY_CGROUP_PRESSURE_RATIO_THRESHOLD",
     "gracefulDegradation.memoryCgroupPressureRatioThreshold", number},
    {"RAY_DEGRADATION_CPU_THROTTLED_RATIO_THRESHOLD", "gracefulDegradation.cpuThrottledRatioThreshold",
     number},
    {"RAY_DEGRADATION_MEMORY_PSI_SOME_AVG10_THRESHOLD", "gracefulDegradation.memoryPsiSomeAvg10Threshold",
     number},
    {"RAY_DEGRADATION_MEMORY_PSI_FULL_AVG10_THRESHOLD", "gracefulDegradation.memoryPsiFullAvg10Threshold",
     number},
    {"RAY_DEGRADATION_CPU_PSI_SOME_AVG10_THRESHOLD", "gracefulDegradation.cpuPsiSomeAvg10Threshold", number},
    {"RAY_DEGRADATION_CPU_PSI_FULL_AVG10_THRESHOLD", "gracefulDegradation.cpuPsiFullAvg10Threshold", number},
    {"RAY_PROMPT_COMPILER_ENABLED", "promptCompiler.enabled", boolean},
    {"RAY_PROMPT_COMPILER_COLLAPSE_WHITESPACE", "promptCompiler.collapseWhitespace", boolean},
    {"RAY_PROMPT_COMPILER_DEDUPE_REPEATED_LINES", "promptCompiler.dedupeRepeatedLines", boolean},
    {"RAY_PROMPT_COMPILER_FAMILY_METADATA_KEYS", "promptCompiler.familyMetadataKeys", list},
    {"RAY_ASYNC_QUEUE_ENABLED", "asyncQueue.enabled", boolean},
    {"RAY_ASYNC_QUEUE_STORE", "asyncQueue.store", string},
    {"RAY_ASYNC_QUEUE_STORAGE_DIR", "asyncQueue.storageDir", string},
    {"RAY_ASYNC_QUEUE_MAX_JOBS", "asyncQueue.maxJobs", integer},
    {"RAY_ASYNC_QUEUE_MIN_FREE_STORAGE_MIB", "asyncQueue.minFreeStorageMiB", integer},
    {"RAY_ASYNC_QUEUE_COMPLETED_TTL_MS", "asyncQueue.completedTtlMs", integer},
    {"RAY_ASYNC_QUEUE_POLL_INTERVAL_MS", "asyncQueue.pollIntervalMs", integer},
    {"RAY_ASYNC_QUEUE_DISPATCH_CONCURRENCY", "asyncQueue.dispatchConcurrency", integer},
    {"RAY_ASYNC_QUEUE_MAX_ATTEMPTS", "asyncQueue.maxAttempts", integer},
    {"RAY_ASYNC_QUEUE_CALLBACK_TIMEOUT_MS", "asyncQueue.callbackTimeoutMs", integer},
    {"RAY_ASYNC_QUEUE_MAX_CALLBACK_ATTEMPTS", "asyncQueue.maxCallbackAttempts", integer},
    {"RAY_ASYNC_QUEUE_CALLBACK_ALLOWED_HOSTS", "asyncQueue.callbackAllowedHosts", list},
    {"RAY_ASYNC_QUEUE_CALLBACK_ALLOW_PRIVATE_NETWORK", "asyncQueue.callbackAllowPrivateNetwork", boolean},
    {"RAY_ASYNC_QUEUE_POSTGRES_URL_ENV", "asyncQueue.postgresUrlEnv", string},
    {"RAY_ASYNC_QUEUE_LEASE_MS", "asyncQueue.leaseMs", integer},
    {"RAY_AUTH_ENABLED", "auth.enabled", boolean},
    {"RAY_AUTH_API_KEY_ENV", "auth.apiKeyEnv", string},
    {"RAY_RATE_LIMIT_ENABLED", "rateLimit.enabled", boolean},
    {"RAY_RATE_LIMIT_WINDOW_MS", "rateLimit.windowMs", integer},
    {"RAY_RATE_LIMIT_MAX_REQUESTS", "rateLimit.maxRequests", integer},
    {"RAY_RATE_LIMIT_MAX_KEYS", "rateLimit.maxKeys", integer},
    {"RAY_RATE_LIMIT_KEY_STRATEGY", "rateLimit.keyStrategy", string},
    {"RAY_RATE_LIMIT_TRUST_PROXY_HEADERS", "rateLimit.trustProxyHeaders", boolean},
    {"RAY_RATE_LIMIT_TRUSTED_PROXIES", "rateLimit.trustedProxies", list},
};

// Known names that set no field: the profile choice and the default API-key variable (a secret read by
// the auth code).
constexpr std::string_view env_names_without_field[] = {"RAY_PROFILE", "RAY_API_KEYS"};

std::optional<bool> parse_bool(std::string_view s) {
  for (auto t : {"1", "true", "yes", "on"})
    if (iequals(s, t)) return true;
  for (auto f : {"0", "false", "no", "off"})
    if (iequals(s, f)) return false;
  return std::nullopt;
}

// {"a":{"b":v}} from "a.b".
json::value nest(std::string_view path, json::value v) {
  auto dot = path.rfind('.');
  while (true) {
    json::object o;
    o[path.substr(dot == std::string_view::npos ? 0 : dot + 1)] = std::move(v);
    v = std::move(o);
    if (dot == std::string_view::npos) return v;
    path = path.substr(0, dot);
    dot = path.rfind('.');
  }
}

std::optional<error> apply(config& cfg, source_map& sources, std::string source, json::value const& doc) {
  decoder d(sources, std::move(source));
  d.root(doc, cfg);
  return d.failure();
}

// One environment variable through the decoder, as the JSON value its text denotes.
std::optional<error> apply_env(config& cfg, source_map& sources, env_var const& ev, std::string_view text) {
  std::string source = "env:" + std::string(ev.name);
  json::value v;
  switch (ev.kind) {
    case env_kind::integer: {
      std::int64_t i{};
      auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), i);
      if (ec == std::errc() && p == text.data() + text.size()) {
        v = i;
      } else {
        std::uint64_t u{};
        auto [pu, ecu] = std::from_chars(text.data(), text.data() + text.size(), u);
        if (ecu == std::errc() && pu == text.data() + text.size())
          v = u;
        else
          v = json::string(text);  // the decoder reports "expected an integer, got ..."
      }
      break;
    }
    case env_kind::number: {
      double d{};
      auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), d);
      if (ec == std::errc() && p == text.data() + text.size())
        v = d;
      else
        v = json::string(text);
      break;
    }
    case env_kind::boolean: {
      auto b = parse_bool(text);
      if (!b)
        return field_error(
            std::string(ev.path),
            "expected a boolean (1/true/yes/on or 0/false/no/off), got " + detail::show(json::string(text)),
            source);
      v = *b;
      break;
    }
    case env_kind::string:
      v = json::string(text);
      break;
    case env_kind::list: {
      json::array a;
      std::string_view rest = text;
      while (!rest.empty()) {
        auto comma = rest.find(',');
        auto item = trim(rest.substr(0, comma));
        if (!item.empty()) a.emplace_back(json::string(item));
        rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
      }
      v = std::move(a);
      break;
    }
  }
  return apply(cfg, sources, std::move(source), nest(ev.path, std::move(v)));
}

// The value of a variable, or nullopt when absent or blank (blank means unset).
std::optional<std::string_view> env_value(env_map const& env, std::string_view name) {
  auto it = env.find(std::string(name));
  if (it == env.end()) return std::nullopt;
  auto t = trim(it->second);
  if (t.empty()) return std::nullopt;
  return t;
}

bool set_by_flag(source_map const& sources, std::string const& path) {
  auto it = sources.find(path);
  return it != sources.end() && it->second.starts_with("flag:");
}

std::string host_port(std::string const& host, std::uint32_t port) {
  bool v6 = host.find(':') != std::string::npos && !host.starts_with("[");
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// `url` with its authority replaced by host:port (scheme and path kept; http when `url` does not parse).
std::string with_authority(std::string const& url, std::string const& host, std::uint32_t port) {
  std::string scheme = "http";
  std::string path;
  if (auto r = boost::urls::parse_uri(url)) {
    scheme = std::string(r->scheme());
    path = std::string(r->encoded_path());
    if (path == "/") path.clear();
  }
  return scheme + "://" + host_port(host, port) + path;
}

struct document {
  json::value root;
  bool present{false};
};

result<document> parse_document(std::string_view text, std::string const& label) {
  auto fail = [&](std::string msg) {
    error e{errc::invalid_request, "config file " + label + ": " + msg};
    return e;
  };
  if (text.size() > max_file_bytes)
    return fail(std::to_string(text.size()) + " bytes is above the limit of " +
                std::to_string(max_file_bytes) + " bytes (256 KiB)");
  json::stream_parser p;
  boost::system::error_code ec;
  std::size_t n = p.write(text.data(), text.size(), ec);
  if (!ec) p.finish(ec);
  if (ec) {
    if (ec == json::error::incomplete || ec == json::error::extra_data) n = std::min(n, text.size());
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i < n && i < text.size(); ++i) {
      if (text[i] == '\n')
        ++line, col = 1;
      else
        ++col;
    }
    return fail("invalid JSON at line " + std::to_string(line) + ", column " + std::to_string(col) + ": " +
                ec.message());
  }
  document d{p.release(), true};
  if (!d.root.is_object())
    return fail("expected a JSON object at the top level, got " + detail::show(d.root));
  return d;
}

// Chooses the profile: --profile, else the file's "profile", else RAY_PROFILE, else tiny (no file) / sub1b.
result<std::pair<std::string, std::string>> choose_profile(document const& doc, env_map const& env,
                                                           flag_overrides const& flags) {
  auto check = [](std::string name, std::string source) -> result<std::pair<std::string, std::string>> {
    if (auto r = profile_defaults(name); !r) {
      std::vector<std::string_view> names(std::begin(profile_names), std::end(profile_names));
      auto suggestion = detail::closest(name, names);
      auto msg = r.error().message.substr(std::string_view("profile: ").size());
      if (!suggestion.empty()) msg += ", did you mean \"" + suggestion + "\"?";
      return field_error("profile", msg, source);
    }
    return std::pair{std::move(name), std::move(source)};
  };
  if (flags.profile) return check(*flags.profile, "flag:--profile");
  if (doc.present) {
    if (auto const* p = doc.root.get_object().if_contains("profile")) {
      if (!p->is_string())
        return field_error("profile", "expected a string, got " + detail::show(*p), "file");
      return check(std::string(p->get_string()), "file");
    }
  }
  if (auto p = env_value(env, "RAY_PROFILE")) return check(std::string(*p), "env:RAY_PROFILE");
  std::string name = doc.present ? "sub1b" : "tiny";
  return std::pair{name, "profile:" + name};
}

result<loaded_config> load_document(document const& doc, env_map const& env, flag_overrides const& flags) {
  auto choice = choose_profile(doc, env, flags);
  if (!choice) return choice.error();
  auto base = profile_defaults(choice->first);
  if (!base) return base.error();

  loaded_config out;
  config& cfg = out.cfg;
  cfg = std::move(*base);
  source_map sources;
  sources["profile"] = choice->second;
  std::vector<std::string> ignored;

  // 1. The file.
  if (doc.present) {
    decoder d(sources, "file");
    d.root(doc.root, cfg);
    if (d.failure()) return *d.failure();
    ignored = d.ignored();
  }

  // 2. The environment, except launch-profile variables: they wait for the flags, which may create the
  // launch profile.
  for (auto const& ev : env_vars) {
    if (ev.launch) continue;
    if (auto text = env_value(env, ev.name))
      if (auto e = apply_env(cfg, sources, ev, *text)) return *e;
  }

  // 3. Flags.
  if (flags.host)
    if (auto e = apply(cfg, sources, "flag:--host", nest("server.host", json::string(*flags.host))))
      return *e;
  if (flags.port)
    if (auto e = apply(cfg, sources, "flag:--port", nest("server.port", *flags.port))) return *e;
  if (flags.backend_url) {
    json::object adapter{{"kind", "llama.cpp"}, {"baseUrl", *flags.backend_url}};
    if (auto e = apply(cfg, sources, "flag:--backend-url", nest("model.adapter", std::move(adapter))))
      return *e;
    // Attaching wins over the file's launch profile: it keeps describing the server's ctx/slots (budgets),
    // but now at the attached address; a non-loopback server is not one Ray could have launched, so it is
    // dropped.
    auto& a = cfg.model.adapter;
    if (a.launch && !flags.model_path) {
      auto r = boost::urls::parse_uri(a.base_url);
      if (r && is_loopback_host(r->host_address())) {
        a.launch->host = std::string(r->host_address());
        a.launch->port = r->has_port() ? r->port_number() : 80;
        sources["model.adapter.launchProfile.host"] = "flag:--backend-url";
        sources["model.adapter.launchProfile.port"] = "flag:--backend-url";
      } else {
        a.launch.reset();
        sources["model.adapter.launchProfile"] = "flag:--backend-url";
      }
    }
  }
  if (flags.model_path) {
    std::string const src = "flag:--model-path";
    if (auto e = apply(cfg, sources, src, nest("model.adapter.kind", "llama.cpp"))) return *e;
    auto& a = cfg.model.adapter;
    if (!a.launch) {
      a.launch.emplace();
      sources["model.adapter.launchProfile"] = src;
      // Supervise where the backend URL says llama-server listens, when that is a loopback address.
      if (auto r = boost::urls::parse_uri(a.base_url);
          r && is_loopback_host(r->host_address()) && r->has_port()) {
        a.launch->host = std::string(r->host_address());
        a.launch->port = r->port_number();
      }
    }
    json::object lp{{"modelPath", *flags.model_path}, {"supervise", true}};
    if (auto e = apply(cfg, sources, src, nest("model.adapter.launchProfile", std::move(lp)))) return *e;
  }
  if (flags.llama_server) {
    if (!cfg.model.adapter.launch)
      return field_error("model.adapter.launchProfile.binaryPath",
                         "there is no launch profile to apply it to (add --model-path, or configure "
                         "model.adapter.launchProfile)",
                         "flag:--llama-server");
    if (auto e = apply(cfg, sources, "flag:--llama-server",
                       nest("model.adapter.launchProfile.binaryPath", json::string(*flags.llama_server))))
      return *e;
  }
  if (flags.allow_unauthenticated_public)
    if (auto e = apply(cfg, sources, "flag:--allow-unauthenticated-public",
                       nest("server.allowUnauthenticatedPublic", true)))
      return *e;

  // 4. Launch-profile variables: only for llama.cpp with a launch profile; a flag for the same field wins.
  bool const launchable = cfg.model.adapter.kind == adapter_kind::llama_cpp && cfg.model.adapter.launch;
  std::vector<std::string> unused_launch_vars;
  std::string moved_by;
  for (auto const& ev : env_vars) {
    if (!ev.launch) continue;
    auto text = env_value(env, ev.name);
    if (!text) continue;
    if (!launchable) {
      unused_launch_vars.emplace_back(ev.name);
      continue;
    }
    if (set_by_flag(sources, std::string(ev.path))) continue;
    if (auto e = apply_env(cfg, sources, ev, *text)) return *e;
    if (ev.name == "RAY_LLAMA_CPP_HOST" || ev.name == "RAY_LLAMA_CPP_PORT")
      moved_by = "env:" + std::string(ev.name);
  }
  // RAY_LLAMA_CPP_HOST/_PORT move the backend URL with them unless a base-URL variable or flag names it.
  if (!moved_by.empty() && !env_value(env, "RAY_MODEL_BASE_URL") &&
      !env_value(env, "RAY_LLAMA_CPP_BASE_URL") && !set_by_flag(sources, "model.adapter.baseUrl")) {
    auto& a = cfg.model.adapter;
    a.base_url = with_authority(a.base_url, a.launch->host, a.launch->port);
    sources["model.adapter.baseUrl"] = moved_by;
  }

  // 5. Derived values, unless a layer set them: the GGUF path and alias follow modelRef, the llama.cpp
  // backend URL follows the launch profile's host:port.
  auto derive = [&sources](model_config& m, std::string const& path) {
    auto& a = m.adapter;
    if (!a.launch) return;
    std::string const& ref = a.model_ref.empty() ? m.id : a.model_ref;
    if (!sources.contains(path + ".adapter.launchProfile.modelPath"))
      a.launch->model_path = "/var/lib/ray/models/" + ref + ".gguf";
    if (!sources.contains(path + ".adapter.launchProfile.alias")) a.launch->alias = ref;
    if (a.kind == adapter_kind::llama_cpp && !sources.contains(path + ".adapter.baseUrl"))
      a.base_url = with_authority(a.base_url, a.launch->host, a.launch->port);
  };
  derive(cfg.model, "model");
  for (std::size_t i = 0; i < cfg.more_models.size(); ++i)
    derive(cfg.more_models[i], "models[" + std::to_string(i + 1) + "]");
  for (auto& digest : cfg.auth.api_key_sha256)
    for (auto& ch : digest)
      ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));

  // 6. Warnings that do not stop the start.
  if (!ignored.empty()) {
    std::string list;
    json::array keys;
    for (auto const& k : ignored) {
      list += (list.empty() ? "" : ", ") + k;
      keys.emplace_back(json::string(k));
    }
    out.warnings.push_back({"ignoring config keys of the TypeScript gateway that Ray does not use: " + list,
                            json::object{{"keys", std::move(keys)}}});
  }
  {
    std::vector<std::string_view> known;
    for (auto const& ev : env_vars)
      known.push_back(ev.name);
    for (auto n : env_names_without_field)
      known.push_back(n);
    auto referenced = referenced_env_names(cfg);
    std::string list;
    json::array names;
    for (auto const& [name, value] : env) {
      if (!name.starts_with("RAY_")) continue;
      if (std::find(known.begin(), known.end(), name) != known.end()) continue;
      if (std::find(referenced.begin(), referenced.end(), name) != referenced.end()) continue;
      auto suggestion = detail::closest(name, known);
      list += (list.empty() ? "" : ", ") + name +
              (suggestion.empty() ? "" : " (did you mean " + suggestion + "?)");
      names.emplace_back(json::string(name));
    }
    if (!names.empty())
      out.warnings.push_back({"ignoring unknown RAY_* environment variables: " + list,
                              json::object{{"variables", std::move(names)}}});
  }
  if (!unused_launch_vars.empty()) {
    std::string list;
    json::array names;
    for (auto const& n : unused_launch_vars) {
      list += (list.empty() ? "" : ", ") + n;
      names.emplace_back(json::string(n));
    }
    out.warnings.push_back(
        {"ignoring launch-profile environment variables (the adapter is not llama.cpp with a "
         "launchProfile): " +
             list,
         json::object{{"variables", std::move(names)}}});
  }

  // 7. In-flight tokens never exceed the KV pool (-c); TypeScript-era files allow ctxSize x parallel.
  if (auto const& a = cfg.model.adapter; a.kind == adapter_kind::llama_cpp && a.launch) {
    auto& s = cfg.scheduler;
    if (a.launch->ctx_size > 0 && s.max_inflight_tokens > a.launch->ctx_size) {
      auto configured = s.max_inflight_tokens;
      s.max_inflight_tokens = a.launch->ctx_size;
      auto src = detail::find_source(sources, "scheduler.maxInflightTokens");
      if (src.empty()) src = "profile:" + cfg.profile;
      out.warnings.push_back(
          {"scheduler.maxInflightTokens " + std::to_string(configured) +
               " is above model.adapter.launchProfile.ctxSize " + std::to_string(a.launch->ctx_size) +
               " (the whole KV pool of llama-server); capped to " + std::to_string(a.launch->ctx_size),
           json::object{{"field", "scheduler.maxInflightTokens"},
                        {"configured", configured},
                        {"ctxSize", a.launch->ctx_size},
                        {"applied", a.launch->ctx_size},
                        {"source", src}}});
    }
  }

  // 8. Every rule, on the final config.
  if (auto r = detail::validate_with(cfg, &sources); !r) return r.error();

  // 9. One source per effective leaf (fields a layer created without naming take that layer's source).
  auto j = json::value(to_json(cfg));
  std::vector<std::pair<std::string, json::value const*>> leaves;
  detail::flatten(j, "", leaves);
  for (auto const& [path, v] : leaves) {
    // The effective config is shown as JSON (`ray config show`, /v1/config): a value that is not UTF-8 (a
    // path given by flag or environment) could not be, so it is refused here, naming the key.
    bool utf8 = !v->is_string() || is_valid_utf8(v->get_string());
    if (v->is_array())
      for (auto const& e : v->get_array())
        utf8 = utf8 && (!e.is_string() || is_valid_utf8(e.get_string()));
    if (!utf8) {
      ray::error err{errc::invalid_request,
                     path + ": is not valid UTF-8 (configuration values are shown as JSON)"};
      err.param = path;
      return err;
    }
    auto s = detail::find_source(sources, path);
    out.sources[path] = s.empty() ? "profile:" + cfg.profile : s;
  }
  return out;
}

}  // namespace

env_map process_environment() {
  return process_environment({});
}

env_map process_environment(std::vector<std::string> const& extra_names) {
  env_map out;
  for (char** e = environ; e && *e; ++e) {
    std::string_view entry(*e);
    auto eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    auto name = entry.substr(0, eq);
    bool wanted = name.starts_with("RAY_") ||
                  std::find(extra_names.begin(), extra_names.end(), name) != extra_names.end();
    if (wanted) out.emplace(std::string(name), std::string(entry.substr(eq + 1)));
  }
  return out;
}

std::vector<std::string> referenced_env_names(config const& cfg) {
  std::vector<std::string> out;
  if (!cfg.auth.api_key_env.empty()) out.push_back(cfg.auth.api_key_env);
  if (cfg.model.adapter.api_key_env) out.push_back(*cfg.model.adapter.api_key_env);
  if (cfg.async_queue.callback_secret_env) out.push_back(*cfg.async_queue.callback_secret_env);
  if (cfg.async_queue.postgres_url_env) out.push_back(*cfg.async_queue.postgres_url_env);
  return out;
}

result<loaded_config> load(std::string const& file_path, env_map const& env, flag_overrides const& flags) {
  if (file_path.empty()) return load_document({}, env, flags);
  std::string const label = "\"" + file_path + "\"";
  auto fail = [&](std::string msg) {
    return error{errc::invalid_request, "config file " + label + ": " + msg};
  };
  std::error_code ec;
  auto st = std::filesystem::status(file_path, ec);
  if (ec || !std::filesystem::exists(st)) return fail("not found");
  if (!std::filesystem::is_regular_file(st)) return fail("not a regular file");
  auto size = std::filesystem::file_size(file_path, ec);
  if (ec) return fail("cannot read: " + ec.message());
  if (size > max_file_bytes)
    return fail(std::to_string(size) + " bytes is above the limit of " + std::to_string(max_file_bytes) +
                " bytes (256 KiB)");
  std::ifstream in(file_path, std::ios::binary);
  if (!in) return fail("cannot open for reading");
  std::string text(static_cast<std::size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  text.resize(static_cast<std::size_t>(in.gcount()));
  auto doc = parse_document(text, label);
  if (!doc) return doc.error();
  return load_document(*doc, env, flags);
}

result<loaded_config> load_from_text(std::string_view json_text, env_map const& env,
                                     flag_overrides const& flags) {
  auto doc = parse_document(json_text, "(text)");
  if (!doc) return doc.error();
  return load_document(*doc, env, flags);
}

}  // namespace ray::config
