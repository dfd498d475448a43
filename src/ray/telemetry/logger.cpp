#include "ray/telemetry/logger.hpp"

#include "ray/telemetry/text_format.hpp"

#include <cerrno>
#include <condition_variable>
#include <thread>

#include <poll.h>
#include <unistd.h>

namespace ray::telemetry {
namespace {

constexpr std::string_view level_names[] = {"debug", "info", "warn", "error"};

// Writes all of `data` to `fd`; false when the descriptor fails (the bytes are lost).
bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n > 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, -1) < 0 && errno != EINTR) {
        return false;
      }
    } else {
      return false;
    }
  }
  return true;
}

bool is_reserved_key(std::string_view k) noexcept {
  return k == "ts" || k == "level" || k == "service" || k == "message";
}

}  // namespace

std::string_view level_name(level l) noexcept {
  auto i = static_cast<std::size_t>(l);
  return i < std::size(level_names) ? level_names[i] : std::string_view("info");
}

std::optional<level> parse_level(std::string_view name) noexcept {
  for (std::size_t i = 0; i < std::size(level_names); ++i) {
    if (level_names[i] == name) {
      return static_cast<level>(i);
    }
  }
  return std::nullopt;
}

// The queue between log() and the writer thread (absent in synchronous mode, where only `write_mutex` is
// used).
struct logger::sink {
  struct line {
    std::string text;
    bool is_error;
  };

  logger_options const options;
  std::atomic<std::uint64_t>& dropped;

  std::mutex write_mutex;  // synchronous mode: serialises writes

  std::mutex mutex;
  std::condition_variable wake;     // writer waits for lines or stop
  std::condition_variable drained;  // flush() waits for `written` to catch up
  std::vector<line> queue;
  std::size_t queued_bytes{0};
  std::uint64_t accepted{0};  // lines pushed, ever
  std::uint64_t written{0};   // lines taken off the queue and written (or failed), ever
  bool writer_idle{false};
  std::size_t flush_waiters{0};  // threads in flush(): the writer skips its linger
  static constexpr std::chrono::milliseconds linger{2};
  bool stopping{false};
  std::thread writer;

  sink(logger_options o, std::atomic<std::uint64_t>& d) : options(std::move(o)), dropped(d) {
    if (!options.synchronous) {
      writer = std::thread([this] { run(); });
    }
  }

  ~sink() {
    if (writer.joinable()) {
      {
        std::lock_guard lk(mutex);
        stopping = true;
      }
      wake.notify_one();
      writer.join();
    }
  }

  void push(std::string text, bool is_error) {
    if (options.synchronous) {
      std::lock_guard lk(write_mutex);
      if (!write_all(is_error ? options.err_fd : options.out_fd, text)) {
        dropped.fetch_add(1, std::memory_order_relaxed);
      }
      return;
    }
    bool notify = false;
    {
      std::lock_guard lk(mutex);
      if (queue.size() >= options.max_queued_lines || queued_bytes + text.size() > options.max_queued_bytes) {
        dropped.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      queued_bytes += text.size();
      queue.push_back(line{std::move(text), is_error});
      ++accepted;
      notify = writer_idle;
      writer_idle = false;
    }
    if (notify) {
      wake.notify_one();
    }
  }

  void flush() {
    if (options.synchronous) {
      return;
    }
    std::unique_lock lk(mutex);
    auto target = accepted;
    ++flush_waiters;
    wake.notify_one();
    drained.wait(lk, [&] { return written >= target; });
    --flush_waiters;
  }

  void run() {
    std::vector<line> batch;
    std::string out, err;
    std::unique_lock lk(mutex);
    for (;;) {
      if (queue.empty()) {
        if (stopping) {
          return;
        }
        writer_idle = true;
        wake.wait(lk, [&] { return !queue.empty() || stopping; });
        // Linger briefly: under load a burst of lines becomes one wake-up and one write() instead of one per
        // line (measured: ~20 % of a busy gateway's CPU went to per-line wake-ups). Stop and flush() cut it
        // short.
        wake.wait_for(lk, linger, [&] { return stopping || flush_waiters > 0; });
        continue;
      }
      batch.swap(queue);
      queued_bytes = 0;
      lk.unlock();

      out.clear();
      err.clear();
      std::uint64_t out_lines = 0, err_lines = 0;
      for (auto& l : batch) {
        (l.is_error ? err : out) += l.text;
        ++(l.is_error ? err_lines : out_lines);
      }
      if (!out.empty() && !write_all(options.out_fd, out)) {
        dropped.fetch_add(out_lines, std::memory_order_relaxed);
      }
      if (!err.empty() && !write_all(options.err_fd, err)) {
        dropped.fetch_add(err_lines, std::memory_order_relaxed);
      }
      auto n = batch.size();
      batch.clear();

      lk.lock();
      written += n;
      drained.notify_all();
    }
  }
};

logger::logger(std::string service, level min_level, std::size_t max_queued_lines)
    : logger(logger_options{
          .service = std::move(service), .min_level = min_level, .max_queued_lines = max_queued_lines}) {}

logger::logger(logger_options options)
    : min_level_(static_cast<std::uint8_t>(options.min_level)),
      time_(options.time_source ? options.time_source : &ray::system_clock()) {
  prefix_ = "\",\"service\":";
  text::append_json_string(prefix_, options.service);
  prefix_ += ",\"message\":";
  sink_ = std::make_unique<sink>(std::move(options), dropped_);
}

logger::~logger() {
  flush();
  sink_.reset();
}

void logger::log(level l, std::string_view message, boost::json::object const& fields) {
  if (!enabled(l)) {
    return;
  }
  std::string line;
  line.reserve(96 + prefix_.size() + message.size() + fields.size() * 24);
  line += "{\"ts\":\"";
  line += ray::format_timestamp(time_->wall());
  line += "\",\"level\":\"";
  line += level_name(l);
  line += prefix_;
  text::append_json_string(line, message);
  for (auto const& kv : fields) {
    std::string_view key(kv.key().data(), kv.key().size());
    if (is_reserved_key(key)) {
      continue;
    }
    line += ',';
    text::append_json_string(line, key);
    line += ':';
    text::append_json_value(line, kv.value());
  }
  line += "}\n";
  sink_->push(std::move(line), l == level::error);
}

void logger::flush() {
  sink_->flush();
}

rejection_summarizer::rejection_summarizer(logger& log, ray::clock const& time,
                                           std::chrono::milliseconds window, std::size_t max_reasons)
    : log_(log), time_(time), window_(window), max_reasons_(max_reasons < 1 ? 1 : max_reasons) {}

void rejection_summarizer::record(std::string_view reason, boost::json::object fields) {
  auto now = time_.now();
  std::uint64_t count = 0;
  std::string emitted_reason;
  {
    std::lock_guard lk(mutex_);
    entry* e = nullptr;
    for (auto& x : entries_) {
      if (x.reason == reason) {
        e = &x;
        break;
      }
    }
    if (e == nullptr) {
      if (entries_.size() + 1 >= max_reasons_) {  // keep the last slot for "other"
        reason = "other";
        for (auto& x : entries_) {
          if (x.reason == reason) {
            e = &x;
          }
        }
      }
      if (e == nullptr) {
        entries_.push_back(entry{std::string(reason), now - window_, 0});
        e = &entries_.back();
      }
    }
    if (now - e->window_start >= window_) {
      count = e->held + 1;
      e->held = 0;
      e->window_start = now;
      emitted_reason = e->reason;
    } else {
      ++e->held;
    }
  }
  if (count > 0) {
    emit(emitted_reason, count, std::move(fields));
  }
}

rejection_summarizer::~rejection_summarizer() {
  for (auto& e : entries_) {
    if (e.held > 0) {
      emit(e.reason, e.held, {});
    }
  }
}

void rejection_summarizer::tick() {
  tick(time_.now());
}

void rejection_summarizer::tick(ray::clock::time_point now) {
  std::vector<std::pair<std::string, std::uint64_t>> due;
  {
    std::lock_guard lk(mutex_);
    for (auto& e : entries_) {
      if (e.held > 0 && now - e.window_start >= window_) {
        due.emplace_back(e.reason, e.held);
        e.held = 0;
        e.window_start = now;
      }
    }
  }
  for (auto& [reason, count] : due) {
    emit(reason, count, {});
  }
}

void rejection_summarizer::emit(std::string_view reason, std::uint64_t count, boost::json::object fields) {
  if (!log_.enabled(level::warn)) {
    return;
  }
  boost::json::object f;
  f.reserve(3 + fields.size());
  f["reason"] = reason;
  f["count"] = count;
  f["windowMs"] = window_.count();
  for (auto& kv : fields) {
    if (!f.contains(kv.key())) {
      f[kv.key()] = std::move(kv.value());
    }
  }
  log_.log(level::warn, "request rejected", f);
}

}  // namespace ray::telemetry
