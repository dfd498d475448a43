#include "ray/http/client.hpp"

#include <gtest/gtest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
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

}  // namespace
