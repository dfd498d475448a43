// The box as `ray tune`, `ray doctor` and `ray deploy render` see it (system.hpp "The box"): RAM, swap, the
// cgroup memory limit and the usable CPUs. The cgroup part reuses the sampler (one way of finding Ray's
// cgroup, v1/v2/hybrid handled once); only meminfo and cpu.max are read here.
#include "ray/system/system.hpp"

#include <sched.h>

#include <charconv>
#include <cmath>

namespace ray::system {

namespace {

std::string join(std::string const& root, std::string_view rel) {
  std::string out = root;
  if (!out.empty() && out.back() == '/') out.pop_back();
  out += '/';
  out.append(rel);
  return out;
}

// "MemTotal:       16384 kB" → bytes.
std::optional<std::uint64_t> meminfo_bytes(std::string_view text, std::string_view key) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    auto end = text.find('\n', pos);
    auto line = text.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    pos = end == std::string_view::npos ? text.size() : end + 1;
    if (!line.starts_with(key) || line.size() <= key.size() || line[key.size()] != ':') continue;
    auto rest = trim(line.substr(key.size() + 1));
    std::uint64_t v = 0;
    auto [p, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), v);
    if (ec != std::errc{}) return std::nullopt;
    auto unit = trim(std::string_view(p, static_cast<std::size_t>(rest.data() + rest.size() - p)));
    if (unit == "kB") return v * 1024;
    if (unit.empty()) return v;
    return std::nullopt;
  }
  return std::nullopt;
}

// cgroup v2 cpu.max: "<quota> <period>" or "max <period>".
std::optional<double> cpu_quota(std::string_view text) {
  text = trim(text);
  auto space = text.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  auto q = text.substr(0, space);
  auto per = trim(text.substr(space + 1));
  if (q == "max") return std::nullopt;
  std::uint64_t quota = 0, period = 0;
  if (std::from_chars(q.data(), q.data() + q.size(), quota).ec != std::errc{} ||
      std::from_chars(per.data(), per.data() + per.size(), period).ec != std::errc{} || period == 0)
    return std::nullopt;
  return static_cast<double>(quota) / static_cast<double>(period);
}

unsigned count_processors(std::string_view cpuinfo) {
  unsigned n = 0;
  std::size_t pos = 0;
  while ((pos = cpuinfo.find("processor", pos)) != std::string_view::npos) {
    if (pos == 0 || cpuinfo[pos - 1] == '\n') ++n;
    pos += 9;
  }
  return n;
}

}  // namespace

std::optional<std::uint64_t> host_resources::ram_bytes() const noexcept {
  if (mem_total && cgroup_limit) return std::min(*mem_total, *cgroup_limit);
  return mem_total ? mem_total : cgroup_limit;
}

std::string host_resources::ram_source() const {
  if (cgroup_limit && (!mem_total || *cgroup_limit < *mem_total))
    return "the memory limit of cgroup " + (cgroup.empty() ? std::string("/") : cgroup);
  if (mem_total) return "MemTotal in /proc/meminfo";
  return "unknown";
}

unsigned host_resources::cores() const noexcept {
  unsigned n = online_cpus;
  if (cgroup_cpus) {
    auto const quota = static_cast<unsigned>(std::max(1.0, std::floor(*cgroup_cpus)));
    n = n == 0 ? quota : std::min(n, quota);
  }
  return n;
}

host_resources read_host_resources(std::string const& root) {
  host_resources h;
  if (auto text = read_small_file(join(root, "proc/meminfo"))) {
    h.mem_total = meminfo_bytes(*text, "MemTotal");
    h.mem_available = meminfo_bytes(*text, "MemAvailable");
    h.swap_total = meminfo_bytes(*text, "SwapTotal");
    h.swap_free = meminfo_bytes(*text, "SwapFree");
  }

  sampler s(sampler_options{.root = root});
  auto const& snap = s.sample(ray::clock::time_point{});
  for (auto const& c : snap.cgroups) {
    if (!c.own || !c.found) continue;
    h.cgroup = c.path;
    h.cgroup_limit = c.limit();
    h.cgroup_v2 = c.v2;
    h.memory_pressure_file = c.memory_psi.has_value();
    if (c.v2) {
      std::string dir = join(root, "sys/fs/cgroup");
      if (c.path != "/") dir += c.path;
      if (auto text = read_small_file(dir + "/cpu.max")) h.cgroup_cpus = cpu_quota(*text);
    }
  }
  if (h.cgroup.empty()) h.cgroup = snap.cgroup;

  if (root == "/" || root.empty()) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) == 0) h.online_cpus = static_cast<unsigned>(CPU_COUNT(&set));
  } else if (auto text = read_small_file(join(root, "proc/cpuinfo"), 1024 * 1024)) {
    h.online_cpus = count_processors(*text);
  }
  return h;
}

}  // namespace ray::system
