// The SSRF guard of callbacks: the submission-time URL check and the refused-address table
// (spec/jobs.md §Callbacks). Pure: no I/O, no DNS.
#include "ray/jobs/callback.hpp"

#include <boost/url/parse.hpp>

#include <algorithm>
#include <array>

namespace ray::jobs {

namespace {

constexpr std::size_t max_url_chars = 2048;
constexpr std::size_t max_host_chars = 253;
constexpr std::size_t max_label_chars = 63;

ray::error url_error(std::string message) {
  ray::error e{errc::invalid_request, std::move(message)};
  e.param = "callbackUrl";
  return e;
}

char lower(char c) noexcept {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string to_lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), lower);
  return out;
}

bool is_digit(char c) noexcept {
  return c >= '0' && c <= '9';
}

// A reg-name Ray will hand to the resolver: LDH labels (plus '_', seen in real names), 1–63 characters each,
// ≤ 253 in all, no empty label (so no trailing dot) and no percent-escapes — what the allow-list matches is
// then exactly what gets resolved.
bool is_dns_name(std::string_view h) noexcept {
  if (h.empty() || h.size() > max_host_chars) return false;
  std::size_t label = 0;
  for (char c : h) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    bool const ok = (c >= 'a' && c <= 'z') || is_digit(c) || c == '-' || c == '_';
    if (!ok || ++label > max_label_chars) return false;
  }
  return label > 0;
}

// getaddrinfo() (inet_aton) reads "2130706433", "0x7f.1" or "127.1" as IPv4 addresses; no real name ends in
// an all-numeric label (top-level domains are alphabetic), so such a host is refused rather than treated as
// a name that the resolver would quietly turn into an address.
bool looks_numeric(std::string_view h) noexcept {
  auto const dot = h.rfind('.');
  auto last = dot == std::string_view::npos ? h : h.substr(dot + 1);
  if (last.starts_with("0x")) {
    last.remove_prefix(2);
    return std::all_of(last.begin(), last.end(),
                       [](char c) { return is_digit(c) || (c >= 'a' && c <= 'f'); });
  }
  return !last.empty() && std::all_of(last.begin(), last.end(), is_digit);
}

bool ends_with(std::string_view s, std::string_view suffix) noexcept {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// RFC 6761: "localhost" and every name under it resolve to loopback.
bool is_localhost_name(std::string_view h) noexcept {
  return h == "localhost" || ends_with(h, ".localhost");
}

std::string_view sv(boost::urls::string_view s) noexcept {
  return {s.data(), s.size()};
}

bool host_matches(std::string_view host, std::string_view entry_raw) {
  auto entry = to_lower(trim(entry_raw));
  if (entry.size() >= 2 && entry.front() == '[' && entry.back() == ']')
    entry = entry.substr(1, entry.size() - 2);
  if (entry.size() > 2 && entry.starts_with("*.")) {
    std::string_view const suffix = std::string_view(entry).substr(1);  // ".example.com"
    return host.size() > suffix.size() && ends_with(host, suffix);
  }
  if (host == entry) return true;
  // IP literals compare as addresses ("::1" is "0:0::1").
  boost::system::error_code e1, e2;
  auto const a = boost::asio::ip::make_address(std::string(host), e1);
  auto const b = boost::asio::ip::make_address(entry, e2);
  return !e1 && !e2 && a == b;
}

struct v4_net {
  std::uint32_t net;
  unsigned bits;
};

// Every IPv4 block IANA's special-purpose registry marks "not globally reachable", plus multicast. Nothing in
// here can be a public webhook receiver; several reach the gateway's own host or network.
constexpr std::array<v4_net, 14> refused_v4{{
    {0x00000000, 8},   // 0.0.0.0/8 "this network" (0.0.0.0 reaches the local host on Linux)
    {0x0A000000, 8},   // 10.0.0.0/8 RFC 1918
    {0x64400000, 10},  // 100.64.0.0/10 shared address space (CGNAT)
    {0x7F000000, 8},   // 127.0.0.0/8 loopback
    {0xA9FE0000, 16},  // 169.254.0.0/16 link-local (cloud metadata services live here)
    {0xAC100000, 12},  // 172.16.0.0/12 RFC 1918
    {0xC0000000, 24},  // 192.0.0.0/24 IETF protocol assignments
    {0xC0000200, 24},  // 192.0.2.0/24 TEST-NET-1
    {0xC0A80000, 16},  // 192.168.0.0/16 RFC 1918
    {0xC6120000, 15},  // 198.18.0.0/15 benchmarking (also fake-IP DNS proxies' pool)
    {0xC6336400, 24},  // 198.51.100.0/24 TEST-NET-2
    {0xCB007100, 24},  // 203.0.113.0/24 TEST-NET-3
    {0xE0000000, 4},   // 224.0.0.0/4 multicast
    {0xF0000000, 4},   // 240.0.0.0/4 reserved, with 255.255.255.255 broadcast
}};

bool refused_v4_uint(std::uint32_t a) noexcept {
  return std::any_of(refused_v4.begin(), refused_v4.end(),
                     [a](v4_net const& n) { return ((a ^ n.net) >> (32 - n.bits)) == 0; });
}

using v6_bytes = boost::asio::ip::address_v6::bytes_type;

struct v6_net {
  std::array<std::uint8_t, 6> prefix;  // the leading bytes; any further prefix bytes are zero
  unsigned bits;
};

bool in_v6(v6_bytes const& b, v6_net const& n) noexcept {
  unsigned bits = n.bits;
  for (std::size_t i = 0; bits > 0; ++i) {
    unsigned const take = bits >= 8 ? 8 : bits;
    auto const mask = static_cast<std::uint8_t>(0xFF << (8 - take));
    if (((i < n.prefix.size() ? n.prefix[i] : 0) ^ b[i]) & mask) return false;
    bits -= take;
  }
  return true;
}

// Refused whatever follows the prefix.
constexpr std::array<v6_net, 12> refused_v6{{
    {{0, 0, 0, 0, 0, 0}, 96},  // ::/96: ::, ::1 and the deprecated IPv4-compatible ::a.b.c.d
    {{0x00, 0x64, 0xff, 0x9b, 0x00, 0x01}, 48},  // 64:ff9b:1::/48 local-use NAT64
    {{0x01, 0x00, 0, 0, 0, 0}, 64},              // 100::/64 discard-only
    {{0x20, 0x01, 0x00, 0x00, 0, 0}, 32},        // 2001::/32 Teredo (tunnels to an IPv4 host)
    {{0x20, 0x01, 0x00, 0x02, 0x00, 0x00}, 48},  // 2001:2::/48 benchmarking
    {{0x20, 0x01, 0x0d, 0xb8, 0, 0}, 32},        // 2001:db8::/32 documentation
    {{0x3f, 0xff, 0, 0, 0, 0}, 20},              // 3fff::/20 documentation
    {{0x5f, 0x00, 0, 0, 0, 0}, 16},              // 5f00::/16 SRv6 SIDs
    {{0xfc, 0, 0, 0, 0, 0}, 7},                  // fc00::/7 unique local
    {{0xfe, 0x80, 0, 0, 0, 0}, 10},              // fe80::/10 link-local
    {{0xfe, 0xc0, 0, 0, 0, 0}, 10},              // fec0::/10 deprecated site-local
    {{0xff, 0, 0, 0, 0, 0}, 8},                  // ff00::/8 multicast
}};

std::uint32_t v4_at(v6_bytes const& b, std::size_t i) noexcept {
  return (std::uint32_t{b[i]} << 24) | (std::uint32_t{b[i + 1]} << 16) | (std::uint32_t{b[i + 2]} << 8) |
         b[i + 3];
}

}  // namespace

bool is_refused_address(boost::asio::ip::address const& a) noexcept {
  if (a.is_v4()) return refused_v4_uint(a.to_v4().to_uint());
  auto const b = a.to_v6().to_bytes();
  if (std::any_of(refused_v6.begin(), refused_v6.end(), [&b](v6_net const& n) { return in_v6(b, n); }))
    return true;
  // Forms that carry an IPv4 address: refused when that address is.
  static constexpr v6_net mapped{{0, 0, 0, 0, 0, 0}, 80};  // then 0xffff: ::ffff:a.b.c.d
  if (in_v6(b, mapped) && b[10] == 0xff && b[11] == 0xff) return refused_v4_uint(v4_at(b, 12));
  static constexpr v6_net translated{{0, 0, 0, 0, 0, 0}, 64};  // ::ffff:0:a.b.c.d (SIIT, RFC 2765)
  if (in_v6(b, translated) && b[8] == 0xff && b[9] == 0xff && b[10] == 0 && b[11] == 0)
    return refused_v4_uint(v4_at(b, 12));
  static constexpr v6_net nat64{{0x00, 0x64, 0xff, 0x9b, 0, 0}, 96};  // 64:ff9b::a.b.c.d (RFC 6052)
  if (in_v6(b, nat64)) return refused_v4_uint(v4_at(b, 12));
  static constexpr v6_net six_to_four{{0x20, 0x02, 0, 0, 0, 0}, 16};  // 2002:aabb:ccdd::/48 (6to4)
  if (in_v6(b, six_to_four)) return refused_v4_uint(v4_at(b, 2));
  return false;
}

result<callback_url> check_callback_url(std::string_view text, callback_policy const& policy) {
  // Messages name the rule and at most the host: a URL's path or query may carry a token.
  if (text.size() > max_url_chars)
    return url_error("callbackUrl is longer than " + std::to_string(max_url_chars) + " characters");
  auto const parsed = boost::urls::parse_uri(text);
  if (!parsed) return url_error("callbackUrl is not an absolute URL");
  auto const& u = *parsed;
  auto const scheme = u.scheme_id();
  if (scheme != boost::urls::scheme::http && scheme != boost::urls::scheme::https)
    return url_error("callbackUrl must use http or https");
  if (u.has_userinfo()) return url_error("callbackUrl must not contain userinfo (credentials)");
  if (u.has_fragment()) return url_error("callbackUrl must not contain a fragment");

  callback_url out;
  out.https = scheme == boost::urls::scheme::https;
  bool literal = false;
  switch (u.host_type()) {
    case boost::urls::host_type::ipv4:
    case boost::urls::host_type::ipv6:
      out.host = to_lower(sv(u.encoded_host_address()));  // IPv6 without brackets
      literal = true;
      break;
    case boost::urls::host_type::name:
      out.host = to_lower(sv(u.encoded_host()));
      break;
    case boost::urls::host_type::ipvfuture:
      return url_error("callbackUrl host is an IPvFuture literal, which is not supported");
    case boost::urls::host_type::none:
      break;
  }
  if (out.host.empty()) return url_error("callbackUrl has no host");
  if (!literal) {
    if (looks_numeric(out.host))
      return url_error("callbackUrl host \"" + out.host +
                       "\" is a numeric address in a non-standard form; write IPv4 as a.b.c.d");
    if (!is_dns_name(out.host))
      return url_error(
          "callbackUrl host is not a valid DNS name (letters, digits, '-', '_' and dots; no "
          "percent-escapes, no trailing dot)");
  }

  if (u.has_port()) {
    if (u.port().empty() || u.port_number() == 0)
      return url_error("callbackUrl has an invalid port (1-65535)");
    out.port = u.port_number();
  } else {
    out.port = out.https ? 443 : 80;
  }

  bool const allowed = policy.allowed_hosts.empty() ||
                       std::any_of(policy.allowed_hosts.begin(), policy.allowed_hosts.end(),
                                   [&out](std::string const& e) { return host_matches(out.host, e); });
  if (!allowed)
    return url_error("callbackUrl host \"" + out.host + "\" is not in asyncQueue.callbackAllowedHosts");
  if (!policy.allow_private_network) {
    boost::system::error_code ec;
    auto const addr = boost::asio::ip::make_address(out.host, ec);
    if ((literal && !ec && is_refused_address(addr)) || (!literal && is_localhost_name(out.host)))
      return url_error("callbackUrl host \"" + out.host +
                       "\" is a private, loopback, link-local, multicast or reserved address "
                       "(asyncQueue.callbackAllowPrivateNetwork is false)");
  }

  std::string_view const path = sv(u.encoded_path());
  out.target = path.empty() ? "/" : std::string(path);
  if (u.has_query()) {
    out.target += '?';
    out.target += sv(u.encoded_query());
  }
  bool const ipv6 = u.host_type() == boost::urls::host_type::ipv6;
  out.host_header = ipv6 ? "[" + out.host + "]" : out.host;
  if (out.port != (out.https ? 443 : 80)) out.host_header += ":" + std::to_string(out.port);
  return out;
}

}  // namespace ray::jobs
