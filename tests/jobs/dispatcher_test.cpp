// Unit tests of the job dispatcher (src/ray/jobs/dispatcher.cpp) on a real SQLite store with a scripted
// run function: execution, retries with back-off, yielding to interactive traffic, cancellation, shutdown.
#include "ray/jobs/jobs.hpp"

#include <gtest/gtest.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <random>

namespace rj = ray::jobs;
namespace asio = boost::asio;
using ray::errc;

namespace {

struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() /
           ("ray-dispatch-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

rj::millis now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct fixture {
  temp_dir dir;
  asio::io_context ioc;
  ray::telemetry::registry metrics{{.standard_series = false}};
  ray::telemetry::logger log{
      {.service = "dispatch-test", .min_level = ray::telemetry::level::error, .synchronous = true}};
  std::unique_ptr<rj::store> store;
  std::unique_ptr<rj::dispatcher> d;
  std::vector<std::string> calls;  // job ids, in the order run
  std::function<asio::awaitable<ray::result<boost::json::value>>(rj::job const&)> behaviour;
  bool interactive{false};
  int interactive_checks{0};

  fixture() {
    rj::sqlite_options o;
    o.dir = dir.path;
    o.max_jobs = 1000;
    o.min_free_storage_mib = 0;
    auto opened = rj::open_sqlite_store(o);
    store = std::move(*opened);
  }
  ~fixture() {
    if (d) stop(std::chrono::milliseconds(0));
    d.reset();
    store.reset();
    ioc.restart();
    ioc.poll();
  }

  void start(std::uint32_t concurrency = 1) {
    rj::dispatcher_options o;
    o.concurrency = concurrency;
    o.poll = std::chrono::milliseconds(5);
    o.interactive_waiting = [this] {
      ++interactive_checks;
      return interactive;
    };
    d = std::make_unique<rj::dispatcher>(
        ioc.get_executor(), *store,
        [this](rj::job const& j) -> asio::awaitable<ray::result<boost::json::value>> {
          calls.push_back(j.id);
          co_return co_await behaviour(j);
        },
        o, metrics, log);
    d->start();
  }

  template <class T>
  T await(asio::awaitable<T> a) {
    std::optional<T> out;
    asio::co_spawn(ioc, std::move(a), [&](std::exception_ptr e, T v) {
      if (e) std::rethrow_exception(e);
      out = std::move(v);
    });
    if (ioc.stopped()) ioc.restart();  // an earlier await ran out of work
    while (!out)
      ioc.run_one();
    return std::move(*out);
  }

  void stop(std::chrono::milliseconds grace) {
    bool done = false;
    asio::co_spawn(
        ioc,
        [](rj::dispatcher* dd, std::chrono::milliseconds g) -> asio::awaitable<void> {
          co_await dd->stop(g);
        }(d.get(), grace),
        [&](std::exception_ptr) { done = true; });
    if (ioc.stopped()) ioc.restart();
    while (!done)
      ioc.run_one();
  }

  bool run_until(std::function<bool()> pred) {
    auto const deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!pred()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      if (ioc.stopped()) ioc.restart();
      ioc.run_one_for(std::chrono::milliseconds(50));
    }
    return true;
  }

  std::string submit(std::string input, std::uint32_t max_attempts = 3) {
    rj::job j;
    j.id = ray::new_id("job_");
    j.created_at = j.updated_at = now_ms();
    j.max_attempts = max_attempts;
    j.request = boost::json::object{{"input", input}};
    auto r = await(store->insert(j));
    EXPECT_TRUE(r);
    if (d) d->wake();
    return j.id;
  }

  rj::job get(std::string const& id) { return **await(store->get(id)); }
  std::uint64_t count(rj::status s) { return store->current_counts().by_status[static_cast<int>(s)]; }
};

asio::awaitable<ray::result<boost::json::value>> echo(rj::job const& j) {
  co_return boost::json::value(boost::json::object{{"output", j.request.at("input")}});
}

// Waits until cancelled (the dispatcher's abort), then reports it.
asio::awaitable<ray::result<boost::json::value>> hang(rj::job const&) {
  asio::steady_timer t(co_await asio::this_coro::executor);
  t.expires_at(asio::steady_timer::time_point::max());
  co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
  co_return ray::error{errc::provider_request_failed, "aborted"};
}

}  // namespace

TEST(Dispatcher, RunsQueuedJobsAndRecordsTheirResults) {
  fixture f;
  f.behaviour = echo;
  auto a = f.submit("alpha");
  auto b = f.submit("beta");
  f.start(2);
  auto c = f.submit("gamma");
  ASSERT_TRUE(f.run_until([&] { return f.count(rj::status::succeeded) == 3; }));
  EXPECT_EQ(f.calls.size(), 3u);
  auto ja = f.get(a);
  EXPECT_EQ(ja.attempts, 1u);
  ASSERT_TRUE(ja.result);
  EXPECT_EQ(ja.result->at("output"), "alpha");
  EXPECT_TRUE(ja.completed_at);
  EXPECT_EQ(f.get(c).result->at("output"), "gamma");
  (void)b;
}

TEST(Dispatcher, RetriesRetryableFailuresUpToMaxAttemptsThenFails) {
  fixture f;
  f.behaviour = [](rj::job const&) -> asio::awaitable<ray::result<boost::json::value>> {
    co_return ray::error{errc::overloaded, "busy"};
  };
  f.start();
  auto id = f.submit("x", 3);
  ASSERT_TRUE(f.run_until([&] { return f.count(rj::status::failed) == 1; }));
  EXPECT_EQ(f.calls.size(), 3u);  // exactly maxAttempts runs
  auto j = f.get(id);
  EXPECT_EQ(j.attempts, 3u);
  ASSERT_TRUE(j.error);
  EXPECT_EQ(j.error->code, "overloaded");
}

TEST(Dispatcher, ANonRetryableFailureFailsTheJobAtOnce) {
  fixture f;
  f.behaviour = [](rj::job const&) -> asio::awaitable<ray::result<boost::json::value>> {
    co_return ray::error{errc::request_context_window_exceeded, "too long"};
  };
  f.start();
  auto id = f.submit("x", 5);
  ASSERT_TRUE(f.run_until([&] { return f.count(rj::status::failed) == 1; }));
  EXPECT_EQ(f.calls.size(), 1u);
  EXPECT_EQ(f.get(id).error->code, "request_context_window_exceeded");
}

TEST(Dispatcher, JobsWaitWhileInteractiveRequestsAreQueued) {
  fixture f;
  f.behaviour = echo;
  f.interactive = true;
  f.start();
  f.submit("x");
  // The dispatcher looked several times and ran nothing while interactive requests waited.
  ASSERT_TRUE(f.run_until([&] { return f.interactive_checks >= 5; }));
  EXPECT_TRUE(f.calls.empty());
  EXPECT_EQ(f.count(rj::status::queued), 1u);
  f.interactive = false;
  ASSERT_TRUE(f.run_until([&] { return f.count(rj::status::succeeded) == 1; }));
}

TEST(Dispatcher, CancellingARunningJobAbortsItsAttemptAndKeepsItCancelled) {
  fixture f;
  f.behaviour = hang;
  f.start();
  auto id = f.submit("x");
  ASSERT_TRUE(f.run_until([&] { return f.d->running() == 1; }));
  auto c = f.await(f.store->cancel(id, std::nullopt));
  ASSERT_TRUE(c && *c);
  f.d->abort(id);
  ASSERT_TRUE(f.run_until([&] { return f.d->running() == 0; }));
  auto j = f.get(id);
  EXPECT_EQ(j.state, rj::status::cancelled);
  EXPECT_FALSE(j.result);
}

TEST(Dispatcher, StopAbortsRunningJobsAfterTheGraceAndRequeuesThem) {
  fixture f;
  f.behaviour = hang;
  f.start();
  auto id = f.submit("x");
  ASSERT_TRUE(f.run_until([&] { return f.d->running() == 1; }));
  f.stop(std::chrono::milliseconds(20));
  EXPECT_EQ(f.d->running(), 0u);
  auto j = f.get(id);
  EXPECT_EQ(j.state, rj::status::queued);
  EXPECT_EQ(j.attempts, 1u);  // the aborted attempt counts
  // Nothing is claimed after stop.
  f.behaviour = echo;
  f.submit("after");
  f.ioc.run_for(std::chrono::milliseconds(50));
  EXPECT_EQ(f.calls.size(), 1u);
}

TEST(Dispatcher, StopLetsAJobThatFinishesWithinTheGraceFinish) {
  fixture f;
  std::shared_ptr<asio::steady_timer> gate;
  f.behaviour = [&gate](rj::job const& j) -> asio::awaitable<ray::result<boost::json::value>> {
    gate = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor);
    gate->expires_at(asio::steady_timer::time_point::max());
    auto keep = gate;
    co_await keep->async_wait(asio::as_tuple(asio::use_awaitable));
    co_return boost::json::value(boost::json::object{{"output", j.request.at("input")}});
  };
  f.start();
  auto id = f.submit("x");
  ASSERT_TRUE(f.run_until([&] { return f.d->running() == 1 && gate; }));
  bool done = false;
  asio::co_spawn(
      f.ioc,
      [](rj::dispatcher* dd) -> asio::awaitable<void> {
        co_await dd->stop(std::chrono::seconds(30));
      }(f.d.get()),
      [&](std::exception_ptr) { done = true; });
  f.ioc.poll();
  gate->cancel();  // the job completes during the grace
  ASSERT_TRUE(f.run_until([&] { return done; }));
  EXPECT_EQ(f.get(id).state, rj::status::succeeded);
}
