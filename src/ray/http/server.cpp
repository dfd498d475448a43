#include "ray/http/http.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <unordered_map>

namespace ray::http {

namespace {
using steady = std::chrono::steady_clock;
constexpr auto no_deadline = steady::time_point::max();
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

std::chrono::milliseconds watchdog_tick(limits const& lim) {
  std::uint32_t shortest = std::min({lim.headers_timeout_ms, lim.headers_timeout_under_pressure_ms,
                                     lim.body_timeout_ms, lim.keep_alive_timeout_ms, lim.write_timeout_ms});
  return std::chrono::milliseconds(std::clamp<std::uint32_t>(shortest / 4, 5, 1000));
}
// While a body is read and a minimum rate applies, the watchdog looks this often; the rate is judged from the
// body phase's first second on.
constexpr auto body_rate_tick = std::chrono::milliseconds(250);
constexpr auto body_rate_grace = std::chrono::seconds(1);
// A connection this young is never shed for being in its header phase: under a burst of accepts its session
// may not have read the request that is already waiting in its socket (found by the slowloris soak: a client
// that sent its whole header section at once was shed before Ray looked at it).
constexpr auto shed_min_header_age = std::chrono::milliseconds(20);

// Writes a small, complete response without waiting: a socket's send buffer takes it at once (whatever does
// not fit is dropped — never wait on a client that is being turned away). The caller closes the socket.
void write_now(tcp::socket& sock, response& res) {
  res.keep_alive(false);
  res.prepare_payload();
  boost::system::error_code ec;
  sock.non_blocking(true, ec);  // no effect on the socket's pending asynchronous operations
  beast::http::response_serializer<beast::http::string_body> sr{res};
  beast::http::write(sock, sr, ec);
}

bool is_valid_port(std::string_view p) noexcept {
  if (p.empty() || p.size() > 5) return false;
  unsigned v = 0;
  for (char c : p) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  return v >= 1 && v <= 65535;
}

bool is_valid_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > 253) return false;
  if (name.back() == '.') name.remove_suffix(1);
  std::size_t label = 0;
  for (char c : name) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!ok || ++label > 63) return false;
  }
  return label > 0;
}

bool is_json_media_type(std::string_view ct) noexcept {
  auto semi = ct.find(';');
  std::string_view mt = trim(ct.substr(0, semi));
  auto slash = mt.find('/');
  if (slash == std::string_view::npos) return false;
  std::string_view type = mt.substr(0, slash);
  std::string_view sub = mt.substr(slash + 1);
  if (!iequals(type, "application")) return false;
  if (iequals(sub, "json")) return true;
  return sub.size() > 5 && iequals(sub.substr(sub.size() - 5), "+json");
}

}  // namespace

bool is_valid_host(std::string_view host) noexcept {
  if (host.empty()) return false;
  if (host.front() == '[') {
    auto close = host.find(']');
    if (close == std::string_view::npos || close < 3) return false;
    std::string inner(host.substr(1, close - 1));
    boost::system::error_code ec;
    auto addr = asio::ip::make_address_v6(inner, ec);
    if (ec) return false;
    (void)addr;
    std::string_view rest = host.substr(close + 1);
    if (rest.empty()) return true;
    return rest.front() == ':' && is_valid_port(rest.substr(1));
  }
  auto colon = host.rfind(':');
  if (colon != std::string_view::npos) {
    if (!is_valid_port(host.substr(colon + 1))) return false;
    host = host.substr(0, colon);
  }
  return is_valid_name(host);
}

// ---------------------------------------------------------------------------------------------------------------
// connection: one socket, its read buffer, and a deadline enforced by a watchdog coroutine that wakes every
// `tick` and cancels the socket's pending operation once the deadline has passed (no timer work per request).

// Whether a header section (request line included) continues a field line on the next one: a line after the
// first that begins with SP or HTAB.
static bool has_obs_fold(std::string_view head) noexcept {
  for (std::size_t i = head.find('\n'); i != std::string_view::npos && i + 1 < head.size();
       i = head.find('\n', i + 1)) {
    char const c = head[i + 1];
    if (c == ' ' || c == '\t') return true;
  }
  return false;
}

class connection {
 public:
  // Where a session is, for the watchdog's slow-client rules and for choosing whom to shed.
  enum class phase : std::uint8_t {
    header,  // awaiting (the rest of) a request's header section
    body,    // reading its body
    busy,    // handling it, answering, or closing
    idle,    // keep-alive, between requests
  };

  connection(server& srv, tcp::socket sock, std::string owner)
      : srv_(srv),
        socket_(std::move(sock)),
        timer_(socket_.get_executor()),
        tick_(watchdog_tick(srv.limits_)),
        owner_(std::move(owner)) {}

  asio::awaitable<void> run(std::shared_ptr<connection> self);
  asio::awaitable<void> watchdog(std::shared_ptr<connection> self);

  void set_deadline(std::uint32_t ms) noexcept {
    timed_out_ = false;
    deadline_ = steady::now() + std::chrono::milliseconds(ms);
  }
  void enter(phase p) noexcept {
    phase_ = p;
    phase_since_ = steady::now();
  }
  // Whether the watchdog must end the current operation now: its deadline passed, or a slow-client rule
  // (a header section slower than the pressure deadline, a body slower than the minimum rate) applies.
  bool expired(steady::time_point now) noexcept;
  // Closes this connection to make room for a new one; a client still sending its header section is told
  // why (503 with Retry-After), an idle keep-alive one is closed as HTTP allows at any time.
  void shed();
  void clear_deadline() noexcept { deadline_ = no_deadline; }

  // Writes a complete response. Returns false when the connection broke or the write timed out.
  asio::awaitable<bool> write_response(response& res, bool head_only, bool close,
                                       std::string const& request_id);

  void close() noexcept {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    timer_.cancel();
  }
  // Called (on this connection's strand) when the server drains or stops.
  void on_drain() noexcept {
    if (idle_) {
      boost::system::error_code ec;
      socket_.cancel(ec);
    }
  }

  asio::awaitable<void> client_gone();
  asio::awaitable<void> client_closed_or_half_closed();
  asio::awaitable<bool> write_raw(std::array<asio::const_buffer, 3> buffers);
  asio::awaitable<bool> write_head(response& head);
  tcp::endpoint peer() const noexcept { return peer_; }
  bool draining() const noexcept;

 private:
  friend class exchange;
  friend class server;
  friend struct server::impl;
  asio::awaitable<bool> answer_error(ray::error const& err, request_header const* header,
                                     std::string_view path, std::string const& request_id);

  server& srv_;
  tcp::socket socket_;
  asio::steady_timer timer_;
  std::chrono::milliseconds tick_;
  tcp::endpoint peer_;
  beast::flat_buffer buffer_;
  steady::time_point deadline_{no_deadline};
  bool timed_out_{false};
  bool closed_{false};
  bool idle_{false};
  header_list extra_;  // headers the handler attached to this request's responses
  steady::time_point request_started_{};
  // Per request: HTTP/1.1 or later (an interim 1xx may be sent), and whether a response head went out.
  bool interim_ok_{false};
  bool head_sent_{false};
  phase phase_{phase::header};  // a new connection awaits its first header section
  steady::time_point phase_since_{steady::now()};
  std::uint64_t body_bytes_{0};   // read so far in the body phase
  bool pressure_expired_{false};  // the header deadline that ended it was the pressure one
  bool slow_body_{false};         // the body fell below server.minBodyBytesPerSecond
  std::string owner_;             // server.maxConnectionsPerClient key; "" = exempt
};

struct server::impl {
  asio::io_context& ioc;
  handler& h;
  tcp::acceptor acceptor;
  std::atomic<bool> draining{false};
  std::atomic<bool> stopped{false};
  std::mutex mu;  // guards `live` and `per_client` (touched on connection start/end, drain/stop, shedding)
  std::unordered_map<connection*, std::weak_ptr<connection>> live;
  std::unordered_map<std::string, std::uint32_t> per_client;  // open connections by owner (none exempt)

  impl(asio::io_context& io, handler& hh) : ioc(io), h(hh), acceptor(io) {}

  // Whom to shed at the connection cap: the oldest idle keep-alive connection, else the one longest (and at
  // least shed_min_header_age) in its header phase; null when every connection is reading a body, being
  // served, or too new to judge.
  std::shared_ptr<connection> shed_candidate() {
    std::shared_ptr<connection> best;
    auto const young = steady::now() - shed_min_header_age;
    std::lock_guard lock(mu);
    for (auto& [_, w] : live) {
      auto c = w.lock();
      if (!c || c->closed_) continue;
      auto const p = c->phase_;
      if (p != connection::phase::idle && p != connection::phase::header) continue;
      if (p == connection::phase::header && c->phase_since_ > young) continue;
      if (!best) {
        best = std::move(c);
        continue;
      }
      bool const idle = p == connection::phase::idle;
      bool const best_idle = best->phase_ == connection::phase::idle;
      if (idle != best_idle ? idle : c->phase_since_ < best->phase_since_) best = std::move(c);
    }
    return best;
  }

  void for_each_live(auto fn) {
    std::vector<std::shared_ptr<connection>> conns;
    {
      std::lock_guard lock(mu);
      for (auto& [_, w] : live)
        if (auto c = w.lock()) conns.push_back(std::move(c));
    }
    for (auto& c : conns)
      fn(c);
  }
};

bool connection::draining() const noexcept {
  return srv_.impl_->draining;
}

bool connection::expired(steady::time_point now) noexcept {
  if (now >= deadline_) return true;
  limits const& lim = srv_.limits_;
  if (phase_ == phase::header && srv_.under_pressure() &&
      now - phase_since_ >= std::chrono::milliseconds(lim.headers_timeout_under_pressure_ms)) {
    pressure_expired_ = true;
    return true;
  }
  if (phase_ == phase::body && lim.min_body_bytes_per_second > 0) {
    auto const elapsed = now - phase_since_;
    if (elapsed >= body_rate_grace &&
        static_cast<double>(body_bytes_) <
            lim.min_body_bytes_per_second * std::chrono::duration<double>(elapsed).count()) {
      slow_body_ = true;
      return true;
    }
  }
  return false;
}

asio::awaitable<void> connection::watchdog(std::shared_ptr<connection> self) {
  (void)self;  // keeps the connection alive while the watchdog runs
  while (!closed_) {
    bool const rate_watch = phase_ == phase::body && srv_.limits_.min_body_bytes_per_second > 0;
    timer_.expires_after(rate_watch ? std::min<std::chrono::milliseconds>(tick_, body_rate_tick) : tick_);
    co_await timer_.async_wait(use_tuple);
    if (closed_) break;
    if (expired(steady::now())) {
      timed_out_ = true;
      deadline_ = no_deadline;
      phase_ = phase::busy;  // answering the timeout: no slow-client rule applies to that
      boost::system::error_code ec;
      socket_.cancel(ec);
    }
  }
}

void connection::shed() {
  if (closed_) return;
  if (phase_ == phase::header) {
    response res = srv_.impl_->h.error_response(
        {errc::overloaded, "the server is at server.maxConnections (" +
                               std::to_string(srv_.limits_.max_connections) +
                               ") and this connection had not sent a complete request header section; "
                               "retry shortly"},
        nullptr, {}, request_started_);
    res.set("x-request-id", new_request_id());
    write_now(socket_, res);
  }
  close();
}

asio::awaitable<bool> connection::write_response(response& res, bool head_only, bool close,
                                                 std::string const& request_id) {
  res.set("x-request-id", request_id);
  for (auto const& [name, value] : extra_)
    res.set(name, value);
  res.keep_alive(!close);
  res.prepare_payload();
  set_deadline(srv_.limits_.write_timeout_ms);
  boost::system::error_code ec;
  if (head_only) {
    beast::http::response_serializer<beast::http::string_body> sr{res};
    std::tie(ec, std::ignore) = co_await beast::http::async_write_header(socket_, sr, use_tuple);
  } else {
    std::tie(ec, std::ignore) = co_await beast::http::async_write(socket_, res, use_tuple);
  }
  clear_deadline();
  co_return !ec;
}

asio::awaitable<bool> connection::write_raw(std::array<asio::const_buffer, 3> buffers) {
  set_deadline(srv_.limits_.write_timeout_ms);
  auto [ec, n] = co_await asio::async_write(socket_, buffers, use_tuple);
  (void)n;
  clear_deadline();
  co_return !ec;
}

asio::awaitable<bool> connection::write_head(response& head) {
  beast::http::response_serializer<beast::http::string_body> sr{head};
  set_deadline(srv_.limits_.write_timeout_ms);
  head_sent_ = true;
  auto [ec, n] = co_await beast::http::async_write_header(socket_, sr, use_tuple);
  (void)n;
  clear_deadline();
  co_return !ec;
}

asio::awaitable<bool> connection::answer_error(ray::error const& err, request_header const* header,
                                               std::string_view path, std::string const& request_id) {
  response res = srv_.impl_->h.error_response(err, header, path, request_started_);
  bool head = header != nullptr && header->method() == verb::head;
  co_return co_await write_response(res, head, true, request_id);
}

asio::awaitable<void> connection::client_gone() {
  for (;;) {
    auto [ec] = co_await socket_.async_wait(tcp::socket::wait_read, use_tuple);
    if (ec == asio::error::operation_aborted && !closed_) {
      // Cancelled by the awaiting operation (or a drain): report nothing; the caller's cancellation wins.
      co_return;
    }
    if (ec || closed_) co_return;
    char byte;
    ssize_t r = ::recv(socket_.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r == 0) {
      co_await client_closed_or_half_closed();
      co_return;
    }
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) co_return;
    if (r > 0) {
      // A pipelined request is waiting: EOF cannot be seen behind it, so stop watching until cancelled.
      asio::steady_timer forever(socket_.get_executor(), steady::time_point::max());
      co_await forever.async_wait(use_tuple);
      co_return;
    }
  }
}

// EOF from the client: it closed — or only half-closed (shutdown(SHUT_WR) after its request) and still reads.
// TCP cannot tell the two apart until something is sent: a client that closed answers it with a reset, one
// that half-closed reads it. So: before the response head, an interim `100 Continue` (every HTTP/1.1 client
// skips 1xx responses) is the probe; after it, the stream's own next write is. Then this waits for the reset
// (the socket's error event), and returns — "gone" — only when it comes. An HTTP/1.0 client cannot be sent a
// 1xx: its EOF before the head means gone.
asio::awaitable<void> connection::client_closed_or_half_closed() {
  if (!head_sent_) {
    if (!interim_ok_) co_return;
    static constexpr std::string_view probe = "HTTP/1.1 100 Continue\r\n\r\n";
    set_deadline(srv_.limits_.write_timeout_ms);
    auto [wec, wn] = co_await asio::async_write(socket_, asio::buffer(probe.data(), probe.size()), use_tuple);
    (void)wn;
    clear_deadline();
    if (wec) co_return;
  }
  // Completes on the reset (gone), or when the caller cancels it because the answer is ready.
  auto [ec] = co_await socket_.async_wait(tcp::socket::wait_error, use_tuple);
  (void)ec;
}

asio::awaitable<void> connection::run(std::shared_ptr<connection> self) {
  (void)self;  // keeps the connection alive while the session runs
  auto& impl = *srv_.impl_;
  // However the session ends (an exception included), the connection is closed and no longer counted:
  // a leaked count would refuse every new connection once it reached server.maxConnections.
  struct accounting {
    connection& c;
    ~accounting() {
      c.close();
      {
        auto& im = *c.srv_.impl_;
        std::lock_guard lock(im.mu);
        im.live.erase(&c);
        if (!c.owner_.empty()) {
          auto it = im.per_client.find(c.owner_);
          if (it != im.per_client.end() && --it->second == 0) im.per_client.erase(it);
        }
      }
      c.srv_.stats_.connections.fetch_sub(1, std::memory_order_relaxed);
    }
  } counted{*this};
  boost::system::error_code pec;
  peer_ = socket_.remote_endpoint(pec);
  handler& h = impl.h;

  for (std::uint32_t n = 1;; ++n) {
    limits const lim = srv_.limits_;
    buffer_.max_size(static_cast<std::size_t>(lim.max_header_bytes) + lim.request_body_limit_bytes + 8192);

    if (n > 1 && buffer_.size() == 0) {
      // Keep-alive idle: wait for the next request's first byte, or close quietly after the idle timeout.
      if (impl.draining) break;
      idle_ = true;
      enter(phase::idle);
      set_deadline(lim.keep_alive_timeout_ms);
      auto [ec] = co_await socket_.async_wait(tcp::socket::wait_read, use_tuple);
      idle_ = false;
      if (ec || closed_ || impl.draining) break;
    }

    if (n > 1) enter(phase::header);  // the first request's header phase began when the connection opened
    pressure_expired_ = false;
    set_deadline(lim.headers_timeout_ms);
    extra_.clear();
    request_started_ = steady::now();
    // obs-fold (a field line continued on the next, RFC 9112 §5.2): Beast unfolds it, Ray refuses it — a
    // folded line may be read differently by a proxy in front, which is how requests are smuggled. The parser
    // consumes what it reads, so the header section is buffered whole first and scanned (bounded by the
    // header limit; deadlines and errors are left to the parser's read below, which then has the bytes).
    bool folded = false;
    boost::system::error_code pre_ec;
    for (;;) {
      std::string_view const data(static_cast<char const*>(buffer_.data().data()), buffer_.size());
      auto const end = std::min(data.find("\r\n\r\n"), data.find("\n\n"));
      if (end != std::string_view::npos) {
        folded = has_obs_fold(data.substr(0, end + 1));
        break;
      }
      if (data.size() > lim.max_header_bytes || closed_) break;
      auto [ec, got] = co_await socket_.async_read_some(buffer_.prepare(4096), use_tuple);
      if (ec) {
        pre_ec = ec;
        break;
      }
      buffer_.commit(got);
    }
    beast::http::request_parser<beast::http::string_body> parser;
    parser.header_limit(lim.max_header_bytes);
    parser.body_limit(boost::none);
    // A read error during the scan ends the request as the parser's read would have (the parser is not asked
    // to read again after an EOF: its read then never completed). EOF in the middle of a header section is
    // the parser's "partial message" 400.
    boost::system::error_code rec = pre_ec;
    if (pre_ec == asio::error::eof && buffer_.size() > 0) rec = beast::http::error::partial_message;
    if (!pre_ec) {
      auto [e, rn] = co_await beast::http::async_read_header(socket_, buffer_, parser, use_tuple);
      (void)rn;
      rec = e;
    }
    std::string request_id;
    if (rec) {
      if (closed_) break;
      if (timed_out_) {
        request_id = new_request_id();
        srv_.stats_.slow_header_timeouts.fetch_add(1, std::memory_order_relaxed);
        std::string why =
            pressure_expired_
                ? "the request header section did not arrive within " +
                      std::to_string(lim.headers_timeout_under_pressure_ms) +
                      " ms (server.headersTimeoutUnderPressureMs: the server is near server.maxConnections)"
                : "the request header section did not arrive within " +
                      std::to_string(lim.headers_timeout_ms) + " ms";
        co_await answer_error({errc::request_read_timeout, std::move(why)}, nullptr, {}, request_id);
        break;
      }
      if (rec == beast::http::error::end_of_stream || rec == asio::error::eof ||
          rec == asio::error::connection_reset || rec == asio::error::operation_aborted) {
        break;
      }
      request_id = new_request_id();
      if (rec == beast::http::error::header_limit || rec == beast::http::error::buffer_overflow) {
        co_await answer_error(
            {errc::request_headers_too_large,
             "the request header section exceeds " + std::to_string(lim.max_header_bytes) + " bytes"},
            nullptr, {}, request_id);
      } else {
        co_await answer_error({errc::invalid_request, "malformed HTTP request: " + rec.message()}, nullptr,
                              {}, request_id);
      }
      break;
    }

    enter(phase::busy);
    request& req = parser.get();
    if (folded) {
      request_id = new_request_id();
      co_await answer_error({errc::invalid_request,
                             "obs-fold (a header line continued on the next line) is not accepted; send each "
                             "header field on one line"},
                            &req.base(), {}, request_id);
      break;
    }
    {
      auto incoming = req["x-request-id"];
      request_id = is_valid_request_id(incoming) ? std::string(incoming) : new_request_id();
    }
    bool const body_pending = !parser.is_done();
    auto reject = [&](ray::error err, std::string_view path) -> asio::awaitable<bool> {
      // Answering before the body is read: the connection cannot be reused.
      response res = h.error_response(err, &req.base(), path, request_started_);
      bool close = body_pending || impl.draining || n >= lim.max_requests_per_connection || !req.keep_alive();
      bool ok = co_await write_response(res, req.method() == verb::head, close, request_id);
      co_return ok && !close;
    };

    // Framing checks on the header section.
    std::size_t field_count = 0;
    std::size_t host_count = 0;
    for (auto const& f : req) {
      ++field_count;
      if (f.name() == field::host) ++host_count;
    }
    if (field_count > lim.max_headers) {
      co_await answer_error({errc::request_headers_too_large,
                             "the request has " + std::to_string(field_count) +
                                 " header fields; the limit is " + std::to_string(lim.max_headers)},
                            &req.base(), {}, request_id);
      break;
    }
    std::string_view target = req.target();
    if (target.size() > lim.max_target_bytes) {
      co_await answer_error({errc::request_target_too_large,
                             "the request target is " + std::to_string(target.size()) +
                                 " bytes; the limit is " + std::to_string(lim.max_target_bytes)},
                            &req.base(), {}, request_id);
      break;
    }
    std::string_view host = req[field::host];
    if (host_count > 1 || (host_count == 0 && req.version() >= 11) ||
        (host_count == 1 && !is_valid_host(host))) {
      std::string msg = host_count == 0  ? "the Host header is required"
                        : host_count > 1 ? "send exactly one Host header"
                                         : "the Host header is not a valid host[:port]";
      if (!co_await reject({errc::invalid_request, msg}, {})) break;
      continue;
    }
    // Transfer-Encoding (RFC 9112 §6.1, §6.3): only `chunked` alone, on HTTP/1.1, without Content-Length.
    // Anything else — a list not ending in chunked, a coding Ray does not decode, chunked twice, TE on
    // HTTP/1.0, TE with Content-Length — is a 400 and the connection closes: a peer that framed the body
    // another way would find a second request inside it (request smuggling).
    if (req.find(field::transfer_encoding) != req.end()) {
      std::string codings;
      for (auto const& f : req)
        if (f.name() == field::transfer_encoding)
          codings.append(codings.empty() ? "" : ",").append(f.value());
      std::string_view why;
      if (req.version() < 11) {
        why = "Transfer-Encoding is not allowed in an HTTP/1.0 request";
      } else if (req.find(field::content_length) != req.end()) {
        why = "send either Content-Length or Transfer-Encoding, not both";
      } else if (!iequals(trim(codings), "chunked")) {
        why = "Transfer-Encoding must be exactly `chunked` (no other codings are accepted)";
      }
      if (!why.empty()) {
        co_await answer_error({errc::invalid_request, std::string(why)}, &req.base(), {}, request_id);
        break;
      }
    }
    std::string_view path_and_query = target;
    if (!target.empty() && target.front() != '/') {
      std::string_view rest;
      if (target.substr(0, 7) == "http://" || target.substr(0, 7) == "HTTP://")
        rest = target.substr(7);
      else if (target.substr(0, 8) == "https://" || target.substr(0, 8) == "HTTPS://")
        rest = target.substr(8);
      else {
        if (!co_await reject({errc::invalid_request, "the request target must be a path starting with /"},
                             {}))
          break;
        continue;
      }
      auto slash = rest.find('/');
      std::string_view authority = rest.substr(0, slash);
      if (!iequals(authority, host)) {
        if (!co_await reject(
                {errc::invalid_request, "an absolute-form target must name the same host as Host"}, {}))
          break;
        continue;
      }
      path_and_query = slash == std::string_view::npos ? std::string_view("/") : rest.substr(slash);
    }
    auto qpos = path_and_query.find('?');
    std::string_view path = path_and_query.substr(0, qpos);

    if (auto err = h.check_headers(req.base(), path, peer_, extra_)) {
      if (!co_await reject(std::move(*err), path)) break;
      continue;
    }

    bool const chunked = req.chunked();
    auto const declared = parser.content_length();
    bool const has_body = chunked || (declared && *declared > 0);
    std::string_view expect = req[field::expect];
    bool const has_expect = req.find(field::expect) != req.end();
    if (has_expect && !iequals(expect, "100-continue")) {
      if (!co_await reject({errc::unsupported_expectation, "only Expect: 100-continue is supported"}, path))
        break;
      continue;
    }
    if (has_expect && !chunked && !declared) {
      if (!co_await reject({errc::length_required, "send Content-Length with Expect: 100-continue"}, path))
        break;
      continue;
    }
    if (has_body && h.accepts_body(req.base(), path)) {
      if (!is_json_media_type(req[field::content_type])) {
        if (!co_await reject({errc::unsupported_media_type, "send content-type: application/json"}, path))
          break;
        continue;
      }
      auto enc = req.find(field::content_encoding);
      if (enc != req.end() && !iequals(trim(enc->value()), "identity")) {
        if (!co_await reject({errc::unsupported_content_encoding,
                              "send the body uncompressed (no Content-Encoding other than identity)"},
                             path))
          break;
        continue;
      }
    }
    if (declared && *declared > lim.request_body_limit_bytes) {
      auto err = ray::error{errc::body_too_large,
                            "the request body is " + std::to_string(*declared) + " bytes; the limit is " +
                                std::to_string(lim.request_body_limit_bytes) + " bytes"};
      err.details["limitBytes"] = lim.request_body_limit_bytes;
      if (!co_await reject(std::move(err), path)) break;
      continue;
    }
    if (has_expect && body_pending) {
      static constexpr std::string_view continue_line = "HTTP/1.1 100 Continue\r\n\r\n";
      set_deadline(lim.write_timeout_ms);
      auto [wec, wn] = co_await asio::async_write(socket_, asio::buffer(continue_line), use_tuple);
      (void)wn;
      if (wec) break;
    }
    if (body_pending) {
      set_deadline(lim.body_timeout_ms);
      parser.body_limit(lim.request_body_limit_bytes);
      // Read piece by piece so the watchdog can judge the body's rate (server.minBodyBytesPerSecond).
      enter(phase::body);
      body_bytes_ = 0;
      slow_body_ = false;
      boost::system::error_code bec;
      while (!parser.is_done()) {
        auto [ec, got] = co_await beast::http::async_read_some(socket_, buffer_, parser, use_tuple);
        body_bytes_ += got;
        if (ec) {
          bec = ec;
          break;
        }
      }
      enter(phase::busy);
      if (bec) {
        if (closed_) break;
        if (timed_out_) {
          srv_.stats_.slow_body_timeouts.fetch_add(1, std::memory_order_relaxed);
          std::string why =
              slow_body_
                  ? "the request body arrived slower than server.minBodyBytesPerSecond (" +
                        std::to_string(lim.min_body_bytes_per_second) + " bytes/s)"
                  : "the request body did not arrive within " + std::to_string(lim.body_timeout_ms) + " ms";
          co_await answer_error({errc::request_read_timeout, std::move(why)}, &req.base(), path, request_id);
        } else if (bec == beast::http::error::body_limit || bec == beast::http::error::buffer_overflow) {
          co_await answer_error(
              {errc::body_too_large,
               "the request body exceeds " + std::to_string(lim.request_body_limit_bytes) + " bytes"},
              &req.base(), path, request_id);
        } else if (bec != beast::http::error::end_of_stream && bec != asio::error::eof &&
                   bec != asio::error::connection_reset) {
          co_await answer_error({errc::invalid_request, "malformed request body: " + bec.message()},
                                &req.base(), path, request_id);
        }
        break;
      }
    }
    clear_deadline();

    // Split the target again on the (now stable) request object: `path` may point into the parser's header.
    std::string_view final_target = req.target();
    exchange ex(*this, req, std::move(request_id), n);
    interim_ok_ = req.version() >= 11;
    head_sent_ = false;
    if (path_and_query.data() != final_target.data()) {
      // absolute-form: keep the path/query views computed above (they point into the same header storage).
    }
    ex.path_ = path;
    ex.query_ = qpos == std::string_view::npos ? std::string_view{} : path_and_query.substr(qpos + 1);
    if (impl.draining || n >= lim.max_requests_per_connection || !req.keep_alive()) ex.close_ = true;

    srv_.stats_.active_requests.fetch_add(1, std::memory_order_relaxed);
    try {
      co_await h.handle(ex);
    } catch (...) {
      ex.close_ = true;  // the handler failed: the connection closes (an answer may be half-written)
    }
    srv_.stats_.active_requests.fetch_sub(1, std::memory_order_relaxed);
    if (!ex.responded_ || ex.close_ || closed_) break;
  }
}

// ---------------------------------------------------------------------------------------------------------------

exchange::exchange(connection& conn, request& req, std::string request_id, std::uint32_t index)
    : conn_(conn),
      req_(req),
      request_id_(std::move(request_id)),
      received_at_(std::chrono::steady_clock::now()),
      index_(index) {}

tcp::endpoint exchange::peer() const noexcept {
  return conn_.peer();
}

asio::awaitable<void> exchange::respond(response res) {
  if (responded_) co_return;
  responded_ = true;
  if (conn_.draining()) close_ = true;
  bool ok = co_await conn_.write_response(res, is_head(), close_, request_id_);
  if (!ok) close_ = true;
}

asio::awaitable<void> exchange::client_gone() {
  return conn_.client_gone();
}

asio::awaitable<bool> exchange::begin_stream(response head) {
  if (responded_) co_return false;
  responded_ = true;
  if (conn_.draining()) close_ = true;
  head.set("x-request-id", request_id_);
  for (auto const& [name, value] : conn_.extra_)
    head.set(name, value);
  head.keep_alive(!close_);
  head.chunked(true);
  head.body().clear();
  bool ok = co_await conn_.write_head(head);
  if (!ok) close_ = true;
  co_return ok;
}

asio::awaitable<bool> exchange::write_chunk(std::string_view data) {
  if (data.empty()) co_return true;
  char size_line[24];
  int len = std::snprintf(size_line, sizeof size_line, "%zx\r\n", data.size());
  bool ok = co_await conn_.write_raw({asio::buffer(size_line, static_cast<std::size_t>(len)),
                                      asio::buffer(data.data(), data.size()), asio::buffer("\r\n", 2)});
  if (!ok) close_ = true;
  co_return ok;
}

asio::awaitable<bool> exchange::end_stream() {
  bool ok =
      co_await conn_.write_raw({asio::buffer("0\r\n\r\n", 5), asio::const_buffer(), asio::const_buffer()});
  if (!ok) close_ = true;
  co_return ok;
}

// ---------------------------------------------------------------------------------------------------------------

server::server(asio::io_context& ioc, handler& h, limits lim)
    : impl_(std::make_unique<impl>(ioc, h)), limits_(lim) {}

server::~server() = default;

result<tcp::endpoint> server::listen(std::string const& host, std::uint16_t port) {
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec) return ray::error{errc::invalid_request, "server.host: '" + host + "' is not an IP address"};
  tcp::endpoint ep{addr, port};
  auto& acc = impl_->acceptor;
  acc.open(ep.protocol(), ec);
  if (!ec) acc.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acc.bind(ep, ec);
  if (!ec) acc.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    boost::system::error_code ignored;
    acc.close(ignored);
    return ray::error{errc::invalid_request,
                      "cannot listen on " + host + ":" + std::to_string(port) + ": " + ec.message()};
  }
  return acc.local_endpoint();
}

tcp::endpoint server::bound_endpoint() const {
  boost::system::error_code ec;
  return impl_->acceptor.local_endpoint(ec);
}

void server::set_limits(limits lim) {
  limits_ = lim;
}

bool server::under_pressure() const noexcept {
  return std::uint64_t{stats_.connections.load(std::memory_order_relaxed)} * 10 >=
         std::uint64_t{limits_.max_connections} * 9;
}

namespace {
// A fresh socket's send buffer takes this small response at once; never wait on a client here.
void reject_connection(tcp::socket& sock, response res) {
  res.set("x-request-id", new_request_id());
  write_now(sock, res);
  boost::system::error_code ec;
  sock.shutdown(tcp::socket::shutdown_both, ec);
  sock.close(ec);
}
}  // namespace

asio::awaitable<void> server::accept_loop() {
  server& self = *this;
  {
    auto& im = *self.impl_;
    for (;;) {
      asio::any_io_executor conn_ex = self.limits_.threads > 1
                                          ? asio::any_io_executor(asio::make_strand(im.ioc))
                                          : asio::any_io_executor(im.ioc.get_executor());
      auto [ec, sock] = co_await im.acceptor.async_accept(conn_ex, use_tuple);
      if (ec) {
        if (!im.acceptor.is_open() || im.stopped) break;
        if (ec == asio::error::operation_aborted) break;
        // Out of file descriptors or a transient error: back off briefly instead of spinning.
        asio::steady_timer t(im.ioc, std::chrono::milliseconds(20));
        co_await t.async_wait(use_tuple);
        continue;
      }
      boost::system::error_code oec;
      sock.set_option(tcp::no_delay(true), oec);
      limits const& lim = self.limits_;
      // One direct client address may not hold every connection (trusted proxies are exempt).
      std::string owner;
      {
        boost::system::error_code pec;
        auto const peer = sock.remote_endpoint(pec);
        if (!pec)
          if (auto o = im.h.connection_owner(peer.address())) owner = std::move(*o);
      }
      if (!owner.empty()) {
        std::lock_guard lock(im.mu);
        auto const it = im.per_client.find(owner);
        if (it != im.per_client.end() && it->second >= lim.max_connections_per_client) {
          self.stats_.rejected_per_client.fetch_add(1, std::memory_order_relaxed);
          ray::error err{errc::rate_limited,
                         "too many open connections from this client address "
                         "(server.maxConnectionsPerClient = " +
                             std::to_string(lim.max_connections_per_client) +
                             "); reuse a kept-alive connection or retry shortly"};
          err.retry_after_ms = 1000;
          reject_connection(sock, im.h.error_response(err, nullptr, {}, steady::now()));
          continue;
        }
      }
      if (self.stats_.connections.load(std::memory_order_relaxed) >= lim.max_connections) {
        // At the cap: make room by closing the connection that costs the others most and is worth least —
        // an idle keep-alive one, else the one longest in its header phase (a slowloris trickling bytes).
        if (auto victim = im.shed_candidate()) {
          self.stats_.shed_connections.fetch_add(1, std::memory_order_relaxed);
          victim->shed();
        } else {
          self.stats_.rejected_connections.fetch_add(1, std::memory_order_relaxed);
          reject_connection(
              sock, im.h.error_response(
                        {errc::overloaded, "too many open connections (server.maxConnections = " +
                                               std::to_string(lim.max_connections) + "); retry shortly"},
                        nullptr, {}, steady::now()));
          continue;
        }
      }
      self.stats_.connections.fetch_add(1, std::memory_order_relaxed);
      auto conn = std::make_shared<connection>(self, std::move(sock), owner);
      {
        std::lock_guard lock(im.mu);
        im.live.emplace(conn.get(), conn);
        if (!owner.empty()) ++im.per_client[owner];
      }
      auto ex = conn->socket_.get_executor();
      // Both catch nothing: run() accounts for itself in every outcome (see connection::run); an exception
      // ends that connection only.
      asio::co_spawn(ex, conn->run(conn), [](std::exception_ptr) {});
      asio::co_spawn(ex, conn->watchdog(conn), [](std::exception_ptr) {});
    }
  }
}

void server::start() {
  asio::co_spawn(impl_->ioc, accept_loop(), asio::detached);
}

void server::begin_drain() {
  impl_->draining = true;
  impl_->for_each_live([](std::shared_ptr<connection> const& c) {
    asio::post(c->socket_.get_executor(), [c] { c->on_drain(); });
  });
}

void server::stop() {
  impl_->draining = true;
  impl_->stopped = true;
  asio::post(impl_->acceptor.get_executor(), [this] {
    boost::system::error_code ec;
    impl_->acceptor.close(ec);
  });
  impl_->for_each_live([](std::shared_ptr<connection> const& c) {
    asio::post(c->socket_.get_executor(), [c] { c->close(); });
  });
}

}  // namespace ray::http
