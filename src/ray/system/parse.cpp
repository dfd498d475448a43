#include "ray/system/system.hpp"

#include <charconv>
#include <cmath>

namespace ray::system::parse {

namespace {

bool is_space(char c) noexcept {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

std::string_view next_token(std::string_view& s) noexcept {
  std::size_t i = 0;
  while (i < s.size() && is_space(s[i]))
    ++i;
  std::size_t j = i;
  while (j < s.size() && !is_space(s[j]))
    ++j;
  auto tok = s.substr(i, j - i);
  s.remove_prefix(j);
  return tok;
}

std::string_view next_line(std::string_view& s) noexcept {
  auto nl = s.find('\n');
  auto line = s.substr(0, nl);
  s.remove_prefix(nl == std::string_view::npos ? s.size() : nl + 1);
  return line;
}

std::optional<std::uint64_t> to_u64(std::string_view s) noexcept {
  if (s.empty() || s.front() < '0' || s.front() > '9') return std::nullopt;  // no sign, no blank
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size()) return std::nullopt;
  return v;
}

// A PSI average: a finite percentage.
std::optional<double> to_percent(std::string_view s) noexcept {
  if (s.empty() || s.front() < '0' || s.front() > '9') return std::nullopt;
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size() || !std::isfinite(v) || v > 100.0) return std::nullopt;
  return v;
}

std::optional<psi_line> psi_fields(std::string_view rest) {
  std::optional<double> a10, a60, a300;
  std::optional<std::uint64_t> total;
  for (auto tok = next_token(rest); !tok.empty(); tok = next_token(rest)) {
    auto eq = tok.find('=');
    if (eq == std::string_view::npos) return std::nullopt;
    auto key = tok.substr(0, eq);
    auto val = tok.substr(eq + 1);
    if (key == "avg10") {
      if (!(a10 = to_percent(val))) return std::nullopt;
    } else if (key == "avg60") {
      if (!(a60 = to_percent(val))) return std::nullopt;
    } else if (key == "avg300") {
      if (!(a300 = to_percent(val))) return std::nullopt;
    } else if (key == "total") {
      if (!(total = to_u64(val))) return std::nullopt;
    }  // unknown keys (a future kernel) are ignored
  }
  if (!a10 || !a60 || !a300 || !total) return std::nullopt;
  return psi_line{*a10, *a60, *a300, *total};
}

}  // namespace

std::optional<psi> psi_file(std::string_view text) {
  psi out;
  while (!text.empty()) {
    auto line = next_line(text);
    auto kind = next_token(line);
    if (kind == "some" && !out.some)
      out.some = psi_fields(line);
    else if (kind == "full" && !out.full)
      out.full = psi_fields(line);
  }
  if (!out.some && !out.full) return std::nullopt;
  return out;
}

std::optional<std::uint64_t> single_value(std::string_view text, bool allow_max) {
  auto tok = next_token(text);
  if (!next_token(text).empty()) return std::nullopt;  // exactly one token
  if (allow_max && tok == "max") return unlimited;
  return to_u64(tok);
}

std::optional<std::uint64_t> keyed_value(std::string_view text, std::string_view key) {
  while (!text.empty()) {
    auto line = next_line(text);
    if (next_token(line) != key) continue;
    auto val = next_token(line);
    if (!next_token(line).empty()) return std::nullopt;
    return to_u64(val);
  }
  return std::nullopt;
}

std::optional<std::uint64_t> statm_rss_bytes(std::string_view text, std::uint64_t page_size) {
  if (page_size == 0) return std::nullopt;
  if (!to_u64(next_token(text))) return std::nullopt;  // size
  auto pages = to_u64(next_token(text));               // resident
  if (!pages || *pages > unlimited / page_size) return std::nullopt;
  return *pages * page_size;
}

}  // namespace ray::system::parse
