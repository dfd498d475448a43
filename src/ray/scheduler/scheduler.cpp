#include "ray/scheduler/scheduler.hpp"

#include <algorithm>
#include <cassert>
#include <limits>
#include <string>

namespace ray::scheduler {

namespace {

constexpr std::uint32_t npos = std::numeric_limits<std::uint32_t>::max();

enum class node_state : std::uint8_t { free, queued, in_flight };

std::size_t lane_index(config::lane l) noexcept {
  return l == config::lane::short_lane ? 0 : 1;
}

// One live item. Waiting items sit on two intrusive lists at once: their lane's (for the lookahead window)
// and the arrival list (oldest first: starvation, batch window, fallback). Free nodes chain through
// lane_next.
struct node {
  std::uint64_t id{0};
  std::uint64_t cost{0};
  std::uint64_t key{0};
  std::uint64_t seq{0};  // arrival order, the tie-break
  ray::clock::time_point enqueued{};
  std::uint32_t lane_prev{npos};
  std::uint32_t lane_next{npos};
  std::uint32_t arr_prev{npos};
  std::uint32_t arr_next{npos};
  std::uint32_t preferred_slot{npos};
  std::uint8_t lane{1};
  node_state state{node_state::free};
};

struct list {
  std::uint32_t head{npos};
  std::uint32_t tail{npos};
  std::uint32_t size{0};
};

// id → node index. Open addressing with linear probing and backward-shift deletion (no tombstones), kept at
// most half full, so a lookup touches a couple of adjacent slots and inserts never allocate.
class id_table {
 public:
  void reset(std::size_t live_capacity) {
    std::size_t cap = 16;
    while (cap < 2 * live_capacity)
      cap *= 2;
    slots_.assign(cap, slot{});
    mask_ = cap - 1;
  }
  std::size_t capacity() const noexcept { return slots_.size() / 2; }

  std::uint32_t find(std::uint64_t id) const noexcept {
    for (std::size_t i = home(id);; i = (i + 1) & mask_) {
      auto const& s = slots_[i];
      if (s.node == npos) return npos;
      if (s.id == id) return s.node;
    }
  }
  bool insert(std::uint64_t id, std::uint32_t node) noexcept {
    for (std::size_t i = home(id);; i = (i + 1) & mask_) {
      auto& s = slots_[i];
      if (s.node == npos) {
        s = {id, node};
        return true;
      }
      if (s.id == id) return false;
    }
  }
  void erase(std::uint64_t id) noexcept {
    std::size_t hole = home(id);
    for (;; hole = (hole + 1) & mask_) {
      if (slots_[hole].node == npos) return;
      if (slots_[hole].id == id) break;
    }
    // Pull later entries of the probe run back into the hole unless their home lies cyclically in (hole, j].
    for (std::size_t j = (hole + 1) & mask_; slots_[j].node != npos; j = (j + 1) & mask_) {
      std::size_t const h = home(slots_[j].id);
      bool const stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
      if (!stays) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole].node = npos;
  }

 private:
  struct slot {
    std::uint64_t id{0};
    std::uint32_t node{npos};
  };
  std::size_t home(std::uint64_t id) const noexcept {
    std::uint64_t h = id * 0x9E3779B97F4A7C15ull;
    return static_cast<std::size_t>(h ^ (h >> 29)) & mask_;
  }
  std::vector<slot> slots_;
  std::size_t mask_{0};
};

limits normalized(limits l) noexcept {
  l.concurrency = std::max<std::uint32_t>(l.concurrency, 1);
  l.affinity_lookahead = std::max<std::uint32_t>(l.affinity_lookahead, 1);
  return l;
}

double seconds(std::chrono::steady_clock::duration d) noexcept {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

limits limits::from(config::config const& cfg, std::uint32_t backend_slots, std::uint32_t kv_pool) noexcept {
  auto const& s = cfg.scheduler;
  limits l;
  l.max_queue = s.max_queue;
  l.max_queued_tokens = s.max_queued_tokens;
  l.concurrency = backend_slots > 0 ? std::min(s.concurrency, backend_slots) : s.concurrency;
  l.max_inflight_tokens = kv_pool > 0 ? std::min(s.max_inflight_tokens, kv_pool) : s.max_inflight_tokens;
  l.affinity_lookahead = s.affinity_lookahead;
  l.short_job_max_tokens = s.short_job_max_tokens;
  l.starvation = std::chrono::milliseconds(s.starvation_ms);
  l.batch_window = std::chrono::milliseconds(s.batch_window_ms);
  return normalized(l);
}

config::lane classify_lane(bool json_object, std::uint32_t max_tokens,
                           std::optional<config::lane> template_lane,
                           std::uint32_t short_job_max_tokens) noexcept {
  bool const is_short = json_object || max_tokens <= short_job_max_tokens ||
                        (template_lane && *template_lane == config::lane::short_lane);
  return is_short ? config::lane::short_lane : config::lane::draft;
}

struct scheduler::impl {
  limits lim;
  ray::clock const& clk;
  std::vector<node> nodes;
  std::uint32_t free_head{npos};
  id_table index;
  list lanes[2];
  list arrival;
  std::uint64_t queued_tokens{0};
  std::uint64_t in_flight_tokens{0};
  std::uint32_t in_flight{0};
  std::uint64_t seq{0};
  std::uint64_t last_key{0};
  // Drain rate.
  bool has_rate{false};
  double mean_interval_s{1.0};
  ray::clock::time_point interval_start{};
  queue_stats counters{};
  // Scratch for next(), reserved so a decision does not allocate.
  std::vector<std::uint32_t> candidates;
  std::vector<std::uint64_t> keys;
  std::vector<std::uint64_t> modal_keys;

  impl(limits const& l, ray::clock const& c) : lim(normalized(l)), clk(c) { reserve(); }

  void reserve() {
    std::size_t const live = std::size_t{lim.max_queue} + lim.concurrency;
    if (nodes.size() < live) {
      std::size_t const old = nodes.size();
      nodes.resize(live);
      for (std::size_t i = live; i-- > old;) {
        nodes[i].lane_next = free_head;
        free_head = static_cast<std::uint32_t>(i);
      }
    }
    if (index.capacity() < nodes.size()) rehash();
    std::size_t const window = 2 * std::size_t{lim.affinity_lookahead};
    candidates.reserve(window);
    keys.reserve(window);
    modal_keys.reserve(window);
  }

  void rehash() {
    index.reset(nodes.size());
    for (std::uint32_t i = 0; i < nodes.size(); ++i) {
      if (nodes[i].state != node_state::free) index.insert(nodes[i].id, i);
    }
  }

  std::uint32_t allocate() {
    if (free_head == npos) {  // only when the caller broke an invariant; stay correct anyway
      nodes.emplace_back();
      if (index.capacity() < nodes.size()) rehash();
      return static_cast<std::uint32_t>(nodes.size() - 1);
    }
    std::uint32_t const i = free_head;
    free_head = nodes[i].lane_next;
    return i;
  }

  void release(std::uint32_t i) {
    index.erase(nodes[i].id);
    nodes[i] = node{};
    nodes[i].lane_next = free_head;
    free_head = i;
  }

  // Intrusive list helpers; Prev/Next select which pair of links (lane or arrival).
  template <std::uint32_t node::*Prev, std::uint32_t node::*Next>
  void push_back(list& l, std::uint32_t i) {
    nodes[i].*Prev = l.tail;
    nodes[i].*Next = npos;
    if (l.tail != npos)
      nodes[l.tail].*Next = i;
    else
      l.head = i;
    l.tail = i;
    ++l.size;
  }
  template <std::uint32_t node::*Prev, std::uint32_t node::*Next>
  void unlink(list& l, std::uint32_t i) {
    std::uint32_t const p = nodes[i].*Prev;
    std::uint32_t const n = nodes[i].*Next;
    (p != npos ? nodes[p].*Next : l.head) = n;
    (n != npos ? nodes[n].*Prev : l.tail) = p;
    nodes[i].*Prev = npos;
    nodes[i].*Next = npos;
    --l.size;
  }

  void unqueue(std::uint32_t i) {
    node& n = nodes[i];
    unlink<&node::lane_prev, &node::lane_next>(lanes[n.lane], i);
    unlink<&node::arr_prev, &node::arr_next>(arrival, i);
    queued_tokens -= n.cost;
  }

  std::uint64_t room() const noexcept {
    return in_flight_tokens >= lim.max_inflight_tokens ? 0 : lim.max_inflight_tokens - in_flight_tokens;
  }

  ray::clock::time_point not_before() const noexcept {
    if (lim.batch_window.count() <= 0 || arrival.size < 2) return ray::clock::time_point::min();
    return nodes[arrival.head].enqueued + lim.batch_window;
  }

  std::uint64_t dispatch(std::uint32_t i, ray::clock::time_point now, std::uint64_t queue_stats::*reason) {
    unqueue(i);
    node& n = nodes[i];
    n.state = node_state::in_flight;
    if (in_flight == 0) interval_start = now;  // idle time is not drain time
    ++in_flight;
    in_flight_tokens += n.cost;
    if (n.key != 0) last_key = n.key;
    ++counters.dispatched;
    ++(counters.*reason);
    return n.id;
  }

  double effective_interval_s() const noexcept {
    double mean = has_rate ? mean_interval_s : 1.0;
    if (in_flight > 0) mean = std::max(mean, seconds(clk.now() - interval_start));
    return mean;
  }
};

scheduler::scheduler(limits const& l, ray::clock const& clock) : impl_(std::make_unique<impl>(l, clock)) {}
scheduler::~scheduler() = default;

result<admission> scheduler::admit(item const& it) {
  impl& s = *impl_;
  auto const& lim = s.lim;
  if (it.cost > lim.max_inflight_tokens || it.cost > lim.max_queued_tokens) {
    std::uint64_t const budget = std::min(lim.max_inflight_tokens, lim.max_queued_tokens);
    ray::error err{errc::request_token_budget_exceeded,
                   "the request needs ~" + std::to_string(it.cost) +
                       " tokens (prompt + maxTokens) but the scheduler's token budget is " +
                       std::to_string(budget) + "; shorten the input or lower maxTokens"};
    err.details["requestTokens"] = it.cost;
    err.details["budgetTokens"] = budget;
    err.details["maxInflightTokens"] = lim.max_inflight_tokens;
    err.details["maxQueuedTokens"] = lim.max_queued_tokens;
    ++s.counters.rejected_token_budget;
    return err;
  }
  bool const by_count = s.arrival.size >= lim.max_queue;
  if (by_count || s.queued_tokens + it.cost > lim.max_queued_tokens) {
    double const retry = retry_after_ms(s.arrival.size);
    ray::error err{errc::queue_full, by_count ? "the queue is full (" + std::to_string(s.arrival.size) +
                                                    " waiting, maxQueue " + std::to_string(lim.max_queue) +
                                                    "); retry later"
                                              : "the queue holds " + std::to_string(s.queued_tokens) +
                                                    " of " + std::to_string(lim.max_queued_tokens) +
                                                    " queued tokens and this request needs " +
                                                    std::to_string(it.cost) + "; retry later"};
    err.details["queueDepth"] = s.arrival.size;
    err.details["maxQueue"] = lim.max_queue;
    err.details["queuedTokens"] = s.queued_tokens;
    err.details["maxQueuedTokens"] = lim.max_queued_tokens;
    err.details["requestTokens"] = it.cost;
    err.details["limit"] = by_count ? "maxQueue" : "maxQueuedTokens";
    err.retry_after_ms = retry;
    ++(by_count ? s.counters.rejected_queue_count : s.counters.rejected_queue_tokens);
    return err;
  }

  std::uint32_t const i = s.allocate();
  if (!s.index.insert(it.id, i)) {
    assert(!"scheduler::admit: duplicate live id");
    s.nodes[i].lane_next = s.free_head;
    s.free_head = i;
    return ray::error{errc::invalid_request, "duplicate scheduler id " + std::to_string(it.id)};
  }
  node& n = s.nodes[i];
  n.id = it.id;
  n.cost = it.cost;
  n.key = it.affinity_key;
  n.seq = s.seq++;
  n.enqueued = s.clk.now();
  n.preferred_slot = it.preferred_slot && *it.preferred_slot < 64 ? *it.preferred_slot : npos;
  n.lane = static_cast<std::uint8_t>(lane_index(it.lane));
  n.state = node_state::queued;
  admission const adm{s.arrival.size};
  s.push_back<&node::lane_prev, &node::lane_next>(s.lanes[n.lane], i);
  s.push_back<&node::arr_prev, &node::arr_next>(s.arrival, i);
  s.queued_tokens += it.cost;
  ++s.counters.admitted;
  return adm;
}

std::optional<std::uint64_t> scheduler::next(slot_mask idle_slots) {
  impl& s = *impl_;
  if (s.in_flight >= s.lim.concurrency || s.arrival.size == 0) return std::nullopt;
  auto const now = s.clk.now();
  if (now < s.not_before()) return std::nullopt;
  std::uint64_t const room = s.room();

  // Starvation: the oldest item reserves the budget until it fits.
  std::uint32_t const oldest = s.arrival.head;
  if (now - s.nodes[oldest].enqueued > s.lim.starvation) {
    if (s.nodes[oldest].cost <= room) return s.dispatch(oldest, now, &queue_stats::dispatched_starved);
    return std::nullopt;
  }

  s.candidates.clear();
  s.keys.clear();
  for (auto const& lane : s.lanes) {
    std::uint32_t i = lane.head;
    for (std::uint32_t k = 0; k < s.lim.affinity_lookahead && i != npos; ++k, i = s.nodes[i].lane_next) {
      if (s.nodes[i].cost > room) continue;
      s.candidates.push_back(i);
      if (s.nodes[i].key != 0) s.keys.push_back(s.nodes[i].key);
    }
  }
  if (s.candidates.empty()) {
    for (std::uint32_t i = s.arrival.head; i != npos; i = s.nodes[i].arr_next) {
      if (s.nodes[i].cost <= room) return s.dispatch(i, now, &queue_stats::dispatched_fallback);
    }
    return std::nullopt;
  }

  // The most common key(s) among the candidates; a key seen once is not "common".
  s.modal_keys.clear();
  if (s.keys.size() >= 2) {
    std::sort(s.keys.begin(), s.keys.end());
    std::size_t best_run = 2;
    for (std::size_t a = 0; a < s.keys.size();) {
      std::size_t b = a + 1;
      while (b < s.keys.size() && s.keys[b] == s.keys[a])
        ++b;
      if (b - a > best_run) {
        best_run = b - a;
        s.modal_keys.clear();
      }
      if (b - a == best_run) s.modal_keys.push_back(s.keys[a]);
      a = b;
    }
  }

  using ns = std::chrono::nanoseconds;
  std::uint32_t best = npos;
  std::int64_t best_score = 0;
  for (std::uint32_t const i : s.candidates) {
    node const& n = s.nodes[i];
    std::int64_t score = std::chrono::duration_cast<ns>(now - n.enqueued).count();
    if (n.lane == lane_index(config::lane::short_lane)) score += ns(short_lane_bonus).count();
    if (n.key != 0 && n.key == s.last_key) score += ns(same_key_as_last_bonus).count();
    if (n.key != 0 && std::find(s.modal_keys.begin(), s.modal_keys.end(), n.key) != s.modal_keys.end())
      score += ns(common_key_bonus).count();
    if (n.preferred_slot != npos && (idle_slots >> n.preferred_slot) & 1u)
      score += ns(preferred_slot_idle_bonus).count();
    if (best == npos || score > best_score || (score == best_score && n.seq < s.nodes[best].seq)) {
      best = i;
      best_score = score;
    }
  }
  return s.dispatch(best, now, &queue_stats::dispatched_scored);
}

ray::clock::time_point scheduler::dispatch_not_before() const noexcept {
  return impl_->not_before();
}

std::optional<ray::clock::time_point> scheduler::wake_at() const noexcept {
  impl const& s = *impl_;
  if (s.in_flight >= s.lim.concurrency || s.arrival.size == 0) return std::nullopt;
  auto const t = s.not_before();
  if (t <= s.clk.now()) return std::nullopt;
  return t;
}

bool scheduler::complete(std::uint64_t id) {
  impl& s = *impl_;
  std::uint32_t const i = s.index.find(id);
  if (i == npos || s.nodes[i].state != node_state::in_flight) return false;
  auto const now = s.clk.now();
  double const sample = seconds(now - s.interval_start);
  s.mean_interval_s =
      s.has_rate ? completion_interval_alpha * sample + (1 - completion_interval_alpha) * s.mean_interval_s
                 : sample;
  s.has_rate = true;
  s.interval_start = now;
  --s.in_flight;
  s.in_flight_tokens -= s.nodes[i].cost;
  ++s.counters.completed;
  s.release(i);
  return true;
}

cancel_outcome scheduler::cancel(std::uint64_t id) {
  impl& s = *impl_;
  std::uint32_t const i = s.index.find(id);
  if (i == npos) return cancel_outcome::unknown;
  if (s.nodes[i].state == node_state::queued) {
    s.unqueue(i);
    ++s.counters.cancelled_queued;
    s.release(i);
    return cancel_outcome::removed_from_queue;
  }
  --s.in_flight;
  s.in_flight_tokens -= s.nodes[i].cost;
  ++s.counters.cancelled_in_flight;
  s.release(i);
  return cancel_outcome::released_in_flight;
}

double scheduler::completion_rate() const noexcept {
  double const interval = impl_->effective_interval_s();
  return interval > 0 ? 1.0 / interval : std::numeric_limits<double>::infinity();
}

double scheduler::retry_after_ms(std::uint32_t items_ahead) const noexcept {
  // (ahead + 1) / rate, written with the interval so a zero interval (an infinite rate) needs no special
  // case.
  double const ms = (double(items_ahead) + 1.0) * impl_->effective_interval_s() * 1000.0;
  return std::clamp(ms, min_retry_after_ms, max_retry_after_ms);
}

std::vector<std::uint64_t> scheduler::set_limits(limits const& l) {
  impl& s = *impl_;
  s.lim = normalized(l);
  s.reserve();
  std::vector<std::uint64_t> evicted;
  std::uint64_t const budget = std::min(s.lim.max_inflight_tokens, s.lim.max_queued_tokens);
  for (std::uint32_t i = s.arrival.head; i != npos;) {
    std::uint32_t const next = s.nodes[i].arr_next;
    if (s.nodes[i].cost > budget) {
      evicted.push_back(s.nodes[i].id);
      s.unqueue(i);
      ++s.counters.rejected_token_budget;
      s.release(i);
    }
    i = next;
  }
  return evicted;
}

limits const& scheduler::current_limits() const noexcept {
  return impl_->lim;
}

queue_stats scheduler::stats() const noexcept {
  impl const& s = *impl_;
  queue_stats out = s.counters;
  out.queue_depth = s.arrival.size;
  out.in_flight = s.in_flight;
  out.queued_tokens = s.queued_tokens;
  out.in_flight_tokens = s.in_flight_tokens;
  out.short_depth = s.lanes[0].size;
  out.draft_depth = s.lanes[1].size;
  out.completions_per_second = completion_rate();
  return out;
}

}  // namespace ray::scheduler
