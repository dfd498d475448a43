// ray deploy render: the units pass `systemd-analyze verify`, the Caddyfiles `caddy validate`, haproxy.cfg
// `haproxy -c`; and the rendered Caddyfile (site made a loopback address, upstream the test's Ray) carries an
// SSE stream from the real `ray` + the llama-server double unbuffered: the first token event arrives before
// the last is produced.
#include "ray/ops/ops.hpp"
#include "support/raw_client.hpp"
#include "support/ray_process.hpp"
#include "support/require.hpp"

#include <gtest/gtest.h>
#include <boost/json.hpp>

#include <unistd.h>

#include <fstream>
#include <regex>
#include <sstream>

namespace {

namespace ops = ray::ops;
namespace rt = ray::test;
namespace json = boost::json;
using namespace std::chrono_literals;

std::string const fixture = std::string(RAY_TEST_FIXTURES) + "/models/tiny-llama-64x2.gguf";

std::string find_tool(std::initializer_list<char const*> paths) {
  for (char const* p : paths)
    if (::access(p, X_OK) == 0) return p;
  return {};
}

std::string slurp(std::filesystem::path const& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// A llama.cpp config whose launch profile points at binaries that exist here (verify checks ExecStart).
json::object deploy_config(bool supervise) {
  return json::object{
      {"profile", "sub1b"},
      {"server", json::object{{"drainMs", 2000}}},
      {"asyncQueue", json::object{{"enabled", true}, {"storageDir", "/var/lib/ray/jobs"}}},
      {"model",
       json::object{{"id", "tiny"},
                    {"adapter",
                     json::object{{"kind", "llama.cpp"},
                                  {"launchProfile", json::object{{"modelPath", fixture},
                                                                 {"binaryPath", FAKE_LLAMA_SERVER},
                                                                 {"ctxSize", 2048},
                                                                 {"parallel", 2},
                                                                 {"cacheRamMiB", 128},
                                                                 {"supervise", supervise},
                                                                 {"extraArgs", json::array{"--mlock"}}}}}}}}};
}

struct rendered {
  rt::temp_dir dir;
  std::filesystem::path out;
  int rc{-1};
  std::string output;
};

std::unique_ptr<rendered> render_with_binary(json::object const& cfg, std::vector<std::string> extra) {
  auto r = std::make_unique<rendered>();
  auto path = rt::write_config(r->dir, cfg);
  r->out = r->dir.path() / "out";
  std::vector<std::string> args{"deploy",       "render",        "--config", path.string(),
                                "--out",        r->out.string(), "--domain", "ray.example.com",
                                "--memory-mib", "4096",          "--binary", RAY_BINARY};
  args.insert(args.end(), extra.begin(), extra.end());
  rt::ray_process p(rt::spawn_options{.binary = RAY_BINARY, .args = args});
  r->rc = p.wait_exit(rt::in(30s)).value_or(-1000);
  r->output = p.output();
  return r;
}

TEST(Render, UnitsCarryTheMemorySplitOomOrderHardeningAndStopTimeouts) {
  auto loaded = ray::config::load_from_text(json::serialize(deploy_config(false)), {}, {});
  ASSERT_TRUE(loaded) << loaded.error().message;
  ops::render_options o;
  o.domain = "ray.example.com";
  auto r = ops::render(*loaded, o, 4096 * ray::gguf::mib);
  ASSERT_TRUE(r) << r.error().message;
  std::map<std::string, std::string> files;
  for (auto const& f : r->files)
    files[f.name] = f.text;
  ASSERT_TRUE(files.contains("ray-gateway.service"));
  ASSERT_TRUE(files.contains("ray-llama-cpp.service"));
  auto const& gw = files["ray-gateway.service"];
  auto const& be = files["ray-llama-cpp.service"];
  EXPECT_NE(gw.find("OOMScoreAdjust=-500"), std::string::npos);
  EXPECT_NE(be.find("OOMScoreAdjust=500"), std::string::npos);
  for (char const* h : {"NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes"}) {
    EXPECT_NE(gw.find(h), std::string::npos) << h;
    EXPECT_NE(be.find(h), std::string::npos) << h;
  }
  EXPECT_NE(gw.find("ReadWritePaths=/var/lib/ray/jobs"), std::string::npos) << gw;
  // drainMs 2000 + shutdownGraceMs 25000 (sub1b) + 5 s.
  EXPECT_NE(gw.find("TimeoutStopSec=32\n"), std::string::npos) << gw;
  EXPECT_NE(be.find("LimitMEMLOCK=infinity"), std::string::npos);
  // MemoryMax of llama-server is its estimated need, in whole MiB.
  std::uint64_t const need_mib = (r->memory.backend.total + ray::gguf::mib - 1) / ray::gguf::mib;
  EXPECT_NE(be.find("MemoryMax=" + std::to_string(need_mib) + "M"), std::string::npos) << be;
  EXPECT_NE(be.find("--cache-ram 128"), std::string::npos) << be;
  EXPECT_NE(files["Caddyfile"].find("flush_interval -1"), std::string::npos);
  EXPECT_NE(files["Caddyfile"].find("ray.example.com {"), std::string::npos);
  EXPECT_TRUE(files.contains("ray.env"));
  EXPECT_TRUE(files.contains("INSTALL.md"));

  // Supervised: one unit, the backend's share inside it, no llama-server unit.
  auto sup = ray::config::load_from_text(json::serialize(deploy_config(true)), {}, {});
  ASSERT_TRUE(sup);
  auto r2 = ops::render(*sup, o, 4096 * ray::gguf::mib);
  ASSERT_TRUE(r2);
  for (auto const& f : r2->files)
    EXPECT_NE(f.name, "ray-llama-cpp.service");
}

TEST(Render, SecretFlagsLeaveTheCommandLineForTheEnvFile) {
  auto cfg = deploy_config(false);
  cfg["model"].as_object()["adapter"].as_object()["launchProfile"].as_object()["extraArgs"] =
      json::array{"--api-key", "sekrit-value"};
  auto loaded = ray::config::load_from_text(json::serialize(cfg), {}, {});
  ASSERT_TRUE(loaded) << loaded.error().message;
  auto r = ops::render(*loaded, {}, 4096 * ray::gguf::mib);
  ASSERT_TRUE(r);
  for (auto const& f : r->files) {
    EXPECT_EQ(f.text.find("sekrit-value"), std::string::npos) << f.name;
    if (f.name == "ray.env") EXPECT_NE(f.text.find("LLAMA_ARG_API_KEY="), std::string::npos);
  }
}

TEST(Render, NodesAreParsedStrictly) {
  EXPECT_TRUE(ops::parse_nodes("10.0.0.2:3000,10.0.0.3:3000"));
  EXPECT_FALSE(ops::parse_nodes("10.0.0.2"));
  EXPECT_FALSE(ops::parse_nodes("10.0.0.2:0"));
  EXPECT_FALSE(ops::parse_nodes("a:1,a:1"));
  EXPECT_FALSE(ops::parse_nodes("bad host:1"));
}

TEST(RenderTools, SystemdAnalyzeVerifyAcceptsTheUnits) {
  auto const sa = find_tool({"/usr/bin/systemd-analyze", "/bin/systemd-analyze"});
  if (sa.empty()) RAY_SKIP_OR_FAIL("systemd-analyze not installed");
  for (bool supervise : {false, true}) {
    auto r = render_with_binary(deploy_config(supervise), {});
    ASSERT_EQ(r->rc, 0) << r->output;
    std::vector<std::string> args{"verify", "--man=no"};
    for (auto const& e : std::filesystem::directory_iterator(r->out))
      if (e.path().extension() == ".service") args.push_back(e.path().string());
    ASSERT_EQ(args.size(), supervise ? 3u : 4u);
    rt::ray_process v(rt::spawn_options{.binary = sa, .args = args});
    EXPECT_EQ(v.wait_exit(rt::in(60s)), 0) << v.output();
    EXPECT_EQ(v.output().find("not executable"), std::string::npos) << v.output();
  }
}

TEST(RenderTools, CaddyAndHaproxyAcceptTheProxyFiles) {
  auto const caddy = find_tool({"/usr/bin/caddy", "/usr/local/bin/caddy"});
  auto const haproxy = find_tool({"/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"});
  if (caddy.empty() || haproxy.empty()) RAY_SKIP_OR_FAIL("caddy or haproxy not installed");
  auto r = render_with_binary(deploy_config(false), {"--nodes", "127.0.0.1:3001,127.0.0.1:3002"});
  ASSERT_EQ(r->rc, 0) << r->output;
  std::vector<std::pair<std::string, std::string>> env{
      {"HOME", r->dir.path().string()},
      {"XDG_DATA_HOME", (r->dir.path() / "data").string()},
      {"XDG_CONFIG_HOME", (r->dir.path() / "config").string()}};
  for (char const* name : {"Caddyfile", "Caddyfile.nodes"}) {
    rt::ray_process v(rt::spawn_options{
        .binary = caddy,
        .args = {"validate", "--config", (r->out / name).string(), "--adapter", "caddyfile"},
        .env = env});
    EXPECT_EQ(v.wait_exit(rt::in(60s)), 0) << name << "\n" << v.output();
  }
  auto const nodes = slurp(r->out / "Caddyfile.nodes");
  EXPECT_NE(nodes.find("lb_policy least_conn"), std::string::npos);
  EXPECT_NE(nodes.find("health_uri /readyz"), std::string::npos);
  auto const cfg = slurp(r->out / "haproxy.cfg");
  for (char const* s : {"balance leastconn", "option httpchk GET /readyz", "inter 500ms fall 2 rise 2",
                        "timeout tunnel", "server n1 127.0.0.1:3001", "server n2 127.0.0.1:3002"})
    EXPECT_NE(cfg.find(s), std::string::npos) << s;
  rt::ray_process hc(
      rt::spawn_options{.binary = haproxy, .args = {"-c", "-f", (r->out / "haproxy.cfg").string()}});
  EXPECT_EQ(hc.wait_exit(rt::in(60s)), 0) << hc.output();
}

TEST(RenderTools, CaddyWithTheRenderedCaddyfileStreamsSseUnbuffered) {
  auto const caddy = find_tool({"/usr/bin/caddy", "/usr/local/bin/caddy"});
  if (caddy.empty()) RAY_SKIP_OR_FAIL("caddy not installed");
  rt::temp_dir dir;
  // The double makes one token every 100 ms: 20 tokens take ~2 s to produce.
  rt::ray_process dbl(rt::spawn_options{
      .binary = FAKE_LLAMA_SERVER, .args = {"--port", "0", "-c", "2048", "-np", "2", "--gen-tps", "10"}});
  auto line = dbl.wait_for_log("listening ", rt::in(10s));
  ASSERT_TRUE(line) << dbl.output();
  std::string const dport = line->substr(line->find(' ') + 1);
  json::object cfg{{"profile", "sub1b"},
                   {"rateLimit", json::object{{"enabled", false}}},
                   {"model", json::object{{"id", "tiny-llama"},
                                          {"adapter", json::object{{"kind", "llama.cpp"},
                                                                   {"healthIntervalMs", 100},
                                                                   {"launchProfile", nullptr}}}}}};
  auto cpath = rt::write_config(dir, cfg);
  std::filesystem::create_directories(dir.path() / "sysroot");
  rt::ray_process ray(rt::spawn_options{
      .binary = RAY_BINARY,
      .args = {"serve", "--config", cpath.string(), "--port", "0", "--backend-url",
               "http://127.0.0.1:" + dport, "--system-root", (dir.path() / "sysroot").string()},
      .working_directory = dir.path()});
  auto rport = ray.wait_listening(rt::in(10s));
  ASSERT_TRUE(rport) << ray.output();

  // Render the Caddyfile for this config and make it a loopback site in front of this Ray.
  auto r = render_with_binary(cfg, {});
  ASSERT_EQ(r->rc, 0) << r->output;
  std::string text = slurp(r->out / "Caddyfile");
  ASSERT_NE(text.find("ray.example.com {"), std::string::npos) << text;
  ASSERT_NE(text.find("reverse_proxy 127.0.0.1:3000 {"), std::string::npos) << text;
  int const cport = rt::free_loopback_port();
  text = std::regex_replace(text, std::regex("ray\\.example\\.com \\{"),
                            "http://127.0.0.1:" + std::to_string(cport) + " {");
  text = std::regex_replace(text, std::regex("127\\.0\\.0\\.1:3000"), "127.0.0.1:" + std::to_string(*rport));
  text = "{\n\tadmin off\n\tdefault_bind 127.0.0.1\n}\n" + text;
  auto caddyfile = dir.write_file("Caddyfile", text);
  rt::ray_process cad(
      rt::spawn_options{.binary = caddy,
                        .args = {"run", "--config", caddyfile.string(), "--adapter", "caddyfile"},
                        .env = {{"HOME", dir.path().string()},
                                {"XDG_DATA_HOME", (dir.path() / "d").string()},
                                {"XDG_CONFIG_HOME", (dir.path() / "c").string()}}});
  // Caddy is up when /readyz answers through it (Ray ready behind it).
  bool up = false;
  for (auto until = rt::in(20s); !up && rt::steady::now() < until && !cad.has_exited();) {
    try {
      rt::raw_client c(static_cast<std::uint16_t>(cport));
      // Caddy matches the site by Host; an unmatched one gets an empty 200, so the body must be Ray's.
      c.send("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(cport) +
             "\r\nConnection: close\r\n\r\n");
      auto resp = c.read_response(rt::in(2s));
      up = resp && resp->status == 200 && resp->body.find("ready") != std::string::npos;
    } catch (std::exception const&) {
    }
    if (!up) cad.wait_for_log([](std::string_view) { return false; }, rt::in(50ms));
  }
  ASSERT_TRUE(up) << cad.output() << ray.output();

  std::string const body =
      R"({"model":"tiny-llama","max_tokens":20,"stream":true,"messages":[{"role":"user","content":"a story through caddy"}]})";
  rt::raw_client c(static_cast<std::uint16_t>(cport));
  auto const start = rt::steady::now();
  ASSERT_TRUE(c.send("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(cport) +
                     "\r\nContent-Type: application/json\r\nConnection: "
                     "close\r\nContent-Length: " +
                     std::to_string(body.size()) + "\r\n\r\n" + body));
  std::optional<rt::steady::time_point> first, done;
  std::string got;
  auto const until = rt::in(30s);
  while (!done && rt::steady::now() < until) {
    got += c.read_until_closed(rt::in(20ms));  // what arrived within the next 20 ms
    if (!first && got.find("\"content\":\"") != std::string::npos) first = rt::steady::now();
    if (got.find("[DONE]") != std::string::npos) done = rt::steady::now();
    if (c.closed()) break;
  }
  ASSERT_TRUE(first) << got;
  ASSERT_TRUE(done) << got;
  EXPECT_NE(got.find("Server: Caddy"), std::string::npos) << got.substr(0, 400);
  // 20 tokens at 10/s: the first event must have come well before the last was produced (a buffering proxy
  // delivers everything together at the end).
  EXPECT_GE(rt::ms(*done - *first), 1000.0)
      << "first " << rt::ms(*first - start) << " ms, done " << rt::ms(*done - start);
}

}  // namespace
