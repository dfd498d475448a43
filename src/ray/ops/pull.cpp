// `ray model pull` (ops.hpp): the partial file, resume, progress, verification and the atomic install.
//
// Order of a pull: validate the flags (2 on a bad one) → take the partial's lock → hash what an earlier run
// left (same source only) → fetch with Range from there, retrying a cut connection with back-off → fsync →
// GGUF header → digest → rename into the models dir → sidecar. Every refusal after the lock removes the
// partial, except running out of retries: that partial is kept (hidden in .partial/) for a rerun to resume.
#include "ray/gguf/gguf.hpp"
#include "ray/ops/model_detail.hpp"
#include "ray/ops/ops.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <thread>

namespace ray::ops {

namespace {

namespace fs = std::filesystem;
using steady = std::chrono::steady_clock;
using detail::human_bytes;

ray::error failure(std::string message) {
  return ray::error{errc::provider_request_failed, std::move(message)};
}

std::string os_error(std::string const& what, std::string const& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

std::string printable(std::string_view bytes) {
  std::string out;
  for (char c : bytes)
    out += (c >= 0x20 && c < 0x7f) ? c : '.';
  return out;
}

// Progress on stderr: a carriage-return line on a terminal (≤ 4 redraws a second), else a plain line at every
// 10 % step or every 5 s, whichever comes first.
class progress_meter {
 public:
  progress_meter(std::ostream& err, bool tty, std::string label)
      : err_(err), tty_(tty), label_(std::move(label)) {}

  void start(std::uint64_t have, std::optional<std::uint64_t> total) {
    session_start_ = have;
    total_ = total;
    started_ = last_ = steady::now();
    next_step_ = total && *total > 0 ? (have * 10 / *total + 1) : 1;
  }

  void update(std::uint64_t have) {
    auto const now = steady::now();
    if (tty_) {
      if (now - last_ < std::chrono::milliseconds(250)) return;
      last_ = now;
      err_ << "\r" << line(have, now) << "   " << std::flush;
      drawn_ = true;
      return;
    }
    bool const step = total_ && *total_ > 0 && have * 10 / *total_ >= next_step_;
    if (!step && now - last_ < std::chrono::seconds(5)) return;
    if (step) next_step_ = have * 10 / *total_ + 1;
    last_ = now;
    err_ << line(have, now) << "\n" << std::flush;
  }

  void finish(std::uint64_t have) {
    // The last state always shows on a terminal, even for a pull too quick for a redraw.
    if (tty_) err_ << "\r" << line(have, steady::now()) << "   \n" << std::flush;
    drawn_ = false;
  }

  // Before any other message, so it does not land in the middle of the bar.
  void interrupt() {
    if (tty_ && drawn_) err_ << "\n";
    drawn_ = false;
  }

 private:
  std::string line(std::uint64_t have, steady::time_point now) const {
    double const secs = std::chrono::duration<double>(now - started_).count();
    double const rate = secs > 0 ? double(have - session_start_) / secs : 0;
    std::string s = label_ + ": " + human_bytes(double(have));
    if (total_ && *total_ > 0) {
      s += " / " + human_bytes(double(*total_)) + " (" + std::to_string(have * 100 / *total_) + " %)";
    }
    s += ", " + human_bytes(rate) + "/s";
    if (total_ && rate > 0 && *total_ >= have) {
      auto const eta = static_cast<std::uint64_t>(double(*total_ - have) / rate);
      char text[32];
      std::snprintf(text, sizeof text, ", ETA %llu:%02llu", static_cast<unsigned long long>(eta / 60),
                    static_cast<unsigned long long>(eta % 60));
      s += text;
    }
    return s;
  }

  std::ostream& err_;
  bool tty_;
  std::string label_;
  std::uint64_t session_start_{0};
  std::optional<std::uint64_t> total_;
  steady::time_point started_{}, last_{};
  std::uint64_t next_step_{1};
  bool drawn_{false};
};

// The partial file: bytes on disk, their running hash, the magic check of the first four.
class partial_file {
 public:
  partial_file(std::string path, std::string dir) : path_(std::move(path)), dir_(std::move(dir)) {}
  ~partial_file() {
    if (fd_ >= 0) ::close(fd_);  // also releases the flock
  }
  partial_file(partial_file const&) = delete;
  partial_file& operator=(partial_file const&) = delete;

  result<void> open_locked() {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) return failure(os_error("cannot create", path_));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0)
      return failure("another `ray model pull` is writing " + path_ + " (it holds its lock)");
    struct stat st {};
    if (::fstat(fd_, &st) != 0) return failure(os_error("cannot stat", path_));
    size_ = static_cast<std::uint64_t>(st.st_size);
    return {};
  }

  // Re-hashes what is on disk (an earlier run's bytes) so the digest covers the whole file.
  result<void> adopt_existing() {
    if (size_ == 0) return {};
    auto r = detail::hash_file(path_, size_, hasher_);
    if (!r) return r.error();
    char head[4];
    if (::pread(fd_, head, sizeof head, 0) == 4) head_.assign(head, 4);
    if (auto m = check_magic(); !m) return m.error();
    if (::lseek(fd_, 0, SEEK_END) < 0) return failure(os_error("cannot seek in", path_));
    return {};
  }

  result<void> restart() {
    if (::ftruncate(fd_, 0) != 0 || ::lseek(fd_, 0, SEEK_SET) != 0)
      return failure(os_error("cannot truncate", path_));
    size_ = 0;
    head_.clear();
    hasher_ = sha256_hasher{};
    return {};
  }

  result<void> append(std::string_view bytes) {
    if (head_.size() < 4) {
      head_.append(bytes.substr(0, 4 - head_.size()));
      if (auto m = check_magic(); !m) return m.error();
    }
    for (std::size_t off = 0; off < bytes.size();) {
      auto const n = ::write(fd_, bytes.data() + off, bytes.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return failure(os_error("cannot write", path_));
      off += static_cast<std::size_t>(n);
    }
    hasher_.update(bytes);
    size_ += bytes.size();
    return {};
  }

  result<void> sync() {
    if (::fsync(fd_) != 0) return failure(os_error("cannot fsync", path_));
    return {};
  }

  std::string digest() { return to_hex(hasher_.finish()); }
  std::uint64_t size() const { return size_; }
  std::string const& path() const { return path_; }
  std::string const& dir() const { return dir_; }

 private:
  // A body that is not GGUF is refused at its first four bytes (an HTML error page, a Git LFS pointer).
  result<void> check_magic() const {
    if (head_.size() < 4 || head_ == "GGUF") return {};
    return failure("not a GGUF file: it starts with \"" + printable(head_) + "\", not \"GGUF\"");
  }

  std::string path_, dir_;
  int fd_{-1};
  std::uint64_t size_{0};
  std::string head_;
  sha256_hasher hasher_;
};

result<void> check_space(std::string const& dir, std::uint64_t need, std::string_view what) {
  auto avail = detail::free_bytes(dir);
  if (!avail) return avail.error();
  if (need > *avail)
    return failure("not enough free disk space in " + dir + ": the download needs " + std::to_string(need) +
                   " bytes (" + std::string(what) + ", " + human_bytes(double(need)) + ") but only " +
                   std::to_string(*avail) + " bytes (" + human_bytes(double(*avail)) + ") are free");
  return {};
}

// Feeds the fetch's bytes into the partial, deciding what each response head means for it.
class pull_sink final : public detail::fetch_sink {
 public:
  pull_sink(partial_file& file, progress_meter& meter, std::ostream& err)
      : file_(file), meter_(meter), err_(err) {}

  result<bool> on_head(detail::response_head const& h) override {
    auto const have = file_.size();
    std::optional<std::uint64_t> total;
    if (h.status == 416) {
      // Asked for bytes past the end: complete when the server's size is what we already have.
      auto const cr = parse_content_range(h.content_range);
      if (have > 0 && cr && cr->total && *cr->total == have) {
        total_ = have;
        return false;
      }
      return failure(h.url + " answered 416 Range Not Satisfiable for bytes " + std::to_string(have) + "-");
    }
    if (h.status == 206) {
      auto const cr = parse_content_range(h.content_range);
      if (!cr || !cr->first || *cr->first != have)
        return failure(h.url + " answered 206 with Content-Range \"" + h.content_range +
                       "\" for bytes=" + std::to_string(have) + "-");
      total = cr->total;
    } else {
      if (have > 0) {
        // 200 to a Range request: the server sends the whole file again.
        meter_.interrupt();
        err_ << "ray model pull: the server ignored the Range request; starting over\n";
        if (auto r = file_.restart(); !r) return r.error();
      }
      total = h.content_length;
    }
    total_ = total;
    if (h.content_length) {
      if (auto r = check_space(file_.dir(), *h.content_length, "Content-Length"); !r) return r.error();
    }
    meter_.start(file_.size(), total);
    return true;
  }

  result<void> on_body(std::string_view bytes) override {
    if (auto r = file_.append(bytes); !r) return r;
    meter_.update(file_.size());
    return {};
  }

  std::optional<std::uint64_t> total() const { return total_; }

 private:
  partial_file& file_;
  progress_meter& meter_;
  std::ostream& err_;
  std::optional<std::uint64_t> total_;
};

result<void> copy_local(std::string const& source, partial_file& file, progress_meter& meter) {
  int const fd = ::open(source.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return failure(os_error("cannot open", source));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return failure(source + " is not a regular file");
  }
  auto const size = static_cast<std::uint64_t>(st.st_size);
  if (auto r = check_space(file.dir(), size, "the size of " + source); !r) {
    ::close(fd);
    return r;
  }
  meter.start(0, size);
  std::vector<char> buf(1 << 20);
  for (;;) {
    auto const n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      auto e = failure(os_error("cannot read", source));
      ::close(fd);
      return e;
    }
    if (n == 0) break;
    if (auto r = file.append(std::string_view(buf.data(), static_cast<std::size_t>(n))); !r) {
      ::close(fd);
      return r;
    }
    meter.update(file.size());
  }
  ::close(fd);
  return {};
}

bool is_url(std::string_view s) {
  return s.starts_with("http://") || s.starts_with("https://") || s.starts_with("hf://");
}

// rename(2) that never replaces an existing model (RENAME_NOREPLACE; plain rename where unsupported).
int rename_no_replace(std::string const& from, std::string const& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS) return -1;
  struct stat st {};
  if (::stat(to.c_str(), &st) == 0) {
    errno = EEXIST;
    return -1;
  }
  return std::rename(from.c_str(), to.c_str());
}

}  // namespace

int pull_command(pull_options const& o, std::ostream& out, std::ostream& err) {
  auto usage = [&err](std::string const& what) {
    err << "ray model pull: " << what << "\n";
    return 2;
  };
  auto fail = [&err](std::string const& what) {
    err << "ray model pull: " << what << "\n";
    return 1;
  };

  // 1. Flags.
  if (o.source.empty()) return usage("URL|PATH is required");
  std::string expected;
  if (!o.sha256.empty()) {
    expected = o.sha256;
    std::transform(expected.begin(), expected.end(), expected.begin(),
                   [](char c) { return static_cast<char>(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c); });
    if (expected.size() != 64 ||
        !std::all_of(expected.begin(), expected.end(), [](char c) { return std::isxdigit(c) != 0; }))
      return usage("--sha256: expected 64 hex digits, got \"" + o.sha256 + "\"");
  }
  bool const remote = is_url(o.source);
  if (!remote && o.source.find("://") != std::string::npos)
    return usage("URL|PATH: only http://, https:// and hf:// URLs are supported, got " + o.source);
  std::string url;
  if (remote) {
    auto expanded = expand_source(o.source);
    if (!expanded) return usage("URL|PATH: " + expanded.error().message);
    url = *expanded;
  }
  std::string name = o.name.empty() ? default_model_name(remote ? url : o.source) : o.name;
  if (name.size() > 5 && name.ends_with(".gguf")) name.resize(name.size() - 5);
  if (auto ok = check_model_name(name); !ok)
    return usage((o.name.empty() ? "cannot derive a name from the source (pass --name): " : "--name: ") +
                 ok.error().message);
  std::string dir = o.models_dir;
  if (dir.empty()) {
    auto d = default_models_dir(::geteuid(), std::getenv("XDG_DATA_HOME"), std::getenv("HOME"));
    if (!d) return usage(d.error().message);
    dir = *d;
  }

  // 2. The models dir and the partial.
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return fail("--models-dir: cannot create " + dir + ": " + ec.message());
  std::string const partial_dir = dir + "/.partial";
  if (::mkdir(partial_dir.c_str(), 0700) != 0 && errno != EEXIST)
    return fail(os_error("cannot create", partial_dir));
  std::string const final_path = dir + "/" + name + ".gguf";
  if (fs::exists(final_path, ec))
    return fail(final_path + " already exists (`ray model rm " + name + "` first, or pick another --name)");

  partial_file file(partial_dir + "/" + name, partial_dir);
  if (auto r = file.open_locked(); !r) return fail(r.error().message);
  std::string const source_note = partial_dir + "/." + name + ".source";
  auto discard = [&] {
    ::unlink(file.path().c_str());
    ::unlink(source_note.c_str());
  };
  auto give_up = [&](std::string const& why) {
    discard();
    return fail(why);
  };

  // An earlier run's bytes are resumed only for the same source; anything else starts over.
  std::string const source_id = remote ? url : fs::absolute(o.source, ec).string();
  {
    std::string previous;
    std::ifstream in(source_note);
    std::getline(in, previous);
    if (!remote || previous != source_id) {
      if (auto r = file.restart(); !r) return give_up(r.error().message);
    }
    std::ofstream note(source_note, std::ios::trunc);
    note << source_id << "\n";
  }
  if (auto r = file.adopt_existing(); !r) {
    // A partial that is not GGUF (or unreadable) is worthless: start over.
    if (auto t = file.restart(); !t) return give_up(t.error().message);
  }

  bool const tty = o.tty.value_or(::isatty(STDERR_FILENO) == 1);
  progress_meter meter(err, tty, "pull " + name);

  // 3. The bytes.
  std::optional<std::uint64_t> total;
  if (!remote) {
    if (auto r = copy_local(o.source, file, meter); !r) return give_up(r.error().message);
    total = file.size();
  } else {
    if (file.size() > 0) err << "ray model pull: resuming " << name << " at byte " << file.size() << "\n";
    detail::fetch_limits lim{.max_redirects = o.max_redirects,
                             .connect_timeout = std::chrono::milliseconds(o.connect_timeout_ms),
                             .idle_timeout = std::chrono::milliseconds(o.idle_timeout_ms)};
    pull_sink sink(file, meter, err);
    int failures = 0;
    auto backoff = std::chrono::milliseconds(o.first_backoff_ms);
    for (;;) {
      auto const before = file.size();
      auto const r = detail::fetch(url, file.size(), lim, sink);
      if (r.end == detail::fetch_end::complete) break;
      meter.interrupt();
      if (r.end == detail::fetch_end::fatal) return give_up(r.error);
      if (file.size() > before) {
        failures = 0;
        backoff = std::chrono::milliseconds(o.first_backoff_ms);
      }
      if (++failures > o.max_retries)
        return fail(r.error + "; gave up after " + std::to_string(o.max_retries) +
                    " retries without progress (the partial download is kept: run the same command again to "
                    "resume)");
      err << "ray model pull: " << r.error << "; retrying in " << backoff.count() << " ms (retry " << failures
          << " of " << o.max_retries << ")\n";
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(8000));
    }
    total = sink.total();
  }
  meter.finish(file.size());
  if (total && *total != file.size())
    return give_up("the download ended at " + std::to_string(file.size()) + " of " + std::to_string(*total) +
                   " bytes");

  // 4. Verification.
  if (auto r = file.sync(); !r) return give_up(r.error().message);
  auto info = gguf::read_header_file(file.path());
  if (!info) return give_up("the file is not a usable GGUF model: " + info.error().message);
  auto const digest = file.digest();
  if (!expected.empty() && digest != expected)
    return give_up("sha256 mismatch: expected " + expected + ", got " + digest +
                   " (the download was removed)");

  // 5. Install.
  if (rename_no_replace(file.path(), final_path) != 0)
    return give_up(os_error("cannot rename into", final_path));
  ::unlink(source_note.c_str());
  detail::sync_directory(dir);
  if (auto r = detail::write_sidecar(dir, name, digest); !r)
    err << "ray model pull: warning: " << r.error().message << " (`ray model list` computes it again)\n";
  detail::sync_directory(dir);
  out << final_path << "\n  " << file.size() << " bytes, sha256 " << digest << "\n  "
      << (info->model.architecture.empty() ? "unknown architecture" : info->model.architecture);
  if (!info->model.file_type_name.empty()) out << ", " << info->model.file_type_name;
  if (info->model.context_length) out << ", context " << *info->model.context_length;
  out << "\n";
  return 0;
}

}  // namespace ray::ops
