// Accepted means committed (spec/jobs.md), proven the hard way: 200 jobs submitted over real sockets against
// a slow mock while `ray` is SIGKILLed at five random points and restarted on the same store. Every job that
// got a 202 must reach a terminal state, none may be lost, none may run more than maxAttempts times, and the
// callbacks of succeeded jobs must reach a loopback receiver, signed (the receiver recomputes the HMAC).
#include "callback_receiver.hpp"
#include "http_test_util.hpp"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <random>
#include <set>
#include <thread>

namespace ray::itest {
namespace {

namespace json = boost::json;

constexpr char const* kSecret = "crash-test-callback-secret-abcdef0123";
constexpr int kJobs = 200;
constexpr int kRounds = 5;
// One more attempt than there are kills: a job can be running at every kill (the Release `ray` restarts in
// ~15 ms, so one job was once killed mid-run three times in 108 ms and, with 3 attempts, rightly ended
// `job_recovery_attempts_exhausted`), so only with kRounds + 1 attempts must every accepted job succeed.
constexpr int kMaxAttempts = kRounds + 1;

TEST(JobsCrash, EveryAcceptedJobSurvivesFiveKillNineRestartsAndIsCalledBack) {
  callback_receiver hook(kSecret);
  rt::temp_dir storage_parent;
  auto const storage = storage_parent.path() / "storage";
  auto cfg = test_config({}, {{"latencyMs", 25}});
  cfg["scheduler"] = json::object{{"concurrency", 2}, {"maxQueue", 64}};
  cfg["asyncQueue"] = json::object{{"enabled", true},
                                   {"storageDir", storage.string()},
                                   {"maxJobs", 1000},
                                   {"minFreeStorageMiB", 0},
                                   {"pollIntervalMs", 20},
                                   {"dispatchConcurrency", 2},
                                   {"maxAttempts", kMaxAttempts},
                                   {"maxCallbackAttempts", 50},
                                   {"callbackAllowPrivateNetwork", true},
                                   {"callbackSecretEnv", "CRASH_TEST_SECRET"}};
  std::vector<std::pair<std::string, std::string>> env{{"CRASH_TEST_SECRET", kSecret}};

  std::random_device rd;
  auto const seed = rd();
  std::mt19937 rng(seed);
  SCOPED_TRACE("seed " + std::to_string(seed));

  std::mutex mu;
  std::set<std::string> accepted;
  std::atomic<int> next{0};
  auto body_of = [](int i) {
    return R"({"input":"crash job )" + std::to_string(i) + R"(","maxTokens":8,"callbackUrl":")";
  };

  int recovered_rounds = 0;
  for (int round = 0; round <= kRounds; ++round) {
    ray_server s(cfg, {}, env);
    ASSERT_TRUE(s.wait_listening()) << "round " << round;
    ASSERT_TRUE(s.process().wait_for_log("job queue ready", rt::in(kIo))) << s.output_tail();
    if (s.process().output().find("left running by the previous process recovered") != std::string::npos)
      ++recovered_rounds;
    if (round == kRounds) {
      // The last start is not killed: submit whatever is left, then let everything finish.
      while (next.load() < kJobs) {
        int i = next++;
        auto c = s.connect();
        ASSERT_TRUE(c.send(post_json("/v1/jobs", body_of(i) + hook.url() + "\"}")));
        auto r = c.read_response(rt::in(kIo));
        ASSERT_TRUE(r);
        ASSERT_EQ(r->status, 202) << r->describe();
        std::lock_guard lk(mu);
        accepted.insert(rt::string_field(*json_body(*r), "id"));
      }
      // Wait (on the receiver's events) until every accepted job was called back.
      auto const all_called = [&](std::vector<received_callback> const& got) {
        std::set<std::string> ids;
        for (auto const& g : got)
          ids.insert(g.job_id);
        return std::includes(ids.begin(), ids.end(), accepted.begin(), accepted.end());
      };
      ASSERT_TRUE(hook.wait_until(all_called, rt::in(std::chrono::seconds(180)))) << s.output_tail();
      // Every accepted job is terminal, succeeded, within its attempts.
      for (auto const& id : accepted) {
        auto c = s.connect();
        ASSERT_TRUE(c.send(get("/v1/jobs/" + id)));
        auto r = c.read_response(rt::in(kIo));
        ASSERT_TRUE(r);
        ASSERT_EQ(r->status, 200) << id << " lost: " << r->describe();
        auto rec = json_body(*r);
        ASSERT_TRUE(rec);
        EXPECT_EQ(rt::string_field(*rec, "status"), "succeeded") << r->describe();
        EXPECT_LE(rec->at("attempts").as_int64(), kMaxAttempts) << r->describe();
        EXPECT_GE(rec->at("attempts").as_int64(), 1) << r->describe();
      }
      break;
    }

    // Four submitters while jobs run; SIGKILL at a random point: on even rounds in the middle of the
    // submissions (after a random number of 202s), on odd rounds at a random moment while jobs run.
    std::atomic<bool> killed{false};
    int round_accepted = 0;
    std::condition_variable accepted_cv;
    int const quota_now = kJobs * (round + 1) / (kRounds + 1) - next.load();
    int const kill_at = std::uniform_int_distribution<int>(1, std::max(1, quota_now - 2))(rng);
    std::vector<std::thread> submitters;
    for (int t = 0; t < 4; ++t) {
      submitters.emplace_back([&] {
        while (!killed.load()) {
          int const quota = kJobs * (round + 1) / (kRounds + 1);
          int i = next.load();
          do {
            if (i >= quota) return;
          } while (!next.compare_exchange_weak(i, i + 1));
          try {
            auto c = s.connect();
            if (!c.send(post_json("/v1/jobs", body_of(i) + hook.url() + "\"}"))) continue;
            auto r = c.read_response(rt::in(kIo));
            if (r && r->status == 202) {
              std::lock_guard lk(mu);
              accepted.insert(rt::string_field(*json_body(*r), "id"));
              ++round_accepted;
              accepted_cv.notify_all();
            }
          } catch (std::exception const&) {
            // refused: the server was killed
          }
        }
      });
    }
    if (round % 2 == 0) {
      std::unique_lock lk(mu);
      ASSERT_TRUE(accepted_cv.wait_until(lk, rt::in(kIo), [&] { return round_accepted >= kill_at; }));
    } else {
      auto const kill_after = std::chrono::milliseconds(std::uniform_int_distribution<int>(30, 700)(rng));
      // The kill point is a random moment — time is this test's input, not a wait for something to happen
      // (the wait returns early only if the process died on its own, which the exit check below catches).
      s.process().wait_for_log([](std::string_view) { return false; }, rt::in(kill_after));
    }
    killed = true;
    s.process().signal(SIGKILL);
    for (auto& t : submitters)
      t.join();
    auto status = s.process().wait_exit(rt::in(kIo));
    ASSERT_EQ(status, -SIGKILL) << "round " << round;
  }
  std::printf(
      "crash test: seed %u, %zu of %d jobs accepted, %d of %d restarts recovered running jobs, %zu "
      "callbacks\n",
      seed, accepted.size(), kJobs, recovered_rounds, kRounds, hook.received().size());
  EXPECT_EQ(next.load(), kJobs);
  EXPECT_GE(accepted.size(), static_cast<std::size_t>(kJobs) * 8 / 10);  // most submissions were accepted
  for (auto const& cb : hook.received()) {
    EXPECT_TRUE(cb.signature_ok) << cb.job_id;
    EXPECT_EQ(cb.status, "succeeded") << cb.job_id;
  }
}

}  // namespace
}  // namespace ray::itest
