// CLI11 flags of `ray tune`, `ray deploy render` and `ray doctor`. main.cpp registers them and calls
// run_chosen after parsing.
#include "ray/ops/ops.hpp"

#include <CLI/CLI.hpp>

#include <iostream>

namespace ray::ops {

namespace {

constexpr char const* tune_footer = R"(The memory model (spec/operations.md):
  llama-server needs weights + KV (2 × n_layer × n_head_kv × head_dim × bytes × ctxSize) + cache RAM
  + compute buffers + headroom; it gets RAM − OS reserve − Ray. RAM is --ram-mib, else the smaller of
  MemTotal and the cgroup's memory limit.

Examples:
  ray tune --model /var/lib/ray/models/qwen2.5-0.5b-instruct-q4_k_m.gguf
  ray tune --model model.gguf --ram-mib 4096 --cores 2
  ray tune --model model.gguf --parallel 1 --ctx 8192 --json > plan.json
  ray tune --model model.gguf --ram-mib 8192 --profile 1b-8gb > tune.txt   # the fragment is its last line

Exit status: 0 a plan, 1 the model cannot fit this box, 2 bad input.)";

constexpr char const* deploy_footer =
    R"(Writes into --out: ray-gateway.service, ray-llama-cpp.service (unless Ray supervises llama-server),
Caddyfile, ray.env (secret variables, empty), ray.json (the config) and INSTALL.md; with --nodes also
haproxy.cfg and Caddyfile.nodes. The memory split comes from the config's launch profile and the GGUF.

Examples:
  ray deploy render --config ray.json --out deploy/ --domain ray.example.com
  ray deploy render --config ray.json --out deploy/ --memory-mib 4096 --user ray --binary /usr/local/bin/ray
  ray deploy render --config ray.json --out deploy/ --nodes 10.0.0.2:3000,10.0.0.3:3000

Exit status: 0 written, 1 a file could not be written, 2 bad input or config.)";

constexpr char const* doctor_footer =
    R"(Checks: config, port (free or held by Ray), backend (reachable, ready, /props matches the launch
profile), llama-server binary, GGUF (exists, readable, valid header), memory (llama-server + Ray + OS
within RAM or the cgroup limit), pressure files, storage (job store writable, free space), auth on a
public bind, rate limiting behind a proxy, limits and clock.

Examples:
  ray doctor --config /etc/ray/ray.json
  ray doctor --config ray.json --json | jq '.checks[] | select(.status != "ok")'

Exit status: 0 no check failed (warnings allowed), 1 some check failed.)";

}  // namespace

CLI::App* add_tune_command(CLI::App& app, cli_options& o) {
  auto* t = app.add_subcommand("tune", "Derive llama-server flags and Ray budgets for this box from a GGUF");
  t->footer(tune_footer);
  auto& x = o.tune;
  t->add_option("--model", x.model, "GGUF file")->required();
  t->add_option_function<std::uint64_t>(
       "--ram-mib", [&x](std::uint64_t const& v) { x.ram_mib = v; },
       "Plan for this much RAM instead of the box's")
      ->check(CLI::Range(std::uint64_t{64}, std::uint64_t{1} << 30));
  t->add_option_function<unsigned>(
       "--cores", [&x](unsigned const& v) { x.cores = v; }, "Plan for this many cores instead of the box's")
      ->check(CLI::Range(1u, 1024u));
  t->add_option_function<unsigned>(
       "--parallel", [&x](unsigned const& v) { x.inputs.parallel = v; }, "Slots (default: one per core, ≤ 4)")
      ->check(CLI::Range(1u, 8u));
  t->add_option_function<unsigned>(
       "--ctx", [&x](unsigned const& v) { x.inputs.ctx = v; },
       "Tokens of context per slot (default: the model's, ≤ 4096; shortened to fit unless given)")
      ->check(CLI::Range(64u, 131072u));
  t->add_option("--profile", x.inputs.profile, "Base profile of the config fragment (default sub1b)");
  t->add_option("--llama-server", x.binary, "llama-server binary shown in the command line");
  t->add_option("--system-root", x.system_root, "Read proc/ and sys/fs/cgroup/ below this directory (tests)");
  t->add_flag("--json", x.json, "Machine-readable output");
  return t;
}

CLI::App* add_deploy_command(CLI::App& app, cli_options& o) {
  auto* d = app.add_subcommand("deploy", "Deployment files for a box");
  d->require_subcommand(1);
  auto* r = d->add_subcommand("render",
                              "Write systemd units, a Caddyfile, an env file and INSTALL.md for a config");
  r->footer(deploy_footer);
  auto& x = o.render;
  r->add_option("--config", x.config_path, "The config the service will run")->required();
  r->add_option("--out", x.out_dir, "Directory to write into (created)")->required();
  r->add_option("--domain", x.domain, "Public name: Caddy serves it with TLS (default: plain HTTP on :80)");
  r->add_option("--user", x.user, "Service account (default ray)");
  r->add_option_function<std::uint64_t>(
       "--memory-mib", [&x](std::uint64_t const& v) { x.memory_mib = v; },
       "RAM of the target box (default: this box's)")
      ->check(CLI::Range(std::uint64_t{256}, std::uint64_t{1} << 30));
  r->add_option("--binary", x.binary, "Path of ray on the target box (default /usr/local/bin/ray)");
  r->add_option("--nodes", o.render_nodes,
                "HOST:PORT,… of every Ray node: also haproxy.cfg and Caddyfile.nodes");
  r->add_option("--system-root", x.system_root, "Read proc/ and sys/fs/cgroup/ below this directory (tests)");
  return r;
}

CLI::App* add_doctor_command(CLI::App& app, cli_options& o) {
  auto* d = app.add_subcommand("doctor",
                               "Check this box against a config: each check ok, warn or fail with advice");
  d->footer(doctor_footer);
  auto& x = o.doctor;
  d->add_option("--config", x.config_path, "The config Ray runs (default: built-in defaults)");
  d->add_flag("--json", x.json, "Machine-readable output");
  d->add_option("--system-root", x.system_root, "Read proc/ and sys/fs/cgroup/ below this directory (tests)");
  d->add_option("--timeout-ms", x.probe_timeout_ms, "Per HTTP probe (default 2000)")
      ->check(CLI::Range(50u, 60000u));
  return d;
}

std::optional<int> run_chosen(CLI::App& app, cli_options& o, std::ostream& out, std::ostream& err) {
  for (auto* sub : app.get_subcommands()) {
    auto const& name = sub->get_name();
    if (name == "tune") return tune_command(o.tune, out, err);
    if (name == "doctor") return doctor_command(o.doctor, out, err);
    if (name == "deploy") {
      if (!o.render_nodes.empty()) {
        auto nodes = parse_nodes(o.render_nodes);
        if (!nodes) {
          err << "ray deploy render: " << nodes.error().message << "\n";
          return 2;
        }
        o.render.nodes = std::move(*nodes);
      }
      return render_command(o.render, out, err);
    }
  }
  return std::nullopt;
}

}  // namespace ray::ops
