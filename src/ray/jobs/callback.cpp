// Callback delivery (spec/jobs.md §Callbacks): resolve once, refuse a refused address, connect to the
// checked address, POST the signed record, read the status and at most 4 KiB of the answer. The SSRF checks
// themselves live in ssrf.cpp.
//
// One coroutine per attempt, no co_spawn: every wait is `timer || operation` against the attempt's single
// deadline (the timer first, see docs/architecture.md), and every operand ends with a value (as_tuple, or a
// coroutine that catches), so the whole attempt is bounded by policy.timeout and nothing outlives the frame.
#include "ray/jobs/callback.hpp"

#include "ray/http/tls.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/span_body.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <algorithm>
#include <memory>

namespace ray::jobs {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;
using steady = std::chrono::steady_clock;
using addresses = std::vector<asio::ip::address>;
using namespace asio::experimental::awaitable_operators;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

constexpr std::size_t max_body_read = 4096;          // of the receiver's answer (spec: not read beyond 4 KiB)
constexpr std::size_t max_header_bytes = 16 * 1024;  // of the receiver's answer
constexpr std::size_t max_error_bytes = 1024;        // delivery::error
constexpr std::size_t max_excerpt_bytes = 256;       // of the answer's body quoted in an error
constexpr int max_interim_responses = 8;             // 1xx answers skipped before the final one

enum class ended { done, timed_out, cancelled };

template <class T>
struct waited {
  ended end;
  std::optional<T> value;
};

// Waits for `op` or the deadline, whichever first; the loser is cancelled. `cancelled` when the awaiting
// coroutine itself was cancelled (the timer ended early).
template <class Op>
asio::awaitable<waited<typename Op::value_type>> with_deadline(Op op, steady::time_point deadline) {
  asio::steady_timer timer(co_await asio::this_coro::executor, deadline);
  // The timer first: an operation launched after one that completed inline would miss its cancellation.
  auto r = co_await (timer.async_wait(use_tuple) || std::move(op));
  if (r.index() == 1) co_return waited<typename Op::value_type>{ended::done, std::get<1>(std::move(r))};
  auto const [ec] = std::get<0>(r);
  co_return waited<typename Op::value_type>{ec ? ended::cancelled : ended::timed_out, std::nullopt};
}

std::string endpoint_text(asio::ip::address const& a, std::uint16_t port) {
  return (a.is_v6() ? "[" + a.to_string() + "]" : a.to_string()) + ":" + std::to_string(port);
}

// Visible ASCII only: what goes into a header value or the request line cannot split the request.
bool is_token_text(std::string_view s) noexcept {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

// One line of valid UTF-8 from bytes a receiver sent: control characters become spaces, invalid bytes '?'.
std::string printable_excerpt(std::string_view s, std::size_t max) {
  std::string out;
  for (std::size_t i = 0; i < s.size() && out.size() < max;) {
    auto const n = utf8_sequence_at(s, i);
    if (n == 0) {
      out += '?';
      ++i;
      continue;
    }
    if (n == 1) {
      auto const c = static_cast<unsigned char>(s[i]);
      out += c < 0x20 || c == 0x7f ? ' ' : s[i];
    } else {
      out.append(s.substr(i, n));
    }
    i += n;
  }
  return std::string(trim(out));
}

// The resolver's state is shared with its completion handler: getaddrinfo() cannot be interrupted, so a
// cancelled resolution returns at once and the handler, finishing later, owns what it touches.
struct resolve_state {
  explicit resolve_state(asio::any_io_executor const& ex)
      : resolver(ex), wake(ex, steady::time_point::max()) {}
  tcp::resolver resolver;
  asio::steady_timer wake;
  std::optional<result<addresses>> out;
};

asio::awaitable<result<addresses>> resolve_with_system(std::string host) {
  auto st = std::make_shared<resolve_state>(co_await asio::this_coro::executor);
  st->resolver.async_resolve(
      host, "", [st, host](boost::system::error_code ec, tcp::resolver::results_type const& found) {
        if (ec) {
          st->out.emplace(
              ray::error{errc::provider_request_failed, "resolving " + host + " failed: " + ec.message()});
        } else {
          addresses list;
          for (auto const& entry : found) {
            auto const a = entry.endpoint().address();
            if (std::find(list.begin(), list.end(), a) == list.end()) list.push_back(a);
          }
          st->out.emplace(std::move(list));
        }
        st->wake.cancel();
      });
  if (!st->out) co_await st->wake.async_wait(use_tuple);  // ends when resolved or when we are cancelled
  if (!st->out) {
    st->resolver.cancel();
    co_return result<addresses>(
        ray::error{errc::provider_request_failed, "resolving " + host + " was cancelled"});
  }
  co_return std::move(*st->out);
}

// The resolver seam may be anything: it ends with a value whatever it does.
asio::awaitable<result<addresses>> guarded_resolve(resolve_fn const& resolve, std::string host) {
  std::string const what = "resolving " + host;
  try {
    if (!resolve) co_return result<addresses>(ray::error{errc::provider_request_failed, "no resolver"});
    co_return co_await resolve(std::move(host));
  } catch (std::exception const& e) {
    co_return result<addresses>(ray::error{errc::provider_request_failed, what + " failed: " + e.what()});
  } catch (...) {
    co_return result<addresses>(ray::error{errc::provider_request_failed, what + " failed"});
  }
}

// Everything one attempt needs, owned by deliver()'s frame for the attempt's whole life.
struct attempt {
  callback_url const& url;
  callback_policy const& policy;
  steady::time_point deadline;
  delivery& out;
  std::string where{};  // "address:port" once connected

  std::string timed_out(std::string_view doing) const {
    return "timed out after " + std::to_string(policy.timeout.count()) + " ms " + std::string(doing);
  }
  // Common handling of a wait that did not complete; true when the attempt is over.
  template <class T>
  bool over(waited<T> const& w, std::string_view doing) const {
    if (w.end == ended::done) return false;
    out.error = w.end == ended::timed_out ? timed_out(doing) : "callback delivery cancelled";
    return true;
  }
};

void classify(delivery& out, std::string_view body) {
  auto const s = out.status;
  if (s >= 200 && s < 300) {
    out.delivered = true;
    out.retryable = false;  // nothing to retry
    return;
  }
  if (s >= 300 && s < 400) {
    // The same request would get the same redirect: not retried.
    out.error = "redirect not followed (status " + std::to_string(s) + ")";
    out.retryable = false;
    return;
  }
  out.error = (s >= 400 && s < 600 ? "callback receiver answered "
                                   : "callback receiver answered unexpected status ") +
              std::to_string(s);
  // 410 Gone: the receiver says the hook is gone for good. Every other 4xx/5xx may be transient (a receiver
  // being deployed, a proxy in front of it, a rate limit) and retries are bounded by maxCallbackAttempts.
  out.retryable = s != 410;
  if (auto const excerpt = printable_excerpt(body, max_excerpt_bytes); !excerpt.empty())
    out.error += ": " + excerpt;
}

template <class Stream, class Request>
asio::awaitable<void> exchange(Stream& stream, Request const& req, attempt& at) {
  auto& out = at.out;
  auto const w = co_await with_deadline(bhttp::async_write(stream, req, use_tuple), at.deadline);
  if (at.over(w, "sending the callback to " + at.where)) co_return;
  if (auto const [ec, n] = *w.value; ec) {
    out.error = "sending the callback to " + at.where + " failed: " + ec.message();
    co_return;
  }
  beast::flat_buffer buffer(max_header_bytes + max_body_read);
  std::optional<bhttp::response_parser<bhttp::string_body>> parser;
  for (int interim = 0;; ++interim) {
    parser.emplace();
    parser->header_limit(max_header_bytes);
    // Unlimited for the parser (its limit refuses a large Content-Length before the status is known); the
    // loop below stops reading after 4 KiB.
    parser->body_limit(boost::none);
    auto const h =
        co_await with_deadline(bhttp::async_read_header(stream, buffer, *parser, use_tuple), at.deadline);
    if (at.over(h, "waiting for the answer of " + at.where)) co_return;
    if (auto const [ec, n] = *h.value; ec) {
      out.error = ec == bhttp::error::end_of_stream
                      ? at.where + " closed the connection without answering"
                      : "reading the answer of " + at.where + " failed: " + ec.message();
      co_return;
    }
    out.status = parser->get().result_int();
    if (out.status >= 200 || out.status == 101 || interim + 1 >= max_interim_responses) break;
  }
  // The status decides; the body is read (at most 4 KiB, within the deadline) only to quote it in an error
  // and so that the receiver is not reset while it still writes a short answer.
  auto& p = *parser;
  while (!p.is_done() && p.get().body().size() < max_body_read) {
    auto const r = co_await with_deadline(bhttp::async_read_some(stream, buffer, p, use_tuple), at.deadline);
    if (r.end != ended::done || std::get<0>(*r.value)) break;
  }
  auto const& body = p.get().body();
  classify(out, std::string_view(body).substr(0, std::min(body.size(), max_body_read)));
}

asio::awaitable<void> run(attempt& at, std::string const& body, std::string const& job_id,
                          std::optional<std::string> const& secret, resolve_fn const& resolve) {
  auto const& url = at.url;
  auto& out = at.out;
  out.retryable = false;
  if (url.host.empty() || url.port == 0 || !is_token_text(url.host_header) || !is_token_text(url.target) ||
      url.target.front() != '/' || !is_token_text(job_id)) {
    out.error = "callback request is malformed (host, target or job id is not valid in an HTTP request)";
    co_return;
  }
  out.retryable = true;

  // 1. The addresses: an IP literal is its own; a name is resolved once, here, and never again.
  addresses list;
  boost::system::error_code lit_ec;
  auto const literal = asio::ip::make_address(url.host, lit_ec);
  bool const is_literal = !lit_ec;
  if (is_literal) {
    list.push_back(literal);
  } else {
    auto r = co_await with_deadline(guarded_resolve(resolve, url.host), at.deadline);
    if (at.over(r, "resolving " + url.host)) co_return;
    auto& resolved = *r.value;
    if (!resolved) {
      out.error = resolved.error().message;
      co_return;
    }
    for (auto const& a : *resolved)
      if (std::find(list.begin(), list.end(), a) == list.end()) list.push_back(a);
    if (list.empty()) {
      out.error = "resolving " + url.host + " returned no address";
      co_return;
    }
  }

  // 2. The policy: any refused address refuses the attempt (a name with one private address among public
  // ones is not a public name).
  if (!at.policy.allow_private_network) {
    for (auto const& a : list) {
      if (!is_refused_address(a)) continue;
      out.address = a.to_string();
      out.retryable = false;
      out.error = is_literal ? "callback target " + url.host + " is a private or reserved address"
                             : "callback target " + url.host + " resolves to " + out.address +
                                   ", a private or reserved address";
      out.error += " (asyncQueue.callbackAllowPrivateNetwork is false)";
      co_return;
    }
  }

  // 3. Connect to a checked address, in the resolver's order.
  tcp::socket socket(co_await asio::this_coro::executor);
  bool connected = false;
  for (auto const& a : list) {
    boost::system::error_code ignored;
    socket.close(ignored);  // a failed connect leaves the socket open
    out.address = a.to_string();
    at.where = endpoint_text(a, url.port);
    auto const c =
        co_await with_deadline(socket.async_connect(tcp::endpoint(a, url.port), use_tuple), at.deadline);
    if (at.over(c, "connecting to " + at.where)) co_return;
    if (auto const [ec] = *c.value; ec) {
      out.error = "connecting to " + at.where + " failed: " + ec.message();
      continue;
    }
    connected = true;
    break;
  }
  if (!connected) co_return;
  out.error.clear();

  // 4. The request.
  auto const timestamp = std::to_string(
      std::chrono::duration_cast<std::chrono::seconds>(system_clock().wall().time_since_epoch()).count());
  bhttp::request<bhttp::span_body<char const>> req{bhttp::verb::post, url.target, 11};
  req.set(bhttp::field::host, url.host_header);
  req.set(bhttp::field::user_agent, "ray/" RAY_VERSION);
  req.set(bhttp::field::content_type, "application/json");
  req.set(bhttp::field::connection, "close");
  req.set("x-ray-job-id", job_id);
  req.set("x-ray-timestamp", timestamp);
  if (secret && !secret->empty()) req.set("x-ray-signature", callback_signature(*secret, timestamp, body));
  req.body() = beast::span<char const>(body.data(), body.size());
  req.prepare_payload();

  if (!url.https) {
    co_await exchange(socket, req, at);
    co_return;
  }

  // 5. TLS: SNI for a name (never for an address), the chain against the system store, the name or address
  // against the certificate (OpenSSL's own check, which says which part failed).
  auto const& tls = http::tls_client();
  if (!tls.context) {
    out.error = tls.error;
    co_return;
  }
  asio::ssl::stream<tcp::socket> stream(std::move(socket), *tls.context);
  if (!http::prepare_peer_check(stream.native_handle(), url.host, is_literal)) {
    out.error = "setting up TLS for " + url.host + " failed";
    co_return;
  }
  auto const hs =
      co_await with_deadline(stream.async_handshake(asio::ssl::stream_base::client, use_tuple), at.deadline);
  if (at.over(hs, "in the TLS handshake with " + at.where)) co_return;
  if (auto const [ec] = *hs.value; ec) {
    out.error =
        "TLS handshake with " + at.where + " failed: " + http::handshake_failure(stream.native_handle(), ec);
    co_return;
  }
  co_await exchange(stream, req, at);
}

}  // namespace

resolve_fn system_resolver() {
  return [](std::string host) { return resolve_with_system(std::move(host)); };
}

std::string callback_signature(std::string_view secret, std::string_view timestamp, std::string_view body) {
  std::string message;
  message.reserve(timestamp.size() + 1 + body.size());
  message.append(timestamp).append(".").append(body);
  return "sha256=" + to_hex(hmac_sha256(secret, message));
}

asio::awaitable<delivery> deliver(callback_url const& url, std::string const& body, std::string const& job_id,
                                  std::optional<std::string> const& secret, callback_policy const& policy,
                                  resolve_fn const& resolve) {
  delivery out;
  try {
    attempt at{url, policy, steady::now() + policy.timeout, out};
    co_await run(at, body, job_id, secret, resolve);
  } catch (boost::system::system_error const& e) {
    out.delivered = false;
    out.error = e.code() == asio::error::operation_aborted
                    ? "callback delivery cancelled"
                    : std::string("callback delivery failed: ") + e.what();
  } catch (std::exception const& e) {
    out.delivered = false;
    out.error = std::string("callback delivery failed: ") + e.what();
  } catch (...) {
    out.delivered = false;
    out.error = "callback delivery failed";
  }
  if (out.delivered) out.error.clear();
  out.error.resize(utf8_safe_prefix(out.error, max_error_bytes));
  co_return out;
}

}  // namespace ray::jobs
