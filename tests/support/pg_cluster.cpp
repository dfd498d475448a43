// The throw-away PostgreSQL cluster of a test process (pg_cluster.hpp).
#include "support/pg_cluster.hpp"

#include <libpq-fe.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

extern char** environ;

namespace ray::test {

namespace {

// Runs argv (no shell), stdout and stderr appended to `log`; returns the exit status (-1: not started).
int spawn_wait(std::vector<std::string> const& argv, std::filesystem::path const& log) {
  std::vector<char*> args;
  for (auto const& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  pid_t pid = -1;
  int const rc = posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return -1;
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

std::string tail_of(std::filesystem::path const& p) {
  std::ifstream in(p);
  std::string all((std::istreambuf_iterator<char>(in)), {});
  return all.size() > 2000 ? all.substr(all.size() - 2000) : all;
}

}  // namespace

std::filesystem::path find_pg_bindir() {
  if (char const* env = std::getenv("RAY_PG_BINDIR")) {  // an explicit choice: used only if it has them
    std::filesystem::path const bin = env;
    bool const ok = std::filesystem::exists(bin / "initdb") && std::filesystem::exists(bin / "pg_ctl");
    return ok ? bin : std::filesystem::path();
  }
  std::filesystem::path best;
  int best_version = -1;
  std::error_code ec;
  for (auto const& e : std::filesystem::directory_iterator("/usr/lib/postgresql", ec)) {
    auto const bin = e.path() / "bin";
    if (!std::filesystem::exists(bin / "initdb") || !std::filesystem::exists(bin / "pg_ctl")) continue;
    int v = std::atoi(e.path().filename().c_str());
    if (v > best_version) {
      best_version = v;
      best = bin;
    }
  }
  return best;
}

std::vector<std::string> pg_cluster::as_user(std::vector<std::string> argv) const {
  if (!as_postgres) return argv;
  std::vector<std::string> out{"/usr/sbin/runuser", "-u", "postgres", "--"};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

void pg_cluster::setup() {
  bindir = find_pg_bindir();
  if (bindir.empty()) {
    why =
        "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin (or "
        "RAY_PG_BINDIR)";
    missing_tools = true;
    return;
  }
  uid_t pg_uid = 0;
  gid_t pg_gid = 0;
  if (::geteuid() == 0) {
    passwd const* pw = ::getpwnam("postgres");
    if (!pw || !std::filesystem::exists("/usr/sbin/runuser")) {
      why = "running as root and there is no `postgres` user (or runuser) to run initdb as";
      missing_tools = true;
      return;
    }
    as_postgres = true;
    pg_uid = pw->pw_uid;
    pg_gid = pw->pw_gid;
  }
  char tmpl[] = "/tmp/ray-pg-XXXXXX";
  if (!::mkdtemp(tmpl)) {
    why = std::string("mkdtemp: ") + std::strerror(errno);
    return;
  }
  dir = tmpl;
  data = dir / "data";
  log = dir / "commands.log";
  { std::ofstream(log.string()); }
  if (as_postgres) {
    (void)!::chown(dir.c_str(), pg_uid, pg_gid);
    (void)!::chown(log.c_str(), pg_uid, pg_gid);
  }
  ::chmod(dir.c_str(), 0700);
  start_guardian();
  if (spawn_wait(as_user({(bindir / "initdb").string(), "-D", data.string(), "-A", "trust", "-U", "ray", "-E",
                          "UTF8", "--locale=C", "--no-sync"}),
                 log) != 0) {
    why = "initdb failed: " + tail_of(log);
    return;
  }
  port = free_loopback_port();
  if (!start()) {
    why = "pg_ctl start failed: " + tail_of(log);
    return;
  }
  available = true;
}

// Stops the cluster even if this process dies before its teardown: a shell (own session) waits for EOF on
// a pipe whose only writer is this process.
void pg_cluster::start_guardian() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return;
  std::string stop = "'" + (bindir / "pg_ctl").string() + "' -D '" + data.string() + "' -m immediate stop";
  if (as_postgres) stop = "/usr/sbin/runuser -u postgres -- " + stop;
  std::string script = "cat >/dev/null; " + stop + " >/dev/null 2>&1; rm -rf '" + dir.string() + "'";
  std::vector<std::string> argv{"/bin/sh", "-c", script};
  std::vector<char*> args;
  for (auto& a : argv)
    args.push_back(a.data());
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[0], 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
  if (posix_spawn(&guard_pid, "/bin/sh", &fa, &attr, args.data(), environ) != 0) guard_pid = -1;
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[0]);
  guard_fd = fds[1];
}

bool pg_cluster::start() {
  auto const opts = "-p " + std::to_string(port) + " -k " + dir.string() +
                    " -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c "
                    "max_connections=60 -c shared_buffers=16MB";
  running = spawn_wait(as_user({(bindir / "pg_ctl").string(), "-D", data.string(), "-l",
                                (dir / "server.log").string(), "-w", "-t", "60", "-o", opts, "start"}),
                       log) == 0;
  return running;
}

bool pg_cluster::stop(std::string const& mode) {
  bool const ok =
      spawn_wait(as_user({(bindir / "pg_ctl").string(), "-D", data.string(), "-m", mode, "-w", "stop"}),
                 log) == 0;
  if (ok) running = false;
  return ok;
}

void pg_cluster::teardown() {
  if (running) stop("immediate");
  if (guard_fd >= 0) {
    ::close(guard_fd);  // the guardian stops (already stopped) and removes the folder
    guard_fd = -1;
  }
  if (guard_pid > 0) {
    int st = 0;
    ::waitpid(guard_pid, &st, 0);
    guard_pid = -1;
  }
  std::error_code ec;
  if (!dir.empty()) std::filesystem::remove_all(dir, ec);
}

std::string pg_cluster::conninfo(std::string const& db) const {
  return "host=127.0.0.1 port=" + std::to_string(port) + " user=ray dbname=" + db;
}

std::string pg_cluster::fresh_database() {
  auto const name = "t_" + std::to_string(++databases);
  PGconn* c = PQconnectdb(conninfo("postgres").c_str());
  std::string out;
  if (PQstatus(c) != CONNECTION_OK) {
    why = std::string("connecting to the test cluster: ") + PQerrorMessage(c);
  } else {
    PGresult* r = PQexec(c, ("CREATE DATABASE " + name).c_str());  // a generated identifier, not input
    if (PQresultStatus(r) == PGRES_COMMAND_OK)
      out = conninfo(name);
    else
      why = "CREATE DATABASE " + name + ": " + PQerrorMessage(c);
    PQclear(r);
  }
  PQfinish(c);
  return out;
}

std::string pg_cluster::logs() const {
  return tail_of(log) + tail_of(dir / "server.log");
}

}  // namespace ray::test
