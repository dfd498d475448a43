// The SQLite job store: one connection on one dedicated thread; callers' awaitables complete on their own
// executors. Inserts that arrive while a commit is in progress are committed together (group commit: one
// fsync acknowledges them all).
#include "ray/jobs/jobs.hpp"
#include "ray/jobs/store_thread.hpp"

#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <sqlite3.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace ray::jobs {

namespace asio = boost::asio;
namespace json = boost::json;

struct sqlite_store;

namespace {

constexpr char const* schema_v1 = R"sql(
CREATE TABLE jobs(
  id TEXT PRIMARY KEY NOT NULL,
  owner TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  started_at INTEGER,
  completed_at INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  max_attempts INTEGER NOT NULL,
  not_before INTEGER NOT NULL DEFAULT 0,
  request TEXT NOT NULL,
  result TEXT,
  error_code TEXT,
  error_message TEXT,
  idempotency_key TEXT,
  cb_url TEXT,
  cb_status TEXT,
  cb_attempts INTEGER NOT NULL DEFAULT 0,
  cb_last_error TEXT,
  cb_last_attempt_at INTEGER,
  cb_delivered_at INTEGER,
  cb_next_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_due ON jobs(status, not_before);
CREATE INDEX jobs_created ON jobs(created_at);
CREATE UNIQUE INDEX jobs_idempotency ON jobs(owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_callbacks ON jobs(cb_status, cb_next_at) WHERE cb_status = 'pending';
)sql";

constexpr char const* columns =
    "id, owner, status, created_at, updated_at, started_at, completed_at, attempts, max_attempts, "
    "not_before, request, result, error_code, error_message, idempotency_key, cb_url, cb_status, "
    "cb_attempts, cb_last_error, cb_last_attempt_at, cb_delivered_at, cb_next_at";

constexpr char const* terminal_in = "('succeeded','failed','cancelled')";

ray::error storage_error(std::string what) {
  ray::error e{errc::async_queue_storage_low, std::move(what)};
  e.retry_after_ms = 30'000;
  return e;
}

using task = store_thread::task<sqlite_store>;  // a call queued to the store thread (store_thread.hpp)
using insert_task = store_thread::insert_task<sqlite_store>;

millis wall_ms(ray::clock const& c) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(c.wall().time_since_epoch()).count();
}

}  // namespace

struct sqlite_store final : store {
  explicit sqlite_store(sqlite_options o) : opts(std::move(o)) {}
  ~sqlite_store() override {
    {
      std::lock_guard lk(mu);
      stopping = true;
    }
    cv.notify_all();
    if (worker.joinable()) worker.join();
    for (auto& [sql, st] : stmts)
      sqlite3_finalize(st);
    if (db) sqlite3_close(db);
  }

  // ---- setup (caller's thread, before the worker starts) ----
  result<void> open() {
    std::error_code ec;
    auto const& dir = opts.dir;
    if (!opts.read_only) {
      bool const made = std::filesystem::create_directories(dir, ec);
      if (ec)
        return storage_error("cannot create asyncQueue.storageDir " + dir.string() + ": " + ec.message());
      (void)made;
      ::chmod(dir.c_str(), 0700);  // jobs hold prompts: the folder is the service user's alone
    }
    path = dir / "jobs.sqlite3";
    if (!opts.read_only) {
      // Create the file 0600 before SQLite does (SQLite gives the -wal and -shm files the same mode).
      int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      if (fd < 0) return storage_error("cannot create " + path.string() + ": " + std::strerror(errno));
      ::fchmod(fd, 0600);
      ::close(fd);
    }
    int flags = (opts.read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path.c_str(), &db, flags, nullptr) != SQLITE_OK) {
      std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
      return storage_error("cannot open " + path.string() + ": " + msg);
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, 5000);  // the operator CLI may hold a write lock briefly
    if (!opts.read_only) {
      if (auto r = exec("PRAGMA journal_mode=WAL"); !r) return r;
    }
    if (auto r = exec("PRAGMA foreign_keys=OFF"); !r) return r;
    int version = 0;
    {
      sqlite3_stmt* st = nullptr;
      sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, nullptr);
      if (st && sqlite3_step(st) == SQLITE_ROW) version = sqlite3_column_int(st, 0);
      sqlite3_finalize(st);
    }
    if (version > schema_version)
      return storage_error(path.string() + " has schema version " + std::to_string(version) +
                           ", written by a newer Ray (this build reads version " +
                           std::to_string(schema_version) + "); upgrade Ray or move the file aside");
    if (version < schema_version) {
      if (opts.read_only) return storage_error(path.string() + " has no job store yet (schema version 0)");
      // Forward migrations, each in its own transaction with the version bump.
      if (version == 0) {
        std::string sql = std::string("BEGIN IMMEDIATE;") + schema_v1 + "PRAGMA user_version=1; COMMIT;";
        if (auto r = exec(sql.c_str()); !r) {
          exec("ROLLBACK");
          return r;
        }
      }
    }
    if (opts.max_page_count) {
      auto pragma = "PRAGMA max_page_count=" + std::to_string(*opts.max_page_count);
      if (auto r = exec(pragma.c_str()); !r) return r;
    }
    refresh_counts();
    refresh_storage();
    worker = std::thread([this] { loop(); });
    return {};
  }

  // ---- store interface ----
  asio::awaitable<result<insert_outcome>> insert(job j) override;
  asio::awaitable<result<std::optional<job>>> get(std::string id) override {
    return call<result<std::optional<job>>>(
        [id = std::move(id)](sqlite_store& s) { return s.do_get(id, std::nullopt); });
  }
  asio::awaitable<result<std::vector<job>>> list(list_query q) override {
    return call<result<std::vector<job>>>([q = std::move(q)](sqlite_store& s) { return s.do_list(q); });
  }
  asio::awaitable<result<std::optional<job>>> cancel(std::string id,
                                                     std::optional<std::string> owner) override {
    return call<result<std::optional<job>>>(
        [id = std::move(id), owner = std::move(owner)](sqlite_store& s) { return s.do_cancel(id, owner); });
  }
  asio::awaitable<result<std::vector<job>>> claim(std::uint32_t n, millis now) override {
    return call<result<std::vector<job>>>([n, now](sqlite_store& s) { return s.do_claim(n, now); });
  }
  asio::awaitable<result<std::optional<job>>> finish(std::string id, attempt_outcome out,
                                                     millis now) override {
    return call<result<std::optional<job>>>([id = std::move(id), out = std::move(out), now](sqlite_store& s) {
      return s.do_finish(id, out, now);
    });
  }
  asio::awaitable<result<std::vector<job>>> due_callbacks(std::uint32_t n, millis now) override {
    return call<result<std::vector<job>>>([n, now](sqlite_store& s) { return s.do_due_callbacks(n, now); });
  }
  asio::awaitable<result<void>> update_callback(std::string id, callback_state cb) override {
    return call<result<void>>(
        [id = std::move(id), cb = std::move(cb)](sqlite_store& s) { return s.do_update_callback(id, cb); });
  }
  asio::awaitable<result<std::uint32_t>> prune(millis before, std::uint32_t batch) override {
    return call<result<std::uint32_t>>(
        [before, batch](sqlite_store& s) { return s.do_prune(before, batch); });
  }
  asio::awaitable<result<std::pair<std::uint32_t, std::uint32_t>>> recover(millis now) override {
    return call<result<std::pair<std::uint32_t, std::uint32_t>>>(
        [now](sqlite_store& s) { return s.do_recover(now); });
  }
  asio::awaitable<result<std::pair<std::uint32_t, std::uint32_t>>> import(std::vector<job> jobs) override {
    return call<result<std::pair<std::uint32_t, std::uint32_t>>>(
        [jobs = std::move(jobs)](sqlite_store& s) { return s.do_import(jobs); });
  }
  asio::awaitable<result<due_times>> next_due() override {
    return call<result<due_times>>([](sqlite_store& s) { return s.do_next_due(); });
  }

  counts current_counts() const noexcept override {
    std::lock_guard lk(counts_mu);
    return counts_;
  }
  bool degraded() const noexcept override { return degraded_.load(std::memory_order_acquire); }
  std::optional<std::uint64_t> available_storage_mib() const noexcept override {
    auto v = available_mib_.load(std::memory_order_relaxed);
    if (v < 0) return std::nullopt;
    return static_cast<std::uint64_t>(v);
  }

  // ---- the thread's side ----
  template <class R, class F>
  asio::awaitable<R> call(F f);

  void push(std::unique_ptr<task> t) {
    {
      std::lock_guard lk(mu);
      queue.push_back(std::move(t));
    }
    cv.notify_one();
  }

  void loop() {
    std::vector<std::unique_ptr<task>> batch;
    for (;;) {
      {
        std::unique_lock lk(mu);
        cv.wait(lk, [&] { return stopping || !queue.empty(); });
        if (queue.empty()) return;  // stopping and drained
        // Take every waiting insert at once (up to a bound), or one other task.
        if (queue.front()->is_insert() && opts.group_commit) {
          while (!queue.empty() && queue.front()->is_insert() && batch.size() < 256) {
            batch.push_back(std::move(queue.front()));
            queue.pop_front();
          }
        } else {
          batch.push_back(std::move(queue.front()));
          queue.pop_front();
        }
      }
      if (batch.front()->is_insert())
        run_inserts(batch);
      else
        batch.front()->run(*this);
      batch.clear();
    }
  }

  void run_inserts(std::vector<std::unique_ptr<task>>& batch);

  // ---- SQL helpers (store thread only) ----
  result<void> exec(char const* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : sqlite3_errmsg(db);
      sqlite3_free(err);
      return storage_error("SQLite error on " + path.string() + ": " + msg);
    }
    return {};
  }

  sqlite3_stmt* prepare(char const* sql) {
    auto it = stmts.find(sql);
    if (it != stmts.end()) {
      sqlite3_reset(it->second);
      sqlite3_clear_bindings(it->second);
      return it->second;
    }
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, nullptr) != SQLITE_OK) return nullptr;
    stmts.emplace(sql, st);
    return st;
  }

  ray::error sql_error(std::string_view what) {
    return storage_error(std::string(what) + " failed on " + path.string() + ": " + sqlite3_errmsg(db));
  }

  // A failed write latches the store: a disk that failed once is not trusted with the next acknowledgement.
  ray::error write_failed(std::string_view what) {
    auto e = sql_error(what);
    int const code = sqlite3_extended_errcode(db);
    (void)code;
    degraded_.store(true, std::memory_order_release);
    return e;
  }

  static void bind_text(sqlite3_stmt* st, int i, std::string_view s) {
    sqlite3_bind_text(st, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
  }
  static void bind_opt_text(sqlite3_stmt* st, int i, std::optional<std::string> const& s) {
    if (s)
      bind_text(st, i, *s);
    else
      sqlite3_bind_null(st, i);
  }
  static void bind_opt_int(sqlite3_stmt* st, int i, std::optional<millis> v) {
    if (v)
      sqlite3_bind_int64(st, i, *v);
    else
      sqlite3_bind_null(st, i);
  }
  static std::optional<std::string> col_text(sqlite3_stmt* st, int i) {
    if (sqlite3_column_type(st, i) == SQLITE_NULL) return std::nullopt;
    auto const* p = reinterpret_cast<char const*>(sqlite3_column_text(st, i));
    return std::string(p ? p : "", static_cast<std::size_t>(sqlite3_column_bytes(st, i)));
  }
  static std::optional<millis> col_int(sqlite3_stmt* st, int i) {
    if (sqlite3_column_type(st, i) == SQLITE_NULL) return std::nullopt;
    return sqlite3_column_int64(st, i);
  }

  static job row(sqlite3_stmt* st) {
    job j;
    j.id = col_text(st, 0).value_or("");
    j.owner = col_text(st, 1).value_or("");
    j.state = parse_status(col_text(st, 2).value_or("")).value_or(status::failed);
    j.created_at = col_int(st, 3).value_or(0);
    j.updated_at = col_int(st, 4).value_or(0);
    j.started_at = col_int(st, 5);
    j.completed_at = col_int(st, 6);
    j.attempts = static_cast<std::uint32_t>(col_int(st, 7).value_or(0));
    j.max_attempts = static_cast<std::uint32_t>(col_int(st, 8).value_or(1));
    j.not_before = col_int(st, 9).value_or(0);
    boost::system::error_code ec;
    if (auto text = col_text(st, 10)) {
      auto v = json::parse(*text, ec);
      if (!ec && v.is_object()) j.request = std::move(v.get_object());
    }
    if (auto text = col_text(st, 11)) {
      auto v = json::parse(*text, ec);
      if (!ec) j.result = std::move(v);
    }
    if (auto code = col_text(st, 12)) j.error = job_error{*code, col_text(st, 13).value_or("")};
    j.idempotency_key = col_text(st, 14);
    if (auto url = col_text(st, 15)) {
      callback_state cb;
      cb.url = *url;
      auto s = col_text(st, 16).value_or("pending");
      cb.status = s == "delivered" ? callback_status::delivered
                  : s == "failed"  ? callback_status::failed
                                   : callback_status::pending;
      cb.attempts = static_cast<std::uint32_t>(col_int(st, 17).value_or(0));
      cb.last_error = col_text(st, 18);
      cb.last_attempt_at = col_int(st, 19);
      cb.delivered_at = col_int(st, 20);
      cb.next_attempt_at = col_int(st, 21).value_or(0);
      j.callback = std::move(cb);
    }
    return j;
  }

  result<std::vector<job>> rows(sqlite3_stmt* st, std::string_view what) {
    std::vector<job> out;
    for (;;) {
      int rc = sqlite3_step(st);
      if (rc == SQLITE_ROW) {
        out.push_back(row(st));
        continue;
      }
      if (rc == SQLITE_DONE) break;
      return sql_error(what);
    }
    return out;
  }

  result<void> set_sync(bool full) {
    if (full == sync_full) return {};
    auto r = exec(full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
    if (r) sync_full = full;
    return r;
  }

  // Writes run in one IMMEDIATE transaction; a failed COMMIT latches degraded.
  template <class F>
  auto transaction(bool durable, std::string_view what, F body) -> decltype(body()) {
    if (degraded()) return storage_error("the job store is degraded after a failed write; restart Ray");
    if (auto r = set_sync(durable); !r) return r.error();
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK) return sql_error(what);
    auto out = body();
    if (!out) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      return out;
    }
    if (sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
      auto e = write_failed(what);
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      refresh_counts();
      return e;
    }
    refresh_counts();
    return out;
  }

  void refresh_counts() {
    counts c;
    auto* st = prepare("SELECT status, count(*) FROM jobs GROUP BY status");
    while (st && sqlite3_step(st) == SQLITE_ROW) {
      auto s = parse_status(col_text(st, 0).value_or(""));
      if (s)
        c.by_status[static_cast<std::size_t>(*s)] = static_cast<std::uint64_t>(sqlite3_column_int64(st, 1));
    }
    auto* cb = prepare("SELECT count(*) FROM jobs WHERE cb_status = 'pending'");
    if (cb && sqlite3_step(cb) == SQLITE_ROW)
      c.callback_pending = static_cast<std::uint64_t>(sqlite3_column_int64(cb, 0));
    std::lock_guard lk(counts_mu);
    counts_ = c;
  }

  std::int64_t refresh_storage() {
    struct statvfs vfs {};
    std::int64_t mib = -1;
    if (::statvfs(opts.dir.c_str(), &vfs) == 0)
      mib = static_cast<std::int64_t>((static_cast<unsigned __int128>(vfs.f_bavail) * vfs.f_frsize) >> 20);
    available_mib_.store(mib, std::memory_order_relaxed);
    return mib;
  }

  result<std::optional<job>> do_get(std::string const& id, std::optional<std::string> const& owner) {
    static std::string const sql = std::string("SELECT ") + columns + " FROM jobs WHERE id = ?1";
    auto* st = prepare(sql.c_str());
    if (!st) return sql_error("reading a job");
    bind_text(st, 1, id);
    auto r = rows(st, "reading a job");
    if (!r) return r.error();
    if (r->empty()) return std::optional<job>{};
    if (owner && (*r)[0].owner != *owner) return std::optional<job>{};
    return std::optional<job>(std::move((*r)[0]));
  }

  result<std::vector<job>> do_list(list_query const& q) {
    static std::string const sql =
        std::string("SELECT ") + columns +
        " FROM jobs WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR owner = ?2)"
        " ORDER BY created_at DESC, id DESC LIMIT ?3";
    auto* st = prepare(sql.c_str());
    if (!st) return sql_error("listing jobs");
    if (q.state)
      bind_text(st, 1, status_name(*q.state));
    else
      sqlite3_bind_null(st, 1);
    bind_opt_text(st, 2, q.owner);
    sqlite3_bind_int64(st, 3, q.limit);
    return rows(st, "listing jobs");
  }

  // Retry-After for a full queue: room appears only when a finished job expires (completedTtlMs) and is
  // pruned, so the honest wait is until the oldest finished job expires (the API caps it at 30 s).
  double full_retry_after_ms() {
    static std::string const sql = std::string("SELECT min(completed_at) FROM jobs WHERE status IN ") +
                                   terminal_in + " AND (cb_status IS NULL OR cb_status != 'pending')";
    auto* st = prepare(sql.c_str());
    double wait = 30'000;
    if (st && sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
      auto const expires = sqlite3_column_int64(st, 0) + static_cast<millis>(opts.completed_ttl_ms);
      wait = static_cast<double>(std::max<millis>(1000, expires - wall_ms(*clk())));
    }
    return std::min(wait, 30'000.0);
  }

  result<insert_outcome> insert_one(job const& j, std::int64_t free_mib, counts& running_counts) {
    if (j.idempotency_key) {
      static std::string const sql =
          std::string("SELECT ") + columns + " FROM jobs WHERE owner = ?1 AND idempotency_key = ?2";
      auto* st = prepare(sql.c_str());
      if (!st) return sql_error("looking up an idempotency key");
      bind_text(st, 1, j.owner);
      bind_text(st, 2, *j.idempotency_key);
      auto r = rows(st, "looking up an idempotency key");
      if (!r) return r.error();
      if (!r->empty()) return insert_outcome{std::move((*r)[0]), true};
    }
    if (free_mib >= 0 && static_cast<std::uint64_t>(free_mib) < opts.min_free_storage_mib) {
      return storage_error("free space under asyncQueue.storageDir is " + std::to_string(free_mib) +
                           " MiB, below asyncQueue.minFreeStorageMiB (" +
                           std::to_string(opts.min_free_storage_mib) + " MiB)");
    }
    if (running_counts.total() >= opts.max_jobs) {
      ray::error e{errc::async_queue_full, "the job store holds " + std::to_string(running_counts.total()) +
                                               " jobs, asyncQueue.maxJobs is " +
                                               std::to_string(opts.max_jobs) +
                                               "; finished jobs are pruned after asyncQueue.completedTtlMs"};
      e.retry_after_ms = full_retry_after_ms();
      return e;
    }
    static char const* const sql =
        "INSERT INTO jobs(id, owner, status, created_at, updated_at, attempts, max_attempts, not_before, "
        "request, idempotency_key, cb_url, cb_status, cb_next_at, started_at, completed_at, result, "
        "error_code, "
        "error_message, cb_attempts, cb_last_error, cb_last_attempt_at, cb_delivered_at) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, "
        "?21, "
        "?22)";
    auto* st = prepare(sql);
    if (!st) return sql_error("inserting a job");
    bind_text(st, 1, j.id);
    bind_text(st, 2, j.owner);
    bind_text(st, 3, status_name(j.state));
    sqlite3_bind_int64(st, 4, j.created_at);
    sqlite3_bind_int64(st, 5, j.updated_at);
    sqlite3_bind_int64(st, 6, j.attempts);
    sqlite3_bind_int64(st, 7, j.max_attempts);
    sqlite3_bind_int64(st, 8, j.not_before);
    bind_text(st, 9, json::serialize(j.request));
    bind_opt_text(st, 10, j.idempotency_key);
    if (j.callback) {
      bind_text(st, 11, j.callback->url);
      bind_text(st, 12, callback_status_name(j.callback->status));
      sqlite3_bind_int64(st, 13, j.callback->next_attempt_at);
      sqlite3_bind_int64(st, 19, j.callback->attempts);
      bind_opt_text(st, 20, j.callback->last_error);
      bind_opt_int(st, 21, j.callback->last_attempt_at);
      bind_opt_int(st, 22, j.callback->delivered_at);
    } else {
      sqlite3_bind_null(st, 11);
      sqlite3_bind_null(st, 12);
      sqlite3_bind_int64(st, 13, 0);
      sqlite3_bind_int64(st, 19, 0);
      sqlite3_bind_null(st, 20);
      sqlite3_bind_null(st, 21);
      sqlite3_bind_null(st, 22);
    }
    bind_opt_int(st, 14, j.started_at);
    bind_opt_int(st, 15, j.completed_at);
    if (j.result)
      bind_text(st, 16, json::serialize(*j.result));
    else
      sqlite3_bind_null(st, 16);
    if (j.error) {
      bind_text(st, 17, j.error->code);
      bind_text(st, 18, j.error->message);
    } else {
      sqlite3_bind_null(st, 17);
      sqlite3_bind_null(st, 18);
    }
    int rc = sqlite3_step(st);
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE) {
      return ray::error{errc::invalid_request, "a job with id " + j.id + " already exists"};
    }
    if (rc != SQLITE_DONE) {
      if ((rc & 0xff) == SQLITE_FULL || (rc & 0xff) == SQLITE_IOERR) return write_failed("inserting a job");
      return sql_error("inserting a job");
    }
    running_counts.by_status[static_cast<std::size_t>(j.state)]++;
    return insert_outcome{j, false};
  }

  result<std::pair<std::uint32_t, std::uint32_t>> do_import(std::vector<job> const& jobs) {
    return transaction(true, "importing jobs", [&]() -> result<std::pair<std::uint32_t, std::uint32_t>> {
      std::uint32_t imported = 0, skipped = 0;
      counts unlimited{};
      auto const saved = opts;
      opts.max_jobs = UINT32_MAX;
      opts.min_free_storage_mib = 0;
      for (auto const& j : jobs) {
        auto r = insert_one(j, -1, unlimited);
        if (r) {
          ++imported;
        } else if (r.error().code == errc::invalid_request) {
          ++skipped;  // an id already present (imported before)
        } else {
          opts = saved;
          return r.error();
        }
      }
      opts = saved;
      return std::pair{imported, skipped};
    });
  }

  result<std::optional<job>> do_cancel(std::string const& id, std::optional<std::string> const& owner) {
    return transaction(true, "cancelling a job", [&]() -> result<std::optional<job>> {
      auto cur = do_get(id, owner);
      if (!cur || !*cur || is_terminal((*cur)->state)) return cur;
      auto now = wall_ms(*clk());
      auto* st = prepare(
          "UPDATE jobs SET status = 'cancelled', updated_at = ?2, completed_at = ?2, cb_next_at = ?2, "
          "error_code = 'job_cancelled', error_message = 'cancelled by a client' WHERE id = ?1");
      if (!st) return sql_error("cancelling a job");
      bind_text(st, 1, id);
      sqlite3_bind_int64(st, 2, now);
      if (sqlite3_step(st) != SQLITE_DONE) return write_failed("cancelling a job");
      return do_get(id, std::nullopt);
    });
  }

  result<std::vector<job>> do_claim(std::uint32_t n, millis now) {
    return transaction(true, "claiming jobs", [&]() -> result<std::vector<job>> {
      static std::string const sql =
          std::string(
              "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?1, "
              "updated_at = ?1 WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND not_before "
              "<= ?1 ORDER BY not_before, created_at LIMIT ?2) RETURNING ") +
          columns;
      auto* st = prepare(sql.c_str());
      if (!st) return sql_error("claiming jobs");
      sqlite3_bind_int64(st, 1, now);
      sqlite3_bind_int64(st, 2, n);
      return rows(st, "claiming jobs");
    });
  }

  result<std::optional<job>> do_finish(std::string const& id, attempt_outcome const& out, millis now) {
    return transaction(false, "recording a job's attempt", [&]() -> result<std::optional<job>> {
      auto* st = prepare(
          "UPDATE jobs SET status = ?2, updated_at = ?3, completed_at = CASE WHEN ?2 = 'queued' THEN NULL "
          "ELSE "
          "?3 END, result = ?4, error_code = ?5, error_message = ?6, not_before = ?7, cb_next_at = ?3 "
          "WHERE id = ?1 AND status = 'running'");
      if (!st) return sql_error("recording a job's attempt");
      bind_text(st, 1, id);
      bind_text(st, 2, status_name(out.next));
      sqlite3_bind_int64(st, 3, now);
      if (out.result)
        bind_text(st, 4, json::serialize(*out.result));
      else
        sqlite3_bind_null(st, 4);
      if (out.error) {
        bind_text(st, 5, out.error->code);
        bind_text(st, 6, out.error->message);
      } else {
        sqlite3_bind_null(st, 5);
        sqlite3_bind_null(st, 6);
      }
      sqlite3_bind_int64(st, 7, out.not_before);
      if (sqlite3_step(st) != SQLITE_DONE) return write_failed("recording a job's attempt");
      return do_get(id, std::nullopt);
    });
  }

  result<std::vector<job>> do_due_callbacks(std::uint32_t n, millis now) {
    static std::string const sql =
        std::string("SELECT ") + columns +
        " FROM jobs WHERE cb_status = 'pending' AND cb_next_at <= ?1 AND status IN " + terminal_in +
        " ORDER BY cb_next_at LIMIT ?2";
    auto* st = prepare(sql.c_str());
    if (!st) return sql_error("reading due callbacks");
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_int64(st, 2, n);
    return rows(st, "reading due callbacks");
  }

  result<void> do_update_callback(std::string const& id, callback_state const& cb) {
    return transaction(false, "recording a callback", [&]() -> result<void> {
      auto* st = prepare(
          "UPDATE jobs SET cb_status = ?2, cb_attempts = ?3, cb_last_error = ?4, cb_last_attempt_at = ?5, "
          "cb_delivered_at = ?6, cb_next_at = ?7 WHERE id = ?1");
      if (!st) return sql_error("recording a callback");
      bind_text(st, 1, id);
      bind_text(st, 2, callback_status_name(cb.status));
      sqlite3_bind_int64(st, 3, cb.attempts);
      bind_opt_text(st, 4, cb.last_error);
      bind_opt_int(st, 5, cb.last_attempt_at);
      bind_opt_int(st, 6, cb.delivered_at);
      sqlite3_bind_int64(st, 7, cb.next_attempt_at);
      if (sqlite3_step(st) != SQLITE_DONE) return write_failed("recording a callback");
      return {};
    });
  }

  result<std::uint32_t> do_prune(millis before, std::uint32_t batch) {
    return transaction(false, "pruning jobs", [&]() -> result<std::uint32_t> {
      static std::string const sql =
          std::string("DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE status IN ") + terminal_in +
          " AND completed_at < ?1 AND (cb_status IS NULL OR cb_status != 'pending') LIMIT ?2)";
      auto* st = prepare(sql.c_str());
      if (!st) return sql_error("pruning jobs");
      sqlite3_bind_int64(st, 1, before);
      sqlite3_bind_int64(st, 2, batch);
      if (sqlite3_step(st) != SQLITE_DONE) return write_failed("pruning jobs");
      return static_cast<std::uint32_t>(sqlite3_changes(db));
    });
  }

  result<std::pair<std::uint32_t, std::uint32_t>> do_recover(millis now) {
    return transaction(
        true, "recovering running jobs", [&]() -> result<std::pair<std::uint32_t, std::uint32_t>> {
          auto* failed = prepare(
              "UPDATE jobs SET status = 'failed', updated_at = ?1, completed_at = ?1, cb_next_at = ?1, "
              "error_code = 'job_recovery_attempts_exhausted', error_message = 'the job was running when Ray "
              "stopped and has no attempts left' WHERE status = 'running' AND attempts >= max_attempts");
          if (!failed) return sql_error("recovering running jobs");
          sqlite3_bind_int64(failed, 1, now);
          if (sqlite3_step(failed) != SQLITE_DONE) return write_failed("recovering running jobs");
          auto const n_failed = static_cast<std::uint32_t>(sqlite3_changes(db));
          auto* requeue = prepare(
              "UPDATE jobs SET status = 'queued', updated_at = ?1, not_before = 0 WHERE status = 'running'");
          if (!requeue) return sql_error("recovering running jobs");
          sqlite3_bind_int64(requeue, 1, now);
          if (sqlite3_step(requeue) != SQLITE_DONE) return write_failed("recovering running jobs");
          auto const n_requeued = static_cast<std::uint32_t>(sqlite3_changes(db));
          return std::pair{n_requeued, n_failed};
        });
  }

  result<due_times> do_next_due() {
    static std::string const sql =
        std::string(
            "SELECT (SELECT min(not_before) FROM jobs WHERE status = 'queued'), "
            "(SELECT min(cb_next_at) FROM jobs WHERE cb_status = 'pending' AND status IN ") +
        terminal_in + ")";
    auto* st = prepare(sql.c_str());
    if (!st) return sql_error("reading the next due time");
    if (sqlite3_step(st) != SQLITE_ROW) return sql_error("reading the next due time");
    return due_times{col_int(st, 0), col_int(st, 1)};
  }

  ray::clock const* clk() const { return opts.clock ? opts.clock : &ray::system_clock(); }

  sqlite_options opts;
  std::filesystem::path path;
  sqlite3* db{nullptr};
  std::unordered_map<char const*, sqlite3_stmt*> stmts;
  bool sync_full{true};  // SQLite's default in WAL mode is FULL unless compiled otherwise; set explicitly
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::unique_ptr<task>> queue;
  bool stopping{false};
  std::thread worker;
  mutable std::mutex counts_mu;
  counts counts_{};
  std::atomic<bool> degraded_{false};
  std::atomic<std::int64_t> available_mib_{-1};
};

// Plain functions, not coroutines: see store_thread::submit (the GCC 12 prvalue rule).
template <class R, class F>
asio::awaitable<R> sqlite_store::call(F f) {
  return store_thread::submit<R>(this, new store_thread::call_task<sqlite_store, R, F>(std::move(f)));
}

asio::awaitable<result<insert_outcome>> sqlite_store::insert(job j) {
  return store_thread::submit<result<insert_outcome>>(this, new insert_task(std::move(j)));
}

void sqlite_store::run_inserts(std::vector<std::unique_ptr<task>>& batch) {
  std::vector<insert_task*> items;
  items.reserve(batch.size());
  for (auto& t : batch)
    items.push_back(static_cast<insert_task*>(t.get()));
  auto const free_mib = refresh_storage();
  std::vector<std::optional<result<insert_outcome>>> outcomes(items.size());
  auto fail_all = [&](ray::error const& e) {
    for (auto* it : items)
      it->complete(e);
  };
  if (degraded())
    return fail_all(storage_error("the job store is degraded after a failed write; restart Ray"));
  if (auto r = set_sync(true); !r) return fail_all(r.error());
  if (sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK)
    return fail_all(sql_error("inserting jobs"));
  counts running = current_counts();
  bool any = false;
  for (std::size_t i = 0; i < items.size(); ++i) {
    // Each insert is its own savepoint: one refused job (full, duplicate id) does not undo the others.
    sqlite3_exec(db, "SAVEPOINT one", nullptr, nullptr, nullptr);
    auto r = insert_one(items[i]->item, free_mib, running);
    if (r && !r->existing) any = true;
    sqlite3_exec(db, r ? "RELEASE one" : "ROLLBACK TO one; RELEASE one", nullptr, nullptr, nullptr);
    outcomes[i] = std::move(r);
    if (degraded()) break;
  }
  if (degraded()) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    refresh_counts();
    return fail_all(storage_error("the job store is degraded after a failed write; restart Ray"));
  }
  if (sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
    auto e = write_failed("committing jobs");
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    refresh_counts();
    return fail_all(e);
  }
  if (any) refresh_counts();
  for (std::size_t i = 0; i < items.size(); ++i)
    items[i]->complete(std::move(*outcomes[i]));
}

result<std::unique_ptr<store>> open_sqlite_store(sqlite_options const& opts) {
  auto s = std::make_unique<sqlite_store>(opts);
  if (auto r = s->open(); !r) return r.error();
  return std::unique_ptr<store>(std::move(s));
}

}  // namespace ray::jobs
