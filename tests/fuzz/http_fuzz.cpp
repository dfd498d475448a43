// libFuzzer target for the whole HTTP request path: the input is the raw byte stream one client sends on one
// TCP connection (any number of pipelined requests, bodies, garbage), written to a real loopback socket of
// Ray's own http::server. Everything a client can reach runs: the framing limits and checks of the server
// (header bytes/count, target length, Host, absolute-form targets, Transfer-Encoding / Content-Length rules,
// Expect, content type/encoding, declared and actual body length, 100 Continue, keep-alive, requests per
// connection, the half-close probe of client_gone), the router (routes, methods, CORS, auth with API keys,
// the rate limiter and X-Forwarded-For), the body decoders, the runtime over the mock backend (native and
// OpenAI routes, streaming included) and every error rendering.
//
// One stack is built on first use, as api::serve wires it (config → mock backend → runtime → router →
// http::server), and lives for the whole run; all of it runs on one io_context driven by the fuzzer's thread.
// Per input: connect, write the bytes, shutdown(SHUT_WR), read until EOF or reset, then drain the io_context
// until the server is idle again. Checked:
//   - whatever Ray answered starts with "HTTP/1.1 " (every response, the 100 Continue included, is a status
//     line of that version);
//   - Ray closes the connection within a bound (a stuck session is a bug: every read has a deadline and the
//     client has half-closed), and afterwards no connection, request or runtime work is left over.
// A failed check aborts with a message on stderr, so libFuzzer saves the input. HTTP_FUZZ_VERBOSE=1 prints
// every answer (to see what a seed or a saved input does). The target turns libFuzzer's entropic schedule
// off by default (see LLVMFuzzerInitialize: it cost ~85 % of the time here); -entropic=1 brings it back.
//
// Seeds: tests/fuzz/corpus/http/ (raw requests; the API keys below appear in some of them), dictionary:
// tests/fuzz/http.dict.
#include "ray/api/app.hpp"

#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

// The accepted API keys (the seeds carry them in `authorization: Bearer …`).
constexpr std::string_view api_keys = "fuzz-key-0123456789abcdef,fuzz-key2-ZYXWVUTSRQPONMLK";

// Larger inputs only repeat what the limits below already refuse; this keeps one execution short.
constexpr std::size_t max_input = 64 * 1024;

// How long one connection may take before the target gives up on it. Every server-side wait is bounded by
// the 200 ms timeouts below or by a client that has already half-closed, so seconds mean a hung session.
constexpr auto connection_bound = 10s;
constexpr auto idle_bound = 2s;

[[noreturn]] void fail(char const* what) {
  std::fprintf(stderr, "http_fuzz: %s\n", what);
  __builtin_trap();
}

ray::config::config fuzz_config() {
  auto cfg = ray::config::profile_defaults("tiny").value();
  cfg.model.adapter.kind = ray::config::adapter_kind::mock;
  cfg.model.adapter.latency_ms = 0;  // the answer is ready at once: no timer per request
  // Small limits, so the fuzzer reaches every "too large" branch with short inputs, and short read
  // deadlines, so an input that stops in the middle of a header or body cannot hold the run.
  cfg.server.max_header_bytes = 2048;
  cfg.server.max_headers = 32;
  cfg.server.max_target_bytes = 512;
  cfg.server.request_body_limit_bytes = 4096;
  cfg.server.headers_timeout_ms = 200;
  cfg.server.headers_timeout_under_pressure_ms = 100;
  cfg.server.body_timeout_ms = 200;
  cfg.server.keep_alive_timeout_ms = 200;
  cfg.server.max_requests_per_connection = 8;
  cfg.server.max_connections = 16;
  cfg.server.sse_keep_alive_ms = 100;
  cfg.server.cors_allow_origins = {"https://app.example"};
  // The result cache would make an answer depend on earlier inputs (a crash must replay from its input
  // alone) and would hold up to maxEntries answers across the run; off.
  cfg.cache.enabled = false;
  // Auth on, so both the 401 path and the authenticated routes are reached.
  cfg.auth.enabled = true;
  // Rate limiting on, but never refusing (at most 1 000 000 requests a minute), so its code runs on every
  // work request without blocking the fuzzer. Proxy headers are believed from loopback, so X-Forwarded-For
  // values of the inputs become limiter keys: maxKeys bounds the table and its eviction runs too.
  cfg.rate_limit.enabled = true;
  cfg.rate_limit.window_ms = 60'000;
  cfg.rate_limit.max_requests = 1'000'000;
  cfg.rate_limit.max_keys = 256;
  cfg.rate_limit.key_strategy = ray::config::rate_limit_key::ip_api_key;
  cfg.rate_limit.trust_proxy_headers = true;
  // Only errors (an internal failure is worth seeing); request lines and warnings would be one per input.
  cfg.telemetry.level = ray::config::log_level::error;
  if (auto ok = ray::config::validate(cfg); !ok) {
    std::fprintf(stderr, "http_fuzz: invalid config: %s\n", ok.error().message.c_str());
    std::abort();
  }
  return cfg;
}

// The long-lived in-process gateway. Members are in construction order (each refers to those above it).
struct gateway {
  ray::config::loaded_config loaded{fuzz_config(), {}, {}};
  // Synchronous: no writer thread, and the few error lines appear at once.
  ray::telemetry::logger log{ray::telemetry::logger_options{
      .service = "ray-fuzz", .min_level = ray::telemetry::level::error, .synchronous = true}};
  asio::io_context ioc{1};
  ray::telemetry::registry metrics;
  // No pressure sampler: it would read this machine's /proc and cgroup files, and the RSS of a sanitized
  // process would trip memory degradation at random.
  ray::runtime::registry models{
      ioc.get_executor(),
      loaded.cfg,
      [this](ray::config::config const& c) { return ray::backend::make_mock(ioc.get_executor(), c); },
      metrics,
      log,
      nullptr};
  ray::api::app app{loaded, log, metrics, models.primary_backend(), models.primary(), models};
  std::optional<ray::api::router> router;
  std::optional<ray::http::server> server;
  tcp::endpoint endpoint;

  gateway() {
    app.rejections = std::make_unique<ray::telemetry::rejection_summarizer>(log);
    auto keys = ray::access::key_set::load(loaded.cfg.auth, std::string(api_keys));
    auto proxies = ray::access::proxy_list::parse(loaded.cfg.rate_limit.trusted_proxies);
    if (!keys || !proxies) fail("cannot build the access state");
    app.access.auth = loaded.cfg.auth;
    app.access.rate = loaded.cfg.rate_limit;
    app.access.keys = std::make_shared<ray::access::key_set const>(std::move(*keys));
    app.access.limiter =
        std::make_unique<ray::access::rate_limiter>(loaded.cfg.rate_limit, ray::system_clock());
    app.access.proxies = std::move(*proxies);
    router.emplace(app);
    server.emplace(ioc, *router, ray::api::limits_from(loaded.cfg.server));
    app.server = &*server;
    auto ep = server->listen("127.0.0.1", 0);
    if (!ep) fail("cannot listen on 127.0.0.1");
    endpoint = *ep;
    server->start();
    models.start();
  }

  bool idle() const {
    auto const st = app.rt.stats();
    return server->stats().connections.load() == 0 && server->stats().active_requests.load() == 0 &&
           st.in_flight == 0 && st.queue_depth == 0;
  }
};

// Never destroyed: the process exits with it (destroying it would race pending frames against their owners,
// the problem serve() solves with destroy_pending_work). It stays reachable, so LeakSanitizer ignores it.
gateway* the_gateway = nullptr;

// HTTP_FUZZ_VERBOSE=1 prints every answer to stderr: for reading what a seed or a crash input did.
bool verbose = false;

gateway& stack() {
  if (!the_gateway) {
    // Writes to a socket the server has reset must fail with EPIPE, not kill the fuzzer.
    std::signal(SIGPIPE, SIG_IGN);
    char const* v = std::getenv("HTTP_FUZZ_VERBOSE");
    verbose = v && *v && *v != '0';
    the_gateway = new gateway();
  }
  return *the_gateway;
}

// One client connection: writes the input, half-closes, and reads until the server closes.
struct client {
  explicit client(asio::io_context& ioc) : sock(ioc) {}
  tcp::socket sock;
  std::string head;  // the first bytes of the answer (all of it when `verbose`)
  char scratch[16 * 1024];
  bool done{false};     // the read side saw EOF or an error
  bool writing{false};  // the write's handler still refers to this object

  void read() {
    sock.async_read_some(asio::buffer(scratch), [this](boost::system::error_code ec, std::size_t n) {
      if (verbose)
        head.append(scratch, n);
      else if (head.size() < 16)
        head.append(scratch, std::min(n, 16 - head.size()));
      if (ec) {
        done = true;  // EOF, or a reset after Ray closed with unread input
        return;
      }
      read();
    });
  }
};

}  // namespace

// libFuzzer 14's entropic schedule keeps every feature seen fewer than 256 times in a "rare" list and
// searches that list linearly for each feature an input hits. One execution here hits ~100 000 features (the
// whole Asio/Beast/JSON stack runs), so the schedule alone cost 85-90 % of the time (42 exec/s against 290
// with -entropic=0, measured). The flag is put first, so an -entropic=1 on the command line still wins.
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  static std::vector<char*> args;
  static char entropic_off[] = "-entropic=0";
  args.assign(*argv, *argv + *argc);
  args.insert(args.begin() + 1, entropic_off);
  args.push_back(nullptr);
  *argc = static_cast<int>(args.size() - 1);
  *argv = args.data();
  std::fprintf(stderr, "INFO: http_fuzz: -entropic=0 by default (pass -entropic=1 to override)\n");
  (void)stack();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  if (size > max_input) return 0;
  gateway& g = stack();
  if (g.ioc.stopped()) g.ioc.restart();
  client c(g.ioc);

  c.sock.async_connect(g.endpoint, [&c, data, size](boost::system::error_code ec) {
    if (ec) fail("cannot connect to the server");
    c.read();
    // Reading and writing at once: Ray may answer (and close) before it has read everything.
    c.writing = true;
    asio::async_write(c.sock, asio::buffer(data, size), [&c](boost::system::error_code, std::size_t) {
      c.writing = false;
      boost::system::error_code ignored;
      c.sock.shutdown(tcp::socket::shutdown_send, ignored);
    });
  });

  auto const deadline = std::chrono::steady_clock::now() + connection_bound;
  while (!c.done) {
    if (std::chrono::steady_clock::now() >= deadline)
      fail("the server did not close the connection within 10 s of the client's half-close");
    g.ioc.run_one_until(deadline);
  }

  if (verbose) {
    std::fprintf(stderr, "--- answer (%zu bytes):\n", c.head.size());
    std::fwrite(c.head.data(), 1, c.head.size(), stderr);
    std::fprintf(stderr, "\n---\n");
  }

  // Every answer starts with the status line of HTTP/1.1 (what arrived may be cut short by a reset, so a
  // prefix of it is enough; nothing at all is fine too: an input that ends before its header section does).
  constexpr std::string_view status_line = "HTTP/1.1 ";
  std::string_view got(c.head);
  if (got.substr(0, std::min(got.size(), status_line.size())) != status_line.substr(0, got.size()))
    fail("Ray's answer does not start with \"HTTP/1.1 \"");

  // A reset instead of a FIN: this side closes first, so it would hold every port in TIME_WAIT for a minute;
  // at a few hundred inputs a second that is most of the ~28 000 ephemeral ports.
  boost::system::error_code ignored;
  c.sock.set_option(asio::socket_base::linger(true, 0), ignored);
  c.sock.close(ignored);

  // The connection is closed; let its watchdog and any spawned work finish, so the next input starts from an
  // idle server.
  auto const idle_deadline = std::chrono::steady_clock::now() + idle_bound;
  for (;;) {
    g.ioc.poll();
    if (g.idle() && !c.writing) break;
    if (std::chrono::steady_clock::now() >= idle_deadline)
      fail("work of a closed connection is still pending after 2 s");
    g.ioc.run_one_for(10ms);
  }
  return 0;
}
