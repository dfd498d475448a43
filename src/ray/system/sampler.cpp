#include "ray/system/system.hpp"

#include <algorithm>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ray::system {

namespace {

constexpr double mib = 1024.0 * 1024.0;
// v1 reports "no limit" as LONG_MAX rounded down to a page (9223372036854771712); anything this large is no
// limit.
constexpr std::uint64_t v1_unlimited_from = std::uint64_t{1} << 62;

// Reads at most `max` bytes; nullopt when the file is missing, unreadable, not a regular-looking file, or
// larger than `max` (procfs and cgroupfs report size 0, so the bound is enforced while reading). O_NONBLOCK:
// a FIFO planted in a fixture (or a hostile tree) must not block the loop.
std::optional<std::string> read_bounded(std::string const& path, std::size_t max) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return std::nullopt;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return std::nullopt;
  }
  std::string out;
  out.resize(std::min<std::size_t>(max + 1, 4096));
  std::size_t used = 0;
  for (;;) {
    if (used == out.size()) {
      if (out.size() > max) break;
      out.resize(std::min<std::size_t>(out.size() * 2, max + 1));
    }
    ssize_t n = ::read(fd, out.data() + used, out.size() - used);
    if (n < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    used += static_cast<std::size_t>(n);
  }
  ::close(fd);
  if (used > max) return std::nullopt;
  out.resize(used);
  return out;
}

bool is_dir(std::string const& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool exists(std::string const& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string join(std::string const& base, std::string_view rel) {
  std::string out = base;
  if (!out.empty() && out.back() == '/') out.pop_back();
  if (rel.empty() || rel.front() != '/') out.push_back('/');
  out.append(rel);
  return out;
}

// "/a/b" form: leading slash, no trailing slash (except the root), no empty components; nullopt for "..".
std::optional<std::string> normalize_cgroup_path(std::string_view p) {
  std::string out;
  while (!p.empty()) {
    auto slash = p.find('/');
    auto part = p.substr(0, slash);
    p.remove_prefix(slash == std::string_view::npos ? p.size() : slash + 1);
    if (part.empty() || part == ".") continue;
    if (part == "..") return std::nullopt;
    out.push_back('/');
    out.append(part);
  }
  if (out.empty()) out.push_back('/');
  return out;
}

struct layout {
  std::optional<std::string> v2;         // unified mount
  std::optional<std::string> v1_memory;  // memory controller mount
  std::optional<std::string> v1_cpu;     // cpu controller mount
};

layout detect_layout(std::string const& root) {
  layout l;
  std::string const base = join(root, "sys/fs/cgroup");
  if (exists(join(base, "cgroup.controllers"))) {
    l.v2 = base;
    return l;  // pure v2: no v1 hierarchies
  }
  if (exists(join(base, "unified/cgroup.controllers"))) l.v2 = join(base, "unified");
  if (is_dir(join(base, "memory"))) l.v1_memory = join(base, "memory");
  for (char const* name : {"cpu", "cpu,cpuacct", "cpuacct,cpu"}) {
    if (is_dir(join(base, name))) {
      l.v1_cpu = join(base, name);
      break;
    }
  }
  return l;
}

// Paths of this process from /proc/self/cgroup.
struct own_paths {
  std::optional<std::string> v2;
  std::optional<std::string> v1_memory;
  std::optional<std::string> v1_cpu;
};

own_paths parse_proc_cgroup(std::string_view text) {
  own_paths out;
  while (!text.empty()) {
    auto nl = text.find('\n');
    auto line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    auto c1 = line.find(':');
    if (c1 == std::string_view::npos) continue;
    auto c2 = line.find(':', c1 + 1);
    if (c2 == std::string_view::npos) continue;
    auto id = line.substr(0, c1);
    auto controllers = line.substr(c1 + 1, c2 - c1 - 1);
    auto path = line.substr(c2 + 1);
    if (constexpr std::string_view deleted = " (deleted)"; path.ends_with(deleted))
      path.remove_suffix(deleted.size());
    if (path.empty() || path.front() != '/') continue;
    auto norm = normalize_cgroup_path(path);
    if (!norm) continue;
    if (id == "0" && controllers.empty()) {
      out.v2 = *norm;
      continue;
    }
    for (std::string_view cs = controllers; !cs.empty();) {
      auto comma = cs.find(',');
      auto c = cs.substr(0, comma);
      cs.remove_prefix(comma == std::string_view::npos ? cs.size() : comma + 1);
      if (c == "memory") out.v1_memory = *norm;
      if (c == "cpu") out.v1_cpu = *norm;
    }
  }
  return out;
}

// Where to read one cgroup: its directory in each hierarchy (already resolved; nullopt = not there).
struct target {
  std::string path;      // reported path (the key of the previous counters)
  std::string v2_label;  // path used under the v2 mount ("/" after a fallback)
  std::string v1_label;  // path used under the v1 mounts
  bool own{false};
  std::optional<std::string> v2_dir;
  std::optional<std::string> v1_memory_dir;
  std::optional<std::string> v1_cpu_dir;
};

// Resolves `path` under `mount`; for Ray's own cgroup a missing directory falls back to the mount root.
std::optional<std::string> resolve(std::optional<std::string> const& mount, std::string const& path, bool own,
                                   bool* used_root = nullptr) {
  if (!mount) return std::nullopt;
  std::string dir = join(*mount, path);
  if (is_dir(dir)) return dir;
  if (own && is_dir(*mount)) {
    if (used_root) *used_root = true;
    return *mount;
  }
  return std::nullopt;
}

// The same for the v2 hierarchy, minus its true root: only non-root cgroups have `cgroup.type` (a cgroup
// namespace's root is a non-root cgroup, so a container's "/" qualifies). The true root has no
// memory.current, memory.max, memory.events or throttling counters, and its pressure files are host-wide —
// which the host-PSI fallback reports as such instead of passing them off as the cgroup's.
std::optional<std::string> resolve_v2(std::optional<std::string> const& mount, std::string const& path,
                                      bool own, bool* used_root = nullptr) {
  auto dir = resolve(mount, path, own, used_root);
  if (dir && !exists(join(*dir, "cgroup.type"))) return std::nullopt;
  return dir;
}

std::uint64_t delta(std::uint64_t now, std::uint64_t before) noexcept {
  return now >= before ? now - before : now;  // a counter that went back: the cgroup was recreated
}

class reader {
 public:
  reader(std::size_t max_bytes) : max_(max_bytes) {}

  std::optional<std::string> file(std::optional<std::string> const& dir, std::string_view name) const {
    if (!dir) return std::nullopt;
    return read_bounded(join(*dir, name), max_);
  }

  cgroup_reading cgroup(target const& t) const {
    cgroup_reading r;
    r.path = t.path;
    r.own = t.own;
    if (t.v2_dir) {
      bool any = false;
      auto note = [&](std::optional<std::string> text) {
        any = any || text.has_value();
        return text;
      };
      if (auto s = note(file(t.v2_dir, "memory.current"))) r.memory_current = parse::single_value(*s);
      if (auto s = note(file(t.v2_dir, "memory.high"))) r.memory_high = parse::single_value(*s, true);
      if (auto s = note(file(t.v2_dir, "memory.max"))) r.memory_max = parse::single_value(*s, true);
      if (auto s = note(file(t.v2_dir, "memory.swap.current"))) r.swap_current = parse::single_value(*s);
      if (auto s = note(file(t.v2_dir, "memory.events"))) r.events = events_v2(*s);
      if (auto s = note(file(t.v2_dir, "memory.pressure"))) {
        r.memory_psi = parse::psi_file(*s);
        memory_psi_file_ = true;
      }
      if (auto s = note(file(t.v2_dir, "cpu.pressure"))) {
        r.cpu_psi = parse::psi_file(*s);
        cpu_psi_file_ = true;
      }
      if (auto s = note(file(t.v2_dir, "cpu.stat"))) r.cpu = cpu_stat(*s, "throttled_usec", 1);
      r.v2 = any;
    }
    if (t.v1_memory_dir && !r.memory_current) {
      bool any = false;
      if (auto s = file(t.v1_memory_dir, "memory.usage_in_bytes")) {
        any = true;
        r.memory_current = parse::single_value(*s);
      }
      if (auto s = file(t.v1_memory_dir, "memory.limit_in_bytes")) {
        any = true;
        r.memory_max = parse::single_value(*s);
        if (r.memory_max && *r.memory_max >= v1_unlimited_from) r.memory_max = unlimited;
      }
      if (auto s = file(t.v1_memory_dir, "memory.memsw.usage_in_bytes"); s && r.memory_current) {
        // swap = memory+swap usage − memory usage
        if (auto both = parse::single_value(*s); both && *both >= *r.memory_current)
          r.swap_current = *both - *r.memory_current;
      }
      if (auto s = file(t.v1_memory_dir, "memory.oom_control"); s && !r.events) {
        any = true;
        if (auto kills = parse::keyed_value(*s, "oom_kill")) r.events = memory_events{.oom_kill = *kills};
      }
      r.v1 = r.v1 || any;
    }
    if (t.v1_cpu_dir && !r.cpu) {
      if (auto s = file(t.v1_cpu_dir, "cpu.stat")) {
        r.v1 = true;
        r.cpu = cpu_stat(*s, "throttled_time", 1000);
      }
    }
    r.found = r.v1 || r.v2;
    return r;
  }

  // Whether any cgroup pressure file was read (even a garbled one): then host PSI is not consulted.
  mutable bool memory_psi_file_{false};
  mutable bool cpu_psi_file_{false};

 private:
  static std::optional<memory_events> events_v2(std::string_view text) {
    memory_events e;
    bool any = false;
    auto get = [&](std::string_view key, std::uint64_t& out) {
      if (auto v = parse::keyed_value(text, key)) {
        out = *v;
        any = true;
      }
    };
    get("low", e.low);
    get("high", e.high);
    get("max", e.max);
    get("oom", e.oom);
    get("oom_kill", e.oom_kill);
    if (!any) return std::nullopt;
    return e;
  }

  // nr_periods and nr_throttled are required (without the cpu controller v2 has only usage fields).
  static std::optional<cpu_throttling> cpu_stat(std::string_view text, std::string_view time_key,
                                                std::uint64_t time_divisor) {
    auto periods = parse::keyed_value(text, "nr_periods");
    auto throttled = parse::keyed_value(text, "nr_throttled");
    if (!periods || !throttled) return std::nullopt;
    cpu_throttling c{*periods, *throttled, 0};
    if (auto t = parse::keyed_value(text, time_key)) c.throttled_usec = *t / time_divisor;
    return c;
  }

  std::size_t max_;
};

std::optional<std::uint64_t> real_limit(std::optional<std::uint64_t> v) noexcept {
  if (!v || *v == unlimited) return std::nullopt;
  return v;
}

}  // namespace

std::optional<std::string> read_small_file(std::string const& path, std::size_t max_bytes) {
  return read_bounded(path, max_bytes);
}

std::optional<std::uint64_t> cgroup_reading::limit() const noexcept {
  auto h = real_limit(memory_high);
  auto m = real_limit(memory_max);
  if (h && m) return std::min(*h, *m);
  return h ? h : m;
}

std::optional<double> cgroup_reading::usage_ratio() const noexcept {
  auto l = limit();
  if (!l || !memory_current || *l == 0) return std::nullopt;
  return static_cast<double>(*memory_current) / static_cast<double>(*l);
}

sampler::sampler(sampler_options options) : options_(std::move(options)) {
  if (options_.page_size == 0) {
    long ps = ::sysconf(_SC_PAGESIZE);
    options_.page_size = ps > 0 ? static_cast<std::uint64_t>(ps) : 4096;
  }
}

sampler_options sampler::options_for(config::degradation_config const& cfg) {
  sampler_options o;
  o.watch_cgroups = cfg.watch_cgroups;
  return o;
}

snapshot const& sampler::sample(ray::clock::time_point now) {
  if (!snap_.taken || now - snap_.taken_at >= options_.min_interval) read(now);
  return snap_;
}

void sampler::read(ray::clock::time_point now) {
  snapshot s;
  s.taken = true;
  s.taken_at = now;
  reader rd(options_.max_file_bytes);
  std::string const& root = options_.root;

  // RSS.
  if (auto text = read_bounded(join(root, "proc/self/statm"), options_.max_file_bytes)) {
    if (auto b = parse::statm_rss_bytes(*text, options_.page_size)) {
      s.process_rss_mib = static_cast<double>(*b) / mib;
      s.sources.push_back("rss:self");
    }
  }
  if (backend_pid_ && *backend_pid_ > 0) {
    std::string const pid = std::to_string(*backend_pid_);
    if (auto text = read_bounded(join(root, "proc/" + pid + "/statm"), options_.max_file_bytes)) {
      if (auto b = parse::statm_rss_bytes(*text, options_.page_size)) {
        s.backend_rss_mib = static_cast<double>(*b) / mib;
        s.sources.push_back("rss:pid/" + pid);
      }
    }
  }
  if (s.process_rss_mib || s.backend_rss_mib)
    s.rss_mib = s.process_rss_mib.value_or(0) + s.backend_rss_mib.value_or(0);

  // Cgroups: Ray's own, then the watched ones.
  layout const lay = detect_layout(root);
  std::vector<target> targets;
  if (auto text = read_bounded(join(root, "proc/self/cgroup"), options_.max_file_bytes)) {
    own_paths own = parse_proc_cgroup(*text);
    if (own.v2 || own.v1_memory || own.v1_cpu) {
      target t;
      t.own = true;
      bool v2_root = false, mem_root = false, cpu_root = false;
      if (own.v2) t.v2_dir = resolve_v2(lay.v2, *own.v2, true, &v2_root);
      if (own.v1_memory) t.v1_memory_dir = resolve(lay.v1_memory, *own.v1_memory, true, &mem_root);
      if (own.v1_cpu) t.v1_cpu_dir = resolve(lay.v1_cpu, *own.v1_cpu, true, &cpu_root);
      if (t.v2_dir) t.v2_label = v2_root ? "/" : *own.v2;
      if (own.v1_memory)
        t.v1_label = mem_root ? "/" : *own.v1_memory;
      else if (own.v1_cpu)
        t.v1_label = cpu_root ? "/" : *own.v1_cpu;
      // Report the path whose files carry the memory numbers: v2 on unified hosts, else the v1 memory one.
      bool const pure_v2 = lay.v2 && !lay.v1_memory;
      t.path = (!t.v2_label.empty() && (pure_v2 || t.v1_label.empty())) ? t.v2_label : t.v1_label;
      if (t.path.empty()) t.path = own.v2.value_or("/");  // nothing readable (e.g. Ray in the true root)
      targets.push_back(std::move(t));
    }
  }
  for (auto const& w : options_.watch_cgroups) {
    auto norm = normalize_cgroup_path(w);
    if (!norm) continue;
    bool dup = std::any_of(targets.begin(), targets.end(), [&](target const& t) { return t.path == *norm; });
    if (dup) continue;
    target t;
    t.path = t.v2_label = t.v1_label = *norm;
    t.v2_dir = resolve_v2(lay.v2, *norm, false);
    t.v1_memory_dir = resolve(lay.v1_memory, *norm, false);
    t.v1_cpu_dir = resolve(lay.v1_cpu, *norm, false);
    targets.push_back(std::move(t));
  }

  std::map<std::string, previous> next_previous;
  for (auto const& t : targets) {
    cgroup_reading r = rd.cgroup(t);
    auto prev = previous_.find(r.path);
    if (prev != previous_.end()) {
      if (r.events && prev->second.events) {
        auto const& a = *r.events;
        auto const& b = *prev->second.events;
        r.new_events = {delta(a.low, b.low), delta(a.high, b.high), delta(a.max, b.max), delta(a.oom, b.oom),
                        delta(a.oom_kill, b.oom_kill)};
      }
      if (r.cpu && prev->second.cpu) {
        auto const& a = *r.cpu;
        auto const& b = *prev->second.cpu;
        bool const reset = a.nr_periods < b.nr_periods || a.nr_throttled < b.nr_throttled;
        std::uint64_t const dp = reset ? a.nr_periods : a.nr_periods - b.nr_periods;
        std::uint64_t const dt = reset ? a.nr_throttled : a.nr_throttled - b.nr_throttled;
        r.throttled_ratio = dp == 0 ? 0.0 : std::min(1.0, static_cast<double>(dt) / static_cast<double>(dp));
        r.new_throttled_usec = delta(a.throttled_usec, b.throttled_usec);
      }
    }
    if (r.found) {
      next_previous[r.path] = previous{r.events, r.cpu};
      if (r.v2) s.sources.push_back("cgroup2:" + t.v2_label);
      if (r.v1) s.sources.push_back("cgroup1:" + t.v1_label);
    }
    if (t.own && r.found) s.cgroup = r.path;
    s.cgroups.push_back(std::move(r));
  }
  previous_ = std::move(next_previous);

  // Summaries: the worst value counts.
  auto max_into = [](std::optional<double>& into, std::optional<double> v) {
    if (v && (!into || *v > *into)) into = v;
  };
  cgroup_reading const* worst = nullptr;
  for (auto const& r : s.cgroups) {
    if (auto ratio = r.usage_ratio(); ratio && (!worst || *ratio > *worst->usage_ratio())) worst = &r;
    if (r.swap_current) max_into(s.swap_current_mib, static_cast<double>(*r.swap_current) / mib);
    if (r.memory_psi) {
      if (r.memory_psi->some) max_into(s.memory_psi_some_avg10, r.memory_psi->some->avg10);
      if (r.memory_psi->full) max_into(s.memory_psi_full_avg10, r.memory_psi->full->avg10);
    }
    if (r.cpu_psi) {
      if (r.cpu_psi->some) max_into(s.cpu_psi_some_avg10, r.cpu_psi->some->avg10);
      if (r.cpu_psi->full) max_into(s.cpu_psi_full_avg10, r.cpu_psi->full->avg10);
    }
    max_into(s.cpu_throttled_ratio, r.throttled_ratio);
    s.new_oom_events += r.new_events.oom + r.new_events.oom_kill;
    s.new_high_events += r.new_events.high;
    s.new_max_events += r.new_events.max;
  }
  if (worst) {
    s.cgroup_current_mib = static_cast<double>(*worst->memory_current) / mib;
    s.cgroup_limit_mib = static_cast<double>(*worst->limit()) / mib;
    s.cgroup_usage_ratio = worst->usage_ratio();
  } else if (!s.cgroups.empty() && s.cgroups.front().own && s.cgroups.front().memory_current) {
    s.cgroup_current_mib = static_cast<double>(*s.cgroups.front().memory_current) / mib;
  }

  // Host PSI only for a resource no cgroup reported a pressure file for.
  auto host_psi = [&](std::string_view resource, std::optional<double>& some, std::optional<double>& full,
                      bool& from_host) {
    auto text = read_bounded(join(root, "proc/pressure/" + std::string(resource)), options_.max_file_bytes);
    if (!text) return;
    auto p = parse::psi_file(*text);
    if (!p) return;
    if (p->some) some = p->some->avg10;
    if (p->full) full = p->full->avg10;
    from_host = true;
    s.sources.push_back("psi:host/" + std::string(resource));
  };
  if (!rd.memory_psi_file_)
    host_psi("memory", s.memory_psi_some_avg10, s.memory_psi_full_avg10, s.memory_psi_from_host);
  if (!rd.cpu_psi_file_) host_psi("cpu", s.cpu_psi_some_avg10, s.cpu_psi_full_avg10, s.cpu_psi_from_host);

  snap_ = std::move(s);
}

}  // namespace ray::system
