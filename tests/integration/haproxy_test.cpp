// Two `ray` nodes behind a real HAProxy (docs/operations.md, drain): leastconn, `option httpchk GET /readyz`,
// checks every 500 ms (fall 2, rise 2). Under steady load through HAProxy one node gets SIGTERM with
// server.drainMs 1500: no client request fails, HAProxy marks it DOWN within 2 s (read from its stats
// socket), and once it is restarted HAProxy sends it traffic again. SKIP without haproxy (scripts/bootstrap
// installs it).
#include "http_test_util.hpp"
#include "support/require.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <atomic>
#include <csignal>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

namespace ray::itest {
namespace {

namespace json = boost::json;

std::string find_haproxy() {
  for (char const* p : {"/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"})
    if (::access(p, X_OK) == 0) return p;
  return {};
}

// One command on HAProxy's stats socket; the whole answer ("" when the socket is not there yet).
std::string stats_command(std::filesystem::path const& sock, std::string const& cmd) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, sock.c_str(), sizeof a.sun_path - 1);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    std::string const line = cmd + "\n";
    if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(line.size())) {
      char buf[4096];
      for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
        out.append(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  return out;
}

struct server_stat {
  std::string status;     // "UP", "DOWN", "UP 1/2" (going down), "DOWN 1/2" (going up), …
  long long sessions{0};  // stot: sessions sent to it so far
};

// `show stat` of backend `ray`: server name → its status and session count (columns found by the header).
std::map<std::string, server_stat> backend_stats(std::filesystem::path const& sock) {
  std::map<std::string, server_stat> out;
  std::istringstream in(stats_command(sock, "show stat"));
  std::string line;
  std::map<std::string, std::size_t> col;
  auto split = [](std::string const& s) {
    std::vector<std::string> v;
    std::string cell;
    std::istringstream ss(s);
    while (std::getline(ss, cell, ','))
      v.push_back(cell);
    return v;
  };
  while (std::getline(in, line)) {
    if (line.starts_with("# ")) {
      auto names = split(line.substr(2));
      for (std::size_t i = 0; i < names.size(); ++i)
        col[names[i]] = i;
      continue;
    }
    auto cells = split(line);
    if (col.empty() || cells.size() <= std::max({col["pxname"], col["svname"], col["status"], col["stot"]}))
      continue;
    if (cells[col["pxname"]] != "ray") continue;
    auto const& name = cells[col["svname"]];
    if (name == "BACKEND" || name == "FRONTEND") continue;
    out[name] = server_stat{cells[col["status"]], std::atoll(cells[col["stot"]].c_str())};
  }
  return out;
}

// A node on a fixed port (HAProxy's config names it), restartable on the same one.
std::unique_ptr<rt::ray_process> start_node(rt::temp_dir const& dir, std::string const& name, int port) {
  auto cfg = test_config({{"drainMs", 1500}, {"shutdownGraceMs", 2000}}, {{"latencyMs", 5}});
  auto path = rt::write_config(dir, cfg, name + ".json");
  std::vector<std::string> args{"serve", "--config", path.string(), "--port", std::to_string(port)};
  for (auto& a : no_host_pressure())
    args.push_back(a);
  return std::make_unique<rt::ray_process>(
      rt::spawn_options{.binary = ray_binary(), .args = std::move(args), .working_directory = dir.path()});
}

TEST(HAProxy, ADrainedNodeLeavesTheBalancerWithoutAFailedRequestAndComesBackAfterARestart) {
  auto const haproxy = find_haproxy();
  if (haproxy.empty()) RAY_SKIP_OR_FAIL("SKIP: haproxy not installed (scripts/bootstrap installs it)");
  rt::temp_dir dir;
  int const port1 = ray::test::free_loopback_port(), port2 = ray::test::free_loopback_port(),
            front = ray::test::free_loopback_port();
  auto const sock = dir.path() / "haproxy.sock";
  std::string const conf =
      "global\n"
      "  stats socket " +
      sock.string() +
      " mode 600 level admin\n"
      "  maxconn 512\n"
      "defaults\n"
      "  mode http\n"
      "  timeout connect 1s\n"
      "  timeout client 60s\n"
      "  timeout server 60s\n"  // long enough for an SSE stream's keep-alive gaps
      "  retries 3\n"
      "  option redispatch\n"
      "  retry-on conn-failure empty-response\n"
      "frontend fe\n"
      "  bind 127.0.0.1:" +
      std::to_string(front) +
      "\n"
      "  default_backend ray\n"
      "backend ray\n"
      "  balance leastconn\n"
      "  option httpchk GET /readyz\n"
      "  http-check expect status 200\n"
      "  default-server check inter 500ms fall 2 rise 2\n"
      "  server n1 127.0.0.1:" +
      std::to_string(port1) +
      "\n"
      "  server n2 127.0.0.1:" +
      std::to_string(port2) + "\n";
  auto const conf_path = dir.write_file("haproxy.cfg", conf);

  auto n1 = start_node(dir, "n1", port1);
  auto n2 = start_node(dir, "n2", port2);
  ASSERT_TRUE(n1->wait_listening(rt::in(kIo))) << n1->output();
  ASSERT_TRUE(n2->wait_listening(rt::in(kIo))) << n2->output();
  rt::ray_process lb(rt::spawn_options{.binary = haproxy, .args = {"-db", "-f", conf_path.string()}});

  // Polls the stats socket until `pred` holds for them (or the deadline); returns whether it did.
  auto stats_until = [&](std::function<bool(std::map<std::string, server_stat> const&)> const& pred,
                         rt::deadline until) {
    while (rt::steady::now() < until) {
      if (pred(backend_stats(sock))) return true;
      lb.wait_for_log([](std::string_view) { return false; }, rt::in(20ms));  // poll interval
    }
    return false;
  };
  auto status_of = [](auto const& st, char const* name) {
    auto it = st.find(name);
    return it == st.end() ? std::string() : it->second.status;
  };
  ASSERT_TRUE(
      stats_until([&](auto const& st) { return status_of(st, "n1") == "UP" && status_of(st, "n2") == "UP"; },
                  rt::in(kIo)))
      << lb.output() << stats_command(sock, "show stat");

  // Steady load: 4 clients, each one request at a time on a fresh connection through HAProxy.
  std::atomic<bool> stop{false};
  std::atomic<long> ok{0};
  std::mutex mu;
  std::vector<std::string> failures;
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      for (int i = 0; !stop.load(); ++i) {
        auto r = roundtrip(static_cast<std::uint16_t>(front),
                           post_json("/v1/infer", R"({"input":"through haproxy )" + std::to_string(t) + "-" +
                                                      std::to_string(i) + R"(","maxTokens":4})"));
        if (r && r->status == 200) {
          ++ok;
        } else {
          std::lock_guard lk(mu);
          failures.push_back(r ? r->describe() : "no answer");
        }
      }
    });
  }
  struct joiner {
    std::vector<std::thread>& threads;
    std::atomic<bool>& stop;
    ~joiner() {
      stop = true;
      for (auto& t : threads)
        if (t.joinable()) t.join();
    }
  } join_clients{clients, stop};

  ASSERT_TRUE(stats_until(
      [&](auto const& st) {
        return st.contains("n1") && st.contains("n2") && st.at("n1").sessions > 20 &&
               st.at("n2").sessions > 20;
      },
      rt::in(kIo)))
      << "both nodes take traffic";

  // SIGTERM n1: it drains (/readyz 503, still serving), HAProxy takes it out, then it shuts down.
  auto const term = rt::steady::now();
  ASSERT_TRUE(n1->signal(SIGTERM));
  ASSERT_TRUE(stats_until([&](auto const& st) { return status_of(st, "n1").starts_with("DOWN"); },
                          rt::in(std::chrono::seconds(5))))
      << stats_command(sock, "show stat");
  auto const down_after = std::chrono::duration_cast<std::chrono::milliseconds>(rt::steady::now() - term);
  EXPECT_LT(down_after, std::chrono::milliseconds(2000)) << "HAProxy marked the draining node down late";
  EXPECT_EQ(n1->wait_exit(rt::in(kIo)), 0) << n1->output();
  auto const n2_sessions = backend_stats(sock)["n2"].sessions;
  ASSERT_TRUE(
      stats_until([&](auto const& st) { return st.at("n2").sessions > n2_sessions + 20; }, rt::in(kIo)))
      << "the other node carries the load alone";

  // Restart n1 on its port: HAProxy sees it UP again (rise 2) and sends it traffic.
  n1 = start_node(dir, "n1", port1);
  ASSERT_TRUE(n1->wait_listening(rt::in(kIo))) << n1->output();
  long long n1_before = -1;
  ASSERT_TRUE(stats_until(
      [&](auto const& st) {
        if (status_of(st, "n1") != "UP") return false;
        if (n1_before < 0) n1_before = st.at("n1").sessions;
        return st.at("n1").sessions > n1_before + 20;
      },
      rt::in(kIo)))
      << stats_command(sock, "show stat");

  stop = true;
  for (auto& t : clients)
    t.join();
  std::printf("haproxy test: %ld requests answered, %zu failed, n1 marked down %lld ms after SIGTERM\n",
              ok.load(), failures.size(), static_cast<long long>(down_after.count()));
  EXPECT_GT(ok.load(), 100);
  std::lock_guard lk(mu);
  EXPECT_TRUE(failures.empty()) << failures.size() << " failed, first: " << failures.front();
}

}  // namespace
}  // namespace ray::itest
