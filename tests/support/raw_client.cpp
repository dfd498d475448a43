#include "support/raw_client.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace ray::test {

namespace {

using clock_type = std::chrono::steady_clock;

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

int remaining_ms(clock_type::time_point until) {
  auto left = until - clock_type::now();
  if (left <= clock_type::duration::zero()) return 0;
  auto m = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return static_cast<int>(std::min<long long>(m, 1'000'000));
}

std::string printable(std::string_view s, std::size_t max = 600) {
  std::string out;
  for (char c : s.substr(0, max)) {
    if (c == '\r') {
      out += "\\r";
    } else if (c == '\n') {
      out += "\\n\n";
    } else if (std::isprint(static_cast<unsigned char>(c)) != 0) {
      out += c;
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned char>(c));
      out += hex;
    }
  }
  if (s.size() > max) out += "…(" + std::to_string(s.size()) + " bytes)";
  return out;
}

}  // namespace

// ---- http_response
// -------------------------------------------------------------------------------------------

std::optional<std::string> http_response::header(std::string_view name) const {
  for (auto const& [k, v] : headers) {
    if (iequals(k, name)) return v;
  }
  return std::nullopt;
}

std::vector<std::string> http_response::header_values(std::string_view name) const {
  std::vector<std::string> out;
  for (auto const& [k, v] : headers) {
    if (iequals(k, name)) out.push_back(v);
  }
  return out;
}

bool http_response::connection_close() const {
  for (auto const& v : header_values("connection")) {
    std::string_view rest(v);
    while (!rest.empty()) {
      auto comma = rest.find(',');
      auto token = trim(rest.substr(0, comma));
      if (iequals(token, "close")) return true;
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return false;
}

std::string http_response::describe() const {
  return printable(raw_head, 4000) + printable(body, 1000);
}

// ---- raw_client
// ----------------------------------------------------------------------------------------------

raw_client::raw_client(std::uint16_t port, std::string const& host) {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    ::close(fd_);
    throw std::runtime_error("not an IPv4 address: " + host);
  }
  int rc = 0;
  do {
    rc = ::connect(fd_, reinterpret_cast<sockaddr const*>(&addr), sizeof addr);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    int e = errno;
    ::close(fd_);
    fd_ = -1;
    throw std::runtime_error("connect " + host + ":" + std::to_string(port) + ": " + std::strerror(e));
  }
  connected_at_ = clock_type::now();
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
}

raw_client::~raw_client() {
  close();
}

raw_client::raw_client(raw_client&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      buf_(std::move(other.buf_)),
      end_(other.end_),
      closed_at_(other.closed_at_),
      connected_at_(other.connected_at_),
      error_(std::move(other.error_)) {}

raw_client& raw_client::operator=(raw_client&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    buf_ = std::move(other.buf_);
    end_ = other.end_;
    closed_at_ = other.closed_at_;
    connected_at_ = other.connected_at_;
    error_ = std::move(other.error_);
  }
  return *this;
}

void raw_client::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void raw_client::shutdown_write() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
}

void raw_client::fail(std::string what) {
  error_ = std::move(what);
  if (!buf_.empty()) error_ += "; received so far:\n" + printable(buf_, 2000);
}

bool raw_client::send(std::string_view bytes) {
  return send(bytes, clock_type::now() + std::chrono::seconds(10));
}

bool raw_client::send(std::string_view bytes, clock_type::time_point until) {
  while (!bytes.empty()) {
    ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n > 0) {
      bytes.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd_, POLLOUT, 0};
      int r = ::poll(&p, 1, remaining_ms(until));
      if (r == 0) {
        fail("send: deadline passed with " + std::to_string(bytes.size()) + " bytes unsent");
        return false;
      }
      continue;
    }
    fail(std::string("send: ") + std::strerror(errno));
    return false;
  }
  return true;
}

bool raw_client::fill(clock_type::time_point until) {
  if (end_ != read_end::none) return false;
  std::array<char, 65536> tmp{};
  for (;;) {
    ssize_t n = ::recv(fd_, tmp.data(), tmp.size(), 0);
    if (n > 0) {
      buf_.append(tmp.data(), static_cast<std::size_t>(n));
      return true;
    }
    if (n == 0) {
      end_ = read_end::eof;
      closed_at_ = clock_type::now();
      return false;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      int left = remaining_ms(until);
      if (left == 0) return false;
      pollfd p{fd_, POLLIN, 0};
      int r = ::poll(&p, 1, left);
      if (r == 0) return false;
      continue;
    }
    end_ = errno == ECONNRESET ? read_end::reset : read_end::error;
    closed_at_ = clock_type::now();
    return false;
  }
}

std::optional<http_response> raw_client::read_response(clock_type::time_point until, bool head_request) {
  auto why_stopped = [&](std::string_view stage) {
    std::string s(stage);
    switch (end_) {
      case read_end::eof:
        return s + ": peer closed (EOF)";
      case read_end::reset:
        return s + ": connection reset by peer";
      case read_end::error:
        return s + ": read error";
      case read_end::none:
        break;
    }
    return s + ": deadline passed";
  };

  // Header section.
  std::size_t head_end = std::string::npos;
  while ((head_end = buf_.find("\r\n\r\n")) == std::string::npos) {
    if (!fill(until)) {
      fail(why_stopped("reading the response head"));
      return std::nullopt;
    }
  }
  http_response r;
  r.head_at = clock_type::now();
  r.raw_head = buf_.substr(0, head_end + 4);
  std::string_view head(buf_.data(), head_end);
  auto line_end = head.find("\r\n");
  std::string_view status_line = head.substr(0, line_end);
  head = line_end == std::string_view::npos ? std::string_view{} : head.substr(line_end + 2);
  {
    auto sp1 = status_line.find(' ');
    if (sp1 == std::string_view::npos || !status_line.starts_with("HTTP/")) {
      fail("malformed status line: " + std::string(status_line));
      return std::nullopt;
    }
    r.version = std::string(status_line.substr(0, sp1));
    auto rest = status_line.substr(sp1 + 1);
    auto sp2 = rest.find(' ');
    auto code = rest.substr(0, sp2);
    if (code.size() != 3 ||
        !std::all_of(code.begin(), code.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      fail("malformed status code: " + std::string(status_line));
      return std::nullopt;
    }
    r.status = std::stoi(std::string(code));
    r.reason = sp2 == std::string_view::npos ? std::string{} : std::string(rest.substr(sp2 + 1));
  }
  while (!head.empty()) {
    auto e = head.find("\r\n");
    auto line = head.substr(0, e);
    head = e == std::string_view::npos ? std::string_view{} : head.substr(e + 2);
    auto colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      fail("malformed header line: " + std::string(line));
      return std::nullopt;
    }
    r.headers.emplace_back(std::string(line.substr(0, colon)), std::string(trim(line.substr(colon + 1))));
  }
  buf_.erase(0, head_end + 4);

  bool no_body = head_request || r.is_interim() || r.status == 204 || r.status == 304;
  auto te = r.header("transfer-encoding");
  auto cl = r.header("content-length");
  if (no_body) {
    // nothing
  } else if (te && te->find("chunked") != std::string::npos) {
    r.chunked = true;
    for (;;) {
      std::size_t eol;
      while ((eol = buf_.find("\r\n")) == std::string::npos) {
        if (!fill(until)) {
          fail(why_stopped("reading a chunk size"));
          return std::nullopt;
        }
      }
      std::string size_line = buf_.substr(0, eol);
      auto semi = size_line.find(';');
      std::size_t size = 0;
      try {
        size = std::stoul(size_line.substr(0, semi), nullptr, 16);
      } catch (...) {
        fail("malformed chunk size line: " + size_line);
        return std::nullopt;
      }
      buf_.erase(0, eol + 2);
      if (size == 0) {
        // Trailer section, ended by an empty line.
        for (;;) {
          while ((eol = buf_.find("\r\n")) == std::string::npos) {
            if (!fill(until)) {
              fail(why_stopped("reading the chunked trailer"));
              return std::nullopt;
            }
          }
          bool empty = eol == 0;
          buf_.erase(0, eol + 2);
          if (empty) break;
        }
        break;
      }
      while (buf_.size() < size + 2) {
        if (!fill(until)) {
          fail(why_stopped("reading chunk data"));
          return std::nullopt;
        }
      }
      r.body.append(buf_, 0, size);
      buf_.erase(0, size + 2);
    }
  } else if (cl) {
    std::size_t n = 0;
    try {
      n = std::stoul(*cl);
    } catch (...) {
      fail("malformed content-length: " + *cl);
      return std::nullopt;
    }
    while (buf_.size() < n) {
      if (!fill(until)) {
        fail(why_stopped("reading a Content-Length body (" + std::to_string(buf_.size()) + " of " +
                         std::to_string(n) + " bytes)"));
        return std::nullopt;
      }
    }
    r.body = buf_.substr(0, n);
    buf_.erase(0, n);
  } else {
    while (fill(until)) {
    }
    if (end_ == read_end::none) {
      fail("reading a close-delimited body: deadline passed");
      return std::nullopt;
    }
    r.body = std::exchange(buf_, {});
  }
  r.done_at = clock_type::now();
  return r;
}

std::string raw_client::read_until_closed(clock_type::time_point until) {
  while (fill(until)) {
  }
  return std::exchange(buf_, {});
}

bool raw_client::is_closed_by_peer(clock_type::time_point until) {
  while (fill(until)) {
  }
  return end_ == read_end::eof || end_ == read_end::reset;
}

bool raw_client::wait_readable(clock_type::time_point until) {
  if (!buf_.empty()) return true;
  return fill(until);
}

}  // namespace ray::test
