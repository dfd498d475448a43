// `ray deploy render`: the proxy files — the Caddyfile (one upstream, TLS for the domain), its multi-upstream
// variant and haproxy.cfg for several nodes (spec/scale-out.md "Routing").
#include "ray/ops/ops.hpp"

#include <algorithm>
#include <charconv>

namespace ray::ops {

namespace {

// Caddy's upstream keep-alive must end before Ray's (server.keepAliveTimeoutMs), or Caddy may send a request
// on a connection Ray is closing at that moment: 3/4 of Ray's, in whole seconds, at least 1 s.
std::string caddy_keepalive(std::uint32_t ray_keep_alive_ms) {
  std::uint32_t const s = std::max<std::uint32_t>(1, ray_keep_alive_ms * 3 / 4 / 1000);
  return std::to_string(s) + "s";
}

std::string site_address(std::string const& domain) {
  // No domain: plain HTTP on port 80 (Caddy asks for no certificate).
  return domain.empty() ? std::string(":80") : domain;
}

std::string seconds(std::uint64_t ms) {
  return std::to_string((ms + 999) / 1000) + "s";
}

}  // namespace

result<std::vector<std::string>> parse_nodes(std::string_view list) {
  std::vector<std::string> out;
  while (!list.empty()) {
    auto comma = list.find(',');
    auto item = trim(list.substr(0, comma));
    list.remove_prefix(comma == std::string_view::npos ? list.size() : comma + 1);
    if (item.empty()) continue;
    auto colon = item.rfind(':');
    auto bad = [&](std::string why) {
      return error{errc::invalid_request, "--nodes: \"" + std::string(item) + "\" " + why};
    };
    if (colon == std::string_view::npos || colon == 0) return bad("is not HOST:PORT");
    auto host = item.substr(0, colon);
    auto port_text = item.substr(colon + 1);
    unsigned port = 0;
    auto [p, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc{} || p != port_text.data() + port_text.size() || port == 0 || port > 65535)
      return bad("has no valid port (1–65535)");
    bool const bracketed = host.front() == '[' && host.back() == ']';
    for (char c : bracketed ? host.substr(1, host.size() - 2) : host) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                c == '-' || (bracketed && c == ':');
      if (!ok) return bad("has a host that is not a name or an address");
    }
    if (std::find(out.begin(), out.end(), std::string(item)) != out.end()) return bad("is listed twice");
    out.emplace_back(item);
  }
  if (out.empty()) return error{errc::invalid_request, "--nodes: no HOST:PORT given"};
  return out;
}

std::string caddyfile(std::string const& domain, std::string const& upstream,
                      std::uint32_t ray_keep_alive_ms) {
  // No active health check with one upstream: Ray's own 503s (with Retry-After) must reach the clients rather
  // than Caddy's "no upstreams available".
  return "# Caddy in front of one Ray (rendered by `ray deploy render`). Caddy obtains and renews the TLS\n"
         "# certificate for the site by itself: ports 80 and 443 reachable, DNS pointing at this box.\n" +
         site_address(domain) +
         " {\n"
         "\treverse_proxy " +
         upstream +
         " {\n"
         "\t\t# SSE: pass every event on at once, never buffer the response\n"
         "\t\tflush_interval -1\n"
         "\t\ttransport http {\n"
         "\t\t\t# shorter than Ray's server.keepAliveTimeoutMs, so Caddy never reuses a closing connection\n"
         "\t\t\tkeepalive " +
         caddy_keepalive(ray_keep_alive_ms) +
         "\n"
         "\t\t}\n"
         "\t}\n"
         "}\n";
}

std::string caddyfile_multi(std::string const& domain, std::vector<std::string> const& nodes,
                            std::uint32_t ray_keep_alive_ms) {
  std::string ups;
  for (auto const& n : nodes)
    ups += " " + n;
  return "# Caddy in front of several Ray nodes (rendered by `ray deploy render --nodes`): the fewest open\n"
         "# requests wins, and a node whose /readyz is not 200 (draining, backend down) gets nothing new.\n" +
         site_address(domain) +
         " {\n"
         "\treverse_proxy" +
         ups +
         " {\n"
         "\t\tlb_policy least_conn\n"
         "\t\t# a draining node answers /readyz 503 at once; checked every second it is out within 2 s\n"
         "\t\thealth_uri /readyz\n"
         "\t\thealth_interval 1s\n"
         "\t\thealth_timeout 1s\n"
         "\t\thealth_status 200\n"
         "\t\t# a connection refused (node restarting) tries another node for up to 5 s\n"
         "\t\tlb_try_duration 5s\n"
         "\t\tflush_interval -1\n"
         "\t\ttransport http {\n"
         "\t\t\tkeepalive " +
         caddy_keepalive(ray_keep_alive_ms) +
         "\n"
         "\t\t}\n"
         "\t}\n"
         "}\n";
}

std::string haproxy_cfg(std::vector<std::string> const& nodes, std::string const& bind,
                        haproxy_timing const& t) {
  // The longest silence of a healthy exchange: a non-streamed answer takes up to the request deadline; a
  // stream sends a `: ping` every sseKeepAliveMs and a token within idleTokenTimeoutMs. Twice the longest of
  // them, at least 60 s, so HAProxy never cuts a live stream.
  std::uint64_t const quiet = std::max<std::uint64_t>(
      {t.request_timeout_ms, t.sse_keep_alive_ms, std::min<std::uint64_t>(t.idle_token_timeout_ms, 300'000)});
  std::uint64_t const server_ms = std::max<std::uint64_t>(60'000, 2 * quiet);
  std::string cfg =
      "# HAProxy in front of several Ray nodes (rendered by `ray deploy render --nodes`; "
      "spec/scale-out.md).\n"
      "# Check: haproxy -c -f haproxy.cfg. TLS: terminate it here (bind :443 ssl crt …) or put Caddy in "
      "front.\n"
      "global\n"
      "\tmaxconn 4096\n"
      "\tlog stdout format raw local0 info\n"
      "\n"
      "defaults\n"
      "\tmode http\n"
      "\tlog global\n"
      "\toption httplog\n"
      "\ttimeout connect 2s\n"
      "\ttimeout http-request 15s\n"
      "\ttimeout http-keep-alive 10s\n"
      "\t# SSE streams: a `: ping` every server.sseKeepAliveMs keeps them inside these; never shorter than "
      "a\n"
      "\t# request's own deadline\n"
      "\ttimeout client " +
      seconds(server_ms) +
      "\n"
      "\ttimeout server " +
      seconds(server_ms) +
      "\n"
      "\ttimeout tunnel 1h\n"
      "\t# a node that refused the connection (restarting) is retried on another one\n"
      "\tretries 3\n"
      "\toption redispatch\n"
      "\tretry-on conn-failure empty-response\n"
      "\n"
      "frontend ray_front\n"
      "\tbind " +
      bind +
      "\n"
      "\t# responses are forwarded as they arrive (HAProxy buffers no response body); keep request bodies\n"
      "\t# unbuffered too, Ray reads them under its own deadlines\n"
      "\toption http-no-delay\n"
      "\tdefault_backend ray\n"
      "\n"
      "backend ray\n"
      "\tbalance leastconn\n"
      "\t# /readyz is 503 while a node drains (SIGTERM, server.drainMs) or its backend is not ready\n"
      "\toption httpchk GET /readyz\n"
      "\thttp-check expect status 200\n"
      "\t# checked every 500 ms, out after 2 failures: a draining node gets nothing new within ~1 s (< 2 s)\n"
      "\tdefault-server check inter 500ms fall 2 rise 2\n";
  for (std::size_t i = 0; i < nodes.size(); ++i)
    cfg += "\tserver n" + std::to_string(i + 1) + " " + nodes[i] + "\n";
  if (t.drain_ms < 2000)
    cfg +=
        "# NOTE: server.drainMs is " + std::to_string(t.drain_ms) +
        " on the nodes: set it to at least 2000 so a draining node keeps serving until HAProxy took it out\n";
  return cfg;
}

}  // namespace ray::ops
