// HTTP framing and limits of the real `ray` binary (http-api.md §1, §6, §7), spoken to in raw bytes over
// loopback. Every test starts its own `ray serve --port 0` with the limits it exercises; timing assertions
// are multiples of the configured interval, and every wait is a poll with a deadline.
#include "integration/http_test_util.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

namespace {

using namespace ray::itest;
namespace rt = ray::test;
namespace json = boost::json;

class HttpLimits : public ::testing::Test {
 protected:
  // Starts ray with `server` merged into the test config (profile tiny, mock backend, no latency).
  void start(json::object server = {}, json::object adapter = {}) {
    if (!server.contains("requestBodyLimitBytes")) server["requestBodyLimitBytes"] = kBodyLimit;
    srv_ = std::make_unique<ray_server>(test_config(std::move(server), std::move(adapter)));
    ASSERT_TRUE(srv_->wait_listening());
  }

  rt::raw_client connect() { return srv_->connect(); }

  // One request on a fresh connection; the response (asserted present).
  std::optional<rt::http_response> once(std::string const& request, bool head = false) {
    auto c = connect();
    EXPECT_TRUE(c.send(request)) << c.last_error();
    auto r = c.read_response(rt::in(kIo), head);
    EXPECT_TRUE(r) << c.last_error();
    return r;
  }

  void TearDown() override {
    if (HasFailure() && srv_) std::cerr << "ray output (tail):\n" << srv_->output_tail() << "\n";
  }

  static constexpr std::int64_t kBodyLimit = 1000;
  std::unique_ptr<ray_server> srv_;
};

// ---- basics: probes, routing, request ids
// ----------------------------------------------------------------------

TEST_F(HttpLimits, LivezAnswersOkAndKeepsTheConnectionAlive) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto c = connect();
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(c.send(get("/livez"))) << c.last_error();
    auto r = c.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c.last_error();
    EXPECT_EQ(r->status, 200) << r->describe();
    EXPECT_FALSE(r->connection_close()) << r->describe();
    auto body = json_body(*r);
    ASSERT_TRUE(body) << r->describe();
    EXPECT_EQ(rt::string_field(*body, "status"), "ok");
    EXPECT_EQ(rt::string_field(*body, "service"), "ray-gateway");
    EXPECT_TRUE(r->header("content-type").value_or("").starts_with("application/json")) << r->describe();
  }
}

TEST_F(HttpLimits, HeadLivezIs200WithoutBody) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto c = connect();
  ASSERT_TRUE(c.send(req("HEAD", "/livez", std::string(kHost) + "Connection: close\r\n"))) << c.last_error();
  auto r = c.read_response(rt::in(kIo), /*head_request=*/true);
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_EQ(r->status, 200) << r->describe();
  EXPECT_TRUE(r->has_header("x-request-id")) << r->describe();
  // Whatever Content-Length says, no body bytes follow the header section.
  auto rest = c.read_until_closed(rt::in(kIo));
  EXPECT_TRUE(c.closed()) << "server did not close after `Connection: close`";
  EXPECT_EQ(rest, "") << "HEAD response carried body bytes";
}

TEST_F(HttpLimits, UnknownPathIs404NotFoundAndConnectionStaysUsable) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto c = connect();
  ASSERT_TRUE(c.send(get("/no/such/path"))) << c.last_error();
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_TRUE(is_error(*r, 404, "not_found"));
  EXPECT_FALSE(r->connection_close()) << "a 404 on a GET need not close the connection:\n" << r->describe();
  EXPECT_TRUE(connection_consistent(c, *r));
}

TEST_F(HttpLimits, WrongMethodOnKnownPathIs405WithAllow) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto c = connect();
  ASSERT_TRUE(c.send(req("DELETE", "/livez", kHost))) << c.last_error();
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_TRUE(is_error(*r, 405, "method_not_allowed"));
  auto allow = r->header("allow");
  ASSERT_TRUE(allow) << "405 without an `allow` header:\n" << r->describe();
  EXPECT_NE(allow->find("GET"), std::string::npos) << *allow;
  EXPECT_NE(allow->find("HEAD"), std::string::npos) << *allow;
  EXPECT_TRUE(connection_consistent(c, *r));
}

TEST_F(HttpLimits, ValidRequestIdIsEchoedOtherwiseOneIsGenerated) {
  ASSERT_NO_FATAL_FAILURE(start());
  std::string const max_len(128, 'a');
  struct probe {
    std::string sent;  // empty = no header
    bool echoed;
  };
  std::vector<probe> const probes{
      {"abc-DEF_1.2", true}, {max_len, true},        {"", false},
      {"bad id!", false},    {max_len + "a", false}, {"semi;colon", false},
  };
  for (auto const& p : probes) {
    for (std::string target : {"/livez", "/nope"}) {  // success and error responses alike
      SCOPED_TRACE("x-request-id `" + p.sent + "` on " + target);
      std::string extra = p.sent.empty() ? "" : "X-Request-Id: " + p.sent + "\r\n";
      auto r = once(get(target, extra));
      ASSERT_TRUE(r);
      auto ids = r->header_values("x-request-id");
      ASSERT_EQ(ids.size(), 1u) << r->describe();
      if (p.echoed) {
        EXPECT_EQ(ids[0], p.sent);
      } else {
        EXPECT_TRUE(is_generated_request_id(ids[0])) << "generated id `" << ids[0] << "` is not req_<16 hex>";
      }
    }
  }
  // Two generated ids differ.
  auto a = once(get("/livez"));
  auto b = once(get("/livez"));
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->header("x-request-id"), b->header("x-request-id"));
}

// ---- header section limits
// ------------------------------------------------------------------------------------

TEST_F(HttpLimits, HeaderSectionOverMaxHeaderBytesIs431AndCloses) {
  ASSERT_NO_FATAL_FAILURE(start());  // maxHeaderBytes default 12288
  {
    auto under = once(get("/livez", "X-Fill: " + std::string(11'000, 'a') + "\r\n"));
    ASSERT_TRUE(under);
    EXPECT_EQ(under->status, 200) << "an 11 000-byte header section is within 12 288:\n" << under->describe();
  }
  auto c = connect();
  c.send(get("/livez", "X-Fill: " + std::string(13'000, 'a') + "\r\n"));  // may fail once the server closed
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_TRUE(is_error(*r, 431, "request_headers_too_large"));
  EXPECT_TRUE(closes_after(c, *r));
}

TEST_F(HttpLimits, MoreThanMaxHeadersFieldsIs431AndCloses) {
  ASSERT_NO_FATAL_FAILURE(start({{"maxHeaders", 8}}));
  auto fields = [](int n) {  // Host plus n-1 others
    std::string h;
    for (int i = 1; i < n; ++i)
      h += "X-H" + std::to_string(i) + ": v\r\n";
    return h;
  };
  {
    auto at_limit = once(get("/livez", fields(8)));
    ASSERT_TRUE(at_limit);
    EXPECT_EQ(at_limit->status, 200) << "8 fields with maxHeaders 8 must pass:\n" << at_limit->describe();
  }
  auto c = connect();
  c.send(get("/livez", fields(9)));
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_TRUE(is_error(*r, 431, "request_headers_too_large")) << "9 fields with maxHeaders 8";
  EXPECT_TRUE(closes_after(c, *r));
}

TEST_F(HttpLimits, TargetOverMaxTargetBytesIs414) {
  ASSERT_NO_FATAL_FAILURE(start());  // maxTargetBytes 8192, maxHeaderBytes 12288
  {
    std::string target = "/livez?pad=" + std::string(8000, 'p');
    auto ok = once(get(target));
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->status, 200) << "an 8011-byte target is within 8192:\n" << ok->describe();
  }
  auto c = connect();
  std::string target = "/livez?pad=" + std::string(9 * 1024, 'p');
  c.send(get(target));
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_TRUE(is_error(*r, 414, "request_target_too_large"));
  EXPECT_TRUE(connection_consistent(c, *r));
}

// ---- Host
// --------------------------------------------------------------------------------------------------------

TEST_F(HttpLimits, MissingHostOnHttp11Is400) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto c = connect();
  ASSERT_TRUE(c.send("GET /livez HTTP/1.1\r\nAccept: */*\r\n\r\n")) << c.last_error();
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_TRUE(is_error(*r, 400, "invalid_request"));
  EXPECT_EQ(r->header("x-should-retry").value_or(""), "false") << r->describe();
  EXPECT_TRUE(connection_consistent(c, *r));
}

TEST_F(HttpLimits, Http10WithoutHostIsAccepted) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto c = connect();
  ASSERT_TRUE(c.send("GET /livez HTTP/1.0\r\n\r\n")) << c.last_error();
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_EQ(r->status, 200) << "Host is required on HTTP/1.1 only:\n" << r->describe();
  // HTTP/1.0 without keep-alive: the server closes after the response.
  EXPECT_TRUE(c.is_closed_by_peer(rt::in(kIo)));
}

TEST_F(HttpLimits, InvalidHostValuesAre400) {
  ASSERT_NO_FATAL_FAILURE(start());
  for (std::string host : {"a b", "exa$mple", "localhost:0", "localhost:70000", "[::1", "local/host"}) {
    SCOPED_TRACE("Host: `" + host + "`");
    auto c = connect();
    ASSERT_TRUE(c.send(req("GET", "/livez", "Host: " + host + "\r\n"))) << c.last_error();
    auto r = c.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c.last_error();
    EXPECT_TRUE(is_error(*r, 400, "invalid_request"));
    EXPECT_TRUE(connection_consistent(c, *r));
  }
}

TEST_F(HttpLimits, TwoHostHeadersAre400) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto r = once(req("GET", "/livez", "Host: localhost\r\nHost: other\r\n"));
  ASSERT_TRUE(r);
  EXPECT_TRUE(is_error(*r, 400, "invalid_request"));
}

TEST_F(HttpLimits, ValidHostValuesAreAccepted) {
  ASSERT_NO_FATAL_FAILURE(start());
  for (std::string host : {"localhost", "localhost:3000", "my_container:80", "10.0.0.1", "10.0.0.1:65535",
                           "[::1]:8080", "[::1]", "api.example.com"}) {
    SCOPED_TRACE("Host: `" + host + "`");
    auto r = once(req("GET", "/livez", "Host: " + host + "\r\n"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->describe();
  }
}

TEST_F(HttpLimits, AbsoluteFormTargetMustNameTheHostAuthority) {
  ASSERT_NO_FATAL_FAILURE(start());
  {
    auto r = once(req("GET", "http://other.host/livez", kHost));
    ASSERT_TRUE(r);
    EXPECT_TRUE(is_error(*r, 400, "invalid_request")) << "absolute-form naming another host";
  }
  {
    auto r = once(req("GET", "http://localhost/livez", kHost));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << "absolute-form naming the Host authority:\n" << r->describe();
  }
}

// ---- POST bodies: content type, encoding, length
// -------------------------------------------------------------

TEST_F(HttpLimits, InferWithJsonAndVendorJsonContentTypesIsAccepted) {
  ASSERT_NO_FATAL_FAILURE(start());
  for (std::string ct : {"application/json", "application/json; charset=utf-8", "application/vnd.x+json",
                         "Application/JSON"}) {
    SCOPED_TRACE("content-type " + ct);
    auto r = once(post("/v1/infer", R"({"input":"hello"})", ct));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->describe();
    auto body = json_body(*r);
    ASSERT_TRUE(body) << r->describe();
    EXPECT_TRUE(body->contains("output")) << r->describe();
  }
}

TEST_F(HttpLimits, TextPlainBodyIs415) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto c = connect();
  ASSERT_TRUE(c.send(post("/v1/infer", R"({"input":"hello"})", "text/plain"))) << c.last_error();
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_TRUE(is_error(*r, 415, "unsupported_media_type"));
  EXPECT_TRUE(connection_consistent(c, *r));
}

TEST_F(HttpLimits, MissingContentTypeWithABodyIs415) {
  ASSERT_NO_FATAL_FAILURE(start());
  std::string body = R"({"input":"hello"})";
  auto r = once(req("POST", "/v1/infer",
                    std::string(kHost) + "Content-Length: " + std::to_string(body.size()) + "\r\n", body));
  ASSERT_TRUE(r);
  EXPECT_TRUE(is_error(*r, 415, "unsupported_media_type"));
}

TEST_F(HttpLimits, AnswerBeforeTheWholeBodyCarriesConnectionClose) {
  // Content type is a header-section check: Ray answers 415 without waiting for the 100 declared bytes (only
  // 10 are sent), so it must say `connection: close` and close.
  ASSERT_NO_FATAL_FAILURE(start({{"bodyTimeoutMs", 30'000}}));
  auto c = connect();
  ASSERT_TRUE(c.send(post_head("/v1/infer", 100, "text/plain") + R"({"input":)")) << c.last_error();
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_TRUE(is_error(*r, 415, "unsupported_media_type"));
  EXPECT_TRUE(closes_after(c, *r));
}

TEST_F(HttpLimits, ContentEncodingOtherThanIdentityIs415) {
  ASSERT_NO_FATAL_FAILURE(start());
  {
    auto c = connect();
    ASSERT_TRUE(c.send(post_json("/v1/infer", R"({"input":"hello"})", "Content-Encoding: gzip\r\n")))
        << c.last_error();
    auto r = c.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c.last_error();
    EXPECT_TRUE(is_error(*r, 415, "unsupported_content_encoding"));
    EXPECT_TRUE(connection_consistent(c, *r));
  }
  {
    auto r = once(post_json("/v1/infer", R"({"input":"hello"})", "Content-Encoding: identity\r\n"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << "Content-Encoding: identity is accepted:\n" << r->describe();
  }
}

TEST_F(HttpLimits, BodyAtTheLimitIsAcceptedOneByteMoreIs413) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto body_of = [](std::size_t size) {
    std::string b = R"({"input":")";
    b += std::string(size - b.size() - 2, 'x');
    return b + "\"}";
  };
  {
    auto body = body_of(kBodyLimit);
    ASSERT_EQ(body.size(), static_cast<std::size_t>(kBodyLimit));
    auto r = once(post_json("/v1/infer", body));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << "a body of exactly requestBodyLimitBytes:\n" << r->describe();
  }
  {
    auto c = connect();
    c.send(post_json("/v1/infer", body_of(kBodyLimit + 1)));
    auto r = c.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c.last_error();
    EXPECT_TRUE(is_error(*r, 413, "body_too_large"));
    EXPECT_EQ(r->header("x-should-retry").value_or(""), "false") << r->describe();
    EXPECT_TRUE(connection_consistent(c, *r));
  }
}

TEST_F(HttpLimits, DeclaredLengthOverLimitIs413BeforeTheBodyIsSent) {
  // bodyTimeoutMs is far beyond the read deadline: a server waiting for the body could not answer in time.
  ASSERT_NO_FATAL_FAILURE(start({{"bodyTimeoutMs", 60'000}}));
  auto c = connect();
  ASSERT_TRUE(c.send(post_head("/v1/infer", 5000, "application/json"))) << c.last_error();
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << "no response to a declared Content-Length over the limit, body unsent: "
                 << c.last_error();
  EXPECT_TRUE(is_error(*r, 413, "body_too_large"));
  EXPECT_EQ(r->header("x-should-retry").value_or(""), "false") << r->describe();
  EXPECT_TRUE(closes_after(c, *r));
}

TEST_F(HttpLimits, ChunkedBodyWithinTheLimitIsAccepted) {
  ASSERT_NO_FATAL_FAILURE(start());
  std::string h = std::string(kHost) + "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n";
  auto r = once(req("POST", "/v1/infer", h, "6\r\n{\"inpu\r\n8\r\nt\":\"hi\"}\r\n0\r\n\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->describe();
}

TEST_F(HttpLimits, ChunkedBodyOverTheLimitIs413) {
  ASSERT_NO_FATAL_FAILURE(start({{"bodyTimeoutMs", 60'000}}));
  auto c = connect();
  std::string h = std::string(kHost) + "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n";
  std::string chunks;
  for (int i = 0; i < 3; ++i)
    chunks += "1f4\r\n" + std::string(500, ' ') + "\r\n";  // 1500 bytes > 1000
  c.send(req("POST", "/v1/infer", h, chunks));             // no last chunk: still open
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_TRUE(is_error(*r, 413, "body_too_large"));
  EXPECT_TRUE(closes_after(c, *r)) << "answered before the body ended";
}

TEST_F(HttpLimits, ContentLengthWithTransferEncodingIsRejectedAndClosed) {
  // RFC 9112 §6.3: a request with both is a smuggling vector; the server must close after responding.
  ASSERT_NO_FATAL_FAILURE(start());
  auto c = connect();
  std::string h = std::string(kHost) +
                  "Content-Type: application/json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n";
  c.send(req("POST", "/v1/infer", h, "0\r\n\r\n"));
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_EQ(r->status, 400) << r->describe();
  EXPECT_TRUE(c.is_closed_by_peer(rt::in(kIo)))
      << "connection left open after Content-Length + Transfer-Encoding";
}

TEST_F(HttpLimits, MalformedContentLengthIs400) {
  ASSERT_NO_FATAL_FAILURE(start());
  for (std::string cl : {"abc", "12, 13", "-1"}) {
    SCOPED_TRACE("Content-Length: " + cl);
    auto c = connect();
    c.send(req("POST", "/v1/infer",
               std::string(kHost) + "Content-Type: application/json\r\nContent-Length: " + cl + "\r\n",
               "{}"));
    auto r = c.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c.last_error();
    EXPECT_EQ(r->status, 400) << r->describe();
    EXPECT_TRUE(c.is_closed_by_peer(rt::in(kIo))) << "framing is unknowable: the server must close";
  }
}

// ---- Expect
// -------------------------------------------------------------------------------------------------------

TEST_F(HttpLimits, Expect100ContinueGetsInterimThenFinalAfterTheBody) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto c = connect();
  std::string body = R"({"input":"hello"})";
  ASSERT_TRUE(c.send(post_head("/v1/infer", body.size(), "application/json", "Expect: 100-continue\r\n")))
      << c.last_error();
  auto interim = c.read_response(rt::in(kIo));
  ASSERT_TRUE(interim) << "no 100 Continue: " << c.last_error();
  EXPECT_EQ(interim->status, 100) << interim->describe();
  EXPECT_EQ(interim->version, "HTTP/1.1");
  ASSERT_TRUE(c.send(body)) << c.last_error();
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_EQ(r->status, 200) << r->describe();
  auto json = json_body(*r);
  ASSERT_TRUE(json) << r->describe();
  EXPECT_TRUE(json->contains("output")) << r->describe();
}

TEST_F(HttpLimits, Expect100WithBadContentTypeIs415WithoutContinue) {
  ASSERT_NO_FATAL_FAILURE(start({{"bodyTimeoutMs", 60'000}}));
  auto c = connect();
  ASSERT_TRUE(c.send(post_head("/v1/infer", 17, "text/plain", "Expect: 100-continue\r\n"))) << c.last_error();
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_NE(r->status, 100) << "100 Continue sent although the content type is refused";
  EXPECT_TRUE(is_error(*r, 415, "unsupported_media_type"));
  EXPECT_TRUE(closes_after(c, *r));
}

TEST_F(HttpLimits, Expect100WithTooLargeLengthIs413WithoutContinue) {
  ASSERT_NO_FATAL_FAILURE(start({{"bodyTimeoutMs", 60'000}}));
  auto c = connect();
  ASSERT_TRUE(c.send(post_head("/v1/infer", 5000, "application/json", "Expect: 100-continue\r\n")))
      << c.last_error();
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_NE(r->status, 100) << "100 Continue sent although the declared length is over the limit";
  EXPECT_TRUE(is_error(*r, 413, "body_too_large"));
  EXPECT_TRUE(closes_after(c, *r));
}

TEST_F(HttpLimits, Expect100WithoutContentLengthIs411) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto c = connect();
  ASSERT_TRUE(c.send(req("POST", "/v1/infer",
                         std::string(kHost) + "Content-Type: application/json\r\nExpect: 100-continue\r\n")))
      << c.last_error();
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_NE(r->status, 100) << r->describe();
  EXPECT_TRUE(is_error(*r, 411, "length_required"));
  EXPECT_TRUE(connection_consistent(c, *r));
}

TEST_F(HttpLimits, UnknownExpectationIs417) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto c = connect();
  std::string body = R"({"input":"hello"})";
  ASSERT_TRUE(c.send(post_json("/v1/infer", body, "Expect: something-else\r\n"))) << c.last_error();
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_TRUE(is_error(*r, 417, "unsupported_expectation"));
  EXPECT_TRUE(connection_consistent(c, *r));
}

// ---- timeouts
// -------------------------------------------------------------------------------------------------

constexpr auto kReadTimeout = 200ms;  // headersTimeoutMs and bodyTimeoutMs in the timeout tests
constexpr auto kIdleTimeout = 300ms;  // keepAliveTimeoutMs in the keep-alive test

// elapsed ∈ [1×, 5×] interval, with a readable message.
::testing::AssertionResult within_1x_5x(std::chrono::steady_clock::duration elapsed,
                                        std::chrono::milliseconds interval) {
  if (elapsed >= interval && elapsed <= 5 * interval) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "took " << rt::ms(elapsed) << " ms, expected within [1x, 5x] of " << interval.count() << " ms";
}

TEST_F(HttpLimits, PartialHeaderSectionTimesOutWith408AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({{"headersTimeoutMs", kReadTimeout.count()},
                                 {"bodyTimeoutMs", 60'000},
                                 {"keepAliveTimeoutMs", 60'000}}));
  auto c = connect();  // the server's timer cannot start before the connection exists
  ASSERT_TRUE(c.send("GET /livez HTTP/1.1\r\nHost: localhost\r\nX-Partial: ab")) << c.last_error();
  auto r = c.read_response(c.connected_at() + 20 * kReadTimeout);
  ASSERT_TRUE(r) << "no response to a stalled header section within 20x headersTimeoutMs: " << c.last_error();
  EXPECT_TRUE(is_error(*r, 408, "request_read_timeout"));
  EXPECT_TRUE(within_1x_5x(r->head_at - c.connected_at(), kReadTimeout));
  EXPECT_TRUE(closes_after(c, *r));
}

TEST_F(HttpLimits, HeaderTimeoutCoversTheWholeSectionNotEachByte) {
  // Slowloris: one header byte every headersTimeoutMs/4 keeps the socket busy but must not extend the
  // deadline.
  ASSERT_NO_FATAL_FAILURE(start({{"headersTimeoutMs", kReadTimeout.count()},
                                 {"bodyTimeoutMs", 60'000},
                                 {"keepAliveTimeoutMs", 60'000}}));
  auto c = connect();
  ASSERT_TRUE(c.send("GET /livez HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")) << c.last_error();
  auto const give_up = c.connected_at() + 20 * kReadTimeout;
  while (std::chrono::steady_clock::now() < give_up && !c.closed()) {
    // The pause between bytes is a wait for the server's answer with a deadline.
    if (c.wait_readable(rt::in(kReadTimeout / 4))) break;
    if (!c.send("a")) break;
  }
  auto r = c.read_response(give_up);
  ASSERT_TRUE(r) << "no 408 while trickling header bytes for 20x headersTimeoutMs: " << c.last_error();
  EXPECT_TRUE(is_error(*r, 408, "request_read_timeout"));
  EXPECT_TRUE(within_1x_5x(r->head_at - c.connected_at(), kReadTimeout));
}

TEST_F(HttpLimits, StalledBodyTimesOutWith408AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({{"headersTimeoutMs", 60'000},
                                 {"bodyTimeoutMs", kReadTimeout.count()},
                                 {"keepAliveTimeoutMs", 60'000}}));
  auto c = connect();
  auto const t0 = std::chrono::steady_clock::now();  // before the header section: the body timer starts later
  ASSERT_TRUE(c.send(post_head("/v1/infer", 100, "application/json") + R"({"input":")")) << c.last_error();
  auto r = c.read_response(t0 + 20 * kReadTimeout);
  ASSERT_TRUE(r) << "no response to a stalled body within 20x bodyTimeoutMs: " << c.last_error();
  EXPECT_TRUE(is_error(*r, 408, "request_read_timeout"));
  EXPECT_TRUE(within_1x_5x(r->head_at - t0, kReadTimeout));
  EXPECT_TRUE(closes_after(c, *r));
}

TEST_F(HttpLimits, IdleKeepAliveConnectionIsClosedQuietlyAfterKeepAliveTimeout) {
  ASSERT_NO_FATAL_FAILURE(start({{"headersTimeoutMs", 60'000},
                                 {"bodyTimeoutMs", 60'000},
                                 {"keepAliveTimeoutMs", kIdleTimeout.count()}}));
  auto c = connect();
  auto const t0 =
      std::chrono::steady_clock::now();  // before the request: the idle timer starts after the response
  ASSERT_TRUE(c.send(get("/livez"))) << c.last_error();
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  ASSERT_EQ(r->status, 200) << r->describe();
  ASSERT_FALSE(r->connection_close()) << r->describe();
  ASSERT_TRUE(c.is_closed_by_peer(t0 + 20 * kIdleTimeout))
      << "idle keep-alive connection still open after 20x keepAliveTimeoutMs";
  EXPECT_TRUE(c.pending().empty()) << "server sent bytes when closing an idle connection: " << c.pending();
  EXPECT_TRUE(within_1x_5x(*c.closed_at() - t0, kIdleTimeout));
}

// ---- per-connection and connection-count limits
// ---------------------------------------------------------------

TEST_F(HttpLimits, PipelinedRequestsStopAtMaxRequestsPerConnection) {
  ASSERT_NO_FATAL_FAILURE(start({{"maxRequestsPerConnection", 3}}));
  auto c = connect();
  std::string four = get("/livez") + get("/livez") + get("/livez") + get("/livez?fourth");
  ASSERT_TRUE(c.send(four)) << c.last_error();
  for (int i = 1; i <= 3; ++i) {
    SCOPED_TRACE("response " + std::to_string(i));
    auto r = c.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c.last_error();
    EXPECT_EQ(r->status, 200) << r->describe();
    EXPECT_EQ(r->connection_close(), i == 3) << r->describe();
  }
  ASSERT_TRUE(c.is_closed_by_peer(rt::in(kIo))) << "connection open after maxRequestsPerConnection responses";
  EXPECT_TRUE(c.pending().empty()) << "the 4th pipelined request was answered: " << c.pending();
}

TEST_F(HttpLimits, SequentialRequestsStopAtMaxRequestsPerConnection) {
  ASSERT_NO_FATAL_FAILURE(start({{"maxRequestsPerConnection", 3}}));
  auto c = connect();
  for (int i = 1; i <= 3; ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    ASSERT_TRUE(c.send(i == 2 ? post_json("/v1/infer", R"({"input":"hi"})") : get("/livez")))
        << c.last_error();
    auto r = c.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c.last_error();
    EXPECT_EQ(r->status, 200) << r->describe();
    EXPECT_EQ(r->connection_close(), i == 3) << r->describe();
    if (i == 3) {
      EXPECT_TRUE(closes_after(c, *r));
    }
  }
}

// Four connections each in the middle of a request body (so none can be shed, and no minimum rate applies):
// each waits for the server's 100 Continue, sent just before the server starts reading the body.
std::vector<rt::raw_client> open_mid_body(std::function<rt::raw_client()> const& connect) {
  std::vector<rt::raw_client> open;
  for (int i = 0; i < 4; ++i) {
    open.push_back(connect());
    auto& c = open.back();
    EXPECT_TRUE(c.send(post_head("/v1/infer", 100, "application/json", "Expect: 100-continue\r\n")));
    auto interim = c.read_response(rt::in(kIo));
    EXPECT_TRUE(interim && interim->status == 100) << "connection " << i + 1 << ": " << c.last_error();
    EXPECT_TRUE(c.send(R"({"in)"));
  }
  return open;
}

TEST_F(HttpLimits, ConnectionsBeyondMaxConnectionsGet503OverloadedAndClose) {
  // Nothing to shed (every connection is reading a body): the new one is refused.
  ASSERT_NO_FATAL_FAILURE(start({{"maxConnections", 4},
                                 {"headersTimeoutMs", 60'000},
                                 {"bodyTimeoutMs", 60'000},
                                 {"minBodyBytesPerSecond", 0},
                                 {"keepAliveTimeoutMs", 60'000}}));
  auto open = open_mid_body([this] { return connect(); });
  ASSERT_FALSE(HasFailure());
  {
    auto fifth = connect();
    fifth.send(get("/livez"));
    auto r = fifth.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << "5th connection: " << fifth.last_error();
    EXPECT_TRUE(is_error(*r, 503, "overloaded"));
    auto retry = r->header("retry-after");
    ASSERT_TRUE(retry) << "503 overloaded without Retry-After:\n" << r->describe();
    int secs = std::atoi(retry->c_str());
    EXPECT_TRUE(secs >= 1 && secs <= 30) << "Retry-After " << *retry;
    EXPECT_TRUE(r->has_header("retry-after-ms")) << r->describe();
    EXPECT_TRUE(closes_after(fifth, *r));
  }
  // The four are untouched: one finishes its body and is answered.
  std::string rest = R"(put":"hi"})";
  rest.append(100 - 4 - rest.size(), ' ');
  ASSERT_TRUE(open[1].send(rest));
  auto still = open[1].read_response(rt::in(kIo));
  ASSERT_TRUE(still) << open[1].last_error();
  EXPECT_EQ(still->status, 200) << still->describe();

  // Closing one frees a slot. The server learns of the close asynchronously: retry until the deadline.
  open.erase(open.begin());
  auto const until = rt::in(kIo);
  std::optional<rt::http_response> last;
  while (std::chrono::steady_clock::now() < until) {
    auto c = connect();
    c.send(get("/livez"));
    last = c.read_response(until);
    if (last && last->status == 200) break;
  }
  ASSERT_TRUE(last) << "no response on a new connection after closing one";
  EXPECT_EQ(last->status, 200) << "a slot freed by closing a connection was never reused:\n"
                               << last->describe();
}

// Issue 12 (slowloris): at the cap a new connection is not refused while an idle keep-alive connection can be
// closed instead — the oldest one goes, quietly, as HTTP allows at any time.
TEST_F(HttpLimits, AtMaxConnectionsTheOldestIdleKeepAliveConnectionIsShedForANewOne) {
  ASSERT_NO_FATAL_FAILURE(
      start({{"maxConnections", 4}, {"headersTimeoutMs", 60'000}, {"keepAliveTimeoutMs", 60'000}}));
  std::vector<rt::raw_client> open;
  for (int i = 0; i < 4; ++i) {  // each one served once: idle keep-alive, oldest first
    open.push_back(connect());
    ASSERT_TRUE(open.back().send(get("/livez"))) << open.back().last_error();
    auto r = open.back().read_response(rt::in(kIo));
    ASSERT_TRUE(r && r->status == 200) << "connection " << i + 1 << ": " << open.back().last_error();
  }
  auto fifth = connect();
  ASSERT_TRUE(fifth.send(get("/livez")));
  auto r = fifth.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << fifth.last_error();
  EXPECT_EQ(r->status, 200) << "a new connection was refused although idle ones could be shed:\n"
                            << r->describe();
  EXPECT_TRUE(open[0].is_closed_by_peer(rt::in(kIo))) << "the oldest idle connection was not the one shed";
  EXPECT_TRUE(open[0].pending().empty())
      << "an idle connection was sent bytes when shed: " << open[0].pending();
  for (std::size_t i = 1; i < open.size(); ++i) {
    ASSERT_TRUE(open[i].send(get("/livez")));
    auto again = open[i].read_response(rt::in(kIo));
    ASSERT_TRUE(again) << "connection " << i + 1 << " was shed too: " << open[i].last_error();
    EXPECT_EQ(again->status, 200) << again->describe();
  }
}

// Issue 12: 300 connections trickling header bytes filled the cap and every normal client got 503 for the
// whole header deadline. Now, at the cap, the connection longest in its header phase is shed (with a 503 that
// says why) and the new client is served.
TEST_F(HttpLimits, AtMaxConnectionsTheOldestHeaderPhaseConnectionIsShedForANewOne) {
  ASSERT_NO_FATAL_FAILURE(start({{"maxConnections", 4},
                                 {"headersTimeoutMs", 60'000},
                                 {"headersTimeoutUnderPressureMs", 60'000},
                                 {"keepAliveTimeoutMs", 60'000}}));
  std::vector<rt::raw_client> slow;
  for (int i = 0; i < 4; ++i) {
    slow.push_back(connect());
    // Accepted in the order they connected (the listen backlog is FIFO): slow[0] is the oldest.
    ASSERT_TRUE(slow.back().send("GET /livez HTTP/1.1\r\nHost: localhost\r\nX-Slow: a"));
  }
  // A connection is judged slow once it has spent 20 ms in its header phase (a younger one may just not have
  // been read yet): until then a new connection is refused, after it the oldest slow one makes room.
  std::optional<rt::http_response> r;
  ASSERT_TRUE(eventually([&] {
    auto fresh = connect();
    fresh.send(get("/livez"));
    r = fresh.read_response(rt::in(kIo));
    return r && r->status == 200;
  })) << "a new connection was never served while slow header-phase connections held the cap"
      << (r ? "\n" + r->describe() : std::string());
  auto shed = slow[0].read_response(rt::in(kIo));
  ASSERT_TRUE(shed) << "the oldest header-phase connection got no answer: " << slow[0].last_error();
  EXPECT_TRUE(is_error(*shed, 503, "overloaded"));
  EXPECT_TRUE(shed->has_header("retry-after")) << shed->describe();
  EXPECT_TRUE(closes_after(slow[0], *shed));
  for (std::size_t i = 1; i < slow.size(); ++i)
    EXPECT_FALSE(slow[i].closed()) << "slow connection " << i + 1 << " was shed too";
}

// Under connection pressure (>= 90 % of maxConnections) a connection still sending its header section gets
// server.headersTimeoutUnderPressureMs, not the (long) server.headersTimeoutMs.
TEST_F(HttpLimits, UnderConnectionPressureTheHeaderDeadlineIsShortened) {
  constexpr auto kPressureTimeout = 300ms;
  ASSERT_NO_FATAL_FAILURE(start({{"maxConnections", 10},
                                 {"headersTimeoutMs", 60'000},
                                 {"headersTimeoutUnderPressureMs", kPressureTimeout.count()},
                                 {"keepAliveTimeoutMs", 60'000}}));
  std::vector<rt::raw_client> slow;
  for (int i = 0; i < 9; ++i) {
    slow.push_back(connect());
    ASSERT_TRUE(slow.back().send("GET /livez HTTP/1.1\r\nHost: localhost\r\nX-Slow: a"));
  }
  auto const t9 = std::chrono::steady_clock::now();
  // The first to expire is answered 408 naming the pressure deadline (it then closes, which may end the
  // pressure for the others: they fall back to headersTimeoutMs).
  std::optional<rt::http_response> first;
  std::size_t which = 0;
  auto const until = t9 + 20 * kPressureTimeout;
  while (!first && std::chrono::steady_clock::now() < until) {
    for (std::size_t i = 0; i < slow.size() && !first; ++i)
      if (slow[i].wait_readable(rt::in(10ms))) {
        first = slow[i].read_response(rt::in(kIo));
        which = i;
      }
  }
  ASSERT_TRUE(first) << "no header-phase connection was timed out within 20x headersTimeoutUnderPressureMs "
                        "under connection pressure (headersTimeoutMs is 60 s)";
  EXPECT_TRUE(is_error(*first, 408, "request_read_timeout"));
  EXPECT_NE(first->body.find("server.headersTimeoutUnderPressureMs"), std::string::npos) << first->describe();
  EXPECT_TRUE(closes_after(slow[which], *first));
}

// A body trickled below server.minBodyBytesPerSecond is answered 408 long before server.bodyTimeoutMs.
TEST_F(HttpLimits, ABodySlowerThanMinBodyBytesPerSecondIs408) {
  ASSERT_NO_FATAL_FAILURE(start({{"headersTimeoutMs", 60'000},
                                 {"bodyTimeoutMs", 60'000},
                                 {"minBodyBytesPerSecond", 100},
                                 {"keepAliveTimeoutMs", 60'000}}));
  auto c = connect();
  ASSERT_TRUE(c.send(post_head("/v1/infer", 900, "application/json") + R"({"input":")")) << c.last_error();
  auto const t0 = std::chrono::steady_clock::now();
  std::optional<rt::http_response> r;
  // One byte each 100 ms (10 bytes/s, a tenth of the minimum) until the server answers.
  while (!r && std::chrono::steady_clock::now() < t0 + 20s) {
    if (c.wait_readable(rt::in(100ms))) {
      r = c.read_response(rt::in(kIo));
      break;
    }
    if (!c.send("a")) break;
  }
  ASSERT_TRUE(r)
      << "a 10 bytes/s body was not answered within 20 s (minBodyBytesPerSecond 100, bodyTimeoutMs "
         "60 s): "
      << c.last_error();
  EXPECT_TRUE(is_error(*r, 408, "request_read_timeout"));
  EXPECT_NE(r->body.find("server.minBodyBytesPerSecond"), std::string::npos) << r->describe();
  EXPECT_TRUE(closes_after(c, *r));
}

// A direct client address holds at most server.maxConnectionsPerClient connections (429 beyond, with
// Retry-After); a trusted proxy (loopback by default) is exempt.
TEST(ConnectionsPerClient, ADirectClientIsCappedATrustedProxyIsNot) {
  for (bool trusted : {false, true}) {
    SCOPED_TRACE(trusted ? "loopback is a trusted proxy" : "loopback is a direct client");
    auto cfg = test_config({{"maxConnectionsPerClient", 3}, {"keepAliveTimeoutMs", 60'000}});
    json::object rate;
    rate["trustedProxies"] = trusted ? json::array{"127.0.0.0/8"} : json::array{"10.0.0.0/8"};
    cfg["rateLimit"] = rate;
    ray_server srv(cfg);
    ASSERT_TRUE(srv.wait_listening());
    std::vector<rt::raw_client> open;
    for (int i = 0; i < 3; ++i) {
      open.push_back(srv.connect());
      ASSERT_TRUE(open.back().send(get("/livez")));
      auto r = open.back().read_response(rt::in(kIo));
      ASSERT_TRUE(r && r->status == 200) << open.back().last_error();
    }
    auto fourth = srv.connect();
    ASSERT_TRUE(fourth.send(get("/livez")));
    auto r = fourth.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << fourth.last_error();
    if (trusted) {
      EXPECT_EQ(r->status, 200) << r->describe();
      continue;
    }
    EXPECT_TRUE(is_error(*r, 429, "rate_limited"));
    EXPECT_NE(r->body.find("server.maxConnectionsPerClient"), std::string::npos) << r->describe();
    EXPECT_TRUE(r->has_header("retry-after")) << r->describe();
    EXPECT_TRUE(closes_after(fourth, *r));
    // Closing one lets the client connect again (the count follows the close asynchronously).
    open.erase(open.begin());
    EXPECT_TRUE(eventually([&] {
      auto c = srv.connect();
      c.send(get("/livez"));
      auto again = c.read_response(rt::in(kIo));
      return again && again->status == 200;
    })) << "a closed connection was never uncounted for its client";
  }
}

// Review finding (http/server.cpp client_gone): a client that half-closes (shutdown(SHUT_WR)) after sending
// its request was taken for gone and got no answer. It is answered — before the head through an interim 100
// Continue that only a client that really left answers with a reset — and a client that closes for good still
// cancels its request (Backend.AClientLeaving… tests).
TEST(HalfClose, AClientThatHalfClosesAfterItsRequestIsAnswered) {
  ray_server s(test_config({}, {{"latencyMs", 150}}), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  struct one {
    std::string target, body;
  };
  for (auto const& [target, body] :
       {one{"/v1/infer", R"({"input":"half closed","cache":false})"},
        one{"/v1/chat/completions", R"({"messages":[{"role":"user","content":"half closed"}]})"},
        one{"/v1/chat/completions",
            R"({"messages":[{"role":"user","content":"half closed"}],"stream":true})"}}) {
    SCOPED_TRACE(target + " " + body);
    auto c = s.connect();
    ASSERT_TRUE(c.send(post_json(target, body)));
    c.shutdown_write();
    auto r = c.read_response(rt::in(kIo));
    while (r && r->is_interim())
      r = c.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << "no answer after a half-close: " << c.last_error() << "\n" << s.output_tail();
    EXPECT_EQ(r->status, 200) << r->describe();
    if (body.find("stream") != std::string::npos)
      EXPECT_NE(r->body.find("data: [DONE]"), std::string::npos) << r->body;
  }
}

}  // namespace
