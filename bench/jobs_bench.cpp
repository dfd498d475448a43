// jobs_bench: what group commit buys. N concurrent submitters (coroutines on one io_context, as the HTTP
// handlers are) insert jobs into the real SQLite store (synchronous=FULL, WAL) for a fixed time, with group
// commit on and off, alternating rounds. Prints accepted jobs/s and the insert (= 202) latency p50/p99.
//
//   jobs_bench [--dir DIR] [--seconds S] [--rounds R] [--concurrency N ...]
#include "ray/jobs/jobs.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>

namespace rj = ray::jobs;

namespace {

struct outcome {
  double per_second{0};
  double p50_ms{0}, p99_ms{0};
};

outcome run_once(std::filesystem::path const& dir, bool group, int concurrency, double seconds) {
  std::filesystem::remove_all(dir);
  rj::sqlite_options o;
  o.dir = dir;
  o.max_jobs = 100'000;
  o.min_free_storage_mib = 0;
  o.group_commit = group;
  auto s = rj::open_sqlite_store(o);
  if (!s) {
    std::fprintf(stderr, "jobs_bench: %s\n", s.error().message.c_str());
    std::exit(1);
  }
  auto& store = **s;
  boost::asio::io_context ioc;
  std::vector<double> lat;
  auto const until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  std::uint64_t done = 0;
  for (int c = 0; c < concurrency; ++c) {
    boost::asio::co_spawn(
        ioc,
        [&]() -> boost::asio::awaitable<void> {
          while (std::chrono::steady_clock::now() < until) {
            rj::job j;
            j.id = ray::new_id("job_");
            j.created_at = j.updated_at = 1;
            j.request = boost::json::object{{"input", "a short benchmark prompt of ordinary size"}};
            auto t0 = std::chrono::steady_clock::now();
            auto r = co_await store.insert(std::move(j));
            if (!r) {
              std::fprintf(stderr, "jobs_bench: insert failed: %s\n", r.error().message.c_str());
              std::exit(1);
            }
            lat.push_back(
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
            ++done;
          }
        },
        boost::asio::detached);
  }
  auto const t0 = std::chrono::steady_clock::now();
  ioc.run();
  double const elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double p) {
    return lat.empty() ? 0.0 : lat[std::min(lat.size() - 1, std::size_t(p * lat.size()))];
  };
  return {static_cast<double>(done) / elapsed, pct(0.50), pct(0.99)};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path dir = std::filesystem::temp_directory_path() / "ray-jobs-bench";
  double seconds = 3;
  int rounds = 3;
  std::vector<int> concurrencies;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--dir") && i + 1 < argc)
      dir = argv[++i];
    else if (!std::strcmp(argv[i], "--seconds") && i + 1 < argc)
      seconds = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--rounds") && i + 1 < argc)
      rounds = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--concurrency") && i + 1 < argc)
      concurrencies.push_back(std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: jobs_bench [--dir DIR] [--seconds S] [--rounds R] [--concurrency N]...\n");
      return 2;
    }
  }
  if (concurrencies.empty()) concurrencies = {1, 16, 64};
  std::printf("| submitters | group commit | accepted jobs/s | insert p50 ms | insert p99 ms |\n");
  std::printf("|---:|---|---:|---:|---:|\n");
  for (int c : concurrencies) {
    std::vector<double> rate[2], p50[2], p99[2];
    for (int r = 0; r < rounds; ++r) {
      for (int g = 1; g >= 0; --g) {  // alternate on/off within each round
        auto o = run_once(dir, g == 1, c, seconds);
        rate[g].push_back(o.per_second);
        p50[g].push_back(o.p50_ms);
        p99[g].push_back(o.p99_ms);
      }
    }
    for (int g = 1; g >= 0; --g)
      std::printf("| %d | %s | %.0f | %.2f | %.2f |\n", c, g ? "on" : "off", median(rate[g]), median(p50[g]),
                  median(p99[g]));
  }
  std::filesystem::remove_all(dir);
  return 0;
}
