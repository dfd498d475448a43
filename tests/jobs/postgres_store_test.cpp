// Unit tests of the PostgreSQL job store (src/ray/jobs/postgres_store.cpp) and of its libpq loader
// (libpq.cpp) against a throw-away cluster this test starts itself (tests/support/pg_cluster.hpp), one fresh
// database per test. Without the PostgreSQL binaries the tests skip (fail with RAY_REQUIRE_TOOLS=1).
#include "ray/jobs/jobs.hpp"
#include "ray/jobs/libpq.hpp"

#include "support/pg_cluster.hpp"
#include "support/require.hpp"

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <condition_variable>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

namespace rj = ray::jobs;
using ray::errc;
using namespace std::chrono_literals;

namespace {

using ray::test::pg_cluster;

pg_cluster& cluster() {
  static pg_cluster c;
  return c;
}

struct pg_environment : ::testing::Environment {
  void SetUp() override {
    cluster().setup();
    if (!cluster().available) std::cout << "SKIP: " << cluster().why << std::endl;
  }
  void TearDown() override { cluster().teardown(); }
};
[[maybe_unused]] ::testing::Environment* const registered =
    ::testing::AddGlobalTestEnvironment(new pg_environment);

// One statement on a connection of the test's own; returns the first value of the first row ("" when none).
std::string query(std::string const& conninfo, std::string const& sql,
                  std::vector<std::string> const& params = {}) {
  PGconn* c = PQconnectdb(conninfo.c_str());
  std::vector<char const*> values;
  for (auto const& p : params)
    values.push_back(p.c_str());
  PGresult* r = PQexecParams(c, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(), nullptr,
                             nullptr, 0);
  auto const st = PQresultStatus(r);
  EXPECT_TRUE(st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) << sql << ": " << PQerrorMessage(c);
  std::string out;
  if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)) out = PQgetvalue(r, 0, 0);
  PQclear(r);
  PQfinish(c);
  return out;
}

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
  static rj::millis seq = 0;
  rj::job j;
  j.id = ray::new_id("job_");
  j.created_at = j.updated_at = now_ms() + ++seq;  // distinct creation times: claim order is defined
  j.max_attempts = 3;
  j.request = boost::json::object{{"input", std::move(input)}};
  j.owner = std::move(owner);
  return j;
}

// Polls `pred` until it holds or the deadline passes (for states only time changes: a lease expiring).
bool eventually(std::function<bool()> pred, std::chrono::milliseconds limit = 20s) {
  auto const deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

// Forwards to a store and counts completed next_due() calls: the dispatcher's last call before it sleeps.
struct counting_store final : rj::store {
  explicit counting_store(rj::store& inner) : s(inner) {}
  boost::asio::awaitable<ray::result<rj::insert_outcome>> insert(rj::job j) override {
    return s.insert(std::move(j));
  }
  boost::asio::awaitable<ray::result<std::optional<rj::job>>> get(std::string id) override {
    return s.get(std::move(id));
  }
  boost::asio::awaitable<ray::result<std::vector<rj::job>>> list(rj::list_query q) override {
    return s.list(std::move(q));
  }
  boost::asio::awaitable<ray::result<std::optional<rj::job>>> cancel(
      std::string id, std::optional<std::string> owner) override {
    return s.cancel(std::move(id), std::move(owner));
  }
  boost::asio::awaitable<ray::result<std::vector<rj::job>>> claim(std::uint32_t n, rj::millis now) override {
    ++outstanding;
    auto r = co_await s.claim(n, now);
    --outstanding;
    co_return r;
  }

  boost::asio::awaitable<ray::result<std::optional<rj::job>>> finish(std::string id, rj::attempt_outcome out,
                                                                     rj::millis now) override {
    return s.finish(std::move(id), std::move(out), now);
  }
  boost::asio::awaitable<ray::result<std::vector<rj::job>>> due_callbacks(std::uint32_t n,
                                                                          rj::millis now) override {
    ++outstanding;
    auto r = co_await s.due_callbacks(n, now);
    --outstanding;
    co_return r;
  }

  boost::asio::awaitable<ray::result<void>> update_callback(std::string id, rj::callback_state cb) override {
    return s.update_callback(std::move(id), std::move(cb));
  }
  boost::asio::awaitable<ray::result<std::uint32_t>> prune(rj::millis before, std::uint32_t batch) override {
    return s.prune(before, batch);
  }
  boost::asio::awaitable<ray::result<std::pair<std::uint32_t, std::uint32_t>>> recover(
      rj::millis now) override {
    return s.recover(now);
  }
  boost::asio::awaitable<ray::result<std::pair<std::uint32_t, std::uint32_t>>> import(
      std::vector<rj::job> jobs) override {
    return s.import(std::move(jobs));
  }
  boost::asio::awaitable<ray::result<due_times>> next_due() override {
    ++outstanding;
    auto r = co_await s.next_due();
    --outstanding;
    ++next_due_done;
    co_return r;
  }
  rj::counts current_counts() const noexcept override { return s.current_counts(); }
  bool degraded() const noexcept override { return s.degraded(); }
  std::optional<std::uint64_t> available_storage_mib() const noexcept override {
    return s.available_storage_mib();
  }
  void set_wake_callback(std::function<void()> fn) override { s.set_wake_callback(std::move(fn)); }

  rj::store& s;
  int next_due_done{0};
  int outstanding{0};  // claim, due_callbacks and next_due calls not completed yet
};

class PostgresJobStore : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cluster().available) RAY_SKIP_OR_FAIL("SKIP: " + cluster().why);
    db = cluster().fresh_database();
    ASSERT_FALSE(db.empty()) << cluster().why;
  }

  std::unique_ptr<rj::store> open(std::string node, std::function<void(rj::postgres_options&)> tweak = {}) {
    rj::postgres_options o;
    o.conninfo = db;
    o.node_id = std::move(node);
    o.max_jobs = 1000;
    o.reconnect_max = 300ms;
    if (tweak) tweak(o);
    auto s = rj::open_postgres_store(o);
    EXPECT_TRUE(s) << (s ? "" : s.error().message);
    return s ? std::move(*s) : nullptr;
  }

  std::string column(std::string const& id, std::string const& col) {
    return query(db, "SELECT " + col + "::text FROM ray_jobs WHERE id = $1", {id});
  }
  std::int64_t number(std::string const& id, std::string const& col) {  // -1 for NULL
    auto const v = column(id, col);
    return v.empty() ? -1 : std::stoll(v);
  }

  std::string db;
};

}  // namespace

// The loader (libpq.cpp): libpq is dlopen()ed on first use; a missing library or symbol is a clear error.
TEST(LibpqLoader, AMissingLibraryNamesItselfAndThePackage) {
  auto r = rj::pq::load_from("libpq-ray-test-absent.so.5");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::async_queue_storage_unavailable);
  EXPECT_NE(r.error().message.find("asyncQueue.store is postgres but libpq-ray-test-absent.so.5 could not be "
                                   "loaded: "),
            std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("install the libpq5 package"), std::string::npos) << r.error().message;
}

TEST(LibpqLoader, ALibraryWithoutTheFunctionsIsRefusedNamingTheFirstMissingOne) {
  auto r = rj::pq::load_from("libc.so.6");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("it has no function PQclear"), std::string::npos) << r.error().message;
}

TEST(LibpqLoader, TheRealLibraryResolvesEveryFunction) {
  auto r = rj::pq::load();
  ASSERT_TRUE(r) << r.error().message;
  auto const& f = **r;
  EXPECT_EQ(&f, &rj::pq::fns()) << "one table per process";
  EXPECT_NE(f.PQconnectdbParams, nullptr);
  EXPECT_NE(f.PQstatus, nullptr);
  EXPECT_NE(f.PQexecParams, nullptr);
  EXPECT_NE(f.PQnotifies, nullptr);
}

TEST_F(PostgresJobStore, CreatesTheVersionedSchemaAndRefusesANewerOne) {
  { auto s = open("node-a"); }
  EXPECT_EQ(query(db, "SELECT version::text FROM ray_schema"), std::to_string(rj::postgres_schema_version));
  { auto again = open("node-b"); }  // an existing schema is used as it is
  EXPECT_EQ(query(db, "SELECT count(*)::text FROM ray_schema"), "1");
  query(db, "UPDATE ray_schema SET version = 99");
  rj::postgres_options o;
  o.conninfo = db;
  auto s = rj::open_postgres_store(o);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("newer Ray"), std::string::npos) << s.error().message;
}

TEST_F(PostgresJobStore, AnUnreachableServerIsRefusedAtOpenWithoutThePassword) {
  rj::postgres_options o;
  o.conninfo = "host=127.0.0.1 port=" + std::to_string(ray::test::free_loopback_port()) +
               " user=ray password=s3cret dbname=x";
  o.connect_timeout = 2000ms;
  auto s = rj::open_postgres_store(o);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, errc::async_queue_storage_unavailable);
  EXPECT_EQ(s.error().message.find("s3cret"), std::string::npos) << s.error().message;
}

TEST_F(PostgresJobStore, InsertedJobsSurviveReopeningWithEveryField) {
  auto j = make_job("hello");
  j.callback = rj::callback_state{.url = "http://127.0.0.1:9/hook"};
  j.idempotency_key = "k-1";
  {
    auto s = open("node-a");
    auto r = run(s->insert(j));
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_FALSE(r->existing);
    EXPECT_FALSE(s->degraded());
    EXPECT_FALSE(s->available_storage_mib());
  }
  auto s = open("node-a");
  auto got = run(s->get(j.id));
  ASSERT_TRUE(got) << got.error().message;
  ASSERT_TRUE(*got);
  auto const& g = **got;
  EXPECT_EQ(g.state, rj::status::queued);
  EXPECT_EQ(g.created_at, j.created_at);
  EXPECT_EQ(g.max_attempts, 3u);
  EXPECT_EQ(boost::json::value(g.request), boost::json::value(j.request));
  ASSERT_TRUE(g.callback);
  EXPECT_EQ(g.callback->url, "http://127.0.0.1:9/hook");
  EXPECT_EQ(g.callback->status, rj::callback_status::pending);
  EXPECT_EQ(g.idempotency_key, "k-1");
  EXPECT_EQ(s->current_counts().by_status[0], 1u);
  EXPECT_EQ(s->current_counts().callback_pending, 1u);
  EXPECT_FALSE(*run(s->get("job_unknown")));
}

TEST_F(PostgresJobStore, ARepeatedIdempotencyKeyReturnsTheExistingJobPerOwnerAcrossNodes) {
  auto a = open("node-a");
  auto b = open("node-b");
  auto first = make_job("one", "owner-a");
  first.idempotency_key = "same";
  ASSERT_TRUE(run(a->insert(first)));
  auto again = make_job("two", "owner-a");
  again.idempotency_key = "same";
  auto second = run(b->insert(again));  // through the other node
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_TRUE(second->existing);
  EXPECT_EQ(second->stored.id, first.id);
  auto other = make_job("three", "owner-b");
  other.idempotency_key = "same";
  auto third = run(b->insert(other));
  ASSERT_TRUE(third);
  EXPECT_FALSE(third->existing);
  EXPECT_EQ(query(db, "SELECT count(*)::text FROM ray_jobs"), "2");
  // A repeated id is refused, not overwritten.
  auto same_id = first;
  same_id.idempotency_key.reset();
  auto dup = run(a->insert(same_id));
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().code, errc::invalid_request);
}

TEST_F(PostgresJobStore, MaxJobsRefusesWithAsyncQueueFullCountingEveryNodesJobs) {
  auto a = open("node-a", [](auto& o) { o.max_jobs = 3; });
  auto b = open("node-b", [](auto& o) { o.max_jobs = 3; });
  ASSERT_TRUE(run(a->insert(make_job("j0"))));
  ASSERT_TRUE(run(b->insert(make_job("j1"))));
  ASSERT_TRUE(run(a->insert(make_job("j2"))));
  auto r = run(b->insert(make_job("over")));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::async_queue_full);
  ASSERT_TRUE(r.error().retry_after_ms);
  EXPECT_GE(*r.error().retry_after_ms, 1000);
  EXPECT_EQ(b->current_counts().total(), 3u);
}

TEST_F(PostgresJobStore, ConcurrentInsertsFromTwoNodesAreAllCommitted) {
  auto a = open("node-a");
  auto b = open("node-b");
  boost::asio::io_context ioc;
  int ok = 0;
  for (int i = 0; i < 200; ++i) {
    auto* s = (i % 2 ? a : b).get();
    boost::asio::co_spawn(
        ioc,
        [s, &ok, i]() -> boost::asio::awaitable<void> {
          auto r = co_await s->insert(make_job("c" + std::to_string(i)));
          ok += r ? 1 : 0;
        },
        boost::asio::detached);
  }
  ioc.run();
  EXPECT_EQ(ok, 200);
  EXPECT_EQ(query(db, "SELECT count(*)::text FROM ray_jobs"), "200");
}

TEST_F(PostgresJobStore, ClaimFinishRetryAndCancelFollowTheLifecycle) {
  auto s = open("node-a");
  auto a = make_job("a");
  auto b = make_job("b");
  ASSERT_TRUE(run(s->insert(a)));
  ASSERT_TRUE(run(s->insert(b)));
  auto claimed = run(s->claim(1, now_ms()));
  ASSERT_TRUE(claimed) << claimed.error().message;
  ASSERT_EQ(claimed->size(), 1u);
  EXPECT_EQ((*claimed)[0].id, a.id);  // oldest first
  EXPECT_EQ((*claimed)[0].state, rj::status::running);
  EXPECT_EQ((*claimed)[0].attempts, 1u);
  EXPECT_TRUE((*claimed)[0].started_at);
  EXPECT_EQ(column(a.id, "lease_owner"), "node-a");
  EXPECT_FALSE(column(a.id, "lease_until").empty());

  auto const later = now_ms() + 60'000;
  auto retried = run(
      s->finish(a.id, rj::attempt_outcome{rj::status::queued, {}, rj::job_error{"overloaded", "busy"}, later},
                now_ms()));
  ASSERT_TRUE(retried && *retried);
  EXPECT_EQ((*retried)->state, rj::status::queued);
  EXPECT_EQ(column(a.id, "lease_owner"), "");  // released
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
  auto terminal = run(s->cancel(b.id, std::nullopt));  // a terminal job comes back unchanged
  ASSERT_TRUE(terminal && *terminal);
  EXPECT_EQ((*terminal)->state, rj::status::cancelled);

  // Another owner cannot cancel (or see) a job.
  auto mine = make_job("mine", "owner-a");
  ASSERT_TRUE(run(s->insert(mine)));
  auto theirs = run(s->cancel(mine.id, std::string("owner-b")));
  ASSERT_TRUE(theirs);
  EXPECT_FALSE(*theirs);
  EXPECT_EQ(column(mine.id, "status"), "queued");
  auto listed = run(s->list(rj::list_query{std::nullopt, std::string("owner-a"), 10}));
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].id, mine.id);
  auto cancelled = run(s->list(rj::list_query{rj::status::cancelled, std::nullopt, 10}));
  ASSERT_TRUE(cancelled);
  ASSERT_EQ(cancelled->size(), 1u);
  EXPECT_EQ((*cancelled)[0].id, b.id);

  // Success: the result is kept and the job is terminal.
  auto again = run(s->claim(1, later + 1));
  ASSERT_TRUE(again);
  ASSERT_EQ(again->size(), 1u);
  EXPECT_EQ((*again)[0].id, a.id);
  EXPECT_EQ((*again)[0].attempts, 2u);
  auto done = run(
      s->finish(a.id, rj::attempt_outcome{rj::status::succeeded, boost::json::value(7), {}, 0}, now_ms()));
  ASSERT_TRUE(done && *done);
  EXPECT_EQ((*done)->state, rj::status::succeeded);
  ASSERT_TRUE((*done)->result);
  EXPECT_EQ(*(*done)->result, boost::json::value(7));
  EXPECT_TRUE((*done)->completed_at);
}

TEST_F(PostgresJobStore, ARestartWithTheSameNodeIdRecoversItsJobsAtOnce) {
  auto a = make_job("a");
  auto b = make_job("b");
  b.max_attempts = 1;
  {
    auto s = open("node-a");
    ASSERT_TRUE(run(s->insert(a)));
    ASSERT_TRUE(run(s->insert(b)));
    ASSERT_EQ(run(s->claim(2, now_ms()))->size(), 2u);
  }  // "crash": both left running, leases still live for 30 s
  auto s = open("node-a");
  auto rec = run(s->recover(now_ms()));
  ASSERT_TRUE(rec) << rec.error().message;
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

TEST_F(PostgresJobStore, PruneDeletesExpiredTerminalJobsButKeepsPendingCallbacks) {
  auto s = open("node-a");
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
  cb.delivered_at = t + 2;
  ASSERT_TRUE(run(s->update_callback(with_cb.id, cb)));
  auto got = run(s->get(with_cb.id));
  ASSERT_TRUE(got && *got && (*got)->callback);
  EXPECT_EQ((*got)->callback->status, rj::callback_status::delivered);
  EXPECT_EQ((*got)->callback->delivered_at, t + 2);
  EXPECT_EQ(*run(s->prune(t + 1, 100)), 1u);
  EXPECT_EQ(s->current_counts().total(), 1u);
}

TEST_F(PostgresJobStore, ADueCallbackIsTakenByOneNodeAtATime) {
  auto a = open("node-a");
  auto b = open("node-b");
  auto j = make_job("cb");
  j.callback = rj::callback_state{.url = "http://127.0.0.1:9/"};
  ASSERT_TRUE(run(a->insert(j)));
  ASSERT_EQ(run(a->claim(1, now_ms()))->size(), 1u);
  auto const t = now_ms();
  ASSERT_TRUE(
      run(a->finish(j.id, rj::attempt_outcome{rj::status::succeeded, boost::json::value(1), {}, 0}, t)));
  auto on_a = run(a->due_callbacks(10, t + 1));
  ASSERT_TRUE(on_a);
  EXPECT_EQ(on_a->size(), 1u);
  auto on_b = run(b->due_callbacks(10, t + 1));  // A is delivering it
  ASSERT_TRUE(on_b);
  EXPECT_TRUE(on_b->empty());
}

TEST_F(PostgresJobStore, TheTypeScriptGatewaysRecordsAreImportedOnce) {
  char tmpl[] = "/tmp/ray-pg-import-XXXXXX";
  ASSERT_TRUE(::mkdtemp(tmpl));
  std::filesystem::path const storage = tmpl;
  std::filesystem::copy(std::filesystem::path(RAY_TEST_FIXTURES) / "ts-jobs" / "jobs", storage / "jobs");
  auto s = open("node-a");
  ray::telemetry::logger log(
      {.service = "jobs-test", .min_level = ray::telemetry::level::error, .synchronous = true});
  auto rep = rj::import_ts_jobs(storage, *s, log);
  ASSERT_TRUE(rep) << rep.error().message;
  EXPECT_EQ(rep->imported, 7u);
  auto c = s->current_counts();
  EXPECT_EQ(c.by_status[static_cast<int>(rj::status::queued)], 2u);
  EXPECT_EQ(c.by_status[static_cast<int>(rj::status::running)], 1u);
  EXPECT_EQ(c.by_status[static_cast<int>(rj::status::succeeded)], 4u);
  auto failed_cb = run(s->get("job_5c5108e4c8c24dea"));
  ASSERT_TRUE(failed_cb && *failed_cb);
  EXPECT_EQ((**failed_cb).state, rj::status::succeeded);
  ASSERT_TRUE((**failed_cb).callback);
  EXPECT_EQ((**failed_cb).callback->status, rj::callback_status::failed);
  // The imported running job has no lease: recovered at once.
  auto rec = run(s->recover(now_ms()));
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->first, 1u);
  auto running = run(s->get("job_341eda254e474b47"));
  EXPECT_EQ((*running)->state, rj::status::queued);
  EXPECT_EQ((*running)->attempts, 1u);
  // Importing the same records again skips them all.
  std::vector<rj::job> again{**failed_cb};
  auto second = run(s->import(again));
  ASSERT_TRUE(second);
  EXPECT_EQ(second->first, 0u);
  EXPECT_EQ(second->second, 1u);
  std::error_code ec;
  std::filesystem::remove_all(storage, ec);
}

TEST_F(PostgresJobStore, TwoNodesClaimingConcurrentlyNeverClaimTheSameJob) {
  auto a = open("node-a");
  auto b = open("node-b");
  {
    boost::asio::io_context ioc;
    for (int i = 0; i < 200; ++i)
      boost::asio::co_spawn(
          ioc,
          [s = a.get(), i]() -> boost::asio::awaitable<void> {
            co_await s->insert(make_job(std::to_string(i)));
          },
          boost::asio::detached);
    ioc.run();
  }
  ASSERT_EQ(query(db, "SELECT count(*)::text FROM ray_jobs"), "200");
  boost::asio::io_context ioc;
  std::vector<std::string> by_a, by_b;
  int errors = 0;
  auto claimer = [&](rj::store* s, std::vector<std::string>* out) -> boost::asio::awaitable<void> {
    for (;;) {
      auto got = co_await s->claim(3, now_ms() + 10'000);
      if (!got) {
        ++errors;
        co_return;
      }
      if (got->empty()) co_return;
      for (auto const& j : *got)
        out->push_back(j.id);
    }
  };
  // Both nodes' store threads run their claims at the same time (two coroutines each, to keep both busy).
  for (int k = 0; k < 2; ++k) {
    boost::asio::co_spawn(ioc, claimer(a.get(), &by_a), boost::asio::detached);
    boost::asio::co_spawn(ioc, claimer(b.get(), &by_b), boost::asio::detached);
  }
  ioc.run();
  EXPECT_EQ(errors, 0);
  std::set<std::string> all(by_a.begin(), by_a.end());
  for (auto const& id : by_b)
    EXPECT_TRUE(all.insert(id).second) << id << " was claimed by both nodes";
  EXPECT_EQ(all.size(), 200u);
  EXPECT_EQ(by_a.size() + by_b.size(), 200u);
  EXPECT_GT(by_a.size(), 0u);
  EXPECT_GT(by_b.size(), 0u);
  EXPECT_EQ(query(db, "SELECT count(*)::text FROM ray_jobs WHERE status = 'running' AND attempts = 1"),
            "200");
  EXPECT_EQ(query(db, "SELECT count(*)::text FROM ray_jobs WHERE lease_owner = 'node-a'"),
            std::to_string(by_a.size()));
}

TEST_F(PostgresJobStore, AnExpiredLeaseIsRecoveredByAnotherNodeWhileARenewedOneIsNot) {
  auto never = [](rj::postgres_options& o) { o.recover_every = std::chrono::hours(1); };
  auto dead = make_job("dead node's");
  auto live = make_job("live node's");
  auto b = open("node-b", never);
  // C holds its job with a short lease it keeps renewing.
  auto c = open("node-c", [&](rj::postgres_options& o) {
    never(o);
    o.lease = 900ms;
  });
  {
    auto a = open("node-a", [&](rj::postgres_options& o) {
      never(o);
      o.lease = 3000ms;
    });
    ASSERT_TRUE(run(a->insert(dead)));
    ASSERT_EQ(run(a->claim(1, now_ms()))->size(), 1u);
  }  // node A dies without finishing: its lease is no longer renewed
  ASSERT_TRUE(run(b->insert(live)));
  auto held_by_c = run(c->claim(1, now_ms()));
  ASSERT_TRUE(held_by_c && held_by_c->size() == 1u);
  ASSERT_EQ((*held_by_c)[0].id, live.id);
  auto const first_until = number(live.id, "lease_until");
  // A's lease is still live: B leaves it alone.
  auto early = run(b->recover(now_ms()));
  ASSERT_TRUE(early);
  EXPECT_EQ(early->first, 0u);
  EXPECT_EQ(column(dead.id, "status"), "running");
  // Once it expires, B's recovery puts it back in the queue with its attempts.
  std::pair<std::uint32_t, std::uint32_t> got{};
  ASSERT_TRUE(eventually([&] {
    auto r = run(b->recover(now_ms()));
    if (r) got = *r;
    return r && r->first > 0;
  }));
  EXPECT_EQ(got.first, 1u);
  EXPECT_EQ(column(dead.id, "status"), "queued");
  EXPECT_EQ(column(dead.id, "attempts"), "1");
  EXPECT_EQ(column(dead.id, "lease_owner"), "");
  // C's job outlived three of its leases because C renewed it; recovery did not touch it.
  EXPECT_EQ(column(live.id, "status"), "running");
  EXPECT_EQ(column(live.id, "lease_owner"), "node-c");
  EXPECT_EQ(column(live.id, "attempts"), "1");
  EXPECT_GT(number(live.id, "lease_until"), first_until);
  // The recovered job is claimable again, with attempts counting on.
  auto again = run(b->claim(5, now_ms()));
  ASSERT_TRUE(again);
  ASSERT_EQ(again->size(), 1u);
  EXPECT_EQ((*again)[0].id, dead.id);
  EXPECT_EQ((*again)[0].attempts, 2u);
}

TEST_F(PostgresJobStore, TheStoreRecoversExpiredLeasesByItself) {
  auto j = make_job("orphan");
  j.max_attempts = 1;
  auto b = open("node-b", [](auto& o) { o.lease = 600ms; });  // recovery every 300 ms
  {
    auto a = open("node-a", [](auto& o) { o.lease = 600ms; });
    ASSERT_TRUE(run(a->insert(j)));
    ASSERT_EQ(run(a->claim(1, now_ms()))->size(), 1u);
  }
  ASSERT_TRUE(eventually([&] { return column(j.id, "status") == "failed"; }));
  EXPECT_EQ(column(j.id, "error_code"), "job_recovery_attempts_exhausted");
}

TEST_F(PostgresJobStore, AFinishByANodeThatLostTheLeaseDoesNothing) {
  auto j = make_job("contested");
  // A stops renewing (but lives on); B recovers and re-runs the job.
  auto a = open("node-a", [](rj::postgres_options& o) {
    o.lease = 500ms;
    o.renew_every = std::chrono::hours(1);
    o.recover_every = std::chrono::hours(1);
  });
  auto b = open("node-b", [](rj::postgres_options& o) { o.recover_every = std::chrono::hours(1); });
  ASSERT_TRUE(run(a->insert(j)));
  ASSERT_EQ(run(a->claim(1, now_ms()))->size(), 1u);
  ASSERT_TRUE(eventually([&] {
    auto r = run(b->recover(now_ms()));
    return r && r->first == 1;
  }));
  auto taken = run(b->claim(1, now_ms()));
  ASSERT_TRUE(taken && taken->size() == 1u);
  EXPECT_EQ((*taken)[0].attempts, 2u);
  auto stale = run(a->finish(
      j.id, rj::attempt_outcome{rj::status::succeeded, boost::json::value("from a"), {}, 0}, now_ms()));
  ASSERT_TRUE(stale && *stale);
  EXPECT_EQ((*stale)->state, rj::status::running);
  EXPECT_FALSE((*stale)->result);
  EXPECT_EQ(column(j.id, "lease_owner"), "node-b");
  auto real = run(b->finish(
      j.id, rj::attempt_outcome{rj::status::succeeded, boost::json::value("from b"), {}, 0}, now_ms()));
  ASSERT_TRUE(real && *real);
  EXPECT_EQ((*real)->state, rj::status::succeeded);
  EXPECT_EQ(*(*real)->result, boost::json::value("from b"));

  // The same attempt, its lease taken over (an operator, a clock gone wrong): the lease owner alone decides.
  auto k = make_job("taken over");
  ASSERT_TRUE(run(a->insert(k)));
  ASSERT_EQ(run(a->claim(1, now_ms()))->size(), 1u);
  query(db, "UPDATE ray_jobs SET lease_owner = 'node-x' WHERE id = $1", {k.id});
  auto ignored = run(
      a->finish(k.id, rj::attempt_outcome{rj::status::succeeded, boost::json::value(1), {}, 0}, now_ms()));
  ASSERT_TRUE(ignored && *ignored);
  EXPECT_EQ((*ignored)->state, rj::status::running);
  EXPECT_EQ((*ignored)->attempts, 1u);
  EXPECT_EQ(column(k.id, "lease_owner"), "node-x");
}

TEST_F(PostgresJobStore, ANotifyFromOneNodesInsertWakesAnotherNode) {
  auto a = open("node-a");
  auto b = open("node-b");
  std::mutex mu;
  std::condition_variable cv;
  int wakes = 0;
  b->set_wake_callback([&] {
    std::lock_guard lk(mu);
    ++wakes;
    cv.notify_all();
  });
  ASSERT_TRUE(run(a->insert(make_job("wake up"))));
  std::unique_lock lk(mu);
  EXPECT_TRUE(cv.wait_for(lk, 10s, [&] { return wakes > 0; }));
  lk.unlock();
  b->set_wake_callback({});  // unregistered before the locals above go away
}

TEST_F(PostgresJobStore, ConnectionLossAnswersUnavailableAndTheStoreComesBackByItself) {
  auto s = open("node-a");
  auto a = make_job("before");
  ASSERT_TRUE(run(s->insert(a)));
  ASSERT_EQ(run(s->claim(1, now_ms()))->size(), 1u);
  ASSERT_TRUE(cluster().stop("fast"));
  struct restart {
    ~restart() {
      if (!cluster().running) cluster().start();
    }
  } guard;
  // The first calls notice the loss; from then on every call answers at once.
  ASSERT_TRUE(eventually([&] {
    auto r = run(s->get(a.id));
    return !r && r.error().code == errc::async_queue_storage_unavailable;
  }));
  EXPECT_TRUE(s->degraded());
  auto refused = run(s->insert(make_job("during")));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, errc::async_queue_storage_unavailable);
  ASSERT_TRUE(refused.error().retry_after_ms);
  EXPECT_EQ(*refused.error().retry_after_ms, 5000);
  // A job that finishes meanwhile: its outcome is kept and written when the connection returns.
  auto finished = run(s->finish(
      a.id, rj::attempt_outcome{rj::status::succeeded, boost::json::value("kept"), {}, 0}, now_ms()));
  ASSERT_FALSE(finished);
  EXPECT_EQ(finished.error().code, errc::async_queue_storage_unavailable);

  ASSERT_TRUE(cluster().start());
  ASSERT_TRUE(eventually([&] { return static_cast<bool>(run(s->get(a.id))); }));
  EXPECT_FALSE(s->degraded());
  auto got = run(s->get(a.id));
  ASSERT_TRUE(got && *got);
  EXPECT_EQ((*got)->state, rj::status::succeeded);
  ASSERT_TRUE((*got)->result);
  EXPECT_EQ(*(*got)->result, boost::json::value("kept"));
  auto after = run(s->insert(make_job("after")));
  ASSERT_TRUE(after) << after.error().message;
  EXPECT_TRUE(eventually([&] { return s->current_counts().total() == 2; }));
}

TEST_F(PostgresJobStore, NotifyWakesIdleDispatchersOnTwoNodesAndEachJobRunsOnce) {
  namespace asio = boost::asio;
  asio::io_context ioc;             // first: it outlives the stores whose completions it receives
  auto submitter = open("node-c");  // a node that only accepts jobs
  auto store_a = open("node-a");
  auto store_b = open("node-b");
  counting_store a(*store_a), b(*store_b);
  ray::telemetry::registry metrics_a{{.standard_series = false}}, metrics_b{{.standard_series = false}};
  ray::telemetry::logger log{
      {.service = "pg-test", .min_level = ray::telemetry::level::error, .synchronous = true}};
  std::map<std::string, std::vector<std::string>> runs;  // job id → nodes that ran it
  auto make = [&](counting_store& st, std::string node, ray::telemetry::registry& metrics) {
    rj::dispatcher_options o;
    o.concurrency = 2;
    o.poll = std::chrono::hours(1);  // only a wake (the NOTIFY) can start work once idle
    return std::make_unique<rj::dispatcher>(
        ioc.get_executor(), st,
        [&runs, node](rj::job const& j) -> asio::awaitable<ray::result<boost::json::value>> {
          runs[j.id].push_back(node);
          co_return boost::json::value(node);
        },
        o, metrics, log);
  };
  auto da = make(a, "node-a", metrics_a);
  auto dbb = make(b, "node-b", metrics_b);
  auto alive = std::make_shared<bool>(true);
  std::pair<counting_store*, rj::dispatcher*> const wiring[] = {{&a, da.get()}, {&b, dbb.get()}};
  for (auto const& w : wiring) {
    auto* d = w.second;
    w.first->set_wake_callback([&ioc, alive, d] {
      asio::post(ioc, [alive, d] {
        if (*alive) d->wake();
      });
    });
  }
  da->start();
  dbb->start();
  auto pump_until = [&](std::function<bool()> pred) {
    auto const deadline = std::chrono::steady_clock::now() + 30s;
    while (!pred()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      if (ioc.stopped()) ioc.restart();
      ioc.run_one_for(50ms);
    }
    return true;
  };
  // Both dispatchers found nothing and went to sleep (for an hour).
  ASSERT_TRUE(pump_until([&] { return a.next_due_done > 0 && b.next_due_done > 0; }));
  std::vector<std::string> ids;
  for (int i = 0; i < 60; ++i) {
    auto j = make_job("n" + std::to_string(i));
    ids.push_back(j.id);
    ASSERT_TRUE(run(submitter->insert(j)));
  }
  ASSERT_TRUE(pump_until([&] {
    return runs.size() == ids.size() &&
           query(db, "SELECT count(*)::text FROM ray_jobs WHERE status = 'succeeded'") == "60";
  }));
  std::set<std::string> nodes;
  for (auto const& id : ids) {
    ASSERT_EQ(runs[id].size(), 1u) << id << " ran more than once";
    nodes.insert(runs[id][0]);
  }
  EXPECT_EQ(nodes.size(), 2u);  // both nodes were woken and took work
  for (auto* d : {da.get(), dbb.get()}) {
    bool done = false;
    asio::co_spawn(
        ioc, [](rj::dispatcher* dd) -> asio::awaitable<void> { co_await dd->stop(0ms); }(d),
        [&](std::exception_ptr) { done = true; });
    ASSERT_TRUE(pump_until([&] { return done; }));
  }
  EXPECT_EQ(a.outstanding, 0);  // a stopped dispatcher has no store call in flight
  EXPECT_EQ(b.outstanding, 0);
  *alive = false;
  a.set_wake_callback({});
  b.set_wake_callback({});
  da.reset();
  dbb.reset();
  ioc.restart();
  ioc.poll();
}
