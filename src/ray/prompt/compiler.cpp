#include "ray/prompt/prompt.hpp"

#include <algorithm>
#include <cstdio>
#include <unordered_set>
#include <vector>

namespace ray::prompt {

namespace {

std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  std::size_t pos = 0;
  while (true) {
    auto nl = text.find('\n', pos);
    if (nl == std::string_view::npos) {
      lines.push_back(text.substr(pos));
      break;
    }
    lines.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return lines;
}

std::string lower_trimmed(std::string_view line) {
  std::string out(trim(line));
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

bool is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_word(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' || c == '.' ||
         c == '-' || c == '+' || c == '%';
}

}  // namespace

std::uint64_t hash64(std::string_view data, std::uint64_t seed) noexcept {
  std::uint64_t h = seed;
  for (unsigned char c : data) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string collapse_whitespace(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool pending_blank = false;
  bool any = false;
  for (auto raw : split_lines(text)) {
    if (!raw.empty() && raw.back() == '\r') raw.remove_suffix(1);
    auto line = trim(raw);
    if (line.empty()) {
      pending_blank = any;
      continue;
    }
    if (any) out += pending_blank ? "\n\n" : "\n";
    pending_blank = false;
    bool space = false;
    for (char c : line) {
      if (c == ' ' || c == '\t') {
        space = true;
        continue;
      }
      if (space) out += ' ';
      space = false;
      out += c;
    }
    any = true;
  }
  return out;
}

std::string dedupe_lines(std::string_view text) {
  std::unordered_set<std::string> seen;
  std::string out;
  out.reserve(text.size());
  bool first = true;
  for (auto line : split_lines(text)) {
    if (!trim(line).empty() && !seen.insert(lower_trimmed(line)).second) continue;
    if (!first) out += '\n';
    out.append(line);
    first = false;
  }
  return out;
}

std::string drop_lines_repeating_system(std::string_view input, std::string_view system) {
  if (system.empty()) return std::string(input);
  std::unordered_set<std::string> sys;
  for (auto line : split_lines(system))
    if (!trim(line).empty()) sys.insert(lower_trimmed(line));
  std::string out;
  bool first = true;
  bool kept_text = false;
  for (auto line : split_lines(input)) {
    auto t = trim(line);
    if (count_code_points(t) >= 20 && sys.count(lower_trimmed(line))) continue;
    if (!first) out += '\n';
    out.append(line);
    first = false;
    kept_text = kept_text || !t.empty();
  }
  if (!kept_text) return std::string(input);  // never leave the input empty
  return out;
}

std::string input_shape(std::string_view input) {
  std::string out;
  std::size_t i = 0;
  while (i < input.size() && out.size() < 240) {
    auto rest = input.substr(i);
    if (rest.substr(0, 7) == "http://" || rest.substr(0, 8) == "https://") {
      while (i < input.size() && input[i] != ' ' && input[i] != '\n' && input[i] != '\t')
        ++i;
      out += "<url>";
      continue;
    }
    char c = input[i];
    if (c == '"' || c == '\'') {
      auto close = input.find(c, i + 1);
      if (close != std::string_view::npos && close - i <= 200 &&
          input.substr(i, close - i).find('\n') == std::string_view::npos) {
        out += "<q>";
        i = close + 1;
        continue;
      }
    }
    if (is_word(c)) {
      std::size_t j = i;
      while (j < input.size() && is_word(input[j]))
        ++j;
      std::string_view word = input.substr(i, j - i);
      // An email inside a word run: local@domain.
      if (j < input.size() && input[j] == '@') {
        std::size_t k = j + 1;
        while (k < input.size() && is_word(input[k]))
          ++k;
        if (k > j + 1) {
          out += "<email>";
          i = k;
          continue;
        }
      }
      bool all_hex = word.size() >= 16 && std::all_of(word.begin(), word.end(), is_hex);
      bool has_digit = std::any_of(word.begin(), word.end(), is_digit);
      bool numeric = has_digit && std::all_of(word.begin(), word.end(), [](char x) {
                       return is_digit(x) || x == '.' || x == ',' || x == '-' || x == '+' || x == '%';
                     });
      if (all_hex)
        out += "<hex>";
      else if (numeric)
        out += "<n>";
      else
        out.append(word);
      i = j;
      continue;
    }
    out += c;
    ++i;
  }
  out.resize(utf8_safe_prefix(out, std::min<std::size_t>(out.size(), 240)));
  return out;
}

compiled compile(config::prompt_compiler_config const& cfg, std::string system, std::string input,
                 std::string_view template_family, std::map<std::string, std::string> const& metadata) {
  compiled out;
  out.chars_before = count_code_points(system) + count_code_points(input);
  if (cfg.enabled) {
    if (cfg.collapse_whitespace) {
      system = collapse_whitespace(system);
      auto collapsed = collapse_whitespace(input);
      if (!collapsed.empty() || trim(input).empty()) input = std::move(collapsed);
    }
    if (cfg.dedupe_repeated_lines) {
      system = dedupe_lines(system);
      auto deduped = drop_lines_repeating_system(dedupe_lines(input), system);
      if (!trim(deduped).empty()) input = std::move(deduped);
    }
  }
  if (!template_family.empty()) {
    out.family_key = "template:" + std::string(template_family);
  } else {
    for (auto const& key : cfg.family_metadata_keys) {
      auto it = metadata.find(key);
      if (it != metadata.end() && !trim(it->second).empty()) {
        out.family_key = "meta:" + key + "=" + std::string(trim(it->second));
        break;
      }
    }
    if (out.family_key.empty()) {
      char buf[24];
      std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(hash64(input_shape(input))));
      out.family_key = std::string("shape:") + buf;
    }
  }
  out.affinity_key = hash64(system, hash64(out.family_key));
  out.chars_after = count_code_points(system) + count_code_points(input);
  out.system = std::move(system);
  out.input = std::move(input);
  return out;
}

bool truncate_prompt(std::string& system, std::string& input, std::size_t max_chars) {
  std::size_t const in_chars = count_code_points(input);
  std::size_t const sys_chars = count_code_points(system);
  if (in_chars + sys_chars <= max_chars) return false;
  auto cut_to_chars = [](std::string& s, std::size_t chars) {
    std::size_t n = 0, i = 0;
    while (i < s.size() && n < chars) {
      ++i;
      while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80)
        ++i;
      ++n;
    }
    s.resize(i);
  };
  if (in_chars >= max_chars) {
    system.clear();
    cut_to_chars(input, max_chars);
  } else {
    cut_to_chars(system, max_chars - in_chars);
  }
  return true;
}

}  // namespace ray::prompt
