#include "support/ray_process.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <system_error>

extern char** environ;

namespace ray::test {

namespace {

[[noreturn]] void throw_errno(std::string const& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

void make_pipe(int fds[2]) {
  if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno("pipe2");
}

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

}  // namespace

// ---- temp_dir
// ------------------------------------------------------------------------------------------------

temp_dir::temp_dir() {
  char const* base = std::getenv("TMPDIR");
  std::string templ = std::string(base && *base ? base : "/tmp") + "/ray-test-XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) throw_errno("mkdtemp " + templ);
  path_ = templ;
}

temp_dir::~temp_dir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::filesystem::path temp_dir::write_file(std::string const& name, std::string_view text) const {
  auto p = path_ / name;
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  f.close();
  if (!f) throw std::runtime_error("cannot write " + p.string());
  return p;
}

std::filesystem::path write_config(temp_dir const& dir, boost::json::object const& config,
                                   std::string const& name) {
  return dir.write_file(name, boost::json::serialize(config));
}

std::optional<boost::json::object> parse_log_line(std::string_view line) {
  if (line.empty() || line.front() != '{') return std::nullopt;
  boost::system::error_code ec;
  auto v = boost::json::parse(line, ec);
  if (ec || !v.is_object()) return std::nullopt;
  return std::move(v.as_object());
}

std::string string_field(boost::json::object const& o, std::string_view key) {
  auto const* v = o.if_contains(key);
  if (v == nullptr || !v->is_string()) return {};
  return std::string(v->as_string());
}

// ---- ray_process
// ---------------------------------------------------------------------------------------------

ray_process::ray_process(spawn_options options) {
  int out_pipe[2];
  int err_pipe[2];
  int wake[2];
  make_pipe(out_pipe);
  make_pipe(err_pipe);
  make_pipe(wake);
  wake_read_ = wake[0];
  wake_write_ = wake[1];

  // Environment: inherited (minus RAY_* unless asked) with the overrides applied.
  std::map<std::string, std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    auto eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    std::string key(kv.substr(0, eq));
    if (!options.inherit_ray_env && key.starts_with("RAY_")) continue;
    env[key] = std::string(kv.substr(eq + 1));
  }
  for (auto const& [k, v] : options.env)
    env[k] = v;
  std::vector<std::string> env_strings;
  env_strings.reserve(env.size());
  for (auto const& [k, v] : env)
    env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& s : env_strings)
    envp.push_back(s.data());
  envp.push_back(nullptr);

  std::vector<std::string> argv_strings;
  argv_strings.push_back(options.binary);
  for (auto const& a : options.args)
    argv_strings.push_back(a);
  std::vector<char*> argv;
  for (auto& s : argv_strings)
    argv.push_back(s.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  if (options.working_directory) {
    posix_spawn_file_actions_addchdir_np(&actions, options.working_directory->c_str());
  }
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setpgroup(&attr, 0);  // own process group: killed as a whole on destruction
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGHUP);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

  int rc = ::posix_spawn(&pid_, options.binary.c_str(), &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (rc != 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    close_fd(wake_read_);
    close_fd(wake_write_);
    pid_ = -1;
    throw std::system_error(rc, std::generic_category(), "posix_spawn " + options.binary);
  }
  reader_ = std::thread([this, o = out_pipe[0], e = err_pipe[0]] { read_loop(o, e); });
  reaper_ = std::thread([this] { reap_loop(); });
}

ray_process::~ray_process() {
  if (pid_ > 0) {
    bool exited = false;
    {
      std::lock_guard lock(mu_);
      exited = exit_status_.has_value();
    }
    // Kill the whole group (also children the binary started); the group outlives a reaped leader while any
    // member is left.
    ::kill(-pid_, SIGKILL);
    if (!exited) ::kill(pid_, SIGKILL);
  }
  if (reaper_.joinable()) reaper_.join();
  if (wake_write_ >= 0) {
    char c = 'x';
    [[maybe_unused]] auto n = ::write(wake_write_, &c, 1);
  }
  if (reader_.joinable()) reader_.join();
  close_fd(wake_read_);
  close_fd(wake_write_);
}

void ray_process::append(stream s, char const* data, std::size_t n) {
  auto& all = s == stream::out ? out_ : err_;
  auto& partial = s == stream::out ? out_partial_ : err_partial_;
  all.append(data, n);
  partial.append(data, n);
  std::size_t start = 0;
  for (;;) {
    auto nl = partial.find('\n', start);
    if (nl == std::string::npos) break;
    std::string line = partial.substr(start, nl - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines_.push_back({s, std::move(line)});
    start = nl + 1;
  }
  partial.erase(0, start);
}

void ray_process::read_loop(int out_fd, int err_fd) {
  std::array<char, 16384> buf{};
  for (;;) {
    std::array<pollfd, 3> fds{{{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}, {wake_read_, POLLIN, 0}}};
    if (out_fd < 0 && err_fd < 0) break;
    int n = ::poll(fds.data(), fds.size(), -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[2].revents != 0) break;
    for (int i = 0; i < 2; ++i) {
      int& fd = i == 0 ? out_fd : err_fd;
      if (fd < 0 || fds[i].revents == 0) continue;
      ssize_t got = ::read(fd, buf.data(), buf.size());
      if (got > 0) {
        std::lock_guard lock(mu_);
        append(i == 0 ? stream::out : stream::err, buf.data(), static_cast<std::size_t>(got));
        cv_.notify_all();
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        ::close(fd);
        fd = -1;
      }
    }
  }
  close_fd(out_fd);
  close_fd(err_fd);
  std::lock_guard lock(mu_);
  // A last line without a newline still counts.
  for (auto s : {stream::out, stream::err}) {
    auto& partial = s == stream::out ? out_partial_ : err_partial_;
    if (!partial.empty()) lines_.push_back({s, std::exchange(partial, {})});
  }
  pipes_closed_ = true;
  cv_.notify_all();
}

void ray_process::reap_loop() {
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid_, &status, 0);
    if (r == pid_) break;
    if (r < 0 && errno == EINTR) continue;
    status = -1;
    break;
  }
  std::lock_guard lock(mu_);
  if (status == -1) {
    exit_status_ = -SIGKILL;
  } else if (WIFEXITED(status)) {
    exit_status_ = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    exit_status_ = -WTERMSIG(status);
  } else {
    exit_status_ = -1;
  }
  exited_at_ = steady::now();
  cv_.notify_all();
}

std::string ray_process::stdout_text() const {
  std::lock_guard lock(mu_);
  return out_;
}

std::string ray_process::stderr_text() const {
  std::lock_guard lock(mu_);
  return err_;
}

std::string ray_process::output() const {
  std::lock_guard lock(mu_);
  return "--- stdout ---\n" + out_ + "\n--- stderr ---\n" + err_ + "\n--- end ---";
}

std::vector<log_line> ray_process::lines() const {
  std::lock_guard lock(mu_);
  return lines_;
}

std::vector<boost::json::object> ray_process::json_lines() const {
  std::vector<boost::json::object> out;
  for (auto const& l : lines()) {
    if (auto o = parse_log_line(l.text)) out.push_back(std::move(*o));
  }
  return out;
}

std::optional<std::string> ray_process::wait_for_log(std::function<bool(std::string_view)> const& pred,
                                                     deadline until) {
  std::unique_lock lock(mu_);
  std::size_t checked = 0;
  for (;;) {
    for (; checked < lines_.size(); ++checked) {
      if (pred(lines_[checked].text)) return lines_[checked].text;
    }
    if (pipes_closed_) return std::nullopt;
    if (cv_.wait_until(lock, until) == std::cv_status::timeout && checked == lines_.size()) {
      return std::nullopt;
    }
  }
}

std::optional<std::string> ray_process::wait_for_log(std::string_view substring, deadline until) {
  std::string needle(substring);
  return wait_for_log([&](std::string_view line) { return line.find(needle) != std::string_view::npos; },
                      until);
}

std::optional<boost::json::object> ray_process::wait_for_json(
    std::function<bool(boost::json::object const&)> const& pred, deadline until) {
  std::optional<boost::json::object> found;
  wait_for_log(
      [&](std::string_view line) {
        auto o = parse_log_line(line);
        if (!o || !pred(*o)) return false;
        found = std::move(*o);
        return true;
      },
      until);
  return found;
}

std::optional<std::uint16_t> ray_process::wait_listening(deadline until) {
  auto line = wait_for_json(
      [](boost::json::object const& o) {
        if (string_field(o, "message") != "gateway listening") return false;
        auto const* p = o.if_contains("port");
        return p != nullptr && p->is_int64() && p->as_int64() > 0 && p->as_int64() <= 65535;
      },
      until);
  if (!line) return std::nullopt;
  return static_cast<std::uint16_t>(line->at("port").as_int64());
}

bool ray_process::signal(int sig) {
  {
    std::lock_guard lock(mu_);
    if (exit_status_) return false;
  }
  return ::kill(pid_, sig) == 0;
}

std::optional<int> ray_process::wait_exit(deadline until) {
  std::unique_lock lock(mu_);
  // Also wait for the pipes to drain, so the output is complete when the caller inspects it (a grandchild
  // still holding them open only delays this until the deadline).
  cv_.wait_until(lock, until, [&] { return exit_status_.has_value() && pipes_closed_; });
  return exit_status_;
}

std::optional<steady::time_point> ray_process::exited_at() const {
  std::lock_guard lock(mu_);
  return exited_at_;
}

bool ray_process::has_exited() const {
  std::lock_guard lock(mu_);
  return exit_status_.has_value();
}

int free_loopback_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

}  // namespace ray::test
