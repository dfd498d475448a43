// Private to ray::telemetry (not included by telemetry.hpp): locale-independent number formatting and the
// escaping rules of JSON strings and Prometheus text. Every function appends to `out`; none throws except on
// allocation failure.
#pragma once

#include <boost/json/value.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace ray::telemetry::text {

// Decimal integer.
void append_uint(std::string& out, std::uint64_t v);

// Prometheus sample value: integral values below 2^53 as integers ("3", "-2"), otherwise the shortest text
// that round-trips (at most 17 significant digits, e.g. "0.005", "1e+20"); "NaN", "+Inf", "-Inf".
void append_number(std::string& out, double v);

// JSON number: as append_number, but NaN and infinities (not JSON) become null.
void append_json_number(std::string& out, double v);

// A quoted JSON string. Quotes, backslashes and control characters are escaped; ill-formed UTF-8 bytes are
// replaced by U+FFFD so every line stays valid JSON whatever a caller passes.
void append_json_string(std::string& out, std::string_view s);

// Any JSON value, compactly; strings as append_json_string, doubles as append_json_number.
void append_json_value(std::string& out, boost::json::value const& v);

// Prometheus label value body (no quotes): backslash, double quote and newline escaped; ill-formed UTF-8
// bytes replaced by U+FFFD.
void append_label_value(std::string& out, std::string_view s);

// Prometheus HELP text: backslash and newline escaped; ill-formed UTF-8 bytes replaced by U+FFFD.
void append_help(std::string& out, std::string_view s);

// Length in bytes of the well-formed UTF-8 sequence starting at s[i], or 0 if it is ill-formed there.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) noexcept;

}  // namespace ray::telemetry::text
