// ray::cache — the result cache of the serving core: a bounded LRU with TTL (`result_cache`) and the builder
// of its keys (`key_builder`, `request_key`). No I/O, no Asio.
//
//   ray::cache::request_key_fields f{.route = "infer", .model_id = cfg.model.id, .backend_identity =
//   be.identity,
//                                    .system = sys, .input = input, .metadata = &req.metadata, ...};
//   ray::cache::cache_key key = ray::cache::request_key(f, ray::cache::key_strategy::input_params);
//   ray::cache::result_cache<stored_result> cache({.max_entries = 128, .max_bytes = 1 << 20, .ttl_ms =
//   30'000},
//                                                  clock);
//   if (stored_result const* hit = cache.get(key)) ...;            // refreshes LRU, drops an expired entry
//   cache.put(key, value, value_payload_bytes, identity_tag);       // evicts LRU until within both bounds
//
// Thread-safety: key_builder and request_key are reentrant (each builder is used by one thread at a time);
// result_cache is not thread-safe — it lives on the runtime's strand.
#pragma once

#include "ray/core/core.hpp"

#include <boost/intrusive/list.hpp>

#include <array>
#include <cassert>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace ray::cache {

// ---------------------------------------------------------------------------------------------------------------
// Keys

// A SHA-256 digest identifying one cacheable request. Equality is over all 32 bytes; hash() is the first 8
// bytes (uniformly distributed, so good enough for the hash map).
struct cache_key {
  std::array<std::uint8_t, 32> bytes{};

  // 64 lowercase hex digits (usable as the single-flight key and in logs).
  std::string hex() const;
  std::uint64_t hash() const noexcept {
    std::uint64_t h;
    std::memcpy(&h, bytes.data(), sizeof h);
    return h;
  }
  friend bool operator==(cache_key const&, cache_key const&) = default;
};

struct cache_key_hash {
  std::size_t operator()(cache_key const& k) const noexcept { return static_cast<std::size_t>(k.hash()); }
};

// Bytes a key counts for in the cache's byte bound.
inline constexpr std::size_t key_bytes = sizeof(cache_key::bytes);

// Appends typed, named fields to a canonical byte string and digests it with SHA-256 (OpenSSL EVP).
// Encoding of every field: name (u64 little-endian length + bytes), a type byte, then the value — strings
// length-prefixed, integers and doubles as 8 little-endian bytes (-0.0 is 0.0, every NaN the same), lists and
// maps as a count followed by their elements. Hence "ab"+"c" differs from "a"+"bc", an absent field differs
// from an empty one, the integer 5 differs from the text "5", and field order matters (add them in a fixed
// order).
//
// A builder can be reused after finish() (or reset()) and keeps its buffer capacity, so a long-lived builder
// makes no allocation per key once warmed. Failures inside OpenSSL (allocation) abort: they are not an input
// error.
class key_builder {
 public:
  key_builder() { buf_.reserve(512); }

  key_builder& text(std::string_view name, std::string_view value);
  key_builder& text(std::string_view name, std::optional<std::string_view> value);
  key_builder& text(std::string_view name, char const* value) { return text(name, std::string_view(value)); }
  key_builder& text(std::string_view name, std::string const& value) {
    return text(name, std::string_view(value));
  }
  key_builder& integer(std::string_view name, std::int64_t value);
  key_builder& integer(std::string_view name, std::optional<std::int64_t> value);
  key_builder& number(std::string_view name, double value);
  key_builder& number(std::string_view name, std::optional<double> value);
  key_builder& boolean(std::string_view name, bool value);
  key_builder& absent(std::string_view name);
  key_builder& list(std::string_view name, std::span<std::string const> values);
  // Entries in the map's (sorted) order.
  key_builder& string_map(std::string_view name, std::map<std::string, std::string> const& values);

  // The digest of everything added since the last finish()/reset(); then starts over.
  cache_key finish();
  void reset() noexcept { buf_.clear(); }
  // The canonical bytes so far (tests).
  std::string_view bytes() const noexcept { return buf_; }

 private:
  void put_u64(std::uint64_t v);
  void put_str(std::string_view s);
  void put_head(std::string_view name, std::uint8_t type);

  std::string buf_;
};

// SHA-256 of arbitrary bytes (one-shot; shares key_builder's cached digest context).
cache_key sha256(std::string_view data);

enum class key_strategy : std::uint8_t {
  input,         // prompt-shaping fields only; sampling parameters are ignored
  input_params,  // also the requested max tokens, temperature, top-p and extra_params
};
// "input" | "input+params" (the config's spelling).
std::string_view key_strategy_name(key_strategy s) noexcept;

// What a cached answer depends on. Views: the referenced data must outlive the request_key() call only.
struct request_key_fields {
  std::string_view route;             // request shape: "infer" | "chat" | "completions" — never collide
  std::string_view model_id;          // the configured model id
  std::string_view backend_identity;  // llama-server build_info + model_path (a model swap changes every key)
  std::string_view scope{};           // cache.scope key: the caller (opaque); "" = shared by every caller
  std::string_view system;            // final system prompt ("" when none)
  std::string_view input;             // final input, or a canonical serialization of the messages
  std::map<std::string, std::string> const* metadata{nullptr};  // nullptr = none (same key as empty)
  std::optional<std::int64_t> seed{};
  std::span<std::string const> stop{};
  std::optional<std::string_view>
      response_format{};  // "text" | "json_object" | a json_schema's canonical text
  // Included only with key_strategy::input_params:
  std::optional<std::uint32_t> max_tokens{};  // the *requested* value (before defaulting and clamps)
  std::optional<double> temperature{};
  std::optional<double> top_p{};
  std::string_view extra_params{};  // canonical text of other forwarded sampling fields (top_k, penalties…)
};

// The cache key of a request. Reuses a thread-local builder (no allocation once warmed).
cache_key request_key(request_key_fields const& f, key_strategy strategy);

// ---------------------------------------------------------------------------------------------------------------
// Bounded TTL LRU

struct cache_options {
  std::uint32_t max_entries{128};
  std::uint64_t max_bytes{1u << 20};
  std::uint32_t ttl_ms{30'000};  // 0: entries expire at once (nothing is ever served)
};

struct cache_stats {
  std::size_t entries{0};
  std::uint64_t bytes{0};  // sum of entry sizes: key_bytes + payload bytes given to put()
  std::uint32_t max_entries{0};
  std::uint64_t max_bytes{0};
  std::uint64_t hits{0};
  std::uint64_t misses{0};       // includes lookups that found an expired entry
  std::uint64_t evictions{0};    // live entries dropped to make room (LRU first)
  std::uint64_t expirations{0};  // expired entries dropped (by get, by put's sweep, or as an eviction victim)
  std::uint64_t oversized{0};    // put() of an entry larger than max_bytes (not stored)
};

// A map from cache_key to Value bounded by entry count and bytes, with a fixed time-to-live from the put().
// get() and put() are O(1) amortized: a hash map of nodes threaded on two intrusive lists — recency (LRU) and
// insertion order (with one TTL, insertion order is expiry order, so the expired entries are always at its
// front).
//
// Size accounting: an entry counts key_bytes + `payload_bytes`, which the caller computes as output + usage +
// diagnostics bytes of the value (the cache does not look inside Value). `tag` is an opaque number stored
// with the entry (e.g. a hash of the backend identity) for erase_if().
//
// Not thread-safe. Value must be movable.
template <class Value>
class result_cache {
 public:
  struct entry {
    cache_key key;
    Value value;
    std::uint64_t tag{0};
    std::size_t bytes{0};  // key_bytes + payload bytes
    ray::clock::time_point expires_at{};
  };

  explicit result_cache(cache_options options, ray::clock const& clock = ray::system_clock())
      : options_(options), clock_(clock) {}
  ~result_cache() { clear(); }
  result_cache(result_cache const&) = delete;
  result_cache& operator=(result_cache const&) = delete;

  // The live value for `key`, or nullptr (a miss). A hit moves the entry to the most-recent end; an expired
  // entry is dropped (one miss + one expiration). The pointer is valid until the next non-const call.
  Value const* get(cache_key const& key) {
    auto it = map_.find(key);
    if (it == map_.end()) {
      ++stats_.misses;
      return nullptr;
    }
    node& n = it->second;
    if (expired(n, clock_.now())) {
      ++stats_.misses;
      ++stats_.expirations;
      unlink_and_erase(it);
      return nullptr;
    }
    lru_.splice(lru_.end(), lru_, lru_.iterator_to(n));
    ++stats_.hits;
    return &n.e.value;
  }

  // Stores (or replaces) `key`. First drops expired entries at the front of the expiry order, then, if the
  // new entry does not fit either bound, drops least-recently-used entries until it does. An entry whose own
  // size exceeds max_bytes is not stored (counted as oversized) and a previous entry for the same key is
  // removed. Returns whether the value was stored.
  bool put(cache_key const& key, Value value, std::size_t payload_bytes, std::uint64_t tag = 0) {
    auto const now = clock_.now();
    std::size_t const bytes = key_bytes + payload_bytes;
    if (auto it = map_.find(key); it != map_.end()) unlink_and_erase(it);
    if (bytes > options_.max_bytes) {
      ++stats_.oversized;
      return false;
    }
    if (options_.max_entries == 0) return false;
    sweep_expired(now);
    while (!lru_.empty() && (map_.size() + 1 > options_.max_entries || bytes_ + bytes > options_.max_bytes))
      drop_lru(now);
    auto [it, inserted] = map_.try_emplace(
        key, entry{key, std::move(value), tag, bytes, now + std::chrono::milliseconds(options_.ttl_ms)});
    assert(inserted);
    node& n = it->second;
    lru_.push_back(n);
    fifo_.push_back(n);
    bytes_ += bytes;
    return true;
  }

  // Removes every entry for which pred(entry const&) is true (e.g. entries tagged with the previous backend
  // identity after a model swap). Not counted as evictions. Returns the number removed. O(entries).
  template <class Pred>
  std::size_t erase_if(Pred pred) {
    std::size_t removed = 0;
    for (auto it = map_.begin(); it != map_.end();) {
      if (pred(static_cast<entry const&>(it->second.e))) {
        auto next = std::next(it);
        unlink_and_erase(it);
        it = next;
        ++removed;
      } else {
        ++it;
      }
    }
    return removed;
  }

  // Removes `key` if present. Returns whether it was.
  bool erase(cache_key const& key) {
    auto it = map_.find(key);
    if (it == map_.end()) return false;
    unlink_and_erase(it);
    return true;
  }

  // Drops expired entries now (counted as expirations); e.g. before reporting /health. O(expired).
  std::size_t purge_expired() { return sweep_expired(clock_.now()); }

  // Removes everything (counters are kept).
  void clear() noexcept {
    lru_.clear();
    fifo_.clear();
    map_.clear();
    bytes_ = 0;
  }

  // New bounds (e.g. config reload): evicts LRU entries until within them. Entries keep their expiry time.
  void reconfigure(cache_options options) {
    options_ = options;
    auto const now = clock_.now();
    sweep_expired(now);
    while (!lru_.empty() && (map_.size() > options_.max_entries || bytes_ > options_.max_bytes))
      drop_lru(now);
  }

  cache_stats stats() const noexcept {
    cache_stats s = stats_;
    s.entries = map_.size();
    s.bytes = bytes_;
    s.max_entries = options_.max_entries;
    s.max_bytes = options_.max_bytes;
    return s;
  }
  std::size_t size() const noexcept { return map_.size(); }
  cache_options const& options() const noexcept { return options_; }

  // Keys from least to most recently used (tests, debugging). O(entries).
  template <class F>
  void for_each_lru(F f) const {
    for (node const& n : lru_)
      f(static_cast<entry const&>(n.e));
  }

 private:
  using hook = boost::intrusive::list_member_hook<>;
  struct node {
    explicit node(entry&& x) : e(std::move(x)) {}
    entry e;
    hook lru_hook;
    hook fifo_hook;
  };
  using lru_list = boost::intrusive::list<node, boost::intrusive::member_hook<node, hook, &node::lru_hook>>;
  using fifo_list = boost::intrusive::list<node, boost::intrusive::member_hook<node, hook, &node::fifo_hook>>;
  using map_type = std::unordered_map<cache_key, node, cache_key_hash>;

  static bool expired(node const& n, ray::clock::time_point now) noexcept { return now >= n.e.expires_at; }

  void unlink_and_erase(typename map_type::iterator it) {
    node& n = it->second;
    lru_.erase(lru_.iterator_to(n));
    fifo_.erase(fifo_.iterator_to(n));
    bytes_ -= n.e.bytes;
    map_.erase(it);
  }

  std::size_t sweep_expired(ray::clock::time_point now) {
    std::size_t n = 0;
    while (!fifo_.empty() && expired(fifo_.front(), now)) {
      unlink_and_erase(map_.find(fifo_.front().e.key));
      ++stats_.expirations;
      ++n;
    }
    return n;
  }

  void drop_lru(ray::clock::time_point now) {
    node& victim = lru_.front();
    if (expired(victim, now))
      ++stats_.expirations;
    else
      ++stats_.evictions;
    unlink_and_erase(map_.find(victim.e.key));
  }

  cache_options options_;
  ray::clock const& clock_;
  map_type map_;
  lru_list lru_;    // front = least recently used
  fifo_list fifo_;  // front = oldest put (= earliest expiry while ttl is unchanged)
  std::uint64_t bytes_{0};
  cache_stats stats_{};
};

}  // namespace ray::cache
