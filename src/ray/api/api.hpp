// ray::api — the HTTP surface: route table, request decoding, handlers (native, ops, jobs placeholder), the
// ONE error→HTTP mapping, and `serve` (startup checks, signals, graceful shutdown).
#pragma once

#include "ray/config/config.hpp"
#include "ray/core/core.hpp"
#include "ray/http/http.hpp"
#include "ray/runtime/runtime.hpp"

#include <boost/json/value.hpp>

#include <functional>
#include <string>

namespace ray::api {

// Which error body a route uses: Ray's native `{"error":{"code","message","details"?}}` or OpenAI's envelope
// `{"error":{"message","type","param","code"}}`.
enum class envelope { native, openai };

// The one mapping (http-api.md §6): status, `x-should-retry`, `retry-after` + `retry-after-ms`,
// `www-authenticate`, and the JSON body. Retry-After is an integer in [1, 30] seconds.
http::response error_response(ray::error const& err, envelope env = envelope::native);
http::status status_of(errc code) noexcept;

// Decodes a /v1/infer body (http-api.md §2). Empty body = {}. Errors name the field.
result<runtime::infer_request> decode_infer_request(std::string_view body, config::config const& cfg);

// Renders a successful /v1/infer response in the TypeScript gateway's key order.
std::string render_infer_response(runtime::infer_result const& r, std::string const& request_id,
                                  std::chrono::system_clock::time_point created);

// `ray serve`: checks, binds, serves until SIGTERM/SIGINT. Returns the process exit code
// (0 clean shutdown, 1 runtime failure such as a port in use, 2 configuration refused).
struct serve_options {
  std::string system_root{"/"};  // where proc/ and sys/fs/cgroup/ are read from
  // Re-reads the config (same file, environment and flags) for SIGHUP; unset = reload not possible.
  std::function<result<config::loaded_config>()> reload{};
};
int serve(config::loaded_config loaded, serve_options opts = {});

// The HTTP server's limits of a config's server section (serve() and a SIGHUP reload use it).
http::limits limits_from(config::server_config const& s);

}  // namespace ray::api
