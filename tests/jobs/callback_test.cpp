// Unit tests of the callback SSRF guard and delivery (src/ray/jobs/ssrf.cpp, callback.cpp): the URL rules,
// the refused-address table, and deliver() against receivers this test runs on loopback (plain HTTP and TLS
// with certificates made here), with fake resolvers for names.
#include "ray/jobs/callback.hpp"

#include <gtest/gtest.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>

namespace {

namespace asio = boost::asio;
namespace bhttp = boost::beast::http;
namespace rj = ray::jobs;
using tcp = asio::ip::tcp;
using addresses = std::vector<asio::ip::address>;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// ---------------------------------------------------------------------------------------------------------
// check_callback_url

rj::callback_policy open_policy() {
  rj::callback_policy p;
  p.allow_private_network = true;
  return p;
}

// The refusal message, or "" when the URL is accepted.
std::string refusal(std::string_view url, rj::callback_policy const& p = {}) {
  auto r = rj::check_callback_url(url, p);
  if (r) return "";
  EXPECT_EQ(r.error().code, ray::errc::invalid_request) << url;
  EXPECT_EQ(r.error().param, "callbackUrl") << url;
  EXPECT_FALSE(r.error().message.empty()) << url;
  return r.error().message;
}

TEST(CallbackUrl, AcceptedUrlsAreSplitIntoHostPortTargetAndHostHeader) {
  auto a = rj::check_callback_url("https://hooks.example.com/cb/ray?x=1&y=%20", {});
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_TRUE(a->https);
  EXPECT_EQ(a->host, "hooks.example.com");
  EXPECT_EQ(a->port, 443);
  EXPECT_EQ(a->target, "/cb/ray?x=1&y=%20");
  EXPECT_EQ(a->host_header, "hooks.example.com");

  auto b = rj::check_callback_url("HTTP://Hooks.Example.COM:8080", {});
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_FALSE(b->https);
  EXPECT_EQ(b->host, "hooks.example.com");
  EXPECT_EQ(b->port, 8080);
  EXPECT_EQ(b->target, "/");
  EXPECT_EQ(b->host_header, "hooks.example.com:8080");

  auto c = rj::check_callback_url("https://h.example:443?only=query", {});
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->target, "/?only=query");
  EXPECT_EQ(c->host_header, "h.example");  // the default port is not repeated

  auto d = rj::check_callback_url("http://[2606:4700:4700::1111]:81/x", {});
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->host, "2606:4700:4700::1111");
  EXPECT_EQ(d->port, 81);
  EXPECT_EQ(d->host_header, "[2606:4700:4700::1111]:81");

  auto e = rj::check_callback_url("http://8.8.8.8/", {});
  ASSERT_TRUE(e) << e.error().message;
  EXPECT_EQ(e->host, "8.8.8.8");
  EXPECT_EQ(e->port, 80);

  EXPECT_EQ(refusal("https://h.example:65535/"), "");
  EXPECT_EQ(refusal("https://under_score.example/"), "");
  EXPECT_EQ(refusal("https://xn--bcher-kva.example/"), "");
}

TEST(CallbackUrl, EachRuleRefusesWithAMessageNamingIt) {
  struct refused_case {
    std::string url;
    std::string says;
  };
  std::vector<refused_case> const cases{
      {"ftp://h.example/", "http or https"},
      {"file:///etc/passwd", "http or https"},
      {"gopher://h.example/", "http or https"},
      {"https://user:hunter2@h.example/", "userinfo"},
      {"https://@h.example/", "userinfo"},
      {"https://h.example/cb#frag", "fragment"},
      {"https://h.example/#", "fragment"},
      {"https://h.example/" + std::string(2048, 'a'), "longer than 2048"},
      {"https:///path", "no host"},
      {"https:/path", "no host"},
      {"not a url", "not an absolute URL"},
      {"/relative", "not an absolute URL"},
      {"https://h.example:0/", "invalid port"},
      {"https://h.example:65536/", "invalid port"},
      {"https://h.example:/", "invalid port"},
      {"http://2130706433/", "non-standard form"},
      {"http://0x7f.1/", "non-standard form"},
      {"http://127.1/", "non-standard form"},
      {"http://0177.0.0.1/", "non-standard form"},
      {"https://h%2eexample/", "not a valid DNS name"},
      {"https://h.example./", "not a valid DNS name"},
      {"https://a..example/", "not a valid DNS name"},
      {"https://" + std::string(64, 'a') + ".example/", "not a valid DNS name"},
      {"https://[v1.fe80::a]/", "IPvFuture"},
  };
  for (auto const& c : cases) {
    SCOPED_TRACE(c.url.substr(0, 80));
    auto const m = refusal(c.url);
    EXPECT_NE(m.find(c.says), std::string::npos) << m;
    // Even with every network allowed: these are syntax rules.
    EXPECT_NE(refusal(c.url, open_policy()), "");
  }
  // A credential is never echoed.
  EXPECT_EQ(refusal("https://user:hunter2@h.example/").find("hunter2"), std::string::npos);
  // The length limit is 2048 characters inclusive.
  std::string const at_limit = "https://h.example/" + std::string(2048 - 18, 'a');
  ASSERT_EQ(at_limit.size(), 2048u);
  EXPECT_EQ(refusal(at_limit), "");
}

TEST(CallbackUrl, AllowedHostsMatchExactlyOrBySuffixCaseInsensitively) {
  rj::callback_policy p;
  p.allowed_hosts = {"hooks.example.com", "*.Example.ORG"};
  for (auto const* ok : {"https://hooks.example.com/", "https://HOOKS.Example.com:8443/x",
                         "https://a.example.org/", "https://b.a.example.org/"})
    EXPECT_EQ(refusal(ok, p), "") << ok;
  for (auto const* no : {"https://example.org/",                 // the suffix itself
                         "https://xexample.org/",                // not at a label boundary
                         "https://other.example.com/",           // not the exact name
                         "https://hooks.example.com.evil.net/",  // the name as a prefix
                         "https://example.com/", "https://8.8.8.8/"}) {
    auto const m = refusal(no, p);
    EXPECT_NE(m.find("callbackAllowedHosts"), std::string::npos) << no << ": " << m;
  }
  // No list: any public host.
  EXPECT_EQ(refusal("https://other.example.com/"), "");
  // IP entries compare as addresses, bracketed or not.
  auto q = open_policy();
  q.allowed_hosts = {"[::1]", "127.0.0.1"};
  EXPECT_EQ(refusal("http://[0:0::1]:9/", q), "");
  EXPECT_EQ(refusal("http://127.0.0.1:9/", q), "");
  EXPECT_NE(refusal("http://127.0.0.2:9/", q), "");
  // An allow-list entry does not lift the private-network rule.
  rj::callback_policy r;
  r.allowed_hosts = {"10.0.0.5"};
  EXPECT_NE(refusal("http://10.0.0.5/", r).find("callbackAllowPrivateNetwork"), std::string::npos);
}

TEST(CallbackUrl, PrivateLiteralsAndLocalhostAreRefusedUnlessThePrivateNetworkIsAllowed) {
  for (auto const* url :
       {"http://127.0.0.1/", "http://127.255.0.9:8080/", "http://10.1.2.3/", "http://172.16.0.1/",
        "http://192.168.1.1/", "http://100.64.0.1/", "http://169.254.169.254/latest/meta-data",
        "http://224.0.0.1/", "http://255.255.255.255/", "http://0.0.0.0/", "http://[::1]/", "http://[::]/",
        "http://[fe80::1]/", "http://[fd00::1]/", "http://[ff02::1]/", "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/", "http://localhost:8080/", "http://api.localhost/"}) {
    auto const m = refusal(url);
    EXPECT_NE(m.find("callbackAllowPrivateNetwork is false"), std::string::npos) << url << ": " << m;
    EXPECT_EQ(refusal(url, open_policy()), "") << url;
  }
  // Public literals pass without it; names pass at submission (they are checked when resolved).
  EXPECT_EQ(refusal("http://8.8.8.8/"), "");
  EXPECT_EQ(refusal("http://[::ffff:8.8.8.8]/"), "");
  EXPECT_EQ(refusal("http://[2001:4860:4860::8888]/"), "");
  EXPECT_EQ(refusal("http://internal.example/"), "");
}

// ---------------------------------------------------------------------------------------------------------
// is_refused_address

bool refused(char const* text) {
  return rj::is_refused_address(asio::ip::make_address(text));
}

TEST(RefusedAddress, Ipv4RangesAndTheirEdges) {
  for (auto const* a :
       {"0.0.0.0",         "0.255.255.255",   "10.0.0.0",        "10.255.255.255", "100.64.0.0",
        "100.127.255.255", "127.0.0.1",       "127.255.255.255", "169.254.0.0",    "169.254.169.254",
        "172.16.0.0",      "172.31.255.255",  "192.0.0.1",       "192.0.0.255",    "192.0.2.1",
        "192.168.0.0",     "192.168.255.255", "198.18.0.0",      "198.19.255.255", "198.51.100.7",
        "203.0.113.1",     "224.0.0.0",       "239.255.255.255", "240.0.0.1",      "255.255.255.255"})
    EXPECT_TRUE(refused(a)) << a;
  for (auto const* a :
       {"1.1.1.1",        "8.8.8.8",         "9.255.255.255", "11.0.0.0",        "100.63.255.255",
        "100.128.0.0",    "126.255.255.255", "128.0.0.0",     "169.253.255.255", "169.255.0.0",
        "172.15.255.255", "172.32.0.0",      "192.0.1.1",     "192.0.3.0",       "192.167.255.255",
        "192.169.0.0",    "198.17.255.255",  "198.20.0.0",    "203.0.114.1",     "223.255.255.255"})
    EXPECT_FALSE(refused(a)) << a;
}

TEST(RefusedAddress, Ipv6RangesAndEmbeddedIpv4) {
  for (auto const* a : {"::",
                        "::1",
                        "::127.0.0.1",
                        "::8.8.8.8",  // ::/96 (IPv4-compatible, deprecated)
                        "::ffff:127.0.0.1",
                        "::ffff:10.0.0.1",
                        "::ffff:169.254.169.254",
                        "::ffff:0.0.0.0",
                        "::ffff:0:7f00:1",  // SIIT form of 127.0.0.1
                        "64:ff9b::7f00:1",
                        "64:ff9b::a00:1",  // NAT64 of 127.0.0.1, 10.0.0.1
                        "64:ff9b:1::1",
                        "100::1",
                        "2001::1",
                        "2001:0:ffff::1",
                        "2001:2::1",
                        "2001:db8::1",
                        "2002:7f00:1::1",
                        "2002:c0a8:101::1",  // 6to4 of 127.0.0.1, 192.168.1.1
                        "3fff::1",
                        "5f00::1",
                        "fc00::1",
                        "fdff:ffff::1",
                        "fe80::1",
                        "febf::1",
                        "fec0::1",
                        "ff00::",
                        "ff02::1"})
    EXPECT_TRUE(refused(a)) << a;
  for (auto const* a :
       {"2001:4860::8888", "2001:4860:4860::8888", "2606:4700:4700::1111", "::ffff:8.8.8.8", "::ffff:1.1.1.1",
        "64:ff9b::808:808", "2002:808:808::1", "2001:1::1", "2001:3::1", "fbff::1", "2a00:1450:4001::200e"})
    EXPECT_FALSE(refused(a)) << a;
}

// ---------------------------------------------------------------------------------------------------------
// callback_signature

std::string receiver_signature(std::string_view secret, std::string_view ts, std::string_view body) {
  // What a receiver computes: HMAC-SHA256(secret, timestamp + "." + body), hex.
  std::string msg(ts);
  msg += '.';
  msg += body;
  return "sha256=" + ray::to_hex(ray::hmac_sha256(secret, msg));
}

// A receiver's check of x-ray-signature.
bool receiver_accepts(std::string_view secret, std::string_view ts, std::string_view body,
                      std::string_view sig) {
  auto const expected = receiver_signature(secret, ts, body);
  auto bytes = [](std::string_view s) {
    return std::span<std::uint8_t const>(reinterpret_cast<std::uint8_t const*>(s.data()), s.size());
  };
  return ray::constant_time_equal(bytes(expected), bytes(sig));
}

TEST(CallbackSignature, IsHmacSha256OfTimestampDotBodyInLowerCaseHex) {
  // Expected value from `printf '%s' '1700000000.{"job":{"id":"job_1"}}' | openssl dgst -sha256 -hmac
  // s3cret`.
  EXPECT_EQ(rj::callback_signature("s3cret", "1700000000", R"({"job":{"id":"job_1"}})"),
            "sha256=1e5c7d2906fa503c44d938067c696074f3903f2aa12b22fd14bdb4557e856e85");
  EXPECT_NE(rj::callback_signature("s3cret", "1700000001", R"({"job":{"id":"job_1"}})"),
            rj::callback_signature("s3cret", "1700000000", R"({"job":{"id":"job_1"}})"));
}

// ---------------------------------------------------------------------------------------------------------
// Test receivers on 127.0.0.1 (one io_context, the same loop as deliver()).

struct received_request {
  std::string method, target, body;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string header(std::string const& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

enum class answer_mode {
  respond,          // status, headers and body, then close
  never,            // reads the request, never answers, holds the connection
  endless_chunked,  // the status, then chunked body without end
  stalled_body,     // the status with Content-Length 100, 10 body bytes, then nothing
  huge_body,        // the status with a 1 MiB body written at once (small send buffer)
};

struct receiver_options {
  unsigned status{200};
  std::vector<std::pair<std::string, std::string>> headers{};
  std::string body{"ok"};
  answer_mode mode{answer_mode::respond};
  std::optional<std::string> verify_secret{};  // 401 unless x-ray-signature verifies
  std::shared_ptr<asio::ssl::context> tls{};   // serve https
  char const* bind{"127.0.0.1"};
};

struct receiver_state {
  explicit receiver_state(asio::io_context& ioc, receiver_options o)
      : opts(std::move(o)), acceptor(ioc, {asio::ip::make_address(opts.bind), 0}) {}
  receiver_options opts;
  tcp::acceptor acceptor;
  std::vector<received_request> requests;
  int connections{0};
  int handshake_failures{0};
  std::string sni;
  std::uint64_t body_bytes_written{0};
  bool huge_write_completed{false};
  std::function<void()> on_request{};
  std::vector<std::weak_ptr<tcp::socket>> open;
};

template <class Stream>
asio::awaitable<void> answer(std::shared_ptr<receiver_state> st, Stream& s) {
  boost::beast::flat_buffer buf;
  bhttp::request<bhttp::string_body> req;
  auto [ec, n] = co_await bhttp::async_read(s, buf, req, use_tuple);
  if (ec) co_return;
  received_request r;
  r.method = std::string(req.method_string());
  r.target = std::string(req.target());
  r.body = req.body();
  for (auto const& f : req) {
    std::string name(f.name_string());
    for (auto& c : name)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    r.headers[name] = std::string(f.value());
  }
  st->requests.push_back(r);
  if (st->on_request) st->on_request();
  auto const& o = st->opts;
  auto wait_for_close = [&]() -> asio::awaitable<void> {
    char sink[512];
    for (;;) {
      auto [rec, rn] = co_await s.async_read_some(asio::buffer(sink), use_tuple);
      if (rec) co_return;
    }
  };
  auto status_line = "HTTP/1.1 " + std::to_string(o.status) + " X\r\n";
  switch (o.mode) {
    case answer_mode::respond: {
      bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(o.status), 11};
      for (auto const& [k, v] : o.headers)
        res.set(k, v);
      res.body() = o.body;
      if (o.verify_secret && !receiver_accepts(*o.verify_secret, r.header("x-ray-timestamp"), r.body,
                                               r.header("x-ray-signature"))) {
        res.result(bhttp::status::unauthorized);
        res.body() = "bad signature";
      }
      res.set(bhttp::field::connection, "close");
      res.prepare_payload();
      co_await bhttp::async_write(s, res, use_tuple);
      co_return;
    }
    case answer_mode::never:
      co_await wait_for_close();
      co_return;
    case answer_mode::endless_chunked: {
      auto head = status_line + "Transfer-Encoding: chunked\r\n\r\n";
      if (auto [wec, wn] = co_await asio::async_write(s, asio::buffer(head), use_tuple); wec) co_return;
      std::string const chunk = "1000\r\n" + std::string(4096, 'x') + "\r\n";
      for (;;) {
        auto [wec, wn] = co_await asio::async_write(s, asio::buffer(chunk), use_tuple);
        if (wec) co_return;
        st->body_bytes_written += 4096;
      }
    }
    case answer_mode::stalled_body: {
      auto head = status_line + "Content-Length: 100\r\n\r\n0123456789";
      if (auto [wec, wn] = co_await asio::async_write(s, asio::buffer(head), use_tuple); wec) co_return;
      co_await wait_for_close();
      co_return;
    }
    case answer_mode::huge_body: {
      std::string const out = status_line + "Content-Length: 1048576\r\n\r\n" + std::string(1048576, 'x');
      auto [wec, wn] = co_await asio::async_write(s, asio::buffer(out), use_tuple);
      st->huge_write_completed = !wec;
      co_return;
    }
  }
}

asio::awaitable<void> serve_connection(std::shared_ptr<receiver_state> st,
                                       std::shared_ptr<tcp::socket> sock) {
  if (!st->opts.tls) {
    co_await answer(st, *sock);
    co_return;
  }
  asio::ssl::stream<tcp::socket&> tls(*sock, *st->opts.tls);
  auto [ec] = co_await tls.async_handshake(asio::ssl::stream_base::server, use_tuple);
  if (ec) {
    ++st->handshake_failures;
    co_return;
  }
  if (char const* name = SSL_get_servername(tls.native_handle(), TLSEXT_NAMETYPE_host_name)) st->sni = name;
  co_await answer(st, tls);
}

asio::awaitable<void> accept_loop(std::shared_ptr<receiver_state> st) {
  for (;;) {
    auto sock = std::make_shared<tcp::socket>(st->acceptor.get_executor());
    auto [ec] = co_await st->acceptor.async_accept(*sock, use_tuple);
    if (ec) co_return;
    ++st->connections;
    if (st->opts.mode == answer_mode::huge_body) {
      sock->set_option(asio::socket_base::send_buffer_size(4096));
    }
    st->open.push_back(sock);
    asio::co_spawn(st->acceptor.get_executor(), serve_connection(st, sock), asio::detached);
  }
}

class receiver {
 public:
  receiver(asio::io_context& ioc, receiver_options o)
      : st_(std::make_shared<receiver_state>(ioc, std::move(o))),
        port_(st_->acceptor.local_endpoint().port()) {
    asio::co_spawn(ioc, accept_loop(st_), asio::detached);
  }
  ~receiver() { stop(); }
  std::uint16_t port() const { return port_; }  // also once stopped
  receiver_state& state() { return *st_; }
  // Ends every coroutine of the receiver: no more accepts, open connections closed.
  void stop() {
    boost::system::error_code ec;
    st_->acceptor.close(ec);
    for (auto& w : st_->open)
      if (auto s = w.lock()) s->close(ec);
  }

 private:
  std::shared_ptr<receiver_state> st_;
  std::uint16_t port_;
};

// A resolver seam that answers from tables: `first` on the first call, `later` (when set) on every other.
struct fake_dns {
  std::map<std::string, std::vector<std::string>> first, later;
  int calls{0};
};

asio::awaitable<ray::result<addresses>> fake_resolve(std::shared_ptr<fake_dns> dns, std::string host) {
  int const n = ++dns->calls;
  auto const& table = n == 1 || dns->later.empty() ? dns->first : dns->later;
  auto it = table.find(host);
  if (it == table.end())
    co_return ray::result<addresses>(ray::error{ray::errc::provider_request_failed, "no such host " + host});
  addresses out;
  for (auto const& a : it->second)
    out.push_back(asio::ip::make_address(a));
  co_return out;
}

rj::resolve_fn resolver_of(std::shared_ptr<fake_dns> dns) {
  return [dns](std::string host) { return fake_resolve(dns, std::move(host)); };
}

rj::callback_url url_of(std::string const& text, rj::callback_policy const& p = open_policy()) {
  auto r = rj::check_callback_url(text, p);
  EXPECT_TRUE(r) << text << ": " << (r ? "" : r.error().message);
  return r ? *r : rj::callback_url{};
}

struct delivery_run {
  rj::callback_policy policy{open_policy()};
  std::optional<std::string> secret{};
  std::string body{R"({"job":{"id":"job_0123456789abcdef","status":"succeeded"}})"};
  std::string job_id{"job_0123456789abcdef"};
  std::shared_ptr<fake_dns> dns{std::make_shared<fake_dns>()};

  // Runs deliver() to completion on `ioc`, then stops the receiver so that the loop runs dry.
  rj::delivery operator()(asio::io_context& ioc, rj::callback_url const& url, receiver* rcv = nullptr) {
    std::optional<rj::delivery> out;
    auto const resolve = resolver_of(dns);
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          out = co_await rj::deliver(url, body, job_id, secret, policy, resolve);
          if (rcv) rcv->stop();
        },
        asio::detached);
    ioc.run();
    ioc.restart();
    EXPECT_TRUE(out.has_value());
    return out.value_or(rj::delivery{});
  }
};

bool contains(std::string const& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

std::string http_url(receiver const& r, std::string const& host = "127.0.0.1",
                     std::string const& path = "/") {
  return "http://" + host + ":" + std::to_string(r.port()) + path;
}

// ---------------------------------------------------------------------------------------------------------
// deliver() over plain HTTP

TEST(CallbackDelivery, TheReceiverGetsASignedPostItCanVerifyAndATamperedBodyFailsVerification) {
  asio::io_context ioc;
  receiver rcv(ioc, {.verify_secret = "s3cret"});
  delivery_run run;
  run.secret = "s3cret";
  auto const url = url_of(http_url(rcv, "127.0.0.1", "/hooks/ray?k=v"));
  auto const d = run(ioc, url, &rcv);
  EXPECT_TRUE(d.delivered) << d.error;
  EXPECT_EQ(d.status, 200u);  // the receiver verified the signature (else 401)
  EXPECT_EQ(d.error, "");
  EXPECT_EQ(d.address, "127.0.0.1");
  EXPECT_EQ(run.dns->calls, 0);  // an IP literal is not resolved

  ASSERT_EQ(rcv.state().requests.size(), 1u);
  auto const& r = rcv.state().requests[0];
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.target, "/hooks/ray?k=v");
  EXPECT_EQ(r.body, run.body);
  EXPECT_EQ(r.header("host"), "127.0.0.1:" + std::to_string(rcv.port()));
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(r.header("content-length"), std::to_string(run.body.size()));
  EXPECT_EQ(r.header("user-agent"), std::string("ray/") + RAY_VERSION);
  EXPECT_EQ(r.header("x-ray-job-id"), run.job_id);
  EXPECT_EQ(r.header("connection"), "close");
  auto const ts = r.header("x-ray-timestamp");
  ASSERT_FALSE(ts.empty());
  EXPECT_TRUE(std::all_of(ts.begin(), ts.end(), [](char c) { return c >= '0' && c <= '9'; })) << ts;
  auto const now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  EXPECT_LE(std::llabs(std::stoll(ts) - now), 300);  // Unix seconds, not milliseconds
  auto const sig = r.header("x-ray-signature");
  EXPECT_TRUE(sig.starts_with("sha256=")) << sig;
  EXPECT_EQ(sig.size(), 7u + 64u);

  // The receiver's own recomputation accepts the body as sent and rejects it with one byte changed.
  EXPECT_TRUE(receiver_accepts("s3cret", ts, r.body, sig));
  auto tampered = r.body;
  tampered[tampered.size() / 2] ^= 0x01;
  EXPECT_FALSE(receiver_accepts("s3cret", ts, tampered, sig));
  EXPECT_NE(rj::callback_signature("s3cret", ts, tampered), sig);
  EXPECT_FALSE(receiver_accepts("s3cret", std::to_string(std::stoll(ts) + 1), r.body, sig));  // replayed ts
  EXPECT_FALSE(receiver_accepts("other", ts, r.body, sig));
}

TEST(CallbackDelivery, AWrongSecretIsRejectedByTheReceiverAndNoSecretSendsNoSignature) {
  {
    asio::io_context ioc;
    receiver rcv(ioc, {.verify_secret = "s3cret"});
    delivery_run run;
    run.secret = "not-the-secret";
    auto const d = run(ioc, url_of(http_url(rcv)), &rcv);
    EXPECT_FALSE(d.delivered);
    EXPECT_EQ(d.status, 401u);
    EXPECT_TRUE(d.retryable);
    EXPECT_TRUE(contains(d.error, "401")) << d.error;
    EXPECT_FALSE(contains(d.error, "not-the-secret")) << d.error;
  }
  {
    asio::io_context ioc;
    receiver rcv(ioc, {});
    delivery_run run;
    auto const d = run(ioc, url_of(http_url(rcv)), &rcv);
    EXPECT_TRUE(d.delivered) << d.error;
    ASSERT_EQ(rcv.state().requests.size(), 1u);
    EXPECT_FALSE(rcv.state().requests[0].headers.contains("x-ray-signature"));
  }
}

TEST(CallbackDelivery, ANameResolvingToAPrivateAddressIsRefusedWithoutConnecting) {
  {
    asio::io_context ioc;
    delivery_run run;
    run.policy = {};
    run.dns->first["hooks.example"] = {"10.0.0.5"};
    auto const d = run(ioc, url_of("https://hooks.example/cb", run.policy));
    EXPECT_FALSE(d.delivered);
    EXPECT_FALSE(d.retryable);
    EXPECT_EQ(d.status, 0u);
    EXPECT_EQ(d.address, "10.0.0.5");
    EXPECT_TRUE(contains(d.error, "hooks.example resolves to 10.0.0.5")) << d.error;
    EXPECT_TRUE(contains(d.error, "callbackAllowPrivateNetwork is false")) << d.error;
    EXPECT_EQ(run.dns->calls, 1);
  }
  {
    // Any refused address refuses the name, even behind a public first one.
    asio::io_context ioc;
    delivery_run run;
    run.policy = {};
    run.dns->first["mixed.example"] = {"8.8.8.8", "192.168.1.20"};
    auto const d = run(ioc, url_of("https://mixed.example/cb", run.policy));
    EXPECT_FALSE(d.delivered);
    EXPECT_FALSE(d.retryable);
    EXPECT_EQ(d.address, "192.168.1.20");
  }
  {
    // A receiver that is there: it sees no connection.
    asio::io_context ioc;
    receiver rcv(ioc, {});
    delivery_run run;
    run.policy = {};
    run.dns->first["hooks.example"] = {"127.0.0.1"};
    auto const d = run(ioc, url_of(http_url(rcv, "hooks.example"), run.policy), &rcv);
    EXPECT_FALSE(d.delivered);
    EXPECT_FALSE(d.retryable);
    EXPECT_EQ(d.address, "127.0.0.1");
    EXPECT_EQ(rcv.state().connections, 0);
  }
  {
    // A literal handed over without check_callback_url is still refused at delivery.
    asio::io_context ioc;
    receiver rcv(ioc, {});
    delivery_run run;
    run.policy = {};
    auto const d = run(ioc, url_of(http_url(rcv)), &rcv);
    EXPECT_FALSE(d.delivered);
    EXPECT_FALSE(d.retryable);
    EXPECT_TRUE(contains(d.error, "127.0.0.1 is a private or reserved address")) << d.error;
    EXPECT_EQ(rcv.state().connections, 0);
  }
}

TEST(CallbackDelivery, TheConnectionGoesToTheAddressThatWasChecked) {
  asio::io_context ioc;
  receiver rcv(ioc, {});
  delivery_run run;
  run.dns->first["rebind.test"] = {"127.0.0.1"};
  run.dns->later["rebind.test"] = {"203.0.113.1"};
  auto const d = run(ioc, url_of(http_url(rcv, "rebind.test", "/cb")), &rcv);
  EXPECT_TRUE(d.delivered) << d.error;
  EXPECT_EQ(run.dns->calls, 1);
  EXPECT_EQ(d.address, "127.0.0.1");
  ASSERT_EQ(rcv.state().requests.size(), 1u);
  EXPECT_EQ(rcv.state().requests[0].header("host"), "rebind.test:" + std::to_string(rcv.port()));
}

TEST(CallbackDelivery, AFailedConnectTriesTheNextCheckedAddress) {
  asio::io_context ioc;
  receiver rcv(ioc, {});  // listens on 127.0.0.1 only: 127.0.0.2 refuses the connection
  delivery_run run;
  run.dns->first["two.test"] = {"127.0.0.2", "127.0.0.1"};
  auto const d = run(ioc, url_of(http_url(rcv, "two.test")), &rcv);
  EXPECT_TRUE(d.delivered) << d.error;
  EXPECT_EQ(d.address, "127.0.0.1");
  EXPECT_EQ(rcv.state().connections, 1);
}

TEST(CallbackDelivery, ARefusedConnectionOrAFailedResolutionIsRetryable) {
  std::uint16_t closed = 0;
  {
    asio::io_context probe;
    tcp::acceptor a(probe, {asio::ip::make_address("127.0.0.1"), 0});
    closed = a.local_endpoint().port();
  }
  asio::io_context ioc;
  delivery_run run;
  auto const d = run(ioc, url_of("http://127.0.0.1:" + std::to_string(closed) + "/"));
  EXPECT_FALSE(d.delivered);
  EXPECT_TRUE(d.retryable);
  EXPECT_EQ(d.status, 0u);
  EXPECT_TRUE(contains(d.error, "connecting to 127.0.0.1:" + std::to_string(closed) + " failed")) << d.error;

  auto const e = run(ioc, url_of("http://unknown.test/"));  // the fake DNS has no such name
  EXPECT_FALSE(e.delivered);
  EXPECT_TRUE(e.retryable);
  EXPECT_TRUE(contains(e.error, "unknown.test")) << e.error;
}

TEST(CallbackDelivery, ARedirectIsNotFollowed) {
  asio::io_context ioc;
  receiver rcv(ioc, {.status = 302});
  rcv.state().opts.headers = {{"location", http_url(rcv, "127.0.0.1", "/elsewhere")}};
  delivery_run run;
  auto const d = run(ioc, url_of(http_url(rcv)), &rcv);
  EXPECT_FALSE(d.delivered);
  EXPECT_FALSE(d.retryable);
  EXPECT_EQ(d.status, 302u);
  EXPECT_EQ(d.error, "redirect not followed (status 302)");
  EXPECT_EQ(rcv.state().requests.size(), 1u);
  EXPECT_EQ(rcv.state().connections, 1);
}

TEST(CallbackDelivery, ErrorStatusesAreRetryableExceptGone) {
  struct status_case {
    unsigned status;
    bool retryable;
  };
  for (auto const c : {status_case{503, true}, status_case{500, true}, status_case{404, true},
                       status_case{429, true}, status_case{410, false}}) {
    SCOPED_TRACE(c.status);
    asio::io_context ioc;
    receiver rcv(ioc, {.status = c.status, .body = "down\r\nfor \x01maintenance"});
    delivery_run run;
    auto const d = run(ioc, url_of(http_url(rcv)), &rcv);
    EXPECT_FALSE(d.delivered);
    EXPECT_EQ(d.status, c.status);
    EXPECT_EQ(d.retryable, c.retryable);
    // The answer's body is quoted on one line.
    EXPECT_EQ(d.error, "callback receiver answered " + std::to_string(c.status) + ": down  for  maintenance");
  }
}

TEST(CallbackDelivery, AReceiverThatNeverAnswersIsBoundedByTheTimeout) {
  asio::io_context ioc;
  receiver rcv(ioc, {.mode = answer_mode::never});
  delivery_run run;
  run.policy.timeout = std::chrono::milliseconds(200);
  auto const d = run(ioc, url_of(http_url(rcv)), &rcv);
  EXPECT_FALSE(d.delivered);
  EXPECT_TRUE(d.retryable);
  EXPECT_EQ(d.status, 0u);
  EXPECT_TRUE(contains(d.error, "timed out after 200 ms")) << d.error;
  EXPECT_EQ(rcv.state().requests.size(), 1u);  // it timed out waiting for the answer
}

// A resolver that never answers (but, like system_resolver(), ends when cancelled).
asio::awaitable<ray::result<addresses>> hanging_resolve(std::string) {
  asio::steady_timer forever(co_await asio::this_coro::executor,
                             std::chrono::steady_clock::time_point::max());
  co_await forever.async_wait(use_tuple);
  co_return ray::result<addresses>(ray::error{ray::errc::provider_request_failed, "cancelled"});
}

TEST(CallbackDelivery, AResolutionThatNeverEndsIsBoundedByTheTimeout) {
  asio::io_context ioc;
  std::optional<rj::delivery> out;
  auto policy = open_policy();
  policy.timeout = std::chrono::milliseconds(100);
  auto const url = url_of("http://slow.test/");
  std::string const body = "{}", job = "job_1";
  std::optional<std::string> const secret;
  rj::resolve_fn const resolve = [](std::string host) { return hanging_resolve(std::move(host)); };
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> { out = co_await rj::deliver(url, body, job, secret, policy, resolve); },
      asio::detached);
  ioc.run();
  ASSERT_TRUE(out);
  EXPECT_FALSE(out->delivered);
  EXPECT_TRUE(out->retryable);
  EXPECT_EQ(out->error, "timed out after 100 ms resolving slow.test");
}

TEST(CallbackDelivery, AnEndlessBodyIsNotReadBeyondItsStart) {
  for (unsigned status : {200u, 500u}) {
    SCOPED_TRACE(status);
    asio::io_context ioc;
    receiver rcv(ioc, {.status = status, .mode = answer_mode::endless_chunked});
    delivery_run run;
    run.policy.timeout = std::chrono::seconds(20);
    auto const d = run(ioc, url_of(http_url(rcv)), &rcv);
    EXPECT_EQ(d.status, status);
    EXPECT_EQ(d.delivered, status == 200) << d.error;
    EXPECT_LE(d.error.size(), 1024u);
    // Reading the stream until the 20 s deadline would have taken gigabytes off loopback; stopping after the
    // first 4 KiB leaves at most what the socket buffers hold.
    EXPECT_LT(rcv.state().body_bytes_written, 64u << 20);
  }
}

TEST(CallbackDelivery, AStalledBodyAfterTheStatusIsBoundedAndTheStatusDecides) {
  for (unsigned status : {200u, 500u}) {
    SCOPED_TRACE(status);
    asio::io_context ioc;
    receiver rcv(ioc, {.status = status, .mode = answer_mode::stalled_body});
    delivery_run run;
    run.policy.timeout = std::chrono::milliseconds(200);
    auto const d = run(ioc, url_of(http_url(rcv)), &rcv);
    EXPECT_EQ(d.status, status);
    EXPECT_EQ(d.delivered, status == 200) << d.error;
    if (status == 500) {
      EXPECT_EQ(d.error, "callback receiver answered 500: 0123456789");
    }
  }
}

TEST(CallbackDelivery, AOneMebibyteBodyIsNotReadInFull) {
  asio::io_context ioc;
  receiver rcv(ioc, {.mode = answer_mode::huge_body});
  delivery_run run;
  run.policy.timeout = std::chrono::seconds(20);
  auto const d = run(ioc, url_of(http_url(rcv)), &rcv);
  EXPECT_TRUE(d.delivered) << d.error;
  EXPECT_EQ(d.status, 200u);
  // The receiver's write of the 1 MiB could not finish: the connection closed under it.
  EXPECT_FALSE(rcv.state().huge_write_completed);
}

TEST(CallbackDelivery, AHeaderInjectionInTheJobIdIsRefused) {
  asio::io_context ioc;
  receiver rcv(ioc, {});
  delivery_run run;
  run.job_id = "job_1\r\nx-evil: 1";
  auto const d = run(ioc, url_of(http_url(rcv)), &rcv);
  EXPECT_FALSE(d.delivered);
  EXPECT_FALSE(d.retryable);
  EXPECT_EQ(rcv.state().connections, 0);
}

TEST(CallbackDelivery, CancellingTheAwaitingCoroutineEndsTheDeliveryPromptly) {
  using namespace asio::experimental::awaitable_operators;
  asio::io_context ioc;
  receiver rcv(ioc, {.mode = answer_mode::never});
  asio::steady_timer stop(ioc, std::chrono::steady_clock::time_point::max());
  rcv.state().on_request = [&stop] { stop.cancel(); };  // the event: the request has arrived
  auto const policy = [] {
    auto p = open_policy();
    p.timeout = std::chrono::minutes(10);
    return p;
  }();
  auto const url = url_of(http_url(rcv));
  std::string const body = "{}", job = "job_1";
  std::optional<std::string> const secret;
  auto const resolve = resolver_of(std::make_shared<fake_dns>());
  std::optional<std::size_t> winner;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto r =
            co_await (stop.async_wait(use_tuple) || rj::deliver(url, body, job, secret, policy, resolve));
        winner = r.index();
        rcv.stop();
      },
      asio::detached);
  ioc.run();
  ASSERT_TRUE(winner.has_value());
  EXPECT_EQ(*winner, 0u);
}

TEST(CallbackDelivery, TheSystemResolverAnswersLiteralsAndLocalNames) {
  asio::io_context ioc;
  std::optional<ray::result<addresses>> literal, local, missing;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto const resolve = rj::system_resolver();
        literal = co_await resolve("127.0.0.1");
        local = co_await resolve("localhost");
        missing = co_await resolve("no-such-host.invalid");
      },
      asio::detached);
  ioc.run();
  ASSERT_TRUE(literal && *literal);
  EXPECT_EQ(**literal, addresses{asio::ip::make_address("127.0.0.1")});
  ASSERT_TRUE(local && *local) << (*local ? "" : local->error().message);
  ASSERT_FALSE((*local)->empty());
  for (auto const& a : **local)
    EXPECT_TRUE(a.is_loopback()) << a.to_string();
  ASSERT_TRUE(missing);
  ASSERT_FALSE(*missing);
  EXPECT_TRUE(contains(missing->error().message, "no-such-host.invalid"));
}

// ---------------------------------------------------------------------------------------------------------
// deliver() over TLS, with certificates made here. The trusted one is the process's trust store
// (SSL_CERT_FILE, read once at the first https delivery, so it is set before any).

struct pki {
  std::string cert_pem, key_pem;
};

pki self_signed(char const* common_name, char const* subject_alt_names) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  static long serial = 1;
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 24 * 3600);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<unsigned char const*>(common_name),
                             -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, x, x, nullptr, nullptr, 0);
  X509_EXTENSION* san = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, subject_alt_names);
  X509_add_ext(x, san, -1);
  X509_EXTENSION_free(san);
  X509_sign(x, key, EVP_sha256());
  auto pem = [](auto write) {
    BIO* b = BIO_new(BIO_s_mem());
    write(b);
    char* data = nullptr;
    long const n = BIO_get_mem_data(b, &data);
    std::string out(data, static_cast<std::size_t>(n));
    BIO_free(b);
    return out;
  };
  pki out;
  out.cert_pem = pem([x](BIO* b) { PEM_write_bio_X509(b, x); });
  out.key_pem =
      pem([key](BIO* b) { PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr); });
  X509_free(x);
  EVP_PKEY_free(key);
  return out;
}

pki const& trusted_pki() {
  static pki const p = [] {
    auto made = self_signed("localhost", "DNS:localhost,IP:127.0.0.1");
    static std::string path;  // removed at exit
    path = (std::filesystem::temp_directory_path() /
            ("ray-callback-test-ca-" + std::to_string(getpid()) + ".pem"))
               .string();
    std::ofstream(path) << made.cert_pem;
    std::atexit([] { std::filesystem::remove(path); });
    setenv("SSL_CERT_FILE", path.c_str(), 1);
    setenv("SSL_CERT_DIR", "/nonexistent-ray-callback-test", 1);
    return made;
  }();
  return p;
}

// Before main: whatever test runs first, the TLS client context (made once per process) sees this store.
[[maybe_unused]] bool const trust_store_ready = (trusted_pki(), true);

std::shared_ptr<asio::ssl::context> server_context(pki const& p) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  ctx->use_certificate_chain(asio::buffer(p.cert_pem));
  ctx->use_private_key(asio::buffer(p.key_pem), asio::ssl::context::pem);
  return ctx;
}

std::string https_url(receiver const& r, std::string const& host) {
  return "https://" + host + ":" + std::to_string(r.port()) + "/tls";
}

TEST(CallbackTls, ATrustedReceiverGetsTheCallbackWithSniForAName) {
  auto const& ca = trusted_pki();
  asio::io_context ioc;
  receiver rcv(ioc, {.tls = server_context(ca)});
  delivery_run run;
  run.dns->first["localhost"] = {"127.0.0.1"};
  auto const d = run(ioc, url_of(https_url(rcv, "localhost")), &rcv);
  EXPECT_TRUE(d.delivered) << d.error;
  EXPECT_EQ(d.status, 200u);
  EXPECT_EQ(rcv.state().sni, "localhost");
  ASSERT_EQ(rcv.state().requests.size(), 1u);
  EXPECT_EQ(rcv.state().requests[0].target, "/tls");
}

TEST(CallbackTls, AnAddressIsVerifiedAgainstTheCertificateAndGetsNoSni) {
  auto const& ca = trusted_pki();
  asio::io_context ioc;
  receiver rcv(ioc, {.tls = server_context(ca)});
  delivery_run run;
  auto const d = run(ioc, url_of(https_url(rcv, "127.0.0.1")), &rcv);
  EXPECT_TRUE(d.delivered) << d.error;
  EXPECT_EQ(rcv.state().sni, "");
}

TEST(CallbackTls, AnUntrustedCertificateIsRefused) {
  trusted_pki();
  asio::io_context ioc;
  receiver rcv(ioc, {.tls = server_context(self_signed("localhost", "DNS:localhost,IP:127.0.0.1"))});
  delivery_run run;
  auto const d = run(ioc, url_of(https_url(rcv, "127.0.0.1")), &rcv);
  EXPECT_FALSE(d.delivered);
  EXPECT_TRUE(d.retryable);
  EXPECT_TRUE(contains(d.error, "certificate verify failed")) << d.error;
  EXPECT_TRUE(rcv.state().requests.empty());
}

TEST(CallbackTls, ACertificateForAnotherNameIsRefused) {
  auto const& ca = trusted_pki();
  asio::io_context ioc;
  receiver rcv(ioc, {.tls = server_context(ca)});
  delivery_run run;
  run.dns->first["rebind.test"] = {"127.0.0.1"};
  auto const d = run(ioc, url_of(https_url(rcv, "rebind.test")), &rcv);
  EXPECT_FALSE(d.delivered);
  EXPECT_TRUE(contains(d.error, "hostname mismatch")) << d.error;
  EXPECT_TRUE(rcv.state().requests.empty());
}

}  // namespace
