// The llama-server test double (tests/support/fake_llama_server) against the recorded replies of a real
// llama-server (tests/fixtures/llama-server, build b1-80fb11a, `-c 2048 -np 2 --metrics`): same status, same
// headers that matter, same JSON structure (key sets, value kinds, array lengths; literal values where they
// do not depend on the model), same SSE framing — ignoring ids, timestamps, timings and generated text. Then
// the knobs the integration tests rely on. Each test starts its own double on port 0; plain POSIX sockets.
#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace json = boost::json;
using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

steady::time_point in(std::chrono::milliseconds d) {
  return steady::now() + d;
}
int ms_left(steady::time_point until) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - steady::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

std::string lower(std::string s) {
  for (char& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// ---- the double as a child process
class fake_server {
 public:
  explicit fake_server(std::vector<std::string> args) {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
    char path[] = "/tmp/fake_llama_server_test_XXXXXX";
    int err_fd = ::mkstemp(path);
    if (err_fd < 0) throw std::runtime_error("mkstemp");
    err_path_ = path;
    args.insert(args.begin(), FAKE_LLAMA_SERVER);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a test that dies
      ::dup2(out[1], 1);
      ::dup2(err_fd, 2);
      std::vector<char*> argv;
      for (auto& a : args)
        argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err_fd);
    out_fd_ = out[0];
    std::string line;
    auto until = in(10s);
    while (line.find('\n') == std::string::npos) {
      pollfd p{out_fd_, POLLIN, 0};
      if (::poll(&p, 1, ms_left(until)) <= 0)
        throw std::runtime_error("double did not print its port: " + log());
      char buf[256];
      ssize_t n = ::read(out_fd_, buf, sizeof buf);
      if (n <= 0) throw std::runtime_error("double exited before listening: " + log());
      line.append(buf, static_cast<std::size_t>(n));
    }
    if (!line.starts_with("listening ")) throw std::runtime_error("unexpected first line: " + line);
    port_ = std::stoi(line.substr(10));
  }
  ~fake_server() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      int st;
      ::waitpid(pid_, &st, 0);
    }
    if (out_fd_ >= 0) ::close(out_fd_);
    ::unlink(err_path_.c_str());
  }
  fake_server(fake_server const&) = delete;
  fake_server& operator=(fake_server const&) = delete;

  int port() const { return port_; }
  // The child's stderr so far.
  std::string log() const {
    std::ifstream f(err_path_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  // Waits for the process to end (its stdout closes); the wait status, or nullopt at the deadline.
  std::optional<int> wait_exit(steady::time_point until) {
    for (;;) {
      pollfd p{out_fd_, POLLIN, 0};
      if (::poll(&p, 1, ms_left(until)) <= 0) return std::nullopt;
      char buf[256];
      if (::read(out_fd_, buf, sizeof buf) <= 0) break;
    }
    int st = 0;
    ::waitpid(pid_, &st, 0);
    exited_ = true;
    return st;
  }

 private:
  pid_t pid_{-1};
  int out_fd_{-1};
  int port_{0};
  bool exited_{false};
  std::string err_path_;
};

// Arguments of the recorded server.
std::vector<std::string> fixture_args(std::vector<std::string> extra = {}) {
  std::vector<std::string> a{"--port", "0",          "-m",       "models/tiny-llama-512x8.gguf",
                             "-a",     "tiny-llama", "-c",       "2048",
                             "-np",    "2",          "--metrics"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// ---- HTTP over a plain socket
struct response {
  int status{0};
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;  // de-chunked
  std::optional<std::string> header(std::string const& name) const {
    for (auto const& [k, v] : headers)
      if (lower(k) == lower(name)) return v;
    return std::nullopt;
  }
  std::string describe() const {
    std::string s = "HTTP " + std::to_string(status) + "\n";
    for (auto const& [k, v] : headers)
      s += k + ": " + v + "\n";
    return s + "\n" + body.substr(0, 2000);
  }
};

class client {
 public:
  explicit client(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("connect");
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~client() { close(); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  void send(std::string const& bytes) {
    std::size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) throw std::runtime_error("send failed");
      off += static_cast<std::size_t>(n);
    }
  }

  // Status line and headers; nullopt on deadline or close.
  std::optional<response> read_head(steady::time_point until) {
    std::size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos)
      if (!fill(until)) return std::nullopt;
    std::string head = buf_.substr(0, end);
    buf_.erase(0, end + 4);
    response r;
    std::istringstream lines(head);
    std::string line;
    std::getline(lines, line);
    r.status = std::stoi(line.substr(9, 3));
    while (std::getline(lines, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      auto colon = line.find(':');
      std::string value = line.substr(colon + 1);
      if (!value.empty() && value.front() == ' ') value.erase(0, 1);
      r.headers.emplace_back(line.substr(0, colon), value);
    }
    return r;
  }

  // Next chunk of a chunked body: its data, "" for the last chunk, nullopt on deadline/close/bad framing.
  std::optional<std::string> read_chunk(steady::time_point until) {
    std::size_t eol;
    while ((eol = buf_.find("\r\n")) == std::string::npos)
      if (!fill(until)) return std::nullopt;
    std::size_t size = std::stoul(buf_.substr(0, eol), nullptr, 16);
    while (buf_.size() < eol + 2 + size + 2)
      if (!fill(until)) return std::nullopt;
    if (buf_.compare(eol + 2 + size, 2, "\r\n") != 0) return std::nullopt;
    std::string data = buf_.substr(eol + 2, size);
    buf_.erase(0, eol + 2 + size + 2);
    return data;
  }

  std::optional<response> read_response(steady::time_point until) {
    auto r = read_head(until);
    if (!r) return r;
    if (auto te = r->header("Transfer-Encoding"); te && lower(*te) == "chunked") {
      for (;;) {
        auto c = read_chunk(until);
        if (!c) return std::nullopt;
        if (c->empty()) break;
        r->body += *c;
      }
    } else if (auto cl = r->header("Content-Length")) {
      std::size_t n = std::stoul(*cl);
      while (buf_.size() < n)
        if (!fill(until)) return std::nullopt;
      r->body = buf_.substr(0, n);
      buf_.erase(0, n);
    }
    return r;
  }

  // True when the peer closes the connection before the deadline.
  bool wait_closed(steady::time_point until) {
    while (fill(until)) {
    }
    return eof_;
  }

 private:
  bool fill(steady::time_point until) {
    if (eof_) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, ms_left(until)) <= 0) return false;
    char b[16384];
    ssize_t n = ::recv(fd_, b, sizeof b, 0);
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    buf_.append(b, static_cast<std::size_t>(n));
    return true;
  }

  int fd_{-1};
  std::string buf_;
  bool eof_{false};
};

std::string request_bytes(std::string const& method, std::string const& path, std::string const& body = {},
                          std::vector<std::string> const& headers = {}) {
  std::string r = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  for (auto const& h : headers)
    r += h + "\r\n";
  if (!body.empty() || method == "POST")
    r += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  return r + "\r\n" + body;
}

response call(int port, std::string const& method, std::string const& path, std::string const& body = {},
              std::vector<std::string> const& headers = {}) {
  client c(port);
  c.send(request_bytes(method, path, body, headers));
  auto r = c.read_response(in(10s));
  if (!r) throw std::runtime_error(method + " " + path + ": no complete response");
  return *r;
}

json::value parse_json(std::string const& text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec) throw std::runtime_error("not JSON (" + ec.message() + "): " + text.substr(0, 500));
  return v;
}

json::object stats(int port) {
  return parse_json(call(port, "GET", "/__stats").body).as_object();
}

void control(int port, std::string const& body) {
  auto r = call(port, "POST", "/__control", body);
  if (r.status != 200) throw std::runtime_error("control failed: " + r.describe());
}

// Polls /__stats until `pred` holds (deadline 10 s).
template <class Pred>
bool stats_until(int port, Pred pred) {
  auto until = in(10s);
  while (steady::now() < until) {
    if (pred(stats(port))) return true;
    pollfd none{-1, 0, 0};
    ::poll(&none, 0, 2);  // a short pause between polls of the double's state
  }
  return false;
}

std::int64_t num(json::value const& v) {
  return v.to_number<std::int64_t>();
}

// ---- fixtures
struct fixture {
  int status{0};
  std::vector<std::pair<std::string, std::string>> headers;
  bool headers_captured{true};
  std::string body;
  std::optional<std::string> header(std::string const& name) const {
    for (auto const& [k, v] : headers)
      if (lower(k) == lower(name)) return v;
    return std::nullopt;
  }
};

fixture load_fixture(std::string const& name) {
  std::ifstream f(std::string(RAY_TEST_FIXTURES) + "/llama-server/" + name);
  if (!f) throw std::runtime_error("missing fixture " + name);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  auto resp = text.find("### response");
  auto status_at = text.find("HTTP/1.1 ", resp);
  fixture fx;
  fx.headers_captured = text.substr(resp, status_at - resp).find("headers not captured") == std::string::npos;
  fx.status = std::stoi(text.substr(status_at + 9, 3));
  std::size_t pos = text.find('\n', status_at) + 1;
  for (;;) {
    std::size_t eol = text.find('\n', pos);
    std::string line = text.substr(pos, eol - pos);
    pos = eol + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) break;
    auto colon = line.find(':');
    std::string value = line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.erase(0, 1);
    fx.headers.emplace_back(line.substr(0, colon), value);
  }
  fx.body = text.substr(pos);
  return fx;
}

// ---- comparisons
struct rules {
  // Keys whose string values are model output, ids or otherwise free.
  std::set<std::string> free_strings{"id", "content", "text", "message", "prompt", "media_marker"};
  // Keys whose numbers must be equal (other numbers: only integer vs float must agree).
  std::set<std::string> exact_numbers{"n_ctx",       "total_slots",       "code",
                                      "index",       "completion_tokens", "tokens_predicted",
                                      "predicted_n", "max_tokens",        "n_predict"};
  // Keys whose arrays may differ in length (elements compared pairwise).
  std::set<std::string> free_length{};
};

bool is_int(json::value const& v) {
  return v.is_int64() || v.is_uint64();
}

std::string kind_name(json::value const& v) {
  if (is_int(v)) return "integer";
  return std::string(json::to_string(v.kind()));
}

void compare(json::value const& want, json::value const& got, std::string const& path, std::string const& key,
             rules const& r, std::vector<std::string>& diffs) {
  bool timing = path.find(".timings.") != std::string::npos;
  if (kind_name(want) != kind_name(got)) {
    diffs.push_back(path + ": " + kind_name(want) + " expected, got " + kind_name(got) + " " +
                    json::serialize(got));
    return;
  }
  if (want.is_object()) {
    auto const& w = want.get_object();
    auto const& g = got.get_object();
    for (auto const& [k, v] : w) {
      if (auto const* gv = g.if_contains(k))
        compare(v, *gv, path + "." + std::string(k), std::string(k), r, diffs);
      else
        diffs.push_back(path + "." + std::string(k) + ": missing");
    }
    for (auto const& [k, v] : g)
      if (!w.contains(k)) diffs.push_back(path + "." + std::string(k) + ": unexpected key");
  } else if (want.is_array()) {
    auto const& w = want.get_array();
    auto const& g = got.get_array();
    if (w.size() != g.size() && !r.free_length.contains(key))
      diffs.push_back(path + ": " + std::to_string(w.size()) + " elements expected, got " +
                      std::to_string(g.size()));
    for (std::size_t i = 0; i < std::min(w.size(), g.size()); ++i)
      compare(w[i], g[i], path + "[" + std::to_string(i) + "]", key, r, diffs);
  } else if (want.is_string()) {
    if (!r.free_strings.contains(key) && want != got)
      diffs.push_back(path + ": " + json::serialize(want) + " expected, got " + json::serialize(got));
  } else if (want.is_number()) {
    if (!timing && r.exact_numbers.contains(key) && want != got)
      diffs.push_back(path + ": " + json::serialize(want) + " expected, got " + json::serialize(got));
  } else if (want != got) {  // bool, null
    diffs.push_back(path + ": " + json::serialize(want) + " expected, got " + json::serialize(got));
  }
}

std::string join(std::vector<std::string> const& v) {
  std::string s;
  for (auto const& e : v)
    s += "  " + e + "\n";
  return s;
}

// Status and the headers that matter: each of these present in the fixture is present with the same value
// (Content-Length: present), and absent when the fixture lacks it.
void expect_same_head(fixture const& fx, response const& got) {
  EXPECT_EQ(got.status, fx.status) << got.describe();
  if (!fx.headers_captured) {
    EXPECT_EQ(got.header("Content-Type"), fx.header("Content-Type"));
    return;
  }
  for (std::string name : {"Server", "Access-Control-Allow-Origin", "Content-Type", "Transfer-Encoding",
                           "X-Accel-Buffering", "Connection", "Keep-Alive"})
    EXPECT_EQ(got.header(name), fx.header(name)) << "header " << name << "\n" << got.describe();
  for (std::string name : {"Content-Length", "Process-Start-Time-Unix"})
    EXPECT_EQ(got.header(name).has_value(), fx.header(name).has_value()) << "header " << name;
}

void expect_same_json(std::string const& want_text, std::string const& got_text, rules const& r = {}) {
  json::value want = parse_json(want_text);
  json::value got;
  ASSERT_NO_THROW(got = parse_json(got_text));
  std::vector<std::string> diffs;
  compare(want, got, "$", "", r, diffs);
  EXPECT_TRUE(diffs.empty()) << "differences from the fixture:\n"
                             << join(diffs) << "got: " << got_text.substr(0, 3000);
}

void expect_matches(std::string const& fixture_name, response const& got, rules const& r = {}) {
  SCOPED_TRACE(fixture_name);
  fixture fx = load_fixture(fixture_name);
  expect_same_head(fx, got);
  expect_same_json(fx.body, got.body, r);
}

// Splits an SSE body into the data payloads; fails unless it is exactly a series of "data: …\n\n" events.
std::vector<std::string> sse_events(std::string const& body) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < body.size()) {
    EXPECT_EQ(body.compare(pos, 6, "data: "), 0) << "event does not start with 'data: ' at " << pos;
    auto end = body.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "event not terminated by a blank line";
    if (end == std::string::npos) break;
    std::string data = body.substr(pos + 6, end - pos - 6);
    EXPECT_EQ(data.find('\n'), std::string::npos) << "multi-line event";
    out.push_back(data);
    pos = end + 2;
  }
  return out;
}

void expect_same_stream(std::string const& fixture_name, response const& got, rules const& r = {}) {
  SCOPED_TRACE(fixture_name);
  fixture fx = load_fixture(fixture_name);
  expect_same_head(fx, got);
  auto want = sse_events(fx.body);
  auto have = sse_events(got.body);
  ASSERT_EQ(have.size(), want.size()) << got.body;
  for (std::size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE("event " + std::to_string(i));
    if (want[i] == "[DONE]") {
      EXPECT_EQ(have[i], "[DONE]");
      continue;
    }
    expect_same_json(want[i], have[i], r);
  }
}

// Prometheus text: same HELP/TYPE lines and sample names in the same order; values are numbers.
std::map<std::string, double> expect_same_metrics(std::string const& fixture_name, response const& got) {
  SCOPED_TRACE(fixture_name);
  fixture fx = load_fixture(fixture_name);
  expect_same_head(fx, got);
  auto split = [](std::string const& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string l; std::getline(in, l);)
      lines.push_back(l);
    return lines;
  };
  auto want = split(fx.body);
  auto have = split(got.body);
  std::map<std::string, double> values;
  EXPECT_EQ(have.size(), want.size()) << got.body;
  for (std::size_t i = 0; i < std::min(want.size(), have.size()); ++i) {
    if (want[i].starts_with("#")) {
      EXPECT_EQ(have[i], want[i]);
      continue;
    }
    auto name = want[i].substr(0, want[i].find(' '));
    auto sp = have[i].find(' ');
    EXPECT_EQ(have[i].substr(0, sp), name);
    if (sp == std::string::npos) continue;
    char* end = nullptr;
    std::string v = have[i].substr(sp + 1);
    values[name] = std::strtod(v.c_str(), &end);
    EXPECT_EQ(*end, '\0') << "not a number: " << have[i];
  }
  return values;
}

std::string words(int n) {
  std::string s;
  for (int i = 0; i < n; ++i)
    s += "word ";
  return s;
}

// The recorded requests.
std::string const chat_body =
    R"({"model":"tiny-llama","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to the operator."}],"max_tokens":16,"temperature":0,"seed":1})";
std::string const chat_stream_body =
    R"({"model":"tiny-llama","messages":[{"role":"user","content":"Say hello to the operator."}],"max_tokens":8,"temperature":0,"stream":true,"stream_options":{"include_usage":true}})";
std::string const completion_body =
    R"({"prompt":"The cheap box said","n_predict":12,"cache_prompt":true,"id_slot":-1,"temperature":0})";

// ======================= fixtures

TEST(FakeLlamaServerFixtures, HealthIsOkAndShapedLikeTheRecording) {
  fake_server s(fixture_args());
  auto r = call(s.port(), "GET", "/health");
  expect_matches("health-ready.http", r);
  EXPECT_EQ(r.body, load_fixture("health-ready.http").body);
}

TEST(FakeLlamaServerFixtures, LoadingAnswers503OnHealthAndInferenceUntilTheDelayIsLifted) {
  fake_server s(fixture_args({"--load-delay-ms", "600000"}));
  auto h = call(s.port(), "GET", "/health");
  expect_matches("health-loading.http", h);
  std::string want = load_fixture("health-loading.http").body;
  EXPECT_EQ(h.body + "\n", want);
  auto chat = call(s.port(), "POST", "/v1/chat/completions", chat_body);
  EXPECT_EQ(chat.status, 503);
  EXPECT_EQ(chat.body + "\n", want);
  control(s.port(), R"({"load_delay_ms":0})");
  EXPECT_EQ(call(s.port(), "GET", "/health").status, 200);
  EXPECT_EQ(call(s.port(), "POST", "/v1/chat/completions", chat_body).status, 200);
}

TEST(FakeLlamaServerFixtures, ApiKeyGuardsInferenceButNotHealth) {
  fake_server s(fixture_args({"--api-key", "sekrit"}));
  auto h = call(s.port(), "GET", "/health");
  expect_matches("health-with-api-key.http", h);
  auto denied = call(s.port(), "POST", "/v1/chat/completions", chat_body);
  expect_matches("chat-unauthorized.http", denied);
  EXPECT_EQ(denied.body, load_fixture("chat-unauthorized.http").body);
  EXPECT_EQ(call(s.port(), "POST", "/v1/chat/completions", chat_body, {"Authorization: Bearer wrong"}).status,
            401);
  auto ok = call(s.port(), "POST", "/v1/chat/completions", chat_body, {"Authorization: Bearer sekrit"});
  expect_matches("chat-nonstream.http", ok);
}

TEST(FakeLlamaServerFixtures, PropsAndModelsDescribeTheRecordedServer) {
  fake_server s(fixture_args());
  expect_matches("props.http", call(s.port(), "GET", "/props"));
  expect_matches("v1-models.http", call(s.port(), "GET", "/v1/models"));
}

TEST(FakeLlamaServerFixtures, ChatNonStreamingAndItsRepeatHitTheCache) {
  fake_server s(fixture_args());
  auto first = call(s.port(), "POST", "/v1/chat/completions", chat_body);
  expect_matches("chat-nonstream.http", first);
  auto again = call(s.port(), "POST", "/v1/chat/completions", chat_body);
  expect_matches("chat-nonstream-repeat.http", again);
  auto u = parse_json(again.body).at("usage").as_object();
  // The whole prompt but its last token is reused (llama-server always evaluates one).
  EXPECT_EQ(num(u.at("prompt_tokens_details").at("cached_tokens")), num(u.at("prompt_tokens")) - 1);
  EXPECT_EQ(num(parse_json(again.body).at("timings").at("cache_n")), num(u.at("prompt_tokens")) - 1);
  EXPECT_EQ(num(parse_json(first.body).at("usage").at("prompt_tokens_details").at("cached_tokens")), 0);
}

TEST(FakeLlamaServerFixtures, ChatStreamIsFramedLikeTheRecording) {
  fake_server s(fixture_args());
  auto r = call(s.port(), "POST", "/v1/chat/completions", chat_stream_body);
  expect_same_stream("chat-stream.http", r);
  // Without include_usage: no usage chunk, still [DONE].
  auto plain = call(s.port(), "POST", "/v1/chat/completions",
                    R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":true})");
  auto ev = sse_events(plain.body);
  ASSERT_EQ(ev.size(), 1u + 3u + 1u + 1u) << plain.body;
  EXPECT_EQ(ev.back(), "[DONE]");
  EXPECT_EQ(parse_json(ev[4]).at("choices").at(0).at("finish_reason"), "length");
}

TEST(FakeLlamaServerFixtures, CompletionNonStreamingAndPinnedToSlot1) {
  fake_server s(fixture_args());
  expect_matches("completion-nonstream.http", call(s.port(), "POST", "/completion", completion_body));
  auto pinned = call(
      s.port(), "POST", "/completion",
      R"({"prompt":"The cheap box said","n_predict":12,"cache_prompt":true,"id_slot":1,"temperature":0})");
  expect_matches("completion-slot1.http", pinned);
  EXPECT_EQ(num(parse_json(pinned.body).at("id_slot")), 1);
}

TEST(FakeLlamaServerFixtures, CompletionStreamEndsWithTheFinalObjectAndNoDone) {
  fake_server s(fixture_args());
  expect_same_stream(
      "completion-stream.http",
      call(s.port(), "POST", "/completion",
           R"({"prompt":"The cheap box said","n_predict":6,"cache_prompt":true,"stream":true})"));
}

TEST(FakeLlamaServerFixtures, V1CompletionsStopsAtEos) {
  fake_server s(fixture_args({"--eos-after", "2"}));
  expect_matches(
      "v1-completions.http",
      call(s.port(), "POST", "/v1/completions",
           R"({"model":"tiny-llama","prompt":"Once upon a time","max_tokens":8,"temperature":0})"));
}

TEST(FakeLlamaServerFixtures, TokenizeAndApplyTemplate) {
  fake_server s(fixture_args());
  rules r;
  r.free_length = {"tokens"};
  auto tok =
      call(s.port(), "POST", "/tokenize",
           R"({"content":"Hello operator, the queue is full.","add_special":false,"with_pieces":false})");
  expect_matches("tokenize.http", tok, r);
  EXPECT_EQ(parse_json(tok.body).at("tokens").as_array().size(), 9u);  // ceil(34 / 4)
  auto tpl = call(s.port(), "POST", "/apply-template",
                  R"({"messages":[{"role":"system","content":"S"},{"role":"user","content":"U"}]})");
  expect_matches("apply-template.http", tpl);
  EXPECT_EQ(tpl.body, load_fixture("apply-template.http").body);
}

TEST(FakeLlamaServerFixtures, ErrorsAreShapedLikeTheRecordings) {
  fake_server s(fixture_args());
  auto nf = call(s.port(), "GET", "/nope");
  expect_matches("not-found.http", nf);
  EXPECT_EQ(nf.body, load_fixture("not-found.http").body);
  expect_matches("chat-invalid-json.http", call(s.port(), "POST", "/v1/chat/completions", "{not json"));
  auto missing = call(s.port(), "POST", "/v1/chat/completions", R"({"model":"x"})");
  expect_matches("chat-missing-messages.http", missing);
  EXPECT_EQ(missing.body, load_fixture("chat-missing-messages.http").body);

  json::object chat{{"messages", json::array{json::object{{"role", "user"}, {"content", words(3000)}}}}};
  auto too_long = call(s.port(), "POST", "/v1/chat/completions", json::serialize(chat));
  expect_matches("chat-context-exceeded.http", too_long);
  EXPECT_GT(num(parse_json(too_long.body).at("error").at("n_prompt_tokens")), 1024);
  json::object completion{{"prompt", words(3000)}, {"n_predict", 8}};
  expect_matches("completion-context-exceeded.http",
                 call(s.port(), "POST", "/completion", json::serialize(completion)));
}

TEST(FakeLlamaServerFixtures, SlotsIdleAfterAChatOnSlot1) {
  fake_server s(fixture_args());
  auto r = call(s.port(), "POST", "/v1/chat/completions",
                R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":16,"seed":3,"id_slot":1})");
  ASSERT_EQ(r.status, 200) << r.describe();
  expect_matches("slots-idle.http", call(s.port(), "GET", "/slots"));
}

TEST(FakeLlamaServerFixtures, SlotsAndMetricsWhileAStreamRunsThenTheClientLeaves) {
  fake_server s(fixture_args({"--gen-tps", "200", "--ctx-check", "prompt"}));
  auto idle = expect_same_metrics("metrics.http", call(s.port(), "GET", "/metrics"));
  EXPECT_EQ(idle["llamacpp:requests_processing"], 0);

  client stream(s.port());
  stream.send(request_bytes(
      "POST", "/completion",
      R"({"prompt":"The cheap box said","n_predict":3000,"id_slot":0,"stream":true,"ignore_eos":true})"));
  auto head = stream.read_head(in(10s));
  ASSERT_TRUE(head);
  ASSERT_TRUE(stream.read_chunk(in(10s)));  // the first token

  auto slots = call(s.port(), "GET", "/slots");
  expect_matches("slots-busy.http", slots);
  auto busy_slot = parse_json(slots.body).at(0).as_object();
  EXPECT_TRUE(busy_slot.at("is_processing").as_bool());
  EXPECT_GE(num(busy_slot.at("next_token").at(0).at("n_decoded")), 1);
  auto busy = expect_same_metrics("metrics-busy.http", call(s.port(), "GET", "/metrics"));
  EXPECT_EQ(busy["llamacpp:requests_processing"], 1);
  EXPECT_GE(busy["llamacpp:tokens_predicted_total"], 1);

  stream.close();
  EXPECT_TRUE(stats_until(s.port(), [](json::object const& st) {
    return num(st.at("cancelled_streams")) == 1 && num(st.at("processing")) == 0;
  })) << json::serialize(stats(s.port()));
  auto st = stats(s.port());
  EXPECT_LT(num(st.at("slots").at(0).at("n_decoded")), 1000) << "generation went on after the client left";
  EXPECT_EQ(
      expect_same_metrics("metrics.http", call(s.port(), "GET", "/metrics"))["llamacpp:requests_processing"],
      0);
}

// ======================= knobs

TEST(FakeLlamaServerKnobs, AcceptsEveryFlagRaysBuilderEmitsAndWarnsOnUnknownOnes) {
  // What Ray's flag builder emits (both polarities of each switch), extra args, and an unknown flag.
  std::vector<std::string> args{"-m", "/models/x.gguf", "--host", "127.0.0.1", "--port", "0",
                                "-c", "4096",           "-np",    "4"};
  for (std::string a : {"-t 2",
                        "-tb 2",
                        "--threads-http 1",
                        "-b 512",
                        "-ub 256",
                        "--cache-reuse 256",
                        "--cache-ram -1",
                        "-cram 64",
                        "--no-cache-prompt",
                        "--cache-prompt",
                        "-cb",
                        "--cont-batching",
                        "--no-cont-batching",
                        "--metrics",
                        "--no-slots",
                        "--slots",
                        "--warmup",
                        "--no-warmup",
                        "--no-kv-unified",
                        "--kv-unified",
                        "--context-shift",
                        "--no-context-shift",
                        "-a m1",
                        "--alias m2",
                        "--cache-idle-slots",
                        "--no-cache-idle-slots",
                        "--jinja",
                        "--embedding",
                        "--embeddings",
                        "--pooling mean",
                        "--reranking",
                        "--rerank",
                        "--embd-dim 16",
                        "-fa on",
                        "--log-file=/tmp/x y.log",
                        "--frobnicate",
                        "--build-info b2-test"}) {
    auto sp = a.find(' ');
    if (sp != std::string::npos && !a.starts_with("--log-file")) {
      args.push_back(a.substr(0, sp));
      args.push_back(a.substr(sp + 1));
    } else {
      args.push_back(a);
    }
  }
  fake_server s(args);
  auto p = parse_json(call(s.port(), "GET", "/props").body).as_object();
  EXPECT_EQ(p.at("model_path"), "/models/x.gguf");
  EXPECT_EQ(p.at("model_alias"), "m2");
  EXPECT_EQ(p.at("total_slots"), 4);
  EXPECT_EQ(p.at("build_info"), "b2-test");
  EXPECT_EQ(p.at("default_generation_settings").at("n_ctx"), 4096)
      << "--kv-unified: one request may use all of -c";
  EXPECT_NE(s.log().find("ignores unknown argument --frobnicate\n"), std::string::npos) << s.log();
  auto log = s.log();
  EXPECT_EQ(log.find("warning:"), log.rfind("warning:")) << "only --frobnicate is unknown:\n" << log;
  EXPECT_EQ(call(s.port(), "GET", "/slots").status, 200);
  EXPECT_EQ(call(s.port(), "GET", "/metrics").status, 200);
  auto knobs = stats(s.port()).at("knobs").as_object();
  EXPECT_EQ(knobs.at("embedding"), true);
  EXPECT_EQ(knobs.at("reranking"), true) << "--rerank last: pooling rank";
  EXPECT_EQ(knobs.at("embd_dim"), 16);
}

TEST(FakeLlamaServerKnobs, ContextPerSlotIsCtxOverParallelAndPromptPlusMaxMustFit) {
  fake_server s(fixture_args());
  // 1 + ceil(bytes / 4) prompt tokens: 4000 bytes → 1001 tokens, 23 left of 1024.
  json::object fits{{"prompt", std::string(4000, 'a')}, {"n_predict", 23}};
  EXPECT_EQ(call(s.port(), "POST", "/completion", json::serialize(fits)).status, 200);
  fits["n_predict"] = 24;
  auto over = call(s.port(), "POST", "/completion", json::serialize(fits));
  EXPECT_EQ(over.status, 400);
  EXPECT_EQ(parse_json(over.body).at("error").at("n_ctx"), 1024);
  EXPECT_EQ(parse_json(over.body).at("error").at("n_prompt_tokens"), 1001);
  // /apply-template + /tokenize (add_special) give the exact prompt size of a chat.
  std::string msgs = R"({"messages":[{"role":"user","content":"How big is this prompt?"}]})";
  std::string prompt(
      parse_json(call(s.port(), "POST", "/apply-template", msgs).body).at("prompt").as_string());
  json::object tk{{"content", prompt}, {"add_special", true}};
  auto n = parse_json(call(s.port(), "POST", "/tokenize", json::serialize(tk)).body)
               .at("tokens")
               .as_array()
               .size();
  auto chat =
      parse_json(call(s.port(), "POST", "/v1/chat/completions",
                      R"({"messages":[{"role":"user","content":"How big is this prompt?"}],"max_tokens":1})")
                     .body);
  EXPECT_EQ(num(chat.at("usage").at("prompt_tokens")), static_cast<std::int64_t>(n));
}

TEST(FakeLlamaServerKnobs, SlotAffinityShowsAsCachedTokens) {
  fake_server s(fixture_args());
  std::string system(440, 's');  // 110 tokens
  auto ask = [&](int slot, std::string const& user) {
    json::object body{{"messages", json::array{json::object{{"role", "system"}, {"content", system}},
                                               json::object{{"role", "user"}, {"content", user}}}},
                      {"max_tokens", 4},
                      {"id_slot", slot}};
    auto r = parse_json(call(s.port(), "POST", "/v1/chat/completions", json::serialize(body)).body);
    return num(r.at("usage").at("prompt_tokens_details").at("cached_tokens"));
  };
  EXPECT_EQ(ask(0, "first question"), 0);
  EXPECT_EQ(ask(1, "second question"), 0);
  EXPECT_GE(ask(0, "third question"), 110);
  auto st = stats(s.port());
  EXPECT_EQ(num(st.at("slots").at(0).at("tasks")), 2);
  EXPECT_EQ(num(st.at("slots").at(1).at("tasks")), 1);
}

TEST(FakeLlamaServerKnobs, HoldsStreamsUntilEnoughClientsAndQueuesBeyondTheSlots) {
  fake_server s(fixture_args({"--hold-until-clients", "3"}));
  std::string body = R"({"messages":[{"role":"user","content":"hold"}],"max_tokens":2,"stream":true})";
  std::vector<std::unique_ptr<client>> clients;
  for (int i = 0; i < 2; ++i) {
    clients.push_back(std::make_unique<client>(s.port()));
    clients.back()->send(request_bytes("POST", "/v1/chat/completions", body));
  }
  ASSERT_TRUE(stats_until(s.port(), [](json::object const& st) {
    return num(st.at("active")) == 2 && num(st.at("processing")) == 2;
  }));
  EXPECT_EQ(num(stats(s.port()).at("completed")), 0)
      << "held streams must not finish before the third client";
  clients.push_back(std::make_unique<client>(s.port()));
  clients.back()->send(request_bytes("POST", "/v1/chat/completions", body));
  for (auto& c : clients) {
    auto r = c->read_response(in(10s));
    ASSERT_TRUE(r);
    EXPECT_EQ(sse_events(r->body).back(), "[DONE]");
  }
  auto st = stats(s.port());
  EXPECT_EQ(num(st.at("max_concurrent")), 3);
  EXPECT_EQ(num(st.at("max_processing")), 2) << "-np 2: the third request waits for a slot";
  EXPECT_EQ(num(st.at("completed")), 3);
}

TEST(FakeLlamaServerKnobs, AClientLeavingAHungStreamFreesItsSlot) {
  fake_server s(fixture_args({"--hang-before-first-token"}));
  {
    client c(s.port());
    c.send(request_bytes("POST", "/v1/chat/completions",
                         R"({"messages":[{"role":"user","content":"x"}],"max_tokens":2,"stream":true})"));
    ASSERT_TRUE(stats_until(s.port(), [](json::object const& st) { return num(st.at("processing")) == 1; }));
  }
  EXPECT_TRUE(stats_until(s.port(), [](json::object const& st) {
    return num(st.at("cancelled_streams")) == 1 && num(st.at("processing")) == 0 && num(st.at("active")) == 0;
  }));
  control(s.port(), R"({"hang_before_first_token":false})");
  EXPECT_EQ(call(s.port(), "POST", "/v1/chat/completions", chat_body).status, 200);
}

TEST(FakeLlamaServerKnobs, PacesPrefillAndGeneration) {
  fake_server s(fixture_args({"--prompt-tps", "1000", "--gen-tps", "100"}));
  // 1 + 100 prompt tokens at 1000/s ≥ 100 ms; 10 tokens at 100/s ≥ 100 ms.
  json::object body{{"prompt", std::string(400, 'p')}, {"n_predict", 10}};
  auto start = steady::now();
  auto r = parse_json(call(s.port(), "POST", "/completion", json::serialize(body)).body);
  auto elapsed = std::chrono::duration<double, std::milli>(steady::now() - start).count();
  EXPECT_GE(r.at("timings").at("prompt_ms").to_number<double>(), 100.0);
  EXPECT_GE(r.at("timings").at("predicted_ms").to_number<double>(), 100.0);
  EXPECT_GE(elapsed, 200.0);
}

TEST(FakeLlamaServerKnobs, InjectedFailures) {
  fake_server s(fixture_args());
  control(s.port(), R"({"fail_status":500})");
  auto e500 = call(s.port(), "POST", "/v1/chat/completions", chat_body);
  EXPECT_EQ(e500.status, 500);
  EXPECT_EQ(parse_json(e500.body).at("error").at("type"), "server_error");
  control(s.port(), R"({"fail_status":401})");
  EXPECT_EQ(call(s.port(), "POST", "/v1/chat/completions", chat_body).body,
            load_fixture("chat-unauthorized.http").body);
  control(s.port(), R"({"fail_status":0,"malformed_json":true})");
  auto broken = call(s.port(), "POST", "/v1/chat/completions", chat_body);
  EXPECT_EQ(broken.status, 200);
  EXPECT_ANY_THROW(parse_json(broken.body));
  control(s.port(), R"({"malformed_json":false,"fail_after_tokens":2})");
  auto cut = call(s.port(), "POST", "/v1/chat/completions", chat_stream_body);
  auto ev = sse_events(cut.body);
  ASSERT_EQ(ev.size(), 4u) << cut.body;  // role, 2 tokens, error
  EXPECT_EQ(parse_json(ev.back()).at("error").at("code"), 500);
  control(s.port(), R"({"fail_after_tokens":-1,"slow_health_ms":100})");
  auto start = steady::now();
  EXPECT_EQ(call(s.port(), "GET", "/health").status, 200);
  EXPECT_GE(steady::now() - start, 100ms);
}

TEST(FakeLlamaServerKnobs, ErrorsCloseTheConnectionAndSuccessesKeepIt) {
  fake_server s(fixture_args());
  client c(s.port());
  c.send(request_bytes("GET", "/health") + request_bytes("GET", "/props"));
  ASSERT_TRUE(c.read_response(in(10s)));
  ASSERT_TRUE(c.read_response(in(10s)));
  c.send(request_bytes("GET", "/nope"));
  ASSERT_TRUE(c.read_response(in(10s)));
  EXPECT_TRUE(c.wait_closed(in(10s)));
  EXPECT_TRUE(
      stats_until(s.port(), [](json::object const& st) { return num(st.at("closed_connections")) >= 1; }));
}

TEST(FakeLlamaServerKnobs, CrashNowAbortsTheProcess) {
  fake_server s(fixture_args());
  control(s.port(), R"({"crash_now":true})");
  auto st = s.wait_exit(in(10s));
  ASSERT_TRUE(st);
  EXPECT_TRUE(WIFSIGNALED(*st) && WTERMSIG(*st) == SIGABRT) << "status " << *st;
}

TEST(FakeLlamaServerKnobs, CrashAfterExitsWithTheGivenCode) {
  fake_server s(fixture_args({"--crash-after-ms", "50", "--crash-exit-code", "134"}));
  auto st = s.wait_exit(in(10s));
  ASSERT_TRUE(st);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 134) << "status " << *st;
}

// ======================= embeddings and rerank

std::string const embeddings_body =
    R"({"model":"tiny-embed","input":["Hello operator.","The queue is full."],"encoding_format":"float"})";
std::string const rerank_body =
    R"({"model":"tiny-rerank","query":"Is the queue full?","documents":["Hello operator.","The queue is full.","Is the queue full?"],"top_n":2})";

double l2(json::array const& v) {
  double sum = 0;
  for (auto const& x : v)
    sum += x.to_number<double>() * x.to_number<double>();
  return std::sqrt(sum);
}

rules pooled_rules() {
  rules r;
  r.exact_numbers.insert({"prompt_tokens", "total_tokens"});
  return r;
}

TEST(FakeLlamaServerEmbeddings, V1EmbeddingsIsShapedLikeLlamaServersOpenAIAnswer) {
  fake_server s(fixture_args({"--embedding", "--embd-dim", "8"}));
  auto r = call(s.port(), "POST", "/v1/embeddings", embeddings_body);
  expect_matches("embeddings.http", r, pooled_rules());
  auto data = parse_json(r.body).at("data").as_array();
  ASSERT_EQ(data.size(), 2u);
  for (std::size_t i = 0; i < data.size(); ++i) {
    auto const& v = data[i].at("embedding").as_array();
    EXPECT_EQ(v.size(), 8u);
    EXPECT_NEAR(l2(v), 1.0, 1e-6) << "vectors are L2-normalised";
    EXPECT_EQ(num(data[i].at("index")), static_cast<std::int64_t>(i));
  }
  EXPECT_NE(data[0].at("embedding"), data[1].at("embedding"));
  // Deterministic per input: the same text gives the same vector in any batch.
  auto alone = parse_json(call(s.port(), "POST", "/v1/embeddings", R"({"input":"The queue is full."})").body);
  EXPECT_EQ(alone.at("data").at(0).at("embedding"), data[1].at("embedding"));
  EXPECT_EQ(alone.at("model"), "tiny-llama") << "no model in the request: the alias";
  EXPECT_EQ(num(alone.at("usage").at("prompt_tokens")), 1 + 5) << "BOS + ceil(18 / 4)";
  // The default length is 64.
  fake_server d(fixture_args({"--embeddings"}));
  auto d64 = parse_json(call(d.port(), "POST", "/v1/embeddings", embeddings_body).body);
  EXPECT_EQ(d64.at("data").at(0).at("embedding").as_array().size(), 64u);
}

TEST(FakeLlamaServerEmbeddings, OtherInputShapesEncodingsAndRoutes) {
  fake_server s(fixture_args({"--embedding", "--embd-dim", "4"}));
  // Token ids are one prompt; a list of token lists is several.
  auto ids = parse_json(call(s.port(), "POST", "/v1/embeddings", R"({"input":[5,6,7]})").body);
  EXPECT_EQ(ids.at("data").as_array().size(), 1u);
  EXPECT_EQ(num(ids.at("usage").at("prompt_tokens")), 3) << "token lists are sent as they are";
  auto lists = parse_json(call(s.port(), "POST", "/v1/embeddings", R"({"input":[[5,6],"abc"]})").body);
  EXPECT_EQ(lists.at("data").as_array().size(), 2u);
  // base64: the float32 bytes of the same vector.
  auto b64 = parse_json(
      call(s.port(), "POST", "/v1/embeddings", R"({"input":"x","encoding_format":"base64"})").body);
  EXPECT_TRUE(b64.at("data").at(0).at("embedding").is_string());
  EXPECT_EQ(b64.at("data").at(0).at("embedding").as_string().size(), 24u) << "16 bytes in base64";
  EXPECT_EQ(b64.at("data").at(0).at("encoding_format"), "base64");
  // llama-server's own shape on /embeddings and /embedding: [{index, embedding: [[…]]}].
  for (std::string path : {"/embeddings", "/embedding"}) {
    auto own = parse_json(call(s.port(), "POST", path, R"({"input":"x"})").body);
    ASSERT_TRUE(own.is_array()) << path;
    EXPECT_EQ(own.at(0).at("embedding").as_array().size(), 1u) << path;
    EXPECT_EQ(own.at(0).at("embedding").at(0).as_array().size(), 4u) << path;
  }
  // Errors like llama-server's.
  auto no_input = call(s.port(), "POST", "/v1/embeddings", R"({"model":"m"})");
  EXPECT_EQ(no_input.status, 400);
  EXPECT_EQ(parse_json(no_input.body).at("error").at("message"), "\"input\" or \"content\" must be provided");
  auto bad_format = call(s.port(), "POST", "/v1/embeddings", R"({"input":"x","encoding_format":"hex"})");
  EXPECT_EQ(bad_format.status, 400);
  EXPECT_EQ(call(s.port(), "POST", "/v1/embeddings", R"({"input":[]})").status, 400);
  EXPECT_EQ(call(s.port(), "POST", "/v1/embeddings", R"({"input":[{"a":1}]})").status, 500);
  auto broken = call(s.port(), "POST", "/v1/embeddings", "{not json");
  EXPECT_EQ(broken.status, 500);
  EXPECT_EQ(parse_json(broken.body).at("error").at("type"), "server_error");
  // Pooling none is not OpenAI-compatible.
  fake_server none(fixture_args({"--embedding", "--pooling", "none", "--embd-dim", "4"}));
  auto refused = call(none.port(), "POST", "/v1/embeddings", R"({"input":"x"})");
  EXPECT_EQ(refused.status, 400);
  EXPECT_EQ(parse_json(refused.body).at("error").at("type"), "invalid_request_error");
  auto rows = parse_json(call(none.port(), "POST", "/embeddings", R"({"input":"abcdefgh"})").body);
  EXPECT_EQ(rows.at(0).at("embedding").as_array().size(), 3u) << "pooling none: BOS + 2 token rows";
}

TEST(FakeLlamaServerEmbeddings, WithoutEmbeddingModeBothRoutesAnswer501) {
  fake_server s(fixture_args());
  auto r = call(s.port(), "POST", "/v1/embeddings", embeddings_body);
  expect_matches("embeddings-not-enabled.http", r);
  EXPECT_EQ(r.body, load_fixture("embeddings-not-enabled.http").body);
  auto rr = call(s.port(), "POST", "/v1/rerank", rerank_body);
  EXPECT_EQ(rr.status, 501);
  EXPECT_EQ(parse_json(rr.body).at("error").at("message"),
            "This server does not support reranking. Start it with `--reranking`");
  // Embedding mode alone does not rank (pooling is not rank).
  fake_server e(fixture_args({"--embedding"}));
  EXPECT_EQ(call(e.port(), "POST", "/v1/embeddings", embeddings_body).status, 200);
  EXPECT_EQ(call(e.port(), "POST", "/v1/rerank", rerank_body).status, 501);
  EXPECT_EQ(num(stats(s.port()).at("embedding_requests")), 0) << "refused requests are not counted";
}

TEST(FakeLlamaServerEmbeddings, RerankIsBestFirstAndCutToTopN) {
  fake_server s(fixture_args({"--reranking", "--embd-dim", "8"}));
  auto r = call(s.port(), "POST", "/v1/rerank", rerank_body);
  expect_matches("rerank.http", r, pooled_rules());
  auto results = parse_json(r.body).at("results").as_array();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(num(results[0].at("index")), 2) << "the exact match first";
  EXPECT_GE(results[0].at("relevance_score").to_number<double>(),
            results[1].at("relevance_score").to_number<double>());
  // Without top_n: every document; the aliases answer the same.
  std::string all = R"({"query":"b","documents":["a","b","c"]})";
  for (std::string path : {"/v1/rerank", "/rerank", "/v1/reranking", "/reranking"}) {
    auto a = parse_json(call(s.port(), "POST", path, all).body);
    ASSERT_EQ(a.at("results").as_array().size(), 3u) << path;
    EXPECT_EQ(num(a.at("results").at(0).at("index")), 1) << path;
  }
  // TEI's request shape: a bare array with `score`.
  auto tei = parse_json(call(s.port(), "POST", "/rerank", R"({"query":"b","texts":["a","b"]})").body);
  ASSERT_TRUE(tei.is_array());
  EXPECT_TRUE(tei.at(0).as_object().contains("score"));
  // Errors.
  auto no_query = call(s.port(), "POST", "/v1/rerank", R"({"documents":["a"]})");
  EXPECT_EQ(no_query.status, 400);
  EXPECT_EQ(parse_json(no_query.body).at("error").at("message"), "\"query\" must be provided");
  auto no_docs = call(s.port(), "POST", "/v1/rerank", R"({"query":"a","documents":[]})");
  EXPECT_EQ(no_docs.status, 400);
  EXPECT_EQ(parse_json(no_docs.body).at("error").at("message"),
            "\"documents\" must be a non-empty string array");
  // A later --pooling overrides --reranking's rank, as in llama-server.
  fake_server over(fixture_args({"--reranking", "--pooling", "mean"}));
  EXPECT_EQ(call(over.port(), "POST", "/v1/rerank", rerank_body).status, 501);
  EXPECT_EQ(call(over.port(), "POST", "/v1/embeddings", embeddings_body).status, 200);
}

TEST(FakeLlamaServerEmbeddings, CountedAndGuardedLikeInference) {
  fake_server s(fixture_args({"--reranking", "--api-key", "sekrit"}));
  std::vector<std::string> key{"Authorization: Bearer sekrit"};
  EXPECT_EQ(call(s.port(), "POST", "/v1/embeddings", embeddings_body).status, 401);
  EXPECT_EQ(call(s.port(), "POST", "/v1/rerank", rerank_body).status, 401);
  EXPECT_EQ(call(s.port(), "POST", "/v1/embeddings", embeddings_body, key).status, 200);
  EXPECT_EQ(call(s.port(), "POST", "/v1/embeddings", R"({"input":"one"})", key).status, 200);
  EXPECT_EQ(call(s.port(), "POST", "/v1/rerank", rerank_body, key).status, 200);
  auto st = stats(s.port());
  EXPECT_EQ(num(st.at("embedding_requests")), 2);
  EXPECT_EQ(num(st.at("embedding_inputs")), 3);
  EXPECT_EQ(num(st.at("rerank_requests")), 1);
  EXPECT_EQ(num(st.at("rerank_documents")), 3);
  EXPECT_EQ(num(st.at("inference_requests")), 3);
  auto const& last = st.at("recent").as_array().back().as_object();
  EXPECT_EQ(last.at("path"), "/v1/rerank");
  EXPECT_EQ(last.at("body").at("top_n"), 2);
  control(s.port(), R"({"reset_stats":true,"load_delay_ms":600000})");
  EXPECT_EQ(call(s.port(), "POST", "/v1/embeddings", embeddings_body, key).status, 503);
  control(s.port(), R"({"load_delay_ms":0,"fail_status":500})");
  EXPECT_EQ(call(s.port(), "POST", "/v1/rerank", rerank_body, key).status, 500);
  control(s.port(), R"({"fail_status":0,"malformed_json":true})");
  auto broken = call(s.port(), "POST", "/v1/embeddings", embeddings_body, key);
  EXPECT_EQ(broken.status, 200);
  EXPECT_ANY_THROW(parse_json(broken.body));
  EXPECT_EQ(num(stats(s.port()).at("embedding_requests")), 1);
}

TEST(FakeLlamaServerEmbeddings, AHeldRequestSeesItsClientLeave) {
  fake_server s(fixture_args({"--embedding", "--hang-before-first-token"}));
  {
    client c(s.port());
    c.send(request_bytes("POST", "/v1/embeddings", embeddings_body));
    ASSERT_TRUE(stats_until(s.port(), [](json::object const& st) { return num(st.at("active")) == 1; }));
  }
  EXPECT_TRUE(stats_until(s.port(), [](json::object const& st) {
    return num(st.at("cancelled_embeddings")) == 1 && num(st.at("active")) == 0;
  })) << json::serialize(stats(s.port()));
  // Released by the knob, a held request answers.
  client held(s.port());
  held.send(request_bytes("POST", "/v1/embeddings", embeddings_body));
  ASSERT_TRUE(stats_until(s.port(), [](json::object const& st) { return num(st.at("active")) == 1; }));
  control(s.port(), R"({"hang_before_first_token":false})");
  auto r = held.read_response(in(10s));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(num(stats(s.port()).at("completed")), 1);
}

}  // namespace
