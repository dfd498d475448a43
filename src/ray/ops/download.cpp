// The blocking HTTP(S) GET behind `ray model pull` (model_detail.hpp): one coroutine on a private io_context,
// Beast over a tcp_stream whose expiry bounds every step (connect, handshake, each read), redirects resolved
// with Boost.URL, TLS from the shared client context in ray/http/tls.hpp.
//
// The body streams through a 64 KiB buffer_body straight to the sink: nothing is held beyond one chunk, and a
// sink that refuses (not GGUF, no disk) ends the fetch before another byte is read.
#include "ray/http/tls.hpp"
#include "ray/ops/model_detail.hpp"
#include "ray/ops/ops.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>

#include <openssl/ssl.h>

#include <exception>
#include <vector>

namespace ray::ops::detail {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace urls = boost::urls;
using tcp = asio::ip::tcp;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t chunk_bytes = 64 * 1024;

struct target {
  bool https{false};
  std::string host;  // name or address (no brackets)
  std::uint16_t port{0};
  std::string host_header;  // as in the URL ("[::1]:8443")
  std::string path;         // origin-form request target
};

result<target> parse_target(std::string_view text) {
  auto const u = urls::parse_absolute_uri(text);
  if (!u) return ray::error{errc::invalid_request, "not a valid URL: " + std::string(text)};
  target t;
  if (u->scheme_id() == urls::scheme::https) {
    t.https = true;
  } else if (u->scheme_id() != urls::scheme::http) {
    return ray::error{errc::invalid_request, "unsupported URL scheme in " + std::string(text)};
  }
  if (u->has_userinfo())
    return ray::error{errc::invalid_request,
                      "credentials in the URL are not supported: " + std::string(text)};
  t.host =
      u->host_type() == urls::host_type::ipv6 ? u->host_ipv6_address().to_string() : std::string(u->host());
  if (t.host.empty()) return ray::error{errc::invalid_request, "no host in " + std::string(text)};
  t.port = u->has_port() ? u->port_number() : (t.https ? 443 : 80);
  if (t.port == 0) return ray::error{errc::invalid_request, "bad port in " + std::string(text)};
  t.host_header = std::string(u->encoded_host_and_port());
  t.path = std::string(u->encoded_path());
  if (t.path.empty()) t.path = "/";
  if (u->has_query()) t.path += "?" + std::string(u->encoded_query());
  return t;
}

bool transient_status(int s) {
  return s == 408 || s == 429 || s >= 500;
}

fetch_result fail(fetch_end end, std::string why) {
  return fetch_result{end, std::move(why)};
}

// One request/response on a connected stream (plain or TLS). A redirect sets `location`.
template <class Stream>
asio::awaitable<fetch_result> exchange(Stream& stream, target const& t, std::string const& url,
                                       std::uint64_t from, fetch_limits const& lim, fetch_sink& sink,
                                       std::optional<std::string>& location) {
  auto& low = beast::get_lowest_layer(stream);
  bhttp::request<bhttp::empty_body> req{bhttp::verb::get, t.path, 11};
  req.set(bhttp::field::host, t.host_header);
  req.set(bhttp::field::user_agent, "ray/" RAY_VERSION);
  req.set(bhttp::field::accept, "*/*");
  // The model as stored: a transparently compressed body would break Range offsets and the hash.
  req.set(bhttp::field::accept_encoding, "identity");
  req.set(bhttp::field::connection, "close");
  if (from > 0) req.set(bhttp::field::range, "bytes=" + std::to_string(from) + "-");
  low.expires_after(lim.idle_timeout);
  if (auto const [ec, n] = co_await bhttp::async_write(stream, req, use_tuple); ec)
    co_return fail(fetch_end::transient,
                   "sending the request to " + t.host_header + " failed: " + ec.message());

  beast::flat_buffer buffer(lim.max_header_bytes + chunk_bytes);
  bhttp::response_parser<bhttp::buffer_body> parser;
  parser.header_limit(static_cast<std::uint32_t>(lim.max_header_bytes));
  parser.body_limit(boost::none);  // the size is checked against the disk by the sink instead
  low.expires_after(lim.idle_timeout);
  if (auto const [ec, n] = co_await bhttp::async_read_header(stream, buffer, parser, use_tuple); ec) {
    if (ec == bhttp::error::header_limit)
      co_return fail(fetch_end::fatal, t.host_header + " sent a response header section over " +
                                           std::to_string(lim.max_header_bytes) + " bytes");
    co_return fail(fetch_end::transient,
                   "reading the response of " + t.host_header + " failed: " + ec.message());
  }
  auto const& msg = parser.get();
  int const status = msg.result_int();
  if (status == 301 || status == 302 || status == 303 || status == 307 || status == 308) {
    auto const it = msg.find(bhttp::field::location);
    if (it == msg.end())
      co_return fail(fetch_end::fatal,
                     "redirect " + std::to_string(status) + " without a Location from " + url);
    location = std::string(it->value());
    co_return fail(fetch_end::complete, "");
  }
  if (status != 200 && status != 206 && status != 416) {
    co_return fail(transient_status(status) ? fetch_end::transient : fetch_end::fatal,
                   url + " answered " + std::to_string(status) + " " + std::string(msg.reason()));
  }
  response_head head{.status = status, .url = url};
  if (auto const len = parser.content_length()) head.content_length = *len;
  if (auto const it = msg.find(bhttp::field::content_range); it != msg.end())
    head.content_range = std::string(it->value());
  auto wants = sink.on_head(head);
  if (!wants) co_return fail(fetch_end::fatal, wants.error().message);
  if (!*wants) co_return fail(fetch_end::complete, "");
  if (status == 416) co_return fail(fetch_end::fatal, url + " answered 416 Range Not Satisfiable");

  std::vector<char> chunk(chunk_bytes);
  std::uint64_t received = 0;
  while (!parser.is_done()) {
    parser.get().body().data = chunk.data();
    parser.get().body().size = chunk.size();
    low.expires_after(lim.idle_timeout);
    // read_some: back with whatever arrived, so a refusal or a progress line never waits for a full chunk.
    auto [ec, n] = co_await bhttp::async_read_some(stream, buffer, parser, use_tuple);
    if (ec == bhttp::error::need_buffer) ec = {};
    auto const got = chunk.size() - parser.get().body().size;
    if (got > 0) {
      received += got;
      if (auto r = sink.on_body(std::string_view(chunk.data(), got)); !r)
        co_return fail(fetch_end::fatal, r.error().message);
    }
    if (ec) {
      auto const why = ec == beast::error::timeout
                           ? "no data for " + std::to_string(lim.idle_timeout.count()) + " ms"
                           : ec.message();
      co_return fail(fetch_end::transient, "the connection to " + t.host_header + " ended after " +
                                               std::to_string(received) + " body bytes: " + why);
    }
  }
  co_return fail(fetch_end::complete, "");
}

asio::awaitable<fetch_result> attempt(std::string const& url, std::uint64_t from, fetch_limits const& lim,
                                      fetch_sink& sink, std::optional<std::string>& location) {
  auto t = parse_target(url);
  if (!t) co_return fail(fetch_end::fatal, t.error().message);
  auto ex = co_await asio::this_coro::executor;
  beast::tcp_stream tcp_stream(ex);

  boost::system::error_code lit_ec;
  auto const literal = asio::ip::make_address(t->host, lit_ec);
  bool const is_literal = !lit_ec;
  std::vector<tcp::endpoint> endpoints;
  if (is_literal) {
    endpoints.emplace_back(literal, t->port);
  } else {
    // getaddrinfo cannot be interrupted; it is bounded by the resolver's own timeouts (resolv.conf).
    tcp::resolver resolver(ex);
    auto const [ec, found] = co_await resolver.async_resolve(t->host, std::to_string(t->port), use_tuple);
    if (ec) co_return fail(fetch_end::transient, "resolving " + t->host + " failed: " + ec.message());
    for (auto const& e : found)
      endpoints.push_back(e.endpoint());
  }
  tcp_stream.expires_after(lim.connect_timeout);
  if (auto const [ec, ep] = co_await tcp_stream.async_connect(endpoints, use_tuple); ec) {
    auto const why = ec == beast::error::timeout
                         ? "no answer within " + std::to_string(lim.connect_timeout.count()) + " ms"
                         : ec.message();
    co_return fail(fetch_end::transient, "connecting to " + t->host_header + " failed: " + why);
  }
  if (!t->https) co_return co_await exchange(tcp_stream, *t, url, from, lim, sink, location);

  auto const& tls = http::tls_client();
  if (!tls.context) co_return fail(fetch_end::fatal, tls.error);
  asio::ssl::stream<beast::tcp_stream> stream(std::move(tcp_stream), *tls.context);
  if (!http::prepare_peer_check(stream.native_handle(), t->host, is_literal))
    co_return fail(fetch_end::fatal, "setting up TLS for " + t->host + " failed");
  beast::get_lowest_layer(stream).expires_after(lim.connect_timeout);
  if (auto const [ec] = co_await stream.async_handshake(asio::ssl::stream_base::client, use_tuple); ec) {
    // A chain or name the trust store does not vouch for will not change on a retry.
    bool const verify = SSL_get_verify_result(stream.native_handle()) != 0;
    co_return fail(verify ? fetch_end::fatal : fetch_end::transient,
                   "TLS handshake with " + t->host_header +
                       " failed: " + http::handshake_failure(stream.native_handle(), ec));
  }
  co_return co_await exchange(stream, *t, url, from, lim, sink, location);
}

asio::awaitable<fetch_result> follow(std::string url, std::uint64_t from, fetch_limits const& lim,
                                     fetch_sink& sink) {
  for (int hops = 0;; ++hops) {
    std::optional<std::string> location;
    auto r = co_await attempt(url, from, lim, sink, location);
    if (!location) co_return r;
    if (hops >= lim.max_redirects)
      co_return fail(fetch_end::fatal, "too many redirects (more than " + std::to_string(lim.max_redirects) +
                                           "); the last one, from " + url + ", went to " + *location);
    auto next = resolve_redirect(url, *location);
    if (!next) co_return fail(fetch_end::fatal, next.error().message);
    url = std::move(*next);
  }
}

}  // namespace

fetch_result fetch(std::string const& url, std::uint64_t range_from, fetch_limits const& lim,
                   fetch_sink& sink) {
  asio::io_context io;
  fetch_result out = fail(fetch_end::fatal, "the download did not run");
  // The frame owns everything it touches except `sink`, `lim` and `out`, which outlive io.run().
  asio::co_spawn(io, follow(url, range_from, lim, sink), [&out](std::exception_ptr e, fetch_result r) {
    if (!e) {
      out = std::move(r);
      return;
    }
    try {
      std::rethrow_exception(e);
    } catch (std::exception const& x) {
      out = fail(fetch_end::transient, std::string("download failed: ") + x.what());
    } catch (...) {
      out = fail(fetch_end::transient, "download failed");
    }
  });
  io.run();
  return out;
}

}  // namespace ray::ops::detail

namespace ray::ops {

namespace urls = boost::urls;

result<std::string> resolve_redirect(std::string_view current, std::string_view location) {
  auto const base = urls::parse_absolute_uri(current);
  if (!base) return ray::error{errc::invalid_request, "not a valid URL: " + std::string(current)};
  auto const ref = urls::parse_uri_reference(location);
  if (!ref)
    return ray::error{errc::invalid_request, "redirect to an invalid Location: " + std::string(location)};
  urls::url dest;
  if (auto const r = urls::resolve(*base, *ref, dest); !r)
    return ray::error{errc::invalid_request, "cannot resolve the redirect to " + std::string(location)};
  dest.remove_fragment();
  // Boost.URL 1.81 keeps ".." segments that climb above the root ("/start" + "../a" → "/../a"); RFC 3986
  // §5.2.4 drops them, as browsers and curl do.
  std::string path(dest.encoded_path());
  bool climbed = false;
  while (path.starts_with("/../") || path == "/..") {
    path.erase(0, 3);
    if (path.empty()) path = "/";
    climbed = true;
  }
  if (climbed) dest.set_encoded_path(path);
  auto const scheme = dest.scheme_id();
  if (scheme != urls::scheme::http && scheme != urls::scheme::https)
    return ray::error{errc::invalid_request,
                      "redirect to a non-HTTP URL refused: " + std::string(dest.buffer())};
  if (base->scheme_id() == urls::scheme::https && scheme == urls::scheme::http)
    return ray::error{errc::invalid_request,
                      "redirect from https to plain http refused: " + std::string(dest.buffer())};
  return std::string(dest.buffer());
}

}  // namespace ray::ops
