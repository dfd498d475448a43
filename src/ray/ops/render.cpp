// `ray deploy render`: turns a config into the files of a systemd + Caddy deployment (spec/operations.md),
// with the memory split of `ray tune`'s model. The templates live in render_units.cpp and render_proxy.cpp;
// this file computes what they carry, writes the env file and INSTALL.md, and does the I/O.
#include "ray/backend/flags.hpp"
#include "ray/ops/render_detail.hpp"

#include <boost/json/serialize.hpp>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <ostream>
#include <set>

namespace ray::ops {

namespace {

namespace fs = std::filesystem;
constexpr std::uint64_t mib = gguf::mib;

std::string mib_text(std::uint64_t bytes) {
  return std::to_string((bytes + mib - 1) / mib) + " MiB";
}

// Where Ray reaches its backend's port: a wildcard bind is reached on loopback.
std::string ray_upstream(config::server_config const& s) {
  std::string host = s.host;
  if (host == "0.0.0.0" || host.empty()) host = "127.0.0.1";
  if (host == "::" || host == "[::]") host = "[::1]";
  if (host.find(':') != std::string::npos && host.front() != '[') host = "[" + host + "]";
  return host + ":" + std::to_string(s.port);
}

std::string env_file(config::config const& c, std::vector<std::string>& notes, bool backend_key) {
  std::string t =
      "# Secrets of the Ray deployment (rendered by `ray deploy render`). Install as /etc/ray/ray.env, mode "
      "0640,\n"
      "# owner root, group of the service user. ray.json names these variables; their values live only "
      "here.\n";
  std::set<std::string> names;
  for (auto const& n : config::referenced_env_names(c))
    names.insert(n);
  if (c.async_queue.postgres_url_env) names.insert(*c.async_queue.postgres_url_env);
  if (names.empty()) t += "# (the config references no secret variables)\n";
  for (auto const& n : names) {
    std::string what = "a secret the config names";
    if (c.auth.enabled && n == c.auth.api_key_env)
      what = "API keys clients send as Bearer tokens, comma-separated";
    if (c.model.adapter.api_key_env && n == *c.model.adapter.api_key_env) what = "the upstream's API key";
    if (c.async_queue.callback_secret_env && n == *c.async_queue.callback_secret_env)
      what = "the HMAC secret of job callbacks (openssl rand -hex 32)";
    if (c.async_queue.postgres_url_env && n == *c.async_queue.postgres_url_env)
      what = "the PostgreSQL connection URI of the job store";
    t += "# " + what + "\n" + n + "=\n";
    notes.push_back("fill " + n + " in /etc/ray/ray.env (" + what + ")");
  }
  if (backend_key) {
    t += "# llama-server's --api-key, moved out of its command line (llama-server reads this variable)\n"
         "LLAMA_ARG_API_KEY=\n";
    notes.push_back(
        "launchProfile.extraArgs had a secret flag: its value goes in LLAMA_ARG_API_KEY in ray.env");
  }
  return t;
}

std::string install_readme(config::config const& c, render_options const& o, render_result const& r,
                           bool own_backend, bool proxy_files) {
  std::string const user = o.user;
  std::string t =
      "# Installing this Ray deployment\n\n"
      "Rendered by `ray deploy render` for profile `" +
      c.profile + "`, model `" + c.model.id + "`. Run the steps as root on a Debian 12 box.\n\n";
  t += "## Memory split\n\n| part | MiB |\n|---|---|\n";
  t += "| box RAM | " + std::to_string(r.memory.ram / mib) + " |\n";
  t += "| OS reserve | " + std::to_string(r.memory.os_reserve / mib) + " |\n";
  t += "| Ray (ray-gateway.service MemoryHigh) | " + std::to_string(r.memory.ray / mib) + " |\n";
  t += "| llama-server need (weights + KV + cache RAM + compute + headroom) | " +
       std::to_string((r.memory.backend.total + mib - 1) / mib) + " |\n";
  t += "| llama-server budget | " + std::to_string(r.memory.backend_budget / mib) + " |\n\n";
  if (!r.notes.empty()) {
    t += "## Before you start\n\n";
    for (auto const& n : r.notes)
      t += "- " + n + "\n";
    t += "\n";
  }
  t += "## Steps\n\n```sh\n";
  t += "# 1. the service account and its directories\n"
       "useradd --system --home-dir /var/lib/ray --shell /usr/sbin/nologin " +
       user +
       " || true\n"
       "install -d -o " +
       user + " -g " + user + " -m 0750 /var/lib/ray\n";
  if (c.async_queue.enabled)
    t += "install -d -o " + user + " -g " + user + " -m 0700 " +
         (fs::path(c.async_queue.storage_dir).is_absolute()
              ? c.async_queue.storage_dir
              : (fs::path(detail::working_dir) / c.async_queue.storage_dir).lexically_normal().string()) +
         "\n";
  t += "\n# 2. config and secrets\n"
       "install -d -m 0755 /etc/ray\n"
       "install -m 0640 -g " +
       user +
       " ray.json /etc/ray/ray.json\n"
       "install -m 0640 -g " +
       user +
       " ray.env /etc/ray/ray.env     # then edit it: fill every empty value\n"
       "\n# 3. the units\n"
       "install -m 0644 ray-gateway.service /etc/systemd/system/\n";
  if (own_backend) t += "install -m 0644 ray-llama-cpp.service /etc/systemd/system/\n";
  t += "systemd-analyze verify /etc/systemd/system/ray-gateway.service";
  if (own_backend) t += " /etc/systemd/system/ray-llama-cpp.service";
  t += "\nsystemctl daemon-reload\n";
  t += own_backend ? "systemctl enable --now ray-llama-cpp.service ray-gateway.service\n"
                   : "systemctl enable --now ray-gateway.service\n";
  t += "\n# 4. Caddy (TLS, unbuffered SSE)\n"
       "apt-get install -y caddy\n"
       "caddy validate --config Caddyfile --adapter caddyfile\n"
       "install -m 0644 Caddyfile /etc/caddy/Caddyfile\n"
       "systemctl reload caddy\n"
       "\n# 5. check\n"
       "ray doctor --config /etc/ray/ray.json\n"
       "curl -s https://" +
       (o.domain.empty() ? std::string("<this box>") : o.domain) + "/readyz\n```\n";
  if (proxy_files)
    t += "\n## Several nodes\n\n"
         "`haproxy.cfg` balances the nodes given with `--nodes` (leastconn, `GET /readyz` checks every 500 "
         "ms, "
         "fall 2: a draining node is out within 2 s; SSE-safe timeouts). Check it with `haproxy -c -f "
         "haproxy.cfg`, "
         "install it as /etc/haproxy/haproxy.cfg, and set `server.drainMs` ≥ 2000 on every node. "
         "`Caddyfile.nodes` is the same with Caddy alone (`lb_policy least_conn`, `health_uri /readyz`).\n";
  t += "\nUpgrading: install the new binary, then `systemctl restart ray-gateway` (Ray drains first; the "
       "unit's "
       "TimeoutStopSec covers server.drainMs + shutdownGraceMs).\n";
  return t;
}

bool is_secret_arg(std::string const& a) {
  auto eq = a.find('=');
  return config::is_secret_flag(eq == std::string::npos ? a : a.substr(0, eq));
}

}  // namespace

result<render_result> render(config::loaded_config const& loaded, render_options const& o,
                             std::uint64_t ram_bytes) {
  auto const& c = loaded.cfg;
  render_result r;
  auto const& launch = c.model.adapter.launch;
  bool const llama = c.model.adapter.kind == config::adapter_kind::llama_cpp && launch.has_value();
  bool const supervise = llama && launch->supervise;
  bool const own_backend = llama && !supervise;

  // --- the memory split
  auto& m = r.memory;
  m.ram = ram_bytes;
  m.os_reserve = os_reserve_bytes(ram_bytes);
  m.ray = ray_footprint_bytes(c);
  m.backend_budget = m.ram > m.os_reserve + m.ray ? m.ram - m.os_reserve - m.ray : 0;
  bool measured = false;
  if (llama) {
    if (auto info = gguf::read_header_file(launch->model_path)) {
      if (auto e = launch_estimate(*info, *launch)) {
        m.backend = *e;
        measured = true;
      }
    }
    if (!measured) {
      m.backend.total = m.backend_budget;
      r.notes.push_back("the model " + launch->model_path +
                        " was not readable here: llama-server's limit is the box's remainder (" +
                        mib_text(m.backend_budget) + "); render again on the box once the model is pulled");
    } else if (m.backend.total > m.backend_budget) {
      r.notes.push_back("llama-server needs " + mib_text(m.backend.total) + " but this box leaves it " +
                        mib_text(m.backend_budget) +
                        ": lower launchProfile.ctxSize or cacheRamMiB, or use a smaller model (ray tune)");
    }
  }
  // llama-server: MemoryMax at its need (headroom included), MemoryHigh half a headroom below, so reclaim
  // starts before the kill. Ray: MemoryHigh at its slice, MemoryMax 50 % above.
  std::uint64_t const backend_max = llama ? std::max(m.backend.total, 256 * mib) : 0;
  std::uint64_t const backend_high = backend_max - std::min(backend_max / 2, m.backend.headroom_bytes / 2);

  detail::unit_inputs in;
  in.cfg = &c;
  in.opts = &o;
  in.supervise = supervise;
  in.own_backend = own_backend;
  in.ray_high = m.ray + (supervise ? backend_high : 0);
  in.ray_max = m.ray + m.ray / 2 + (supervise ? backend_max : 0);
  in.backend_high = backend_high;
  in.backend_max = backend_max;
  if (c.async_queue.enabled && c.async_queue.store == config::job_store_kind::sqlite) {
    fs::path dir = c.async_queue.storage_dir;
    if (dir.is_relative()) dir = fs::path(detail::working_dir) / dir;
    in.read_write_paths.push_back(dir.lexically_normal().string());
  }

  bool backend_key = false;
  if (llama) {
    std::vector<std::string> args{launch->binary_path};
    auto built = backend::llama_server_args(*launch, "", c.model.kind, c.model.adapter.pooling);
    for (std::size_t i = 0; i < built.size(); ++i) {
      if (is_secret_arg(built[i])) {
        backend_key = true;
        if (built[i].find('=') == std::string::npos) ++i;  // and its value
        continue;
      }
      args.push_back(built[i]);
    }
    in.backend_args = std::move(args);
    in.mlock = std::find(launch->extra_args.begin(), launch->extra_args.end(), "--mlock") !=
               launch->extra_args.end();
  }

  if (!config::is_loopback_host(c.server.host) && !c.auth.enabled)
    r.notes.push_back("server.host is " + c.server.host +
                      " and auth is off: anyone who reaches the port can use the model — enable auth or bind "
                      "127.0.0.1 (Caddy reaches it on loopback)");
  if (!o.nodes.empty() && c.server.drain_ms < 2000)
    r.notes.push_back(
        "server.drainMs is " + std::to_string(c.server.drain_ms) +
        ": set it to at least 2000 on every node so the balancer takes a draining node out first");

  r.files.push_back({detail::gateway_unit, detail::gateway_service(in)});
  if (own_backend) r.files.push_back({detail::backend_unit, detail::backend_service(in)});
  r.files.push_back(
      {"Caddyfile", caddyfile(o.domain, ray_upstream(c.server), c.server.keep_alive_timeout_ms)});
  if (!o.nodes.empty()) {
    r.files.push_back(
        {"Caddyfile.nodes", caddyfile_multi(o.domain, o.nodes, c.server.keep_alive_timeout_ms)});
    haproxy_timing t{c.server.drain_ms, c.server.sse_keep_alive_ms, c.scheduler.request_timeout_ms,
                     c.scheduler.idle_token_timeout_ms};
    r.files.push_back({"haproxy.cfg", haproxy_cfg(o.nodes, "*:8080", t)});
  }
  r.files.push_back({"ray.env", env_file(c, r.notes, backend_key), true});
  r.files.push_back({"INSTALL.md", install_readme(c, o, r, own_backend, !o.nodes.empty())});
  return r;
}

int render_command(render_options const& o, std::ostream& out, std::ostream& err) {
  if (o.config_path.empty()) {
    err << "ray deploy render: --config is required\n";
    return 2;
  }
  auto loaded = config::load(o.config_path, {}, {});
  if (!loaded) {
    err << "ray deploy render: --config " << o.config_path << ": " << loaded.error().message << "\n";
    return 2;
  }
  std::uint64_t ram = 0;
  if (o.memory_mib) {
    ram = *o.memory_mib * mib;
  } else if (auto r = system::read_host_resources(o.system_root).ram_bytes()) {
    ram = *r;
  } else {
    err << "ray deploy render: cannot read this box's memory; give --memory-mib\n";
    return 2;
  }
  auto r = render(*loaded, o, ram);
  if (!r) {
    err << "ray deploy render: " << r.error().message << "\n";
    return 2;
  }
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) {
    err << "ray deploy render: --out " << o.out_dir << ": " << ec.message() << "\n";
    return 2;
  }
  // The config itself, as loaded, so the directory is complete (the units point at /etc/ray/ray.json).
  std::ifstream src(o.config_path, std::ios::binary);
  std::string config_text((std::istreambuf_iterator<char>(src)), std::istreambuf_iterator<char>());
  r->files.push_back({"ray.json", config_text, true});
  for (auto const& f : r->files) {
    fs::path const path = fs::path(o.out_dir) / f.name;
    std::ofstream file(path, std::ios::binary | std::ios::trunc);
    file << f.text;
    file.close();
    if (!file) {
      err << "ray deploy render: cannot write " << path.string() << "\n";
      return 1;
    }
    ::chmod(path.c_str(), f.secret ? 0600 : 0644);
    out << "wrote " << path.string() << "\n";
  }
  for (auto const& n : r->notes)
    err << "ray deploy render: note: " << n << "\n";
  out << "memory split: llama-server " << mib_text(r->memory.backend.total) << " of "
      << mib_text(r->memory.backend_budget) << ", Ray " << mib_text(r->memory.ray) << ", OS "
      << mib_text(r->memory.os_reserve) << " (box " << mib_text(r->memory.ram) << ")\n"
      << "next: read " << (fs::path(o.out_dir) / "INSTALL.md").string() << "\n";
  return 0;
}

}  // namespace ray::ops
