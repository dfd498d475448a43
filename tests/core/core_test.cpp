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

std::string hmac_hex(std::string_view key, std::string_view data) {
  return ray::to_hex(ray::hmac_sha256(key, data));
}

TEST(Core, ToHexIsLowerCaseTwoDigitsPerByte) {
  std::uint8_t const bytes[] = {0x00, 0x0f, 0xa5, 0xff};
  EXPECT_EQ(ray::to_hex(bytes), "000fa5ff");
  EXPECT_EQ(ray::to_hex({}), "");
}

// RFC 4231 §4.2–4.8 (case 5, a truncated output, does not apply to a full digest).
TEST(Core, HmacSha256MatchesRfc4231) {
  EXPECT_EQ(hmac_hex(std::string(20, '\x0b'), "Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");  // case 1
  EXPECT_EQ(hmac_hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");  // case 2
  EXPECT_EQ(hmac_hex(std::string(20, '\xaa'), std::string(50, '\xdd')),
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");  // case 3
  std::string key4;
  for (char c = 1; c <= 25; ++c)
    key4.push_back(c);
  EXPECT_EQ(hmac_hex(key4, std::string(50, '\xcd')),
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");  // case 4
  EXPECT_EQ(hmac_hex(std::string(131, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First"),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");  // case 6
  EXPECT_EQ(
      hmac_hex(std::string(131, '\xaa'),
               "This is a test using a larger than block-size key and a larger than block-size data. The "
               "key needs to be hashed before being used by the HMAC algorithm."),
      "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");  // case 7
}

// Keys around the 64-byte block (only a longer key is hashed first) and the empty key and message; expected
// values from `openssl dgst -sha256 -hmac`.
TEST(Core, HmacSha256KeysAroundTheBlockSize) {
  EXPECT_EQ(hmac_hex(std::string(63, 'k'), "abc"),
            "23670528b6b8c55d2f8ef2f36c1f000cec7c23ec76881c485f2e89b5fe705cca");
  EXPECT_EQ(hmac_hex(std::string(64, 'k'), "abc"),
            "ae0c0e4a2340cf50185eb46aaa8723f4769153661612e212fb0d1fa3170c6202");
  EXPECT_EQ(hmac_hex(std::string(65, 'k'), "abc"),
            "ed378e5dfa30dc98814ba09b2e610d9b6af66054922ceef9480da094a3f11b2d");
  EXPECT_EQ(hmac_hex("", ""), "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

}  // namespace
