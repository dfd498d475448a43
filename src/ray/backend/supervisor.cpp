// The llama-server supervisor (supervisor.hpp): checks, fork+execve, output forwarding, exit detection with
// pidfd, back-off, crash loop, OOM-kill detection, load timeout, stop with a grace period.
#include "ray/backend/supervisor.hpp"

#include "ray/backend/flags.hpp"
#include "ray/http/client.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/array.hpp>
#include <boost/json/parse.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>

extern char** environ;

namespace ray::backend {

namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// ---------------------------------------------------------------------------------------------------------
// Small file and process helpers (blocking, bounded)

std::optional<std::string> read_small_file(std::string const& path, std::size_t max_bytes = 64 * 1024) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string out;
  std::array<char, 4096> buf;
  while (out.size() < max_bytes) {
    ssize_t n = ::read(fd, buf.data(), std::min(buf.size(), max_bytes - out.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf.data(), static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

std::optional<std::uint64_t> parse_u64(std::string_view s) {
  s = trim(s);
  if (s.empty() || s.size() > 20) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    std::uint64_t next = v * 10 + static_cast<std::uint64_t>(c - '0');
    if (next / 10 != v) return std::nullopt;
    v = next;
  }
  return v;
}

// The value of "<key> <number>" (memory.events) or "<key>: <number> kB" (meminfo) lines.
std::optional<std::uint64_t> keyed_value(std::string_view text, std::string_view key) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    auto end = text.find('\n', pos);
    auto line = text.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    pos = end == std::string_view::npos ? text.size() : end + 1;
    if (!line.starts_with(key)) continue;
    auto rest = line.substr(key.size());
    if (rest.empty() || (rest.front() != ' ' && rest.front() != ':' && rest.front() != '\t')) continue;
    if (rest.front() == ':') rest.remove_prefix(1);
    rest = trim(rest);
    if (rest.ends_with("kB")) {
      auto v = parse_u64(rest.substr(0, rest.size() - 2));
      return v ? std::optional<std::uint64_t>(*v * 1024) : std::nullopt;
    }
    return parse_u64(rest);
  }
  return std::nullopt;
}

// Moves a descriptor to >= 3 so dup2() onto 0-2 in the child never meets itself.
int above_stdio(int fd) {
  if (fd < 0 || fd > 2) return fd;
  int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  ::close(fd);
  return moved;
}

void set_nonblocking(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  if (fl >= 0) ::fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

bool is_executable_file(std::string const& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// `name` when it contains '/', else the first executable <dir>/name on $PATH; "" when not found.
std::string find_binary(std::string const& name) {
  if (name.empty()) return {};
  if (name.find('/') != std::string::npos) return is_executable_file(name) ? name : std::string();
  char const* env = std::getenv("PATH");
  std::string_view path = env && *env ? env : "/usr/local/bin:/usr/bin:/bin";
  while (!path.empty()) {
    auto colon = path.find(':');
    auto dir = path.substr(0, colon);
    path = colon == std::string_view::npos ? std::string_view() : path.substr(colon + 1);
    std::string candidate = (dir.empty() ? std::string(".") : std::string(dir)) + "/" + name;
    if (is_executable_file(candidate)) return candidate;
  }
  return {};
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    char const* abbrev = ::sigabbrev_np(sig);
    return "was killed by signal " + std::to_string(sig) +
           (abbrev ? std::string(" (SIG") + abbrev + ")" : "");
  }
  return "ended with status " + std::to_string(status);
}

std::uint64_t mib_up(std::uint64_t bytes) {
  return (bytes + gguf::mib - 1) / gguf::mib;
}

// Bind test on host:port. nullopt = free; else why it is not usable ("in use" is EADDRINUSE).
struct port_check {
  bool busy{false};
  std::string error;  // set when the address itself is unusable
};
port_check check_port(std::string const& host, std::uint16_t port) {
  std::string h = host == "localhost" ? "127.0.0.1" : host;
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (::inet_pton(AF_INET, h.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    len = sizeof(sockaddr_in);
  } else if (::inet_pton(AF_INET6, h.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    len = sizeof(sockaddr_in6);
  } else {
    return {false, "host " + host + " is not an IP address"};
  }
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return {false, std::string("socket: ") + std::strerror(errno)};
  int one = 1;
  // SO_REUSEADDR: a port in TIME_WAIT is free for llama-server (which sets it too); a listener is not.
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  port_check out;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    if (errno == EADDRINUSE)
      out.busy = true;
    else
      out.error = "cannot bind " + host + ":" + std::to_string(port) + ": " + std::strerror(errno);
  }
  ::close(fd);
  return out;
}

bool same_file(std::string const& a, std::string const& b) {
  if (a == b) return true;
  std::error_code ec;
  return std::filesystem::equivalent(a, b, ec) && !ec;
}

// The command line for the log, without secrets an operator may pass in extraArgs (config::is_secret_flag).
std::vector<std::string> redacted(std::vector<std::string> args) {
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view const arg = args[i];
    if (!arg.starts_with("-")) continue;
    if (auto eq = arg.find('='); eq != std::string_view::npos) {
      if (config::is_secret_flag(arg.substr(0, eq))) args[i] = std::string(arg.substr(0, eq)) + "=<redacted>";
    } else if (config::is_secret_flag(arg) && i + 1 < args.size()) {
      args[++i] = "<redacted>";
    }
  }
  return args;
}

enum class phase { idle, checking, running, backoff, adopted, stopping, stopped, failed };

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Free functions

supervisor_options supervisor_options_for(config::launch_profile const& profile,
                                          std::string const& model_path_override,
                                          std::string const& binary_override, config::model_kind kind,
                                          std::optional<std::string> const& pooling) {
  supervisor_options o;
  o.binary = !binary_override.empty()       ? binary_override
             : !profile.binary_path.empty() ? profile.binary_path
                                            : std::string("llama-server");
  o.fallback_binary = binary_override.empty() ? "llama-server" : "";
  o.args = llama_server_args(profile, model_path_override, kind, pooling);
  o.model_path = model_path_override.empty() ? profile.model_path : model_path_override;
  o.host = profile.host;
  o.port = static_cast<std::uint16_t>(profile.port);
  o.memory.ctx_size = profile.ctx_size;
  o.memory.cache_ram_mib = profile.cache_ram_mib > 0 ? static_cast<std::uint64_t>(profile.cache_ram_mib) : 0;
  o.cache_ram_unlimited = profile.cache_ram_mib < 0;
  o.load_timeout = milliseconds(profile.load_timeout_ms);
  return o;
}

std::string own_cgroup_dir(std::string const& fs_root) {
  auto text = read_small_file(fs_root + "/proc/self/cgroup");
  if (!text) return {};
  std::string_view t = *text;
  std::size_t pos = 0;
  while (pos < t.size()) {
    auto end = t.find('\n', pos);
    auto line = t.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    pos = end == std::string_view::npos ? t.size() : end + 1;
    if (!line.starts_with("0::")) continue;
    auto rel = trim(line.substr(3));
    if (rel.empty() || rel.front() != '/') return {};
    std::string dir = fs_root + "/sys/fs/cgroup";
    if (rel != "/") dir += rel;
    return dir;
  }
  return {};
}

std::optional<memory_limit> read_memory_limit(std::string const& fs_root, std::string const& cgroup_dir) {
  std::optional<memory_limit> best;
  auto consider = [&](std::uint64_t bytes, std::string source) {
    if (!best || bytes < best->bytes) best = memory_limit{bytes, std::move(source)};
  };
  bool explicit_dir = !cgroup_dir.empty();
  std::filesystem::path dir = explicit_dir ? cgroup_dir : own_cgroup_dir(fs_root);
  std::filesystem::path const mount = fs_root + "/sys/fs/cgroup";
  for (int depth = 0; !dir.empty() && depth < 64; ++depth) {
    if (auto text = read_small_file((dir / "memory.max").string()); text) {
      if (auto v = parse_u64(*text)) consider(*v, "cgroup memory.max of " + dir.string());
    }
    if (explicit_dir || dir == mount || dir.string().size() <= mount.string().size()) break;
    dir = dir.parent_path();
  }
  if (auto text = read_small_file(fs_root + "/proc/meminfo")) {
    if (auto v = keyed_value(*text, "MemAvailable"))
      consider(*v, "MemAvailable in " + fs_root + "/proc/meminfo");
  }
  return best;
}

std::optional<std::uint64_t> read_oom_kill_count(std::string const& cgroup_dir) {
  if (cgroup_dir.empty()) return std::nullopt;
  auto text = read_small_file(cgroup_dir + "/memory.events");
  if (!text) return std::nullopt;
  return keyed_value(*text, "oom_kill");
}

// ---------------------------------------------------------------------------------------------------------
// The state machine

struct supervisor::impl {
  using sp = std::shared_ptr<impl>;
  using descriptor = asio::posix::stream_descriptor;

  struct child_proc {
    pid_t pid{-1};
    std::uint64_t serial{0};
    std::shared_ptr<descriptor> out;    // stdout+stderr pipe, read end
    std::shared_ptr<descriptor> pidfd;  // nullptr when pidfd_open is unavailable (then waitid is polled)
    int exec_fd{-1};                    // read end of the close-on-exec error pipe
    std::string oom_cgroup;
    std::optional<std::uint64_t> oom_baseline;
    steady::time_point spawned{};
    bool ready{false};
    bool load_timed_out{false};
    bool killed_by_us{false};
    bool reader_done{false};
  };

  impl(asio::any_io_executor ex, supervisor_options o, telemetry::logger& l)
      : ex_(ex),
        opts_(std::move(o)),
        log_(l),
        backoff_timer_(ex),
        adopt_timer_(ex),
        load_timer_(ex),
        grace_timer_(ex),
        drain_timer_(ex) {
    // Shorter values are not scrubbed: they would garble ordinary words and are no secret worth the name.
    for (auto& v : config::secret_arg_values(opts_.args))
      if (v.size() >= 4) secret_args_.push_back(std::move(v));
  }

  asio::any_io_executor ex_;
  supervisor_options opts_;
  telemetry::logger& log_;
  state_fn on_state_;
  bool closed_{false};

  phase phase_{phase::idle};
  std::uint64_t epoch_{0};  // bumps on start/stop/reset/close: pending start work of older epochs gives up
  state state_{state::unknown};
  std::string reason_;
  child_proc child_;
  std::uint64_t next_serial_{0};
  bool adopted_{false};
  std::optional<steady::time_point> spawned_at_;
  std::optional<double> load_ms_;
  std::deque<steady::time_point> exits_;  // unexpected exits within the crash-loop window
  std::uint32_t attempt_{0};              // back-off exponent
  std::uint32_t restarts_{0};
  std::optional<gguf::memory_estimate> estimate_;
  std::vector<std::function<void()>> on_stopped_;

  // output
  std::vector<std::string> secret_args_;  // values of secret flags in opts_.args, scrubbed from the output
  std::deque<std::string> lines_;
  std::uint64_t dropped_{0};
  steady::time_point window_start_{};
  std::uint32_t window_count_{0};
  std::uint64_t window_dropped_{0};

  asio::steady_timer backoff_timer_;
  asio::steady_timer adopt_timer_;
  asio::steady_timer load_timer_;
  asio::steady_timer grace_timer_;
  asio::steady_timer drain_timer_;

  std::string endpoint() const { return opts_.host + ":" + std::to_string(opts_.port); }

  void report(state s, std::string reason) {
    state_ = s;
    reason_ = std::move(reason);
    if (!closed_ && on_state_) on_state_(state_, reason_);
  }

  void fail(std::string reason) {
    phase_ = phase::failed;
    adopted_ = false;
    log_.error("llama-server supervisor gave up", {{"src", "backend"}, {"reason", reason}});
    report(state::failed, std::move(reason));
  }

  // --- output ------------------------------------------------------------------------------------------

  void flush_dropped() {
    if (window_dropped_ == 0) return;
    log_.warn("backend output lines dropped (rate limit)",
              {{"src", "backend"},
               {"dropped", window_dropped_},
               {"maxLinesPerSecond", opts_.max_lines_per_second}});
    window_dropped_ = 0;
  }

  void on_line(std::string line) {
    while (!line.empty() && (line.back() == '\r' || line.back() == '\n'))
      line.pop_back();
    // A child that echoes its arguments (usage errors do) must not put a secret flag's value into Ray's log
    // or /health's last lines.
    if (!secret_args_.empty()) line = redact_all(std::move(line), secret_args_);
    auto now = steady::now();
    if (now - window_start_ >= std::chrono::seconds(1)) {
      flush_dropped();
      window_start_ = now;
      window_count_ = 0;
    }
    if (window_count_ < opts_.max_lines_per_second) {
      ++window_count_;
      log_.info("backend output", {{"src", "backend"}, {"line", line}});
    } else {
      ++dropped_;
      ++window_dropped_;
    }
    if (opts_.keep_lines == 0) return;
    if (lines_.size() >= opts_.keep_lines) lines_.pop_front();
    lines_.push_back(std::move(line));
  }

  static asio::awaitable<void> read_output(sp self, std::shared_ptr<descriptor> d, std::uint64_t serial) {
    std::array<char, 4096> buf;
    std::string partial;
    bool overlong = false;
    auto const max_line = std::max<std::size_t>(self->opts_.max_line_bytes, 16);
    auto emit = [&] {
      self->on_line(overlong ? partial + "…" : partial);
      partial.clear();
      overlong = false;
    };
    for (;;) {
      auto [ec, n] = co_await d->async_read_some(asio::buffer(buf), use_tuple);
      if (self->closed_) co_return;
      std::string_view chunk(buf.data(), n);
      while (!chunk.empty()) {
        auto nl = chunk.find('\n');
        auto piece = chunk.substr(0, nl);
        if (!overlong) {
          auto room = max_line - partial.size();
          if (piece.size() > room) {
            partial.append(piece.substr(0, utf8_safe_prefix(piece, room)));
            overlong = true;
          } else {
            partial.append(piece);
          }
        }
        if (nl == std::string_view::npos) break;
        emit();
        chunk.remove_prefix(nl + 1);
      }
      if (ec) break;  // EOF (every writer gone), or closed by the exit handler
    }
    if (!partial.empty() || overlong) emit();
    if (self->child_.serial == serial) {
      self->child_.reader_done = true;
      self->drain_timer_.cancel();
    }
  }

  // --- spawning ----------------------------------------------------------------------------------------

  // A fresh start: history cleared, memory checked (synchronously), then the port check and spawn.
  static void fresh_start(sp const& self) {
    auto& s = *self;
    ++s.epoch_;
    s.exits_.clear();
    s.attempt_ = 0;
    s.adopted_ = false;
    s.phase_ = phase::checking;
    if (auto refusal = s.check_memory()) {
      s.fail(*refusal);
      return;
    }
    asio::co_spawn(s.ex_, attempt_spawn(self, s.epoch_), asio::detached);
  }

  std::optional<std::string> check_memory() {
    if (opts_.model_path.empty()) return std::nullopt;
    auto info = gguf::read_header_file(opts_.model_path);
    if (!info) return "cannot read the model " + opts_.model_path + ": " + info.error().message;
    auto est = gguf::estimate_memory(*info, opts_.memory);
    if (!est) {
      log_.warn("no memory estimate for the model; starting llama-server without the memory check",
                {{"src", "backend"}, {"model", opts_.model_path}, {"reason", est.error().message}});
      return std::nullopt;
    }
    estimate_ = *est;
    std::optional<memory_limit> limit;
    if (opts_.memory_limit_bytes)
      limit = memory_limit{*opts_.memory_limit_bytes, "the configured memory limit"};
    else
      limit = read_memory_limit(opts_.fs_root, opts_.cgroup_dir);
    if (opts_.cache_ram_unlimited)
      log_.warn(
          "launchProfile.cacheRamMiB is -1 (unlimited): llama-server's prompt cache can grow until the OOM "
          "killer ends it; the memory check counts it as 0",
          {{"src", "backend"}});
    if (!limit) {
      log_.warn(
          "cannot read the memory limit (no cgroup memory.max, no MemAvailable); skipping the memory check",
          {{"src", "backend"}, {"needMiB", mib_up(est->total)}});
      return std::nullopt;
    }
    if (!gguf::fits(*est, limit->bytes))
      return "llama-server for " + opts_.model_path + " " + gguf::refusal_message(*est, limit->bytes) +
             "; limit from " + limit->source +
             " (lower launchProfile.ctxSize or cacheRamMiB, use a smaller model, or give the box more "
             "memory)";
    log_.info("memory check passed", {{"src", "backend"},
                                      {"model", opts_.model_path},
                                      {"needMiB", mib_up(est->total)},
                                      {"limitMiB", limit->bytes / gguf::mib},
                                      {"limitSource", limit->source}});
    return std::nullopt;
  }

  // GET /props on a busy port: adopt when it serves the same model file. Returns (adopt, detail).
  static asio::awaitable<std::pair<bool, std::string>> probe_props(sp self) {
    auto const& o = self->opts_;
    http::client_options copts;
    copts.connect_timeout_ms = static_cast<std::uint32_t>(o.adopt_probe_timeout.count());
    copts.max_response_bytes = 1u << 20;
    std::string host = o.host == "localhost" ? "127.0.0.1" : o.host;
    http::client c(self->ex_, host, o.port, copts);
    http::client_request req;
    req.target = "/props";
    req.timeout = o.adopt_probe_timeout;
    auto r = co_await c.send(std::move(req));
    if (!r) co_return std::pair{false, "it does not answer GET /props (" + r.error().message + ")"};
    if (r->status != 200)
      co_return std::pair{false,
                          "GET /props answered HTTP " + std::to_string(r->status) + ", not a llama-server"};
    boost::system::error_code ec;
    auto v = json::parse(r->body, ec);
    json::string const* mp = nullptr;
    if (!ec && v.is_object()) {
      auto it = v.get_object().find("model_path");
      if (it != v.get_object().end() && it->value().is_string()) mp = &it->value().get_string();
    }
    if (!mp) co_return std::pair{false, "GET /props has no model_path, not a llama-server"};
    std::string served(*mp);
    if (!o.model_path.empty() && same_file(served, o.model_path)) co_return std::pair{true, served};
    co_return std::pair{false, "a llama-server there serves " + served + ", not " + o.model_path};
  }

  // Port check (adopt or refuse), then spawn. Runs for fresh starts and respawns.
  static asio::awaitable<void> attempt_spawn(sp self, std::uint64_t epoch) {
    auto& s = *self;
    s.phase_ = phase::checking;
    if (s.opts_.port != 0) {
      auto pc = check_port(s.opts_.host, s.opts_.port);
      if (!pc.error.empty()) {
        s.fail("cannot start llama-server on " + s.endpoint() + ": " + pc.error);
        co_return;
      }
      if (pc.busy) {
        auto [adopt, detail] = co_await probe_props(self);
        if (s.closed_ || s.epoch_ != epoch || s.phase_ != phase::checking) co_return;
        if (adopt) {
          s.phase_ = phase::adopted;
          s.adopted_ = true;
          s.log_.info("adopted the llama-server already listening on " + s.endpoint(),
                      {{"src", "backend"}, {"model", detail}});
          s.report(state::starting,
                   "adopted the llama-server already serving " + detail + " on " + s.endpoint());
          asio::co_spawn(s.ex_, watch_adopted(self, epoch), asio::detached);
        } else {
          s.fail("port " + s.endpoint() + " is already in use and " + detail +
                 "; stop what listens there or change launchProfile.port");
        }
        co_return;
      }
    }
    spawn(self);
  }

  static asio::awaitable<void> watch_adopted(sp self, std::uint64_t epoch) {
    auto& s = *self;
    for (;;) {
      s.adopt_timer_.expires_after(s.opts_.adopted_check_interval);
      co_await s.adopt_timer_.async_wait(use_tuple);
      if (s.closed_ || s.epoch_ != epoch || s.phase_ != phase::adopted) co_return;
      if (check_port(s.opts_.host, s.opts_.port).busy) continue;
      s.log_.warn("the adopted llama-server left " + s.endpoint() + "; starting one", {{"src", "backend"}});
      s.adopted_ = false;
      co_await attempt_spawn(self, epoch);
      co_return;
    }
  }

  static void spawn(sp const& self) {
    auto& s = *self;
    std::string path = find_binary(s.opts_.binary);
    if (path.empty() && !s.opts_.fallback_binary.empty()) path = find_binary(s.opts_.fallback_binary);
    if (path.empty()) {
      std::string msg = "llama-server binary " + s.opts_.binary + " not found or not executable";
      if (!s.opts_.fallback_binary.empty() && s.opts_.fallback_binary != s.opts_.binary)
        msg += " (and no " + s.opts_.fallback_binary + " on PATH)";
      s.fail(msg + "; set --llama-server or launchProfile.binaryPath");
      return;
    }

    // Everything the child needs is built before fork(): it may only make async-signal-safe calls.
    std::vector<std::string> argv_s;
    argv_s.reserve(s.opts_.args.size() + 1);
    argv_s.push_back(path);
    argv_s.insert(argv_s.end(), s.opts_.args.begin(), s.opts_.args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s)
      argv.push_back(a.data());
    argv.push_back(nullptr);

    // Ray's own settings and secrets (RAY_*) are not llama-server's business.
    std::vector<std::string> env_s;
    for (char** e = environ; e && *e; ++e)
      if (!std::string_view(*e).starts_with("RAY_")) env_s.emplace_back(*e);
    for (auto const& kv : s.opts_.env) {
      auto name = kv.substr(0, kv.find('=') + 1);
      std::erase_if(env_s, [&](std::string const& e) { return e.starts_with(name); });
      env_s.push_back(kv);
    }
    std::vector<char*> envp;
    for (auto& e : env_s)
      envp.push_back(e.data());
    envp.push_back(nullptr);

    int out[2] = {-1, -1};
    int exec_pipe[2] = {-1, -1};
    int devnull = above_stdio(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    bool ok = devnull >= 0 && ::pipe2(out, O_CLOEXEC) == 0;
    ok = ok && ::pipe2(exec_pipe, O_CLOEXEC) == 0;
    for (int* fd : {&out[0], &out[1], &exec_pipe[0], &exec_pipe[1]})
      *fd = above_stdio(*fd);
    ok = ok && out[0] >= 0 && out[1] >= 0 && exec_pipe[0] >= 0 && exec_pipe[1] >= 0;
    auto close_all = [&] {
      for (int fd : {devnull, out[0], out[1], exec_pipe[0], exec_pipe[1]})
        if (fd >= 0) ::close(fd);
    };
    if (!ok) {
      std::string err = std::strerror(errno);
      close_all();
      after_exit(self, "could not be started (" + err + ")");
      return;
    }

    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigset_t no_signals;
    ::sigemptyset(&no_signals);
    pid_t const parent = ::getpid();
    char const* const exe = path.c_str();

    pid_t pid = ::fork();
    if (pid == 0) {
      // Child: async-signal-safe calls only.
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(127);  // Ray died before prctl took effect
      for (int sig = 1; sig < NSIG; ++sig)
        if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
      ::sigprocmask(SIG_SETMASK, &no_signals, nullptr);
      ::dup2(devnull, 0);
      ::dup2(out[1], 1);
      ::dup2(out[1], 2);
      ::syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC);  // no other descriptor of Ray leaks
      ::execve(exe, argv.data(), envp.data());
      int e = errno;
      ssize_t w = ::write(exec_pipe[1], &e, sizeof e);
      (void)w;
      ::_exit(127);
    }
    int fork_errno = errno;
    ::close(devnull);
    ::close(out[1]);
    ::close(exec_pipe[1]);
    if (pid < 0) {
      ::close(out[0]);
      ::close(exec_pipe[0]);
      after_exit(self, std::string("could not be started (fork: ") + std::strerror(fork_errno) + ")");
      return;
    }
    ::setpgid(pid, pid);  // also here, so a signal to the group right after fork() cannot miss it

    set_nonblocking(out[0]);
    set_nonblocking(exec_pipe[0]);
    auto& c = s.child_;
    c = child_proc{};
    c.pid = pid;
    c.serial = ++s.next_serial_;
    c.exec_fd = exec_pipe[0];
    c.spawned = steady::now();
    c.out = std::make_shared<descriptor>(s.ex_, out[0]);
    int pfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pfd >= 0) c.pidfd = std::make_shared<descriptor>(s.ex_, pfd);
    c.oom_cgroup = s.opts_.cgroup_dir.empty() ? own_cgroup_dir(s.opts_.fs_root) : s.opts_.cgroup_dir;
    c.oom_baseline = read_oom_kill_count(c.oom_cgroup);

    s.phase_ = phase::running;
    s.adopted_ = false;
    s.spawned_at_ = c.spawned;
    s.load_ms_.reset();
    s.lines_.clear();

    asio::co_spawn(s.ex_, read_output(self, c.out, c.serial), asio::detached);
    asio::co_spawn(s.ex_, watch_exit(self, c.serial), asio::detached);
    asio::co_spawn(s.ex_, watch_loading(self, c.serial), asio::detached);

    s.log_.info("llama-server started",
                {{"src", "backend"}, {"pid", pid}, {"command", shell_command(redacted(argv_s))}});
    s.report(state::starting, "spawned llama-server (pid " + std::to_string(pid) + ")");
  }

  // --- running -----------------------------------------------------------------------------------------

  static asio::awaitable<void> watch_loading(sp self, std::uint64_t serial) {
    auto& s = *self;
    auto const start = s.child_.spawned;
    auto const deadline = start + s.opts_.load_timeout;
    auto const interval = std::max(s.opts_.loading_log_interval, milliseconds(1));
    auto next = start + interval;
    for (;;) {
      s.load_timer_.expires_at(std::min(next, deadline));
      co_await s.load_timer_.async_wait(use_tuple);
      if (s.closed_ || s.child_.serial != serial || s.child_.ready || s.phase_ != phase::running) co_return;
      auto now = steady::now();
      auto elapsed = std::chrono::duration_cast<milliseconds>(now - start);
      if (now >= deadline) {
        s.log_.error(
            "llama-server did not become ready in time; killing it",
            {{"src", "backend"}, {"pid", s.child_.pid}, {"loadTimeoutMs", s.opts_.load_timeout.count()}});
        s.child_.load_timed_out = true;
        s.child_.killed_by_us = true;
        ::kill(-s.child_.pid, SIGKILL);
        co_return;
      }
      if (now >= next) {
        s.log_.info("llama-server still loading after " + std::to_string(elapsed.count() / 1000) + " s",
                    {{"src", "backend"}, {"pid", s.child_.pid}, {"elapsedMs", elapsed.count()}});
        while (next <= now)
          next += interval;
      }
    }
  }

  static asio::awaitable<void> watch_exit(sp self, std::uint64_t serial) {
    auto& s = *self;
    pid_t const pid = s.child_.pid;
    auto pfd = s.child_.pidfd;
    asio::steady_timer poll(s.ex_);
    bool use_pidfd = pfd != nullptr;
    for (;;) {
      if (use_pidfd) {
        auto [ec] = co_await pfd->async_wait(descriptor::wait_read, use_tuple);
        if (ec && !s.closed_) use_pidfd = false;  // unexpected: fall back to polling rather than spin
      } else {
        poll.expires_after(milliseconds(100));
        co_await poll.async_wait(use_tuple);
      }
      if (s.closed_ || s.child_.serial != serial) co_return;
      siginfo_t info{};
      // WNOWAIT: look without reaping, so the pid (and the group id) cannot be reused while the stragglers
      // of the group are killed below.
      int rc = ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
      if (rc == 0 && info.si_pid == pid) break;
      if (rc != 0 && errno != EINTR) break;  // ECHILD: reaped elsewhere
    }
    ::kill(-pid, SIGKILL);  // whatever else is left in its process group
    int status = 0;
    pid_t r;
    do {
      r = ::waitpid(pid, &status, 0);
    } while (r < 0 && errno == EINTR);
    if (r != pid) status = 0xff00;  // unknown: shown as "exited with code 255"
    if (pfd) {
      boost::system::error_code ec;
      pfd->close(ec);
    }
    // Let the reader take the last lines (the crash message) before they are reported; bounded, since a
    // process outside the group may still hold the pipe.
    if (!s.child_.reader_done) {
      s.drain_timer_.expires_after(milliseconds(500));
      co_await s.drain_timer_.async_wait(use_tuple);
      if (s.closed_ || s.child_.serial != serial) co_return;
    }
    if (s.child_.out) {
      boost::system::error_code ec;
      s.child_.out->close(ec);
    }
    handle_exit(self, status);
  }

  static void handle_exit(sp const& self, int status) {
    auto& s = *self;
    s.load_timer_.cancel();
    s.flush_dropped();
    auto c = std::move(s.child_);
    s.child_ = child_proc{};
    s.child_.serial = c.serial;  // stale coroutines of this child keep seeing their serial… and give up
    s.child_.reader_done = true;
    int exec_errno = 0;
    if (c.exec_fd >= 0) {
      int e = 0;
      if (::read(c.exec_fd, &e, sizeof e) == static_cast<ssize_t>(sizeof e)) exec_errno = e;
      ::close(c.exec_fd);
    }
    std::string what = describe_status(status);
    auto uptime = std::chrono::duration_cast<milliseconds>(steady::now() - c.spawned).count();

    if (s.phase_ == phase::stopping) {
      s.grace_timer_.cancel();
      s.phase_ = phase::stopped;
      s.log_.info("llama-server stopped", {{"src", "backend"}, {"pid", c.pid}, {"status", what}});
      auto callbacks = std::move(s.on_stopped_);
      s.on_stopped_.clear();
      for (auto& cb : callbacks)
        if (cb) cb();
      return;
    }
    if (s.phase_ != phase::running) return;

    json::array last;
    for (auto const& l : s.lines_)
      last.emplace_back(l);
    s.log_.warn("llama-server " + what, {{"src", "backend"},
                                         {"pid", c.pid},
                                         {"status", what},
                                         {"uptimeMs", uptime},
                                         {"lastLines", std::move(last)}});
    if (exec_errno != 0) {
      s.fail("cannot execute " + s.opts_.binary + ": " + std::strerror(exec_errno));
      return;
    }
    if (c.load_timed_out) {
      s.fail("llama-server did not become ready within " + std::to_string(s.opts_.load_timeout.count()) +
             " ms (launchProfile.loadTimeoutMs) and was killed");
      return;
    }
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && !c.killed_by_us && c.oom_baseline) {
      auto now = read_oom_kill_count(c.oom_cgroup);
      if (now && *now > *c.oom_baseline) {
        std::string msg = "llama-server was killed by the kernel OOM killer (oom_kill " +
                          std::to_string(*c.oom_baseline) + " -> " + std::to_string(*now) + " in " +
                          c.oom_cgroup + "/memory.events)";
        if (s.estimate_) msg += "; it needs about " + std::to_string(mib_up(s.estimate_->total)) + " MiB";
        s.fail(msg + "; lower launchProfile.ctxSize or cacheRamMiB, or give it more memory");
        return;
      }
    }
    if (c.ready) s.attempt_ = 0;
    after_exit(self, what);
  }

  // An unexpected end (or a failed spawn): crash-loop accounting, then `restarting` with back-off.
  static void after_exit(sp const& self, std::string const& what) {
    auto& s = *self;
    auto now = steady::now();
    s.exits_.push_back(now);
    while (!s.exits_.empty() && now - s.exits_.front() > s.opts_.crash_loop_window)
      s.exits_.pop_front();
    if (s.exits_.size() > s.opts_.crash_loop_exits) {
      s.fail("crash loop: llama-server ended " + std::to_string(s.exits_.size()) + " times within " +
             std::to_string(s.opts_.crash_loop_window.count() / 1000) + " s (last: " + what +
             "); fix the cause, then send SIGHUP");
      return;
    }
    double factor = std::ldexp(1.0, static_cast<int>(std::min<std::uint32_t>(s.attempt_, 40)));
    auto delay = milliseconds(static_cast<std::int64_t>(
        std::min(static_cast<double>(s.opts_.backoff_cap.count()), s.opts_.backoff_base.count() * factor)));
    ++s.attempt_;
    s.phase_ = phase::backoff;
    asio::co_spawn(s.ex_, respawn_after(self, s.epoch_, delay), asio::detached);
    s.report(state::restarting,
             "llama-server " + what + "; restarting in " + std::to_string(delay.count()) + " ms");
  }

  static asio::awaitable<void> respawn_after(sp self, std::uint64_t epoch, milliseconds delay) {
    auto& s = *self;
    s.backoff_timer_.expires_after(delay);
    co_await s.backoff_timer_.async_wait(use_tuple);
    if (s.closed_ || s.epoch_ != epoch || s.phase_ != phase::backoff) co_return;
    ++s.restarts_;
    co_await attempt_spawn(self, epoch);
  }

  static asio::awaitable<void> kill_after_grace(sp self, std::uint64_t serial) {
    auto& s = *self;
    s.grace_timer_.expires_after(s.opts_.stop_grace);
    auto [ec] = co_await s.grace_timer_.async_wait(use_tuple);
    if (ec || s.closed_ || s.child_.serial != serial || s.child_.pid < 0 || s.phase_ != phase::stopping)
      co_return;
    s.log_.warn("llama-server did not exit within the grace period; sending SIGKILL",
                {{"src", "backend"}, {"pid", s.child_.pid}, {"graceMs", s.opts_.stop_grace.count()}});
    ::kill(-s.child_.pid, SIGKILL);
  }

  static void stop(sp const& self, std::function<void()> cb) {
    auto& s = *self;
    if (s.phase_ == phase::stopping) {
      s.on_stopped_.push_back(std::move(cb));
      return;
    }
    ++s.epoch_;
    s.backoff_timer_.cancel();
    s.adopt_timer_.cancel();
    s.load_timer_.cancel();
    if (s.phase_ == phase::running && s.child_.pid > 0) {
      s.phase_ = phase::stopping;
      s.child_.killed_by_us = true;
      s.on_stopped_.push_back(std::move(cb));
      s.log_.info("stopping llama-server",
                  {{"src", "backend"}, {"pid", s.child_.pid}, {"graceMs", s.opts_.stop_grace.count()}});
      ::kill(-s.child_.pid, SIGTERM);
      asio::co_spawn(s.ex_, kill_after_grace(self, s.child_.serial), asio::detached);
      return;
    }
    s.phase_ = phase::stopped;
    s.adopted_ = false;
    if (cb)
      asio::post(s.ex_, [self, cb = std::move(cb)] {
        if (!self->closed_) cb();
      });
  }

  void close() {
    closed_ = true;
    ++epoch_;
    for (auto* t : {&backoff_timer_, &adopt_timer_, &load_timer_, &grace_timer_, &drain_timer_})
      t->cancel();
    if (child_.pid > 0) {
      ::kill(-child_.pid, SIGKILL);
      ::kill(child_.pid, SIGKILL);
      while (::waitpid(child_.pid, nullptr, 0) < 0 && errno == EINTR) {
      }
      child_.pid = -1;
    }
    boost::system::error_code ec;
    if (child_.out) child_.out->close(ec);
    if (child_.pidfd) child_.pidfd->close(ec);
    if (child_.exec_fd >= 0) ::close(child_.exec_fd);
    child_.exec_fd = -1;
  }
};

// ---------------------------------------------------------------------------------------------------------
// supervisor

supervisor::supervisor(asio::any_io_executor ex, supervisor_options opts, telemetry::logger& log)
    : impl_(std::make_shared<impl>(ex, std::move(opts), log)) {}

supervisor::~supervisor() {
  impl_->close();
}

void supervisor::on_state(state_fn fn) {
  impl_->on_state_ = std::move(fn);
}

void supervisor::start() {
  auto p = impl_->phase_;
  if (p == phase::idle || p == phase::stopped || p == phase::failed) impl::fresh_start(impl_);
}

void supervisor::stop(std::function<void()> on_stopped) {
  impl::stop(impl_, std::move(on_stopped));
}

void supervisor::reset() {
  auto& s = *impl_;
  if (s.phase_ == phase::failed) {
    s.log_.info("llama-server supervisor reset; starting again", {{"src", "backend"}});
    impl::fresh_start(impl_);
    return;
  }
  s.exits_.clear();
  s.attempt_ = 0;
}

std::optional<double> supervisor::mark_ready() {
  auto& s = *impl_;
  if (s.phase_ != phase::running || s.child_.pid < 0 || s.child_.ready) return std::nullopt;
  s.child_.ready = true;
  s.attempt_ = 0;
  s.load_timer_.cancel();
  auto ms = std::chrono::duration<double, std::milli>(steady::now() - s.child_.spawned).count();
  s.load_ms_ = ms;
  s.log_.info("llama-server ready",
              {{"src", "backend"}, {"pid", s.child_.pid}, {"loadMs", std::llround(ms)}});
  return ms;
}

state supervisor::current_state() const noexcept {
  return impl_->state_;
}
std::string const& supervisor::reason() const noexcept {
  return impl_->reason_;
}
std::optional<pid_t> supervisor::pid() const noexcept {
  if (impl_->child_.pid > 0) return impl_->child_.pid;
  return std::nullopt;
}
bool supervisor::adopted() const noexcept {
  return impl_->adopted_;
}
std::optional<std::chrono::steady_clock::time_point> supervisor::spawned_at() const noexcept {
  return impl_->spawned_at_;
}
std::optional<double> supervisor::load_ms() const noexcept {
  return impl_->load_ms_;
}
std::vector<std::string> supervisor::last_lines() const {
  return {impl_->lines_.begin(), impl_->lines_.end()};
}
std::uint32_t supervisor::restarts() const noexcept {
  return impl_->restarts_;
}
std::uint64_t supervisor::dropped_lines() const noexcept {
  return impl_->dropped_;
}
std::optional<gguf::memory_estimate> supervisor::estimate() const noexcept {
  return impl_->estimate_;
}

}  // namespace ray::backend
