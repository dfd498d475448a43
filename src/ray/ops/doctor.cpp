// `ray doctor`: the box against the config (spec/operations.md "ray doctor"). Each check says ok, warn or
// fail with what it found and one line of advice; none stops the others.
#include "ray/ops/ops.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <ostream>

namespace ray::ops {

namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
constexpr std::uint64_t mib = gguf::mib;

std::string mib_text(std::uint64_t bytes) {
  return std::to_string((bytes + mib - 1) / mib) + " MiB";
}

check ok(std::string name, std::string detail) {
  return {std::move(name), status::ok, std::move(detail), {}};
}
check warn(std::string name, std::string detail, std::string advice) {
  return {std::move(name), status::warn, std::move(detail), std::move(advice)};
}
check failed(std::string name, std::string detail, std::string advice) {
  return {std::move(name), status::fail, std::move(detail), std::move(advice)};
}

// Binding host:port tells whether it is free; errno when not.
int bind_test(std::string const& host, std::uint32_t port) {
  std::string h = host;
  if (h == "localhost") h = "127.0.0.1";
  if (h.size() > 2 && h.front() == '[') h = h.substr(1, h.size() - 2);
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = AF_INET;
  if (h.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<std::uint16_t>(port));
    if (::inet_pton(AF_INET6, h.c_str(), &a->sin6_addr) != 1) return EINVAL;
    family = AF_INET6;
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<std::uint16_t>(port));
    if (::inet_pton(AF_INET, h.c_str(), &a->sin_addr) != 1) return EINVAL;
    len = sizeof *a;
  }
  int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // as Ray's listener does
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0 ? 0 : errno;
  ::close(fd);
  return rc;
}

// "http://127.0.0.1:8081/x" → host, port; nullopt for anything else (https is not probed).
struct endpoint {
  std::string host;
  std::uint16_t port{0};
  bool https{false};
};
std::optional<endpoint> parse_base_url(std::string_view url) {
  endpoint e;
  if (url.starts_with("http://")) {
    url.remove_prefix(7);
  } else if (url.starts_with("https://")) {
    url.remove_prefix(8);
    e.https = true;
  } else {
    return std::nullopt;
  }
  auto authority = url.substr(0, url.find('/'));
  auto colon = authority.rfind(':');
  bool const v6 = authority.starts_with('[');
  if (colon == std::string_view::npos || (v6 && colon < authority.find(']'))) {
    e.host = std::string(authority);
    e.port = e.https ? 443 : 80;
  } else {
    e.host = std::string(authority.substr(0, colon));
    e.port = static_cast<std::uint16_t>(std::atoi(std::string(authority.substr(colon + 1)).c_str()));
  }
  if (e.host.empty() || e.port == 0) return std::nullopt;
  return e;
}

std::string connect_host(std::string const& bind_host) {
  if (bind_host == "0.0.0.0" || bind_host.empty()) return "127.0.0.1";
  if (bind_host == "::" || bind_host == "[::]") return "::1";
  return bind_host;
}

check check_port(config::config const& c, std::uint32_t timeout_ms) {
  std::string const where = c.server.host + ":" + std::to_string(c.server.port);
  int rc = bind_test(c.server.host, c.server.port);
  if (rc == 0) return ok("port", where + " is free (Ray is not running, or not on this port)");
  if (rc != EADDRINUSE)
    return failed("port", "cannot bind " + where + ": " + std::strerror(rc),
                  rc == EADDRNOTAVAIL ? "server.host is not an address of this box"
                                      : "ports below 1024 need privileges: use 3000 behind Caddy");
  auto reply =
      http_get(connect_host(c.server.host), static_cast<std::uint16_t>(c.server.port), "/livez", timeout_ms);
  if (reply && reply->status == 200) {
    json::error_code ec;
    auto parsed = json::parse(reply->body, ec);
    if (!ec && parsed.is_object()) {
      auto const* svc = parsed.as_object().if_contains("service");
      if (svc && svc->is_string() && svc->as_string() == c.telemetry.service_name)
        return ok("port", where + " is held by Ray (/livez answers as " + c.telemetry.service_name + ")");
    }
  }
  return failed("port", where + " is taken by something that is not Ray",
                "find it with `ss -ltnp 'sport = :" + std::to_string(c.server.port) +
                    "'` and stop it, or change server.port");
}

std::vector<check> check_backend(config::config const& c, std::uint32_t timeout_ms) {
  std::vector<check> out;
  auto const& a = c.model.adapter;
  if (a.kind == config::adapter_kind::mock) {
    out.push_back(warn("backend", "model.adapter.kind is mock: answers are canned, no model runs",
                       "set model.adapter.kind to llama.cpp (ray tune writes the fragment)"));
    return out;
  }
  auto ep = parse_base_url(a.base_url);
  if (!ep) {
    out.push_back(failed("backend", "model.adapter.baseUrl " + a.base_url + " is not an http(s) URL",
                         "set model.adapter.baseUrl to http://127.0.0.1:8081"));
    return out;
  }
  if (ep->https) {
    out.push_back(ok("backend", a.base_url + " (https: not probed by doctor)"));
    return out;
  }
  bool const supervised = a.launch && a.launch->supervise;
  auto health = http_get(ep->host, ep->port,
                         a.kind == config::adapter_kind::llama_cpp ? "/health" : "/v1/models", timeout_ms);
  if (!health) {
    if (supervised && bind_test(c.server.host, c.server.port) == 0)
      out.push_back(
          warn("backend", "nothing answers at " + a.base_url + " yet: " + health.error().message,
               "Ray starts llama-server itself (launchProfile.supervise); start Ray and run doctor again"));
    else
      out.push_back(failed("backend", "the backend at " + a.base_url + " is down: " + health.error().message,
                           supervised
                               ? "check Ray's log: journalctl -u ray-gateway (it supervises llama-server)"
                               : "start it: systemctl start ray-llama-cpp; see journalctl -u ray-llama-cpp"));
    return out;
  }
  if (health->status == 503) {
    out.push_back(warn("backend", a.base_url + " answers 503 (loading the model)",
                       "wait for the model to load; if it never does, see journalctl -u ray-llama-cpp"));
    return out;
  }
  if (health->status != 200) {
    out.push_back(failed("backend", a.base_url + " answers " + std::to_string(health->status),
                         "is model.adapter.baseUrl the llama-server port?"));
    return out;
  }
  if (a.kind != config::adapter_kind::llama_cpp || !a.launch) {
    out.push_back(ok("backend", a.base_url + " is reachable and ready"));
    return out;
  }
  // /props against the launch profile: the context, the slots and the model file.
  auto props = http_get(ep->host, ep->port, "/props", timeout_ms);
  json::error_code ec;
  json::value v;
  if (props && props->status == 200) v = json::parse(props->body, ec);
  if (!props || props->status != 200 || ec || !v.is_object()) {
    out.push_back(
        warn("backend", a.base_url + " is ready but /props is not readable",
             "llama-server with --api-key needs the key for /props; doctor checks ctx and slots with it"));
    return out;
  }
  auto const& o = v.as_object();
  std::uint64_t slots = 0, n_ctx = 0;
  if (auto const* s = o.if_contains("total_slots"); s && s->is_int64())
    slots = static_cast<std::uint64_t>(s->as_int64());
  if (auto const* d = o.if_contains("default_generation_settings"); d && d->is_object())
    if (auto const* n = d->as_object().if_contains("n_ctx"); n && n->is_int64())
      n_ctx = static_cast<std::uint64_t>(n->as_int64());
  std::string model_path;
  if (auto const* p = o.if_contains("model_path"); p && p->is_string())
    model_path = std::string(p->as_string());
  auto const& l = *a.launch;
  std::uint64_t const pool = l.enable_unified_kv ? n_ctx : n_ctx * slots;
  std::vector<std::string> diffs;
  if (slots != l.parallel)
    diffs.push_back("slots " + std::to_string(slots) + " ≠ parallel " + std::to_string(l.parallel));
  if (pool != l.ctx_size)
    diffs.push_back("KV pool " + std::to_string(pool) + " ≠ ctxSize " + std::to_string(l.ctx_size));
  if (fs::path(model_path).filename() != fs::path(l.model_path).filename())
    diffs.push_back("model " + model_path + " ≠ modelPath " + l.model_path);
  if (diffs.empty()) {
    out.push_back(ok("backend", a.base_url + " is ready: " + std::to_string(slots) + " slots × " +
                                    std::to_string(n_ctx) + " tokens, " + model_path));
  } else {
    std::string d;
    for (auto const& x : diffs)
      d += (d.empty() ? "" : "; ") + x;
    out.push_back(
        warn("backend", a.base_url + " runs something else than launchProfile: " + d,
             "restart llama-server with the rendered unit (ray deploy render) so Ray budgets what runs"));
  }
  return out;
}

std::vector<check> check_model_and_memory(config::config const& c, std::string const& root) {
  std::vector<check> out;
  auto const& launch = c.model.adapter.launch;
  auto host = system::read_host_resources(root);
  auto ram = host.ram_bytes();
  std::uint64_t const ray = ray_footprint_bytes(c);
  std::optional<gguf::memory_estimate> need;
  if (c.model.adapter.kind == config::adapter_kind::llama_cpp && launch) {
    auto const& l = *launch;
    if (l.supervise || ::access(l.binary_path.c_str(), F_OK) == 0) {
      if (::access(l.binary_path.c_str(), X_OK) == 0)
        out.push_back(ok("llama-server", l.binary_path + " is executable"));
      else
        out.push_back(failed("llama-server", l.binary_path + " is missing or not executable",
                             "install llama-server there, or set launchProfile.binaryPath"));
    } else {
      out.push_back(
          warn("llama-server", l.binary_path + " is not on this box",
               "fine when llama-server runs elsewhere; else install it or set launchProfile.binaryPath"));
    }
    if (::access(l.model_path.c_str(), F_OK) != 0) {
      out.push_back(failed("model", "the GGUF " + l.model_path + " does not exist",
                           "pull it: ray model pull URL --name " + fs::path(l.model_path).stem().string() +
                               ", or set launchProfile.modelPath"));
    } else if (::access(l.model_path.c_str(), R_OK) != 0) {
      out.push_back(failed("model", l.model_path + " is not readable by this user",
                           "chmod 0644 the file (the service user must read it)"));
    } else if (auto info = gguf::read_header_file(l.model_path); !info) {
      out.push_back(failed("model", l.model_path + " is not a valid GGUF: " + info.error().message,
                           "download it again (ray model pull verifies the header and sha256)"));
    } else {
      out.push_back(ok("model", l.model_path + ": " + info->model.architecture + " " +
                                    info->model.file_type_name + ", " + mib_text(info->tensor_bytes) +
                                    " of weights"));
      if (auto e = launch_estimate(*info, l)) need = *e;
    }
  }
  if (!ram) {
    out.push_back(warn("memory", "cannot read this box's memory (" + root + "proc/meminfo)",
                       "run doctor on the box itself"));
  } else {
    std::uint64_t const reserve = os_reserve_bytes(*ram);
    std::uint64_t const total = (need ? need->total : 0) + ray + reserve;
    std::string const parts =
        (need ? "llama-server " + mib_text(need->total) + " (weights " + mib_text(need->weights_bytes) +
                    " + KV " + mib_text(need->kv_bytes) + " + cache RAM " + mib_text(need->cache_ram_bytes) +
                    " + compute " + mib_text(need->compute_bytes) + " + headroom " +
                    mib_text(need->headroom_bytes) + ") + "
              : std::string()) +
        "Ray " + mib_text(ray) + " + OS " + mib_text(reserve);
    std::string const swap =
        host.swap_total.value_or(0) > 0 ? "; swap " + mib_text(*host.swap_total) : "; no swap";
    if (total > *ram)
      out.push_back(failed(
          "memory",
          "over budget: " + parts + " = " + mib_text(total) + " > " + mib_text(*ram) + " (" +
              host.ram_source() + ")" + swap,
          "lower launchProfile.ctxSize or cacheRamMiB, use a smaller model, or a bigger box (ray tune)"));
    else if (total > *ram / 10 * 9)
      out.push_back(warn(
          "memory", "tight: " + parts + " = " + mib_text(total) + " of " + mib_text(*ram) + swap,
          "less than 10 % to spare: an OOM kill is one long prompt away; ray tune suggests smaller numbers"));
    else
      out.push_back(ok("memory", parts + " = " + mib_text(total) + " of " + mib_text(*ram) + " (" +
                                     host.ram_source() + ")" + swap));
  }
  if (host.memory_pressure_file)
    out.push_back(
        ok("pressure", "cgroup v2 memory.pressure of " + host.cgroup + " is readable (degradation works)"));
  else
    out.push_back(
        warn("pressure",
             "no cgroup v2 pressure files for " + (host.cgroup.empty() ? std::string("Ray") : host.cgroup),
             "run Ray under systemd on a cgroup v2 host (Debian 12 is) so degradation sees memory pressure"));
  return out;
}

check check_storage(config::config const& c) {
  auto const& q = c.async_queue;
  if (!q.enabled) return ok("storage", "asyncQueue is off: nothing is stored");
  if (q.store == config::job_store_kind::postgres)
    return ok("storage", "jobs are in PostgreSQL (" + q.postgres_url_env.value_or("?") + "); no local store");
  fs::path dir = fs::absolute(q.storage_dir);
  std::error_code ec;
  fs::path probe_dir = dir;
  while (!fs::exists(probe_dir, ec) && probe_dir.has_parent_path() && probe_dir != probe_dir.parent_path())
    probe_dir = probe_dir.parent_path();
  if (::access(probe_dir.c_str(), W_OK) != 0)
    return failed("storage", dir.string() + " is not writable (" + probe_dir.string() + ")",
                  "create it owned by the service user: install -d -o ray -m 0700 " + dir.string());
  struct statvfs st {};
  if (::statvfs(probe_dir.c_str(), &st) == 0) {
    std::uint64_t const free_bytes = std::uint64_t{st.f_bavail} * st.f_frsize;
    if (free_bytes < std::uint64_t{q.min_free_storage_mib} * mib)
      return failed("storage",
                    mib_text(free_bytes) + " free under " + dir.string() +
                        ", below asyncQueue.minFreeStorageMiB " + std::to_string(q.min_free_storage_mib),
                    "free disk space; Ray refuses new jobs below this");
    return ok("storage", dir.string() + " is writable, " + mib_text(free_bytes) + " free");
  }
  return ok("storage", dir.string() + " is writable");
}

std::vector<check> check_exposure(config::config const& c) {
  std::vector<check> out;
  bool const loopback = config::is_loopback_host(c.server.host);
  if (loopback) {
    out.push_back(ok("auth", std::string("bound to ") + c.server.host + " (loopback)" +
                                 (c.auth.enabled ? ", auth on" : ": only this box (Caddy) reaches Ray")));
  } else if (!c.auth.enabled) {
    out.push_back(failed(
        "auth", "auth is off on a public bind (server.host " + c.server.host + ")",
        "set auth.enabled: true with keys in " + c.auth.api_key_env + ", or bind 127.0.0.1 behind Caddy"));
  } else {
    char const* keys = std::getenv(c.auth.api_key_env.c_str());
    if (c.auth.api_key_sha256.empty() && (keys == nullptr || *keys == '\0'))
      out.push_back(failed("auth",
                           "auth is on but " + c.auth.api_key_env + " is empty and no apiKeySha256 is set",
                           "put the keys in /etc/ray/ray.env (" + c.auth.api_key_env + "=key1,key2)"));
    else
      out.push_back(ok("auth", "auth is on for the public bind " + c.server.host));
  }
  if (c.rate_limit.enabled && c.rate_limit.trust_proxy_headers && !loopback)
    out.push_back(
        warn("rateLimit", "trustProxyHeaders is on while Ray listens on " + c.server.host,
             "keep Ray reachable only by the proxy (bind 127.0.0.1) or list it in rateLimit.trustedProxies"));
  else
    out.push_back(ok("rateLimit", c.rate_limit.enabled ? "on" : "off"));
  return out;
}

check check_limits(config::config const& c) {
  rlimit rl{};
  std::string detail;
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    std::uint64_t const want = std::uint64_t{c.server.max_connections} * 2 + 64;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
      return warn("limits",
                  "open files limit " + std::to_string(rl.rlim_cur) + " < " + std::to_string(want) +
                      " (2 × server.maxConnections + 64)",
                  "the rendered unit sets LimitNOFILE; for a shell: ulimit -n " + std::to_string(want));
    detail = "open files " +
             (rl.rlim_cur == RLIM_INFINITY ? std::string("unlimited") : std::to_string(rl.rlim_cur));
  }
  // A clock before this binary was built is wrong (no RTC, NTP not yet synced): TLS and timestamps break.
  std::time_t const now = std::time(nullptr);
  if (now < 1'735'689'600)  // 2025-01-01
    return warn("limits", "the clock reads " + format_timestamp(std::chrono::system_clock::from_time_t(now)),
                "enable time sync: timedatectl set-ntp true");
  return ok("limits", detail + "; clock " + format_timestamp(std::chrono::system_clock::from_time_t(now)));
}

}  // namespace

std::string_view status_name(status s) noexcept {
  switch (s) {
    case status::ok:
      return "ok";
    case status::warn:
      return "warn";
    case status::fail:
      return "fail";
  }
  return "fail";
}

std::vector<check> run_doctor(doctor_options const& o) {
  std::vector<check> out;
  auto loaded = config::load(o.config_path, config::process_environment(), {});
  if (!loaded) {
    out.push_back(failed(
        "config",
        (o.config_path.empty() ? std::string("defaults") : o.config_path) + ": " + loaded.error().message,
        "fix the named key; `ray config validate` shows the same error"));
    return out;
  }
  auto const& c = loaded->cfg;
  out.push_back(ok(
      "config",
      (o.config_path.empty() ? std::string("built-in defaults") : o.config_path) + " is valid (profile " +
          c.profile + ")" +
          (loaded->warnings.empty() ? "" : ", " + std::to_string(loaded->warnings.size()) + " warning(s)")));
  out.push_back(check_port(c, o.probe_timeout_ms));
  for (auto& x : check_backend(c, o.probe_timeout_ms))
    out.push_back(std::move(x));
  std::string root = o.system_root.empty() ? std::string("/") : o.system_root;
  if (root.back() != '/') root += '/';
  for (auto& x : check_model_and_memory(c, root))
    out.push_back(std::move(x));
  out.push_back(check_storage(c));
  for (auto& x : check_exposure(c))
    out.push_back(std::move(x));
  out.push_back(check_limits(c));
  return out;
}

int doctor_command(doctor_options const& o, std::ostream& out, std::ostream&) {
  auto checks = run_doctor(o);
  bool any_fail = false;
  for (auto const& c : checks)
    any_fail = any_fail || c.result == status::fail;
  if (o.json) {
    json::array arr;
    for (auto const& c : checks)
      arr.push_back(json::object{
          {"name", c.name}, {"status", status_name(c.result)}, {"detail", c.detail}, {"advice", c.advice}});
    out << json::serialize(json::object{{"ok", !any_fail}, {"checks", std::move(arr)}}) << "\n";
  } else {
    for (auto const& c : checks) {
      out << "[" << status_name(c.result) << "] " << std::string(4 - status_name(c.result).size(), ' ')
          << c.name << ": " << c.detail << "\n";
      if (!c.advice.empty()) out << "        → " << c.advice << "\n";
    }
    std::size_t fails = 0, warns = 0;
    for (auto const& c : checks) {
      fails += c.result == status::fail;
      warns += c.result == status::warn;
    }
    out << (fails ? "ray doctor: " + std::to_string(fails) + " check(s) failed"
                  : std::string("ray doctor: no failures"))
        << (warns ? ", " + std::to_string(warns) + " warning(s)" : std::string()) << "\n";
  }
  return any_fail ? 1 : 0;
}

}  // namespace ray::ops
