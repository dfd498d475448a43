#include "ray/prompt/prompt.hpp"

#include <gtest/gtest.h>

namespace {

using namespace ray::prompt;

TEST(PromptCompiler, CollapseWhitespaceNormalisesLinesAndBlankRuns) {
  EXPECT_EQ(collapse_whitespace("  a \t b  \r\n\r\n\r\n  c\n\n"), "a b\n\nc");
  EXPECT_EQ(collapse_whitespace("\n\n x \n"), "x");
  EXPECT_EQ(collapse_whitespace(""), "");
}

TEST(PromptCompiler, DedupeDropsLaterCaseInsensitiveDuplicatesButKeepsBlankLines) {
  EXPECT_EQ(dedupe_lines("Hello\nworld\n\nhello \n\nWORLD\nnew"), "Hello\nworld\n\n\nnew");
}

TEST(PromptCompiler, InputLinesRepeatingTheSystemPromptAreDroppedWhenLong) {
  std::string sys = "You are a careful assistant for email.";
  std::string input = "you are a careful assistant for email.\nshort\nWrite a reply.";
  EXPECT_EQ(drop_lines_repeating_system(input, sys), "short\nWrite a reply.");
  // Short lines (< 20 chars) stay even when they repeat a system line.
  EXPECT_EQ(drop_lines_repeating_system("Be brief.", "Be brief."), "Be brief.");
  // Never leaves the input empty.
  EXPECT_EQ(drop_lines_repeating_system(sys, sys), sys);
}

TEST(PromptCompiler, ShapeMasksVariablePartsSoSimilarInputsShareAFamily) {
  auto a =
      input_shape("Order 1234 from jane@example.com see https://x.io/a?b=1 id deadbeefdeadbeef00 \"Acme\"");
  auto b = input_shape("Order 98 from bob@corp.org see https://y.io id 0123456789abcdef01 \"Other Co\"");
  EXPECT_EQ(a, b);
  EXPECT_NE(a.find("<email>"), std::string::npos);
  EXPECT_NE(a.find("<url>"), std::string::npos);
  EXPECT_LE(input_shape(std::string(1000, 'x') + " tail").size(), 240u);
}

TEST(PromptCompiler, FamilyKeyPrefersTemplateThenMetadataThenShape) {
  ray::config::prompt_compiler_config cfg;
  auto t = compile(cfg, "", "hi", "email.follow_up", {{"useCase", "x"}});
  EXPECT_EQ(t.family_key, "template:email.follow_up");
  auto m = compile(cfg, "", "hi", "", {{"useCase", "triage"}});
  EXPECT_EQ(m.family_key, "meta:useCase=triage");
  auto s = compile(cfg, "", "hi 12", "", {});
  EXPECT_EQ(s.family_key.rfind("shape:", 0), 0u);
  EXPECT_EQ(s.family_key, compile(cfg, "", "hi 99", "", {}).family_key);
}

TEST(PromptCompiler, AffinityKeyDependsOnSystemPromptAndFamily) {
  ray::config::prompt_compiler_config cfg;
  auto a = compile(cfg, "sys A", "hi", "f", {});
  auto b = compile(cfg, "sys B", "hi", "f", {});
  auto a2 = compile(cfg, "sys A", "other", "f", {});
  EXPECT_NE(a.affinity_key, b.affinity_key);
  EXPECT_EQ(a.affinity_key, a2.affinity_key);
}

TEST(PromptCompiler, ReportsCharsBeforeAndAfter) {
  ray::config::prompt_compiler_config cfg;
  auto c = compile(cfg, "", "a   b\n\n\n\nc", "", {});
  EXPECT_EQ(c.input, "a b\n\nc");
  EXPECT_EQ(c.chars_before, 10u);
  EXPECT_EQ(c.chars_after, 6u);
}

TEST(PromptCompiler, DisabledCompilerLeavesTextAlone) {
  ray::config::prompt_compiler_config cfg;
  cfg.enabled = false;
  auto c = compile(cfg, "", "a   b", "", {});
  EXPECT_EQ(c.input, "a   b");
}

TEST(PromptTruncation, SystemIsCutFirstAndCodePointsStayWhole) {
  std::string sys = "0123456789";
  std::string in = "h\xc3\xa9llo";  // 5 code points, 6 bytes
  EXPECT_TRUE(truncate_prompt(sys, in, 8));
  EXPECT_EQ(sys, "012");
  EXPECT_EQ(in, "h\xc3\xa9llo");
  std::string sys2 = "abc";
  std::string in2 = "h\xc3\xa9llo";
  EXPECT_TRUE(truncate_prompt(sys2, in2, 2));
  EXPECT_EQ(sys2, "");
  EXPECT_EQ(in2, "h\xc3\xa9");
  std::string s3 = "a", i3 = "b";
  EXPECT_FALSE(truncate_prompt(s3, i3, 2));
}

}  // namespace
