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
// host; when allowed_hosts is non-empty the host must match one entry (exact, or "*.suffix" matching any
// name ending in ".suffix"); an IP-literal host must not be a refused address unless allow_private_network.
// Errors are errc::invalid_request with param "callbackUrl" and a message naming the rule.
result<callback_url> check_callback_url(std::string_view url, callback_policy const& policy);

// Whether an address is refused as a callback target unless callbackAllowPrivateNetwork: loopback,
// private (RFC 1918, CGNAT 100.64/10, fc00::/7), link-local (169.254/16, fe80::/10), multicast,
// unspecified (0.0.0.0/8, ::), broadcast, and any IPv4-mapped/compatible IPv6 form of those.
bool is_refused_address(boost::asio::ip::address const& a) noexcept;

// Name resolution, a seam for tests: returns every address of `host` (an IP literal resolves to itself).
using resolve_fn =
    std::function<boost::asio::awaitable<result<std::vector<boost::asio::ip::address>>>(std::string host)>;
// The system resolver (asynchronous, on the awaiting coroutine's executor).
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

// POSTs `body` (content-type application/json) to `url` with headers x-ray-job-id, x-ray-timestamp (Unix
// seconds) and, when `secret` is set, x-ray-signature. Resolves once through `resolve`; refuses (not
// retryable) when a resolved address is refused by the policy; otherwise connects to the first checked
// address (TLS with SNI and certificate verification against the system store for https). Reads the answer's
// status and at most 4 KiB of its body; the whole attempt is bounded by policy.timeout. Never throws.
boost::asio::awaitable<delivery> deliver(callback_url const& url, std::string const& body,
                                         std::string const& job_id, std::optional<std::string> const& secret,
                                         callback_policy const& policy, resolve_fn const& resolve);

}  // namespace ray::jobs
