// ray model pull / list / rm end to end: the real `ray` binary against a loopback origin the test runs
// (ops/pull_server.hpp) serving the tiny GGUF fixture — progress, resume after a cut connection, digest and
// GGUF refusals, the disk check, redirects, TLS with a CA made here with the openssl CLI, list and rm, a
// local copy.
#include "ops/pull_server.hpp"
#include "ray/core/core.hpp"
#include "support/ray_process.hpp"
#include "support/require.hpp"

#include <boost/json/parse.hpp>

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace {

namespace fs = std::filesystem;
using namespace ray::test;
using namespace std::chrono_literals;

std::string read_all(fs::path const& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string const& fixture() {
  static std::string const bytes = read_all(fs::path(RAY_TEST_FIXTURES) / "models/tiny-llama-64x2.gguf");
  return bytes;
}

std::string fixture_sha() {
  return ray::to_hex(ray::sha256(fixture()));
}

struct run_result {
  int status{-100};
  std::string out, err;
};

run_result ray_cli(std::vector<std::string> args, std::vector<std::pair<std::string, std::string>> env = {}) {
  ray_process p(spawn_options{.binary = RAY_BINARY, .args = std::move(args), .env = std::move(env)});
  auto const st = p.wait_exit(in(120s));
  return run_result{st.value_or(-100), p.stdout_text(), p.stderr_text()};
}

// Names of everything in a directory (recursively), for "nothing was left" assertions.
std::vector<std::string> entries(fs::path const& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); it != fs::recursive_directory_iterator(); ++it)
    if (!it->is_directory()) out.push_back(fs::relative(it->path(), dir).string());
  return out;
}

std::size_t count_lines_with(std::string const& text, std::string_view needle) {
  std::size_t n = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.find(needle) != std::string::npos) ++n;
  return n;
}

class ModelPull : public ::testing::Test {
 protected:
  temp_dir tmp;
  fs::path models() const { return tmp.path() / "models"; }
  std::vector<std::string> pull(std::string const& src) const {
    return {"model", "pull", src, "--models-dir", models().string()};
  }
};

TEST_F(ModelPull, DownloadsWithProgressLinesAndInstallsAtomically) {
  pull_server srv([](seen_request const& r, server_conn& c) { serve_body(r, c, fixture()); });
  auto args = pull(srv.url("/files/tiny-llama-64x2.gguf"));
  args.insert(args.end(), {"--sha256", fixture_sha()});
  auto const r = ray_cli(args);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(read_all(models() / "tiny-llama-64x2.gguf"), fixture());
  EXPECT_EQ(read_all(models() / "tiny-llama-64x2.gguf.sha256"), fixture_sha() + "  tiny-llama-64x2.gguf\n");
  // Not a terminal: plain lines (no carriage returns), one per 10 % step at least for a few steps.
  EXPECT_EQ(r.err.find('\r'), std::string::npos) << r.err;
  EXPECT_GE(count_lines_with(r.err, "pull tiny-llama-64x2: "), 3u) << r.err;
  EXPECT_NE(r.err.find("(100 %)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("/s"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find(fixture_sha()), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("llama"), std::string::npos) << r.out;
  // The partial was renamed away: only the two installed files remain.
  EXPECT_EQ(entries(models()).size(), 2u);
  auto const reqs = srv.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_FALSE(reqs[0].header("range"));
  EXPECT_EQ(reqs[0].header("accept-encoding").value_or(""), "identity");
}

TEST_F(ModelPull, ResumesWithRangeAfterTheServerDropsMidFile) {
  std::size_t const cut = 100'000;
  int n = 0;  // touched by the server's thread only
  pull_server srv([&](seen_request const& r, server_conn& c) {
    if (n++ == 0)
      serve_body(r, c, fixture(), cut);  // promises the whole file, sends 100000 bytes, closes
    else
      serve_body(r, c, fixture());
  });
  auto args = pull(srv.url("/m.gguf"));
  args.insert(args.end(), {"--sha256", fixture_sha(), "--name", "resumed"});
  auto const r = ray_cli(args);
  ASSERT_EQ(r.status, 0) << r.err;
  auto const reqs = srv.requests();
  ASSERT_EQ(reqs.size(), 2u) << r.err;
  EXPECT_FALSE(reqs[0].header("range"));
  EXPECT_EQ(reqs[1].header("range").value_or("(none)"), "bytes=" + std::to_string(cut) + "-");
  EXPECT_EQ(ray::to_hex(ray::sha256(read_all(models() / "resumed.gguf"))), fixture_sha());
  EXPECT_NE(r.err.find("retrying"), std::string::npos) << r.err;
}

TEST_F(ModelPull, GivesUpKeepingThePartialAndTheNextRunResumesIt) {
  // First run: the server never sends a byte past offset 50000, so the pull runs out of retries without
  // progress and gives up, keeping its partial.
  std::atomic<bool> healed{false};
  pull_server srv([&](seen_request const& r, server_conn& c) {
    std::size_t const from = r.header("range") ? std::stoull(r.header("range")->substr(6)) : 0;
    serve_body(r, c, fixture(),
               healed ? std::nullopt : std::optional<std::size_t>(from < 50'000 ? 50'000 - from : 0));
  });
  auto const first = ray_cli(pull(srv.url("/m.gguf")));
  ASSERT_EQ(first.status, 1) << first.err;
  EXPECT_NE(first.err.find("gave up after 5 retries"), std::string::npos) << first.err;
  EXPECT_NE(first.err.find("run the same command again"), std::string::npos) << first.err;
  EXPECT_EQ(srv.requests().size(), 6u);  // the first attempt and five retries
  EXPECT_FALSE(fs::exists(models() / "m.gguf"));
  EXPECT_EQ(fs::file_size(models() / ".partial" / "m"), 50'000u);
  // Second run, a new process: it re-hashes the 50000 bytes on disk and asks for the rest (206); the digest
  // over both parts must be the file's.
  healed = true;
  auto const before = srv.requests().size();
  auto args = pull(srv.url("/m.gguf"));
  args.insert(args.end(), {"--sha256", fixture_sha()});
  auto const second = ray_cli(args);
  ASSERT_EQ(second.status, 0) << second.err;
  auto const reqs = srv.requests();
  ASSERT_EQ(reqs.size(), before + 1);
  EXPECT_EQ(reqs[before].header("range").value_or("(none)"), "bytes=50000-");
  EXPECT_NE(second.err.find("resuming m at byte 50000"), std::string::npos) << second.err;
  EXPECT_EQ(read_all(models() / "m.gguf"), fixture());
}

TEST_F(ModelPull, A200ToARangeRequestStartsOver) {
  int n = 0;  // touched by the server's thread only
  pull_server srv([&](seen_request const& r, server_conn& c) {
    if (n++ == 0)
      serve_body(r, c, fixture(), 100'000);
    else
      serve_body(r, c, fixture(), std::nullopt, /*honour_range=*/false);  // 200 with everything
  });
  auto args = pull(srv.url("/m.gguf"));
  args.insert(args.end(), {"--sha256", fixture_sha()});
  auto const r = ray_cli(args);
  ASSERT_EQ(r.status, 0) << r.err;
  auto const reqs = srv.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[1].header("range").value_or("(none)"), "bytes=100000-");
  EXPECT_NE(r.err.find("starting over"), std::string::npos) << r.err;
  EXPECT_EQ(read_all(models() / "m.gguf"), fixture());  // not the first 100000 bytes twice
}

TEST_F(ModelPull, WrongSha256LeavesNothing) {
  pull_server srv([](seen_request const& r, server_conn& c) { serve_body(r, c, fixture()); });
  auto args = pull(srv.url("/m.gguf"));
  args.insert(args.end(), {"--sha256", std::string(64, '0')});
  auto const r = ray_cli(args);
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find("sha256 mismatch"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(fixture_sha()), std::string::npos) << r.err;
  EXPECT_TRUE(entries(models()).empty()) << ::testing::PrintToString(entries(models()));
}

TEST_F(ModelPull, NonGgufBodyIsRefusedAtItsFirstBytes) {
  // Promises 10 MB of HTML, sends the first 4 KiB and then waits: the refusal must come from those bytes.
  bool closed_by_client = false;
  {
    pull_server srv([&](seen_request const&, server_conn& c) {
      c.write(response_head("200 OK", {{"Content-Length", "10000000"}, {"Content-Type", "text/html"}}));
      c.write("<!doctype html><html><body>Sign in to download" + std::string(4000, ' '));
      closed_by_client = c.wait_peer_close(in(60s));
    });
    auto const r = ray_cli(pull(srv.url("/m.gguf")));
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_NE(r.err.find("not a GGUF file"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("<!do"), std::string::npos) << r.err;
    EXPECT_TRUE(entries(models()).empty()) << ::testing::PrintToString(entries(models()));
  }  // the server's thread is joined: its handler saw the client leave
  EXPECT_TRUE(closed_by_client);
}

TEST_F(ModelPull, NotEnoughDiskIsRefusedBeforeAnyBodyByte) {
  // A Content-Length past any disk, and no body at all: the pull must decide from the headers alone.
  std::string const huge = "1152921504606846976";  // 2^60
  bool closed_by_client = false;
  {
    pull_server srv([&](seen_request const&, server_conn& c) {
      c.write(response_head("200 OK", {{"Content-Length", huge}}));
      closed_by_client = c.wait_peer_close(in(60s));
    });
    auto const r = ray_cli(pull(srv.url("/m.gguf")));
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_NE(r.err.find("not enough free disk space"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(huge + " bytes"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("are free"), std::string::npos) << r.err;
    EXPECT_TRUE(entries(models()).empty()) << ::testing::PrintToString(entries(models()));
  }
  EXPECT_TRUE(closed_by_client);
}

TEST_F(ModelPull, FollowsRelativeAndAbsoluteRedirects) {
  pull_server srv([](seen_request const& r, server_conn& c) {
    if (r.target == "/start")
      c.write(response_head("302 Found", {{"Location", "../hop/one"}, {"Content-Length", "0"}}));
    else if (r.target == "/hop/one")
      c.write(response_head("301 Moved Permanently",
                            {{"Location", "/final/tiny.gguf?sig=abc"}, {"Content-Length", "0"}}));
    else
      serve_body(r, c, fixture());
  });
  // An absolute Location, pointing at the same server.
  pull_server front([&](seen_request const&, server_conn& c) {
    c.write(
        response_head("307 Temporary Redirect", {{"Location", srv.url("/start")}, {"Content-Length", "0"}}));
  });
  auto const r = ray_cli(pull(front.url("/x/tiny.gguf")));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(read_all(models() / "tiny.gguf"), fixture());
  auto const reqs = srv.requests();
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[1].target, "/hop/one");
  EXPECT_EQ(reqs[2].target, "/final/tiny.gguf?sig=abc");
}

TEST_F(ModelPull, MoreThanFiveRedirectsAreRefused) {
  pull_server srv([](seen_request const& r, server_conn& c) {
    int const n = std::stoi(r.target.substr(3));
    c.write(
        response_head("302 Found", {{"Location", "/r/" + std::to_string(n + 1)}, {"Content-Length", "0"}}));
  });
  auto args = pull(srv.url("/r/0"));
  args.insert(args.end(), {"--name", "loop"});
  auto const r = ray_cli(args);
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find("too many redirects"), std::string::npos) << r.err;
  EXPECT_EQ(srv.requests().size(), 6u);  // the first request and the five redirects followed
  EXPECT_TRUE(entries(models()).empty());
}

TEST_F(ModelPull, UsageErrorsExit2) {
  auto r = ray_cli(
      {"model", "pull", "http://127.0.0.1:1/m.gguf", "--name", "../evil", "--models-dir", models().string()});
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("--name"), std::string::npos) << r.err;
  r = ray_cli(
      {"model", "pull", "http://127.0.0.1:1/m.gguf", "--sha256", "abc", "--models-dir", models().string()});
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("--sha256"), std::string::npos) << r.err;
  r = ray_cli({"model", "pull", "ftp://h/m.gguf", "--models-dir", models().string()});
  EXPECT_EQ(r.status, 2) << r.err;
  r = ray_cli({"model", "pull"});
  EXPECT_EQ(r.status, 2) << r.err;
  r = ray_cli({"model", "pull", "--help"});
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("Examples:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("hf://"), std::string::npos) << r.out;
}

TEST_F(ModelPull, LocalCopyListAndRm) {
  auto const src = (fs::path(RAY_TEST_FIXTURES) / "models/tiny-llama-64x2.gguf").string();
  auto const r = ray_cli(pull(src));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(read_all(models() / "tiny-llama-64x2.gguf"), fixture());
  // A second pull of the same name refuses to replace it.
  EXPECT_EQ(ray_cli(pull(src)).status, 1);

  // list: the sidecar's digest, then (sidecar removed) one computed again and cached.
  for (int round = 0; round < 2; ++round) {
    auto const l = ray_cli({"model", "list", "--models-dir", models().string(), "--json"});
    ASSERT_EQ(l.status, 0) << l.err;
    auto const v = boost::json::parse(l.out);
    ASSERT_TRUE(v.is_array()) << l.out;
    ASSERT_EQ(v.as_array().size(), 1u) << l.out;
    auto const& m = v.as_array()[0].as_object();
    EXPECT_EQ(m.at("name").as_string(), "tiny-llama-64x2");
    EXPECT_EQ(m.at("size_bytes").to_number<std::uint64_t>(), fixture().size());
    EXPECT_EQ(m.at("architecture").as_string(), "llama");
    EXPECT_FALSE(m.at("quantization").as_string().empty()) << l.out;
    EXPECT_TRUE(m.at("context_length").is_number()) << l.out;
    EXPECT_EQ(m.at("sha256").as_string(), fixture_sha());
    if (round == 0) fs::remove(models() / "tiny-llama-64x2.gguf.sha256");
  }
  EXPECT_TRUE(fs::exists(models() / "tiny-llama-64x2.gguf.sha256")) << "list caches what it computed";
  auto const text = ray_cli({"model", "list", "--models-dir", models().string()});
  ASSERT_EQ(text.status, 0);
  EXPECT_NE(text.out.find("NAME"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("tiny-llama-64x2"), std::string::npos) << text.out;

  auto const rm = ray_cli({"model", "rm", "tiny-llama-64x2", "--models-dir", models().string()});
  EXPECT_EQ(rm.status, 0) << rm.err;
  EXPECT_TRUE(entries(models()).empty()) << ::testing::PrintToString(entries(models()));
  auto const again = ray_cli({"model", "rm", "tiny-llama-64x2", "--models-dir", models().string()});
  EXPECT_EQ(again.status, 1);
  EXPECT_NE(again.err.find("no model named"), std::string::npos) << again.err;
  EXPECT_EQ(ray_cli({"model", "rm", "../x", "--models-dir", models().string()}).status, 2);
}

TEST_F(ModelPull, DefaultModelsDirComesFromXdgDataHome) {
  auto const src = (fs::path(RAY_TEST_FIXTURES) / "models/tiny-llama-64x2.gguf").string();
  if (::geteuid() == 0) {
    // Root's default is /var/lib/ray/models, which a test must not write; XDG_DATA_HOME must not count.
    auto const xdg_models = tmp.path() / "ray/models";
    fs::create_directories(xdg_models);
    fs::copy_file(src, xdg_models / "only-in-xdg.gguf");
    auto const l = ray_cli({"model", "list", "--json"}, {{"XDG_DATA_HOME", tmp.path().string()}});
    EXPECT_EQ(l.status, 0) << l.err;
    EXPECT_EQ(l.out.find("only-in-xdg"), std::string::npos) << l.out;
    return;
  }
  auto const r = ray_cli({"model", "pull", src, "--name", "x"}, {{"XDG_DATA_HOME", tmp.path().string()}});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(fs::exists(tmp.path() / "ray/models/x.gguf"));
}

// --- TLS: a CA and a server certificate for 127.0.0.1 made here with the openssl CLI.

struct test_pki {
  fs::path ca, cert, key;
};

std::optional<test_pki> make_pki(fs::path const& dir) {
  if (std::system("command -v openssl >/dev/null 2>&1") != 0) return std::nullopt;
  auto const d = dir.string();
  std::ofstream(dir / "ext.cnf") << "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                    "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n";
  std::string const q = " >" + d + "/openssl.log 2>&1";
  std::string const cmds[] = {
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout " + d +
          "/ca.key -out " + d +
          "/ca.pem -days 2 -subj /CN=ray-test-ca -addext basicConstraints=critical,CA:TRUE -addext "
          "keyUsage=critical,keyCertSign,cRLSign" +
          q,
      "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout " + d + "/srv.key -out " +
          d + "/srv.csr -subj /CN=127.0.0.1" + q,
      "openssl x509 -req -in " + d + "/srv.csr -CA " + d + "/ca.pem -CAkey " + d +
          "/ca.key -CAcreateserial -out " + d + "/srv.pem -days 2 -extfile " + d + "/ext.cnf" + q,
  };
  for (auto const& c : cmds)
    if (std::system(c.c_str()) != 0) return std::nullopt;
  return test_pki{dir / "ca.pem", dir / "srv.pem", dir / "srv.key"};
}

TEST_F(ModelPull, HttpsWithATestCaThroughSslCertFile) {
  auto const pki = make_pki(tmp.path());
  if (!pki) RAY_SKIP_OR_FAIL("the openssl CLI is missing or failed to make a test CA");
  pull_server srv([](seen_request const& r, server_conn& c) { serve_body(r, c, fixture(), std::nullopt); },
                  pki->cert.string(), pki->key.string());
  ::unsetenv("SSL_CERT_FILE");
  ::unsetenv("SSL_CERT_DIR");
  // Without the CA: the system store does not vouch for it.
  auto const refused = ray_cli(pull(srv.url("/m.gguf")));
  EXPECT_EQ(refused.status, 1) << refused.err;
  EXPECT_NE(refused.err.find("TLS handshake"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("certificate"), std::string::npos) << refused.err;
  EXPECT_EQ(refused.err.find("retrying"), std::string::npos)
      << "an untrusted peer is not retried: " << refused.err;
  EXPECT_TRUE(entries(models()).empty());
  EXPECT_TRUE(srv.requests().empty());

  auto const ok = ray_cli(pull(srv.url("/m.gguf")), {{"SSL_CERT_FILE", pki->ca.string()}});
  ASSERT_EQ(ok.status, 0) << ok.err;
  EXPECT_EQ(read_all(models() / "m.gguf"), fixture());
  ASSERT_EQ(srv.requests().size(), 1u);
}

TEST_F(ModelPull, HttpsToHttpRedirectIsRefused) {
  auto const pki = make_pki(tmp.path());
  if (!pki) RAY_SKIP_OR_FAIL("the openssl CLI is missing or failed to make a test CA");
  pull_server plain([](seen_request const& r, server_conn& c) { serve_body(r, c, fixture()); });
  pull_server srv(
      [&](seen_request const&, server_conn& c) {
        c.write(response_head("302 Found", {{"Location", plain.url("/m.gguf")}, {"Content-Length", "0"}}));
      },
      pki->cert.string(), pki->key.string());
  auto const r = ray_cli(pull(srv.url("/m.gguf")), {{"SSL_CERT_FILE", pki->ca.string()}});
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find("https to plain http refused"), std::string::npos) << r.err;
  EXPECT_TRUE(plain.requests().empty());
  EXPECT_TRUE(entries(models()).empty());
}

}  // namespace
