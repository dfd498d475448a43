#include "ray/api/app.hpp"
#include "ray/system/system.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
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
  if (cfg.auth.enabled)
    return "auth.enabled is true, but API-key auth is not available in this build of Ray yet; refusing to "
           "start "
           "rather than serve without it (set auth.enabled to false for a loopback-only deployment)";
  if (cfg.rate_limit.enabled)
    return "rateLimit.enabled is true, but rate limiting is not available in this build of Ray yet; refusing "
           "to "
           "start rather than serve without it (set rateLimit.enabled to false or "
           "RAY_RATE_LIMIT_ENABLED=false)";
  if (cfg.model.adapter.kind != config::adapter_kind::mock)
    return "model.adapter.kind \"" + std::string(config::adapter_kind_name(cfg.model.adapter.kind)) +
           "\" is not available in this build of Ray yet (only \"mock\"); use --profile tiny or kind "
           "\"mock\"";
  if (!is_loopback_host(cfg.server.host) && !cfg.auth.enabled && !cfg.server.allow_unauthenticated_public)
    return "server.host " + cfg.server.host +
           " is not a loopback address and auth is disabled: anyone who can reach it could use the model. "
           "Enable "
           "auth, bind 127.0.0.1 behind a reverse proxy, or set server.allowUnauthenticatedPublic "
           "(--allow-unauthenticated-public) to accept the risk";
  return std::nullopt;
}

http::limits limits_from(config::server_config const& s) {
  http::limits l;
  l.max_connections = s.max_connections;
  l.max_header_bytes = s.max_header_bytes;
  l.max_headers = s.max_headers;
  l.max_target_bytes = s.max_target_bytes;
  l.request_body_limit_bytes = s.request_body_limit_bytes;
  l.headers_timeout_ms = s.headers_timeout_ms;
  l.body_timeout_ms = s.body_timeout_ms;
  l.keep_alive_timeout_ms = s.keep_alive_timeout_ms;
  l.write_timeout_ms = std::max(s.body_timeout_ms, 1000u);
  l.max_requests_per_connection = s.max_requests_per_connection;
  return l;
}

boost::asio::awaitable<void> shutdown_sequence(app& a, http::server& srv, boost::asio::io_context& ioc) {
  auto const grace = std::chrono::milliseconds(a.cfg().server.shutdown_grace_ms);
  auto const deadline = std::chrono::steady_clock::now() + grace;
  a.log.info("shutdown started", {{"inFlight", srv.stats().active_requests.load()},
                                  {"graceMs", a.cfg().server.shutdown_grace_ms}});
  srv.begin_drain();
  boost::asio::steady_timer t(ioc);
  while (srv.stats().active_requests.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    t.expires_after(std::chrono::milliseconds(10));
    co_await t.async_wait(use_tuple);
  }
  auto left = srv.stats().active_requests.load();
  srv.stop();
  a.backend.stop();
  a.log.info("shutdown complete", {{"cancelledRequests", left}});
  t.expires_after(std::chrono::milliseconds(5));
  co_await t.async_wait(use_tuple);
  ioc.stop();
}

boost::asio::awaitable<void> signal_loop(app& a, http::server& srv, boost::asio::io_context& ioc,
                                         boost::asio::signal_set& signals) {
  for (;;) {
    auto [ec, sig] = co_await signals.async_wait(use_tuple);
    if (ec) co_return;
    if (sig == SIGHUP) {
      a.log.warn("SIGHUP received: live reload is not available in this build yet; configuration unchanged");
      continue;
    }
    if (a.shutting_down.exchange(true)) {
      a.log.warn("second signal: exiting now", {{"signal", sig}});
      a.log.flush();
      std::_Exit(1);
    }
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
  if (cfg.async_queue.enabled)
    log.warn(
        "asyncQueue.enabled is set, but durable jobs are not available in this build yet: /v1/jobs answers "
        "503 async_queue_disabled");

  boost::asio::io_context ioc(static_cast<int>(cfg.server.threads));
  telemetry::registry metrics;
  auto be = cfg.model.adapter.kind == config::adapter_kind::mock
                ? backend::make_mock(ioc.get_executor(), cfg)
                : backend::make_remote(ioc.get_executor(), cfg, log);
  auto sampler_opts = system::sampler::options_for(cfg.graceful_degradation);
  sampler_opts.root = opts.system_root;
  system::sampler sampler(sampler_opts);
  runtime::runtime rt(ioc.get_executor(), cfg, *be, metrics, log, &sampler);
  app a{loaded, log, metrics, *be, rt};
  a.rejections = std::make_unique<telemetry::rejection_summarizer>(log);
  router r(a);
  http::server srv(ioc, r, limits_from(a.cfg().server));
  a.server = &srv;

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
  be->start();
  std::string host = ep->address().to_string();
  std::string url_host = ep->address().is_v6() ? "[" + host + "]" : host;
  log.info("gateway listening", {{"host", host},
                                 {"port", ep->port()},
                                 {"url", "http://" + url_host + ":" + std::to_string(ep->port())},
                                 {"profile", a.cfg().profile},
                                 {"model", a.cfg().model.id},
                                 {"backend", config::adapter_kind_name(a.cfg().model.adapter.kind)},
                                 {"providerStatus", backend::state_name(be->current_state())},
                                 {"largestPromptTokens", rt.context_window() - 1},
                                 {"threads", a.cfg().server.threads}});

  boost::asio::co_spawn(ioc, signal_loop(a, srv, ioc, signals), boost::asio::detached);
  boost::asio::co_spawn(ioc, summary_ticker(a, ioc), boost::asio::detached);

  std::vector<std::thread> extra;
  for (std::uint32_t i = 1; i < a.cfg().server.threads; ++i)
    extra.emplace_back([&ioc] { ioc.run(); });
  ioc.run();
  for (auto& t : extra)
    t.join();
  log.flush();
  return 0;
}

}  // namespace ray::api
