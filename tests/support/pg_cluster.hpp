// A throw-away PostgreSQL cluster for tests (tests/jobs/postgres_store_test, tests/integration/
// jobs_postgres_test): initdb + pg_ctl in a temporary directory on a free loopback port (as the `postgres`
// user when running as root, through runuser), trust authentication for the user `ray`, fsync off. It is
// always stopped and removed — by teardown(), and, should the test process die first, by a guardian shell
// (its own session) that waits for this process's end on a pipe. Without the server binaries (initdb,
// pg_ctl under /usr/lib/postgresql/*/bin, or RAY_PG_BINDIR) `available` stays false and `why` says so.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

#include "support/ray_process.hpp"  // free_loopback_port

namespace ray::test {

// The directory holding initdb and pg_ctl: RAY_PG_BINDIR when set (used only if it has them), else the newest
// /usr/lib/postgresql/<version>/bin. Empty when there is none.
std::filesystem::path find_pg_bindir();

struct pg_cluster {
  bool available{false};
  std::string why;            // when not available
  bool missing_tools{false};  // not available because the server binaries (or a user to run them) are absent
  std::filesystem::path bindir, dir, data, log;
  int port{0};
  bool as_postgres{false};
  bool running{false};

  // initdb and start; sets `available` (or `why`).
  void setup();
  // Stops (immediate) and removes everything.
  void teardown();
  // pg_ctl start / stop -m <mode> ("fast", "immediate"), waiting for the server.
  bool start();
  bool stop(std::string const& mode);

  // The libpq connection string of database `db` on this cluster.
  std::string conninfo(std::string const& db) const;
  // A new empty database; returns its connection string, or "" (and sets `why`) when CREATE DATABASE failed.
  std::string fresh_database();
  // The last 2000 bytes of the commands' log (initdb, pg_ctl) and of the server's log, for a failure message.
  std::string logs() const;

 private:
  std::vector<std::string> as_user(std::vector<std::string> argv) const;
  void start_guardian();
  int guard_fd{-1};
  pid_t guard_pid{-1};
  int databases{0};
};

}  // namespace ray::test
