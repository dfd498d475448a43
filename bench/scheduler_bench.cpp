// Micro-benchmarks of ray::scheduler: the cost of one request's trip through the decision core — admit,
// dispatch (next), complete — with 64 items waiting, at the profiles' lookahead windows (8 = tiny, 24 =
// sub1b).
//
// Target: admit + dispatch + complete under 5 µs per request with 64 queued.
#include "ray/scheduler/scheduler.hpp"

#include <benchmark/benchmark.h>

#include <cstdint>

namespace sch = ray::scheduler;
using namespace std::chrono_literals;

namespace {

constexpr std::uint32_t queued = 64;

sch::limits bench_limits(std::uint32_t lookahead) {
  sch::limits l;
  l.max_queue = 160;
  l.max_queued_tokens = 1'000'000;
  l.concurrency = 2;
  l.max_inflight_tokens = 4'096;
  l.affinity_lookahead = lookahead;
  l.starvation = 2'000ms;
  l.batch_window = 0ms;
  return l;
}

// A varied but deterministic stream: both lanes, six families, two preferred slots, costs 64–1 000 tokens.
sch::item make_item(std::uint64_t id) {
  std::uint64_t const h = id * 0x9E3779B97F4A7C15ull;
  return sch::item{.id = id,
                   .cost = 64 + (h >> 40) % 937,
                   .lane = (h >> 20) % 3 == 0 ? ray::config::lane::short_lane : ray::config::lane::draft,
                   .affinity_key = 1 + (h >> 30) % 6,
                   .preferred_slot = static_cast<std::uint32_t>((h >> 50) % 2)};
}

// One long request holds a slot and part of the in-flight budget, so fit checks and the fallback path are
// real.
void fill(sch::scheduler& s, std::uint64_t& next_id) {
  auto blocker = make_item(next_id++);
  blocker.cost = 2'048;
  (void)s.admit(blocker);
  (void)s.next();
  for (std::uint32_t i = 0; i < queued; ++i)
    (void)s.admit(make_item(next_id++));
}

template <class Clock>
void run_trip(benchmark::State& state, Clock& clock, bool advance) {
  sch::scheduler s(bench_limits(static_cast<std::uint32_t>(state.range(0))), clock);
  std::uint64_t next_id = 1;
  fill(s, next_id);
  std::uint64_t slot_mask = 0b01;
  for (auto _ : state) {
    auto admitted = s.admit(make_item(next_id++));
    benchmark::DoNotOptimize(admitted);
    auto const id = s.next(slot_mask);
    if (id) s.complete(*id);
    benchmark::DoNotOptimize(id);
    slot_mask ^= 0b11;
    if constexpr (requires { clock.advance(1ms); }) {
      if (advance) clock.advance(5ms);  // items age; the oldest cross the starvation line now and then
    }
  }
  auto const st = s.stats();
  state.counters["queue_depth"] = st.queue_depth;
  state.counters["starved_share"] =
      st.dispatched ? double(st.dispatched_starved) / double(st.dispatched) : 0.0;
  state.counters["fallback_share"] =
      st.dispatched ? double(st.dispatched_fallback) / double(st.dispatched) : 0.0;
  state.SetItemsProcessed(state.iterations());
}

// admit + next + complete, manual clock advancing 5 ms per request.
void BM_AdmitDispatchComplete(benchmark::State& state) {
  ray::manual_clock clock;
  run_trip(state, clock, true);
}
BENCHMARK(BM_AdmitDispatchComplete)->Arg(8)->Arg(24)->Arg(64);

// The same trip reading the real steady clock (what the runtime does).
void BM_AdmitDispatchCompleteSystemClock(benchmark::State& state) {
  run_trip(state, ray::system_clock(), false);
}
BENCHMARK(BM_AdmitDispatchCompleteSystemClock)->Arg(24);

// A queued request that leaves before dispatch (client disconnect): admit + cancel.
void BM_AdmitCancel(benchmark::State& state) {
  ray::manual_clock clock;
  sch::scheduler s(bench_limits(24), clock);
  std::uint64_t next_id = 1;
  fill(s, next_id);
  for (auto _ : state) {
    std::uint64_t const id = next_id++;
    auto admitted = s.admit(make_item(id));
    benchmark::DoNotOptimize(admitted);
    benchmark::DoNotOptimize(s.cancel(id));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AdmitCancel);

// A refused request: queue_full with its Retry-After estimate (error construction included).
void BM_RejectQueueFull(benchmark::State& state) {
  ray::manual_clock clock;
  auto l = bench_limits(24);
  l.max_queue = queued;
  sch::scheduler s(l, clock);
  std::uint64_t next_id = 1;
  fill(s, next_id);
  for (auto _ : state) {
    auto r = s.admit(make_item(next_id++));
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RejectQueueFull);

}  // namespace
