#include "ray/cache/cache.hpp"

#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>

namespace ray::cache {

namespace {

// Type bytes of the canonical encoding.
enum : std::uint8_t {
  t_text = 1,
  t_integer = 2,
  t_number = 3,
  t_boolean = 4,
  t_absent = 5,
  t_list = 6,
  t_map = 7,
};

}  // namespace

std::string cache_key::hex() const {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '\0');
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 0x0f];
  }
  return out;
}

cache_key sha256(std::string_view data) {
  cache_key k;
  k.bytes = ray::sha256(data);
  return k;
}

void key_builder::put_u64(std::uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i)
    b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  buf_.append(b, sizeof b);
}

void key_builder::put_str(std::string_view s) {
  put_u64(s.size());
  buf_.append(s);
}

void key_builder::put_head(std::string_view name, std::uint8_t type) {
  put_str(name);
  buf_.push_back(static_cast<char>(type));
}

key_builder& key_builder::text(std::string_view name, std::string_view value) {
  put_head(name, t_text);
  put_str(value);
  return *this;
}

key_builder& key_builder::text(std::string_view name, std::optional<std::string_view> value) {
  return value ? text(name, *value) : absent(name);
}

key_builder& key_builder::integer(std::string_view name, std::int64_t value) {
  put_head(name, t_integer);
  put_u64(static_cast<std::uint64_t>(value));
  return *this;
}

key_builder& key_builder::integer(std::string_view name, std::optional<std::int64_t> value) {
  return value ? integer(name, *value) : absent(name);
}

key_builder& key_builder::number(std::string_view name, double value) {
  if (value == 0.0) value = 0.0;                                            // -0.0 and 0.0 mean the same
  if (std::isnan(value)) value = std::numeric_limits<double>::quiet_NaN();  // one NaN
  put_head(name, t_number);
  put_u64(std::bit_cast<std::uint64_t>(value));
  return *this;
}

key_builder& key_builder::number(std::string_view name, std::optional<double> value) {
  return value ? number(name, *value) : absent(name);
}

key_builder& key_builder::boolean(std::string_view name, bool value) {
  put_head(name, t_boolean);
  buf_.push_back(value ? '\1' : '\0');
  return *this;
}

key_builder& key_builder::absent(std::string_view name) {
  put_head(name, t_absent);
  return *this;
}

key_builder& key_builder::list(std::string_view name, std::span<std::string const> values) {
  put_head(name, t_list);
  put_u64(values.size());
  for (auto const& v : values)
    put_str(v);
  return *this;
}

key_builder& key_builder::string_map(std::string_view name,
                                     std::map<std::string, std::string> const& values) {
  put_head(name, t_map);
  put_u64(values.size());
  for (auto const& [k, v] : values) {
    put_str(k);
    put_str(v);
  }
  return *this;
}

cache_key key_builder::finish() {
  cache_key k = sha256(buf_);
  buf_.clear();
  return k;
}

std::string_view key_strategy_name(key_strategy s) noexcept {
  return s == key_strategy::input ? "input" : "input+params";
}

cache_key request_key(request_key_fields const& f, key_strategy strategy) {
  thread_local key_builder b;
  b.reset();
  static std::map<std::string, std::string> const no_metadata;
  // A version prefix: changing the field list below changes every key instead of silently aliasing.
  b.text("v", "ray-cache-key/2")
      .text("scope", f.scope)
      .text("route", f.route)
      .text("model", f.model_id)
      .text("backend", f.backend_identity)
      .text("system", f.system)
      .text("input", f.input)
      .string_map("metadata", f.metadata != nullptr ? *f.metadata : no_metadata)
      .integer("seed", f.seed)
      .list("stop", f.stop)
      .text("response_format", f.response_format)
      .text("strategy", key_strategy_name(strategy));
  if (strategy == key_strategy::input_params) {
    b.integer("max_tokens", f.max_tokens ? std::optional<std::int64_t>(*f.max_tokens) : std::nullopt)
        .number("temperature", f.temperature)
        .number("top_p", f.top_p)
        .text("extra_params", f.extra_params);
  }
  return b.finish();
}

}  // namespace ray::cache
