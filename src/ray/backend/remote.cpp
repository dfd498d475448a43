// llama-server and OpenAI-compatible backends: one adapter, two dialects (health endpoint, /props, extras).
#include "ray/backend/backend.hpp"
#include "ray/backend/parse.hpp"
#include "ray/backend/remote_embed.hpp"
#include "ray/http/client.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/serialize.hpp>
#include <boost/url/parse.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <unordered_map>

namespace ray::backend {

namespace {

namespace json = boost::json;
namespace asio = boost::asio;
using steady = std::chrono::steady_clock;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

struct base_url {
  std::string host{"127.0.0.1"};
  std::uint16_t port{80};
  std::string prefix{};  // path prefix without trailing slash
};

base_url parse_base(std::string const& url) {
  base_url out;
  auto u = boost::urls::parse_uri(url);
  if (!u) return out;
  out.host = std::string(u->host_address());
  if (!out.host.empty() && out.host.front() == '[') out.host = out.host.substr(1, out.host.size() - 2);
  out.port = u->has_port() ? u->port_number() : (u->scheme() == "https" ? 443 : 80);
  out.prefix = std::string(u->encoded_path());
  while (!out.prefix.empty() && out.prefix.back() == '/')
    out.prefix.pop_back();
  return out;
}

// What the watch coroutine (remote_backend::watch_loop) owns: shared with the backend, which only sets
// `stopped` (stop() or its destructor); after every resumption the coroutine checks it before touching the
// backend.
struct watch_state {
  explicit watch_state(asio::any_io_executor ex) : conn(ex), timer(ex) {}
  http::connection_watch conn;
  asio::steady_timer timer;  // the watch's waits; cancelled to wake it (a probe finished, stop())
  bool stopped{false};
  void stop() noexcept {
    stopped = true;
    conn.close();
    timer.cancel();
  }
  // Sleeps until `t`, or until woken by a cancel.
  asio::awaitable<void> nap_until(steady::time_point t) {
    timer.expires_at(t);
    co_await timer.async_wait(use_tuple);
  }
};

class remote_backend final : public backend {
 public:
  remote_backend(asio::any_io_executor ex, config::config const& cfg, telemetry::logger& log)
      : ex_(ex),
        cfg_(cfg),
        log_(log),
        llama_(cfg.model.adapter.kind == config::adapter_kind::llama_cpp),
        base_(parse_base(cfg.model.adapter.base_url)),
        client_(ex, base_.host, base_.port),
        wake_(ex),
        slots_client_(ex, base_.host, base_.port),
        metrics_client_(ex, base_.host, base_.port) {
    auto const& a = cfg.model.adapter;
    desc_.model_id = cfg.model.id;
    desc_.kind = std::string(config::adapter_kind_name(a.kind));
    desc_.context_per_request = cfg.model.context_window;
    desc_.slots = cfg.scheduler.concurrency;
    if (a.launch) {
      desc_.slots = a.launch->parallel;
      desc_.kv_pool = a.launch->ctx_size;
      desc_.context_per_request = a.launch->enable_unified_kv
                                      ? a.launch->ctx_size
                                      : a.launch->ctx_size / std::max(1u, a.launch->parallel);
    } else {
      desc_.kv_pool = desc_.context_per_request * desc_.slots;
    }
    busy_.assign(desc_.slots, false);
    if (a.api_key_env) {
      if (char const* key = std::getenv(a.api_key_env->c_str()); key && *key) {
        auth_header_ = std::string("Bearer ") + key;
        add_secret(key);
      }
    }
    for (auto const& [name, value] : a.headers)
      add_secret(value);
  }

  state current_state() const noexcept override { return state_; }
  description describe() const override { return desc_; }
  details current_details() const override {
    details d = details_;
    d.slots_busy = static_cast<std::uint32_t>(std::count(busy_.begin(), busy_.end(), true));
    d.slots_foreign =
        static_cast<std::uint32_t>(std::count(external_busy_.begin(), external_busy_.end(), true));
    // A view older than this (the answers kept timing out) or from a backend that is not serving is unknown.
    auto const now = steady::now();
    auto fresh = [&](steady::time_point at) { return is_serving(state_) && now - at <= load_view_ttl(); };
    if (kv_usage_ && fresh(kv_usage_at_)) d.kv_cache_usage = kv_usage_;
    if (deferred_ && fresh(deferred_at_)) d.requests_deferred = deferred_;
    return d;
  }
  void set_warmup(warmup_fn fn) override { warmup_ = std::move(fn); }
  void set_process_state(state s, std::string const& reason) override {
    process_state_ = s;
    if (s == state::starting) {
      awaiting_first_answer_ = true;
      load_started_ = steady::now();
    }
    set_state(s, reason);
    if (s == state::failed) details_.last_error = reason;
    probe_now();
  }
  void on_answering(std::function<std::optional<double>()> fn) override { on_answering_ = std::move(fn); }
  void set_metrics_cache(telemetry::metrics_cache* cache) override { metrics_ = cache; }
  void on_restart(std::function<void()> fn) override { on_restart_ = std::move(fn); }
  std::uint64_t requests_total() const noexcept override { return requests_; }

  void start() override {
    if (started_) return;
    started_ = true;
    asio::co_spawn(ex_, health_loop(), asio::detached);
    if (llama_ && metrics_) asio::co_spawn(ex_, metrics_loop(), asio::detached);
    if (llama_) asio::co_spawn(ex_, slots_loop(), asio::detached);
    // Attached (not supervised) llama-server: nobody sees its process exit, so a watch connection does.
    auto const& a = cfg_.model.adapter;
    if (llama_ && !(a.launch && a.launch->supervise)) {
      watch_ = std::make_shared<watch_state>(ex_);
      asio::co_spawn(ex_, watch_loop(watch_), asio::detached);
    }
  }
  void stop() override {
    stopped_ = true;
    wake_.cancel();
    if (watch_) watch_->stop();
  }
  ~remote_backend() override {
    if (watch_) watch_->stop();  // the watch never touches this backend again
  }

  asio::awaitable<std::optional<std::uint32_t>> count_prompt_tokens(std::string system,
                                                                    std::string prompt) override;
  asio::awaitable<result<generation_result>> generate(generation_request req, token_sink* sink) override;
  // Embeddings / rerank: see the section at the end of this file.
  asio::awaitable<result<embedding_result>> embed(embedding_request req) override;
  asio::awaitable<result<rerank_result>> rerank(rerank_request req) override;

 private:
  std::string path(std::string_view p) const { return base_.prefix + std::string(p); }

  // The secrets Ray sends upstream (the bearer key, every configured header value: /v1/config redacts them
  // all) are never relayed back: an upstream that quotes its request in an error body must not get them into
  // Ray's error answers, logs or /health. Values shorter than this are not scrubbed (they would garble
  // ordinary text and are no secret worth the name).
  static constexpr std::size_t min_secret_chars = 4;
  void add_secret(std::string_view value) {
    if (value.size() >= min_secret_chars) secrets_.emplace_back(value);
  }
  std::string scrub(std::string text) const { return redact_all(std::move(text), secrets_); }

  std::vector<std::pair<std::string, std::string>> request_headers() const {
    std::vector<std::pair<std::string, std::string>> h;
    for (auto const& [k, v] : cfg_.model.adapter.headers)
      h.emplace_back(k, v);
    if (!auth_header_.empty()) h.emplace_back("authorization", auth_header_);
    return h;
  }

  void set_state(state s, std::string_view reason) {
    if (s == state_) {
      // Retries are not logged one by one: a summary every 30 s while the backend stays down.
      if (s == state::unreachable || s == state::loading || s == state::restarting) {
        ++repeats_;
        auto now = steady::now();
        if (now - last_summary_ >= std::chrono::seconds(30)) {
          log_.warn("provider still " + std::string(state_name(s)),
                    {{"probes", repeats_}, {"reason", reason}, {"since", state_since_iso_}});
          last_summary_ = now;
        }
      }
      return;
    }
    repeats_ = 0;
    last_summary_ = steady::now();
    state_since_iso_ = format_timestamp(std::chrono::system_clock::now());
    boost::json::object f{{"from", state_name(state_)}, {"to", state_name(s)}, {"reason", reason}};
    if (s == state::unreachable || s == state::failed || s == state::misconfigured) {
      details_.last_error = std::string(reason);
      log_.warn("provider state changed", std::move(f));
    } else {
      log_.info("provider state changed", std::move(f));
    }
    state_ = s;
  }

  void probe_now() { wake_.cancel(); }

  // A transport failure (connection refused or reset, closed mid-answer) means the backend went away: 503
  // provider_unavailable ("unreachable", http-api.md §6) with Retry-After, so clients retry once it is back —
  // not a 502, which says the backend answered badly. The probe runs at once.
  ray::error went_away(ray::error e) {
    if (e.code != errc::provider_request_failed) return e;
    probe_now();
    e.code = errc::provider_unavailable;
    e.message = "the backend is unreachable (" + e.message + "); retry shortly";
    return e;
  }

  // Slot choice: the affinity key's slot when free; else a free slot no other key owns; else any free slot.
  int pick_slot(std::uint64_t key) {
    if (cfg_.model.adapter.slot_id) return *cfg_.model.adapter.slot_id;
    int const n = static_cast<int>(busy_.size());
    if (key != 0) {
      if (auto it = affinity_.find(key); it != affinity_.end() && it->second < n && !busy_[it->second])
        return it->second;
    }
    int unowned = -1, any = -1;
    for (int i = 0; i < n; ++i) {
      if (busy_[i]) continue;
      if (static_cast<std::size_t>(i) < external_busy_.size() && external_busy_[i]) continue;
      if (any < 0) any = i;
      bool owned = false;
      for (auto const& [k, s] : affinity_)
        owned = owned || (s == i && k != key);
      if (!owned && unowned < 0) unowned = i;
    }
    int chosen = unowned >= 0 ? unowned : any;
    // A family keeps its slot: borrowing another slot while its own is busy does not move it there (that
    // would merge two families onto one slot for good).
    if (chosen >= 0 && key != 0 && !affinity_.contains(key)) {
      if (affinity_.size() > 4096) affinity_.clear();
      affinity_[key] = chosen;
    }
    return chosen;
  }

  ray::error unavailable_error() const {
    ray::error err{errc::provider_unavailable, ""};
    if (state_ == state::loading && load_started_) {
      double so_far = std::chrono::duration<double>(steady::now() - *load_started_).count();
      err.message = "model is loading, " + std::to_string(std::lround(so_far)) + " s so far";
      if (details_.load_ms) {
        err.message += ", last load took " + std::to_string(std::lround(*details_.load_ms / 1000.0)) + " s";
        err.retry_after_ms = std::max(1000.0, *details_.load_ms - so_far * 1000.0);
      }
    } else {
      err.message = "the backend is " + std::string(state_name(state_)) + "; retry shortly";
    }
    return err;
  }

  std::chrono::milliseconds slots_period() const {
    return std::chrono::milliseconds(std::max<std::uint32_t>(cfg_.model.adapter.slot_state_ttl_ms, 1000));
  }
  std::chrono::milliseconds load_view_ttl() const {
    return std::max<std::chrono::milliseconds>(std::chrono::seconds(10), 3 * slots_period());
  }

  asio::awaitable<void> health_loop();
  asio::awaitable<void> watch_loop(std::shared_ptr<watch_state> w);
  asio::awaitable<void> metrics_loop();
  asio::awaitable<void> slots_loop();
  asio::awaitable<bool> probe_once();
  asio::awaitable<bool> read_props();
  ray::error map_status(unsigned status, std::string const& body);
  asio::awaitable<result<std::string>> post_for_body(std::string_view target, std::string const& body);

  asio::any_io_executor ex_;
  config::config const& cfg_;
  telemetry::logger& log_;
  bool llama_;
  base_url base_;
  http::client client_;
  asio::steady_timer wake_;
  state state_{state::unknown};
  description desc_{};
  details details_{};
  std::string identity_{};
  std::string auth_header_{};
  std::vector<std::string> secrets_{};  // see scrub()
  std::vector<bool> busy_{};
  std::unordered_map<std::uint64_t, int> affinity_{};
  warmup_fn warmup_{};
  std::function<void()> on_restart_{};
  std::optional<steady::time_point> load_started_{};
  std::optional<state> process_state_{};  // set by a supervisor: starting | restarting | failed
  bool awaiting_first_answer_{false};
  std::function<std::optional<double>()> on_answering_{};
  telemetry::metrics_cache* metrics_{nullptr};
  std::vector<bool> external_busy_{};  // slots /slots reports processing that Ray did not dispatch
  std::optional<double> kv_usage_{};   // from the last /slots answer (parse_slots_load)
  steady::time_point kv_usage_at_{};
  std::optional<std::uint32_t> deferred_{};  // llamacpp:requests_deferred of the last /metrics answer
  steady::time_point deferred_at_{};
  http::client slots_client_;
  http::client metrics_client_;  // its own connection: a slow /metrics never holds up a probe
  std::uint64_t requests_{0};
  bool started_{false};
  bool stopped_{false};
  bool ever_ready_{false};
  bool last_refused_{false};
  bool warmup_failed_{false};
  bool props_unauthorized_{false};
  std::uint64_t repeats_{0};
  std::map<ray::sha256_digest, std::uint32_t> token_counts_{};  // by SHA-256 of (system, prompt); bounded
  steady::time_point last_summary_{};
  std::string state_since_iso_{};
  std::uint32_t warmup_backoff_ms_{0};
  std::shared_ptr<watch_state> watch_{};  // attach mode only; see watch_loop()
  bool watch_probe_due_{false};           // the watch asked for a probe: the health loop runs one at once
  std::uint64_t probes_started_{0};       // by the health loop; the watch waits for the probe after its ask
  std::uint64_t probes_done_{0};
};

asio::awaitable<bool> remote_backend::read_props() {
  // Named, not a braced temporary inside co_await: GCC 12 copies such aggregate temporaries into the frame
  // bitwise (a short std::string then points at the old storage).
  http::client_request const req{http::verb::get,
                                 path("/props"),
                                 {},
                                 request_headers(),
                                 std::chrono::milliseconds(cfg_.model.adapter.health_timeout_ms)};
  auto r = co_await client_.send(req);
  if (r && (r->status == 401 || r->status == 403)) {
    props_unauthorized_ = true;
    co_return false;
  }
  props_unauthorized_ = false;
  if (!r || r->status != 200) co_return false;
  auto props = parse_props(r->body);
  if (!props) co_return false;
  // Bounded (parse_props): a hostile /props must not size Ray's slot table or overflow the KV pool.
  auto const& n_ctx = props->n_ctx;
  auto const& slots = props->total_slots;
  std::string build = props->build;
  std::string model_path = props->model_path;
  std::string identity = build + "|" + model_path;
  bool restarted = (!identity_.empty() && identity != identity_) || (ever_ready_ && last_refused_);
  if (restarted) {
    ++details_.restarts;
    details_.last_restart_at = format_timestamp(std::chrono::system_clock::now());
    log_.warn("provider restart detected",
              {{"build", build},
               {"modelPath", model_path},
               {"restarts", details_.restarts},
               {"reason", identity != identity_ && !identity_.empty() ? "new build_info or model_path"
                                                                      : "refused then answering"}});
    affinity_.clear();
    if (on_restart_) on_restart_();
  }
  identity_ = identity;
  desc_.identity = identity;
  details_.build = build;
  details_.model_path = model_path;
  if (n_ctx && *n_ctx > 0) {
    desc_.context_per_request = *n_ctx;
    details_.n_ctx = desc_.context_per_request;
  }
  if (slots && *slots > 0) {
    desc_.slots = *slots;
    details_.total_slots = desc_.slots;
    if (busy_.size() != desc_.slots) busy_.assign(desc_.slots, false);
  }
  if (!cfg_.model.adapter.launch) desc_.kv_pool = desc_.context_per_request * desc_.slots;
  co_return restarted;
}

asio::awaitable<bool> remote_backend::probe_once() {
  auto const& a = cfg_.model.adapter;
  auto const t0 = steady::now();
  http::client_request const req{http::verb::get,
                                 path(llama_ ? "/health" : "/v1/models"),
                                 {},
                                 request_headers(),
                                 std::chrono::milliseconds(a.health_timeout_ms)};
  auto r = co_await client_.send(req);
  details_.probe_latency_ms = std::chrono::duration<double, std::milli>(steady::now() - t0).count();
  details_.checked_at = format_timestamp(std::chrono::system_clock::now());
  if (!r) {
    client_.reset_pool();
    // Refused (or reset) counts towards restart detection; a slow /health that timed out does not: the same
    // process answering later is not a restart.
    if (r.error().code != errc::provider_timeout) last_refused_ = true;
    // A supervised process that is starting, restarting or given up is exactly that, not "unreachable".
    if (process_state_) {
      set_state(*process_state_, r.error().message);
      co_return false;
    }
    set_state(state::unreachable, r.error().message);
    co_return false;
  }
  if (process_state_ == state::failed) co_return false;
  if (r->status == 503) {
    if (!load_started_) load_started_ = steady::now();
    set_state(state::loading, "backend answers 503 while loading the model");
    co_return false;
  }
  if (r->status == 401 || r->status == 403) {
    set_state(state::misconfigured, "backend rejects Ray's credentials (" + std::to_string(r->status) + ")");
    co_return false;
  }
  if (r->status != 200) {
    set_state(state::unreachable,
              "health answered " + std::to_string(r->status) + ": " + excerpt(scrub(r->body), 120));
    co_return false;
  }
  if (awaiting_first_answer_) {
    awaiting_first_answer_ = false;
    process_state_.reset();
    if (on_answering_) {
      if (auto ms = on_answering_()) details_.load_ms = *ms;
    }
    load_started_.reset();
  }
  process_state_.reset();
  bool restarted = false;
  if (llama_) restarted = co_await read_props();
  if (props_unauthorized_) {
    // /health needs no key, /props does: a rejected key shows here first, and must not pass for "ready".
    set_state(state::misconfigured, "backend rejects Ray's credentials on /props (401/403)");
    co_return false;
  }
  if (restarted && is_serving(state_)) set_state(state::warming, "backend restarted");
  last_refused_ = false;
  if (is_serving(state_)) co_return true;

  if (load_started_ && !details_.load_ms) {
    details_.load_ms = std::chrono::duration<double, std::milli>(steady::now() - *load_started_).count();
  }
  load_started_.reset();
  bool const do_warm = cfg_.model.warm_on_boot || !cfg_.model.adapter.warmup_requests.empty();
  set_state(state::warming, "backend answering");
  bool ok = true;
  if (do_warm && warmup_) ok = co_await warmup_();
  if (!ok) {
    if (!warmup_failed_) log_.warn("provider warmup failed after gateway start", {{"backend", desc_.kind}});
    warmup_failed_ = true;
    warmup_backoff_ms_ = std::min<std::uint32_t>(warmup_backoff_ms_ ? warmup_backoff_ms_ * 2 : 1000, 15'000);
    co_return false;
  }
  if (warmup_failed_) log_.info("provider warmup recovered", {{"backend", desc_.kind}});
  warmup_failed_ = false;
  warmup_backoff_ms_ = 0;
  ever_ready_ = true;
  set_state(state::ready, "backend answering and warm");
  co_return true;
}

asio::awaitable<void> remote_backend::health_loop() {
  while (!stopped_) {
    watch_probe_due_ = false;
    ++probes_started_;
    co_await probe_once();
    ++probes_done_;
    if (watch_) watch_->timer.cancel();  // it may be waiting for this probe or for a serving backend
    if (stopped_) break;
    if (watch_probe_due_) continue;  // the watch's connection closed during this probe: once more, now
    std::uint32_t wait = warmup_backoff_ms_ ? warmup_backoff_ms_ : cfg_.model.adapter.health_interval_ms;
    wake_.expires_after(std::chrono::milliseconds(wait));
    co_await wake_.async_wait(use_tuple);
  }
}

// The watch (attach mode): while the backend is serving, one connection of its own with a read pending. An
// attached llama-server that dies (or restarts) closes it at once, so the health loop probes at once, not at
// its next poll: /readyz flips within milliseconds instead of up to healthIntervalMs. llama-server also
// closes idle connections itself (its keep-alive timeout): a close that the probe finds still serving just
// reconnects — at once the first time, then at most once per healthIntervalMs, so a server that keeps closing
// it costs no more probes than the poll does. Nothing is ever sent on the connection.
asio::awaitable<void> remote_backend::watch_loop(std::shared_ptr<watch_state> w) {
  try {
    auto const interval =
        std::chrono::milliseconds(std::max<std::uint32_t>(cfg_.model.adapter.health_interval_ms, 1));
    auto const connect_timeout = std::chrono::milliseconds(cfg_.model.adapter.health_timeout_ms);
    bool reconnect = false;  // the last watched connection ended while the backend stayed serving
    auto next_reconnect = steady::time_point::min();
    while (!w->stopped) {
      if (!is_serving(state_)) {
        reconnect = false;
        co_await w->nap_until(steady::now() + interval);  // woken after each probe
        continue;
      }
      if (reconnect) {
        auto const now = steady::now();
        if (now < next_reconnect) {
          co_await w->nap_until(next_reconnect);
          continue;
        }
        next_reconnect = now + interval;
      }
      auto connected = co_await w->conn.connect(base_.host, base_.port, connect_timeout);
      if (w->stopped) break;
      if (connected) {
        co_await w->conn.wait_closed();
        if (w->stopped) break;
      }
      // Closed (or no connection to a backend said to be serving): one probe now, and wait for its verdict.
      auto const until = probes_started_ + 1;
      watch_probe_due_ = true;
      probe_now();
      while (probes_done_ < until) {
        co_await w->nap_until(steady::now() + interval);
        if (w->stopped) co_return;
      }
      reconnect = true;
    }
  } catch (std::exception const& e) {
    // Polling goes on without the watch.
    if (!w->stopped) log_.warn("backend connection watch ended", {{"reason", e.what()}});
  } catch (...) {
    if (!w->stopped) log_.warn("backend connection watch ended", {{"reason", "unknown exception"}});
  }
  w->conn.close();
}

// /slots only reconciles: Ray counts slots from its own dispatches; a slot the server reports busy that Ray
// did not dispatch to (another client of the same llama-server) is avoided by the slot choice. /slots answers
// from llama-server's task loop and can stall during a long prefill: a slow or failed answer just leaves the
// last view.
asio::awaitable<void> remote_backend::slots_loop() {
  asio::steady_timer timer(ex_);
  auto const period = slots_period();
  bool const unified_kv = cfg_.model.adapter.launch && cfg_.model.adapter.launch->enable_unified_kv;
  while (!stopped_) {
    if (is_serving(state_)) {
      http::client_request const req{http::verb::get,
                                     path("/slots"),
                                     {},
                                     request_headers(),
                                     std::chrono::milliseconds(cfg_.model.adapter.slot_snapshot_timeout_ms)};
      auto r = co_await slots_client_.send(req);
      if (r && r->status == 200) {
        if (auto ext = parse_slots(r->body, busy_)) external_busy_ = std::move(*ext);
        auto load = parse_slots_load(r->body, unified_kv);
        kv_usage_ = load ? load->kv_usage : std::nullopt;
        kv_usage_at_ = steady::now();
      } else if (r) {
        kv_usage_.reset();  // answered without slots (501 with --no-slots, 401…): unknown at once
      }
      // A timeout (a long prefill stalls /slots) keeps the last view until load_view_ttl() has passed.
    }
    timer.expires_after(period);
    co_await timer.async_wait(use_tuple);
  }
}

// llama-server's /metrics (with --metrics), re-exported; at most one fetch in flight, about every second; the
// registry serves the last copy meanwhile. Without --metrics (501/404) nothing is served.
asio::awaitable<void> remote_backend::metrics_loop() {
  asio::steady_timer timer(ex_);
  while (!stopped_) {
    if (is_serving(state_)) {
      http::client_request const req{http::verb::get,
                                     path("/metrics"),
                                     {},
                                     request_headers(),
                                     std::chrono::milliseconds(cfg_.model.adapter.health_timeout_ms)};
      auto r = co_await metrics_client_.send(req);
      if (r && r->status == 200) {
        metrics_->store(telemetry::reexport_llamacpp(r->body), ray::system_clock().now());
        auto deferred = parse_prometheus_sample(r->body, "llamacpp:requests_deferred");
        deferred_ = deferred ? to_count(*deferred) : std::nullopt;
        deferred_at_ = steady::now();
      } else if (r) {
        metrics_->clear();  // the server answers but has no metrics (501 without --metrics)
        deferred_.reset();
      }
      // A fetch that failed or timed out (llama-server's /metrics blocks during a long prefill) keeps the
      // last copy: stale numbers beat a gap in every dashboard during each prefill.
    } else {
      metrics_->clear();
    }
    timer.expires_after(std::chrono::seconds(1));
    co_await timer.async_wait(use_tuple);
  }
}

asio::awaitable<std::optional<std::uint32_t>> remote_backend::count_prompt_tokens(std::string system,
                                                                                  std::string prompt) {
  if (!llama_ || !is_serving(state_)) co_return std::nullopt;
  // Keyed by SHA-256 of (system length, system, prompt): a client cannot craft a prompt that collides with
  // another and is answered with its count (a 64-bit FNV could be forced to).
  std::string keyed = std::to_string(system.size());
  keyed.push_back('\0');
  keyed.append(system).append(prompt);
  auto const h = ray::sha256(keyed);
  if (auto it = token_counts_.find(h); it != token_counts_.end()) co_return it->second;
  auto const timeout = std::chrono::milliseconds(cfg_.model.adapter.health_timeout_ms);
  json::array messages;
  if (!system.empty()) messages.push_back(json::object{{"role", "system"}, {"content", system}});
  messages.push_back(json::object{{"role", "user"}, {"content", prompt}});
  http::client_request const templ{http::verb::post, path("/apply-template"),
                                   json::serialize(json::object{{"messages", std::move(messages)}}),
                                   request_headers(), timeout};
  auto applied = co_await client_.send(templ);
  if (!applied || applied->status != 200) co_return std::nullopt;
  auto text = parse_applied_template(applied->body);
  if (!text) co_return std::nullopt;
  http::client_request const tok{http::verb::post, path("/tokenize"),
                                 json::serialize(json::object{{"content", *text}, {"add_special", true}}),
                                 request_headers(), timeout};
  auto counted = co_await client_.send(tok);
  if (!counted || counted->status != 200) co_return std::nullopt;
  auto counted_tokens = parse_token_count(counted->body);
  if (!counted_tokens) co_return std::nullopt;
  auto n = *counted_tokens;
  if (token_counts_.size() >= 1024) token_counts_.clear();
  token_counts_[h] = n;
  co_return n;
}

ray::error remote_backend::map_status(unsigned status, std::string const& body) {
  auto exceeded = status == 400 ? parse_context_exceeded(body) : std::nullopt;
  if (exceeded) {
    double const n_prompt = exceeded->n_prompt_tokens.value_or(0);
    double const n_ctx = exceeded->n_ctx.value_or(desc_.context_per_request);
    ray::error err{errc::request_context_window_exceeded,
                   "the prompt (" + std::to_string(std::lround(n_prompt)) +
                       " tokens by the backend's tokenizer) exceeds the context window of " +
                       std::to_string(std::lround(n_ctx)) + " tokens; shorten the input"};
    err.details["promptTokens"] = static_cast<std::int64_t>(n_prompt);
    err.details["contextWindow"] = static_cast<std::int64_t>(n_ctx);
    err.details["source"] = "backend";
    return err;
  }
  if (status == 401 || status == 403) {
    set_state(state::misconfigured, "backend rejects Ray's credentials (" + std::to_string(status) + ")");
    return {errc::provider_upstream_error, "the backend rejected Ray's credentials (" +
                                               std::to_string(status) +
                                               "); the operator must check model.adapter.apiKeyEnv"};
  }
  if (status == 503) {
    // llama-server answers 503 while it loads a model. The probe (run now) tells the state; this request gets
    // a Retry-After of the last measured load time when there is one, else the default.
    probe_now();
    ray::error err{errc::provider_unavailable,
                   "the backend is unavailable (503, e.g. loading a model); retry shortly"};
    if (details_.load_ms) err.retry_after_ms = *details_.load_ms;
    return err;
  }
  return {errc::provider_upstream_error,
          "the backend answered " + std::to_string(status) + ": " + excerpt(scrub(body))};
}

asio::awaitable<result<generation_result>> remote_backend::generate(generation_request req,
                                                                    token_sink* sink) {
  if (!is_serving(state_) && state_ != state::warming) co_return unavailable_error();
  auto const& a = cfg_.model.adapter;
  int const slot = llama_ ? pick_slot(req.affinity_key) : -1;
  struct slot_guard {
    std::vector<bool>& busy;
    int slot;
    ~slot_guard() {
      if (slot >= 0 && slot < static_cast<int>(busy.size())) busy[slot] = false;
    }
  } guard{busy_, slot};
  if (slot >= 0 && slot < static_cast<int>(busy_.size())) busy_[slot] = true;

  json::object body;
  body["model"] = a.model_ref.empty() ? cfg_.model.id : a.model_ref;
  if (req.raw_completion) {
    body["prompt"] = req.prompt;
  } else {
    json::array messages;
    if (!req.messages.empty()) {
      for (auto const& m : req.messages) {
        json::object o{{"role", m.role}, {"content", m.content}};
        // An assistant turn that called tools: its calls go back as sent (content null when it had none),
        // or a tool-using conversation loses the calls its `tool` messages answer.
        if (!m.tool_calls.is_null()) {
          if (m.content.empty()) o["content"] = nullptr;
          o["tool_calls"] = m.tool_calls;
        }
        if (m.name) o["name"] = *m.name;
        if (m.tool_call_id) o["tool_call_id"] = *m.tool_call_id;
        messages.push_back(std::move(o));
      }
    } else {
      if (!req.system.empty()) messages.push_back(json::object{{"role", "system"}, {"content", req.system}});
      messages.push_back(json::object{{"role", "user"}, {"content", req.prompt}});
    }
    body["messages"] = std::move(messages);
  }
  for (auto const& [k, v] : req.extra)
    body[k] = v;
  body["max_tokens"] = req.max_tokens;
  body["stream"] = true;
  body["stream_options"] = json::object{{"include_usage", true}};
  if (req.temperature) body["temperature"] = *req.temperature;
  if (req.top_p) body["top_p"] = *req.top_p;
  if (req.seed) body["seed"] = *req.seed;
  if (!req.stop.empty()) {
    json::array stop;
    for (auto const& s : req.stop)
      stop.emplace_back(s);
    body["stop"] = std::move(stop);
  }
  if (req.json_mode) body["response_format"] = json::object{{"type", "json_object"}};
  if (llama_) {
    body["cache_prompt"] = a.cache_prompt;
    body["id_slot"] = slot;
  }

  ++requests_;
  auto const started = steady::now();
  auto const timeout = std::chrono::milliseconds(a.timeout_ms);
  http::client_request const call{http::verb::post,
                                  path(req.raw_completion ? "/v1/completions" : "/v1/chat/completions"),
                                  json::serialize(body), request_headers(), timeout};
  auto stream = co_await client_.open(call);
  if (!stream) co_return went_away(stream.error());
  auto& s = **stream;
  if (s.status() != 200) {
    auto text = co_await s.read_all(timeout);
    co_return map_status(s.status(), text ? *text : std::string());
  }

  generation_result out;
  out.slot_id = slot >= 0 ? std::optional<std::int32_t>(slot) : std::nullopt;
  bool saw_first = false;
  bool done = false;
  std::string finish;
  for (;;) {
    auto ev = co_await s.next_event(timeout);
    if (!ev) co_return went_away(ev.error());
    if (!*ev) break;
    auto const& data = (*ev)->data;
    if (data == "[DONE]") {
      done = true;
      break;
    }
    auto chunk = parse_stream_chunk(data);
    if (!chunk) {
      // The error quotes the event (cut to an excerpt): quote the scrubbed event instead.
      auto clean = parse_stream_chunk(scrub(data));
      ray::error e = clean ? chunk.error() : clean.error();
      e.message = scrub(std::move(e.message));
      co_return e;
    }
    auto const& c = *chunk;
    if (c.logprobs.is_object()) {
      if (auto const* content = c.logprobs.get_object().if_contains("content");
          content && content->is_array()) {
        if (out.logprobs.is_null()) out.logprobs = json::object{{"content", json::array{}}};
        auto& all = out.logprobs.as_object()["content"].as_array();
        for (auto const& e : content->get_array())
          all.push_back(e);
      }
      if (sink) sink->on_logprobs(c.logprobs);
    }
    if (!c.content.empty()) {
      if (!saw_first) {
        out.ttft_ms = std::chrono::duration<double, std::milli>(steady::now() - started).count();
        saw_first = true;
      }
      out.text.append(c.content);
      if (sink) sink->on_delta(c.content);
    }
    if (c.tool_calls.is_array()) {
      merge_tool_call_deltas(out.tool_calls, c.tool_calls.get_array());
      if (sink) sink->on_tool_calls(c.tool_calls);
    }
    if (c.finish_reason) finish = *c.finish_reason;
    if (c.has_usage) {
      if (c.prompt_tokens) out.prompt_tokens = *c.prompt_tokens;
      if (c.completion_tokens) out.completion_tokens = *c.completion_tokens;
      if (c.cached_tokens) {
        out.tokens_cached = *c.cached_tokens;
        out.cached_tokens = *c.cached_tokens;
      }
    }
    if (c.has_timings) {
      out.prompt_tokens_per_second = c.prompt_per_second.value_or(0);
      out.completion_tokens_per_second = c.predicted_per_second.value_or(0);
      if (c.prompt_n) out.tokens_evaluated = *c.prompt_n;
      if (c.cache_n) out.tokens_cached = *c.cache_n;
    }
  }
  if (!done && finish.empty())
    co_return ray::error{errc::provider_invalid_response, "the backend stream ended before it finished"};
  // `[DONE]` comes just before the chunked body's terminator: read it so the connection goes back to the pool
  // (without this every request opened a new backend connection).
  if (done) co_await s.finish(std::chrono::milliseconds(100));
  out.finish_reason = finish.empty() ? "stop" : finish;
  out.total_ms = std::chrono::duration<double, std::milli>(steady::now() - started).count();
  if (!saw_first) out.ttft_ms = out.total_ms;
  co_return out;
}

// ---------------------------------------------------------------------------------------------------------
// Embeddings and rerank (models.md "Embeddings and rerank"): one POST each, the whole answer read at once.
// Same client, timeout (adapter.timeoutMs), headers, error mapping (map_status, went_away) and cancellation
// (the client honours the awaiting coroutine's cancellation slot) as generate(); the wire format is
// remote_embed.cpp's. Not counted in requests_total() (generate() calls only).

// POSTs `body` to `target` and returns the 200 answer's body; the state check, transport and status errors
// exactly as generate() has them. `body` is taken by reference and copied before the first suspension (the
// GCC 12 by-value coroutine parameter issue, see http::client::send); callers co_await at once.
asio::awaitable<result<std::string>> remote_backend::post_for_body(std::string_view target,
                                                                   std::string const& body) {
  if (!is_serving(state_) && state_ != state::warming) co_return unavailable_error();
  http::client_request const call{http::verb::post, path(target), body, request_headers(),
                                  std::chrono::milliseconds(cfg_.model.adapter.timeout_ms)};
  auto r = co_await client_.send(call);
  if (!r) co_return went_away(r.error());
  if (r->status != 200) co_return map_status(r->status, r->body);
  co_return std::move(r->body);
}

asio::awaitable<result<embedding_result>> remote_backend::embed(embedding_request req) {
  auto const& a = cfg_.model.adapter;
  auto body = co_await post_for_body(
      "/v1/embeddings",
      embeddings_request_body(a.model_ref.empty() ? cfg_.model.id : a.model_ref, req.inputs));
  if (!body) co_return body.error();
  auto parsed = parse_embeddings_answer(*body, req.inputs.size());
  if (!parsed) {
    ray::error e = parsed.error();
    e.message = scrub(std::move(e.message));
    co_return e;
  }
  co_return std::move(*parsed);
}

asio::awaitable<result<rerank_result>> remote_backend::rerank(rerank_request req) {
  auto const& a = cfg_.model.adapter;
  auto body = co_await post_for_body(
      "/v1/rerank", rerank_request_body(a.model_ref.empty() ? cfg_.model.id : a.model_ref, req.query,
                                        req.documents, req.top_n));
  if (!body) co_return body.error();
  auto parsed = parse_rerank_answer(*body, req.documents.size(), req.top_n);
  if (!parsed) {
    ray::error e = parsed.error();
    e.message = scrub(std::move(e.message));
    co_return e;
  }
  co_return std::move(*parsed);
}

}  // namespace

std::unique_ptr<backend> make_remote(asio::any_io_executor ex, config::config const& cfg,
                                     telemetry::logger& log) {
  return std::make_unique<remote_backend>(std::move(ex), cfg, log);
}

}  // namespace ray::backend
