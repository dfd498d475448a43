#include "ray/access/access.hpp"

#include <algorithm>
#include <cmath>

namespace ray::access {

namespace {

// Expired entries dropped per check(): more than the one a new key can add, so the table drains.
constexpr std::size_t sweep_per_check = 4;

double ms_between(ray::clock::time_point from, ray::clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

}  // namespace

rate_limiter::rate_limiter(config::rate_limit_config const& cfg, ray::clock const& clock)
    : clock_(clock),
      window_(cfg.window_ms),
      max_requests_(cfg.max_requests),
      max_keys_(std::max<std::uint32_t>(cfg.max_keys, 1)) {}

std::int64_t rate_limiter::epoch_seconds(ray::clock::time_point t) const noexcept {
  auto wall =
      clock_.wall() + std::chrono::duration_cast<std::chrono::system_clock::duration>(t - clock_.now());
  return std::chrono::ceil<std::chrono::seconds>(wall.time_since_epoch()).count();
}

void rate_limiter::erase_front() {
  entries_.erase(std::string_view(order_.front().key));
  order_.pop_front();
}

void rate_limiter::sweep(ray::clock::time_point now, std::size_t budget) {
  while (budget-- > 0 && !order_.empty() && order_.front().end <= now)
    erase_front();
}

decision rate_limiter::check(std::string_view client_key, ray::clock::time_point now) {
  now = std::max(now, last_now_);
  last_now_ = now;
  client_key = client_key.substr(0, max_client_key_bytes);
  sweep(now, sweep_per_check);

  decision d;
  d.limit = max_requests_;
  if (auto it = entries_.find(client_key); it != entries_.end()) {
    entry& e = *it->second;
    if (now >= e.end) {
      // Every other window ends by its start + window <= now + window, so moving this one last keeps the
      // order.
      e.start = now;
      e.end = now + window_;
      e.count = 0;
      order_.splice(order_.end(), order_, it->second);
    }
    d.reset_epoch_seconds = epoch_seconds(e.end);
    if (e.count >= max_requests_) {
      d.retry_after_ms = ms_between(now, e.end);
      return d;
    }
    ++e.count;
    d.allowed = true;
    d.remaining = max_requests_ - e.count;
    return d;
  }

  if (entries_.size() >= max_keys_) sweep(now, 1);  // the soonest window may have ended: its slot is free
  if (entries_.size() >= max_keys_) {
    erase_front();  // the live window that ends soonest gives way
    d.evicted = true;
  }
  order_.push_back(entry{std::string(client_key), now, now + window_, 1});
  entries_.emplace(std::string_view(order_.back().key), std::prev(order_.end()));
  d.allowed = true;
  d.remaining = max_requests_ > 0 ? max_requests_ - 1 : 0;
  d.reset_epoch_seconds = epoch_seconds(now + window_);
  return d;
}

void rate_limiter::set_limits(config::rate_limit_config const& cfg) {
  std::chrono::milliseconds window(cfg.window_ms);
  if (window < window_) {
    // Cut running windows so none outlasts the new length, then restore the end order (list::sort relinks
    // nodes: the map's iterators and key views stay valid).
    for (entry& e : order_)
      e.end = std::min(e.end, e.start + window);
    order_.sort([](entry const& a, entry const& b) { return a.end < b.end; });
  }
  window_ = window;
  max_requests_ = cfg.max_requests;
  max_keys_ = std::max<std::uint32_t>(cfg.max_keys, 1);
  // Front entries are the expired ones first, then those whose windows end soonest (the least quota lost).
  while (entries_.size() > max_keys_)
    erase_front();
}

ray::error rate_limited(decision const& d) {
  auto seconds = static_cast<long long>(std::max(1.0, std::ceil(d.retry_after_ms / 1000.0)));
  std::string msg = "rate limit of " + std::to_string(d.limit) +
                    " requests per window exceeded; retry after " + std::to_string(seconds) + " s";
  ray::error e{errc::rate_limited, std::move(msg)};
  e.retry_after_ms = d.retry_after_ms;
  return e;
}

std::string rate_limit_key(config::rate_limit_key strategy, std::string_view ip,
                           std::optional<key_digest> const& digest) {
  std::string const counted = rate_limit_address(ip.substr(0, 64));
  ip = counted;
  std::string key;
  auto raw = [&] { return std::string_view(reinterpret_cast<char const*>(digest->bytes_.data()), 32); };
  if (strategy == config::rate_limit_key::ip || !digest) {
    key.reserve(3 + ip.size());
    key.append("ip:").append(ip);
  } else if (strategy == config::rate_limit_key::api_key) {
    key.reserve(4 + 32);
    key.append("key:").append(raw());
  } else {
    key.reserve(6 + 32 + ip.size());
    key.append("ipkey:").append(raw()).append(ip);
  }
  return key;
}

std::string caller_scope(std::optional<key_digest> const& digest) {
  if (!digest) return {};
  return rate_limit_key(config::rate_limit_key::api_key, {}, digest);
}

}  // namespace ray::access
