#include "ray/telemetry/text_format.hpp"

#include <boost/json/parse.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace text = ray::telemetry::text;

namespace {

std::string number(double v) {
  std::string s;
  text::append_number(s, v);
  return s;
}

std::string json_string(std::string_view v) {
  std::string s;
  text::append_json_string(s, v);
  return s;
}

}  // namespace

TEST(TextFormat, IntegralValuesPrintAsIntegersAndOthersAsShortestRoundTrip) {
  EXPECT_EQ(number(0), "0");
  EXPECT_EQ(number(-0.0), "0");
  EXPECT_EQ(number(3), "3");
  EXPECT_EQ(number(-2), "-2");
  EXPECT_EQ(number(123456789012.0), "123456789012");
  EXPECT_EQ(number(0.005), "0.005");
  EXPECT_EQ(number(2.5), "2.5");
  EXPECT_EQ(number(0.1 + 0.2), "0.30000000000000004");  // 17 significant digits when needed
  EXPECT_EQ(number(1e20), "1e+20");
  EXPECT_EQ(number(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(number(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(number(std::nan("")), "NaN");
}

TEST(TextFormat, JsonNumbersTurnNonFiniteIntoNull) {
  std::string s;
  text::append_json_number(s, std::nan(""));
  s += ',';
  text::append_json_number(s, std::numeric_limits<double>::infinity());
  s += ',';
  text::append_json_number(s, 1.5);
  EXPECT_EQ(s, "null,null,1.5");
}

TEST(TextFormat, JsonStringsEscapeQuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(json_string("plain"), "\"plain\"");
  EXPECT_EQ(json_string("a\"b\\c\nd\te\r\x01"), R"("a\"b\\c\nd\te\r\u0001")");
  EXPECT_EQ(json_string("caf\xC3\xA9 \xF0\x9F\x98\x80"),
            "\"caf\xC3\xA9 \xF0\x9F\x98\x80\"");  // kept verbatim
}

TEST(TextFormat, IllFormedUtf8IsReplacedSoTheOutputStaysValid) {
  EXPECT_EQ(json_string("a\xFF"
                        "b"),
            "\"a\xEF\xBF\xBD"
            "b\"");
  EXPECT_EQ(json_string("\xC0\x80"), "\"\xEF\xBF\xBD\xEF\xBF\xBD\"");                  // overlong NUL
  EXPECT_EQ(json_string("\xED\xA0\x80"), "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"");  // surrogate
  EXPECT_EQ(json_string("\xE2\x82"), "\"\xEF\xBF\xBD\xEF\xBF\xBD\"");                  // truncated
  EXPECT_NO_THROW(boost::json::parse(json_string("x\xF4\x90\x80\x80y")));
}

TEST(TextFormat, Utf8SequenceLengthAcceptsOnlyWellFormedSequences) {
  EXPECT_EQ(text::utf8_sequence_length("a", 0), 1u);
  EXPECT_EQ(text::utf8_sequence_length("\xC3\xA9", 0), 2u);
  EXPECT_EQ(text::utf8_sequence_length("\xE2\x82\xAC", 0), 3u);
  EXPECT_EQ(text::utf8_sequence_length("\xF0\x9F\x98\x80", 0), 4u);
  EXPECT_EQ(text::utf8_sequence_length("\xC1\xBF", 0), 0u);          // overlong
  EXPECT_EQ(text::utf8_sequence_length("\xE0\x80\x80", 0), 0u);      // overlong
  EXPECT_EQ(text::utf8_sequence_length("\xED\xBF\xBF", 0), 0u);      // surrogate
  EXPECT_EQ(text::utf8_sequence_length("\xF4\x90\x80\x80", 0), 0u);  // above U+10FFFF
  EXPECT_EQ(text::utf8_sequence_length("\x80", 0), 0u);              // lone continuation
}

TEST(TextFormat, JsonValuesSerializeCompactlyInInsertionOrder) {
  auto v = boost::json::parse(R"({"b":1,"a":[true,null,-3,1.5,"x"],"c":{"d":18446744073709551615}})");
  std::string s;
  text::append_json_value(s, v);
  EXPECT_EQ(s, R"({"b":1,"a":[true,null,-3,1.5,"x"],"c":{"d":18446744073709551615}})");
}

TEST(TextFormat, LabelValuesEscapeBackslashQuoteAndNewline) {
  std::string s;
  text::append_label_value(s, "a\\b\"c\nd\te");
  EXPECT_EQ(s, R"(a\\b\"c\nd)"
               "\te");
}

TEST(TextFormat, HelpTextEscapesBackslashAndNewlineOnly) {
  std::string s;
  text::append_help(s, "say \"hi\"\\\nbye");
  EXPECT_EQ(s, R"(say "hi"\\\nbye)");
}
