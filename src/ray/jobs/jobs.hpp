// ray::jobs — durable async jobs (spec/jobs.md): the job record, the store interface with its SQLite
// implementation, and the dispatcher that runs queued jobs and delivers their callbacks.
//
// Accepted means committed: a job is acknowledged (202) only after the INSERT that holds it committed with
// synchronous=FULL. The store runs on a dedicated thread (never on the event loop); its awaitables complete
// on the awaiting coroutine's executor. The dispatcher is confined to one executor (the io_context thread).
//
// The dispatcher does not know the runtime: it runs a job through a `run_fn` the API layer gives it (decode
// the stored /v1/infer body, runtime::infer, render), so jobs share admission, dedupe, cache and degradation
// with interactive requests without a dependency from this component upward.
#pragma once

#include "ray/config/config.hpp"
#include "ray/core/core.hpp"
#include "ray/jobs/callback.hpp"
#include "ray/telemetry/telemetry.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ray::jobs {

enum class status : std::uint8_t { queued, running, succeeded, failed, cancelled };
inline constexpr std::size_t status_count = 5;
std::string_view status_name(status s) noexcept;  // "queued" | "running" | …
std::optional<status> parse_status(std::string_view s) noexcept;
inline bool is_terminal(status s) noexcept {
  return s == status::succeeded || s == status::failed || s == status::cancelled;
}

enum class callback_status : std::uint8_t { pending, delivered, failed };
std::string_view callback_status_name(callback_status s) noexcept;

using millis = std::int64_t;  // Unix epoch milliseconds (wall clock)

struct callback_state {
  std::string url;
  callback_status status{callback_status::pending};
  std::uint32_t attempts{0};
  std::optional<std::string> last_error{};  // ≤ 1 KiB
  std::optional<millis> last_attempt_at{};
  std::optional<millis> delivered_at{};
  millis next_attempt_at{0};  // not before (back-off)
};

struct job_error {
  std::string code;
  std::string message;
};

// A job as stored. Field names on the wire are the TypeScript gateway's (to_json).
struct job {
  std::string id;  // "job_" + 16 hex
  status state{status::queued};
  millis created_at{0}, updated_at{0};
  std::optional<millis> started_at{}, completed_at{};
  std::uint32_t attempts{0}, max_attempts{3};
  boost::json::object request{};  // the /v1/infer fields as submitted (callbackUrl/idempotencyKey removed)
  std::optional<boost::json::value> result{};  // the /v1/infer response
  std::optional<job_error> error{};
  std::optional<callback_state> callback{};
  std::optional<std::string> idempotency_key{};
  std::string owner{};   // the caller scope of the submitting key ("" when auth is off)
  millis not_before{0};  // a retried job waits for its back-off
};

// The record as clients see it (TypeScript gateway key order; timestamps RFC 3339).
boost::json::object to_json(job const& j);
// Reads a record in the TypeScript gateway's format (its jobs/*.json files). Unknown fields are ignored.
result<job> from_ts_json(boost::json::value const& v);

struct counts {
  std::uint64_t by_status[status_count]{};
  std::uint64_t callback_pending{0};
  std::uint64_t total() const noexcept {
    std::uint64_t t = 0;
    for (auto n : by_status)
      t += n;
    return t;
  }
};

struct list_query {
  std::optional<status> state{};
  std::optional<std::string> owner{};  // nullopt = every owner (the operator CLI)
  std::uint32_t limit{50};
};

struct insert_outcome {
  job stored;
  bool existing{false};  // an earlier job with the same idempotency key (nothing was inserted)
};

// What a finished attempt writes.
struct attempt_outcome {
  status next{status::succeeded};  // succeeded | failed | queued (retry)
  std::optional<boost::json::value> result{};
  std::optional<job_error> error{};
  millis not_before{0};  // for a retry
};

// The durable store. Every call is safe from any executor; results are values, never exceptions. Once a
// write fails (disk full, I/O error) the store latches degraded() and refuses inserts with
// async_queue_storage_low — it does not limp on.
class store {
 public:
  virtual ~store() = default;

  // Inserts a queued job (or returns the existing one for a repeated (owner, idempotency key)); completes
  // after the commit is durable. Refuses with async_queue_full (retained jobs ≥ max_jobs) or
  // async_queue_storage_low (free space below the minimum, or latched degraded).
  virtual boost::asio::awaitable<result<insert_outcome>> insert(job j) = 0;
  virtual boost::asio::awaitable<result<std::optional<job>>> get(std::string id) = 0;
  virtual boost::asio::awaitable<result<std::vector<job>>> list(list_query q) = 0;
  // Cancels a queued or running job (status cancelled, durable); returns the job as it is now, nullopt when
  // unknown (or owned by another owner when `owner` is set); a terminal job is returned unchanged.
  virtual boost::asio::awaitable<result<std::optional<job>>> cancel(std::string id,
                                                                    std::optional<std::string> owner) = 0;
  // Claims up to `n` due queued jobs: status running, attempts + 1, startedAt set — committed before any
  // runs.
  virtual boost::asio::awaitable<result<std::vector<job>>> claim(std::uint32_t n, millis now) = 0;
  // Records a finished attempt of a running job; a job no longer running (cancelled meanwhile) is left as it
  // is. Returns the job as it is now.
  virtual boost::asio::awaitable<result<std::optional<job>>> finish(std::string id, attempt_outcome out,
                                                                    millis now) = 0;
  // Callbacks due now (pending, next attempt reached), oldest first.
  virtual boost::asio::awaitable<result<std::vector<job>>> due_callbacks(std::uint32_t n, millis now) = 0;
  virtual boost::asio::awaitable<result<void>> update_callback(std::string id, callback_state cb) = 0;
  // Deletes up to `batch` terminal jobs completed before `before` whose callback is not pending.
  virtual boost::asio::awaitable<result<std::uint32_t>> prune(millis before, std::uint32_t batch) = 0;
  // Running jobs back to queued (or failed job_recovery_attempts_exhausted); returns how many of each.
  virtual boost::asio::awaitable<result<std::pair<std::uint32_t, std::uint32_t>>> recover(millis now) = 0;
  // Inserts records as they are (the TypeScript gateway's import): ids already present are skipped, limits
  // are not applied (nothing an earlier gateway accepted is dropped). Returns (imported, skipped).
  virtual boost::asio::awaitable<result<std::pair<std::uint32_t, std::uint32_t>>> import(
      std::vector<job> jobs) = 0;
  // The earliest times a queued job and a pending callback become due (nullopt: none waiting).
  struct due_times {
    std::optional<millis> job{}, callback{};
  };
  virtual boost::asio::awaitable<result<due_times>> next_due() = 0;

  // Counters kept current by every write (cheap; any thread).
  virtual counts current_counts() const noexcept = 0;
  virtual bool degraded() const noexcept = 0;
  virtual std::optional<std::uint64_t> available_storage_mib() const noexcept = 0;

  // Work became claimable that this process did not submit (PostgreSQL: another node's insert seen through
  // LISTEN/NOTIFY, or a job whose lease expired put back in the queue): the store calls `fn`, on its own
  // thread — `fn` must be cheap and thread-safe (post to your executor, e.g. dispatcher::wake). Replaces an
  // earlier registration; an empty function unregisters. Default: never called (the SQLite store has one
  // process; polling remains the fallback either way).
  virtual void set_wake_callback(std::function<void()> fn) { (void)fn; }
};

struct sqlite_options {
  std::filesystem::path dir;  // created 0700; holds jobs.sqlite3 (0600)
  std::uint32_t max_jobs{32};
  std::uint32_t min_free_storage_mib{64};
  std::uint64_t completed_ttl_ms{86'400'000};  // for the Retry-After of a full store
  bool group_commit{true};                     // concurrent inserts share one transaction (one fsync)
  bool read_only{false};                       // the operator CLI's list/show
  std::optional<std::uint32_t>
      max_page_count{};              // bounds the file (PRAGMA max_page_count): a full disk, in tests
  ray::clock const* clock{nullptr};  // wall time for Retry-After estimates; null = system clock
};

// Opens (creating and migrating) the SQLite store. Errors name the path and what failed.
result<std::unique_ptr<store>> open_sqlite_store(sqlite_options const& opts);

// The schema version this build writes (PRAGMA user_version).
inline constexpr int schema_version = 1;

// Imports the TypeScript gateway's `<dir>/jobs/*.json` records: inserts each (keeping its id, state and
// timestamps; running ones are recovered like any other), then renames the folder to
// `jobs.imported-<timestamp>`. Returns how many were imported and how many files were unreadable (those are
// left in the renamed folder and named in the log).
struct import_report {
  std::uint32_t imported{0}, skipped{0}, unreadable{0};
  std::optional<std::filesystem::path> moved_to{};
};
result<import_report> import_ts_jobs(std::filesystem::path const& storage_dir, store& s,
                                     telemetry::logger& log);

// Runs one job: returns the /v1/infer response (JSON) or the error it failed with.
using run_fn = std::function<boost::asio::awaitable<result<boost::json::value>>(job const&)>;

struct dispatcher_options {
  std::uint32_t concurrency{1};
  std::chrono::milliseconds poll{1000};
  std::uint32_t max_callback_attempts{5};
  std::chrono::milliseconds completed_ttl{86'400'000};
  std::optional<std::string> callback_secret{};
  callback_policy policy{};
  resolve_fn resolve{};                       // empty = system_resolver()
  std::function<bool()> interactive_waiting;  // jobs yield while this holds
};

// The dispatcher: claims due jobs (up to `concurrency` at once) and runs them, retries retryable failures
// with exponential back-off and jitter, delivers callbacks at least once, prunes expired jobs. Owns its
// spawned work (shared state): destroying it after stop() completes is safe.
class dispatcher {
 public:
  dispatcher(boost::asio::any_io_executor ex, store& s, run_fn run, dispatcher_options opts,
             telemetry::registry& metrics, telemetry::logger& log);
  ~dispatcher();
  dispatcher(dispatcher const&) = delete;
  dispatcher& operator=(dispatcher const&) = delete;

  void start();
  // A job was submitted: look for work now instead of at the next poll.
  void wake() noexcept;
  // Aborts the running attempt of a job (after the store cancelled it).
  void abort(std::string const& id) noexcept;
  // Stops claiming; waits up to `grace` for running jobs, then aborts them (they go back to queued).
  boost::asio::awaitable<void> stop(std::chrono::milliseconds grace);
  std::uint32_t running() const noexcept;

  struct impl;

 private:
  std::shared_ptr<impl> impl_;
};

// Whether an error code is worth another attempt (queue_full, overloaded, provider_unavailable,
// provider_timeout, provider_request_failed, shutting_down).
bool is_retryable(errc code) noexcept;
// Back-off before attempt `attempt` + 1: base · 2^(attempt-1), capped at 60 s, with ±20 % jitter.
std::chrono::milliseconds backoff(std::uint32_t attempt, std::chrono::milliseconds base, double jitter01);

}  // namespace ray::jobs

namespace ray::jobs {

// `ray jobs list|show ID|cancel ID`: the operator's view of the same store the server writes (SQLite allows
// both at once). Exit codes: 0 done, 1 not found / not cancellable / store error, 2 usage.
struct cli_options {
  std::string action;  // "list" | "show" | "cancel"
  std::string id{};
  std::optional<std::string> status{};
  std::uint32_t limit{50};
  bool json{false};
  std::filesystem::path storage_dir;  // asyncQueue.storageDir of the config
};
int cli_command(cli_options const& o, std::ostream& out, std::ostream& err);

}  // namespace ray::jobs

namespace ray::jobs {

// The PostgreSQL job store (spec/scale-out.md "Jobs: PostgreSQL"): several nodes share one database. Same
// record shape and `store` semantics as the SQLite store, plus leases: `claim` takes due jobs with one
// `FOR UPDATE SKIP LOCKED` statement and records this node as their lease owner; the store renews the leases
// of the jobs it holds (claimed, not yet finished) from its own thread; `recover` (also run periodically by
// the store) returns jobs whose lease expired to the queue; `finish` applies only while this node holds the
// lease. libpq is blocking: every call runs on the store's dedicated thread. A lost connection is not a
// latch: calls answer async_queue_storage_unavailable (retry_after_ms 5000) while the store reconnects with
// back-off, degraded() holds meanwhile, and finishes recorded during the outage are buffered (bounded) and
// written when the connection returns. available_storage_mib() is nullopt (the database's disk is not this
// node's).
struct postgres_options {
  std::string conninfo;   // libpq connection string or URI (from the env var asyncQueue.postgresUrlEnv names)
  std::string node_id{};  // lease owner name; empty = "<hostname>:<pid>"
  std::chrono::milliseconds lease{30'000};
  std::chrono::milliseconds renew_every{0};      // 0 = lease / 3
  std::chrono::milliseconds recover_every{0};    // periodic recovery of expired leases; 0 = lease / 2
  std::chrono::milliseconds counts_every{1000};  // current_counts() refresh (other nodes write too)
  std::uint32_t max_jobs{32};
  std::uint64_t completed_ttl_ms{86'400'000};  // for the Retry-After of a full store
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds reconnect_max{5000};  // reconnect back-off cap (starts at 100 ms, doubles)
  std::size_t max_buffered_finishes{1024};        // outcomes kept while disconnected (oldest dropped)
  ray::clock const* clock{nullptr};               // wall time for Retry-After estimates; null = system clock
};

// Connects (blocking, once, in the caller's thread), creates or migrates the schema under an advisory lock
// (refusing a newer version), LISTENs, and starts the store thread. Errors name what failed (never the
// password).
result<std::unique_ptr<store>> open_postgres_store(postgres_options const& opts);

// The schema version this build writes (the one row of table ray_schema).
inline constexpr int postgres_schema_version = 1;

}  // namespace ray::jobs
