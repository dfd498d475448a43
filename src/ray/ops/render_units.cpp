// `ray deploy render`: the systemd units. Names are the TypeScript deployment's, so an upgrade replaces its
// units instead of running two gateways. Every line that is a decision carries its reason as a comment: the
// operator reads these files before installing them.
#include "ray/backend/flags.hpp"
#include "ray/ops/render_detail.hpp"

#include <algorithm>

namespace ray::ops::detail {

namespace {

std::string bytes_value(std::uint64_t bytes) {
  // systemd takes K/M/G suffixes (1024-based); whole MiB keeps the files readable.
  return std::to_string((bytes + gguf::mib - 1) / gguf::mib) + "M";
}

// Sandboxing both services share. Nothing here stops a CPU-only llama-server or Ray from working: they read
// their files, bind loopback/LAN sockets and fork (the supervisor); none needs a device, a capability or the
// kernel's tunables.
constexpr char const* hardening =
    "NoNewPrivileges=yes\n"
    "ProtectSystem=strict\n"
    "ProtectHome=yes\n"
    "PrivateTmp=yes\n"
    "PrivateDevices=yes\n"
    "ProtectKernelTunables=yes\n"
    "ProtectKernelModules=yes\n"
    "ProtectKernelLogs=yes\n"
    "ProtectControlGroups=yes\n"
    "ProtectClock=yes\n"
    "ProtectHostname=yes\n"
    "ProtectProc=invisible\n"
    "RestrictNamespaces=yes\n"
    "RestrictRealtime=yes\n"
    "RestrictSUIDSGID=yes\n"
    "LockPersonality=yes\n"
    "SystemCallArchitectures=native\n"
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK\n"
    "CapabilityBoundingSet=\n"
    "AmbientCapabilities=\n"
    "UMask=0077\n";

std::uint64_t stop_seconds(std::uint64_t ms) {
  return (ms + 999) / 1000;
}

}  // namespace

std::string unit_command(std::vector<std::string> const& argv) {
  std::string out;
  for (std::size_t i = 0; i < argv.size(); ++i) {
    if (i > 0) out += ' ';
    for (char c : backend::shell_quote(argv[i])) {
      if (c == '%' || c == '$') out += c;
      out += c;
    }
  }
  return out;
}

std::string gateway_service(unit_inputs const& in) {
  auto const& c = *in.cfg;
  auto const& o = *in.opts;
  // SIGTERM → /readyz 503 for drainMs → graceful shutdown for up to shutdownGraceMs (→ with a supervised
  // llama-server, its own SIGTERM grace of 10 s) → exit. systemd must not SIGKILL before that: + 5 s margin.
  std::uint64_t const stop_ms =
      std::uint64_t{c.server.drain_ms} + c.server.shutdown_grace_ms + (in.supervise ? 10'000 : 0) + 5'000;
  std::string u =
      "# Ray, the gateway (rendered by `ray deploy render`). Install: see INSTALL.md.\n"
      "[Unit]\n"
      "Description=Ray gateway in front of llama-server\n"
      "After=network-online.target";
  if (in.own_backend) u += std::string(" ") + backend_unit;
  u += "\nWants=network-online.target";
  if (in.own_backend) u += std::string(" ") + backend_unit;
  u += "\n\n[Service]\n"
       "Type=simple\n"
       "User=" +
       o.user + "\nGroup=" + o.user + "\nWorkingDirectory=" + working_dir +
       "\n"
       "# secrets (API keys, callback secret, database URL) live in the env file, never in the unit or "
       "ray.json\n"
       "EnvironmentFile=" +
       installed_env + "\nExecStart=" + unit_command({o.binary, "serve", "--config", installed_config}) +
       "\n"
       "# SIGHUP reloads the config (limits, keys, templates) without dropping connections\n"
       "ExecReload=/bin/kill -HUP $MAINPID\n"
       "KillSignal=SIGTERM\n"
       "KillMode=mixed\n"
       "# server.drainMs " +
       std::to_string(c.server.drain_ms) + " + shutdownGraceMs " +
       std::to_string(c.server.shutdown_grace_ms) +
       (in.supervise ? " + the supervised llama-server's 10 s stop grace" : "") + " + 5 s margin\n" +
       "TimeoutStopSec=" + std::to_string(stop_seconds(stop_ms)) +
       "\n"
       "Restart=on-failure\n"
       "RestartSec=2\n"
       "LimitNOFILE=" +
       std::to_string(std::max<std::uint32_t>(4096, c.server.max_connections * 4)) + "\n";
  if (in.mlock && in.supervise)
    u += "# --mlock in launchProfile.extraArgs: the weights may be locked\nLimitMEMLOCK=infinity\n";
  u += "# memory split (ray tune's model): ";
  u += in.supervise ? "Ray + the llama-server it supervises share this unit\n" : "Ray's own slice only\n";
  u += "MemoryHigh=" + bytes_value(in.ray_high) + "\nMemoryMax=" + bytes_value(in.ray_max) +
       "\nMemorySwapMax=0\n";
  u += in.supervise
           ? "# one unit: llama-server inherits this score; Ray's degradation sheds load before the limit\n"
             "OOMScoreAdjust=0\n"
           : "# the kernel kills the model server (OOMScoreAdjust=500 there) before Ray, which then answers "
             "503\n"
             "OOMScoreAdjust=-500\n";
  u += hardening;
  u += "MemoryDenyWriteExecute=yes\n";
  if (!in.read_write_paths.empty()) {
    u += "# writable: the job store only (ProtectSystem=strict makes everything else "
         "read-only)\nReadWritePaths=";
    for (std::size_t i = 0; i < in.read_write_paths.size(); ++i)
      u += (i ? " " : "") + in.read_write_paths[i];
    u += "\n";
  }
  u += "\n[Install]\nWantedBy=multi-user.target\n";
  return u;
}

std::string backend_service(unit_inputs const& in) {
  auto const& o = *in.opts;
  std::string u =
      "# llama-server for Ray (rendered by `ray deploy render` from launchProfile; the same flags the\n"
      "# supervisor would pass). Ray's unit starts after this one and stops before it.\n"
      "[Unit]\n"
      "Description=llama-server (model server behind Ray)\n"
      "After=network.target\n"
      "Before=" +
      std::string(gateway_unit) +
      "\n\n[Service]\n"
      "Type=simple\n"
      "User=" +
      o.user + "\nGroup=" + o.user +
      "\n"
      "# an API key for llama-server, if any, comes from the env file (LLAMA_ARG_API_KEY), never argv\n"
      "EnvironmentFile=-" +
      installed_env + "\nExecStart=" + unit_command(in.backend_args) +
      "\n"
      "KillSignal=SIGTERM\n"
      "# Ray stops first (drains its clients); llama-server then has nothing in flight\n"
      "TimeoutStopSec=15\n"
      "Restart=on-failure\n"
      "RestartSec=2\n";
  if (in.mlock) u += "# --mlock: lock the weights in RAM\nLimitMEMLOCK=infinity\n";
  u += "# memory split: weights + KV cache + cache RAM + compute buffers + headroom (ray tune's model)\n"
       "MemoryHigh=" +
       bytes_value(in.backend_high) + "\nMemoryMax=" + bytes_value(in.backend_max) +
       "\n"
       "MemorySwapMax=0\n"
       "# killed before Ray under memory pressure: Ray stays up and answers 503 with Retry-After\n"
       "OOMScoreAdjust=500\n";
  u += hardening;
  u += "\n[Install]\nWantedBy=multi-user.target\n";
  return u;
}

}  // namespace ray::ops::detail
