// ray::runtime registry — the models one Ray serves (spec/models.md): each model has its own backend and its
// own serving core (a runtime: admission queue, slot accounting, cache, flights); the registry routes a
// request to one by name and kind, and decides which supervised backends are loaded within the memory
// budget (residency.memoryBudgetMiB): load on demand, unload after idleUnloadMs, evict idle unpinned models
// least recently used first, never a busy or loading one; a request that cannot be served before its
// deadline gets model_swap_busy with Retry-After from the measured load time (or the busy models' drain).
//
// A one-model config is a registry of one, served exactly as before (the first model's runtime uses the
// process's metrics registry, so every existing metric keeps its name and meaning).
//
// Threading: confined to the executor it was made with, like the runtimes it holds.
#pragma once

#include "ray/backend/backend.hpp"
#include "ray/config/config.hpp"
#include "ray/core/core.hpp"
#include "ray/runtime/runtime.hpp"
#include "ray/telemetry/telemetry.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ray::system {
class sampler;
}
namespace ray::backend {
class supervisor;
}

namespace ray::runtime {

// A model's residency state (models.md "Visibility").
enum class model_state : std::uint8_t { unloaded, loading, warming, ready, unloading, failed };
std::string_view model_state_name(model_state s) noexcept;

// What /v1/models, /health.models[] and /readyz show of one model.
struct model_view {
  std::string id;
  std::vector<std::string> aliases;
  config::model_kind kind{config::model_kind::chat};
  model_state state{model_state::unloaded};
  backend::state provider{backend::state::unknown};
  bool pinned{false};
  bool supervised{false};
  std::uint32_t idle_unload_ms{0};
  std::optional<double> estimated_mib{};  // from the GGUF header (supervised models)
  std::optional<double> rss_mib{};        // measured RSS of its process while running
  std::optional<double> last_load_ms{};
  bool load_ms_estimated{false};  // last_load_ms is an estimate (never loaded yet)
  std::uint64_t load_count{0};
  std::uint32_t in_flight{0};
  std::uint32_t queued{0};
  std::uint32_t requests{0};        // requests holding the model: waiting for it to load, queued or running
  std::uint32_t context_window{0};  // per request, as its runtime applies it
  std::string quantization;
  config::adapter_kind adapter{config::adapter_kind::mock};
};

class registry;

// A request's hold on one model: while any lease is alive the model is busy and is never unloaded. Move-only;
// releasing (destruction) records the model's last use for idle unload and LRU.
class model_lease {
 public:
  model_lease() = default;
  model_lease(model_lease&& o) noexcept;
  model_lease& operator=(model_lease&& o) noexcept;
  model_lease(model_lease const&) = delete;
  model_lease& operator=(model_lease const&) = delete;
  ~model_lease();

  runtime& core() const noexcept;
  config::model_config const& model() const noexcept;
  explicit operator bool() const noexcept { return reg_ != nullptr; }

 private:
  friend class registry;
  model_lease(registry* r, std::size_t index) : reg_(r), index_(index) {}
  void release() noexcept;
  registry* reg_{nullptr};
  std::size_t index_{0};
};

class registry {
 public:
  // Builds one backend and one runtime per model of `cfg` (cfg.model, then cfg.more_models). `make_backend`
  // makes the backend of one model (mock or remote; the per-model config has that model as `model`).
  // `sampler` may be null. Nothing starts until start().
  using backend_factory = std::function<std::unique_ptr<backend::backend>(config::config const& per_model)>;
  registry(boost::asio::any_io_executor ex, config::config const& cfg, backend_factory make_backend,
           telemetry::registry& metrics, telemetry::logger& log, system::sampler* sampler = nullptr,
           ray::clock const& clock = ray::system_clock());
  ~registry();
  registry(registry const&) = delete;
  registry& operator=(registry const&) = delete;

  // The model a request names: id or alias, case-insensitive; "" = the first model of `kind`. An unknown
  // name is the first model of `kind` (lenient) or errc::model_not_found with openai.strictModelNames
  // (`strict`). A model of another kind is errc::model_kind_mismatch. Loads an unloaded supervised model
  // (unloading idle ones to make room) and waits for it until `deadline`; when that cannot happen in time:
  // errc::model_swap_busy with retry_after_ms from the measured load (or drain) time.
  boost::asio::awaitable<result<model_lease>> acquire(std::string_view name, config::model_kind kind,
                                                      bool strict, ray::clock::time_point deadline);

  // The id of the model `name` would be served by (as acquire() chooses, without loading anything); the
  // first model of `kind` for an unknown name, "" when there is none.
  std::string served_id(std::string_view name, config::model_kind kind) const;

  // The first chat model's runtime (the one-model paths: jobs, warm-up, /health's runtime section).
  runtime& primary() noexcept;
  backend::backend& primary_backend() noexcept;
  backend::supervisor* primary_supervisor() noexcept;  // nullptr when the first chat model is attached
  std::size_t size() const noexcept;
  std::vector<model_view> views() const;

  // Why this registry cannot serve (a supervised model that cannot fit residency.memoryBudgetMiB even
  // alone); nullopt when it can. serve refuses to start on it.
  std::optional<std::string> refusal() const;

  // Starts the backends (attach/warm-up) and the loads of models that should be resident at boot (the first
  // model, pinned models, warmOnBoot ones).
  void start();
  // Stops every backend and supervised process; `done` runs once every process has exited.
  void stop(std::function<void()> done);

 private:
  friend class model_lease;
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace ray::runtime
