#include "ray/core/core.hpp"

#include <gtest/gtest.h>

namespace {

TEST(Core, CodeNamesAreLowerSnake) {
  EXPECT_EQ(ray::code_name(ray::errc::queue_full), "queue_full");
  EXPECT_EQ(ray::code_name(ray::errc::request_context_window_exceeded), "request_context_window_exceeded");
  EXPECT_EQ(ray::code_name(ray::errc::async_queue_disabled), "async_queue_disabled");
}

TEST(Core, RequestIdsHavePrefixAndSixteenHexDigits) {
  auto a = ray::new_request_id();
  auto b = ray::new_request_id();
  ASSERT_EQ(a.size(), 20u);
  EXPECT_EQ(a.substr(0, 4), "req_");
  EXPECT_NE(a, b);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef", 4), std::string::npos);
}

TEST(Core, IncomingRequestIdsAreValidatedByCharsetAndLength) {
  EXPECT_TRUE(ray::is_valid_request_id("abc-DEF_1.2"));
  EXPECT_FALSE(ray::is_valid_request_id(""));
  EXPECT_FALSE(ray::is_valid_request_id("has space"));
  EXPECT_FALSE(ray::is_valid_request_id(std::string(129, 'a')));
  EXPECT_TRUE(ray::is_valid_request_id(std::string(128, 'a')));
}

TEST(Core, TokenEstimateIsBytesOverFourButAtLeastNonAsciiCodePoints) {
  EXPECT_EQ(ray::estimate_tokens(""), 0u);
  EXPECT_EQ(ray::estimate_tokens("abcd"), 1u);
  EXPECT_EQ(ray::estimate_tokens("abcde"), 2u);
  // Six CJK characters: 18 bytes -> 5 by bytes, but 6 code points.
  EXPECT_EQ(ray::estimate_tokens("\xe4\xbd\xa0\xe5\xa5\xbd\xe4\xbd\xa0\xe5\xa5\xbd\xe4\xbd\xa0\xe5\xa5\xbd"),
            6u);
}

TEST(Core, CodePointsCountMultibyteSequencesOnce) {
  EXPECT_EQ(ray::count_code_points("h\xc3\xa9llo"), 5u);
  EXPECT_EQ(ray::count_code_points("\xf0\x9f\x98\x80"), 1u);
}

TEST(Core, SafePrefixNeverSplitsACodePoint) {
  std::string s = "a\xc3\xa9";  // 'a' + 2-byte e-acute
  EXPECT_EQ(ray::utf8_safe_prefix(s, 2), 1u);
  EXPECT_EQ(ray::utf8_safe_prefix(s, 3), 3u);
  EXPECT_EQ(ray::utf8_safe_prefix(s, 10), 3u);
}

TEST(Core, TimestampsAreRfc3339WithMilliseconds) {
  std::chrono::system_clock::time_point t{std::chrono::milliseconds(1'795'795'200'123)};
  EXPECT_EQ(ray::format_timestamp(t), "2026-11-27T16:00:00.123Z");
}

TEST(Core, ManualClockMovesOnlyWhenAdvanced) {
  ray::manual_clock c;
  auto t0 = c.now();
  c.advance(std::chrono::milliseconds(250));
  EXPECT_EQ(c.now() - t0, std::chrono::milliseconds(250));
}

TEST(Core, TrimAndCaseInsensitiveCompare) {
  EXPECT_EQ(ray::trim("  x y \n"), "x y");
  EXPECT_TRUE(ray::iequals("Bearer", "bEARER"));
  EXPECT_FALSE(ray::iequals("Bearer", "Bearer "));
}

}  // namespace
