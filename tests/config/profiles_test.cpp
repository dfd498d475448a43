#include "ray/config/config.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace {

namespace rc = ray::config;

rc::config profile(std::string_view name) {
  auto r = rc::profile_defaults(name);
  EXPECT_TRUE(r.has_value()) << r.error().message;
  return r.has_value() ? *r : rc::config{};
}

TEST(Profiles, EveryBuiltInProfileExistsAndPassesValidation) {
  for (auto name : rc::profile_names) {
    auto c = profile(name);
    EXPECT_EQ(c.profile, name);
    auto v = rc::validate(c);
    EXPECT_TRUE(v.has_value()) << name << ": " << v.error().message;
  }
}

TEST(Profiles, AnUnknownProfileIsAnErrorListingTheKnownOnes) {
  auto r = rc::profile_defaults("huge");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ray::errc::invalid_request);
  EXPECT_NE(r.error().message.find("\"huge\" is not a known profile"), std::string::npos);
  EXPECT_NE(r.error().message.find("sub1b-cax11"), std::string::npos);
}

// The numbers of the config.md table, typed again from the spec (not copied from profiles.cpp).
struct expected_row {
  std::string_view name;
  std::uint32_t context_window, max_output, body_limit, concurrency, max_queue, queued, inflight, timeout;
  std::uint32_t batch_window, lookahead, cache_entries, cache_mib, cache_ttl_s;
  std::uint32_t queue_depth, prompt_chars, degrade_to, rss_mib;
  bool rate_on;
  std::uint32_t rate_max, rate_keys, jobs, free_mib, slow_ms;
};

constexpr expected_row table[] = {
    {"tiny", 4096, 192, 32000, 1,  32,  12000, 2500, 8000, 0,  8,  128,
     1,      30,   8,   4000,  96, 256, false, 120,  2048, 32, 64, 750},
    {"sub1b", 8192, 256, 48000, 2,   64,  24000, 4096, 20000, 10,  24,  256,
     2,       90,   16,  6000,  128, 512, true,  120,  4096,  128, 256, 1200},
    {"sub1b-cax11", 8192, 256, 48000, 1,  48,   18000, 3072, 22000, 5, 16, 256, 2, 90, 12,
     6000,          128,  512, true,  90, 4096, 128,   256,  1500},
    {"1b", 8192, 192, 48000, 1,   40,  18000, 2048, 32000, 5,   12,  256,
     2,    120,  10,  5000,  128, 512, true,  75,   4096,  128, 256, 2200},
    {"1b-8gb", 8192, 256, 64000, 2,   96,  48000, 6144, 28000, 10,  24,  512,
     4,        120,  20,  8000,  160, 768, true,  150,  8192,  256, 512, 1800},
    {"vps", 8192, 384, 64000, 2,   96,  48000, 8000, 24000, 0,   12,  512,
     4,     120,  24,  8000,  192, 768, true,  90,   4096,  256, 512, 1500},
    {"balanced", 8192, 512, 96000, 3,   160,  96000, 16000, 30000, 0,   16,   1024,
     8,          180,  40,  12000, 256, 1024, true,  180,   8192,  512, 1024, 2000},
};

TEST(Profiles, EachProfileCarriesTheNumbersOfTheSpecTable) {
  for (auto const& e : table) {
    SCOPED_TRACE(e.name);
    auto c = profile(e.name);
    EXPECT_EQ(c.model.context_window, e.context_window);
    EXPECT_EQ(c.model.max_output_tokens, e.max_output);
    EXPECT_EQ(c.server.request_body_limit_bytes, e.body_limit);
    EXPECT_EQ(c.scheduler.concurrency, e.concurrency);
    EXPECT_EQ(c.scheduler.max_queue, e.max_queue);
    EXPECT_EQ(c.scheduler.max_queued_tokens, e.queued);
    EXPECT_EQ(c.scheduler.max_inflight_tokens, e.inflight);
    EXPECT_EQ(c.scheduler.request_timeout_ms, e.timeout);
    EXPECT_EQ(c.scheduler.batch_window_ms, e.batch_window);
    EXPECT_EQ(c.scheduler.affinity_lookahead, e.lookahead);
    EXPECT_EQ(c.cache.max_entries, e.cache_entries);
    EXPECT_EQ(c.cache.max_bytes, std::uint64_t{e.cache_mib} * 1024 * 1024);
    EXPECT_EQ(c.cache.ttl_ms, e.cache_ttl_s * 1000);
    EXPECT_EQ(c.graceful_degradation.queue_depth_threshold, e.queue_depth);
    EXPECT_EQ(c.graceful_degradation.max_prompt_chars, e.prompt_chars);
    EXPECT_EQ(c.graceful_degradation.degrade_to_max_tokens, e.degrade_to);
    EXPECT_EQ(c.graceful_degradation.memory_rss_threshold_mib, e.rss_mib);
    EXPECT_EQ(c.rate_limit.enabled, e.rate_on);
    EXPECT_EQ(c.rate_limit.max_requests, e.rate_max);
    EXPECT_EQ(c.rate_limit.max_keys, e.rate_keys);
    EXPECT_EQ(c.async_queue.max_jobs, e.jobs);
    EXPECT_EQ(c.async_queue.min_free_storage_mib, e.free_mib);
    EXPECT_EQ(c.telemetry.slow_request_threshold_ms, e.slow_ms);
    EXPECT_EQ(c.model.warm_on_boot, e.name != "tiny");
  }
}

TEST(Profiles, TinyServesTheMockBackendWith35MsLatency) {
  auto c = profile("tiny");
  EXPECT_EQ(c.model.id, "tiny-dev");
  EXPECT_EQ(c.model.adapter.kind, rc::adapter_kind::mock);
  EXPECT_EQ(c.model.adapter.latency_ms, 35u);
  EXPECT_FALSE(c.model.adapter.launch.has_value());
  EXPECT_LT(c.model.adapter.timeout_ms, c.scheduler.request_timeout_ms);
}

struct expected_launch {
  std::string_view name, model_id;
  std::uint32_t ctx, parallel, threads, batch, ubatch, reuse;
  std::int64_t ram;
  std::uint32_t adapter_timeout;
};

constexpr expected_launch launches[] = {
    {"sub1b", "qwen2.5-0.5b-instruct-q4_k_m", 3072, 2, 2, 256, 128, 256, 512, 18000},
    {"sub1b-cax11", "qwen2.5-0.5b-instruct-q4_k_m", 3072, 1, 2, 192, 96, 256, 512, 20000},
    {"1b", "qwen2.5-1.5b-instruct-q4_k_m", 2048, 1, 2, 192, 96, 192, 384, 28000},
    {"1b-8gb", "qwen2.5-1.5b-instruct-q4_k_m", 4096, 2, 4, 256, 128, 256, 768, 24000},
};

TEST(Profiles, LlamaCppProfilesCarryTheirLaunchProfileFromTheTable) {
  for (auto const& e : launches) {
    SCOPED_TRACE(e.name);
    auto c = profile(e.name);
    auto const& a = c.model.adapter;
    EXPECT_EQ(c.model.id, e.model_id);
    EXPECT_EQ(a.kind, rc::adapter_kind::llama_cpp);
    EXPECT_EQ(a.base_url, "http://127.0.0.1:8081");
    EXPECT_EQ(a.timeout_ms, e.adapter_timeout);
    EXPECT_GT(c.scheduler.request_timeout_ms, a.timeout_ms);
    ASSERT_TRUE(a.launch.has_value());
    auto const& l = *a.launch;
    EXPECT_EQ(l.ctx_size, e.ctx);
    EXPECT_EQ(l.parallel, e.parallel);
    EXPECT_EQ(l.threads, e.threads);
    EXPECT_EQ(l.batch_size, e.batch);
    EXPECT_EQ(l.ubatch_size, e.ubatch);
    EXPECT_EQ(l.cache_reuse, e.reuse);
    EXPECT_EQ(l.cache_ram_mib, e.ram);
    EXPECT_EQ(l.host, "127.0.0.1");
    EXPECT_EQ(l.port, 8081u);
    EXPECT_EQ(l.binary_path, "/usr/local/bin/llama-server");
    EXPECT_EQ(l.model_path, "/var/lib/ray/models/" + a.model_ref + ".gguf");
    EXPECT_FALSE(l.supervise);
  }
}

TEST(Profiles, VpsAndBalancedUseAnOpenAiCompatibleBackendOnPort8081) {
  auto vps = profile("vps");
  EXPECT_EQ(vps.model.adapter.kind, rc::adapter_kind::openai_compatible);
  EXPECT_EQ(vps.model.adapter.base_url, "http://127.0.0.1:8081");
  EXPECT_EQ(vps.model.id, "qwen2.5-3b-instruct-q4");
  EXPECT_EQ(vps.model.adapter.timeout_ms, 20000u);
  EXPECT_FALSE(vps.model.adapter.launch.has_value());
  auto balanced = profile("balanced");
  EXPECT_EQ(balanced.model.adapter.kind, rc::adapter_kind::openai_compatible);
  EXPECT_EQ(balanced.model.id, "mistral-7b-instruct-q4");
  EXPECT_EQ(balanced.model.adapter.timeout_ms, 25000u);
}

TEST(Profiles, SharedDefaultsAreTheSameInEveryProfile) {
  for (auto name : rc::profile_names) {
    SCOPED_TRACE(name);
    auto c = profile(name);
    EXPECT_EQ(c.server.host, "127.0.0.1");
    EXPECT_EQ(c.server.port, 3000u);
    EXPECT_TRUE(c.scheduler.dedupe_inflight);
    EXPECT_EQ(c.scheduler.short_job_max_tokens, 96u);
    EXPECT_EQ(c.cache.key_strategy, rc::cache_key_strategy::input_params);
    auto const& g = c.graceful_degradation;
    EXPECT_TRUE(g.enabled);
    EXPECT_DOUBLE_EQ(g.memory_cgroup_pressure_ratio_threshold, 0.9);
    EXPECT_DOUBLE_EQ(g.cpu_throttled_ratio_threshold, 0.2);
    EXPECT_DOUBLE_EQ(g.memory_psi_some_avg10_threshold, 10);
    EXPECT_DOUBLE_EQ(g.memory_psi_full_avg10_threshold, 1);
    EXPECT_DOUBLE_EQ(g.cpu_psi_some_avg10_threshold, 50);
    EXPECT_DOUBLE_EQ(g.cpu_psi_full_avg10_threshold, 5);
    EXPECT_FALSE(c.auth.enabled);
    EXPECT_EQ(c.auth.api_key_env, "RAY_API_KEYS");
    EXPECT_EQ(c.rate_limit.window_ms, 60000u);
    EXPECT_EQ(c.rate_limit.key_strategy, rc::rate_limit_key::ip);
    EXPECT_TRUE(c.prompt_compiler.enabled);
    EXPECT_TRUE(c.prompt_compiler.collapse_whitespace);
    EXPECT_TRUE(c.prompt_compiler.dedupe_repeated_lines);
  }
}

TEST(Profiles, TheFourBuiltInEmailTemplatesMatchServingCore) {
  auto const& t = rc::builtin_templates();
  ASSERT_EQ(t.size(), 4u);
  auto const& cold = t.at("email.cold_outreach.v1");
  EXPECT_EQ(cold.family, "email.cold_outreach");
  EXPECT_EQ(cold.lane_, rc::lane::draft);
  EXPECT_EQ(cold.variables,
            (std::vector<std::string>{"recipientRole", "topic", "valueProp", "companyContext"}));
  EXPECT_EQ(cold.default_max_tokens, 140u);
  auto const& follow = t.at("email.follow_up.v1");
  EXPECT_EQ(follow.variables, (std::vector<std::string>{"previousTopic", "recipientRole", "reasonToReply"}));
  EXPECT_EQ(follow.lane_, rc::lane::draft);
  EXPECT_EQ(follow.default_max_tokens, 120u);
  auto const& classify = t.at("email.reply_classification.v1");
  EXPECT_EQ(classify.variables, (std::vector<std::string>{"replyText"}));
  EXPECT_EQ(classify.lane_, rc::lane::short_lane);
  EXPECT_EQ(classify.default_max_tokens, 80u);
  EXPECT_EQ(classify.response_format, "json_object");
  auto const& rewrite = t.at("email.reply_rewrite.v1");
  EXPECT_EQ(rewrite.variables, (std::vector<std::string>{"replyText", "rewriteGoal"}));
  EXPECT_EQ(rewrite.lane_, rc::lane::short_lane);
  EXPECT_EQ(rewrite.default_max_tokens, 120u);
}

TEST(Profiles, BuiltInTemplatesUseExactlyTheirDeclaredVariables) {
  for (auto const& [id, t] : rc::builtin_templates()) {
    SCOPED_TRACE(id);
    std::set<std::string> used;
    for (auto const& p : rc::template_placeholders(t.input))
      used.insert(p);
    if (t.system)
      for (auto const& p : rc::template_placeholders(*t.system))
        used.insert(p);
    EXPECT_EQ(used, std::set<std::string>(t.variables.begin(), t.variables.end()));
  }
}

TEST(Profiles, PlaceholdersAreFoundWithOrWithoutInnerSpaces) {
  EXPECT_EQ(rc::template_placeholders("Hi {{ name }}, re {{topic}}. {{ name }}"),
            (std::vector<std::string>{"name", "topic", "name"}));
  EXPECT_TRUE(rc::template_placeholders("no placeholders, {not one}").empty());
  EXPECT_TRUE(rc::template_placeholders("unclosed {{ name").empty());
}

TEST(Profiles, EnumNamesAreTheJsonSpellings) {
  EXPECT_EQ(rc::adapter_kind_name(rc::adapter_kind::llama_cpp), "llama.cpp");
  EXPECT_EQ(rc::adapter_kind_name(rc::adapter_kind::openai_compatible), "openai-compatible");
  EXPECT_EQ(rc::cache_key_strategy_name(rc::cache_key_strategy::input_params), "input+params");
  EXPECT_EQ(rc::rate_limit_key_name(rc::rate_limit_key::ip_api_key), "ip+api-key");
  EXPECT_EQ(rc::lane_name(rc::lane::short_lane), "short");
  EXPECT_EQ(rc::log_level_name(rc::log_level::warn), "warn");
}

}  // namespace
