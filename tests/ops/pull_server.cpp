#include "ops/pull_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <stdexcept>

namespace ray::test {

std::optional<std::string> seen_request::header(std::string const& name) const {
  auto const it = headers.find(name);
  if (it == headers.end()) return std::nullopt;
  return it->second;
}

bool server_conn::write(std::string_view bytes) {
  while (!bytes.empty()) {
    int n = 0;
    if (ssl_ != nullptr) {
      n = SSL_write(ssl_, bytes.data(), static_cast<int>(bytes.size()));
    } else {
      n = static_cast<int>(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL));
    }
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

bool server_conn::wait_peer_close(std::chrono::steady_clock::time_point until) {
  char buf[4096];
  for (;;) {
    auto const left =
        std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    auto const n = ::recv(fd_, buf, sizeof buf, 0);  // raw bytes: a TLS alert or close counts the same
    if (n <= 0) return true;
  }
}

pull_server::pull_server(request_handler handler, std::string cert_file, std::string key_file)
    : handler_(std::move(handler)) {
  ::signal(SIGPIPE, SIG_IGN);
  if (!cert_file.empty()) {
    tls_ = SSL_CTX_new(TLS_server_method());
    if (tls_ == nullptr || SSL_CTX_use_certificate_chain_file(tls_, cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(tls_, key_file.c_str(), SSL_FILETYPE_PEM) != 1)
      throw std::runtime_error("pull_server: cannot load " + cert_file + " / " + key_file);
  }
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::listen(listen_fd_, 16) != 0 ||
      ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0 || ::pipe2(wake_, O_CLOEXEC) != 0)
    throw std::runtime_error("pull_server: cannot listen on loopback");
  port_ = ntohs(a.sin_port);
  thread_ = std::thread([this] { loop(); });
}

pull_server::~pull_server() {
  char x = 0;
  [[maybe_unused]] auto n = ::write(wake_[1], &x, 1);
  thread_.join();
  ::close(listen_fd_);
  ::close(wake_[0]);
  ::close(wake_[1]);
  if (tls_ != nullptr) SSL_CTX_free(tls_);
}

std::string pull_server::url(std::string_view path) const {
  return std::string(tls_ ? "https" : "http") + "://127.0.0.1:" + std::to_string(port_) + std::string(path);
}

std::vector<seen_request> pull_server::requests() const {
  std::lock_guard lock(mu_);
  return requests_;
}

int pull_server::failed_handshakes() const {
  std::lock_guard lock(mu_);
  return failed_handshakes_;
}

void pull_server::loop() {
  for (;;) {
    pollfd p[2]{{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) continue;
    if (p[1].revents != 0) return;
    int const fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    serve(fd);
    ::close(fd);
  }
}

void pull_server::serve(int fd) {
  server_conn c;
  c.fd_ = fd;
  timeval tv{10, 0};  // a stuck client cannot wedge the test: reads give up after 10 s
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (tls_ != nullptr) {
    c.ssl_ = SSL_new(tls_);
    SSL_set_fd(c.ssl_, fd);
    if (SSL_accept(c.ssl_) != 1) {
      ERR_clear_error();
      SSL_free(c.ssl_);
      std::lock_guard lock(mu_);
      ++failed_handshakes_;
      return;
    }
  }
  std::string head;
  char buf[4096];
  while (head.find("\r\n\r\n") == std::string::npos && head.size() < 65536) {
    int const n =
        c.ssl_ ? SSL_read(c.ssl_, buf, sizeof buf) : static_cast<int>(::recv(fd, buf, sizeof buf, 0));
    if (n <= 0) break;
    head.append(buf, static_cast<std::size_t>(n));
  }
  if (auto const end = head.find("\r\n\r\n"); end != std::string::npos) {
    seen_request r;
    std::size_t pos = head.find("\r\n");
    auto const line = head.substr(0, pos);
    auto const sp1 = line.find(' '), sp2 = line.rfind(' ');
    r.method = line.substr(0, sp1);
    r.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    while (pos < end) {
      auto const next = head.find("\r\n", pos + 2);
      auto const h = head.substr(pos + 2, next - pos - 2);
      pos = next;
      auto const colon = h.find(':');
      if (colon == std::string::npos) continue;
      std::string name = h.substr(0, colon);
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char ch) { return std::tolower(ch); });
      auto value = h.substr(colon + 1);
      value.erase(0, value.find_first_not_of(' '));
      r.headers[name] = value;
    }
    {
      std::lock_guard lock(mu_);
      requests_.push_back(r);
    }
    handler_(r, c);
  }
  if (c.ssl_ != nullptr) {
    SSL_shutdown(c.ssl_);
    SSL_free(c.ssl_);
  }
}

std::string response_head(std::string_view status,
                          std::vector<std::pair<std::string, std::string>> const& headers) {
  std::string out = "HTTP/1.1 " + std::string(status) + "\r\n";
  for (auto const& [k, v] : headers)
    out += k + ": " + v + "\r\n";
  return out + "\r\n";
}

void serve_body(seen_request const& req, server_conn& c, std::string_view body,
                std::optional<std::size_t> cut_after, bool honour_range) {
  std::size_t from = 0;
  auto const range = req.header("range");
  if (honour_range && range && range->starts_with("bytes=") && range->ends_with("-"))
    from = std::stoull(range->substr(6, range->size() - 7));
  std::string head;
  if (from > 0 && from < body.size()) {
    head = response_head("206 Partial Content", {{"Content-Length", std::to_string(body.size() - from)},
                                                 {"Content-Range", "bytes " + std::to_string(from) + "-" +
                                                                       std::to_string(body.size() - 1) + "/" +
                                                                       std::to_string(body.size())},
                                                 {"Connection", "close"}});
  } else {
    from = 0;
    head = response_head("200 OK", {{"Content-Length", std::to_string(body.size())},
                                    {"Accept-Ranges", "bytes"},
                                    {"Connection", "close"}});
  }
  if (!c.write(head)) return;
  auto rest = body.substr(from);
  if (cut_after) rest = rest.substr(0, *cut_after);
  while (!rest.empty()) {
    auto const piece = rest.substr(0, 16 * 1024);
    if (!c.write(piece)) return;
    rest.remove_prefix(piece.size());
  }
}

}  // namespace ray::test
