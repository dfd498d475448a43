// The PostgreSQL job store (spec/scale-out.md "Jobs: PostgreSQL"): several nodes share one database.
//
// One libpq connection, used only by the store's own thread (libpq blocks). The thread waits in poll() on an
// eventfd (a task was queued) and on the connection's socket (a NOTIFY arrived, or the server went away), and
// runs the timers: lease renewal (lease / 3), recovery of expired leases (lease / 2), the counts refresh, and
// reconnecting with back-off. Callers' awaitables complete on their own executors, as in the SQLite store.
//
// Leases: `claim` is one UPDATE over a `FOR UPDATE SKIP LOCKED` sub-select (ordered by creation) that records
// this node as lease owner until database-now + lease (the database's clock, so nodes' clocks need not
// agree). The store renews the leases of the jobs it holds (claimed here and not finished yet); `finish`
// applies only while this node still holds the lease for that very attempt. A job whose lease expired goes
// back to queued (attempts kept), or fails with job_recovery_attempts_exhausted.
//
// Connection loss is not a latch: calls answer async_queue_storage_unavailable (retry 5 s) while the thread
// reconnects; finishes recorded meanwhile are buffered (bounded) and written when the connection returns.
#include "ray/jobs/jobs.hpp"
#include "ray/jobs/libpq.hpp"
#include "ray/jobs/postgres_rows.hpp"
#include "ray/jobs/store_thread.hpp"

#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

namespace ray::jobs {

namespace asio = boost::asio;
namespace json = boost::json;

namespace {

using namespace pg;  // the table's SQL and row mapping (postgres_rows.hpp)

struct pg_store;

// The NOTIFY channel of new claimable work, and the advisory lock that serialises schema migrations and the
// max_jobs check of inserts across nodes ("ray_jobs" in ASCII).
constexpr char const* notify_channel = "ray_jobs";
constexpr char const* advisory_key = "8241969911006097011";

ray::error unavailable(std::string what) {
  ray::error e{errc::async_queue_storage_unavailable, std::move(what)};
  e.retry_after_ms = 5000;
  return e;
}

millis wall_ms(ray::clock const& c) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(c.wall().time_since_epoch()).count();
}

std::string default_node_id() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "localhost");
  return std::string(host) + ":" + std::to_string(::getpid());
}

// Server notices (a FATAL at shutdown, NOTICEs of DDL) would go to stderr by default; the store reports
// through its results instead.
void ignore_notice(void*, char const*) {}

using task = store_thread::task<pg_store>;  // a call queued to the store thread (store_thread.hpp)
using insert_task = store_thread::insert_task<pg_store>;

// A finish recorded while the connection was down, written when it returns.
struct buffered_finish {
  std::string id;
  attempt_outcome out;
  millis now;
};

struct pg_store final : store {
  explicit pg_store(postgres_options o) : opts(std::move(o)) {
    if (opts.node_id.empty()) opts.node_id = default_node_id();
    if (opts.lease < std::chrono::milliseconds(100)) opts.lease = std::chrono::milliseconds(100);
    if (opts.renew_every.count() <= 0) opts.renew_every = opts.lease / 3;
    if (opts.recover_every.count() <= 0) opts.recover_every = opts.lease / 2;
    if (opts.counts_every.count() <= 0) opts.counts_every = std::chrono::milliseconds(1000);
    if (opts.connect_timeout.count() <= 0) opts.connect_timeout = std::chrono::milliseconds(5000);
    if (opts.reconnect_max < min_backoff) opts.reconnect_max = min_backoff;
  }
  ~pg_store() override {
    {
      std::lock_guard lk(mu);
      stopping = true;
    }
    signal();
    if (worker.joinable()) worker.join();
    if (conn) pq::fns().PQfinish(conn);
    if (efd >= 0) ::close(efd);
  }

  // ---- setup (caller's thread, before the worker starts) ----
  result<void> open() {
    efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0) return unavailable(std::string("eventfd: ") + std::strerror(errno));
    params_for_connect();
    conn = pq::fns().PQconnectdbParams(keys.data(), values.data(), 1);
    if (!conn) return unavailable("cannot connect to PostgreSQL: out of memory");
    pq::fns().PQsetNoticeProcessor(conn, ignore_notice, nullptr);
    if (pq::fns().PQstatus(conn) != CONNECTION_OK) {
      auto e = unavailable("cannot connect to PostgreSQL (" + target() + "): " + conn_message());
      pq::fns().PQfinish(conn);
      conn = nullptr;
      return e;
    }
    state = link::up;
    if (auto r = setup_session(); !r) {
      pq::fns().PQfinish(conn);
      conn = nullptr;
      return r;
    }
    connected_.store(true, std::memory_order_release);
    refresh_counts();
    auto const now = std::chrono::steady_clock::now();
    next_renew = now + opts.renew_every;
    next_recover = now + opts.recover_every;
    next_counts = now + opts.counts_every;
    worker = std::thread([this] { loop(); });
    return {};
  }

  // ---- store interface ----
  asio::awaitable<result<insert_outcome>> insert(job j) override;
  asio::awaitable<result<std::optional<job>>> get(std::string id) override {
    return call<result<std::optional<job>>>(
        [id = std::move(id)](pg_store& s) { return s.do_get(id, std::nullopt); });
  }
  asio::awaitable<result<std::vector<job>>> list(list_query q) override {
    return call<result<std::vector<job>>>([q = std::move(q)](pg_store& s) { return s.do_list(q); });
  }
  asio::awaitable<result<std::optional<job>>> cancel(std::string id,
                                                     std::optional<std::string> owner) override {
    return call<result<std::optional<job>>>(
        [id = std::move(id), owner = std::move(owner)](pg_store& s) { return s.do_cancel(id, owner); });
  }
  asio::awaitable<result<std::vector<job>>> claim(std::uint32_t n, millis now) override {
    return call<result<std::vector<job>>>([n, now](pg_store& s) { return s.do_claim(n, now); });
  }
  asio::awaitable<result<std::optional<job>>> finish(std::string id, attempt_outcome out,
                                                     millis now) override {
    return call<result<std::optional<job>>>(
        [id = std::move(id), out = std::move(out), now](pg_store& s) { return s.do_finish(id, out, now); });
  }
  asio::awaitable<result<std::vector<job>>> due_callbacks(std::uint32_t n, millis now) override {
    return call<result<std::vector<job>>>([n, now](pg_store& s) { return s.do_due_callbacks(n, now); });
  }
  asio::awaitable<result<void>> update_callback(std::string id, callback_state cb) override {
    return call<result<void>>(
        [id = std::move(id), cb = std::move(cb)](pg_store& s) { return s.do_update_callback(id, cb); });
  }
  asio::awaitable<result<std::uint32_t>> prune(millis before, std::uint32_t batch) override {
    return call<result<std::uint32_t>>([before, batch](pg_store& s) { return s.do_prune(before, batch); });
  }
  asio::awaitable<result<std::pair<std::uint32_t, std::uint32_t>>> recover(millis now) override {
    return call<result<std::pair<std::uint32_t, std::uint32_t>>>(
        [now](pg_store& s) { return s.do_recover(now); });
  }
  asio::awaitable<result<std::pair<std::uint32_t, std::uint32_t>>> import(std::vector<job> jobs) override {
    return call<result<std::pair<std::uint32_t, std::uint32_t>>>(
        [jobs = std::move(jobs)](pg_store& s) { return s.do_import(jobs); });
  }
  asio::awaitable<result<due_times>> next_due() override {
    return call<result<due_times>>([](pg_store& s) { return s.do_next_due(); });
  }

  counts current_counts() const noexcept override {
    std::lock_guard lk(counts_mu);
    return counts_;
  }
  bool degraded() const noexcept override { return !connected_.load(std::memory_order_acquire); }
  std::optional<std::uint64_t> available_storage_mib() const noexcept override { return std::nullopt; }
  void set_wake_callback(std::function<void()> fn) override {
    std::lock_guard lk(wake_mu);
    wake_fn = std::move(fn);
  }

  // ---- the thread's side ----
  template <class R, class F>
  asio::awaitable<R> call(F f);

  void signal() noexcept {
    std::uint64_t one = 1;
    if (efd >= 0) (void)!::write(efd, &one, sizeof one);
  }

  void push(std::unique_ptr<task> t) {
    {
      std::lock_guard lk(mu);
      queue.push_back(std::move(t));
    }
    signal();
  }

  void loop() {
    std::vector<std::unique_ptr<task>> batch;
    for (;;) {
      run_timers();
      {
        std::lock_guard lk(mu);
        if (queue.empty() && stopping) return;  // stopping and drained
        if (!queue.empty()) {
          // Take every waiting insert at once (up to a bound), or one other task.
          if (queue.front()->is_insert()) {
            while (!queue.empty() && queue.front()->is_insert() && batch.size() < 256) {
              batch.push_back(std::move(queue.front()));
              queue.pop_front();
            }
          } else {
            batch.push_back(std::move(queue.front()));
            queue.pop_front();
          }
        }
      }
      if (!batch.empty()) {
        if (batch.front()->is_insert())
          run_inserts(batch);
        else
          batch.front()->run(*this);
        batch.clear();
        deliver_notifications();
        continue;
      }
      wait_for_events();
    }
  }

  // Sleeps until a task is queued, the socket has something (a NOTIFY, the server closing, a connect step),
  // or the next timer.
  void wait_for_events() {
    auto const now = std::chrono::steady_clock::now();
    auto next = now + std::chrono::seconds(1);
    if (state == link::up) next = std::min({next, next_renew, next_recover, next_counts});
    if (state == link::down) next = std::min(next, next_connect);
    if (state == link::connecting) next = std::min(next, connect_deadline);
    auto const ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count();
    pollfd fds[2] = {{efd, POLLIN, 0}, {-1, 0, 0}};
    nfds_t n = 1;
    int const sock = conn ? pq::fns().PQsocket(conn) : -1;
    if (sock >= 0 && state != link::down) {
      short ev = POLLIN;
      if (state == link::connecting) ev = want == PGRES_POLLING_WRITING ? POLLOUT : POLLIN;
      fds[1] = {sock, ev, 0};
      n = 2;
    }
    int const rc = ::poll(fds, n, static_cast<int>(std::clamp<long long>(ms, 0, 1000)));
    if (rc <= 0) return;
    if (fds[0].revents) {
      std::uint64_t v = 0;
      (void)!::read(efd, &v, sizeof v);
    }
    if (n == 2 && fds[1].revents) {
      if (state == link::connecting) {
        advance_connect();
      } else if (state == link::up) {
        if (!pq::fns().PQconsumeInput(conn) || pq::fns().PQstatus(conn) != CONNECTION_OK)
          lost();
        else
          deliver_notifications();
      }
    }
  }

  void run_timers() {
    auto const now = std::chrono::steady_clock::now();
    if (state == link::down && now >= next_connect) start_connect();
    if (state == link::connecting && std::chrono::steady_clock::now() >= connect_deadline)
      connect_failed("connecting timed out after " + std::to_string(opts.connect_timeout.count()) + " ms");
    if (state != link::up) return;
    if (now >= next_renew) {
      next_renew = now + opts.renew_every;
      renew_leases();
    }
    if (state == link::up && now >= next_recover) {
      next_recover = now + opts.recover_every;
      (void)do_recover(wall_ms(*clk()));
    }
    if (state == link::up && now >= next_counts) {
      next_counts = now + opts.counts_every;
      refresh_counts();
    }
    deliver_notifications();
  }

  // ---- the connection ----
  enum class link { down, connecting, up };
  static constexpr std::chrono::milliseconds min_backoff{100};

  void params_for_connect() {
    key_store.clear();
    value_store.clear();
    // Defaults first: the connection string (expanded from "dbname", last) overrides any of them.
    auto add = [&](char const* k, std::string v) {
      key_store.emplace_back(k);
      value_store.push_back(std::move(v));
    };
    add("connect_timeout", std::to_string(std::max<long long>(
                               1, static_cast<long long>((opts.connect_timeout.count() + 999) / 1000))));
    add("application_name", "ray");
    add("keepalives", "1");
    add("keepalives_idle", "10");
    add("keepalives_interval", "5");
    add("keepalives_count", "3");
    add("dbname", opts.conninfo);
    keys.clear();
    values.clear();
    for (std::size_t i = 0; i < key_store.size(); ++i) {
      keys.push_back(key_store[i].c_str());
      values.push_back(value_store[i].c_str());
    }
    keys.push_back(nullptr);
    values.push_back(nullptr);
  }

  std::string target() const {
    if (!conn) return "?";
    std::string host = pq::fns().PQhost(conn) ? pq::fns().PQhost(conn) : "";
    std::string port = pq::fns().PQport(conn) ? pq::fns().PQport(conn) : "";
    std::string db = pq::fns().PQdb(conn) ? pq::fns().PQdb(conn) : "";
    return host + ":" + port + "/" + db;
  }

  std::string conn_message() const {
    std::string m = conn ? pq::fns().PQerrorMessage(conn) : "no connection";
    while (!m.empty() && (m.back() == '\n' || m.back() == ' '))
      m.pop_back();
    return m;
  }

  void start_connect() {
    if (conn) pq::fns().PQfinish(conn);
    conn = pq::fns().PQconnectStartParams(keys.data(), values.data(), 1);
    if (!conn || pq::fns().PQstatus(conn) == CONNECTION_BAD) return connect_failed(conn_message());
    pq::fns().PQsetNoticeProcessor(conn, ignore_notice, nullptr);
    state = link::connecting;
    want = PGRES_POLLING_WRITING;
    connect_deadline = std::chrono::steady_clock::now() + opts.connect_timeout;
  }

  void advance_connect() {
    auto const r = pq::fns().PQconnectPoll(conn);
    if (r == PGRES_POLLING_FAILED) return connect_failed(conn_message());
    if (r != PGRES_POLLING_OK) {
      want = r;
      return;
    }
    state = link::up;
    if (auto s = setup_session(); !s) return connect_failed(s.error().message);
    connected_.store(true, std::memory_order_release);
    backoff = min_backoff;
    last_error.clear();
    // Back: first what finished meanwhile, then the leases (they may be close to expiry), then the rest.
    flush_finishes();
    renew_leases();
    auto const now = std::chrono::steady_clock::now();
    next_renew = now + opts.renew_every;
    next_recover = now;  // leases of nodes that died meanwhile may have expired
    refresh_counts();
    next_counts = now + opts.counts_every;
    wake_local();  // jobs may have been submitted elsewhere while we were away
  }

  void connect_failed(std::string why) {
    if (conn) pq::fns().PQfinish(conn);
    conn = nullptr;
    state = link::down;
    connected_.store(false, std::memory_order_release);
    last_error = std::move(why);
    next_connect = std::chrono::steady_clock::now() + backoff;
    backoff = std::min(backoff * 2, opts.reconnect_max);
  }

  // The connection broke: reconnect at once (then with back-off).
  void lost() {
    last_error = conn_message();
    if (conn) pq::fns().PQfinish(conn);
    conn = nullptr;
    state = link::down;
    connected_.store(false, std::memory_order_release);
    backoff = min_backoff;
    next_connect = std::chrono::steady_clock::now();
  }

  ray::error down_error() const {
    return unavailable("the PostgreSQL job store is not connected" +
                       (last_error.empty() ? std::string() : " (" + last_error + ")") +
                       "; it reconnects by itself");
  }

  // Session settings, the schema (created or migrated under an advisory lock), LISTEN.
  result<void> setup_session() {
    // Acknowledged commits are durable whatever the server's default is; a statement never blocks the store
    // thread for long.
    for (char const* sql : {"SET synchronous_commit = on", "SET statement_timeout = '15s'",
                            "SET idle_in_transaction_session_timeout = '60s'"})
      if (auto r = exec(sql, {}, "configuring the session"); !r) return r.error();
    if (auto r = exec("BEGIN", {}, "migrating the schema"); !r) return r.error();
    auto migrated = [&]() -> result<void> {
      if (auto r = exec("SELECT pg_advisory_xact_lock($1::bigint)", {advisory_key}, "locking the schema"); !r)
        return r.error();
      auto has = exec("SELECT to_regclass('ray_schema') IS NOT NULL", {}, "reading the schema version");
      if (!has) return has.error();
      int version = 0;
      if (text_at(has->get(), 0, 0) == std::optional<std::string>("t")) {
        auto v = exec("SELECT coalesce(max(version), 0) FROM ray_schema", {}, "reading the schema version");
        if (!v) return v.error();
        version = static_cast<int>(int_at(v->get(), 0, 0).value_or(0));
      }
      if (version > postgres_schema_version)
        return unavailable("the PostgreSQL job store (" + target() + ") has schema version " +
                           std::to_string(version) + ", written by a newer Ray (this build reads version " +
                           std::to_string(postgres_schema_version) + "); upgrade Ray");
      // Forward migrations, in order, each with its version bump.
      if (version < 1) {
        if (auto r = exec(schema_v1, {}, "creating the schema"); !r) return r.error();
      }
      return {};
    }();
    if (!migrated) {
      (void)exec("ROLLBACK", {}, "migrating the schema");
      return migrated.error();
    }
    if (auto r = exec("COMMIT", {}, "migrating the schema"); !r) return r.error();
    // The channel name is a constant identifier (LISTEN takes no parameters).
    if (auto r = exec("LISTEN ray_jobs", {}, "listening for new jobs"); !r) return r.error();
    return {};
  }

  // ---- SQL helpers (store thread only) ----
  // One statement with text parameters. A broken connection is noticed here (and answered "unavailable");
  // `last_sqlstate` keeps the failing statement's SQLSTATE for callers that tell errors apart.
  result<pg_result> exec(char const* sql, std::vector<param> const& params, std::string_view what) {
    last_sqlstate.clear();
    if (state != link::up || !conn) return down_error();
    std::vector<char const*> values_v;
    values_v.reserve(params.size());
    for (auto const& p : params)
      values_v.push_back(p ? p->c_str() : nullptr);
    pg_result r(params.empty() ? pq::fns().PQexec(conn, sql)
                               : pq::fns().PQexecParams(conn, sql, static_cast<int>(params.size()), nullptr,
                                                        values_v.data(), nullptr, nullptr, 0));
    auto const st = r ? pq::fns().PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return r;
    if (char const* code = r ? pq::fns().PQresultErrorField(r.get(), PG_DIAG_SQLSTATE) : nullptr)
      last_sqlstate = code;
    std::string msg;
    if (char const* m = r ? pq::fns().PQresultErrorField(r.get(), PG_DIAG_MESSAGE_PRIMARY) : nullptr)
      msg = m;
    else
      msg = conn_message();
    if (pq::fns().PQstatus(conn) != CONNECTION_OK) {
      lost();
      return unavailable("the PostgreSQL job store lost its connection while " + std::string(what) + ": " +
                         msg + "; it reconnects by itself");
    }
    return unavailable(std::string(what) + " failed on PostgreSQL (" + target() + "): " + msg +
                       (last_sqlstate.empty() ? "" : " [" + last_sqlstate + "]"));
  }
  result<pg_result> exec(std::string const& sql, std::vector<param> const& params, std::string_view what) {
    return exec(sql.c_str(), params, what);
  }

  // `body` inside BEGIN … COMMIT; `durable = false` lets the commit return before the WAL flush (outcomes
  // whose loss only re-runs work: finish, callbacks, prune, leases).
  template <class F>
  auto transaction(bool durable, std::string_view what, F body) -> decltype(body()) {
    if (auto r = exec("BEGIN", {}, what); !r) return r.error();
    if (!durable) {
      if (auto r = exec("SET LOCAL synchronous_commit = off", {}, what); !r) {
        (void)exec("ROLLBACK", {}, what);
        return r.error();
      }
    }
    auto out = body();
    if (!out) {
      if (state == link::up) (void)exec("ROLLBACK", {}, what);
      return out;
    }
    if (auto r = exec("COMMIT", {}, what); !r) {
      if (state == link::up) (void)exec("ROLLBACK", {}, what);
      return r.error();
    }
    return out;
  }

  result<void> notify() {
    auto r = exec("SELECT pg_notify($1, $2)", {notify_channel, opts.node_id}, "notifying other nodes");
    if (!r) return r.error();
    return {};
  }

  // NOTIFYs received (while idle or during a statement) → the registered wake callback, once per batch.
  void deliver_notifications() {
    if (!conn || state != link::up) return;
    bool any = false;
    while (PGnotify* n = pq::fns().PQnotifies(conn)) {
      any = true;
      pq::fns().PQfreemem(n);
    }
    if (any) wake_local();
  }

  void wake_local() {
    std::function<void()> fn;
    {
      std::lock_guard lk(wake_mu);
      fn = wake_fn;
    }
    if (fn) fn();
  }

  void refresh_counts() {
    auto r = exec(
        "SELECT status, count(*), count(*) FILTER (WHERE cb_status = 'pending') FROM ray_jobs GROUP BY "
        "status",
        {}, "counting jobs");
    if (!r) return;
    counts c;
    for (int i = 0; i < pq::fns().PQntuples(r->get()); ++i) {
      auto s = parse_status(text_at(r->get(), i, 0).value_or(""));
      if (s)
        c.by_status[static_cast<std::size_t>(*s)] =
            static_cast<std::uint64_t>(int_at(r->get(), i, 1).value_or(0));
      c.callback_pending += static_cast<std::uint64_t>(int_at(r->get(), i, 2).value_or(0));
    }
    std::lock_guard lk(counts_mu);
    counts_ = c;
  }

  std::vector<std::string> held_ids() const {
    std::vector<std::string> ids;
    ids.reserve(held.size());
    for (auto const& [id, attempt] : held)
      ids.push_back(id);
    return ids;
  }

  // Pushes the leases of the jobs this node holds forward; a job not renewed is no longer ours (cancelled,
  // or its lease expired and another node took it) and is dropped from the set.
  void renew_leases() {
    if (held.empty()) return;
    auto const sql = std::string("UPDATE ray_jobs SET lease_until = ") + db_now +
                     " + $2::bigint WHERE status = 'running' AND lease_owner = $1 AND id = ANY($3::text[]) "
                     "RETURNING id";
    auto r = transaction(false, "renewing leases", [&]() -> result<pg_result> {
      return exec(sql, {opts.node_id, num(opts.lease.count()), text_array(held_ids())}, "renewing leases");
    });
    if (!r) return;
    std::unordered_set<std::string> renewed;
    for (int i = 0; i < pq::fns().PQntuples(r->get()); ++i)
      renewed.insert(text_at(r->get(), i, 0).value_or(""));
    std::erase_if(held, [&](auto const& kv) { return !renewed.contains(kv.first); });
  }

  void flush_finishes() {
    while (!pending_finishes.empty() && state == link::up) {
      auto f = std::move(pending_finishes.front());
      pending_finishes.pop_front();
      (void)apply_finish(f.id, f.out, f.now);
    }
  }

  // ---- the operations ----
  result<std::optional<job>> do_get(std::string const& id, std::optional<std::string> const& owner) {
    auto const sql = "SELECT " + columns() + " FROM ray_jobs WHERE id = $1";
    auto r = exec(sql, {id}, "reading a job");
    if (!r) return r.error();
    auto rows = rows_of(r->get());
    if (rows.empty()) return std::optional<job>{};
    if (owner && rows[0].owner != *owner) return std::optional<job>{};
    return std::optional<job>(std::move(rows[0]));
  }

  result<std::vector<job>> do_list(list_query const& q) {
    auto const sql = "SELECT " + columns() +
                     " FROM ray_jobs WHERE ($1::text IS NULL OR status = $1::text) AND ($2::text IS NULL OR "
                     "owner = $2::text) ORDER BY created_at DESC, id DESC LIMIT $3::bigint";
    auto r =
        exec(sql, {q.state ? param(std::string(status_name(*q.state))) : std::nullopt, q.owner, num(q.limit)},
             "listing jobs");
    if (!r) return r.error();
    return rows_of(r->get());
  }

  // Retry-After for a full queue: room appears when the oldest finished job expires and is pruned.
  double full_retry_after_ms() {
    auto const sql = std::string("SELECT min(completed_at) FROM ray_jobs WHERE status IN ") + terminal_in +
                     " AND (cb_status IS NULL OR cb_status <> 'pending')";
    double wait = 30'000;
    if (auto r = exec(sql, {}, "estimating when room appears"); r) {
      if (auto oldest = int_at(r->get(), 0, 0)) {
        auto const expires = *oldest + static_cast<millis>(opts.completed_ttl_ms);
        wait = static_cast<double>(std::max<millis>(1000, expires - wall_ms(*clk())));
      }
    }
    return std::min(wait, 30'000.0);
  }

  // One insert inside the batch's transaction (which holds the advisory lock: the count and the
  // idempotency lookup are exact across nodes).
  result<insert_outcome> insert_one(job const& j, std::uint64_t& total) {
    if (j.idempotency_key) {
      auto const sql = "SELECT " + columns() + " FROM ray_jobs WHERE owner = $1 AND idempotency_key = $2";
      auto r = exec(sql, {j.owner, *j.idempotency_key}, "looking up an idempotency key");
      if (!r) return r.error();
      auto rows = rows_of(r->get());
      if (!rows.empty()) return insert_outcome{std::move(rows[0]), true};
    }
    if (total >= opts.max_jobs) {
      ray::error e{errc::async_queue_full, "the job store holds " + std::to_string(total) +
                                               " jobs, asyncQueue.maxJobs is " +
                                               std::to_string(opts.max_jobs) +
                                               "; finished jobs are pruned after asyncQueue.completedTtlMs"};
      e.retry_after_ms = full_retry_after_ms();
      return e;
    }
    auto r = exec(insert_sql(), insert_params(j), "inserting a job");
    if (!r) {
      if (last_sqlstate == "23505")
        return ray::error{errc::invalid_request, "a job with id " + j.id + " already exists"};
      return r.error();
    }
    ++total;
    return insert_outcome{j, false};
  }

  void run_inserts(std::vector<std::unique_ptr<task>>& batch);

  result<std::pair<std::uint32_t, std::uint32_t>> do_import(std::vector<job> const& jobs) {
    auto out = transaction(true, "importing jobs", [&]() -> result<std::pair<std::uint32_t, std::uint32_t>> {
      std::uint32_t imported = 0, skipped = 0;
      auto const sql = insert_sql() + " ON CONFLICT DO NOTHING";
      for (auto const& j : jobs) {
        auto r = exec(sql, insert_params(j), "importing a job");
        if (!r) return r.error();
        if (affected(r->get()) == 1)
          ++imported;
        else
          ++skipped;  // an id (or idempotency key) already present: imported before
      }
      return std::pair{imported, skipped};
    });
    refresh_counts();
    return out;
  }

  result<std::optional<job>> do_cancel(std::string const& id, std::optional<std::string> const& owner) {
    auto const sql =
        std::string(
            "UPDATE ray_jobs SET status = 'cancelled', updated_at = $2::bigint, completed_at = "
            "$2::bigint, cb_next_at = $2::bigint, error_code = 'job_cancelled', error_message = "
            "'cancelled by a client', lease_owner = NULL, lease_until = NULL WHERE id = $1 AND "
            "status IN ('queued','running') AND ($3::text IS NULL OR owner = $3::text) RETURNING ") +
        columns();
    auto r = exec(sql, {id, num(wall_ms(*clk())), owner}, "cancelling a job");
    if (!r) return r.error();
    auto rows = rows_of(r->get());
    if (rows.empty()) return do_get(id, owner);  // unknown, another owner's, or already terminal
    held.erase(id);
    refresh_counts();
    return std::optional<job>(std::move(rows[0]));
  }

  result<std::vector<job>> do_claim(std::uint32_t n, millis now) {
    static std::string const sql =
        std::string(
            "UPDATE ray_jobs AS j SET status = 'running', attempts = j.attempts + 1, "
            "started_at = $1::bigint, updated_at = $1::bigint, lease_owner = $3, "
            "lease_until = ") +
        db_now +
        " + $4::bigint FROM (SELECT id FROM ray_jobs WHERE status = 'queued' AND "
        "not_before <= $1::bigint ORDER BY created_at, id LIMIT $2::bigint FOR UPDATE "
        "SKIP LOCKED) AS c WHERE j.id = c.id RETURNING " +
        j_columns();
    if (n == 0) return std::vector<job>{};
    auto r = exec(sql, {num(now), num(n), opts.node_id, num(opts.lease.count())}, "claiming jobs");
    if (!r) return r.error();
    auto rows = rows_of(r->get());
    std::sort(rows.begin(), rows.end(), [](job const& a, job const& b) {
      return a.created_at != b.created_at ? a.created_at < b.created_at : a.id < b.id;
    });
    for (auto const& j : rows)
      held[j.id] = j.attempts;
    if (!rows.empty()) refresh_counts();
    return rows;
  }

  result<std::optional<job>> do_finish(std::string const& id, attempt_outcome const& out, millis now) {
    if (state != link::up) {
      // Kept for when the connection returns (the lease is not renewed meanwhile: if the outage outlasts it,
      // another node re-runs the job and this outcome no longer applies).
      if (held.contains(id)) {
        if (pending_finishes.size() >= std::max<std::size_t>(opts.max_buffered_finishes, 1)) {
          held.erase(pending_finishes.front().id);
          pending_finishes.pop_front();
        }
        pending_finishes.push_back(buffered_finish{id, out, now});
      }
      auto e = down_error();
      e.message += "; the outcome of job " + id + " is kept and written when the connection returns";
      return e;
    }
    return apply_finish(id, out, now);
  }

  result<std::optional<job>> apply_finish(std::string const& id, attempt_outcome const& out, millis now) {
    std::optional<std::uint32_t> attempt;
    if (auto it = held.find(id); it != held.end()) attempt = it->second;
    static std::string const sql =
        "UPDATE ray_jobs SET status = $2::text, updated_at = $3::bigint, completed_at = CASE WHEN $2::text = "
        "'queued' THEN NULL ELSE $3::bigint END, result = $4, error_code = $5, error_message = $6, "
        "not_before = "
        "$7::bigint, cb_next_at = $3::bigint, lease_owner = NULL, lease_until = NULL WHERE id = $1 AND "
        "status "
        "= 'running' AND lease_owner = $8 AND ($9::integer IS NULL OR attempts = $9::integer)";
    auto r = transaction(false, "recording a job's attempt", [&]() -> result<std::uint32_t> {
      auto u = exec(sql,
                    {id, std::string(status_name(out.next)), num(now),
                     out.result ? param(json::serialize(*out.result)) : std::nullopt,
                     out.error ? param(out.error->code) : std::nullopt,
                     out.error ? param(out.error->message) : std::nullopt, num(out.not_before), opts.node_id,
                     attempt ? num(*attempt) : std::nullopt},
                    "recording a job's attempt");
      if (!u) return u.error();
      auto const n = affected(u->get());
      // Back in the queue with no wait (a shutdown hand-back): another node may take it now.
      if (n > 0 && out.next == status::queued && out.not_before <= now)
        if (auto s = notify(); !s) return s.error();
      return n;
    });
    if (!r && state != link::up && held.contains(id)) {
      // Lost mid-write: keep it for the reconnect like a finish that came while down.
      pending_finishes.push_back(buffered_finish{id, out, now});
      return r.error();
    }
    held.erase(id);  // finished (or not ours any more): never renewed again
    if (!r) return r.error();
    refresh_counts();
    return do_get(id, std::nullopt);
  }

  // Pending callbacks that are due, each taken for one lease (cb_next_at moved forward) so that another node
  // does not deliver the same callback at the same time; update_callback records the real outcome.
  result<std::vector<job>> do_due_callbacks(std::uint32_t n, millis now) {
    static std::string const sql =
        std::string(
            "UPDATE ray_jobs AS j SET cb_next_at = $1::bigint + $3::bigint FROM (SELECT id FROM ray_jobs "
            "WHERE "
            "cb_status = 'pending' AND cb_next_at <= $1::bigint AND status IN ") +
        terminal_in +
        " ORDER BY cb_next_at LIMIT $2::bigint FOR UPDATE SKIP LOCKED) AS c WHERE j.id = c.id RETURNING " +
        j_columns();
    if (n == 0) return std::vector<job>{};
    auto r = exec(sql, {num(now), num(n), num(opts.lease.count())}, "reading due callbacks");
    if (!r) return r.error();
    return rows_of(r->get());
  }

  result<void> do_update_callback(std::string const& id, callback_state const& cb) {
    auto r = transaction(false, "recording a callback", [&]() -> result<void> {
      auto u = exec(
          "UPDATE ray_jobs SET cb_status = $2, cb_attempts = $3::integer, cb_last_error = $4, "
          "cb_last_attempt_at "
          "= $5::bigint, cb_delivered_at = $6::bigint, cb_next_at = $7::bigint WHERE id = $1",
          {id, std::string(callback_status_name(cb.status)), num(cb.attempts), cb.last_error,
           opt_num(cb.last_attempt_at), opt_num(cb.delivered_at), num(cb.next_attempt_at)},
          "recording a callback");
      if (!u) return u.error();
      return {};
    });
    if (r) refresh_counts();
    return r;
  }

  result<std::uint32_t> do_prune(millis before, std::uint32_t batch) {
    static std::string const sql =
        std::string("DELETE FROM ray_jobs WHERE id IN (SELECT id FROM ray_jobs WHERE status IN ") +
        terminal_in +
        " AND completed_at < $1::bigint AND (cb_status IS NULL OR cb_status <> 'pending') ORDER BY "
        "completed_at "
        "LIMIT $2::bigint FOR UPDATE SKIP LOCKED)";
    auto r = transaction(false, "pruning jobs", [&]() -> result<std::uint32_t> {
      auto d = exec(sql, {num(before), num(batch)}, "pruning jobs");
      if (!d) return d.error();
      return affected(d->get());
    });
    if (r && *r > 0) refresh_counts();
    return r;
  }

  // Running jobs whose lease expired (their node died; or no lease: imported running), and those leased to
  // this node's name that this process does not hold (a previous process with the same node id), go back to
  // queued — or fail when out of attempts. Live leases of other nodes, and this node's own, are untouched.
  result<std::pair<std::uint32_t, std::uint32_t>> do_recover(millis now) {
    std::string const expired = std::string("status = 'running' AND (lease_until IS NULL OR lease_until < ") +
                                db_now + " OR (lease_owner = $2 AND NOT (id = ANY($3::text[]))))";
    auto const fail_sql =
        "UPDATE ray_jobs SET status = 'failed', updated_at = $1::bigint, completed_at = $1::bigint, "
        "cb_next_at = "
        "$1::bigint, error_code = 'job_recovery_attempts_exhausted', error_message = 'the job was running on "
        "a "
        "node that stopped (its lease expired) and has no attempts left', lease_owner = NULL, lease_until = "
        "NULL "
        "WHERE attempts >= max_attempts AND " +
        expired;
    auto const requeue_sql =
        "UPDATE ray_jobs SET status = 'queued', updated_at = $1::bigint, not_before = 0, lease_owner = NULL, "
        "lease_until = NULL WHERE " +
        expired;
    std::vector<param> const p{num(now), opts.node_id, text_array(held_ids())};
    auto r = transaction(true, "recovering jobs with expired leases",
                         [&]() -> result<std::pair<std::uint32_t, std::uint32_t>> {
                           auto f = exec(fail_sql, p, "recovering jobs with expired leases");
                           if (!f) return f.error();
                           auto q = exec(requeue_sql, p, "recovering jobs with expired leases");
                           if (!q) return q.error();
                           auto const n_requeued = affected(q->get());
                           if (n_requeued > 0)
                             if (auto s = notify(); !s) return s.error();
                           return std::pair{n_requeued, affected(f->get())};
                         });
    if (r && r->first + r->second > 0) refresh_counts();
    return r;
  }

  result<due_times> do_next_due() {
    static std::string const sql = std::string(
                                       "SELECT (SELECT min(not_before) FROM ray_jobs WHERE status = "
                                       "'queued'), (SELECT min(cb_next_at) FROM "
                                       "ray_jobs WHERE cb_status = 'pending' AND status IN ") +
                                   terminal_in + ")";
    auto r = exec(sql, {}, "reading the next due time");
    if (!r) return r.error();
    return due_times{int_at(r->get(), 0, 0), int_at(r->get(), 0, 1)};
  }

  ray::clock const* clk() const { return opts.clock ? opts.clock : &ray::system_clock(); }

  postgres_options opts;
  PGconn* conn{nullptr};
  std::vector<std::string> key_store, value_store;
  std::vector<char const*> keys, values;
  link state{link::down};
  PostgresPollingStatusType want{PGRES_POLLING_WRITING};
  std::chrono::steady_clock::time_point next_connect{}, connect_deadline{}, next_renew{}, next_recover{},
      next_counts{};
  std::chrono::milliseconds backoff{min_backoff};
  std::string last_error, last_sqlstate;
  std::unordered_map<std::string, std::uint32_t>
      held;  // jobs this process claimed and has not finished → attempt
  std::deque<buffered_finish> pending_finishes;
  int efd{-1};
  std::mutex mu;
  std::deque<std::unique_ptr<task>> queue;
  bool stopping{false};
  std::thread worker;
  mutable std::mutex counts_mu;
  counts counts_{};
  std::atomic<bool> connected_{false};
  std::mutex wake_mu;
  std::function<void()> wake_fn;
};

// Plain functions, not coroutines: see store_thread::submit (the GCC 12 prvalue rule).
template <class R, class F>
asio::awaitable<R> pg_store::call(F f) {
  return store_thread::submit<R>(this, new store_thread::call_task<pg_store, R, F>(std::move(f)));
}

asio::awaitable<result<insert_outcome>> pg_store::insert(job j) {
  return store_thread::submit<result<insert_outcome>>(this, new insert_task(std::move(j)));
}

// Concurrent inserts share one transaction (one commit acknowledges them all); each is its own savepoint so
// one refused job does not undo the others. The advisory lock makes the max_jobs count exact across nodes.
void pg_store::run_inserts(std::vector<std::unique_ptr<task>>& batch) {
  std::vector<insert_task*> items;
  items.reserve(batch.size());
  for (auto& t : batch)
    items.push_back(static_cast<insert_task*>(t.get()));
  auto fail_all = [&](ray::error const& e) {
    for (auto* it : items)
      it->complete(e);
  };
  std::vector<std::optional<result<insert_outcome>>> outcomes(items.size());
  bool any = false;
  auto committed = transaction(true, "inserting jobs", [&]() -> result<void> {
    if (auto r = exec("SELECT pg_advisory_xact_lock($1::bigint)", {advisory_key}, "inserting jobs"); !r)
      return r.error();
    auto c = exec("SELECT count(*) FROM ray_jobs", {}, "counting jobs");
    if (!c) return c.error();
    auto total = static_cast<std::uint64_t>(int_at(c->get(), 0, 0).value_or(0));
    for (std::size_t i = 0; i < items.size(); ++i) {
      if (auto r = exec("SAVEPOINT one", {}, "inserting jobs"); !r) return r.error();
      auto r = insert_one(items[i]->item, total);
      if (state != link::up) return r ? down_error() : r.error();
      if (auto s = exec(r ? "RELEASE SAVEPOINT one" : "ROLLBACK TO SAVEPOINT one", {}, "inserting jobs"); !s)
        return s.error();
      if (r && !r->existing) any = true;
      outcomes[i] = std::move(r);
    }
    if (any)
      if (auto s = notify(); !s) return s.error();
    return {};
  });
  if (!committed) return fail_all(committed.error());
  refresh_counts();  // also after a refusal: other nodes' inserts are what filled the store
  for (std::size_t i = 0; i < items.size(); ++i)
    items[i]->complete(std::move(*outcomes[i]));
}

}  // namespace

result<std::unique_ptr<store>> open_postgres_store(postgres_options const& opts) {
  if (auto lib = pq::load(); !lib) return lib.error();  // dlopen, on the first use only
  auto s = std::make_unique<pg_store>(opts);
  if (auto r = s->open(); !r) return r.error();
  return std::unique_ptr<store>(std::move(s));
}

}  // namespace ray::jobs
