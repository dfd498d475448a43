// The operator status page: `GET /` from a browser (an Accept that prefers text/html) answers one
// self-contained HTML file (src/ray/api/status_page.html, compiled in by CMake as a byte array). The page
// holds no data: its script polls /health, /readyz and /metrics, which keep their own auth.
//
// The Content-Security-Policy allows exactly the page's inline <script> and <style> elements by their SHA-256
// (computed once, on the first page request, from the embedded bytes, so editing the page can never leave a
// stale hash), fetches to this origin only, and nothing else.
#include "ray/api/app.hpp"

#include <cstdlib>

namespace ray::api {

// Generated into the build directory from status_page.html (see this directory's CMakeLists.txt).
extern unsigned char const status_page_bytes[];
extern std::size_t const status_page_size;

namespace {

std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

// RFC 9110 qvalue: "0", "1", "0.x{0,3}", "1.0{0,3}"; anything else counts as 1 (lenient, like browsers).
int parse_q(std::string_view v) noexcept {
  if (v.empty() || v.size() > 5 || (v[0] != '0' && v[0] != '1')) return 1000;
  int q = (v[0] - '0') * 1000;
  if (v.size() > 1) {
    if (v[1] != '.') return 1000;
    int scale = 100;
    for (std::size_t i = 2; i < v.size(); ++i, scale /= 10) {
      if (v[i] < '0' || v[i] > '9') return 1000;
      q += (v[i] - '0') * scale;
    }
  }
  return q > 1000 ? 1000 : q;
}

struct media_q {
  int q{0};             // in thousandths
  int specificity{-1};  // -1 no range matched, 0 "*/*", 1 "type/*", 2 "type/subtype"
};

// The q an Accept value gives `type/subtype`: that of the most specific matching range.
media_q q_of(std::string_view accept, std::string_view type, std::string_view subtype) noexcept {
  media_q best;
  while (!accept.empty()) {
    auto comma = accept.find(',');
    auto item = accept.substr(0, comma);
    accept = comma == std::string_view::npos ? std::string_view{} : accept.substr(comma + 1);
    auto semi = item.find(';');
    auto range = trim(item.substr(0, semi));
    auto slash = range.find('/');
    if (slash == std::string_view::npos) continue;
    auto rt = range.substr(0, slash);
    auto rs = range.substr(slash + 1);
    int spec = -1;
    if (rt == "*" && rs == "*") {
      spec = 0;
    } else if (iequals(rt, type) && rs == "*") {
      spec = 1;
    } else if (iequals(rt, type) && iequals(rs, subtype)) {
      spec = 2;
    }
    if (spec < 0 || spec < best.specificity) continue;
    int q = 1000;
    auto params = semi == std::string_view::npos ? std::string_view{} : item.substr(semi + 1);
    while (!params.empty()) {
      auto next = params.find(';');
      auto p = trim(params.substr(0, next));
      params = next == std::string_view::npos ? std::string_view{} : params.substr(next + 1);
      if (p.size() >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=') q = parse_q(trim(p.substr(2)));
    }
    if (spec > best.specificity || q > best.q) best = {q, spec};
  }
  return best;
}

std::string base64(sha256_digest const& d) {
  static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 3 <= d.size(); i += 3) {
    std::uint32_t v = (std::uint32_t{d[i]} << 16) | (std::uint32_t{d[i + 1]} << 8) | d[i + 2];
    for (int s = 18; s >= 0; s -= 6)
      out += alphabet[(v >> s) & 63];
  }
  if (d.size() - i == 2) {  // 32 bytes: 10 groups of 3, then 2 bytes
    std::uint32_t v = (std::uint32_t{d[i]} << 16) | (std::uint32_t{d[i + 1]} << 8);
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

// `'sha256-…'` of the content of every <tag>…</tag> element of the page (the page's own markup: lower case,
// no attributes on these two tags).
std::string hashes_of(std::string_view html, std::string_view tag) {
  std::string const open = "<" + std::string(tag) + ">";
  std::string const close = "</" + std::string(tag) + ">";
  std::string out;
  for (auto pos = html.find(open); pos != std::string_view::npos; pos = html.find(open, pos)) {
    auto begin = pos + open.size();
    auto end = html.find(close, begin);
    if (end == std::string_view::npos) break;
    if (!out.empty()) out += ' ';
    out += "'sha256-" + base64(sha256(html.substr(begin, end - begin))) + "'";
    pos = end + close.size();
  }
  return out;
}

struct page {
  std::string_view html;
  std::string csp;
};

page const& the_page() {
  static page const p = [] {
    std::string_view html(reinterpret_cast<char const*>(status_page_bytes), status_page_size);
    auto scripts = hashes_of(html, "script");
    auto styles = hashes_of(html, "style");
    if (scripts.empty() || styles.empty()) std::abort();  // a build of a broken page: caught by its test
    std::string csp = "default-src 'self'; script-src " + scripts + "; style-src " + styles +
                      "; connect-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                      "form-action 'none'; frame-ancestors 'none'";
    return page{html, std::move(csp)};
  }();
  return p;
}

}  // namespace

bool prefers_html(std::string_view accept) noexcept {
  auto html = q_of(accept, "text", "html");
  if (html.specificity != 2 || html.q == 0) return false;  // only an explicit text/html asks for the page
  return html.q > q_of(accept, "application", "json").q;
}

http::response status_page() {
  auto const& p = the_page();
  http::response res{http::status::ok, 11};
  res.set(http::field::content_type, "text/html; charset=utf-8");
  res.set("content-security-policy", p.csp);
  res.set("x-content-type-options", "nosniff");
  res.set("referrer-policy", "no-referrer");
  res.set("x-frame-options", "DENY");
  res.set(http::field::cache_control, "no-store");
  res.set(http::field::vary, "Accept");
  res.body().assign(p.html);
  return res;
}

}  // namespace ray::api
