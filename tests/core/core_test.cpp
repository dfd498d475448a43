#include "ray/core/core.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

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

// Review finding (remote.cpp): a backend's negative or NaN number was cast to size_t (undefined behaviour).
TEST(Core, ToCountRefusesWhatIsNotACount) {
  EXPECT_EQ(ray::to_count(3.0), std::optional<std::uint32_t>(3));
  EXPECT_EQ(ray::to_count(0.0), std::optional<std::uint32_t>(0));
  EXPECT_EQ(ray::to_count(-1.0), std::nullopt);
  EXPECT_EQ(ray::to_count(std::nan("")), std::nullopt);
  EXPECT_EQ(ray::to_count(std::numeric_limits<double>::infinity()), std::nullopt);
  EXPECT_EQ(ray::to_count(1e20), std::nullopt);
  EXPECT_EQ(ray::to_count(65.0, 64), std::nullopt);
  EXPECT_EQ(ray::to_count(64.0, 64), std::optional<std::uint32_t>(64));
}

TEST(Core, Utf8IsValidatedStrictly) {
  EXPECT_TRUE(ray::is_valid_utf8(""));
  EXPECT_TRUE(ray::is_valid_utf8("plain ascii"));
  EXPECT_TRUE(ray::is_valid_utf8("\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_FALSE(ray::is_valid_utf8("\xc8"));              // truncated
  EXPECT_FALSE(ray::is_valid_utf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(ray::is_valid_utf8("\xed\xa0\x80"));      // a surrogate
  EXPECT_FALSE(ray::is_valid_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(ray::is_valid_utf8("\xff"));
  EXPECT_FALSE(ray::is_valid_utf8("ab\x80"));  // a lone continuation byte
}

}  // namespace
