#include "ray/api/app.hpp"
#include "ray/backend/supervisor.hpp"
#include "ray/system/system.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <unistd.h>
#include <csignal>
#include <cstdio>
#include <thread>

namespace ray::api {

namespace {

constexpr auto use_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);

telemetry::level to_level(config::log_level l) {
  switch (l) {
    case config::log_level::debug:
      return telemetry::level::debug;
    case config::log_level::info:
      return telemetry::level::info;
    case config::log_level::warn:
      return telemetry::level::warn;
    case config::log_level::error:
      return telemetry::level::error;
  }
  return telemetry::level::info;
}

bool is_loopback_host(std::string const& host) {
  boost::system::error_code ec;
  auto addr = boost::asio::ip::make_address(host, ec);
  return !ec && addr.is_loopback();
}

// Startup refusals: features this build does not have are never silently ignored.
std::optional<std::string> refuse_reason(config::config const& cfg) {
  if (cfg.model.adapter.kind != config::adapter_kind::mock &&
      cfg.model.adapter.base_url.rfind("https://", 0) == 0)
    return "model.adapter.baseUrl uses https, but Ray talks plain HTTP to its backend (keep the backend on "
           "loopback or a private network; TLS belongs to the reverse proxy in front of Ray)";
  if (!is_loopback_host(cfg.server.host) && !cfg.auth.enabled && !cfg.server.allow_unauthenticated_public)
    return "server.host " + cfg.server.host +
           " is not a loopback address and auth is disabled: anyone who can reach it could use the model. "
           "Enable "
           "auth, bind 127.0.0.1 behind a reverse proxy, or set server.allowUnauthenticatedPublic "
           "(--allow-unauthenticated-public) to accept the risk";
  return std::nullopt;
}

std::optional<std::string> env_value(std::string const& name) {
  if (char const* v = std::getenv(name.c_str())) return std::string(v);
  return std::nullopt;
}

// Builds the auth/rate-limit state of a config (keys read from the environment now).
result<access_state> make_access(config::config const& cfg) {
  access_state acc;
  acc.auth = cfg.auth;
  acc.rate = cfg.rate_limit;
  if (cfg.auth.enabled) {
    auto keys = access::key_set::load(cfg.auth, env_value(cfg.auth.api_key_env));
    if (!keys) return keys.error();
    acc.keys = std::make_shared<access::key_set const>(std::move(*keys));
  }
  if (cfg.rate_limit.enabled)
    acc.limiter = std::make_unique<access::rate_limiter>(cfg.rate_limit, ray::system_clock());
  auto proxies = access::proxy_list::parse(cfg.rate_limit.trusted_proxies);
  if (!proxies) return proxies.error();
  acc.proxies = std::move(*proxies);
  return acc;
}

boost::json::object access_summary(access_state const& acc) {
  boost::json::object f{{"auth", acc.auth.enabled},
                        {"apiKeys", acc.keys ? acc.keys->size() : 0},
                        {"rateLimit", acc.rate.enabled}};
  if (acc.rate.enabled) {
    f["maxRequests"] = acc.rate.max_requests;
    f["windowMs"] = acc.rate.window_ms;
    f["keyStrategy"] = config::rate_limit_key_name(acc.rate.key_strategy);
    f["maxKeys"] = acc.rate.max_keys;
    f["trustProxyHeaders"] = acc.rate.trust_proxy_headers;
    if (acc.rate.trust_proxy_headers) {
      boost::json::array list;
      for (auto const& p : acc.rate.trusted_proxies)
        list.emplace_back(p);
      f["trustedProxies"] = std::move(list);
    }
  }
  return f;
}

jobs::callback_policy callback_policy_for(config::async_queue_config const& q) {
  jobs::callback_policy p;
  p.allowed_hosts = q.callback_allowed_hosts;
  p.allow_private_network = q.callback_allow_private_network;
  p.timeout = std::chrono::milliseconds(q.callback_timeout_ms);
  return p;
}

// Opens the job store: the shared PostgreSQL database (asyncQueue.store = postgres; `postgres_url` is the
// value of the variable asyncQueue.postgresUrlEnv names), else SQLite under asyncQueue.storageDir. Either way
// the TypeScript gateway's records under storageDir (if any) are imported once.
result<std::unique_ptr<jobs::store>> open_job_store(config::async_queue_config const& q,
                                                    std::string postgres_url, telemetry::logger& log) {
  if (q.store == config::job_store_kind::postgres) {
    jobs::postgres_options o;
    o.conninfo = std::move(postgres_url);
    o.lease = std::chrono::milliseconds(q.lease_ms);
    o.max_jobs = q.max_jobs;
    o.completed_ttl_ms = q.completed_ttl_ms;
    auto s = jobs::open_postgres_store(o);
    if (!s) return s.error();
    auto imported = jobs::import_ts_jobs(std::filesystem::absolute(q.storage_dir), **s, log);
    if (!imported) return imported.error();
    return s;
  }
  jobs::sqlite_options o;
  o.dir = std::filesystem::absolute(q.storage_dir);
  o.max_jobs = q.max_jobs;
  o.min_free_storage_mib = q.min_free_storage_mib;
  o.completed_ttl_ms = q.completed_ttl_ms;
  auto s = jobs::open_sqlite_store(o);
  if (!s) return s.error();
  auto imported = jobs::import_ts_jobs(o.dir, **s, log);
  if (!imported) return imported.error();
  return s;
}

// A job runs as a /v1/infer request through the same runtime as interactive traffic.
jobs::run_fn job_runner(config::loaded_config const& loaded, runtime::runtime& rt) {
  return [&loaded, &rt](jobs::job const& j) -> boost::asio::awaitable<result<boost::json::value>> {
    auto decoded = decode_infer_request(boost::json::serialize(j.request), loaded.cfg);
    if (!decoded) co_return decoded.error();
    if (decoded->dedupe_key || loaded.cfg.cache.scope == config::cache_scope::key) decoded->caller = j.owner;
    auto r = co_await rt.infer(std::move(*decoded));
    if (!r) co_return r.error();
    if (r->truncated_by_deadline)
      co_return ray::error{errc::request_timeout,
                           "the job did not complete within scheduler.requestTimeoutMs (" +
                               std::to_string(loaded.cfg.scheduler.request_timeout_ms) + " ms)"};
    boost::system::error_code ec;
    auto v =
        boost::json::parse(render_infer_response(*r, new_request_id(), std::chrono::system_clock::now()), ec);
    if (ec) co_return ray::error{errc::provider_invalid_response, "the job's response did not render"};
    co_return v;
  };
}

jobs::dispatcher_options dispatcher_options_for(config::async_queue_config const& q,
                                                std::optional<std::string> secret, runtime::runtime& rt) {
  jobs::dispatcher_options o;
  o.concurrency = q.dispatch_concurrency;
  o.poll = std::chrono::milliseconds(q.poll_interval_ms);
  o.max_callback_attempts = q.max_callback_attempts;
  o.completed_ttl = std::chrono::milliseconds(q.completed_ttl_ms);
  o.callback_secret = std::move(secret);
  o.policy = callback_policy_for(q);
  // Jobs yield to interactive traffic: no job starts while requests wait in the runtime's queue, and jobs
  // leave one backend slot free for interactive requests (with a single slot they start only when it is
  // idle), so an interactive request arriving mid-job does not wait for that job.
  o.interactive_waiting = [&rt] {
    auto const st = rt.stats();
    if (st.queue_depth > 0) return true;
    auto const slots = rt.backend_ref().describe().slots;
    auto const concurrency =
        slots > 0 ? std::min(rt.cfg().scheduler.concurrency, slots) : rt.cfg().scheduler.concurrency;
    return concurrency <= 1 ? st.in_flight > 0 : st.in_flight + 1 >= concurrency;
  };
  return o;
}

// First turn of the loop: jobs left running by a crash go back to the queue, then the dispatcher starts.
boost::asio::awaitable<void> start_jobs(jobs::store& s, jobs::dispatcher& d, telemetry::logger& log) {
  auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  auto recovered = co_await s.recover(now);
  if (!recovered) {
    log.error("recovering running jobs failed", {{"reason", recovered.error().message}});
  } else if (recovered->first + recovered->second > 0) {
    log.warn("jobs left running by the previous process recovered",
             {{"requeued", recovered->first}, {"failedNoAttemptsLeft", recovered->second}});
  }
  auto const c = s.current_counts();
  log.info("job queue ready",
           {{"queued", c.by_status[0]},
            {"callbackPending", c.callback_pending},
            {"totalJobs", c.total()},
            {"availableStorageMiB", s.available_storage_mib() ? boost::json::value(*s.available_storage_mib())
                                                              : boost::json::value(nullptr)}});
  d.start();
}

boost::asio::awaitable<void> shutdown_sequence(app& a, http::server& srv, boost::asio::io_context& ioc) {
  auto const grace = std::chrono::milliseconds(a.cfg().server.shutdown_grace_ms);
  auto const deadline = std::chrono::steady_clock::now() + grace;
  a.log.info("shutdown started", {{"inFlight", srv.stats().active_requests.load()},
                                  {"graceMs", a.cfg().server.shutdown_grace_ms}});
  srv.begin_drain();
  // Running jobs get the same grace (then they are aborted and go back to the queue), in parallel with the
  // HTTP drain. The flag is shared: this frame does not lend a reference to the spawned stop.
  auto jobs_stopped = std::make_shared<bool>(a.job_dispatcher == nullptr);
  if (auto* d = a.job_dispatcher) {
    boost::asio::co_spawn(
        ioc,
        [](jobs::dispatcher* d, std::chrono::milliseconds g,
           std::shared_ptr<bool> flag) -> boost::asio::awaitable<void> {
          co_await d->stop(g);
          *flag = true;
        }(d, grace, jobs_stopped),
        boost::asio::detached);
  }
  boost::asio::steady_timer t(ioc);
  while (srv.stats().active_requests.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    t.expires_after(std::chrono::milliseconds(10));
    co_await t.async_wait(use_tuple);
  }
  while (!*jobs_stopped) {  // bounded by the dispatcher: grace, then a few seconds to re-queue
    t.expires_after(std::chrono::milliseconds(10));
    co_await t.async_wait(use_tuple);
  }
  auto left = srv.stats().active_requests.load();
  srv.stop();
  // Every model's backend stops; supervised llama-servers get SIGTERM to their process group, SIGKILL after
  // the supervisor's grace; wait for them.
  bool stopped = false;
  a.models.stop([&stopped] { stopped = true; });
  while (!stopped) {
    t.expires_after(std::chrono::milliseconds(20));
    co_await t.async_wait(use_tuple);
  }
  a.log.info("shutdown complete", {{"cancelledRequests", left}});
  t.expires_after(std::chrono::milliseconds(5));
  co_await t.async_wait(use_tuple);
  ioc.stop();
}

// SIGHUP: re-read the config and apply what does not touch the backend (limits, auth keys, rate limits, log
// level); everything else needs a restart and is reported as such.
void reload(app& a, http::server& srv, std::function<result<config::loaded_config>()> const& reader) {
  if (!reader) {
    a.log.warn("SIGHUP received, but this process cannot re-read its configuration; unchanged");
    return;
  }
  auto fresh = reader();
  if (!fresh) {
    a.log.error("configuration reload failed; configuration unchanged", {{"reason", fresh.error().message}});
    return;
  }
  auto const& old_cfg = a.loaded.cfg;
  auto const& new_cfg = fresh->cfg;
  {
    // The startup refusals hold for a reload too: auth cannot be switched off on the public address this
    // process is bound to (the bind itself does not change on reload).
    config::config effective = new_cfg;
    effective.server.host = old_cfg.server.host;
    effective.model = old_cfg.model;
    if (auto why = refuse_reason(effective)) {
      a.log.error("configuration reload refused; configuration unchanged", {{"reason", *why}});
      return;
    }
  }
  auto acc = make_access(new_cfg);
  if (!acc) {
    a.log.error("configuration reload failed; configuration unchanged", {{"reason", acc.error().message}});
    return;
  }
  boost::json::array changed;
  if (!(old_cfg.server == new_cfg.server)) changed.emplace_back("server");
  if (!(old_cfg.auth == new_cfg.auth)) changed.emplace_back("auth");
  if (!(old_cfg.rate_limit == new_cfg.rate_limit)) changed.emplace_back("rateLimit");
  if (!(old_cfg.telemetry == new_cfg.telemetry)) changed.emplace_back("telemetry");
  boost::json::array ignored;
  if (!(old_cfg.model == new_cfg.model)) ignored.emplace_back("model");
  if (!(old_cfg.scheduler == new_cfg.scheduler)) ignored.emplace_back("scheduler");
  if (!(old_cfg.cache == new_cfg.cache)) ignored.emplace_back("cache");
  if (!(old_cfg.graceful_degradation == new_cfg.graceful_degradation))
    ignored.emplace_back("gracefulDegradation");
  if (!(old_cfg.async_queue == new_cfg.async_queue)) ignored.emplace_back("asyncQueue");
  if (old_cfg.server.host != new_cfg.server.host || old_cfg.server.port != new_cfg.server.port ||
      old_cfg.server.threads != new_cfg.server.threads)
    ignored.emplace_back("server.host/port/threads");

  // Keep the rate-limit counts when only the limits change.
  if (a.access.limiter && new_cfg.rate_limit.enabled) {
    a.access.limiter->set_limits(new_cfg.rate_limit);
    acc->limiter = std::move(a.access.limiter);
  }
  a.access = std::move(*acc);
  srv.set_limits(limits_from(new_cfg.server));
  a.log.set_level(to_level(new_cfg.telemetry.level));
  auto& live = a.loaded.cfg;
  auto const host = live.server.host;
  auto const port = live.server.port;
  auto const threads = live.server.threads;
  live.server = new_cfg.server;
  live.server.host = host;
  live.server.port = port;
  live.server.threads = threads;
  live.auth = new_cfg.auth;
  live.rate_limit = new_cfg.rate_limit;
  live.telemetry.level = new_cfg.telemetry.level;
  live.telemetry.slow_request_threshold_ms = new_cfg.telemetry.slow_request_threshold_ms;
  boost::json::object f{{"changed", std::move(changed)}, {"needsRestart", std::move(ignored)}};
  for (auto& [k, v] : access_summary(a.access))
    f[k] = v;
  a.log.info("configuration reloaded", std::move(f));
  if (a.supervisor && a.backend.current_state() == backend::state::failed) {
    a.log.info("SIGHUP: retrying the supervised backend that had failed");
    a.supervisor->reset();
  }
}

// The io_context of `serve`: shutdown() is exposed so pending work (coroutine frames, handlers) is destroyed
// while the objects it refers to (runtime, backend, server) still exist — not by ~io_context after them.
class io_context : public boost::asio::io_context {
 public:
  using boost::asio::io_context::io_context;
  void destroy_pending_work() { shutdown(); }
};

boost::asio::awaitable<void> signal_loop(app& a, http::server& srv, boost::asio::io_context& ioc,
                                         boost::asio::signal_set& signals,
                                         std::function<result<config::loaded_config>()> reader) {
  for (;;) {
    auto [ec, sig] = co_await signals.async_wait(use_tuple);
    if (ec) co_return;
    if (sig == SIGHUP) {
      reload(a, srv, reader);
      continue;
    }
    if (a.drain_timer) {
      // A second signal while draining: stop draining, shut down now.
      a.log.warn("second signal while draining: shutting down now", {{"signal", sig}});
      a.drain_timer->cancel();
      a.drain_timer.reset();
      continue;
    }
    if (a.shutting_down.load() || a.draining.load()) {
      a.log.warn("second signal: exiting now", {{"signal", sig}});
      a.log.flush();
      std::_Exit(1);
    }
    auto const drain = std::chrono::milliseconds(a.cfg().server.drain_ms);
    if (drain.count() > 0) {
      // Drain (spec/scale-out.md): /readyz says 503 `draining` at once so the balancer takes this node out,
      // while everything that still arrives is served; then the graceful shutdown as without a drain.
      a.draining = true;
      a.drain_timer = std::make_shared<boost::asio::steady_timer>(ioc, drain);
      a.log.info("draining: /readyz answers 503 while requests are still served",
                 {{"drainMs", a.cfg().server.drain_ms}, {"signal", sig}});
      boost::asio::co_spawn(
          ioc,
          [](app& a, http::server& srv, boost::asio::io_context& ioc,
             std::shared_ptr<boost::asio::steady_timer> t) -> boost::asio::awaitable<void> {
            co_await t->async_wait(use_tuple);
            a.drain_timer.reset();
            a.shutting_down = true;
            co_await shutdown_sequence(a, srv, ioc);
          }(a, srv, ioc, a.drain_timer),
          boost::asio::detached);
      continue;
    }
    a.shutting_down = true;
    boost::asio::co_spawn(ioc, shutdown_sequence(a, srv, ioc), boost::asio::detached);
  }
}

boost::asio::awaitable<void> summary_ticker(app& a, boost::asio::io_context& ioc) {
  boost::asio::steady_timer t(ioc);
  while (!a.shutting_down.load()) {
    t.expires_after(std::chrono::seconds(1));
    co_await t.async_wait(use_tuple);
    if (a.rejections) a.rejections->tick();
  }
}

}  // namespace

http::limits limits_from(config::server_config const& s) {
  http::limits l;
  l.max_connections = s.max_connections;
  l.max_connections_per_client = s.max_connections_per_client;
  l.max_header_bytes = s.max_header_bytes;
  l.max_headers = s.max_headers;
  l.max_target_bytes = s.max_target_bytes;
  l.request_body_limit_bytes = s.request_body_limit_bytes;
  l.headers_timeout_ms = s.headers_timeout_ms;
  l.headers_timeout_under_pressure_ms = s.headers_timeout_under_pressure_ms;
  l.body_timeout_ms = s.body_timeout_ms;
  l.min_body_bytes_per_second = s.min_body_bytes_per_second;
  l.keep_alive_timeout_ms = s.keep_alive_timeout_ms;
  l.write_timeout_ms = std::max(s.body_timeout_ms, 1000u);
  l.max_requests_per_connection = s.max_requests_per_connection;
  l.threads = s.threads;
  return l;
}

int serve(config::loaded_config loaded, serve_options opts) {
  // A client or log reader that goes away must not kill the process: writes report EPIPE instead.
  std::signal(SIGPIPE, SIG_IGN);
  auto const& cfg = loaded.cfg;
  telemetry::logger log(cfg.telemetry.service_name, to_level(cfg.telemetry.level));
  for (auto const& w : loaded.warnings)
    log.warn(w.message, w.fields);
  if (auto why = refuse_reason(cfg)) {
    log.error("configuration refused", {{"reason", *why}});
    log.flush();
    std::fprintf(stderr, "ray: %s\n", why->c_str());
    return 2;
  }
  auto acc = make_access(cfg);
  if (!acc) {
    log.error("configuration refused", {{"reason", acc.error().message}});
    log.flush();
    std::fprintf(stderr, "ray: %s\n", acc.error().message.c_str());
    return 2;
  }
  std::optional<std::string> callback_secret;
  if (cfg.async_queue.enabled && cfg.async_queue.callback_secret_env) {
    callback_secret = env_value(*cfg.async_queue.callback_secret_env);
    if (!callback_secret || callback_secret->empty()) {
      auto why = "asyncQueue.callbackSecretEnv names " + *cfg.async_queue.callback_secret_env +
                 ", which is not set: callbacks would go out unsigned. Set it, or remove callbackSecretEnv";
      log.error("configuration refused", {{"reason", why}});
      log.flush();
      std::fprintf(stderr, "ray: %s\n", why.c_str());
      return 2;
    }
  }
  // The PostgreSQL job store's connection string (it may hold a password): only ever in the environment.
  std::string postgres_url;
  bool const postgres_jobs =
      cfg.async_queue.enabled && cfg.async_queue.store == config::job_store_kind::postgres;
  if (postgres_jobs) {
    auto const& name = cfg.async_queue.postgres_url_env.value_or("");
    auto value = env_value(name);
    if (!value || value->empty()) {
      auto why = "asyncQueue.postgresUrlEnv names " + name +
                 ", which is not set: asyncQueue.store is postgres and needs the connection string there "
                 "(e.g. " +
                 name + "=postgresql://ray@db.internal/ray)";
      log.error("configuration refused", {{"reason", why}});
      log.flush();
      std::fprintf(stderr, "ray: %s\n", why.c_str());
      return 2;
    }
    postgres_url = std::move(*value);
  }

  io_context ioc(static_cast<int>(cfg.server.threads));
  telemetry::registry metrics;
  auto sampler_opts = system::sampler::options_for(cfg.graceful_degradation);
  sampler_opts.root = opts.system_root;
  system::sampler sampler(sampler_opts);
  // Every model gets its backend and serving core; supervised llama-servers are loaded and unloaded by the
  // registry within residency.memoryBudgetMiB (the supervisor owns the process, the adapter the HTTP view).
  runtime::registry models(
      ioc.get_executor(), cfg,
      [&ioc, &log](config::config const& per_model) {
        return per_model.model.adapter.kind == config::adapter_kind::mock
                   ? backend::make_mock(ioc.get_executor(), per_model)
                   : backend::make_remote(ioc.get_executor(), per_model, log);
      },
      metrics, log, &sampler);
  if (auto why = models.refusal()) {
    log.error("cannot start", {{"reason", *why}, {"setting", "residency.memoryBudgetMiB"}});
    log.flush();
    std::fprintf(stderr, "ray: %s\n", why->c_str());
    return 1;
  }
  auto* be = &models.primary_backend();
  auto& rt = models.primary();
  telemetry::metrics_cache backend_metrics;
  metrics.add_text_source([&backend_metrics](std::string& out) { backend_metrics.append_to(out); });
  be->set_metrics_cache(&backend_metrics);
  app a{loaded, log, metrics, *be, rt, models};
  a.supervisor = models.primary_supervisor();

  a.rejections = std::make_unique<telemetry::rejection_summarizer>(log);
  // Durable jobs (asyncQueue): the store (import of the TypeScript gateway's records, then recovery at the
  // first turn of the loop) and the dispatcher that runs them through this runtime.
  std::unique_ptr<jobs::store> job_store;
  std::unique_ptr<jobs::dispatcher> job_dispatcher;
  if (cfg.async_queue.enabled) {
    auto opened = open_job_store(cfg.async_queue, std::move(postgres_url), log);
    if (!opened) {
      log.error("cannot start",
                {{"reason", opened.error().message},
                 {"setting", postgres_jobs ? "asyncQueue.postgresUrlEnv" : "asyncQueue.storageDir"}});
      log.flush();
      std::fprintf(stderr, "ray: %s\n", opened.error().message.c_str());
      return 1;
    }
    job_store = std::move(*opened);
    job_dispatcher = std::make_unique<jobs::dispatcher>(
        ioc.get_executor(), *job_store, job_runner(loaded, rt),
        dispatcher_options_for(cfg.async_queue, callback_secret, rt), metrics, log);
    // Another node's submission (PostgreSQL NOTIFY) or a requeued expired lease wakes this dispatcher: the
    // store calls this on its own thread, the wake itself runs on the loop. Unregistered before the
    // dispatcher goes; a wake posted after the loop stopped is destroyed unrun with the pending work.
    job_store->set_wake_callback(
        [ex = ioc.get_executor(), d = job_dispatcher.get()] { boost::asio::post(ex, [d] { d->wake(); }); });
  }
  a.job_store = job_store.get();
  a.job_dispatcher = job_dispatcher.get();
  a.callback_policy = callback_policy_for(cfg.async_queue);
  {
    auto jobs_gauge =
        metrics.add_gauge("ray_jobs", "Durable jobs by status.", {"status"}, {.json_name = "jobs"});
    for (std::size_t i = 0; i < jobs::status_count; ++i) {
      auto const st = static_cast<jobs::status>(i);
      jobs_gauge.set_function({jobs::status_name(st)}, [s = job_store.get(), i] {
        return s ? static_cast<double>(s->current_counts().by_status[i]) : 0.0;
      });
    }
  }
  metrics
      .add_counter("ray_log_dropped_lines_total",
                   "Log lines dropped because the log sink was full or failing.", {},
                   {.json_name = "log.droppedLines"})
      .set_function({}, [&log] { return log.dropped_lines(); });
  a.access = std::move(*acc);
  router r(a);
  http::server srv(ioc, r, limits_from(a.cfg().server));
  a.server = &srv;
  {
    // What the connection defences did (http.hpp: slow clients): each series reads the server's counter.
    auto closed = metrics.add_counter(
        "ray_http_connections_refused_total",
        "Connections refused or closed to protect the others, by reason: over_capacity (at "
        "server.maxConnections with nothing to shed), per_client_limit, shed (closed to make room), "
        "slow_headers and slow_body (408 on a read deadline or rate).",
        {"reason"}, {.json_name = "http.connectionsRefused"});
    auto const& st = srv.stats();
    closed.set_function({"over_capacity"}, [&st] { return st.rejected_connections.load(); });
    closed.set_function({"per_client_limit"}, [&st] { return st.rejected_per_client.load(); });
    closed.set_function({"shed"}, [&st] { return st.shed_connections.load(); });
    closed.set_function({"slow_headers"}, [&st] { return st.slow_header_timeouts.load(); });
    closed.set_function({"slow_body"}, [&st] { return st.slow_body_timeouts.load(); });
  }

  auto ep = srv.listen(a.cfg().server.host, static_cast<std::uint16_t>(a.cfg().server.port));
  if (!ep) {
    log.error("cannot start", {{"reason", ep.error().message}});
    log.flush();
    std::fprintf(stderr, "ray: %s\n", ep.error().message.c_str());
    return 1;
  }
  // Signals are caught from before the listening line on: a supervisor may stop us the moment we announce.
  boost::asio::signal_set signals(ioc, SIGINT, SIGTERM, SIGHUP);
  srv.start();
  models.start();
  std::string host = ep->address().to_string();
  std::string url_host = ep->address().is_v6() ? "[" + host + "]" : host;
  // The listening line is written whatever the log level: with --port 0 it is how anyone learns the port.
  auto const configured_level = log.min_level();
  if (configured_level > telemetry::level::info) log.set_level(telemetry::level::info);
  log.info("gateway listening", {{"host", host},
                                 {"port", ep->port()},
                                 {"url", "http://" + url_host + ":" + std::to_string(ep->port())},
                                 {"profile", a.cfg().profile},
                                 {"model", a.cfg().model.id},
                                 {"backend", config::adapter_kind_name(a.cfg().model.adapter.kind)},
                                 {"providerStatus", backend::state_name(be->current_state())},
                                 {"largestPromptTokens", rt.context_window() - 1},
                                 {"threads", a.cfg().server.threads}});
  log.set_level(configured_level);

  boost::asio::co_spawn(ioc, signal_loop(a, srv, ioc, signals, std::move(opts.reload)),
                        boost::asio::detached);
  boost::asio::co_spawn(ioc, summary_ticker(a, ioc), boost::asio::detached);
  if (job_store && job_dispatcher)
    boost::asio::co_spawn(ioc, start_jobs(*job_store, *job_dispatcher, log), boost::asio::detached);
  log.info("access control", access_summary(a.access));

  std::vector<std::thread> extra;
  for (std::uint32_t i = 1; i < a.cfg().server.threads; ++i)
    extra.emplace_back([&ioc] { ioc.run(); });
  ioc.run();
  for (auto& t : extra)
    t.join();
  // Frames still suspended (a flight unwinding, a probe, a warm-up) are destroyed now, before the backend,
  // runtime and server they point into (their destructors may still touch them, e.g. a slot guard).
  // The job store's thread finishes its queue first (its completions are posted to this stopped loop and
  // destroyed with the rest of the pending work).
  if (job_store) job_store->set_wake_callback({});
  job_dispatcher.reset();
  job_store.reset();
  ioc.destroy_pending_work();
  log.flush();
  return 0;
}

}  // namespace ray::api
