// ray::core — vocabulary shared by every component: error codes and the result type, the clock seam,
// request ids, the token estimate and small text helpers. No I/O; safe to use from any thread.
#pragma once

#include <boost/json/object.hpp>
#include <boost/system/result.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace ray {

// Every error Ray can report to a client. The HTTP status and retry headers of each live in exactly one place
// (api::error_response); the wire name of each is code_name().
enum class errc : std::uint8_t {
  invalid_request,
  invalid_json,
  unauthorized,
  not_found,
  job_not_found,
  model_not_found,
  method_not_allowed,
  request_read_timeout,
  length_required,
  body_too_large,
  request_context_window_exceeded,
  request_token_budget_exceeded,
  request_target_too_large,
  unsupported_media_type,
  unsupported_content_encoding,
  unsupported_expectation,
  rate_limited,
  request_headers_too_large,
  not_implemented,
  provider_upstream_error,
  provider_invalid_response,
  provider_request_failed,
  queue_full,
  overloaded,
  provider_unavailable,
  async_queue_full,
  async_queue_storage_low,
  shutting_down,
  async_queue_disabled,
  request_timeout,
  provider_timeout,
  context_length_exceeded,  // OpenAI-route wording of a context overflow (400)
  job_not_cancellable,      // DELETE /v1/jobs/{id} of a job that already finished (409)
  // The PostgreSQL job store is unreachable (503 with Retry-After; it reconnects by itself).
  async_queue_storage_unavailable,
  // An OpenAI field Ray deliberately does not serve (e.g. /v1/responses previous_response_id): 400.
  unsupported_parameter,
  // A request for a model of the wrong kind (a chat request to an embedding model, or the reverse): 400.
  model_kind_mismatch,
  // The model must be loaded first and nothing can be unloaded for it before the request's deadline: 503
  // with Retry-After.
  model_swap_busy,
};

// The lower_snake wire name of a code, e.g. "queue_full".
std::string_view code_name(errc code) noexcept;

// An error as a value: a code, a message that tells the user what to do, optional structured details and,
// for errors whose Retry-After is computed where the error happens, the unrounded retry delay.
struct error {
  errc code{errc::invalid_request};
  std::string message;
  boost::json::object details{};
  std::optional<double> retry_after_ms{};
  std::string param{};  // OpenAI `param` (field path) when known

  error() = default;
  error(errc c, std::string msg) : code(c), message(std::move(msg)) {}
};

// boost::system::result needs this to throw from value() on an error (only ever reached by a bug).
[[noreturn]] void throw_exception_from_error(error const& e, boost::source_location const& loc);

template <class T>
using result = boost::system::result<T, error>;

// Clock seam: everything that depends on time takes a clock so tests inject one.
class clock {
 public:
  using time_point = std::chrono::steady_clock::time_point;
  virtual ~clock() = default;
  virtual time_point now() const noexcept = 0;
  virtual std::chrono::system_clock::time_point wall() const noexcept = 0;
};

// The process-wide real clock (steady for durations, system for timestamps).
clock const& system_clock() noexcept;

// A clock tests move by hand. Not thread-safe.
class manual_clock final : public clock {
 public:
  time_point now() const noexcept override { return now_; }
  std::chrono::system_clock::time_point wall() const noexcept override { return wall_; }
  void advance(std::chrono::nanoseconds d) noexcept {
    now_ += d;
    wall_ += std::chrono::duration_cast<std::chrono::system_clock::duration>(d);
  }

 private:
  time_point now_{std::chrono::hours(1000)};
  std::chrono::system_clock::time_point wall_{std::chrono::seconds(1'800'000'000)};
};

// "req_" + 16 lowercase hex digits from a fast per-thread generator seeded from the OS.
std::string new_request_id();
// "<prefix>" + 16 lowercase hex digits.
std::string new_id(std::string_view prefix);
// An incoming x-request-id is echoed when it is 1–128 chars of [A-Za-z0-9._-].
bool is_valid_request_id(std::string_view id) noexcept;

// A count read from untrusted JSON (a backend's numbers are input too): nullopt for NaN, infinities,
// negatives and values above `max` — never an undefined float-to-integer conversion.
std::optional<std::uint32_t> to_count(double v, std::uint32_t max = UINT32_MAX) noexcept;

// Number of Unicode code points in UTF-8 text (invalid bytes count as one each).
std::size_t count_code_points(std::string_view utf8) noexcept;
// Token estimate: ceil(bytes / 4), but at least the number of non-ASCII code points.
std::size_t estimate_tokens(std::string_view utf8) noexcept;
// Largest prefix length <= max_bytes that does not split a UTF-8 code point.
std::size_t utf8_safe_prefix(std::string_view utf8, std::size_t max_bytes) noexcept;
// Length (1–4) of the well-formed UTF-8 sequence starting at s[i]; 0 when none starts there (an overlong
// form, a surrogate, a code point above U+10FFFF, a truncated or stray byte) or i is past the end.
std::size_t utf8_sequence_at(std::string_view s, std::size_t i) noexcept;
// `text` with every occurrence of every secret replaced by "[redacted]" (empty secrets are skipped). Scrub
// before cutting an excerpt, so that a secret cut at the excerpt's end cannot survive in part.
std::string redact_all(std::string text, std::span<std::string const> secrets);
// Whether `s` is well-formed UTF-8 throughout.
bool is_valid_utf8(std::string_view s) noexcept;

// SHA-256 of `data`. OpenSSL's low-level implementation (libcrypto linked statically): no provider machinery
// loaded, so hashing costs Ray a few KB instead of MBs of resident libcrypto.
using sha256_digest = std::array<std::uint8_t, 32>;
sha256_digest sha256(std::string_view data) noexcept;
// The same hash over data that arrives in pieces (a download, a file read in chunks): update() any number of
// times, then finish() once; the state lives inline (no allocation, no OpenSSL header needed here).
class sha256_hasher {
 public:
  sha256_hasher() noexcept;
  void update(std::string_view data) noexcept;
  sha256_digest finish() noexcept;  // the hasher starts over afterwards

 private:
  alignas(8) std::array<unsigned char, 112> state_;  // SHA256_CTX (size checked in core.cpp)
};
// HMAC-SHA256 (RFC 2104 over the same low-level SHA-256: a key longer than the 64-byte block is hashed
// first; no EVP, so no provider machinery either).
sha256_digest hmac_sha256(std::string_view key, std::string_view data) noexcept;
// Lower-case hex of bytes, two digits each.
std::string to_hex(std::span<std::uint8_t const> bytes);
// Equality of two byte strings in time that depends only on their length (no early exit).
bool constant_time_equal(std::span<std::uint8_t const> a, std::span<std::uint8_t const> b) noexcept;
// Overwrites memory in a way the compiler does not optimise away (secrets).
void secure_wipe(void* p, std::size_t n) noexcept;

// RFC 3339 UTC timestamp with milliseconds, e.g. "2026-11-27T16:15:53.123Z".
std::string format_timestamp(std::chrono::system_clock::time_point t);

// Trim ASCII whitespace at both ends.
std::string_view trim(std::string_view s) noexcept;
// ASCII case-insensitive equality.
bool iequals(std::string_view a, std::string_view b) noexcept;

}  // namespace ray
