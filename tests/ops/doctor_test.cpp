// ray doctor through the real binary: against a running Ray + the llama-server double every check is ok;
// against a broken setup (missing GGUF, port taken by something else, backend down, memory over budget, auth
// off on a public bind) each of those is a fail with advice, and the exit status is 1.
#include "ray/ops/ops.hpp"
#include "support/ray_process.hpp"

#include <gtest/gtest.h>
#include <boost/json.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <filesystem>

namespace {

namespace rt = ray::test;
namespace json = boost::json;
using namespace std::chrono_literals;

std::string const fixture = std::string(RAY_TEST_FIXTURES) + "/models/tiny-llama-64x2.gguf";

// A box of `ram_mib` with a cgroup v2 tree whose memory.pressure is readable.
std::filesystem::path make_root(rt::temp_dir const& dir, std::string const& name, unsigned ram_mib) {
  auto root = dir.path() / name;
  std::filesystem::create_directories(root / "proc/self");
  std::filesystem::create_directories(root / "sys/fs/cgroup/ray.service");
  dir.write_file(name + "/proc/meminfo", "MemTotal:       " + std::to_string(ram_mib * 1024) +
                                             " kB\nMemAvailable:   " + std::to_string(ram_mib * 1024) +
                                             " kB\nSwapTotal:             0 kB\n");
  dir.write_file(name + "/proc/self/cgroup", "0::/ray.service\n");
  dir.write_file(name + "/sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
  dir.write_file(name + "/sys/fs/cgroup/ray.service/cgroup.type", "domain\n");
  dir.write_file(name + "/sys/fs/cgroup/ray.service/memory.current", "1048576\n");
  dir.write_file(name + "/sys/fs/cgroup/ray.service/memory.max", "max\n");
  dir.write_file(
      name + "/sys/fs/cgroup/ray.service/memory.pressure",
      "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
  return root;
}

json::object config_for(std::string const& host, int port, int backend_port, std::string const& model) {
  return json::object{
      {"profile", "sub1b"},
      {"server", json::object{{"host", host}, {"port", port}}},
      {"rateLimit", json::object{{"enabled", false}}},
      {"model",
       json::object{{"id", "tiny-llama"},
                    {"adapter", json::object{{"kind", "llama.cpp"},
                                             {"healthIntervalMs", 100},
                                             {"launchProfile", json::object{{"modelPath", model},
                                                                            {"binaryPath", FAKE_LLAMA_SERVER},
                                                                            {"port", backend_port},
                                                                            {"ctxSize", 2048},
                                                                            {"parallel", 2},
                                                                            {"cacheRamMiB", 64}}}}}}}};
}

std::map<std::string, json::object> run_doctor(std::filesystem::path const& config,
                                               std::filesystem::path const& root, int* exit_code,
                                               std::string* output) {
  rt::ray_process d(rt::spawn_options{.binary = RAY_BINARY,
                                      .args = {"doctor", "--config", config.string(), "--system-root",
                                               root.string(), "--timeout-ms", "1000", "--json"}});
  *exit_code = d.wait_exit(rt::in(30s)).value_or(-1000);
  *output = d.output();
  std::map<std::string, json::object> by_name;
  json::error_code ec;
  auto v = json::parse(d.stdout_text(), ec);
  if (ec || !v.is_object()) return by_name;
  for (auto const& c : v.at("checks").as_array())
    by_name[std::string(c.at("name").as_string())] = c.as_object();
  return by_name;
}

std::string status_of(std::map<std::string, json::object> const& m, std::string const& name) {
  auto it = m.find(name);
  return it == m.end() ? "(missing)" : std::string(it->second.at("status").as_string());
}

TEST(Doctor, AllOkAgainstARunningRayAndTheDouble) {
  rt::temp_dir dir;
  auto root = make_root(dir, "box", 8192);
  rt::ray_process dbl(rt::spawn_options{.binary = FAKE_LLAMA_SERVER,
                                        .args = {"--port", "0", "-m", fixture, "-c", "2048", "-np", "2"}});
  auto line = dbl.wait_for_log("listening ", rt::in(10s));
  ASSERT_TRUE(line) << dbl.output();
  int const dport = std::stoi(line->substr(line->find(' ') + 1));
  int const port = rt::free_loopback_port();
  auto cfg_path = rt::write_config(dir, config_for("127.0.0.1", port, dport, fixture));
  rt::ray_process ray(
      rt::spawn_options{.binary = RAY_BINARY,
                        .args = {"serve", "--config", cfg_path.string(), "--system-root", root.string()},
                        .working_directory = dir.path()});
  ASSERT_TRUE(ray.wait_listening(rt::in(10s))) << ray.output();

  int rc = 0;
  std::string out;
  auto checks = run_doctor(cfg_path, root, &rc, &out);
  ASSERT_FALSE(checks.empty()) << out;
  for (auto const& [name, c] : checks)
    EXPECT_EQ(std::string(c.at("status").as_string()), "ok") << name << ": " << json::serialize(c);
  EXPECT_NE(std::string(checks["port"].at("detail").as_string()).find("held by Ray"), std::string::npos);
  for (char const* n : {"config", "port", "backend", "model", "memory", "auth", "storage", "pressure"})
    EXPECT_TRUE(checks.contains(n)) << n;
  EXPECT_EQ(rc, 0) << out;
}

TEST(Doctor, EachBrokenPartIsAFailWithAdvice) {
  rt::temp_dir dir;
  auto root = make_root(dir, "small", 512);
  // Something that is not Ray holds the port: a bare listener that never answers.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int const port = ntohs(a.sin_port);
  int const dead_backend = rt::free_loopback_port();  // nothing listens there

  // Public bind, auth off; no GGUF at modelPath; 512 MiB box.
  auto cfg_path = rt::write_config(
      dir, config_for("0.0.0.0", port, dead_backend, (dir.path() / "missing.gguf").string()));
  int rc = 0;
  std::string out;
  auto checks = run_doctor(cfg_path, root, &rc, &out);
  ::close(fd);
  ASSERT_FALSE(checks.empty()) << out;
  for (char const* n : {"port", "backend", "model", "auth"}) {
    EXPECT_EQ(status_of(checks, n), "fail") << n << "\n" << out;
    if (checks.contains(n)) EXPECT_FALSE(checks[n].at("advice").as_string().empty()) << n;
  }
  EXPECT_NE(std::string(checks["port"].at("detail").as_string()).find("not Ray"), std::string::npos) << out;
  EXPECT_EQ(rc, 1);

  // Memory over budget needs a readable model: the fixture with a context that cannot fit 512 MiB.
  auto big = config_for("127.0.0.1", rt::free_loopback_port(), dead_backend, fixture);
  auto& l = big["model"].as_object()["adapter"].as_object()["launchProfile"].as_object();
  l["cacheRamMiB"] = 1024;
  auto big_path = rt::write_config(dir, big, "big.json");
  auto mem = run_doctor(big_path, root, &rc, &out);
  EXPECT_EQ(status_of(mem, "memory"), "fail") << out;
  if (mem.contains("memory")) {
    EXPECT_NE(std::string(mem["memory"].at("detail").as_string()).find("over budget"), std::string::npos)
        << out;
    EXPECT_FALSE(mem["memory"].at("advice").as_string().empty());
  }
  EXPECT_EQ(status_of(mem, "model"), "ok") << out;
  EXPECT_EQ(rc, 1);
}

TEST(Doctor, AnInvalidConfigIsOneFailNamingTheKey) {
  rt::temp_dir dir;
  auto p = dir.write_file("bad.json", R"({"server":{"port":70000}})");
  int rc = 0;
  std::string out;
  auto checks = run_doctor(p, dir.path(), &rc, &out);
  EXPECT_EQ(status_of(checks, "config"), "fail") << out;
  EXPECT_NE(json::serialize(checks["config"]).find("server.port"), std::string::npos) << out;
  EXPECT_EQ(rc, 1);
}

}  // namespace
