// ray::scheduler — the admission and dispatch decision core (shared/spec/serving-core.md, "Admission and
// scheduler"): token-aware budgets, two lanes, affinity scoring, starvation reservation, the batch window and
// the drain-rate estimate behind Retry-After.
//
// Pure and synchronous: no I/O, no timers, no Asio. The runtime owns the waiting — it calls admit() when a
// request arrives, next() whenever something may have changed (an admit, a complete, a cancel, or the time
// returned by wake_at()), and complete()/cancel() when a backend call ends or a waiter leaves.
//
// Threading: not thread-safe; confine one scheduler to one strand (the runtime's). Time comes only from the
// injected clock, which must outlive the scheduler.
//
// Cost: admit/cancel/complete are O(1); next() is O(lookahead · log lookahead), plus O(queue) only when none
// of the lookahead window fits the in-flight budget. Admitting, dispatching, completing and cancelling do not
// allocate after construction (ids are indexed in a fixed open-addressing table, items live in a fixed pool
// of max_queue + concurrency); a rejection builds its error (message, details), and set_limits() may grow the
// pool.
#pragma once

#include "ray/config/config.hpp"
#include "ray/core/core.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace ray::scheduler {

// Dispatch scoring. score = time waited + the bonuses that apply; each bonus is stated as the waiting time it
// is worth, so "bonus X" means "an item with it goes before one without it that has waited up to X longer".
// Together they are 550 ms — well under the default starvationMs (2 000), which stays the hard bound on
// unfairness.
//
// Short jobs (≤ shortJobMaxTokens, JSON classification) take a fraction of a draft's service time; letting
// one pass a draft that has waited 250 ms longer costs the draft little and saves the short job a whole
// draft's latency.
inline constexpr std::chrono::milliseconds short_lane_bonus{250};
// llama.cpp keeps the last prompt's KV in the slot (cache_prompt / cacheReuse): the same family key as the
// previous dispatch usually means the shared system prefix is not prefilled again, which on a 2-core box is
// 0.3–1 s saved.
inline constexpr std::chrono::milliseconds same_key_as_last_bonus{150};
// The item's preferred backend slot (the one holding its family's prefix) is idle right now: dispatching it
// there reuses that prefix without evicting another family's.
inline constexpr std::chrono::milliseconds preferred_slot_idle_bonus{100};
// Mild grouping of bursts: items of the key that is most common among the candidates (count ≥ 2) go first, so
// consecutive dispatches share a prefix. Smallest weight: a guess about the future, not a saving now.
inline constexpr std::chrono::milliseconds common_key_bonus{50};

// Drain-rate estimate: an EWMA of the interval between completions, with this weight on the newest interval.
inline constexpr double completion_interval_alpha = 0.2;
// Retry-After bounds (spec: an integer in [1, 30] s; OpenAI SDKs ignore ≥ 60 s).
inline constexpr double min_retry_after_ms = 1'000;
inline constexpr double max_retry_after_ms = 30'000;

// The budgets in force. Built from config by from(); tests set fields directly.
struct limits {
  std::uint32_t max_queue{32};               // waiting items
  std::uint64_t max_queued_tokens{12'000};   // waiting cost, tokens
  std::uint32_t concurrency{1};              // dispatched items
  std::uint64_t max_inflight_tokens{2'500};  // dispatched cost, tokens
  std::uint32_t affinity_lookahead{8};       // items looked at per lane per decision (≥ 1)
  std::uint32_t short_job_max_tokens{96};    // max tokens at or below which a request goes to the short lane
  std::chrono::milliseconds starvation{2'000};  // waited longer than this → the item reserves the budget
  // With ≥ 2 waiting, dispatch no earlier than the oldest arrival + this.
  std::chrono::milliseconds batch_window{0};

  // scheduler.* from cfg, with concurrency capped at backend_slots and max_inflight_tokens at kv_pool (the
  // backend's whole KV pool, ctxSize). 0 for either means unknown (a remote backend): no cap. Lookahead and
  // concurrency are at least 1.
  static limits from(config::config const& cfg, std::uint32_t backend_slots, std::uint32_t kv_pool) noexcept;

  friend bool operator==(limits const&, limits const&) = default;
};

// The lane of a request (spec): short when JSON mode, when max tokens ≤ shortJobMaxTokens, or when its
// template's lane is short; otherwise draft.
config::lane classify_lane(bool json_object, std::uint32_t max_tokens,
                           std::optional<config::lane> template_lane,
                           std::uint32_t short_job_max_tokens) noexcept;

// One request as the scheduler sees it. The id is the caller's and must be unique among live items.
struct item {
  std::uint64_t id{0};
  std::uint64_t cost{0};  // tokens: prompt estimate + max tokens
  config::lane lane{config::lane::draft};
  std::uint64_t affinity_key{0};  // family key hash; 0 = none (no affinity bonuses)
  // The backend slot holding this family's prefix, if known (< 64; larger values are ignored).
  std::optional<std::uint32_t> preferred_slot{};
};

// Idle backend slots as a bitmask: bit i set = slot i is idle. 0 = unknown / none.
using slot_mask = std::uint64_t;

struct admission {
  std::uint32_t position{0};  // waiting items ahead of this one at admission
};

enum class cancel_outcome : std::uint8_t {
  unknown,             // no live item with that id (already completed or cancelled: harmless)
  removed_from_queue,  // was waiting; its queued tokens are free
  released_in_flight,  // was dispatched; its in-flight tokens and its concurrency slot are free
};

struct queue_stats {
  std::uint32_t queue_depth{0};
  std::uint32_t in_flight{0};
  std::uint64_t queued_tokens{0};
  std::uint64_t in_flight_tokens{0};
  std::uint32_t short_depth{0};  // waiting in the short lane
  std::uint32_t draft_depth{0};  // waiting in the draft lane
  // Counters since construction.
  std::uint64_t admitted{0};
  std::uint64_t dispatched{0};           // = scored + fallback + starved
  std::uint64_t dispatched_scored{0};    // best score among the lookahead window
  std::uint64_t dispatched_fallback{0};  // nothing in the window fit; oldest item beyond it that fits
  std::uint64_t dispatched_starved{0};   // waited past `starvation`, went first
  std::uint64_t completed{0};
  std::uint64_t cancelled_queued{0};
  std::uint64_t cancelled_in_flight{0};
  std::uint64_t rejected_token_budget{0};  // 413 request_token_budget_exceeded (incl. set_limits evictions)
  std::uint64_t rejected_queue_count{0};   // 503 queue_full: maxQueue reached
  std::uint64_t rejected_queue_tokens{0};  // 503 queue_full: maxQueuedTokens reached
  double completions_per_second{1.0};      // the drain-rate estimate (1 without history)
};

class scheduler {
 public:
  scheduler(limits const& l, ray::clock const& clock);
  ~scheduler();
  scheduler(scheduler const&) = delete;
  scheduler& operator=(scheduler const&) = delete;

  // Queues an item, stamped with clock.now() as its arrival. Checks, in order:
  //  - cost > max_inflight_tokens or > max_queued_tokens → errc::request_token_budget_exceeded (413), details
  //    {requestTokens, budgetTokens (the smaller), maxInflightTokens, maxQueuedTokens};
  //  - queue_depth ≥ max_queue, or queued_tokens + cost > max_queued_tokens → errc::queue_full (503) with
  //    retry_after_ms = retry_after_ms(queue_depth) and details {queueDepth, maxQueue, queuedTokens,
  //    maxQueuedTokens, requestTokens, limit: "maxQueue" | "maxQueuedTokens"};
  //  - a duplicate live id (a caller bug; asserts in debug) → errc::invalid_request.
  // Single-flight joining and pressure shedding are the caller's, before admit.
  result<admission> admit(item const& it);

  // The item to dispatch now, if any; it moves from waiting to in flight (the caller starts its backend
  // call). Call repeatedly until it returns nothing. Returns nothing when in_flight ≥ concurrency, nothing
  // waits, the batch window is open (see dispatch_not_before), or nothing fits the in-flight token budget.
  // Choice:
  //  1. Starvation: if the oldest waiting item has waited longer than `starvation`, it reserves the budget —
  //     it is returned if it fits, else nothing is (in-flight work drains until it fits).
  //  2. Candidates: of the first `affinity_lookahead` waiting items of each lane (arrival order), those that
  //     fit max_inflight_tokens − in_flight_tokens. The best score wins (weights above); ties go to the
  //     older.
  //  3. Fallback: if no candidate fits, the oldest waiting item that fits, anywhere in the queue.
  // idle_slots marks idle backend slots for the preferred-slot bonus.
  std::optional<std::uint64_t> next(slot_mask idle_slots = 0);

  // The batch window: with ≥ 2 items waiting and batch_window > 0, oldest arrival + batch_window; otherwise
  // time_point::min() (a lone request is never delayed). next() dispatches nothing before this time.
  ray::clock::time_point dispatch_not_before() const noexcept;
  // When only the batch window keeps next() from dispatching (capacity is free and items wait), the time to
  // call next() again; otherwise nothing (the next admit/complete/cancel is what can change the answer).
  std::optional<ray::clock::time_point> wake_at() const noexcept;

  // Ends an in-flight item normally (success or backend error, not cancellation) and feeds the drain-rate
  // estimate. Returns false (and changes nothing) when the id is not in flight.
  bool complete(std::uint64_t id);

  // Removes a waiting item at once (client gone, queue deadline), or releases an in-flight one whose backend
  // call ended by cancellation. Cancellations do not feed the drain-rate estimate.
  cancel_outcome cancel(std::uint64_t id);

  // Completions per second: 1 / EWMA of the intervals between completions (alpha completion_interval_alpha;
  // the first interval seeds it). An interval is measured from the later of the previous completion and the
  // moment work went in flight after an idle spell, so idle time does not count as slowness. While work is in
  // flight, the time since the interval began is a lower bound on the current interval: a stalled backend
  // lowers the rate. 1.0 without history.
  double completion_rate() const noexcept;

  // Retry-After for a new request with `items_ahead` waiting before it: (items_ahead + 1) / rate seconds, in
  // ms, clamped to [1 000, 30 000] and not rounded (the HTTP layer sends ceil(ms / 1000) and the exact ms).
  // E.g. 2 completions/s and 9 ahead → 5 000.
  double retry_after_ms(std::uint32_t items_ahead) const noexcept;

  // Replaces the limits (e.g. once the backend reports its slots and KV pool). Waiting items whose cost no
  // longer fits either token budget are removed (counted as rejected_token_budget) and their ids returned, so
  // the caller answers them 413. Items already in flight are untouched; a lower concurrency takes effect as
  // they finish.
  std::vector<std::uint64_t> set_limits(limits const& l);
  limits const& current_limits() const noexcept;

  queue_stats stats() const noexcept;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace ray::scheduler
