// ray::test::pull_server — a scripted loopback HTTP/1.1 (optionally TLS) origin for the `ray model pull`
// tests. One thread accepts and serves connections one after another (a pull opens one at a time); each
// request is recorded, then handed to the test's handler, which writes whatever bytes it wants (a short body,
// a redirect, headers only) and may cut the connection mid-body. POSIX sockets and OpenSSL, no Asio.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

namespace ray::test {

struct seen_request {
  std::string method;
  std::string target;
  std::map<std::string, std::string> headers;  // lower-case names
  std::optional<std::string> header(std::string const& name) const;
};

// One accepted connection, as the handler sees it.
class server_conn {
 public:
  // False once the peer is gone.
  bool write(std::string_view bytes);
  // Waits until the peer closes its side (or resets); false at the deadline.
  bool wait_peer_close(std::chrono::steady_clock::time_point until);

 private:
  friend class pull_server;
  int fd_{-1};
  SSL* ssl_{nullptr};
};

using request_handler = std::function<void(seen_request const&, server_conn&)>;

class pull_server {
 public:
  // TLS when cert_file/key_file are given (PEM chain and key).
  explicit pull_server(request_handler handler, std::string cert_file = "", std::string key_file = "");
  ~pull_server();
  pull_server(pull_server const&) = delete;
  pull_server& operator=(pull_server const&) = delete;

  std::uint16_t port() const { return port_; }
  // "http(s)://127.0.0.1:PORT" + path.
  std::string url(std::string_view path) const;
  std::vector<seen_request> requests() const;
  // Handshakes that failed (TLS), e.g. a client that does not trust the certificate.
  int failed_handshakes() const;

 private:
  void loop();
  void serve(int fd);

  request_handler handler_;
  SSL_CTX* tls_{nullptr};
  int listen_fd_{-1};
  int wake_[2]{-1, -1};
  std::uint16_t port_{0};
  mutable std::mutex mu_;
  std::vector<seen_request> requests_;
  int failed_handshakes_{0};
  std::thread thread_;
};

// A response head: "HTTP/1.1 <status>\r\n" + each header + "\r\n".
std::string response_head(std::string_view status,
                          std::vector<std::pair<std::string, std::string>> const& headers);

// Serves `body` honouring `Range: bytes=N-` (206 with Content-Range), else 200; written in 16 KiB pieces.
// When cut_after is set, the connection is closed after that many body bytes of this response (headers still
// promise everything).
void serve_body(seen_request const& req, server_conn& c, std::string_view body,
                std::optional<std::size_t> cut_after = std::nullopt, bool honour_range = true);

}  // namespace ray::test
