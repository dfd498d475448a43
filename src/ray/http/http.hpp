// ray::http — the HTTP/1.1 server: accept loop, per-connection sessions on coroutines, every framing limit of
// http-api.md §7 (header bytes/count, target length, Host, content type/encoding, declared length, Expect,
// read timeouts, keep-alive idle, requests per connection, connection cap) and graceful shutdown.
//
// The server knows nothing about routes or error bodies: a `handler` (api::router) checks routes after the
// header section is read, renders every error (the one error→HTTP mapping lives in api), and handles
// requests. Threading: the server runs on the io_context it is given, on one thread (config validation
// refuses server.threads > 1).
#pragma once

#include "ray/core/core.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ray::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;

using request = beast::http::request<beast::http::string_body>;
using response = beast::http::response<beast::http::string_body>;
using request_header = beast::http::request_header<>;
using status = beast::http::status;
using field = beast::http::field;
using verb = beast::http::verb;

// Every bound is named after its config key (server.*). Times in milliseconds.
//
// Slow clients (slowloris): under connection pressure (open connections >= 90 % of max_connections) a
// connection still waiting for its header section gets headers_timeout_under_pressure_ms instead of
// headers_timeout_ms; at max_connections a new connection sheds an idle keep-alive connection, else the one
// longest in its header phase, and only when neither exists is it refused (503 overloaded); a direct client
// address may hold max_connections_per_client connections (429 beyond, trusted proxies exempt); a request
// body slower than min_body_bytes_per_second after its first second is answered 408. The read buffer of a
// connection is bounded by max_header_bytes + request_body_limit_bytes + 8 KiB.
struct limits {
  std::uint32_t max_connections{256};
  std::uint32_t max_connections_per_client{64};
  std::uint32_t max_header_bytes{12'288};
  std::uint32_t max_headers{64};
  std::uint32_t max_target_bytes{8192};
  std::uint32_t request_body_limit_bytes{32'000};
  std::uint32_t headers_timeout_ms{15'000};
  std::uint32_t headers_timeout_under_pressure_ms{2'000};
  std::uint32_t body_timeout_ms{30'000};
  std::uint32_t min_body_bytes_per_second{1024};  // 0: off
  std::uint32_t keep_alive_timeout_ms{75'000};
  std::uint32_t write_timeout_ms{30'000};  // a client that does not read its response is dropped
  std::uint32_t max_requests_per_connection{1000};
  // Threads running the io_context: with one, connections share its executor (no strand to lock and copy).
  std::uint32_t threads{1};
};

class connection;

// One request/response exchange on a connection, handed to handler::handle.
class exchange {
 public:
  exchange(connection& conn, request& req, std::string request_id, std::uint32_t index_on_connection);

  request& req() noexcept { return req_; }
  request const& req() const noexcept { return req_; }
  std::string_view path() const noexcept { return path_; }    // origin-form path, no query
  std::string_view query() const noexcept { return query_; }  // after '?', may be empty
  std::string const& request_id() const noexcept { return request_id_; }
  tcp::endpoint peer() const noexcept;
  std::chrono::steady_clock::time_point received_at() const noexcept { return received_at_; }
  bool is_head() const noexcept { return req_.method() == verb::head; }
  // 1 for the first request on its connection.
  std::uint32_t index_on_connection() const noexcept { return index_; }

  // Writes the response: adds x-request-id, content-length, `connection: close` when the connection will
  // close. A HEAD request gets the headers without the body. At most one response per exchange.
  asio::awaitable<void> respond(response res);
  bool responded() const noexcept { return responded_; }

  // Streaming (chunked) response: begin_stream() sends the status line and headers (`transfer-encoding:
  // chunked`, x-request-id, the handler's extra headers); write_chunk() sends one chunk; end_stream() the
  // last, empty one. Each returns false when the client is gone or a write timed out (then stop writing).
  // Counts as the exchange's one response.
  asio::awaitable<bool> begin_stream(response head);
  asio::awaitable<bool> write_chunk(std::string_view data);
  asio::awaitable<bool> end_stream();

  // Completes when the client has gone away (EOF or error) while the request is being handled; buffered bytes
  // of a pipelined next request do not count. Cancellable through the awaiting coroutine's cancellation slot.
  asio::awaitable<void> client_gone();

  // Forces `connection: close` on the response (e.g. during shutdown).
  void close_after_response() noexcept { close_ = true; }
  bool will_close() const noexcept { return close_; }

 private:
  friend class connection;
  connection& conn_;
  request& req_;
  std::string request_id_;
  std::string_view path_;
  std::string_view query_;
  std::chrono::steady_clock::time_point received_at_;
  std::uint32_t index_;
  bool responded_{false};
  bool close_{false};
};

// Headers a handler attaches to every response of the current request (e.g. x-ratelimit-*).
using header_list = std::vector<std::pair<std::string, std::string>>;

// Implemented by the API layer.
class handler {
 public:
  virtual ~handler() = default;

  // Called once the header section passed the framing checks and before any body byte is read or 100 Continue
  // is sent: route and method checks (404/405), auth, rate limiting. Returning an error answers it at once
  // (the body stays unread, so the connection closes). Headers added to `extra` go on every response to this
  // request.
  virtual std::optional<ray::error> check_headers(request_header const& header, std::string_view path,
                                                  tcp::endpoint const& peer, header_list& extra) = 0;

  // Whether this route takes a request body (POST routes): content type/encoding/length checks apply.
  virtual bool accepts_body(request_header const& header, std::string_view path) = 0;

  // Renders an error as a response (status, body, retry headers). `header` is null when no header was parsed;
  // `started` is when the request's first byte was awaited (for the duration histogram).
  virtual response error_response(ray::error const& err, request_header const* header, std::string_view path,
                                  std::chrono::steady_clock::time_point started) = 0;

  // Handles a complete request. Must call ex.respond() exactly once unless it throws.
  virtual asio::awaitable<void> handle(exchange& ex) = 0;

  // Whom a new connection from `peer` counts against for server.maxConnectionsPerClient: a key (normally
  // the address), or nullopt for a peer that is exempt (a trusted proxy carries many clients).
  virtual std::optional<std::string> connection_owner(asio::ip::address const& peer) {
    return peer.to_string();
  }
};

struct server_stats {
  std::atomic<std::uint32_t> connections{0};
  std::atomic<std::uint32_t> active_requests{0};
  std::atomic<std::uint64_t> rejected_connections{0};  // at max_connections with nothing to shed
  std::atomic<std::uint64_t> rejected_per_client{0};   // over max_connections_per_client
  std::atomic<std::uint64_t> shed_connections{0};      // closed to make room for a new connection
  std::atomic<std::uint64_t> slow_header_timeouts{0};  // 408: header section too slow
  std::atomic<std::uint64_t> slow_body_timeouts{0};    // 408: body too slow or past its deadline
};

class server {
 public:
  server(asio::io_context& ioc, handler& h, limits lim);
  ~server();
  server(server const&) = delete;
  server& operator=(server const&) = delete;

  // Binds and listens. Port 0 picks a free port; bound_endpoint() tells which.
  result<tcp::endpoint> listen(std::string const& host, std::uint16_t port);
  tcp::endpoint bound_endpoint() const;

  // Starts accepting (spawns the accept loop on the io_context).
  void start();

  // Draining: every response gets `connection: close`, idle keep-alive connections are closed, the listener
  // keeps accepting (new work is answered by the handler with 503 shutting_down).
  void begin_drain();
  // Closes the listener and every connection at once.
  void stop();

  server_stats const& stats() const noexcept { return stats_; }
  // Open connections >= 90 % of max_connections (http-api.md §7: `gateway_http_pressure`).
  bool under_pressure() const noexcept;
  limits const& current_limits() const noexcept { return limits_; }
  // Replaces the limits for new requests (SIGHUP reload).
  void set_limits(limits lim);

 private:
  friend class connection;
  asio::awaitable<void> accept_loop();
  struct impl;
  std::unique_ptr<impl> impl_;
  limits limits_;
  server_stats stats_;
};

// Host header syntax (http-api.md §7): DNS name (underscores allowed), IPv4, or bracketed IPv6, with an
// optional port 1–65535. Exposed for unit tests.
bool is_valid_host(std::string_view host) noexcept;

}  // namespace ray::http
