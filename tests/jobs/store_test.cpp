// Unit tests of the SQLite job store (src/ray/jobs/sqlite_store.cpp) and the TypeScript gateway import, on
// real SQLite files in a temporary directory.
#include "ray/jobs/jobs.hpp"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json/parse.hpp>

#include <sys/stat.h>

#include <fstream>
#include <random>

namespace rj = ray::jobs;
using ray::errc;

namespace {

struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() /
           ("ray-jobs-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// Runs one awaitable to completion on a private loop.
template <class T>
T run(boost::asio::awaitable<T> a) {
  boost::asio::io_context ioc;
  std::optional<T> out;
  boost::asio::co_spawn(ioc, std::move(a), [&](std::exception_ptr e, T v) {
    if (e) std::rethrow_exception(e);
    out = std::move(v);
  });
  ioc.run();
  return std::move(*out);
}

rj::millis now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

rj::job make_job(std::string input, std::string owner = "") {
  rj::job j;
  j.id = ray::new_id("job_");
  j.created_at = j.updated_at = now_ms();
  j.max_attempts = 3;
  j.request = boost::json::object{{"input", std::move(input)}};
  j.owner = std::move(owner);
  return j;
}

std::unique_ptr<rj::store> open(temp_dir const& d, std::function<void(rj::sqlite_options&)> tweak = {}) {
  rj::sqlite_options o;
  o.dir = d.path / "q";
  o.max_jobs = 100;
  o.min_free_storage_mib = 0;
  if (tweak) tweak(o);
  auto s = rj::open_sqlite_store(o);
  EXPECT_TRUE(s) << (s ? "" : s.error().message);
  return s ? std::move(*s) : nullptr;
}

int user_version(std::filesystem::path const& db) {
  sqlite3* h = nullptr;
  sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(h, "PRAGMA user_version", -1, &st, nullptr);
  int v = -1;
  if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(h);
  return v;
}

}  // namespace

TEST(JobStore, CreatesAPrivateFolderAndFileWithTheCurrentSchema) {
  temp_dir d;
  auto s = open(d);
  ASSERT_TRUE(s);
  struct stat st {};
  ASSERT_EQ(::stat((d.path / "q").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(::stat((d.path / "q" / "jobs.sqlite3").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_TRUE(run(s->insert(make_job("x"))));
  // WAL mode: the -wal file exists next to the database while it is open, with the same mode.
  ASSERT_EQ(::stat((d.path / "q" / "jobs.sqlite3-wal").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  s.reset();
  EXPECT_EQ(user_version(d.path / "q" / "jobs.sqlite3"), rj::schema_version);
}

TEST(JobStore, RefusesAFileWrittenByANewerSchema) {
  temp_dir d;
  { auto s = open(d); }
  sqlite3* h = nullptr;
  sqlite3_open((d.path / "q" / "jobs.sqlite3").c_str(), &h);
  sqlite3_exec(h, "PRAGMA user_version=99", nullptr, nullptr, nullptr);
  sqlite3_close(h);
  rj::sqlite_options o;
  o.dir = d.path / "q";
  auto s = rj::open_sqlite_store(o);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("newer Ray"), std::string::npos) << s.error().message;
}

TEST(JobStore, InsertedJobsSurviveReopeningWithEveryField) {
  temp_dir d;
  auto j = make_job("hello");
  j.callback = rj::callback_state{.url = "http://127.0.0.1:9/hook"};
  j.idempotency_key = "k-1";
  {
    auto s = open(d);
    auto r = run(s->insert(j));
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_FALSE(r->existing);
  }
  auto s = open(d);
  auto got = run(s->get(j.id));
  ASSERT_TRUE(got);
  ASSERT_TRUE(*got);
  auto const& g = **got;
  EXPECT_EQ(g.state, rj::status::queued);
  EXPECT_EQ(g.created_at, j.created_at);
  EXPECT_EQ(boost::json::value(g.request), boost::json::value(j.request));
  ASSERT_TRUE(g.callback);
  EXPECT_EQ(g.callback->url, "http://127.0.0.1:9/hook");
  EXPECT_EQ(g.callback->status, rj::callback_status::pending);
  EXPECT_EQ(g.idempotency_key, "k-1");
  EXPECT_EQ(s->current_counts().by_status[0], 1u);
  auto json = rj::to_json(g);
  EXPECT_EQ(json.at("status"), "queued");
  EXPECT_EQ(json.at("callback").at("status"), "pending");
  // The TypeScript gateway's key order.
  std::vector<std::string> keys;
  for (auto const& kv : json)
    keys.emplace_back(kv.key());
  EXPECT_EQ(keys[0], "id");
  EXPECT_EQ(keys[1], "status");
  EXPECT_EQ(keys[2], "request");
  EXPECT_EQ(keys[3], "createdAt");
}

TEST(JobStore, ARepeatedIdempotencyKeyReturnsTheExistingJobPerOwner) {
  temp_dir d;
  auto s = open(d);
  auto a = make_job("one", "owner-a");
  a.idempotency_key = "same";
  auto first = run(s->insert(a));
  ASSERT_TRUE(first);
  auto again = make_job("two", "owner-a");
  again.idempotency_key = "same";
  auto second = run(s->insert(again));
  ASSERT_TRUE(second);
  EXPECT_TRUE(second->existing);
  EXPECT_EQ(second->stored.id, a.id);
  // Another key's job with the same idempotency key is its own job.
  auto other = make_job("three", "owner-b");
  other.idempotency_key = "same";
  auto third = run(s->insert(other));
  ASSERT_TRUE(third);
  EXPECT_FALSE(third->existing);
  EXPECT_EQ(s->current_counts().total(), 2u);
}

TEST(JobStore, MaxJobsRefusesWithAsyncQueueFullAndARetryDelay) {
  temp_dir d;
  auto s = open(d, [](auto& o) { o.max_jobs = 3; });
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(run(s->insert(make_job("j" + std::to_string(i)))));
  auto r = run(s->insert(make_job("over")));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::async_queue_full);
  ASSERT_TRUE(r.error().retry_after_ms);
  EXPECT_GE(*r.error().retry_after_ms, 1000);
  EXPECT_EQ(s->current_counts().total(), 3u);
}

TEST(JobStore, TooLittleFreeSpaceRefusesWithStorageLow) {
  temp_dir d;
  auto s = open(d, [](auto& o) { o.min_free_storage_mib = 1u << 30; });  // 1 PiB
  auto r = run(s->insert(make_job("x")));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::async_queue_storage_low);
  EXPECT_NE(r.error().message.find("minFreeStorageMiB"), std::string::npos);
  ASSERT_TRUE(s->available_storage_mib());
  EXPECT_FALSE(s->degraded());  // a refusal, not a failure: it clears when space is freed
}

TEST(JobStore, AFullDiskLatchesTheStoreIntoRefusing) {
  temp_dir d;
  auto s = open(d, [](auto& o) {
    o.max_page_count = 16;
    o.max_jobs = 100000;
  });
  std::string big(3000, 'x');
  bool refused = false;
  for (int i = 0; i < 200 && !refused; ++i) {
    auto r = run(s->insert(make_job(big + std::to_string(i))));
    if (!r) {
      refused = true;
      EXPECT_EQ(r.error().code, errc::async_queue_storage_low);
    }
  }
  ASSERT_TRUE(refused);
  EXPECT_TRUE(s->degraded());
  // Latched: even a tiny job is refused now.
  auto r = run(s->insert(make_job("tiny")));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::async_queue_storage_low);
}

TEST(JobStore, ConcurrentInsertsAreAllCommitted) {
  temp_dir d;
  auto s = open(d, [](auto& o) { o.max_jobs = 1000; });
  boost::asio::io_context ioc;
  int ok = 0;
  for (int i = 0; i < 200; ++i) {
    boost::asio::co_spawn(
        ioc,
        [&s, &ok, i]() -> boost::asio::awaitable<void> {
          auto r = co_await s->insert(make_job("c" + std::to_string(i)));
          ok += r ? 1 : 0;
        },
        boost::asio::detached);
  }
  ioc.run();
  EXPECT_EQ(ok, 200);
  s.reset();
  auto again = open(d);
  EXPECT_EQ(again->current_counts().total(), 200u);
}

TEST(JobStore, ClaimFinishRetryAndCancelFollowTheLifecycle) {
  temp_dir d;
  auto s = open(d);
  auto a = make_job("a");
  auto b = make_job("b");
  b.created_at += 1;
  ASSERT_TRUE(run(s->insert(a)));
  ASSERT_TRUE(run(s->insert(b)));
  auto claimed = run(s->claim(1, now_ms()));
  ASSERT_TRUE(claimed);
  ASSERT_EQ(claimed->size(), 1u);
  EXPECT_EQ((*claimed)[0].id, a.id);  // oldest first
  EXPECT_EQ((*claimed)[0].state, rj::status::running);
  EXPECT_EQ((*claimed)[0].attempts, 1u);
  EXPECT_TRUE((*claimed)[0].started_at);

  // A retry waits for its back-off.
  auto const later = now_ms() + 60'000;
  auto retried = run(
      s->finish(a.id, rj::attempt_outcome{rj::status::queued, {}, rj::job_error{"overloaded", "busy"}, later},
                now_ms()));
  ASSERT_TRUE(retried && *retried);
  EXPECT_EQ((*retried)->state, rj::status::queued);
  auto next = run(s->claim(5, now_ms()));
  ASSERT_TRUE(next);
  ASSERT_EQ(next->size(), 1u);
  EXPECT_EQ((*next)[0].id, b.id);
  auto due = run(s->next_due());
  ASSERT_TRUE(due && due->job);
  EXPECT_EQ(*due->job, later);
  EXPECT_FALSE(due->callback);

  // Cancel a running job: a late finish does not overwrite it.
  auto c = run(s->cancel(b.id, std::nullopt));
  ASSERT_TRUE(c && *c);
  EXPECT_EQ((*c)->state, rj::status::cancelled);
  auto late = run(
      s->finish(b.id, rj::attempt_outcome{rj::status::succeeded, boost::json::value("x"), {}, 0}, now_ms()));
  ASSERT_TRUE(late && *late);
  EXPECT_EQ((*late)->state, rj::status::cancelled);
  EXPECT_FALSE((*late)->result);

  // Another owner cannot cancel (or see) a job.
  auto mine = make_job("mine", "owner-a");
  ASSERT_TRUE(run(s->insert(mine)));
  auto theirs = run(s->cancel(mine.id, std::string("owner-b")));
  ASSERT_TRUE(theirs);
  EXPECT_FALSE(*theirs);
  auto listed = run(s->list(rj::list_query{std::nullopt, std::string("owner-a"), 10}));
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].id, mine.id);
}

TEST(JobStore, RecoveryRequeuesRunningJobsAndFailsThoseOutOfAttempts) {
  temp_dir d;
  auto s = open(d);
  auto a = make_job("a");
  auto b = make_job("b");
  b.max_attempts = 1;
  ASSERT_TRUE(run(s->insert(a)));
  ASSERT_TRUE(run(s->insert(b)));
  ASSERT_EQ(run(s->claim(2, now_ms()))->size(), 2u);
  s.reset();  // "crash": both left running
  s = open(d);
  auto rec = run(s->recover(now_ms()));
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->first, 1u);   // requeued
  EXPECT_EQ(rec->second, 1u);  // out of attempts
  auto ga = run(s->get(a.id));
  EXPECT_EQ((*ga)->state, rj::status::queued);
  EXPECT_EQ((*ga)->attempts, 1u);  // attempts kept
  auto gb = run(s->get(b.id));
  EXPECT_EQ((*gb)->state, rj::status::failed);
  ASSERT_TRUE((*gb)->error);
  EXPECT_EQ((*gb)->error->code, "job_recovery_attempts_exhausted");
}

TEST(JobStore, PruneDeletesExpiredTerminalJobsButKeepsPendingCallbacks) {
  temp_dir d;
  auto s = open(d);
  auto done = make_job("done");
  auto with_cb = make_job("cb");
  with_cb.callback = rj::callback_state{.url = "http://127.0.0.1:9/"};
  auto waiting = make_job("waiting");
  for (auto* j : {&done, &with_cb, &waiting})
    ASSERT_TRUE(run(s->insert(*j)));
  ASSERT_EQ(run(s->claim(2, now_ms()))->size(), 2u);
  auto const t = now_ms();
  ASSERT_TRUE(
      run(s->finish(done.id, rj::attempt_outcome{rj::status::succeeded, boost::json::value(1), {}, 0}, t)));
  ASSERT_TRUE(run(
      s->finish(with_cb.id, rj::attempt_outcome{rj::status::succeeded, boost::json::value(2), {}, 0}, t)));
  // Only finished jobs' callbacks are due.
  auto due = run(s->due_callbacks(10, t + 1));
  ASSERT_TRUE(due);
  ASSERT_EQ(due->size(), 1u);
  EXPECT_EQ((*due)[0].id, with_cb.id);
  auto pruned = run(s->prune(t + 1, 100));
  ASSERT_TRUE(pruned);
  EXPECT_EQ(*pruned, 1u);
  EXPECT_FALSE(*run(s->get(done.id)));
  EXPECT_TRUE(*run(s->get(with_cb.id)));  // its callback is still pending
  EXPECT_TRUE(*run(s->get(waiting.id)));  // not finished
  auto cb = *(*due)[0].callback;
  cb.status = rj::callback_status::delivered;
  cb.attempts = 1;
  ASSERT_TRUE(run(s->update_callback(with_cb.id, cb)));
  EXPECT_EQ(*run(s->prune(t + 1, 100)), 1u);
  EXPECT_EQ(s->current_counts().total(), 1u);
}

TEST(JobImport, TheTypeScriptGatewaysRecordsAreImportedOnceAndTheFolderMovedAside) {
  temp_dir d;
  auto const storage = d.path / "q";
  std::filesystem::create_directories(storage);
  std::filesystem::copy(std::filesystem::path(RAY_TEST_FIXTURES) / "ts-jobs" / "jobs", storage / "jobs");
  {
    std::ofstream bad(storage / "jobs" / "job_broken.json");
    bad << "{ not json";
  }
  auto s = open(d);
  ray::telemetry::logger log(
      {.service = "jobs-test", .min_level = ray::telemetry::level::error, .synchronous = true});
  auto rep = rj::import_ts_jobs(storage, *s, log);
  ASSERT_TRUE(rep) << rep.error().message;
  EXPECT_EQ(rep->imported, 7u);
  EXPECT_EQ(rep->unreadable, 1u);
  ASSERT_TRUE(rep->moved_to);
  EXPECT_FALSE(std::filesystem::exists(storage / "jobs"));
  EXPECT_TRUE(std::filesystem::exists(*rep->moved_to / "job_broken.json"));  // nothing silently dropped

  auto c = s->current_counts();
  EXPECT_EQ(c.by_status[static_cast<int>(rj::status::queued)], 2u);
  EXPECT_EQ(c.by_status[static_cast<int>(rj::status::running)], 1u);
  EXPECT_EQ(c.by_status[static_cast<int>(rj::status::succeeded)], 4u);
  // A terminal job keeps its result and its failed callback.
  auto failed_cb = run(s->get("job_5c5108e4c8c24dea"));
  ASSERT_TRUE(failed_cb && *failed_cb);
  auto const& f = **failed_cb;
  EXPECT_EQ(f.state, rj::status::succeeded);
  ASSERT_TRUE(f.result);
  EXPECT_EQ(f.result->at("output"), "[ray:mock model=tiny-dev profile=tiny seed=ray-tiny]\njob input 2");
  ASSERT_TRUE(f.callback);
  EXPECT_EQ(f.callback->status, rj::callback_status::failed);
  EXPECT_EQ(f.callback->attempts, 5u);
  ASSERT_TRUE(f.completed_at);
  // The running one is recovered like any other.
  auto rec = run(s->recover(now_ms()));
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->first, 1u);
  auto running = run(s->get("job_341eda254e474b47"));
  EXPECT_EQ((*running)->state, rj::status::queued);
  EXPECT_EQ((*running)->attempts, 1u);
  ASSERT_TRUE((*running)->callback);
  EXPECT_EQ((*running)->callback->status, rj::callback_status::pending);

  // A second start finds nothing to import.
  auto again = rj::import_ts_jobs(storage, *s, log);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->imported, 0u);
  EXPECT_FALSE(again->moved_to);
}

TEST(JobRecord, BackoffDoublesFromTheBaseUpToAMinuteWithJitter) {
  using ms = std::chrono::milliseconds;
  EXPECT_EQ(rj::backoff(1, ms(1000), 0.5), ms(1000));
  EXPECT_EQ(rj::backoff(2, ms(1000), 0.5), ms(2000));
  EXPECT_EQ(rj::backoff(3, ms(1000), 0.5), ms(4000));
  EXPECT_EQ(rj::backoff(30, ms(1000), 0.5), ms(60000));
  EXPECT_EQ(rj::backoff(1, ms(1000), 0.0), ms(800));
  EXPECT_EQ(rj::backoff(1, ms(1000), 1.0), ms(1200));
  EXPECT_TRUE(rj::is_retryable(errc::overloaded));
  EXPECT_TRUE(rj::is_retryable(errc::provider_timeout));
  EXPECT_FALSE(rj::is_retryable(errc::invalid_request));
  EXPECT_FALSE(rj::is_retryable(errc::request_context_window_exceeded));
}
