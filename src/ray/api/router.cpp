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

// Runs `work` unless the client leaves first (then nullopt: `work` was cancelled with it). client_gone() goes
// first: it must be waiting before `work` can complete inline (see runtime.cpp on parallel_group), or its
// cancellation would be lost and the request would hang until the client left.
boost::asio::awaitable<std::optional<result<runtime::infer_result>>> unless_client_leaves(
    http::exchange& ex, boost::asio::awaitable<result<runtime::infer_result>> work) {
  auto outcome = co_await (ex.client_gone() || std::move(work));
  if (outcome.index() == 0) co_return std::nullopt;
  co_return std::move(std::get<1>(outcome));
}

bool is_probe(route_id id) noexcept {
  return id == route_id::livez || id == route_id::readyz || id == route_id::metrics;
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
    case route_id::embeddings:
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
  if (path == "/v1/models" || path == "/models") return {route_id::models, "/v1/models", get_head, true};
  if (path == "/v1/chat/completions" || path == "/chat/completions")
    return {route_id::chat, "/v1/chat/completions", "POST, OPTIONS", true};
  if (path == "/v1/completions" || path == "/completions")
    return {route_id::completions, "/v1/completions", "POST, OPTIONS", true};
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
                    route.id == route_id::embeddings || route.id == route_id::chat ||
                    route.id == route_id::completions;
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
      case route_id::jobs:
      case route_id::job:
        co_await handle_jobs(ex);
        co_return;
      case route_id::models:
      case route_id::model: {
        auto const& cfg = app_.cfg();
        auto entry = [&] {
          auto created = std::chrono::duration_cast<std::chrono::seconds>(
              (std::chrono::system_clock::now() - (std::chrono::steady_clock::now() - app_.started))
                  .time_since_epoch());
          return boost::json::object{
              {"id", cfg.model.id},
              {"object", "model"},
              {"created", created.count()},
              {"owned_by", "ray"},
              {"meta", boost::json::object{{"context_window", app_.rt.context_window()},
                                           {"quantization", cfg.model.quantization},
                                           {"backend", config::adapter_kind_name(cfg.model.adapter.kind)}}}};
        };
        if (route.id == route_id::models) {
          boost::json::object o{{"object", "list"}, {"data", boost::json::array{entry()}}};
          res = json_response(http::status::ok, telemetry::to_json(o));
          break;
        }
        auto const id = ex.path().substr(ex.path().rfind('/') + 1);
        bool known = id == cfg.model.id;
        for (auto const& a : cfg.model.aliases)
          known = known || id == a;
        if (known) {
          res = json_response(http::status::ok, telemetry::to_json(entry()));
        } else {
          ray::error err{errc::model_not_found, "The model '" + std::string(id) +
                                                    "' does not exist; this server serves '" + cfg.model.id +
                                                    "'"};
          err.param = "model";
          error_code = code_name(err.code);
          res = api::error_response(err, envelope::openai);
        }
        break;
      }
      case route_id::embeddings: {
        ray::error err{errc::not_implemented, "embeddings are not implemented by Ray yet"};
        error_code = code_name(err.code);
        res = api::error_response(err, envelope::openai);
        break;
      }
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
    held = co_await unless_client_leaves(ex, app_.rt.infer(std::move(*decoded)));
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

void router::log_unknown_fields(std::vector<std::string> const& fields, std::string_view route) const {
  if (fields.empty() || !app_.log.enabled(telemetry::level::debug)) return;
  boost::json::array names;
  for (auto const& f : fields)
    names.emplace_back(f);
  app_.log.debug("request fields ignored as unknown", {{"route", route}, {"fields", std::move(names)}});
}

boost::asio::awaitable<void> router::handle_openai(http::exchange& ex, bool completion) {
  auto const route = match_route(ex.path());
  auto const& cfg = app_.cfg();
  http::response res;
  std::string_view error_code;
  std::optional<result<runtime::infer_result>> held;
  runtime::infer_result const* result_for_log = nullptr;
  auto refuse = [&](ray::error const& err) {
    error_code = code_name(err.code);
    res = api::error_response(err, envelope::openai);
    app_.rt.count_rejection(err.code);
    if (app_.rejections) app_.rejections->record(error_code, {{"route", route.label}});
  };

  runtime::chat_request call;
  if (app_.cfg().cache.scope == config::cache_scope::key) call.caller = caller_of(ex.req());
  std::string requested_model;
  bool stream = false;
  bool include_usage = false;
  bool tools = false;
  std::optional<ray::error> bad;
  auto forward = [&call](openai::sampling_fields const& f) {
    call.max_tokens = f.max_tokens;
    call.temperature = f.temperature;
    call.top_p = f.top_p;
    call.seed = f.seed;
    call.stop = f.stop;
    if (f.frequency_penalty) call.extra["frequency_penalty"] = *f.frequency_penalty;
    if (f.presence_penalty) call.extra["presence_penalty"] = *f.presence_penalty;
    if (f.top_k) call.extra["top_k"] = *f.top_k;
    if (f.min_p) call.extra["min_p"] = *f.min_p;
    if (f.repeat_penalty) call.extra["repeat_penalty"] = *f.repeat_penalty;
    if (!f.logit_bias.is_null()) call.extra["logit_bias"] = f.logit_bias;
  };
  bool const x_ray_cache = iequals(trim(ex.req()["x-ray-cache"]), "on");
  if (completion) {
    auto d = openai::decode_completion(ex.req().body());
    if (!d) {
      bad = d.error();
    } else {
      requested_model = d->model;
      stream = d->stream;
      include_usage = d->include_usage;
      log_unknown_fields(d->unknown_fields, route.label);
      forward(*d);
      call.cacheable = openai::cacheable(*d, x_ray_cache);
      call.canonical = d->prompt;
      call.prompt = std::move(d->prompt);
    }
  } else {
    auto d = openai::decode_chat(ex.req().body());
    if (!d) {
      bad = d.error();
    } else {
      requested_model = d->model;
      stream = d->stream;
      include_usage = d->include_usage;
      log_unknown_fields(d->unknown_fields, route.label);
      tools = d->has_tools();
      forward(*d);
      call.cacheable = openai::cacheable(*d, x_ray_cache);
      call.canonical = openai::canonical_messages(d->messages);
      if (d->response_format_type && *d->response_format_type != "text") {
        call.json_mode = true;
        call.extra["response_format"] = d->response_format;
      }
      if (tools) {
        // Forwarded as sent; a tool request is never cached, joined or clamped (a cut tool call is invalid).
        call.json_mode = true;
        call.extra["tools"] = d->tools;
        if (!d->tool_choice.is_null()) call.extra["tool_choice"] = d->tool_choice;
        if (!d->parallel_tool_calls.is_null()) call.extra["parallel_tool_calls"] = d->parallel_tool_calls;
      }
      for (auto& m : d->messages)
        call.messages.push_back({m.role, std::move(m.content), m.name, m.tool_call_id});
    }
  }
  if (!bad) {
    auto model = openai::resolve_model(requested_model, cfg);
    if (!model) {
      bad = model.error();
    } else if (!requested_model.empty() && !openai::is_configured_model(requested_model, cfg) &&
               std::find(warned_models_.begin(), warned_models_.end(), requested_model) ==
                   warned_models_.end() &&
               warned_models_.size() < 64) {
      warned_models_.push_back(requested_model);
      app_.log.warn("unknown model name accepted",
                    {{"requested", requested_model}, {"served", cfg.model.id}});
    }
  }
  (void)tools;
  if (!call.extra.empty()) call.extra_key = telemetry::to_json(call.extra);

  if (!bad && stream) {
    unsigned status = co_await stream_openai(ex, std::move(call), completion, include_usage, error_code);
    record(route, status, ex.received_at(), ex.request_id(), error_code);
    co_return;
  }
  if (bad) {
    refuse(*bad);
  } else {
    held = co_await unless_client_leaves(ex, app_.rt.chat(std::move(call)));
    if (!held) {
      ex.close_after_response();
      record(route, 499, ex.received_at(), ex.request_id(), "client_closed_request");
      co_return;
    }
    auto& r = *held;
    if (!r) {
      refuse(r.error());
    } else {
      auto created = std::chrono::duration_cast<std::chrono::seconds>(
          std::chrono::system_clock::now().time_since_epoch());
      boost::json::object choice{{"index", 0}};
      if (completion) {
        choice["text"] = r->output;
        choice["logprobs"] = nullptr;
      } else {
        boost::json::object message{{"role", "assistant"}};
        if (r->output.empty() && !r->tool_calls.empty())
          message["content"] = nullptr;
        else
          message["content"] = r->output;
        if (!r->tool_calls.empty()) message["tool_calls"] = r->tool_calls;
        choice["message"] = std::move(message);
      }
      choice["finish_reason"] = r->finish_reason.empty() ? "stop" : r->finish_reason;
      std::uint32_t const pt = r->prompt_tokens.value_or(0);
      std::uint32_t const ct = r->completion_tokens.value_or(0);
      boost::json::object o{
          {"id", openai::object_id(completion ? "cmpl-" : "chatcmpl-", ex.request_id())},
          {"object", completion ? "text_completion" : "chat.completion"},
          {"created", created.count()},
          {"model", cfg.model.id},
          {"choices", boost::json::array{std::move(choice)}},
          {"usage",
           boost::json::object{{"prompt_tokens", pt}, {"completion_tokens", ct}, {"total_tokens", pt + ct}}}};
      res = json_response(http::status::ok, telemetry::to_json(o));
      res.set("x-ray-max-tokens", std::to_string(r->degradation.applied_max_tokens));
      if (r->truncated_by_deadline) res.set("x-ray-truncated", "deadline");
      if (r->degradation.applied) res.set("x-ray-degraded", "true");
      if (r->cached) res.set("x-ray-cache", "hit");
      result_for_log = &*r;
    }
  }
  add_cors(ex.req().base(), res);
  unsigned status = static_cast<unsigned>(res.result());
  co_await ex.respond(std::move(res));
  record(route, status, ex.received_at(), ex.request_id(), error_code, result_for_log);
}

namespace {

constexpr auto stream_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);

// One server-sent event. (Built outside co_await expressions: GCC 12 cannot put a string literal operand of a
// co_await expression into the coroutine frame — "array used as initializer".)
std::string sse_data(std::string_view payload) {
  std::string out;
  out.reserve(payload.size() + 8);
  out.append("data: ").append(payload).append("\n\n");
  return out;
}

// A stream's shared state: the generation coroutine (which owns it with the writer, so either may end first)
// queues deltas here, bounded by server.streamBufferBytes, and wakes the writer; the writer asks the
// generation to leave the flight through `stop` (see http/stop.hpp: no cancellation signal of the writer's
// frame is bound to the spawned generation).
struct stream_state final : runtime::stream_listener {
  stream_state(boost::asio::any_io_executor ex, std::size_t limit) : wake(ex), stop(ex), limit(limit) {}
  void on_text(std::string_view delta) override {
    if (overflow) return;
    queued += delta.size();
    if (queued > limit) {
      overflow =
          true;  // a client this far behind is dropped with an error event, not allowed to grow the flight
    } else {
      deltas.push_back({std::string(delta), {}});
    }
    wake.cancel();
  }
  void on_tool_calls(boost::json::value const& delta) override {
    if (overflow) return;
    deltas.push_back({{}, delta});
    wake.cancel();
  }
  struct delta {
    std::string text;
    boost::json::value tool_calls;  // non-null: a tool-call delta
  };
  boost::asio::steady_timer wake;
  http::stop_source stop;
  std::vector<delta> deltas;
  std::size_t queued{0};
  std::size_t limit;
  bool overflow{false};
  bool done{false};
  std::optional<result<runtime::infer_result>> outcome;
};

// Runs the generation of a stream; always ends with `done` set and an outcome, whatever happens inside.
boost::asio::awaitable<void> generate_stream(runtime::runtime& rt, runtime::chat_request call,
                                             std::shared_ptr<stream_state> st) {
  try {
    if (st->stop.stop_requested()) {
      st->outcome = ray::error{errc::provider_request_failed, "the client left"};
    } else {
      auto out = co_await (st->stop.wait() || rt.chat(std::move(call), st.get()));
      if (out.index() == 0)
        st->outcome = ray::error{errc::provider_request_failed, "the client left"};
      else
        st->outcome = std::move(std::get<1>(out));
    }
  } catch (std::exception const& e) {
    st->outcome = ray::error{errc::provider_request_failed, std::string("the stream failed: ") + e.what()};
  }
  st->done = true;
  st->wake.cancel();
}

}  // namespace

boost::asio::awaitable<unsigned> router::stream_openai(http::exchange& ex, runtime::chat_request call,
                                                       bool completion, bool include_usage,
                                                       std::string_view& error_code) {
  namespace asio = boost::asio;
  using namespace boost::asio::experimental::awaitable_operators;
  auto const& cfg = app_.cfg();
  auto ex_exec = co_await asio::this_coro::executor;
  // The generation runs beside this writer and shares `buf` with it (the runtime outlives both: shutdown
  // destroys pending work before it).
  auto const st = std::make_shared<stream_state>(ex_exec, cfg.server.stream_buffer_bytes);
  auto& buf = *st;
  asio::co_spawn(ex_exec, generate_stream(app_.rt, std::move(call), st), [](std::exception_ptr) {});
  // Whatever way this writer ends (an exception included), the generation leaves the flight.
  struct leave_on_exit {
    stream_state& s;
    ~leave_on_exit() { s.stop.request_stop(); }
  } leave{buf};

  std::string const id = openai::object_id(completion ? "cmpl-" : "chatcmpl-", ex.request_id());
  auto const created =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  auto chunk = [&](std::string_view text, boost::json::value finish) {
    boost::json::object choice{{"index", 0}};
    if (completion) {
      choice["text"] = text;
      choice["logprobs"] = nullptr;
    } else {
      choice["delta"] = finish.is_null() ? boost::json::object{{"content", text}} : boost::json::object{};
    }
    choice["finish_reason"] = finish;
    boost::json::object o{{"id", id},
                          {"object", completion ? "text_completion" : "chat.completion.chunk"},
                          {"created", created},
                          {"model", cfg.model.id},
                          {"choices", boost::json::array{std::move(choice)}}};
    return sse_data(telemetry::to_json(o));
  };

  auto tool_chunk = [&](boost::json::value const& tool_calls) {
    boost::json::object o{{"id", id},
                          {"object", "chat.completion.chunk"},
                          {"created", created},
                          {"model", cfg.model.id},
                          {"choices", boost::json::array{boost::json::object{
                                          {"index", 0},
                                          {"delta", boost::json::object{{"tool_calls", tool_calls}}},
                                          {"finish_reason", nullptr}}}}};
    return sse_data(telemetry::to_json(o));
  };

  bool headers = false;
  bool alive = true;
  auto send_headers = [&]() -> asio::awaitable<bool> {
    headers = true;
    http::response head{http::status::ok, 11};
    head.set(http::field::content_type, "text/event-stream");
    head.set(http::field::cache_control, "no-cache");
    head.set("x-accel-buffering", "no");
    add_cors(ex.req().base(), head);
    bool ok = co_await ex.begin_stream(std::move(head));
    if (ok && !completion) {
      boost::json::object first{
          {"id", id},
          {"object", "chat.completion.chunk"},
          {"created", created},
          {"model", cfg.model.id},
          {"choices", boost::json::array{boost::json::object{
                          {"index", 0},
                          {"delta", boost::json::object{{"role", "assistant"}, {"content", ""}}},
                          {"finish_reason", nullptr}}}}};
      std::string const line = sse_data(telemetry::to_json(first));
      ok = co_await ex.write_chunk(line);
    }
    co_return ok;
  };

  auto const keepalive = std::chrono::milliseconds(cfg.server.sse_keep_alive_ms);
  bool streamed_any = false;
  while (alive) {
    if (!buf.deltas.empty() && !buf.overflow) {
      if (!headers) alive = co_await send_headers();
      std::string out;
      for (auto const& d : buf.deltas) {
        if (!d.tool_calls.is_null())
          out += tool_chunk(d.tool_calls);
        else
          out += chunk(d.text, nullptr);
      }
      buf.deltas.clear();
      buf.queued = 0;
      streamed_any = true;
      if (alive) alive = co_await ex.write_chunk(out);
      continue;
    }
    if (buf.done || buf.overflow) break;
    buf.wake.expires_after(keepalive);
    // client_gone() first (see runtime.cpp on parallel_group and inline completion).
    auto r = co_await (ex.client_gone() || buf.wake.async_wait(stream_tuple));
    if (r.index() == 0) {
      alive = false;
      break;
    }
    auto [ec] = std::get<1>(r);
    if (!ec && !buf.done && buf.deltas.empty()) {  // the keep-alive is due
      if (!headers) alive = co_await send_headers();
      static constexpr std::string_view ping = ": ping\n\n";  // not a literal inside co_await (GCC 12)
      if (alive) alive = co_await ex.write_chunk(ping);
    }
  }

  if (!alive || buf.overflow) {
    // The client left (or fell too far behind): leave the flight; the last waiter out cancels the backend
    // call. The generation ends on its own (it owns its state); nothing here waits for it.
    buf.stop.request_stop();
    if (alive && buf.overflow) {
      ray::error err{errc::overloaded, "the client read the stream too slowly (server.streamBufferBytes)"};
      std::string const line = sse_data(telemetry::to_json(
          boost::json::object{{"error", boost::json::object{{"message", err.message},
                                                            {"type", "server_error"},
                                                            {"code", code_name(err.code)}}}}));
      co_await ex.write_chunk(line);
      co_await ex.end_stream();
    }
    ex.close_after_response();
    error_code = "client_closed_request";
    co_return 499;
  }

  auto& outcome = *buf.outcome;
  if (!outcome) {
    error_code = code_name(outcome.error().code);
    app_.rt.count_rejection(outcome.error().code);
    if (!headers) {
      // Decided before anything was sent (admission, context, pressure): a real HTTP status with its headers.
      auto res = api::error_response(outcome.error(), envelope::openai);
      add_cors(ex.req().base(), res);
      unsigned st = static_cast<unsigned>(res.result());
      co_await ex.respond(std::move(res));
      co_return st;
    }
    std::string const line = sse_data(api::error_response(outcome.error(), envelope::openai).body());
    co_await ex.write_chunk(line);  // and no [DONE]
    co_await ex.end_stream();
    co_return 200;
  }
  auto const& r = *outcome;
  if (!headers && !(co_await send_headers())) co_return 200;
  std::string out;
  if (!streamed_any && !r.output.empty()) out += chunk(r.output, nullptr);  // a cache hit arrives whole
  out += chunk("", boost::json::value(r.finish_reason.empty() ? "stop" : r.finish_reason));
  if (include_usage) {
    std::uint32_t const pt = r.prompt_tokens.value_or(0);
    std::uint32_t const ct = r.completion_tokens.value_or(0);
    boost::json::object usage{
        {"id", id},
        {"object", completion ? "text_completion" : "chat.completion.chunk"},
        {"created", created},
        {"model", cfg.model.id},
        {"choices", boost::json::array{}},
        {"usage",
         boost::json::object{{"prompt_tokens", pt}, {"completion_tokens", ct}, {"total_tokens", pt + ct}}}};
    out += sse_data(telemetry::to_json(usage));
  }
  out += sse_data("[DONE]");
  if (co_await ex.write_chunk(out)) co_await ex.end_stream();
  co_return 200;
}

}  // namespace ray::api
