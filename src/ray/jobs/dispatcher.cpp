// The dispatcher: one loop that claims due jobs and due callbacks from the store and spawns their work.
// Every spawned coroutine holds the shared impl (its state outlives it) and catches what it throws; a
// running job's abort is a timer in its own shared entry, raced with `||` against the job, so the loser is
// cancelled inside a frame that is still alive.
#include "ray/jobs/jobs.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/serialize.hpp>

#include <map>
#include <random>
#include <set>

namespace ray::jobs {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace {
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
constexpr std::uint32_t max_parallel_callbacks = 4;
constexpr std::uint32_t prune_batch = 500;

millis now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Waits until the timer is cancelled (the timer never expires on its own).
asio::awaitable<void> until_cancelled(std::shared_ptr<asio::steady_timer> t) {
  co_await t->async_wait(use_tuple);
}
}  // namespace

struct dispatcher::impl : std::enable_shared_from_this<impl> {
  struct running_job {
    explicit running_job(asio::any_io_executor ex) : abort(std::make_shared<asio::steady_timer>(ex)) {
      abort->expires_at(asio::steady_timer::time_point::max());
    }
    std::shared_ptr<asio::steady_timer> abort;
    bool requeue{false};  // aborted by shutdown (back to queued), not by a client's cancel
  };

  impl(asio::any_io_executor e, store& s, run_fn r, dispatcher_options o, telemetry::registry& metrics,
       telemetry::logger& l)
      : ex(e),
        st(s),
        run(std::move(r)),
        opts(std::move(o)),
        log(l),
        timer(e),
        stop_timer(std::make_shared<asio::steady_timer>(e)),
        rng(std::random_device{}()) {
    stop_timer->expires_at(asio::steady_timer::time_point::max());
    auto attempts = metrics.add_counter("ray_job_attempts_total",
                                        "Finished job attempts by outcome: succeeded, retried (a retryable "
                                        "failure, queued again), failed, cancelled, requeued (shutdown).",
                                        {"outcome"}, {.json_name = "jobs.attempts"});
    for (auto o_name : {"succeeded", "retried", "failed", "cancelled", "requeued"})
      attempt_counters.emplace(o_name, attempts.with({o_name}));
    auto callbacks = metrics.add_counter("ray_callbacks_total",
                                         "Callback delivery attempts by outcome: delivered, retried (will be "
                                         "tried again), failed (given up).",
                                         {"outcome"}, {.json_name = "jobs.callbacks"});
    for (auto o_name : {"delivered", "retried", "failed"})
      callback_counters.emplace(o_name, callbacks.with({o_name}));
    if (!opts.resolve) opts.resolve = system_resolver();
  }

  asio::any_io_executor ex;
  store& st;
  run_fn run;
  dispatcher_options opts;
  telemetry::logger& log;
  asio::steady_timer timer;                        // the loop's wait; cancelled by wake()
  std::shared_ptr<asio::steady_timer> stop_timer;  // cancelled by stop(): aborts callback deliveries
  bool woken{false};
  bool stopping{false};
  bool loop_done{true};  // no loop running (before start(), after it ended)
  std::map<std::string, std::shared_ptr<running_job>> running;
  std::set<std::string> delivering;
  std::mt19937_64 rng;
  millis next_prune{0};
  std::map<std::string, telemetry::counter, std::less<>> attempt_counters, callback_counters;
  std::shared_ptr<asio::steady_timer> idle_waiter;  // stop() waits on it for running to drain

  double jitter() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng); }

  void wake() {
    woken = true;
    timer.cancel();
  }

  void spawn(asio::awaitable<void> work, char const* what) {
    asio::co_spawn(ex, std::move(work), [self = shared_from_this(), what](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (std::exception const& x) {
        self->log.error("job dispatcher task failed", {{"task", what}, {"reason", x.what()}});
      } catch (...) {
        self->log.error("job dispatcher task failed", {{"task", what}});
      }
    });
  }

  asio::awaitable<void> loop() {
    auto self = shared_from_this();
    while (!stopping) {
      woken = false;
      auto const now = now_ms();
      bool yielding = false;
      // Jobs first, unless interactive requests are waiting: then the jobs wait (spec/jobs.md).
      if (running.size() < opts.concurrency) {
        if (opts.interactive_waiting && opts.interactive_waiting()) {
          yielding = true;
        } else {
          auto claimed =
              co_await st.claim(opts.concurrency - static_cast<std::uint32_t>(running.size()), now);
          if (stopping) {
            // Claimed while stop() began: hand them straight back.
            if (claimed)
              for (auto& j : *claimed)
                co_await st.finish(j.id, attempt_outcome{status::queued, {}, {}, 0}, now_ms());
            break;
          }
          if (!claimed) {
            log.error("claiming jobs failed", {{"reason", claimed.error().message}});
          } else {
            for (auto& j : *claimed) {
              auto entry = std::make_shared<running_job>(ex);
              running.emplace(j.id, entry);
              spawn(run_one(std::move(j), entry), "run job");
            }
          }
        }
      }
      if (delivering.size() < max_parallel_callbacks) {
        auto due = co_await st.due_callbacks(max_parallel_callbacks, now);
        if (due) {
          for (auto& j : *due) {
            if (delivering.size() >= max_parallel_callbacks || stopping) break;
            if (!delivering.insert(j.id).second) continue;
            spawn(deliver_one(std::move(j)), "deliver callback");
          }
        }
      }
      if (now >= next_prune) {
        auto const ttl = opts.completed_ttl.count();
        auto pruned = co_await st.prune(now - ttl, prune_batch);
        if (pruned && *pruned > 0) log.info("expired jobs pruned", {{"jobs", *pruned}});
        // A full batch: there may be more; otherwise look again in a minute (or a tenth of the TTL).
        next_prune =
            pruned && *pruned == prune_batch ? now : now + std::clamp<millis>(ttl / 10, 1000, 60'000);
      }
      if (stopping) break;
      if (woken) continue;
      // Sleep until the next thing is due, a wake(), or the poll interval.
      auto wait = opts.poll;
      if (yielding) {
        wait = std::min(wait, std::chrono::milliseconds(20));
      } else if (auto due = co_await st.next_due(); due) {
        // Only what there is room for: a due job while every slot runs wakes nothing (a finishing job does).
        std::optional<millis> next;
        if (due->job && running.size() < opts.concurrency) next = due->job;
        if (due->callback && delivering.size() < max_parallel_callbacks)
          next = next ? std::min(*next, *due->callback) : *due->callback;
        if (next) {
          auto const in = std::chrono::milliseconds(std::max<millis>(0, *next - now_ms()));
          wait = std::min(wait, std::max(in, std::chrono::milliseconds(1)));
        }
      }
      if (woken || stopping) continue;
      timer.expires_after(wait);
      co_await timer.async_wait(use_tuple);
    }
    loop_done = true;
    notify_idle();
  }

  void notify_idle() {
    if (idle_waiter) idle_waiter->cancel();
  }

  asio::awaitable<void> run_one(job j, std::shared_ptr<running_job> entry) {
    auto self = shared_from_this();
    auto const id = j.id;
    log.debug("job started", {{"jobId", id}, {"attempt", j.attempts}});
    std::optional<result<boost::json::value>> outcome;
    {
      auto raced = co_await (until_cancelled(entry->abort) || run(j));
      if (raced.index() == 1) outcome = std::move(std::get<1>(raced));
    }
    attempt_outcome out;
    char const* counted = "succeeded";
    if (!outcome) {
      // Aborted: by shutdown (back to queued, attempts kept) or by a client's cancel (already recorded).
      out.next = status::queued;
      counted = entry->requeue ? "requeued" : "cancelled";
    } else if (*outcome) {
      out.next = status::succeeded;
      out.result = std::move(**outcome);
    } else {
      auto const& e = outcome->error();
      out.error = job_error{std::string(code_name(e.code)), e.message};
      if (is_retryable(e.code) && j.attempts < j.max_attempts) {
        out.next = status::queued;
        auto delay = backoff(j.attempts, opts.poll, jitter());
        if (e.retry_after_ms)
          delay = std::max(delay, std::chrono::milliseconds(static_cast<millis>(*e.retry_after_ms)));
        out.not_before = now_ms() + delay.count();
        counted = "retried";
      } else {
        out.next = status::failed;
        counted = "failed";
      }
    }
    auto finished = co_await st.finish(id, std::move(out), now_ms());
    if (!finished) log.error("recording a job failed", {{"jobId", id}, {"reason", finished.error().message}});
    attempt_counters.at(counted).inc();
    auto const level =
        std::string_view(counted) == "failed" ? telemetry::level::warn : telemetry::level::info;
    if (log.enabled(level)) {
      boost::json::object f{
          {"jobId", id}, {"outcome", counted}, {"attempt", j.attempts}, {"maxAttempts", j.max_attempts}};
      if (outcome && !*outcome) f["errorCode"] = code_name(outcome->error().code);
      log.log(level, "job attempt finished", std::move(f));
    }
    running.erase(id);
    if (running.empty()) notify_idle();
    wake();
  }

  asio::awaitable<void> deliver_one(job j) {
    auto self = shared_from_this();
    auto const id = j.id;
    auto cb = *j.callback;
    auto const body = boost::json::serialize(boost::json::object{{"job", to_json(j)}});
    delivery d;
    if (auto url = check_callback_url(cb.url, opts.policy); !url) {
      d.retryable = false;
      d.error = url.error().message;
    } else {
      auto raced = co_await (until_cancelled(stop_timer) ||
                             deliver(*url, body, id, opts.callback_secret, opts.policy, opts.resolve));
      if (raced.index() == 0) {
        delivering.erase(id);  // shutting down: the callback stays pending and resumes at the next start
        co_return;
      }
      d = std::move(std::get<1>(raced));
    }
    auto const now = now_ms();
    cb.attempts += 1;
    cb.last_attempt_at = now;
    char const* counted = "delivered";
    if (d.delivered) {
      cb.status = callback_status::delivered;
      cb.delivered_at = now;
      cb.last_error.reset();
    } else {
      cb.last_error = d.error.substr(0, utf8_safe_prefix(d.error, 1024));
      if (!d.retryable || cb.attempts >= opts.max_callback_attempts) {
        cb.status = callback_status::failed;
        counted = "failed";
      } else {
        cb.next_attempt_at = now + backoff(cb.attempts, opts.poll, jitter()).count();
        counted = "retried";
      }
    }
    if (auto r = co_await st.update_callback(id, cb); !r)
      log.error("recording a callback failed", {{"jobId", id}, {"reason", r.error().message}});
    callback_counters.at(counted).inc();
    auto const level = d.delivered ? telemetry::level::debug : telemetry::level::warn;
    if (log.enabled(level))
      log.log(level, "job callback",
              {{"jobId", id},
               {"outcome", counted},
               {"attempt", cb.attempts},
               {"status", d.status},
               {"reason", d.error}});
    delivering.erase(id);
    wake();
  }

  asio::awaitable<void> stop(std::chrono::milliseconds grace) {
    auto self = shared_from_this();
    stopping = true;
    timer.cancel();
    stop_timer->cancel();
    auto const deadline = std::chrono::steady_clock::now() + grace;
    // Running jobs may finish within the grace; then whatever is left is aborted and re-queued.
    while ((!running.empty() || !loop_done) && std::chrono::steady_clock::now() < deadline) {
      idle_waiter = std::make_shared<asio::steady_timer>(ex);
      idle_waiter->expires_at(deadline);
      co_await idle_waiter->async_wait(use_tuple);
    }
    for (auto& [id, entry] : running) {
      entry->requeue = true;
      entry->abort->cancel();
    }
    // The aborted attempts record themselves (a store write each): wait for that, boundedly.
    auto const after = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while ((!running.empty() || !loop_done) && std::chrono::steady_clock::now() < after) {
      idle_waiter = std::make_shared<asio::steady_timer>(ex);
      idle_waiter->expires_at(after);
      co_await idle_waiter->async_wait(use_tuple);
    }
    idle_waiter.reset();
  }
};

dispatcher::dispatcher(asio::any_io_executor ex, store& s, run_fn run, dispatcher_options opts,
                       telemetry::registry& metrics, telemetry::logger& log)
    : impl_(std::make_shared<impl>(ex, s, std::move(run), std::move(opts), metrics, log)) {}

dispatcher::~dispatcher() = default;

void dispatcher::start() {
  impl_->loop_done = false;
  impl_->spawn(impl_->loop(), "dispatch loop");
}

void dispatcher::wake() noexcept {
  impl_->wake();
}

void dispatcher::abort(std::string const& id) noexcept {
  auto it = impl_->running.find(id);
  if (it != impl_->running.end()) it->second->abort->cancel();
}

asio::awaitable<void> dispatcher::stop(std::chrono::milliseconds grace) {
  co_await impl_->stop(grace);
}

std::uint32_t dispatcher::running() const noexcept {
  return static_cast<std::uint32_t>(impl_->running.size());
}

}  // namespace ray::jobs
