// Shared helpers of the integration tests: start the real `ray serve` on port 0 with a config, build raw
// requests, and check error responses against http-api.md §6. Header-only, included by the integration test
// sources.
#pragma once

#include "support/raw_client.hpp"
#include "support/ray_process.hpp"

#include <gtest/gtest.h>
#include <boost/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace ray::itest {

namespace rt = ray::test;
using namespace std::chrono_literals;

// Deadline for anything that is not itself the subject of a timing assertion.
inline constexpr auto kIo = 10s;

// A test config: profile tiny, mock backend answering at once, `server` merged over nothing else.
inline boost::json::object test_config(boost::json::object server = {}, boost::json::object adapter = {}) {
  boost::json::object a{{"kind", "mock"}, {"latencyMs", 0}};
  for (auto const& [k, v] : adapter)
    a[k] = v;
  boost::json::object cfg{{"profile", "tiny"}, {"model", boost::json::object{{"adapter", a}}}};
  if (!server.empty()) cfg["server"] = server;
  return cfg;
}

// Merges `extra` into `cfg` (one level of objects deep merge, like the loader's).
inline boost::json::object with(boost::json::object cfg, boost::json::object const& extra) {
  for (auto const& [k, v] : extra) {
    if (v.is_object() && cfg.contains(k) && cfg[k].is_object()) {
      for (auto const& [k2, v2] : v.as_object())
        cfg[k].as_object()[k2] = v2;
    } else {
      cfg[k] = v;
    }
  }
  return cfg;
}

// The `ray` the suites drive: this build's, or $RAY_TEST_BINARY (CI runs the soak against the Release binary
// with the sanitizer-built test).
inline std::string ray_binary() {
  char const* v = std::getenv("RAY_TEST_BINARY");
  return v != nullptr && *v != '\0' ? std::string(v) : std::string(RAY_BINARY);
}

// `ray serve --config <file> --port 0 [extra args]` in a private temp dir (also its working directory).
class ray_server {
 public:
  explicit ray_server(boost::json::object const& config, std::vector<std::string> extra_args = {},
                      std::vector<std::pair<std::string, std::string>> env = {}) {
    auto path = rt::write_config(dir_, config);
    std::vector<std::string> args{"serve", "--config", path.string(), "--port", "0"};
    for (auto& a : extra_args)
      args.push_back(std::move(a));
    proc_ = std::make_unique<rt::ray_process>(rt::spawn_options{.binary = ray_binary(),
                                                                .args = std::move(args),
                                                                .env = std::move(env),
                                                                .working_directory = dir_.path()});
  }

  // Waits for the listening line; false (with the reason in a gtest failure) when it never comes.
  [[nodiscard]] ::testing::AssertionResult wait_listening() {
    auto p = proc_->wait_listening(rt::in(kIo));
    if (!p) {
      return ::testing::AssertionFailure()
             << "no `gateway listening` line with a port within " << kIo.count() << " s; exit status "
             << (proc_->has_exited() ? std::to_string(*proc_->wait_exit(rt::in(0s)))
                                     : std::string("(running)"))
             << "\n"
             << proc_->output();
    }
    port_ = *p;
    return ::testing::AssertionSuccess();
  }

  std::uint16_t port() const { return port_; }
  // The config file the server was started with (tests rewrite it before SIGHUP).
  std::filesystem::path config_path() const { return dir_.path() / "ray.json"; }
  rt::ray_process& process() { return *proc_; }
  rt::temp_dir const& dir() const { return dir_; }
  rt::raw_client connect(std::string const& host = "127.0.0.1") { return rt::raw_client(port_, host); }

  // The last `max` bytes of the server's output, for failure messages.
  std::string output_tail(std::size_t max = 6000) const {
    auto all = proc_->output();
    return all.size() <= max ? all : "…" + all.substr(all.size() - max);
  }

 private:
  rt::temp_dir dir_;
  std::unique_ptr<rt::ray_process> proc_;
  std::uint16_t port_{0};
};

// ---- requests
// ------------------------------------------------------------------------------------------------

inline constexpr std::string_view kHost = "Host: localhost\r\n";

// `METHOD target HTTP/1.1` + header lines (each ending in CRLF) + CRLF + body.
inline std::string req(std::string_view method, std::string_view target, std::string_view headers,
                       std::string_view body = {}) {
  std::string r;
  r.append(method)
      .append(" ")
      .append(target)
      .append(" HTTP/1.1\r\n")
      .append(headers)
      .append("\r\n")
      .append(body);
  return r;
}

inline std::string get(std::string_view target, std::string_view extra_headers = {}) {
  return req("GET", target, std::string(kHost) + std::string(extra_headers));
}

inline std::string post(std::string_view target, std::string_view body, std::string_view content_type,
                        std::string_view extra_headers = {}) {
  std::string h(kHost);
  h.append("Content-Type: ").append(content_type).append("\r\n");
  h.append("Content-Length: ").append(std::to_string(body.size())).append("\r\n");
  h.append(extra_headers);
  return req("POST", target, h, body);
}

inline std::string post_json(std::string_view target, std::string_view body,
                             std::string_view extra_headers = {}) {
  return post(target, body, "application/json", extra_headers);
}

// Just the header section of a POST declaring `content_length` (the body is sent separately, or never).
inline std::string post_head(std::string_view target, std::size_t content_length,
                             std::string_view content_type, std::string_view extra_headers = {}) {
  std::string h(kHost);
  h.append("Content-Type: ").append(content_type).append("\r\n");
  h.append("Content-Length: ").append(std::to_string(content_length)).append("\r\n");
  h.append(extra_headers);
  return req("POST", target, h);
}

// ---- checks
// --------------------------------------------------------------------------------------------------

inline std::optional<boost::json::object> json_body(rt::http_response const& r) {
  boost::system::error_code ec;
  auto v = boost::json::parse(r.body, ec);
  if (ec || !v.is_object()) return std::nullopt;
  return std::move(v.as_object());
}

inline bool is_generated_request_id(std::string const& id) {
  static std::regex const re("^req_[0-9a-f]{16}$");
  return std::regex_match(id, re);
}

// A native-route error response (§6): the status, `{"error":{"code","message"}}` with a non-empty message,
// JSON content type, and an x-request-id.
inline ::testing::AssertionResult is_error(rt::http_response const& r, int status, std::string_view code) {
  if (r.status != status) {
    return ::testing::AssertionFailure()
           << "status " << r.status << ", expected " << status << " (" << code << "); response:\n"
           << r.describe();
  }
  auto body = json_body(r);
  if (!body) return ::testing::AssertionFailure() << "body is not a JSON object:\n" << r.describe();
  auto const* err = body->if_contains("error");
  if (err == nullptr || !err->is_object()) {
    return ::testing::AssertionFailure() << "body has no `error` object:\n" << r.describe();
  }
  auto got_code = rt::string_field(err->as_object(), "code");
  if (got_code != code) {
    return ::testing::AssertionFailure() << "error.code `" << got_code << "`, expected `" << code << "`:\n"
                                         << r.describe();
  }
  if (rt::string_field(err->as_object(), "message").empty()) {
    return ::testing::AssertionFailure() << "error.message missing or empty:\n" << r.describe();
  }
  auto ct = r.header("content-type").value_or("");
  if (!ct.starts_with("application/json")) {
    return ::testing::AssertionFailure() << "content-type `" << ct << "` is not application/json:\n"
                                         << r.describe();
  }
  if (!r.has_header("x-request-id")) {
    return ::testing::AssertionFailure() << "no x-request-id:\n" << r.describe();
  }
  return ::testing::AssertionSuccess();
}

// The response says `connection: close` and the server then closes without sending anything more.
inline ::testing::AssertionResult closes_after(rt::raw_client& c, rt::http_response const& r) {
  if (!r.connection_close()) {
    return ::testing::AssertionFailure() << "response lacks `connection: close`:\n" << r.describe();
  }
  if (!c.is_closed_by_peer(rt::in(kIo))) {
    return ::testing::AssertionFailure() << "server did not close the connection within " << kIo.count()
                                         << " s after a `connection: close` response";
  }
  if (!c.pending().empty()) {
    return ::testing::AssertionFailure() << "server sent bytes after the final response: " << c.pending();
  }
  return ::testing::AssertionSuccess();
}

// The `connection` header tells the truth: with `close` the server closes; without it, the same connection
// serves another request (so whatever body the server did not want was read and discarded).
inline ::testing::AssertionResult connection_consistent(rt::raw_client& c, rt::http_response const& r) {
  if (r.connection_close()) return closes_after(c, r);
  if (!c.send(get("/livez"))) {
    return ::testing::AssertionFailure()
           << "response kept the connection alive but the next send failed: " << c.last_error()
           << "\nfirst response:\n"
           << r.describe();
  }
  auto next = c.read_response(rt::in(kIo));
  if (!next) {
    return ::testing::AssertionFailure() << "response kept the connection alive but a next GET /livez got no "
                                            "response: "
                                         << c.last_error() << "\nfirst response:\n"
                                         << r.describe();
  }
  if (next->status != 200) {
    return ::testing::AssertionFailure() << "response kept the connection alive but a next GET /livez got "
                                         << next->status << " (unread request bytes left behind?):\n"
                                         << next->describe() << "\nfirst response:\n"
                                         << r.describe();
  }
  return ::testing::AssertionSuccess();
}

// ---- shared helpers of the integration suites -------------------------------------------------------------

// Tests that are not about pressure read it from an empty tree, so the host's own load (PSI of a busy CI box)
// cannot degrade their requests.
inline std::vector<std::string> no_host_pressure() {
  static rt::temp_dir empty;
  return {"--system-root", empty.path().string()};
}

// One request on a fresh connection; nullopt when the server is not there or does not answer in time.
inline std::optional<rt::http_response> roundtrip(std::uint16_t port, std::string const& request,
                                                  rt::deadline until = rt::in(kIo)) {
  try {
    rt::raw_client c(port);
    if (!c.send(request, until)) return std::nullopt;
    return c.read_response(until);
  } catch (std::exception const&) {
    return std::nullopt;
  }
}

// The whole Prometheus text of a server ("" when it does not answer 200).
inline std::string scrape(std::uint16_t port) {
  auto r = roundtrip(port, get("/metrics"));
  return r && r->status == 200 ? r->body : std::string();
}

// The value of one series (name plus its exact label set) in a Prometheus text, or -1 when absent.
inline double value_in(std::string const& text, std::string const& series) {
  std::size_t pos = 0;
  while ((pos = text.find(series, pos)) != std::string::npos) {
    bool at_line_start = pos == 0 || text[pos - 1] == '\n';
    auto after = pos + series.size();
    if (at_line_start && after < text.size() && text[after] == ' ')
      return std::stod(text.substr(after + 1, text.find('\n', after) - after - 1));
    pos = after;
  }
  return -1;
}

// The value of one series in a server's Prometheus text, or -1 when absent.
inline double metric(std::uint16_t port, std::string const& series) {
  return value_in(scrape(port), series);
}

// A counter whose label set may not exist yet (it appears when first incremented): absent = 0.
inline double counter(std::uint16_t port, std::string const& series) {
  return std::max(0.0, metric(port, series));
}

// Polls until `pred` holds or the deadline passes (never a fixed sleep standing in for an event).
template <class Pred>
bool eventually(Pred pred, std::chrono::steady_clock::duration within = kIo) {
  auto until = rt::in(within);
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling interval of a deadline-bounded wait
  }
  return pred();
}

}  // namespace ray::itest
