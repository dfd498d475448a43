#include "ray/core/core.hpp"

#include <cmath>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <ctime>
#include <random>
#include <stdexcept>

namespace ray {

std::string_view code_name(errc code) noexcept {
  switch (code) {
    case errc::invalid_request:
      return "invalid_request";
    case errc::invalid_json:
      return "invalid_json";
    case errc::unauthorized:
      return "unauthorized";
    case errc::not_found:
      return "not_found";
    case errc::job_not_found:
      return "job_not_found";
    case errc::job_not_cancellable:
      return "job_not_cancellable";
    case errc::model_not_found:
      return "model_not_found";
    case errc::method_not_allowed:
      return "method_not_allowed";
    case errc::request_read_timeout:
      return "request_read_timeout";
    case errc::length_required:
      return "length_required";
    case errc::body_too_large:
      return "body_too_large";
    case errc::request_context_window_exceeded:
      return "request_context_window_exceeded";
    case errc::request_token_budget_exceeded:
      return "request_token_budget_exceeded";
    case errc::request_target_too_large:
      return "request_target_too_large";
    case errc::unsupported_media_type:
      return "unsupported_media_type";
    case errc::unsupported_content_encoding:
      return "unsupported_content_encoding";
    case errc::unsupported_expectation:
      return "unsupported_expectation";
    case errc::rate_limited:
      return "rate_limited";
    case errc::request_headers_too_large:
      return "request_headers_too_large";
    case errc::not_implemented:
      return "not_implemented";
    case errc::provider_upstream_error:
      return "provider_upstream_error";
    case errc::provider_invalid_response:
      return "provider_invalid_response";
    case errc::provider_request_failed:
      return "provider_request_failed";
    case errc::queue_full:
      return "queue_full";
    case errc::overloaded:
      return "overloaded";
    case errc::provider_unavailable:
      return "provider_unavailable";
    case errc::async_queue_full:
      return "async_queue_full";
    case errc::async_queue_storage_low:
      return "async_queue_storage_low";
    case errc::shutting_down:
      return "shutting_down";
    case errc::async_queue_disabled:
      return "async_queue_disabled";
    case errc::request_timeout:
      return "request_timeout";
    case errc::provider_timeout:
      return "provider_timeout";
    case errc::context_length_exceeded:
      return "context_length_exceeded";
    case errc::async_queue_storage_unavailable:
      return "async_queue_storage_unavailable";
    case errc::unsupported_parameter:
      return "unsupported_parameter";
    case errc::model_kind_mismatch:
      return "model_kind_mismatch";
    case errc::model_swap_busy:
      return "model_swap_busy";
  }
  return "internal_error";
}

void throw_exception_from_error(error const& e, boost::source_location const&) {
  throw std::runtime_error(std::string(code_name(e.code)) + ": " + e.message);
}

namespace {
class real_clock final : public clock {
 public:
  time_point now() const noexcept override { return std::chrono::steady_clock::now(); }
  std::chrono::system_clock::time_point wall() const noexcept override {
    return std::chrono::system_clock::now();
  }
};

std::uint64_t next_random() noexcept {
  // splitmix64 over a per-thread state seeded once from the OS.
  thread_local std::uint64_t state = [] {
    std::random_device rd;
    return (std::uint64_t{rd()} << 32) ^ rd();
  }();
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
}  // namespace

clock const& system_clock() noexcept {
  static real_clock c;
  return c;
}

std::string new_id(std::string_view prefix) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out(prefix);
  out.resize(prefix.size() + 16);
  std::uint64_t r = next_random();
  for (std::size_t i = 0; i < 16; ++i)
    out[prefix.size() + i] = hex[(r >> (i * 4)) & 0xF];
  return out;
}

std::string new_request_id() {
  return new_id("req_");
}

bool is_valid_request_id(std::string_view id) noexcept {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::size_t count_code_points(std::string_view s) noexcept {
  std::size_t n = 0;
  for (unsigned char c : s)
    n += (c & 0xC0) != 0x80;
  return n;
}

std::optional<std::uint32_t> to_count(double v, std::uint32_t max) noexcept {
  if (!std::isfinite(v) || v < 0 || v > static_cast<double>(max)) return std::nullopt;
  return static_cast<std::uint32_t>(v);
}

std::size_t estimate_tokens(std::string_view s) noexcept {
  std::size_t non_ascii = 0;
  for (unsigned char c : s)
    non_ascii += (c >= 0xC0);
  std::size_t by_bytes = (s.size() + 3) / 4;
  return by_bytes > non_ascii ? by_bytes : non_ascii;
}

std::size_t utf8_sequence_at(std::string_view s, std::size_t i) noexcept {
  if (i >= s.size()) return 0;
  auto const c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return 1;
  std::size_t len = 0;
  std::uint32_t cp = 0;
  if ((c & 0xe0) == 0xc0) {
    len = 2;
    cp = c & 0x1f;
  } else if ((c & 0xf0) == 0xe0) {
    len = 3;
    cp = c & 0x0f;
  } else if ((c & 0xf8) == 0xf0) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (s.size() - i < len) return 0;
  for (std::size_t k = 1; k < len; ++k) {
    auto const cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3f);
  }
  static constexpr std::uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return len;
}

std::string redact_all(std::string text, std::span<std::string const> secrets) {
  static constexpr std::string_view redacted = "[redacted]";
  for (auto const& secret : secrets) {
    if (secret.empty()) continue;
    for (auto pos = text.find(secret); pos != std::string::npos;
         pos = text.find(secret, pos + redacted.size()))
      text.replace(pos, secret.size(), redacted);
  }
  return text;
}

bool is_valid_utf8(std::string_view s) noexcept {
  for (std::size_t i = 0; i < s.size();) {
    auto const n = utf8_sequence_at(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::size_t utf8_safe_prefix(std::string_view s, std::size_t max_bytes) noexcept {
  if (max_bytes >= s.size()) return s.size();
  std::size_t n = max_bytes;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80)
    --n;
  return n;
}

sha256_digest sha256(std::string_view data) noexcept {
  sha256_digest out{};
  SHA256_CTX ctx;
  SHA256_Init(&ctx);
  SHA256_Update(&ctx, data.data(), data.size());
  SHA256_Final(out.data(), &ctx);
  return out;
}

static_assert(sizeof(SHA256_CTX) <= 112 && alignof(SHA256_CTX) <= 8,
              "sha256_hasher::state_ holds a SHA256_CTX");

sha256_hasher::sha256_hasher() noexcept {
  SHA256_Init(reinterpret_cast<SHA256_CTX*>(state_.data()));
}

void sha256_hasher::update(std::string_view data) noexcept {
  SHA256_Update(reinterpret_cast<SHA256_CTX*>(state_.data()), data.data(), data.size());
}

sha256_digest sha256_hasher::finish() noexcept {
  sha256_digest out{};
  auto* ctx = reinterpret_cast<SHA256_CTX*>(state_.data());
  SHA256_Final(out.data(), ctx);
  SHA256_Init(ctx);
  return out;
}

sha256_digest hmac_sha256(std::string_view key, std::string_view data) noexcept {
  constexpr std::size_t block = 64;
  std::array<std::uint8_t, block> k{};  // the key, zero-padded to the block
  if (key.size() > block) {
    auto d = sha256(key);
    std::copy(d.begin(), d.end(), k.begin());
    secure_wipe(d.data(), d.size());
  } else if (!key.empty()) {
    std::copy(key.begin(), key.end(), k.begin());
  }
  std::array<std::uint8_t, block> pad{};
  for (std::size_t i = 0; i < block; ++i)
    pad[i] = static_cast<std::uint8_t>(k[i] ^ 0x36);
  sha256_digest inner{};
  SHA256_CTX ctx;
  SHA256_Init(&ctx);
  SHA256_Update(&ctx, pad.data(), pad.size());
  SHA256_Update(&ctx, data.data(), data.size());
  SHA256_Final(inner.data(), &ctx);
  for (std::size_t i = 0; i < block; ++i)
    pad[i] = static_cast<std::uint8_t>(k[i] ^ 0x5c);
  sha256_digest out{};
  SHA256_Init(&ctx);
  SHA256_Update(&ctx, pad.data(), pad.size());
  SHA256_Update(&ctx, inner.data(), inner.size());
  SHA256_Final(out.data(), &ctx);
  // Key material and the hash state derived from it.
  secure_wipe(k.data(), k.size());
  secure_wipe(pad.data(), pad.size());
  secure_wipe(inner.data(), inner.size());
  secure_wipe(&ctx, sizeof ctx);
  return out;
}

std::string to_hex(std::span<std::uint8_t const> bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '\0');
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 0x0f];
  }
  return out;
}

bool constant_time_equal(std::span<std::uint8_t const> a, std::span<std::uint8_t const> b) noexcept {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

void secure_wipe(void* p, std::size_t n) noexcept {
  OPENSSL_cleanse(p, n);
}

std::string format_timestamp(std::chrono::system_clock::time_point t) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  std::array<char, 64> buf{};
  std::snprintf(buf.data(), buf.size(), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
  return buf.data();
}

std::string_view trim(std::string_view s) noexcept {
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
  while (!s.empty() && ws(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && ws(s.back()))
    s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

}  // namespace ray
