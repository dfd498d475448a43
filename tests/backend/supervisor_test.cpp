// The llama-server supervisor (src/ray/backend/supervisor.hpp), against shell-script stand-ins and the
// llama-server test double (tests/support/fake_llama_server). Tests never sleep to wait: they run the
// io_context in short slices until a condition holds or a deadline passes.
#include "ray/backend/supervisor.hpp"
#include "ray/backend/flags.hpp"
#include "support/require.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace ray::backend {
namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using ::testing::HasSubstr;

std::string const tiny_model = std::string(RAY_TEST_FIXTURES) + "/models/tiny-llama-64x2.gguf";

// --- helpers ---------------------------------------------------------------------------------------------

class temp_dir {
 public:
  temp_dir() {
    std::string tmpl = (fs::temp_directory_path() / "ray-sup-XXXXXX").string();
    char* p = ::mkdtemp(tmpl.data());
    if (p == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path const& path() const { return path_; }
  fs::path write(std::string const& name, std::string const& text, bool executable = false) const {
    auto p = path_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
    if (executable) fs::permissions(p, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
    return p;
  }

 private:
  fs::path path_;
};

std::string read_file(fs::path const& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// True while `pid` exists and is not a zombie (an orphan's zombie may linger when no init reaps it).
bool alive(pid_t pid) {
  if (::kill(pid, 0) != 0) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto paren = text.rfind(')');
  return paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] != 'Z';
}

bool contains_line(std::vector<std::string> const& lines, std::string const& needle) {
  return std::any_of(lines.begin(), lines.end(),
                     [&](auto const& l) { return l.find(needle) != std::string::npos; });
}

struct event {
  state s;
  std::string reason;
  steady::time_point at;
};

// One io_context, a synchronous logger writing into a file, a temp dir, and the recorded state reports.
struct harness {
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> guard{ioc.get_executor()};
  temp_dir dir;
  fs::path log_path = dir.path() / "ray.log";
  int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  telemetry::logger log{[this] {
    telemetry::logger_options o;
    o.service = "ray-test";
    o.min_level = telemetry::level::debug;
    o.out_fd = log_fd;
    o.err_fd = log_fd;
    o.synchronous = true;
    return o;
  }()};
  std::vector<event> events;

  ~harness() { ::close(log_fd); }

  std::unique_ptr<supervisor> make(supervisor_options o) {
    auto s = std::make_unique<supervisor>(ioc.get_executor(), std::move(o), log);
    s->on_state([this](state st, std::string const& reason) {
      events.push_back({st, reason, steady::now()});
    });
    return s;
  }

  // Runs the loop until pred() holds or the deadline passes; returns pred().
  bool run_until(std::function<bool()> const& pred, steady::duration timeout = 10s) {
    auto deadline = steady::now() + timeout;
    while (!pred() && steady::now() < deadline)
      ioc.run_for(5ms);
    return pred();
  }
  // Runs the loop for a while (to show that something does NOT happen).
  void run_for(steady::duration d) {
    auto until = steady::now() + d;
    while (steady::now() < until)
      ioc.run_for(5ms);
  }

  std::size_t count(state s) const {
    return static_cast<std::size_t>(
        std::count_if(events.begin(), events.end(), [&](auto const& e) { return e.s == s; }));
  }
  std::vector<event> of(state s) const {
    std::vector<event> out;
    for (auto const& e : events)
      if (e.s == s) out.push_back(e);
    return out;
  }
  std::string log_text() const { return read_file(log_path); }

  // A /bin/sh script stand-in for llama-server.
  supervisor_options script(std::string const& body) {
    supervisor_options o;
    o.binary =
        dir.write("fake-" + std::to_string(++scripts_) + ".sh", "#!/bin/sh\n" + body + "\n", true).string();
    o.port = 0;  // no port check
    o.backoff_base = 50ms;
    o.backoff_cap = 200ms;
    o.stop_grace = 5s;
    return o;
  }

  // Stops the supervisor and waits for it.
  bool stop(supervisor& s, steady::duration timeout = 10s) {
    bool done = false;
    s.stop([&] { done = true; });
    return run_until([&] { return done; }, timeout);
  }

 private:
  int scripts_{0};
};

TEST(SupervisorOptionsFor, TakesTheCommandChecksAndLoadTimeoutFromTheLaunchProfile) {
  auto profile = *config::profile_defaults("sub1b")->model.adapter.launch;
  auto o = supervisor_options_for(profile);
  EXPECT_EQ(o.binary, "/usr/local/bin/llama-server");
  EXPECT_EQ(o.fallback_binary, "llama-server");
  EXPECT_EQ(o.args, llama_server_args(profile));
  EXPECT_EQ(o.model_path, profile.model_path);
  EXPECT_EQ(o.host, "127.0.0.1");
  EXPECT_EQ(o.port, 8081);
  EXPECT_EQ(o.memory.ctx_size, 3072u);
  EXPECT_EQ(o.memory.cache_ram_mib, 512u);
  EXPECT_FALSE(o.cache_ram_unlimited);
  EXPECT_EQ(o.load_timeout, 300'000ms);
  EXPECT_EQ(o.stop_grace, 10s);
  EXPECT_EQ(o.backoff_base, 1s);
  EXPECT_EQ(o.backoff_cap, 30s);
  EXPECT_EQ(o.crash_loop_exits, 5u);
  EXPECT_EQ(o.crash_loop_window, 5min);
  EXPECT_EQ(o.keep_lines, 50u);

  profile.cache_ram_mib = -1;
  profile.load_timeout_ms = 5000;
  o = supervisor_options_for(profile, "/m/x.gguf", "/opt/llama-server");
  EXPECT_EQ(o.binary, "/opt/llama-server");
  EXPECT_EQ(o.fallback_binary, "") << "an explicit --llama-server has no fallback";
  EXPECT_EQ(o.model_path, "/m/x.gguf");
  EXPECT_EQ(o.args, llama_server_args(profile, "/m/x.gguf"));
  EXPECT_EQ(o.memory.cache_ram_mib, 0u);
  EXPECT_TRUE(o.cache_ram_unlimited);
  EXPECT_EQ(o.load_timeout, 5000ms);
}

// --- spawning, output, process group -----------------------------------------------------------------

TEST(Supervisor, SpawnsTheLlamaServerDoubleWithTheBuiltFlagsAndForwardsItsOutput) {
#ifndef FAKE_LLAMA_SERVER
  RAY_SKIP_OR_FAIL("fake_llama_server target not available");
#else
  harness h;
  auto profile = *config::profile_defaults("sub1b")->model.adapter.launch;
  profile.port = free_port();
  auto o = supervisor_options_for(profile, tiny_model, FAKE_LLAMA_SERVER);
  o.memory_limit_bytes = 64ull << 30;
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return sup->pid().has_value(); })) << sup->reason();
  pid_t pid = *sup->pid();
  EXPECT_EQ(sup->current_state(), state::starting);
  EXPECT_THAT(sup->reason(), HasSubstr("pid " + std::to_string(pid)));
  EXPECT_EQ(::getpgid(pid), pid) << "the child leads its own process group";
  EXPECT_TRUE(sup->spawned_at().has_value());

  std::string listening = "listening " + std::to_string(profile.port);
  ASSERT_TRUE(h.run_until([&] { return contains_line(sup->last_lines(), listening); }));
  // Every flag the builder emits is one the double understands.
  EXPECT_FALSE(contains_line(sup->last_lines(), "unknown argument")) << h.log_text();
  auto log = h.log_text();
  EXPECT_THAT(log, HasSubstr(R"("src":"backend","line":")" + listening + "\""));
  EXPECT_THAT(log, HasSubstr("\"message\":\"llama-server started\""));
  EXPECT_THAT(log, HasSubstr("--cache-ram 512"));
  EXPECT_THAT(log, HasSubstr("\"message\":\"memory check passed\""));

  auto ms = sup->mark_ready();
  ASSERT_TRUE(ms.has_value());
  EXPECT_GT(*ms, 0.0);
  EXPECT_EQ(sup->load_ms(), ms);
  EXPECT_FALSE(sup->mark_ready().has_value()) << "only the first /health 200 counts";

  ASSERT_TRUE(h.stop(*sup));
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
  EXPECT_FALSE(sup->pid().has_value());
  EXPECT_EQ(h.count(state::restarting), 0u);
#endif
}

TEST(Supervisor, AnExitLeadsToRestartingAndARespawnAfterADoublingBackOff) {
  harness h;
  auto o = h.script("echo up $$; sleep 0.1; exit 1");
  o.backoff_base = 300ms;
  o.backoff_cap = 1s;
  o.crash_loop_exits = 10;
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return h.count(state::starting) >= 3; }, 15s));
  auto starts = h.of(state::starting);
  auto restarts = h.of(state::restarting);
  ASSERT_GE(restarts.size(), 2u);
  EXPECT_THAT(restarts[0].reason, HasSubstr("exited with code 1"));
  EXPECT_THAT(restarts[0].reason, HasSubstr("restarting in 300 ms"));
  EXPECT_THAT(restarts[1].reason, HasSubstr("restarting in 600 ms"));
  EXPECT_GE(starts[1].at - restarts[0].at, 300ms);
  EXPECT_GE(starts[2].at - restarts[1].at, 600ms);
  EXPECT_NE(starts[0].reason, starts[1].reason) << "a new pid each time";
  EXPECT_EQ(sup->restarts(), 2u);
  // The unexpected exit is logged with the last output lines.
  auto log = h.log_text();
  EXPECT_THAT(log, HasSubstr("\"message\":\"llama-server exited with code 1\""));
  EXPECT_THAT(log, HasSubstr("\"lastLines\":[\"up "));
  ASSERT_TRUE(h.stop(*sup));
}

TEST(Supervisor, TheBackOffIsCappedAndResetsOnceTheChildWasReady) {
  harness h;
  auto o = h.script("echo up; sleep 0.05; exit 1");
  o.backoff_base = 40ms;
  o.backoff_cap = 100ms;
  o.crash_loop_exits = 20;
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return h.count(state::restarting) >= 4; }, 15s));
  auto r = h.of(state::restarting);
  EXPECT_THAT(r[0].reason, HasSubstr("in 40 ms"));
  EXPECT_THAT(r[1].reason, HasSubstr("in 80 ms"));
  EXPECT_THAT(r[2].reason, HasSubstr("in 100 ms"));
  EXPECT_THAT(r[3].reason, HasSubstr("in 100 ms"));
  // A child marked ready resets the exponent.
  ASSERT_TRUE(h.run_until([&] { return sup->pid().has_value(); }));
  ASSERT_TRUE(sup->mark_ready().has_value());
  auto before = h.count(state::restarting);
  ASSERT_TRUE(h.run_until([&] { return h.count(state::restarting) > before; }));
  EXPECT_THAT(h.events.back().reason, HasSubstr("in 40 ms"));
  ASSERT_TRUE(h.stop(*sup));
}

TEST(Supervisor, MoreThanTheAllowedExitsInTheWindowIsACrashLoopUntilReset) {
  harness h;
  auto o = h.script("exit 3");
  o.backoff_base = 10ms;
  o.backoff_cap = 20ms;
  o.crash_loop_exits = 2;
  o.crash_loop_window = 60s;
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return sup->current_state() == state::failed; }));
  EXPECT_THAT(sup->reason(), HasSubstr("crash loop"));
  EXPECT_THAT(sup->reason(), HasSubstr("3 times within 60 s"));
  EXPECT_THAT(sup->reason(), HasSubstr("exited with code 3"));
  EXPECT_EQ(h.count(state::starting), 3u);
  EXPECT_FALSE(sup->pid().has_value());
  // Failed stays failed: nothing respawns.
  h.run_for(150ms);
  EXPECT_EQ(h.count(state::starting), 3u);
  EXPECT_EQ(sup->current_state(), state::failed);
  EXPECT_THAT(h.log_text(), HasSubstr("llama-server supervisor gave up"));

  // SIGHUP → reset(): spawns again (and, the script being what it is, loops again).
  sup->reset();
  ASSERT_TRUE(h.run_until([&] { return h.count(state::starting) >= 4; }));
  ASSERT_TRUE(h.run_until([&] { return sup->current_state() == state::failed; }));
  EXPECT_EQ(h.count(state::starting), 6u);
  ASSERT_TRUE(h.stop(*sup));
}

// --- stopping ------------------------------------------------------------------------------------------

TEST(Supervisor, StopSendsSigtermToTheWholeProcessGroup) {
  harness h;
  // The leader waits for its own child on SIGTERM: it only ends quickly when the child got SIGTERM as well,
  // i.e. when the signal went to the group.
  auto o = h.script(
      "sh -c 'trap \"echo grandchild-term; exit 0\" TERM; echo grandchild-ready $$; while :; do sleep 0.05; "
      "done' &\n"
      "p=$!\n"
      "trap 'wait $p; echo leader-done; exit 0' TERM\n"
      "echo leader-ready\n"
      "while :; do sleep 0.05; done");
  o.stop_grace = 5s;
  auto sup = h.make(o);
  sup->start();
  // Both traps are set once both lines are out.
  ASSERT_TRUE(h.run_until([&] {
    return contains_line(sup->last_lines(), "grandchild-ready ") &&
           contains_line(sup->last_lines(), "leader-ready");
  }));
  pid_t pid = *sup->pid();
  pid_t grandchild = 0;
  for (auto const& l : sup->last_lines())
    if (l.starts_with("grandchild-ready ")) grandchild = std::stoi(l.substr(17));
  ASSERT_GT(grandchild, 0);
  EXPECT_EQ(::getpgid(grandchild), pid);

  auto t0 = steady::now();
  ASSERT_TRUE(h.stop(*sup));
  EXPECT_LT(steady::now() - t0, 5s) << "stopped within the grace";
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_FALSE(alive(grandchild));
  EXPECT_TRUE(contains_line(sup->last_lines(), "grandchild-term"));
  EXPECT_TRUE(contains_line(sup->last_lines(), "leader-done"));
  auto log = h.log_text();
  EXPECT_THAT(log, HasSubstr("\"message\":\"llama-server stopped\""));
  EXPECT_THAT(log, HasSubstr("exited with code 0"));
  EXPECT_THAT(log, Not(HasSubstr("SIGKILL")));
  EXPECT_EQ(h.count(state::restarting), 0u) << "a stop is not a crash";
}

TEST(Supervisor, StopSendsSigkillAfterTheGraceToAChildIgnoringSigterm) {
  harness h;
  auto o = h.script("trap '' TERM\necho ready\nwhile :; do sleep 0.05; done");
  o.stop_grace = 300ms;
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return contains_line(sup->last_lines(), "ready"); }));
  pid_t pid = *sup->pid();
  auto t0 = steady::now();
  ASSERT_TRUE(h.stop(*sup));
  auto took = steady::now() - t0;
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 5s);
  EXPECT_EQ(::kill(pid, 0), -1);
  auto log = h.log_text();
  EXPECT_THAT(log, HasSubstr("did not exit within the grace period; sending SIGKILL"));
  EXPECT_THAT(log, HasSubstr("killed by signal 9 (SIGKILL)"));
}

TEST(Supervisor, StopWithNothingRunningCompletesAtOnceAndCancelsARespawn) {
  harness h;
  auto o = h.script("exit 1");
  o.backoff_base = 5s;  // the respawn would come much later
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return h.count(state::restarting) == 1; }));
  ASSERT_TRUE(h.stop(*sup, 1s));
  h.run_for(100ms);
  EXPECT_EQ(h.count(state::starting), 1u);
  // Start after stop: a fresh start.
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return h.count(state::starting) == 2; }));
  ASSERT_TRUE(h.stop(*sup));
}

TEST(Supervisor, TheDestructorKillsAChildStillRunning) {
  harness h;
  pid_t pid = 0;
  {
    auto sup = h.make(h.script("echo up\nexec sleep 60"));
    sup->start();
    ASSERT_TRUE(h.run_until([&] { return contains_line(sup->last_lines(), "up"); }));
    pid = *sup->pid();
  }
  EXPECT_EQ(::kill(pid, 0), -1);
  h.run_for(50ms);  // pending handlers of the dead supervisor run harmlessly
  EXPECT_EQ(h.events.size(), 1u);
}

// --- pre-spawn checks ------------------------------------------------------------------------------------

TEST(Supervisor, AModelThatDoesNotFitIsRefusedWithTheEstimateAndNothingIsSpawned) {
  harness h;
  auto marker = h.dir.path() / "spawned";
  auto o = h.script("touch " + marker.string());
  o.model_path = tiny_model;
  o.memory.ctx_size = 2048;
  o.memory.cache_ram_mib = 0;
  o.memory_limit_bytes = 1ull << 20;
  auto sup = h.make(o);
  sup->start();
  EXPECT_EQ(sup->current_state(), state::failed);
  EXPECT_THAT(sup->reason(), HasSubstr("needs about "));
  EXPECT_THAT(sup->reason(), HasSubstr(" MiB, limit 1 MiB"));
  EXPECT_THAT(sup->reason(), HasSubstr("the configured memory limit"));
  ASSERT_TRUE(sup->estimate().has_value());
  EXPECT_GT(sup->estimate()->total, 1ull << 20);
  h.run_for(200ms);
  EXPECT_FALSE(sup->pid().has_value());
  EXPECT_FALSE(fs::exists(marker));
  EXPECT_EQ(h.count(state::starting), 0u);
  EXPECT_THAT(h.log_text(), Not(HasSubstr("llama-server started")));
}

TEST(Supervisor, TheMemoryLimitComesFromTheCgroupOrMemAvailable) {
  harness h;
  temp_dir root;
  root.write("proc/self/cgroup", "0::/system.slice/ray.service\n");
  root.write("proc/meminfo", "MemTotal:        4000000 kB\nMemFree:   100 kB\nMemAvailable:    2048000 kB\n");
  root.write("sys/fs/cgroup/system.slice/memory.max", "max\n");
  root.write("sys/fs/cgroup/system.slice/ray.service/memory.max", "1048576\n");
  auto r = root.path().string();
  EXPECT_EQ(own_cgroup_dir(r), r + "/sys/fs/cgroup/system.slice/ray.service");

  auto lim = read_memory_limit(r);
  ASSERT_TRUE(lim.has_value());
  EXPECT_EQ(lim->bytes, 1048576u);
  EXPECT_THAT(lim->source, HasSubstr("memory.max of " + r + "/sys/fs/cgroup/system.slice/ray.service"));

  // A tighter ancestor wins.
  root.write("sys/fs/cgroup/system.slice/memory.max", "524288\n");
  EXPECT_EQ(read_memory_limit(r)->bytes, 524288u);

  // Unlimited cgroups: MemAvailable.
  root.write("sys/fs/cgroup/system.slice/memory.max", "max\n");
  root.write("sys/fs/cgroup/system.slice/ray.service/memory.max", "max\n");
  lim = read_memory_limit(r);
  ASSERT_TRUE(lim.has_value());
  EXPECT_EQ(lim->bytes, 2048000ull * 1024);
  EXPECT_THAT(lim->source, HasSubstr("MemAvailable"));

  // A cgroup limit above MemAvailable does not overstate what is there.
  root.write("sys/fs/cgroup/system.slice/ray.service/memory.max", std::to_string(8ull << 30) + "\n");
  EXPECT_EQ(read_memory_limit(r)->bytes, 2048000ull * 1024);

  // Nothing readable.
  temp_dir empty;
  EXPECT_FALSE(read_memory_limit(empty.path().string()).has_value());
  EXPECT_EQ(own_cgroup_dir(empty.path().string()), "");

  // The supervisor refuses with the limit's source named.
  root.write("sys/fs/cgroup/system.slice/ray.service/memory.max", "1048576\n");
  auto o = h.script("exit 0");
  o.model_path = tiny_model;
  o.memory.ctx_size = 2048;
  o.fs_root = r;
  auto sup = h.make(o);
  sup->start();
  EXPECT_EQ(sup->current_state(), state::failed);
  EXPECT_THAT(sup->reason(), HasSubstr("limit 1 MiB"));
  EXPECT_THAT(sup->reason(), HasSubstr("cgroup memory.max of"));
}

TEST(Supervisor, AnUnreadableModelIsRefused) {
  harness h;
  auto o = h.script("exit 0");
  o.model_path = (h.dir.path() / "missing.gguf").string();
  auto sup = h.make(o);
  sup->start();
  EXPECT_EQ(sup->current_state(), state::failed);
  EXPECT_THAT(sup->reason(), HasSubstr("cannot read the model"));
  EXPECT_THAT(sup->reason(), HasSubstr("missing.gguf"));
}

TEST(Supervisor, APortHeldByAnotherListenerIsRefusedWithAClearMessage) {
  harness h;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 8), 0);  // never accepts, never answers
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  auto port = ntohs(a.sin_port);

  auto marker = h.dir.path() / "spawned";
  auto o = h.script("touch " + marker.string());
  o.host = "127.0.0.1";
  o.port = port;
  o.adopt_probe_timeout = 300ms;
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return sup->current_state() == state::failed; }));
  EXPECT_THAT(sup->reason(), HasSubstr("port 127.0.0.1:" + std::to_string(port) + " is already in use"));
  EXPECT_THAT(sup->reason(), HasSubstr("does not answer GET /props"));
  EXPECT_THAT(sup->reason(), HasSubstr("change launchProfile.port"));
  EXPECT_FALSE(sup->pid().has_value());
  EXPECT_FALSE(fs::exists(marker));
  ::close(fd);
}

TEST(Supervisor, AdoptsALlamaServerServingTheSameModelAndRefusesOneServingAnother) {
#ifndef FAKE_LLAMA_SERVER
  RAY_SKIP_OR_FAIL("fake_llama_server target not available");
#else
  harness h;
  auto profile = *config::profile_defaults("sub1b")->model.adapter.launch;
  profile.port = free_port();
  auto o = supervisor_options_for(profile, tiny_model, FAKE_LLAMA_SERVER);
  o.memory_limit_bytes = 64ull << 30;
  o.adopted_check_interval = 100ms;
  std::string listening = "listening " + std::to_string(profile.port);

  auto first = h.make(o);
  first->start();
  ASSERT_TRUE(h.run_until([&] { return contains_line(first->last_lines(), listening); }));

  auto second = h.make(o);
  second->start();
  ASSERT_TRUE(h.run_until([&] { return second->adopted(); }));
  EXPECT_EQ(second->current_state(), state::starting);
  EXPECT_THAT(second->reason(), HasSubstr("adopted the llama-server already serving " + tiny_model));
  EXPECT_FALSE(second->pid().has_value()) << "an adopted server is not our child";

  // Another model file (same bytes, another path): refused.
  auto other_model = h.dir.path() / "other.gguf";
  fs::copy_file(tiny_model, other_model);
  auto o3 = supervisor_options_for(profile, other_model.string(), FAKE_LLAMA_SERVER);
  o3.memory_limit_bytes = 64ull << 30;
  auto third = h.make(o3);
  third->start();
  ASSERT_TRUE(h.run_until([&] { return third->current_state() == state::failed; }));
  EXPECT_THAT(third->reason(),
              HasSubstr("a llama-server there serves " + tiny_model + ", not " + other_model.string()));

  // The adopted server goes away: the adopter starts its own.
  ASSERT_TRUE(h.stop(*first));
  ASSERT_TRUE(h.run_until([&] { return second->pid().has_value(); }));
  EXPECT_FALSE(second->adopted());
  ASSERT_TRUE(h.run_until([&] { return contains_line(second->last_lines(), listening); }));
  ASSERT_TRUE(h.stop(*second));
#endif
}

// --- failures while running ------------------------------------------------------------------------------

TEST(Supervisor, ASigkillWithANewOomKillInMemoryEventsIsAnOomKill) {
  harness h;
  auto cg = h.dir.path() / "cgroup";
  h.dir.write("cgroup/memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n");
  auto o = h.script("echo up\nexec sleep 60");
  o.cgroup_dir = cg.string();
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return contains_line(sup->last_lines(), "up"); }));
  EXPECT_EQ(read_oom_kill_count(cg.string()), 0u);
  h.dir.write("cgroup/memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n");
  ::kill(*sup->pid(), SIGKILL);  // what the kernel's OOM killer does
  ASSERT_TRUE(h.run_until([&] { return sup->current_state() == state::failed; }));
  EXPECT_THAT(sup->reason(), HasSubstr("killed by the kernel OOM killer"));
  EXPECT_THAT(sup->reason(), HasSubstr("oom_kill 0 -> 1"));
  EXPECT_EQ(h.count(state::restarting), 0u);
}

TEST(Supervisor, ASigkillWithoutANewOomKillIsAnOrdinaryExit) {
  harness h;
  h.dir.write("cgroup/memory.events", "oom 0\noom_kill 4\n");
  for (std::string cgroup :
       {(h.dir.path() / "cgroup").string(), (h.dir.path() / "no-such-cgroup").string()}) {
    auto o = h.script("echo up\nexec sleep 60");
    o.cgroup_dir = cgroup;
    auto sup = h.make(o);
    h.events.clear();
    sup->start();
    ASSERT_TRUE(h.run_until([&] { return contains_line(sup->last_lines(), "up"); }));
    ::kill(*sup->pid(), SIGKILL);
    ASSERT_TRUE(h.run_until([&] { return h.count(state::restarting) == 1; })) << cgroup;
    EXPECT_THAT(h.of(state::restarting)[0].reason, HasSubstr("killed by signal 9 (SIGKILL)"));
    ASSERT_TRUE(h.stop(*sup));
  }
}

TEST(Supervisor, ChildStillLoadingAtTheLoadTimeoutIsKilledAndTheStartFails) {
  harness h;
  auto o = h.script("echo loading\nexec sleep 60");
  o.load_timeout = 400ms;
  o.loading_log_interval = 100ms;
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return sup->pid().has_value(); }));
  pid_t pid = *sup->pid();
  ASSERT_TRUE(h.run_until([&] { return sup->current_state() == state::failed; }));
  EXPECT_THAT(sup->reason(), HasSubstr("did not become ready within 400 ms"));
  EXPECT_EQ(::kill(pid, 0), -1);
  auto log = h.log_text();
  EXPECT_THAT(log, HasSubstr("llama-server still loading after 0 s"));
  EXPECT_THAT(log, HasSubstr("\"elapsedMs\":"));
  EXPECT_EQ(h.count(state::restarting), 0u);
}

TEST(Supervisor, MarkReadyStopsTheLoadTimeout) {
  harness h;
  auto o = h.script("echo loading\nexec sleep 60");
  o.load_timeout = 300ms;
  o.loading_log_interval = 100ms;
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return sup->pid().has_value(); }));
  ASSERT_TRUE(sup->mark_ready().has_value());
  h.run_for(600ms);
  EXPECT_EQ(sup->current_state(), state::starting);
  EXPECT_TRUE(sup->pid().has_value());
  EXPECT_THAT(h.log_text(), HasSubstr("\"message\":\"llama-server ready\""));
  ASSERT_TRUE(h.stop(*sup));
}

TEST(Supervisor, AnExecFailureIsReportedThroughThePipeAndFailsAtOnce) {
  harness h;
  supervisor_options o;
  o.binary = h.dir.write("not-a-program", "this is not an executable format\n", true).string();
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return sup->current_state() == state::failed; }));
  EXPECT_THAT(sup->reason(), HasSubstr("cannot execute " + o.binary + ": Exec format error"));
  EXPECT_EQ(h.count(state::restarting), 0u);
}

TEST(Supervisor, AMissingBinaryFailsWithoutSpawningAndNamesTheSettings) {
  harness h;
  supervisor_options o;
  o.binary = "/nonexistent/llama-server";
  o.fallback_binary = "";
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return sup->current_state() == state::failed; }));
  EXPECT_THAT(sup->reason(), HasSubstr("/nonexistent/llama-server not found"));
  EXPECT_THAT(sup->reason(), HasSubstr("--llama-server"));
  EXPECT_EQ(h.count(state::starting), 0u);
}

TEST(Supervisor, AMissingProfileBinaryFallsBackToTheNameOnPath) {
  harness h;
  auto o = h.script("echo fallback-ran\nexec sleep 60");
  o.fallback_binary = o.binary;  // an absolute path here; on a box it is "llama-server" on $PATH
  o.binary = "/nonexistent/llama-server";
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return contains_line(sup->last_lines(), "fallback-ran"); }));
  ASSERT_TRUE(h.stop(*sup));
}

TEST(Supervisor, TheChildGetsNeitherRaysSettingsNorItsDescriptors) {
  harness h;
  ::setenv("RAY_TEST_SECRET", "hunter2", 1);
  int leak = ::open("/dev/null", O_RDONLY);  // deliberately without O_CLOEXEC
  ASSERT_EQ(::dup2(leak, 200), 200);
  ::close(leak);
  auto o = h.script(
      "echo \"ray=${RAY_TEST_SECRET-unset} extra=$EXTRA args=$*\"\n"
      "if [ \"$2\" = s3cret-key ]; then echo key-arrived-intact; fi\n"
      "if [ -e /proc/$$/fd/200 ]; then echo fd200=open; else echo fd200=closed; fi\n"
      "exec sleep 60");
  o.env = {"EXTRA=yes"};
  o.args = {"--api-key", "s3cret-key", "--hf-token=hf-tok3n"};
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return contains_line(sup->last_lines(), "fd200="); }));
  ::unsetenv("RAY_TEST_SECRET");
  ::close(200);
  // The child got its secret arguments; its echo of them is scrubbed from what Ray keeps and logs.
  EXPECT_TRUE(contains_line(sup->last_lines(),
                            "ray=unset extra=yes args=--api-key [redacted] --hf-token=[redacted]"));
  EXPECT_TRUE(contains_line(sup->last_lines(), "key-arrived-intact"));
  EXPECT_TRUE(contains_line(sup->last_lines(), "fd200=closed"));
  ASSERT_TRUE(h.stop(*sup));
  // The logged command line hides the secrets, and so does the logged output.
  auto log = h.log_text();
  EXPECT_THAT(log, Not(HasSubstr("s3cret-key")));
  EXPECT_THAT(log, Not(HasSubstr("hf-tok3n")));
  auto started = log.substr(log.find("llama-server started"));
  started = started.substr(0, started.find('\n'));
  EXPECT_THAT(started, HasSubstr("--api-key '<redacted>' '--hf-token=<redacted>'"));
  EXPECT_THAT(started, Not(HasSubstr("s3cret")));
}

// --- output ------------------------------------------------------------------------------------------------

TEST(Supervisor, OutputIsRateLimitedAndTheLastLinesAreKept) {
  harness h;
  auto o = h.script(
      "i=0\nwhile [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done\n"
      "printf 'x%.0s' $(seq 1 300); echo\n"
      "echo last >&2\nexec sleep 60");
  o.max_lines_per_second = 20;
  o.max_line_bytes = 100;
  auto sup = h.make(o);
  sup->start();
  ASSERT_TRUE(h.run_until([&] { return contains_line(sup->last_lines(), "last"); }));
  auto lines = sup->last_lines();
  ASSERT_EQ(lines.size(), 50u);
  EXPECT_EQ(lines.front(), "line 152");
  EXPECT_EQ(lines[47], "line 199");
  EXPECT_EQ(lines[48], std::string(100, 'x') + "…") << "a long line is cut";
  EXPECT_EQ(lines.back(), "last") << "stderr shares the pipe";
  EXPECT_GE(sup->dropped_lines(), 150u);
  auto log = h.log_text();
  auto forwarded = [&] {
    std::size_t n = 0;
    for (std::size_t pos = 0; (pos = log.find(R"("src":"backend","line":)", pos)) != std::string::npos; ++pos)
      ++n;
    return n;
  }();
  EXPECT_GE(forwarded, 20u);
  EXPECT_LE(forwarded, 40u);  // at most two one-second windows in this test
  ASSERT_TRUE(h.stop(*sup));
  EXPECT_THAT(h.log_text(), HasSubstr("backend output lines dropped (rate limit)"));
}

// --- the child never outlives Ray
// ----------------------------------------------------------------------------

TEST(Supervisor, TheChildGetsSigtermWhenRayDies) {
  harness h;
  auto pidfile = h.dir.path() / "child.pid";
  auto script = h.script("echo up\nexec sleep 60");
  pid_t helper = ::fork();
  ASSERT_GE(helper, 0);
  if (helper == 0) {
    // A stand-in for Ray: supervises, publishes the child's pid, then runs until killed.
    asio::io_context ioc;
    auto guard = asio::make_work_guard(ioc);
    telemetry::logger_options lo;
    lo.synchronous = true;
    lo.out_fd = lo.err_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    telemetry::logger log(lo);
    supervisor sup(ioc.get_executor(), script, log);
    sup.start();
    auto deadline = steady::now() + 10s;
    while (!sup.pid() && steady::now() < deadline)
      ioc.run_for(5ms);
    if (sup.pid()) std::ofstream(pidfile.string() + ".tmp") << *sup.pid();
    ::rename((pidfile.string() + ".tmp").c_str(), pidfile.c_str());
    ioc.run_for(30s);
    ::_exit(0);
  }
  auto deadline = steady::now() + 10s;
  while (!fs::exists(pidfile) && steady::now() < deadline)
    std::this_thread::sleep_for(5ms);  // polling another process's file: no event to await
  ASSERT_TRUE(fs::exists(pidfile));
  pid_t child = std::stoi(read_file(pidfile));
  ASSERT_TRUE(alive(child));
  EXPECT_EQ(::getpgid(child), child);

  ::kill(helper, SIGKILL);
  ::waitpid(helper, nullptr, 0);
  deadline = steady::now() + 5s;
  while (alive(child) && steady::now() < deadline)
    std::this_thread::sleep_for(5ms);
  EXPECT_FALSE(alive(child)) << "PR_SET_PDEATHSIG ended the child with Ray";
}

}  // namespace
}  // namespace ray::backend
