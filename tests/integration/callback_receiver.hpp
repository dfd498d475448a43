// A loopback HTTP receiver for job callbacks: accepts connections on 127.0.0.1 (ephemeral port) on its own
// thread, reads one request per connection, recomputes the x-ray-signature HMAC with the shared secret
// (OpenSSL's HMAC, independent of Ray's implementation) and answers 204 when it matches — 401 when it does
// not. Every request is recorded; tests wait for a count, never sleep.
#pragma once

#include <openssl/hmac.h>
#include <boost/json/parse.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace ray::itest {

struct received_callback {
  std::string job_id;  // x-ray-job-id
  std::string status;  // the record's status
  std::string body;
  bool signature_ok{false};
  std::map<std::string, std::string> headers;  // lower-case names
};

inline std::string hmac_hex(std::string const& key, std::string const& data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<unsigned char const*>(data.data()), data.size(), out, &len);
  std::string hex;
  char buf[3];
  for (unsigned i = 0; i < len; ++i) {
    std::snprintf(buf, sizeof buf, "%02x", out[i]);
    hex += buf;
  }
  return hex;
}

// Whether `signature` ("sha256=<hex>") signs timestamp + "." + body with `secret`.
inline bool signature_matches(std::string const& secret, std::string const& timestamp,
                              std::string const& body, std::string const& signature) {
  return signature == "sha256=" + hmac_hex(secret, timestamp + "." + body);
}

class callback_receiver {
 public:
  explicit callback_receiver(std::string secret) : secret_(std::move(secret)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd_, 128);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~callback_receiver() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }

  std::uint16_t port() const { return port_; }
  std::string url(std::string const& path = "/hook") const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }

  std::vector<received_callback> received() const {
    std::lock_guard lk(mu_);
    return got_;
  }
  // Waits until `pred(received())` holds or the deadline passes.
  template <class Pred>
  bool wait_until(Pred pred, std::chrono::steady_clock::time_point until) {
    std::unique_lock lk(mu_);
    return cv_.wait_until(lk, until, [&] { return pred(got_); });
  }

 private:
  void loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      serve(c);
      ::close(c);
    }
  }

  void serve(int c) {
    std::string buf;
    char tmp[4096];
    std::size_t head_end = std::string::npos;
    auto const deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (head_end == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd p{c, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      auto n = ::recv(c, tmp, sizeof tmp, 0);
      if (n <= 0) return;
      buf.append(tmp, static_cast<std::size_t>(n));
      head_end = buf.find("\r\n\r\n");
    }
    if (head_end == std::string::npos) return;
    received_callback rc;
    std::size_t pos = buf.find("\r\n") + 2;
    while (pos < head_end) {
      auto eol = buf.find("\r\n", pos);
      auto line = buf.substr(pos, eol - pos);
      auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        for (auto& ch : name)
          ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        auto value = line.substr(colon + 1);
        while (!value.empty() && value.front() == ' ')
          value.erase(0, 1);
        rc.headers[name] = value;
      }
      pos = eol + 2;
    }
    std::size_t want = std::stoul(rc.headers.count("content-length") ? rc.headers["content-length"] : "0");
    rc.body = buf.substr(head_end + 4);
    while (rc.body.size() < want && std::chrono::steady_clock::now() < deadline) {
      pollfd p{c, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      auto n = ::recv(c, tmp, sizeof tmp, 0);
      if (n <= 0) break;
      rc.body.append(tmp, static_cast<std::size_t>(n));
    }
    rc.job_id = rc.headers["x-ray-job-id"];
    rc.signature_ok =
        signature_matches(secret_, rc.headers["x-ray-timestamp"], rc.body, rc.headers["x-ray-signature"]);
    boost::system::error_code ec;
    auto v = boost::json::parse(rc.body, ec);
    if (!ec && v.is_object() && v.as_object().contains("job") && v.at("job").is_object()) {
      auto const* st = v.at("job").as_object().if_contains("status");
      if (st && st->is_string()) rc.status = std::string(st->get_string());
    }
    std::string const answer =
        rc.signature_ok ? "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
                        : "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    ::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
    {
      std::lock_guard lk(mu_);
      got_.push_back(std::move(rc));
    }
    cv_.notify_all();
  }

  std::string secret_;
  int fd_{-1};
  std::uint16_t port_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<received_callback> got_;
};

}  // namespace ray::itest
