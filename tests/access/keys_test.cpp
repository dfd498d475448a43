#include "ray/access/access.hpp"

#include <gtest/gtest.h>

#include <openssl/evp.h>

#include <array>
#include <string>
#include <vector>

namespace {

using ray::access::bearer_token;
using ray::access::key_set;

constexpr char const* key_a = "alpha-key-0123456789abcdef";
constexpr char const* key_b = "bravo-key-0123456789abcdef";
constexpr char const* key_c = "charlie_key~0123456789+/==";

ray::config::auth_config enabled_auth() {
  ray::config::auth_config a;
  a.enabled = true;
  return a;
}

std::string sha256_hex(std::string_view text, bool upper = false) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int len = 0;
  EVP_Digest(text.data(), text.size(), md.data(), &len, EVP_sha256(), nullptr);
  char const* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += digits[md[i] >> 4];
    out += digits[md[i] & 0xf];
  }
  return out;
}

key_set load_ok(ray::config::auth_config const& a, std::optional<std::string> env) {
  auto r = key_set::load(a, std::move(env));
  EXPECT_TRUE(r.has_value()) << (r.has_value() ? "" : r.error().message);
  return r.has_value() ? *r : key_set{};
}

std::string load_error(ray::config::auth_config const& a, std::optional<std::string> env) {
  auto r = key_set::load(a, std::move(env));
  EXPECT_FALSE(r.has_value());
  if (r.has_value()) return {};
  EXPECT_EQ(r.error().code, ray::errc::invalid_request);
  return r.error().message;
}

// ---------------------------------------------------------------------------------------------------------------
// key_set::load

TEST(KeySetLoad, SplitsOnCommasAndNewlinesTrimsAndDropsEmptyEntries) {
  auto keys =
      load_ok(enabled_auth(), std::string(" ") + key_a + " ,\n,\r\n\t" + key_b + "\r\n\n," + key_c + ",");
  EXPECT_EQ(keys.size(), 3u);
  EXPECT_TRUE(keys.verify(key_a));
  EXPECT_TRUE(keys.verify(key_b));
  EXPECT_TRUE(keys.verify(key_c));
}

TEST(KeySetLoad, MergesDuplicateKeysAndAKeyAlsoGivenAsDigest) {
  auto a = enabled_auth();
  a.api_key_sha256 = {sha256_hex(key_a), sha256_hex(key_a, true)};
  auto keys = load_ok(a, std::string(key_a) + "," + key_a + "\n" + key_b);
  EXPECT_EQ(keys.size(), 2u);
}

TEST(KeySetLoad, AcceptsDigestEntriesInEitherCaseWithoutAnEnvValue) {
  auto a = enabled_auth();
  a.api_key_sha256 = {sha256_hex(key_a), sha256_hex(key_b, true)};
  auto keys = load_ok(a, std::nullopt);
  EXPECT_EQ(keys.size(), 2u);
  EXPECT_TRUE(keys.verify(key_a));
  EXPECT_TRUE(keys.verify(key_b));
  EXPECT_FALSE(keys.verify(key_c));
}

TEST(KeySetLoad, RejectsAKeyShorterThan16CharactersWithoutPrintingIt) {
  std::string const weak = "short-key-15chr";
  ASSERT_EQ(weak.size(), 15u);
  std::string msg = load_error(enabled_auth(), std::string(key_a) + "," + weak);
  EXPECT_NE(msg.find("RAY_API_KEYS"), std::string::npos) << msg;
  EXPECT_NE(msg.find("key #2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("shorter than 16"), std::string::npos) << msg;
  EXPECT_EQ(msg.find(weak), std::string::npos) << msg;
  EXPECT_EQ(msg.find(key_a), std::string::npos) << msg;
}

TEST(KeySetLoad, AcceptsAKeyOfExactly16And256Characters) {
  auto keys = load_ok(enabled_auth(), std::string(16, 'k') + "," + std::string(256, 'z'));
  EXPECT_EQ(keys.size(), 2u);
}

TEST(KeySetLoad, RejectsAKeyLongerThan256Characters) {
  std::string const long_key(257, 'q');
  std::string msg = load_error(enabled_auth(), long_key);
  EXPECT_NE(msg.find("longer than 256"), std::string::npos) << msg;
  EXPECT_EQ(msg.find(long_key.substr(0, 16)), std::string::npos) << msg;
}

TEST(KeySetLoad, RejectsAKeyWithACharacterABearerTokenCannotCarry) {
  std::vector<std::string> const bad_keys = {"secret key with spaces", "secret!key!0123456789",
                                             "secret=key=0123456789",
                                             "secret\x01"
                                             "key0123456789",
                                             "s\xc3\xa9"
                                             "cret-key-0123456789"};
  for (std::string const& bad : bad_keys) {
    std::string msg = load_error(enabled_auth(), bad);
    EXPECT_NE(msg.find("bearer token cannot carry"), std::string::npos) << msg;
    EXPECT_EQ(msg.find(bad), std::string::npos) << msg;
  }
}

TEST(KeySetLoad, RejectsAMalformedDigestNamingItsIndexOnly) {
  auto a = enabled_auth();
  std::string const bad = sha256_hex(key_a).substr(0, 63) + "g";
  a.api_key_sha256 = {sha256_hex(key_b), bad};
  std::string msg = load_error(a, std::nullopt);
  EXPECT_NE(msg.find("auth.apiKeySha256[1]"), std::string::npos) << msg;
  EXPECT_EQ(msg.find(bad), std::string::npos) << msg;
  EXPECT_EQ(msg.find(sha256_hex(key_b)), std::string::npos) << msg;
}

TEST(KeySetLoad, EnabledWithoutAnyKeyIsAnErrorNamingTheVariable) {
  auto a = enabled_auth();
  a.api_key_env = "MY_GATEWAY_KEYS";
  for (std::optional<std::string> env : {std::optional<std::string>{}, std::optional<std::string>{""},
                                         std::optional<std::string>{" ,\n , "}}) {
    std::string msg = load_error(a, env);
    EXPECT_NE(msg.find("MY_GATEWAY_KEYS"), std::string::npos) << msg;
    EXPECT_NE(msg.find("auth.apiKeySha256"), std::string::npos) << msg;
  }
}

TEST(KeySetLoad, DisabledAuthReadsNothingAndAcceptsNothing) {
  ray::config::auth_config a;  // enabled = false
  auto keys = load_ok(a, std::string("weak"));
  EXPECT_TRUE(keys.empty());
  EXPECT_FALSE(keys.verify("weak"));
}

TEST(KeySetLoad, AcceptsExactly1024DistinctKeysAndRejects1025) {
  std::string env;
  for (int i = 0; i < 1024; ++i)
    env += "key-number-" + std::to_string(100000 + i) + ",";
  auto keys = load_ok(enabled_auth(), env);
  EXPECT_EQ(keys.size(), 1024u);
  std::string msg = load_error(enabled_auth(), env + "one-key-too-many-0000");
  EXPECT_NE(msg.find("at most 1024"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("key-number"), std::string::npos) << msg;
}

TEST(KeySetLoad, NoErrorMessageContainsAnyKeyText) {
  // Every failure mode, each with valid keys alongside: none of them may leak into the message.
  std::string const good = std::string(key_a) + "\n" + key_b;
  auto with_bad_digest = enabled_auth();
  with_bad_digest.api_key_sha256 = {"zz"};
  std::vector<std::string> messages = {
      load_error(enabled_auth(), good + ",tiny"),
      load_error(enabled_auth(), good + "," + std::string(300, 'x')),
      load_error(enabled_auth(), good + ",has space in the middle"),
      load_error(with_bad_digest, good),
  };
  for (auto const& msg : messages) {
    EXPECT_FALSE(msg.empty());
    for (std::string_view secret :
         {std::string_view(key_a), std::string_view(key_b), std::string_view("tiny"),
          std::string_view("has space"), std::string_view("xxxxxxxx")}) {
      EXPECT_EQ(msg.find(secret), std::string::npos) << msg;
    }
    EXPECT_EQ(msg.find(sha256_hex(key_a)), std::string::npos) << msg;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// key_set::verify

TEST(KeySetVerify, AcceptsEachConfiguredKeyAndReturnsItsDigest) {
  auto keys = load_ok(enabled_auth(), std::string(key_a) + "," + key_b + "," + key_c);
  for (char const* k : {key_a, key_b, key_c}) {
    auto d = keys.verify(k);
    ASSERT_TRUE(d) << k;
    EXPECT_TRUE(*d == ray::access::key_digest::of(k));
  }
  EXPECT_FALSE(*keys.verify(key_a) == *keys.verify(key_b));
}

TEST(KeySetVerify, RejectsOtherTokensPrefixesAndExtensionsOfKeys) {
  auto keys = load_ok(enabled_auth(), std::string(key_a) + "," + key_b);
  std::string const a = key_a;
  for (std::string t : {std::string("unknown-key-0123456789"), a.substr(0, a.size() - 1), a + "x",
                        std::string(""), std::string(" ") + a, std::string(300, 'a')})
    EXPECT_FALSE(keys.verify(t)) << t;
}

TEST(KeySetVerify, AnEmptySetAcceptsNothing) {
  key_set keys;
  EXPECT_FALSE(keys.verify(key_a));
}

// ---------------------------------------------------------------------------------------------------------------
// bearer_token

ray::result<std::string_view> parse(std::vector<std::string_view> values) {
  return bearer_token(std::span<std::string_view const>(values));
}

void expect_rejected(std::vector<std::string_view> values) {
  auto r = parse(values);
  ASSERT_FALSE(r.has_value()) << (values.empty() ? "<none>" : std::string(values[0]));
  EXPECT_EQ(r.error().code, ray::errc::unauthorized);
  EXPECT_EQ(r.error().message, ray::access::unauthorized_message);
}

TEST(BearerToken, ReturnsTheTokenOfOneBearerHeader) {
  auto r = parse({"Bearer abc-DEF_123.~+/=="});
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(*r, "abc-DEF_123.~+/==");
}

TEST(BearerToken, AcceptsTheSchemeInAnyCase) {
  for (std::string_view v : {"bearer tok", "BEARER tok", "bEaReR tok"}) {
    auto r = parse({v});
    ASSERT_TRUE(r.has_value()) << v;
    EXPECT_EQ(*r, "tok");
  }
}

TEST(BearerToken, ToleratesSeveralSpacesAfterTheSchemeAndOwsAroundTheValue) {
  auto r = parse({" \tBearer    tok \t"});
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(*r, "tok");
}

TEST(BearerToken, MissingHeaderIsUnauthorized) {
  expect_rejected({});
}

TEST(BearerToken, TwoHeaderValuesAreUnauthorizedEvenIfBothAreValid) {
  expect_rejected({"Bearer tok", "Bearer tok"});
}

TEST(BearerToken, OtherSchemesAreUnauthorized) {
  expect_rejected({"Basic dXNlcjpwYXNz"});
  expect_rejected({"Bearertok"});
  expect_rejected({"Bearer"});
  expect_rejected({"Bearer "});
  expect_rejected({"Bearer\ttok"});
  expect_rejected({"tok"});
  expect_rejected({""});
}

TEST(BearerToken, TokensOutsideTheB64tokenCharsetAreUnauthorized) {
  for (std::string_view v : {"Bearer tok en", "Bearer tok,en", "Bearer tok!", "Bearer =tok", "Bearer to=ken",
                             "Bearer ===", "Bearer tok\"", "Bearer t\xc3\xa9k"})
    expect_rejected({v});
}

TEST(BearerToken, AcceptsA256CharacterTokenAndRejectsA257CharacterOne) {
  std::string ok = "Bearer " + std::string(256, 'a');
  auto r = parse({ok});
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->size(), 256u);
  std::string too_long = "Bearer " + std::string(257, 'a');
  expect_rejected({too_long});
}

TEST(BearerToken, AllFailuresShareOneMessageThatSaysNothingAboutKeys) {
  auto e = ray::access::unauthorized();
  EXPECT_EQ(e.code, ray::errc::unauthorized);
  EXPECT_EQ(e.message, ray::access::unauthorized_message);
  EXPECT_NE(e.message.find("missing or invalid bearer token"), std::string::npos);
}

}  // namespace
