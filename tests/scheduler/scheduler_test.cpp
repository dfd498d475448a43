#include "ray/scheduler/scheduler.hpp"

#include <gtest/gtest.h>

#include <deque>
#include <map>
#include <random>
#include <set>

namespace sch = ray::scheduler;
using namespace std::chrono_literals;
using ray::errc;
using ray::config::lane;

namespace {

sch::limits test_limits() {
  sch::limits l;
  l.max_queue = 16;
  l.max_queued_tokens = 10'000;
  l.concurrency = 1;
  l.max_inflight_tokens = 1'000;
  l.affinity_lookahead = 8;
  l.short_job_max_tokens = 96;
  l.starvation = 2'000ms;
  l.batch_window = 0ms;
  return l;
}

sch::item job(std::uint64_t id, std::uint64_t cost, lane ln = lane::draft, std::uint64_t key = 0,
              std::optional<std::uint32_t> slot = {}) {
  return sch::item{.id = id, .cost = cost, .lane = ln, .affinity_key = key, .preferred_slot = slot};
}

// Admits and asserts success.
void admit(sch::scheduler& s, sch::item const& it) {
  auto r = s.admit(it);
  ASSERT_TRUE(r.has_value()) << r.error().message;
}

// Occupies the only slot (concurrency 1) with item `id` so later arrivals queue up.
void occupy(sch::scheduler& s, std::uint64_t id, std::uint64_t cost = 1) {
  admit(s, job(id, cost));
  ASSERT_EQ(s.next(), id);
}

std::uint64_t detail_u64(ray::error const& e, char const* key) {
  return e.details.at(key).to_number<std::uint64_t>();
}

}  // namespace

// -----------------------------------------------------------------------------------------------------------
// Limits and lanes

TEST(SchedulerLimits, FromConfigCapsConcurrencyAtBackendSlotsAndInflightTokensAtTheKvPool) {
  ray::config::config cfg;
  cfg.scheduler.concurrency = 4;
  cfg.scheduler.max_inflight_tokens = 8'000;
  cfg.scheduler.max_queue = 64;
  cfg.scheduler.max_queued_tokens = 24'000;
  cfg.scheduler.affinity_lookahead = 24;
  cfg.scheduler.short_job_max_tokens = 80;
  cfg.scheduler.starvation_ms = 1'500;
  cfg.scheduler.batch_window_ms = 10;

  auto const capped = sch::limits::from(cfg, 2, 3'072);
  EXPECT_EQ(capped.concurrency, 2u);
  EXPECT_EQ(capped.max_inflight_tokens, 3'072u);
  EXPECT_EQ(capped.max_queue, 64u);
  EXPECT_EQ(capped.max_queued_tokens, 24'000u);
  EXPECT_EQ(capped.affinity_lookahead, 24u);
  EXPECT_EQ(capped.short_job_max_tokens, 80u);
  EXPECT_EQ(capped.starvation, 1'500ms);
  EXPECT_EQ(capped.batch_window, 10ms);

  auto const unknown_backend = sch::limits::from(cfg, 0, 0);
  EXPECT_EQ(unknown_backend.concurrency, 4u);
  EXPECT_EQ(unknown_backend.max_inflight_tokens, 8'000u);

  auto const larger_backend = sch::limits::from(cfg, 8, 65'536);
  EXPECT_EQ(larger_backend.concurrency, 4u);
  EXPECT_EQ(larger_backend.max_inflight_tokens, 8'000u);
}

TEST(SchedulerLimits, ShortLaneIsJsonModeOrFewMaxTokensOrAShortTemplate) {
  EXPECT_EQ(sch::classify_lane(true, 500, std::nullopt, 96), lane::short_lane);
  EXPECT_EQ(sch::classify_lane(false, 96, std::nullopt, 96), lane::short_lane);
  EXPECT_EQ(sch::classify_lane(false, 97, std::nullopt, 96), lane::draft);
  EXPECT_EQ(sch::classify_lane(false, 500, lane::short_lane, 96), lane::short_lane);
  EXPECT_EQ(sch::classify_lane(false, 500, lane::draft, 96), lane::draft);
}

// -----------------------------------------------------------------------------------------------------------
// Budgets

TEST(SchedulerBudgets, ACostAboveTheInflightBudgetIsRejectedWith413AndTheNumbers) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.max_inflight_tokens = 1'000;
  l.max_queued_tokens = 5'000;
  sch::scheduler s(l, clock);

  auto r = s.admit(job(1, 1'001));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, errc::request_token_budget_exceeded);
  EXPECT_EQ(detail_u64(r.error(), "requestTokens"), 1'001u);
  EXPECT_EQ(detail_u64(r.error(), "budgetTokens"), 1'000u);
  EXPECT_EQ(detail_u64(r.error(), "maxInflightTokens"), 1'000u);
  EXPECT_EQ(detail_u64(r.error(), "maxQueuedTokens"), 5'000u);
  EXPECT_FALSE(r.error().retry_after_ms.has_value());

  EXPECT_TRUE(s.admit(job(2, 1'000)).has_value());  // exactly the budget fits
  EXPECT_EQ(s.stats().rejected_token_budget, 1u);
}

TEST(SchedulerBudgets, ACostAboveTheQueuedBudgetIsRejectedWith413EvenWhenTheInflightBudgetIsLarger) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.max_inflight_tokens = 1'000;
  l.max_queued_tokens = 800;
  sch::scheduler s(l, clock);

  auto r = s.admit(job(1, 900));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, errc::request_token_budget_exceeded);
  EXPECT_EQ(detail_u64(r.error(), "budgetTokens"), 800u);
}

TEST(SchedulerBudgets, AFullQueueByCountIsRejectedWithQueueFullDetailsAndRetryAfter) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.max_queue = 2;
  sch::scheduler s(l, clock);
  admit(s, job(1, 100));
  admit(s, job(2, 150));

  auto r = s.admit(job(3, 10));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, errc::queue_full);
  EXPECT_EQ(detail_u64(r.error(), "queueDepth"), 2u);
  EXPECT_EQ(detail_u64(r.error(), "maxQueue"), 2u);
  EXPECT_EQ(detail_u64(r.error(), "queuedTokens"), 250u);
  EXPECT_EQ(detail_u64(r.error(), "maxQueuedTokens"), 10'000u);
  EXPECT_EQ(detail_u64(r.error(), "requestTokens"), 10u);
  EXPECT_EQ(r.error().details.at("limit").as_string(), "maxQueue");
  ASSERT_TRUE(r.error().retry_after_ms.has_value());
  EXPECT_DOUBLE_EQ(*r.error().retry_after_ms, 3'000);  // 2 ahead + 1 at 1/s without history
  EXPECT_EQ(s.stats().rejected_queue_count, 1u);
}

TEST(SchedulerBudgets, AFullQueueByTokensIsRejectedWithQueueFullNamingTheTokenLimit) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.max_queued_tokens = 1'000;
  sch::scheduler s(l, clock);
  admit(s, job(1, 700));

  auto r = s.admit(job(2, 301));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, errc::queue_full);
  EXPECT_EQ(detail_u64(r.error(), "queuedTokens"), 700u);
  EXPECT_EQ(r.error().details.at("limit").as_string(), "maxQueuedTokens");
  EXPECT_DOUBLE_EQ(*r.error().retry_after_ms, 2'000);
  EXPECT_EQ(s.stats().rejected_queue_tokens, 1u);

  EXPECT_TRUE(s.admit(job(3, 300)).has_value());  // exactly filling the budget is allowed
}

TEST(SchedulerBudgets, TheTokenBudgetCheckComesBeforeTheQueueFullCheck) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.max_queue = 1;
  sch::scheduler s(l, clock);
  admit(s, job(1, 10));
  EXPECT_EQ(s.admit(job(2, 5'000)).error().code, errc::request_token_budget_exceeded);
  EXPECT_EQ(s.admit(job(3, 10)).error().code, errc::queue_full);
}

TEST(SchedulerBudgets, InFlightItemsDoNotCountAgainstTheQueueBudgets) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.max_queue = 1;
  l.max_queued_tokens = 1'000;
  sch::scheduler s(l, clock);
  occupy(s, 1, 900);
  EXPECT_TRUE(s.admit(job(2, 1'000)).has_value());
  auto const st = s.stats();
  EXPECT_EQ(st.queue_depth, 1u);
  EXPECT_EQ(st.queued_tokens, 1'000u);
  EXPECT_EQ(st.in_flight, 1u);
  EXPECT_EQ(st.in_flight_tokens, 900u);
}

TEST(SchedulerBudgets, NeverMoreThanConcurrencyItemsAreInFlight) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.concurrency = 2;
  sch::scheduler s(l, clock);
  for (std::uint64_t id = 1; id <= 4; ++id)
    admit(s, job(id, 10));
  EXPECT_TRUE(s.next().has_value());
  EXPECT_TRUE(s.next().has_value());
  EXPECT_FALSE(s.next().has_value());
  EXPECT_EQ(s.stats().in_flight, 2u);
  EXPECT_TRUE(s.complete(1));
  EXPECT_TRUE(s.next().has_value());
  EXPECT_FALSE(s.next().has_value());
}

TEST(SchedulerBudgets, ADuplicateLiveIdIsACallerBug) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  admit(s, job(7, 10));
  EXPECT_DEBUG_DEATH(
      {
        auto r = s.admit(job(7, 10));
        EXPECT_EQ(r.error().code, errc::invalid_request);
      },
      "duplicate");
}

TEST(SchedulerBudgets, CompleteOnlyEndsInFlightItems) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  admit(s, job(1, 10));
  EXPECT_FALSE(s.complete(1));  // still queued
  EXPECT_FALSE(s.complete(99));
  ASSERT_EQ(s.next(), 1u);
  EXPECT_TRUE(s.complete(1));
  EXPECT_FALSE(s.complete(1));
  EXPECT_EQ(s.stats().completed, 1u);
}

// -----------------------------------------------------------------------------------------------------------
// Cancellation

TEST(SchedulerCancel, ACancelledQueuedItemFreesItsTokensAtOnceSoARejectedItemThenAdmits) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.max_queued_tokens = 1'000;
  sch::scheduler s(l, clock);
  admit(s, job(1, 600));
  ASSERT_EQ(s.admit(job(2, 500)).error().code, errc::queue_full);

  EXPECT_EQ(s.cancel(1), sch::cancel_outcome::removed_from_queue);
  EXPECT_EQ(s.stats().queued_tokens, 0u);
  EXPECT_EQ(s.stats().queue_depth, 0u);
  EXPECT_TRUE(s.admit(job(2, 500)).has_value());
  EXPECT_EQ(s.next(), 2u);  // the cancelled item is never dispatched
  EXPECT_EQ(s.stats().cancelled_queued, 1u);
}

TEST(SchedulerCancel, ACancelledInFlightItemFreesItsSlotAndTokens) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  occupy(s, 1, 800);
  admit(s, job(2, 300));
  EXPECT_FALSE(s.next().has_value());

  EXPECT_EQ(s.cancel(1), sch::cancel_outcome::released_in_flight);
  EXPECT_EQ(s.stats().in_flight_tokens, 0u);
  EXPECT_EQ(s.next(), 2u);
  EXPECT_EQ(s.stats().cancelled_in_flight, 1u);
}

TEST(SchedulerCancel, CancellingAnUnknownOrFinishedIdIsHarmless) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  EXPECT_EQ(s.cancel(42), sch::cancel_outcome::unknown);
  occupy(s, 1);
  ASSERT_TRUE(s.complete(1));
  EXPECT_EQ(s.cancel(1), sch::cancel_outcome::unknown);
  admit(s, job(2, 10));
  EXPECT_EQ(s.cancel(2), sch::cancel_outcome::removed_from_queue);
  EXPECT_EQ(s.cancel(2), sch::cancel_outcome::unknown);
}

TEST(SchedulerCancel, CancellingAnItemInTheMiddleKeepsTheOthersInArrivalOrder) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  occupy(s, 100);
  for (std::uint64_t id = 1; id <= 4; ++id) {
    admit(s, job(id, 10));
    clock.advance(1ms);
  }
  EXPECT_EQ(s.cancel(2), sch::cancel_outcome::removed_from_queue);
  EXPECT_EQ(s.cancel(4), sch::cancel_outcome::removed_from_queue);
  std::vector<std::uint64_t> order;
  ASSERT_TRUE(s.complete(100));
  while (auto id = s.next()) {
    order.push_back(*id);
    ASSERT_TRUE(s.complete(*id));
  }
  EXPECT_EQ(order, (std::vector<std::uint64_t>{1, 3}));
}

// -----------------------------------------------------------------------------------------------------------
// Ordering: token fit, lanes, affinity

TEST(SchedulerOrder, ASmallJobOvertakesALargeHeadOfLineJobThatDoesNotFitTheInFlightBudget) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.concurrency = 2;
  l.max_inflight_tokens = 1'000;
  sch::scheduler s(l, clock);
  admit(s, job(1, 600));
  ASSERT_EQ(s.next(), 1u);

  admit(s, job(2, 600));  // head of line, does not fit the 400 left
  clock.advance(10ms);
  admit(s, job(3, 100));
  EXPECT_EQ(s.next(), 3u);
  EXPECT_FALSE(s.next().has_value());  // concurrency reached

  ASSERT_TRUE(s.complete(1));
  EXPECT_EQ(s.next(), 2u);  // fits now
}

TEST(SchedulerOrder, WithoutOtherDifferencesTheOlderItemGoesFirst) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  occupy(s, 100);
  admit(s, job(1, 10));
  admit(s, job(2, 10));  // same arrival instant: arrival order breaks the tie
  clock.advance(5ms);
  admit(s, job(3, 10));
  std::vector<std::uint64_t> order;
  ASSERT_TRUE(s.complete(100));
  while (auto id = s.next()) {
    order.push_back(*id);
    ASSERT_TRUE(s.complete(*id));
  }
  EXPECT_EQ(order, (std::vector<std::uint64_t>{1, 2, 3}));
}

TEST(SchedulerOrder, AShortJobGoesBeforeADraftThatWaitedLessThanTheShortLaneBonusLonger) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  occupy(s, 100);
  admit(s, job(1, 10, lane::draft));
  clock.advance(sch::short_lane_bonus - 1ms);
  admit(s, job(2, 10, lane::short_lane));
  ASSERT_TRUE(s.complete(100));
  EXPECT_EQ(s.next(), 2u);
}

TEST(SchedulerOrder, ADraftThatWaitedLongerThanTheShortLaneBonusGoesFirst) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  occupy(s, 100);
  admit(s, job(1, 10, lane::draft));
  clock.advance(sch::short_lane_bonus + 1ms);
  admit(s, job(2, 10, lane::short_lane));
  ASSERT_TRUE(s.complete(100));
  EXPECT_EQ(s.next(), 1u);
}

TEST(SchedulerOrder, AnItemWithTheSameAffinityKeyAsTheLastDispatchIsPreferred) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  admit(s, job(100, 10, lane::draft, 7));
  ASSERT_EQ(s.next(), 100u);  // last dispatched key: 7
  admit(s, job(1, 10, lane::draft, 9));
  clock.advance(sch::same_key_as_last_bonus - 1ms);
  admit(s, job(2, 10, lane::draft, 7));
  ASSERT_TRUE(s.complete(100));
  EXPECT_EQ(s.next(), 2u);
}

TEST(SchedulerOrder, TheSameKeyPreferenceIsWorthNoMoreThanItsBonusInWaitingTime) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  admit(s, job(100, 10, lane::draft, 7));
  ASSERT_EQ(s.next(), 100u);
  admit(s, job(1, 10, lane::draft, 9));
  clock.advance(sch::same_key_as_last_bonus + 1ms);
  admit(s, job(2, 10, lane::draft, 7));
  ASSERT_TRUE(s.complete(100));
  EXPECT_EQ(s.next(), 1u);
}

TEST(SchedulerOrder, TheMostCommonAffinityKeyInTheWindowIsPreferred) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  occupy(s, 100);  // key 0: no "last key"
  admit(s, job(1, 10, lane::draft, 5));
  clock.advance(sch::common_key_bonus - 1ms);
  admit(s, job(2, 10, lane::draft, 6));
  admit(s, job(3, 10, lane::draft, 6));
  ASSERT_TRUE(s.complete(100));
  EXPECT_EQ(s.next(), 2u);  // key 6 appears twice; 2 is the older of the two
  ASSERT_TRUE(s.complete(2));
  EXPECT_EQ(s.next(), 3u);  // now 3 has the same key as the last dispatch
}

TEST(SchedulerOrder, AKeySeenOnceIsNotCommonAndKeyZeroEarnsNoAffinity) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  occupy(s, 100);
  admit(s, job(1, 10, lane::draft, 0));
  clock.advance(1ms);
  admit(s, job(2, 10, lane::draft, 0));
  admit(s, job(3, 10, lane::draft, 8));
  ASSERT_TRUE(s.complete(100));
  EXPECT_EQ(s.next(), 1u);  // two items without a key are not a "common key"; 3's single key earns nothing
}

TEST(SchedulerOrder, AnItemWhosePreferredSlotIsIdleIsPreferred) {
  struct case_t {
    sch::slot_mask mask;
    std::uint64_t expected;
  };
  for (auto const [mask, expected] : {case_t{0b01, 2}, case_t{0b10, 1}, case_t{0b00, 1}}) {
    ray::manual_clock clock;
    sch::scheduler s(test_limits(), clock);
    occupy(s, 100);
    admit(s, job(1, 10, lane::draft, 0, 1));
    clock.advance(sch::preferred_slot_idle_bonus - 1ms);
    admit(s, job(2, 10, lane::draft, 0, 0));
    ASSERT_TRUE(s.complete(100));
    EXPECT_EQ(s.next(mask), expected) << "idle mask " << mask;
  }
}

TEST(SchedulerOrder, OnlyTheFirstLookaheadItemsOfEachLaneAreCandidates) {
  struct case_t {
    std::uint32_t lookahead;
    std::uint64_t expected;
  };
  for (auto const [lookahead, expected] : {case_t{1, 1}, case_t{2, 2}}) {
    ray::manual_clock clock;
    auto l = test_limits();
    l.affinity_lookahead = lookahead;
    sch::scheduler s(l, clock);
    admit(s, job(100, 10, lane::draft, 7));
    ASSERT_EQ(s.next(), 100u);
    admit(s, job(1, 10, lane::draft, 9));
    clock.advance(sch::same_key_as_last_bonus / 2);
    admit(s, job(2, 10, lane::draft, 7));  // would win on affinity, but only inside the window
    ASSERT_TRUE(s.complete(100));
    EXPECT_EQ(s.next(), expected) << "lookahead " << lookahead;
  }
}

TEST(SchedulerOrder, TheLookaheadWindowIsPerLane) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.affinity_lookahead = 1;
  sch::scheduler s(l, clock);
  occupy(s, 100);
  admit(s, job(1, 10, lane::draft));
  admit(s, job(2, 10, lane::draft));
  clock.advance(1ms);
  admit(s, job(3, 10, lane::short_lane));  // third in arrival, first of its lane
  ASSERT_TRUE(s.complete(100));
  EXPECT_EQ(s.next(), 3u);
}

TEST(SchedulerOrder, WhenNothingInTheWindowFitsTheOldestItemBeyondItThatFitsGoes) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.affinity_lookahead = 1;
  l.concurrency = 2;
  sch::scheduler s(l, clock);
  occupy(s, 100, 200);  // 800 tokens of room left
  admit(s, job(1, 900, lane::short_lane));
  admit(s, job(2, 900, lane::draft));
  admit(s, job(3, 100, lane::draft));
  admit(s, job(4, 50, lane::draft));
  EXPECT_EQ(s.next(), 3u);
  EXPECT_EQ(s.stats().dispatched_fallback, 1u);
}

// -----------------------------------------------------------------------------------------------------------
// Starvation

TEST(SchedulerStarvation, AnItemThatWaitedPastStarvationReservesTheBudgetUntilItFits) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.concurrency = 2;
  sch::scheduler s(l, clock);
  occupy(s, 1, 600);
  admit(s, job(2, 600));
  clock.advance(l.starvation);
  admit(s, job(3, 100, lane::short_lane));
  EXPECT_EQ(s.next(), 3u);  // exactly at the threshold: not yet starved, the small job overtakes

  ASSERT_TRUE(s.complete(3));
  clock.advance(1ms);
  admit(s, job(4, 100, lane::short_lane));
  EXPECT_FALSE(s.next().has_value());  // 2 is starved and does not fit: nothing passes it
  ASSERT_TRUE(s.complete(1));
  EXPECT_EQ(s.next(), 2u);  // goes as soon as it fits
  EXPECT_EQ(s.stats().dispatched_starved, 1u);
  EXPECT_EQ(s.next(), 4u);
}

TEST(SchedulerStarvation, AStarvedItemGoesBeforeBetterScoredItems) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  admit(s, job(100, 10, lane::draft, 7));
  ASSERT_EQ(s.next(), 100u);
  admit(s, job(1, 10, lane::draft, 1));
  clock.advance(test_limits().starvation + 1ms);
  admit(s, job(2, 10, lane::short_lane, 7, 0));  // short, same key as last, idle preferred slot
  ASSERT_TRUE(s.complete(100));
  EXPECT_EQ(s.next(0b1), 1u);
}

TEST(SchedulerStarvation,
     ALargeJobUnderASteadyStreamOfSmallJobsIsDispatchedWithinStarvationPlusOneServiceTime) {
  // Two slots, small jobs every 200 ms that take 300 ms: at least one small job is always in flight, so a job
  // needing the whole in-flight budget only fits when the small ones stop being dispatched past it.
  ray::manual_clock clock;
  auto l = test_limits();
  l.concurrency = 2;
  l.max_inflight_tokens = 1'000;
  l.max_queue = 64;
  l.max_queued_tokens = 100'000;
  sch::scheduler s(l, clock);
  constexpr auto service = 300ms;
  constexpr auto small_every = 200ms;
  constexpr auto large_at = 1'000ms;
  constexpr std::uint64_t large_id = 1'000'000;

  std::deque<std::pair<std::chrono::milliseconds, std::uint64_t>> running;  // (finish time, id)
  std::optional<std::chrono::milliseconds> large_dispatched;
  std::uint64_t small_before_large = 0;
  std::uint64_t next_id = 1;
  for (auto t = 0ms; t < 10'000ms && !large_dispatched; t += 1ms) {
    while (!running.empty() && running.front().first <= t) {
      ASSERT_TRUE(s.complete(running.front().second));
      running.pop_front();
    }
    if (t % small_every == 0ms) admit(s, job(next_id++, 100, lane::short_lane));
    if (t == large_at) admit(s, job(large_id, 1'000, lane::draft));
    while (auto id = s.next()) {
      if (*id == large_id) {
        large_dispatched = t;
        break;
      }
      if (t > large_at) ++small_before_large;
      running.emplace_back(t + service, *id);
    }
    ASSERT_LE(s.stats().in_flight_tokens, l.max_inflight_tokens);
    clock.advance(1ms);
  }
  ASSERT_TRUE(large_dispatched.has_value());
  auto const waited = *large_dispatched - large_at;
  EXPECT_GT(waited, l.starvation);  // the stream really did keep it out until it starved…
  EXPECT_GE(small_before_large, 8u);
  EXPECT_LE(waited, l.starvation + service);  // …and then it went within one service time
}

// -----------------------------------------------------------------------------------------------------------
// Batch window

TEST(SchedulerBatchWindow, ALoneRequestIsNeverDelayed) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.batch_window = 10ms;
  sch::scheduler s(l, clock);
  admit(s, job(1, 10));
  EXPECT_EQ(s.dispatch_not_before(), ray::clock::time_point::min());
  EXPECT_FALSE(s.wake_at().has_value());
  EXPECT_EQ(s.next(), 1u);
}

TEST(SchedulerBatchWindow, WithTwoWaitingDispatchWaitsUntilTheOldestHasWaitedTheWindow) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.batch_window = 10ms;
  sch::scheduler s(l, clock);
  occupy(s, 100);
  auto const t0 = clock.now();
  admit(s, job(1, 10));
  clock.advance(3ms);
  admit(s, job(2, 10, lane::short_lane));
  EXPECT_EQ(s.dispatch_not_before(), t0 + 10ms);
  EXPECT_FALSE(s.wake_at().has_value());  // no free slot: time alone changes nothing

  clock.advance(1ms);
  ASSERT_TRUE(s.complete(100));
  EXPECT_FALSE(s.next().has_value());
  EXPECT_EQ(s.wake_at(), t0 + 10ms);

  clock.advance(5ms);  // t0 + 9 ms
  EXPECT_FALSE(s.next().has_value());
  clock.advance(1ms);
  EXPECT_EQ(s.next(), 2u);
  EXPECT_FALSE(s.wake_at().has_value());
  // One left waiting: a lone request is not held.
  ASSERT_TRUE(s.complete(2));
  EXPECT_EQ(s.next(), 1u);
}

TEST(SchedulerBatchWindow, ItDoesNotDelayItemsThatAlreadyWaitedLongerThanTheWindow) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.batch_window = 10ms;
  sch::scheduler s(l, clock);
  occupy(s, 100);
  admit(s, job(1, 10));
  clock.advance(50ms);
  admit(s, job(2, 10));
  ASSERT_TRUE(s.complete(100));
  EXPECT_EQ(s.next(), 1u);
}

TEST(SchedulerBatchWindow, AZeroWindowNeverDelays) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  occupy(s, 100);
  admit(s, job(1, 10));
  admit(s, job(2, 10));
  ASSERT_TRUE(s.complete(100));
  EXPECT_EQ(s.dispatch_not_before(), ray::clock::time_point::min());
  EXPECT_EQ(s.next(), 1u);
}

// -----------------------------------------------------------------------------------------------------------
// Drain rate and Retry-After

namespace {
// Runs `n` items one at a time, each completing `interval` after the previous completion.
void complete_at_intervals(sch::scheduler& s, ray::manual_clock& clock, std::uint64_t first_id, int n,
                           std::chrono::milliseconds interval) {
  for (int i = 0; i < n; ++i) {
    admit(s, job(first_id + i, 10));
    ASSERT_EQ(s.next(), first_id + i);
    clock.advance(interval);
    ASSERT_TRUE(s.complete(first_id + i));
  }
}
}  // namespace

TEST(SchedulerRetryAfter, WithoutHistoryTheRateIsOnePerSecond) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  EXPECT_DOUBLE_EQ(s.completion_rate(), 1.0);
  EXPECT_DOUBLE_EQ(s.retry_after_ms(0), 1'000);
  EXPECT_DOUBLE_EQ(s.retry_after_ms(4), 5'000);
  occupy(s, 1);
  clock.advance(500ms);  // in flight, but not for longer than the default interval
  EXPECT_DOUBLE_EQ(s.completion_rate(), 1.0);
  EXPECT_DOUBLE_EQ(s.stats().completions_per_second, 1.0);
}

TEST(SchedulerRetryAfter, TwoCompletionsPerSecondAndNineAheadGiveFiveSeconds) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  complete_at_intervals(s, clock, 1, 5, 500ms);
  EXPECT_DOUBLE_EQ(s.completion_rate(), 2.0);
  EXPECT_DOUBLE_EQ(s.retry_after_ms(9), 5'000);
  EXPECT_DOUBLE_EQ(s.retry_after_ms(2), 1'500);  // unrounded; the HTTP layer sends Retry-After: 2
}

TEST(SchedulerRetryAfter, ItIsClampedToOneAndThirtySeconds) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  complete_at_intervals(s, clock, 1, 3, 500ms);
  EXPECT_DOUBLE_EQ(s.retry_after_ms(0), 1'000);  // 0.5 s → 1 s
  EXPECT_DOUBLE_EQ(s.retry_after_ms(100), 30'000);
}

TEST(SchedulerRetryAfter, TheQueueFullErrorCarriesTheEstimateForTheItemsAhead) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.max_queue = 9;
  sch::scheduler s(l, clock);
  complete_at_intervals(s, clock, 1, 4, 500ms);
  for (std::uint64_t id = 10; id < 19; ++id)
    admit(s, job(id, 10));
  auto r = s.admit(job(99, 10));
  ASSERT_EQ(r.error().code, errc::queue_full);
  EXPECT_DOUBLE_EQ(*r.error().retry_after_ms, 5'000);
}

TEST(SchedulerRetryAfter, TheEwmaWeightsTheNewestIntervalByAlpha) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  complete_at_intervals(s, clock, 1, 1, 1'000ms);  // seeds the mean with 1 s
  complete_at_intervals(s, clock, 2, 1, 500ms);
  double const mean = sch::completion_interval_alpha * 0.5 + (1 - sch::completion_interval_alpha) * 1.0;
  EXPECT_DOUBLE_EQ(s.completion_rate(), 1.0 / mean);
}

TEST(SchedulerRetryAfter, IdleTimeBetweenBusySpellsDoesNotLowerTheRate) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  complete_at_intervals(s, clock, 1, 3, 500ms);
  clock.advance(60s);
  complete_at_intervals(s, clock, 10, 1, 500ms);
  EXPECT_DOUBLE_EQ(s.completion_rate(), 2.0);
}

TEST(SchedulerRetryAfter, ConcurrentCompletionsCountAsTheCombinedRate) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.concurrency = 2;
  sch::scheduler s(l, clock);
  // Two slots, each finishing a job per second, staggered by half a second: 2 completions/s overall.
  admit(s, job(1, 10));
  ASSERT_EQ(s.next(), 1u);
  clock.advance(500ms);
  std::uint64_t id = 2;
  admit(s, job(id, 10));
  ASSERT_EQ(s.next(), id);
  for (int i = 0; i < 40; ++i) {
    clock.advance(500ms);
    ASSERT_TRUE(s.complete(id - 1));
    ++id;
    admit(s, job(id, 10));
    ASSERT_EQ(s.next(), id);
  }
  // The first interval includes the first job's whole service time (1 s); later ones are 0.5 s and it fades.
  EXPECT_NEAR(s.completion_rate(), 2.0, 0.01);
}

TEST(SchedulerRetryAfter, AStalledBackendLowersTheRateWhileWorkIsInFlight) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  complete_at_intervals(s, clock, 1, 3, 500ms);
  occupy(s, 10);
  clock.advance(10s);
  EXPECT_DOUBLE_EQ(s.completion_rate(), 0.1);
  EXPECT_DOUBLE_EQ(s.retry_after_ms(0), 10'000);
}

TEST(SchedulerRetryAfter, CancellationsDoNotFeedTheEstimate) {
  ray::manual_clock clock;
  sch::scheduler s(test_limits(), clock);
  complete_at_intervals(s, clock, 1, 3, 500ms);
  occupy(s, 10);
  clock.advance(1ms);
  ASSERT_EQ(s.cancel(10), sch::cancel_outcome::released_in_flight);
  EXPECT_DOUBLE_EQ(s.completion_rate(), 2.0);
}

// -----------------------------------------------------------------------------------------------------------
// Stats and limits changes

TEST(SchedulerStats, ReportDepthsTokensAndCountersPerLaneAndReason) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.max_queue = 3;
  sch::scheduler s(l, clock);
  occupy(s, 1, 100);
  admit(s, job(2, 20, lane::short_lane));
  admit(s, job(3, 30, lane::draft));
  admit(s, job(4, 40, lane::draft));
  (void)s.admit(job(5, 10));      // queue full
  (void)s.admit(job(6, 50'000));  // token budget
  ASSERT_EQ(s.cancel(4), sch::cancel_outcome::removed_from_queue);

  auto const st = s.stats();
  EXPECT_EQ(st.queue_depth, 2u);
  EXPECT_EQ(st.short_depth, 1u);
  EXPECT_EQ(st.draft_depth, 1u);
  EXPECT_EQ(st.queued_tokens, 50u);
  EXPECT_EQ(st.in_flight, 1u);
  EXPECT_EQ(st.in_flight_tokens, 100u);
  EXPECT_EQ(st.admitted, 4u);
  EXPECT_EQ(st.dispatched, 1u);
  EXPECT_EQ(st.dispatched_scored, 1u);
  EXPECT_EQ(st.cancelled_queued, 1u);
  EXPECT_EQ(st.rejected_queue_count, 1u);
  EXPECT_EQ(st.rejected_token_budget, 1u);
}

TEST(SchedulerLimits, SetLimitsRemovesWaitingItemsThatNoLongerFitAndGrowsCapacity) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.max_queue = 2;
  sch::scheduler s(l, clock);
  occupy(s, 1, 900);
  admit(s, job(2, 900));
  admit(s, job(3, 100));

  l.max_inflight_tokens = 500;
  l.max_queue = 200;
  auto const evicted = s.set_limits(l);
  EXPECT_EQ(evicted, (std::vector<std::uint64_t>{2}));
  EXPECT_EQ(s.current_limits().max_inflight_tokens, 500u);
  EXPECT_EQ(s.stats().queue_depth, 1u);
  EXPECT_EQ(s.stats().queued_tokens, 100u);
  EXPECT_EQ(s.stats().in_flight_tokens, 900u);  // in flight is untouched
  EXPECT_FALSE(s.next().has_value());

  for (std::uint64_t id = 10; id < 209; ++id)
    admit(s, job(id, 10));
  EXPECT_EQ(s.admit(job(999, 10)).error().code, errc::queue_full);
  ASSERT_TRUE(s.complete(1));
  EXPECT_EQ(s.next(), 3u);
}

// A random walk of admits, dispatches, completions and cancellations checked against a plain model: the
// totals always match and no budget is ever exceeded (this also exercises the id table's deletions).
TEST(SchedulerModel, RandomOperationsKeepTheBooksAndTheBudgets) {
  ray::manual_clock clock;
  auto l = test_limits();
  l.max_queue = 40;
  l.concurrency = 3;
  l.max_inflight_tokens = 1'000;
  l.max_queued_tokens = 4'000;
  l.affinity_lookahead = 4;
  l.batch_window = 3ms;
  l.starvation = 200ms;
  sch::scheduler s(l, clock);
  std::mt19937_64 rng(12345);
  std::map<std::uint64_t, std::uint64_t> queued, running;  // id → cost
  std::uint64_t next_id = 1;
  for (int step = 0; step < 20'000; ++step) {
    switch (rng() % 6) {
      case 0:
      case 1: {
        std::uint64_t const id = (next_id++) * 0x10000;  // ids that share low bits
        std::uint64_t const cost = 1 + rng() % 1'100;
        auto r = s.admit(job(id, cost, rng() % 2 ? lane::short_lane : lane::draft, rng() % 4, rng() % 4));
        if (r) queued[id] = cost;
        break;
      }
      case 2:
        while (auto id = s.next(rng() % 16)) {
          ASSERT_EQ(queued.count(*id), 1u);
          running[*id] = queued[*id];
          queued.erase(*id);
        }
        break;
      case 3:
        if (!running.empty()) {
          auto it = std::next(running.begin(), static_cast<long>(rng() % running.size()));
          ASSERT_TRUE(s.complete(it->first));
          running.erase(it);
        }
        break;
      case 4:
        if (!queued.empty() && rng() % 2) {
          auto it = std::next(queued.begin(), static_cast<long>(rng() % queued.size()));
          ASSERT_EQ(s.cancel(it->first), sch::cancel_outcome::removed_from_queue);
          queued.erase(it);
        } else if (!running.empty()) {
          auto it = std::next(running.begin(), static_cast<long>(rng() % running.size()));
          ASSERT_EQ(s.cancel(it->first), sch::cancel_outcome::released_in_flight);
          running.erase(it);
        }
        break;
      default:
        clock.advance(std::chrono::milliseconds(rng() % 20));
    }
    auto const st = s.stats();
    std::uint64_t qt = 0, rt = 0;
    for (auto const& [id, c] : queued)
      qt += c;
    for (auto const& [id, c] : running)
      rt += c;
    ASSERT_EQ(st.queue_depth, queued.size());
    ASSERT_EQ(st.in_flight, running.size());
    ASSERT_EQ(st.queued_tokens, qt);
    ASSERT_EQ(st.in_flight_tokens, rt);
    ASSERT_LE(st.in_flight, l.concurrency);
    ASSERT_LE(st.in_flight_tokens, l.max_inflight_tokens);
    ASSERT_LE(st.queue_depth, l.max_queue);
    ASSERT_LE(st.queued_tokens, l.max_queued_tokens);
    ASSERT_EQ(st.short_depth + st.draft_depth, st.queue_depth);
  }
  EXPECT_GT(s.stats().dispatched_scored, 100u);
  EXPECT_GT(s.stats().dispatched_starved, 0u);
  EXPECT_GT(s.stats().completed, 100u);
}
