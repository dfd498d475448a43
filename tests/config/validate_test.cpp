// Range and cross-field rules (config.md "Sections"): each error names the field, the value and the rule.
#include "ray/config/config.hpp"

#include <gtest/gtest.h>

namespace {

namespace rc = ray::config;

std::string load_error(std::string_view text, rc::env_map const& env = {},
                       rc::flag_overrides const& flags = {}) {
  auto r = rc::load_from_text(text, env, flags);
  EXPECT_FALSE(r.has_value()) << "loaded, expected an error";
  if (r.has_value()) return {};
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << "errors are one line";
  return r.error().message;
}

bool loads(std::string_view text, rc::env_map const& env = {}, rc::flag_overrides const& flags = {}) {
  auto r = rc::load_from_text(text, env, flags);
  EXPECT_TRUE(r.has_value()) << r.error().message;
  return r.has_value();
}

TEST(Validate, ThePostgresJobStoreNeedsTheNameOfItsUrlVariableAndASaneLease) {
  EXPECT_EQ(
      load_error(R"({"profile":"tiny","asyncQueue":{"store":"postgres"}})"),
      "asyncQueue.postgresUrlEnv: is required when asyncQueue.store is \"postgres\": name the environment "
      "variable holding the PostgreSQL connection string (the string itself is never in the config)");
  EXPECT_EQ(
      load_error(R"({"profile":"tiny","asyncQueue":{"store":"postgres","postgresUrlEnv":"not a name"}})")
          .rfind("asyncQueue.postgresUrlEnv: ", 0),
      0u);
  EXPECT_EQ(load_error(R"({"profile":"tiny","asyncQueue":{"store":"mysql"}})"),
            "asyncQueue.store: \"mysql\" is not one of \"sqlite\", \"postgres\"");
  EXPECT_EQ(load_error(R"({"profile":"tiny","asyncQueue":{"leaseMs":999}})"),
            "asyncQueue.leaseMs: 999 is below the minimum 1000");
  EXPECT_EQ(load_error(R"({"profile":"tiny","asyncQueue":{"leaseMs":600001}})"),
            "asyncQueue.leaseMs: 600001 is above the maximum 600000");
  EXPECT_TRUE(
      loads(R"({"profile":"tiny","asyncQueue":{"store":"postgres","postgresUrlEnv":"JOBS_PG_URL"}})"));
  EXPECT_TRUE(loads(R"({"profile":"tiny","asyncQueue":{"store":"sqlite"}})")) << "sqlite needs no URL";
}

TEST(Validate, ConcurrencyMayNotExceedTheLlamaServerSlots) {
  EXPECT_EQ(load_error(R"({"profile":"sub1b","scheduler":{"concurrency":3}})"),
            "scheduler.concurrency: 3 is above model.adapter.launchProfile.parallel 2 (llama-server runs at "
            "most that "
            "many requests at once)");
}

TEST(Validate, MaxOutputTokensMayNotExceedTheContextWindow) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","model":{"maxOutputTokens":5000}})"),
            "model.maxOutputTokens: 5000 is above model.contextWindow 4096");
}

TEST(Validate, TokenBudgetsMustHoldOneFullAnswerPlusAPromptToken) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","scheduler":{"maxInflightTokens":192}})"),
            "scheduler.maxInflightTokens: 192 is below model.maxOutputTokens + 1 = 193");
  EXPECT_EQ(load_error(R"({"profile":"tiny","scheduler":{"maxQueuedTokens":100}})"),
            "scheduler.maxQueuedTokens: 100 is below model.maxOutputTokens + 1 = 193");
  EXPECT_TRUE(loads(R"({"profile":"tiny","scheduler":{"maxInflightTokens":193,"maxQueuedTokens":193}})"));
}

TEST(Validate, TheBatchWindowMustBeShorterThanTheRequestTimeout) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","scheduler":{"batchWindowMs":8000}})"),
            "scheduler.batchWindowMs: 8000 must be below scheduler.requestTimeoutMs 8000");
}

TEST(Validate, AffinityLookaheadMayNotExceedMaxQueue) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","scheduler":{"affinityLookahead":33}})"),
            "scheduler.affinityLookahead: 33 is above scheduler.maxQueue 32");
}

TEST(Validate, TheDegradationQueueDepthMustBeBelowMaxQueue) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","gracefulDegradation":{"queueDepthThreshold":32}})"),
            "gracefulDegradation.queueDepthThreshold: 32 must be below scheduler.maxQueue 32");
}

TEST(Validate, DegradeToMaxTokensMayNotExceedMaxOutputTokens) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","gracefulDegradation":{"degradeToMaxTokens":200}})"),
            "gracefulDegradation.degradeToMaxTokens: 200 is above model.maxOutputTokens 192");
}

TEST(Validate, TheLaunchContextMayNotExceedTheModelContextWindow) {
  EXPECT_EQ(load_error(R"({"profile":"sub1b","model":{"contextWindow":2048}})"),
            "model.adapter.launchProfile.ctxSize: 3072 is above model.contextWindow 2048");
}

TEST(Validate, TheMicroBatchMayNotExceedTheBatch) {
  EXPECT_EQ(load_error(R"({"profile":"sub1b","model":{"adapter":{"launchProfile":{"ubatchSize":512}}}})"),
            "model.adapter.launchProfile.ubatchSize: 512 is above batchSize 256");
}

TEST(Validate, TheLaunchHostMustBeLoopback) {
  EXPECT_EQ(load_error(R"({"profile":"sub1b","model":{"adapter":{"launchProfile":{"host":"10.0.0.5"}}}})"),
            "model.adapter.launchProfile.host: \"10.0.0.5\" must be a loopback address (127.0.0.1, ::1, "
            "localhost)");
  EXPECT_TRUE(loads(R"({"profile":"sub1b","model":{"adapter":{"launchProfile":{"host":"::1"}}}})"));
}

TEST(Validate, TheBackendUrlMustMatchTheLaunchProfileAddress) {
  EXPECT_EQ(load_error(R"({"profile":"sub1b","model":{"adapter":{"baseUrl":"http://127.0.0.1:9000"}}})"),
            "model.adapter.baseUrl: \"http://127.0.0.1:9000\" does not match launchProfile host:port "
            "127.0.0.1:8081");
  EXPECT_TRUE(loads(R"({"profile":"sub1b","model":{"adapter":{"baseUrl":"http://localhost:8081"}}})"));
}

TEST(Validate, LaunchCrossRulesApplyOnlyToTheLlamaCppAdapter) {
  EXPECT_TRUE(loads(
      R"({"profile":"sub1b","model":{"adapter":{"kind":"openai-compatible","baseUrl":"http://127.0.0.1:9000"}},"scheduler":{"concurrency":4}})"));
}

TEST(Validate, TheBackendUrlIsHttpOrHttpsWithoutUserinfoQueryOrFragment) {
  auto with_url = [](std::string url) {
    return R"({"profile":"vps","model":{"adapter":{"baseUrl":")" + url + R"("}}})";
  };
  EXPECT_EQ(load_error(with_url("http://user:secret@example.com:8081")),
            "model.adapter.baseUrl: must not contain userinfo (credentials); give the key through apiKeyEnv");
  EXPECT_EQ(load_error(with_url("http://127.0.0.1:8081/v1?x=1")),
            "model.adapter.baseUrl: \"http://127.0.0.1:8081/v1?x=1\" must not contain a query");
  EXPECT_EQ(load_error(with_url("http://127.0.0.1:8081/#top")),
            "model.adapter.baseUrl: \"http://127.0.0.1:8081/#top\" must not contain a fragment");
  EXPECT_EQ(load_error(with_url("ftp://127.0.0.1:8081")),
            "model.adapter.baseUrl: \"ftp://127.0.0.1:8081\" must use http or https");
  EXPECT_EQ(load_error(with_url("localhost:8081 please")),
            "model.adapter.baseUrl: \"localhost:8081 please\" is not an absolute URL");
  EXPECT_TRUE(loads(with_url("https://llm.internal.example/")));
}

TEST(Validate, ARemoteBackendNeedsABaseUrl) {
  EXPECT_EQ(load_error(R"({"profile":"vps","model":{"adapter":{"baseUrl":""}}})"),
            "model.adapter.baseUrl: is required for the openai-compatible adapter");
}

TEST(Validate, ABackendUrlPointingAtRaysOwnListenerIsRejected) {
  EXPECT_EQ(load_error(R"({"profile":"vps","server":{"port":8081}})"),
            "model.adapter.baseUrl: \"http://127.0.0.1:8081\" points at Ray's own listener 127.0.0.1:8081 (a "
            "gateway "
            "loop)");
  rc::flag_overrides flags;
  flags.backend_url = "http://localhost:3000";
  auto r = rc::load("", {}, flags);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("points at Ray's own listener"), std::string::npos) << r.error().message;
}

TEST(Validate, HopByHopHeadersAreRejectedWithoutEchoingTheirValues) {
  auto msg = load_error(R"({"profile":"vps","model":{"adapter":{"headers":{"Connection":"secret-value"}}}})");
  EXPECT_EQ(
      msg,
      "model.adapter.headers.Connection: \"Connection\" is a hop-by-hop or framing header Ray sets itself");
  EXPECT_TRUE(loads(R"({"profile":"vps","model":{"adapter":{"headers":{"X-Tenant":"a"}}}})"));
}

TEST(Validate, AtMostEightWarmUpRequests) {
  std::string list;
  for (int i = 0; i < 9; ++i)
    list += std::string(i ? "," : "") + R"({"input":"hi"})";
  EXPECT_EQ(load_error(R"({"profile":"sub1b","model":{"adapter":{"warmupRequests":[)" + list + "]}}}"),
            "model.adapter.warmupRequests: 9 requests is above the maximum 8");
}

TEST(Validate, AWarmUpRequestMustNameAKnownTemplateWithAllItsVariables) {
  EXPECT_EQ(
      load_error(
          R"({"profile":"sub1b","model":{"adapter":{"warmupRequests":[{"templateId":"email.nope.v1"}]}}})"),
      "model.adapter.warmupRequests[0].templateId: \"email.nope.v1\" is not a built-in or configured "
      "template");
  EXPECT_EQ(
      load_error(
          R"({"profile":"sub1b","model":{"adapter":{"warmupRequests":[{"templateId":"email.reply_rewrite.v1","templateVariables":{"replyText":"ok"}}]}}})"),
      "model.adapter.warmupRequests[0].templateVariables: missing variable \"rewriteGoal\" of template "
      "\"email.reply_rewrite.v1\"");
  EXPECT_EQ(
      load_error(
          R"({"profile":"sub1b","model":{"adapter":{"warmupRequests":[{"templateId":"email.reply_classification.v1","input":"x","templateVariables":{"replyText":"ok"}}]}}})"),
      "model.adapter.warmupRequests[0]: input/system cannot be combined with templateId");
  EXPECT_EQ(
      load_error(R"({"profile":"sub1b","model":{"adapter":{"warmupRequests":[{"input":"  "}]}}})"),
      "model.adapter.warmupRequests[0].input: a warm-up request needs a non-empty input or a templateId");
  EXPECT_EQ(
      load_error(
          R"({"profile":"sub1b","model":{"adapter":{"warmupRequests":[{"input":"hi","maxTokens":999}]}}})"),
      "model.adapter.warmupRequests[0].maxTokens: 999 is above the maximum 256");
}

TEST(Validate, AWarmUpRequestMayUseATemplateOfTheConfig) {
  EXPECT_TRUE(loads(R"({"profile":"sub1b",
    "prompts":{"templates":{"ops.ping.v1":{"family":"ops","lane":"short","input":"Say {{ word }}","variables":["word"]}}},
    "model":{"adapter":{"warmupRequests":[{"templateId":"ops.ping.v1","templateVariables":{"word":"ready"}}]}}})"));
}

TEST(Validate, ExtraArgsMayNotRepeatAFlagTheLaunchProfileOwns) {
  EXPECT_EQ(
      load_error(
          R"({"profile":"sub1b","model":{"adapter":{"launchProfile":{"extraArgs":["--flash-attn","on","--ctx-size=4096"]}}}})"),
      "model.adapter.launchProfile.extraArgs[2]: \"--ctx-size=4096\" repeats a flag the launch profile sets "
      "(use "
      "launchProfile.ctxSize)");
  EXPECT_TRUE(loads(
      R"({"profile":"sub1b","model":{"adapter":{"launchProfile":{"extraArgs":["--flash-attn","on"]}}}})"));
}

TEST(Validate, TheCacheHoldsAtMost256MiB) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","cache":{"maxBytes":268435457}})"),
            "cache.maxBytes: 268435457 is outside 1-268435456 (256 MiB)");
  EXPECT_TRUE(loads(R"({"profile":"tiny","cache":{"maxBytes":268435456}})"));
}

TEST(Validate, RatiosAreInZeroExclusiveToOne) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","gracefulDegradation":{"cpuThrottledRatioThreshold":0}})"),
            "gracefulDegradation.cpuThrottledRatioThreshold: 0 is outside (0, 1]");
  EXPECT_EQ(
      load_error(R"({"profile":"tiny","gracefulDegradation":{"memoryCgroupPressureRatioThreshold":1.5}})"),
      "gracefulDegradation.memoryCgroupPressureRatioThreshold: 1.5 is outside (0, 1]");
  EXPECT_TRUE(loads(R"({"profile":"tiny","gracefulDegradation":{"cpuThrottledRatioThreshold":1}})"));
}

TEST(Validate, PressureThresholdsAreInZeroExclusiveToHundred) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","gracefulDegradation":{"cpuPsiSomeAvg10Threshold":101}})"),
            "gracefulDegradation.cpuPsiSomeAvg10Threshold: 101 is outside (0, 100]");
  EXPECT_EQ(load_error(R"({"profile":"tiny","gracefulDegradation":{"memoryPsiFullAvg10Threshold":0}})"),
            "gracefulDegradation.memoryPsiFullAvg10Threshold: 0 is outside (0, 100]");
}

TEST(Validate, ApiKeyDigestsAreSixtyFourHexCharactersAndNeverEchoed) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","auth":{"apiKeySha256":["abc123"]}})"),
            "auth.apiKeySha256[0]: must be 64 hex characters (a SHA-256 digest)");
  auto r = rc::load_from_text(
      R"({"profile":"tiny","auth":{"apiKeySha256":[")" + std::string(64, 'A') + R"("]}})", {}, {});
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->cfg.auth.api_key_sha256.at(0), std::string(64, 'a')) << "digests are normalised to lowercase";
}

TEST(Validate, EnvironmentVariableNamesMustBeValid) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","auth":{"apiKeyEnv":"1BAD"}})"),
            "auth.apiKeyEnv: \"1BAD\" is not a valid environment variable name (letters, digits and _, not "
            "starting "
            "with a digit)");
  EXPECT_EQ(load_error(R"({"profile":"vps","model":{"adapter":{"apiKeyEnv":"MY-KEY"}}})"),
            "model.adapter.apiKeyEnv: \"MY-KEY\" is not a valid environment variable name (letters, digits "
            "and _, not "
            "starting with a digit)");
}

TEST(Validate, ConfigTemplatesMayNotReuseABuiltInId) {
  EXPECT_EQ(
      load_error(
          R"({"profile":"tiny","prompts":{"templates":{"email.follow_up.v1":{"family":"f","lane":"draft","input":"x","variables":[]}}}})"),
      "prompts.templates.email.follow_up.v1: \"email.follow_up.v1\" is a built-in template id; choose "
      "another id");
}

TEST(Validate, TemplatePlaceholdersMustBeDeclaredVariables) {
  EXPECT_EQ(
      load_error(
          R"({"profile":"tiny","prompts":{"templates":{"t.v1":{"family":"f","lane":"draft","input":"Hello {{ who }}","variables":["name"]}}}})"),
      "prompts.templates.t.v1.input: placeholder {{ who }} is not a declared variable");
  EXPECT_EQ(
      load_error(
          R"({"profile":"tiny","prompts":{"templates":{"t.v1":{"family":"f","lane":"draft","system":"As {{role}}","input":"x","variables":[]}}}})"),
      "prompts.templates.t.v1.system: placeholder {{ role }} is not a declared variable");
}

TEST(Validate, PlainRangesNameTheBoundTheyBreak) {
  EXPECT_EQ(
      load_error(
          R"({"profile":"tiny","scheduler":{"maxQueue":0,"affinityLookahead":1,"maxQueuedTokens":12000}})"),
      "scheduler.maxQueue: 0 is below the minimum 1");
  EXPECT_EQ(load_error(R"({"profile":"tiny","scheduler":{"maxQueue":513}})"),
            "scheduler.maxQueue: 513 is above the maximum 512");
  EXPECT_EQ(load_error(R"({"profile":"tiny","server":{"port":70000}})"),
            "server.port: 70000 is above the maximum 65535");
  EXPECT_EQ(load_error(R"({"profile":"tiny","server":{"requestBodyLimitBytes":2000000}})"),
            "server.requestBodyLimitBytes: 2000000 is above the maximum 1048576");
  EXPECT_EQ(load_error(R"({"profile":"tiny","scheduler":{"concurrency":9}})"),
            "scheduler.concurrency: 9 is above the maximum 8");
  EXPECT_EQ(load_error(R"({"profile":"tiny","model":{"contextWindow":200000}})"),
            "model.contextWindow: 200000 is above the maximum 131072");
  EXPECT_EQ(load_error(R"({"profile":"tiny","asyncQueue":{"maxJobs":0}})"),
            "asyncQueue.maxJobs: 0 is below the minimum 1");
  EXPECT_EQ(load_error(R"({"profile":"tiny","scheduler":{"requestTimeoutMs":120001}})"),
            "scheduler.requestTimeoutMs: 120001 is above the maximum 120000");
  EXPECT_EQ(load_error(R"({"profile":"tiny","cache":{"maxEntries":4097}})"),
            "cache.maxEntries: 4097 is above the maximum 4096");
  EXPECT_EQ(load_error(R"({"profile":"tiny","server":{"threads":17}})"),
            "server.threads: 17 is above the maximum 16");
}

// Review finding: server.threads > 1 was accepted while the runtime, cache, scheduler, limiter and backend
// are single-strand objects reached from per-connection strands (a race). It is refused, naming the key.
TEST(Validate, ServerThreadsAboveOneIsRefusedBecauseTheRuntimeRunsOnOneThread) {
  EXPECT_NE(load_error(R"({"profile":"tiny","server":{"threads":2}})")
                .find("server.threads: 2 is not supported: Ray serves from one event-loop thread"),
            std::string::npos);
  EXPECT_TRUE(loads(R"({"profile":"tiny","server":{"threads":1}})"));
}

TEST(Validate, ThePinnedSlotMustExistOnTheLlamaServer) {
  EXPECT_EQ(load_error(R"({"profile":"sub1b","model":{"adapter":{"slotId":2}}})"),
            "model.adapter.slotId: 2 is not a slot of launchProfile.parallel 2");
  EXPECT_TRUE(loads(R"({"profile":"sub1b","model":{"adapter":{"slotId":1}}})"));
}

TEST(Validate, TheOpenAiDefaultMaxTokensMayNotExceedMaxOutputTokens) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","openai":{"defaultMaxTokens":193}})"),
            "openai.defaultMaxTokens: 193 is above the maximum 192");
}

TEST(Validate, OtherGgufQuantizationNamesAreAccepted) {
  EXPECT_TRUE(loads(R"({"profile":"tiny","model":{"quantization":"iq4_xs"}})"));
  EXPECT_NE(load_error(R"({"profile":"tiny","model":{"quantization":"q4 k m"}})")
                .find("model.quantization: \"q4 k m\""),
            std::string::npos);
}

TEST(Validate, TheServerHostMustBeAHostNameOrAddress) {
  EXPECT_EQ(load_error(R"({"profile":"tiny","server":{"host":"my host"}})"),
            "server.host: \"my host\" is not a host name or IP address");
  EXPECT_TRUE(loads(R"({"profile":"tiny","server":{"host":"0.0.0.0"}})"));
}

TEST(Validate, CorsOriginsAreOriginsOrAStar) {
  EXPECT_TRUE(loads(R"({"profile":"tiny","server":{"corsAllowOrigins":["*","https://app.example.com"]}})"));
  EXPECT_EQ(
      load_error(R"({"profile":"tiny","server":{"corsAllowOrigins":["https://app.example.com/x"]}})"),
      "server.corsAllowOrigins[0]: \"https://app.example.com/x\" must be an origin (scheme://host[:port], no "
      "path) or \"*\"");
}

TEST(Validate, ValidateChecksAConfigBuiltInCode) {
  auto c = *rc::profile_defaults("tiny");
  c.server.threads = 0;
  auto r = rc::validate(c);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().message, "server.threads: 0 is below the minimum 1");
  EXPECT_EQ(r.error().param, "server.threads");
}

TEST(Validate, LoopbackHostsAreRecognised) {
  EXPECT_TRUE(rc::is_loopback_host("127.0.0.1"));
  EXPECT_TRUE(rc::is_loopback_host("127.1.2.3"));
  EXPECT_TRUE(rc::is_loopback_host("localhost"));
  EXPECT_TRUE(rc::is_loopback_host("::1"));
  EXPECT_TRUE(rc::is_loopback_host("[::1]"));
  EXPECT_FALSE(rc::is_loopback_host("0.0.0.0"));
  EXPECT_FALSE(rc::is_loopback_host("10.0.0.1"));
  EXPECT_FALSE(rc::is_loopback_host("example.com"));
}

}  // namespace

// Review finding: any private peer counted as a trusted proxy. The list is explicit now, and bounded.
TEST(Validate, TrustedProxiesAreABoundedList) {
  EXPECT_TRUE(loads(R"({"profile":"tiny","rateLimit":{"trustedProxies":["10.0.0.5","fd00::/8"]}})"));
  auto c = *rc::profile_defaults("tiny");
  EXPECT_EQ(c.rate_limit.trusted_proxies, (std::vector<std::string>{"127.0.0.0/8", "::1"}));
  c.rate_limit.trusted_proxies.assign(257, "10.0.0.1");
  auto r = rc::validate(c);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().param, "rateLimit.trustedProxies");
  EXPECT_NE(r.error().message.find("at most 256"), std::string::npos) << r.error().message;
}
