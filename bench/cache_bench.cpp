// Micro-benchmarks of ray::cache: what the result cache adds to a request — building the key (canonical
// encoding + SHA-256) and looking it up — plus the store path with eviction.
//
// Target: key build + hit lookup of a typical /v1/infer request (1 KiB input) well under 5 µs, i.e. noise
// next to a backend call; the lookup alone (hash map + LRU splice) well under 100 ns.
#include "ray/cache/cache.hpp"

#include <benchmark/benchmark.h>

#include <map>
#include <string>
#include <vector>

namespace cache = ray::cache;

namespace {

struct stored {
  std::string output;
  std::string finish_reason{"stop"};
};

struct request {
  std::string system{"You are a concise assistant. Answer in plain text."};
  std::string input;
  std::map<std::string, std::string> metadata{{"tenant", "acme"}, {"useCase", "email"}};
  std::vector<std::string> stop{"\n\n"};

  explicit request(std::size_t input_bytes, char fill = 'x') : input(input_bytes, fill) {}

  cache::request_key_fields fields() const {
    cache::request_key_fields f;
    f.route = "infer";
    f.model_id = "qwen2.5-0.5b-instruct-q4_k_m";
    f.backend_identity = "b4567-abcdef0 /var/lib/ray/models/qwen2.5-0.5b-instruct-q4_k_m.gguf";
    f.system = system;
    f.input = input;
    f.metadata = &metadata;
    f.seed = 42;
    f.stop = stop;
    f.response_format = "text";
    f.max_tokens = 128;
    f.temperature = 0.2;
    f.top_p = 0.95;
    return f;
  }
};

void BM_RequestKey(benchmark::State& state) {
  request req(static_cast<std::size_t>(state.range(0)));
  auto f = req.fields();
  for (auto _ : state)
    benchmark::DoNotOptimize(cache::request_key(f, cache::key_strategy::input_params));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_RequestKey)->Arg(64)->Arg(1024)->Arg(8192)->Arg(32'000);

// A cache at the largest profile's size (1024 entries), every lookup a hit.
void BM_GetHit(benchmark::State& state) {
  cache::result_cache<stored> c({.max_entries = 1024, .max_bytes = 8u << 20, .ttl_ms = 180'000});
  std::vector<cache::cache_key> keys;
  for (int i = 0; i < 1024; ++i) {
    keys.push_back(cache::key_builder{}.integer("i", i).finish());
    c.put(keys.back(), {std::string(512, 'o')}, 512 + 16);
  }
  std::size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(c.get(keys[i]));
    i = (i + 1) & 1023;
  }
}
BENCHMARK(BM_GetHit);

void BM_GetMiss(benchmark::State& state) {
  cache::result_cache<stored> c({.max_entries = 1024, .max_bytes = 8u << 20, .ttl_ms = 180'000});
  for (int i = 0; i < 1024; ++i)
    c.put(cache::key_builder{}.integer("i", i).finish(), {"o"}, 1);
  auto const missing = cache::key_builder{}.text("absent", "yes").finish();
  for (auto _ : state)
    benchmark::DoNotOptimize(c.get(missing));
}
BENCHMARK(BM_GetMiss);

// What the runtime pays per cacheable request on a hit: key of the effective request + lookup.
void BM_KeyBuildPlusHit(benchmark::State& state) {
  request req(static_cast<std::size_t>(state.range(0)));
  auto f = req.fields();
  cache::result_cache<stored> c({.max_entries = 1024, .max_bytes = 8u << 20, .ttl_ms = 180'000});
  for (int i = 0; i < 1023; ++i)
    c.put(cache::key_builder{}.integer("i", i).finish(), {"o"}, 1);
  c.put(cache::request_key(f, cache::key_strategy::input_params), {std::string(512, 'o')}, 512 + 16);
  for (auto _ : state) {
    auto const* hit = c.get(cache::request_key(f, cache::key_strategy::input_params));
    if (hit == nullptr) state.SkipWithError("expected a hit");
    benchmark::DoNotOptimize(hit);
  }
}
BENCHMARK(BM_KeyBuildPlusHit)->Arg(1024)->Arg(8192);

// Steady state of a full cache: every put evicts the least recently used entry.
void BM_PutEvict(benchmark::State& state) {
  cache::result_cache<stored> c({.max_entries = 1024, .max_bytes = 8u << 20, .ttl_ms = 180'000});
  std::vector<cache::cache_key> keys;
  for (int i = 0; i < 4096; ++i)
    keys.push_back(cache::key_builder{}.integer("i", i).finish());
  std::size_t i = 0;
  for (auto _ : state) {
    c.put(keys[i], {"output"}, 64);
    i = (i + 1) & 4095;
  }
  state.counters["evictions"] = static_cast<double>(c.stats().evictions);
}
BENCHMARK(BM_PutEvict);

}  // namespace

BENCHMARK_MAIN();
