// ray::test::raw_client — one TCP connection to a loopback server, spoken to in raw bytes so tests control
// the exact framing (partial header sections, lying Content-Lengths, pipelining, Expect: 100-continue). It
// parses HTTP/1.1 responses (interim 1xx ones too, each returned as its own response) and observes the peer
// closing. Every wait has a deadline; nothing sleeps. Not thread-safe: one test thread per client.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ray::test {

struct http_response {
  std::string version;  // "HTTP/1.1"
  int status{0};
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;  // in order, repeats kept, names as sent
  std::string body;                                          // de-chunked
  bool chunked{false};
  std::string raw_head;                             // status line + headers + CRLFCRLF, as received
  std::chrono::steady_clock::time_point head_at{};  // when the header section was complete
  std::chrono::steady_clock::time_point done_at{};  // when the whole response was read

  // First value of the header (case-insensitive name), nullopt when absent.
  std::optional<std::string> header(std::string_view name) const;
  // Every value of the header, in order.
  std::vector<std::string> header_values(std::string_view name) const;
  bool has_header(std::string_view name) const { return header(name).has_value(); }
  // True when a `connection` header carries the `close` token.
  bool connection_close() const;
  bool is_interim() const { return status >= 100 && status < 200; }
  // Status line, headers and (truncated) body, for failure messages.
  std::string describe() const;
};

enum class read_end { none, eof, reset, error };

class raw_client {
 public:
  // Connects to host:port (a loopback address). Throws std::runtime_error when the connection is refused.
  explicit raw_client(std::uint16_t port, std::string const& host = "127.0.0.1");
  ~raw_client();
  raw_client(raw_client&& other) noexcept;
  raw_client& operator=(raw_client&& other) noexcept;
  raw_client(raw_client const&) = delete;
  raw_client& operator=(raw_client const&) = delete;

  // Sends all bytes (waits for buffer space until the deadline). False when the peer is gone
  // (EPIPE/ECONNRESET) or the deadline passed; last_error() says which.
  bool send(std::string_view bytes, std::chrono::steady_clock::time_point until);
  bool send(std::string_view bytes);  // with a 10 s deadline

  // Reads one response. `head_request` = the request was HEAD (no body follows whatever the headers say).
  // 1xx responses are returned on their own (call again for the final one). nullopt on deadline, on the peer
  // closing before a whole response or on a malformed response; last_error() says which and what was
  // received.
  std::optional<http_response> read_response(std::chrono::steady_clock::time_point until,
                                             bool head_request = false);

  // Reads until the peer closes (EOF or reset) or the deadline; returns every byte received and not yet
  // consumed by read_response. closed() tells whether the peer closed.
  std::string read_until_closed(std::chrono::steady_clock::time_point until);

  // Waits until the peer closes (EOF or ECONNRESET): true then, false at the deadline. Bytes received
  // meanwhile are kept in pending() — a test asserting "closed without a response" checks that it is empty.
  bool is_closed_by_peer(std::chrono::steady_clock::time_point until);

  // Waits up to the deadline for any byte; true when one arrived (kept in pending()). False on deadline or
  // close.
  bool wait_readable(std::chrono::steady_clock::time_point until);

  void shutdown_write();
  void close();

  bool closed() const { return end_ != read_end::none; }
  read_end end() const { return end_; }
  std::optional<std::chrono::steady_clock::time_point> closed_at() const { return closed_at_; }
  std::chrono::steady_clock::time_point connected_at() const { return connected_at_; }
  // Time since connect.
  std::chrono::steady_clock::duration elapsed() const {
    return std::chrono::steady_clock::now() - connected_at_;
  }
  std::string const& pending() const { return buf_; }
  std::string const& last_error() const { return error_; }
  int fd() const { return fd_; }

 private:
  // Receives what is available (waiting up to `until`); false on deadline or when the peer closed.
  bool fill(std::chrono::steady_clock::time_point until);
  void fail(std::string what);

  int fd_{-1};
  std::string buf_;
  read_end end_{read_end::none};
  std::optional<std::chrono::steady_clock::time_point> closed_at_;
  std::chrono::steady_clock::time_point connected_at_{};
  std::string error_;
};

// Milliseconds of a duration, as a double (for messages and multiples of configured intervals).
inline double ms(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

}  // namespace ray::test
