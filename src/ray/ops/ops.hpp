// ray::ops — the operator commands besides `serve` (spec/operations.md): `ray tune`, `ray deploy render`,
// `ray doctor` (and `ray model`, see its section). One section per command.
//
// Everything here is synchronous, blocking work for a CLI process (file reads, a few loopback HTTP probes);
// nothing runs on Ray's event loop. The planning and rendering functions are pure (their inputs are values:
// a GGUF header, the box, a config) so tests call them directly; the *_command functions add the I/O and the
// output format. Exit codes: 0 ok, 1 a check failed (or the model cannot fit), 2 bad usage or config.
#pragma once

#include "ray/config/config.hpp"
#include "ray/core/core.hpp"
#include "ray/gguf/gguf.hpp"
#include "ray/system/system.hpp"

#include <boost/json/object.hpp>

#include <cstdint>
#include <iosfwd>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace CLI {
class App;
}

namespace ray::ops {

// ---------------------------------------------------------------------------------------------------------------
// ray tune — flags and budgets for this box from the GGUF header (spec/operations.md "ray tune")

// The box the plan is for: RAM (bytes) and whole cores, with where each figure came from.
struct box {
  std::uint64_t ram_bytes{0};
  std::string ram_source;  // "--ram-mib", "MemTotal in /proc/meminfo", "the memory limit of cgroup /…"
  unsigned cores{1};
  std::string cores_source;  // "--cores", "CPU affinity", "cgroup cpu.max"
  bool swap{false};          // the box has swap (reported, and it decides nothing but mlock's advice)
};
// From read_host_resources (or the flags when given). Error when RAM is unknown and --ram-mib is absent.
result<box> read_box(std::string const& system_root, std::optional<std::uint64_t> ram_mib,
                     std::optional<unsigned> cores);

struct tune_inputs {
  std::optional<unsigned> parallel{};  // --parallel: slots (default from the cores)
  std::optional<unsigned> ctx{};       // --ctx: tokens per slot (default: min(training context, 4096))
  std::string profile{"sub1b"};        // --profile: the base config the fragment is written against
};

// One number of the plan and the one line explaining it.
struct reason {
  std::string key;    // "launchProfile.ctxSize", "memory.osReserve", …
  std::string value;  // "2048", "327 MiB"
  std::string why;
};

struct memory_split {
  std::uint64_t ram{0};             // the box
  std::uint64_t os_reserve{0};      // kernel, page cache for the rest of the system, sshd, journald
  std::uint64_t ray{0};             // Ray's own slice (fixed: single thread, bounded caches and buffers)
  std::uint64_t backend_budget{0};  // ram − os_reserve − ray: what llama-server may use
  gguf::memory_estimate backend{};  // what llama-server needs with the chosen flags (compute included)
  std::uint64_t headroom() const noexcept {
    return backend_budget > backend.total ? backend_budget - backend.total : 0;
  }
};

struct tune_plan {
  std::string model_path;
  gguf::model_facts model;
  box machine;
  config::launch_profile launch;  // the flags (given to backend::llama_server_args)
  std::string kv_type{"f16"};     // --cache-type-k/-v (in launch.extra_args when not f16)
  bool mlock{false};              // --mlock (in launch.extra_args)
  std::uint64_t kv_bytes_per_token{0};
  std::uint64_t ctx_per_slot{0};
  config::scheduler_config scheduler;  // concurrency, maxQueue, maxInflightTokens, maxQueuedTokens
  std::uint32_t context_window{0};     // model.contextWindow of the fragment
  std::uint32_t max_output_tokens{0};  // model.maxOutputTokens of the fragment
  memory_split memory;
  std::vector<reason> reasons;            // in output order
  std::vector<std::string> command_line;  // binary + llama_server_args(launch)
  boost::json::object config_fragment;    // a config file `ray config validate` accepts
};

// The memory model's fixed parts, shared by tune, deploy render and doctor:
// - the OS reserve: 8 % of the box, at least 256 MiB, at most 1 GiB (kernel, sshd, journald, page cache);
// - Ray's slice: 64 MiB + the result cache + every connection's header/body buffers + a stream buffer per
//   admitted or queued request, rounded up to 16 MiB, at least 128 MiB;
// - llama-server's need for a launch profile: gguf::estimate_memory with its ctxSize, cacheRamMiB (-1 counts
//   as 0), KV type (--cache-type-k in extraArgs) and the compute buffers of one ubatch.
std::uint64_t os_reserve_bytes(std::uint64_t ram_bytes) noexcept;
std::uint64_t ray_footprint_bytes(config::config const& cfg) noexcept;
result<gguf::memory_estimate> launch_estimate(gguf::gguf_info const& info, config::launch_profile const& l);

// The plan, or errc::invalid_request naming what does not fit ("the model cannot fit: needs about X MiB …;
// this box gives llama-server Y MiB"), or what the GGUF lacks.
result<tune_plan> plan(std::string const& model_path, gguf::gguf_info const& info, box const& machine,
                       tune_inputs const& in);

// The human report: the memory table, one line per number with its reason, the command line, the fragment.
std::string describe(tune_plan const& p);
boost::json::object to_json(tune_plan const& p);

struct tune_options {
  std::string model;
  std::optional<std::uint64_t> ram_mib;
  std::optional<unsigned> cores;
  tune_inputs inputs;
  bool json{false};
  std::string system_root{"/"};
  std::string binary{};  // --llama-server: the binary shown in the command line ("" = the profile's)
};
int tune_command(tune_options const& o, std::ostream& out, std::ostream& err);

// ---------------------------------------------------------------------------------------------------------------
// ray deploy render — systemd units, Caddyfile, env file, README (and haproxy.cfg with --nodes)

struct render_options {
  std::string config_path;  // --config (absolute in the units)
  std::string out_dir;
  std::string domain;       // --domain: the Caddy site (TLS); "" → `:80` (plain HTTP, no certificate)
  std::string user{"ray"};  // --user: the service account
  std::optional<std::uint64_t> memory_mib{};  // --memory-mib: the box RAM the split is taken from
  std::string binary{"/usr/local/bin/ray"};   // --binary: ray's path in ExecStart
  std::vector<std::string> nodes{};           // --nodes host:port,…
  std::string system_root{"/"};               // where the box's RAM is read when --memory-mib is absent
};

// One rendered file: its name in out_dir and its text.
struct rendered_file {
  std::string name;
  std::string text;
  bool secret{false};  // written 0600 (the env file)
};

struct render_result {
  std::vector<rendered_file> files;
  memory_split memory;             // the split the units carry
  std::vector<std::string> notes;  // what the README also says (warnings: auth off on a public bind, …)
};

// Pure: the files for a loaded config. `ram_bytes` is the box RAM (from --memory-mib or the box); the
// backend's share comes from the GGUF when it is readable (weights + KV + cache RAM + compute + headroom),
// else from RAM − OS reserve − Ray. Unit names are the TypeScript deployment's (ray-gateway.service,
// ray-llama-cpp.service), so an upgrade replaces rather than duplicates them.
result<render_result> render(config::loaded_config const& loaded, render_options const& o,
                             std::uint64_t ram_bytes);
int render_command(render_options const& o, std::ostream& out, std::ostream& err);

// host:port list → validated entries ("10.0.0.2:3000"); errors name the bad entry.
result<std::vector<std::string>> parse_nodes(std::string_view list);

// The proxy files alone (render_proxy.cpp), for tests and the README.
std::string caddyfile(std::string const& domain, std::string const& upstream,
                      std::uint32_t ray_keep_alive_ms);
std::string caddyfile_multi(std::string const& domain, std::vector<std::string> const& nodes,
                            std::uint32_t ray_keep_alive_ms);
struct haproxy_timing {
  std::uint32_t drain_ms{0};                // server.drainMs of the nodes
  std::uint32_t sse_keep_alive_ms{10'000};  // server.sseKeepAliveMs: the longest silence of a healthy stream
  std::uint32_t request_timeout_ms{8000};   // scheduler.requestTimeoutMs
  std::uint32_t idle_token_timeout_ms{30'000};
};
std::string haproxy_cfg(std::vector<std::string> const& nodes, std::string const& bind,
                        haproxy_timing const& t);

// ---------------------------------------------------------------------------------------------------------------
// ray doctor — the box against the config (spec/operations.md "ray doctor")

enum class status { ok, warn, fail };
std::string_view status_name(status s) noexcept;  // "ok" | "warn" | "fail"

struct check {
  std::string name;  // "config", "port", "backend", "model", "memory", "auth", "storage", …
  status result{status::ok};
  std::string detail;  // what was found
  std::string advice;  // one line: what to do (empty when ok)
};

struct doctor_options {
  std::string config_path;  // "" = the built-in profile defaults (tiny)
  bool json{false};
  std::string system_root{"/"};
  std::uint32_t probe_timeout_ms{2000};
};

// Runs every check (none stops the others); the config check failing skips the ones that need a config.
std::vector<check> run_doctor(doctor_options const& o);
// 1 when any check failed, else 0 (warnings do not fail).
int doctor_command(doctor_options const& o, std::ostream& out, std::ostream& err);

// A blocking HTTP/1.1 GET to host:port within timeout_ms (probe.cpp): status and body (≤ 1 MiB), or an error
// saying what happened (refused, timed out, not HTTP).
struct probe_reply {
  int status{0};
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
};
result<probe_reply> http_get(std::string const& host, std::uint16_t port, std::string const& target,
                             std::uint32_t timeout_ms, std::string const& bearer = "");

// ---------------------------------------------------------------------------------------------------------------
// ray model pull / list / rm — staging model files (spec/operations.md "ray model pull"; pull.cpp,
// download.cpp, model_store.cpp, model_cli.cpp)
//
// A pull downloads (http, https, hf://) or copies (a local path) into <models-dir>/.partial/<name>, hashing
// as it goes, and only a complete, hash-checked, GGUF-valid file is renamed to <models-dir>/<name>.gguf (with
// the sidecar <name>.gguf.sha256 in `sha256sum` format). A failed pull leaves nothing in the models dir
// itself; a pull that ran out of retries keeps its partial for the next run of the same command to resume.

// hf://OWNER/REPO/PATH → https://huggingface.co/OWNER/REPO/resolve/main/PATH; any other text is returned as
// is. Error when an hf:// source lacks the owner, the repo or the file.
result<std::string> expand_source(std::string_view source);
// A name is 1–128 bytes without '/', '\\', NUL or control characters and does not start with '.'.
result<void> check_model_name(std::string_view name);
// The default name: the last path segment of a URL (percent-decoded) or a path's file name, without ".gguf".
std::string default_model_name(std::string_view source);
// /var/lib/ray/models for root, else $XDG_DATA_HOME/ray/models (when absolute), else
// $HOME/.local/share/ray/models; error when none applies. Pointers may be null (unset).
result<std::string> default_models_dir(unsigned euid, char const* xdg_data_home, char const* home);
// Where a redirect goes: `location` (absolute or relative) resolved against `current`. Refuses schemes other
// than http and https, and https → http.
result<std::string> resolve_redirect(std::string_view current, std::string_view location);
// A Content-Range value "bytes FIRST-LAST/TOTAL" (TOTAL may be "*"); "bytes */TOTAL" (a 416) has no range.
struct content_range {
  std::optional<std::uint64_t> first, last, total;
};
std::optional<content_range> parse_content_range(std::string_view value);

struct pull_options {
  std::string source;      // URL (http://, https://, hf://) or a local path
  std::string sha256;      // expected digest (hex, either case); "" = computed and recorded, not checked
  std::string models_dir;  // "" = default_models_dir()
  std::string name;        // "" = default_model_name(source)
  int max_redirects{5};
  int max_retries{5};  // consecutive attempts that brought no new byte
  std::uint32_t connect_timeout_ms{15'000};
  std::uint32_t idle_timeout_ms{30'000};  // no byte for this long ends an attempt
  std::uint32_t first_backoff_ms{250};    // doubles per retry, at most 8 s
  std::optional<bool> tty{};              // progress style; nullopt = isatty(2)
};
// 0 installed, 1 download or verification failure, 2 usage (bad name, digest, source, models dir).
int pull_command(pull_options const& o, std::ostream& out, std::ostream& err);

struct model_entry {
  std::string name;  // without ".gguf"
  std::string path;
  std::uint64_t size{0};
  std::string architecture;  // "" when the header is unreadable (error says why)
  std::string quantization;  // general.file_type's name, e.g. "Q4_K_M"
  std::optional<std::uint64_t> context_length;
  std::string sha256;  // from the sidecar when it is not older than the file, else computed (and cached)
  std::string error;
};
// Every <name>.gguf in `dir`, by name. Error when the directory cannot be read.
result<std::vector<model_entry>> list_models(std::string const& dir);
int list_command(std::string const& models_dir, bool json, std::ostream& out, std::ostream& err);
// Removes <name>.gguf, its sidecar and any partial of that name; 1 when there was nothing to remove.
int rm_command(std::string const& models_dir, std::string const& name, std::ostream& out, std::ostream& err);

struct model_cli_options {
  pull_options pull;
  std::string models_dir;  // list / rm
  std::string name;        // rm
  bool json{false};        // list
};
// `ray model pull|list|rm` (model_cli.cpp); main.cpp dispatches with run_model when the returned command ran.
CLI::App* add_model_command(CLI::App& app, model_cli_options& o);
int run_model(CLI::App const& model, model_cli_options& o, std::ostream& out, std::ostream& err);

// ---------------------------------------------------------------------------------------------------------------
// CLI11 registration (ops_cli.cpp): main.cpp calls these, then dispatches on the returned subcommand.

struct cli_options {
  tune_options tune;
  render_options render;
  std::string render_nodes;  // raw --nodes (parsed by the dispatcher: errors exit 2)
  doctor_options doctor;
};
CLI::App* add_tune_command(CLI::App& app, cli_options& o);
CLI::App* add_deploy_command(CLI::App& app, cli_options& o);  // `ray deploy render`
CLI::App* add_doctor_command(CLI::App& app, cli_options& o);
// After parsing: runs whichever of the three was chosen; nullopt when none was.
std::optional<int> run_chosen(CLI::App& app, cli_options& o, std::ostream& out, std::ostream& err);

}  // namespace ray::ops
