// The loader: upstream files, profile choice, precedence file < env < flags, env parsing, flags, file checks.
#include "ray/config/config.hpp"

#include <gtest/gtest.h>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace {

namespace rc = ray::config;
namespace fs = std::filesystem;

rc::loaded_config load_ok(std::string_view text, rc::env_map const& env = {},
                          rc::flag_overrides const& flags = {}) {
  auto r = rc::load_from_text(text, env, flags);
  EXPECT_TRUE(r.has_value()) << r.error().message;
  return r.has_value() ? *r : rc::loaded_config{};
}

std::string load_error(std::string_view text, rc::env_map const& env = {},
                       rc::flag_overrides const& flags = {}) {
  auto r = rc::load_from_text(text, env, flags);
  EXPECT_FALSE(r.has_value()) << "loaded, expected an error";
  return r.has_value() ? std::string() : r.error().message;
}

rc::loaded_config load_file_ok(fs::path const& p, rc::env_map const& env = {},
                               rc::flag_overrides const& flags = {}) {
  auto r = rc::load(p.string(), env, flags);
  EXPECT_TRUE(r.has_value()) << p << ": " << r.error().message;
  return r.has_value() ? *r : rc::loaded_config{};
}

fs::path upstream(std::string_view name) {
  return fs::path(RAY_TEST_FIXTURES) / "upstream-configs" / name;
}

bool has_warning(rc::loaded_config const& c, std::string_view text) {
  return std::any_of(c.warnings.begin(), c.warnings.end(),
                     [&](rc::load_warning const& w) { return w.message.find(text) != std::string::npos; });
}

// A scratch directory for file tests, removed afterwards.
class LoaderFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ray-config-test-" + ray::new_id(""));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path write(std::string_view name, std::string const& text) {
    auto p = dir_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  fs::path dir_;
};

// --- the TypeScript-era files ---

TEST(Loader, EveryUpstreamConfigLoadsUnchanged) {
  int n = 0;
  for (auto const& entry : fs::directory_iterator(fs::path(RAY_TEST_FIXTURES) / "upstream-configs")) {
    if (entry.path().extension() != ".json") continue;
    SCOPED_TRACE(entry.path().filename().string());
    auto c = load_file_ok(entry.path());
    for (auto const& w : c.warnings)
      EXPECT_TRUE(w.message.find("TypeScript gateway") != std::string::npos ||
                  w.message.find("scheduler.maxInflightTokens") != std::string::npos)
          << w.message;
    ++n;
  }
  EXPECT_EQ(n, 8);
}

TEST(Loader, EveryExampleConfigLoads) {
  int n = 0;
  for (auto const& entry : fs::directory_iterator(fs::path(RAY_SOURCE_DIR) / "examples" / "config")) {
    if (entry.path().extension() != ".json") continue;
    SCOPED_TRACE(entry.path().filename().string());
    load_file_ok(entry.path());
    ++n;
  }
  EXPECT_GE(n, 9);
}

TEST(Loader, TheSub1bFileHasItsInflightTokensCappedToTheKvPoolWithAWarning) {
  auto c = load_file_ok(upstream("ray.sub1b.json"));
  EXPECT_EQ(c.cfg.scheduler.max_inflight_tokens, 3072u);
  ASSERT_TRUE(
      has_warning(c, "scheduler.maxInflightTokens 4096 is above model.adapter.launchProfile.ctxSize 3072"));
  auto const& w = *std::find_if(c.warnings.begin(), c.warnings.end(),
                                [](auto const& w) { return w.message.find("capped") != std::string::npos; });
  EXPECT_EQ(w.fields.at("configured").to_number<std::int64_t>(), 4096);
  EXPECT_EQ(w.fields.at("applied").to_number<std::int64_t>(), 3072);
  EXPECT_EQ(w.fields.at("source").as_string(), "file");
  EXPECT_TRUE(has_warning(c, "model.adapter.promptScaffoldCacheEntries, adaptiveTuning"));
  EXPECT_EQ(c.warnings.size(), 2u);
}

TEST(Loader, The1b8gbPublicFileIsCappedAndListsEveryIgnoredKeyInOneWarning) {
  auto c = load_file_ok(upstream("ray.1b.8gb.generic.public.json"));
  EXPECT_EQ(c.cfg.scheduler.max_inflight_tokens, 4096u);
  EXPECT_TRUE(has_warning(c, "6144 is above model.adapter.launchProfile.ctxSize 4096"));
  EXPECT_TRUE(has_warning(c,
                          "model.operational, model.adapter.promptScaffoldCacheEntries, "
                          "telemetry.includeDebugMetrics, adaptiveTuning"));
  EXPECT_EQ(c.warnings.size(), 2u);
  EXPECT_TRUE(c.cfg.auth.enabled);
  EXPECT_EQ(c.cfg.rate_limit.key_strategy, rc::rate_limit_key::ip_api_key);
  EXPECT_EQ(c.cfg.tags.at("exposure"), "public");
  EXPECT_EQ(c.cfg.model.adapter.launch->threads_batch, 4u);
}

TEST(Loader, TheClassifierFileKeepsItsWarmUpAndNeedsNoCap) {
  auto c = load_file_ok(upstream("ray.sub1b.classifier.json"));
  EXPECT_EQ(c.cfg.scheduler.max_inflight_tokens, 2048u);
  EXPECT_FALSE(has_warning(c, "capped"));
  EXPECT_TRUE(has_warning(c, "model.operational, model.adapter.promptScaffoldCacheEntries"));
  ASSERT_EQ(c.cfg.model.adapter.warmup_requests.size(), 1u);
  auto const& w = c.cfg.model.adapter.warmup_requests[0];
  EXPECT_EQ(w.template_id, "email.reply_classification.v1");
  EXPECT_EQ(w.template_variables.at("replyText"), "Send pricing and implementation details.");
  EXPECT_EQ(w.max_tokens, 64u);
  EXPECT_EQ(w.seed, 11);
  EXPECT_EQ(c.cfg.model.id, "qwen2.5-0.5b-instruct-q4_k_m") << "from the sub1b profile";
}

TEST(Loader, FilesWithoutTypeScriptExtrasLoadWithoutWarnings) {
  for (auto name : {"ray.tiny.json", "ray.vps.json", "ray.balanced.json", "ray.1b.generic.json"}) {
    SCOPED_TRACE(name);
    auto c = load_file_ok(upstream(name));
    EXPECT_TRUE(c.warnings.empty()) << c.warnings.front().message;
  }
}

TEST(Loader, TheGeneric1bFileOverridesOnlyWhatItNames) {
  auto c = load_file_ok(upstream("ray.1b.generic.json"));
  EXPECT_EQ(c.cfg.profile, "1b");
  EXPECT_EQ(c.cfg.model.id, "local-1b-q4");
  EXPECT_EQ(c.cfg.model.adapter.launch->model_path, "/var/lib/ray/models/local-1b-q4.gguf");
  EXPECT_EQ(c.cfg.model.adapter.launch->ctx_size, 2048u);
  EXPECT_EQ(c.cfg.scheduler.max_queue, 40u);
  EXPECT_EQ(c.sources.at("scheduler.maxQueue"), "profile:1b");
  EXPECT_EQ(c.sources.at("model.id"), "file");
}

// --- profile choice ---

TEST(Loader, WithoutAFileTheProfileIsTiny) {
  auto r = rc::load("", {}, {});
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->cfg.profile, "tiny");
  EXPECT_EQ(r->sources.at("profile"), "profile:tiny");
  EXPECT_TRUE(r->warnings.empty());
}

TEST(Loader, AFileWithoutAProfileMeansSub1b) {
  auto c = load_ok(R"({"server":{"port":3100}})");
  EXPECT_EQ(c.cfg.profile, "sub1b");
}

TEST(Loader, RayProfileChoosesWhenTheFileNamesNone) {
  auto c = load_ok(R"({"server":{"port":3100}})", {{"RAY_PROFILE", "vps"}});
  EXPECT_EQ(c.cfg.profile, "vps");
  EXPECT_EQ(c.sources.at("profile"), "env:RAY_PROFILE");
  auto r = rc::load("", {{"RAY_PROFILE", "balanced"}}, {});
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->cfg.profile, "balanced");
}

TEST(Loader, TheFileProfileBeatsRayProfile) {
  auto c = load_ok(R"({"profile":"tiny"})", {{"RAY_PROFILE", "vps"}});
  EXPECT_EQ(c.cfg.profile, "tiny");
  EXPECT_EQ(c.sources.at("profile"), "file");
}

TEST(Loader, TheProfileFlagBeatsTheFile) {
  rc::flag_overrides f;
  f.profile = "balanced";
  auto c = load_ok(R"({"profile":"tiny"})", {{"RAY_PROFILE", "vps"}}, f);
  EXPECT_EQ(c.cfg.profile, "balanced");
  EXPECT_EQ(c.cfg.scheduler.max_queue, 160u);
  EXPECT_EQ(c.sources.at("profile"), "flag:--profile");
}

TEST(Loader, AnUnknownProfileFromAnySourceIsAnErrorNamingIt) {
  rc::flag_overrides f;
  f.profile = "1B";
  auto flag = rc::load("", {}, f);
  ASSERT_FALSE(flag.has_value());
  EXPECT_EQ(flag.error().message.rfind("profile: \"1B\" is not a known profile", 0), 0u)
      << flag.error().message;
  EXPECT_NE(flag.error().message.find("did you mean \"1b\"? (set by --profile)"), std::string::npos)
      << flag.error().message;
  auto env = rc::load("", {{"RAY_PROFILE", "tinyy"}}, {});
  ASSERT_FALSE(env.has_value());
  EXPECT_NE(env.error().message.find("(set by RAY_PROFILE)"), std::string::npos) << env.error().message;
}

// --- precedence and sources ---

TEST(Loader, FileThenEnvThenFlagsWinInThatOrderAndEachIsRecorded) {
  std::string const file = R"({"profile":"tiny","server":{"port":4000},"scheduler":{"maxQueue":20}})";
  auto from_file = load_ok(file);
  EXPECT_EQ(from_file.cfg.server.port, 4000u);
  EXPECT_EQ(from_file.sources.at("server.port"), "file");

  rc::env_map env{{"RAY_PORT", "5000"}};
  auto from_env = load_ok(file, env);
  EXPECT_EQ(from_env.cfg.server.port, 5000u);
  EXPECT_EQ(from_env.sources.at("server.port"), "env:RAY_PORT");

  rc::flag_overrides flags;
  flags.port = 6000;
  auto from_flag = load_ok(file, env, flags);
  EXPECT_EQ(from_flag.cfg.server.port, 6000u);
  EXPECT_EQ(from_flag.sources.at("server.port"), "flag:--port");

  EXPECT_EQ(from_flag.cfg.scheduler.max_queue, 20u);
  EXPECT_EQ(from_flag.sources.at("scheduler.maxQueue"), "file");
  EXPECT_EQ(from_flag.sources.at("scheduler.concurrency"), "profile:tiny");
}

TEST(Loader, PortZeroFromAFlagIsAllowed) {
  rc::flag_overrides flags;
  flags.port = 0;
  auto r = rc::load("", {}, flags);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->cfg.server.port, 0u);
}

TEST(Loader, AFlagValueIsValidatedAndNamesTheFlag) {
  rc::flag_overrides flags;
  flags.port = 70000;
  auto r = rc::load("", {}, flags);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().message, "server.port: 70000 is above the maximum 65535 (set by --port)");
}

// Found by tests/fuzz/config_fuzz: a flag value that is not UTF-8 loaded, and the effective config it made
// was not valid JSON (`ray config show`, /v1/config could not be parsed). It is refused, naming the key.
TEST(Loader, AValueThatIsNotUtf8IsRefusedNamingTheKey) {
  rc::flag_overrides flags;
  flags.model_path = "/models/small.gguf";
  flags.llama_server =
      "/usr/bin/llama-ser\xc8"
      "er";
  auto r = rc::load("", {}, flags);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("is not valid UTF-8"), std::string::npos) << r.error().message;
  EXPECT_EQ(r.error().param, "model.adapter.launchProfile.binaryPath");
  flags.llama_server = "/usr/bin/llama-s\xc3\xa9rver";  // é: UTF-8 is fine
  auto ok = rc::load("", {}, flags);
  EXPECT_TRUE(ok.has_value()) << ok.error().message;
}

// --- environment ---

TEST(Loader, BooleanEnvironmentValuesAcceptTheUsualWords) {
  for (auto word : {"1", "true", "yes", "on", "TRUE", "On"}) {
    auto c = load_ok(R"({"profile":"tiny"})", {{"RAY_AUTH_ENABLED", word}});
    EXPECT_TRUE(c.cfg.auth.enabled) << word;
  }
  for (auto word : {"0", "false", "no", "off", "NO"}) {
    auto c = load_ok(R"({"profile":"tiny","auth":{"enabled":true}})", {{"RAY_AUTH_ENABLED", word}});
    EXPECT_FALSE(c.cfg.auth.enabled) << word;
  }
}

TEST(Loader, AnUnrecognisedBooleanNamesTheVariableAndTheAcceptedWords) {
  EXPECT_EQ(load_error(R"({"profile":"tiny"})", {{"RAY_CACHE_ENABLED", "maybe"}}),
            "cache.enabled: expected a boolean (1/true/yes/on or 0/false/no/off), got \"maybe\" (set by "
            "RAY_CACHE_ENABLED)");
}

TEST(Loader, ABlankVariableCountsAsUnset) {
  auto c = load_ok(R"({"profile":"tiny","server":{"port":4000}})",
                   {{"RAY_PORT", "  "}, {"RAY_CACHE_ENABLED", ""}});
  EXPECT_EQ(c.cfg.server.port, 4000u);
  EXPECT_TRUE(c.cfg.cache.enabled);
}

TEST(Loader, ListVariablesAreCommaSeparatedAndTrimmed) {
  auto c = load_ok(R"({"profile":"tiny"})",
                   {{"RAY_PROMPT_COMPILER_FAMILY_METADATA_KEYS", " campaign, useCase ,,"},
                    {"RAY_ASYNC_QUEUE_CALLBACK_ALLOWED_HOSTS", "hooks.example.com,*.corp.example"}});
  EXPECT_EQ(c.cfg.prompt_compiler.family_metadata_keys, (std::vector<std::string>{"campaign", "useCase"}));
  EXPECT_EQ(c.cfg.async_queue.callback_allowed_hosts,
            (std::vector<std::string>{"hooks.example.com", "*.corp.example"}));
}

TEST(Loader, EnvironmentOverridesAreValidatedByTheSameRulesAsTheFile) {
  EXPECT_EQ(load_error(R"({"profile":"tiny"})", {{"RAY_SCHEDULER_MAX_QUEUE", "0"}}),
            "scheduler.maxQueue: 0 is below the minimum 1 (set by RAY_SCHEDULER_MAX_QUEUE)");
  EXPECT_EQ(load_error(R"({"profile":"tiny"})", {{"RAY_SCHEDULER_MAX_QUEUE", "lots"}}),
            "scheduler.maxQueue: expected an integer, got \"lots\" (set by RAY_SCHEDULER_MAX_QUEUE)");
  EXPECT_EQ(load_error(R"({"profile":"tiny"})", {{"RAY_LOG_LEVEL", "loud"}}),
            "telemetry.logLevel: \"loud\" is not one of \"debug\", \"info\", \"warn\", \"error\" (set by "
            "RAY_LOG_LEVEL)");
  EXPECT_EQ(load_error(R"({"profile":"tiny"})", {{"RAY_DEGRADATION_CPU_THROTTLED_RATIO_THRESHOLD", "2"}}),
            "gracefulDegradation.cpuThrottledRatioThreshold: 2 is outside (0, 1] (set by "
            "RAY_DEGRADATION_CPU_THROTTLED_RATIO_THRESHOLD)");
}

TEST(Loader, EveryDocumentedVariableReachesItsField) {
  rc::env_map env{{"RAY_HOST", "0.0.0.0"},
                  {"RAY_REQUEST_BODY_LIMIT_BYTES", "50000"},
                  {"RAY_LOG_LEVEL", "debug"},
                  {"RAY_MODEL_ID", "m"},
                  {"RAY_MODEL_WARM_ON_BOOT", "no"},
                  {"RAY_MODEL_MAX_OUTPUT_TOKENS", "200"},
                  {"RAY_MODEL_REF", "ref"},
                  {"RAY_MODEL_TIMEOUT_MS", "15000"},
                  {"RAY_SCHEDULER_REQUEST_TIMEOUT_MS", "19000"},
                  {"RAY_CACHE_KEY_STRATEGY", "input"},
                  {"RAY_CACHE_MAX_BYTES", "3000000"},
                  {"RAY_DEGRADATION_MAX_TOKENS", "100"},
                  {"RAY_DEGRADATION_MEMORY_PSI_SOME_AVG10_THRESHOLD", "12.5"},
                  {"RAY_ASYNC_QUEUE_ENABLED", "on"},
                  {"RAY_ASYNC_QUEUE_COMPLETED_TTL_MS", "3600000"},
                  {"RAY_RATE_LIMIT_KEY_STRATEGY", "ip+api-key"},
                  {"RAY_LLAMA_CPP_CTX_SIZE", "4096"},
                  {"RAY_LLAMA_CPP_CACHE_RAM_MIB", "-1"},
                  {"RAY_LLAMA_CPP_ENABLE_UNIFIED_KV", "yes"}};
  auto c = load_ok(R"({"profile":"sub1b"})", env);
  EXPECT_EQ(c.cfg.server.host, "0.0.0.0");
  EXPECT_EQ(c.cfg.server.request_body_limit_bytes, 50000u);
  EXPECT_EQ(c.cfg.telemetry.level, rc::log_level::debug);
  EXPECT_EQ(c.cfg.model.id, "m");
  EXPECT_FALSE(c.cfg.model.warm_on_boot);
  EXPECT_EQ(c.cfg.model.max_output_tokens, 200u);
  EXPECT_EQ(c.cfg.model.adapter.model_ref, "ref");
  EXPECT_EQ(c.cfg.model.adapter.timeout_ms, 15000u);
  EXPECT_EQ(c.cfg.scheduler.request_timeout_ms, 19000u);
  EXPECT_EQ(c.cfg.cache.key_strategy, rc::cache_key_strategy::input);
  EXPECT_EQ(c.cfg.cache.max_bytes, 3000000u);
  EXPECT_EQ(c.cfg.graceful_degradation.degrade_to_max_tokens, 100u);
  EXPECT_DOUBLE_EQ(c.cfg.graceful_degradation.memory_psi_some_avg10_threshold, 12.5);
  EXPECT_TRUE(c.cfg.async_queue.enabled);
  EXPECT_EQ(c.cfg.async_queue.completed_ttl_ms, 3600000u);
  EXPECT_EQ(c.cfg.rate_limit.key_strategy, rc::rate_limit_key::ip_api_key);
  auto const& l = *c.cfg.model.adapter.launch;
  EXPECT_EQ(l.ctx_size, 4096u);
  EXPECT_EQ(l.cache_ram_mib, -1);
  EXPECT_TRUE(l.enable_unified_kv);
  EXPECT_EQ(l.model_path, "/var/lib/ray/models/ref.gguf") << "the derived GGUF path follows modelRef";
  EXPECT_EQ(l.alias, "ref");
  EXPECT_TRUE(c.warnings.empty()) << c.warnings.front().message;
  EXPECT_EQ(c.sources.at("model.adapter.launchProfile.ctxSize"), "env:RAY_LLAMA_CPP_CTX_SIZE");
}

TEST(Loader, UnknownRayVariablesGiveOneWarningWithSuggestions) {
  auto c = load_ok(R"({"profile":"tiny"})", {{"RAY_SCHEDULER_MAX_QUEU", "5"}, {"RAY_WHATEVER", "x"}});
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_EQ(c.warnings[0].message,
            "ignoring unknown RAY_* environment variables: RAY_SCHEDULER_MAX_QUEU (did you mean "
            "RAY_SCHEDULER_MAX_QUEUE?), RAY_WHATEVER");
  EXPECT_EQ(c.warnings[0].fields.at("variables").as_array().size(), 2u);
  EXPECT_EQ(c.warnings[0].message.find("5"), std::string::npos) << "values are never reported";
}

TEST(Loader, KeyVariablesAndOtherKnownNamesAreNotUnknown) {
  auto c = load_ok(
      R"({"profile":"tiny","auth":{"apiKeyEnv":"RAY_GATEWAY_KEYS"}})",
      {{"RAY_API_KEYS", "k1"}, {"RAY_GATEWAY_KEYS", "k2"}, {"RAY_PROFILE", "vps"}, {"HOME", "/root"}});
  EXPECT_TRUE(c.warnings.empty()) << c.warnings.front().message;
}

TEST(Loader, LlamaCppHostAndPortMoveTheBaseUrlWhenNoBaseUrlVariableIsSet) {
  auto c = load_ok(R"({"profile":"sub1b"})", {{"RAY_LLAMA_CPP_PORT", "8090"}});
  EXPECT_EQ(c.cfg.model.adapter.launch->port, 8090u);
  EXPECT_EQ(c.cfg.model.adapter.base_url, "http://127.0.0.1:8090");
  EXPECT_EQ(c.sources.at("model.adapter.baseUrl"), "env:RAY_LLAMA_CPP_PORT");

  auto moved_over_file =
      load_ok(R"({"profile":"sub1b","model":{"adapter":{"baseUrl":"http://127.0.0.1:8081"}}})",
              {{"RAY_LLAMA_CPP_HOST", "localhost"}, {"RAY_LLAMA_CPP_PORT", "8095"}});
  EXPECT_EQ(moved_over_file.cfg.model.adapter.base_url, "http://localhost:8095");

  auto explicit_url = load_error(R"({"profile":"sub1b"})", {{"RAY_LLAMA_CPP_PORT", "8090"},
                                                            {"RAY_MODEL_BASE_URL", "http://127.0.0.1:8081"}});
  EXPECT_EQ(explicit_url,
            "model.adapter.baseUrl: \"http://127.0.0.1:8081\" does not match launchProfile host:port "
            "127.0.0.1:8090 "
            "(set by RAY_MODEL_BASE_URL)");
}

TEST(Loader, RayModelBaseUrlWinsOverItsLlamaCppAlias) {
  auto c = load_ok(R"({"profile":"vps"})", {{"RAY_LLAMA_CPP_BASE_URL", "http://127.0.0.1:9001"},
                                            {"RAY_MODEL_BASE_URL", "http://127.0.0.1:9002"}});
  EXPECT_EQ(c.cfg.model.adapter.base_url, "http://127.0.0.1:9002");
  EXPECT_EQ(c.sources.at("model.adapter.baseUrl"), "env:RAY_MODEL_BASE_URL");
}

TEST(Loader, LaunchVariablesAreIgnoredWithAWarningWithoutALlamaCppLaunchProfile) {
  auto c = load_ok(R"({"profile":"vps"})",
                   {{"RAY_LLAMA_CPP_CTX_SIZE", "99999999"}, {"RAY_MODEL_PATH", "/m.gguf"}});
  EXPECT_FALSE(c.cfg.model.adapter.launch.has_value());
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_NE(c.warnings[0].message.find("RAY_MODEL_PATH, RAY_LLAMA_CPP_CTX_SIZE"), std::string::npos)
      << c.warnings[0].message;
}

// --- flags ---

TEST(Loader, BackendUrlSelectsTheLlamaCppAdapterAtThatUrl) {
  rc::flag_overrides f;
  f.backend_url = "http://127.0.0.1:8080";
  auto r = rc::load("", {}, f);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->cfg.model.adapter.kind, rc::adapter_kind::llama_cpp);
  EXPECT_EQ(r->cfg.model.adapter.base_url, "http://127.0.0.1:8080");
  EXPECT_EQ(r->sources.at("model.adapter.kind"), "flag:--backend-url");
  EXPECT_FALSE(r->cfg.model.adapter.launch.has_value());
}

TEST(Loader, ModelPathCreatesASupervisedLaunchProfile) {
  rc::flag_overrides f;
  f.model_path = "/models/small.gguf";
  f.llama_server = "/opt/llama/llama-server";
  auto r = rc::load("", {{"RAY_MODEL_PATH", "/ignored.gguf"}, {"RAY_LLAMA_CPP_THREADS", "1"}}, f);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  auto const& a = r->cfg.model.adapter;
  EXPECT_EQ(a.kind, rc::adapter_kind::llama_cpp);
  ASSERT_TRUE(a.launch.has_value());
  EXPECT_EQ(a.launch->model_path, "/models/small.gguf") << "the flag beats RAY_MODEL_PATH";
  EXPECT_TRUE(a.launch->supervise);
  EXPECT_EQ(a.launch->binary_path, "/opt/llama/llama-server");
  EXPECT_EQ(a.launch->threads, 1u) << "launch variables apply to a launch profile made by a flag";
  EXPECT_EQ(a.base_url, "http://127.0.0.1:8081");
  EXPECT_EQ(r->sources.at("model.adapter.launchProfile.modelPath"), "flag:--model-path");
  EXPECT_EQ(r->sources.at("model.adapter.launchProfile.binaryPath"), "flag:--llama-server");
  EXPECT_EQ(r->sources.at("model.adapter.launchProfile.ctxSize"), "flag:--model-path");
}

TEST(Loader, ModelPathWithBackendUrlSupervisesAtThatAddress) {
  rc::flag_overrides f;
  f.model_path = "/models/small.gguf";
  f.backend_url = "http://127.0.0.1:8099";
  auto r = rc::load("", {}, f);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->cfg.model.adapter.launch->port, 8099u);
}

TEST(Loader, LlamaServerWithoutALaunchProfileIsAnError) {
  rc::flag_overrides f;
  f.llama_server = "/opt/llama-server";
  auto r = rc::load("", {}, f);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("(set by --llama-server)"), std::string::npos) << r.error().message;
}

TEST(Loader, HostAndPublicFlagsSetTheServer) {
  rc::flag_overrides f;
  f.host = "0.0.0.0";
  f.allow_unauthenticated_public = true;
  auto r = rc::load("", {}, f);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->cfg.server.host, "0.0.0.0");
  EXPECT_TRUE(r->cfg.server.allow_unauthenticated_public);
  EXPECT_EQ(r->sources.at("server.allowUnauthenticatedPublic"), "flag:--allow-unauthenticated-public");
}

// --- the file itself ---

TEST_F(LoaderFiles, AMissingFileIsAClearError) {
  auto r = rc::load((dir_ / "nope.json").string(), {}, {});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("nope.json\": not found"), std::string::npos) << r.error().message;
}

TEST_F(LoaderFiles, ADirectoryIsNotARegularFile) {
  auto r = rc::load(dir_.string(), {}, {});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("not a regular file"), std::string::npos) << r.error().message;
}

TEST_F(LoaderFiles, AFileAbove256KiBIsRejected) {
  auto p = write("big.json", "{\"tags\":{\"a\":\"" + std::string(300 * 1024, 'x') + "\"}}");
  auto r = rc::load(p.string(), {}, {});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("is above the limit of 262144 bytes (256 KiB)"), std::string::npos)
      << r.error().message;
}

TEST_F(LoaderFiles, InvalidJsonReportsTheLineAndColumn) {
  auto p = write("bad.json", "{\n  \"profile\": \"tiny\",\n  \"server\": { \"port\": 30x0 }\n}\n");
  auto r = rc::load(p.string(), {}, {});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("invalid JSON at line 3, column"), std::string::npos) << r.error().message;
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
}

TEST_F(LoaderFiles, ATopLevelValueThatIsNotAnObjectIsRejected) {
  auto p = write("array.json", "[1,2]");
  auto r = rc::load(p.string(), {}, {});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("expected a JSON object at the top level"), std::string::npos);
}

TEST_F(LoaderFiles, TruncatedJsonIsRejected) {
  auto p = write("short.json", R"({"profile":"tiny")");
  auto r = rc::load(p.string(), {}, {});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("invalid JSON at line 1"), std::string::npos) << r.error().message;
}

// --- the process environment ---

TEST(Loader, ProcessEnvironmentCollectsRayVariablesAndNamedOnes) {
  ::setenv("RAY_CONFIG_TEST_PROBE", "1", 1);
  ::setenv("CONFIG_TEST_KEYS", "k", 1);
  auto plain = rc::process_environment();
  auto with_extra = rc::process_environment({"CONFIG_TEST_KEYS"});
  ::unsetenv("RAY_CONFIG_TEST_PROBE");
  ::unsetenv("CONFIG_TEST_KEYS");
  EXPECT_EQ(plain.at("RAY_CONFIG_TEST_PROBE"), "1");
  EXPECT_FALSE(plain.contains("CONFIG_TEST_KEYS"));
  EXPECT_FALSE(plain.contains("PATH"));
  EXPECT_EQ(with_extra.at("CONFIG_TEST_KEYS"), "k");
}

TEST(Loader, ReferencedEnvNamesAreTheSecretVariablesOfTheConfig) {
  auto c = load_ok(R"({"profile":"vps","model":{"adapter":{"apiKeyEnv":"UPSTREAM_KEY"}},
                      "asyncQueue":{"callbackSecretEnv":"CB_SECRET","store":"postgres",
                                    "postgresUrlEnv":"RAY_JOBS_PG_URL"}})");
  EXPECT_EQ(rc::referenced_env_names(c.cfg),
            (std::vector<std::string>{"RAY_API_KEYS", "UPSTREAM_KEY", "CB_SECRET", "RAY_JOBS_PG_URL"}));
}

TEST(Loader, ThePostgresJobStoreKeysComeFromTheFileOrTheEnvironmentAndTheUrlStaysInItsVariable) {
  auto defaults = load_ok(R"({"profile":"tiny"})");
  EXPECT_EQ(defaults.cfg.async_queue.store, rc::job_store_kind::sqlite);
  EXPECT_FALSE(defaults.cfg.async_queue.postgres_url_env.has_value());
  EXPECT_EQ(defaults.cfg.async_queue.lease_ms, 30000u);

  // The URL variable may itself be a RAY_* name: it is referenced, so it is no unknown-variable warning.
  rc::env_map env{{"RAY_ASYNC_QUEUE_STORE", "postgres"},
                  {"RAY_ASYNC_QUEUE_POSTGRES_URL_ENV", "RAY_JOBS_PG_URL"},
                  {"RAY_ASYNC_QUEUE_LEASE_MS", "2000"},
                  {"RAY_JOBS_PG_URL", "postgresql://ray:hunter2-pg@db.internal/jobs"}};
  auto c = load_ok(R"({"profile":"tiny"})", env);
  EXPECT_EQ(c.cfg.async_queue.store, rc::job_store_kind::postgres);
  EXPECT_EQ(c.cfg.async_queue.postgres_url_env, "RAY_JOBS_PG_URL");
  EXPECT_EQ(c.cfg.async_queue.lease_ms, 2000u);
  for (auto const& w : c.warnings)
    EXPECT_EQ(w.message.find("RAY_JOBS_PG_URL"), std::string::npos) << w.message;
  auto const shown = boost::json::serialize(rc::to_public_json(c)) + rc::explain(c);
  EXPECT_EQ(shown.find("hunter2-pg"), std::string::npos) << "the connection string is never shown";
  EXPECT_NE(shown.find("RAY_JOBS_PG_URL"), std::string::npos) << "the variable's name is";

  EXPECT_EQ(load_error(R"({"profile":"tiny"})", {{"RAY_ASYNC_QUEUE_LEASE_MS", "100"}}),
            "asyncQueue.leaseMs: 100 is below the minimum 1000 (set by RAY_ASYNC_QUEUE_LEASE_MS)");
}

}  // namespace

namespace {
TEST(LoaderBackendUrl, AttachingMovesTheFilesLaunchProfileToTheAttachedPort) {
  ray::config::flag_overrides flags;
  flags.backend_url = "http://127.0.0.1:18999";
  auto r = ray::config::load_from_text(
      R"({"profile":"sub1b","model":{"adapter":{"kind":"llama.cpp","baseUrl":"http://127.0.0.1:8081",
          "launchProfile":{"host":"127.0.0.1","port":8081,"ctxSize":3072,"parallel":2}}}})",
      {}, flags);
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_TRUE(r->cfg.model.adapter.launch.has_value());
  EXPECT_EQ(r->cfg.model.adapter.launch->port, 18999u);
  EXPECT_EQ(r->cfg.model.adapter.launch->ctx_size, 3072u);
  EXPECT_EQ(r->sources.at("model.adapter.launchProfile.port"), "flag:--backend-url");
}

TEST(LoaderBackendUrl, AttachingToANonLoopbackServerDropsTheLaunchProfile) {
  ray::config::flag_overrides flags;
  flags.backend_url = "http://10.0.0.5:8080";
  auto r = ray::config::load_from_text(R"({"profile":"sub1b"})", {}, flags);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->cfg.model.adapter.launch.has_value());
}
}  // namespace
