// `ray doctor`'s HTTP probe: one blocking GET with `Connection: close` under a deadline. A CLI asks a few
// loopback/LAN endpoints once; an event loop would buy nothing here. Bounded: ≤ 1 MiB read, one deadline for
// connect + send + receive.
#include "ray/ops/ops.hpp"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace ray::ops {

namespace {

using steady = std::chrono::steady_clock;

error fail(std::string msg) {
  return error{errc::provider_request_failed, std::move(msg)};
}

int remaining_ms(steady::time_point until) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - steady::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

struct fd_guard {
  int fd{-1};
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
};

std::string lower(std::string_view s) {
  std::string o(s);
  for (auto& c : o)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return o;
}

// A chunked body decoded; nullopt when malformed.
std::optional<std::string> dechunk(std::string_view in) {
  std::string out;
  while (true) {
    auto eol = in.find("\r\n");
    if (eol == std::string_view::npos) return std::nullopt;
    std::size_t size = 0;
    auto hex = in.substr(0, std::min(eol, in.find(';')));
    if (hex.empty()) return std::nullopt;
    for (char c : hex) {
      int v = (c >= '0' && c <= '9')   ? c - '0'
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                       : -1;
      if (v < 0 || size > (std::size_t{1} << 40)) return std::nullopt;
      size = size * 16 + static_cast<std::size_t>(v);
    }
    in.remove_prefix(eol + 2);
    if (size == 0) return out;
    if (in.size() < size + 2) return std::nullopt;
    out.append(in.substr(0, size));
    in.remove_prefix(size + 2);
  }
}

}  // namespace

result<probe_reply> http_get(std::string const& host, std::uint16_t port, std::string const& target,
                             std::uint32_t timeout_ms, std::string const& bearer) {
  auto const until = steady::now() + std::chrono::milliseconds(timeout_ms);
  std::string const where = host + ":" + std::to_string(port);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string h = host;
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (int rc = ::getaddrinfo(h.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
    return fail("cannot resolve " + host + ": " + ::gai_strerror(rc));
  fd_guard g;
  std::string last = "no address";
  for (auto* ai = res; ai != nullptr && g.fd < 0; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) continue;
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      last = std::strerror(errno);
      ::close(fd);
      continue;
    }
    pollfd p{fd, POLLOUT, 0};
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (::poll(&p, 1, remaining_ms(until)) != 1 ||
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0) {
      last = soerr != 0 ? std::strerror(soerr) : "connect timed out";
      ::close(fd);
      continue;
    }
    g.fd = fd;
  }
  ::freeaddrinfo(res);
  if (g.fd < 0) return fail("cannot connect to " + where + ": " + last);

  std::string req = "GET " + target + " HTTP/1.1\r\nHost: " + where +
                    "\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: ray-doctor\r\n";
  if (!bearer.empty()) req += "Authorization: Bearer " + bearer + "\r\n";
  req += "\r\n";
  std::size_t sent = 0;
  while (sent < req.size()) {
    ssize_t n = ::send(g.fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR)
      return fail("sending to " + where + ": " + std::strerror(errno));
    pollfd p{g.fd, POLLOUT, 0};
    if (::poll(&p, 1, remaining_ms(until)) != 1) return fail("sending to " + where + " timed out");
  }
  std::string buf;
  constexpr std::size_t cap = 1024 * 1024;
  char chunk[8192];
  for (;;) {
    ssize_t n = ::recv(g.fd, chunk, sizeof chunk, 0);
    if (n > 0) {
      buf.append(chunk, static_cast<std::size_t>(n));
      if (buf.size() > cap) return fail(where + target + " answered more than 1 MiB");
      continue;
    }
    if (n == 0) break;
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return fail("reading from " + where + ": " + std::strerror(errno));
    pollfd p{g.fd, POLLIN, 0};
    if (::poll(&p, 1, remaining_ms(until)) != 1)
      return fail(where + target + " did not answer within " + std::to_string(timeout_ms) + " ms");
  }
  auto head_end = buf.find("\r\n\r\n");
  if (!buf.starts_with("HTTP/1.") || head_end == std::string::npos || buf.size() < 12)
    return fail(where + " did not answer HTTP");
  probe_reply r;
  r.status = std::atoi(buf.c_str() + 9);
  std::string_view head(buf.data(), head_end);
  std::size_t pos = head.find("\r\n");
  while (pos != std::string_view::npos && pos < head.size()) {
    pos += 2;
    auto end = head.find("\r\n", pos);
    auto line = head.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    auto colon = line.find(':');
    if (colon != std::string_view::npos)
      r.headers[lower(trim(line.substr(0, colon)))] = std::string(trim(line.substr(colon + 1)));
    pos = end;
  }
  std::string_view body(buf.data() + head_end + 4, buf.size() - head_end - 4);
  if (auto te = r.headers.find("transfer-encoding");
      te != r.headers.end() && lower(te->second).find("chunked") != std::string::npos) {
    auto d = dechunk(body);
    if (!d) return fail(where + target + " sent a malformed chunked body");
    r.body = std::move(*d);
  } else {
    r.body = std::string(body);
  }
  return r;
}

}  // namespace ray::ops
