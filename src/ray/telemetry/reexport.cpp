#include "ray/telemetry/reexport.hpp"

#include "ray/telemetry/text_format.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace ray::telemetry {
namespace {

constexpr std::string_view source_prefix = "llamacpp:";
constexpr std::string_view target_prefix = "ray_backend_llamacpp_";

// Series llama-server types as counters that are not counts of events (see the header, rule 3).
constexpr std::array<std::string_view, 2> gauges_typed_as_counters{"n_tokens_max", "n_busy_slots_per_decode"};

enum class kind { counter, gauge, histogram, summary, untyped };

std::optional<kind> parse_kind(std::string_view s) {
  if (s == "counter") return kind::counter;
  if (s == "gauge") return kind::gauge;
  if (s == "histogram") return kind::histogram;
  if (s == "summary") return kind::summary;
  if (s == "untyped") return kind::untyped;
  return std::nullopt;
}

std::string_view kind_name(kind k) {
  switch (k) {
    case kind::counter:
      return "counter";
    case kind::gauge:
      return "gauge";
    case kind::histogram:
      return "histogram";
    case kind::summary:
      return "summary";
    case kind::untyped:
      break;
  }
  return "untyped";
}

bool is_blank(char c) {
  return c == ' ' || c == '\t';
}
bool is_alpha_(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// A cursor over one line.
struct cursor {
  std::string_view s;
  std::size_t i{0};

  bool done() const { return i >= s.size(); }
  char peek() const { return done() ? '\0' : s[i]; }
  void skip_blanks() {
    while (!done() && is_blank(s[i]))
      ++i;
  }
  std::string_view token() {  // up to the next blank or the end
    std::size_t start = i;
    while (!done() && !is_blank(s[i]))
      ++i;
    return s.substr(start, i - start);
  }
  // [a-zA-Z_:][a-zA-Z0-9_:]* (metric names) or, without colons, [a-zA-Z_][a-zA-Z0-9_]* (label names).
  std::string_view name(bool colons) {
    std::size_t start = i;
    auto ok = [&](char c, bool first) {
      return is_alpha_(c) || (colons && c == ':') || (!first && is_digit(c));
    };
    while (!done() && ok(s[i], i == start))
      ++i;
    return s.substr(start, i - start);
  }
};

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    std::size_t n = text::utf8_sequence_length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// Escapes the text format allows: `\\` and `\n` in HELP, also `\"` in label values.
bool valid_escapes(std::string_view s, bool quote_allowed) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\') continue;
    if (++i == s.size()) return false;
    if (s[i] != '\\' && s[i] != 'n' && !(quote_allowed && s[i] == '"')) return false;
  }
  return true;
}

// What Go's strconv.ParseFloat (Prometheus' parser) accepts, minus hex floats and underscores.
bool valid_float(std::string_view s) {
  std::string lower;
  for (char c : s)
    lower += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  for (std::string_view special : {"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}) {
    if (lower == special) return true;
  }
  if (s.empty() || s.find_first_not_of("0123456789.eE+-") != std::string_view::npos) return false;
  if (s.front() == '+') s.remove_prefix(1);
  double v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc{} && end == s.data() + s.size();  // Go's parser rejects out-of-range values too
}

bool valid_timestamp(std::string_view s) {
  std::int64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return !s.empty() && ec == std::errc{} && end == s.data() + s.size();
}

struct label {
  std::string_view name;
  std::string_view value;  // as written, escapes included
};

// Parses `{name="value",…}` (trailing comma allowed) at the cursor; nullopt when malformed.
std::optional<std::vector<label>> parse_labels(cursor& c) {
  std::vector<label> labels;
  ++c.i;  // '{'
  c.skip_blanks();
  while (c.peek() != '}') {
    label l;
    l.name = c.name(false);
    if (l.name.empty()) return std::nullopt;
    for (auto const& other : labels) {
      if (other.name == l.name) return std::nullopt;
    }
    c.skip_blanks();
    if (c.peek() != '=') return std::nullopt;
    ++c.i;
    c.skip_blanks();
    if (c.peek() != '"') return std::nullopt;
    std::size_t start = ++c.i;
    while (!c.done() && c.s[c.i] != '"')
      c.i += c.s[c.i] == '\\' ? 2 : 1;
    if (c.done()) return std::nullopt;
    l.value = c.s.substr(start, c.i - start);
    ++c.i;  // closing quote
    if (!valid_escapes(l.value, true) || !valid_utf8(l.value)) return std::nullopt;
    labels.push_back(l);
    c.skip_blanks();
    if (c.peek() == ',') {
      ++c.i;
      c.skip_blanks();
    } else if (c.peek() != '}') {
      return std::nullopt;
    }
  }
  ++c.i;  // '}'
  return labels;
}

struct family {
  std::string_view source;  // full source name, e.g. "llamacpp:n_tokens_max"
  std::string name;         // output name; empty when dropped (its new name was taken)
  std::optional<std::string_view> help;
  std::optional<kind> type;
  kind out_type{kind::untyped};
  std::vector<std::string> lines;  // rendered sample lines, each ending in '\n'
};

std::string target_name(std::string_view source, kind& type) {
  std::string rest(source.substr(source_prefix.size()));
  std::replace(rest.begin(), rest.end(), ':', '_');
  if (type == kind::counter && std::find(gauges_typed_as_counters.begin(), gauges_typed_as_counters.end(),
                                         rest) != gauges_typed_as_counters.end()) {
    type = kind::gauge;
  }
  constexpr std::string_view seconds = "tokens_seconds";
  if (ends_with(rest, seconds) &&
      (rest.size() == seconds.size() || rest[rest.size() - seconds.size() - 1] == '_')) {
    rest.replace(rest.size() - std::string_view("seconds").size(), std::string_view::npos, "per_second");
  }
  if (type == kind::counter && !ends_with(rest, "_total")) rest += "_total";
  return std::string(target_prefix) + rest;
}

class reexporter {
 public:
  explicit reexporter(std::string_view text) : text_(text) {}

  std::string run(std::size_t max_bytes) {
    for_each_line([this](std::string_view line) { read_metadata(line); });
    for (auto& f : families_)
      name_family(f);
    for_each_line([this](std::string_view line) { read_sample(line); });
    return render(max_bytes);
  }

 private:
  template <class Fn>
  void for_each_line(Fn fn) const {
    std::size_t start = 0;
    while (start < text_.size()) {
      std::size_t end = text_.find('\n', start);
      if (end == std::string_view::npos) end = text_.size();
      std::string_view line = text_.substr(start, end - start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      fn(line);
      start = end + 1;
    }
  }

  family& family_for(std::string_view source) {
    auto [it, inserted] = by_source_.try_emplace(source, families_.size());
    if (inserted) families_.push_back(family{.source = source});
    return families_[it->second];
  }

  void name_family(family& f) {
    f.out_type = f.type.value_or(kind::untyped);
    std::string name = target_name(f.source, f.out_type);
    if (taken_.insert(name).second) f.name = std::move(name);
  }

  // First pass: `# HELP` and `# TYPE` of llamacpp families.
  void read_metadata(std::string_view line) {
    cursor c{line};
    c.skip_blanks();
    if (c.peek() != '#') return;
    ++c.i;
    c.skip_blanks();
    std::string_view keyword = c.token();
    if (keyword != "HELP" && keyword != "TYPE") return;  // a plain comment
    c.skip_blanks();
    std::string_view name = c.name(true);
    if (!name.starts_with(source_prefix) || name.size() == source_prefix.size()) return;
    if (!c.done() && !is_blank(c.peek())) return;
    c.skip_blanks();
    std::string_view rest = line.substr(c.i);
    while (!rest.empty() && is_blank(rest.back()))
      rest.remove_suffix(1);
    if (keyword == "HELP") {
      if (!valid_escapes(rest, false) || !valid_utf8(rest)) return;
      family& f = family_for(name);
      if (!f.help) f.help = rest;
    } else {
      auto k = parse_kind(rest);
      if (!k) return;
      family& f = family_for(name);
      if (!f.type) f.type = k;
    }
  }

  // The family a sample belongs to and the suffix its output name takes; nullptr to skip the sample.
  std::pair<family*, std::string_view> resolve(std::string_view name, std::vector<label> const& labels) {
    auto find = [&](std::string_view n) -> family* {
      auto it = by_source_.find(n);
      return it == by_source_.end() ? nullptr : &families_[it->second];
    };
    auto has = [&](std::string_view label_name) {
      return std::any_of(labels.begin(), labels.end(), [&](label const& l) { return l.name == label_name; });
    };
    if (family* f = find(name)) {
      if (f->out_type == kind::histogram) return {nullptr, {}};  // a histogram's samples carry a suffix
      if (f->out_type == kind::summary && !has("quantile")) return {nullptr, {}};
      return {f, {}};
    }
    for (std::string_view suffix : {"_bucket", "_count", "_sum"}) {
      if (!ends_with(name, suffix)) continue;
      family* f = find(name.substr(0, name.size() - suffix.size()));
      if (f && f->out_type == kind::histogram) {
        if (suffix == "_bucket" && !has("le")) return {nullptr, {}};
        return {f, suffix};
      }
      if (f && f->out_type == kind::summary && suffix != "_bucket") return {f, suffix};
    }
    if (ends_with(name, "_total")) {  // OpenMetrics style: `# TYPE x counter` with samples `x_total`
      family* f = find(name.substr(0, name.size() - 6));
      if (f && f->out_type == kind::counter) return {f, {}};
    }
    family& created = family_for(name);  // untyped: no HELP or TYPE named it
    name_family(created);
    return {&created, {}};
  }

  // Second pass: samples.
  void read_sample(std::string_view line) {
    cursor c{line};
    c.skip_blanks();
    if (c.done() || c.peek() == '#') return;
    std::string_view name = c.name(true);
    if (!name.starts_with(source_prefix) || name.size() == source_prefix.size()) return;
    if (!c.done() && !is_blank(c.peek()) && c.peek() != '{') return;  // junk glued to the name
    c.skip_blanks();
    std::vector<label> labels;
    if (c.peek() == '{') {
      auto parsed = parse_labels(c);
      if (!parsed) return;
      labels = std::move(*parsed);
      c.skip_blanks();
    }
    std::string_view value = c.token();
    if (!valid_float(value)) return;
    c.skip_blanks();
    std::string_view timestamp = c.token();
    if (!timestamp.empty() && !valid_timestamp(timestamp)) return;
    c.skip_blanks();
    if (!c.done()) return;
    for (auto const& l : labels) {
      if ((l.name == "le" || l.name == "quantile") && !valid_float(l.value)) return;
    }

    auto [f, suffix] = resolve(name, labels);
    if (!f || f->name.empty()) return;
    std::string out = f->name;
    out += suffix;
    if (!labels.empty()) {
      char sep = '{';
      for (auto const& l : labels) {
        out += sep;
        out += l.name;
        out += "=\"";
        out += l.value;
        out += '"';
        sep = ',';
      }
      out += '}';
    }
    if (!series_.insert(out).second) return;  // a repeated series
    out += ' ';
    out += value;
    if (!timestamp.empty()) {
      out += ' ';
      out += timestamp;
    }
    out += '\n';
    f->lines.push_back(std::move(out));
  }

  std::string render(std::size_t max_bytes) const {
    std::string out;
    for (auto const& f : families_) {
      if (f.name.empty() || f.lines.empty()) continue;
      std::string header = "# HELP " + f.name + ' ';
      if (f.help && !f.help->empty()) {
        header += *f.help;
      } else {
        header += "llama-server's " + std::string(f.source) + " (no HELP given).";
      }
      header += "\n# TYPE " + f.name + ' ' + std::string(kind_name(f.out_type)) + '\n';
      std::size_t size = header.size();
      for (auto const& l : f.lines)
        size += l.size();
      if (out.size() + size <= max_bytes) {
        out += header;
        for (auto const& l : f.lines)
          out += l;
        continue;
      }
      // The first family that does not fit ends the output.
      bool const lines_stand_alone = f.out_type != kind::histogram && f.out_type != kind::summary;
      if (lines_stand_alone && out.size() + header.size() + f.lines.front().size() <= max_bytes) {
        out += header;
        for (auto const& l : f.lines) {
          if (out.size() + l.size() > max_bytes) break;
          out += l;
        }
      }
      break;
    }
    return out;
  }

  std::string_view text_;
  std::vector<family> families_;  // in order of first HELP/TYPE, then untyped families by first sample
  std::unordered_map<std::string_view, std::size_t> by_source_;
  std::unordered_set<std::string> taken_;   // output family names
  std::unordered_set<std::string> series_;  // output series (name and labels) already written
};

}  // namespace

std::string reexport_llamacpp(std::string_view prometheus_text, std::size_t max_bytes) {
  return reexporter(prometheus_text).run(max_bytes);
}

void metrics_cache::store(std::string text, ray::clock::time_point now) {
  if (!text.empty() && text.back() != '\n') text += '\n';
  auto next = std::make_shared<std::string const>(std::move(text));
  {
    std::lock_guard lock(mutex_);
    text_.swap(next);
    stored_at_ = now;
  }
  // The previous text (now in `next`) is freed here, outside the lock — unless a render still holds it.
}

void metrics_cache::clear() noexcept {
  std::shared_ptr<std::string const> old;
  std::lock_guard lock(mutex_);
  text_.swap(old);
  stored_at_.reset();
}

void metrics_cache::append_to(std::string& out) const {
  std::shared_ptr<std::string const> text;
  {
    std::lock_guard lock(mutex_);
    text = text_;
  }
  if (text) out += *text;
}

bool metrics_cache::stale(ray::clock::time_point now, ray::clock::time_point::duration max_age) const {
  std::lock_guard lock(mutex_);
  return !stored_at_ || now - *stored_at_ >= max_age;
}

std::optional<ray::clock::time_point> metrics_cache::stored_at() const {
  std::lock_guard lock(mutex_);
  return stored_at_;
}

}  // namespace ray::telemetry
