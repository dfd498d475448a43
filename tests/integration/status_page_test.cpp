// The operator status page at the HTTP level (issue 18; the browser half is status_page_test.sh): which
// Accept values get the page and which keep today's JSON, the page's security headers, that its CSP hashes
// are those of the page's inline script and style (computed here with OpenSSL, independently of Ray's own
// code), and what the page may not contain (inline event handlers, external URLs, more than 60 KB).
#include "http_test_util.hpp"

#include <openssl/evp.h>

#include <fstream>
#include <sstream>

namespace ray::itest {
namespace {

constexpr std::string_view kBrowserAccept =
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
    "application/signed-exchange;v=b3;q=0.7";

std::string csp_hash(std::string_view content) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_Digest(content.data(), content.size(), md, &len, EVP_sha256(), nullptr);
  unsigned char b64[64];
  int n = EVP_EncodeBlock(b64, md, static_cast<int>(len));
  return "'sha256-" + std::string(reinterpret_cast<char const*>(b64), static_cast<std::size_t>(n)) + "'";
}

// The content of every <tag>…</tag> of the page.
std::vector<std::string> elements(std::string const& html, std::string const& tag) {
  std::vector<std::string> out;
  std::string const open = "<" + tag + ">", close = "</" + tag + ">";
  for (auto p = html.find(open); p != std::string::npos; p = html.find(open, p)) {
    auto b = p + open.size();
    auto e = html.find(close, b);
    if (e == std::string::npos) break;
    out.push_back(html.substr(b, e - b));
    p = e;
  }
  return out;
}

std::string source_page() {
  std::ifstream in(std::string(RAY_SOURCE_DIR) + "/src/ray/api/status_page.html", std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class StatusPage : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.wait_listening()); }

  rt::http_response get_root(std::string_view accept, std::string_view method = "GET") {
    auto c = server_.connect();
    std::string headers(kHost);
    if (!accept.empty()) headers.append("Accept: ").append(accept).append("\r\n");
    EXPECT_TRUE(c.send(req(method, "/", headers)));
    auto r = c.read_response(rt::in(kIo), method == "HEAD");
    EXPECT_TRUE(r) << c.last_error();
    return r.value_or(rt::http_response{});
  }

  static bool is_page(rt::http_response const& r) {
    return r.status == 200 && r.header("content-type").value_or("") == "text/html; charset=utf-8";
  }

  ray_server server_{test_config()};
};

TEST_F(StatusPage, BrowsersGetThePageEveryoneElseKeepsTheJson) {
  for (std::string_view accept :
       {kBrowserAccept, std::string_view("text/html"), std::string_view("TEXT/HTML;q=1"),
        std::string_view("text/html, */*;q=0.1"), std::string_view("application/json;q=0.5, text/html")}) {
    auto r = get_root(accept);
    EXPECT_TRUE(is_page(r)) << accept << "\n" << r.describe();
    EXPECT_NE(r.body.find("<title>Ray status</title>"), std::string::npos) << accept;
  }
  std::string const json =
      R"({"name":"ray","version":")" RAY_VERSION R"(","profile":"tiny","model":"tiny-dev"})";
  for (std::string_view accept :
       {std::string_view(""), std::string_view("*/*"), std::string_view("application/json"),
        std::string_view("text/*"), std::string_view("text/html;q=0"),
        std::string_view("text/html;q=0.5, */*"), std::string_view("application/json, text/html"),
        std::string_view("text/html;q=0.8, application/*"), std::string_view("text/plain"),
        std::string_view("garbage")}) {
    auto r = get_root(accept);
    EXPECT_EQ(r.status, 200) << accept;
    EXPECT_EQ(r.header("content-type").value_or(""), "application/json; charset=utf-8") << accept;
    EXPECT_EQ(r.body, json) << accept;
    EXPECT_FALSE(r.has_header("content-security-policy")) << accept;
  }
}

TEST_F(StatusPage, SecurityHeadersAndACspThatAllowsExactlyTheInlineScriptAndStyle) {
  auto r = get_root(kBrowserAccept);
  ASSERT_TRUE(is_page(r)) << r.describe();
  EXPECT_EQ(r.header("x-content-type-options").value_or(""), "nosniff");
  EXPECT_EQ(r.header("referrer-policy").value_or(""), "no-referrer");
  EXPECT_EQ(r.header("x-frame-options").value_or(""), "DENY");
  EXPECT_EQ(r.header("cache-control").value_or(""), "no-store");
  EXPECT_EQ(r.header("vary").value_or(""), "Accept");
  auto const csp = r.header("content-security-policy").value_or("");
  EXPECT_EQ(csp.rfind("default-src 'self'; ", 0), 0u) << csp;
  EXPECT_EQ(csp.find("unsafe-"), std::string::npos) << csp;
  EXPECT_NE(csp.find("connect-src 'self'"), std::string::npos) << csp;
  EXPECT_NE(csp.find("frame-ancestors 'none'"), std::string::npos) << csp;
  auto scripts = elements(r.body, "script");
  auto styles = elements(r.body, "style");
  ASSERT_EQ(scripts.size(), 1u);
  ASSERT_EQ(styles.size(), 1u);
  EXPECT_NE(csp.find("script-src " + csp_hash(scripts[0]) + ";"), std::string::npos) << csp;
  EXPECT_NE(csp.find("style-src " + csp_hash(styles[0]) + ";"), std::string::npos) << csp;
}

TEST_F(StatusPage, ThePageIsTheSourceFileSelfContainedAndSmall) {
  auto r = get_root("text/html");
  ASSERT_TRUE(is_page(r)) << r.describe();
  EXPECT_EQ(r.body, source_page()) << "the binary serves the page it was built from";
  EXPECT_LE(r.body.size(), 60u * 1024u);
  EXPECT_EQ(r.body.find("<script src"), std::string::npos);
  EXPECT_EQ(r.body.find("<link rel=\"stylesheet\""), std::string::npos);
  EXPECT_EQ(r.body.find("@import"), std::string::npos);
  // No external URL anywhere (the SVG namespace is a name, not a fetch), no inline event handler attribute.
  std::regex const url(R"((https?:)?//[a-z0-9.-]+\.[a-z]{2,})", std::regex::icase);
  for (std::sregex_iterator it(r.body.begin(), r.body.end(), url), end; it != end; ++it)
    EXPECT_EQ(it->str(), "http://www.w3.org") << "external URL in the page";
  auto markup = r.body;  // the page without its script
  auto const sb = markup.find("<script>"), se = markup.find("</script>");
  ASSERT_TRUE(sb != std::string::npos && se != std::string::npos);
  markup.erase(sb, se - sb);
  std::regex const handler(R"(<[^>]*\son[a-z]+\s*=)", std::regex::icase);
  EXPECT_FALSE(std::regex_search(markup, handler)) << "inline event handler in the page";
  EXPECT_EQ(markup.find("style=\""), std::string::npos) << "inline style attribute (the CSP would block it)";
  EXPECT_EQ(r.body.find("innerHTML"), std::string::npos) << "the page renders data as text only";
}

TEST_F(StatusPage, HeadAnswersTheHeadersOnly) {
  auto get = get_root("text/html");
  auto head = get_root("text/html", "HEAD");
  EXPECT_TRUE(is_page(head)) << head.describe();
  EXPECT_TRUE(head.body.empty());
  EXPECT_EQ(head.header("content-length").value_or(""), std::to_string(get.body.size()));
  EXPECT_EQ(head.header("content-security-policy").value_or("-"),
            get.header("content-security-policy").value_or(""));
}

TEST(StatusPageAuth, ThePageIsOpenItsDataIsNot) {
  ray_server s(
      with(test_config(), {{"auth", boost::json::object{{"enabled", true}, {"apiKeyEnv", "SP_KEYS"}}}}), {},
      {{"SP_KEYS", "status-page-key-0123456789"}});
  ASSERT_TRUE(s.wait_listening());
  auto ask = [&](std::string const& target, std::string_view accept) {
    auto c = s.connect();
    EXPECT_TRUE(c.send(get(target, "Accept: " + std::string(accept) + "\r\n")));
    return c.read_response(rt::in(kIo)).value_or(rt::http_response{});
  };
  auto page = ask("/", kBrowserAccept);
  EXPECT_EQ(page.status, 200);
  EXPECT_EQ(page.header("content-type").value_or(""), "text/html; charset=utf-8");
  EXPECT_EQ(page.body.find("tiny-dev"), std::string::npos) << "the page itself holds no data";
  EXPECT_TRUE(is_error(ask("/health", "application/json"), 401, "unauthorized"));
  EXPECT_TRUE(is_error(ask("/metrics", "text/plain"), 401, "unauthorized"));
}

}  // namespace
}  // namespace ray::itest
