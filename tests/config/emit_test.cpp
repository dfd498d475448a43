// to_json (complete and round-tripping), the redacted public view, and `ray config explain`.
#include "ray/config/config.hpp"

#include <gtest/gtest.h>
#include <boost/json/serialize.hpp>

#include <filesystem>
#include <sstream>

namespace {

namespace rc = ray::config;
namespace fs = std::filesystem;
namespace json = boost::json;

rc::loaded_config load_ok(std::string_view text, rc::env_map const& env = {},
                          rc::flag_overrides const& flags = {}) {
  auto r = rc::load_from_text(text, env, flags);
  EXPECT_TRUE(r.has_value()) << r.error().message;
  return r.has_value() ? *r : rc::loaded_config{};
}

// Loads the to_json text of `c` as a config file and expects the same config back.
void expect_round_trip(rc::config const& c) {
  auto text = json::serialize(rc::to_json(c));
  auto again = rc::load_from_text(text, {}, {});
  ASSERT_TRUE(again.has_value()) << again.error().message << "\n" << text;
  EXPECT_TRUE(again->cfg == c) << text << "\n---\n" << json::serialize(rc::to_json(again->cfg));
}

TEST(Emit, EveryProfileRoundTripsThroughToJson) {
  for (auto name : rc::profile_names) {
    SCOPED_TRACE(name);
    auto r = rc::load("", {{"RAY_PROFILE", std::string(name)}}, {});
    ASSERT_TRUE(r.has_value()) << r.error().message;
    expect_round_trip(r->cfg);
  }
}

TEST(Emit, EveryUpstreamConfigRoundTripsThroughToJson) {
  for (auto const& entry : fs::directory_iterator(fs::path(RAY_TEST_FIXTURES) / "upstream-configs")) {
    SCOPED_TRACE(entry.path().filename().string());
    auto r = rc::load(entry.path().string(), {}, {});
    ASSERT_TRUE(r.has_value()) << r.error().message;
    expect_round_trip(r->cfg);
  }
}

TEST(Emit, AConfigUsingEveryOptionalFieldRoundTrips) {
  auto c = load_ok(R"({"profile":"sub1b",
    "server":{"corsAllowOrigins":["https://app.example.com"],"threads":1},
    "openai":{"strictModelNames":true,"defaultMaxTokens":100},
    "model":{"aliases":["gpt-4o-mini"],"adapter":{"apiKeyEnv":"UPSTREAM_KEY","headers":{"X-Tenant":"t1"},"slotId":1,
      "warmupRequests":[{"input":"hello","system":"be brief","maxTokens":8,"temperature":0.25,"seed":-3},
                        {"templateId":"email.reply_rewrite.v1","templateVariables":{"replyText":"ok","rewriteGoal":"warmer"}}],
      "launchProfile":{"threadsBatch":2,"threadsHttp":2,"extraArgs":["--flash-attn","on"],"supervise":true}}},
    "scheduler":{"queueTimeoutMs":5000,"firstTokenTimeoutMs":9000},
    "gracefulDegradation":{"watchCgroups":["/sys/fs/cgroup/system.slice/llama.service"],"memoryPsiSomeAvg10Threshold":12.5},
    "prompts":{"templates":{"ops.ping.v1":{"family":"ops","lane":"short","system":"Reply with one word.","input":"{{ word }}","variables":["word"],"defaultMaxTokens":4,"responseFormat":"text"}}},
    "asyncQueue":{"enabled":true,"callbackSecretEnv":"CB_SECRET","callbackAllowedHosts":["*.example.com"],
      "store":"postgres","postgresUrlEnv":"JOBS_PG_URL","leaseMs":5000},
    "auth":{"enabled":true,"apiKeySha256":[")" +
                   std::string(64, 'c') + R"("]},
    "tags":{"owner":"ops"}})");
  expect_round_trip(c.cfg);
}

TEST(Emit, ToJsonUsesTheCamelCaseLayoutOfTheTypeScriptFiles) {
  auto c = *rc::profile_defaults("sub1b");
  auto j = rc::to_json(c);
  EXPECT_EQ(j.at("profile").as_string(), "sub1b");
  EXPECT_EQ(j.at("server").at("requestBodyLimitBytes").to_number<int>(), 48000);
  auto const& lp = j.at("model").at("adapter").at("launchProfile");
  EXPECT_EQ(lp.at("cacheRamMiB").to_number<int>(), 512);
  EXPECT_EQ(lp.at("ctxSize").to_number<int>(), 3072);
  EXPECT_EQ(j.at("model").at("adapter").at("kind").as_string(), "llama.cpp");
  EXPECT_EQ(j.at("gracefulDegradation").at("memoryRssThresholdMiB").to_number<int>(), 512);
  EXPECT_EQ(j.at("asyncQueue").at("minFreeStorageMiB").to_number<int>(), 256);
  EXPECT_EQ(j.at("cache").at("keyStrategy").as_string(), "input+params");
  EXPECT_EQ(j.at("telemetry").at("logLevel").as_string(), "info");
  EXPECT_TRUE(j.at("prompts").at("templates").as_object().empty()) << "built-ins are not config templates";
  EXPECT_TRUE(j.at("openai").at("defaultMaxTokens").is_null()) << "unset optionals are explicit nulls";
}

TEST(Emit, WholeNumberThresholdsAreWrittenAsIntegers) {
  auto j = rc::to_json(*rc::profile_defaults("tiny"));
  auto const& g = j.at("gracefulDegradation");
  EXPECT_TRUE(g.at("memoryPsiSomeAvg10Threshold").is_int64());
  EXPECT_TRUE(g.at("memoryCgroupPressureRatioThreshold").is_double());
  EXPECT_EQ(json::serialize(g.at("cpuPsiSomeAvg10Threshold")), "50");
}

// Review finding: /v1/config showed launchProfile.extraArgs whole, --api-key and --hf-token values included.
TEST(Emit, ThePublicViewRedactsSecretFlagValuesInExtraArgs) {
  auto c = load_ok(R"({"profile":"sub1b","model":{"adapter":{"launchProfile":{"extraArgs":
      ["--api-key","k-s3cret","--hf-token=hf_s3cret","-hft","hf_other","--flash-attn","on","--api-key-file",
       "/etc/ray/key"]}}}})");
  auto pub = rc::to_public_json(c);
  auto text = json::serialize(pub);
  EXPECT_EQ(text.find("s3cret"), std::string::npos) << text;
  EXPECT_EQ(text.find("hf_other"), std::string::npos) << text;
  auto const& args = pub.at("model").at("adapter").at("launchProfile").at("extraArgs").as_array();
  ASSERT_EQ(args.size(), 9u);
  EXPECT_EQ(args[0].as_string(), "--api-key");
  EXPECT_EQ(args[1].as_string(), "[redacted]");
  EXPECT_EQ(args[2].as_string(), "--hf-token=[redacted]");
  EXPECT_EQ(args[4].as_string(), "[redacted]");
  EXPECT_EQ(args[5].as_string(), "--flash-attn");
  EXPECT_EQ(args[6].as_string(), "on");  // not a secret: kept
  EXPECT_EQ(args[8].as_string(), "[redacted]");
  // The full view (ray config print to the operator) keeps them.
  EXPECT_NE(json::serialize(rc::to_json(c.cfg)).find("k-s3cret"), std::string::npos);
}

TEST(Emit, ThePublicViewRedactsHeaderValuesAndKeyDigestsAndCarriesSources) {
  auto c = load_ok(R"({"profile":"vps","model":{"adapter":{"headers":{"X-Api-Token":"s3cret"}}},
                      "auth":{"apiKeySha256":[")" +
                       std::string(64, 'f') + R"("]}})",
                   {{"RAY_SCHEDULER_MAX_QUEUE", "50"}});
  auto pub = rc::to_public_json(c);
  auto text = json::serialize(pub);
  EXPECT_EQ(text.find("s3cret"), std::string::npos);
  EXPECT_EQ(text.find(std::string(64, 'f')), std::string::npos);
  EXPECT_EQ(pub.at("model").at("adapter").at("headers").at("X-Api-Token").as_string(), "[redacted]");
  EXPECT_EQ(pub.at("auth").at("apiKeySha256").at(0).as_string(), "[redacted]");
  auto const& sources = pub.at("_sources").as_object();
  EXPECT_EQ(sources.at("scheduler.maxQueue").as_string(), "env:RAY_SCHEDULER_MAX_QUEUE");
  EXPECT_EQ(sources.at("model.adapter.headers.X-Api-Token").as_string(), "file");
  EXPECT_EQ(sources.at("server.port").as_string(), "profile:vps");
  EXPECT_EQ(c.cfg.model.adapter.headers.at("X-Api-Token"), "s3cret") << "the config itself keeps the value";
}

TEST(Emit, SourcesNameEveryLeafOfTheEffectiveConfig) {
  auto c = load_ok(R"({"profile":"sub1b"})");
  // Count the leaves of to_json: scalars, arrays, nulls and empty objects.
  std::size_t leaves = 0;
  auto count = [&](auto&& self, json::value const& v) -> void {
    if (v.is_object() && !v.get_object().empty()) {
      for (auto const& [k, child] : v.get_object())
        self(self, child);
    } else {
      ++leaves;
    }
  };
  count(count, json::value(rc::to_json(c.cfg)));
  EXPECT_EQ(c.sources.size(), leaves);
  EXPECT_EQ(c.sources.at("model.adapter.launchProfile.ctxSize"), "profile:sub1b");
  EXPECT_EQ(c.sources.at("profile"), "file");
}

TEST(Emit, ExplainPrintsOneLinePerLeafWithItsSource) {
  rc::flag_overrides f;
  f.port = 6000;
  auto c = load_ok(
      R"({"profile":"tiny","scheduler":{"maxQueue":20},"model":{"adapter":{"headers":{"X-K":"secret"}}}})",
      {{"RAY_LOG_LEVEL", "debug"}}, f);
  auto text = rc::explain(c);
  EXPECT_NE(text.find("server.port = 6000  (flag:--port)\n"), std::string::npos);
  EXPECT_NE(text.find("scheduler.maxQueue = 20  (file)\n"), std::string::npos);
  EXPECT_NE(text.find("telemetry.logLevel = \"debug\"  (env:RAY_LOG_LEVEL)\n"), std::string::npos);
  EXPECT_NE(text.find("scheduler.concurrency = 1  (profile:tiny)\n"), std::string::npos);
  EXPECT_NE(text.find("gracefulDegradation.memoryCgroupPressureRatioThreshold = 0.9  (profile:tiny)\n"),
            std::string::npos);
  EXPECT_NE(
      text.find("promptCompiler.familyMetadataKeys = [\"promptFamily\", \"taskTemplate\", \"template\", "
                "\"useCase\"]  (profile:tiny)\n"),
      std::string::npos);
  EXPECT_NE(text.find("model.adapter.launchProfile = null  (profile:tiny)\n"), std::string::npos);
  EXPECT_NE(text.find("model.adapter.headers.X-K = \"[redacted]\"  (file)\n"), std::string::npos);
  EXPECT_EQ(text.find("secret"), std::string::npos);
  std::istringstream lines(text);
  std::size_t n = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    EXPECT_NE(line.find(" = "), std::string::npos) << line;
    EXPECT_EQ(line.back(), ')') << line;
  }
  EXPECT_EQ(n, c.sources.size());
}

}  // namespace
