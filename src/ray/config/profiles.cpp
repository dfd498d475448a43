// Built-in profiles (config.md "Profiles") and the built-in templates (serving-core.md "Templates").
//
// Values the table of config.md does not give, chosen here:
//   - tiny: adapter.timeoutMs 7 000 (below its requestTimeoutMs 8 000, so switching tiny to a real
//     backend keeps requestTimeoutMs > adapter.timeoutMs), modelRef "" (mock), family "tiny",
//     quantization "unknown".
//   - sub1b-cax11: adapter.timeoutMs 20 000 (below its requestTimeoutMs 22 000), launch preset
//     "single-vps-sub1b-cax11".
//   - 1b: launch preset "single-vps-1b"; 1b-8gb: "single-vps-1b-8gb"; sub1b: "single-vps-sub1b-cx23" (as the
//     TypeScript example files).
//   - families and quantizations follow the model ids: qwen2.5 / mistral, q4_k_m; modelRef = the GGUF name
//     (model id for the llama.cpp profiles; "...-q4_k_m" for vps and balanced, as their example files).
//   - every profile carries adapter.baseUrl http://127.0.0.1:8081 (also tiny, unused by the mock) so
//     that selecting llama.cpp later needs no URL; launchProfile threadsBatch/threadsHttp unset
//     (llama-server decides), enableUnifiedKv false and contextShift false (a shifted context silently
//     drops prompt tokens).
//   - sub1b and 1b-8gb keep the table's maxInflightTokens (4 096 / 6 144) although it exceeds their
//     ctxSize (3 072 / 4 096): load() caps it to ctxSize with a warning, as for the TypeScript files.
//   - openai.defaultMaxTokens, scheduler.queueTimeoutMs and firstTokenTimeoutMs unset (= their documented
//     fallbacks); asyncQueue disabled; auth off; rateLimit trustProxyHeaders false.
#include "ray/config/config.hpp"

#include <string>

namespace ray::config {

std::string_view model_kind_name(model_kind k) noexcept {
  switch (k) {
    case model_kind::chat:
      return "chat";
    case model_kind::embedding:
      return "embedding";
    case model_kind::rerank:
      return "rerank";
  }
  return "chat";
}

std::string_view adapter_kind_name(adapter_kind k) noexcept {
  switch (k) {
    case adapter_kind::mock:
      return "mock";
    case adapter_kind::openai_compatible:
      return "openai-compatible";
    case adapter_kind::llama_cpp:
      return "llama.cpp";
  }
  return "mock";
}

std::string_view cache_key_strategy_name(cache_key_strategy k) noexcept {
  return k == cache_key_strategy::input ? "input" : "input+params";
}

std::string_view cache_scope_name(cache_scope s) noexcept {
  return s == cache_scope::global ? "global" : "key";
}

std::string_view job_store_kind_name(job_store_kind k) noexcept {
  return k == job_store_kind::postgres ? "postgres" : "sqlite";
}

std::string_view lane_name(lane l) noexcept {
  return l == lane::short_lane ? "short" : "draft";
}

std::string_view log_level_name(log_level l) noexcept {
  switch (l) {
    case log_level::debug:
      return "debug";
    case log_level::info:
      return "info";
    case log_level::warn:
      return "warn";
    case log_level::error:
      return "error";
  }
  return "info";
}

std::string_view rate_limit_key_name(rate_limit_key k) noexcept {
  switch (k) {
    case rate_limit_key::ip:
      return "ip";
    case rate_limit_key::api_key:
      return "api-key";
    case rate_limit_key::ip_api_key:
      return "ip+api-key";
  }
  return "ip";
}

namespace {

constexpr std::uint32_t mib = 1024 * 1024;

// One row of the profile table.
struct row {
  std::string_view name;
  adapter_kind kind;
  std::string_view model_id;
  std::string_view family;
  std::string_view model_ref;
  std::uint32_t context_window, max_output_tokens;
  std::uint32_t request_body_limit_bytes;
  std::uint32_t concurrency, max_queue;
  std::uint32_t max_queued_tokens, max_inflight_tokens;
  std::uint32_t request_timeout_ms;
  std::uint32_t batch_window_ms, affinity_lookahead;
  std::uint32_t cache_entries, cache_bytes, cache_ttl_ms;
  std::uint32_t queue_depth, max_prompt_chars, degrade_to, rss_mib;
  bool rate_limit_on;
  std::uint32_t rate_max_requests, rate_max_keys;
  std::uint32_t async_max_jobs, async_min_free_mib;
  std::uint32_t adapter_timeout_ms;
  std::uint32_t slow_request_ms;
  // llama.cpp launch profile (ctx 0 = none)
  std::string_view preset;
  std::uint32_t ctx, parallel, threads, batch, ubatch, cache_reuse;
  std::int64_t cache_ram_mib;
};

// clang-format off
constexpr row rows[] = {
  {"tiny", adapter_kind::mock, "tiny-dev", "tiny", "", 4096, 192, 32'000, 1, 32, 12'000, 2'500, 8'000, 0, 8,
   128, 1 * mib, 30'000, 8, 4000, 96, 256, false, 120, 2048, 32, 64, 7'000, 750, "", 0, 0, 0, 0, 0, 0, 0},
  {"sub1b", adapter_kind::llama_cpp, "qwen2.5-0.5b-instruct-q4_k_m", "qwen2.5", "qwen2.5-0.5b-instruct-q4_k_m",
   8192, 256, 48'000, 2, 64, 24'000, 4'096, 20'000, 10, 24, 256, 2 * mib, 90'000, 16, 6000, 128, 512, true, 120,
   4096, 128, 256, 18'000, 1200, "single-vps-sub1b-cx23", 3072, 2, 2, 256, 128, 256, 512},
  {"sub1b-cax11", adapter_kind::llama_cpp, "qwen2.5-0.5b-instruct-q4_k_m", "qwen2.5",
   "qwen2.5-0.5b-instruct-q4_k_m", 8192, 256, 48'000, 1, 48, 18'000, 3'072, 22'000, 5, 16, 256, 2 * mib, 90'000,
   12, 6000, 128, 512, true, 90, 4096, 128, 256, 20'000, 1500, "single-vps-sub1b-cax11", 3072, 1, 2, 192, 96, 256,
   512},
  {"1b", adapter_kind::llama_cpp, "qwen2.5-1.5b-instruct-q4_k_m", "qwen2.5", "qwen2.5-1.5b-instruct-q4_k_m", 8192,
   192, 48'000, 1, 40, 18'000, 2'048, 32'000, 5, 12, 256, 2 * mib, 120'000, 10, 5000, 128, 512, true, 75, 4096,
   128, 256, 28'000, 2200, "single-vps-1b", 2048, 1, 2, 192, 96, 192, 384},
  {"1b-8gb", adapter_kind::llama_cpp, "qwen2.5-1.5b-instruct-q4_k_m", "qwen2.5", "qwen2.5-1.5b-instruct-q4_k_m",
   8192, 256, 64'000, 2, 96, 48'000, 6'144, 28'000, 10, 24, 512, 4 * mib, 120'000, 20, 8000, 160, 768, true, 150,
   8192, 256, 512, 24'000, 1800, "single-vps-1b-8gb", 4096, 2, 4, 256, 128, 256, 768},
  {"vps", adapter_kind::openai_compatible, "qwen2.5-3b-instruct-q4", "qwen2.5", "qwen2.5-3b-instruct-q4_k_m", 8192,
   384, 64'000, 2, 96, 48'000, 8'000, 24'000, 0, 12, 512, 4 * mib, 120'000, 24, 8000, 192, 768, true, 90, 4096,
   256, 512, 20'000, 1500, "", 0, 0, 0, 0, 0, 0, 0},
  {"balanced", adapter_kind::openai_compatible, "mistral-7b-instruct-q4", "mistral", "mistral-7b-instruct-q4_k_m",
   8192, 512, 96'000, 3, 160, 96'000, 16'000, 30'000, 0, 16, 1024, 8 * mib, 180'000, 40, 12000, 256, 1024, true,
   180, 8192, 512, 1024, 25'000, 2000, "", 0, 0, 0, 0, 0, 0, 0},
};
// clang-format on

config from_row(row const& r) {
  config c;
  c.profile = std::string(r.name);
  c.server.request_body_limit_bytes = r.request_body_limit_bytes;

  c.model.id = std::string(r.model_id);
  c.model.family = std::string(r.family);
  c.model.quantization = r.kind == adapter_kind::mock ? "unknown" : "q4_k_m";
  c.model.context_window = r.context_window;
  c.model.max_output_tokens = r.max_output_tokens;
  c.model.warm_on_boot = r.kind != adapter_kind::mock;

  auto& a = c.model.adapter;
  a.kind = r.kind;
  a.latency_ms = 35;
  a.seed = "ray";
  a.base_url = "http://127.0.0.1:8081";
  a.model_ref = std::string(r.model_ref);
  a.timeout_ms = r.adapter_timeout_ms;
  if (r.ctx != 0) {
    launch_profile l;
    l.preset = std::string(r.preset);
    l.model_path = "/var/lib/ray/models/" + a.model_ref + ".gguf";
    l.alias = a.model_ref;
    l.ctx_size = r.ctx;
    l.parallel = r.parallel;
    l.threads = r.threads;
    l.batch_size = r.batch;
    l.ubatch_size = r.ubatch;
    l.cache_reuse = r.cache_reuse;
    l.cache_ram_mib = r.cache_ram_mib;
    a.launch = l;
  }

  auto& s = c.scheduler;
  s.concurrency = r.concurrency;
  s.max_queue = r.max_queue;
  s.max_queued_tokens = r.max_queued_tokens;
  s.max_inflight_tokens = r.max_inflight_tokens;
  s.request_timeout_ms = r.request_timeout_ms;
  s.dedupe_inflight = true;
  s.batch_window_ms = r.batch_window_ms;
  s.affinity_lookahead = r.affinity_lookahead;
  s.short_job_max_tokens = 96;

  c.cache.enabled = true;
  c.cache.max_entries = r.cache_entries;
  c.cache.max_bytes = r.cache_bytes;
  c.cache.ttl_ms = r.cache_ttl_ms;
  c.cache.key_strategy = cache_key_strategy::input_params;
  c.cache.scope = cache_scope::key;

  auto& g = c.graceful_degradation;
  g.enabled = true;
  g.queue_depth_threshold = r.queue_depth;
  g.max_prompt_chars = r.max_prompt_chars;
  g.degrade_to_max_tokens = r.degrade_to;
  g.memory_rss_threshold_mib = r.rss_mib;
  g.memory_cgroup_pressure_ratio_threshold = 0.9;
  g.cpu_throttled_ratio_threshold = 0.2;
  g.memory_psi_some_avg10_threshold = 10;
  g.memory_psi_full_avg10_threshold = 1;
  g.cpu_psi_some_avg10_threshold = 50;
  g.cpu_psi_full_avg10_threshold = 5;
  g.shed_at_memory_psi_full_avg10 = 20;

  c.async_queue.max_jobs = r.async_max_jobs;
  c.async_queue.min_free_storage_mib = r.async_min_free_mib;

  c.telemetry.slow_request_threshold_ms = r.slow_request_ms;

  c.auth.enabled = false;
  c.auth.api_key_env = "RAY_API_KEYS";

  c.rate_limit.enabled = r.rate_limit_on;
  c.rate_limit.window_ms = 60'000;
  c.rate_limit.max_requests = r.rate_max_requests;
  c.rate_limit.max_keys = r.rate_max_keys;
  c.rate_limit.key_strategy = rate_limit_key::ip;
  return c;
}

template_config make_template(std::string_view family, lane l, std::string_view system,
                              std::string_view input, std::vector<std::string> vars, std::uint32_t max_tokens,
                              std::optional<std::string> response_format = std::nullopt) {
  template_config t;
  t.family = std::string(family);
  t.lane_ = l;
  t.system = std::string(system);
  t.input = std::string(input);
  t.variables = std::move(vars);
  t.default_max_tokens = max_tokens;
  t.response_format = std::move(response_format);
  return t;
}

std::map<std::string, template_config> make_builtins() {
  std::map<std::string, template_config> m;
  m.emplace(
      "email.cold_outreach.v1",
      make_template("email.cold_outreach", lane::draft,
                    "You write short, professional B2B cold outreach emails. Write plain text: a line "
                    "starting with \"Subject:\", a blank line, then a body of at most 120 words. Be specific "
                    "and honest, with no hype and no invented facts or figures. End with one clear, "
                    "low-pressure call to action. Do not add placeholders or a signature block.",
                    "Write a cold outreach email.\n"
                    "Recipient role: {{ recipientRole }}\n"
                    "Topic: {{ topic }}\n"
                    "Value proposition: {{ valueProp }}\n"
                    "Company context: {{ companyContext }}",
                    {"recipientRole", "topic", "valueProp", "companyContext"}, 140));
  m.emplace("email.follow_up.v1",
            make_template(
                "email.follow_up", lane::draft,
                "You write brief, polite follow-up emails to someone who has not replied yet. Write plain "
                "text: a line starting with \"Subject:\", a blank line, then a body of at most 90 words. "
                "Refer to the earlier message in one sentence, give the reader one concrete reason to "
                "reply, and never guilt-trip or pressure. Do not add placeholders or a signature block.",
                "Write a follow-up email.\n"
                "Earlier topic: {{ previousTopic }}\n"
                "Recipient role: {{ recipientRole }}\n"
                "Reason to reply: {{ reasonToReply }}",
                {"previousTopic", "recipientRole", "reasonToReply"}, 120));
  m.emplace(
      "email.reply_classification.v1",
      make_template("email.reply_classification", lane::short_lane,
                    "You classify replies to outreach emails. Answer with a single JSON object and nothing "
                    "else: {\"label\": one of \"interested\", \"not_interested\", \"needs_info\", "
                    "\"out_of_office\", \"unsubscribe\", \"other\"; \"confidence\": a number from 0 to 1; "
                    "\"reason\": a phrase of at most 12 words}.",
                    "Classify this reply:\n{{ replyText }}", {"replyText"}, 80, "json_object"));
  m.emplace("email.reply_rewrite.v1",
            make_template(
                "email.reply_rewrite", lane::short_lane,
                "You rewrite email replies. Keep the meaning, the facts and the language of the original; "
                "apply the requested goal; keep it at most as long as the original unless the goal says "
                "otherwise. Answer with the rewritten reply only, as plain text, without commentary.",
                "Rewrite goal: {{ rewriteGoal }}\n"
                "Reply to rewrite:\n{{ replyText }}",
                {"replyText", "rewriteGoal"}, 120));
  return m;
}

}  // namespace

result<config> profile_defaults(std::string_view profile) {
  for (auto const& r : rows)
    if (r.name == profile) return from_row(r);
  std::string msg = "profile: \"" + std::string(profile) + "\" is not a known profile (expected one of ";
  for (std::size_t i = 0; i < std::size(profile_names); ++i) {
    if (i != 0) msg += ", ";
    msg += profile_names[i];
  }
  msg += ")";
  error e{errc::invalid_request, std::move(msg)};
  e.param = "profile";
  return e;
}

std::map<std::string, template_config> const& builtin_templates() {
  static auto const m = make_builtins();
  return m;
}

}  // namespace ray::config
