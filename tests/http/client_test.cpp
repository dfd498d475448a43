#include "ray/http/client.hpp"

#include <gtest/gtest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

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

}  // namespace
