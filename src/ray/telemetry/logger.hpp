// ray::telemetry logging — JSON-lines logger with a bounded asynchronous sink, and the rejection summarizer.
// Included by telemetry.hpp; include that instead.
#pragma once

#include "ray/core/core.hpp"

#include <boost/json/object.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ray::telemetry {

// Log severity, lowest first. (Own enum so telemetry does not depend on config; the wiring maps
// config::log_level onto it by name.)
enum class level : std::uint8_t { debug, info, warn, error };

// "debug" | "info" | "warn" | "error".
std::string_view level_name(level l) noexcept;
// Inverse of level_name (exact, lower case); nullopt for anything else.
std::optional<level> parse_level(std::string_view name) noexcept;

struct logger_options {
  std::string service{"ray-gateway"};  // the `service` key of every line
  level min_level{level::info};
  // Bounds of the queue between log() and the writer thread; a line that would exceed either is dropped and
  // counted (dropped_lines()).
  std::size_t max_queued_lines{4096};
  std::size_t max_queued_bytes{4u << 20};
  // Targets (not owned, not closed): `error` lines go to err_fd, all others to out_fd. Blocking or
  // non-blocking descriptors both work (the writer polls on EAGAIN).
  int out_fd{1};
  int err_fd{2};
  // true: log() writes directly (under a mutex) and no thread is started — for short-lived CLI commands.
  bool synchronous{false};
  // Source of the `ts` key; nullptr means ray::system_clock(). Must outlive the logger.
  ray::clock const* time_source{nullptr};
};

// One compact JSON object per line: {"ts":"<RFC 3339 ms UTC>","level":"info","service":"…","message":"…",
// …fields in the order given}. Field keys named ts, level, service or message are skipped (they would
// duplicate the fixed keys). Strings are escaped and ill-formed UTF-8 is replaced by U+FFFD, so every line
// parses.
//
// Thread-safety: every member may be called from any thread concurrently.
// Cost: a line below the minimum level costs one relaxed atomic load (check enabled() first to avoid even
// building `fields`). An accepted line is formatted on the calling thread, then pushed under a short mutex
// critical section; log() never waits for I/O. The writer thread drains the queue in batches.
class logger {
 public:
  logger(std::string service, level min_level, std::size_t max_queued_lines = 4096);
  explicit logger(logger_options options);
  // Flushes (see flush()) and joins the writer thread.
  ~logger();
  logger(logger const&) = delete;
  logger& operator=(logger const&) = delete;

  bool enabled(level l) const noexcept {
    return static_cast<std::uint8_t>(l) >= min_level_.load(std::memory_order_relaxed);
  }
  void log(level l, std::string_view message, boost::json::object const& fields = {});
  void debug(std::string_view message, boost::json::object const& fields = {}) {
    if (enabled(level::debug)) {
      log(level::debug, message, fields);
    }
  }
  void info(std::string_view message, boost::json::object const& fields = {}) {
    if (enabled(level::info)) {
      log(level::info, message, fields);
    }
  }
  void warn(std::string_view message, boost::json::object const& fields = {}) {
    if (enabled(level::warn)) {
      log(level::warn, message, fields);
    }
  }
  void error(std::string_view message, boost::json::object const& fields = {}) {
    if (enabled(level::error)) {
      log(level::error, message, fields);
    }
  }

  // Takes effect for the next log() on every thread (SIGHUP reload).
  void set_level(level l) noexcept {
    min_level_.store(static_cast<std::uint8_t>(l), std::memory_order_relaxed);
  }
  level min_level() const noexcept { return static_cast<level>(min_level_.load(std::memory_order_relaxed)); }

  // Lines lost because the queue was full, or because writing them failed (closed pipe, disk full).
  std::uint64_t dropped_lines() const noexcept { return dropped_.load(std::memory_order_relaxed); }

  // Blocks until every line accepted before the call has been written (or failed). Not for the event loop:
  // for shutdown, CLI commands and tests. Returns at once in synchronous mode. Waits as long as the target
  // does (a reader that never drains a pipe blocks it).
  void flush();

 private:
  struct sink;
  std::atomic<std::uint8_t> min_level_;
  std::atomic<std::uint64_t> dropped_{0};
  std::string prefix_;  // `","service":"<escaped>","message":` — the constant middle of every line
  ray::clock const* time_;
  std::unique_ptr<sink> sink_;
};

// Folds expected rejections into at most one `warn` line per reason per window:
//   {"ts":…,"level":"warn","service":…,"message":"request rejected","reason":"queue_full","count":17,
//    "windowMs":1000, …fields of the rejection that triggered the line}
// The first rejection of a reason logs at once (count 1, or 1 + the rejections held back since the last line)
// and opens a window; later ones in the window are only counted. A held-back count is written by the first
// rejection of that reason after the window ends, or by tick() once the window has ended — call tick() from a
// periodic timer (~1 s) so a burst's tail is not held back indefinitely. At most `max_reasons` distinct
// reasons are tracked; further reasons are summarised under "other".
//
// Thread-safety: all members may be called concurrently (an internal mutex; no I/O under it).
class rejection_summarizer {
 public:
  explicit rejection_summarizer(logger& log, ray::clock const& time = ray::system_clock(),
                                std::chrono::milliseconds window = std::chrono::seconds(1),
                                std::size_t max_reasons = 64);
  // Writes every held-back count, whatever its window (shutdown). Destroy the summarizer before its logger.
  ~rejection_summarizer();
  rejection_summarizer(rejection_summarizer const&) = delete;
  rejection_summarizer& operator=(rejection_summarizer const&) = delete;

  void record(std::string_view reason, boost::json::object fields = {});
  // Writes the held-back counts whose window has ended, as of time.now() / `now`.
  void tick();
  void tick(ray::clock::time_point now);

 private:
  struct entry {
    std::string reason;
    ray::clock::time_point window_start{};
    std::uint64_t held{0};
  };
  void emit(std::string_view reason, std::uint64_t count, boost::json::object fields);

  logger& log_;
  ray::clock const& time_;
  std::chrono::milliseconds window_;
  std::size_t max_reasons_;
  std::mutex mutex_;
  std::vector<entry> entries_;  // few distinct reasons (error codes): a linear scan beats hashing
};

}  // namespace ray::telemetry
