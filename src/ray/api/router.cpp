#include "ray/api/app.hpp"
#include "ray/api/openai.hpp"
#include "ray/http/stop.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>

namespace ray::api {

namespace {
using namespace boost::asio::experimental::awaitable_operators;
constexpr std::string_view json_type = "application/json; charset=utf-8";
constexpr std::string_view get_head = "GET, HEAD, OPTIONS";

// Routes that machines poll (probes, scrapes, the status page's /health every 2 s): their request lines log
// at debug, so an open browser tab or a load balancer's health check does not fill the log.
bool is_probe(route_id id) noexcept {
  return id == route_id::livez || id == route_id::readyz || id == route_id::health || id == route_id::metrics;
}

bool method_allowed(route_id id, http::verb m) noexcept {
  using v = http::verb;
  if (m == v::options) return true;
  switch (id) {
    case route_id::root:
    case route_id::livez:
    case route_id::readyz:
    case route_id::health:
    case route_id::metrics:
    case route_id::config:
    case route_id::models:
    case route_id::model:
      return m == v::get || m == v::head;
    case route_id::infer:
    case route_id::chat:
    case route_id::completions:
    case route_id::responses:
    case route_id::embeddings:
    case route_id::embed:
    case route_id::rerank:
      return m == v::post;
    case route_id::jobs:
      return m == v::get || m == v::head || m == v::post;
    case route_id::job:
      return m == v::get || m == v::head || m == v::delete_;
    case route_id::none:
      return false;
  }
  return false;
}

}  // namespace

namespace {
// How long a request may wait for its model to be loaded: scheduler.queueTimeoutMs (default
// requestTimeoutMs), as for a place in the queue.
ray::clock::time_point wait_deadline(app const& a) {
  auto const& s = a.cfg().scheduler;
  return ray::system_clock().now() +
         std::chrono::milliseconds(s.queue_timeout_ms.value_or(s.request_timeout_ms));
}
}  // namespace

boost::json::object model_object(runtime::model_view const& v, std::int64_t created) {
  boost::json::object memory;
  if (v.estimated_mib) memory["estimated"] = std::round(*v.estimated_mib * 10) / 10;
  if (v.rss_mib) memory["rss"] = std::round(*v.rss_mib * 10) / 10;
  boost::json::object o{{"id", v.id},
                        {"object", "model"},
                        {"created", created},
                        {"owned_by", "ray"},
                        {"kind", config::model_kind_name(v.kind)},
                        {"state", runtime::model_state_name(v.state)},
                        {"pinned", v.pinned},
                        {"memoryMiB", std::move(memory)},
                        {"loadCount", v.load_count},
                        {"meta", boost::json::object{{"context_window", v.context_window},
                                                     {"quantization", v.quantization},
                                                     {"backend", config::adapter_kind_name(v.adapter)}}}};
  if (v.last_load_ms) {
    o["lastLoadMs"] = std::round(*v.last_load_ms);
    if (v.load_ms_estimated) o["lastLoadMsEstimated"] = true;
  }
  return o;
}

boost::asio::awaitable<result<runtime::infer_result>> chat_on_model(app& a, std::string model,
                                                                    runtime::chat_request call,
                                                                    runtime::stream_listener* listener) {
  auto lease = co_await a.models.acquire(model, config::model_kind::chat, a.cfg().openai.strict_model_names,
                                         wait_deadline(a));
  if (!lease) co_return lease.error();
  co_return co_await lease->core().chat(std::move(call), listener);
}

boost::asio::awaitable<result<runtime::infer_result>> infer_on_model(app& a, std::string model,
                                                                     runtime::infer_request req) {
  // Native requests are lenient about the name (a TypeScript-era client may send any).
  auto lease = co_await a.models.acquire(model, config::model_kind::chat, false, wait_deadline(a));
  if (!lease) co_return lease.error();
  co_return co_await lease->core().infer(std::move(req));
}

route_info match_route(std::string_view path) noexcept {
  if (path == "/") return {route_id::root, "/", get_head};
  if (path == "/livez") return {route_id::livez, "/livez", get_head};
  if (path == "/readyz") return {route_id::readyz, "/readyz", get_head};
  if (path == "/health") return {route_id::health, "/health", get_head};
  if (path == "/metrics") return {route_id::metrics, "/metrics", get_head};
  if (path == "/v1/config") return {route_id::config, "/v1/config", get_head};
  if (path == "/v1/infer") return {route_id::infer, "/v1/infer", "POST, OPTIONS"};
  if (path == "/v1/jobs") return {route_id::jobs, "/v1/jobs", "GET, HEAD, POST, OPTIONS"};
  if (path.size() > 9 && path.substr(0, 9) == "/v1/jobs/" && path.find('/', 9) == std::string_view::npos)
    return {route_id::job, "/v1/jobs/{id}", "GET, HEAD, DELETE, OPTIONS"};
  if (path == "/v1/embeddings" || path == "/embeddings")
    return {route_id::embeddings, "/v1/embeddings", "POST, OPTIONS", true};
  if (path == "/v1/embed") return {route_id::embed, "/v1/embed", "POST, OPTIONS"};
  if (path == "/v1/rerank" || path == "/rerank")
    return {route_id::rerank, "/v1/rerank", "POST, OPTIONS", true};
  if (path == "/v1/models" || path == "/models") return {route_id::models, "/v1/models", get_head, true};
  if (path == "/v1/chat/completions" || path == "/chat/completions")
    return {route_id::chat, "/v1/chat/completions", "POST, OPTIONS", true};
  if (path == "/v1/completions" || path == "/completions")
    return {route_id::completions, "/v1/completions", "POST, OPTIONS", true};
  if (path == "/v1/responses" || path == "/responses")
    return {route_id::responses, "/v1/responses", "POST, OPTIONS", true};
  for (std::string_view prefix : {std::string_view("/v1/models/"), std::string_view("/models/")}) {
    if (path.size() > prefix.size() && path.substr(0, prefix.size()) == prefix)
      return {route_id::model, "/v1/models/{id}", get_head, true};
  }
  return {};
}

router::router(app& a)
    : app_(a),
      requests_(a.metrics.add_counter("ray_requests_total",
                                      "HTTP requests answered, by route template and status.",
                                      {"route", "code"}, {.json_name = "requests"})),
      durations_(a.metrics.add_histogram(
          "ray_request_duration_seconds",
          "Time from the request's arrival to its response, by route template.", {"route"})) {}

std::optional<ray::error> router::check_headers(http::request_header const& header, std::string_view path,
                                                http::tcp::endpoint const& peer, http::header_list& extra) {
  auto route = match_route(path);
  if (route.id == route_id::none) return ray::error{errc::not_found, "no route for " + std::string(path)};
  if (!method_allowed(route.id, header.method())) {
    return ray::error{errc::method_not_allowed, std::string(header.method_string()) + " is not allowed on " +
                                                    std::string(route.label) +
                                                    "; allowed: " + std::string(route.allow)};
  }
  if (header.method() == http::verb::options) return std::nullopt;  // CORS preflight carries no credentials

  // Auth before rate limiting, so rejected keys spend no quota (and before 100 Continue: the server calls us
  // before it reads or invites the body).
  auto& acc = app_.access;
  bool const open_route =
      route.id == route_id::root || route.id == route_id::livez || route.id == route_id::readyz;
  std::optional<access::key_digest> who;
  if (acc.auth.enabled && !open_route) {
    std::string_view values[4];
    std::size_t n = 0;
    for (auto const& f : header) {
      if (f.name() != http::field::authorization) continue;
      if (n == std::size(values)) {
        n = std::size(values) + 1;  // more than we look at: certainly more than one
        break;
      }
      values[n++] = f.value();
    }
    auto token =
        access::bearer_token(std::span<std::string_view const>(values, std::min(n, std::size(values))));
    if (token && n <= 1 && acc.keys) who = acc.keys->verify(*token);
    if (!who) return access::unauthorized();
  }

  bool const work = route.id == route_id::infer || route.id == route_id::jobs || route.id == route_id::job ||
                    route.id == route_id::embeddings || route.id == route_id::embed ||
                    route.id == route_id::rerank || route.id == route_id::chat ||
                    route.id == route_id::completions || route.id == route_id::responses;
  if (work && acc.rate.enabled && acc.limiter) {
    // The last 8 X-Forwarded-For lines, in order: our own proxies append at the right end (client_ip trusts
    // from there), so extra lines a client sends must push out its own, never the proxy's.
    std::string_view ring[8];
    std::size_t seen = 0;
    for (auto const& f : header)
      if (iequals(f.name_string(), "x-forwarded-for")) ring[seen++ % std::size(ring)] = f.value();
    std::string_view xff[std::size(ring)];
    std::size_t const nx = std::min(seen, std::size(ring));
    for (std::size_t i = 0; i < nx; ++i)
      xff[i] = ring[(seen - nx + i) % std::size(ring)];
    auto const peer_ip = peer.address().to_string();
    auto ip = access::client_ip(peer_ip, std::span<std::string_view const>(xff, nx),
                                acc.rate.trust_proxy_headers, acc.proxies);
    if (acc.rate.trust_proxy_headers && nx > 0 && ip == peer_ip && !acc.warned_untrusted_forwarder &&
        !acc.proxies.contains(peer_ip)) {
      // The TypeScript gateway believed any private peer; Ray only the listed ones. Say so once, so an
      // operator behind a proxy on another address sees why every client shares the proxy's limit.
      acc.warned_untrusted_forwarder = true;
      app_.log.warn("X-Forwarded-For ignored: the peer is not in rateLimit.trustedProxies",
                    {{"peer", peer_ip}, {"setting", "rateLimit.trustedProxies"}});
    }
    auto d = acc.limiter->check(access::rate_limit_key(acc.rate.key_strategy, ip, who));
    extra.emplace_back("x-ratelimit-limit", std::to_string(d.limit));
    extra.emplace_back("x-ratelimit-remaining", std::to_string(d.remaining));
    extra.emplace_back("x-ratelimit-reset", std::to_string(d.reset_epoch_seconds));
    if (!d.allowed) return access::rate_limited(d);
  }

  if (work && app_.shutting_down.load(std::memory_order_relaxed))
    return ray::error{errc::shutting_down,
                      "the gateway is shutting down; retry against another instance or later"};
  return std::nullopt;
}

std::optional<std::string> router::connection_owner(boost::asio::ip::address const& peer) {
  auto const text = peer.to_string();
  auto const& proxies = app_.access.proxies;
  if (proxies.contains(text)) return std::nullopt;  // a trusted proxy carries many clients
  // Normalised as the rate limiter sees it: ::ffff:a.b.c.d is a.b.c.d, an IPv6 client counts as its /64.
  return access::rate_limit_address(access::client_ip(text, {}, false, proxies));
}

std::string router::caller_of(http::request const& req) const {
  auto const& acc = app_.access;
  if (!acc.auth.enabled) return {};
  std::string_view values[1];
  std::size_t n = 0;
  for (auto const& f : req)
    if (f.name() == http::field::authorization && n++ == 0) values[0] = f.value();
  if (n != 1) return {};  // check_headers admitted exactly one
  auto token = access::bearer_token(std::span<std::string_view const>(values, 1));
  if (!token) return {};
  return access::caller_scope(access::key_digest::of(*token));
}

bool router::accepts_body(http::request_header const& header, std::string_view path) {
  (void)path;
  return header.method() == http::verb::post;
}

http::response router::error_response(ray::error const& err, http::request_header const* header,
                                      std::string_view path, std::chrono::steady_clock::time_point started) {
  auto route = match_route(path);
  http::response res = api::error_response(err, route.openai ? envelope::openai : envelope::native);
  if (err.code == errc::method_not_allowed) res.set(http::field::allow, route.allow);
  if (header) add_cors(*header, res);
  // Errors answered by the server before a handler ran (framing, routing) are counted here.
  requests_.with({route.label, std::to_string(static_cast<unsigned>(res.result()))}).inc();
  durations_.with({route.label}).observe(std::chrono::steady_clock::now() - started);
  app_.rt.count_rejection(err.code);
  if (app_.rejections) app_.rejections->record(code_name(err.code), {{"route", route.label}});
  return res;
}

http::response router::json_response(http::status st, std::string body) const {
  http::response res{st, 11};
  res.set(http::field::content_type, json_type);
  res.body() = std::move(body);
  return res;
}

void router::add_cors(http::request_header const& header, http::response& res) const {
  auto origin = header[http::field::origin];
  if (origin.empty()) return;
  auto const& allowed = app_.cfg().server.cors_allow_origins;
  if (std::find(allowed.begin(), allowed.end(), origin) == allowed.end() &&
      std::find(allowed.begin(), allowed.end(), "*") == allowed.end())
    return;
  res.set(http::field::access_control_allow_origin, origin);
  res.set(http::field::vary, "Origin");
}

void router::record(route_info const& route, unsigned status, std::chrono::steady_clock::time_point started,
                    std::string const& request_id, std::string_view error_code,
                    runtime::infer_result const* r) {
  auto elapsed = std::chrono::steady_clock::now() - started;
  requests_.with({route.label, std::to_string(status)}).inc();
  durations_.with({route.label}).observe(elapsed);
  double const ms = std::chrono::duration<double, std::milli>(elapsed).count();
  bool slow = !is_probe(route.id) && ms > app_.cfg().telemetry.slow_request_threshold_ms;
  std::uint64_t slow_count = 0;
  if (slow) {
    // At most one slow-request warning per second, carrying how many there were: an overloaded box must not
    // turn its log into one line per request. The others log as ordinary request lines.
    auto const now = std::chrono::steady_clock::now();
    ++slow_since_warn_;
    if (now - last_slow_warn_ >= std::chrono::seconds(1)) {
      last_slow_warn_ = now;
      slow_count = slow_since_warn_;
      slow_since_warn_ = 0;
    } else {
      slow = false;
    }
  }
  auto lvl =
      is_probe(route.id) ? telemetry::level::debug : (slow ? telemetry::level::warn : telemetry::level::info);
  if (!app_.log.enabled(lvl)) return;
  boost::json::object f{
      {"requestId", request_id}, {"route", route.label}, {"status", status}, {"durationMs", ms}};
  if (r) {
    f["queueMs"] = r->queue_ms;
    f["cached"] = r->cached;
    f["deduplicated"] = r->deduplicated;
    f["degraded"] = r->degradation.applied;
  }
  if (!error_code.empty()) f["errorCode"] = error_code;
  if (slow) {
    f["slowRequestThresholdMs"] = app_.cfg().telemetry.slow_request_threshold_ms;
    f["slowRequests"] = slow_count;  // slow requests since the previous warning, this one included
  }
  app_.log.log(lvl, slow ? "slow request" : "request completed", std::move(f));
}

boost::asio::awaitable<void> router::handle(http::exchange& ex) {
  auto const route = match_route(ex.path());
  auto const& req = ex.req();
  http::response res;
  std::string_view error_code;

  if (req.method() == http::verb::options) {
    res = http::response{http::status::no_content, 11};
    res.set(http::field::allow, route.allow);
    auto origin = req[http::field::origin];
    add_cors(req.base(), res);
    if (!origin.empty() && res.find(http::field::access_control_allow_origin) != res.end()) {
      res.set(http::field::access_control_allow_methods, route.allow);
      res.set(http::field::access_control_allow_headers, "authorization, content-type, x-request-id");
      res.set(http::field::access_control_max_age, "600");
    }
  } else {
    switch (route.id) {
      case route_id::root: {
        if (prefers_html(req[http::field::accept])) {  // a browser: the status page (it holds no data)
          res = status_page();
          break;
        }
        boost::json::object o{{"name", "ray"},
                              {"version", RAY_VERSION},
                              {"profile", app_.cfg().profile},
                              {"model", app_.cfg().model.id}};
        res = json_response(http::status::ok, telemetry::to_json(o));
        break;
      }
      case route_id::livez:
        res = json_response(http::status::ok,
                            "{\"status\":\"ok\",\"service\":\"" + app_.cfg().telemetry.service_name + "\"}");
        break;
      case route_id::readyz:
        res = readyz();
        break;
      case route_id::health:
        res = health();
        break;
      case route_id::metrics:
        res = metrics(req);
        break;
      case route_id::config:
        res = json_response(http::status::ok, telemetry::to_json(config::to_public_json(app_.loaded)));
        break;
      case route_id::infer:
        co_await handle_infer(ex);
        co_return;
      case route_id::chat:
        co_await handle_openai(ex, false);
        co_return;
      case route_id::completions:
        co_await handle_openai(ex, true);
        co_return;
      case route_id::responses:
        co_await handle_responses(ex);
        co_return;
      case route_id::jobs:
      case route_id::job:
        co_await handle_jobs(ex);
        co_return;
      case route_id::models:
      case route_id::model: {
        auto const created = std::chrono::duration_cast<std::chrono::seconds>(
            (std::chrono::system_clock::now() - (std::chrono::steady_clock::now() - app_.started))
                .time_since_epoch());
        auto const views = app_.models.views();
        if (route.id == route_id::models) {
          boost::json::array data;
          for (auto const& v : views)
            data.push_back(model_object(v, created.count()));
          boost::json::object o{{"object", "list"}, {"data", std::move(data)}};
          res = json_response(http::status::ok, telemetry::to_json(o));
          break;
        }
        auto const id = ex.path().substr(ex.path().rfind('/') + 1);
        auto const* found = static_cast<runtime::model_view const*>(nullptr);
        std::string served;
        for (auto const& v : views) {
          served += (served.empty() ? "'" : ", '") + v.id + "'";
          bool known = id == v.id;
          for (auto const& a : v.aliases)
            known = known || id == a;
          if (known && !found) found = &v;
        }
        if (found) {
          res = json_response(http::status::ok, telemetry::to_json(model_object(*found, created.count())));
        } else {
          ray::error err{errc::model_not_found,
                         "The model '" + std::string(id) + "' does not exist; this server serves " + served};
          err.param = "model";
          error_code = code_name(err.code);
          res = api::error_response(err, envelope::openai);
        }
        break;
      }
      case route_id::embeddings:
      case route_id::embed:
      case route_id::rerank:
        co_await handle_embeddings(ex, route.id);
        co_return;
      case route_id::none: {
        ray::error err{errc::not_found, "no route for " + std::string(ex.path())};
        error_code = code_name(err.code);
        res = api::error_response(err);
        break;
      }
    }
  }
  add_cors(req.base(), res);
  unsigned status = static_cast<unsigned>(res.result());
  co_await ex.respond(std::move(res));
  record(route, status, ex.received_at(), ex.request_id(), error_code);
}

boost::asio::awaitable<void> router::handle_infer(http::exchange& ex) {
  auto const route = match_route(ex.path());
  auto decoded = decode_infer_request(ex.req().body(), app_.cfg());
  http::response res;
  std::string_view error_code;
  std::optional<result<runtime::infer_result>> held;  // outlives the response for the request log line
  runtime::infer_result const* result_for_log = nullptr;
  if (!decoded) {
    error_code = code_name(decoded.error().code);
    res = api::error_response(decoded.error());
    app_.rt.count_rejection(decoded.error().code);
    if (app_.rejections) app_.rejections->record(error_code, {{"route", route.label}});
  } else {
    // The caller scopes a client's dedupeKey always, and the cache and identical-request dedupe when
    // cache.scope = key.
    if (decoded->dedupe_key || app_.cfg().cache.scope == config::cache_scope::key)
      decoded->caller = caller_of(ex.req());
    held = co_await unless_client_leaves(ex, infer_on_model(app_, "", std::move(*decoded)));
    if (!held) {
      // The client left: the backend call was cancelled with it; nobody is there to answer.
      ex.close_after_response();
      record(route, 499, ex.received_at(), ex.request_id(), "client_closed_request");
      co_return;
    }
    auto& r = *held;
    if (r && r->truncated_by_deadline) {
      // The native contract: a total deadline is 504 request_timeout (the TypeScript gateway's behaviour).
      ray::error err{errc::request_timeout,
                     "the request did not complete within scheduler.requestTimeoutMs (" +
                         std::to_string(app_.cfg().scheduler.request_timeout_ms) + " ms)"};
      app_.rt.count_rejection(err.code);
      r = err;
    }
    if (!r) {
      error_code = code_name(r.error().code);
      res = api::error_response(r.error());
      if (app_.rejections) app_.rejections->record(error_code, {{"route", route.label}});
    } else {
      res = json_response(http::status::ok,
                          render_infer_response(*r, ex.request_id(), std::chrono::system_clock::now()));
      result_for_log = &*r;
      if (r->degradation.applied) res.set("x-ray-degraded", "true");
    }
  }
  add_cors(ex.req().base(), res);
  unsigned status = static_cast<unsigned>(res.result());
  co_await ex.respond(std::move(res));
  record(route, status, ex.received_at(), ex.request_id(), error_code, result_for_log);
}

}  // namespace ray::api
