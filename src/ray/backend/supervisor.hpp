// ray::backend supervisor — starts llama-server as Ray's child and keeps it alive (spec/backends.md
// "Attaching and supervising"). Used by `ray serve --model-path` / `launchProfile.supervise: true`;
// production runs llama-server in its own systemd unit instead.
//
// What it does, in order, for a fresh start (start(), or reset() after `failed`):
//  1. Memory fit: reads the GGUF header of `model_path` and compares gguf::estimate_memory (weights + KV for
//     ctxSize + cache RAM + headroom) with the limit (read_memory_limit, or `memory_limit_bytes`). Too big →
//     `failed` with gguf::refusal_message ("needs about X MiB, limit Y MiB (…)") and nothing is spawned.
//  2. Port: a bind test on host:port. Busy → GET /props there; a llama-server whose `model_path` is the same
//     file is ADOPTED (reported as `starting`, never spawned, never signalled; if its port becomes free later
//     the supervisor spawns its own); anything else → `failed` with a message naming the port.
//  3. Spawn: fork + execve (argv/envp built before the fork; the child only calls async-signal-safe
//  functions:
//     setpgid(0,0), prctl(PR_SET_PDEATHSIG, SIGTERM), signal mask/dispositions reset, dup2, execve; an exec
//     failure comes back through a close-on-exec pipe). stdin is /dev/null; stdout and stderr share one pipe;
//     the environment is Ray's without its RAY_* variables, plus `env`. No other descriptor of Ray is
//     inherited. Logged with the command line (values of --api-key/--hf-token redacted); reported as
//     `starting`.
//  4. Output: every line goes to the logger at info as {"message":"backend output","src":"backend",
//     "line":…} (≤ max_lines_per_second; lines over the rate are counted and summarised in one warn line per
//     second, {"src":"backend","dropped":N}); the last `keep_lines` lines are kept (last_lines()) and logged
//     in one warn line ("lastLines") when the child exits unexpectedly.
//  5. Loading: "llama-server still loading after N s" every loading_log_interval until mark_ready(); at
//     load_timeout the process group is SIGKILLed and the supervisor goes `failed` (a failed start).
//  6. Exit (seen through pidfd_open + a stream_descriptor, then waitpid; remaining group members are
//     SIGKILLed): `restarting` with a respawn after base × 2^n (1 s, 2 s, 4 s … ≤ cap; n resets when the
//     child was marked ready), or `failed` when: more than crash_loop_exits exits within crash_loop_window;
//     the child was SIGKILLed and the cgroup's memory.events `oom_kill` count grew during its life (an OOM
//     kill — without a readable memory.events a SIGKILL is an ordinary exit); execve failed; the binary was
//     not found. `failed` lasts until reset() (SIGHUP) or start() after stop().
//
// Integration with the llama.cpp adapter (done by the owner of remote.cpp):
//  - on_state() reports only the supervisor's states: `starting` (spawned or adopted; the adapter's /health
//    probes take over from there: loading → warming → ready), `restarting` (the process exited; a respawn is
//    scheduled — show this instead of `unreachable`) and `failed` (gave up; the reason is the operator's
//    message). The reason string is human-readable and already logged.
//  - The adapter calls mark_ready() on its first /health 200 after a `starting` report; it returns the load
//    time (spawn → ready) in ms for details.load_ms, stops the "still loading" lines and the load timeout.
//  - restarts() counts respawns; spawned_at() is the time of the last spawn.
//  - On shutdown call stop(cb) and wait for cb before destroying the io_context: SIGTERM to the process
//  group,
//    SIGKILL after stop_grace. The destructor SIGKILLs (and reaps) a child that is still running.
//
// Threading: a supervisor lives on one executor that must be serialized (a strand, or an io_context run by
// one thread); call every member from it. Callbacks run on it. Note that PR_SET_PDEATHSIG fires when the
// THREAD that forked exits: call start()/reset() (spawns also happen from the executor's handlers) only from
// threads that live as long as Ray (the io_context threads do).
// Blocking work: start()/reset() read the GGUF header and a few /proc and cgroup files synchronously (small
// and bounded; once per fresh start, not per respawn).
#pragma once

#include "ray/backend/backend.hpp"
#include "ray/config/config.hpp"
#include "ray/gguf/gguf.hpp"
#include "ray/telemetry/telemetry.hpp"

#include <boost/asio/any_io_executor.hpp>

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ray::backend {

struct supervisor_options {
  // --- what to run
  std::string binary{"llama-server"};  // a name without '/' is looked up on $PATH at each spawn
  std::string fallback_binary{};    // tried (on $PATH) when `binary` is missing or not executable; "" = none
  std::vector<std::string> args{};  // argv after the binary (llama_server_args)
  std::vector<std::string> env{};   // "NAME=value" entries added to (or replacing in) Ray's environment

  // --- pre-spawn checks
  std::string model_path{};  // GGUF for the memory check and the adoption match; "" = no memory check
  std::string host{"127.0.0.1"};
  std::uint16_t port{0};            // 0 = no port check and no adoption
  gguf::memory_request memory{};    // ctx_size and cache_ram_mib of the launch profile
  bool cache_ram_unlimited{false};  // cacheRamMiB -1: counted as 0 in the estimate, with a warning
  // A fixed memory limit (tests, operators); unset = read_memory_limit(fs_root, cgroup_dir).
  std::optional<std::uint64_t> memory_limit_bytes{};
  std::string fs_root{};     // prefix for /proc and /sys/fs/cgroup ("" = the real ones); for tests
  std::string cgroup_dir{};  // cgroup directory with memory.max/memory.events; "" = Ray's own (the child
                             // stays in Ray's cgroup), found through <fs_root>/proc/self/cgroup

  // --- timing (defaults are the spec's; tests shrink them)
  std::chrono::milliseconds stop_grace{10'000};  // SIGTERM → SIGKILL
  std::chrono::milliseconds backoff_base{1'000};
  std::chrono::milliseconds backoff_cap{30'000};
  std::uint32_t crash_loop_exits{5};                     // more than this many exits …
  std::chrono::milliseconds crash_loop_window{300'000};  // … within this window → failed
  std::chrono::milliseconds load_timeout{300'000};       // launchProfile.loadTimeoutMs
  std::chrono::milliseconds loading_log_interval{10'000};
  std::chrono::milliseconds adopt_probe_timeout{2'000};     // GET /props on a busy port
  std::chrono::milliseconds adopted_check_interval{2'000};  // is the adopted server's port still taken?

  // --- output
  std::uint32_t max_lines_per_second{20};
  std::size_t keep_lines{50};
  std::size_t max_line_bytes{4096};  // longer lines are cut (marked with "…")
};

// Options for a launch profile: binary = binary_override, else profile.binaryPath (with "llama-server" on
// PATH as the fallback when that file is missing: the profiles' default /usr/local/bin/llama-server is often
// not where a development box has it), else "llama-server" on PATH; args = llama_server_args(profile,
// model_path_override, kind, pooling); model path, host, port, ctx size, cache RAM and load timeout from the
// profile.
supervisor_options supervisor_options_for(config::launch_profile const& profile,
                                          std::string const& model_path_override = "",
                                          std::string const& binary_override = "",
                                          config::model_kind kind = config::model_kind::chat,
                                          std::optional<std::string> const& pooling = std::nullopt);

// The memory llama-server may use: the smallest of the cgroup memory.max values from `cgroup_dir` up to the
// cgroup mount (when cgroup_dir is given explicitly: that directory only) and MemAvailable from
// <fs_root>/proc/meminfo. `source` names where the figure came from, e.g. "cgroup memory.max of
// /sys/fs/cgroup/system.slice/ray.service" or "MemAvailable in /proc/meminfo". nullopt when neither is
// readable.
struct memory_limit {
  std::uint64_t bytes{0};
  std::string source;
};
std::optional<memory_limit> read_memory_limit(std::string const& fs_root, std::string const& cgroup_dir = "");
// Ray's cgroup v2 directory: <fs_root>/sys/fs/cgroup + the "0::" path of <fs_root>/proc/self/cgroup; "" when
// there is none (cgroup v1 only, or unreadable).
std::string own_cgroup_dir(std::string const& fs_root);
// The `oom_kill` count of <cgroup_dir>/memory.events; nullopt when unreadable.
std::optional<std::uint64_t> read_oom_kill_count(std::string const& cgroup_dir);

class supervisor {
 public:
  // (state, reason): starting | restarting | failed, see the top of this header.
  using state_fn = std::function<void(state, std::string const&)>;

  // `log` must outlive the supervisor. Nothing happens until start().
  supervisor(boost::asio::any_io_executor ex, supervisor_options opts, telemetry::logger& log);
  // SIGKILLs and reaps a child that is still running; no callback runs afterwards.
  ~supervisor();
  supervisor(supervisor const&) = delete;
  supervisor& operator=(supervisor const&) = delete;

  // Set before start(). Runs synchronously inside start()/reset() for a refusal found there (memory fit,
  // unreadable model), later from the executor's handlers.
  void on_state(state_fn fn);

  // A fresh start (checks, then spawn or adopt). Ignored unless idle, stopped or failed.
  void start();
  // SIGTERM to the process group, SIGKILL after stop_grace; cancels pending respawns. `on_stopped` runs (on
  // the executor) once no child is left — at once (posted) when none is running. An adopted server is left
  // alone.
  void stop(std::function<void()> on_stopped = {});
  // SIGHUP: after `failed`, a fresh start; otherwise clears the crash-loop history and the back-off.
  void reset();
  // The adapter saw /health 200: returns the load time (spawn → now) in ms the first time for this child,
  // nullopt otherwise (already marked, adopted, nothing running).
  std::optional<double> mark_ready();

  // The last state reported (unknown before start) and its reason.
  state current_state() const noexcept;
  std::string const& reason() const noexcept;
  // The running child's pid (= its process group id); nullopt when none runs (also when adopted).
  std::optional<pid_t> pid() const noexcept;
  bool adopted() const noexcept;
  // Time of the last spawn; load time of the current child once marked ready.
  std::optional<std::chrono::steady_clock::time_point> spawned_at() const noexcept;
  std::optional<double> load_ms() const noexcept;
  // The child's last output lines (at most keep_lines, oldest first), kept across exits until the next spawn.
  std::vector<std::string> last_lines() const;
  // Respawns after an exit since construction.
  std::uint32_t restarts() const noexcept;
  // Output lines not forwarded to the log because of the rate limit.
  std::uint64_t dropped_lines() const noexcept;
  // The last memory estimate (nullopt before a check, or when there is no model path).
  std::optional<gguf::memory_estimate> estimate() const noexcept;

  struct impl;

 private:
  std::shared_ptr<impl> impl_;
};

}  // namespace ray::backend
