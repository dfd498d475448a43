// ray::system — the pressure signals of the host as Ray sees them (cgroup v2/v1 files, PSI, process RSS) and
// the degradation decision made from them (spec/serving-core.md "Degradation and shedding"). No Asio.
//
//   ray::system::sampler s({.watch_cgroups = cfg.graceful_degradation.watch_cgroups});
//   s.set_backend_pid(supervised_pid);                       // optional
//   snapshot const& snap = s.sample(clock.now());            // re-reads at most every 250 ms
//   decision d = ray::system::evaluate(snap, cfg.graceful_degradation, queue_depth);
//   if (d.shed) → 503 overloaded; else if (d.clamp_to) → clamp max tokens, report d.reasons.
//
// Filesystem seam: every path is read below `root` (default "/"), so tests point it at a fixture tree.
// Every reader tolerates missing, unreadable, oversized (> max_file_bytes) or garbled files: the field is
// absent (std::nullopt), never an exception or a crash. Reads are small blocking reads of procfs/cgroupfs
// files (a few dozen per sample, each ≤ 64 KiB); callers sample on a timer or at most every 250 ms, never per
// request.
//
// Thread-safety: the parse functions and evaluate() are pure and reentrant; a sampler is not thread-safe.
#pragma once

#include "ray/config/config.hpp"
#include "ray/core/core.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ray::system {

// ---------------------------------------------------------------------------------------------------------------
// Parsed file contents

// One PSI line: "some avg10=0.12 avg60=0.05 avg300=0.01 total=12345" (avg… are percentages 0–100, total µs).
struct psi_line {
  double avg10{0};
  double avg60{0};
  double avg300{0};
  std::uint64_t total_us{0};
  friend bool operator==(psi_line const&, psi_line const&) = default;
};

// A PSI file (memory.pressure, cpu.pressure, /proc/pressure/*). Either line may be absent (older kernels have
// no "full" line for cpu) or garbled (then that line is absent).
struct psi {
  std::optional<psi_line> some{};
  std::optional<psi_line> full{};
  friend bool operator==(psi const&, psi const&) = default;
};

// memory.events counters (cumulative since the cgroup was created). v1 only knows oom_kill
// (memory.oom_control).
struct memory_events {
  std::uint64_t low{0};
  std::uint64_t high{0};
  std::uint64_t max{0};
  std::uint64_t oom{0};
  std::uint64_t oom_kill{0};
  friend bool operator==(memory_events const&, memory_events const&) = default;
};

// cpu.stat throttling counters (cumulative). v1's throttled_time (ns) is converted to µs.
struct cpu_throttling {
  std::uint64_t nr_periods{0};
  std::uint64_t nr_throttled{0};
  std::uint64_t throttled_usec{0};
  friend bool operator==(cpu_throttling const&, cpu_throttling const&) = default;
};

// memory.high / memory.max value "max" (and v1's huge "unlimited" limit).
inline constexpr std::uint64_t unlimited = ~std::uint64_t{0};

// Parsers, exposed for tests and for `ray doctor`. All return nullopt on anything unexpected.
namespace parse {
std::optional<psi> psi_file(std::string_view text);
// A single unsigned integer ("12345\n"); "max" gives `unlimited` when allow_max.
std::optional<std::uint64_t> single_value(std::string_view text, bool allow_max = false);
// The value of `key` in a flat-keyed file ("key value" lines: memory.events, cpu.stat, memory.oom_control).
std::optional<std::uint64_t> keyed_value(std::string_view text, std::string_view key);
// Resident bytes from /proc/<pid>/statm (second field, in pages).
std::optional<std::uint64_t> statm_rss_bytes(std::string_view text, std::uint64_t page_size);
}  // namespace parse

// ---------------------------------------------------------------------------------------------------------------
// Samples

// Everything read from one cgroup in one sample (cumulative counters plus deltas against the previous sample
// of the same cgroup path). Sizes in bytes.
struct cgroup_reading {
  std::string path;   // relative to the cgroup mount, always starting with "/"
  bool own{false};    // Ray's own cgroup (it also holds a supervised backend)
  bool found{false};  // at least one file of it was read
  bool v2{false};     // files were read from the unified (v2) hierarchy
  bool v1{false};     // files were read from a v1 controller hierarchy (memory, cpu)
  std::optional<std::uint64_t> memory_current{};
  std::optional<std::uint64_t> memory_high{};  // `unlimited` when "max"
  std::optional<std::uint64_t> memory_max{};   // `unlimited` when "max" (v1: memory.limit_in_bytes)
  std::optional<std::uint64_t> swap_current{};
  std::optional<memory_events> events{};  // cumulative
  memory_events new_events{};             // since the previous sample (zero on the first)
  std::optional<psi> memory_psi{};
  std::optional<psi> cpu_psi{};
  std::optional<cpu_throttling> cpu{};      // cumulative (only when the cpu controller reports periods)
  std::optional<double> throttled_ratio{};  // Δnr_throttled / Δnr_periods; absent on the first sample
  std::uint64_t new_throttled_usec{0};      // Δthrottled_usec

  // min(memory.high, memory.max) when at least one is a real limit.
  std::optional<std::uint64_t> limit() const noexcept;
  // memory_current / limit().
  std::optional<double> usage_ratio() const noexcept;
};

// What /health and the degradation policy need. "Worst value counts": across Ray's own cgroup and the watched
// ones, each summary field is the maximum (event deltas: the sum). MiB are 2^20 bytes.
struct snapshot {
  ray::clock::time_point taken_at{};
  bool taken{false};  // false until the first sample

  // What was read, for /health `sources`: "rss:self", "rss:pid/<n>", "cgroup2:<path>", "cgroup1:<path>",
  // "psi:host/memory", "psi:host/cpu" — in that order.
  std::vector<std::string> sources{};
  std::string cgroup{};  // Ray's own cgroup path ("" when unknown or nothing of it was readable)
  std::vector<cgroup_reading> cgroups{};  // own first, then watchCgroups in config order

  std::optional<double> process_rss_mib{};  // Ray's own RSS
  std::optional<double> backend_rss_mib{};  // the supervised backend's RSS (when a pid is set and readable)
  std::optional<double> rss_mib{};          // Ray + backend: what memoryRssThresholdMiB is compared with

  // The cgroup with the highest usage/limit ratio (or Ray's own when none has a limit).
  std::optional<double> cgroup_current_mib{};
  std::optional<double> cgroup_limit_mib{};
  std::optional<double> cgroup_usage_ratio{};
  std::optional<double> swap_current_mib{};  // max over cgroups

  // Pressure stall averages (percent). From the cgroups' files when any has one, else the host's.
  std::optional<double> memory_psi_some_avg10{};
  std::optional<double> memory_psi_full_avg10{};
  bool memory_psi_from_host{false};
  std::optional<double> cpu_psi_some_avg10{};
  std::optional<double> cpu_psi_full_avg10{};
  bool cpu_psi_from_host{false};

  std::optional<double> cpu_throttled_ratio{};  // max over cgroups; absent until two samples with periods

  // Events since the previous sample, summed over cgroups.
  std::uint64_t new_oom_events{0};   // oom + oom_kill
  std::uint64_t new_high_events{0};  // memory.high breaches
  std::uint64_t new_max_events{0};   // memory.max reached (reported, not a pressure reason by itself)
};

struct sampler_options {
  std::string root{"/"};
  std::vector<std::string>
      watch_cgroups{};  // gracefulDegradation.watchCgroups (relative to the cgroup mount)
  std::chrono::milliseconds min_interval{250};
  std::size_t max_file_bytes{64 * 1024};
  std::uint64_t page_size{0};  // 0 = sysconf(_SC_PAGESIZE)
};

// Reads the signals and keeps the previous counters for deltas.
//
// Cgroup discovery (every sample, so a moved process or a restarted unit is followed):
//  - <root>/proc/self/cgroup gives Ray's path: the "0::<path>" line (v2) and the "memory" / "cpu" controller
//    lines (v1).
//  - v2 files are read under <root>/sys/fs/cgroup when it is a unified mount (has cgroup.controllers), else
//    under <root>/sys/fs/cgroup/unified (hybrid hosts: pressure files only, usually).
//  - v1 files are read only for what v2 did not provide: memory.usage_in_bytes / memory.limit_in_bytes /
//    memory.oom_control under <root>/sys/fs/cgroup/memory/<path>, cpu.stat under
//    <root>/sys/fs/cgroup/cpu/<path> (or cpu,cpuacct). v1 has no readable memory pressure
//    (memory.pressure_level is an event interface).
//  - When Ray's path does not exist under the mount (a container without a cgroup namespace sees its own
//  cgroup
//    at the mount root), the mount root is used.
//  - Watched paths containing ".." are ignored.
// Host PSI (<root>/proc/pressure/memory|cpu) is read per resource only when no cgroup pressure file for that
// resource was read: host-wide PSI alone raises false alarms on shared machines.
class sampler {
 public:
  explicit sampler(sampler_options options);
  // Options from the config section (root "/").
  static sampler_options options_for(config::degradation_config const& cfg);

  // Re-reads when no sample was taken yet or `min_interval` has passed since the last one; otherwise returns
  // the cached snapshot. The reference stays valid until the next call.
  snapshot const& sample(ray::clock::time_point now);
  snapshot const& last() const noexcept { return snap_; }

  // The supervised backend's pid (its RSS is added); nullopt when there is none (or it exited).
  void set_backend_pid(std::optional<int> pid) noexcept { backend_pid_ = pid; }
  sampler_options const& options() const noexcept { return options_; }

 private:
  void read(ray::clock::time_point now);

  sampler_options options_;
  std::optional<int> backend_pid_{};
  snapshot snap_{};
  struct previous {
    std::optional<memory_events> events;
    std::optional<cpu_throttling> cpu;
  };
  std::map<std::string, previous> previous_{};  // by cgroup path; only the cgroups of the last sample
};

// ---------------------------------------------------------------------------------------------------------------
// The box (`ray tune`, `ray doctor`, `ray deploy render`)

// A small file read whole: nullopt when missing, unreadable, not a regular file or larger than max_bytes
// (procfs/cgroupfs report size 0, so the bound is enforced while reading; O_NONBLOCK against planted FIFOs).
std::optional<std::string> read_small_file(std::string const& path, std::size_t max_bytes = 64 * 1024);

// Memory and CPU of the box as a process in Ray's cgroup sees them, read below `root` like the sampler.
struct host_resources {
  std::optional<std::uint64_t> mem_total{};      // /proc/meminfo MemTotal, bytes
  std::optional<std::uint64_t> mem_available{};  // MemAvailable
  std::optional<std::uint64_t> swap_total{};     // SwapTotal
  std::optional<std::uint64_t> swap_free{};      // SwapFree
  std::string cgroup{};                          // Ray's own cgroup path ("" when unknown)
  std::optional<std::uint64_t> cgroup_limit{};   // min(memory.high, memory.max) of that cgroup, when limited
  bool cgroup_v2{false};                         // the unified hierarchy was read
  bool memory_pressure_file{false};              // the cgroup's memory.pressure was readable (PSI works)
  unsigned online_cpus{0};                       // CPUs this process may run on (affinity; 0 = unknown)
  std::optional<double> cgroup_cpus{};           // cpu.max quota / period, when a quota is set
  // min(mem_total, cgroup_limit) and where it came from ("MemTotal in /proc/meminfo", "cgroup memory.max of
  // /system.slice/ray-gateway.service"); nullopt when neither is readable.
  std::optional<std::uint64_t> ram_bytes() const noexcept;
  std::string ram_source() const;
  // The whole CPUs available: min(online, floor(cgroup quota)), at least 1; 0 when nothing is known.
  unsigned cores() const noexcept;
};
// Reads <root>/proc/meminfo, <root>/proc/self/cgroup and the cgroup's memory and cpu.max files; CPU affinity
// (sched_getaffinity) only when root is "/" (a fixture tree says nothing about this machine's CPUs: then
// <root>/proc/cpuinfo's "processor" lines are counted).
host_resources read_host_resources(std::string const& root = "/");

// ---------------------------------------------------------------------------------------------------------------
// Decision

// Which signal made a resource count as under pressure (for logs and metrics labels).
struct memory_signals {
  bool rss{false};           // rss_mib > memoryRssThresholdMiB
  bool cgroup_ratio{false};  // cgroup usage/limit > memoryCgroupPressureRatioThreshold
  bool psi_some{false};      // memory PSI some avg10 > memoryPsiSomeAvg10Threshold
  bool psi_full{false};      // memory PSI full avg10 > memoryPsiFullAvg10Threshold
  bool events{false};        // new oom / oom_kill / high events since the previous sample
  friend bool operator==(memory_signals const&, memory_signals const&) = default;
};
struct cpu_signals {
  bool throttled{false};  // throttled ratio > cpuThrottledRatioThreshold
  bool psi_some{false};   // cpu PSI some avg10 > cpuPsiSomeAvg10Threshold
  bool psi_full{false};   // cpu PSI full avg10 > cpuPsiFullAvg10Threshold
  friend bool operator==(cpu_signals const&, cpu_signals const&) = default;
};

// Wire names of the reasons decided here (the runtime adds "prompt_length" in front, per request).
inline constexpr std::string_view reason_queue_depth = "queue_depth";
inline constexpr std::string_view reason_memory_pressure = "memory_pressure";
inline constexpr std::string_view reason_cpu_pressure = "cpu_pressure";

struct decision {
  std::vector<std::string_view> reasons{};  // ordered subset of: queue_depth, memory_pressure, cpu_pressure
  bool queue_pressure{false};               // queue_depth >= queueDepthThreshold
  bool memory_pressure{false};
  bool cpu_pressure{false};
  // Memory PSI full avg10 > shedAtMemoryPsiFullAvg10: refuse new work with 503 `overloaded` (not degrade).
  bool shed{false};
  // degradeToMaxTokens when any reason applies: the max tokens a (non-JSON, non-tool) request is clamped to.
  std::optional<std::uint32_t> clamp_to{};
  memory_signals memory{};
  cpu_signals cpu{};

  bool degraded() const noexcept { return !reasons.empty(); }
};

// The degradation decision for new work. Comparisons are strict ("over the threshold") except the queue depth
// (depth >= threshold). Absent signals never count. With cfg.enabled == false: no reasons, no shedding.
decision evaluate(snapshot const& snap, config::degradation_config const& cfg, std::uint32_t queue_depth);

}  // namespace ray::system
