// ray::http client — an async HTTP/1.1 client on the caller's executor for talking to backends: pooled
// keep-alive connections, bounded bodies, per-call deadlines, an SSE reader, redirects never followed.
//
// Cancellation: every awaitable here honours the awaiting coroutine's cancellation slot; a cancelled call
// closes its connection at once (never returned to the pool), so the backend sees the client leave.
// Threading: a client and its streams belong to one executor (strand); not thread-safe.
#pragma once

#include "ray/core/core.hpp"
#include "ray/http/http.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ray::http {

// One server-sent event (the `event:` name, empty for the default, and the joined `data:` lines).
struct sse_event {
  std::string event;
  std::string data;
};

// Incremental SSE parser (text/event-stream): feed body bytes in any split; complete events come out.
// Comment lines (":" …) are skipped; CRLF, LF and CR line ends are accepted. Bounded: an event or a line
// longer than max_event_bytes is an error (the stream should be closed).
class sse_parser {
 public:
  explicit sse_parser(std::size_t max_event_bytes = 1u << 20) : max_(max_event_bytes) {}
  // Appends bytes; returns false when a bound was exceeded.
  bool feed(std::string_view bytes);
  // Pops the next complete event, if any.
  std::optional<sse_event> next();
  std::size_t comments_seen() const noexcept { return comments_; }

 private:
  void line(std::string_view l);
  std::size_t max_;
  std::string buf_;
  std::size_t scan_{0};
  sse_event cur_;
  bool has_data_{false};
  std::vector<sse_event> ready_;
  std::size_t ready_pos_{0};
  std::size_t comments_{0};
  bool skip_lf_{false};
  bool over_{false};  // an event outgrew max_event_bytes: the stream is done
};

struct client_options {
  std::uint32_t connect_timeout_ms{2000};
  std::size_t max_response_bytes{8u << 20};  // whole bodies read by send()/read_all()
  std::size_t max_event_bytes{1u << 20};     // one SSE event
  std::size_t max_idle_connections{64};      // kept per client; more concurrent calls open more
};

struct client_request {
  verb method{verb::get};
  std::string target{"/"};
  std::string body{};
  std::vector<std::pair<std::string, std::string>> headers{};  // content-type is set when body is non-empty
  std::chrono::milliseconds timeout{
      std::chrono::seconds(30)};  // the whole call (send) or until headers (open)
};

struct client_response {
  unsigned status{0};
  std::vector<std::pair<std::string, std::string>> headers{};
  std::string body{};
  std::string header(std::string_view name) const;
};

class client;

// A response whose body is read incrementally. Destroying it before the body was fully read closes the
// connection; a fully read body returns the connection to the pool.
class response_stream {
 public:
  ~response_stream();
  response_stream(response_stream const&) = delete;
  response_stream& operator=(response_stream const&) = delete;

  unsigned status() const noexcept { return status_; }
  std::string header(std::string_view name) const;
  bool is_event_stream() const;

  // The next SSE event; nullopt at the end of the body. `idle_timeout` bounds the wait for the next bytes.
  boost::asio::awaitable<result<std::optional<sse_event>>> next_event(std::chrono::milliseconds idle_timeout);
  // The rest of the body (bounded by max_response_bytes).
  boost::asio::awaitable<result<std::string>> read_all(std::chrono::milliseconds timeout);
  // Reads what is left of the body after the caller has what it needs (an SSE stream's terminator after
  // `[DONE]`) so the connection can return to the pool; at most `max_bytes` within `timeout`, else the
  // connection is closed. Never an error: a stream that cannot be finished is simply not reused.
  boost::asio::awaitable<void> finish(std::chrono::milliseconds timeout, std::size_t max_bytes = 64 * 1024);
  // Closes the connection now (the peer sees EOF/RST at once).
  void close() noexcept;

 private:
  friend class client;
  struct state;
  explicit response_stream(std::unique_ptr<state> s);
  boost::asio::awaitable<result<std::size_t>> read_some(std::chrono::milliseconds timeout);
  std::unique_ptr<state> s_;
  unsigned status_{0};
  sse_parser sse_;
};

class client {
 public:
  client(boost::asio::any_io_executor ex, std::string host, std::uint16_t port, client_options opts = {});
  ~client();
  client(client const&) = delete;
  client& operator=(client const&) = delete;

  // Sends a request and reads the whole response (bounded). 3xx responses are returned as they are.
  // Errors: provider_request_failed (connect/IO), provider_timeout (deadline), provider_invalid_response.
  //
  // The request is taken by reference and copied before the first suspension: GCC 12 mis-copies a prvalue
  // argument into a by-value coroutine parameter (a short std::string inside kept pointing at the caller's
  // buffer). Callers co_await at once, so the argument outlives that copy.
  boost::asio::awaitable<result<client_response>> send(client_request const& req);
  // Sends a request and reads the header section; the body is read through the stream.
  boost::asio::awaitable<result<std::unique_ptr<response_stream>>> open(client_request const& req);

  std::string const& host() const noexcept { return host_; }
  std::uint16_t port() const noexcept { return port_; }
  std::size_t idle_connections() const noexcept { return idle_.size(); }
  // Drops every pooled connection (e.g. after the backend restarted).
  void reset_pool() noexcept;

 private:
  friend class response_stream;
  boost::asio::awaitable<result<tcp::socket>> acquire(bool& reused,
                                                      std::chrono::steady_clock::time_point deadline);
  void release(tcp::socket sock);
  std::unique_ptr<beast::http::request<beast::http::string_body>> make_request(
      client_request const& req) const;
  boost::asio::awaitable<result<std::unique_ptr<response_stream>>> attempt(
      beast::http::request<beast::http::string_body> const& msg,
      std::chrono::steady_clock::time_point deadline, bool& retryable);

  boost::asio::any_io_executor ex_;
  std::string host_;
  std::uint16_t port_;
  client_options opts_;
  std::vector<tcp::socket> idle_;
  std::shared_ptr<bool> alive_;
};

// One connection of its own to a server (never pooled; nothing is ever sent on it) with a read pending, so
// the moment the server closes or resets it is seen: the process died, restarted, or dropped an idle
// connection (llama-server does after its keep-alive timeout). The backend adapter uses it to probe at once
// instead of at its next poll. The caller keeps the object alive across its awaits (e.g. in a shared_ptr its
// coroutine holds).
class connection_watch {
 public:
  explicit connection_watch(boost::asio::any_io_executor ex);
  connection_watch(connection_watch const&) = delete;
  connection_watch& operator=(connection_watch const&) = delete;

  // Opens a fresh connection (closing any previous one). Errors: provider_request_failed (refused, …),
  // provider_timeout. `host` is copied before the first suspension.
  boost::asio::awaitable<result<void>> connect(std::string const& host, std::uint16_t port,
                                               std::chrono::milliseconds timeout);
  // Completes when the open connection ends: EOF, reset, any byte from the server (a connection nothing was
  // asked on is out of step), or close(). The connection is closed then. At once when none is open.
  boost::asio::awaitable<void> wait_closed();
  // Closes the connection now; a pending connect() or wait_closed() completes.
  void close() noexcept;
  bool is_open() const noexcept { return socket_.is_open(); }

 private:
  tcp::socket socket_;
};

}  // namespace ray::http
