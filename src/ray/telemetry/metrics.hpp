// ray::telemetry metrics — counters, gauges and histograms with label sets, rendered as Prometheus text 0.0.4
// or as the TypeScript gateway's JSON view. Included by telemetry.hpp; include that instead.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ray::telemetry {

// Each family holds at most this many label sets unless told otherwise; see family_options::max_series.
inline constexpr std::size_t default_max_series = 512;
// Label values longer than this many bytes are cut (at a UTF-8 boundary) before lookup.
inline constexpr std::size_t max_label_value_bytes = 256;

// Upper bounds, in seconds, suited to LLM latencies (queue waits of milliseconds to generations of a minute):
// 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 30 60 (13 buckets plus +Inf).
std::span<double const> default_latency_buckets() noexcept;

namespace detail {
// The cells handles point at. They live in node-based storage inside the registry and never move.
struct counter_cell {
  std::atomic<std::uint64_t> value{0};
};
struct gauge_cell {
  std::atomic<double> value{0.0};
};
struct histogram_cell {
  double const* bounds{nullptr};                 // ascending upper bounds, owned by the family
  std::size_t bound_count{0};                    // buckets has bound_count + 1 entries, the last is +Inf
  std::atomic<std::uint64_t>* buckets{nullptr};  // per-bucket (not cumulative) counts
  std::atomic<double> sum{0.0};
};
// Targets of default-constructed handles: updates land here and are never rendered.
extern counter_cell discard_counter;
extern gauge_cell discard_gauge;
extern histogram_cell discard_histogram;

struct family_state;
template <class Cell>
struct family_impl;
}  // namespace detail

class counter_family;
class gauge_family;
class histogram_family;

// Series handles: a pointer to a cell. Trivially copyable, valid for the registry's lifetime, usable from any
// thread. A default-constructed handle is valid and discards its updates (for components built without
// metrics).

// Monotonic integer counter. inc() is one relaxed atomic add.
class counter {
 public:
  counter() noexcept : cell_(&detail::discard_counter) {}
  void inc(std::uint64_t n = 1) const noexcept { cell_->value.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const noexcept { return cell_->value.load(std::memory_order_relaxed); }

 private:
  friend class counter_family;
  explicit counter(detail::counter_cell* c) noexcept : cell_(c) {}
  detail::counter_cell* cell_;
};

// A value that goes up and down. Each operation is one relaxed atomic operation (add/sub are CAS loops).
class gauge {
 public:
  gauge() noexcept : cell_(&detail::discard_gauge) {}
  void set(double v) const noexcept { cell_->value.store(v, std::memory_order_relaxed); }
  void add(double d) const noexcept { cell_->value.fetch_add(d, std::memory_order_relaxed); }
  void sub(double d) const noexcept { cell_->value.fetch_sub(d, std::memory_order_relaxed); }
  void inc() const noexcept { add(1.0); }
  void dec() const noexcept { sub(1.0); }
  double value() const noexcept { return cell_->value.load(std::memory_order_relaxed); }

 private:
  friend class gauge_family;
  explicit gauge(detail::gauge_cell* c) noexcept : cell_(c) {}
  detail::gauge_cell* cell_;
};

// Distribution of durations in seconds. observe() scans the (few) bounds, then does two relaxed atomic adds
// (bucket, and sum by CAS). The count is the sum of the buckets, so `_count` always equals the `+Inf` bucket.
// NaN observations are ignored.
class histogram {
 public:
  histogram() noexcept : cell_(&detail::discard_histogram) {}
  void observe(double seconds) const noexcept {
    if (seconds != seconds) {
      return;  // NaN
    }
    std::size_t i = 0;
    while (i < cell_->bound_count && seconds > cell_->bounds[i]) {
      ++i;
    }
    cell_->buckets[i].fetch_add(1, std::memory_order_relaxed);
    cell_->sum.fetch_add(seconds, std::memory_order_relaxed);
  }
  template <class Rep, class Period>
  void observe(std::chrono::duration<Rep, Period> d) const noexcept {
    observe(std::chrono::duration<double>(d).count());
  }
  std::uint64_t count() const noexcept;
  double sum() const noexcept { return cell_->sum.load(std::memory_order_relaxed); }

 private:
  friend class histogram_family;
  explicit histogram(detail::histogram_cell* c) noexcept : cell_(c) {}
  detail::histogram_cell* cell_;
};

struct family_options {
  // Label sets beyond this many fold into one extra series whose label values are all "other", so a family
  // never holds more than max_series + 1 series.
  std::size_t max_series{default_max_series};
  // Key prefix in the JSON view (e.g. "requests.total"); empty = the family is left out of the JSON view.
  std::string json_name{};
};

// Family handles: cheap to copy, valid for the registry's lifetime.
//
// with(values) returns the series for the label values given in the order of the family's label names
// (creating it on first use). It takes the family's mutex and does a hash lookup: cache the handle on hot
// paths. A wrong number of values is a bug: it asserts in debug builds and returns the "other" series.
// Label values are UTF-8; ill-formed bytes are shown as U+FFFD.

class counter_family {
 public:
  counter with(std::initializer_list<std::string_view> label_values = {}) const;
  counter with(std::span<std::string_view const> label_values) const;
  // The series' value is fn() at render time (called under the family mutex, on the rendering thread) instead
  // of its cell; fn must be cheap, non-blocking and must not touch this registry.
  void set_function(std::initializer_list<std::string_view> label_values,
                    std::function<std::uint64_t()> fn) const;
  std::size_t series_count() const;

 private:
  friend class registry;
  explicit counter_family(detail::family_impl<detail::counter_cell>* f) noexcept : f_(f) {}
  detail::family_impl<detail::counter_cell>* f_;
};

class gauge_family {
 public:
  gauge with(std::initializer_list<std::string_view> label_values = {}) const;
  gauge with(std::span<std::string_view const> label_values) const;
  // As counter_family::set_function.
  void set_function(std::initializer_list<std::string_view> label_values, std::function<double()> fn) const;
  // As set_function, for a value that may be unknown: nullopt leaves the series out of that render (both
  // views), and a family whose every series is left out is omitted whole (no HELP/TYPE without a sample).
  void set_optional_function(std::initializer_list<std::string_view> label_values,
                             std::function<std::optional<double>()> fn) const;
  std::size_t series_count() const;

 private:
  friend class registry;
  explicit gauge_family(detail::family_impl<detail::gauge_cell>* f) noexcept : f_(f) {}
  detail::family_impl<detail::gauge_cell>* f_;
};

class histogram_family {
 public:
  histogram with(std::initializer_list<std::string_view> label_values = {}) const;
  histogram with(std::span<std::string_view const> label_values) const;
  std::size_t series_count() const;

 private:
  friend class registry;
  explicit histogram_family(detail::family_impl<detail::histogram_cell>* f) noexcept : f_(f) {}
  detail::family_impl<detail::histogram_cell>* f_;
};

struct registry_options {
  // Register the standard series at construction: ray_build_info{version} 1,
  // process_resident_memory_bytes (VmRSS from /proc/self/statm × page size, read at each render) and
  // process_start_time_seconds (Unix time the process started, from /proc/self/stat starttime + /proc/stat
  // btime, read once at construction; the wall time at construction if /proc is unreadable).
  bool standard_series{true};
  std::string version{};  // ray_build_info's label; empty = RAY_VERSION of this build
};

// The set of metric families of one process.
//
// Registration (add_*) is meant for startup; it throws std::invalid_argument on a programming error (a name
// or label name that is not [a-zA-Z_][a-zA-Z0-9_]*, a counter name not ending in `_total`, a duplicate name,
// histogram bounds not strictly ascending and finite, a histogram label named `le`). Registration, rendering
// and with() may run concurrently with each other and with handle updates from any thread.
//
// Prometheus text (render_prometheus): families in registration order, each with `# HELP` and `# TYPE` and
// its series in creation order; a family without series is omitted (an unlabelled family has its one series
// from registration, so it always shows). Histograms render cumulative `_bucket{…,le="…"}` lines including
// `le="+Inf"`, then `_sum` and `_count`. Then the text of each text source, in the order added.
//
// JSON view (render_json): `{"counters":{…},"gauges":{…}}`, a flat map from key to number, only for families
// given a json_name. Key format: `<json_name>` for an unlabelled series, else
// `<json_name>{<label>=<value>,<label>=<value>}` with label names in declaration order and values verbatim
// (unquoted, unescaped except as JSON requires), e.g. `requests.total{route=/v1/infer,code=200}`. Histograms
// add
// `<json_name>.count[{…}]` (integer) and `<json_name>.sum[{…}]` (seconds) under "counters". Counter values
// are integers; gauge values are numbers (null if NaN or infinite).
class registry {
 public:
  explicit registry(registry_options const& options = {});
  ~registry();
  registry(registry const&) = delete;
  registry& operator=(registry const&) = delete;

  counter_family add_counter(std::string name, std::string help, std::vector<std::string> label_names = {},
                             family_options options = {});
  gauge_family add_gauge(std::string name, std::string help, std::vector<std::string> label_names = {},
                         family_options options = {});
  // bounds: upper bounds in seconds, strictly ascending (a trailing +Inf is implied and may be omitted).
  histogram_family add_histogram(std::string name, std::string help,
                                 std::vector<std::string> label_names = {},
                                 std::span<double const> bounds = default_latency_buckets(),
                                 family_options options = {});

  // Appends pre-rendered Prometheus text after Ray's own families at every render (e.g. re-exported
  // llama-server metrics). The source must append complete lines ending in '\n', must not block (serve a
  // cached copy) and must not touch this registry.
  void add_text_source(std::function<void(std::string&)> source);

  // Append to `out` (never cleared).
  void render_prometheus(std::string& out) const;
  void render_json(std::string& out) const;

 private:
  template <class Cell>
  detail::family_impl<Cell>* add(std::string name, std::string help, std::vector<std::string> label_names,
                                 std::span<double const> bounds, family_options options);

  mutable std::mutex mutex_;  // guards families_ and sources_ (not the families' series)
  std::vector<std::unique_ptr<detail::family_state>> families_;
  std::vector<std::function<void(std::string&)>> sources_;
  mutable std::atomic<std::size_t> last_render_size_{0};
};

}  // namespace ray::telemetry
