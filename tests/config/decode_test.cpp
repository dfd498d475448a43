// The JSON decoder, exercised through load_from_text: types, paths in messages, unknown keys, merging.
#include "ray/config/config.hpp"

#include <gtest/gtest.h>

namespace {

namespace rc = ray::config;

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
  if (r.has_value()) return {};
  EXPECT_EQ(r.error().code, ray::errc::invalid_request);
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << "errors are one line";
  return r.error().message;
}

TEST(Decode, ATypoedKeyFailsNamingItsPathAndTheClosestValidKey) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","scheduler":{"maxQueu":5}})"),
            "scheduler.maxQueu: unknown key, did you mean \"maxQueue\"?");
}

TEST(Decode, ATypoDeepInsideTheLaunchProfileNamesTheFullPath) {
  EXPECT_EQ(load_error(R"({"profile":"sub1b","model":{"adapter":{"launchProfile":{"ctxsize":2048}}}})"),
            "model.adapter.launchProfile.ctxsize: unknown key, did you mean \"ctxSize\"?");
}

TEST(Decode, ASnakeCaseKeySuggestsItsCamelCaseForm) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","server":{"request_body_limit_bytes":1000}})"),
            "server.request_body_limit_bytes: unknown key, did you mean \"requestBodyLimitBytes\"?");
}

TEST(Decode, AnUnknownKeyFarFromAnyValidOneListsTheValidKeys) {
  auto msg = load_error(R"({"profile":"tiny","cache":{"flavour":"vanilla"}})");
  EXPECT_EQ(msg.rfind("cache.flavour: unknown key (valid keys here: enabled, maxEntries", 0), 0u) << msg;
}

TEST(Decode, AnUnknownTopLevelSectionIsAnError) {
  auto msg = load_error(R"({"profile":"tiny","schedular":{}})");
  EXPECT_EQ(msg, "schedular: unknown key, did you mean \"scheduler\"?");
}

TEST(Decode, AStringWhereAnIntegerBelongsNamesTheFieldAndTheValue) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","scheduler":{"maxQueue":"x"}})"),
            "scheduler.maxQueue: expected an integer, got \"x\"");
}

TEST(Decode, AFractionalNumberIsNotAnInteger) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","server":{"port":3000.5}})"),
            "server.port: expected an integer, got 3000.5");
}

TEST(Decode, AWholeNumberWrittenAsAFloatIsAnInteger) {
  auto c = load_ok(R"({"profile":"tiny","scheduler":{"maxQueue":64.0}})");
  EXPECT_EQ(c.cfg.scheduler.max_queue, 64u);
}

TEST(Decode, ANegativeValueForAnUnsignedFieldIsBelowTheMinimum) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","cache":{"ttlMs":-5}})"),
            "cache.ttlMs: -5 is below the minimum 0");
}

TEST(Decode, AValueTooLargeForItsFieldIsAboveTheMaximum) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","cache":{"ttlMs":99999999999}})"),
            "cache.ttlMs: 99999999999 is above the maximum 4294967295");
}

TEST(Decode, BooleansMustBeJsonBooleansInTheFile) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","auth":{"enabled":"yes"}})"),
            "auth.enabled: expected a boolean, got \"yes\"");
}

TEST(Decode, AnEnumValueOutsideItsChoicesListsThem) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","model":{"adapter":{"kind":"vllm"}}})"),
            "model.adapter.kind: \"vllm\" is not one of \"mock\", \"openai-compatible\", \"llama.cpp\"");
  EXPECT_EQ(load_error(R"({"profile":"tiny","telemetry":{"logLevel":"verbose"}})"),
            "telemetry.logLevel: \"verbose\" is not one of \"debug\", \"info\", \"warn\", \"error\"");
}

TEST(Decode, ASectionThatIsNotAnObjectIsAnError) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","server":[]})"), "server: expected an object, got []");
}

TEST(Decode, ArrayElementsAreNamedByIndex) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","promptCompiler":{"familyMetadataKeys":["a",2]}})"),
            "promptCompiler.familyMetadataKeys[1]: expected a string, got 2");
}

TEST(Decode, ObjectsMergeDeeplyOverTheProfile) {
  auto c = load_ok(
      R"({"profile":"sub1b","scheduler":{"maxQueue":50},"model":{"adapter":{"launchProfile":{"threads":1}}}})");
  EXPECT_EQ(c.cfg.scheduler.max_queue, 50u);
  EXPECT_EQ(c.cfg.scheduler.concurrency, 2u);            // from the profile
  EXPECT_EQ(c.cfg.scheduler.max_queued_tokens, 24000u);  // from the profile
  ASSERT_TRUE(c.cfg.model.adapter.launch.has_value());
  EXPECT_EQ(c.cfg.model.adapter.launch->threads, 1u);
  EXPECT_EQ(c.cfg.model.adapter.launch->ctx_size, 3072u);  // from the profile
}

TEST(Decode, ArraysReplaceInsteadOfMerging) {
  auto c = load_ok(R"({"profile":"tiny","promptCompiler":{"familyMetadataKeys":["campaign"]}})");
  EXPECT_EQ(c.cfg.prompt_compiler.family_metadata_keys, std::vector<std::string>{"campaign"});
}

TEST(Decode, StringMapsMergeByKey) {
  auto c = load_ok(R"({"profile":"tiny","tags":{"a":"1","b":"2"}})");
  EXPECT_EQ(c.cfg.tags.size(), 2u);
  EXPECT_EQ(c.cfg.tags.at("b"), "2");
}

TEST(Decode, NullResetsAnOptionalFieldToItsFallback) {
  auto c =
      load_ok(R"({"profile":"tiny","openai":{"defaultMaxTokens":null},"scheduler":{"queueTimeoutMs":500}})");
  EXPECT_FALSE(c.cfg.openai.default_max_tokens.has_value());
  EXPECT_EQ(c.cfg.scheduler.queue_timeout_ms, 500u);
}

TEST(Decode, NullRemovesTheLaunchProfileOfTheProfile) {
  auto c = load_ok(R"({"profile":"sub1b","model":{"adapter":{"launchProfile":null}}})");
  EXPECT_FALSE(c.cfg.model.adapter.launch.has_value());
  EXPECT_EQ(c.cfg.scheduler.max_inflight_tokens, 4096u) << "no launch profile, no cap";
}

TEST(Decode, ALaunchProfileNamedByTheFileIsCreatedWithDefaults) {
  auto c = load_ok(
      R"({"profile":"vps","model":{"adapter":{"kind":"llama.cpp","modelRef":"m","launchProfile":{"port":8090,"ctxSize":8192,"parallel":2}}}})");
  auto const& a = c.cfg.model.adapter;
  ASSERT_TRUE(a.launch.has_value());
  EXPECT_EQ(a.launch->port, 8090u);
  EXPECT_EQ(a.launch->batch_size, 256u);
  EXPECT_EQ(a.launch->model_path, "/var/lib/ray/models/m.gguf");
  EXPECT_EQ(a.base_url, "http://127.0.0.1:8090") << "an unset llama.cpp baseUrl follows the launch profile";
  EXPECT_EQ(c.sources.at("model.adapter.launchProfile.batchSize"), "file");
}

TEST(Decode, TypeScriptEraKeysAreAcceptedAndReportedInOneWarning) {
  auto c = load_ok(R"({"profile":"tiny",
    "model":{"operational":{"anything":1},"adapter":{"promptScaffoldCacheEntries":256}},
    "telemetry":{"includeDebugMetrics":true},
    "adaptiveTuning":{"enabled":true}})");
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_NE(c.warnings[0].message.find(
                "model.operational, model.adapter.promptScaffoldCacheEntries, telemetry.includeDebugMetrics, "
                "adaptiveTuning"),
            std::string::npos)
      << c.warnings[0].message;
  EXPECT_EQ(c.warnings[0].fields.at("keys").as_array().size(), 4u);
}

TEST(Decode, AConfigTemplateNeedsItsRequiredKeys) {
  EXPECT_EQ(
      load_error(
          R"({"profile":"tiny","prompts":{"templates":{"t.v1":{"family":"f","lane":"short","variables":[]}}}})"),
      "prompts.templates.t.v1: missing required key \"input\"");
}

TEST(Decode, AConfigTemplateLaneIsShortOrDraft) {
  EXPECT_EQ(
      load_error(
          R"({"profile":"tiny","prompts":{"templates":{"t.v1":{"family":"f","lane":"long","input":"x","variables":[]}}}})"),
      "prompts.templates.t.v1.lane: \"long\" is not one of \"short\", \"draft\"");
}

TEST(Decode, WarmUpRequestsRejectUnknownFields) {
  EXPECT_EQ(
      load_error(
          R"({"profile":"sub1b","model":{"adapter":{"warmupRequests":[{"input":"hi","maxTokenz":4}]}}})"),
      "model.adapter.warmupRequests[0].maxTokenz: unknown key, did you mean \"maxTokens\"?");
}

TEST(Decode, TheFileProfileMustBeAKnownName) {
  EXPECT_EQ(
      load_error(R"({"profile":"sub1","server":{}})"),
      "profile: \"sub1\" is not a known profile (expected one of tiny, sub1b, sub1b-cax11, 1b, 1b-8gb, vps, "
      "balanced), did you mean \"sub1b\"?");
}

}  // namespace

// Issue 12: cache.scope (global | key), default key; the slow-client limits of server.*.
TEST(Decode, CacheScopeDefaultsToKeyAndAcceptsGlobal) {
  EXPECT_EQ(load_ok(R"({"profile":"tiny"})").cfg.cache.scope, rc::cache_scope::key);
  EXPECT_EQ(load_ok(R"({"profile":"tiny","cache":{"scope":"global"}})").cfg.cache.scope,
            rc::cache_scope::global);
  auto msg = load_error(R"({"profile":"tiny","cache":{"scope":"tenant"}})");
  EXPECT_NE(msg.find("cache.scope"), std::string::npos) << msg;
  EXPECT_NE(msg.find("global"), std::string::npos) << msg;
}

TEST(Decode, TheSlowClientLimitsAreReadAndRangeChecked) {
  auto c = load_ok(R"({"profile":"tiny","server":{"maxConnectionsPerClient":8,
      "headersTimeoutUnderPressureMs":500,"minBodyBytesPerSecond":0}})");
  EXPECT_EQ(c.cfg.server.max_connections_per_client, 8u);
  EXPECT_EQ(c.cfg.server.headers_timeout_under_pressure_ms, 500u);
  EXPECT_EQ(c.cfg.server.min_body_bytes_per_second, 0u);
  auto msg = load_error(R"({"profile":"tiny","server":{"maxConnectionsPerClient":0}})");
  EXPECT_NE(msg.find("server.maxConnectionsPerClient"), std::string::npos) << msg;
  msg = load_error(R"({"profile":"tiny","server":{"headersTimeoutUnderPressureMs":0}})");
  EXPECT_NE(msg.find("server.headersTimeoutUnderPressureMs"), std::string::npos) << msg;
}

// Found by the secrets test: a wrongly typed secret-bearing value was quoted in the error (stderr, the log).
TEST(Decode, AWronglyTypedSecretBearingValueIsNotQuoted) {
  std::string const digest(64, 'd');
  auto msg = load_error(R"({"profile":"tiny","auth":{"apiKeySha256":")" + digest + R"("}})");
  EXPECT_NE(msg.find("auth.apiKeySha256"), std::string::npos) << msg;
  EXPECT_EQ(msg.find(digest.substr(0, 12)), std::string::npos) << msg;
  msg = load_error(
      R"({"profile":"sub1b","model":{"adapter":{"launchProfile":{"extraArgs":"--api-key hunter22"}}}})");
  EXPECT_EQ(msg.find("hunter22"), std::string::npos) << msg;
}
