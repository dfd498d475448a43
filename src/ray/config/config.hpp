// ray::config — the typed configuration (schema of shared/spec/config.md), its built-in profiles, the loader
// (profile < JSON file < RAY_* env < flags), validation, and the explain/defaults views.
//
// Naming: every member is the snake_case form of the JSON key of the TypeScript gateway
// (`requestBodyLimitBytes` → `request_body_limit_bytes`). Units are in the name (…_ms, …_bytes, …_mib). Plain
// data, no I/O in the structs. Thread-safety: a loaded `config` is immutable and may be shared read-only
// between threads.
#pragma once

#include "ray/core/core.hpp"

#include <boost/json/value.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace ray::config {

inline constexpr std::string_view profile_names[] = {"tiny",   "sub1b", "sub1b-cax11", "1b",
                                                     "1b-8gb", "vps",   "balanced"};

struct server_config {
  std::string host{"127.0.0.1"};
  std::uint32_t port{3000};
  std::uint32_t request_body_limit_bytes{32'000};
  std::uint32_t threads{1};
  std::uint32_t max_connections{256};
  // Open connections one direct client address (an IPv6 client counts as its /64) may hold; peers listed in
  // rateLimit.trustedProxies are exempt (they carry many clients).
  std::uint32_t max_connections_per_client{64};
  std::uint32_t max_header_bytes{12'288};
  std::uint32_t max_headers{64};
  std::uint32_t max_target_bytes{8192};
  std::uint32_t headers_timeout_ms{15'000};
  // The header deadline while the server is under connection pressure (>= 90 % of maxConnections).
  std::uint32_t headers_timeout_under_pressure_ms{2'000};
  std::uint32_t body_timeout_ms{30'000};
  // A request body slower than this (after its first second) is answered 408; 0 turns the check off.
  std::uint32_t min_body_bytes_per_second{1024};
  std::uint32_t keep_alive_timeout_ms{75'000};
  std::uint32_t max_requests_per_connection{1000};
  std::uint32_t sse_keep_alive_ms{10'000};
  std::uint32_t stream_buffer_bytes{1u << 20};
  std::uint32_t shutdown_grace_ms{25'000};
  // On SIGTERM, answer /readyz 503 `draining` while still serving for this long, so a load balancer's health
  // check takes the node out before it stops (spec/scale-out.md). 0 (the default): one box behind no balancer
  // has nobody to drain to, so the stop is not delayed.
  std::uint32_t drain_ms{0};
  std::vector<std::string> cors_allow_origins{};
  bool allow_unauthenticated_public{false};

  friend bool operator==(server_config const&, server_config const&) = default;
};

struct openai_config {
  bool strict_model_names{false};
  std::optional<std::uint32_t> default_max_tokens{};  // unset = model.max_output_tokens

  friend bool operator==(openai_config const&, openai_config const&) = default;
};

// A warm-up request: the /v1/infer body fields it may carry (validated like a request at load time).
struct warmup_request {
  std::optional<std::string> input{};
  std::optional<std::string> system{};
  std::optional<std::string> template_id{};
  std::map<std::string, std::string> template_variables{};
  std::optional<std::uint32_t> max_tokens{};
  std::optional<double> temperature{};
  std::optional<std::int64_t> seed{};

  friend bool operator==(warmup_request const&, warmup_request const&) = default;
};

struct launch_profile {
  std::string preset{};
  std::string binary_path{"/usr/local/bin/llama-server"};
  std::string model_path{};  // default /var/lib/ray/models/<modelRef>.gguf
  std::string host{"127.0.0.1"};
  std::uint32_t port{8081};
  std::string alias{};
  std::uint32_t ctx_size{3072};
  std::uint32_t parallel{2};
  std::uint32_t threads{2};
  std::optional<std::uint32_t> threads_batch{};
  std::optional<std::uint32_t> threads_http{};
  std::uint32_t batch_size{256};
  std::uint32_t ubatch_size{128};
  std::uint32_t cache_reuse{256};
  std::int64_t cache_ram_mib{512};  // -1 unlimited, 0 off
  bool cache_prompt{true};
  bool continuous_batching{true};
  bool enable_metrics{true};
  bool expose_slots{true};
  bool warmup{true};
  bool enable_unified_kv{false};
  bool cache_idle_slots{true};
  bool context_shift{false};
  std::vector<std::string> extra_args{};
  bool supervise{false};
  std::uint32_t load_timeout_ms{300'000};

  friend bool operator==(launch_profile const&, launch_profile const&) = default;
};

enum class adapter_kind { mock, openai_compatible, llama_cpp };
// What a model serves (models.md): chat/completions, embeddings (/v1/embeddings) or rerank (/v1/rerank).
enum class model_kind { chat, embedding, rerank };
std::string_view model_kind_name(model_kind k) noexcept;      // "chat" | "embedding" | "rerank"
std::string_view adapter_kind_name(adapter_kind k) noexcept;  // "mock" | "openai-compatible" | "llama.cpp"

struct adapter_config {
  adapter_kind kind{adapter_kind::mock};
  // mock
  std::uint32_t latency_ms{35};
  std::string seed{"ray"};
  std::uint32_t tokens_per_second{0};
  std::uint32_t dimensions{64};  // mock embeddings: length of the unit vectors
  // openai-compatible and llama.cpp
  std::string base_url{};
  std::string model_ref{};
  std::uint32_t timeout_ms{18'000};
  std::optional<std::string> api_key_env{};
  std::map<std::string, std::string> headers{};
  std::vector<warmup_request> warmup_requests{};
  // llama.cpp
  bool cache_prompt{true};
  std::optional<std::int32_t> slot_id{};
  std::uint32_t slot_state_ttl_ms{250};
  std::uint32_t slot_snapshot_timeout_ms{250};
  std::uint32_t health_interval_ms{2000};
  std::uint32_t health_timeout_ms{5000};
  std::optional<launch_profile> launch{};  // JSON key "launchProfile"
  // llama.cpp embedding models: llama-server's --pooling (none|mean|cls|last|rank); unset = the GGUF's.
  std::optional<std::string> pooling{};

  friend bool operator==(adapter_config const&, adapter_config const&) = default;
};

struct model_config {
  std::string id{"tiny-dev"};
  std::string family{"tiny"};
  std::string quantization{"unknown"};
  std::uint32_t context_window{4096};
  std::uint32_t max_output_tokens{192};
  bool warm_on_boot{false};
  std::vector<std::string> aliases{};
  adapter_config adapter{};
  model_kind kind{model_kind::chat};
  bool pinned{false};  // never unloaded by the residency manager
  // Unload a supervised backend after this long without requests; 0 = never. Unset: 0 for the first model,
  // 600 000 for the others (models.md).
  std::optional<std::uint32_t> idle_unload_ms{};

  friend bool operator==(model_config const&, model_config const&) = default;
};

// How several models share the box (models.md "Residency").
struct residency_config {
  // Memory all supervised backends together may use; unset = the box's RAM or cgroup limit minus reserveMiB.
  std::optional<std::uint32_t> memory_budget_mib{};
  std::uint32_t reserve_mib{512};
  // What the attached backends (not supervised: always resident) use; unset = not counted.
  std::optional<std::uint32_t> count_attached_mib{};

  friend bool operator==(residency_config const&, residency_config const&) = default;
};

struct scheduler_config {
  std::uint32_t concurrency{1};
  std::uint32_t max_queue{32};
  std::uint32_t max_queued_tokens{12'000};
  std::uint32_t max_inflight_tokens{2500};
  std::uint32_t request_timeout_ms{8000};
  bool dedupe_inflight{true};
  std::uint32_t batch_window_ms{0};
  std::uint32_t affinity_lookahead{8};
  std::uint32_t short_job_max_tokens{96};
  std::optional<std::uint32_t> queue_timeout_ms{};        // unset = request_timeout_ms
  std::optional<std::uint32_t> first_token_timeout_ms{};  // unset = request_timeout_ms
  std::uint32_t idle_token_timeout_ms{30'000};
  std::uint32_t starvation_ms{2000};

  friend bool operator==(scheduler_config const&, scheduler_config const&) = default;
};

enum class cache_key_strategy { input, input_params };
std::string_view cache_key_strategy_name(cache_key_strategy k) noexcept;  // "input" | "input+params"

// Whether callers with different API keys share cached and deduplicated answers. `key` (the default) keeps
// them apart: a shared cache lets one key learn, by timing, what another asked. Without auth every caller is
// the same one, so the two are equal.
enum class cache_scope { global, key };
std::string_view cache_scope_name(cache_scope s) noexcept;  // "global" | "key"

struct cache_config {
  bool enabled{true};
  std::uint32_t max_entries{128};
  std::uint64_t max_bytes{1u << 20};
  std::uint32_t ttl_ms{30'000};
  cache_key_strategy key_strategy{cache_key_strategy::input_params};
  cache_scope scope{cache_scope::key};

  friend bool operator==(cache_config const&, cache_config const&) = default;
};

struct degradation_config {
  bool enabled{true};
  std::uint32_t queue_depth_threshold{8};
  std::uint32_t max_prompt_chars{4000};
  std::uint32_t degrade_to_max_tokens{96};
  std::uint32_t memory_rss_threshold_mib{256};
  double memory_cgroup_pressure_ratio_threshold{0.9};
  double cpu_throttled_ratio_threshold{0.2};
  double memory_psi_some_avg10_threshold{10};
  double memory_psi_full_avg10_threshold{1};
  double cpu_psi_some_avg10_threshold{50};
  double cpu_psi_full_avg10_threshold{5};
  double shed_at_memory_psi_full_avg10{20};
  std::vector<std::string> watch_cgroups{};

  friend bool operator==(degradation_config const&, degradation_config const&) = default;
};

struct prompt_compiler_config {
  bool enabled{true};
  bool collapse_whitespace{true};
  bool dedupe_repeated_lines{true};
  std::vector<std::string> family_metadata_keys{"promptFamily", "taskTemplate", "template", "useCase"};

  friend bool operator==(prompt_compiler_config const&, prompt_compiler_config const&) = default;
};

enum class lane { short_lane, draft };
std::string_view lane_name(lane l) noexcept;  // "short" | "draft"

struct template_config {
  std::string family{};
  lane lane_{lane::draft};  // JSON key "lane": "short" | "draft"
  std::optional<std::string> system{};
  std::string input{};
  std::vector<std::string> variables{};
  std::optional<std::uint32_t> default_max_tokens{};
  std::optional<std::string> response_format{};  // "text" | "json_object"

  friend bool operator==(template_config const&, template_config const&) = default;
};

// Where durable jobs are kept: the embedded SQLite file, or a PostgreSQL database several nodes share.
enum class job_store_kind { sqlite, postgres };
std::string_view job_store_kind_name(job_store_kind k) noexcept;  // "sqlite" | "postgres"

struct async_queue_config {
  bool enabled{false};
  job_store_kind store{job_store_kind::sqlite};
  std::string storage_dir{"./data/async-queue"};
  std::uint32_t max_jobs{32};
  std::uint32_t min_free_storage_mib{64};
  std::uint64_t completed_ttl_ms{86'400'000};
  std::uint32_t poll_interval_ms{1000};
  std::uint32_t dispatch_concurrency{1};
  std::uint32_t max_attempts{3};
  std::uint32_t callback_timeout_ms{5000};
  std::uint32_t max_callback_attempts{5};
  std::vector<std::string> callback_allowed_hosts{};
  bool callback_allow_private_network{false};
  std::optional<std::string> callback_secret_env{};
  // store = postgres: the environment variable holding the libpq connection string or URI (the string itself,
  // which may carry a password, is never in the config); required then.
  std::optional<std::string> postgres_url_env{};
  std::uint32_t lease_ms{
      30'000};  // store = postgres: how long a node's claim on a running job lasts unrenewed

  friend bool operator==(async_queue_config const&, async_queue_config const&) = default;
};

enum class log_level { debug, info, warn, error };
std::string_view log_level_name(log_level l) noexcept;  // "debug" | "info" | "warn" | "error"

struct telemetry_config {
  std::string service_name{"ray-gateway"};
  log_level level{log_level::info};  // JSON key "logLevel"
  std::uint32_t slow_request_threshold_ms{750};

  friend bool operator==(telemetry_config const&, telemetry_config const&) = default;
};

struct auth_config {
  bool enabled{false};
  std::string api_key_env{"RAY_API_KEYS"};
  std::vector<std::string> api_key_sha256{};

  friend bool operator==(auth_config const&, auth_config const&) = default;
};

enum class rate_limit_key { ip, api_key, ip_api_key };
std::string_view rate_limit_key_name(rate_limit_key k) noexcept;  // "ip" | "api-key" | "ip+api-key"

struct rate_limit_config {
  bool enabled{false};
  std::uint32_t window_ms{60'000};
  std::uint32_t max_requests{120};
  std::uint32_t max_keys{2048};
  rate_limit_key key_strategy{rate_limit_key::ip};
  bool trust_proxy_headers{false};
  // The peers (addresses or CIDR blocks) whose X-Forwarded-For is believed when trustProxyHeaders is on:
  // loopback by default (a reverse proxy on the same box); list a proxy on a private network explicitly —
  // any private peer is not a proxy of ours.
  std::vector<std::string> trusted_proxies{"127.0.0.0/8", "::1"};

  friend bool operator==(rate_limit_config const&, rate_limit_config const&) = default;
};

struct config {
  std::string profile{"tiny"};
  server_config server{};
  openai_config openai{};
  // The first model (JSON `model`, or `models[0]`): every single-model path serves this one.
  model_config model{};
  // models[1..] (JSON `models` after its first element); empty for a one-model config.
  std::vector<model_config> more_models{};
  residency_config residency{};
  scheduler_config scheduler{};
  cache_config cache{};
  degradation_config graceful_degradation{};
  prompt_compiler_config prompt_compiler{};
  std::map<std::string, template_config> templates{};  // JSON "prompts": {"templates": {...}}
  async_queue_config async_queue{};
  telemetry_config telemetry{};
  auth_config auth{};
  rate_limit_config rate_limit{};
  std::map<std::string, std::string> tags{};

  friend bool operator==(config const&, config const&) = default;
};

// The complete built-in defaults of a profile (config.md "Profiles"), or an error for an unknown name.
// Where the table of config.md is silent the values are listed in profiles.cpp. Derived values are filled in:
// launchProfile.modelPath = /var/lib/ray/models/<modelRef>.gguf, launchProfile.alias = modelRef.
result<config> profile_defaults(std::string_view profile);

// The four built-in email templates (spec/serving-core.md "Templates"), keyed by template id. Templates of
// the config (`config::templates`) are added to these and may not reuse their ids.
std::map<std::string, template_config> const& builtin_templates();

// The `{{ name }}` placeholder names of a template text, in order of appearance (repeats included).
std::vector<std::string> template_placeholders(std::string_view text);

// Every range and cross-field rule of config.md, on a complete config (load() calls it after all layers;
// tools that build a config in code call it too). The error names the JSON path, the value and the rule.
// scheduler.maxInflightTokens above launchProfile.ctxSize is *not* an error here: load() caps it with a
// warning.
result<void> validate(config const& cfg);

// True for "localhost", 127.0.0.0/8 and ::1 (with or without brackets).
bool is_loopback_host(std::string_view host) noexcept;

// Command-line flags of `ray serve` that override config (highest precedence). Unset = not given.
struct flag_overrides {
  std::optional<std::string> profile{};
  std::optional<std::string> host{};
  std::optional<std::uint32_t> port{};
  std::optional<std::string> backend_url{};   // selects the llama.cpp adapter at that URL
  std::optional<std::string> model_path{};    // llama.cpp + launchProfile.supervise
  std::optional<std::string> llama_server{};  // launchProfile.binaryPath
  bool allow_unauthenticated_public{false};
};

// Where a value came from: "profile:<name>", "file", "env:RAY_X", "flag:--port". A loaded config has one
// entry per leaf of to_json() (scalars, arrays, nulls, empty objects; map entries such as "tags.owner" are
// leaves); fields a layer created without naming (a launchProfile introduced by the file) carry that layer's
// source.
using source_map = std::map<std::string, std::string>;  // JSON path ("server.port") -> source

// A warning produced while loading (ignored TypeScript-era keys, unknown RAY_* variables, capped values).
struct load_warning {
  std::string message;
  boost::json::object fields{};
};

struct loaded_config {
  config cfg;
  source_map sources;
  std::vector<load_warning> warnings;
};

// Environment access is injected so tests do not touch the process environment.
using env_map = std::map<std::string, std::string>;
env_map process_environment();  // the RAY_* variables of this process
// The RAY_* variables plus the named ones (e.g. referenced_env_names(cfg): the API-key variable of `auth`).
env_map process_environment(std::vector<std::string> const& extra_names);
// Names of the environment variables a config refers to for secrets: auth.apiKeyEnv, model.adapter.apiKeyEnv,
// asyncQueue.callbackSecretEnv (the ones that are set in the config).
std::vector<std::string> referenced_env_names(config const& cfg);

// Loads: profile defaults < file (if path non-empty) < env < flags, then validates everything.
// - The file: a regular file of at most 256 KiB holding a JSON object (errors say which, or give the line and
//   column of a JSON syntax error). Objects merge deeply over the profile; arrays and scalars replace; `null`
//   resets an optional field (e.g. "launchProfile": null removes the profile's launch profile).
// - Launch-profile variables (RAY_LLAMA_CPP_*, RAY_MODEL_PATH) apply only to llama.cpp with a launchProfile
//   (which a flag may create: --model-path); a flag beats the variable for the same field.
// - Derived, unless some layer sets them: launchProfile.modelPath = /var/lib/ray/models/<modelRef>.gguf and
//   launchProfile.alias = modelRef (model.id when modelRef is empty); a llama.cpp baseUrl follows the launch
//   profile's host:port. apiKeySha256 digests are lowercased.
// - Warnings (load_warning, at most one of each kind): ignored TypeScript-era keys, unknown RAY_* variables
//   (names only, never values), launch variables without a launch profile, maxInflightTokens capped.
// Errors are errc::invalid_request with one line naming the JSON path, the value and the rule, plus which
// setting supplied it when it was not the file (`scheduler.maxQueue: 0 is below the minimum 1 (set by
// RAY_SCHEDULER_MAX_QUEUE)`); `param` holds the path. Unknown keys get the closest valid key suggested. Does
// not check that secrets, model files or dirs exist.
result<loaded_config> load(std::string const& file_path, env_map const& env, flag_overrides const& flags);

// Same, from JSON text already read (tests and `config validate` of stdin); the text counts as a config file.
result<loaded_config> load_from_text(std::string_view json_text, env_map const& env,
                                     flag_overrides const& flags);

// The effective config as JSON in the TypeScript gateway's camelCase layout (complete: every field; unset
// optionals are null; built-in templates are not included). Loading it as a file gives back an equal config.
boost::json::object to_json(config const& cfg);
// The same with secrets redacted (adapter header values, key digests) — what /v1/config serves, plus
// "_sources".
boost::json::object to_public_json(loaded_config const& loaded);
// `ray config explain`: every effective value with its source, one per line: `server.port = 3000
// (profile:tiny)`. Secrets are redacted as in to_public_json.
std::string explain(loaded_config const& loaded);

// A llama-server flag whose value is a credential (--api-key, --hf-token, -hft, anything naming a key, token,
// secret or password): the one rule /v1/config, `config explain`, the supervisor's logged command line and
// its scrubbing of the child's output share.
bool is_secret_flag(std::string_view flag);
// The values of the secret flags in an argument list ("--api-key X" — X whatever it looks like — and
// "--api-key=X").
std::vector<std::string> secret_arg_values(std::span<std::string const> args);

}  // namespace ray::config
