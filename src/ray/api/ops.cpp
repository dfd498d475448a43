// Operational endpoints: /readyz (readiness with its reasons), /health (the whole picture) and /metrics
// (Prometheus text or the JSON view).
#include "ray/api/app.hpp"

#include <cmath>

namespace ray::api {

namespace {
constexpr std::string_view json_type = "application/json; charset=utf-8";

// The job queue is under pressure when it is ≥ 90 % of asyncQueue.maxJobs, its disk is below the minimum, or
// a failed write latched it.
bool async_queue_pressure(app const& a) {
  auto const* s = a.job_store;
  if (!s) return false;
  auto const& q = a.cfg().async_queue;
  auto const total = s->current_counts().total();
  bool const storage_low = s->available_storage_mib() && *s->available_storage_mib() < q.min_free_storage_mib;
  return s->degraded() || storage_low || total * 10 >= static_cast<std::uint64_t>(q.max_jobs) * 9;
}
}  // namespace

http::response router::readyz() const {
  auto const st = app_.backend.current_state();
  auto const stats = app_.rt.stats();
  auto const pv = app_.rt.pressure();
  bool const shutting = app_.shutting_down.load(std::memory_order_relaxed);
  auto const* srv = app_.server;
  bool const http_pressure = srv && srv->under_pressure();
  boost::json::array reasons;
  if (st != backend::state::ready) reasons.emplace_back("provider_" + std::string(backend::state_name(st)));
  if (pv.queue) reasons.emplace_back("queue_pressure");
  if (pv.memory) reasons.emplace_back("memory_pressure");
  if (pv.cpu) reasons.emplace_back("cpu_pressure");
  if (http_pressure) reasons.emplace_back("gateway_http_pressure");
  bool const jobs_pressure = async_queue_pressure(app_);
  if (jobs_pressure) reasons.emplace_back("async_queue_pressure");
  bool const draining = app_.draining.load(std::memory_order_relaxed);
  if (draining && !shutting) reasons.emplace_back("draining");
  if (shutting) reasons.emplace_back("shutting_down");
  bool const ready = backend::is_serving(st) && !shutting && !draining;
  std::string_view status =
      !ready ? (draining && !shutting ? "draining" : "unavailable") : (reasons.empty() ? "ok" : "degraded");
  boost::json::object o{{"status", status},
                        {"service", app_.cfg().telemetry.service_name},
                        {"providerStatus", backend::state_name(st)},
                        {"queueDepth", stats.queue_depth},
                        {"inFlight", stats.in_flight},
                        {"pressure", boost::json::object{{"queue", pv.queue},
                                                         {"preparation", false},
                                                         {"memory", pv.memory},
                                                         {"cpu", pv.cpu},
                                                         {"asyncQueue", jobs_pressure},
                                                         {"rateLimit", false},
                                                         {"gatewayHttp", http_pressure}}},
                        {"reasons", std::move(reasons)}};
  // Readiness follows the first chat model; each model's residency state is listed.
  boost::json::array models;
  for (auto const& v : app_.models.views())
    models.push_back(boost::json::object{{"id", v.id},
                                         {"kind", config::model_kind_name(v.kind)},
                                         {"state", runtime::model_state_name(v.state)}});
  o["models"] = std::move(models);
  return json_response(ready ? http::status::ok : http::status::service_unavailable, telemetry::to_json(o));
}

http::response router::health() const {
  auto const& cfg = app_.cfg();
  auto const st = app_.backend.current_state();
  auto const stats = app_.rt.stats();
  auto const desc = app_.backend.describe();
  auto const* srv = app_.server;
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  std::uint32_t conns = srv ? srv->stats().connections.load() : 0;
  std::uint32_t active = srv ? srv->stats().active_requests.load() : 0;
  std::uint32_t max_conns = srv ? srv->current_limits().max_connections : cfg.server.max_connections;
  auto uptime =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - app_.started);
  boost::json::object tags;
  for (auto const& [k, v] : cfg.tags)
    tags[k] = v;
  auto const bd = app_.backend.current_details();
  auto const pv = app_.rt.pressure();
  auto opt = [](auto const& v) -> boost::json::value {
    if (v) return boost::json::value(*v);
    return nullptr;
  };
  auto str_or_null = [](std::string const& v) -> boost::json::value {
    if (v.empty()) return nullptr;
    return boost::json::value(v);
  };
  boost::json::object details{{"loadMs", opt(bd.load_ms)},
                              {"restarts", bd.restarts},
                              {"lastRestartAt", str_or_null(bd.last_restart_at)},
                              {"build", str_or_null(bd.build)},
                              {"modelPath", str_or_null(bd.model_path)},
                              {"nCtx", desc.context_per_request},
                              {"totalSlots", desc.slots},
                              {"slotsBusy", bd.slots_busy},
                              {"lastError", str_or_null(bd.last_error)}};
  boost::json::object queue{
      {"degraded", pv.queue},
      {"depth", stats.queue_depth},
      {"depthRatio", ratio(stats.queue_depth, cfg.scheduler.max_queue)},
      {"threshold", cfg.graceful_degradation.queue_depth_threshold},
      {"maxQueue", cfg.scheduler.max_queue},
      // Both lanes share maxQueue (the scheduler has no per-lane cap); the split shows which kind is waiting.
      {"lanes", boost::json::object{{"short", stats.short_depth}, {"draft", stats.draft_depth}}},
      {"inFlight", stats.in_flight},
      {"inFlightRatio", ratio(stats.in_flight, cfg.scheduler.concurrency)},
      {"concurrency", cfg.scheduler.concurrency},
      {"queuedTokens", stats.queued_tokens},
      {"queuedTokensRatio", ratio(double(stats.queued_tokens), cfg.scheduler.max_queued_tokens)},
      {"maxQueuedTokens", cfg.scheduler.max_queued_tokens},
      {"inFlightTokens", stats.in_flight_tokens},
      {"inFlightTokensRatio", ratio(double(stats.in_flight_tokens), cfg.scheduler.max_inflight_tokens)},
      {"maxInflightTokens", cfg.scheduler.max_inflight_tokens}};
  auto const cv = app_.rt.cache_stats();
  boost::json::object cache{{"enabled", cfg.cache.enabled}, {"entries", cv.entries},
                            {"maxEntries", cv.max_entries}, {"bytes", cv.bytes},
                            {"maxBytes", cv.max_bytes},     {"hits", cv.hits},
                            {"misses", cv.misses},          {"evictions", cv.evictions},
                            {"expirations", cv.expirations}};
  boost::json::array sources;
  for (auto const& src : pv.sources)
    sources.emplace_back(src);
  boost::json::object runtime_o{
      {"queue", std::move(queue)},
      {"preparation", boost::json::object{{"degraded", false}, {"active", 0}}},
      {"cache", std::move(cache)},
      {"memory", boost::json::object{{"degraded", pv.memory},
                                     {"sources", std::move(sources)},
                                     {"cgroup", str_or_null(pv.cgroup)},
                                     {"processRssMiB", opt(pv.process_rss_mib)},
                                     {"cgroupCurrentMiB", opt(pv.cgroup_current_mib)},
                                     {"cgroupLimitMiB", opt(pv.cgroup_limit_mib)},
                                     {"psiSomeAvg10", opt(pv.memory_psi_some_avg10)},
                                     {"psiFullAvg10", opt(pv.memory_psi_full_avg10)}}},
      {"cpu", boost::json::object{{"degraded", pv.cpu},
                                  {"throttledRatio", opt(pv.cpu_throttled_ratio)},
                                  {"psiSomeAvg10", opt(pv.cpu_psi_some_avg10)},
                                  {"psiFullAvg10", opt(pv.cpu_psi_full_avg10)}}}};
  bool const down = st == backend::state::unreachable || st == backend::state::failed ||
                    st == backend::state::misconfigured;
  std::string_view status = down ? "unavailable" : (backend::is_serving(st) ? "ok" : "degraded");
  boost::json::object o{
      {"status", status},
      {"uptimeMs", uptime.count()},
      {"version", RAY_VERSION},
      {"profile", cfg.profile},
      {"modelId", cfg.model.id},
      {"tags", std::move(tags)},
      {"queueDepth", stats.queue_depth},
      {"inFlight", stats.in_flight},
      {"cacheEntries", cv.entries},
      {"provider", boost::json::object{{"status", backend::state_name(st)},
                                       {"checkedAt", bd.checked_at.empty()
                                                         ? format_timestamp(std::chrono::system_clock::now())
                                                         : bd.checked_at},
                                       {"latencyMs", std::llround(bd.probe_latency_ms)},
                                       {"details", std::move(details)}}},
      {"runtime", std::move(runtime_o)},
      {"gateway",
       boost::json::object{
           {"http",
            boost::json::object{{"connections", conns},
                                {"activeRequests", active},
                                {"maxConnections", max_conns},
                                {"degraded", srv && srv->under_pressure()},
                                {"rejectedConnections", srv ? srv->stats().rejected_connections.load() : 0},
                                {"rejectedPerClient", srv ? srv->stats().rejected_per_client.load() : 0},
                                {"shedConnections", srv ? srv->stats().shed_connections.load() : 0},
                                {"slowHeaderTimeouts", srv ? srv->stats().slow_header_timeouts.load() : 0},
                                {"slowBodyTimeouts", srv ? srv->stats().slow_body_timeouts.load() : 0}}}}}};
  if (auto const* js = app_.job_store) {
    auto const c = js->current_counts();
    auto const& q = cfg.async_queue;
    boost::json::object aq{{"enabled", true},
                           {"store", config::job_store_kind_name(q.store)},
                           {"degraded", js->degraded() || async_queue_pressure(app_)}};
    for (std::size_t i = 0; i < jobs::status_count; ++i)
      aq[jobs::status_name(static_cast<jobs::status>(i))] = c.by_status[i];
    aq["callbackPending"] = c.callback_pending;
    aq["totalJobs"] = c.total();
    aq["maxJobs"] = q.max_jobs;
    aq["availableStorageMiB"] = opt(js->available_storage_mib());
    aq["minFreeStorageMiB"] = q.min_free_storage_mib;
    aq["storageFailed"] = js->degraded();
    aq["dispatching"] = app_.job_dispatcher ? app_.job_dispatcher->running() : 0;
    o["asyncQueue"] = std::move(aq);
  } else {
    o["asyncQueue"] = boost::json::object{{"enabled", false}};
  }
  {
    auto const created = std::chrono::duration_cast<std::chrono::seconds>(
        (std::chrono::system_clock::now() - (std::chrono::steady_clock::now() - app_.started))
            .time_since_epoch());
    boost::json::array models;
    for (auto const& v : app_.models.views()) {
      auto m = model_object(v, created.count());
      m["providerStatus"] = backend::state_name(v.provider);
      m["inFlight"] = v.in_flight;
      m["queueDepth"] = v.queued;
      m["requests"] = v.requests;
      if (v.idle_unload_ms > 0) m["idleUnloadMs"] = v.idle_unload_ms;
      models.push_back(std::move(m));
    }
    o["models"] = std::move(models);
  }
  return json_response(down ? http::status::service_unavailable : http::status::ok, telemetry::to_json(o));
}

http::response router::metrics(http::request const& req) const {
  http::response res{http::status::ok, 11};
  auto accept = req[http::field::accept];
  if (accept.find("application/json") != std::string_view::npos) {
    res.set(http::field::content_type, json_type);
    app_.metrics.render_json(res.body());
  } else {
    res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    app_.metrics.render_prometheus(res.body());
  }
  return res;
}

}  // namespace ray::api
