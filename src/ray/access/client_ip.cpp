#include "ray/access/access.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

namespace ray::access {

namespace {

// Longest entry worth parsing: "[" + 45-char IPv6 text + "%zone" + "]:65535" fits comfortably.
constexpr std::size_t max_entry_chars = 64;

struct address {
  bool v4{false};
  unsigned char bytes[16]{};  // v4 uses the first 4
};

std::string_view trim_ows(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

// ":" 1*5DIGIT, at most 65535.
bool is_port_suffix(std::string_view s) noexcept {
  if (s.size() < 2 || s.size() > 6 || s[0] != ':') return false;
  unsigned value = 0;
  for (char c : s.substr(1)) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  return value <= 65535;
}

// 1.2.3.4 · 1.2.3.4:80 · ::1 · [::1] · [::1]:80 · fe80::1%eth0 · ::ffff:1.2.3.4 (becomes 1.2.3.4).
// Unspecified addresses (0.0.0.0, ::) are not a client: rejected.
std::optional<address> parse(std::string_view s) noexcept {
  s = trim_ows(s);
  if (s.empty() || s.size() > max_entry_chars) return std::nullopt;
  std::string_view host = s;
  bool want_v6 = false;
  if (s.front() == '[') {
    std::size_t close = s.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    std::string_view rest = s.substr(close + 1);
    if (!rest.empty() && !is_port_suffix(rest)) return std::nullopt;
    host = s.substr(1, close - 1);
    want_v6 = true;
  } else if (std::count(s.begin(), s.end(), ':') == 1) {
    std::size_t colon = s.find(':');
    if (!is_port_suffix(s.substr(colon))) return std::nullopt;
    host = s.substr(0, colon);
  } else {
    want_v6 = s.find(':') != std::string_view::npos;
  }
  if (want_v6) {
    std::size_t zone = host.find('%');
    if (zone != std::string_view::npos) {
      if (zone + 1 == host.size()) return std::nullopt;
      host = host.substr(0, zone);
    }
  }
  // inet_pton stops at a NUL; only address characters may reach it.
  if (host.empty() || !std::all_of(host.begin(), host.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == '.' ||
               c == ':';
      }))
    return std::nullopt;

  char buf[max_entry_chars + 1];
  std::memcpy(buf, host.data(), host.size());
  buf[host.size()] = '\0';
  address a;
  if (!want_v6) {
    if (inet_pton(AF_INET, buf, a.bytes) != 1) return std::nullopt;
    a.v4 = true;
  } else {
    if (inet_pton(AF_INET6, buf, a.bytes) != 1) return std::nullopt;
    static constexpr unsigned char mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(a.bytes, mapped_prefix, sizeof mapped_prefix) == 0) {
      std::memmove(a.bytes, a.bytes + 12, 4);
      std::memset(a.bytes + 4, 0, 12);
      a.v4 = true;
    }
  }
  std::size_t const n = a.v4 ? 4 : 16;
  if (std::all_of(a.bytes, a.bytes + n, [](unsigned char b) { return b == 0; })) return std::nullopt;
  return a;
}

bool is_private(address const& a) noexcept {
  unsigned char const* b = a.bytes;
  if (a.v4)
    return b[0] == 10 || b[0] == 127 || (b[0] == 172 && (b[1] & 0xf0) == 16) || (b[0] == 192 && b[1] == 168);
  static constexpr unsigned char loopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return std::memcmp(b, loopback, 16) == 0 || (b[0] & 0xfe) == 0xfc ||
         (b[0] == 0xfe && (b[1] & 0xc0) == 0x80);
}

std::string format(address const& a) {
  char buf[INET6_ADDRSTRLEN];
  if (inet_ntop(a.v4 ? AF_INET : AF_INET6, a.bytes, buf, sizeof buf) == nullptr) return {};
  return buf;
}

}  // namespace

bool is_private_address(std::string_view ip) noexcept {
  auto a = parse(ip);
  return a && is_private(*a);
}

namespace {
bool in(address const& a, bool v4, unsigned char const* bytes, unsigned prefix) noexcept {
  if (a.v4 != v4) return false;
  unsigned full = prefix / 8, rest = prefix % 8;
  if (std::memcmp(a.bytes, bytes, full) != 0) return false;
  if (rest == 0) return true;
  auto mask = static_cast<unsigned char>(0xff << (8 - rest));
  return (a.bytes[full] & mask) == (bytes[full] & mask);
}
}  // namespace

result<proxy_list> proxy_list::parse(std::vector<std::string> const& entries) {
  proxy_list out;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    std::string_view e = entries[i];
    auto bad = [&](std::string const& why) -> result<proxy_list> {
      ray::error err{errc::invalid_request, "rateLimit.trustedProxies[" + std::to_string(i) + "]: '" +
                                                std::string(e.substr(0, 80)) + "' " + why};
      err.param = "rateLimit.trustedProxies";
      return err;
    };
    auto slash = e.find('/');
    auto a = ray::access::parse(e.substr(0, slash));
    if (!a) return bad("is not an IP address or CIDR block");
    unsigned const max = a->v4 ? 32 : 128;
    unsigned prefix = max;
    if (slash != std::string_view::npos) {
      auto digits = e.substr(slash + 1);
      if (digits.empty() || digits.size() > 3 ||
          !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return bad("has no valid prefix length");
      prefix = static_cast<unsigned>(std::stoul(std::string(digits)));
      if (prefix > max) return bad("has a prefix longer than " + std::to_string(max) + " bits");
    }
    net n;
    n.v4 = a->v4;
    std::memcpy(n.bytes, a->bytes, sizeof n.bytes);
    n.prefix = prefix;
    out.nets_.push_back(n);
  }
  return out;
}

bool proxy_list::contains(std::string_view ip) const noexcept {
  auto a = ray::access::parse(ip);
  if (!a) return false;
  return std::any_of(nets_.begin(), nets_.end(),
                     [&](net const& n) { return in(*a, n.v4, n.bytes, n.prefix); });
}

std::string client_ip(std::string_view peer_address, std::span<std::string_view const> x_forwarded_for_values,
                      bool trust_proxy_headers, proxy_list const& trusted) {
  auto is_proxy = [&](address const& a) {
    return std::any_of(trusted.nets_.begin(), trusted.nets_.end(),
                       [&](proxy_list::net const& n) { return in(a, n.v4, n.bytes, n.prefix); });
  };
  auto peer = parse(peer_address);
  if (!peer) return std::string(peer_address.substr(0, 64));
  if (!trust_proxy_headers || !is_proxy(*peer)) return format(*peer);

  // Walk the comma-joined values from the right, within the byte and entry bounds. Entries nearest the peer
  // were written by our own proxies; what a client wrote is on the left, so that is what the bounds cut.
  std::optional<address> leftmost_private;  // leftmost trusted proxy seen
  std::size_t bytes = 0, entries = 0;
  for (std::size_t v = x_forwarded_for_values.size(); v-- > 0;) {
    std::string_view value = x_forwarded_for_values[v];
    for (;;) {
      std::size_t comma = value.rfind(',');
      std::string_view entry = comma == std::string_view::npos ? value : value.substr(comma + 1);
      bytes += entry.size() + 1;  // + the comma (or the join) before it
      if (bytes > max_forwarded_bytes + 1 || ++entries > max_forwarded_entries)
        return format(leftmost_private ? *leftmost_private : *peer);
      if (auto a = parse(entry)) {
        if (!is_proxy(*a)) return format(*a);
        leftmost_private = *a;
      }
      if (comma == std::string_view::npos) break;
      value = value.substr(0, comma);
    }
  }
  return format(leftmost_private ? *leftmost_private : *peer);
}

std::string rate_limit_address(std::string_view ip) {
  auto a = parse(ip);
  if (!a || a->v4) return std::string(ip);
  // One subscriber gets a whole /64 (RFC 6177 assigns /48–/64): counting each address apart would give one
  // client 2^64 quotas and let it fill the key table.
  std::memset(a->bytes + 8, 0, 8);
  return format(*a) + "/64";
}

}  // namespace ray::access
