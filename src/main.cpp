// ray — CLI entry point: parses the subcommand and its flags, then hands over to the component that does the
// work.
#include "ray/api/api.hpp"
#include "ray/bench/bench.hpp"
#include "ray/config/config.hpp"
#include "ray/gguf/gguf.hpp"
#include "ray/jobs/jobs.hpp"
#include "ray/ops/ops.hpp"

#include <CLI/CLI.hpp>
#include <boost/json/serialize.hpp>

#include <cstdio>
#include <iostream>

namespace {

int config_error(ray::error const& e) {
  std::fprintf(stderr, "ray: %s\n", e.message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ray — a lean, honest gateway in front of llama.cpp's llama-server on one small machine"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("ray ") + RAY_VERSION);

  // serve
  auto* serve =
      app.add_subcommand("serve", "Serve the HTTP API (profile tiny with the mock backend by default)");
  std::string config_file;
  ray::config::flag_overrides flags;
  std::string profile, host, backend_url, model_path, llama_server;
  int port = -1;
  serve->add_option("--config", config_file, "JSON config file (TypeScript-era files load unchanged)");
  serve->add_option("--profile", profile, "tiny | sub1b | sub1b-cax11 | 1b | 1b-8gb | vps | balanced");
  serve->add_option("--host", host, "Address to bind (default 127.0.0.1)");
  serve->add_option("--port", port, "Port to bind; 0 picks a free port (printed in the log)")
      ->check(CLI::Range(0, 65535));
  serve->add_option("--backend-url", backend_url, "Attach to a running llama-server at this URL");
  serve->add_option("--model-path", model_path, "Supervise llama-server serving this GGUF");
  serve->add_option("--llama-server", llama_server, "llama-server binary to supervise");
  serve->add_flag("--allow-unauthenticated-public", flags.allow_unauthenticated_public,
                  "Allow a non-loopback bind with auth disabled");
  std::string system_root = "/";
  serve->add_option(
      "--system-root", system_root,
      "Directory holding proc/ and sys/fs/cgroup/ to read pressure signals from (default /; for "
      "containers that mount the host's elsewhere, and for tests)");

  // config
  auto* cfg_cmd = app.add_subcommand("config", "Validate, explain or print configuration");
  cfg_cmd->require_subcommand(1);
  auto* validate = cfg_cmd->add_subcommand(
      "validate", "Check a config file (schema and cross-field rules); exit 2 when invalid");
  std::string validate_file;
  validate->add_option("FILE", validate_file, "Config file")->required();
  auto* explain = cfg_cmd->add_subcommand("explain", "Print every effective value with its source");
  std::string explain_file;
  explain->add_option("FILE", explain_file, "Config file (optional)");
  auto* defaults = cfg_cmd->add_subcommand("defaults", "Print a profile's complete defaults as JSON");
  std::string defaults_profile;
  defaults->add_option("PROFILE", defaults_profile, "Profile name")->required();

  auto* gguf_cmd = app.add_subcommand("gguf", "Inspect GGUF model files");
  gguf_cmd->require_subcommand(1);
  auto* inspect =
      gguf_cmd->add_subcommand("inspect", "Read a GGUF header (no tensors loaded); exit 1 on a bad file");
  std::string gguf_file;
  bool gguf_json = false;
  inspect->add_option("FILE", gguf_file, "GGUF file")->required();
  inspect->add_flag("--json", gguf_json, "Machine-readable output");

  // jobs
  auto* jobs_cmd = app.add_subcommand("jobs", "List, show or cancel durable jobs in the store of a config");
  jobs_cmd->require_subcommand(1);
  jobs_cmd->footer(
      "Examples:\n  ray jobs list --config ray.json --status queued\n  ray jobs show job_0123456789abcdef "
      "--config ray.json --json\n  ray jobs cancel job_0123456789abcdef --config ray.json");
  ray::jobs::cli_options jobs_opts;
  std::string jobs_config, jobs_storage, jobs_status;
  for (auto* c : {jobs_cmd->add_subcommand("list", "Newest jobs first"),
                  jobs_cmd->add_subcommand("show", "One job's record"),
                  jobs_cmd->add_subcommand("cancel", "Cancel a queued or running job")}) {
    c->add_option("--config", jobs_config, "The server's JSON config (its asyncQueue.storageDir)");
    c->add_option("--storage-dir", jobs_storage, "The store's folder, instead of --config");
    c->add_flag("--json", jobs_opts.json, "Machine-readable output");
    if (c->get_name() == "list") {
      c->add_option("--status", jobs_status, "queued | running | succeeded | failed | cancelled");
      c->add_option("--limit", jobs_opts.limit, "At most this many (default 50)")
          ->check(CLI::Range(1, 100000));
    } else {
      c->add_option("ID", jobs_opts.id, "Job id (job_…)")->required();
    }
  }

  // bench (flags and logic in src/ray/bench)
  ray::bench::options bench_opts;
  auto* bench_cmd = ray::bench::add_command(app, bench_opts);

  // tune, deploy render, doctor (flags and logic in src/ray/ops)
  ray::ops::cli_options ops_opts;
  ray::ops::add_tune_command(app, ops_opts);
  ray::ops::add_deploy_command(app, ops_opts);
  ray::ops::add_doctor_command(app, ops_opts);

  // model pull / list / rm (src/ray/ops)
  ray::ops::model_cli_options model_opts;
  auto* model_cmd = ray::ops::add_model_command(app, model_opts);

  auto* version = app.add_subcommand("version", "Print the version");

  try {
    app.parse(argc, argv);
  } catch (CLI::ParseError const& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  if (*jobs_cmd) {
    for (auto* c : jobs_cmd->get_subcommands())
      jobs_opts.action = c->get_name();
    if (!jobs_status.empty()) jobs_opts.status = jobs_status;
    if (!jobs_storage.empty()) {
      jobs_opts.storage_dir = jobs_storage;
    } else {
      auto loaded = ray::config::load(jobs_config, ray::config::process_environment(), {});
      if (!loaded) return config_error(loaded.error());
      if (loaded->cfg.async_queue.store == ray::config::job_store_kind::postgres) {
        std::cerr
            << "ray jobs: asyncQueue.store is postgres; `ray jobs` reads the SQLite store only. Use the "
               "HTTP API (/v1/jobs) of any node, or SQL on the table ray_jobs\n";
        return 2;
      }
      jobs_opts.storage_dir = std::filesystem::absolute(loaded->cfg.async_queue.storage_dir);
    }
    return ray::jobs::cli_command(jobs_opts, std::cout, std::cerr);
  }
  if (*bench_cmd) return ray::bench::run_bench(bench_opts, std::cout, std::cerr);
  if (auto rc = ray::ops::run_chosen(app, ops_opts, std::cout, std::cerr)) return *rc;
  if (*model_cmd) return ray::ops::run_model(*model_cmd, model_opts, std::cout, std::cerr);
  if (*inspect) return ray::gguf::inspect_command(gguf_file, gguf_json, std::cout, std::cerr);
  if (*version) {
    std::printf("ray %s\n", RAY_VERSION);
    return 0;
  }
  if (*serve) {
    if (!profile.empty()) flags.profile = profile;
    if (!host.empty()) flags.host = host;
    if (port >= 0) flags.port = static_cast<std::uint32_t>(port);
    if (!backend_url.empty()) flags.backend_url = backend_url;
    if (!model_path.empty()) flags.model_path = model_path;
    if (!llama_server.empty()) flags.llama_server = llama_server;
    auto loaded = ray::config::load(config_file, ray::config::process_environment(), flags);
    if (!loaded) return config_error(loaded.error());
    ray::api::serve_options opts{.system_root = system_root};
    opts.reload = [config_file, flags] {
      return ray::config::load(config_file, ray::config::process_environment(), flags);
    };
    return ray::api::serve(std::move(*loaded), std::move(opts));
  }
  if (*validate) {
    auto loaded = ray::config::load(validate_file, ray::config::process_environment(), {});
    if (!loaded) return config_error(loaded.error());
    for (auto const& w : loaded->warnings)
      std::fprintf(stderr, "ray: warning: %s\n", w.message.c_str());
    std::printf("%s: valid (profile %s)\n", validate_file.c_str(), loaded->cfg.profile.c_str());
    return 0;
  }
  if (*explain) {
    auto loaded = ray::config::load(explain_file, ray::config::process_environment(), {});
    if (!loaded) return config_error(loaded.error());
    for (auto const& w : loaded->warnings)
      std::fprintf(stderr, "ray: warning: %s\n", w.message.c_str());
    std::fputs(ray::config::explain(*loaded).c_str(), stdout);
    return 0;
  }
  if (*defaults) {
    auto cfg = ray::config::profile_defaults(defaults_profile);
    if (!cfg) return config_error(cfg.error());
    std::printf("%s\n", boost::json::serialize(ray::config::to_json(*cfg)).c_str());
    return 0;
  }
  return 2;
}
