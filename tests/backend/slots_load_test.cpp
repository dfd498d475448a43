// The load view of llama-server's /slots and /metrics (backend/parse.hpp: parse_slots_load,
// parse_prometheus_sample) that the Inference Extension gauges report (docs/scale-out.md), on the recorded
// llama-server answers in tests/fixtures/llama-server and on hand-made hostile ones.
#include "ray/backend/parse.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

namespace {

using ray::backend::parse_prometheus_sample;
using ray::backend::parse_slots_load;

// The body of a recorded exchange: everything after the response's blank line.
std::string fixture_body(std::string const& name) {
  std::ifstream in(std::string(RAY_TEST_FIXTURES) + "/llama-server/" + name, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string all = ss.str();
  auto at = all.find("\r\n\r\n");
  if (at == std::string::npos) return {};
  return all.substr(at + 4);
}

TEST(SlotsLoad, BusyRecordingCountsThePromptAndTheDecodedTokensOfTheProcessingSlot) {
  auto body = fixture_body("slots-busy.http");
  ASSERT_FALSE(body.empty());
  auto load = parse_slots_load(body, false);
  ASSERT_TRUE(load);
  // Slot 0 streams: 184 prompt tokens + 174 decoded; slot 1 is idle. Two slots of n_ctx 1024.
  EXPECT_EQ(load->slots, 2u);
  EXPECT_EQ(load->processing, 1u);
  EXPECT_EQ(load->tokens_held, 184u + 174u);
  EXPECT_EQ(load->capacity, 2048u);
  ASSERT_TRUE(load->kv_usage);
  EXPECT_DOUBLE_EQ(*load->kv_usage, 358.0 / 2048.0);
}

TEST(SlotsLoad, IdleRecordingHoldsNothingThoughASlotKeepsItsCachedPrompt) {
  // Slot 1 keeps the 84-token prompt of its last task, but is not processing: reusable cache, not load.
  auto load = parse_slots_load(fixture_body("slots-idle.http"), false);
  ASSERT_TRUE(load);
  EXPECT_EQ(load->slots, 2u);
  EXPECT_EQ(load->processing, 0u);
  EXPECT_EQ(load->tokens_held, 0u);
  ASSERT_TRUE(load->kv_usage);
  EXPECT_EQ(*load->kv_usage, 0.0);
}

TEST(SlotsLoad, AUnifiedKvBufferIsCountedOnceNotPerSlot) {
  // With --kv-unified every slot reports the whole buffer as its n_ctx.
  auto load = parse_slots_load(fixture_body("slots-busy.http"), true);
  ASSERT_TRUE(load);
  EXPECT_EQ(load->capacity, 1024u);
  EXPECT_DOUBLE_EQ(*load->kv_usage, 358.0 / 1024.0);
}

TEST(SlotsLoad, ASlotNeverHoldsMoreThanItsContextAndUsageStaysWithinOne) {
  auto load = parse_slots_load(
      R"([{"id":0,"n_ctx":100,"is_processing":true,"n_prompt_tokens":90,"next_token":[{"n_decoded":50}]},)"
      R"({"id":1,"n_ctx":100,"is_processing":true,"n_prompt_tokens":1e30}])",
      false);
  ASSERT_TRUE(load);
  // Slot 0: 140 → 100. Slot 1: an out-of-range prompt count reads as absent (0).
  EXPECT_EQ(load->tokens_held, 100u);
  EXPECT_DOUBLE_EQ(*load->kv_usage, 0.5);
  auto full = parse_slots_load(R"([{"n_ctx":10,"is_processing":true,"n_prompt_tokens":10}])", true);
  ASSERT_TRUE(full);
  EXPECT_EQ(*full->kv_usage, 1.0);
}

TEST(SlotsLoad, WhatIsNotASlotListIsUnknown) {
  EXPECT_FALSE(parse_slots_load("", false));
  EXPECT_FALSE(parse_slots_load(R"({"error":{"code":501}})", false));
  EXPECT_FALSE(parse_slots_load("[{", false));
  // A list without any n_ctx: no capacity, so no usage (unknown, not 0).
  auto none = parse_slots_load(R"([{"id":0,"is_processing":true},{"n_ctx":-5},{"n_ctx":"1024"}])", false);
  ASSERT_TRUE(none);
  EXPECT_EQ(none->slots, 0u);
  EXPECT_FALSE(none->kv_usage);
  // At most 2^9 slots are read, each at most 2^22 tokens: the sums cannot overflow.
  std::string many = "[";
  for (int i = 0; i < 1000; ++i)
    many += std::string(i ? "," : "") + R"({"n_ctx":4194304,"is_processing":true,"n_prompt_tokens":4194304})";
  many += "]";
  auto big = parse_slots_load(many, false);
  ASSERT_TRUE(big);
  EXPECT_EQ(big->slots, 512u);
  EXPECT_EQ(big->capacity, 512ull << 22);
  EXPECT_EQ(*big->kv_usage, 1.0);
}

TEST(PrometheusSample, ReadsLlamaServersDeferredRequestsFromTheRecording) {
  auto body = fixture_body("metrics-busy.http");
  ASSERT_FALSE(body.empty());
  EXPECT_EQ(parse_prometheus_sample(body, "llamacpp:requests_deferred"), 0.0);
  EXPECT_EQ(parse_prometheus_sample(body, "llamacpp:requests_processing"), 1.0);
  // A name that is only a prefix of another, or absent, is not matched.
  EXPECT_FALSE(parse_prometheus_sample(body, "llamacpp:requests"));
  EXPECT_FALSE(parse_prometheus_sample(body, "llamacpp:no_such_metric"));
}

TEST(PrometheusSample, OnlyAFiniteNumberIsAValue) {
  EXPECT_EQ(parse_prometheus_sample("# HELP d x\nd 3 1700000000000\n", "d"), 3.0);  // with a timestamp
  EXPECT_FALSE(parse_prometheus_sample("d NaN\n", "d"));
  EXPECT_FALSE(parse_prometheus_sample("d +Inf\n", "d"));
  EXPECT_FALSE(parse_prometheus_sample("d 3x\n", "d"));
  EXPECT_FALSE(parse_prometheus_sample("d{a=\"1\"} 3\n", "d"));  // labelled series are not read
  EXPECT_EQ(parse_prometheus_sample("d 7", "d"), 7.0);           // no final newline
}

}  // namespace
