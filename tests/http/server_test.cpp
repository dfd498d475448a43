// http::server against a scripted handler: failure paths of a session must leave the server's accounting
// exact (review finding: connection accounting was not RAII).
#include "ray/http/http.hpp"
#include "support/raw_client.hpp"

#include <gtest/gtest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <stdexcept>
#include <thread>

namespace {

namespace http = ray::http;
using namespace std::chrono_literals;

// Answers 200 "ok"; a request for /throw-in-check throws from check_headers (outside the handler's try), one
// for /throw-in-handle throws from handle.
class scripted final : public http::handler {
 public:
  std::optional<ray::error> check_headers(http::request_header const&, std::string_view path,
                                          http::tcp::endpoint const&, http::header_list&) override {
    if (path == "/throw-in-check") throw std::runtime_error("check_headers failed");
    return std::nullopt;
  }
  bool accepts_body(http::request_header const&, std::string_view) override { return false; }
  http::response error_response(ray::error const& err, http::request_header const*, std::string_view,
                                std::chrono::steady_clock::time_point) override {
    http::response res{http::status::service_unavailable, 11};
    res.body() = ray::code_name(err.code);
    return res;
  }
  boost::asio::awaitable<void> handle(http::exchange& ex) override {
    if (ex.path() == "/throw-in-handle") throw std::runtime_error("handle failed");
    http::response res{http::status::ok, 11};
    res.body() = "ok";
    co_await ex.respond(std::move(res));
  }
};

class ServerTest : public ::testing::Test {
 protected:
  void start(http::limits lim) {
    srv_ = std::make_unique<http::server>(ioc_, h_, lim);
    auto ep = srv_->listen("127.0.0.1", 0);
    ASSERT_TRUE(ep.has_value());
    port_ = ep->port();
    srv_->start();
    thread_ = std::thread([this] { ioc_.run(); });
  }
  void TearDown() override {
    // Stop and let every session end on its own: run() returns once nothing is left (no frame is destroyed
    // after the server it points into).
    if (srv_) boost::asio::post(ioc_, [this] { srv_->stop(); });
    work_.reset();
    if (thread_.joinable()) thread_.join();
  }
  // Waits (bounded) for the server's open-connection count to reach `n`.
  bool connections_reach(std::uint32_t n) {
    auto until = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < until) {
      if (srv_->stats().connections.load() == n) return true;
      std::this_thread::yield();
    }
    return false;
  }
  static std::string get(std::string_view path) {
    return "GET " + std::string(path) + " HTTP/1.1\r\nHost: t\r\n\r\n";
  }

  boost::asio::io_context ioc_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_{
      ioc_.get_executor()};
  scripted h_;
  std::unique_ptr<http::server> srv_;
  std::thread thread_;
  std::uint16_t port_{0};
};

TEST_F(ServerTest, AnExceptionOutsideTheHandlerClosesTheConnectionAndReleasesItsCount) {
  http::limits lim;
  lim.max_connections = 1;
  start(lim);
  {
    ray::test::raw_client c(port_);
    ASSERT_TRUE(c.send(get("/throw-in-check")));
    EXPECT_TRUE(c.is_closed_by_peer(std::chrono::steady_clock::now() + 10s));
  }
  ASSERT_TRUE(connections_reach(0)) << "count leaked: " << srv_->stats().connections.load();
  // The one allowed connection is free again: served, not refused with 503 overloaded.
  ray::test::raw_client c(port_);
  ASSERT_TRUE(c.send(get("/")));
  auto r = c.read_response(std::chrono::steady_clock::now() + 10s);
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_EQ(r->status, 200) << r->describe();
}

TEST_F(ServerTest, AnExceptionInTheHandlerClosesTheConnectionAndReleasesItsCount) {
  http::limits lim;
  lim.max_connections = 1;
  start(lim);
  {
    ray::test::raw_client c(port_);
    ASSERT_TRUE(c.send(get("/throw-in-handle")));
    EXPECT_TRUE(c.is_closed_by_peer(std::chrono::steady_clock::now() + 10s));
  }
  ASSERT_TRUE(connections_reach(0));
  EXPECT_EQ(srv_->stats().active_requests.load(), 0u);
  ray::test::raw_client c(port_);
  ASSERT_TRUE(c.send(get("/")));
  auto r = c.read_response(std::chrono::steady_clock::now() + 10s);
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_EQ(r->status, 200) << r->describe();
}

}  // namespace
