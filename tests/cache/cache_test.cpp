#include "ray/cache/cache.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace cache = ray::cache;
using namespace std::chrono_literals;

namespace {

cache::cache_key key_of(std::string_view s) {
  return cache::key_builder{}.text("k", s).finish();
}

struct value {
  std::string output;
  int usage{0};
};

std::vector<std::string> lru_outputs(cache::result_cache<value> const& c) {
  std::vector<std::string> out;
  c.for_each_lru([&](auto const& e) { out.push_back(e.value.output); });
  return out;
}

cache::request_key_fields base_fields() {
  static std::map<std::string, std::string> const meta{{"a", "1"}, {"b", "2"}};
  static std::vector<std::string> const stop{"\n\n", "END"};
  cache::request_key_fields f;
  f.route = "infer";
  f.model_id = "tiny-dev";
  f.backend_identity = "build b1 /models/a.gguf";
  f.system = "be brief";
  f.input = "hello";
  f.metadata = &meta;
  f.seed = 7;
  f.stop = stop;
  f.response_format = "text";
  f.max_tokens = 64;
  f.temperature = 0.2;
  f.top_p = 0.95;
  return f;
}

}  // namespace

// --- keys
// ---------------------------------------------------------------------------------------------------

TEST(CacheKey, IsTheSha256OfTheCanonicalBytes) {
  // SHA-256("abc") from FIPS 180-2.
  EXPECT_EQ(cache::sha256("abc").hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  cache::key_builder b;
  b.text("x", "y");
  std::string bytes(b.bytes());
  EXPECT_EQ(b.finish(), cache::sha256(bytes));
  EXPECT_TRUE(b.bytes().empty()) << "finish() starts over";
}

TEST(CacheKey, FieldBoundariesAreUnambiguous) {
  auto k1 = cache::key_builder{}.text("a", "ab").text("b", "c").finish();
  auto k2 = cache::key_builder{}.text("a", "a").text("b", "bc").finish();
  EXPECT_NE(k1, k2);
  // Name/value boundary too.
  EXPECT_NE(cache::key_builder{}.text("ab", "c").finish(), cache::key_builder{}.text("a", "bc").finish());
  // Lists: ["a","bc"] vs ["ab","c"] vs ["abc"].
  std::vector<std::string> l1{"a", "bc"}, l2{"ab", "c"}, l3{"abc"};
  auto lk = [](auto const& l) { return cache::key_builder{}.list("stop", l).finish(); };
  EXPECT_NE(lk(l1), lk(l2));
  EXPECT_NE(lk(l1), lk(l3));
  // Maps: {"a":"bc"} vs {"ab":"c"}.
  std::map<std::string, std::string> m1{{"a", "bc"}}, m2{{"ab", "c"}};
  EXPECT_NE(cache::key_builder{}.string_map("m", m1).finish(),
            cache::key_builder{}.string_map("m", m2).finish());
}

TEST(CacheKey, TypesAndAbsenceAreDistinct) {
  auto k = [](auto f) {
    cache::key_builder b;
    f(b);
    return b.finish();
  };
  auto text5 = k([](auto& b) { b.text("seed", "5"); });
  auto int5 = k([](auto& b) { b.integer("seed", 5); });
  auto num5 = k([](auto& b) { b.number("seed", 5.0); });
  auto absent = k([](auto& b) { b.absent("seed"); });
  auto empty = k([](auto& b) { b.text("seed", ""); });
  EXPECT_NE(text5, int5);
  EXPECT_NE(int5, num5);
  EXPECT_NE(absent, empty);
  EXPECT_EQ(k([](auto& b) { b.integer("seed", std::optional<std::int64_t>{}); }), absent);
  EXPECT_EQ(k([](auto& b) { b.number("t", -0.0); }), k([](auto& b) { b.number("t", 0.0); }));
}

TEST(CacheKey, SameRequestSameKey) {
  auto f = base_fields();
  auto k1 = cache::request_key(f, cache::key_strategy::input_params);
  auto k2 = cache::request_key(base_fields(), cache::key_strategy::input_params);
  EXPECT_EQ(k1, k2);
  EXPECT_EQ(k1.hex().size(), 64u);
}

TEST(CacheKey, EveryPromptShapingFieldChangesTheKey) {
  for (auto strategy : {cache::key_strategy::input, cache::key_strategy::input_params}) {
    auto const base = cache::request_key(base_fields(), strategy);
    std::map<std::string, std::string> meta2{{"a", "1"}, {"b", "3"}};
    std::vector<std::string> stop2{"\n\n"};
    std::vector<std::function<void(cache::request_key_fields&)>> changes{
        [](auto& f) { f.route = "chat"; },
        [](auto& f) { f.model_id = "other"; },
        [](auto& f) { f.backend_identity = "build b2 /models/a.gguf"; },
        [](auto& f) { f.system = "be long"; },
        [](auto& f) { f.input = "hello!"; },
        [&](auto& f) { f.metadata = &meta2; },
        [](auto& f) { f.metadata = nullptr; },
        [](auto& f) { f.seed = 8; },
        [](auto& f) { f.seed = std::nullopt; },
        [&](auto& f) { f.stop = stop2; },
        [](auto& f) { f.response_format = "json_object"; },
        [](auto& f) { f.response_format = std::nullopt; },
    };
    for (std::size_t i = 0; i < changes.size(); ++i) {
      auto f = base_fields();
      changes[i](f);
      EXPECT_NE(cache::request_key(f, strategy), base) << "change #" << i;
    }
  }
}

TEST(CacheKey, SystemAndInputBoundaryIsUnambiguous) {
  auto f1 = base_fields();
  f1.system = "ab";
  f1.input = "c";
  auto f2 = base_fields();
  f2.system = "a";
  f2.input = "bc";
  EXPECT_NE(cache::request_key(f1, cache::key_strategy::input),
            cache::request_key(f2, cache::key_strategy::input));
}

TEST(CacheKey, ParamsCountOnlyUnderInputPlusParams) {
  auto base_p = cache::request_key(base_fields(), cache::key_strategy::input_params);
  auto base_i = cache::request_key(base_fields(), cache::key_strategy::input);
  EXPECT_NE(base_p, base_i);
  std::vector<std::function<void(cache::request_key_fields&)>> changes{
      [](auto& f) { f.max_tokens = 65; },           [](auto& f) { f.max_tokens = std::nullopt; },
      [](auto& f) { f.temperature = 0.0; },         [](auto& f) { f.top_p = 1.0; },
      [](auto& f) { f.extra_params = "top_k=40"; },
  };
  for (std::size_t i = 0; i < changes.size(); ++i) {
    auto f = base_fields();
    changes[i](f);
    EXPECT_NE(cache::request_key(f, cache::key_strategy::input_params), base_p) << "change #" << i;
    EXPECT_EQ(cache::request_key(f, cache::key_strategy::input), base_i) << "change #" << i;
  }
}

TEST(CacheKey, StrategyNames) {
  EXPECT_EQ(cache::key_strategy_name(cache::key_strategy::input), "input");
  EXPECT_EQ(cache::key_strategy_name(cache::key_strategy::input_params), "input+params");
}

// --- result_cache
// ---------------------------------------------------------------------------------------------

TEST(ResultCache, MissThenHit) {
  ray::manual_clock clk;
  cache::result_cache<value> c({.max_entries = 4, .max_bytes = 1000, .ttl_ms = 1000}, clk);
  EXPECT_EQ(c.get(key_of("a")), nullptr);
  EXPECT_TRUE(c.put(key_of("a"), {"A", 1}, 10));
  auto const* v = c.get(key_of("a"));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->output, "A");
  auto s = c.stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(s.bytes, cache::key_bytes + 10);
  EXPECT_EQ(s.max_entries, 4u);
  EXPECT_EQ(s.max_bytes, 1000u);
}

TEST(ResultCache, EvictsTheLeastRecentlyUsedEntryWhenFull) {
  ray::manual_clock clk;
  cache::result_cache<value> c({.max_entries = 3, .max_bytes = 1 << 20, .ttl_ms = 60'000}, clk);
  c.put(key_of("a"), {"a"}, 1);
  c.put(key_of("b"), {"b"}, 1);
  c.put(key_of("c"), {"c"}, 1);
  EXPECT_EQ(lru_outputs(c), (std::vector<std::string>{"a", "b", "c"}));
  ASSERT_NE(c.get(key_of("a")), nullptr);  // a becomes most recent
  EXPECT_EQ(lru_outputs(c), (std::vector<std::string>{"b", "c", "a"}));
  c.put(key_of("d"), {"d"}, 1);  // evicts b
  EXPECT_EQ(lru_outputs(c), (std::vector<std::string>{"c", "a", "d"}));
  EXPECT_EQ(c.get(key_of("b")), nullptr);
  EXPECT_EQ(c.stats().evictions, 1u);
  EXPECT_EQ(c.stats().entries, 3u);
}

TEST(ResultCache, ReplacingAKeyUpdatesValueBytesAndRecency) {
  ray::manual_clock clk;
  cache::result_cache<value> c({.max_entries = 3, .max_bytes = 1 << 20, .ttl_ms = 60'000}, clk);
  c.put(key_of("a"), {"a1"}, 10);
  c.put(key_of("b"), {"b"}, 1);
  c.put(key_of("a"), {"a2"}, 20);
  EXPECT_EQ(lru_outputs(c), (std::vector<std::string>{"b", "a2"}));
  EXPECT_EQ(c.stats().bytes, 2 * cache::key_bytes + 21);
  EXPECT_EQ(c.stats().evictions, 0u);
}

TEST(ResultCache, EntriesExpireAfterTheTtl) {
  ray::manual_clock clk;
  cache::result_cache<value> c({.max_entries = 8, .max_bytes = 1 << 20, .ttl_ms = 1000}, clk);
  c.put(key_of("a"), {"a"}, 5);
  clk.advance(999ms);
  ASSERT_NE(c.get(key_of("a")), nullptr) << "a hit does not extend the ttl";
  clk.advance(1ms);
  EXPECT_EQ(c.get(key_of("a")), nullptr);
  auto s = c.stats();
  EXPECT_EQ(s.expirations, 1u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.bytes, 0u);
}

TEST(ResultCache, PutAndPurgeDropExpiredEntries) {
  ray::manual_clock clk;
  cache::result_cache<value> c({.max_entries = 8, .max_bytes = 1 << 20, .ttl_ms = 1000}, clk);
  c.put(key_of("a"), {"a"}, 1);
  clk.advance(500ms);
  c.put(key_of("b"), {"b"}, 1);
  clk.advance(600ms);  // a expired, b not
  c.put(key_of("c"), {"c"}, 1);
  EXPECT_EQ(lru_outputs(c), (std::vector<std::string>{"b", "c"}));
  EXPECT_EQ(c.stats().expirations, 1u);
  clk.advance(1000ms);
  EXPECT_EQ(c.purge_expired(), 2u);
  EXPECT_EQ(c.stats().entries, 0u);
  EXPECT_EQ(c.stats().expirations, 3u);
  EXPECT_EQ(c.stats().evictions, 0u);
}

TEST(ResultCache, ZeroTtlNeverServes) {
  ray::manual_clock clk;
  cache::result_cache<value> c({.max_entries = 8, .max_bytes = 1 << 20, .ttl_ms = 0}, clk);
  c.put(key_of("a"), {"a"}, 1);
  EXPECT_EQ(c.get(key_of("a")), nullptr);
}

TEST(ResultCache, ByteBoundEvictsUntilTheNewEntryFits) {
  ray::manual_clock clk;
  std::uint64_t const entry = cache::key_bytes + 100;  // 132
  cache::result_cache<value> c({.max_entries = 100, .max_bytes = 3 * entry, .ttl_ms = 60'000}, clk);
  c.put(key_of("a"), {"a"}, 100);
  c.put(key_of("b"), {"b"}, 100);
  c.put(key_of("c"), {"c"}, 100);
  EXPECT_EQ(c.stats().bytes, 3 * entry);
  // Needs two entries' room: a and b go.
  c.put(key_of("d"), {"d"}, 2 * 100 + cache::key_bytes);
  EXPECT_EQ(lru_outputs(c), (std::vector<std::string>{"c", "d"}));
  EXPECT_EQ(c.stats().evictions, 2u);
  EXPECT_LE(c.stats().bytes, c.stats().max_bytes);
  EXPECT_EQ(c.stats().bytes, 3 * entry);
}

TEST(ResultCache, OversizedEntryIsNotStored) {
  ray::manual_clock clk;
  cache::result_cache<value> c({.max_entries = 100, .max_bytes = 200, .ttl_ms = 60'000}, clk);
  c.put(key_of("a"), {"a"}, 10);
  EXPECT_FALSE(c.put(key_of("big"), {"big"}, 200 - cache::key_bytes + 1));
  EXPECT_TRUE(c.put(key_of("fits"), {"fits"}, 200 - cache::key_bytes - 10 - cache::key_bytes));
  auto s = c.stats();
  EXPECT_EQ(s.oversized, 1u);
  EXPECT_EQ(s.evictions, 0u) << "an oversized entry evicts nothing";
  EXPECT_EQ(s.entries, 2u);
  EXPECT_EQ(c.get(key_of("big")), nullptr);
  // Replacing an entry by an oversized value removes the old one.
  EXPECT_FALSE(c.put(key_of("a"), {"a2"}, 1000));
  EXPECT_EQ(c.get(key_of("a")), nullptr);
  EXPECT_EQ(c.stats().oversized, 2u);
}

TEST(ResultCache, EraseIfDropsEntriesOfTheOldBackend) {
  ray::manual_clock clk;
  cache::result_cache<value> c({.max_entries = 100, .max_bytes = 1 << 20, .ttl_ms = 60'000}, clk);
  c.put(key_of("a"), {"a"}, 1, /*tag=*/1);
  c.put(key_of("b"), {"b"}, 1, /*tag=*/2);
  c.put(key_of("c"), {"c"}, 1, /*tag=*/1);
  EXPECT_EQ(c.erase_if([](auto const& e) { return e.tag == 1; }), 2u);
  EXPECT_EQ(lru_outputs(c), (std::vector<std::string>{"b"}));
  EXPECT_EQ(c.stats().bytes, cache::key_bytes + 1);
  EXPECT_EQ(c.stats().evictions, 0u);
  EXPECT_TRUE(c.erase(key_of("b")));
  EXPECT_FALSE(c.erase(key_of("b")));
  EXPECT_EQ(c.stats().entries, 0u);
}

TEST(ResultCache, StatsCountEveryOutcome) {
  ray::manual_clock clk;
  cache::result_cache<value> c({.max_entries = 2, .max_bytes = 1000, .ttl_ms = 100}, clk);
  c.get(key_of("x"));                   // miss
  c.put(key_of("a"), {"a"}, 1);         //
  c.put(key_of("b"), {"b"}, 1);         //
  c.get(key_of("a"));                   // hit
  c.put(key_of("c"), {"c"}, 1);         // evicts b
  c.put(key_of("big"), {"big"}, 5000);  // oversized
  clk.advance(100ms);
  c.get(key_of("a"));  // miss + expiration
  auto s = c.stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 2u);
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.expirations, 1u);
  EXPECT_EQ(s.oversized, 1u);
  EXPECT_EQ(s.entries, 1u);
}

TEST(ResultCache, EachEntryKeepsTheTtlItWasStoredWith) {
  ray::manual_clock clk;
  cache::result_cache<value> c({.max_entries = 4, .max_bytes = 1000, .ttl_ms = 1000}, clk);
  c.put(key_of("a"), {"a"}, 1);  // expires at +1000
  c.reconfigure({.max_entries = 4, .max_bytes = 1000, .ttl_ms = 100});
  clk.advance(10ms);
  c.put(key_of("b"), {"b"}, 1);  // expires at +110, before a
  clk.advance(190ms);
  EXPECT_EQ(c.get(key_of("b")), nullptr);
  EXPECT_NE(c.get(key_of("a")), nullptr);
  EXPECT_EQ(c.stats().expirations, 1u);
}

TEST(ResultCache, ReconfigureShrinksToTheNewBounds) {
  ray::manual_clock clk;
  cache::result_cache<value> c({.max_entries = 10, .max_bytes = 10'000, .ttl_ms = 60'000}, clk);
  for (char ch = 'a'; ch <= 'f'; ++ch)
    c.put(key_of(std::string(1, ch)), {std::string(1, ch)}, 100);
  c.reconfigure({.max_entries = 3, .max_bytes = 10'000, .ttl_ms = 60'000});
  EXPECT_EQ(lru_outputs(c), (std::vector<std::string>{"d", "e", "f"}));
  c.reconfigure({.max_entries = 3, .max_bytes = 2 * (cache::key_bytes + 100), .ttl_ms = 60'000});
  EXPECT_EQ(lru_outputs(c), (std::vector<std::string>{"e", "f"}));
  EXPECT_EQ(c.stats().evictions, 4u);
}

TEST(ResultCache, ManyEntriesStayWithinBothBounds) {
  ray::manual_clock clk;
  cache::result_cache<value> c({.max_entries = 64, .max_bytes = 64 * 100, .ttl_ms = 60'000}, clk);
  for (int i = 0; i < 10'000; ++i) {
    c.put(key_of(std::to_string(i)), {std::to_string(i)}, static_cast<std::size_t>(i % 150));
    if (i % 3 == 0) c.get(key_of(std::to_string(i / 2)));
    auto s = c.stats();
    ASSERT_LE(s.entries, 64u);
    ASSERT_LE(s.bytes, 64u * 100);
  }
  std::uint64_t total = 0;
  c.for_each_lru([&](auto const& e) { total += e.bytes; });
  EXPECT_EQ(total, c.stats().bytes);
}

TEST(ResultCache, MoveOnlyValues) {
  ray::manual_clock clk;
  cache::result_cache<std::unique_ptr<int>> c({.max_entries = 2, .max_bytes = 1000, .ttl_ms = 1000}, clk);
  c.put(key_of("a"), std::make_unique<int>(4), sizeof(int));
  auto const* v = c.get(key_of("a"));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(**v, 4);
}
