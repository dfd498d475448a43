#include "ray/http/client.hpp"

#include <gtest/gtest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
#include <cstdio>
#include <functional>
#include <future>
#include <thread>

namespace {

namespace asio = boost::asio;

std::uint16_t closed_port() {
  asio::io_context ioc;
  ray::http::tcp::acceptor a(ioc, {asio::ip::make_address("127.0.0.1"), 0});
  return a.local_endpoint().port();  // closed again when `a` goes
}

TEST(HttpClient, ARefusedConnectionIsProviderRequestFailed) {
  asio::io_context ioc;
  ray::http::client c(ioc.get_executor(), "127.0.0.1", closed_port());
  std::optional<ray::result<ray::http::client_response>> out;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        ray::http::client_request const req{ray::http::verb::get, "/health", {}, {}, std::chrono::seconds(2)};
        out = co_await c.send(req);
      },
      asio::detached);
  ioc.run();
  ASSERT_TRUE(out.has_value());
  ASSERT_FALSE(*out);
  EXPECT_EQ(out->error().code, ray::errc::provider_request_failed);
}

// A keep-alive server that answers the first request of its first connection with the response and then
// `extra` bytes — a second, unasked-for response — at once (`late` false) or when `send_late` is set. Every
// other request gets "right". A client that reused that connection would read "WRONG".
class smuggling_server {
 public:
  explicit smuggling_server(bool late)
      : late_(late), acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0}) {
    port_ = acceptor_.local_endpoint().port();
    thread_ = std::thread([this] { serve(); });
  }
  ~smuggling_server() {
    stop_ = true;
    try {
      send_late.set_value();  // unless the test did
    } catch (std::future_error const&) {
    }
    boost::system::error_code ec;
    ray::http::tcp::socket poke(io_);
    poke.connect({asio::ip::make_address("127.0.0.1"), port_}, ec);  // wakes accept()
    thread_.join();
  }
  std::uint16_t port() const { return port_; }
  std::promise<void> send_late;
  std::promise<void> late_sent;
  std::atomic<int> connections{0};

 private:
  void serve() {
    std::vector<std::thread> conns;
    while (!stop_) {
      ray::http::tcp::socket s(io_);
      boost::system::error_code ec;
      acceptor_.accept(s, ec);
      if (ec || stop_) break;
      int const n = ++connections;
      conns.emplace_back([this, n, s = std::move(s)]() mutable { answer(std::move(s), n == 1); });
    }
    for (auto& t : conns)
      t.join();
  }
  void answer(ray::http::tcp::socket s, bool first_conn) {
    asio::streambuf in;
    boost::system::error_code ec;
    bool first = first_conn;
    std::string const extra = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nWRONG";
    for (;;) {
      asio::read_until(s, in, "\r\n\r\n", ec);
      if (ec) return;
      in.consume(in.size());
      std::string out = first ? "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
                              : "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nright";
      if (first && !late_) out += extra;
      asio::write(s, asio::buffer(out), ec);
      if (first && late_) {
        send_late.get_future().wait();
        if (!stop_) asio::write(s, asio::buffer(extra), ec);
        late_sent.set_value();
      }
      first = false;
      if (ec) return;
    }
  }
  bool late_;
  std::atomic<bool> stop_{false};
  asio::io_context io_;
  ray::http::tcp::acceptor acceptor_;
  std::uint16_t port_{0};
  std::thread thread_;
};

// Review finding (http/client.cpp): a pooled backend connection with unread bytes was reused, so the next
// response was read from bytes the backend sent unasked — the two sides out of step for good.
TEST(HttpClient, APooledConnectionWithUnreadBytesIsNotReused) {
  for (bool late : {false, true}) {
    SCOPED_TRACE(late ? "extra bytes after the response was read" : "extra bytes with the response");
    smuggling_server srv(late);
    asio::io_context ioc;
    ray::http::client c(ioc.get_executor(), "127.0.0.1", srv.port());
    std::vector<std::string> bodies;
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          ray::http::client_request const req{ray::http::verb::get, "/x", {}, {}, std::chrono::seconds(5)};
          for (int i = 0; i < 2; ++i) {
            auto r = co_await c.send(req);
            bodies.push_back(r ? r->body : "error: " + r.error().message);
            if (i == 0 && late) {
              srv.send_late.set_value();
              srv.late_sent.get_future().wait();  // the bytes are in this socket's receive queue now
            }
          }
        },
        asio::detached);
    ioc.run();
    ASSERT_EQ(bodies.size(), 2u);
    EXPECT_EQ(bodies[0], "first");
    EXPECT_EQ(bodies[1], "right") << "the second response was read from the first connection's extra bytes";
    EXPECT_EQ(srv.connections.load(), 2);
  }
}

// A keep-alive server answering every request with `script(socket, request_number)` on its own thread.
class scripted_server {
 public:
  using script_fn = std::function<void(ray::http::tcp::socket&, int)>;
  explicit scripted_server(script_fn f)
      : script_(std::move(f)), acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0}) {
    port_ = acceptor_.local_endpoint().port();
    thread_ = std::thread([this] { serve(); });
  }
  ~scripted_server() {
    stop_ = true;
    release.set_value();
    boost::system::error_code ec;
    ray::http::tcp::socket poke(io_);
    poke.connect({asio::ip::make_address("127.0.0.1"), port_}, ec);
    thread_.join();
  }
  std::uint16_t port() const { return port_; }
  std::atomic<int> connections{0};
  std::promise<void> release;  // set at destruction: scripts that stall wait on `released`
  std::shared_future<void> released{release.get_future().share()};

 private:
  void serve() {
    std::vector<std::thread> conns;
    while (!stop_) {
      ray::http::tcp::socket s(io_);
      boost::system::error_code ec;
      acceptor_.accept(s, ec);
      if (ec || stop_) break;
      ++connections;
      conns.emplace_back([this, s = std::move(s)]() mutable {
        asio::streambuf in;
        boost::system::error_code ec;
        for (int n = 1;; ++n) {
          asio::read_until(s, in, "\r\n\r\n", ec);
          if (ec) return;
          in.consume(in.size());
          script_(s, n);
        }
      });
    }
    for (auto& t : conns)
      t.join();
  }
  script_fn script_;
  std::atomic<bool> stop_{false};
  asio::io_context io_;
  ray::http::tcp::acceptor acceptor_;
  std::uint16_t port_{0};
  std::thread thread_;
};

void write_all(ray::http::tcp::socket& s, std::string const& bytes) {
  boost::system::error_code ec;
  asio::write(s, asio::buffer(bytes), ec);
}

std::string const sse_head =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
std::string chunk(std::string const& data) {
  char size[16];
  std::snprintf(size, sizeof size, "%zx\r\n", data.size());
  return size + data + "\r\n";
}

// Benchmark finding (bench/overhead.sh: 1.0 backend connections per request): the backend adapter stopped
// reading at `[DONE]`, before the chunked body's terminator, so the connection was never reusable. finish()
// reads the rest; a stream finished that way goes back to the pool.
TEST(HttpClient, AStreamFinishedAfterItsLastEventReturnsItsConnectionToThePool) {
  scripted_server srv([](ray::http::tcp::socket& s, int) {
    write_all(s, sse_head + chunk("data: {\"a\":1}\n\n") + chunk("data: [DONE]\n\n"));
    write_all(s, "0\r\n\r\n");  // the terminator in its own segment, as llama-server sends it
  });
  asio::io_context ioc;
  ray::http::client c(ioc.get_executor(), "127.0.0.1", srv.port());
  std::vector<std::string> seen;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        ray::http::client_request const req{
            ray::http::verb::post, "/v1/chat/completions", "{}", {}, std::chrono::seconds(5)};
        for (int i = 0; i < 3; ++i) {
          auto st = co_await c.open(req);
          if (!st) {
            seen.push_back("error: " + st.error().message);
            continue;
          }
          for (;;) {
            auto ev = co_await (*st)->next_event(std::chrono::seconds(5));
            if (!ev || !*ev) break;
            seen.push_back((*ev)->data);
            if ((*ev)->data == "[DONE]") break;
          }
          co_await (*st)->finish(std::chrono::seconds(5));
        }
      },
      asio::detached);
  ioc.run();
  ASSERT_EQ(seen.size(), 6u);
  EXPECT_EQ(seen[5], "[DONE]");
  EXPECT_EQ(srv.connections.load(), 1) << "each request opened its own connection";
}

// A backend that stops after `[DONE]` without ending the body: finish() gives up after its timeout and the
// connection is not reused (the next request gets a fresh one and its right answer).
TEST(HttpClient, AStreamThatNeverEndsIsNotPooledAfterFinish) {
  scripted_server* self = nullptr;
  scripted_server srv([&self](ray::http::tcp::socket& s, int) {
    write_all(s, sse_head + chunk("data: [DONE]\n\n"));
    self->released.wait();  // never the terminator
  });
  self = &srv;
  asio::io_context ioc;
  ray::http::client c(ioc.get_executor(), "127.0.0.1", srv.port());
  int done_events = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        ray::http::client_request const req{ray::http::verb::post, "/x", "{}", {}, std::chrono::seconds(5)};
        for (int i = 0; i < 2; ++i) {
          auto st = co_await c.open(req);
          if (!st) co_return;
          auto ev = co_await (*st)->next_event(std::chrono::seconds(5));
          if (ev && *ev && (*ev)->data == "[DONE]") ++done_events;
          co_await (*st)->finish(std::chrono::milliseconds(50));
        }
      },
      asio::detached);
  ioc.run();
  EXPECT_EQ(done_events, 2);
  EXPECT_EQ(srv.connections.load(), 2);
}

// The per-socket deadline is one lazily armed timer: a read with an earlier deadline than the one armed (a
// long first read, then a short one) must still time out at its own deadline, as provider_timeout, not wait
// for the first read's.
TEST(HttpClient, AReadTimesOutAtItsOwnDeadlineAfterALongerOne) {
  scripted_server* self = nullptr;
  scripted_server srv([&self](ray::http::tcp::socket& s, int) {
    write_all(s, sse_head + chunk("data: one\n\n"));
    self->released.wait();  // then silence
  });
  self = &srv;
  asio::io_context ioc;
  ray::http::client c(ioc.get_executor(), "127.0.0.1", srv.port());
  std::vector<std::string> seen;
  std::optional<ray::errc> failure;
  auto const started = std::chrono::steady_clock::now();
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        ray::http::client_request const req{ray::http::verb::post, "/x", "{}", {}, std::chrono::seconds(5)};
        auto st = co_await c.open(req);
        if (!st) co_return;
        auto ev = co_await (*st)->next_event(std::chrono::minutes(10));  // arms the timer ten minutes out
        if (ev && *ev) seen.push_back((*ev)->data);
        auto second = co_await (*st)->next_event(std::chrono::milliseconds(100));
        if (!second) failure = second.error().code;
      },
      asio::detached);
  ioc.run();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], "one");
  ASSERT_TRUE(failure.has_value()) << "the silent backend's read did not fail";
  EXPECT_EQ(*failure, ray::errc::provider_timeout);
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::minutes(5))
      << "the short read waited for the long read's deadline";
}

}  // namespace
