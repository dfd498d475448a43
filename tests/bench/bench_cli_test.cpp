// `ray bench` end to end: the real binary replays workloads against a real `ray serve` (mock backend) and
// against a listener that never answers; exit codes, --baseline, --json and the error messages of bad input.
// Nothing here asserts on timing: the thresholds are either impossible or always true.
#include "integration/http_test_util.hpp"

#include <gmock/gmock.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

namespace ray::itest {
namespace {

using ::testing::HasSubstr;

struct run_result {
  int code{-1};
  std::string out;  // stdout
  std::string err;  // stderr
};

run_result bench(std::vector<std::string> args) {
  args.insert(args.begin(), "bench");
  rt::ray_process p(rt::spawn_options{.binary = ray_binary(), .args = std::move(args)});
  auto code = p.wait_exit(rt::in(std::chrono::seconds(60)));
  return {code.value_or(-1), p.stdout_text(), p.stderr_text()};
}

std::string read_file(std::filesystem::path const& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class BenchCli : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<ray_server>(
        with(test_config(), {{"rateLimit", boost::json::object{{"enabled", false}}}}));
    ASSERT_TRUE(server_->wait_listening());
    url_ = "http://127.0.0.1:" + std::to_string(server_->port());
    native_ =
        dir_.write_file(
                "native.jsonl",
                "{\"input\":\"hello bench\",\"maxTokens\":8}\n{\"input\":\"second line\",\"maxTokens\":8}\n")
            .string();
    chat_ = dir_.write_file("chat.jsonl",
                            "{\"openai\":{\"messages\":[{\"role\":\"user\",\"content\":\"stream "
                            "me\"}],\"max_tokens\":8}}\n")
                .string();
  }

  rt::temp_dir dir_;
  std::unique_ptr<ray_server> server_;
  std::string url_, native_, chat_;
};

TEST_F(BenchCli, AnImpossibleBaselineExits1NamingEachViolatedThreshold) {
  auto baseline =
      dir_.write_file("impossible.json", R"({"p50_ms": 0.000001, "min_rps": 1e12, "max_error_rate": 1})");
  auto r = bench({"--url", url_, "--workload", native_, "-n", "20", "--baseline", baseline.string()});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_THAT(r.err, HasSubstr("FAILED"));
  EXPECT_THAT(r.err, HasSubstr("2 of 3 thresholds violated"));
  EXPECT_THAT(r.err, HasSubstr("p50_ms: measured"));
  EXPECT_THAT(r.err, HasSubstr("min_rps: measured"));
  EXPECT_THAT(r.err, ::testing::Not(HasSubstr("max_error_rate:")));
  EXPECT_THAT(r.out, HasSubstr("requests      20"));  // the table is still printed
}

TEST_F(BenchCli, ALenientBaselineExits0AndTheJsonHasTheFigures) {
  auto baseline = dir_.write_file(
      "lenient.json", R"({"p99_ms": 600000, "max_error_rate": 0, "min_rps": 0, "min_cache_hit_rate": 0})");
  auto json_path = dir_.path() / "result.json";
  auto r = bench({"--url", url_, "--workload", native_, "-c", "4", "-n", "40", "--baseline",
                  baseline.string(), "--json", json_path.string()});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("all 4 thresholds hold"));
  auto doc = boost::json::parse(read_file(json_path)).as_object();
  EXPECT_EQ(doc.at("tool").as_string(), "ray bench");
  EXPECT_EQ(doc.at("mode").as_string(), "closed");
  EXPECT_EQ(doc.at("concurrency").to_number<int>(), 4);
  EXPECT_EQ(doc.at("requests").to_number<int>(), 40);
  EXPECT_EQ(doc.at("ok").to_number<int>(), 40);
  EXPECT_EQ(doc.at("errors").to_number<int>(), 0);
  EXPECT_EQ(doc.at("rejections").to_number<int>(), 0);
  EXPECT_EQ(doc.at("by_status").at("200").to_number<int>(), 40);
  EXPECT_EQ(doc.at("workload_lines").to_number<int>(), 2);
  EXPECT_GT(doc.at("rps").to_number<double>(), 0);
  auto const& lat = doc.at("latency_ms").as_object();
  for (auto key : {"p50", "p90", "p99", "max", "min", "mean"})
    EXPECT_TRUE(lat.at(key).is_number()) << key;
  EXPECT_LE(lat.at("p50").to_number<double>(), lat.at("p99").to_number<double>());
  EXPECT_LE(lat.at("p99").to_number<double>(), lat.at("max").to_number<double>());
  EXPECT_EQ(lat.at("count").to_number<int>(), 40);
  // Two distinct lines cycled 40 times: everything after the first answer of each is a cache hit (or a join).
  EXPECT_TRUE(doc.at("cache_hit_rate").is_number());
  EXPECT_TRUE(doc.at("dedupe_rate").is_number());
  EXPECT_TRUE(doc.at("ttft_ms").is_null());   // nothing streamed
  EXPECT_TRUE(doc.at("tokens").is_object());  // the mock reports usage
  EXPECT_GT(doc.at("tokens").at("completion").to_number<double>(), 0);
}

TEST_F(BenchCli, JsonToStdoutAndStreamingFigures) {
  auto r = bench({"--url", url_, "--workload", chat_, "--stream", "-c", "2", "-n", "10", "--json", "-"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  auto doc = boost::json::parse(r.out).as_object();  // stdout is the JSON document alone
  EXPECT_THAT(r.err, HasSubstr("throughput"));       // the table went to stderr
  EXPECT_EQ(doc.at("ok").to_number<int>(), 10);
  EXPECT_EQ(doc.at("stream_responses").to_number<int>(), 10);
  EXPECT_TRUE(doc.at("stream").as_bool());
  ASSERT_TRUE(doc.at("ttft_ms").is_object()) << r.out;
  EXPECT_EQ(doc.at("ttft_ms").at("count").to_number<int>(), 10);
  EXPECT_LE(doc.at("ttft_ms").at("p50").to_number<double>(),
            doc.at("latency_ms").at("max").to_number<double>());
}

TEST_F(BenchCli, RejectionsAreCountedByCode) {
  // An OpenAI body that Ray refuses (n > 1 → 400 invalid_request) and a good one.
  auto w = dir_.write_file("mixed.jsonl",
                           "{\"openai\":{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"n\":3}}\n"
                           "{\"openai\":{\"messages\":[{\"role\":\"user\",\"content\":\"b\"}]}}\n");
  auto r = bench({"--url", url_, "--workload", w.string(), "-n", "10", "--json", "-"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  auto doc = boost::json::parse(r.out).as_object();
  EXPECT_EQ(doc.at("ok").to_number<int>(), 5);
  EXPECT_EQ(doc.at("by_status").at("400").to_number<int>(), 5);
  EXPECT_EQ(doc.at("by_code").at("invalid_request").to_number<int>(), 5);
  EXPECT_DOUBLE_EQ(doc.at("error_rate").to_number<double>(), 0.5);
}

TEST(BenchCliInput, BadInputExits2WithAClearMessage) {
  rt::temp_dir dir;
  auto good = dir.write_file("good.jsonl", "{\"input\":\"hi\"}\n").string();
  auto bad = dir.write_file("bad.jsonl", "{\"input\":\"hi\"}\n{\"input\": oops}\n").string();
  auto baseline = dir.write_file("typo.json", R"({"p99": 5})").string();

  auto r = bench({"--url", "localhost:3000", "--workload", good});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("must start with http://"));

  r = bench({"--url", "http://127.0.0.1:1", "--workload", (dir.path() / "missing.jsonl").string()});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("cannot read the workload"));
  EXPECT_THAT(r.err, HasSubstr("missing.jsonl"));

  r = bench({"--url", "http://127.0.0.1:1", "--workload", bad});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("line 2: not valid JSON"));

  r = bench({"--url", "http://127.0.0.1:1", "--workload", good, "--baseline", baseline});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("unknown threshold \"p99\""));

  r = bench({"--url", "http://127.0.0.1:1", "--workload", good, "-n", "5", "-d", "1s"});
  EXPECT_EQ(r.code, 2);  // CLI11: --requests excludes --duration

  r = bench({"--url", "http://127.0.0.1:1", "--workload", good, "--duration", "soon"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.out + r.err, HasSubstr("--duration"));

  r = bench({"--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, HasSubstr("Examples:"));
  EXPECT_THAT(r.out, HasSubstr("--baseline"));
}

TEST(BenchCliInput, AServerThatNeverAnswersIsATimeoutAndExit1) {
  // A listener that never accepts: the kernel completes the handshake, nobody answers.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(fd, 16), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  std::string url = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  rt::temp_dir dir;
  auto w = dir.write_file("w.jsonl", "{\"input\":\"hi\"}\n").string();
  auto r = bench({"--url", url, "--workload", w, "-n", "2", "--timeout-ms", "200", "--json", "-"});
  ::close(fd);
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_THAT(r.err, HasSubstr("no request got a response"));
  EXPECT_THAT(r.err, HasSubstr("timeout 2"));
  auto doc = boost::json::parse(r.out).as_object();
  EXPECT_EQ(doc.at("by_code").at("timeout").to_number<int>(), 2);
  EXPECT_DOUBLE_EQ(doc.at("error_rate").to_number<double>(), 1.0);
}

}  // namespace
}  // namespace ray::itest
