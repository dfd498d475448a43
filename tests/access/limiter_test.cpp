#include "ray/access/access.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <string>

namespace {

using namespace std::chrono_literals;
using ray::access::rate_limiter;
using ray::config::rate_limit_key;

constexpr std::int64_t wall_start = 1'800'000'000;  // manual_clock's initial wall time, in epoch seconds

ray::config::rate_limit_config limits(std::uint32_t window_ms, std::uint32_t max_requests,
                                      std::uint32_t max_keys) {
  ray::config::rate_limit_config c;
  c.enabled = true;
  c.window_ms = window_ms;
  c.max_requests = max_requests;
  c.max_keys = max_keys;
  return c;
}

TEST(RateLimiter, CountsDownRemainingAndReportsLimitAndWindowEnd) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(60'000, 3, 16), clock);
  for (std::uint32_t i = 1; i <= 3; ++i) {
    auto d = limiter.check("ip:1.2.3.4");
    EXPECT_TRUE(d.allowed);
    EXPECT_EQ(d.limit, 3u);
    EXPECT_EQ(d.remaining, 3 - i);
    EXPECT_EQ(d.reset_epoch_seconds, wall_start + 60);
    EXPECT_EQ(d.retry_after_ms, 0.0);
    EXPECT_FALSE(d.evicted);
    clock.advance(1s);
  }
}

TEST(RateLimiter, RefusesOverTheLimitWithTheTimeLeftInTheWindow) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(60'000, 2, 16), clock);
  limiter.check("k");
  limiter.check("k");
  clock.advance(15'500ms);
  auto d = limiter.check("k");
  EXPECT_FALSE(d.allowed);
  EXPECT_FALSE(d.evicted);
  EXPECT_EQ(d.limit, 2u);
  EXPECT_EQ(d.remaining, 0u);
  EXPECT_EQ(d.reset_epoch_seconds, wall_start + 60);
  EXPECT_DOUBLE_EQ(d.retry_after_ms, 44'500.0);

  auto e = ray::access::rate_limited(d);
  EXPECT_EQ(e.code, ray::errc::rate_limited);
  ASSERT_TRUE(e.retry_after_ms);
  EXPECT_DOUBLE_EQ(*e.retry_after_ms, 44'500.0);
  EXPECT_NE(e.message.find("retry after 45 s"), std::string::npos) << e.message;
}

TEST(RateLimiter, RefusedRequestsDoNotSpendQuotaOfTheNextWindow) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(1'000, 1, 16), clock);
  EXPECT_TRUE(limiter.check("k").allowed);
  for (int i = 0; i < 10; ++i)
    EXPECT_FALSE(limiter.check("k").allowed);
  clock.advance(1s);
  EXPECT_TRUE(limiter.check("k").allowed);
}

TEST(RateLimiter, WindowResetsWhenItEndsAndTheNewWindowStartsAtTheNextRequest) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(10'000, 2, 16), clock);
  limiter.check("k");
  limiter.check("k");
  clock.advance(9'999ms);
  EXPECT_FALSE(limiter.check("k").allowed);
  clock.advance(1ms);  // exactly at the end: a new window
  auto d = limiter.check("k");
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.remaining, 1u);
  EXPECT_EQ(d.reset_epoch_seconds, wall_start + 20);
  clock.advance(25s);  // idle: the next window starts at the next request, not on a fixed grid
  d = limiter.check("k");
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.remaining, 1u);
  EXPECT_EQ(d.reset_epoch_seconds, wall_start + 35 + 10);  // requested at 35 s
}

TEST(RateLimiter, ResetRoundsAPartialSecondUp) {
  ray::manual_clock clock;
  clock.advance(300ms);
  rate_limiter limiter(limits(1'000, 5, 16), clock);
  EXPECT_EQ(limiter.check("k").reset_epoch_seconds, wall_start + 2);  // window ends at +1.3 s
}

TEST(RateLimiter, KeysHaveIndependentWindows) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(60'000, 1, 16), clock);
  EXPECT_TRUE(limiter.check("a").allowed);
  EXPECT_FALSE(limiter.check("a").allowed);
  clock.advance(30s);
  auto b = limiter.check("b");
  EXPECT_TRUE(b.allowed);
  EXPECT_EQ(b.reset_epoch_seconds, wall_start + 90);
}

// Issue 12 finding: a full table refused every new client (one IPv6 /64 could fill it and lock newcomers
// out). A new key now takes the place of the entry whose window ends soonest; the others keep their counts.
TEST(RateLimiter, AFullTableLetsANewKeyInByEvictingTheSoonestEndingEntry) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(60'000, 2, 3), clock);
  limiter.check("a");
  clock.advance(10s);
  limiter.check("b");
  limiter.check("b");  // b is at its limit
  limiter.check("c");
  clock.advance(5s);

  auto d = limiter.check("d");
  EXPECT_TRUE(d.allowed);
  EXPECT_TRUE(d.evicted);
  EXPECT_EQ(d.remaining, 1u);
  EXPECT_EQ(limiter.size(), 3u);
  EXPECT_FALSE(limiter.check("b").allowed) << "b kept its count";
  EXPECT_EQ(limiter.check("c").remaining, 0u) << "c kept its count";
  auto a = limiter.check("a");  // a was the one evicted: it comes back new (and evicts b, the next to end)
  EXPECT_TRUE(a.allowed);
  EXPECT_TRUE(a.evicted);
  EXPECT_EQ(a.remaining, 1u);
}

TEST(RateLimiter, ExpiredKeysAreEvictedSoNewKeysFitLater) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(1'000, 5, 2), clock);
  limiter.check("a");
  limiter.check("b");
  clock.advance(1s);
  auto c = limiter.check("c");  // a and b expired: swept, not evicted
  EXPECT_TRUE(c.allowed);
  EXPECT_FALSE(c.evicted);
  EXPECT_EQ(c.remaining, 4u);
  EXPECT_TRUE(limiter.check("d").allowed);
  EXPECT_EQ(limiter.size(), 2u);
  // Now the table is full of live windows: a new key evicts one.
  EXPECT_TRUE(limiter.check("c").allowed);
  EXPECT_TRUE(limiter.check("a").evicted);
}

TEST(RateLimiter, AKeyRenewedBeforeTheSweepReachedItIsNotEvictedByItsOldWindowEnd) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(1'000, 5, 16), clock);
  for (int i = 0; i < 6; ++i)  // more expired entries ahead of "a" than one call sweeps
    limiter.check("k" + std::to_string(i));
  clock.advance(100ms);
  limiter.check("a");
  clock.advance(1'100ms);  // everything expired; "a" is renewed in place, not swept
  auto a = limiter.check("a");
  EXPECT_TRUE(a.allowed);
  EXPECT_EQ(a.remaining, 4u);
  EXPECT_EQ(a.reset_epoch_seconds, wall_start + 3);  // ends at 2.2 s
  for (int i = 0; i < 3; ++i)
    limiter.check("a");  // the sweeps drain k4, k5 and must stop at "a"
  EXPECT_EQ(limiter.size(), 1u);
  a = limiter.check("a");
  EXPECT_TRUE(a.allowed);
  EXPECT_EQ(a.remaining, 0u);
}

TEST(RateLimiter, IdleEntriesAreSweptWithoutNewKeysArriving) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(1'000, 5, 1000), clock);
  for (int i = 0; i < 100; ++i)
    limiter.check("k" + std::to_string(i));
  EXPECT_EQ(limiter.size(), 100u);
  clock.advance(2s);
  for (int i = 0; i < 100; ++i)
    limiter.check("steady");
  EXPECT_EQ(limiter.size(), 1u);
}

TEST(RateLimiter, NeverHoldsMoreThanMaxKeysEntriesUnderChurn) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(1'000, 3, 50), clock);
  std::size_t evictions = 0;
  for (int i = 0; i < 20'000; ++i) {
    auto d = limiter.check("client-" + std::to_string(i % 997));
    evictions += d.evicted ? 1 : 0;
    ASSERT_LE(limiter.size(), 50u);
    clock.advance(7ms);
  }
  EXPECT_GT(evictions, 0u);
}

TEST(RateLimiter, LongKeysAreTruncatedToTheBound) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(60'000, 1, 16), clock);
  std::string prefix(rate_limiter::max_client_key_bytes, 'p');
  EXPECT_TRUE(limiter.check(prefix + "one").allowed);
  EXPECT_FALSE(limiter.check(prefix + "two").allowed);
}

TEST(RateLimiter, SetLimitsKeepsCountsAndAppliesTheNewMaximum) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(60'000, 10, 16), clock);
  for (int i = 0; i < 4; ++i)
    limiter.check("k");
  limiter.set_limits(limits(60'000, 5, 16));
  auto d = limiter.check("k");
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.limit, 5u);
  EXPECT_EQ(d.remaining, 0u);
  EXPECT_FALSE(limiter.check("k").allowed);

  limiter.set_limits(limits(60'000, 3, 16));  // already over the new maximum: refused, remaining 0
  d = limiter.check("k");
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.remaining, 0u);

  limiter.set_limits(limits(60'000, 8, 16));
  d = limiter.check("k");
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.remaining, 2u);
}

TEST(RateLimiter, SetLimitsWithALongerWindowKeepsRunningWindowEnds) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(10'000, 1, 16), clock);
  limiter.check("old");
  limiter.set_limits(limits(60'000, 1, 16));
  auto d = limiter.check("new");
  EXPECT_EQ(d.reset_epoch_seconds, wall_start + 60);
  EXPECT_EQ(limiter.check("old").reset_epoch_seconds, wall_start + 10);
  clock.advance(10s);
  EXPECT_TRUE(limiter.check("old").allowed);
}

TEST(RateLimiter, SetLimitsWithAShorterWindowCutsRunningWindows) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(60'000, 1, 2), clock);
  limiter.check("a");
  clock.advance(2s);
  limiter.check("b");
  limiter.set_limits(limits(5'000, 1, 2));
  EXPECT_EQ(limiter.check("a").reset_epoch_seconds, wall_start + 5);
  EXPECT_EQ(limiter.check("b").reset_epoch_seconds, wall_start + 7);
  clock.advance(3s);  // a's cut window ended: c takes its free slot without evicting b
  auto c = limiter.check("c");
  EXPECT_TRUE(c.allowed);
  EXPECT_FALSE(c.evicted);
  EXPECT_TRUE(limiter.check("b").reset_epoch_seconds == wall_start + 7);
}

TEST(RateLimiter, SetLimitsWithFewerKeysShrinksTheTableSoonestEndingFirst) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(60'000, 2, 4), clock);
  for (char const* k : {"a", "b", "c", "d"}) {
    limiter.check(k);
    clock.advance(1s);
  }
  limiter.set_limits(limits(60'000, 2, 2));
  EXPECT_EQ(limiter.size(), 2u);
  EXPECT_EQ(limiter.max_keys(), 2u);
  // c and d stayed with their counts; a is new again and evicts c, whose window ends first.
  EXPECT_EQ(limiter.check("d").remaining, 0u);
  EXPECT_TRUE(limiter.check("a").evicted);
}

TEST(RateLimiter, ATimeEarlierThanOneAlreadySeenCountsAsTheLatest) {
  ray::manual_clock clock;
  rate_limiter limiter(limits(1'000, 5, 16), clock);
  auto t0 = clock.now();
  clock.advance(500ms);
  limiter.check("b", clock.now());
  auto d = limiter.check("a", t0);  // a request stamped before b's: its window starts with b's
  EXPECT_EQ(d.reset_epoch_seconds, wall_start + 2);
}

// ---------------------------------------------------------------------------------------------------------------
// rate_limit_key

TEST(RateLimitKey, IpStrategyUsesTheIpOnly) {
  auto d = ray::access::key_digest::of("some-api-key-0123456789");
  EXPECT_EQ(ray::access::rate_limit_key(rate_limit_key::ip, "1.2.3.4", d),
            ray::access::rate_limit_key(rate_limit_key::ip, "1.2.3.4", std::nullopt));
}

TEST(RateLimitKey, ApiKeyStrategyUsesTheDigestAndFallsBackToTheIpWithoutOne) {
  auto d1 = ray::access::key_digest::of("some-api-key-0123456789");
  auto d2 = ray::access::key_digest::of("other-api-key-0123456789");
  auto k1 = ray::access::rate_limit_key(rate_limit_key::api_key, "1.2.3.4", d1);
  EXPECT_EQ(k1, ray::access::rate_limit_key(rate_limit_key::api_key, "5.6.7.8", d1));
  EXPECT_NE(k1, ray::access::rate_limit_key(rate_limit_key::api_key, "1.2.3.4", d2));
  EXPECT_EQ(ray::access::rate_limit_key(rate_limit_key::api_key, "1.2.3.4", std::nullopt),
            ray::access::rate_limit_key(rate_limit_key::ip, "1.2.3.4", std::nullopt));
  EXPECT_EQ(k1.find("some-api-key"), std::string::npos);
}

TEST(RateLimitKey, IpPlusApiKeyStrategyDistinguishesBoth) {
  auto d1 = ray::access::key_digest::of("some-api-key-0123456789");
  auto d2 = ray::access::key_digest::of("other-api-key-0123456789");
  std::set<std::string> keys = {
      ray::access::rate_limit_key(rate_limit_key::ip_api_key, "1.2.3.4", d1),
      ray::access::rate_limit_key(rate_limit_key::ip_api_key, "5.6.7.8", d1),
      ray::access::rate_limit_key(rate_limit_key::ip_api_key, "1.2.3.4", d2),
      ray::access::rate_limit_key(rate_limit_key::api_key, "1.2.3.4", d1),
      ray::access::rate_limit_key(rate_limit_key::ip, "1.2.3.4", d1),
  };
  EXPECT_EQ(keys.size(), 5u);
}

TEST(RateLimitKey, LengthIsBoundedWhateverTheIp) {
  auto d = ray::access::key_digest::of("some-api-key-0123456789");
  std::string huge(10'000, 'x');
  for (auto s : {rate_limit_key::ip, rate_limit_key::api_key, rate_limit_key::ip_api_key})
    EXPECT_LE(ray::access::rate_limit_key(s, huge, d).size(), 102u);
  EXPECT_LE(ray::access::rate_limit_key(rate_limit_key::ip_api_key, huge, d).size(),
            rate_limiter::max_client_key_bytes);
}

// Issue 12 finding: IPv6 clients were counted per address, so one /64 had 2^64 quotas.
TEST(RateLimitKey, AnIpv6ClientCountsAsItsSlash64) {
  using ray::access::rate_limit_address;
  EXPECT_EQ(rate_limit_address("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::/64");
  EXPECT_EQ(rate_limit_address("2001:db8:1:2::1"), rate_limit_address("2001:db8:1:2:ffff::9"));
  EXPECT_NE(rate_limit_address("2001:db8:1:2::1"), rate_limit_address("2001:db8:1:3::1"));
  EXPECT_EQ(rate_limit_address("203.0.113.9"), "203.0.113.9");
  EXPECT_EQ(rate_limit_address("not an address"), "not an address");
  auto const k1 =
      ray::access::rate_limit_key(ray::config::rate_limit_key::ip, "2001:db8:1:2::1", std::nullopt);
  auto const k2 =
      ray::access::rate_limit_key(ray::config::rate_limit_key::ip, "2001:db8:1:2::2", std::nullopt);
  EXPECT_EQ(k1, k2);
}

}  // namespace
