// Unit tests of ray::runtime (src/ray/runtime): clients that leave, backends that fail, budgets that
// shrink under queued work, against the backend double of runtime_harness.hpp.
#include "runtime_harness.hpp"

#include <gtest/gtest.h>

using namespace runtime_test;

// ---- 5. cancellation -------------------------------------------------------------------------------------

TEST(RuntimeCancel, LastWaiterLeavingCancelsTheBackendCall) {
  harness h;
  auto* sig = h.signal();
  auto a = h.infer(infer_req("abandoned"), sig);
  h.settle();
  ASSERT_EQ(h.be.calls.size(), 1u);
  sig->emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(h.run_until([&] { return a->done && h.be.calls[0]->cancelled && h.drained(); }));
  EXPECT_FALSE(a->escaped);
  ASSERT_FALSE(a->ok());
  EXPECT_EQ(a->error().code, errc::provider_request_failed);
  EXPECT_FALSE(h.be.calls[0]->finished);
  EXPECT_EQ(h.counter("backend.requests{outcome=cancelled}"), 1u);
  EXPECT_EQ(h.rt->cache_stats().entries, 0u);
}

// Found by the soak (Release, 48 clients): an identical request arriving just after the last waiter of a
// flight left joined that flight while it was being stopped, and was answered 502 "the client left" — though
// its own client was still there. A stopping flight is no longer joinable.
TEST(RuntimeCancel, ARequestArrivingAsTheLastWaiterLeavesIsNotAnsweredWithTheirDeparture) {
  // The newcomer arrives k handlers after the last waiter left, while the flight's stop is on its way.
  for (int k = 0; k < 12; ++k) {
    SCOPED_TRACE("k " + std::to_string(k));
    harness h;
    auto* sig = h.signal();
    auto leaver = h.infer(infer_req("same question"), sig);
    h.settle();
    ASSERT_EQ(h.be.calls.size(), 1u);
    sig->emit(asio::cancellation_type::terminal);
    h.io.restart();
    while (!leaver->done && h.io.run_one() > 0) {
    }
    ASSERT_TRUE(leaver->done);
    for (int i = 0; i < k && h.io.poll_one() > 0; ++i) {
    }
    auto newcomer = h.infer(infer_req("same question"));
    h.be.open();
    ASSERT_TRUE(h.run_until([&] { return newcomer->done && h.drained(); }));
    ASSERT_TRUE(newcomer->ok()) << newcomer->error().message;
    EXPECT_FALSE(newcomer->value().deduplicated);
  }
}

TEST(RuntimeCancel, OneOfTwoWaitersLeavingKeepsTheCallForTheOther) {
  harness h;
  auto* sig = h.signal();
  auto leaver = h.infer(infer_req("shared"), sig);  // started the flight
  auto stayer = h.infer(infer_req("shared"));       // joined it
  h.settle();
  ASSERT_EQ(h.be.calls.size(), 1u);
  sig->emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(h.run_until([&] { return leaver->done; }));
  h.settle();
  EXPECT_FALSE(h.be.calls[0]->cancelled);
  EXPECT_FALSE(stayer->done);

  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return stayer->done; }));
  ASSERT_FALSE(leaver->ok());
  EXPECT_EQ(leaver->error().code, errc::provider_request_failed);
  ASSERT_TRUE(stayer->ok());
  EXPECT_EQ(stayer->value().output, "out:shared");
  EXPECT_TRUE(h.be.calls[0]->finished);
  EXPECT_EQ(h.be.requests_total(), 1u);
  EXPECT_TRUE(h.drained());
}

TEST(RuntimeCancel, LeavingWhileQueuedFreesThePlaceAndNeverReachesTheBackend) {
  harness h([](auto& c) { c.scheduler.concurrency = 1; });
  auto* sig = h.signal();
  auto a = h.infer(infer_req("in flight"));
  auto b = h.infer(infer_req("queued then gone"), sig);
  h.settle();
  ASSERT_EQ(h.rt->stats().queue_depth, 1u);
  sig->emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(h.run_until([&] { return b->done && h.rt->stats().queue_depth == 0; }));
  EXPECT_EQ(h.rt->stats().queued_tokens, 0u);
  EXPECT_EQ(h.rt->stats().in_flight, 1u);
  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return a->done; }));
  EXPECT_TRUE(a->ok());
  EXPECT_EQ(h.be.requests_total(), 1u);
  EXPECT_TRUE(h.drained());
}

// The last waiter of a queued flight leaves at every point of the hand-over from the request ahead of it
// (k handlers between the two events, both orders): either its call never starts or it is cancelled, and
// nothing stays in flight for nobody.
// Finding (fixed: run_flight re-checks cancelled() after the dispatch wait): failed for (order 0, k 0),
// (order 1, k 0) and (order 1, k 1). The stop reaches run_flight while it awaits `dispatch || deadline` after
// pump() has already set f->dispatched; run_flight then calls generate() without checking cancelled(), and
// the cancellation, emitted before `deadline_watch || generate` started, never reaches them: the backend
// generates for nobody until it finishes or requestTimeoutMs passes, holding the slot.
TEST(RuntimeCancel, LeavingAroundDispatchNeverLeavesAnOrphanCall) {
  for (int order = 0; order < 2; ++order) {
    for (int k = 0; k < 40; ++k) {
      SCOPED_TRACE("order " + std::to_string(order) + ", k " + std::to_string(k));
      harness h([](auto& c) { c.scheduler.concurrency = 1; });
      auto* sig = h.signal();
      auto a = h.infer(infer_req("ahead"));
      auto b = h.infer(infer_req("leaves"), sig);
      h.settle();
      ASSERT_EQ(h.be.calls.size(), 1u);
      auto first = [&] {
        order == 0 ? h.be.calls[0]->release() : sig->emit(asio::cancellation_type::terminal);
      };
      auto second = [&] {
        order == 0 ? sig->emit(asio::cancellation_type::terminal) : h.be.calls[0]->release();
      };
      first();
      h.io.restart();
      for (int i = 0; i < k; ++i)
        h.io.poll_one();
      second();
      h.settle();
      ASSERT_TRUE(a->done && b->done);
      EXPECT_TRUE(a->ok());
      EXPECT_FALSE(b->ok());
      for (std::size_t i = 1; i < h.be.calls.size(); ++i)
        EXPECT_TRUE(h.be.calls[i]->cancelled) << "a call nobody waits for is still running";
      EXPECT_TRUE(h.drained()) << "in_flight " << h.rt->stats().in_flight;
    }
  }
}

// ---- 6. backend failures ---------------------------------------------------------------------------------

// Finding (fixed: guarded_run / guarded_generate turn exceptions into values): Asio 1.81's `a || b` waits
// with wait_for_one_success — an operand that throws cancels nothing and its exception is dropped when the
// other operand later succeeds. A generate() that throws synchronously escapes run_flight, and fly()'s
// `stop.wait() || run_flight(f)` then waits for a stop that only the waiters' departure brings: the waiters
// hang and the flight keeps its in-flight slot. One that throws inside its coroutine leaves
// `deadline_watch || generate` waiting for the total deadline, then answers request_timeout. A correct
// runtime answers both waiters without waiting on any timer, so the assertions run after settle().
TEST(RuntimeFailure, ThrowingBackendAnswersEveryWaiterWithAnError) {
  for (auto m : {mode::throw_now, mode::throw_inside}) {
    SCOPED_TRACE(m == mode::throw_now ? "throws from generate()" : "throws inside the coroutine");
    harness h;
    h.be.next = m;
    auto* sa = h.signal();
    auto* sb = h.signal();
    auto a = h.infer(infer_req("explodes"), sa);
    auto b = h.infer(infer_req("explodes"), sb);  // a joiner gets the same error
    h.settle();
    EXPECT_TRUE(a->done && b->done) << "waiters still waiting after the backend threw";
    EXPECT_TRUE(h.drained()) << "in_flight " << h.rt->stats().in_flight;
    if (!a->done || !b->done) {  // unstick the flight so the harness can drain
      sa->emit(asio::cancellation_type::terminal);
      sb->emit(asio::cancellation_type::terminal);
      ASSERT_TRUE(h.run_until([&] { return a->done && b->done && h.drained(); }));
      continue;
    }
    for (auto const& o : {a, b}) {
      EXPECT_FALSE(o->escaped);
      ASSERT_FALSE(o->ok());
      EXPECT_EQ(o->error().code, errc::provider_request_failed);
    }
    EXPECT_EQ(h.counter("backend.requests{outcome=error}"), 1u);
    EXPECT_EQ(h.rt->cache_stats().entries, 0u);

    // The gateway keeps serving.
    h.be.next = mode::answer;
    h.be.hold = false;
    auto c = h.infer(infer_req("explodes"));
    ASSERT_TRUE(h.run_until([&] { return c->done; }));
    EXPECT_TRUE(c->ok());
  }
}

TEST(RuntimeFailure, BackendErrorIsPassedThroughAndNotCached) {
  harness h;
  h.be.next = mode::fail;
  auto a = h.infer(infer_req("refused"));
  ASSERT_TRUE(h.run_until([&] { return a->done; }));
  ASSERT_FALSE(a->ok());
  EXPECT_EQ(a->error().code, errc::provider_upstream_error);
  EXPECT_TRUE(h.drained());
  EXPECT_EQ(h.counter("rejections{reason=provider_upstream_error}"), 1u);
  auto b = h.infer(infer_req("refused"));
  ASSERT_TRUE(h.run_until([&] { return b->done; }));
  EXPECT_FALSE(b->ok());
  EXPECT_EQ(h.be.requests_total(), 2u);
}

// ---- budgets shrinking under queued work -----------------------------------------------------------------

// Finding (fixed: refresh_limits wakes the evicted flight, which ends): a waiting flight evicted by
// set_limits() is answered 413, but its run_flight keeps waiting on `dispatch || deadline` (finish() does not
// wake it) until queueTimeoutMs, then counts a second rejection (request_timeout) and a queued cancellation
// for a request already answered.
TEST(RuntimeBudget, EvictedWaiterIsAnsweredOnceAndItsFlightEnds) {
  harness h([](auto& c) {
    c.scheduler.concurrency = 1;
    c.scheduler.queue_timeout_ms = 50;  // bounded how long the bug kept the test's context busy
  });
  auto a = h.infer(infer_req("in flight"));
  auto b = h.infer(infer_req("queued, costs about 194 tokens"));
  h.settle();
  ASSERT_EQ(h.rt->stats().queue_depth, 1u);

  h.be.desc.kv_pool = 100;  // the backend now reports a smaller KV pool
  auto small = infer_req("small");
  small.max_tokens = 10;
  auto c = h.infer(small);  // any request makes the runtime re-read the limits
  h.settle();
  ASSERT_TRUE(b->done);
  ASSERT_FALSE(b->ok());
  EXPECT_EQ(b->error().code, errc::request_token_budget_exceeded);

  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return a->done && c->done; }));
  EXPECT_TRUE(a->ok());
  EXPECT_TRUE(c->ok());
  h.settle();
  EXPECT_TRUE(h.io.stopped()) << "a flight coroutine still waits on a timer after every waiter was answered";
  h.io.restart();
  h.io.run();
  EXPECT_TRUE(h.drained());
  EXPECT_EQ(h.counter("rejections{reason=request_token_budget_exceeded}"), 1u);
  EXPECT_EQ(h.counter("rejections{reason=request_timeout}"), 0u);
  EXPECT_EQ(h.counter("cancellations{phase=queued}"), 0u);
}

// Finding (fixed: infer() and chat() turn anything their pipeline throws into an error value): an exception
// before any flight exists (here the backend's tokenizer, asked because the prompt is near the context)
// escaped the call; the router races these calls with `client_gone() || work`, where a throw does not end the
// other side, so the request waited until its client left.
TEST(RuntimeFailure, AThrowBeforeTheFlightIsAnErrorValueNotAnException) {
  harness h;
  h.be.desc.context_per_request = 64;
  h.be.throw_counting = true;
  auto o = h.infer(infer_req(std::string(200, 'n')));
  ASSERT_TRUE(h.run_until([&] { return o->done; }));
  EXPECT_FALSE(o->escaped) << "an exception escaped the runtime";
  ASSERT_TRUE(o->r.has_value());
  ASSERT_FALSE(o->ok());
  EXPECT_EQ(o->error().code, errc::provider_request_failed);
  EXPECT_NE(o->error().message.find("tokenizer exploded"), std::string::npos) << o->error().message;
  EXPECT_TRUE(h.drained());
  EXPECT_EQ(h.be.requests_total(), 0u);
}
