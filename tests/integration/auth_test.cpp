// API-key auth and rate limiting through the real binary (http-api.md §1, §6, §7).
#include "http_test_util.hpp"

#include <openssl/evp.h>

#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>

namespace ray::itest {
namespace {

constexpr std::string_view kKeyA = "key-A-0123456789abcdef";
constexpr std::string_view kKeyB = "key-B-fedcba9876543210";

std::string sha256_hex(std::string_view s) {
  unsigned char md[32];
  unsigned len = 0;
  EVP_Digest(s.data(), s.size(), md, &len, EVP_sha256(), nullptr);
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

boost::json::object auth_config(int max_requests = 100) {
  return with(test_config(),
              {{"auth", boost::json::object{{"enabled", true}, {"apiKeyEnv", "TEST_RAY_KEYS"}}},
               {"rateLimit", boost::json::object{{"enabled", true},
                                                 {"maxRequests", max_requests},
                                                 {"windowMs", 60000},
                                                 {"keyStrategy", "api-key"}}}});
}

std::string bearer(std::string_view key) {
  return "Authorization: Bearer " + std::string(key) + "\r\n";
}

rt::http_response send_one(ray_server& s, std::string const& request) {
  auto c = s.connect();
  EXPECT_TRUE(c.send(request));
  auto r = c.read_response(rt::in(kIo));
  EXPECT_TRUE(r) << c.last_error();
  return r.value_or(rt::http_response{});
}

std::string infer(std::string_view headers = {}) {
  return post_json("/v1/infer", R"({"input":"hi"})", headers);
}

TEST(Auth, BadCredentialsAre401WithoutSpendingQuota) {
  ray_server s(auth_config(), no_host_pressure(),
               {{"TEST_RAY_KEYS", std::string(kKeyA) + "," + std::string(kKeyB)}});
  ASSERT_TRUE(s.wait_listening());
  auto first = send_one(s, infer(bearer(kKeyA)));
  ASSERT_EQ(first.status, 200) << first.describe();
  ASSERT_EQ(first.header("x-ratelimit-remaining").value_or(""), "99");
  std::string const bad[] = {
      "",                                                     // no key
      bearer("wrong-key-0123456789"),                         // wrong key
      bearer(kKeyA) + bearer(kKeyA),                          // two Authorization headers
      "Authorization: Basic " + std::string(kKeyA) + "\r\n",  // another scheme
      "Authorization: Bearer\r\n",                            // no token
  };
  for (auto const& h : bad) {
    auto r = send_one(s, infer(h));
    EXPECT_TRUE(is_error(r, 401, "unauthorized")) << h;
    EXPECT_EQ(r.header("www-authenticate").value_or(""), "Bearer realm=\"ray\"");
    EXPECT_FALSE(r.has_header("x-ratelimit-remaining")) << "a rejected key must not touch the limiter";
    EXPECT_EQ(r.body.find("key-"), std::string::npos);
  }
  auto second = send_one(s, infer(bearer(kKeyA)));
  EXPECT_EQ(second.header("x-ratelimit-remaining").value_or(""), "98") << "the 401s spent no quota";
  // A bearer scheme in lower case is accepted.
  auto lower = send_one(s, infer("authorization: bearer " + std::string(kKeyB) + "\r\n"));
  EXPECT_EQ(lower.status, 200);
}

TEST(Auth, ProbesAreOpenAndOperatorRoutesAreProtected) {
  ray_server s(auth_config(), no_host_pressure(), {{"TEST_RAY_KEYS", std::string(kKeyA)}});
  ASSERT_TRUE(s.wait_listening());
  for (auto path : {"/livez", "/readyz", "/"})
    EXPECT_EQ(send_one(s, get(path)).status, 200) << path;
  for (auto path : {"/health", "/metrics", "/v1/config"}) {
    EXPECT_TRUE(is_error(send_one(s, get(path)), 401, "unauthorized")) << path;
    EXPECT_EQ(send_one(s, get(path, bearer(kKeyA))).status, 200) << path;
  }
}

TEST(Auth, ExpectContinueWithoutAKeyGets401AndNo100Continue) {
  ray_server s(auth_config(), no_host_pressure(), {{"TEST_RAY_KEYS", std::string(kKeyA)}});
  ASSERT_TRUE(s.wait_listening());
  auto c = s.connect();
  ASSERT_TRUE(c.send(post_head("/v1/infer", 14, "application/json", "Expect: 100-continue\r\n")));
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  EXPECT_TRUE(is_error(*r, 401, "unauthorized")) << "got " << r->describe();
  EXPECT_TRUE(closes_after(c, *r));
}

TEST(Auth, TheLimitAnswers429WithResetHeadersAndRetryAfter) {
  ray_server s(auth_config(2), no_host_pressure(),
               {{"TEST_RAY_KEYS", std::string(kKeyA) + "," + std::string(kKeyB)}});
  ASSERT_TRUE(s.wait_listening());
  EXPECT_EQ(send_one(s, infer(bearer(kKeyA))).status, 200);
  EXPECT_EQ(send_one(s, infer(bearer(kKeyA))).status, 200);
  auto r = send_one(s, infer(bearer(kKeyA)));
  ASSERT_TRUE(is_error(r, 429, "rate_limited"));
  auto reset = std::stoll(r.header("x-ratelimit-reset").value_or("0"));
  auto now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
  EXPECT_GT(reset, now.count());
  EXPECT_LE(reset, now.count() + 61);
  auto retry = std::stoi(r.header("retry-after").value_or("0"));
  EXPECT_GE(retry, 1);
  EXPECT_LE(retry, 60);
  EXPECT_EQ(r.header("x-ratelimit-remaining").value_or(""), "0");
  // Another key (keyStrategy api-key) has its own window.
  EXPECT_EQ(send_one(s, infer(bearer(kKeyB))).status, 200);
}

TEST(Auth, EnabledWithoutKeysRefusesToStart) {
  ray_server s(auth_config(), no_host_pressure());
  auto code = s.process().wait_exit(rt::in(kIo));
  ASSERT_TRUE(code);
  EXPECT_EQ(*code, 2);
  EXPECT_NE(s.process().output().find("TEST_RAY_KEYS"), std::string::npos);
}

TEST(Auth, NoSecretAppearsInLogsErrorBodiesOrConfig) {
  auto cfg = auth_config();
  cfg["auth"].as_object()["apiKeySha256"] = boost::json::array{sha256_hex("digest-only-key-000000")};
  ray_server s(cfg, no_host_pressure(),
               {{"TEST_RAY_KEYS", std::string(kKeyA)}, {"RAY_UPSTREAM_SECRET", "upstream-secret-value-123"}});
  ASSERT_TRUE(s.wait_listening());
  std::vector<std::string> bodies;
  bodies.push_back(send_one(s, infer(bearer(kKeyA))).body);
  bodies.push_back(send_one(s, infer(bearer("key-A-0123456789abcdeX"))).body);
  bodies.push_back(send_one(s, get("/v1/config", bearer(kKeyA))).body);
  bodies.push_back(send_one(s, get("/health", bearer(kKeyA))).body);
  ASSERT_TRUE(s.process().signal(SIGTERM));
  ASSERT_TRUE(s.process().wait_exit(rt::in(kIo)));
  std::string all = s.process().output();
  for (auto const& b : bodies)
    all += b;
  for (std::string const& secret :
       {std::string(kKeyA), sha256_hex(kKeyA), sha256_hex("digest-only-key-000000"),
        std::string("upstream-secret-value-123")}) {
    EXPECT_EQ(all.find(secret), std::string::npos) << "secret leaked: " << secret.substr(0, 6) << "…";
  }
}

TEST(Auth, SighupSwapsTheKeyListOnTheRunningProcess) {
  auto cfg = with(test_config(),
                  {{"auth", boost::json::object{{"enabled", true},
                                                {"apiKeyEnv", "TEST_RAY_KEYS"},
                                                {"apiKeySha256", boost::json::array{sha256_hex(kKeyA)}}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto pid_before = s.process().pid();
  auto keep = s.connect();  // an open connection survives the reload
  ASSERT_TRUE(keep.send(get("/health", bearer(kKeyA))));
  ASSERT_EQ(keep.read_response(rt::in(kIo))->status, 200);
  EXPECT_TRUE(is_error(send_one(s, get("/health", bearer(kKeyB))), 401, "unauthorized"));

  cfg["auth"].as_object()["apiKeySha256"] = boost::json::array{sha256_hex(kKeyB)};
  std::ofstream(s.config_path()) << boost::json::serialize(cfg);
  ASSERT_TRUE(s.process().signal(SIGHUP));
  ASSERT_TRUE(s.process().wait_for_log(
      [](std::string_view l) { return l.find("configuration reloaded") != std::string_view::npos; },
      rt::in(kIo)));
  EXPECT_TRUE(is_error(send_one(s, get("/health", bearer(kKeyA))), 401, "unauthorized"));
  EXPECT_EQ(send_one(s, get("/health", bearer(kKeyB))).status, 200);
  ASSERT_TRUE(keep.send(get("/livez")));
  auto again = keep.read_response(rt::in(kIo));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200);
  EXPECT_EQ(s.process().pid(), pid_before);
}

TEST(Auth, ForwardedForIsIgnoredFromAPublicPeerButUsedBehindALoopbackProxy) {
  // Peer is loopback here (a proxy on the same box); with trustProxyHeaders the rightmost public XFF entry is
  // the client, so two different forwarded clients get separate windows.
  auto cfg =
      with(test_config(),
           {{"rateLimit",
             boost::json::object{
                 {"enabled", true}, {"maxRequests", 1}, {"windowMs", 60000}, {"trustProxyHeaders", true}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  EXPECT_EQ(send_one(s, infer("X-Forwarded-For: 203.0.113.7\r\n")).status, 200);
  EXPECT_EQ(send_one(s, infer("X-Forwarded-For: 203.0.113.7\r\n")).status, 429);
  EXPECT_EQ(send_one(s, infer("X-Forwarded-For: 198.51.100.9, 10.0.0.2\r\n")).status, 200);
}

TEST(Auth, ThePublicTypeScriptEraConfigEnforcesAuthAgainstALlamaServer) {
  rt::ray_process fake(
      rt::spawn_options{.binary = FAKE_LLAMA_SERVER, .args = {"--port", "0", "-c", "2048", "-np", "2"}});
  auto line =
      fake.wait_for_log([](std::string_view l) { return l.rfind("listening ", 0) == 0; }, rt::in(kIo));
  ASSERT_TRUE(line) << fake.output();
  std::string const backend = "http://127.0.0.1:" + line->substr(std::string_view("listening ").size());
  // The example file unchanged, attached to the double; its key comes from RAY_API_KEYS as the file says.
  rt::temp_dir dir;
  std::vector<std::string> args{
      "serve",  "--config", std::string(RAY_SOURCE_DIR) + "/examples/config/ray.sub1b.public.json",
      "--port", "0",        "--backend-url",
      backend};
  for (auto& a : no_host_pressure())
    args.push_back(a);
  rt::ray_process ray(rt::spawn_options{.binary = RAY_BINARY,
                                        .args = args,
                                        .env = {{"RAY_API_KEYS", std::string(kKeyA)}},
                                        .working_directory = dir.path()});
  auto port = ray.wait_listening(rt::in(kIo));
  ASSERT_TRUE(port) << ray.output();
  // Wait for the backend to be ready (warm-up included).
  auto ready = [&] {
    rt::raw_client c(*port);
    if (!c.send(get("/readyz"))) return false;
    auto r = c.read_response(rt::in(kIo));
    return r && r->status == 200;
  };
  auto until = rt::in(kIo);
  while (!ready() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(20ms);
  ASSERT_TRUE(ready()) << ray.output();

  auto ask = [&](std::string const& headers) {
    rt::raw_client c(*port);
    EXPECT_TRUE(c.send(infer(headers)));
    return c.read_response(rt::in(kIo)).value_or(rt::http_response{});
  };
  EXPECT_TRUE(is_error(ask(""), 401, "unauthorized"));
  EXPECT_TRUE(is_error(ask(bearer("not-the-key-0123456789")), 401, "unauthorized"));
  auto ok = ask(bearer(kKeyA));
  ASSERT_EQ(ok.status, 200) << ok.describe();
  EXPECT_EQ(ok.header("x-ratelimit-limit").value_or(""), "120");
  EXPECT_FALSE(rt::string_field(*json_body(ok), "output").empty());
}

}  // namespace
}  // namespace ray::itest
