#include "ray/runtime/registry.hpp"

#include "ray/backend/supervisor.hpp"
#include "ray/gguf/gguf.hpp"
#include "ray/system/system.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>

namespace ray::runtime {

namespace asio = boost::asio;

std::string_view model_state_name(model_state s) noexcept {
  switch (s) {
    case model_state::unloaded:
      return "unloaded";
    case model_state::loading:
      return "loading";
    case model_state::warming:
      return "warming";
    case model_state::ready:
      return "ready";
    case model_state::unloading:
      return "unloading";
    case model_state::failed:
      return "failed";
  }
  return "unloaded";
}

namespace {

constexpr double mib = 1024.0 * 1024.0;
// Re-check period of a request waiting for a load or for room (only while someone waits).
constexpr auto wait_step = std::chrono::milliseconds(20);
// First-load estimate when a model was never loaded: its file read at this rate, plus a second for the
// process start and warm-up (marked as an estimate wherever it is shown).
constexpr double assumed_read_bytes_per_second = 200.0 * mib;
constexpr double load_buckets[] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::string kind_word(config::model_kind k) {
  return std::string(config::model_kind_name(k));
}

}  // namespace

// One model: its per-model config view, backend, serving core and (supervised) process.
struct registry::impl {
  struct entry {
    // This model as `model`: the first model serves from the live config (SIGHUP reloads reach it as
    // before); the others from their own copy made at start.
    std::unique_ptr<config::config> own_cfg;
    config::config const* cfg{nullptr};
    std::unique_ptr<telemetry::registry> metrics;  // models after the first: their own (not exported)
    std::unique_ptr<backend::backend> be;
    std::unique_ptr<runtime> rt;
    std::unique_ptr<backend::supervisor> sup;  // supervised models only
    model_state state{model_state::unloaded};
    std::uint32_t leases{0};
    std::vector<ray::clock::time_point> lease_deadlines;  // of the requests holding it (drain estimate)
    ray::clock::time_point last_used{};
    std::optional<std::uint64_t> estimated_bytes{};
    std::optional<double> last_load_ms{};
    bool load_estimated{true};
    std::uint64_t load_count{0};
    ray::clock::time_point load_started{};
    std::string failure{};
    // A refused request asked for this model: load it as soon as there is room (until then, so a client
    // told to retry finds it loaded; the wish lapses if nobody comes back).
    std::optional<ray::clock::time_point> wanted_until{};
    std::unique_ptr<asio::steady_timer> idle_timer;
    std::uint32_t idle_unload_ms{0};

    config::model_config const& model() const { return cfg->model; }
    bool supervised() const { return sup != nullptr; }
    // Counted against the budget: everything that holds (or may still hold) memory.
    bool holds_memory() const {
      return state == model_state::loading || state == model_state::warming || state == model_state::ready ||
             state == model_state::unloading;
    }
  };

  impl(asio::any_io_executor e, config::config const& c, backend_factory make, telemetry::registry& m,
       telemetry::logger& l, system::sampler* s, ray::clock const& clk)
      : ex(std::move(e)),
        cfg(c),
        log(l),
        sampler(s),
        clock(clk),
        metrics(m),
        loads(m.add_counter("ray_model_loads_total", "Model loads, by outcome (ok | failed).",
                            {"model", "outcome"})),
        unloads(m.add_counter("ray_model_unloads_total", "Model unloads, by reason (idle | evicted).",
                              {"model", "reason"})),
        load_seconds(m.add_histogram("ray_model_load_seconds",
                                     "Time from starting a model's server to its first ready answer.",
                                     {"model"}, load_buckets)) {
    std::size_t const n = 1 + c.more_models.size();
    for (std::size_t i = 0; i < n; ++i) {
      auto en = std::make_shared<entry>();
      if (i == 0) {
        en->cfg = &c;
      } else {
        en->own_cfg = std::make_unique<config::config>(c);
        en->own_cfg->model = c.more_models[i - 1];
        en->own_cfg->more_models.clear();
        en->cfg = en->own_cfg.get();
      }
      auto const& md = en->cfg->model;
      en->idle_unload_ms = md.idle_unload_ms.value_or(i == 0 ? 0u : 600'000u);
      en->be = make(*en->cfg);
      if (i > 0) en->metrics = std::make_unique<telemetry::registry>();
      en->rt = std::make_unique<runtime>(ex, *en->cfg, *en->be, i == 0 ? m : *en->metrics, l, s, clk);
      en->idle_timer = std::make_unique<asio::steady_timer>(ex);
      auto const& a = md.adapter;
      if (a.kind == config::adapter_kind::llama_cpp && a.launch && a.launch->supervise) {
        en->sup = std::make_unique<backend::supervisor>(
            ex, backend::supervisor_options_for(*a.launch, "", "", md.kind, a.pooling), l);
        std::weak_ptr<entry> w = en;
        bool const first = i == 0;
        en->sup->on_state([w, s, first, this](backend::state st, std::string const& reason) {
          auto e = w.lock();
          if (!e) return;
          if (first && s)
            s->set_backend_pid(e->sup->pid() ? std::optional<int>(*e->sup->pid()) : std::nullopt);
          e->be->set_process_state(st, reason);
          if (st == backend::state::failed && e->state != model_state::unloading) {
            if (e->state == model_state::loading) loads.with({e->model().id, "failed"}).inc();
            e->state = model_state::failed;
            e->failure = reason;
          }
        });
        // The first /health 200 after a spawn ends the load: its time is what the next waiter is told.
        en->be->on_answering([w, this]() -> std::optional<double> {
          auto e = w.lock();
          if (!e) return std::nullopt;
          auto ms = e->sup->mark_ready();
          note_loaded(*e, ms);
          return ms;
        });
        // The estimate the budget counts (the same memory model as the supervisor's own fit check).
        auto opts = backend::supervisor_options_for(*a.launch, "", "", md.kind, a.pooling);
        if (auto info = gguf::read_header_file(opts.model_path))
          if (auto est = gguf::estimate_memory(*info, opts.memory)) en->estimated_bytes = est->total;
        struct stat st {};
        if (en->estimated_bytes && ::stat(opts.model_path.c_str(), &st) == 0)
          en->last_load_ms = 1000.0 + double(st.st_size) / assumed_read_bytes_per_second * 1000.0;
      } else {
        // Attached (or mock): always resident; Ray can neither load nor unload it.
        en->state = model_state::ready;
        en->load_estimated = false;
      }
      entries.push_back(std::move(en));
    }
    budget_bytes = compute_budget();
    register_metrics();
  }

  std::uint64_t compute_budget() const {
    if (cfg.residency.memory_budget_mib) return std::uint64_t{*cfg.residency.memory_budget_mib} * 1024 * 1024;
    auto lim = backend::read_memory_limit("");
    std::uint64_t const reserve = std::uint64_t{cfg.residency.reserve_mib} * 1024 * 1024;
    if (!lim) return std::numeric_limits<std::uint64_t>::max() / 2;
    return lim->bytes > reserve ? lim->bytes - reserve : 0;
  }

  std::uint64_t used_bytes() const {
    std::uint64_t used =
        cfg.residency.count_attached_mib ? std::uint64_t{*cfg.residency.count_attached_mib} * 1024 * 1024 : 0;
    for (auto const& e : entries)
      if (e->supervised() && e->holds_memory()) used += e->estimated_bytes.value_or(0);
    return used;
  }

  void register_metrics() {
    auto states = metrics.add_gauge("ray_model_state", "1 for each model's current residency state.",
                                    {"model", "state"});
    for (auto const& e : entries) {
      for (auto s : {model_state::unloaded, model_state::loading, model_state::warming, model_state::ready,
                     model_state::unloading, model_state::failed}) {
        std::weak_ptr<entry> w = e;
        states.set_function({e->model().id, std::string(model_state_name(s))}, [w, this, s] {
          auto en = w.lock();
          return en && state_of(*en) == s ? 1.0 : 0.0;
        });
      }
    }
    auto bytes =
        metrics.add_gauge("ray_residency_bytes",
                          "The residency budget and the estimated bytes of the loaded models.", {"kind"});
    bytes.set_function({"budget"}, [this] { return double(budget_bytes); });
    bytes.set_function({"used"}, [this] { return double(used_bytes()); });
  }

  // The state shown: a supervised model's loading/warming come from its backend's probes.
  model_state state_of(entry const& e) const {
    if (!e.supervised()) return e.state;
    if (e.state == model_state::loading || e.state == model_state::warming || e.state == model_state::ready) {
      auto const b = e.be->current_state();
      if (backend::is_serving(b)) return model_state::ready;
      if (b == backend::state::warming) return model_state::warming;
      if (b == backend::state::failed || b == backend::state::misconfigured) return model_state::failed;
      return e.state == model_state::ready ? model_state::loading : e.state;
    }
    return e.state;
  }

  entry* find(std::string_view name, config::model_kind kind) const {
    if (name.empty()) {
      for (auto& e : entries)
        if (e->model().kind == kind) return e.get();
      return nullptr;
    }
    for (auto& e : entries) {
      if (iequals(e->model().id, name)) return e.get();
      for (auto const& a : e->model().aliases)
        if (iequals(a, name)) return e.get();
    }
    return nullptr;
  }

  std::size_t index_of(entry const* e) const {
    for (std::size_t i = 0; i < entries.size(); ++i)
      if (entries[i].get() == e) return i;
    return 0;
  }

  double expected_load_ms(entry const& e) const { return e.last_load_ms.value_or(5000.0); }

  void start_load(entry& e) {
    e.state = model_state::loading;
    e.failure.clear();
    e.load_started = clock.now();
    log.info("loading model",
             {{"model", e.model().id}, {"estimatedMiB", double(e.estimated_bytes.value_or(0)) / mib}});
    e.sup->start();
  }

  // A load that reached its first /health 200: remember how long it took (the next waiter's Retry-After).
  // `measured` is the supervisor's spawn → ready time.
  void note_loaded(entry& e, std::optional<double> measured) {
    if (e.state != model_state::loading && e.state != model_state::warming) return;
    e.state = model_state::ready;
    double const ms =
        measured.value_or(std::chrono::duration<double, std::milli>(clock.now() - e.load_started).count());
    e.last_load_ms = ms;
    e.load_estimated = false;
    ++e.load_count;
    loads.with({e.model().id, "ok"}).inc();
    load_seconds.with({e.model().id}).observe(ms / 1000.0);
    log.info("model ready", {{"model", e.model().id}, {"loadMs", ms}});
    arm_idle(e);
  }

  void unload(entry& e, std::string_view reason) {
    if (!e.supervised() || e.state == model_state::unloading || e.state == model_state::unloaded) return;
    e.state = model_state::unloading;
    e.idle_timer->cancel();
    unloads.with({e.model().id, std::string(reason)}).inc();
    log.info("unloading model", {{"model", e.model().id}, {"reason", reason}});
    std::weak_ptr<entry> w = entries[index_of(&e)];
    // The memory counts as free only once the process has exited.
    e.sup->stop([w, this] {
      auto en = w.lock();
      if (!en) return;
      if (en->state == model_state::unloading) en->state = model_state::unloaded;
      pump();
    });
  }

  void arm_idle(entry& e) {
    if (!e.supervised() || e.model().pinned || e.idle_unload_ms == 0 || e.leases > 0) return;
    e.idle_timer->expires_after(std::chrono::milliseconds(e.idle_unload_ms));
    std::weak_ptr<entry> w = entries[index_of(&e)];
    e.idle_timer->async_wait([w, this](boost::system::error_code ec) {
      if (ec) return;
      auto en = w.lock();
      if (!en || en->leases > 0 || state_of(*en) != model_state::ready) return;
      unload(*en, "idle");
    });
  }

  // Makes room for `want` by unloading idle, unpinned, ready models, least recently used first. Returns
  // true when it fits now; false when it must wait (busy models, or unloads still exiting).
  bool make_room(entry const& want) {
    std::uint64_t const need = want.estimated_bytes.value_or(0);
    std::uint64_t used = used_bytes();
    if (used + need <= budget_bytes) return true;
    std::vector<entry*> idle;
    for (auto& e : entries)
      if (e.get() != &want && e->supervised() && !e->model().pinned && e->leases == 0 &&
          state_of(*e) == model_state::ready)
        idle.push_back(e.get());
    std::sort(idle.begin(), idle.end(), [](entry* a, entry* b) { return a->last_used < b->last_used; });
    for (auto* e : idle) {
      if (used + need <= budget_bytes) break;
      unload(*e, "evicted");
      used -= std::min(used, e->estimated_bytes.value_or(0));
    }
    return false;  // unloads in progress count until their processes exit
  }

  // Starts the loads that refused requests asked for, when there is room now (after an unload finished or a
  // busy model went idle).
  void pump() {
    auto const now = clock.now();
    for (auto& e : entries) {
      if (!e->wanted_until) continue;
      if (*e->wanted_until < now || e->state != model_state::unloaded) {
        e->wanted_until.reset();
        continue;
      }
      if (make_room(*e)) {
        e->wanted_until.reset();
        start_load(*e);
      }
    }
  }

  // Whether `want` fits once every unpinned supervised model is gone.
  bool could_fit(entry const& want) const {
    std::uint64_t fixed =
        cfg.residency.count_attached_mib ? std::uint64_t{*cfg.residency.count_attached_mib} * 1024 * 1024 : 0;
    for (auto const& e : entries)
      if (e.get() != &want && e->supervised() && e->model().pinned && e->holds_memory())
        fixed += e->estimated_bytes.value_or(0);
    return fixed + want.estimated_bytes.value_or(0) <= budget_bytes;
  }

  // When the models standing in the way will have drained: the latest deadline of the requests holding
  // them (they end by then at the latest).
  double drain_ms(entry const& want) const {
    auto const now = clock.now();
    double worst = 0;
    for (auto const& e : entries) {
      if (e.get() == &want || !e->supervised() || !e->holds_memory()) continue;
      for (auto d : e->lease_deadlines)
        worst = std::max(worst, std::chrono::duration<double, std::milli>(d - now).count());
      if (e->state == model_state::unloading) worst = std::max(worst, 1000.0);
    }
    return worst;
  }

  asio::any_io_executor ex;
  config::config const& cfg;
  telemetry::logger& log;
  system::sampler* sampler;
  ray::clock const& clock;
  telemetry::registry& metrics;
  std::vector<std::shared_ptr<entry>> entries;
  std::uint64_t budget_bytes{0};
  telemetry::counter_family loads, unloads;
  telemetry::histogram_family load_seconds;
};

// --- model_lease

model_lease::model_lease(model_lease&& o) noexcept : reg_(o.reg_), index_(o.index_) {
  o.reg_ = nullptr;
}

model_lease& model_lease::operator=(model_lease&& o) noexcept {
  if (this != &o) {
    release();
    reg_ = o.reg_;
    index_ = o.index_;
    o.reg_ = nullptr;
  }
  return *this;
}

model_lease::~model_lease() {
  release();
}

void model_lease::release() noexcept {
  if (!reg_) return;
  auto& e = *reg_->impl_->entries[index_];
  if (e.leases > 0) --e.leases;
  // The earliest deadline leaves first (the drain estimate keeps the latest).
  if (!e.lease_deadlines.empty())
    e.lease_deadlines.erase(std::min_element(e.lease_deadlines.begin(), e.lease_deadlines.end()));
  e.last_used = reg_->impl_->clock.now();
  if (e.leases == 0) {
    try {
      reg_->impl_->arm_idle(e);
      reg_->impl_->pump();
    } catch (std::exception const& ex) {
      reg_->impl_->log.error("residency bookkeeping failed", {{"reason", ex.what()}});
    }
  }
  reg_ = nullptr;
}

runtime& model_lease::core() const noexcept {
  return *reg_->impl_->entries[index_]->rt;
}

config::model_config const& model_lease::model() const noexcept {
  return reg_->impl_->entries[index_]->model();
}

// --- registry

registry::registry(asio::any_io_executor ex, config::config const& cfg, backend_factory make_backend,
                   telemetry::registry& metrics, telemetry::logger& log, system::sampler* sampler,
                   ray::clock const& clock)
    : impl_(std::make_unique<impl>(std::move(ex), cfg, std::move(make_backend), metrics, log, sampler,
                                   clock)) {}

registry::~registry() = default;

runtime& registry::primary() noexcept {
  for (auto& e : impl_->entries)
    if (e->model().kind == config::model_kind::chat) return *e->rt;
  return *impl_->entries.front()->rt;
}

backend::backend& registry::primary_backend() noexcept {
  for (auto& e : impl_->entries)
    if (e->model().kind == config::model_kind::chat) return *e->be;
  return *impl_->entries.front()->be;
}

backend::supervisor* registry::primary_supervisor() noexcept {
  for (auto& e : impl_->entries)
    if (e->model().kind == config::model_kind::chat) return e->sup.get();
  return impl_->entries.front()->sup.get();
}

std::optional<std::string> registry::refusal() const {
  for (auto const& e : impl_->entries) {
    if (!e->supervised() || !e->estimated_bytes) continue;
    if (*e->estimated_bytes > impl_->budget_bytes)
      return "the model '" + e->model().id + "' needs about " +
             std::to_string(static_cast<std::uint64_t>(std::ceil(double(*e->estimated_bytes) / mib))) +
             " MiB, more than the whole residency budget of " +
             std::to_string(static_cast<std::uint64_t>(double(impl_->budget_bytes) / mib)) +
             " MiB (residency.memoryBudgetMiB, default: the memory limit minus residency.reserveMiB)";
  }
  return std::nullopt;
}

std::string registry::served_id(std::string_view name, config::model_kind kind) const {
  auto* e = impl_->find(name, kind);
  if (!e) e = impl_->find("", kind);
  return e ? e->model().id : std::string();
}

std::size_t registry::size() const noexcept {
  return impl_->entries.size();
}

std::vector<model_view> registry::views() const {
  std::vector<model_view> out;
  for (auto const& e : impl_->entries) {
    model_view v;
    v.id = e->model().id;
    v.aliases = e->model().aliases;
    v.kind = e->model().kind;
    v.state = impl_->state_of(*e);
    v.provider = e->be->current_state();
    v.pinned = e->model().pinned;
    v.supervised = e->supervised();
    v.idle_unload_ms = e->idle_unload_ms;
    if (e->estimated_bytes) v.estimated_mib = double(*e->estimated_bytes) / mib;
    if (e->supervised() && e->sup->pid() && e->holds_memory()) {
      auto text = system::read_small_file("/proc/" + std::to_string(*e->sup->pid()) + "/statm", 4096);
      auto page = ::sysconf(_SC_PAGESIZE);
      if (text && page > 0)
        if (auto rss = system::parse::statm_rss_bytes(*text, std::uint64_t(page)))
          v.rss_mib = double(*rss) / mib;
    }
    v.last_load_ms = e->last_load_ms;
    v.load_ms_estimated = e->load_estimated;
    v.load_count = e->load_count;
    auto const st = e->rt->stats();
    v.in_flight = st.in_flight;
    v.queued = st.queue_depth;
    v.requests = e->leases;
    v.context_window = e->rt->context_window();
    v.quantization = e->model().quantization;
    v.adapter = e->model().adapter.kind;
    out.push_back(std::move(v));
  }
  return out;
}

void registry::start() {
  for (auto& e : impl_->entries) {
    e->be->start();
    if (!e->supervised()) continue;
    auto const& m = e->model();
    bool const first = e.get() == impl_->entries.front().get();
    if (first || m.pinned || m.warm_on_boot) {
      if (impl_->make_room(*e)) impl_->start_load(*e);
    }
  }
}

void registry::stop(std::function<void()> done) {
  auto remaining = std::make_shared<std::size_t>(0);
  auto finish = std::make_shared<std::function<void()>>(std::move(done));
  for (auto& e : impl_->entries) {
    e->idle_timer->cancel();
    e->be->stop();
    if (e->sup) ++*remaining;
  }
  if (*remaining == 0) {
    if (*finish) (*finish)();
    return;
  }
  for (auto& e : impl_->entries) {
    if (!e->sup) continue;
    e->sup->stop([remaining, finish] {
      if (--*remaining == 0 && *finish) (*finish)();
    });
  }
}

asio::awaitable<result<model_lease>> registry::acquire(std::string_view name, config::model_kind kind,
                                                       bool strict, ray::clock::time_point deadline) {
  auto& I = *impl_;
  impl::entry* e = I.find(name, kind);
  if (!e) {
    if (strict || I.find("", kind) == nullptr) {
      ray::error err{errc::model_not_found, name.empty()
                                                ? "no " + kind_word(kind) + " model is configured"
                                                : "The model '" + std::string(name) + "' does not exist"};
      err.param = "model";
      co_return err;
    }
    e = I.find("", kind);
  }
  if (e->model().kind != kind) {
    ray::error err{errc::model_kind_mismatch, "the model '" + e->model().id + "' is " +
                                                  kind_word(e->model().kind) + " model; this route needs a " +
                                                  kind_word(kind) + " model"};
    err.param = "model";
    co_return err;
  }
  std::size_t const index = I.index_of(e);
  // The lease is taken at once: a model that a request waits for is busy (never chosen for eviction).
  ++e->leases;
  e->lease_deadlines.push_back(deadline);
  e->idle_timer->cancel();
  model_lease lease(this, index);
  if (!e->supervised()) co_return lease;

  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (;;) {
    auto const st = I.state_of(*e);
    if (st == model_state::ready) co_return lease;
    if (st == model_state::failed) {
      ray::error err{errc::provider_unavailable,
                     "the model '" + e->model().id + "' failed to load" +
                         (e->failure.empty() ? std::string() : ": " + e->failure)};
      co_return err;
    }
    if (st == model_state::unloaded) {
      if (I.make_room(*e)) {
        I.start_load(*e);
      } else if (!I.could_fit(*e)) {
        // What holds the memory can never leave (pinned or attached models): no wait would help.
        ray::error err{errc::model_swap_busy,
                       "the model '" + e->model().id +
                           "' does not fit residency.memoryBudgetMiB beside the pinned models; unpin one or "
                           "raise the budget"};
        err.retry_after_ms = 30'000;
        err.details["model"] = e->model().id;
        co_return err;
      } else {
        // Waiting for room: give up now when the wait cannot end before the deadline.
        double const wait = I.drain_ms(*e) + I.expected_load_ms(*e);
        double const left = std::chrono::duration<double, std::milli>(deadline - I.clock.now()).count();
        if (wait > left) {
          e->wanted_until = I.clock.now() + std::chrono::milliseconds(static_cast<std::int64_t>(wait)) +
                            std::chrono::seconds(10);
          ray::error err{errc::model_swap_busy,
                         "the model '" + e->model().id +
                             "' is not loaded and the models using the memory budget are busy; retry later"};
          err.retry_after_ms = wait;
          err.details["model"] = e->model().id;
          co_return err;
        }
      }
    }
    if (st == model_state::loading || st == model_state::warming) {
      double const elapsed =
          std::chrono::duration<double, std::milli>(I.clock.now() - e->load_started).count();
      double const remaining = std::max(0.0, I.expected_load_ms(*e) - elapsed);
      double const left = std::chrono::duration<double, std::milli>(deadline - I.clock.now()).count();
      if (remaining > left) {
        ray::error err{errc::model_swap_busy, "the model '" + e->model().id +
                                                  "' is loading and will not be ready within this request's "
                                                  "deadline; retry after the load"};
        err.retry_after_ms = remaining;
        err.details["model"] = e->model().id;
        err.details["loadMs"] = I.expected_load_ms(*e);
        err.details["loadMsEstimated"] = e->load_estimated;
        co_return err;
      }
    }
    if (I.clock.now() >= deadline) {
      ray::error err{errc::model_swap_busy, "the model '" + e->model().id + "' did not become ready in time"};
      err.retry_after_ms = I.expected_load_ms(*e);
      co_return err;
    }
    timer.expires_after(wait_step);
    auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec) co_return ray::error{errc::provider_request_failed, "the request was cancelled"};
  }
}

}  // namespace ray::runtime
