// ray::test::ray_process — runs a binary (normally the real `ray`) as a child in its own process group,
// captures its stdout and stderr line by line, and lets a test wait for log lines, the bound port and the
// exit status against a deadline (never by sleeping). The child is killed (SIGKILL to its group) when the
// object dies.
//
// Also: temp_dir (a private directory removed with its contents) and the JSON-log-line helpers.
// Thread-safety: one test thread drives a ray_process; its reader/reaper threads are internal.
#pragma once

#include <boost/json/object.hpp>

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace ray::test {

using steady = std::chrono::steady_clock;
using deadline = steady::time_point;

// A loopback TCP port that was free a moment ago (bound to port 0 and closed again).
int free_loopback_port();

// now + d, the way tests state deadlines: `in(std::chrono::seconds(10))`.
inline deadline in(steady::duration d) {
  return steady::now() + d;
}

// A fresh directory under $TMPDIR (or /tmp), removed recursively by the destructor.
class temp_dir {
 public:
  temp_dir();
  ~temp_dir();
  temp_dir(temp_dir const&) = delete;
  temp_dir& operator=(temp_dir const&) = delete;

  std::filesystem::path const& path() const { return path_; }
  // Writes `text` to path()/name and returns the full path.
  std::filesystem::path write_file(std::string const& name, std::string_view text) const;

 private:
  std::filesystem::path path_;
};

// Writes a config JSON file (the object serialized) into `dir` and returns its path.
std::filesystem::path write_config(temp_dir const& dir, boost::json::object const& config,
                                   std::string const& name = "ray.json");

// Parses one log line as a JSON object; nullopt when it is not one.
std::optional<boost::json::object> parse_log_line(std::string_view line);

// The string field `key` of a JSON object, or "" when absent / not a string.
std::string string_field(boost::json::object const& o, std::string_view key);

enum class stream { out, err };

struct log_line {
  stream from{stream::out};
  std::string text;  // without the trailing newline
};

struct spawn_options {
  std::string binary;
  std::vector<std::string> args;                           // argv[1..]
  std::vector<std::pair<std::string, std::string>> env{};  // added to / overriding the inherited environment
  bool inherit_ray_env{false};  // keep inherited RAY_* variables (default: drop them)
  std::optional<std::filesystem::path> working_directory{};  // default: the test's working directory
};

class ray_process {
 public:
  // Starts the child. Throws std::runtime_error when it cannot be spawned.
  explicit ray_process(spawn_options options);
  ~ray_process();  // SIGKILL to the process group, reap, join the threads
  ray_process(ray_process const&) = delete;
  ray_process& operator=(ray_process const&) = delete;

  pid_t pid() const { return pid_; }

  // Everything captured so far.
  std::string stdout_text() const;
  std::string stderr_text() const;
  std::string output() const;  // stdout then stderr, each labelled, for failure messages
  std::vector<log_line> lines() const;
  // Every complete line (either stream) that parses as a JSON object.
  std::vector<boost::json::object> json_lines() const;

  // Waits until a complete line on either stream satisfies `pred` (lines already captured count); returns it.
  // nullopt at the deadline or when the process exited and its pipes closed without such a line.
  std::optional<std::string> wait_for_log(std::function<bool(std::string_view)> const& pred, deadline until);
  std::optional<std::string> wait_for_log(std::string_view substring, deadline until);
  // The same on the JSON lines: waits until one satisfies `pred`.
  std::optional<boost::json::object> wait_for_json(
      std::function<bool(boost::json::object const&)> const& pred, deadline until);

  // Waits for `{"message":"gateway listening",...,"port":N}` and returns N.
  std::optional<std::uint16_t> wait_listening(deadline until);

  // kill(pid, sig) on the child itself (not its group). False when it already exited.
  bool signal(int sig);

  // The exit status once the child exited before `until`: its exit code, or -N when killed by signal N. Also
  // waits (within the deadline) until its output pipes are drained, so stdout_text()/stderr_text() are then
  // complete.
  std::optional<int> wait_exit(deadline until);
  // When the child exited (set once wait_exit / has_exited observed it).
  std::optional<steady::time_point> exited_at() const;
  bool has_exited() const;

 private:
  void read_loop(int out_fd, int err_fd);
  void reap_loop();
  void append(stream s, char const* data, std::size_t n);  // under mu_

  pid_t pid_{-1};
  int wake_read_{-1};
  int wake_write_{-1};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string out_;
  std::string err_;
  std::string out_partial_;
  std::string err_partial_;
  std::vector<log_line> lines_;
  bool pipes_closed_{false};
  std::optional<int> exit_status_;
  std::optional<steady::time_point> exited_at_;

  std::thread reader_;
  std::thread reaper_;
};

}  // namespace ray::test
