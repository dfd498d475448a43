// Durable jobs on PostgreSQL (spec/scale-out.md "Jobs: PostgreSQL") through the real binary: two `ray` nodes
// share one database of a throw-away cluster (tests/support/pg_cluster.hpp). (a) a job submitted to one node
// runs somewhere and is readable from the other; (b) 300 jobs over both nodes while one is SIGKILLed mid-run
// and restarted: every accepted job ends, within maxAttempts, and is called back (signed); (c) the database
// stopped under submissions: 503 async_queue_storage_unavailable with Retry-After, nothing accepted is lost,
// and both nodes resume by themselves when it is back. Short leases (2 s) keep it quick; every wait is on an
// event (a callback, a response, a log line) or a poll with a deadline.
#include "callback_receiver.hpp"
#include "http_test_util.hpp"
#include "support/pg_cluster.hpp"
#include "support/require.hpp"

#include <atomic>
#include <condition_variable>
#include <functional>
#include <iostream>
#include <mutex>
#include <set>
#include <thread>

namespace ray::itest {
namespace {

namespace json = boost::json;

constexpr char const* kSecret = "pg-jobs-test-callback-secret-0123456789";
constexpr int kMaxAttempts = 3;
constexpr int kLeaseMs = 2000;

rt::pg_cluster& cluster() {
  static rt::pg_cluster c;
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

// Joins the submitter threads however the test body ends (a failed ASSERT returns early).
struct joiner {
  std::vector<std::thread>& threads;
  std::function<void()> stop{};
  ~joiner() {
    if (stop) stop();
    for (auto& t : threads)
      if (t.joinable()) t.join();
  }
};

// The set of job ids that have been called back.
std::set<std::string> called_back(std::vector<received_callback> const& got) {
  std::set<std::string> ids;
  for (auto const& g : got)
    ids.insert(g.job_id);
  return ids;
}

class JobsPostgres : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cluster().missing_tools) RAY_SKIP_OR_FAIL("SKIP: " + cluster().why);
    ASSERT_TRUE(cluster().available) << cluster().why << "\n" << cluster().logs();
    if (!cluster().running) ASSERT_TRUE(cluster().start()) << cluster().logs();
    conninfo = cluster().fresh_database();
    ASSERT_FALSE(conninfo.empty()) << cluster().why;
  }
  void TearDown() override {
    if (!cluster().running && cluster().available) cluster().start();  // the next test needs it
  }

  // A node's config: mock backend answering in `latency_ms`, jobs on the shared database.
  json::object node_config(int latency_ms) const {
    auto cfg = test_config({}, {{"latencyMs", latency_ms}});
    cfg["scheduler"] = json::object{{"concurrency", 4}, {"maxQueue", 64}};
    cfg["asyncQueue"] = json::object{{"enabled", true},
                                     {"store", "postgres"},
                                     {"postgresUrlEnv", "JOBS_PG_URL"},
                                     {"leaseMs", kLeaseMs},
                                     {"maxJobs", 2000},
                                     {"pollIntervalMs", 50},
                                     {"dispatchConcurrency", 3},
                                     {"maxAttempts", kMaxAttempts},
                                     {"maxCallbackAttempts", 50},
                                     {"callbackAllowPrivateNetwork", true},
                                     {"callbackSecretEnv", "JOBS_CB_SECRET"}};
    return cfg;
  }
  std::vector<std::pair<std::string, std::string>> node_env() const {
    return {{"JOBS_PG_URL", conninfo}, {"JOBS_CB_SECRET", kSecret}};
  }
  std::unique_ptr<ray_server> start_node(int latency_ms) {
    auto s = std::make_unique<ray_server>(node_config(latency_ms), no_host_pressure(), node_env());
    EXPECT_TRUE(s->wait_listening());
    EXPECT_TRUE(s->process().wait_for_log("job queue ready", rt::in(kIo))) << s->output_tail();
    return s;
  }

  static std::string job_body(int i, callback_receiver const& hook) {
    return R"({"input":"pg job )" + std::to_string(i) + R"(","maxTokens":8,"callbackUrl":")" + hook.url() +
           "\"}";
  }

  // GET /v1/jobs/{id} on one node: the record, or nullopt (with a failure) when it is not 200.
  static std::optional<json::object> record(std::uint16_t port, std::string const& id) {
    auto r = roundtrip(port, get("/v1/jobs/" + id));
    EXPECT_TRUE(r) << "no answer for " << id;
    if (!r) return std::nullopt;
    EXPECT_EQ(r->status, 200) << id << ": " << r->describe();
    if (r->status != 200) return std::nullopt;
    return json_body(*r);
  }

  // Every accepted job: found on `port`, succeeded, within its attempts; every callback signed. Returns how
  // many jobs needed more than one attempt.
  static int check_all_succeeded(std::uint16_t port, std::set<std::string> const& accepted,
                                 callback_receiver const& hook) {
    int retried = 0;
    for (auto const& id : accepted) {
      auto rec = record(port, id);
      if (!rec) continue;
      EXPECT_EQ(rt::string_field(*rec, "status"), "succeeded") << json::serialize(*rec);
      auto const attempts = rec->at("attempts").to_number<std::int64_t>();
      EXPECT_GE(attempts, 1) << json::serialize(*rec);
      EXPECT_LE(attempts, kMaxAttempts) << json::serialize(*rec);
      if (attempts > 1) ++retried;
      EXPECT_TRUE(rec->contains("result")) << json::serialize(*rec);
    }
    for (auto const& cb : hook.received()) {
      EXPECT_TRUE(cb.signature_ok) << cb.job_id;
      EXPECT_EQ(cb.status, "succeeded") << cb.job_id;
    }
    return retried;
  }

  std::string conninfo;
};

// Startup refusals need no database: the URL variable unset (exit 2, naming the key and the variable), and a
// database that cannot be reached (exit 1, never printing the password).
TEST(JobsPostgresStartup, AMissingUrlVariableOrAnUnreachableDatabaseRefusesTheStart) {
  auto cfg = test_config();
  cfg["asyncQueue"] = json::object{
      {"enabled", true}, {"store", "postgres"}, {"postgresUrlEnv", "JOBS_PG_URL"}, {"leaseMs", kLeaseMs}};
  {
    ray_server s(cfg, no_host_pressure());
    EXPECT_EQ(s.process().wait_exit(rt::in(kIo)), 2) << s.output_tail();
    EXPECT_NE(s.process().output().find("asyncQueue.postgresUrlEnv names JOBS_PG_URL, which is not set"),
              std::string::npos)
        << s.output_tail();
  }
  {
    ray_server s(cfg, no_host_pressure(),
                 {{"JOBS_PG_URL", "host=127.0.0.1 port=" + std::to_string(rt::free_loopback_port()) +
                                      " user=ray password=pg-pw-never-shown dbname=ray connect_timeout=2"}});
    EXPECT_EQ(s.process().wait_exit(rt::in(kIo)), 1) << s.output_tail();
    auto const out = s.process().output();
    EXPECT_NE(out.find("cannot connect to PostgreSQL"), std::string::npos) << s.output_tail();
    EXPECT_NE(out.find("asyncQueue.postgresUrlEnv"), std::string::npos) << s.output_tail();
    EXPECT_EQ(out.find("pg-pw-never-shown"), std::string::npos) << s.output_tail();
  }
}

// (a) One database, two nodes: what one accepts the other reads, and jobs run wherever there is room.
TEST_F(JobsPostgres, AJobSubmittedToOneNodeRunsAndIsReadableFromTheOther) {
  callback_receiver hook(kSecret);
  auto a = start_node(0);
  auto b = start_node(0);
  ASSERT_FALSE(HasFailure()) << "a node did not start";

  std::set<std::string> accepted;
  for (int i = 0; i < 20; ++i) {
    auto r = roundtrip(a->port(), post_json("/v1/jobs", job_body(i, hook)));
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 202) << r->describe();
    accepted.insert(rt::string_field(*json_body(*r), "id"));
  }
  ASSERT_TRUE(hook.wait_until([&](auto const& got) { return called_back(got) == accepted; },
                              rt::in(std::chrono::seconds(60))))
      << a->output_tail() << b->output_tail();
  check_all_succeeded(b->port(), accepted, hook);

  // /health of a node shows the shared store; listing on B sees A's submissions.
  auto h = roundtrip(b->port(), get("/health"));
  ASSERT_TRUE(h);
  auto health = json_body(*h);
  ASSERT_TRUE(health);
  auto const& aq = health->at("asyncQueue").as_object();
  EXPECT_EQ(rt::string_field(aq, "store"), "postgres");
  EXPECT_TRUE(aq.at("availableStorageMiB").is_null()) << "the database's disk is not this node's";
  EXPECT_FALSE(aq.at("storageFailed").as_bool());
  auto l = roundtrip(b->port(), get("/v1/jobs?status=succeeded&limit=100"));
  ASSERT_TRUE(l);
  ASSERT_EQ(l->status, 200) << l->describe();
  std::set<std::string> listed;
  auto const list = json_body(*l);
  ASSERT_TRUE(list);
  for (auto const& j : list->at("data").as_array())
    listed.insert(rt::string_field(j.as_object(), "id"));
  EXPECT_EQ(listed, accepted);
}

// (b) kill -9 of a node mid-run: its leases expire and the other node (or its restart) finishes the work.
TEST_F(JobsPostgres, EveryAcceptedJobEndsAfterANodeIsKilledMidRunAndRestarted) {
  constexpr int kJobs = 300;
  callback_receiver hook(kSecret);
  auto a = start_node(100);
  auto b = start_node(100);
  ASSERT_FALSE(HasFailure()) << "a node did not start";
  std::uint16_t const a_port = a->port(), b_port = b->port();

  std::mutex mu;
  std::condition_variable cv;
  std::set<std::string> accepted;
  std::atomic<int> next{0};
  std::atomic<bool> a_dead{false};
  std::vector<std::thread> submitters;
  joiner join_submitters{submitters, [&] { next = kJobs; }};
  for (int t = 0; t < 4; ++t) {
    submitters.emplace_back([&] {
      for (int i = next++; i < kJobs; i = next++) {
        // Spread over both nodes; once A is gone, everything goes to B.
        bool const to_a = i % 2 == 0 && !a_dead.load();
        auto r = roundtrip(to_a ? a_port : b_port, post_json("/v1/jobs", job_body(i, hook)));
        if (!(r && r->status == 202) && to_a) r = roundtrip(b_port, post_json("/v1/jobs", job_body(i, hook)));
        if (r && r->status == 202) {
          std::lock_guard lk(mu);
          accepted.insert(rt::string_field(*json_body(*r), "id"));
          cv.notify_all();
        }
      }
    });
  }
  // Mid-run: half submitted, and A running jobs (its /health says so) — then SIGKILL.
  {
    std::unique_lock lk(mu);
    ASSERT_TRUE(
        cv.wait_until(lk, rt::in(std::chrono::seconds(60)), [&] { return accepted.size() >= kJobs / 2; }));
  }
  bool a_was_running = false;
  for (auto until = rt::in(kIo); !a_was_running && rt::steady::now() < until;) {
    auto h = roundtrip(a_port, get("/health"));
    auto o = h ? json_body(*h) : std::nullopt;
    a_was_running = o && o->at("asyncQueue").at("dispatching").to_number<int>() > 0;
  }
  a_dead = true;
  ASSERT_TRUE(a->process().signal(SIGKILL));
  ASSERT_EQ(a->process().wait_exit(rt::in(kIo)), -SIGKILL);
  EXPECT_TRUE(a_was_running) << "node A was never seen running a job";
  for (auto& t : submitters)
    t.join();
  EXPECT_EQ(accepted.size(), static_cast<std::size_t>(kJobs)) << "B accepts what A could not";

  // A comes back (a new process: a new lease owner); the leases of its dead predecessor expire meanwhile.
  auto const restarted = rt::steady::now();
  a = start_node(100);
  ASSERT_FALSE(HasFailure()) << "a node did not start";
  // Lease + the remaining run time (≤ 300 jobs · 100 ms over 6 slots) + callbacks, with room for ASan.
  ASSERT_TRUE(hook.wait_until(
      [&](auto const& got) {
        auto ids = called_back(got);
        return std::includes(ids.begin(), ids.end(), accepted.begin(), accepted.end());
      },
      rt::in(std::chrono::milliseconds(kLeaseMs) + std::chrono::seconds(90))))
      << a->output_tail() << b->output_tail();
  auto const took = std::chrono::duration_cast<std::chrono::milliseconds>(rt::steady::now() - restarted);
  int const retried = check_all_succeeded(a->port(), accepted, hook);
  std::printf(
      "postgres kill test: %zu jobs accepted, %d rerun after the kill, all called back %lld ms after "
      "the restart, %zu callbacks\n",
      accepted.size(), retried, static_cast<long long>(took.count()), hook.received().size());
  EXPECT_GE(retried, a_was_running ? 1 : 0) << "the jobs A was running were run again elsewhere";
}

// (c) The database goes away under submissions and comes back.
TEST_F(JobsPostgres, ADatabaseOutageRefusesWithRetryAfterLosesNothingAndHealsByItself) {
  callback_receiver hook(kSecret);
  auto a = start_node(20);
  auto b = start_node(20);
  ASSERT_FALSE(HasFailure()) << "a node did not start";
  std::uint16_t const ports[2] = {a->port(), b->port()};

  std::mutex mu;
  std::condition_variable cv;
  std::set<std::string> accepted;
  int unavailable[2] = {0, 0};  // 503 async_queue_storage_unavailable with Retry-After, by node
  int accepted_after_restart[2] = {0, 0};
  bool restarted = false;
  std::vector<std::string> unexpected;  // anything else (bounded)
  std::atomic<bool> done{false};
  std::atomic<int> next{0};
  std::vector<std::thread> submitters;
  joiner join_submitters{submitters, [&] { done = true; }};
  for (int t = 0; t < 4; ++t) {
    submitters.emplace_back([&] {
      // A steady offered load of ≤ 4 × 50 submissions/s (pacing, not synchronisation): refusals come back
      // at once, and an unpaced loop would only burn the two cores the nodes need.
      auto tick = rt::steady::now();
      while (!done.load()) {
        tick += std::chrono::milliseconds(20);
        std::this_thread::sleep_until(tick);
        int const i = next++;
        int const node = i % 2;
        auto r = roundtrip(ports[node], post_json("/v1/jobs", job_body(i, hook)));
        std::lock_guard lk(mu);
        if (r && r->status == 202) {
          accepted.insert(rt::string_field(*json_body(*r), "id"));
          if (restarted) ++accepted_after_restart[node];
        } else if (r && is_error(*r, 503, "async_queue_storage_unavailable") &&
                   r->has_header("retry-after")) {
          ++unavailable[node];
        } else if (unexpected.size() < 5) {
          unexpected.push_back(r ? r->describe() : "no answer");
        }
        cv.notify_all();
      }
    });
  }
  auto wait_for = [&](auto pred, std::chrono::seconds limit) {
    std::unique_lock lk(mu);
    return cv.wait_until(lk, rt::in(limit), pred);
  };
  EXPECT_TRUE(wait_for([&] { return accepted.size() >= 40; }, std::chrono::seconds(30)));
  ASSERT_TRUE(cluster().stop("fast")) << cluster().logs();
  EXPECT_TRUE(wait_for([&] { return unavailable[0] >= 3 && unavailable[1] >= 3; }, std::chrono::seconds(30)))
      << "both nodes refuse while the database is down";
  // /health says so meanwhile.
  auto h = roundtrip(ports[0], get("/health"));
  ASSERT_TRUE(h);
  EXPECT_TRUE(json_body(*h)->at("asyncQueue").at("storageFailed").as_bool()) << h->describe();
  ASSERT_TRUE(cluster().start()) << cluster().logs();
  {
    std::lock_guard lk(mu);
    restarted = true;
  }
  EXPECT_TRUE(wait_for([&] { return accepted_after_restart[0] >= 5 && accepted_after_restart[1] >= 5; },
                       std::chrono::seconds(30)))
      << "both nodes accept again by themselves";
  done = true;
  for (auto& t : submitters)
    t.join();
  {
    std::lock_guard lk(mu);
    EXPECT_TRUE(unexpected.empty()) << unexpected.front();
  }

  ASSERT_TRUE(hook.wait_until(
      [&](auto const& got) {
        auto ids = called_back(got);
        return std::includes(ids.begin(), ids.end(), accepted.begin(), accepted.end());
      },
      rt::in(std::chrono::seconds(90))))
      << a->output_tail() << b->output_tail();
  check_all_succeeded(ports[1], accepted, hook);
  std::printf("postgres outage test: %zu jobs accepted, %d + %d refused while the database was down\n",
              accepted.size(), unavailable[0], unavailable[1]);
}

}  // namespace
}  // namespace ray::itest
