#include "ray/system/system.hpp"

namespace ray::system {

namespace {
bool over(std::optional<double> v, double threshold) noexcept {
  return v && *v > threshold;
}
}  // namespace

decision evaluate(snapshot const& snap, config::degradation_config const& cfg, std::uint32_t queue_depth) {
  decision d;
  if (!cfg.enabled) return d;

  d.queue_pressure = queue_depth >= cfg.queue_depth_threshold;

  // Ray's own RSS, as the TypeScript gateway's thresholds were set for (sub1b: 512 MiB). A supervised
  // backend's RSS is reported in the snapshot, but a 0.5B model alone is ~600 MiB resident: adding it would
  // keep every request clamped. The backend's memory shows up through its cgroup's usage ratio and PSI
  // instead.
  d.memory.rss = over(snap.process_rss_mib, static_cast<double>(cfg.memory_rss_threshold_mib));
  d.memory.cgroup_ratio = over(snap.cgroup_usage_ratio, cfg.memory_cgroup_pressure_ratio_threshold);
  d.memory.psi_some = over(snap.memory_psi_some_avg10, cfg.memory_psi_some_avg10_threshold);
  d.memory.psi_full = over(snap.memory_psi_full_avg10, cfg.memory_psi_full_avg10_threshold);
  d.memory.events = snap.new_oom_events > 0 || snap.new_high_events > 0;
  d.memory_pressure =
      d.memory.rss || d.memory.cgroup_ratio || d.memory.psi_some || d.memory.psi_full || d.memory.events;

  d.cpu.throttled = over(snap.cpu_throttled_ratio, cfg.cpu_throttled_ratio_threshold);
  d.cpu.psi_some = over(snap.cpu_psi_some_avg10, cfg.cpu_psi_some_avg10_threshold);
  d.cpu.psi_full = over(snap.cpu_psi_full_avg10, cfg.cpu_psi_full_avg10_threshold);
  d.cpu_pressure = d.cpu.throttled || d.cpu.psi_some || d.cpu.psi_full;

  d.shed = over(snap.memory_psi_full_avg10, cfg.shed_at_memory_psi_full_avg10);

  if (d.queue_pressure) d.reasons.push_back(reason_queue_depth);
  if (d.memory_pressure) d.reasons.push_back(reason_memory_pressure);
  if (d.cpu_pressure) d.reasons.push_back(reason_cpu_pressure);
  if (!d.reasons.empty()) d.clamp_to = cfg.degrade_to_max_tokens;
  return d;
}

}  // namespace ray::system
