#include "ray/http/client.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>

#include <sys/socket.h>

namespace ray::http {

namespace {
using namespace boost::asio::experimental::awaitable_operators;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
using steady = std::chrono::steady_clock;

ray::error io_error(std::string const& what, boost::system::error_code ec) {
  return ray::error{errc::provider_request_failed, what + ": " + ec.message()};
}
ray::error timeout_error(std::string const& what) {
  return ray::error{errc::provider_timeout, what + " timed out"};
}

// Waits for `op` or the deadline, whichever first. The loser is cancelled.
template <class Op>
asio::awaitable<std::optional<typename Op::value_type>> with_deadline(Op op, steady::time_point deadline) {
  asio::steady_timer timer(co_await asio::this_coro::executor, deadline);
  // The timer first: an operation launched after one that completed inline would miss its cancellation.
  auto r = co_await (timer.async_wait(use_tuple) || std::move(op));
  if (r.index() == 0) co_return std::nullopt;
  co_return std::get<1>(std::move(r));
}

// Connects `sock` (closed) to host:port (an IP address, else resolved) by the deadline; closing `sock`
// meanwhile aborts it. `host` is the caller's, read only before the first suspension.
asio::awaitable<result<void>> connect_to(tcp::socket& sock, std::string const& host_ref, std::uint16_t port,
                                         steady::time_point deadline) {
  std::string const host = host_ref;
  std::string const where = host + ":" + std::to_string(port);
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  boost::system::error_code cec;
  bool timed_out = false;
  if (!ec) {
    auto r = co_await with_deadline(sock.async_connect(tcp::endpoint(addr, port), use_tuple), deadline);
    timed_out = !r.has_value();
    if (r) cec = std::get<0>(*r);
  } else {
    tcp::resolver resolver(sock.get_executor());
    auto rr = co_await with_deadline(resolver.async_resolve(host, std::to_string(port), use_tuple), deadline);
    if (!rr) co_return result<void>(timeout_error("resolving " + host));
    if (std::get<0>(*rr)) co_return result<void>(io_error("resolving " + host, std::get<0>(*rr)));
    auto results = std::get<1>(*rr);
    auto cr = co_await with_deadline(asio::async_connect(sock, results, use_tuple), deadline);
    timed_out = !cr.has_value();
    if (cr) cec = std::get<0>(*cr);
  }
  if (timed_out) co_return result<void>(timeout_error("connecting to " + where));
  if (cec) co_return result<void>(io_error("connecting to " + where, cec));
  sock.set_option(tcp::no_delay(true), ec);
  co_return result<void>();
}

std::string find_header(std::vector<std::pair<std::string, std::string>> const& hs, std::string_view name) {
  for (auto const& [k, v] : hs)
    if (iequals(k, name)) return v;
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// sse_parser

bool sse_parser::feed(std::string_view bytes) {
  if (over_) return false;
  buf_.append(bytes);
  while (!over_) {
    std::size_t i = scan_;
    if (skip_lf_ && i < buf_.size()) {
      if (buf_[i] == '\n') ++i;
      skip_lf_ = false;
      scan_ = i;
    }
    std::size_t end = buf_.find_first_of("\r\n", scan_);
    if (end == std::string::npos) break;
    line(std::string_view(buf_).substr(scan_, end - scan_));
    if (buf_[end] == '\r') {
      if (end + 1 < buf_.size()) {
        scan_ = end + 1 + (buf_[end + 1] == '\n' ? 1 : 0);
      } else {
        scan_ = end + 1;
        skip_lf_ = true;
      }
    } else {
      scan_ = end + 1;
    }
  }
  // Compact consumed bytes.
  if (scan_ > 0) {
    buf_.erase(0, scan_);
    scan_ = 0;
  }
  return !over_ && buf_.size() <= max_ && cur_.data.size() <= max_;
}

void sse_parser::line(std::string_view l) {
  if (l.empty()) {
    if (has_data_) {
      ready_.push_back(std::move(cur_));
    }
    cur_ = {};
    has_data_ = false;
    return;
  }
  if (l.front() == ':') {
    ++comments_;
    return;
  }
  auto colon = l.find(':');
  std::string_view name = l.substr(0, colon);
  std::string_view value = colon == std::string_view::npos ? std::string_view{} : l.substr(colon + 1);
  if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  if (name == "data") {
    // The bound holds per event, whatever the reads: an event that outgrows it is never delivered (found by
    // tests/fuzz/backend_fuzz: a whole over-bound event inside one read used to be).
    if (cur_.data.size() + value.size() + (has_data_ ? 1 : 0) > max_) {
      over_ = true;
      return;
    }
    if (has_data_) cur_.data += '\n';
    cur_.data.append(value);
    has_data_ = true;
  } else if (name == "event") {
    cur_.event.assign(value);
  }
}

std::optional<sse_event> sse_parser::next() {
  if (ready_pos_ >= ready_.size()) {
    ready_.clear();
    ready_pos_ = 0;
    return std::nullopt;
  }
  return std::move(ready_[ready_pos_++]);
}

// ---------------------------------------------------------------------------------------------------------------
// response_stream

namespace {

// The deadline of the operation pending on one socket, kept by one timer armed lazily: an operation whose
// deadline is no earlier than the armed expiry costs a store, not a timer (de)registration or a race of two
// coroutines
// (`timer || op` per read cost ~6 handler runs and an epoll_wait each: ~90 per streamed request). When the
// timer fires before the pending operation's deadline it re-arms for it; at or after it, it cancels the
// socket's operations and marks `fired`. The handler holds only a weak reference: a stream destroyed with a
// wait pending leaves a handler that finds nothing.
struct socket_watch {
  asio::steady_timer timer;
  tcp::socket* sock;
  steady::time_point until{steady::time_point::max()};     // pending operation's deadline; max = none pending
  steady::time_point armed_at{steady::time_point::max()};  // expiry of the current wait; max = no wait
  std::uint64_t generation{0};                             // of the current wait: superseded ones do nothing
  bool fired{false};

  socket_watch(tcp::socket& s) : timer(s.get_executor()), sock(&s) {}

  static void arm(std::shared_ptr<socket_watch> const& w, steady::time_point deadline) {
    w->until = deadline;
    w->fired = false;
    if (w->armed_at <= deadline) return;  // the current wait fires first and re-arms for `until`
    wait(w, deadline);
  }
  void disarm() noexcept { until = steady::time_point::max(); }

 private:
  static void wait(std::shared_ptr<socket_watch> const& w, steady::time_point at) {
    w->armed_at = at;
    auto const gen = ++w->generation;
    w->timer.expires_at(at);
    w->timer.async_wait([weak = std::weak_ptr<socket_watch>(w), gen](boost::system::error_code ec) {
      auto self = weak.lock();
      if (!self || ec || gen != self->generation) return;
      self->armed_at = steady::time_point::max();
      if (self->until == steady::time_point::max()) return;  // idle: the next operation arms again
      if (steady::now() < self->until) {
        wait(self, self->until);
        return;
      }
      self->fired = true;
      boost::system::error_code ignored;
      self->sock->cancel(ignored);
    });
  }
};

}  // namespace

struct response_stream::state {
  client* owner{nullptr};
  std::shared_ptr<bool> owner_alive;
  tcp::socket socket;
  std::shared_ptr<socket_watch> watch;
  beast::flat_buffer buffer;
  beast::http::response_parser<beast::http::buffer_body> parser;
  std::vector<std::pair<std::string, std::string>> headers;
  std::size_t max_body{0};
  bool broken{false};
  char chunk[16 * 1024];

  explicit state(tcp::socket s) : socket(std::move(s)), watch(std::make_shared<socket_watch>(socket)) {}

  // Runs `op` (an awaitable of a tuple starting with an error_code) on this socket with a deadline: nullopt
  // when the deadline passed first (the operation was cancelled).
  template <class Op>
  asio::awaitable<std::optional<typename Op::value_type>> timed(Op op, steady::time_point deadline) {
    socket_watch::arm(watch, deadline);
    auto r = co_await std::move(op);
    watch->disarm();
    if (std::get<0>(r) && watch->fired) co_return std::nullopt;
    co_return std::optional<typename Op::value_type>(std::move(r));
  }
};

response_stream::response_stream(std::unique_ptr<state> s) : s_(std::move(s)), sse_(1u << 20) {}

response_stream::~response_stream() {
  if (!s_) return;
  // Bytes read past the end of the response (a backend that sent more than it framed) would be the start of
  // the next response on this connection: such a connection is not reused.
  bool reusable = !s_->broken && s_->parser.is_done() && s_->parser.keep_alive() && s_->buffer.size() == 0 &&
                  *s_->owner_alive;
  if (reusable)
    s_->owner->release(std::move(s_->socket));
  else
    close();
}

std::string response_stream::header(std::string_view name) const {
  return find_header(s_->headers, name);
}

bool response_stream::is_event_stream() const {
  return header("content-type").find("text/event-stream") != std::string::npos;
}

void response_stream::close() noexcept {
  if (!s_) return;
  s_->broken = true;
  boost::system::error_code ec;
  s_->socket.shutdown(tcp::socket::shutdown_both, ec);
  s_->socket.close(ec);
}

asio::awaitable<result<std::size_t>> response_stream::read_some(std::chrono::milliseconds timeout) {
  auto& st = *s_;
  if (st.parser.is_done()) co_return std::size_t{0};
  st.parser.get().body().data = st.chunk;
  st.parser.get().body().size = sizeof st.chunk;
  auto r = co_await st.timed(beast::http::async_read_some(st.socket, st.buffer, st.parser, use_tuple),
                             steady::now() + timeout);
  if (!r) {
    close();
    co_return timeout_error("reading the backend response");
  }
  auto [ec, n] = *r;
  (void)n;
  if (ec == beast::http::error::need_buffer) ec = {};
  if (ec) {
    close();
    co_return io_error("reading the backend response", ec);
  }
  co_return sizeof st.chunk - st.parser.get().body().size;
}

asio::awaitable<result<std::optional<sse_event>>> response_stream::next_event(
    std::chrono::milliseconds idle_timeout) {
  for (;;) {
    if (auto ev = sse_.next()) co_return std::optional<sse_event>(std::move(*ev));
    if (s_->parser.is_done()) co_return std::optional<sse_event>{};
    auto n = co_await read_some(idle_timeout);
    if (!n) co_return n.error();
    if (!sse_.feed(std::string_view(s_->chunk, *n))) {
      close();
      co_return ray::error{errc::provider_invalid_response, "a backend event exceeds the event size limit"};
    }
  }
}

asio::awaitable<void> response_stream::finish(std::chrono::milliseconds timeout, std::size_t max_bytes) {
  if (!s_ || s_->broken) co_return;
  auto const deadline = steady::now() + timeout;
  std::size_t seen = 0;
  while (!s_->parser.is_done()) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
    if (left.count() <= 0 || seen > max_bytes) {
      close();
      co_return;
    }
    auto n = co_await read_some(left);
    if (!n) co_return;  // read_some closed it
    seen += *n;
  }
}

asio::awaitable<result<std::string>> response_stream::read_all(std::chrono::milliseconds timeout) {
  std::string out;
  auto const deadline = steady::now() + timeout;
  while (!s_->parser.is_done()) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
    if (left.count() <= 0) {
      close();
      co_return timeout_error("reading the backend response");
    }
    auto n = co_await read_some(left);
    if (!n) co_return n.error();
    if (out.size() + *n > s_->max_body) {
      close();
      co_return ray::error{errc::provider_invalid_response, "the backend response exceeds the size limit"};
    }
    out.append(s_->chunk, *n);
  }
  co_return out;
}

// ---------------------------------------------------------------------------------------------------------------
// client

std::string client_response::header(std::string_view name) const {
  return find_header(headers, name);
}

client::client(asio::any_io_executor ex, std::string host, std::uint16_t port, client_options opts)
    : ex_(std::move(ex)),
      host_(std::move(host)),
      port_(port),
      opts_(opts),
      alive_(std::make_shared<bool>(true)) {}

client::~client() {
  *alive_ = false;
  reset_pool();
}

void client::reset_pool() noexcept {
  for (auto& s : idle_) {
    boost::system::error_code ec;
    s.close(ec);
  }
  idle_.clear();
}

void client::release(tcp::socket sock) {
  if (idle_.size() >= opts_.max_idle_connections) {
    boost::system::error_code ec;
    sock.close(ec);
    return;
  }
  idle_.push_back(std::move(sock));
}

asio::awaitable<result<tcp::socket>> client::acquire(bool& reused, steady::time_point deadline) {
  while (!idle_.empty()) {
    tcp::socket s = std::move(idle_.back());
    idle_.pop_back();
    // A pooled connection the server has closed reads EOF at once: drop it. One with unread bytes (nothing
    // was asked on it since its last response) is out of step with its server: drop it too, or the next
    // response would be read from those bytes.
    char byte;
    ssize_t r = ::recv(s.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
      boost::system::error_code ec;
      s.close(ec);
      continue;
    }
    reused = true;
    co_return result<tcp::socket>(std::move(s));
  }
  reused = false;
  auto const connect_deadline =
      std::min(deadline, steady::now() + std::chrono::milliseconds(opts_.connect_timeout_ms));
  tcp::socket sock(ex_);
  auto connected = co_await connect_to(sock, host_, port_, connect_deadline);
  if (!connected) co_return result<tcp::socket>(connected.error());
  co_return result<tcp::socket>(std::move(sock));
}

// One try on one connection. `retryable` is set when a reused connection died before any response byte.
asio::awaitable<result<std::unique_ptr<response_stream>>> client::attempt(
    beast::http::request<beast::http::string_body> const& msg, steady::time_point deadline, bool& retryable) {
  using out_t = result<std::unique_ptr<response_stream>>;
  retryable = false;
  bool reused = false;
  auto sock = co_await acquire(reused, deadline);
  if (!sock) co_return out_t(sock.error());
  auto st = std::make_unique<response_stream::state>(std::move(*sock));
  st->owner = this;
  st->owner_alive = alive_;
  st->max_body = opts_.max_response_bytes;
  st->parser.body_limit(boost::none);
  st->parser.header_limit(64 * 1024);
  // Beast sizes each read by the buffer's free capacity (512 bytes for an empty one): a response then costs
  // one system call per 512 bytes. The pooled connection's next response reuses none of this.
  st->buffer.reserve(16 * 1024);

  auto wr = co_await st->timed(beast::http::async_write(st->socket, msg, use_tuple), deadline);
  if (!wr) co_return out_t(timeout_error("sending the request to the backend"));
  boost::system::error_code const wec = std::get<0>(*wr);
  if (wec) {
    retryable = reused;
    co_return out_t(io_error("sending the request to the backend", wec));
  }
  auto rr = co_await st->timed(beast::http::async_read_header(st->socket, st->buffer, st->parser, use_tuple),
                               deadline);
  if (!rr) {
    boost::system::error_code ignored;
    st->socket.close(ignored);
    co_return out_t(timeout_error("waiting for the backend's response headers"));
  }
  boost::system::error_code const hec = std::get<0>(*rr);
  if (hec) {
    retryable = reused && (hec == beast::http::error::end_of_stream || hec == asio::error::connection_reset ||
                           hec == asio::error::eof);
    co_return out_t(io_error("reading the backend's response headers", hec));
  }
  auto const& h = st->parser.get();
  for (auto const& f : h)
    st->headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
  unsigned const status = h.result_int();
  auto stream = std::unique_ptr<response_stream>(new response_stream(std::move(st)));
  stream->status_ = status;
  stream->sse_ = sse_parser(opts_.max_event_bytes);
  co_return out_t(std::move(stream));
}

std::unique_ptr<beast::http::request<beast::http::string_body>> client::make_request(
    client_request const& req) const {
  auto msg = std::make_unique<beast::http::request<beast::http::string_body>>(req.method, req.target, 11);
  msg->set(field::host, host_ + ":" + std::to_string(port_));
  msg->set(field::user_agent, "ray/" RAY_VERSION);
  msg->set(field::accept, "application/json, text/event-stream");
  if (!req.body.empty()) msg->set(field::content_type, "application/json");
  for (auto const& h : req.headers)
    msg->set(h.first, h.second);
  msg->body() = req.body;
  msg->keep_alive(true);
  msg->prepare_payload();
  return msg;
}

asio::awaitable<result<std::unique_ptr<response_stream>>> client::open(client_request const& req) {
  auto const deadline = steady::now() + req.timeout;
  auto msg = make_request(req);  // before the first suspension: `req` is the caller's
  // One retry when a pooled connection turns out to be dead before any response byte arrived.
  bool retryable = false;
  auto first = co_await attempt(*msg, deadline, retryable);
  if (first || !retryable) co_return first;
  auto second = co_await attempt(*msg, deadline, retryable);
  co_return second;
}

asio::awaitable<result<client_response>> client::send(client_request const& req) {
  auto const deadline = steady::now() + req.timeout;
  auto stream = co_await open(req);
  if (!stream) co_return stream.error();
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
  if (left.count() <= 0) left = std::chrono::milliseconds(1);
  auto body = co_await (*stream)->read_all(left);
  if (!body) co_return body.error();
  client_response out;
  out.status = (*stream)->status();
  out.headers = (*stream)->s_->headers;
  out.body = std::move(*body);
  co_return out;
}

// ---------------------------------------------------------------------------------------------------------------
// connection_watch

connection_watch::connection_watch(asio::any_io_executor ex) : socket_(std::move(ex)) {}

asio::awaitable<result<void>> connection_watch::connect(std::string const& host, std::uint16_t port,
                                                        std::chrono::milliseconds timeout) {
  close();
  auto connected = co_await connect_to(socket_, host, port, steady::now() + timeout);
  if (!connected) close();
  co_return connected;
}

asio::awaitable<void> connection_watch::wait_closed() {
  if (!socket_.is_open()) co_return;
  char byte;
  co_await socket_.async_read_some(asio::buffer(&byte, 1), use_tuple);
  close();
}

void connection_watch::close() noexcept {
  boost::system::error_code ec;
  socket_.shutdown(tcp::socket::shutdown_both, ec);
  socket_.close(ec);
}

}  // namespace ray::http
