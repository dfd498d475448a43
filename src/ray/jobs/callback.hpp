// ray::jobs callbacks — the SSRF guard and the signed, at-most-4-KiB-read delivery of a job's record to its
// callbackUrl (spec/jobs.md §Callbacks).
//
// The guard runs twice: check_callback_url() at submission (syntax and the checks that need no DNS: a bad
// URL is a 400 before anything is stored) and, at delivery, deliver() resolves the host ONCE, refuses the
// attempt when any resolved address is refused, and connects to the checked address — never resolving again
// (no DNS-rebinding gap). Redirects are never followed (a 3xx is a failed attempt).
//
// Threading: deliver() runs on the awaiting coroutine's executor; everything else is pure.
#pragma once

#include "ray/core/core.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/address.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ray::jobs {

struct callback_policy {
  std::vector<std::string> allowed_hosts{};  // asyncQueue.callbackAllowedHosts: exact names or "*.suffix"
  bool allow_private_network{false};         // asyncQueue.callbackAllowPrivateNetwork
  std::chrono::milliseconds timeout{5000};   // asyncQueue.callbackTimeoutMs: connect + send + read
};

// A callbackUrl that passed the syntax checks.
struct callback_url {
  bool https{false};
  std::string host;  // lower-case name or IP literal (IPv6 without brackets)
  std::uint16_t port{0};
  std::string target;       // path + query, at least "/"
  std::string host_header;  // the Host header value (with the port when it is not the default)
};

// Checks a callbackUrl at submission: http or https only, no userinfo, no fragment, ≤ 2048 characters, a
// port 1–65535 when one is given, a host that is a dotted-quad IPv4 or bracketed IPv6 literal or a DNS name
// (LDH labels, no percent-escapes, no trailing dot, no all-numeric last label such as "2130706433" or
// "127.1", which getaddrinfo would read as an address); when allowed_hosts is non-empty the host must match
// one entry (exact, or "*.suffix" matching any name ending in ".suffix" but not "suffix" itself; case-
// insensitive; IP entries compare as addresses); unless allow_private_network an IP-literal host must not be
// a refused address and the host must not be "localhost" or under ".localhost". An allow-list entry does not
// lift the private-network rule. Errors are errc::invalid_request with param "callbackUrl" and a message
// naming the rule (never echoing the path, query or userinfo).
result<callback_url> check_callback_url(std::string_view url, callback_policy const& policy);

// Whether an address is refused as a callback target unless callbackAllowPrivateNetwork: every IPv4 block
// IANA's special-purpose registry marks not globally reachable — 0/8, 10/8, 100.64/10 (CGNAT), 127/8,
// 169.254/16, 172.16/12, 192.0.0/24, 192.0.2/24, 192.168/16, 198.18/15, 198.51.100/24, 203.0.113/24, 240/4
// (with 255.255.255.255) — plus multicast 224/4; IPv6 ::/96 (::, ::1, IPv4-compatible), 64:ff9b:1::/48,
// 100::/64, 2001::/32 (Teredo), 2001:2::/48, 2001:db8::/32, 3fff::/20, 5f00::/16, fc00::/7, fe80::/10,
// fec0::/10, ff00::/8; and the IPv4-mapped (::ffff:a.b.c.d), SIIT (::ffff:0:a.b.c.d), NAT64 (64:ff9b::/96)
// and 6to4 (2002::/16) forms of a refused IPv4 address.
bool is_refused_address(boost::asio::ip::address const& a) noexcept;

// Name resolution, a seam for tests: returns every address of `host`. deliver() never calls it for an IP
// literal.
using resolve_fn =
    std::function<boost::asio::awaitable<result<std::vector<boost::asio::ip::address>>>(std::string host)>;
// The system resolver (getaddrinfo on Asio's resolver thread, answered on the awaiting coroutine's executor;
// addresses deduplicated, order kept). getaddrinfo cannot be interrupted: a cancelled or timed-out resolution
// returns at once and the lookup finishes in the background. Errors are errc::provider_request_failed.
resolve_fn system_resolver();

// "sha256=<64 lower-case hex>" of HMAC-SHA256(secret, timestamp + "." + body): the x-ray-signature header.
std::string callback_signature(std::string_view secret, std::string_view timestamp, std::string_view body);

struct delivery {
  bool delivered{false};  // a 2xx answer
  unsigned status{0};     // the HTTP status, 0 when none arrived
  std::string error{};    // why it failed, ≤ 1 KiB, never containing the secret
  bool retryable{true};   // false for a refused target (policy): retrying cannot help
  std::string address{};  // the address that was connected to (or refused), for the log and tests
};

// POSTs `body` (content-type application/json, connection: close, user-agent ray/<version>) to `url` with
// headers x-ray-job-id, x-ray-timestamp (Unix seconds, decimal) and, when `secret` is set and non-empty,
// x-ray-signature. Resolves a name once through `resolve` (an IP literal is used as is); refuses (not
// retryable) when any resolved address is refused by the policy; otherwise connects to the checked addresses
// in order, the next one when a connect fails (TLS: SNI for a name, certificate chain against the system
// store read once per process, name or address checked against the certificate). Reads the answer's status
// and at most 4 KiB of its body; the status decides (a 2xx whose body stalls is delivered). 3xx: not
// followed, not retryable; 410: not retryable; other statuses and every network failure: retryable. The
// whole attempt is bounded by policy.timeout; cancelling the awaiting coroutine ends it promptly. `resolve`
// and every argument must outlive the co_await. Never throws.
boost::asio::awaitable<delivery> deliver(callback_url const& url, std::string const& body,
                                         std::string const& job_id, std::optional<std::string> const& secret,
                                         callback_policy const& policy, resolve_fn const& resolve);

}  // namespace ray::jobs
