// Request smuggling over raw sockets (issue 12): every ambiguous or unsupported framing is answered with one
// clean 400 and the connection closes — never a second request parsed out of the first one's body. Each
// request carries a complete `GET /livez` where a differently-framing peer would see the next request.
#include "http_test_util.hpp"

namespace ray::itest {
namespace {

constexpr std::string_view kSmuggled = "GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n";

struct smuggle_case {
  std::string name;
  std::string bytes;
};

std::string body_json() {
  return R"({"input":"hi"})";
}

// A request whose header lines are `head_lines` (CRLF-terminated unless the case says otherwise) and whose
// bytes after the header section are `rest`.
std::string raw(std::string_view method, std::string_view version, std::string_view head_lines,
                std::string_view rest, std::string_view eol = "\r\n") {
  std::string r;
  r.append(method).append(" /v1/infer ").append(version).append(eol);
  r.append("Host: localhost").append(eol);
  r.append(head_lines);
  r.append(eol);
  r.append(rest);
  return r;
}

std::string chunked_body(std::string_view data) {
  char size[16];
  std::snprintf(size, sizeof size, "%zx", data.size());
  return std::string(size) + "\r\n" + std::string(data) + "\r\n0\r\n\r\n";
}

std::vector<smuggle_case> cases() {
  auto const b = body_json();
  auto const len = std::to_string(b.size());
  std::string const ct = "Content-Type: application/json\r\n";
  std::vector<smuggle_case> v;
  for (std::string_view method : {"POST", "GET"}) {
    std::string m(method);
    auto add = [&](std::string name, std::string bytes) { v.push_back({m + ": " + name, std::move(bytes)}); };
    add("Content-Length with Transfer-Encoding",
        raw(m, "HTTP/1.1", ct + "Content-Length: " + len + "\r\nTransfer-Encoding: chunked\r\n",
            chunked_body(b) + std::string(kSmuggled)));
    add("Transfer-Encoding before Content-Length",
        raw(m, "HTTP/1.1", ct + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            chunked_body(b) + std::string(kSmuggled)));
    add("two differing Content-Lengths",
        raw(m, "HTTP/1.1", ct + "Content-Length: " + len + "\r\nContent-Length: 4\r\n",
            b + std::string(kSmuggled)));
    add("Content-Length list",
        raw(m, "HTTP/1.1", ct + "Content-Length: " + len + ", 4\r\n", b + std::string(kSmuggled)));
    add("bare LF line endings",
        raw(m, "HTTP/1.1", "Content-Type: application/json\nContent-Length: " + len + "\n",
            b + std::string(kSmuggled), "\n"));
    add("NUL in a header value",
        raw(m, "HTTP/1.1", ct + "Content-Length: " + len + "\r\nX-Nul: a" + std::string(1, '\0') + "b\r\n",
            b + std::string(kSmuggled)));
    add("oversized chunk size",
        raw(m, "HTTP/1.1", ct + "Transfer-Encoding: chunked\r\n",
            "fffffffffffffffffff\r\n" + b + "\r\n0\r\n\r\n" + std::string(kSmuggled)));
    add("Transfer-Encoding: gzip",
        raw(m, "HTTP/1.1", ct + "Transfer-Encoding: gzip\r\n", b + std::string(kSmuggled)));
    add("Transfer-Encoding: chunked, identity",
        raw(m, "HTTP/1.1", ct + "Transfer-Encoding: chunked, identity\r\n",
            chunked_body(b) + std::string(kSmuggled)));
    add("Transfer-Encoding: chunked, gzip", raw(m, "HTTP/1.1", ct + "Transfer-Encoding: chunked, gzip\r\n",
                                                chunked_body(b) + std::string(kSmuggled)));
    add("Transfer-Encoding: gzip, chunked", raw(m, "HTTP/1.1", ct + "Transfer-Encoding: gzip, chunked\r\n",
                                                chunked_body(b) + std::string(kSmuggled)));
    add("Transfer-Encoding twice",
        raw(m, "HTTP/1.1", ct + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            chunked_body(b) + std::string(kSmuggled)));
    add("Transfer-Encoding: xchunked",
        raw(m, "HTTP/1.1", ct + "Transfer-Encoding: xchunked\r\n", chunked_body(b) + std::string(kSmuggled)));
    add("Transfer-Encoding on HTTP/1.0",
        raw(m, "HTTP/1.0", ct + "Transfer-Encoding: chunked\r\n", chunked_body(b) + std::string(kSmuggled)));
    add("space before the colon",
        raw(m, "HTTP/1.1", ct + "Transfer-Encoding : chunked\r\nContent-Length: " + len + "\r\n",
            b + std::string(kSmuggled)));
  }
  return v;
}

TEST(Smuggling, EveryAmbiguousFramingIsOneClean400AndTheConnectionCloses) {
  ray_server s(test_config(), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  for (auto const& c : cases()) {
    SCOPED_TRACE(c.name);
    auto client = s.connect();
    ASSERT_TRUE(client.send(c.bytes));
    auto r = client.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << "no answer: " << client.last_error();
    // 400 for the framing; a GET whose framing problem lies in its body may first meet the route's method
    // check (405, documented), which also closes since the body was not read.
    if (c.name.starts_with("GET") && r->status == 405)
      EXPECT_TRUE(is_error(*r, 405, "method_not_allowed"));
    else
      EXPECT_EQ(r->status, 400) << r->describe();
    EXPECT_TRUE(closes_after(client, *r)) << "a second request may have been read from the body";
  }
  // The gateway is fine afterwards.
  auto live = roundtrip(s.port(), get("/livez"));
  ASSERT_TRUE(live);
  EXPECT_EQ(live->status, 200);
}

// obs-fold (a field line continued on the next): RFC 9112 §5.2 lets a server refuse it or unfold it; Ray
// refuses it (a proxy in front may read the folded line differently) with 400 and closes — also for a fold
// split across reads and with HTAB.
TEST(Smuggling, ObsFoldIsRefusedAndTheConnectionClosed) {
  ray_server s(test_config(), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto const b = body_json();
  for (std::string fold :
       {"X-Folded: a\r\n b\r\n", "X-Folded: a\r\n\tb\r\n", "Authorization: Bearer\r\n x\r\n"}) {
    auto client = s.connect();
    auto const bytes =
        raw("POST", "HTTP/1.1",
            "Content-Type: application/json\r\nContent-Length: " + std::to_string(b.size()) + "\r\n" + fold,
            b + std::string(kSmuggled));
    // In two pieces, the fold's line break at the end of the first.
    auto const cut = bytes.find(fold) + fold.find('\n') + 1;
    ASSERT_TRUE(client.send(bytes.substr(0, cut)));
    ASSERT_TRUE(client.send(bytes.substr(cut)));
    auto r = client.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << client.last_error();
    EXPECT_TRUE(is_error(*r, 400, "invalid_request")) << fold;
    EXPECT_NE(r->body.find("obs-fold"), std::string::npos) << r->describe();
    EXPECT_TRUE(closes_after(client, *r)) << "a second request may have been read from the body";
  }
  auto live = roundtrip(s.port(), get("/livez"));
  ASSERT_TRUE(live);
  EXPECT_EQ(live->status, 200);
}

// The accepted framings still work (so the refusals above are not a blanket refusal).
TEST(Smuggling, PlainContentLengthAndPlainChunkedBodiesAreServed) {
  ray_server s(test_config(), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto const b = body_json();
  for (auto const& bytes :
       {raw("POST", "HTTP/1.1",
            "Content-Type: application/json\r\nContent-Length: " + std::to_string(b.size()) + "\r\n", b),
        raw("POST", "HTTP/1.1", "Content-Type: application/json\r\nTransfer-Encoding: Chunked\r\n",
            chunked_body(b))}) {
    auto client = s.connect();
    ASSERT_TRUE(client.send(bytes));
    auto r = client.read_response(rt::in(kIo));
    ASSERT_TRUE(r) << client.last_error();
    EXPECT_EQ(r->status, 200) << r->describe();
  }
}

}  // namespace
}  // namespace ray::itest
