#include "ray/telemetry/text_format.hpp"
#include "ray/telemetry/telemetry.hpp"

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/string.hpp>

#include <array>
#include <charconv>
#include <cmath>

namespace ray::telemetry::text {
namespace {

constexpr std::string_view replacement_char = "\xEF\xBF\xBD";  // U+FFFD

// Copies `s`, writing Escape::write for each ASCII byte that Escape::needs, copying well-formed multi-byte
// sequences verbatim and replacing each ill-formed byte by U+FFFD.
template <class Escape>
void append_escaped(std::string& out, std::string_view s) {
  std::size_t i = 0;
  std::size_t run = 0;  // start of the pending verbatim run
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if (Escape::needs(static_cast<char>(c))) {
        out.append(s.data() + run, i - run);
        Escape::write(out, static_cast<char>(c));
        run = i + 1;
      }
      ++i;
      continue;
    }
    std::size_t n = utf8_sequence_length(s, i);
    if (n == 0) {
      out.append(s.data() + run, i - run);
      out += replacement_char;
      run = i + 1;
      n = 1;
    }
    i += n;
  }
  out.append(s.data() + run, s.size() - run);
}

struct json_escape {
  static bool needs(char c) { return c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20; }
  static void write(std::string& out, char c) {
    switch (c) {
      case '"':
        out += "\\\"";
        return;
      case '\\':
        out += "\\\\";
        return;
      case '\n':
        out += "\\n";
        return;
      case '\r':
        out += "\\r";
        return;
      case '\t':
        out += "\\t";
        return;
      case '\b':
        out += "\\b";
        return;
      case '\f':
        out += "\\f";
        return;
      default:
        break;
    }
    static constexpr char hex[] = "0123456789abcdef";
    out += "\\u00";
    out += hex[(c >> 4) & 0xF];
    out += hex[c & 0xF];
  }
};

struct label_escape {
  static bool needs(char c) { return c == '\\' || c == '"' || c == '\n'; }
  static void write(std::string& out, char c) { out += c == '\n' ? "\\n" : c == '"' ? "\\\"" : "\\\\"; }
};

struct help_escape {
  static bool needs(char c) { return c == '\\' || c == '\n'; }
  static void write(std::string& out, char c) { out += c == '\n' ? "\\n" : "\\\\"; }
};

}  // namespace

std::size_t utf8_sequence_length(std::string_view s, std::size_t i) noexcept {
  auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // bounds of the second byte (rule out overlongs and surrogates)
  if (c < 0x80) {
    return 1;
  }
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) {
      lo = 0xA0;
    }
    if (c == 0xED) {
      hi = 0x9F;
    }
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) {
      lo = 0x90;
    }
    if (c == 0xF4) {
      hi = 0x8F;
    }
  } else {
    return 0;
  }
  if (i + n > s.size()) {
    return 0;
  }
  if (b(i + 1) < lo || b(i + 1) > hi) {
    return 0;
  }
  for (std::size_t k = 2; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) {
      return 0;
    }
  }
  return n;
}

void append_uint(std::string& out, std::uint64_t v) {
  std::array<char, 24> buf{};
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  out.append(buf.data(), end);
}

void append_number(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
    return;
  }
  if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
    return;
  }
  std::array<char, 32> buf{};
  char* end = nullptr;
  if (v == std::trunc(v) && std::fabs(v) < 9007199254740992.0) {  // 2^53: exact as an integer
    end = std::to_chars(buf.data(), buf.data() + buf.size(), static_cast<std::int64_t>(v)).ptr;
  } else {
    end = std::to_chars(buf.data(), buf.data() + buf.size(), v).ptr;  // shortest round-trip, "C" locale
  }
  out.append(buf.data(), end);
}

void append_json_number(std::string& out, double v) {
  if (!std::isfinite(v)) {
    out += "null";
    return;
  }
  append_number(out, v);
}

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  append_escaped<json_escape>(out, s);
  out += '"';
}

void append_json_value(std::string& out, boost::json::value const& v) {
  switch (v.kind()) {
    case boost::json::kind::null:
      out += "null";
      break;
    case boost::json::kind::bool_:
      out += v.get_bool() ? "true" : "false";
      break;
    case boost::json::kind::int64: {
      std::array<char, 24> buf{};
      auto end = std::to_chars(buf.data(), buf.data() + buf.size(), v.get_int64()).ptr;
      out.append(buf.data(), end);
      break;
    }
    case boost::json::kind::uint64:
      append_uint(out, v.get_uint64());
      break;
    case boost::json::kind::double_:
      append_json_number(out, v.get_double());
      break;
    case boost::json::kind::string: {
      auto const& s = v.get_string();
      append_json_string(out, std::string_view(s.data(), s.size()));
      break;
    }
    case boost::json::kind::array: {
      out += '[';
      bool first = true;
      for (auto const& e : v.get_array()) {
        if (!first) {
          out += ',';
        }
        first = false;
        append_json_value(out, e);
      }
      out += ']';
      break;
    }
    case boost::json::kind::object: {
      out += '{';
      bool first = true;
      for (auto const& kv : v.get_object()) {
        if (!first) {
          out += ',';
        }
        first = false;
        append_json_string(out, std::string_view(kv.key().data(), kv.key().size()));
        out += ':';
        append_json_value(out, kv.value());
      }
      out += '}';
      break;
    }
  }
}

void append_label_value(std::string& out, std::string_view s) {
  append_escaped<label_escape>(out, s);
}

void append_help(std::string& out, std::string_view s) {
  append_escaped<help_escape>(out, s);
}

}  // namespace ray::telemetry::text

namespace ray::telemetry {

std::string to_json(boost::json::value const& v) {
  std::string out;
  out.reserve(256);
  text::append_json_value(out, v);
  return out;
}

}  // namespace ray::telemetry
