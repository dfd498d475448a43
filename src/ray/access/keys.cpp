#include "ray/access/access.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace ray::access {

namespace {

// Fetched once: OpenSSL 3 otherwise looks the algorithm up on every digest.

bool is_b64token_char(char c) noexcept {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~' || c == '+' || c == '/';
}

// RFC 6750 b64token: 1*(ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/") *"="
bool is_b64token(std::string_view s) noexcept {
  std::size_t i = 0;
  while (i < s.size() && is_b64token_char(s[i]))
    ++i;
  if (i == 0) return false;
  while (i < s.size() && s[i] == '=')
    ++i;
  return i == s.size();
}

int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Entries read (env + digests) before duplicates are merged.
constexpr std::size_t max_key_entries = 4 * max_api_keys;

std::string_view trim_ows(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

}  // namespace

key_digest key_digest::of(std::string_view text) {
  key_digest d;
  auto const digest = ray::sha256(text);
  std::copy(digest.begin(), digest.end(), d.bytes_.begin());
  return d;
}

bool operator==(key_digest const& a, key_digest const& b) noexcept {
  return ray::constant_time_equal(a.bytes_, b.bytes_);
}

result<key_set> key_set::load(config::auth_config const& auth, std::optional<std::string> env_value) {
  key_set out;
  if (!auth.enabled) {
    if (env_value) ray::secure_wipe(env_value->data(), env_value->size());
    return out;
  }
  std::string const& var = auth.api_key_env;
  auto fail = [&](std::string msg) -> result<key_set> {
    if (env_value) ray::secure_wipe(env_value->data(), env_value->size());
    return ray::error{errc::invalid_request, std::move(msg)};
  };

  if (env_value) {
    std::string_view rest = *env_value;
    std::size_t position = 0;  // 1-based among non-empty entries: the error names this, never the key
    for (;;) {
      std::size_t cut = rest.find_first_of(",\n");
      std::string_view entry = ray::trim(rest.substr(0, cut));
      if (!entry.empty()) {
        ++position;
        std::string where = "environment variable " + var + ": key #" + std::to_string(position);
        if (entry.size() < min_api_key_chars)
          return fail(where + " is shorter than " + std::to_string(min_api_key_chars) +
                      " characters; use a long random key (e.g. `openssl rand -hex 32`)");
        if (entry.size() > max_api_key_chars)
          return fail(where + " is longer than " + std::to_string(max_api_key_chars) + " characters");
        if (!is_b64token(entry))
          return fail(where +
                      " has a character a bearer token cannot carry; use only A-Z a-z 0-9 - . _ ~ + / (and "
                      "trailing '=')");
        // Bound the work before duplicates are merged; the limit on distinct keys is checked below.
        if (out.digests_.size() == max_key_entries)
          return fail("environment variable " + var + ": more than " + std::to_string(max_key_entries) +
                      " entries");
        out.digests_.push_back(key_digest::of(entry));
      }
      if (cut == std::string_view::npos) break;
      rest.remove_prefix(cut + 1);
    }
    ray::secure_wipe(env_value->data(), env_value->size());
  }

  for (std::size_t i = 0; i < auth.api_key_sha256.size(); ++i) {
    std::string_view hex = auth.api_key_sha256[i];
    key_digest d;
    bool ok = hex.size() == 2 * d.bytes_.size();
    for (std::size_t b = 0; ok && b < d.bytes_.size(); ++b) {
      int hi = hex_value(hex[2 * b]), lo = hex_value(hex[2 * b + 1]);
      ok = hi >= 0 && lo >= 0;
      d.bytes_[b] = static_cast<unsigned char>(ok ? hi * 16 + lo : 0);
    }
    if (!ok)
      return fail("auth.apiKeySha256[" + std::to_string(i) +
                  "] must be 64 hex characters (a SHA-256 digest)");
    if (out.digests_.size() == max_key_entries)
      return fail("auth.apiKeySha256: more than " + std::to_string(max_key_entries) + " entries");
    out.digests_.push_back(d);
  }

  // Merge duplicates. Ordering by bytes is fine here: this is load time, not a comparison against a request.
  auto less = [](key_digest const& a, key_digest const& b) { return a.bytes_ < b.bytes_; };
  std::sort(out.digests_.begin(), out.digests_.end(), less);
  out.digests_.erase(
      std::unique(out.digests_.begin(), out.digests_.end(),
                  [](key_digest const& a, key_digest const& b) { return a.bytes_ == b.bytes_; }),
      out.digests_.end());

  if (out.digests_.empty())
    return fail("auth.enabled is true but no API key is configured: set the environment variable " + var +
                " (keys separated by commas or newlines) or list SHA-256 digests in auth.apiKeySha256");
  if (out.digests_.size() > max_api_keys)
    return fail("auth: " + std::to_string(out.digests_.size()) + " distinct API keys (environment variable " +
                var + " and auth.apiKeySha256); at most " + std::to_string(max_api_keys) + " are allowed");
  out.digests_.shrink_to_fit();
  return out;
}

std::optional<key_digest> key_set::verify(std::string_view token) const {
  if (token.empty() || token.size() > max_token_chars) return std::nullopt;
  key_digest const candidate = key_digest::of(token);
  // Visit every digest and accumulate the match without branching on it, so the time does not depend on
  // which (if any) stored digest matched.
  std::size_t match = 0;  // index + 1 of the match, 0 for none
  for (std::size_t i = 0; i < digests_.size(); ++i) {
    int diff = ray::constant_time_equal(candidate.bytes_, digests_[i].bytes_) ? 0 : 1;
    std::size_t equal_mask = static_cast<std::size_t>(0) - static_cast<std::size_t>(diff == 0);
    match = (match & ~equal_mask) | ((i + 1) & equal_mask);
  }
  if (match == 0) return std::nullopt;
  return digests_[match - 1];
}

ray::error unauthorized() {
  return ray::error{errc::unauthorized, std::string(unauthorized_message)};
}

result<std::string_view> bearer_token(std::span<std::string_view const> authorization_values) {
  if (authorization_values.size() != 1) return unauthorized();
  std::string_view v = trim_ows(authorization_values[0]);
  constexpr std::string_view scheme = "Bearer";
  if (v.size() <= scheme.size() || !ray::iequals(v.substr(0, scheme.size()), scheme) ||
      v[scheme.size()] != ' ')
    return unauthorized();
  v.remove_prefix(scheme.size());
  while (!v.empty() && v.front() == ' ')
    v.remove_prefix(1);
  if (v.empty() || v.size() > max_token_chars || !is_b64token(v)) return unauthorized();
  return v;
}

}  // namespace ray::access
