// Range and cross-field rules of config.md, checked on the complete config after every layer is applied.
// Each error is one line: the JSON path, the value, the rule, and (for env and flags) which setting
// supplied the value.
#include "ray/config/detail.hpp"

#include <boost/url/ipv4_address.hpp>
#include <boost/url/ipv6_address.hpp>
#include <boost/url/parse.hpp>

#include <algorithm>
#include <charconv>
#include <map>
#include <set>

namespace ray::config {

std::vector<std::string> template_placeholders(std::string_view text) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while ((pos = text.find("{{", pos)) != std::string_view::npos) {
    auto end = text.find("}}", pos + 2);
    if (end == std::string_view::npos) break;
    out.emplace_back(trim(text.substr(pos + 2, end - pos - 2)));
    pos = end + 2;
  }
  return out;
}

bool is_loopback_host(std::string_view host) noexcept {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (iequals(host, "localhost")) return true;
  if (auto v4 = boost::urls::parse_ipv4_address(host)) return v4->is_loopback();
  if (auto v6 = boost::urls::parse_ipv6_address(host)) return v6->is_loopback();
  return false;
}

result<void> validate(config const& cfg) {
  return detail::validate_with(cfg, nullptr);
}

namespace detail {
namespace {

std::string num(double d) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d);
  return std::string(buf, r.ptr);
}

std::string quote(std::string_view s) {
  return show(json::value(json::string_view(s.data(), s.size())));
}

bool is_env_name(std::string_view s) {
  if (s.empty() || s.size() > 128) return false;
  if (!(std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_')) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

bool is_identifier(std::string_view s) {
  return is_env_name(s);
}

bool is_dns_name(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
  });
}

bool is_host(std::string_view s) {
  if (s.size() >= 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  return boost::urls::parse_ipv4_address(s) || boost::urls::parse_ipv6_address(s) || is_dns_name(s);
}

bool is_wildcard_host(std::string_view s) {
  return s == "0.0.0.0" || s == "::" || s == "[::]";
}

bool has_control(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

bool is_token(std::string_view s) {
  static constexpr std::string_view extra = "!#$%&'*+-.^_`|~";
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || extra.find(c) != std::string_view::npos;
  });
}

struct url_parts {
  std::string scheme, host;
  std::uint32_t port{};
};

// The llama-server flags the launch profile emits, and the field that owns each.
constexpr std::pair<std::string_view, std::string_view> owned_flags[] = {
    {"-m", "modelPath"},
    {"--model", "modelPath"},
    {"--host", "host"},
    {"--port", "port"},
    {"-a", "alias"},
    {"--alias", "alias"},
    {"-c", "ctxSize"},
    {"--ctx-size", "ctxSize"},
    {"-np", "parallel"},
    {"--parallel", "parallel"},
    {"-t", "threads"},
    {"--threads", "threads"},
    {"-tb", "threadsBatch"},
    {"--threads-batch", "threadsBatch"},
    {"--threads-http", "threadsHttp"},
    {"-b", "batchSize"},
    {"--batch-size", "batchSize"},
    {"-ub", "ubatchSize"},
    {"--ubatch-size", "ubatchSize"},
    {"--cache-reuse", "cacheReuse"},
    {"-cram", "cacheRamMiB"},
    {"--cache-ram", "cacheRamMiB"},
    {"--cache-prompt", "cachePrompt"},
    {"--no-cache-prompt", "cachePrompt"},
    {"-cb", "continuousBatching"},
    {"--cont-batching", "continuousBatching"},
    {"-nocb", "continuousBatching"},
    {"--no-cont-batching", "continuousBatching"},
    {"--metrics", "enableMetrics"},
    {"--slots", "exposeSlots"},
    {"--no-slots", "exposeSlots"},
    {"--warmup", "warmup"},
    {"--no-warmup", "warmup"},
    {"-kvu", "enableUnifiedKv"},
    {"--kv-unified", "enableUnifiedKv"},
    {"--no-kv-unified", "enableUnifiedKv"},
    {"--cache-idle-slots", "cacheIdleSlots"},
    {"--no-cache-idle-slots", "cacheIdleSlots"},
    {"--context-shift", "contextShift"},
    {"--no-context-shift", "contextShift"},
};

// Header names Ray never forwards from config: hop-by-hop ones (RFC 9110 §7.6.1) and the framing
// headers Ray sets itself.
constexpr std::string_view forbidden_headers[] = {"connection",
                                                  "keep-alive",
                                                  "proxy-authenticate",
                                                  "proxy-authorization",
                                                  "proxy-connection",
                                                  "te",
                                                  "trailer",
                                                  "transfer-encoding",
                                                  "upgrade",
                                                  "host",
                                                  "content-length"};

class checker {
 public:
  explicit checker(source_map const* sources) : sources_(sources) {}

  std::optional<error> const& failure() const { return err_; }

  void fail(std::string const& path, std::string const& message) {
    if (err_) return;
    // While a model of `models` other than the first is checked (its per-model view has it as `model`),
    // the paths say which one.
    std::string p = path;
    if (!model_path_.empty() && (p == "model" || p.starts_with("model."))) p = model_path_ + p.substr(5);
    err_ = field_error(p, message, sources_ ? find_source(*sources_, p) : std::string());
  }
  void set_model_path(std::string path) { model_path_ = std::move(path); }

  void range(std::string const& path, std::int64_t v, std::int64_t lo, std::int64_t hi) {
    if (v < lo) fail(path, std::to_string(v) + " is below the minimum " + std::to_string(lo));
    if (v > hi) fail(path, std::to_string(v) + " is above the maximum " + std::to_string(hi));
  }

  // (lo, hi]: ratios and PSI percentages.
  void open_closed(std::string const& path, double v, double lo, double hi) {
    if (!(v > lo && v <= hi)) fail(path, num(v) + " is outside (" + num(lo) + ", " + num(hi) + "]");
  }

  void text(std::string const& path, std::string_view s, std::size_t min, std::size_t max) {
    if (s.size() < min)
      return fail(path, min == 1 ? "must not be empty" : "is shorter than " + std::to_string(min));
    if (s.size() > max) fail(path, "is longer than " + std::to_string(max) + " bytes");
    if (has_control(s)) fail(path, quote(s) + " contains control characters");
  }

  void env_name(std::string const& path, std::string_view s) {
    if (!is_env_name(s))
      fail(
          path,
          quote(s) +
              " is not a valid environment variable name (letters, digits and _, not starting with a digit)");
  }

  std::optional<url_parts> url(std::string const& path, std::string_view s) {
    auto r = boost::urls::parse_uri(s);
    if (!r) return fail(path, quote(s) + " is not an absolute URL"), std::nullopt;
    auto scheme = r->scheme_id();
    if (scheme != boost::urls::scheme::http && scheme != boost::urls::scheme::https)
      return fail(path, quote(s) + " must use http or https"), std::nullopt;
    // Not echoed: the userinfo is a credential.
    if (r->has_userinfo())
      return fail(path, "must not contain userinfo (credentials); give the key through apiKeyEnv"),
             std::nullopt;
    if (r->has_query()) return fail(path, quote(s) + " must not contain a query"), std::nullopt;
    if (r->has_fragment()) return fail(path, quote(s) + " must not contain a fragment"), std::nullopt;
    url_parts u;
    u.scheme = std::string(r->scheme());
    u.host = std::string(r->host_address());
    if (u.host.empty()) return fail(path, quote(s) + " has no host"), std::nullopt;
    if (r->has_port()) {
      if (r->port().empty() || r->port_number() == 0)
        return fail(path, quote(s) + " has an invalid port"), std::nullopt;
      u.port = r->port_number();
    } else {
      u.port = scheme == boost::urls::scheme::https ? 443 : 80;
    }
    return u;
  }

 private:
  source_map const* sources_;
  std::optional<error> err_;
  std::string model_path_;
};

void check_server(checker& c, server_config const& s) {
  if (s.host.empty() || !is_host(s.host))
    c.fail("server.host", quote(s.host) + " is not a host name or IP address");
  c.range("server.port", s.port, 0, 65535);
  c.range("server.requestBodyLimitBytes", s.request_body_limit_bytes, 1, 1'048'576);
  c.range("server.threads", s.threads, 1, 16);
  if (s.threads > 1 && s.threads <= 16)
    c.fail(
        "server.threads",
        std::to_string(s.threads) +
            " is not supported: Ray serves from one event-loop thread (the runtime, cache and scheduler are "
            "confined to it; one thread answers tens of thousands of requests per second, far more than a "
            "small box's model generates, and the other cores belong to llama-server); set 1 or remove the "
            "key");
  c.range("server.maxConnections", s.max_connections, 1, 65'535);
  c.range("server.maxConnectionsPerClient", s.max_connections_per_client, 1, 65'535);
  c.range("server.maxHeaderBytes", s.max_header_bytes, 1024, 1'048'576);
  c.range("server.maxHeaders", s.max_headers, 1, 1024);
  c.range("server.maxTargetBytes", s.max_target_bytes, 256, 1'048'576);
  c.range("server.headersTimeoutMs", s.headers_timeout_ms, 1, 600'000);
  c.range("server.headersTimeoutUnderPressureMs", s.headers_timeout_under_pressure_ms, 1, 600'000);
  c.range("server.bodyTimeoutMs", s.body_timeout_ms, 1, 600'000);
  c.range("server.minBodyBytesPerSecond", s.min_body_bytes_per_second, 0, 100u << 20);
  c.range("server.keepAliveTimeoutMs", s.keep_alive_timeout_ms, 1, 3'600'000);
  c.range("server.maxRequestsPerConnection", s.max_requests_per_connection, 1, 1'000'000);
  c.range("server.sseKeepAliveMs", s.sse_keep_alive_ms, 100, 600'000);
  c.range("server.streamBufferBytes", s.stream_buffer_bytes, 4096, 64u << 20);
  c.range("server.shutdownGraceMs", s.shutdown_grace_ms, 0, 600'000);
  c.range("server.drainMs", s.drain_ms, 0, 600'000);
  for (std::size_t i = 0; i < s.cors_allow_origins.size(); ++i) {
    auto const& o = s.cors_allow_origins[i];
    auto p = "server.corsAllowOrigins[" + std::to_string(i) + "]";
    if (o == "*") continue;
    auto u = c.url(p, o);
    if (u && !boost::urls::parse_uri(o)->encoded_path().empty())
      c.fail(p, quote(o) + " must be an origin (scheme://host[:port], no path) or \"*\"");
  }
}

void check_template_text(checker& c, std::string const& path, std::string_view text,
                         std::vector<std::string> const& variables) {
  for (auto const& name : template_placeholders(text)) {
    if (std::find(variables.begin(), variables.end(), name) == variables.end())
      return c.fail(path, "placeholder {{ " + name + " }} is not a declared variable");
  }
}

void check_templates(checker& c, config const& cfg) {
  auto const& builtins = builtin_templates();
  for (auto const& [id, t] : cfg.templates) {
    auto p = join("prompts.templates", id);
    bool id_ok = !id.empty() && id.size() <= 128 && std::all_of(id.begin(), id.end(), [](char ch) {
      return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '_' || ch == '-';
    });
    if (!id_ok) c.fail(p, quote(id) + " is not a valid template id (1-128 of A-Z a-z 0-9 . _ -)");
    if (builtins.contains(id)) c.fail(p, quote(id) + " is a built-in template id; choose another id");
    c.text(p + ".family", t.family, 1, 128);
    if (trim(t.input).empty()) c.fail(p + ".input", "must not be empty");
    std::set<std::string> seen;
    for (std::size_t i = 0; i < t.variables.size(); ++i) {
      auto vp = p + ".variables[" + std::to_string(i) + "]";
      if (!is_identifier(t.variables[i])) c.fail(vp, quote(t.variables[i]) + " is not a valid variable name");
      if (!seen.insert(t.variables[i]).second) c.fail(vp, quote(t.variables[i]) + " is declared twice");
    }
    if (t.system) check_template_text(c, p + ".system", *t.system, t.variables);
    check_template_text(c, p + ".input", t.input, t.variables);
    if (t.default_max_tokens) {
      c.range(p + ".defaultMaxTokens", *t.default_max_tokens, 1, cfg.model.max_output_tokens);
    }
    if (t.response_format && *t.response_format != "text" && *t.response_format != "json_object")
      c.fail(p + ".responseFormat", quote(*t.response_format) + " is not one of \"text\", \"json_object\"");
  }
}

template_config const* find_template(config const& cfg, std::string const& id) {
  if (auto it = builtin_templates().find(id); it != builtin_templates().end()) return &it->second;
  if (auto it = cfg.templates.find(id); it != cfg.templates.end()) return &it->second;
  return nullptr;
}

void check_warmups(checker& c, config const& cfg) {
  auto const& a = cfg.model.adapter;
  if (a.warmup_requests.size() > 8)
    c.fail("model.adapter.warmupRequests",
           std::to_string(a.warmup_requests.size()) + " requests is above the maximum 8");
  for (std::size_t i = 0; i < a.warmup_requests.size(); ++i) {
    auto const& w = a.warmup_requests[i];
    auto p = "model.adapter.warmupRequests[" + std::to_string(i) + "]";
    if (w.template_id) {
      if (w.input || w.system) c.fail(p, "input/system cannot be combined with templateId");
      auto const* t = find_template(cfg, *w.template_id);
      if (!t) {
        c.fail(p + ".templateId", quote(*w.template_id) + " is not a built-in or configured template");
        continue;
      }
      for (auto const& v : t->variables) {
        auto it = w.template_variables.find(v);
        if (it == w.template_variables.end() || trim(it->second).empty())
          c.fail(p + ".templateVariables",
                 "missing variable " + quote(v) + " of template " + quote(*w.template_id));
      }
      for (auto const& [k, v] : w.template_variables)
        if (std::find(t->variables.begin(), t->variables.end(), k) == t->variables.end())
          c.fail(p + ".templateVariables." + k,
                 "template " + quote(*w.template_id) + " declares no variable " + quote(k));
    } else {
      if (!w.template_variables.empty()) c.fail(p + ".templateVariables", "needs a templateId");
      if (!w.input || trim(*w.input).empty())
        c.fail(p + ".input", "a warm-up request needs a non-empty input or a templateId");
    }
    if (w.max_tokens) c.range(p + ".maxTokens", *w.max_tokens, 1, cfg.model.max_output_tokens);
    if (w.temperature && !(*w.temperature >= 0 && *w.temperature <= 2))
      c.fail(p + ".temperature", num(*w.temperature) + " is outside [0, 2]");
  }
}

void check_launch(checker& c, config const& cfg, std::optional<url_parts> const& backend) {
  auto const& l = *cfg.model.adapter.launch;
  std::string const p = "model.adapter.launchProfile";
  bool const llama = cfg.model.adapter.kind == adapter_kind::llama_cpp;
  c.text(p + ".binaryPath", l.binary_path, 1, 4096);
  c.text(p + ".modelPath", l.model_path, 1, 4096);
  if (!is_loopback_host(l.host))
    c.fail(p + ".host", quote(l.host) + " must be a loopback address (127.0.0.1, ::1, localhost)");
  c.range(p + ".port", l.port, 1, 65535);
  c.range(p + ".ctxSize", l.ctx_size, 64, 1'048'576);
  if (llama && l.ctx_size > cfg.model.context_window)
    c.fail(p + ".ctxSize", std::to_string(l.ctx_size) + " is above model.contextWindow " +
                               std::to_string(cfg.model.context_window));
  c.range(p + ".parallel", l.parallel, 1, 64);
  c.range(p + ".threads", l.threads, 1, 256);
  if (l.threads_batch) c.range(p + ".threadsBatch", *l.threads_batch, 1, 256);
  if (l.threads_http) c.range(p + ".threadsHttp", *l.threads_http, 1, 256);
  c.range(p + ".batchSize", l.batch_size, 1, 65'536);
  c.range(p + ".ubatchSize", l.ubatch_size, 1, 65'536);
  if (l.ubatch_size > l.batch_size)
    c.fail(p + ".ubatchSize",
           std::to_string(l.ubatch_size) + " is above batchSize " + std::to_string(l.batch_size));
  c.range(p + ".cacheReuse", l.cache_reuse, 0, 1'048'576);
  if (l.cache_ram_mib < -1 || l.cache_ram_mib > 1'048'576)
    c.fail(p + ".cacheRamMiB",
           std::to_string(l.cache_ram_mib) + " is outside -1 (unlimited), 0 (off) or 1-1048576 MiB");
  c.range(p + ".loadTimeoutMs", l.load_timeout_ms, 1000, 3'600'000);
  for (std::size_t i = 0; i < l.extra_args.size(); ++i) {
    auto const& arg = l.extra_args[i];
    auto ap = p + ".extraArgs[" + std::to_string(i) + "]";
    if (arg.empty() || has_control(arg))  // not quoted: it may be a secret flag's value
      c.fail(ap, "must be a non-empty argument without control characters");
    auto flag = std::string_view(arg).substr(0, arg.find('='));
    for (auto const& [owned, field] : owned_flags)
      if (flag == owned)
        c.fail(ap, quote(arg) + " repeats a flag the launch profile sets (use launchProfile." +
                       std::string(field) + ")");
  }
  if (!llama) return;
  if (backend &&
      !(backend->port == l.port &&
        (iequals(backend->host, l.host) || (is_loopback_host(backend->host) && is_loopback_host(l.host))))) {
    c.fail("model.adapter.baseUrl", quote(cfg.model.adapter.base_url) +
                                        " does not match launchProfile host:port " + l.host + ":" +
                                        std::to_string(l.port));
  }
  if (cfg.scheduler.concurrency > l.parallel)
    c.fail("scheduler.concurrency",
           std::to_string(cfg.scheduler.concurrency) + " is above model.adapter.launchProfile.parallel " +
               std::to_string(l.parallel) + " (llama-server runs at most that many requests at once)");
  if (cfg.model.adapter.slot_id && *cfg.model.adapter.slot_id >= static_cast<std::int64_t>(l.parallel))
    c.fail("model.adapter.slotId", std::to_string(*cfg.model.adapter.slot_id) +
                                       " is not a slot of launchProfile.parallel " +
                                       std::to_string(l.parallel));
}

void check_model(checker& c, config const& cfg) {
  auto const& m = cfg.model;
  c.text("model.id", m.id, 1, 256);
  c.text("model.family", m.family, 1, 128);
  bool quant_ok =
      !m.quantization.empty() && m.quantization.size() <= 32 &&
      std::all_of(m.quantization.begin(), m.quantization.end(), [](char ch) {
        return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' || ch == '-';
      });
  if (!quant_ok)
    c.fail(
        "model.quantization",
        quote(m.quantization) + " is not a GGUF type name (q4_0, q4_k_m, q5_k_m, q8_0, fp16, unknown, ...)");
  c.range("model.contextWindow", m.context_window, 1, 131'072);
  c.range("model.maxOutputTokens", m.max_output_tokens, 1, 131'072);
  if (m.max_output_tokens > m.context_window)
    c.fail("model.maxOutputTokens", std::to_string(m.max_output_tokens) + " is above model.contextWindow " +
                                        std::to_string(m.context_window));
  std::set<std::string> aliases;
  for (std::size_t i = 0; i < m.aliases.size(); ++i) {
    auto p = "model.aliases[" + std::to_string(i) + "]";
    c.text(p, m.aliases[i], 1, 256);
    if (!aliases.insert(m.aliases[i]).second) c.fail(p, quote(m.aliases[i]) + " is listed twice");
  }

  auto const& a = m.adapter;
  c.range("model.adapter.latencyMs", a.latency_ms, 0, 120'000);
  c.range("model.adapter.tokensPerSecond", a.tokens_per_second, 0, 1'000'000);
  c.range("model.adapter.timeoutMs", a.timeout_ms, 1, 600'000);
  c.range("model.adapter.slotStateTtlMs", a.slot_state_ttl_ms, 1, 60'000);
  c.range("model.adapter.slotSnapshotTimeoutMs", a.slot_snapshot_timeout_ms, 1, 60'000);
  c.range("model.adapter.healthIntervalMs", a.health_interval_ms, 100, 600'000);
  c.range("model.adapter.healthTimeoutMs", a.health_timeout_ms, 100, 600'000);
  if (a.slot_id) c.range("model.adapter.slotId", *a.slot_id, -1, 1023);
  if (a.api_key_env) c.env_name("model.adapter.apiKeyEnv", *a.api_key_env);
  c.text("model.adapter.modelRef", a.model_ref, 0, 256);
  for (auto const& [name, value] : a.headers) {
    auto p = join("model.adapter.headers", name);
    if (!is_token(name)) c.fail(p, quote(name) + " is not a valid header name");
    std::string lower_name;
    for (char ch : name)
      lower_name.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
    for (auto f : forbidden_headers)
      if (lower_name == f) c.fail(p, quote(name) + " is a hop-by-hop or framing header Ray sets itself");
    if (value.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos)
      c.fail(p, "header value contains CR, LF or NUL");
  }
  check_warmups(c, cfg);

  bool const remote = a.kind != adapter_kind::mock;
  std::optional<url_parts> backend;
  if (remote && a.base_url.empty())
    c.fail("model.adapter.baseUrl",
           "is required for the " + std::string(adapter_kind_name(a.kind)) + " adapter");
  if (!a.base_url.empty()) backend = c.url("model.adapter.baseUrl", a.base_url);
  if (remote && backend && cfg.server.port != 0 && backend->port == cfg.server.port) {
    auto const& h = cfg.server.host;
    bool loop = iequals(backend->host, h) ||
                (is_loopback_host(backend->host) && (is_loopback_host(h) || is_wildcard_host(h)));
    if (loop)
      c.fail("model.adapter.baseUrl", quote(a.base_url) + " points at Ray's own listener " + h + ":" +
                                          std::to_string(cfg.server.port) + " (a gateway loop)");
  }
  if (a.launch) check_launch(c, cfg, backend);
}

// `models`: each listed model as `model` is checked, plus what spans the list (models.md "Config").
void check_models(checker& c, config const& cfg) {
  auto model_only = [&c](model_config const& m) {
    c.range("model.adapter.dimensions", m.adapter.dimensions, 1, 16'384);
    if (m.adapter.pooling) {
      static constexpr std::string_view poolings[] = {"none", "mean", "cls", "last", "rank"};
      if (std::find(std::begin(poolings), std::end(poolings), *m.adapter.pooling) == std::end(poolings))
        c.fail("model.adapter.pooling",
               quote(*m.adapter.pooling) + " is not one of none, mean, cls, last, rank");
    }
    if (m.idle_unload_ms) c.range("model.idleUnloadMs", *m.idle_unload_ms, 0, 604'800'000);
  };
  model_only(cfg.model);
  for (std::size_t i = 0; i < cfg.more_models.size(); ++i) {
    config view = cfg;
    view.model = cfg.more_models[i];
    view.more_models.clear();
    c.set_model_path("models[" + std::to_string(i + 1) + "]");
    check_model(c, view);
    model_only(view.model);
    c.set_model_path("");
  }
  // Ids and aliases name one model each (case-insensitively: requests match them that way).
  std::map<std::string, std::string> names;  // lower-case name -> where it was first seen
  std::map<std::uint32_t, std::string> ports;
  auto lower = [](std::string v) {
    for (auto& ch : v)
      ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return v;
  };
  for (std::size_t i = 0; i <= cfg.more_models.size(); ++i) {
    auto const& m = i == 0 ? cfg.model : cfg.more_models[i - 1];
    std::string const p = cfg.more_models.empty() ? "model" : "models[" + std::to_string(i) + "]";
    auto claim = [&](std::string const& name, std::string const& where) {
      auto [it, fresh] = names.emplace(lower(name), where);
      if (!fresh && it->second != where)
        c.fail(where, quote(name) + " already names the model at " + it->second);
    };
    claim(m.id, p + ".id");
    for (std::size_t a = 0; a < m.aliases.size(); ++a)
      claim(m.aliases[a], p + ".aliases[" + std::to_string(a) + "]");
    if (cfg.more_models.empty()) break;
    auto const& l = m.adapter.launch;
    if (m.adapter.kind == adapter_kind::llama_cpp && l && l->supervise) {
      auto [it, fresh] = ports.emplace(l->port, p);
      if (!fresh)
        c.fail(p + ".adapter.launchProfile.port",
               std::to_string(l->port) + " is already the port of the model at " + it->second);
    }
  }
  if (cfg.residency.memory_budget_mib)
    c.range("residency.memoryBudgetMiB", *cfg.residency.memory_budget_mib, 64, 16'777'216);
  c.range("residency.reserveMiB", cfg.residency.reserve_mib, 0, 1'048'576);
}

void check_scheduler(checker& c, config const& cfg) {
  auto const& s = cfg.scheduler;
  auto const out = static_cast<std::int64_t>(cfg.model.max_output_tokens);
  c.range("scheduler.concurrency", s.concurrency, 1, 8);
  c.range("scheduler.maxQueue", s.max_queue, 1, 512);
  if (s.max_queued_tokens < out + 1)
    c.fail("scheduler.maxQueuedTokens",
           std::to_string(s.max_queued_tokens) +
               " is below model.maxOutputTokens + 1 = " + std::to_string(out + 1));
  if (s.max_inflight_tokens < out + 1)
    c.fail("scheduler.maxInflightTokens",
           std::to_string(s.max_inflight_tokens) +
               " is below model.maxOutputTokens + 1 = " + std::to_string(out + 1));
  c.range("scheduler.requestTimeoutMs", s.request_timeout_ms, 1, 120'000);
  if (s.batch_window_ms >= s.request_timeout_ms)
    c.fail("scheduler.batchWindowMs", std::to_string(s.batch_window_ms) +
                                          " must be below scheduler.requestTimeoutMs " +
                                          std::to_string(s.request_timeout_ms));
  c.range("scheduler.affinityLookahead", s.affinity_lookahead, 1, 512);
  if (s.affinity_lookahead > s.max_queue)
    c.fail("scheduler.affinityLookahead", std::to_string(s.affinity_lookahead) +
                                              " is above scheduler.maxQueue " + std::to_string(s.max_queue));
  c.range("scheduler.shortJobMaxTokens", s.short_job_max_tokens, 1, 131'072);
  if (s.queue_timeout_ms) c.range("scheduler.queueTimeoutMs", *s.queue_timeout_ms, 1, 600'000);
  if (s.first_token_timeout_ms)
    c.range("scheduler.firstTokenTimeoutMs", *s.first_token_timeout_ms, 1, 600'000);
  c.range("scheduler.idleTokenTimeoutMs", s.idle_token_timeout_ms, 1, 600'000);
  c.range("scheduler.starvationMs", s.starvation_ms, 1, 600'000);
  if (cfg.openai.default_max_tokens)
    c.range("openai.defaultMaxTokens", *cfg.openai.default_max_tokens, 1, cfg.model.max_output_tokens);
}

void check_cache_and_degradation(checker& c, config const& cfg) {
  c.range("cache.maxEntries", cfg.cache.max_entries, 1, 4096);
  if (cfg.cache.max_bytes < 1 || cfg.cache.max_bytes > (256u << 20))
    c.fail("cache.maxBytes", std::to_string(cfg.cache.max_bytes) + " is outside 1-268435456 (256 MiB)");
  c.range("cache.ttlMs", cfg.cache.ttl_ms, 1, 604'800'000);

  auto const& g = cfg.graceful_degradation;
  std::string const p = "gracefulDegradation.";
  c.range(p + "queueDepthThreshold", g.queue_depth_threshold, 1, 511);
  // Only meaningful while degradation is on: a disabled policy must not block a small maxQueue.
  if (g.enabled && g.queue_depth_threshold >= cfg.scheduler.max_queue)
    c.fail(p + "queueDepthThreshold", std::to_string(g.queue_depth_threshold) +
                                          " must be below scheduler.maxQueue " +
                                          std::to_string(cfg.scheduler.max_queue));
  c.range(p + "maxPromptChars", g.max_prompt_chars, 1, 10'000'000);
  c.range(p + "degradeToMaxTokens", g.degrade_to_max_tokens, 1, 131'072);
  if (g.degrade_to_max_tokens > cfg.model.max_output_tokens)
    c.fail(p + "degradeToMaxTokens", std::to_string(g.degrade_to_max_tokens) +
                                         " is above model.maxOutputTokens " +
                                         std::to_string(cfg.model.max_output_tokens));
  c.range(p + "memoryRssThresholdMiB", g.memory_rss_threshold_mib, 1, 1'048'576);
  c.open_closed(p + "memoryCgroupPressureRatioThreshold", g.memory_cgroup_pressure_ratio_threshold, 0, 1);
  c.open_closed(p + "cpuThrottledRatioThreshold", g.cpu_throttled_ratio_threshold, 0, 1);
  c.open_closed(p + "memoryPsiSomeAvg10Threshold", g.memory_psi_some_avg10_threshold, 0, 100);
  c.open_closed(p + "memoryPsiFullAvg10Threshold", g.memory_psi_full_avg10_threshold, 0, 100);
  c.open_closed(p + "cpuPsiSomeAvg10Threshold", g.cpu_psi_some_avg10_threshold, 0, 100);
  c.open_closed(p + "cpuPsiFullAvg10Threshold", g.cpu_psi_full_avg10_threshold, 0, 100);
  c.open_closed(p + "shedAtMemoryPsiFullAvg10", g.shed_at_memory_psi_full_avg10, 0, 100);
  for (std::size_t i = 0; i < g.watch_cgroups.size(); ++i) {
    auto const& path = g.watch_cgroups[i];
    auto wp = p + "watchCgroups[" + std::to_string(i) + "]";
    c.text(wp, path, 1, 4096);
    if (path.find("..") != std::string::npos) c.fail(wp, quote(path) + " must not contain \"..\"");
  }

  for (std::size_t i = 0; i < cfg.prompt_compiler.family_metadata_keys.size(); ++i)
    c.text("promptCompiler.familyMetadataKeys[" + std::to_string(i) + "]",
           cfg.prompt_compiler.family_metadata_keys[i], 1, 128);
}

void check_rest(checker& c, config const& cfg) {
  auto const& q = cfg.async_queue;
  c.text("asyncQueue.storageDir", q.storage_dir, 1, 4096);
  c.range("asyncQueue.maxJobs", q.max_jobs, 1, 100'000);
  c.range("asyncQueue.minFreeStorageMiB", q.min_free_storage_mib, 0, 1'048'576);
  if (q.completed_ttl_ms < 1000 || q.completed_ttl_ms > 31'536'000'000ull)
    c.fail("asyncQueue.completedTtlMs",
           std::to_string(q.completed_ttl_ms) + " is outside 1000-31536000000 (1 s to 365 days)");
  c.range("asyncQueue.pollIntervalMs", q.poll_interval_ms, 10, 600'000);
  c.range("asyncQueue.dispatchConcurrency", q.dispatch_concurrency, 1, 8);
  c.range("asyncQueue.maxAttempts", q.max_attempts, 1, 100);
  c.range("asyncQueue.callbackTimeoutMs", q.callback_timeout_ms, 1, 120'000);
  c.range("asyncQueue.maxCallbackAttempts", q.max_callback_attempts, 1, 100);
  for (std::size_t i = 0; i < q.callback_allowed_hosts.size(); ++i) {
    std::string_view h = q.callback_allowed_hosts[i];
    if (h.starts_with("*.")) h.remove_prefix(2);
    if (!is_host(h))
      c.fail("asyncQueue.callbackAllowedHosts[" + std::to_string(i) + "]",
             quote(q.callback_allowed_hosts[i]) + " is not a host name, IP address or *.suffix");
  }
  if (q.callback_secret_env) c.env_name("asyncQueue.callbackSecretEnv", *q.callback_secret_env);
  if (q.postgres_url_env) c.env_name("asyncQueue.postgresUrlEnv", *q.postgres_url_env);
  if (q.store == job_store_kind::postgres && !q.postgres_url_env)
    c.fail("asyncQueue.postgresUrlEnv",
           "is required when asyncQueue.store is \"postgres\": name the environment variable holding the "
           "PostgreSQL connection string (the string itself is never in the config)");
  c.range("asyncQueue.leaseMs", q.lease_ms, 1000, 600'000);

  c.text("telemetry.serviceName", cfg.telemetry.service_name, 1, 128);
  c.range("telemetry.slowRequestThresholdMs", cfg.telemetry.slow_request_threshold_ms, 1, 600'000);

  c.env_name("auth.apiKeyEnv", cfg.auth.api_key_env);
  for (std::size_t i = 0; i < cfg.auth.api_key_sha256.size(); ++i) {
    auto const& d = cfg.auth.api_key_sha256[i];
    bool hex = d.size() == 64 && std::all_of(d.begin(), d.end(), [](char ch) {
                 return std::isxdigit(static_cast<unsigned char>(ch));
               });
    // The digest itself is a secret of sorts: name the entry, never print it.
    if (!hex)
      c.fail("auth.apiKeySha256[" + std::to_string(i) + "]", "must be 64 hex characters (a SHA-256 digest)");
  }

  c.range("rateLimit.windowMs", cfg.rate_limit.window_ms, 1000, 86'400'000);
  c.range("rateLimit.maxRequests", cfg.rate_limit.max_requests, 1, 1'000'000);
  c.range("rateLimit.maxKeys", cfg.rate_limit.max_keys, 1, 1'000'000);
  // Each entry's syntax is checked where it is parsed (access::proxy_list, at start and on reload); here the
  // list is bounded.
  if (cfg.rate_limit.trusted_proxies.size() > 256)
    c.fail("rateLimit.trustedProxies", "lists " + std::to_string(cfg.rate_limit.trusted_proxies.size()) +
                                           " entries; at most 256 (use CIDR blocks)");

  for (auto const& [k, v] : cfg.tags) {
    auto p = join("tags", k);
    c.text(p, k, 1, 128);
    c.text(p, v, 0, 1024);
  }
}

}  // namespace

result<void> validate_with(config const& cfg, source_map const* sources) {
  checker c(sources);
  if (!profile_defaults(cfg.profile)) c.fail("profile", quote(cfg.profile) + " is not a known profile");
  check_server(c, cfg.server);
  check_model(c, cfg);
  check_models(c, cfg);
  check_scheduler(c, cfg);
  check_cache_and_degradation(c, cfg);
  check_templates(c, cfg);
  check_rest(c, cfg);
  if (c.failure()) return *c.failure();
  return {};
}

}  // namespace detail
}  // namespace ray::config
