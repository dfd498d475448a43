// The `ray model` subcommands' CLI11 flags (ops.hpp). main.cpp registers them and calls run_model.
#include "ray/ops/ops.hpp"

#include <CLI/CLI.hpp>

#include <unistd.h>

#include <cstdlib>
#include <ostream>

namespace ray::ops {

namespace {

constexpr char const* pull_footer = R"(Sources:
  https://host/path/model.gguf    http(s); redirects followed (at most 5, never https → http)
  hf://OWNER/REPO/FILE.gguf       https://huggingface.co/OWNER/REPO/resolve/main/FILE.gguf
  ./model.gguf                    a local file, copied

The file is written to <models-dir>/.partial/<name> and renamed to <models-dir>/<name>.gguf only once it is
complete, its GGUF header reads and its SHA-256 matches --sha256 (the digest is recorded in
<name>.gguf.sha256 either way). A cut connection is resumed with Range; a pull that gave up resumes when run
again. Trust comes from the system CA store (SSL_CERT_FILE / SSL_CERT_DIR are honoured).

Examples:
  ray model pull hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf --name qwen-0.5b
  ray model pull https://example.com/m.gguf --sha256 9f86d08…  --models-dir /var/lib/ray/models
  ray model pull ./tiny.gguf --models-dir ./models

Exit status: 0 installed, 1 download or verification failed, 2 bad usage.)";

constexpr char const* model_footer =
    R"(Models dir: /var/lib/ray/models as root, else $XDG_DATA_HOME/ray/models
(~/.local/share/ray/models).

Examples:
  ray model pull hf://OWNER/REPO/FILE.gguf
  ray model list --json
  ray model rm NAME)";

std::string default_dir_or_empty() {
  auto d = default_models_dir(::geteuid(), std::getenv("XDG_DATA_HOME"), std::getenv("HOME"));
  return d ? *d : std::string{};
}

}  // namespace

CLI::App* add_model_command(CLI::App& app, model_cli_options& o) {
  auto* m = app.add_subcommand("model", "Download, list and remove GGUF model files in the models dir");
  m->require_subcommand(1);
  m->footer(model_footer);

  auto* pull = m->add_subcommand("pull", "Download (http, https, hf://) or copy a GGUF into the models dir");
  pull->footer(pull_footer);
  pull->add_option("URL|PATH", o.pull.source, "Where the model comes from")->required();
  pull->add_option("--sha256", o.pull.sha256,
                   "Expected SHA-256 (64 hex digits); a mismatch installs nothing");
  pull->add_option("--models-dir", o.pull.models_dir, "Models dir (default: see `ray model --help`)");
  pull->add_option("--name", o.pull.name, "Name to install as (default: the file name without .gguf)");

  auto* list =
      m->add_subcommand("list", "Name, size, architecture, quantization, context and sha256 of each model");
  list->add_option("--models-dir", o.models_dir, "Models dir");
  list->add_flag("--json", o.json, "Machine-readable output (an array)");
  list->footer("Examples:\n  ray model list\n  ray model list --models-dir /var/lib/ray/models --json");

  auto* rm = m->add_subcommand("rm", "Remove a model (and its sidecar and any partial download)");
  rm->add_option("NAME", o.name, "Model name, as `ray model list` shows it")->required();
  rm->add_option("--models-dir", o.models_dir, "Models dir");
  rm->footer("Examples:\n  ray model rm qwen-0.5b --models-dir /var/lib/ray/models");
  return m;
}

int run_model(CLI::App const& model, model_cli_options& o, std::ostream& out, std::ostream& err) {
  auto const* pull = model.get_subcommand("pull");
  if (pull->parsed()) return pull_command(o.pull, out, err);
  std::string dir = o.models_dir.empty() ? default_dir_or_empty() : o.models_dir;
  if (dir.empty()) {
    err << "ray model: no models dir (HOME and XDG_DATA_HOME are unset); pass --models-dir\n";
    return 2;
  }
  if (model.get_subcommand("list")->parsed()) return list_command(dir, o.json, out, err);
  if (model.get_subcommand("rm")->parsed()) return rm_command(dir, o.name, out, err);
  return 2;
}

}  // namespace ray::ops
