#include "ray/system/system.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>

#include <sys/stat.h>
#include <unistd.h>

namespace sys = ray::system;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using ::testing::ElementsAre;

namespace {

std::string const fixtures = std::string(RAY_TEST_FIXTURES) + "/cgroup/";

sys::sampler_options opts(std::string const& root, std::vector<std::string> watch = {}) {
  sys::sampler_options o;
  o.root = root;
  o.watch_cgroups = std::move(watch);
  o.page_size = 4096;
  return o;
}

// A writable copy of a fixture tree, removed at the end of the test.
class temp_tree {
 public:
  explicit temp_tree(std::string const& fixture) {
    static std::atomic<int> n{0};
    path_ = fs::temp_directory_path() /
            ("ray-system-test-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
    fs::remove_all(path_);
    fs::create_directories(path_);
    if (!fixture.empty()) fs::copy(fixtures + fixture, path_, fs::copy_options::recursive);
  }
  ~temp_tree() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string root() const { return path_.string(); }
  void write(std::string const& rel, std::string const& text) const {
    fs::create_directories((path_ / rel).parent_path());
    std::ofstream(path_ / rel, std::ios::binary | std::ios::trunc) << text;
  }
  void remove(std::string const& rel) const { fs::remove(path_ / rel); }

 private:
  fs::path path_;
};

ray::clock::time_point t0() {
  return ray::clock::time_point(std::chrono::hours(1000));
}

std::string const ray_unit = "sys/fs/cgroup/system.slice/ray.service/";

}  // namespace

// --- parsers
// --------------------------------------------------------------------------------------------------

TEST(SystemParse, PsiFileWithSomeAndFull) {
  auto p = sys::parse::psi_file(
      "some avg10=1.50 avg60=0.80 avg300=0.20 total=99999\nfull avg10=0.00 avg60=0.01 avg300=0.00 total=7\n");
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->some);
  EXPECT_DOUBLE_EQ(p->some->avg10, 1.5);
  EXPECT_DOUBLE_EQ(p->some->avg60, 0.8);
  EXPECT_EQ(p->some->total_us, 99999u);
  ASSERT_TRUE(p->full);
  EXPECT_DOUBLE_EQ(p->full->avg60, 0.01);
}

TEST(SystemParse, PsiFileWithoutFullLineOrWithOneBadLine) {
  auto p = sys::parse::psi_file("some avg10=3.00 avg60=2.00 avg300=1.00 total=5\n");
  ASSERT_TRUE(p);
  EXPECT_TRUE(p->some);
  EXPECT_FALSE(p->full);
  auto q = sys::parse::psi_file(
      "some avg10=x avg60=2.00 avg300=1.00 total=5\nfull avg10=1 avg60=2 avg300=3 total=4");
  ASSERT_TRUE(q);
  EXPECT_FALSE(q->some);
  ASSERT_TRUE(q->full);
  EXPECT_DOUBLE_EQ(q->full->avg300, 3);
  // Unknown keys are ignored, missing ones make the line absent.
  EXPECT_TRUE(sys::parse::psi_file("some avg10=1 avg60=1 avg300=1 total=1 future=7")->some);
  EXPECT_FALSE(sys::parse::psi_file("some avg10=1 avg60=1 total=1"));
}

TEST(SystemParse, PsiFileRejectsGarbage) {
  for (std::string_view bad :
       {"", "\n", "garbage", "some", "some avg10=-1 avg60=0 avg300=0 total=0",
        "some avg10=101 avg60=0 avg300=0 total=0", "some avg10=nan avg60=0 avg300=0 total=0",
        "some avg10=1 avg60=1 avg300=1 total=-3", "some avg10=1avg60=1 avg300=1 total=3"})
    EXPECT_FALSE(sys::parse::psi_file(bad)) << bad;
}

TEST(SystemParse, SingleValues) {
  EXPECT_EQ(sys::parse::single_value("12345\n"), 12345u);
  EXPECT_EQ(sys::parse::single_value("max\n", true), sys::unlimited);
  EXPECT_FALSE(sys::parse::single_value("max\n"));
  for (std::string_view bad : {"", "\n", "-5", "12abc", "1 2", "maximum", "99999999999999999999999"})
    EXPECT_FALSE(sys::parse::single_value(bad, true)) << bad;
}

TEST(SystemParse, KeyedValues) {
  std::string_view text = "low 0\nhigh 5\nmax 2\noom 1\noom_kill 3\n";
  EXPECT_EQ(sys::parse::keyed_value(text, "high"), 5u);
  EXPECT_EQ(sys::parse::keyed_value(text, "oom_kill"), 3u);
  EXPECT_EQ(sys::parse::keyed_value(text, "oom"), 1u) << "whole-token match, not a prefix";
  EXPECT_FALSE(sys::parse::keyed_value(text, "oom_group_kill"));
  EXPECT_FALSE(sys::parse::keyed_value("nr_periods x\n", "nr_periods"));
  EXPECT_FALSE(sys::parse::keyed_value("nr_periods 1 2\n", "nr_periods"));
}

TEST(SystemParse, StatmRss) {
  EXPECT_EQ(sys::parse::statm_rss_bytes("30000 12800 1000 100 0 20000 0\n", 4096), 12800u * 4096);
  EXPECT_FALSE(sys::parse::statm_rss_bytes("hello world", 4096));
  EXPECT_FALSE(sys::parse::statm_rss_bytes("1", 4096));
  EXPECT_FALSE(sys::parse::statm_rss_bytes("1 2", 0));
}

// --- sampler on fixture trees
// -------------------------------------------------------------------------------------

TEST(SystemSampler, ReadsAHealthyCgroupV2Tree) {
  sys::sampler s(opts(fixtures + "v2", {"/system.slice/llama-server.service"}));
  s.set_backend_pid(4242);
  auto const& snap = s.sample(t0());
  EXPECT_TRUE(snap.taken);
  EXPECT_EQ(snap.cgroup, "/system.slice/ray.service");
  EXPECT_THAT(snap.sources, ElementsAre("rss:self", "rss:pid/4242", "cgroup2:/system.slice/ray.service",
                                        "cgroup2:/system.slice/llama-server.service"));
  EXPECT_DOUBLE_EQ(*snap.process_rss_mib, 50.0);
  EXPECT_DOUBLE_EQ(*snap.backend_rss_mib, 400.0);
  EXPECT_DOUBLE_EQ(*snap.rss_mib, 450.0);
  // Only Ray's cgroup has a limit: 200 MiB of 1 GiB (memory.high is "max").
  EXPECT_DOUBLE_EQ(*snap.cgroup_current_mib, 200.0);
  EXPECT_DOUBLE_EQ(*snap.cgroup_limit_mib, 1024.0);
  EXPECT_NEAR(*snap.cgroup_usage_ratio, 200.0 / 1024.0, 1e-12);
  EXPECT_DOUBLE_EQ(*snap.swap_current_mib, 0.0);
  // Cgroup PSI (the worst of both cgroups), not the (alarming) host PSI.
  EXPECT_FALSE(snap.memory_psi_from_host);
  EXPECT_FALSE(snap.cpu_psi_from_host);
  EXPECT_DOUBLE_EQ(*snap.memory_psi_some_avg10, 0.40);
  EXPECT_DOUBLE_EQ(*snap.memory_psi_full_avg10, 0.10);
  EXPECT_DOUBLE_EQ(*snap.cpu_psi_some_avg10, 3.00);
  EXPECT_DOUBLE_EQ(*snap.cpu_psi_full_avg10, 0.50);
  EXPECT_FALSE(snap.cpu_throttled_ratio) << "a ratio needs two samples";
  EXPECT_EQ(snap.new_oom_events, 0u);
  ASSERT_EQ(snap.cgroups.size(), 2u);
  auto const& own = snap.cgroups[0];
  EXPECT_TRUE(own.own);
  EXPECT_TRUE(own.found);
  EXPECT_TRUE(own.v2);
  EXPECT_FALSE(own.v1);
  EXPECT_EQ(own.memory_high, sys::unlimited);
  EXPECT_EQ(own.limit(), 1073741824u);
  ASSERT_TRUE(own.cpu);
  EXPECT_EQ(own.cpu->nr_periods, 1000u);
  EXPECT_EQ(own.cpu->throttled_usec, 5000u);
  EXPECT_EQ(snap.cgroups[1].limit(), std::nullopt);

  auto d = sys::evaluate(snap, ray::config::degradation_config{.memory_rss_threshold_mib = 512}, 0);
  EXPECT_TRUE(d.reasons.empty());
  EXPECT_FALSE(d.shed);
}

TEST(SystemSampler, ReadsACgroupV2TreeUnderPressure) {
  sys::sampler s(opts(fixtures + "v2-pressure", {"system.slice/llama-server.service/"}));
  auto const& snap = s.sample(t0());
  EXPECT_EQ(snap.cgroup, "/system.slice/ray.service");
  EXPECT_DOUBLE_EQ(*snap.process_rss_mib, 300.0);
  // Worst usage ratio: llama-server 1900/2000 = 0.95 beats ray 900/960 (memory.high below memory.max).
  EXPECT_DOUBLE_EQ(*snap.cgroup_current_mib, 1900.0);
  EXPECT_DOUBLE_EQ(*snap.cgroup_limit_mib, 2000.0);
  EXPECT_NEAR(*snap.cgroup_usage_ratio, 0.95, 1e-12);
  EXPECT_NEAR(*snap.cgroups[0].usage_ratio(), 900.0 / 960.0, 1e-12);
  EXPECT_DOUBLE_EQ(*snap.swap_current_mib, 50.0);
  EXPECT_DOUBLE_EQ(*snap.memory_psi_some_avg10, 30.0);  // watched cgroup
  EXPECT_DOUBLE_EQ(*snap.memory_psi_full_avg10, 25.0);  // Ray's
  EXPECT_DOUBLE_EQ(*snap.cpu_psi_some_avg10, 60.0);
  EXPECT_DOUBLE_EQ(*snap.cpu_psi_full_avg10, 7.0);
  EXPECT_FALSE(snap.cgroups[1].cpu) << "no cpu controller: no throttling counters";

  auto d = sys::evaluate(snap, ray::config::degradation_config{}, 0);
  EXPECT_THAT(d.reasons, ElementsAre("memory_pressure", "cpu_pressure"));
  EXPECT_TRUE(d.memory.rss);
  EXPECT_TRUE(d.memory.cgroup_ratio);
  EXPECT_TRUE(d.memory.psi_some);
  EXPECT_TRUE(d.memory.psi_full);
  EXPECT_FALSE(d.memory.events) << "events count only as deltas";
  EXPECT_TRUE(d.cpu.psi_some);
  EXPECT_TRUE(d.cpu.psi_full);
  EXPECT_FALSE(d.cpu.throttled);
  EXPECT_TRUE(d.shed) << "PSI full 25 > shedAtMemoryPsiFullAvg10 20";
  EXPECT_EQ(d.clamp_to, 96u);
}

TEST(SystemSampler, ReadsACgroupV1TreeWithHostPsiFallback) {
  sys::sampler s(opts(fixtures + "v1", {"/docker/llama"}));
  auto const& snap = s.sample(t0());
  EXPECT_EQ(snap.cgroup, "/docker/abc");
  EXPECT_THAT(snap.sources, ElementsAre("rss:self", "cgroup1:/docker/abc", "cgroup1:/docker/llama",
                                        "psi:host/memory", "psi:host/cpu"));
  auto const& own = snap.cgroups.at(0);
  EXPECT_TRUE(own.v1);
  EXPECT_FALSE(own.v2);
  EXPECT_EQ(own.memory_current, 300u * 1024 * 1024);
  EXPECT_EQ(own.memory_max, sys::unlimited) << "the huge v1 value means no limit";
  EXPECT_EQ(own.limit(), std::nullopt);
  EXPECT_EQ(own.swap_current, 40u * 1024 * 1024);
  ASSERT_TRUE(own.events);
  EXPECT_EQ(own.events->oom_kill, 2u);
  ASSERT_TRUE(own.cpu);
  EXPECT_EQ(own.cpu->nr_throttled, 20u);
  EXPECT_EQ(own.cpu->throttled_usec, 400000u) << "throttled_time is in ns";
  // Only the watched cgroup has a limit.
  EXPECT_DOUBLE_EQ(*snap.cgroup_current_mib, 500.0);
  EXPECT_DOUBLE_EQ(*snap.cgroup_limit_mib, 512.0);
  EXPECT_TRUE(snap.memory_psi_from_host);
  EXPECT_TRUE(snap.cpu_psi_from_host);
  EXPECT_DOUBLE_EQ(*snap.memory_psi_some_avg10, 11.0);
  EXPECT_DOUBLE_EQ(*snap.memory_psi_full_avg10, 2.5);
  EXPECT_DOUBLE_EQ(*snap.cpu_psi_some_avg10, 4.0);
  EXPECT_FALSE(snap.cpu_psi_full_avg10);
}

TEST(SystemSampler, V1InAContainerFallsBackToTheMountRoot) {
  sys::sampler s(opts(fixtures + "v1-container"));
  auto const& snap = s.sample(t0());
  EXPECT_EQ(snap.cgroup, "/");
  EXPECT_THAT(snap.sources, ElementsAre("rss:self", "cgroup1:/"));
  EXPECT_DOUBLE_EQ(*snap.cgroup_current_mib, 100.0);
  EXPECT_DOUBLE_EQ(*snap.cgroup_limit_mib, 256.0);
  EXPECT_FALSE(snap.memory_psi_some_avg10) << "no cgroup and no host PSI files";
}

TEST(SystemSampler, HybridHostTakesMemoryFromV1AndPressureFromTheUnifiedHierarchy) {
  sys::sampler s(opts(fixtures + "hybrid"));
  auto const& snap = s.sample(t0());
  EXPECT_EQ(snap.cgroup, "/user.slice/ray.service");
  EXPECT_THAT(snap.sources,
              ElementsAre("rss:self", "cgroup2:/user.slice/ray.service", "cgroup1:/user.slice/ray.service"));
  EXPECT_DOUBLE_EQ(*snap.cgroup_current_mib, 150.0);
  EXPECT_DOUBLE_EQ(*snap.cgroup_limit_mib, 200.0);
  EXPECT_FALSE(snap.memory_psi_from_host);
  EXPECT_DOUBLE_EQ(*snap.memory_psi_some_avg10, 2.0);
  EXPECT_DOUBLE_EQ(*snap.cpu_psi_some_avg10, 6.0);
  ASSERT_TRUE(snap.cgroups[0].cpu) << "throttling from the v1 cpu controller";
  EXPECT_EQ(snap.cgroups[0].cpu->nr_periods, 50u);
}

TEST(SystemSampler, HostPsiOnlyWhenThereIsNoCgroupFilesystem) {
  sys::sampler s(opts(fixtures + "host-psi"));
  auto const& snap = s.sample(t0());
  EXPECT_EQ(snap.cgroup, "");
  EXPECT_TRUE(snap.cgroups.empty());
  EXPECT_THAT(snap.sources, ElementsAre("rss:self", "psi:host/memory", "psi:host/cpu"));
  EXPECT_DOUBLE_EQ(*snap.process_rss_mib, 20.0);
  EXPECT_DOUBLE_EQ(*snap.memory_psi_some_avg10, 3.25);
  EXPECT_DOUBLE_EQ(*snap.memory_psi_full_avg10, 0.75);
  EXPECT_DOUBLE_EQ(*snap.cpu_psi_some_avg10, 55.0);
  EXPECT_FALSE(snap.cgroup_current_mib);
  auto d = sys::evaluate(snap, ray::config::degradation_config{}, 0);
  EXPECT_THAT(d.reasons, ElementsAre("cpu_pressure"));
}

TEST(SystemSampler, TheTrueRootCgroupIsNotReadAsRaysOwn) {
  // Ray in the root of the unified hierarchy (no cgroup namespace): the root's pressure files are host-wide.
  temp_tree t("v2");
  t.write("proc/self/cgroup", "0::/\n");
  t.write("sys/fs/cgroup/memory.pressure", "some avg10=77.00 avg60=0.00 avg300=0.00 total=1\n");
  t.write("sys/fs/cgroup/cpu.stat", "usage_usec 5\n");
  sys::sampler s(opts(t.root()));
  auto const& snap = s.sample(t0());
  ASSERT_EQ(snap.cgroups.size(), 1u);
  EXPECT_FALSE(snap.cgroups[0].found);
  EXPECT_EQ(snap.cgroups[0].path, "/");
  EXPECT_EQ(snap.cgroup, "");
  EXPECT_TRUE(snap.memory_psi_from_host);
  EXPECT_DOUBLE_EQ(*snap.memory_psi_some_avg10, 55.0) << "/proc/pressure/memory, labelled as host PSI";
  EXPECT_THAT(snap.sources, ElementsAre("rss:self", "psi:host/memory", "psi:host/cpu"));
}

TEST(SystemSampler, ACgroupNamespaceRootIsRaysOwn) {
  temp_tree t("v2");
  t.write("proc/self/cgroup", "0::/\n");
  t.write("sys/fs/cgroup/cgroup.type", "domain\n");  // a namespace root is a non-root cgroup
  t.write("sys/fs/cgroup/memory.current", "104857600\n");
  t.write("sys/fs/cgroup/memory.max", "209715200\n");
  t.write("sys/fs/cgroup/memory.pressure", "some avg10=4.00 avg60=0.00 avg300=0.00 total=1\n");
  sys::sampler s(opts(t.root()));
  auto const& snap = s.sample(t0());
  EXPECT_EQ(snap.cgroup, "/");
  EXPECT_DOUBLE_EQ(*snap.cgroup_usage_ratio, 0.5);
  EXPECT_FALSE(snap.memory_psi_from_host);
  EXPECT_DOUBLE_EQ(*snap.memory_psi_some_avg10, 4.0);
  EXPECT_TRUE(snap.cpu_psi_from_host);
}

TEST(SystemSampler, HostPsiIsConsultedPerResource) {
  temp_tree t("v2");
  t.remove(ray_unit + "memory.pressure");
  t.remove("sys/fs/cgroup/system.slice/llama-server.service/memory.pressure");
  sys::sampler s(opts(t.root(), {"/system.slice/llama-server.service"}));
  auto const& snap = s.sample(t0());
  EXPECT_TRUE(snap.memory_psi_from_host);
  EXPECT_DOUBLE_EQ(*snap.memory_psi_some_avg10, 55.0);
  EXPECT_FALSE(snap.cpu_psi_from_host);
  EXPECT_DOUBLE_EQ(*snap.cpu_psi_some_avg10, 3.0);
  EXPECT_EQ(snap.sources.back(), "psi:host/memory");
}

TEST(SystemSampler, MissingFilesLeaveFieldsAbsent) {
  sys::sampler s(opts(fixtures + "missing", {"/not/there"}));
  s.set_backend_pid(99999);
  auto const& snap = s.sample(t0());
  EXPECT_TRUE(snap.taken);
  EXPECT_TRUE(snap.sources.empty());
  EXPECT_EQ(snap.cgroup, "");
  ASSERT_EQ(snap.cgroups.size(), 2u);
  EXPECT_FALSE(snap.cgroups[0].found);
  EXPECT_FALSE(snap.cgroups[1].found);
  EXPECT_EQ(snap.cgroups[1].path, "/not/there");
  EXPECT_FALSE(snap.process_rss_mib);
  EXPECT_FALSE(snap.backend_rss_mib);
  EXPECT_FALSE(snap.rss_mib);
  EXPECT_FALSE(snap.cgroup_current_mib);
  EXPECT_FALSE(snap.memory_psi_some_avg10);
  EXPECT_FALSE(snap.cpu_psi_some_avg10);
  EXPECT_FALSE(snap.cpu_throttled_ratio);
  EXPECT_TRUE(sys::evaluate(snap, ray::config::degradation_config{}, 0).reasons.empty());

  temp_tree empty("");
  sys::sampler e(opts(empty.root()));
  EXPECT_TRUE(e.sample(t0()).sources.empty());
  sys::sampler nowhere(opts("/definitely/not/a/root"));
  EXPECT_TRUE(nowhere.sample(t0()).sources.empty());
}

TEST(SystemSampler, GarbledFilesLeaveFieldsAbsent) {
  sys::sampler s(opts(fixtures + "garbled"));
  auto const& snap = s.sample(t0());
  EXPECT_FALSE(snap.process_rss_mib);
  ASSERT_EQ(snap.cgroups.size(), 1u);
  auto const& own = snap.cgroups[0];
  EXPECT_TRUE(own.found) << "the files exist";
  EXPECT_FALSE(own.memory_current);
  EXPECT_FALSE(own.memory_high);
  EXPECT_FALSE(own.memory_max);
  EXPECT_FALSE(own.swap_current);
  EXPECT_FALSE(own.events);
  EXPECT_FALSE(own.memory_psi) << "the some line is garbled, the full line out of range";
  EXPECT_FALSE(own.cpu_psi);
  EXPECT_FALSE(own.cpu);
  EXPECT_FALSE(snap.cgroup_current_mib);
  // The cgroup pressure files exist, so the (alarming) host PSI is not used in their place.
  EXPECT_FALSE(snap.memory_psi_some_avg10);
  EXPECT_FALSE(snap.cpu_psi_some_avg10);
  EXPECT_FALSE(snap.memory_psi_from_host);
  EXPECT_TRUE(sys::evaluate(snap, ray::config::degradation_config{}, 0).reasons.empty());
}

TEST(SystemSampler, GarbledProcSelfCgroupMeansNoOwnCgroup) {
  temp_tree t("v2");
  t.write("proc/self/cgroup", "what:ever\n\x01\x02\n1:2\n0::relative/path\n0::/a/../b\n");
  sys::sampler s(opts(t.root()));
  auto const& snap = s.sample(t0());
  EXPECT_TRUE(snap.cgroups.empty());
  EXPECT_EQ(snap.cgroup, "");
  EXPECT_TRUE(snap.memory_psi_from_host);
}

TEST(SystemSampler, OversizedAndSpecialFilesAreNotRead) {
  temp_tree t("v2");
  t.write(ray_unit + "memory.current", std::string(70 * 1024, '1'));
  t.remove(ray_unit + "memory.max");
  ASSERT_EQ(::mkfifo((t.root() + "/" + ray_unit + "memory.max").c_str(), 0600), 0);
  t.remove(ray_unit + "memory.swap.current");
  fs::create_directories(t.root() + "/" + ray_unit + "memory.swap.current");
  sys::sampler s(opts(t.root()));
  auto const& snap = s.sample(t0());  // must not block on the FIFO
  EXPECT_FALSE(snap.cgroups[0].memory_current);
  EXPECT_FALSE(snap.cgroups[0].memory_max);
  EXPECT_FALSE(snap.cgroups[0].swap_current);
  EXPECT_EQ(snap.cgroups[0].memory_high, sys::unlimited);

  // A smaller bound applies to every file.
  auto o = opts(fixtures + "v2");
  o.max_file_bytes = 30;  // proc/self/cgroup has 29 bytes, statm 32
  sys::sampler small(o);
  auto const& snap2 = small.sample(t0());
  EXPECT_FALSE(snap2.process_rss_mib);
  ASSERT_EQ(snap2.cgroups.size(), 1u);
  EXPECT_EQ(snap2.cgroups[0].memory_high, sys::unlimited);
  EXPECT_FALSE(snap2.cgroups[0].events) << "memory.events is longer than 30 bytes";
}

TEST(SystemSampler, WatchedPathsAreNormalizedDedupedAndConfined) {
  sys::sampler s(opts(fixtures + "v2", {"system.slice//ray.service/", "/../../etc", "/system.slice/../x",
                                        "/system.slice/llama-server.service"}));
  auto const& snap = s.sample(t0());
  ASSERT_EQ(snap.cgroups.size(), 2u);
  EXPECT_EQ(snap.cgroups[0].path, "/system.slice/ray.service");
  EXPECT_EQ(snap.cgroups[1].path, "/system.slice/llama-server.service");
}

// --- deltas and caching
// -------------------------------------------------------------------------------------------

TEST(SystemSampler, ThrottlingAndOomEventsAreDeltasBetweenSamples) {
  temp_tree t("v2");
  sys::sampler s(opts(t.root()));
  auto first = s.sample(t0());
  EXPECT_FALSE(first.cpu_throttled_ratio);
  EXPECT_EQ(first.new_oom_events, 0u);

  t.write(ray_unit + "cpu.stat", "nr_periods 1100\nnr_throttled 40\nthrottled_usec 65000\n");
  t.write(ray_unit + "memory.events", "low 0\nhigh 3\nmax 1\noom 0\noom_kill 1\n");
  auto second = s.sample(t0() + 250ms);
  ASSERT_TRUE(second.cpu_throttled_ratio);
  EXPECT_DOUBLE_EQ(*second.cpu_throttled_ratio, 0.3);  // 30 of 100 periods
  EXPECT_EQ(second.cgroups[0].new_throttled_usec, 60000u);
  EXPECT_EQ(second.new_oom_events, 1u);
  EXPECT_EQ(second.new_high_events, 3u);
  EXPECT_EQ(second.new_max_events, 1u);
  auto d = sys::evaluate(second, ray::config::degradation_config{.memory_rss_threshold_mib = 512}, 0);
  EXPECT_THAT(d.reasons, ElementsAre("memory_pressure", "cpu_pressure"));
  EXPECT_TRUE(d.memory.events);
  EXPECT_TRUE(d.cpu.throttled);

  // Nothing new: no periods elapsed → ratio 0, no new events, no pressure.
  auto third = s.sample(t0() + 500ms);
  EXPECT_DOUBLE_EQ(*third.cpu_throttled_ratio, 0.0);
  EXPECT_EQ(third.new_oom_events, 0u);
  EXPECT_EQ(third.new_high_events, 0u);
  EXPECT_TRUE(sys::evaluate(third, ray::config::degradation_config{.memory_rss_threshold_mib = 512}, 0)
                  .reasons.empty());
}

TEST(SystemSampler, CountersThatGoBackwardsStartOver) {
  temp_tree t("v2");
  sys::sampler s(opts(t.root()));
  s.sample(t0());
  // The unit was restarted: a fresh cgroup with small counters.
  t.write(ray_unit + "cpu.stat", "nr_periods 10\nnr_throttled 5\nthrottled_usec 100\n");
  t.write(ray_unit + "memory.events", "low 0\nhigh 0\nmax 0\noom 1\noom_kill 0\n");
  auto const& snap = s.sample(t0() + 1s);
  EXPECT_DOUBLE_EQ(*snap.cpu_throttled_ratio, 0.5);
  EXPECT_EQ(snap.new_oom_events, 1u);
}

TEST(SystemSampler, WatchedCgroupDeltasCountAndTheWorstRatioWins) {
  temp_tree t("v2");
  sys::sampler s(opts(t.root(), {"/system.slice/llama-server.service"}));
  s.sample(t0());
  std::string const llama = "sys/fs/cgroup/system.slice/llama-server.service/";
  t.write(llama + "cpu.stat", "nr_periods 5100\nnr_throttled 70\nthrottled_usec 90000\n");    // 50 %
  t.write(ray_unit + "cpu.stat", "nr_periods 1100\nnr_throttled 20\nthrottled_usec 6000\n");  // 10 %
  t.write(llama + "memory.events", "low 0\nhigh 0\nmax 0\noom 1\noom_kill 1\n");
  auto const& snap = s.sample(t0() + 250ms);
  EXPECT_DOUBLE_EQ(*snap.cpu_throttled_ratio, 0.5);
  EXPECT_EQ(snap.new_oom_events, 2u);
}

TEST(SystemSampler, ReadsAtMostEvery250Ms) {
  temp_tree t("v2");
  sys::sampler s(opts(t.root()));
  auto const& first = s.sample(t0());
  EXPECT_DOUBLE_EQ(*first.cgroup_current_mib, 200.0);
  t.write(ray_unit + "memory.current", "314572800\n");
  auto const& cached = s.sample(t0() + 249ms);
  EXPECT_EQ(cached.taken_at, t0());
  EXPECT_DOUBLE_EQ(*cached.cgroup_current_mib, 200.0);
  auto const& fresh = s.sample(t0() + 250ms);
  EXPECT_EQ(fresh.taken_at, t0() + 250ms);
  EXPECT_DOUBLE_EQ(*fresh.cgroup_current_mib, 300.0);
  EXPECT_EQ(&s.last(), &fresh);
}

TEST(SystemSampler, WorksWithAManualClock) {
  ray::manual_clock clk;
  temp_tree t("v2");
  sys::sampler s(opts(t.root()));
  s.sample(clk.now());
  t.write(ray_unit + "memory.current", "314572800\n");
  clk.advance(100ms);
  EXPECT_DOUBLE_EQ(*s.sample(clk.now()).cgroup_current_mib, 200.0);
  clk.advance(150ms);
  EXPECT_DOUBLE_EQ(*s.sample(clk.now()).cgroup_current_mib, 300.0);
}

TEST(SystemSampler, ReadsTheRealHostWithoutFailing) {
  sys::sampler s(sys::sampler::options_for(ray::config::degradation_config{}));
  s.set_backend_pid(static_cast<int>(::getpid()));
  auto const& snap = s.sample(ray::system_clock().now());
  ASSERT_TRUE(snap.process_rss_mib);
  EXPECT_GT(*snap.process_rss_mib, 0.0);
  EXPECT_DOUBLE_EQ(*snap.rss_mib, *snap.process_rss_mib + *snap.backend_rss_mib);
  EXPECT_EQ(snap.sources.front(), "rss:self");
}

// --- evaluate
// -----------------------------------------------------------------------------------------------------

namespace {

ray::config::degradation_config cfg() {
  ray::config::degradation_config c;  // defaults: queue 8, rss 256, ratio 0.9, throttle 0.2, mem PSI 10/1,
  c.degrade_to_max_tokens = 64;       // cpu PSI 50/5, shed 20
  return c;
}

sys::snapshot calm() {
  sys::snapshot s;
  s.taken = true;
  s.process_rss_mib = 100;
  s.cgroup_usage_ratio = 0.5;
  s.memory_psi_some_avg10 = 1;
  s.memory_psi_full_avg10 = 0.5;
  s.cpu_psi_some_avg10 = 10;
  s.cpu_psi_full_avg10 = 1;
  s.cpu_throttled_ratio = 0.05;
  return s;
}

}  // namespace

TEST(SystemEvaluate, CalmMeansNoReasons) {
  auto d = sys::evaluate(calm(), cfg(), 7);
  EXPECT_TRUE(d.reasons.empty());
  EXPECT_FALSE(d.degraded());
  EXPECT_FALSE(d.clamp_to);
  EXPECT_FALSE(d.shed);
  EXPECT_FALSE(d.queue_pressure || d.memory_pressure || d.cpu_pressure);
}

TEST(SystemEvaluate, QueueDepthAtTheThresholdClamps) {
  auto d = sys::evaluate(calm(), cfg(), 8);
  EXPECT_THAT(d.reasons, ElementsAre("queue_depth"));
  EXPECT_TRUE(d.queue_pressure);
  EXPECT_EQ(d.clamp_to, 64u);
  EXPECT_FALSE(d.memory_pressure);
}

TEST(SystemEvaluate, EachMemorySignalAloneIsMemoryPressure) {
  struct tc {
    char const* name;
    void (*apply)(sys::snapshot&);
    sys::memory_signals expect;
  };
  tc const cases[] = {
      {"rss", [](sys::snapshot& s) { s.process_rss_mib = 256.5; }, {.rss = true}},
      {"cgroup ratio", [](sys::snapshot& s) { s.cgroup_usage_ratio = 0.91; }, {.cgroup_ratio = true}},
      {"psi some", [](sys::snapshot& s) { s.memory_psi_some_avg10 = 10.01; }, {.psi_some = true}},
      {"psi full", [](sys::snapshot& s) { s.memory_psi_full_avg10 = 1.5; }, {.psi_full = true}},
      {"oom", [](sys::snapshot& s) { s.new_oom_events = 1; }, {.events = true}},
      {"high", [](sys::snapshot& s) { s.new_high_events = 2; }, {.events = true}},
  };
  for (auto const& c : cases) {
    auto snap = calm();
    c.apply(snap);
    auto d = sys::evaluate(snap, cfg(), 0);
    EXPECT_THAT(d.reasons, ElementsAre("memory_pressure")) << c.name;
    EXPECT_EQ(d.memory, c.expect) << c.name;
    EXPECT_EQ(d.clamp_to, 64u) << c.name;
    EXPECT_FALSE(d.cpu_pressure) << c.name;
    EXPECT_FALSE(d.shed) << c.name;
  }
}

TEST(SystemEvaluate, ThresholdsAreStrict) {
  auto snap = calm();
  snap.rss_mib = 256;
  snap.cgroup_usage_ratio = 0.9;
  snap.memory_psi_some_avg10 = 10;
  snap.memory_psi_full_avg10 = 1;
  snap.cpu_throttled_ratio = 0.2;
  snap.cpu_psi_some_avg10 = 50;
  snap.cpu_psi_full_avg10 = 5;
  EXPECT_TRUE(sys::evaluate(snap, cfg(), 0).reasons.empty());
}

TEST(SystemEvaluate, EachCpuSignalAloneIsCpuPressure) {
  struct tc {
    char const* name;
    void (*apply)(sys::snapshot&);
    sys::cpu_signals expect;
  };
  tc const cases[] = {
      {"throttled", [](sys::snapshot& s) { s.cpu_throttled_ratio = 0.25; }, {.throttled = true}},
      {"psi some", [](sys::snapshot& s) { s.cpu_psi_some_avg10 = 51; }, {.psi_some = true}},
      {"psi full", [](sys::snapshot& s) { s.cpu_psi_full_avg10 = 6; }, {.psi_full = true}},
  };
  for (auto const& c : cases) {
    auto snap = calm();
    c.apply(snap);
    auto d = sys::evaluate(snap, cfg(), 0);
    EXPECT_THAT(d.reasons, ElementsAre("cpu_pressure")) << c.name;
    EXPECT_EQ(d.cpu, c.expect) << c.name;
    EXPECT_EQ(d.clamp_to, 64u) << c.name;
  }
}

TEST(SystemEvaluate, SeveralReasonsAreListedInOrder) {
  auto snap = calm();
  snap.cpu_throttled_ratio = 0.9;
  auto d = sys::evaluate(snap, cfg(), 20);
  EXPECT_THAT(d.reasons, ElementsAre("queue_depth", "cpu_pressure"));
  snap.process_rss_mib = 1000;
  d = sys::evaluate(snap, cfg(), 20);
  EXPECT_THAT(d.reasons, ElementsAre("queue_depth", "memory_pressure", "cpu_pressure"));
  EXPECT_EQ(d.clamp_to, 64u);
}

TEST(SystemEvaluate, ShedsAboveTheMemoryPsiFullShedThreshold) {
  auto snap = calm();
  snap.memory_psi_full_avg10 = 20;
  auto d = sys::evaluate(snap, cfg(), 0);
  EXPECT_FALSE(d.shed) << "20 is not above 20";
  EXPECT_TRUE(d.memory_pressure);
  snap.memory_psi_full_avg10 = 20.01;
  d = sys::evaluate(snap, cfg(), 0);
  EXPECT_TRUE(d.shed);
  EXPECT_THAT(d.reasons, ElementsAre("memory_pressure"));
  auto c = cfg();
  c.shed_at_memory_psi_full_avg10 = 50;
  EXPECT_FALSE(sys::evaluate(snap, c, 0).shed);
}

TEST(SystemEvaluate, AbsentSignalsNeverCount) {
  sys::snapshot empty;
  auto d = sys::evaluate(empty, cfg(), 0);
  EXPECT_TRUE(d.reasons.empty());
  EXPECT_FALSE(d.shed);
}

TEST(SystemEvaluate, DisabledDegradationDecidesNothing) {
  auto snap = calm();
  snap.rss_mib = 10'000;
  snap.memory_psi_full_avg10 = 90;
  snap.cpu_throttled_ratio = 1;
  auto c = cfg();
  c.enabled = false;
  auto d = sys::evaluate(snap, c, 1000);
  EXPECT_TRUE(d.reasons.empty());
  EXPECT_FALSE(d.shed);
  EXPECT_FALSE(d.clamp_to);
  EXPECT_FALSE(d.queue_pressure || d.memory_pressure || d.cpu_pressure);
}

namespace {
TEST(SystemEvaluate, ASupervisedBackendsRssAloneIsNotMemoryPressure) {
  // Ray's own RSS is what memoryRssThresholdMiB guards; a 600 MiB model process next to it is not pressure.
  ray::system::snapshot s;
  s.taken = true;
  s.process_rss_mib = 20;
  s.backend_rss_mib = 600;
  s.rss_mib = 620;
  ray::config::degradation_config c;
  c.memory_rss_threshold_mib = 512;
  EXPECT_FALSE(ray::system::evaluate(s, c, 0).memory_pressure);
}
}  // namespace
