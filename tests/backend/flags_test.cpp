// The llama-server flag builder (src/ray/backend/flags.hpp).
#include "ray/backend/flags.hpp"
#include "ray/backend/supervisor.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

namespace ray::backend {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

config::launch_profile sub1b_launch() {
  auto cfg = config::profile_defaults("sub1b");
  EXPECT_TRUE(cfg.has_value());
  EXPECT_TRUE(cfg->model.adapter.launch.has_value());
  return *cfg->model.adapter.launch;
}

// The value following `flag`, or "" when the flag is absent.
std::string value_of(std::vector<std::string> const& args, std::string const& flag) {
  auto it = std::find(args.begin(), args.end(), flag);
  return it == args.end() || it + 1 == args.end() ? std::string() : *(it + 1);
}

bool has(std::vector<std::string> const& args, std::string const& flag) {
  return std::find(args.begin(), args.end(), flag) != args.end();
}

TEST(LlamaServerArgs, TheSub1bProfileGivesExactlyTheExpectedCommandLine) {
  EXPECT_THAT(llama_server_args(sub1b_launch()),
              ElementsAreArray<std::string>({"-m",
                                             "/var/lib/ray/models/qwen2.5-0.5b-instruct-q4_k_m.gguf",
                                             "--host",
                                             "127.0.0.1",
                                             "--port",
                                             "8081",
                                             "-a",
                                             "qwen2.5-0.5b-instruct-q4_k_m",
                                             "-c",
                                             "3072",
                                             "-np",
                                             "2",
                                             "-t",
                                             "2",
                                             "-b",
                                             "256",
                                             "-ub",
                                             "128",
                                             "--cache-reuse",
                                             "256",
                                             "--cache-ram",
                                             "512",
                                             "-cb",
                                             "--metrics",
                                             "--slots",
                                             "--no-kv-unified",
                                             "--no-context-shift",
                                             "--cache-idle-slots"}));
}

TEST(LlamaServerArgs, TheTypeScriptSub1bFileGivesItsThreadsHttpUnifiedKvAndContextShift) {
  auto loaded = config::load(std::string(RAY_TEST_FIXTURES) + "/upstream-configs/ray.sub1b.json", {},
                             config::flag_overrides{});
  ASSERT_TRUE(loaded.has_value()) << loaded.error().message;
  ASSERT_TRUE(loaded->cfg.model.adapter.launch.has_value());
  auto args = llama_server_args(*loaded->cfg.model.adapter.launch);
  EXPECT_EQ(value_of(args, "--threads-http"), "2");
  EXPECT_TRUE(has(args, "--kv-unified"));
  EXPECT_TRUE(has(args, "--context-shift"));
  EXPECT_FALSE(has(args, "--no-kv-unified"));
  EXPECT_FALSE(has(args, "--no-context-shift"));
  EXPECT_FALSE(has(args, "-tb"));
}

TEST(LlamaServerArgs, AModelPathOverrideReplacesTheProfilesModel) {
  auto args = llama_server_args(sub1b_launch(), "/tmp/other model.gguf");
  EXPECT_EQ(value_of(args, "-m"), "/tmp/other model.gguf");
  EXPECT_EQ(std::count(args.begin(), args.end(), "-m"), 1);
}

TEST(LlamaServerArgs, CacheRamIsAlwaysExplicitWithLlamaServersMeaning) {
  auto p = sub1b_launch();
  p.cache_ram_mib = -1;
  EXPECT_EQ(value_of(llama_server_args(p), "--cache-ram"), "-1");
  p.cache_ram_mib = 0;
  EXPECT_EQ(value_of(llama_server_args(p), "--cache-ram"), "0");
  p.cache_ram_mib = 512;
  EXPECT_EQ(value_of(llama_server_args(p), "--cache-ram"), "512");
}

TEST(LlamaServerArgs, BooleansTurnedOffUseTheNegatedSpellings) {
  auto p = sub1b_launch();
  p.cache_prompt = false;
  p.continuous_batching = false;
  p.enable_metrics = false;
  p.expose_slots = false;
  p.warmup = false;
  p.enable_unified_kv = false;
  p.context_shift = false;
  p.cache_idle_slots = false;
  auto args = llama_server_args(p);
  std::vector<std::string> tail(args.end() - 7, args.end());
  EXPECT_THAT(tail, ElementsAre("--no-cache-prompt", "--no-cont-batching", "--no-slots", "--no-warmup",
                                "--no-kv-unified", "--no-context-shift", "--no-cache-idle-slots"));
  EXPECT_FALSE(has(args, "--metrics"));
  EXPECT_FALSE(has(args, "-cb"));
}

TEST(LlamaServerArgs, BooleansTurnedOnUseThePositiveSpellingsOrLlamaServersDefault) {
  auto p = sub1b_launch();
  p.cache_prompt = true;
  p.continuous_batching = true;
  p.enable_metrics = true;
  p.expose_slots = true;
  p.warmup = true;
  p.enable_unified_kv = true;
  p.context_shift = true;
  p.cache_idle_slots = true;
  auto args = llama_server_args(p);
  std::vector<std::string> tail(args.end() - 6, args.end());
  EXPECT_THAT(tail, ElementsAre("-cb", "--metrics", "--slots", "--kv-unified", "--context-shift",
                                "--cache-idle-slots"));
  // On by default in every llama-server build: not written.
  EXPECT_FALSE(has(args, "--cache-prompt"));
  EXPECT_FALSE(has(args, "--warmup"));
  EXPECT_FALSE(has(args, "--no-cache-prompt"));
  EXPECT_FALSE(has(args, "--no-warmup"));
}

TEST(LlamaServerArgs, OptionalThreadCountsAndAliasAppearOnlyWhenSet) {
  auto p = sub1b_launch();
  p.alias.clear();
  auto args = llama_server_args(p);
  EXPECT_FALSE(has(args, "-a"));
  EXPECT_FALSE(has(args, "-tb"));
  EXPECT_FALSE(has(args, "--threads-http"));
  p.threads_batch = 3;
  p.threads_http = 4;
  args = llama_server_args(p);
  EXPECT_EQ(value_of(args, "-tb"), "3");
  EXPECT_EQ(value_of(args, "--threads-http"), "4");
  // -tb follows -t; --threads-http follows -tb.
  auto pos = [&](std::string const& f) { return std::find(args.begin(), args.end(), f) - args.begin(); };
  EXPECT_LT(pos("-t"), pos("-tb"));
  EXPECT_LT(pos("-tb"), pos("--threads-http"));
  EXPECT_LT(pos("--threads-http"), pos("-b"));
}

TEST(LlamaServerArgs, ExtraArgsAreAppendedUnchangedAndLast) {
  auto p = sub1b_launch();
  p.extra_args = {"--jinja", "-fa", "on", "--log-file=/tmp/x y.log"};
  auto args = llama_server_args(p);
  ASSERT_GE(args.size(), 4u);
  EXPECT_THAT(std::vector<std::string>(args.end() - 4, args.end()),
              ElementsAre("--jinja", "-fa", "on", "--log-file=/tmp/x y.log"));
  EXPECT_EQ(args.size(), llama_server_args(sub1b_launch()).size() + 4);
}

TEST(LlamaServerArgs, AnEmbeddingModelGetsEmbeddingAndItsPoolingBeforeTheExtraArgs) {
  auto p = sub1b_launch();
  p.extra_args = {"--jinja"};
  auto chat = llama_server_args(p);
  auto args = llama_server_args(p, "", config::model_kind::embedding, std::string("cls"));
  ASSERT_EQ(args.size(), chat.size() + 3);
  // The chat command line, then --embedding --pooling cls, then the extra args.
  EXPECT_TRUE(std::equal(chat.begin(), chat.end() - 1, args.begin()));
  EXPECT_THAT(std::vector<std::string>(args.end() - 4, args.end()),
              ElementsAre("--embedding", "--pooling", "cls", "--jinja"));
  // Without a pooling: llama-server takes the GGUF's.
  auto plain = llama_server_args(p, "", config::model_kind::embedding);
  EXPECT_TRUE(has(plain, "--embedding"));
  EXPECT_FALSE(has(plain, "--pooling"));
  EXPECT_FALSE(has(llama_server_args(p, "", config::model_kind::embedding, std::string()), "--pooling"));
}

TEST(LlamaServerArgs, ARerankModelGetsRerankingAloneAndAChatModelNeither) {
  auto p = sub1b_launch();
  auto args = llama_server_args(p, "", config::model_kind::rerank, std::string("mean"));
  EXPECT_TRUE(has(args, "--reranking"));
  EXPECT_FALSE(has(args, "--pooling")) << "a --pooling after --reranking would undo its rank pooling";
  EXPECT_FALSE(has(args, "--embedding"));
  EXPECT_EQ(args.size(), llama_server_args(p).size() + 1);
  auto chat = llama_server_args(p, "", config::model_kind::chat, std::string("mean"));
  EXPECT_EQ(chat, llama_server_args(p)) << "chat is the default and ignores pooling";
  for (auto const& f : {"--embedding", "--reranking", "--pooling"})
    EXPECT_FALSE(has(chat, f)) << f;
}

TEST(LlamaServerArgs, TheSupervisorPassesTheKindThrough) {
  auto p = sub1b_launch();
  auto o =
      supervisor_options_for(p, "/m/e.gguf", "/bin/true", config::model_kind::embedding, std::string("mean"));
  EXPECT_EQ(o.args, llama_server_args(p, "/m/e.gguf", config::model_kind::embedding, std::string("mean")));
  EXPECT_EQ(supervisor_options_for(p).args, llama_server_args(p));
}

TEST(ShellQuote, PlainWordsStayUnquoted) {
  EXPECT_EQ(shell_quote("--cache-ram"), "--cache-ram");
  EXPECT_EQ(shell_quote("/var/lib/ray/models/qwen2.5-0.5b.gguf"), "/var/lib/ray/models/qwen2.5-0.5b.gguf");
  EXPECT_EQ(shell_quote("-1"), "-1");
  EXPECT_EQ(shell_quote("--log-file=a,b:c@d%e+f"), "--log-file=a,b:c@d%e+f");
}

TEST(ShellQuote, EverythingElseIsSingleQuoted) {
  EXPECT_EQ(shell_quote(""), "''");
  EXPECT_EQ(shell_quote("a b"), "'a b'");
  EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
  EXPECT_EQ(shell_quote("$HOME"), "'$HOME'");
  EXPECT_EQ(shell_quote("~/x"), "'~/x'");
  EXPECT_EQ(shell_quote("a;rm -rf /"), "'a;rm -rf /'");
  EXPECT_EQ(shell_quote("line\nbreak"), "'line\nbreak'");
  EXPECT_EQ(shell_quote("*.gguf"), "'*.gguf'");
}

TEST(ShellCommand, JoinsQuotedWordsAndRoundTripsThroughSh) {
  std::vector<std::string> argv = {
      "/usr/local/bin/llama-server", "-m", "/models/my model's.gguf", "-a", "", "--x=$y"};
  EXPECT_EQ(shell_command(argv),
            "/usr/local/bin/llama-server -m '/models/my model'\\''s.gguf' -a '' '--x=$y'");
  // The shell sees the same words.
  std::string cmd = "printf '<%s>' " + shell_command({"a b", "it's", "", "$HOME", "x\ny"});
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[256];
  while (auto n = std::fread(buf, 1, sizeof buf, p))
    out.append(buf, n);
  ::pclose(p);
  EXPECT_EQ(out, "<a b><it's><><$HOME><x\ny>");
}

TEST(ShellCommand, AFirstWordWithAnEqualsSignIsQuotedSoItIsNotAnAssignment) {
  EXPECT_EQ(shell_command({"/opt/a=b/llama-server", "--port", "1"}), "'/opt/a=b/llama-server' --port 1");
}

}  // namespace
}  // namespace ray::backend
