// ray::access — the pure decision core of API-key authentication and rate limiting (http-api.md §1, §7;
// config.md `auth`, `rateLimit`). No I/O, no Asio: the router feeds it header values, the peer address and
// the clock, and maps what comes back (errc::unauthorized → 401, errc::rate_limited / a refused decision →
// 429).
//
//   auto keys = ray::access::key_set::load(cfg.auth, env_value(cfg.auth.api_key_env));  // once, and on
//   SIGHUP if (!keys) fail_startup(keys.error().message);                                     // names the
//   field only ray::access::rate_limiter limiter(cfg.rate_limit, ray::system_clock());
//
//   // per request, auth before the limiter so rejected keys spend no quota:
//   std::optional<ray::access::key_digest> who;
//   if (cfg.auth.enabled) {
//     auto token = ray::access::bearer_token(authorization_values);
//     if (token) who = keys->verify(*token);
//     if (!who) return ray::access::unauthorized();
//   }
//   if (cfg.rate_limit.enabled) {
//     std::string ip = ray::access::client_ip(peer, xff_values, cfg.rate_limit.trust_proxy_headers);
//     auto d = limiter.check(ray::access::rate_limit_key(cfg.rate_limit.key_strategy, ip, who), now);
//     // x-ratelimit-limit/-remaining/-reset from d on allowed and refused responses
//     if (!d.allowed) return ray::access::rate_limited(d);
//   }
//
// Secrets: API keys are hashed at load and only their SHA-256 digests are kept. Neither keys nor digests are
// ever printed: no error message contains them, key_digest has no to_string/operator<<, and the string made
// by rate_limit_key() is an opaque table key (it embeds the digest's raw bytes) that must not be logged.
//
// Thread-safety: key_set is immutable after load() and may be shared read-only between threads (swap a new
// one in on reload). bearer_token, client_ip and rate_limit_key are reentrant. rate_limiter is not
// thread-safe: it lives on one strand.
#pragma once

#include "ray/config/config.hpp"
#include "ray/core/core.hpp"

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ray::access {

// ---------------------------------------------------------------------------------------------------------------
// API keys

inline constexpr std::size_t max_api_keys = 1024;  // distinct keys (env + digests) after merging duplicates
inline constexpr std::size_t min_api_key_chars = 16;  // shorter keys are a startup error
inline constexpr std::size_t max_api_key_chars = 256;
inline constexpr std::size_t max_token_chars = 256;  // a bearer token longer than this is rejected unhashed

// The SHA-256 digest of an API key. Opaque on purpose: it can be compared (in constant time) and turned into
// a rate-limit key, never printed.
class key_digest {
 public:
  // SHA-256 of `text` (OpenSSL EVP). Aborts only if OpenSSL cannot allocate.
  static key_digest of(std::string_view text);

  // Constant-time comparison (CRYPTO_memcmp).
  friend bool operator==(key_digest const& a, key_digest const& b) noexcept;

 private:
  friend class key_set;
  friend std::string rate_limit_key(config::rate_limit_key, std::string_view,
                                    std::optional<key_digest> const&);
  std::array<unsigned char, 32> bytes_{};
};

// The accepted API keys, as digests.
class key_set {
 public:
  key_set() = default;  // accepts nothing

  // Builds the set from
  //   (a) `env_value`: the value of the environment variable named by auth.apiKeyEnv (std::nullopt when
  //   unset) —
  //       keys separated by commas or newlines, each trimmed of ASCII whitespace, empty entries dropped; and
  //   (b) auth.apiKeySha256: 64 hex digits each (either case), the SHA-256 of a key.
  // Duplicates (also a key given both ways) are merged. When auth is disabled nothing is read and the set is
  // empty: keys that are not used cannot stop a start. Our copy of `env_value` is wiped after hashing.
  // Errors (errc::invalid_request, one line naming the variable or field and the entry's position, never a
  // key or a digest):
  //   - auth enabled and no key at all (names auth.apiKeyEnv's variable and auth.apiKeySha256);
  //   - a key outside 16–256 characters, or with a character a bearer token cannot carry (allowed: the RFC
  //   6750
  //     b64token set A-Z a-z 0-9 - . _ ~ + / with trailing '='; such a key could never authenticate);
  //   - a digest that is not 64 hex digits;
  //   - more than 1024 distinct keys.
  static result<key_set> load(config::auth_config const& auth, std::optional<std::string> env_value);

  // The stored digest equal to SHA-256(token), or nullopt. Compares against every stored digest in constant
  // time, without stopping at a match, so timing reveals neither which key matched nor how many bytes did.
  // A token over max_token_chars is rejected without hashing.
  std::optional<key_digest> verify(std::string_view token) const;

  std::size_t size() const noexcept { return digests_.size(); }
  bool empty() const noexcept { return digests_.empty(); }

 private:
  std::vector<key_digest> digests_;
};

// The caller's scope for sharing answers (runtime::infer_request::caller): "" without a key, else an opaque
// string embedding the digest's raw bytes — a table key like rate_limit_key(), never to be logged.
std::string caller_scope(std::optional<key_digest> const& digest);

// The one 401 of this component: same code and message whether the header is missing, malformed or carries an
// unknown key, so a client cannot tell the cases apart.
inline constexpr std::string_view unauthorized_message =
    "missing or invalid bearer token: send the header `authorization: Bearer <api key>`";
ray::error unauthorized();

// The token of the request's Authorization header. `authorization_values` are all values of that header, in
// order, as received (OWS around a value is ignored).
//   - exactly one value (none: missing; two or more: rejected, a proxy and a client disagreeing is not ours
//     to resolve);
//   - scheme "Bearer", ASCII case-insensitive, then one or more spaces (RFC 7235 `1*SP`; tabs are not
//   spaces);
//   - the token: RFC 6750 b64token, i.e. 1*(A-Z a-z 0-9 - . _ ~ + /) then *"=", 1–256 characters in all.
// Every failure is errc::unauthorized with unauthorized_message. The view points into the given values.
result<std::string_view> bearer_token(std::span<std::string_view const> authorization_values);

// ---------------------------------------------------------------------------------------------------------------
// Rate limiting

// The outcome of one rate_limiter::check. Header values: x-ratelimit-limit = limit, x-ratelimit-remaining =
// remaining, x-ratelimit-reset = reset_epoch_seconds (on allowed and refused responses).
struct decision {
  bool allowed{false};
  std::uint32_t limit{0};      // rateLimit.maxRequests
  std::uint32_t remaining{0};  // requests left in this window after this one
  // Unix time (seconds, rounded up) at which this key's window ends.
  std::int64_t reset_epoch_seconds{0};
  double retry_after_ms{0};  // refused: time until reset (> 0, unrounded); allowed: 0
  bool evicted{false};       // this new key took the place of the entry whose window ends soonest
};

// 429 for a refused decision: errc::rate_limited with retry_after_ms set (api::error_response rounds it).
ray::error rate_limited(decision const& d);

// Fixed-window counter per client key. A key's window starts at its first request and lasts windowMs; a key
// whose window has ended starts a new one lazily on its next request. Requests refused for being over the
// limit are not counted.
//
// Memory: at most rateLimit.maxKeys entries (plus one list node each). When the table holds maxKeys live keys
// a NEW key takes the place of the entry whose window ends soonest (the least quota forgotten): refusing new
// keys instead would let one client with many addresses (an IPv6 /64 holds 2^64) lock every newcomer out.
// Entries whose window ended are dropped a few per call and whenever the table is full, so every call is O(1)
// amortised (entries are kept in window-end order, so the expired ones are always at the front).
// Keys longer than max_client_key_bytes are truncated (rate_limit_key never makes one).
class rate_limiter {
 public:
  static constexpr std::size_t max_client_key_bytes = 128;

  // Reads windowMs, maxRequests and maxKeys (enabled, keyStrategy and trustProxyHeaders are the caller's).
  // The clock must outlive the limiter: now() times windows, wall() dates x-ratelimit-reset.
  rate_limiter(config::rate_limit_config const& cfg, ray::clock const& clock);
  rate_limiter(rate_limiter const&) = delete;  // the index holds views into its own list
  rate_limiter& operator=(rate_limiter const&) = delete;

  // Counts one request of `client_key` at `now` (a steady time from the same clock).
  decision check(std::string_view client_key, ray::clock::time_point now);
  decision check(std::string_view client_key) { return check(client_key, clock_.now()); }

  // New limits (SIGHUP). Counts and window starts are kept. A longer window applies to windows started from
  // now on (announced resets stay true); a shorter one also cuts running windows to start + new windowMs. A
  // lower maxRequests refuses keys already over it. A lower maxKeys drops expired entries, then the entries
  // whose windows end soonest, until the table fits.
  void set_limits(config::rate_limit_config const& cfg);

  std::size_t size() const noexcept { return entries_.size(); }  // entries held (live or not yet swept)
  std::uint32_t max_requests() const noexcept { return max_requests_; }
  std::uint32_t max_keys() const noexcept { return max_keys_; }
  std::chrono::milliseconds window() const noexcept { return window_; }

 private:
  struct entry {
    std::string key;
    ray::clock::time_point start;
    ray::clock::time_point end;
    std::uint32_t count{0};
  };
  using list = std::list<entry>;

  void sweep(ray::clock::time_point now, std::size_t budget);
  void erase_front();
  std::int64_t epoch_seconds(ray::clock::time_point t) const noexcept;

  ray::clock const& clock_;
  ray::clock::time_point last_now_{};  // check() never goes back in time, so order_ stays sorted
  std::chrono::milliseconds window_;
  std::uint32_t max_requests_;
  std::uint32_t max_keys_;
  list order_;                                                    // by window end, soonest first
  std::unordered_map<std::string_view, list::iterator> entries_;  // views into order_'s keys
};

// ---------------------------------------------------------------------------------------------------------------
// Client address

// X-Forwarded-For is read from the right (nearest our proxies) and only this far.
inline constexpr std::size_t max_forwarded_entries = 32;
inline constexpr std::size_t max_forwarded_bytes = 1024;

// Loopback or private: 127/8, 10/8, 172.16/12, 192.168/16, ::1, fc00::/7, fe80::/10 (IPv4-mapped forms
// included). `ip` is any textual form client_ip accepts; false when it does not parse.
bool is_private_address(std::string_view ip) noexcept;

// The peers whose X-Forwarded-For is believed (rateLimit.trustedProxies): addresses and CIDR blocks, IPv4 or
// IPv6 (an IPv4-mapped IPv6 peer matches the IPv4 entries).
class proxy_list {
 public:
  proxy_list() = default;  // trusts nobody
  // "127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8". Errors name rateLimit.trustedProxies[i].
  static result<proxy_list> parse(std::vector<std::string> const& entries);
  bool contains(std::string_view ip) const noexcept;
  std::size_t size() const noexcept { return nets_.size(); }

 private:
  struct net {
    bool v4{false};
    unsigned char bytes[16]{};
    unsigned prefix{0};
  };
  std::vector<net> nets_;
  friend std::string client_ip(std::string_view, std::span<std::string_view const>, bool, proxy_list const&);
};

// The address a request is attributed to, as normalised text (inet_ntop form; IPv4-mapped IPv6 such as
// ::ffff:1.2.3.4 becomes 1.2.3.4, for the peer too; an IPv6 zone "%eth0" is dropped).
// X-Forwarded-For is honoured only when `trust_proxy_headers` and the peer is in `trusted`. Its values
// are joined by commas (in order) and walked from the right over at most the last 1 KiB and 32 entries; an
// entry may carry a port (1.2.3.4:5678, [::1]:80) or brackets; malformed entries (and 0.0.0.0 / ::) are
// skipped. The rightmost valid entry that is not a trusted proxy is the client; when all are trusted, the
// leftmost valid one considered; when none is valid, the peer. A peer that does not parse is returned as
// given (at most 64 bytes) and XFF is then ignored.
std::string client_ip(std::string_view peer_address, std::span<std::string_view const> x_forwarded_for_values,
                      bool trust_proxy_headers, proxy_list const& trusted);

// The address a rate-limit key counts: an IPv4 address as given, an IPv6 one as its /64
// ("2001:db8:1:2::/64"), anything that does not parse as given.
std::string rate_limit_address(std::string_view ip);

// The rate-limiter key for a request (≤ 102 bytes; the ip is cut at 64 bytes, a normalised IP has ≤ 45; an
// IPv6 client counts as its /64, see rate_limit_address):
// ip → the ip; api-key → the verified key's digest, or the ip when there is none (auth off); ip+api-key →
// both (the ip alone without a digest). Distinct strategies/inputs give distinct keys (prefixed). Opaque and
// secret-bearing: never log it.
std::string rate_limit_key(config::rate_limit_key strategy, std::string_view ip,
                           std::optional<key_digest> const& digest);

}  // namespace ray::access
