// ray::telemetry re-export — llama-server's `/metrics` text turned into series Ray can serve under its own
// names (http-api.md §5), and the cache that lets GET /metrics serve the last copy while a fetch runs.
// Included by telemetry.hpp; include that instead.
//
//   ray::telemetry::metrics_cache llama_metrics;
//   registry.add_text_source([&](std::string& out) { llama_metrics.append_to(out); });
//   // the fetcher (runtime), off the request path, at most once per second:
//   if (llama_metrics.stale(clock.now(), std::chrono::seconds(1))) {
//     llama_metrics.store(ray::telemetry::reexport_llamacpp(body), clock.now());
//   }
#pragma once

#include "ray/core/core.hpp"

#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace ray::telemetry {

// Default bound of reexport_llamacpp's output: 256 KiB (llama-server's own text is ~2.6 KiB).
inline constexpr std::size_t default_reexport_max_bytes = 256 * 1024;

// Turns llama-server's Prometheus text (format 0.0.4, the body of GET /metrics; '\n' or "\r\n" line ends)
// into the families Ray re-exports. Pure; never throws except on allocation failure.
//
// Naming, applied to every family whose name starts with `llamacpp:` (everything else — other families,
// comments, blank lines — is dropped):
//  1. `llamacpp:x` → `ray_backend_llamacpp_x` (a further ':' in x becomes '_': promtool rejects colons).
//  2. x ending in `tokens_seconds` (a throughput in tokens/s, e.g. `prompt_tokens_seconds`) ends in
//     `tokens_per_second` instead.
//  3. `n_tokens_max` (the largest sequence length seen) and `n_busy_slots_per_decode` (an average) are typed
//     `gauge` when llama-server types them `counter`: neither is a count of events, and rate() over them
//     means nothing. Older builds type both as counters; the fixture build still types n_tokens_max so.
//  4. Any other `counter` whose name does not end in `_total` keeps its type and gets `_total` appended
//     (promtool requires the suffix; keeping the type keeps rate()/increase() meaningful).
// HELP text is kept verbatim; a family without HELP gets "llama-server's llamacpp:x (no HELP given)." so the
// output stays promtool-clean. TYPE is kept (rule 3 aside); untyped samples become an `untyped` family.
// Label sets, values and timestamps are kept as given.
//
// Output: one block per family that has at least one sample — `# HELP`, `# TYPE`, then its samples in input
// order — families in the order of their first HELP or TYPE line, then families that only have samples.
// Histogram and summary families keep their
// `_bucket`/`_sum`/`_count` (and quantile) samples under the renamed base name.
//
// Skipped (the rest of the input is still used): a line that does not parse (bad name, label set, escape,
// value or timestamp, ill-formed UTF-8, trailing junk); a second HELP or TYPE for a family; an unknown TYPE;
// a sample repeating an earlier series (same name and label text); a histogram bucket without `le`; a summary
// quantile sample without `quantile`; a family whose new name another family already took.
//
// Bounded: the result is at most max_bytes long and ends at a line boundary. Families are added whole while
// they fit; the first one that does not fit ends the output — after as many of its samples as fit if it is
// a counter, gauge or untyped family (each sample line stands alone), before it otherwise (so no histogram is
// cut between buckets). The result is empty or ends in '\n'.
std::string reexport_llamacpp(std::string_view prometheus_text,
                              std::size_t max_bytes = default_reexport_max_bytes);

// The last re-exported text, served by a registry text source while the next fetch runs. Thread-safe: every
// member may be called from any thread at any time; append_to copies under the mutex only a shared pointer,
// so a render never waits for a store to copy text, nor a store for a render.
class metrics_cache {
 public:
  // Replaces the served text (meant: the output of reexport_llamacpp) as fetched at `now`. A missing final
  // '\n' is added, so the registry always receives complete lines.
  void store(std::string text, ray::clock::time_point now);
  // Serves nothing until the next store, and is stale (e.g. when the backend went away and its old numbers
  // would mislead).
  void clear() noexcept;
  // Appends the last stored text to `out` (nothing before the first store or after clear()).
  void append_to(std::string& out) const;
  // True when nothing is stored or the stored text is at least max_age old at `now` (time of the fetch,
  // not of the store call's own clock).
  bool stale(ray::clock::time_point now, ray::clock::time_point::duration max_age) const;
  // When the stored text was fetched; empty before the first store or after clear().
  std::optional<ray::clock::time_point> stored_at() const;

 private:
  mutable std::mutex mutex_;  // guards text_ and stored_at_
  std::shared_ptr<std::string const> text_;
  std::optional<ray::clock::time_point> stored_at_;
};

}  // namespace ray::telemetry
