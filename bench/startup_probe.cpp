// Measures the time from exec to the first `GET /livez` 200 (quality.md, Benchmarks). Plain POSIX, no Asio,
// so the probe itself adds as little as possible.
//
// Usage: startup_probe [--runs N] [--timeout-ms T] <port-source> -- <cmd> <args...>
//   <port-source>  `-` (or `stdout`): read the bound port from the child's stdout — the first line containing
//                  "message":"gateway listening" (its "port":N field), or a line `listening N`
//                  (reference_server); a number > 0: that fixed port; anything else: a file the child writes
//                  its port into (polled).
// Each run: take the time, fork+exec the command (stdout to a pipe, stderr inherited), learn the port, then
// poll /livez over a non-blocking loopback socket until a 200 arrives; print `exec_to_livez_ms=<float>`;
// SIGTERM the child and wait for it. With --runs N > 1 also print `median_exec_to_livez_ms=<float>`. Exit
// status: 0 when every run reached a 200, 1 otherwise.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

double now_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

// Port from one stdout line, or 0.
int port_from_line(const std::string& line) {
  if (line.find("\"message\":\"gateway listening\"") != std::string::npos) {
    auto at = line.find("\"port\":");
    if (at != std::string::npos) return std::atoi(line.c_str() + at + 7);
    // Fallback: an "address":"host:port" field.
    at = line.find("\"address\":\"");
    if (at == std::string::npos) return 0;
    auto end = line.find('"', at + 11);
    auto colon = line.rfind(':', end);
    return (colon != std::string::npos && colon > at + 11) ? std::atoi(line.c_str() + colon + 1) : 0;
  }
  if (line.rfind("listening ", 0) == 0) return std::atoi(line.c_str() + 10);
  return 0;
}

int port_from_file(const char* path) {
  FILE* f = std::fopen(path, "r");
  if (!f) return 0;
  int port = 0;
  if (std::fscanf(f, "%d", &port) != 1) port = 0;
  std::fclose(f);
  return port;
}

// One non-blocking GET /livez attempt state.
struct probe {
  int fd = -1;
  bool sent = false;
  std::string reply;

  void reset() {
    if (fd >= 0) close(fd);
    fd = -1;
    sent = false;
    reply.clear();
  }
};

bool start_connect(probe& p, int port) {
  p.reset();
  p.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (p.fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(p.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 || errno == EINPROGRESS)
    return true;
  p.reset();
  return false;
}

// Advances the probe when its socket is ready. Returns 1 on a 200, -1 when the attempt failed (retry), 0 to
// wait.
int step(probe& p) {
  static constexpr char k_request[] = "GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (!p.sent) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) return -1;
    ssize_t n = send(p.fd, k_request, sizeof k_request - 1, MSG_NOSIGNAL);
    if (n != static_cast<ssize_t>(sizeof k_request - 1)) return -1;
    p.sent = true;
    return 0;
  }
  char buf[512];
  ssize_t n = recv(p.fd, buf, sizeof buf, 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
  if (n <= 0) return -1;
  p.reply.append(buf, static_cast<std::size_t>(n));
  if (p.reply.size() < 12) return 0;
  return (p.reply.compare(0, 12, "HTTP/1.1 200") == 0 || p.reply.compare(0, 12, "HTTP/1.0 200") == 0) ? 1
                                                                                                      : -1;
}

enum class source { stdout_line, fixed, file };

// One measured start. Returns the milliseconds from just before fork to the 200, or a negative value on
// failure.
double run_once(char** cmd, source src, int fixed_port, const char* port_file, double timeout_ms) {
  if (src == source::file) unlink(port_file);
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return -1;

  const double t0 = now_ms();
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    execvp(cmd[0], cmd);
    std::fprintf(stderr, "startup_probe: exec %s: %s\n", cmd[0], std::strerror(errno));
    _exit(127);
  }
  close(out[1]);
  fcntl(out[0], F_SETFL, O_NONBLOCK);

  int port = src == source::fixed ? fixed_port : 0;
  std::string line;
  bool out_open = true;
  probe p;
  double next_attempt = t0;
  double result = -1;

  while (now_ms() - t0 < timeout_ms) {
    pollfd fds[2];
    nfds_t nfds = 0;
    if (out_open) fds[nfds++] = {out[0], POLLIN, 0};
    if (p.fd >= 0) fds[nfds++] = {p.fd, static_cast<short>(p.sent ? POLLIN : POLLOUT), 0};
    // Without a socket to wait on, wake at most every 1 ms to (re)try the connect or re-read the port file.
    int wait_ms = (p.fd >= 0) ? 10 : 1;
    poll(fds, nfds, wait_ms);

    // Drain the child's stdout so it never blocks on a full pipe; parse the port from it when asked to.
    if (out_open) {
      char buf[4096];
      for (;;) {
        ssize_t n = read(out[0], buf, sizeof buf);
        if (n > 0) {
          if (port == 0 && src == source::stdout_line) {
            for (ssize_t i = 0; i < n && port == 0; ++i) {
              if (buf[i] == '\n') {
                port = port_from_line(line);
                line.clear();
              } else {
                line.push_back(buf[i]);
              }
            }
          }
          continue;
        }
        if (n == 0) out_open = false;
        break;
      }
    }
    if (port == 0 && src == source::file) port = port_from_file(port_file);
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      std::fprintf(stderr, "startup_probe: child exited before /livez answered 200\n");
      pid = -1;
      break;
    }
    if (port == 0) continue;

    if (p.fd < 0) {
      if (now_ms() < next_attempt) continue;
      if (!start_connect(p, port)) next_attempt = now_ms() + 1;
      continue;
    }
    int r = step(p);
    if (r == 1) {
      result = now_ms() - t0;
      break;
    }
    if (r == -1) {  // refused or not 200 yet: retry in 1 ms
      p.reset();
      next_attempt = now_ms() + 1;
    }
  }
  p.reset();

  if (pid > 0) {
    kill(pid, SIGTERM);
    // Give it a bounded grace period, then insist.
    int status = 0;
    const double t_kill = now_ms();
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (now_ms() - t_kill > 5000) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        break;
      }
      char buf[4096];
      while (out_open && read(out[0], buf, sizeof buf) > 0) {
      }
      usleep(1000);
    }
  }
  close(out[0]);
  return result;
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: startup_probe [--runs N] [--timeout-ms T] <-|port|port-file> -- <cmd> <args...>\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 1;
  double timeout_ms = 10000;
  const char* port_arg = nullptr;
  int i = 1;
  for (; i < argc; ++i) {
    if (std::strcmp(argv[i], "--") == 0) {
      ++i;
      break;
    }
    if (std::strcmp(argv[i], "--runs") == 0 && i + 1 < argc) {
      runs = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--timeout-ms") == 0 && i + 1 < argc) {
      timeout_ms = std::atof(argv[++i]);
    } else if (!port_arg) {
      port_arg = argv[i];
    } else {
      usage();
    }
  }
  if (!port_arg || i >= argc || runs < 1) usage();
  char** cmd = argv + i;

  source src = source::file;
  int fixed_port = 0;
  if (std::strcmp(port_arg, "-") == 0 || std::strcmp(port_arg, "stdout") == 0) {
    src = source::stdout_line;
  } else if (std::strspn(port_arg, "0123456789") == std::strlen(port_arg)) {
    fixed_port = std::atoi(port_arg);
    src = fixed_port > 0 ? source::fixed : source::stdout_line;
  }

  std::signal(SIGPIPE, SIG_IGN);
  std::vector<double> samples;
  int failures = 0;
  for (int r = 0; r < runs; ++r) {
    double ms = run_once(cmd, src, fixed_port, port_arg, timeout_ms);
    if (ms < 0) {
      ++failures;
      std::printf("exec_to_livez_ms=fail\n");
    } else {
      samples.push_back(ms);
      std::printf("exec_to_livez_ms=%.2f\n", ms);
    }
    std::fflush(stdout);
  }
  if (runs > 1 && !samples.empty()) {
    std::sort(samples.begin(), samples.end());
    std::size_t n = samples.size();
    double median = n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
    std::printf("median_exec_to_livez_ms=%.2f runs=%zu failures=%d min=%.2f max=%.2f\n", median, n, failures,
                samples.front(), samples.back());
  }
  return failures == 0 ? 0 : 1;
}
