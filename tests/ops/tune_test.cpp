// ray tune: the KV math against hand-computed shapes (GQA and not), a plan for the fixture GGUF on a 4 GiB /
// 2-core box, a refusal when the model cannot fit, and the real binary's fragment through `ray config
// validate`.
#include "ray/ops/ops.hpp"
#include "support/ray_process.hpp"

#include <gtest/gtest.h>
#include <boost/json.hpp>

namespace {

namespace ops = ray::ops;
namespace gguf = ray::gguf;
namespace rt = ray::test;
using namespace std::chrono_literals;

std::string const fixture = std::string(RAY_TEST_FIXTURES) + "/models/tiny-llama-64x2.gguf";

TEST(TuneKv, LlamaStyleGqaShape) {
  // 32 layers, 32 query heads sharing 8 KV heads of dim 128: 2 × 32 × 8 × 128 × 2 bytes = 131072 per token.
  gguf::model_facts m;
  m.architecture = "llama";
  m.block_count = 32;
  m.head_count = 32;
  m.head_count_kv = 8;
  m.key_length = 128;
  m.value_length = 128;
  EXPECT_EQ(*gguf::kv_cache_bytes_per_token(m, 2.0), 131'072u);
  // q8_0: 34 bytes per 32 elements → 65536 × 34/32 = 69632.
  EXPECT_EQ(*gguf::kv_cache_bytes_per_token(m, *gguf::kv_type_bytes("q8_0")), 69'632u);
  // 4096 cells of f16: exactly 512 MiB.
  EXPECT_EQ(*gguf::kv_cache_bytes_per_token(m, 2.0) * 4096, 512u * gguf::mib);
}

TEST(TuneKv, FullAttentionShapeWithoutGqa) {
  // 24 layers, 16 heads, head dim 64 (n_embd 1024), every head has its own K/V: 2 × 24 × 16 × 64 × 2 = 98304.
  gguf::model_facts m;
  m.architecture = "gpt2";
  m.block_count = 24;
  m.head_count = 16;
  m.head_count_kv = 16;
  m.key_length = 64;
  m.value_length = 64;
  EXPECT_EQ(*gguf::kv_cache_bytes_per_token(m, 2.0), 98'304u);
}

TEST(TuneKv, RecordedLlamaServerShapeMatchesItsKvBuffer) {
  // The recorded llama-server (shared/fixtures/llama-server: n_embd 512, 8 layers, -c 2048 -np 2, f16, no
  // GQA in that random llama) allocates K and V of n_embd × n_ctx × n_layer f16 each: 2 × 512 × 2048 × 8 × 2
  // = 32 MiB. Ray's estimate for that shape must be within 10 %.
  gguf::model_facts m;
  m.architecture = "llama";
  m.block_count = 8;
  m.head_count = 8;
  m.head_count_kv = 8;
  m.key_length = 64;
  m.value_length = 64;
  double const estimate = static_cast<double>(*gguf::kv_cache_bytes_per_token(m, 2.0) * 2048);
  double const llama_server = 2.0 * 512 * 2048 * 8 * 2;
  EXPECT_NEAR(estimate / llama_server, 1.0, 0.10);
}

TEST(Tune, FixturePlanOnA4GiBTwoCoreBoxFitsWithHeadroom) {
  auto info = gguf::read_header_file(fixture);
  ASSERT_TRUE(info) << info.error().message;
  ops::box b{.ram_bytes = 4096 * gguf::mib, .ram_source = "--ram-mib", .cores = 2, .cores_source = "--cores"};
  auto p = ops::plan(fixture, *info, b, {});
  ASSERT_TRUE(p) << p.error().message;
  auto const& m = p->memory;
  // The sum fits the box with room to spare.
  EXPECT_EQ(m.backend_budget + m.os_reserve + m.ray, m.ram);
  EXPECT_LE(m.backend.total, m.backend_budget);
  EXPECT_GT(m.headroom(), 0u);
  EXPECT_EQ(m.backend.total, m.backend.weights_bytes + m.backend.kv_bytes + m.backend.cache_ram_bytes +
                                 m.backend.compute_bytes + m.backend.headroom_bytes);
  // KV: 2 layers × 4 KV heads × (16 + 16) × 2 bytes = 512 per token, times the whole pool.
  EXPECT_EQ(p->kv_bytes_per_token, 512u);
  EXPECT_EQ(m.backend.kv_bytes, 512u * p->launch.ctx_size);
  EXPECT_EQ(p->launch.threads, 2u);
  EXPECT_EQ(p->launch.parallel, 2u);
  EXPECT_EQ(p->launch.ctx_size, p->ctx_per_slot * 2);
  // Bounded prompt cache, never llama-server's 8 GiB default or "unlimited".
  EXPECT_GE(p->launch.cache_ram_mib, 0);
  EXPECT_LE(p->launch.cache_ram_mib, 1024);
  EXPECT_LE(p->scheduler.max_inflight_tokens, p->launch.ctx_size);
  EXPECT_EQ(p->scheduler.concurrency, p->launch.parallel);
  // The command line is the supervisor's flag builder's.
  auto const& cmd = p->command_line;
  auto at = [&](std::string const& flag) {
    auto it = std::find(cmd.begin(), cmd.end(), flag);
    return it == cmd.end() || it + 1 == cmd.end() ? std::string() : *(it + 1);
  };
  EXPECT_EQ(at("-c"), std::to_string(p->launch.ctx_size));
  EXPECT_EQ(at("--cache-ram"), std::to_string(p->launch.cache_ram_mib));
  // The fragment loads as a config.
  auto loaded = ray::config::load_from_text(boost::json::serialize(p->config_fragment), {}, {});
  ASSERT_TRUE(loaded) << loaded.error().message;
  ASSERT_TRUE(loaded->cfg.model.adapter.launch);
  EXPECT_EQ(loaded->cfg.model.adapter.launch->ctx_size, p->launch.ctx_size);
  // Every number is explained.
  EXPECT_GE(p->reasons.size(), 20u);
  for (auto const& r : p->reasons)
    EXPECT_FALSE(r.why.empty()) << r.key;
}

TEST(Tune, RefusesAModelThatCannotFitWithAClearMessage) {
  auto info = gguf::read_header_file(fixture);
  ASSERT_TRUE(info);
  // Pretend the file holds 6 GiB of weights: no context length or KV type helps on a 4 GiB box.
  info->tensor_bytes = 6ull * 1024 * gguf::mib;
  ops::box b{.ram_bytes = 4096 * gguf::mib, .ram_source = "--ram-mib", .cores = 2, .cores_source = "--cores"};
  auto p = ops::plan(fixture, *info, b, {});
  ASSERT_FALSE(p);
  EXPECT_TRUE(p.error().message.starts_with("the model cannot fit")) << p.error().message;
  EXPECT_NE(p.error().message.find("weights 6144 MiB"), std::string::npos) << p.error().message;
  EXPECT_NE(p.error().message.find("--ctx"), std::string::npos) << p.error().message;
}

TEST(Tune, ShortensTheContextAndThenQuantizesTheKvWhenMemoryIsTight) {
  auto info = gguf::read_header_file(fixture);
  ASSERT_TRUE(info);
  // A 32-layer/8-KV-head/128-dim shape (128 KiB per token) on a 1.5 GiB box: 2 × 4096 f16 cells would be 1
  // GiB.
  info->model.block_count = 32;
  info->model.head_count = 32;
  info->model.head_count_kv = 8;
  info->model.key_length = 128;
  info->model.value_length = 128;
  ops::box b{.ram_bytes = 1536 * gguf::mib, .ram_source = "--ram-mib", .cores = 2, .cores_source = "--cores"};
  auto p = ops::plan(fixture, *info, b, {});
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_LT(p->ctx_per_slot, 4096u);
  EXPECT_LE(p->memory.backend.total, p->memory.backend_budget);
}

TEST(TuneCli, TheBinaryPrintsAPlanAndItsFragmentPassesConfigValidate) {
  rt::temp_dir dir;
  rt::ray_process tune(
      rt::spawn_options{.binary = RAY_BINARY,
                        .args = {"tune", "--model", fixture, "--ram-mib", "4096", "--cores", "2", "--json"}});
  ASSERT_EQ(tune.wait_exit(rt::in(30s)), 0) << tune.output();
  auto v = boost::json::parse(tune.stdout_text());
  auto const& mem = v.at("memory").as_object();
  EXPECT_LE(mem.at("llamaServerTotalBytes").to_number<std::uint64_t>(),
            mem.at("llamaServerBudgetBytes").to_number<std::uint64_t>());
  EXPECT_NE(std::string(v.at("commandLineText").as_string()).find("--cache-ram"), std::string::npos);
  auto path = dir.write_file("ray.json", boost::json::serialize(v.at("config")));
  rt::ray_process validate(
      rt::spawn_options{.binary = RAY_BINARY, .args = {"config", "validate", path.string()}});
  EXPECT_EQ(validate.wait_exit(rt::in(30s)), 0) << validate.output();
  EXPECT_NE(validate.stdout_text().find("valid"), std::string::npos);

  rt::ray_process human(rt::spawn_options{
      .binary = RAY_BINARY, .args = {"tune", "--model", fixture, "--ram-mib", "4096", "--cores", "2"}});
  ASSERT_EQ(human.wait_exit(rt::in(30s)), 0) << human.output();
  EXPECT_NE(human.stdout_text().find("kvBytesPerToken"), std::string::npos);

  rt::ray_process tiny(rt::spawn_options{
      .binary = RAY_BINARY, .args = {"tune", "--model", fixture, "--ram-mib", "300", "--cores", "2"}});
  EXPECT_EQ(tiny.wait_exit(rt::in(30s)), 1) << tiny.output();
  EXPECT_NE(tiny.stderr_text().find("cannot fit"), std::string::npos) << tiny.output();

  rt::ray_process missing(rt::spawn_options{
      .binary = RAY_BINARY, .args = {"tune", "--model", (dir.path() / "none.gguf").string()}});
  EXPECT_EQ(missing.wait_exit(rt::in(30s)), 2) << missing.output();
  EXPECT_NE(missing.stderr_text().find("--model"), std::string::npos);
}

}  // namespace
