#include "ray/telemetry/metrics.hpp"

#include "ray/core/core.hpp"
#include "ray/telemetry/text_format.hpp"

#include <array>
#include <cassert>
#include <charconv>
#include <cmath>
#include <cstring>
#include <deque>
#include <stdexcept>
#include <type_traits>
#include <unordered_map>

#include <fcntl.h>
#include <unistd.h>

#ifndef RAY_VERSION
#define RAY_VERSION "unknown"
#endif

namespace ray::telemetry {

namespace detail {

constinit counter_cell discard_counter{};
constinit gauge_cell discard_gauge{};
namespace {
constinit std::atomic<std::uint64_t> discard_buckets[1]{};
}
constinit histogram_cell discard_histogram{.bounds = nullptr, .bound_count = 0, .buckets = discard_buckets};

// What the registry needs of a family, whatever its kind.
struct family_state {
  std::string name;
  std::string help;
  std::vector<std::string> label_names;
  family_options options;
  mutable std::mutex mutex;  // guards the series list and index (not the cells' values)

  virtual ~family_state() = default;
  virtual void render_prometheus(std::string& out) const = 0;
  virtual void render_json(std::string& counters, std::string& gauges) const = 0;
};

template <class Cell>
struct series {
  using fn_type = std::conditional_t<std::is_same_v<Cell, counter_cell>, std::function<std::uint64_t()>,
                                     std::function<double()>>;
  Cell cell;
  std::unique_ptr<std::atomic<std::uint64_t>[]> bucket_storage;  // histograms only
  fn_type fn;                                       // when set, the rendered value (counters and gauges only)
  std::function<std::optional<double>()> maybe_fn;  // gauges: when set, the value or nullopt = not rendered
  std::string labels;       // `a="x",b="y"` escaped, without braces; empty when unlabelled
  std::string json_labels;  // `{a=x,b=y}`; empty when unlabelled
};

namespace {

struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

void append_sep(std::string& s) {
  if (!s.empty()) {
    s += ',';
  }
}

}  // namespace

template <class Cell>
struct family_impl final : family_state {
  static constexpr bool is_counter = std::is_same_v<Cell, counter_cell>;
  static constexpr bool is_gauge = std::is_same_v<Cell, gauge_cell>;
  static constexpr bool is_histogram = std::is_same_v<Cell, histogram_cell>;

  std::vector<double> bounds;        // histograms
  std::vector<std::string> le_text;  // histograms: `le="0.005"} ` for each bound, then +Inf
  std::deque<series<Cell>> list;     // node-stable: handles point into it
  std::unordered_map<std::string, series<Cell>*, string_hash, std::equal_to<>> index;
  std::size_t regular_count{0};  // series created by lookup, bounded by max_series
  series<Cell>* other{nullptr};  // the overflow series, once needed
  std::string key;               // lookup scratch, guarded by mutex

  // Lock held.
  series<Cell>& find_or_create(std::span<std::string_view const> values) {
    if (values.size() != label_names.size()) {
      assert(false && "metric label value count differs from the family's label names");
      return other_series();
    }
    key.clear();
    for (auto v : values) {
      v = v.substr(0, ray::utf8_safe_prefix(v, max_label_value_bytes));
      auto n = static_cast<std::uint32_t>(v.size());
      key.append(reinterpret_cast<char const*>(&n),
                 sizeof n);  // length-prefixed: unambiguous whatever the bytes
      key.append(v);
    }
    if (auto it = index.find(std::string_view(key)); it != index.end()) {
      return *it->second;
    }
    if (regular_count >= options.max_series) {
      return other_series();
    }
    ++regular_count;
    return create(values, key);
  }

  series<Cell>& other_series() {
    if (other != nullptr) {
      return *other;
    }
    std::vector<std::string_view> values(label_names.size(), "other");
    std::string k;
    for (auto v : values) {
      auto n = static_cast<std::uint32_t>(v.size());
      k.append(reinterpret_cast<char const*>(&n), sizeof n);
      k.append(v);
    }
    if (auto it = index.find(std::string_view(k)); it != index.end()) {
      other = it->second;
    } else {
      other = &create(values, k);
    }
    return *other;
  }

  series<Cell>& create(std::span<std::string_view const> values, std::string const& k) {
    auto& s = list.emplace_back();
    if constexpr (is_histogram) {
      s.bucket_storage = std::make_unique<std::atomic<std::uint64_t>[]>(bounds.size() + 1);
      s.cell.bounds = bounds.data();
      s.cell.bound_count = bounds.size();
      s.cell.buckets = s.bucket_storage.get();
    }
    std::string labels, json_labels;
    for (std::size_t i = 0; i < values.size(); ++i) {
      auto v = values[i].substr(0, ray::utf8_safe_prefix(values[i], max_label_value_bytes));
      labels += i > 0 ? "," : "";
      labels += label_names[i];
      labels += "=\"";
      text::append_label_value(labels, v);
      labels += '"';
      json_labels += i > 0 ? ',' : '{';
      json_labels += label_names[i];
      json_labels += '=';
      json_labels += v;  // escaped by the JSON writer
    }
    if (!values.empty()) {
      json_labels += '}';
    }
    s.labels = std::move(labels);
    s.json_labels = std::move(json_labels);
    index.emplace(k, &s);
    return s;
  }

  Cell* lookup(std::span<std::string_view const> values) {
    std::lock_guard lk(mutex);
    return &find_or_create(values).cell;
  }

  void set_function(std::span<std::string_view const> values, typename series<Cell>::fn_type fn) {
    std::lock_guard lk(mutex);
    find_or_create(values).fn = std::move(fn);
  }

  void set_optional_function(std::span<std::string_view const> values,
                             std::function<std::optional<double>()> fn) {
    std::lock_guard lk(mutex);
    find_or_create(values).maybe_fn = std::move(fn);
  }

  // A gauge series' value now; nullopt = leave the series out of this render.
  static std::optional<double> gauge_value(series<Cell> const& s) {
    if (s.maybe_fn) return s.maybe_fn();
    return s.fn ? s.fn() : s.cell.value.load(std::memory_order_relaxed);
  }

  std::size_t size() const {
    std::lock_guard lk(mutex);
    return list.size();
  }

  // `name{labels} ` or `name ` (with the trailing space).
  void append_series_name(std::string& out, std::string_view suffix, series<Cell> const& s) const {
    out += name;
    out += suffix;
    if (!s.labels.empty()) {
      out += '{';
      out += s.labels;
      out += '}';
    }
    out += ' ';
  }

  void render_prometheus(std::string& out) const override {
    std::lock_guard lk(mutex);
    if (list.empty()) {
      return;
    }
    std::size_t const start = out.size();
    bool any = false;
    out += "# HELP ";
    out += name;
    out += ' ';
    text::append_help(out, help);
    out += "\n# TYPE ";
    out += name;
    out += is_counter ? " counter\n" : is_gauge ? " gauge\n" : " histogram\n";
    for (auto const& s : list) {
      if constexpr (is_histogram) {
        std::uint64_t cumulative = 0;
        for (std::size_t i = 0; i <= bounds.size(); ++i) {
          cumulative += s.cell.buckets[i].load(std::memory_order_relaxed);
          out += name;
          out += "_bucket{";
          if (!s.labels.empty()) {
            out += s.labels;
            out += ',';
          }
          out += le_text[i];
          text::append_uint(out, cumulative);
          out += '\n';
        }
        append_series_name(out, "_sum", s);
        text::append_number(out, s.cell.sum.load(std::memory_order_relaxed));
        out += '\n';
        append_series_name(out, "_count", s);
        text::append_uint(out, cumulative);
        out += '\n';
        any = true;
      } else {
        if constexpr (is_counter) {
          append_series_name(out, "", s);
          text::append_uint(out, s.fn ? s.fn() : s.cell.value.load(std::memory_order_relaxed));
        } else {
          auto v = gauge_value(s);
          if (!v) continue;
          append_series_name(out, "", s);
          text::append_number(out, *v);
        }
        out += '\n';
        any = true;
      }
    }
    if (!any) out.resize(start);  // every series was left out: no HELP/TYPE without a sample
  }

  void append_json_key(std::string& out, std::string_view suffix, series<Cell> const& s) const {
    std::string k = options.json_name;
    k += suffix;
    k += s.json_labels;
    text::append_json_string(out, k);
    out += ':';
  }

  void render_json(std::string& counters, std::string& gauges) const override {
    if (options.json_name.empty()) {
      return;
    }
    std::lock_guard lk(mutex);
    for (auto const& s : list) {
      if constexpr (is_histogram) {
        std::uint64_t count = 0;
        for (std::size_t i = 0; i <= bounds.size(); ++i) {
          count += s.cell.buckets[i].load(std::memory_order_relaxed);
        }
        append_sep(counters);
        append_json_key(counters, ".count", s);
        text::append_uint(counters, count);
        counters += ',';
        append_json_key(counters, ".sum", s);
        text::append_json_number(counters, s.cell.sum.load(std::memory_order_relaxed));
      } else if constexpr (is_counter) {
        append_sep(counters);
        append_json_key(counters, "", s);
        text::append_uint(counters, s.fn ? s.fn() : s.cell.value.load(std::memory_order_relaxed));
      } else {
        auto v = gauge_value(s);
        if (!v) continue;
        append_sep(gauges);
        append_json_key(gauges, "", s);
        text::append_json_number(gauges, *v);
      }
    }
  }
};

}  // namespace detail

namespace {

constexpr std::array<double, 13> latency_buckets{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                 1,     2.5,  5,     10,   30,  60};

bool is_valid_name(std::string_view n) noexcept {
  if (n.empty()) {
    return false;
  }
  for (std::size_t i = 0; i < n.size(); ++i) {
    char c = n[i];
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    bool digit = c >= '0' && c <= '9';
    if (!(alpha || (i > 0 && digit))) {
      return false;
    }
  }
  return true;
}

// Reads a small /proc file whole; empty on failure.
std::string read_proc_file(char const* path) {
  std::string data;
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return data;
  }
  std::array<char, 4096> buf{};
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n > 0) {
      data.append(buf.data(), static_cast<std::size_t>(n));
      if (data.size() > (1u << 16)) {
        break;  // /proc/stat is small; never read without bound
      }
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    break;
  }
  ::close(fd);
  return data;
}

template <class T>
bool parse_number(std::string_view s, T& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p != s.data();
}

double resident_memory_bytes() {
  auto statm = read_proc_file("/proc/self/statm");  // "size resident shared text lib data dt" in pages
  std::string_view v(statm);
  auto sp = v.find(' ');
  if (sp == std::string_view::npos) {
    return std::nan("");
  }
  v.remove_prefix(sp + 1);
  std::uint64_t pages = 0;
  if (!parse_number(v.substr(0, v.find(' ')), pages)) {
    return std::nan("");
  }
  return static_cast<double>(pages) * static_cast<double>(::sysconf(_SC_PAGESIZE));
}

// Unix time the process started: boot time + starttime (field 22 of /proc/self/stat, in clock ticks).
double process_start_time() {
  auto stat = read_proc_file("/proc/self/stat");
  auto sys = read_proc_file("/proc/stat");
  std::string_view s(stat);
  auto close = s.rfind(')');  // the command name may contain spaces and parentheses
  auto b = std::string_view(sys).find("\nbtime ");
  if (close != std::string_view::npos && b != std::string_view::npos) {
    s.remove_prefix(close + 2);  // now at field 3 (state)
    for (int field = 3; field < 22 && !s.empty(); ++field) {
      auto sp = s.find(' ');
      s.remove_prefix(sp == std::string_view::npos ? s.size() : sp + 1);
    }
    std::uint64_t ticks = 0, btime = 0;
    auto bt = std::string_view(sys).substr(b + 7);
    long hz = ::sysconf(_SC_CLK_TCK);
    if (parse_number(s.substr(0, s.find(' ')), ticks) && parse_number(bt.substr(0, bt.find('\n')), btime) &&
        hz > 0) {
      return static_cast<double>(btime) + static_cast<double>(ticks) / static_cast<double>(hz);
    }
  }
  return std::chrono::duration<double>(ray::system_clock().wall().time_since_epoch()).count();
}

std::span<std::string_view const> as_span(std::initializer_list<std::string_view> l) noexcept {
  return {l.begin(), l.size()};
}

}  // namespace

std::span<double const> default_latency_buckets() noexcept {
  return latency_buckets;
}

std::uint64_t histogram::count() const noexcept {
  std::uint64_t n = 0;
  for (std::size_t i = 0; i <= cell_->bound_count; ++i) {
    n += cell_->buckets[i].load(std::memory_order_relaxed);
  }
  return n;
}

counter counter_family::with(std::initializer_list<std::string_view> values) const {
  return with(as_span(values));
}
counter counter_family::with(std::span<std::string_view const> values) const {
  return counter(f_->lookup(values));
}
void counter_family::set_function(std::initializer_list<std::string_view> values,
                                  std::function<std::uint64_t()> fn) const {
  f_->set_function(as_span(values), std::move(fn));
}
std::size_t counter_family::series_count() const {
  return f_->size();
}

gauge gauge_family::with(std::initializer_list<std::string_view> values) const {
  return with(as_span(values));
}
gauge gauge_family::with(std::span<std::string_view const> values) const {
  return gauge(f_->lookup(values));
}
void gauge_family::set_function(std::initializer_list<std::string_view> values,
                                std::function<double()> fn) const {
  f_->set_function(as_span(values), std::move(fn));
}

void gauge_family::set_optional_function(std::initializer_list<std::string_view> values,
                                         std::function<std::optional<double>()> fn) const {
  f_->set_optional_function(as_span(values), std::move(fn));
}
std::size_t gauge_family::series_count() const {
  return f_->size();
}

histogram histogram_family::with(std::initializer_list<std::string_view> values) const {
  return with(as_span(values));
}
histogram histogram_family::with(std::span<std::string_view const> values) const {
  return histogram(f_->lookup(values));
}
std::size_t histogram_family::series_count() const {
  return f_->size();
}

registry::registry(registry_options const& options) {
  if (!options.standard_series) {
    return;
  }
  auto build = add_gauge("ray_build_info", "Ray build information; the value is always 1.", {"version"});
  build.with({options.version.empty() ? std::string_view(RAY_VERSION) : std::string_view(options.version)})
      .set(1);
  add_gauge("process_resident_memory_bytes", "Resident memory size in bytes.")
      .set_function({}, resident_memory_bytes);
  add_gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.")
      .with()
      .set(process_start_time());
}

registry::~registry() = default;

// NOLINTBEGIN(performance-unnecessary-value-param): the parameters are moved into the family; clang-tidy 14
// misreads the moves inside this template.
template <class Cell>
detail::family_impl<Cell>* registry::add(std::string name, std::string help,
                                         std::vector<std::string> label_names, std::span<double const> bounds,
                                         family_options options) {
  constexpr bool is_histogram = std::is_same_v<Cell, detail::histogram_cell>;
  if (!is_valid_name(name)) {
    throw std::invalid_argument("metric name is not [a-zA-Z_][a-zA-Z0-9_]*: " + name);
  }
  if (std::is_same_v<Cell, detail::counter_cell> && !name.ends_with("_total")) {
    throw std::invalid_argument("counter name must end in _total: " + name);
  }
  for (auto const& l : label_names) {
    if (!is_valid_name(l) || l.starts_with("__") || (is_histogram && l == "le")) {
      std::string what = "invalid label name \"";
      what.append(l).append("\" for metric ").append(name);
      throw std::invalid_argument(what);
    }
  }
  auto f = std::make_unique<detail::family_impl<Cell>>();
  if constexpr (is_histogram) {
    if (!bounds.empty() && std::isinf(bounds.back()) && bounds.back() > 0) {
      bounds = bounds.first(bounds.size() - 1);
    }
    for (std::size_t i = 0; i < bounds.size(); ++i) {
      if (!std::isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) {
        throw std::invalid_argument("histogram bounds must be finite and strictly ascending: " + name);
      }
    }
    f->bounds.assign(bounds.begin(), bounds.end());
    for (double b : f->bounds) {
      std::string le = "le=\"";
      text::append_number(le, b);
      le += "\"} ";
      f->le_text.push_back(std::move(le));
    }
    f->le_text.emplace_back("le=\"+Inf\"} ");
  }
  f->name = std::move(name);
  f->help = std::move(help);
  f->label_names = std::move(label_names);
  f->options = std::move(options);
  if (f->options.max_series < 1) {
    f->options.max_series = 1;
  }
  auto* raw = f.get();
  {
    std::lock_guard lk(mutex_);
    for (auto const& other : families_) {
      if (other->name == raw->name) {
        throw std::invalid_argument("duplicate metric name: " + raw->name);
      }
    }
    if (raw->label_names.empty()) {
      raw->find_or_create({});  // an unlabelled family always has its series
    }
    families_.push_back(std::move(f));
  }
  return raw;
}
// NOLINTEND(performance-unnecessary-value-param)

counter_family registry::add_counter(std::string name, std::string help, std::vector<std::string> label_names,
                                     family_options options) {
  return counter_family(add<detail::counter_cell>(std::move(name), std::move(help), std::move(label_names),
                                                  {}, std::move(options)));
}

gauge_family registry::add_gauge(std::string name, std::string help, std::vector<std::string> label_names,
                                 family_options options) {
  return gauge_family(add<detail::gauge_cell>(std::move(name), std::move(help), std::move(label_names), {},
                                              std::move(options)));
}

histogram_family registry::add_histogram(std::string name, std::string help,
                                         std::vector<std::string> label_names, std::span<double const> bounds,
                                         family_options options) {
  return histogram_family(add<detail::histogram_cell>(std::move(name), std::move(help),
                                                      std::move(label_names), bounds, std::move(options)));
}

void registry::add_text_source(std::function<void(std::string&)> source) {
  std::lock_guard lk(mutex_);
  sources_.push_back(std::move(source));
}

void registry::render_prometheus(std::string& out) const {
  auto start = out.size();
  out.reserve(start + last_render_size_.load(std::memory_order_relaxed) + 256);
  {
    std::lock_guard lk(mutex_);
    for (auto const& f : families_) {
      f->render_prometheus(out);
    }
    for (auto const& source : sources_) {
      source(out);
    }
  }
  last_render_size_.store(out.size() - start, std::memory_order_relaxed);
}

void registry::render_json(std::string& out) const {
  std::string counters, gauges;
  {
    std::lock_guard lk(mutex_);
    for (auto const& f : families_) {
      f->render_json(counters, gauges);
    }
  }
  out.reserve(out.size() + counters.size() + gauges.size() + 32);
  out += "{\"counters\":{";
  out += counters;
  out += "},\"gauges\":{";
  out += gauges;
  out += "}}";
}

}  // namespace ray::telemetry
