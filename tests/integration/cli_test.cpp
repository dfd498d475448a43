// The operator CLI through the real binary: config validate/explain/defaults and gguf inspect.
#include "http_test_util.hpp"

#include <filesystem>

namespace ray::itest {
namespace {

struct run_result {
  int code{-1};
  std::string out;
};

run_result run(std::vector<std::string> args, std::vector<std::pair<std::string, std::string>> env = {}) {
  rt::ray_process p(rt::spawn_options{.binary = RAY_BINARY, .args = std::move(args), .env = std::move(env)});
  auto code = p.wait_exit(rt::in(kIo));
  return {code.value_or(-1), p.stdout_text() + p.stderr_text()};
}

TEST(Cli, EveryExampleConfigValidatesUnchanged) {
  int seen = 0;
  for (auto const& entry :
       std::filesystem::directory_iterator(std::string(RAY_SOURCE_DIR) + "/examples/config")) {
    if (entry.path().extension() != ".json") continue;
    ++seen;
    auto r = run({"config", "validate", entry.path().string()});
    EXPECT_EQ(r.code, 0) << entry.path() << "\n" << r.out;
    EXPECT_NE(r.out.find("valid"), std::string::npos) << r.out;
  }
  EXPECT_GE(seen, 9);  // the eight TypeScript-era files and tiny.json
}

TEST(Cli, ATypoedKeyFailsWithExitCode2NamingThePathAndASuggestion) {
  rt::temp_dir dir;
  auto path = dir.write_file("typo.json", R"({"profile":"tiny","scheduler":{"maxQueu":10}})");
  auto r = run({"config", "validate", path.string()});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("scheduler.maxQueu"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("maxQueue"), std::string::npos) << r.out;
}

TEST(Cli, AnInvalidValueNamesTheFieldAndTheRule) {
  rt::temp_dir dir;
  auto path = dir.write_file("bad.json", R"({"profile":"tiny","scheduler":{"maxQueue":0}})");
  auto r = run({"config", "validate", path.string()});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("scheduler.maxQueue"), std::string::npos) << r.out;
}

TEST(Cli, ExplainShowsEachValueWithItsSource) {
  auto r = run({"config", "explain"}, {{"RAY_SCHEDULER_MAX_QUEUE", "40"}});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("env:RAY_SCHEDULER_MAX_QUEUE"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("profile:tiny"), std::string::npos) << r.out;
}

TEST(Cli, DefaultsPrintsACompleteProfileAsJson) {
  auto r = run({"config", "defaults", "sub1b"});
  ASSERT_EQ(r.code, 0) << r.out;
  auto v = boost::json::parse(r.out);
  EXPECT_EQ(v.at("scheduler").at("maxQueue").as_int64(), 64);
  EXPECT_EQ(run({"config", "defaults", "nope"}).code, 2);
}

TEST(Cli, GgufInspectReadsTheFixtureAndRejectsGarbage) {
  auto ok = run({"gguf", "inspect", std::string(RAY_TEST_FIXTURES) + "/models/tiny-llama-64x2.gguf"});
  EXPECT_EQ(ok.code, 0) << ok.out;
  EXPECT_NE(ok.out.find("llama"), std::string::npos);
  rt::temp_dir dir;
  auto bad = dir.write_file("bad.gguf", "GGML not a gguf file at all");
  auto r = run({"gguf", "inspect", bad.string()});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("bad magic"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace ray::itest
