// Private to `ray model`: the blocking HTTP(S) fetch (download.cpp) and the models-dir helpers
// (model_store.cpp) that pull.cpp builds on.
#pragma once

#include "ray/core/core.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ray::ops::detail {

// ---- download.cpp

struct fetch_limits {
  int max_redirects{5};
  std::chrono::milliseconds connect_timeout{15'000};
  std::chrono::milliseconds idle_timeout{30'000};
  std::size_t max_header_bytes{16 * 1024};  // one response's header section
};

// The final (non-redirect) response's head: 200, 206 or 416; every other status ends the fetch first.
struct response_head {
  int status{0};
  std::optional<std::uint64_t> content_length;
  std::string content_range;  // raw header value, "" when absent
  std::string url;            // the URL that answered (after redirects)
};

// What the fetch hands the bytes to. An error from either call ends the fetch as `fatal` with its message.
class fetch_sink {
 public:
  virtual ~fetch_sink() = default;
  // true: read the body; false: the head says all there is (a 416 for a file already complete).
  virtual result<bool> on_head(response_head const& head) = 0;
  virtual result<void> on_body(std::string_view bytes) = 0;
};

enum class fetch_end {
  complete,   // the whole body (as framed by the response) went to the sink
  transient,  // connection refused, reset, cut short or idle too long; 5xx, 408, 429: worth a retry
  fatal,      // bad URL, redirect rules, TLS verification, 4xx, a sink error: retrying cannot help
};
struct fetch_result {
  fetch_end end{fetch_end::fatal};
  std::string error;  // "" when complete
};

// GET `url` (http or https), with `Range: bytes=<range_from>-` when range_from > 0, following up to
// max_redirects redirects. Blocking: runs its own io_context on the calling thread.
fetch_result fetch(std::string const& url, std::uint64_t range_from, fetch_limits const& lim,
                   fetch_sink& sink);

// ---- model_store.cpp

// Lower-case hex SHA-256 of a file's first `length` bytes (all of it when nullopt), fed to `hasher` as read.
result<std::string> hash_file(std::string const& path, std::optional<std::uint64_t> length,
                              sha256_hasher& hasher);
// Writes "<hex>  <name>.gguf\n" to <dir>/<name>.gguf.sha256 (temp file + rename).
result<void> write_sidecar(std::string const& dir, std::string const& name, std::string const& hex);
// Bytes free for an unprivileged writer on the filesystem of `dir` (statvfs f_bavail × f_frsize).
result<std::uint64_t> free_bytes(std::string const& dir);
// "285.7 KiB", "1.2 GiB" (binary units, one decimal; bytes below 1 KiB as "512 B").
std::string human_bytes(double bytes);
// fsync(2) of a directory, so a rename in it survives a crash.
void sync_directory(std::string const& dir);

}  // namespace ray::ops::detail
