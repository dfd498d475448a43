// Secrets never leave Ray (issue acceptance item): /v1/config, logs at every level, error bodies and metrics
// never contain an API key, a key digest, an upstream API key, a secret-bearing launchProfile.extraArgs value
// or a configured upstream header value (config.md: every `model.adapter.headers` value is redacted, so every
// one counts as secret). Proved by grepping everything Ray wrote.
//
// Where a secret can enter Ray (read from src/ray/config, access, backend, api):
//   - API keys: the env var named by auth.apiKeyEnv (comma/newline list) and auth.apiKeySha256 (digests);
//     a key's digest is SHA-256 (access::key_digest), also embedded raw in rate-limit and cache-scope keys;
//   - the upstream key: the env var named by model.adapter.apiKeyEnv, sent as `authorization: Bearer …`;
//   - model.adapter.headers values, sent upstream on every call;
//   - launchProfile.extraArgs values of secret flags (--api-key, --hf-token, -hft, …), passed to
//     llama-server and shown (redacted) in /v1/config and in the supervisor's "llama-server started" line;
//   - asyncQueue.callbackSecretEnv's variable, unknown RAY_* variables and the default RAY_API_KEYS;
//   - bearer tokens clients send (right, wrong, near-miss), which must not be echoed either.
//
// Every secret is a fresh random "SEKRET-<TAG>-<32 hex>". A needle is every form Ray could print: the value,
// a 12-character piece of either end of its random part, its SHA-256 as hex (first 12), base64 and base64url
// (first 16) and raw bytes (first 8), matched case-insensitively. The test drives the real `ray` at log level
// debug through startup, every route with right, wrong, near-miss, missing and malformed keys, rate-limited
// requests, backend failures (errors, a rejected upstream key, a crash), SIGHUP reloads (a failing one too)
// and SIGTERM; it captures stdout, stderr, every response (head and body) and every file Ray wrote in its
// directory, and asserts no needle is in any of them, quoting 200 bytes around each hit.
//
// Every check can fail: each scan is preceded by a self-check that the same search finds each needle form in
// a planted text and in what the test itself sent or wrote (requests, config files, an echoing upstream's
// replies), and by checks that the outputs are not trivially empty (log lines at debug, /v1/config 200 with
// redactions, metrics with series).
//
// Tests marked `// Found:` are the regression tests of leaks this test found (each failed before its fix).
#include "fake_llama.hpp"
#include "support/require.hpp"

#include <openssl/evp.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

namespace ray::itest {
namespace {

namespace json = boost::json;
namespace fs = std::filesystem;

// ---- secrets and their needles
// -----------------------------------------------------------------------------

std::string random_hex(std::size_t n) {
  static std::mt19937_64 gen{std::random_device{}()};
  static constexpr char digits[] = "0123456789abcdef";
  std::uniform_int_distribution<int> d(0, 15);
  std::string s;
  for (std::size_t i = 0; i < n; ++i)
    s += digits[d(gen)];
  return s;
}

// "SEKRET-<TAG>-<32 random hex>": a valid bearer token (RFC 6750 b64token), long enough for auth (≥ 16).
std::string make_secret(std::string_view tag) {
  return "SEKRET-" + std::string(tag) + "-" + random_hex(32);
}

std::string sha256_raw(std::string_view s) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_Digest(s.data(), s.size(), md, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char const*>(md), len);
}

std::string to_hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string sha256_hex(std::string_view s) {
  return to_hex(sha256_raw(s));
}

std::string base64(std::string_view bytes, bool url = false) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n =
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                      reinterpret_cast<unsigned char const*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  if (url) {
    for (char& c : out)
      c = c == '+' ? '-' : c == '/' ? '_' : c;
    while (!out.empty() && out.back() == '=')
      out.pop_back();
  }
  return out;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

struct needle {
  std::string label;  // "KEY1 (sha256 hex, first 12)"
  std::string bytes;  // matched case-insensitively
};

class needle_set {
 public:
  // A secret Ray holds (or is sent): the value, both ends of its random part, and its digest forms.
  void add_secret(std::string const& label, std::string const& value) {
    add(label, value);
    auto dash = value.rfind('-');
    std::string_view random = std::string_view(value).substr(dash == std::string::npos ? 0 : dash + 1);
    if (random.size() >= 24) {
      add(label + " (first 12 of its random part)", std::string(random.substr(0, 12)));
      add(label + " (last 12 of its random part)", std::string(random.substr(random.size() - 12)));
    }
    add_digests(label, value);
  }
  // A token a client sent that is no key of Ray's: the token itself and its digest forms.
  void add_token(std::string const& label, std::string const& value) {
    add(label, value);
    add_digests(label, value);
  }
  std::vector<needle> const& all() const { return all_; }

 private:
  void add(std::string label, std::string bytes) {
    if (bytes.size() < 8) return;  // too short to be told apart from ordinary text
    all_.push_back({std::move(label), lower(bytes)});
  }
  void add_digests(std::string const& label, std::string const& value) {
    auto raw = sha256_raw(value);
    add(label + " (sha256 hex, first 12)", to_hex(raw).substr(0, 12));
    add(label + " (sha256 base64, first 16)", base64(raw).substr(0, 16));
    add(label + " (sha256 base64url, first 16)", base64(raw, true).substr(0, 16));
    add(label + " (sha256 raw bytes, first 8)", raw.substr(0, 8));
  }
  std::vector<needle> all_;
};

// Everything one side wrote, as labelled texts ("GET /health with KEY1 → 200", "ray stdout").
struct transcript {
  std::vector<std::pair<std::string, std::string>> items;
  void add(std::string label, std::string text) { items.emplace_back(std::move(label), std::move(text)); }
  std::size_t bytes() const {
    std::size_t n = 0;
    for (auto const& [l, t] : items)
      n += t.size();
    return n;
  }
};

std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

struct finding {
  std::string needle;
  std::string where;
  std::size_t offset{0};
  std::string context;
};

std::vector<finding> scan(transcript const& t, needle_set const& needles) {
  std::vector<finding> out;
  for (auto const& [where, text] : t.items) {
    auto hay = lower(text);
    for (auto const& n : needles.all()) {
      auto pos = hay.find(n.bytes);
      if (pos == std::string::npos) continue;
      auto from = pos >= 100 ? pos - 100 : 0;
      auto to = std::min(text.size(), pos + n.bytes.size() + 100);
      out.push_back({n.label, where, pos, printable(std::string_view(text).substr(from, to - from))});
    }
  }
  return out;
}

// No needle in any text of `t`; a failure names each needle, where it was and the 200 bytes around it.
::testing::AssertionResult no_secret_in(transcript const& t, needle_set const& needles) {
  auto found = scan(t, needles);
  if (found.empty()) return ::testing::AssertionSuccess();
  auto r = ::testing::AssertionFailure();
  r << found.size() << " secret occurrence(s) in what Ray wrote:";
  std::size_t shown = 0;
  for (auto const& f : found) {
    if (++shown > 40) {
      r << "\n  … and " << found.size() - 40 << " more";
      break;
    }
    r << "\n  - needle `" << f.needle << "` in `" << f.where << "` at byte " << f.offset << ":\n      «"
      << f.context << "»";
  }
  return r;
}

// The search finds `label` (a needle label, or a prefix of labels) in `t`: the scan can see what it looks
// for.
::testing::AssertionResult finds(transcript const& t, needle_set const& needles, std::string_view label) {
  for (auto const& f : scan(t, needles))
    if (std::string_view(f.needle).starts_with(label)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "self-check: the needle search did not find `" << label << "` in a text that contains it";
}

// Self-check of the search itself: every needle form, planted in upper case among other text, is found.
::testing::AssertionResult every_form_is_detectable(needle_set const& needles) {
  transcript planted;
  std::string blob = "{\"level\":\"debug\",\"message\":\"planted\",\"x\":\"";
  for (std::size_t i = 0; i < needles.all().size(); ++i) {
    auto const& n = needles.all()[i];
    blob += "..<" + (i % 2 ? upper(n.bytes) : n.bytes) + ">..";
  }
  planted.add("planted text", blob + "\"}");
  std::set<std::string> seen;
  for (auto const& f : scan(planted, needles))
    seen.insert(f.needle);
  for (auto const& n : needles.all())
    if (!seen.contains(n.label))
      return ::testing::AssertionFailure()
             << "self-check: needle `" << n.label << "` not found where planted";
  return ::testing::AssertionSuccess();
}

// Every regular file under `dir` (what Ray wrote in its working and storage directories), except the files
// the test wrote itself.
void add_files(transcript& t, fs::path const& dir, std::set<fs::path> const& written_by_test) {
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (!it->is_regular_file() || written_by_test.contains(it->path())) continue;
    std::ifstream in(it->path(), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    t.add("file " + it->path().string(), ss.str());
  }
}

void add_process_output(transcript& t, rt::ray_process& p, std::string const& name) {
  t.add(name + " stdout", p.stdout_text());
  t.add(name + " stderr", p.stderr_text());
}

// ---- talking to Ray, keeping both sides ------------------------------------------------------------------

class driver {
 public:
  driver(std::uint16_t port, transcript& sent, transcript& got) : port_(port), sent_(sent), got_(got) {}

  // One request on a fresh connection; the response (head and body) is kept under `label`.
  rt::http_response send(std::string const& label, std::string const& request, bool head = false) {
    sent_.add(label, request);
    rt::raw_client c(port_);
    std::optional<rt::http_response> r;
    if (c.send(request)) r = c.read_response(rt::in(kIo), head);
    return keep(label, c, r);
  }

  // The header section with `Expect: 100-continue`; the body only after a `100 Continue`.
  rt::http_response send_expecting_continue(std::string const& label, std::string const& target,
                                            std::string const& auth, std::string const& body) {
    auto head = post_head(target, body.size(), "application/json", auth + "Expect: 100-continue\r\n");
    sent_.add(label, head + body);
    rt::raw_client c(port_);
    std::optional<rt::http_response> r;
    if (c.send(head)) r = c.read_response(rt::in(kIo));
    if (r && r->is_interim()) {
      got_.add(label + " (interim)", r->raw_head);
      r.reset();
      if (c.send(body)) r = c.read_response(rt::in(kIo));
    }
    return keep(label, c, r);
  }

  std::uint16_t port() const { return port_; }

 private:
  rt::http_response keep(std::string const& label, rt::raw_client& c, std::optional<rt::http_response>& r) {
    if (!r) {
      got_.add(label + " (no complete response)", c.last_error() + "\n" + c.pending());
      return {};
    }
    got_.add(label + " -> " + std::to_string(r->status), r->raw_head + r->body);
    return *r;
  }

  std::uint16_t port_;
  transcript& sent_;
  transcript& got_;
};

std::string bearer(std::string_view token) {
  return "Authorization: Bearer " + std::string(token) + "\r\n";
}

// Waits for a JSON log line matching `pred` that comes after the `after` ones already matching.
std::optional<json::object> wait_json_after(rt::ray_process& p,
                                            std::function<bool(json::object const&)> const& pred,
                                            std::size_t after, rt::deadline until = rt::in(kIo)) {
  std::size_t seen = 0;
  return p.wait_for_json([&](json::object const& o) { return pred(o) && ++seen > after; }, until);
}

std::size_t count_json(rt::ray_process& p, std::function<bool(json::object const&)> const& pred) {
  std::size_t n = 0;
  for (auto const& o : p.json_lines())
    n += pred(o) ? 1 : 0;
  return n;
}

std::function<bool(json::object const&)> message_is(std::string m) {
  return [m](json::object const& o) { return rt::string_field(o, "message") == m; };
}

std::function<bool(json::object const&)> provider_became(std::string state) {
  return [state](json::object const& o) {
    return rt::string_field(o, "message") == "provider state changed" && rt::string_field(o, "to") == state;
  };
}

// Every "provider state changed" line so far, for failure messages.
std::string transitions(rt::ray_process& p) {
  std::string out = "provider transitions:";
  for (auto const& o : p.json_lines())
    if (rt::string_field(o, "message") == "provider state changed")
      out += "\n  " + rt::string_field(o, "from") + " -> " + rt::string_field(o, "to") + " (" +
             rt::string_field(o, "reason") + ")";
  return out;
}

::testing::AssertionResult shows_debug_lines(rt::ray_process& p, std::size_t min_lines) {
  auto lines = p.json_lines();
  std::size_t debug = 0;
  for (auto const& o : lines)
    debug += rt::string_field(o, "level") == "debug" ? 1 : 0;
  if (lines.size() >= min_lines && debug > 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "expected ≥ " << min_lines << " JSON log lines with debug ones; got " << lines.size() << " ("
         << debug << " debug)";
}

// ---- an OpenAI-compatible upstream that echoes its request into its errors
// ---------------------------------

// The worst case for relaying upstream errors: every error answer quotes the request's `authorization` and
// `x-ray-test-token` headers (debug servers and some proxies do this). GET /v1/models answers 200 (Ray's
// probe) unless probes are set to fail; inference answers per `chat_mode`. One thread per connection, every
// answer with `connection: close`.
class echo_upstream {
 public:
  enum class mode { ok, status_500, status_400, mid_stream_error };

  echo_upstream() {
    listen_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_, 64) != 0)
      throw std::runtime_error("echo_upstream: cannot listen");
    socklen_t len = sizeof a;
    ::getsockname(listen_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    if (::pipe2(wake_, O_CLOEXEC) != 0) throw std::runtime_error("echo_upstream: pipe");
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~echo_upstream() {
    char x = 'x';
    (void)!::write(wake_[1], &x, 1);
    acceptor_.join();
    {
      std::lock_guard lk(mu_);
      for (int fd : open_)
        ::shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : workers_)
      t.join();
    ::close(listen_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }
  echo_upstream(echo_upstream const&) = delete;
  echo_upstream& operator=(echo_upstream const&) = delete;

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  void set_chat_mode(mode m) { chat_mode_ = m; }
  void set_probe_fails(bool fails) { probe_fails_ = fails; }
  // Every `authorization` value received, and every byte answered (for the self-checks).
  std::vector<std::string> authorizations() const {
    std::lock_guard lk(mu_);
    return authorizations_;
  }
  std::string answered() const {
    std::lock_guard lk(mu_);
    return answered_;
  }

 private:
  void accept_loop() {
    for (;;) {
      pollfd p[2] = {{listen_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
      if (::poll(p, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (p[1].revents != 0) return;
      int fd = ::accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      {
        std::lock_guard lk(mu_);
        open_.insert(fd);
      }
      workers_.emplace_back([this, fd] { serve(fd); });
    }
  }

  static std::string header_value(std::string const& head, std::string_view name) {
    auto l = lower(head);
    auto pos = l.find("\r\n" + std::string(name) + ":");
    if (pos == std::string::npos) return {};
    pos += name.size() + 3;
    auto end = head.find("\r\n", pos);
    auto v = head.substr(pos, end - pos);
    while (!v.empty() && v.front() == ' ')
      v.erase(0, 1);
    return v;
  }

  void serve(int fd) {
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string in;
    char buf[4096];
    auto fill = [&] {
      auto n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return false;
      in.append(buf, static_cast<std::size_t>(n));
      return in.size() < (1u << 20);
    };
    bool ok = true;
    while (ok && in.find("\r\n\r\n") == std::string::npos)
      ok = fill();
    if (ok) {
      auto head_end = in.find("\r\n\r\n") + 4;
      std::string head = in.substr(0, head_end);
      auto cl = header_value(head, "content-length");
      std::size_t length = cl.empty() ? 0 : std::stoul(cl);
      while (ok && in.size() < head_end + length)
        ok = fill();
      if (ok) {
        auto reply = answer(head);
        for (std::size_t off = 0; off < reply.size();) {
          auto n = ::send(fd, reply.data() + off, reply.size() - off, MSG_NOSIGNAL);
          if (n <= 0) break;
          off += static_cast<std::size_t>(n);
        }
      }
    }
    std::lock_guard lk(mu_);
    open_.erase(fd);
    ::close(fd);
  }

  std::string answer(std::string const& head) {
    auto first = head.substr(0, head.find("\r\n"));
    auto sp1 = first.find(' ');
    auto method = first.substr(0, sp1);
    auto target = first.substr(sp1 + 1, first.find(' ', sp1 + 1) - sp1 - 1);
    auto auth = header_value(head, "authorization");
    auto echo = "authorization=" + auth + "; x-ray-test-token=" + header_value(head, "x-ray-test-token");
    std::string reply;
    auto whole = [](int status, std::string_view reason, std::string const& body) {
      return "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason) +
             "\r\ncontent-type: application/json\r\ncontent-length: " + std::to_string(body.size()) +
             "\r\nconnection: close\r\n\r\n" + body;
    };
    auto chunk = [](std::string const& delta, std::string const& finish) {
      return "data: "
             "{\"id\":\"e\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{" +
             (delta.empty() ? std::string() : "\"content\":\"" + delta + "\"") +
             "},\"finish_reason\":" + (finish.empty() ? std::string("null") : "\"" + finish + "\"") +
             "}]}\n\n";
    };
    std::string const sse_head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: "
        "close\r\n\r\n";
    std::string const error_body = "{\"error\":\"" + echo + "\"}";
    if (method == "GET" && target == "/v1/models") {
      reply = probe_fails_ ? whole(500, "Internal Server Error", error_body)
                           : whole(200, "OK", R"({"object":"list","data":[{"id":"upstream-model"}]})");
    } else if (method == "POST" && (target == "/v1/chat/completions" || target == "/v1/completions")) {
      {
        std::lock_guard lk(mu_);
        authorizations_.push_back(auth);
      }
      switch (chat_mode_.load()) {
        case mode::ok:
          reply = sse_head + chunk("hello", "") + chunk("", "stop") + "data: [DONE]\n\n";
          break;
        case mode::status_500:
          reply = whole(500, "Internal Server Error", error_body);
          break;
        case mode::status_400:
          reply = whole(400, "Bad Request", error_body);
          break;
        case mode::mid_stream_error:
          reply = sse_head + chunk("partial ", "") + "data: {\"error\":{\"message\":\"" + echo +
                  "\",\"type\":\"server_error\"}}\n\n";
          break;
      }
    } else {
      reply = whole(404, "Not Found", error_body);
    }
    std::lock_guard lk(mu_);
    answered_ += reply;
    return reply;
  }

  int listen_{-1};
  int wake_[2]{-1, -1};
  std::uint16_t port_{0};
  std::atomic<mode> chat_mode_{mode::ok};
  std::atomic<bool> probe_fails_{false};
  std::thread acceptor_;
  std::vector<std::thread> workers_;  // touched by the acceptor thread only (joined before use)
  mutable std::mutex mu_;
  std::set<int> open_;
  std::vector<std::string> authorizations_;
  std::string answered_;
};

// ---- the secrets of the front-door scenario ---------------------------------------------------------------

struct front_door_secrets {
  std::string key1 = make_secret("KEYONE");            // in the key env var
  std::string key2 = make_secret("KEYTWO");            // in the key env var, sent with a lower-case scheme
  std::string key3 = make_secret("KEYDIGESTONLY");     // configured as apiKeySha256 only
  std::string key4 = make_secret("KEYADDEDONRELOAD");  // apiKeySha256 of the SIGHUP reload
  std::string key5 = make_secret("KEYTYPOEDDIGEST");   // a broken digest of the failing reload
  std::string upstream = make_secret("UPSTREAM");      // the llama-server's --api-key (adapter.apiKeyEnv)
  std::string header1 = make_secret("HEADERTOKEN");    // model.adapter.headers values
  std::string header2 = make_secret("HEADERORG");
  std::string header3 = make_secret("HEADERONRELOAD");     // a header value only in the reload file
  std::string extra_api_key = make_secret("EXTRAAPIKEY");  // launchProfile.extraArgs
  std::string extra_hf = make_secret("EXTRAHFTOKEN");
  std::string extra_hft = make_secret("EXTRAHFT");
  std::string callback = make_secret("CALLBACK");       // asyncQueue.callbackSecretEnv's variable
  std::string unknown_env = make_secret("UNKNOWNENV");  // RAY_SECRETS_TEST_TOKEN (an unknown RAY_* name)
  std::string default_env = make_secret("DEFAULTENV");  // RAY_API_KEYS (not the configured variable)

  void add_to(needle_set& n) const {
    n.add_secret("KEY1", key1);
    n.add_secret("KEY2", key2);
    n.add_secret("KEY3 (digest-only key)", key3);
    n.add_secret("KEY4 (added on reload)", key4);
    n.add_secret("KEY5 (typo'd digest)", key5);
    n.add_secret("UPSTREAM key", upstream);
    n.add_secret("HEADER1 value", header1);
    n.add_secret("HEADER2 value", header2);
    n.add_secret("HEADER3 value", header3);
    n.add_secret("extraArgs --api-key", extra_api_key);
    n.add_secret("extraArgs --hf-token", extra_hf);
    n.add_secret("extraArgs -hft", extra_hft);
    n.add_secret("callback secret", callback);
    n.add_secret("unknown RAY_* value", unknown_env);
    n.add_secret("RAY_API_KEYS value", default_env);
  }

  std::vector<std::pair<std::string, std::string>> env() const {
    return {{"SECRETS_TEST_KEYS", key1 + ",\n " + key2},
            {"SECRETS_TEST_UPSTREAM_KEY", upstream},
            {"SECRETS_TEST_CALLBACK_SECRET", callback},
            {"RAY_SECRETS_TEST_TOKEN", unknown_env},
            {"RAY_API_KEYS", default_env}};
  }
};

// Ray attached to the llama-server double (which requires `upstream`) with every kind of secret configured,
// at log level debug.
json::object front_door_config(front_door_secrets const& s, std::uint16_t backend_port, int max_requests,
                               json::array digests) {
  json::object launch{{"host", "127.0.0.1"},
                      {"port", backend_port},
                      {"ctxSize", 2048},
                      {"parallel", 2},
                      {"extraArgs", json::array{"--api-key", s.extra_api_key, "--hf-token=" + s.extra_hf,
                                                "-hft", s.extra_hft, "--flash-attn", "on"}}};
  json::object adapter{
      {"kind", "llama.cpp"},
      {"baseUrl", "http://127.0.0.1:" + std::to_string(backend_port)},
      {"apiKeyEnv", "SECRETS_TEST_UPSTREAM_KEY"},
      {"headers", json::object{{"X-Ray-Test-Token", s.header1}, {"X-Ray-Test-Org", s.header2}}},
      {"healthIntervalMs", 200},
      {"healthTimeoutMs", 500},
      {"timeoutMs", 5000},
      {"launchProfile", launch}};
  return json::object{
      {"profile", "sub1b"},
      {"server", json::object{{"corsAllowOrigins", json::array{"http://console.example"}}}},
      {"model", json::object{{"id", "tiny-llama"}, {"warmOnBoot", true}, {"adapter", adapter}}},
      {"scheduler", json::object{{"maxInflightTokens", 2048}}},
      {"auth",
       json::object{{"enabled", true}, {"apiKeyEnv", "SECRETS_TEST_KEYS"}, {"apiKeySha256", digests}}},
      {"rateLimit", json::object{{"enabled", true},
                                 {"maxRequests", max_requests},
                                 {"windowMs", 60000},
                                 {"keyStrategy", "ip+api-key"}}},
      {"asyncQueue", json::object{{"enabled", true},
                                  {"storageDir", "storage"},  // under Ray's working directory
                                  {"callbackSecretEnv", "SECRETS_TEST_CALLBACK_SECRET"}}},
      {"telemetry", json::object{{"logLevel", "debug"}}},
      {"tags", json::object{{"owner", "secrets-test"}}}};
}

void write_json(fs::path const& path, json::object const& o) {
  std::ofstream(path) << json::serialize(o);
}

std::string slurp(fs::path const& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---- 1. the front door: every route, every kind of key, backend failures, reloads, shutdown ---------------

TEST(secrets, NeverLeaveRayThroughAnyRouteLogLevelErrorMetricOrSignal) {
  front_door_secrets sec;
  fake_llama f({"-c", "2048", "-np", "2", "--metrics", "--api-key", sec.upstream});
  ASSERT_TRUE(f.ok()) << f.output();

  needle_set needles;
  sec.add_to(needles);

  auto const cfg = front_door_config(sec, f.port(), 1000, json::array{sha256_hex(sec.key3)});
  ray_server s(cfg, no_host_pressure(), sec.env());
  auto const dir = s.dir().path();  // Ray's working directory, holding its storage dir
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(s.process().wait_for_json(provider_became("ready"), rt::in(kIo))) << s.output_tail();
  // The unknown RAY_* variable was read (and named), so its value was in Ray's hands.
  ASSERT_TRUE(s.process().wait_for_log("RAY_SECRETS_TEST_TOKEN", rt::in(kIo))) << s.output_tail();

  transcript sent, got;
  driver d(s.port(), sent, got);
  std::string const infer_body = R"({"input":"hello from the secrets test","cache":false})";
  auto chat_body = [](std::string const& text, bool stream) {
    return R"({"model":"gpt-4o-mini","max_tokens":4,"stream":)" + std::string(stream ? "true" : "false") +
           R"(,"messages":[{"role":"user","content":")" + text + R"("}]})";
  };
  int seq = 0;
  auto unique_infer = [&] { return R"({"input":"request )" + std::to_string(++seq) + R"(","cache":false})"; };

  // -- every route with a right key (and the open routes without one)
  for (auto const& [label, auth] : std::vector<std::pair<std::string, std::string>>{
           {"KEY1", bearer(sec.key1)},
           {"KEY2 (lower-case scheme)", "authorization: bearer " + sec.key2 + "\r\n"},
           {"KEY3 (digest-only)", bearer(sec.key3)}}) {
    for (auto path : {"/health", "/v1/config", "/metrics", "/v1/models"})
      EXPECT_EQ(d.send(std::string("GET ") + path + " with " + label, get(path, auth)).status, 200) << path;
  }
  auto const k1 = bearer(sec.key1);
  for (auto path : {"/", "/livez", "/readyz"})
    EXPECT_EQ(d.send(std::string("GET ") + path + " without a key", get(path)).status, 200);
  auto config = d.send("GET /v1/config (checked)", get("/v1/config", k1));
  ASSERT_EQ(config.status, 200);
  EXPECT_NE(config.body.find("[redacted]"), std::string::npos) << "the config view shows redactions";
  EXPECT_NE(config.body.find("SECRETS_TEST_KEYS"), std::string::npos) << "env var names are shown";
  auto metrics_text = d.send("GET /metrics (checked)", get("/metrics", k1));
  EXPECT_NE(metrics_text.body.find("ray_requests_total"), std::string::npos);
  auto metrics_json = d.send("GET /metrics as JSON", get("/metrics", k1 + "Accept: application/json\r\n"));
  EXPECT_NE(metrics_json.body.find("\"counters\""), std::string::npos);
  d.send("GET / as HTML", get("/", "Accept: text/html\r\n"));
  d.send("HEAD /health", req("HEAD", "/health", std::string(kHost) + k1), true);
  d.send("HEAD /v1/config", req("HEAD", "/v1/config", std::string(kHost) + k1), true);
  d.send(
      "OPTIONS /v1/infer (CORS)",
      req("OPTIONS", "/v1/infer",
          std::string(kHost) + "Origin: http://console.example\r\nAccess-Control-Request-Method: POST\r\n"));
  EXPECT_EQ(d.send("POST /v1/infer", post_json("/v1/infer", infer_body, k1)).status, 200);
  EXPECT_EQ(d.send("POST /v1/infer (with a CORS origin)",
                   post_json("/v1/infer", unique_infer(), k1 + "Origin: http://console.example\r\n"))
                .status,
            200);
  EXPECT_EQ(d.send("POST /v1/chat/completions", post_json("/v1/chat/completions", chat_body("hi", false), k1))
                .status,
            200);
  EXPECT_EQ(
      d.send("POST /v1/chat/completions stream", post_json("/v1/chat/completions", chat_body("hi", true), k1))
          .status,
      200);
  d.send("POST /chat/completions", post_json("/chat/completions", chat_body("again", false), k1));
  d.send("POST /v1/completions",
         post_json("/v1/completions", R"({"model":"m","prompt":"once upon","max_tokens":3})", k1));
  d.send("POST /completions stream",
         post_json("/completions", R"({"model":"m","prompt":"twice","max_tokens":3,"stream":true})", k1));
  d.send("GET /v1/models/tiny-llama", get("/v1/models/tiny-llama", k1));
  d.send("GET /models/no-such-model", get("/models/no-such-model", k1));
  d.send("POST /v1/embeddings", post_json("/v1/embeddings", R"({"input":"x"})", k1));
  d.send("POST /v1/jobs", post_json("/v1/jobs", infer_body, k1));
  d.send("GET /v1/jobs", get("/v1/jobs", k1));
  d.send("GET /v1/jobs/{id}", get("/v1/jobs/job_1", k1));
  d.send("DELETE /v1/jobs/{id}", req("DELETE", "/v1/jobs/job_1", std::string(kHost) + k1));
  d.send("POST /v1/responses", post_json("/v1/responses", R"({"input":"x"})", k1));
  d.send("GET /no-such-route", get("/no-such-route", k1));
  d.send("POST /health (405)", post_json("/health", "{}", k1));
  d.send("POST /v1/infer bad JSON", post_json("/v1/infer", "{\"input\":", k1));
  d.send("POST /v1/infer ill-typed", post_json("/v1/infer", R"({"input":5})", k1));
  d.send("POST /v1/chat/completions n=2", post_json("/v1/chat/completions", R"({"n":2,"messages":[]})", k1));
  d.send("POST /v1/infer text/plain", post("/v1/infer", infer_body, "text/plain", k1));
  d.send("POST /v1/infer gzip", post_json("/v1/infer", infer_body, k1 + "Content-Encoding: gzip\r\n"));
  d.send("POST /v1/infer too large", post_head("/v1/infer", 10'000'000, "application/json", k1));
  d.send("POST /v1/infer context overflow",
         post_json("/v1/infer", R"({"input":")" + std::string(9000, 'w') + R"(","cache":false})", k1));
  d.send_expecting_continue("POST /v1/infer Expect 100-continue", "/v1/infer", k1, unique_infer());

  // -- wrong, near-miss, missing and malformed credentials, on protected routes of both envelopes
  auto near_last = sec.key1;
  near_last.back() = near_last.back() == 'a' ? 'b' : 'a';
  auto near_first = sec.key1;
  near_first[near_first.rfind('-') + 1] = near_first[near_first.rfind('-') + 1] == 'a' ? 'b' : 'a';
  std::string const overlong = sec.key1 + std::string(300 - sec.key1.size(), 'x');
  std::string const basic = base64("user:" + sec.key1);
  std::vector<std::pair<std::string, std::string>> bad_auth{
      {"no credentials", ""},
      {"KEY1 with its last character changed", bearer(near_last)},
      {"KEY1 with its first random character changed", bearer(near_first)},
      {"KEY1 plus a suffix", bearer(sec.key1 + "X")},
      {"KEY1 without its last character", bearer(sec.key1.substr(0, sec.key1.size() - 1))},
      {"the upstream key as a bearer", bearer(sec.upstream)},
      {"an upstream header value as a bearer", bearer(sec.header1)},
      {"an extraArgs value as a bearer", bearer(sec.extra_api_key)},
      {"KEY1's digest as a bearer", bearer(sha256_hex(sec.key1))},
      {"KEY3's configured digest as a bearer", bearer(sha256_hex(sec.key3))},
      {"KEY1 as x-api-key", "X-Api-Key: " + sec.key1 + "\r\n"},
      {"KEY1 as proxy-authorization", "Proxy-Authorization: Bearer " + sec.key1 + "\r\n"},
      {"KEY1 without a scheme", "Authorization: " + sec.key1 + "\r\n"},
      {"KEY1 as Basic", "Authorization: Basic " + basic + "\r\n"},
      {"KEY1 as Token", "Authorization: Token " + sec.key1 + "\r\n"},
      {"KEY1 after a tab", "Authorization: Bearer\t" + sec.key1 + "\r\n"},
      {"KEY1 twice", bearer(sec.key1) + bearer(sec.key1)},
      {"KEY1 then KEY2", bearer(sec.key1) + bearer(sec.key2)},
      {"KEY1 with a trailing word", bearer(sec.key1 + " extra")},
      {"KEY1 with a bad character", bearer(sec.key1 + "$")},
      {"KEY1 and KEY2 in one value", bearer(sec.key1 + "," + sec.key2)},
      {"KEY1 in an overlong token", bearer(overlong)},
      {"an empty bearer", "Authorization: Bearer\r\n"},
      {"a bearer of spaces", "Authorization: Bearer    \r\n"},
  };
  for (auto const& [label, token] :
       std::vector<std::pair<std::string, std::string>>{{"near-miss KEY1 (last)", near_last},
                                                        {"near-miss KEY1 (first)", near_first},
                                                        {"KEY1 plus a suffix", sec.key1 + "X"},
                                                        {"KEY1 cut", sec.key1.substr(0, sec.key1.size() - 1)},
                                                        {"KEY1 as Basic", basic},
                                                        {"overlong token", overlong}})
    needles.add_token(label, token);
  for (auto const& [label, auth] : bad_auth) {
    for (auto path : {"/health", "/metrics", "/v1/config", "/v1/models"}) {
      auto r = d.send(std::string("GET ") + path + " with " + label, get(path, auth));
      EXPECT_EQ(r.status, 401) << label << " on " << path;
    }
    for (auto path : {"/v1/infer", "/v1/chat/completions", "/v1/completions", "/v1/jobs"}) {
      auto r = d.send(
          std::string("POST ") + path + " with " + label,
          post_json(path, path == std::string_view("/v1/infer") ? infer_body : chat_body("x", true), auth));
      EXPECT_EQ(r.status, 401) << label << " on " << path;
    }
  }
  d.send_expecting_continue("POST /v1/infer Expect 100-continue with near-miss KEY1", "/v1/infer",
                            bearer(near_last), infer_body);

  // -- backend failures (each request distinct: nothing is answered from the cache)
  auto failing = [&](std::string const& what) {
    d.send("POST /v1/infer while " + what, post_json("/v1/infer", unique_infer(), k1));
    d.send("POST /v1/chat/completions while " + what,
           post_json("/v1/chat/completions", chat_body("q" + std::to_string(++seq), false), k1));
    d.send("POST /v1/chat/completions stream while " + what,
           post_json("/v1/chat/completions", chat_body("q" + std::to_string(++seq), true), k1));
    d.send("GET /health while " + what, get("/health", k1));
    d.send("GET /readyz while " + what, get("/readyz"));
    d.send("GET /metrics while " + what, get("/metrics", k1));
  };
  ASSERT_TRUE(f.control({{"fail_status", 500}}));
  failing("the backend answers 500");
  ASSERT_TRUE(f.control({{"fail_status", 503}}));
  failing("the backend answers 503");
  ASSERT_TRUE(f.control({{"fail_status", 0}, {"malformed_json", true}}));
  failing("the backend answers malformed JSON");
  ASSERT_TRUE(f.control({{"malformed_json", false}, {"fail_after_tokens", 1}}));
  failing("the backend fails mid-stream");
  ASSERT_TRUE(f.control({{"fail_after_tokens", -1}}));
  // The upstream stops accepting Ray's key: /props and inference get 401, Ray says misconfigured (and stays
  // so: backend_test covers that).
  ASSERT_EQ(count_json(s.process(), provider_became("misconfigured")), 0u) << transitions(s.process());
  ASSERT_TRUE(f.control({{"api_key", make_secret("ROTATEDUPSTREAM")}}));
  ASSERT_TRUE(s.process().wait_for_json(provider_became("misconfigured"), rt::in(kIo)))
      << transitions(s.process());
  failing("the upstream rejects Ray's key");
  ASSERT_TRUE(f.control({{"fail_status", 401}}));
  failing("the backend answers 401");
  // The backend dies.
  f.control({{"crash_now", true}});
  ASSERT_TRUE(s.process().wait_for_json(provider_became("unreachable"), rt::in(kIo)))
      << transitions(s.process());
  failing("the backend is gone");

  // -- SIGHUP: a reload that fails (a typo'd digest), then one that adds a key and cuts the limit to 2
  auto broken = cfg;
  broken["auth"].as_object()["apiKeySha256"] = json::array{sha256_hex(sec.key5).substr(0, 63)};
  write_json(s.config_path(), broken);
  ASSERT_TRUE(s.process().signal(SIGHUP));
  ASSERT_TRUE(s.process().wait_for_json(message_is("configuration reload failed; configuration unchanged"),
                                        rt::in(kIo)))
      << s.output_tail();
  auto reload = front_door_config(sec, f.port(), 2, json::array{sha256_hex(sec.key3), sha256_hex(sec.key4)});
  reload["model"].as_object()["adapter"].as_object()["headers"].as_object()["X-Ray-Test-Token"] = sec.header3;
  write_json(s.config_path(), reload);
  ASSERT_TRUE(s.process().signal(SIGHUP));
  ASSERT_TRUE(s.process().wait_for_json(message_is("configuration reloaded"), rt::in(kIo)))
      << s.output_tail();
  auto const k4 = bearer(sec.key4);
  // (/health is 503 now: the backend is gone; KEY4 being accepted shows on /v1/config.)
  EXPECT_EQ(d.send("GET /health with KEY4 after the reload", get("/health", k4)).status, 503);
  EXPECT_EQ(d.send("GET /v1/config with KEY4 after the reload", get("/v1/config", k4)).status, 200);
  d.send("GET /metrics after the reload", get("/metrics", k4));

  // -- rate limited: KEY1 is over the new limit of 2; KEY4 gets 2 more, then 429
  auto limited =
      d.send("POST /v1/infer with KEY1 over the limit", post_json("/v1/infer", unique_infer(), k1));
  EXPECT_EQ(limited.status, 429) << limited.describe();
  d.send("POST /v1/chat/completions with KEY1 over the limit",
         post_json("/v1/chat/completions", chat_body("limited", true), k1));
  for (int i = 0; i < 3; ++i)
    d.send("POST /v1/infer with KEY4 #" + std::to_string(i + 1), post_json("/v1/infer", unique_infer(), k4));
  auto limited4 =
      d.send("POST /v1/infer with KEY4 over the limit", post_json("/v1/infer", unique_infer(), k4));
  EXPECT_EQ(limited4.status, 429) << limited4.describe();
  d.send("GET /metrics after rate limiting", get("/metrics", k4));
  d.send("GET /metrics as JSON after rate limiting", get("/metrics", k4 + "Accept: application/json\r\n"));

  // -- SIGTERM
  ASSERT_TRUE(s.process().signal(SIGTERM));
  auto code = s.process().wait_exit(rt::in(kIo));
  ASSERT_TRUE(code) << s.output_tail();
  EXPECT_EQ(*code, 0) << s.output_tail();

  // What Ray wrote: its output, every response, every file in its directory but the config the test wrote.
  transcript ray_wrote = got;
  add_process_output(ray_wrote, s.process(), "ray");
  add_files(ray_wrote, dir, {s.config_path()});

  // The outputs are real: many log lines at debug, the lines that prove each phase happened.
  EXPECT_TRUE(shows_debug_lines(s.process(), 100));
  for (auto m : {"gateway listening", "access control", "configuration reloaded", "shutdown complete"})
    EXPECT_GE(count_json(s.process(), message_is(m)), 1u) << m;
  EXPECT_GT(got.items.size(), 250u);

  // Self-checks: the search finds every needle form, the keys in what the test sent, and the configured
  // secrets (header values, extraArgs, digests) in the config file the test wrote.
  ASSERT_TRUE(every_form_is_detectable(needles));
  EXPECT_TRUE(finds(sent, needles, "KEY1"));
  EXPECT_TRUE(finds(sent, needles, "near-miss KEY1 (last)"));
  transcript config_file;
  config_file.add("the reload config the test wrote", slurp(s.config_path()));
  for (auto label :
       {"HEADER2 value", "HEADER3 value", "extraArgs --api-key", "extraArgs --hf-token", "extraArgs -hft",
        "KEY3 (digest-only key) (sha256 hex", "KEY4 (added on reload) (sha256 hex"})
    EXPECT_TRUE(finds(config_file, needles, label)) << label;

  EXPECT_TRUE(no_secret_in(ray_wrote, needles))
      << "(" << ray_wrote.items.size() << " outputs, " << ray_wrote.bytes() << " bytes)";
}

// ---- 2. a supervised llama-server started with --api-key -------------------------------------------------

json::object supervised_config(std::uint16_t port, json::array extra_args, std::string const& key_env) {
  json::object launch{{"host", "127.0.0.1"},
                      {"port", port},
                      {"ctxSize", 2048},
                      {"parallel", 2},
                      {"binaryPath", FAKE_LLAMA_SERVER},
                      {"modelPath", std::string(RAY_TEST_FIXTURES) + "/models/tiny-llama-64x2.gguf"},
                      {"supervise", true},
                      {"extraArgs", std::move(extra_args)}};
  json::object adapter{{"kind", "llama.cpp"},    {"baseUrl", "http://127.0.0.1:" + std::to_string(port)},
                       {"apiKeyEnv", key_env},   {"healthIntervalMs", 200},
                       {"healthTimeoutMs", 500}, {"timeoutMs", 5000},
                       {"launchProfile", launch}};
  return json::object{{"profile", "sub1b"},
                      {"model", json::object{{"id", "tiny-llama"}, {"adapter", adapter}}},
                      {"scheduler", json::object{{"maxInflightTokens", 2048}}},
                      {"auth", json::object{{"enabled", true}, {"apiKeyEnv", "SECRETS_TEST_KEYS"}}},
                      {"rateLimit", json::object{{"enabled", false}}},
                      {"telemetry", json::object{{"logLevel", "debug"}}}};
}

// Start, serve, crash, respawn, stop: the key Ray passes to llama-server (and uses to talk to it) is in no
// log line — not in the logged command line, not in the exit report with llama-server's last lines.
TEST(secrets, ASupervisedLlamaServersApiKeyStaysOutOfTheLog) {
  auto const key = make_secret("CLIENTKEY");
  auto const supervised = make_secret("SUPERVISEDAPIKEY");
  needle_set needles;
  needles.add_secret("client key", key);
  needles.add_secret("supervised --api-key", supervised);
  auto const port = ray::test::free_loopback_port();
  ray_server s(supervised_config(port, json::array{"--api-key", supervised}, "SECRETS_TEST_SUPERVISED_KEY"),
               no_host_pressure(), {{"SECRETS_TEST_KEYS", key}, {"SECRETS_TEST_SUPERVISED_KEY", supervised}});
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(s.process().wait_for_json(provider_became("ready"), rt::in(kIo))) << s.output_tail();

  transcript sent, got;
  driver d(s.port(), sent, got);
  auto const auth = bearer(key);
  EXPECT_EQ(d.send("POST /v1/infer", post_json("/v1/infer", R"({"input":"one","cache":false})", auth)).status,
            200)
      << s.output_tail();
  d.send("GET /health", get("/health", auth));
  d.send("GET /v1/config", get("/v1/config", auth));
  d.send("GET /metrics", get("/metrics", auth));
  // The double's own control route needs no key; it crashes, the supervisor reports it and respawns it.
  roundtrip(port, post_json("/__control", R"({"crash_now":true})"));
  ASSERT_TRUE(s.process().wait_for_log("lastLines", rt::in(kIo))) << s.output_tail();
  ASSERT_TRUE(wait_json_after(s.process(), provider_became("ready"), 1, rt::in(3 * kIo))) << s.output_tail();
  d.send("GET /health after the respawn", get("/health", auth));
  d.send("POST /v1/infer after the respawn",
         post_json("/v1/infer", R"({"input":"two","cache":false})", auth));
  ASSERT_TRUE(s.process().signal(SIGTERM));
  auto code = s.process().wait_exit(rt::in(2 * kIo));
  ASSERT_TRUE(code) << s.output_tail();
  EXPECT_EQ(*code, 0);

  transcript ray_wrote = got;
  add_process_output(ray_wrote, s.process(), "ray");
  add_files(ray_wrote, s.dir().path(), {s.config_path()});
  EXPECT_TRUE(shows_debug_lines(s.process(), 20));
  EXPECT_GE(count_json(s.process(), message_is("llama-server started")), 2u) << "started, then respawned";
  EXPECT_GE(count_json(s.process(), message_is("backend output")), 1u)
      << "llama-server's output is forwarded";
  EXPECT_NE(s.process().stdout_text().find("<redacted>"), std::string::npos)
      << "the command line is redacted";
  ASSERT_TRUE(every_form_is_detectable(needles));
  transcript config_file;
  config_file.add("config", slurp(s.config_path()));
  EXPECT_TRUE(finds(config_file, needles, "supervised --api-key"));
  EXPECT_TRUE(finds(sent, needles, "client key"));
  EXPECT_TRUE(no_secret_in(ray_wrote, needles));
}

// ---- 3. an upstream that echoes Ray's credentials into its errors ----------------------------------------

// An OpenAI-compatible upstream quoting the `authorization` and configured headers in its error answers:
// Ray relays upstream errors (502 messages, mid-stream error events, the probe's reason in the log), and
// must relay them without its secrets.
TEST(secrets, AnUpstreamEchoingRaysCredentialsDoesNotGetThemRelayed) {
  auto const key = make_secret("CLIENTKEY");
  auto const upstream_key = make_secret("REMOTEUPSTREAM");
  auto const header = make_secret("REMOTEHEADER");
  needle_set needles;
  needles.add_secret("client key", key);
  needles.add_secret("upstream key", upstream_key);
  needles.add_secret("upstream header value", header);
  echo_upstream up;
  json::object adapter{{"kind", "openai-compatible"},
                       {"baseUrl", up.url()},
                       {"modelRef", "upstream-model"},
                       {"apiKeyEnv", "SECRETS_TEST_REMOTE_KEY"},
                       {"headers", json::object{{"X-Ray-Test-Token", header}}},
                       {"healthIntervalMs", 200},
                       {"healthTimeoutMs", 500},
                       {"timeoutMs", 5000}};
  json::object cfg{
      {"profile", "vps"},
      {"model", json::object{{"id", "remote-model"}, {"warmOnBoot", false}, {"adapter", adapter}}},
      {"auth", json::object{{"enabled", true}, {"apiKeyEnv", "SECRETS_TEST_KEYS"}}},
      {"rateLimit", json::object{{"enabled", false}}},
      {"telemetry", json::object{{"logLevel", "debug"}}}};
  ray_server s(cfg, no_host_pressure(),
               {{"SECRETS_TEST_KEYS", key}, {"SECRETS_TEST_REMOTE_KEY", upstream_key}});
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(s.process().wait_for_json(provider_became("ready"), rt::in(kIo))) << s.output_tail();

  transcript sent, got;
  driver d(s.port(), sent, got);
  auto const auth = bearer(key);
  int seq = 0;
  auto requests = [&](std::string const& what) {
    auto n = std::to_string(++seq);
    d.send("POST /v1/infer " + what,
           post_json("/v1/infer", R"({"input":"ask )" + n + R"(","cache":false})", auth));
    d.send("POST /v1/chat/completions " + what,
           post_json("/v1/chat/completions",
                     R"({"model":"m","messages":[{"role":"user","content":"c)" + n + R"("}]})", auth));
    d.send("POST /v1/chat/completions stream " + what,
           post_json("/v1/chat/completions",
                     R"({"model":"m","stream":true,"messages":[{"role":"user","content":"s)" + n + R"("}]})",
                     auth));
    d.send("POST /v1/completions " + what,
           post_json("/v1/completions", R"({"model":"m","prompt":"p)" + n + R"("})", auth));
    d.send("GET /health " + what, get("/health", auth));
  };
  EXPECT_EQ(
      d.send("POST /v1/infer (upstream fine)", post_json("/v1/infer", R"({"input":"fine"})", auth)).status,
      200)
      << s.output_tail();
  up.set_chat_mode(echo_upstream::mode::status_500);
  requests("when the upstream answers 500 quoting the request");
  up.set_chat_mode(echo_upstream::mode::status_400);
  requests("when the upstream answers 400 quoting the request");
  up.set_chat_mode(echo_upstream::mode::mid_stream_error);
  requests("when the upstream fails mid-stream quoting the request");
  up.set_probe_fails(true);
  ASSERT_TRUE(s.process().wait_for_json(provider_became("unreachable"), rt::in(kIo))) << s.output_tail();
  requests("when the upstream's probe answers 500 quoting the request");
  d.send("GET /metrics", get("/metrics", auth));
  ASSERT_TRUE(s.process().signal(SIGTERM));
  ASSERT_TRUE(s.process().wait_exit(rt::in(kIo))) << s.output_tail();

  transcript ray_wrote = got;
  add_process_output(ray_wrote, s.process(), "ray");
  add_files(ray_wrote, s.dir().path(), {s.config_path()});
  // Self-checks: Ray did send the key upstream, and what the upstream answered carries it, so relaying it
  // unfiltered would be caught.
  ASSERT_TRUE(every_form_is_detectable(needles));
  auto auths = up.authorizations();
  ASSERT_FALSE(auths.empty());
  EXPECT_EQ(auths.front(), "Bearer " + upstream_key);
  transcript upstream_said;
  upstream_said.add("what the echoing upstream answered", up.answered());
  EXPECT_TRUE(finds(upstream_said, needles, "upstream key"));
  EXPECT_TRUE(finds(upstream_said, needles, "upstream header value"));
  EXPECT_TRUE(shows_debug_lines(s.process(), 20));
  EXPECT_GT(got.items.size(), 20u);
  // The upstream's errors were relayed (scrubbed), in answers and in the probe's reason in the log.
  std::size_t relayed = 0;
  for (auto const& [label, text] : got.items)
    relayed += text.find("authorization=Bearer [redacted]") != std::string::npos ? 1 : 0;
  EXPECT_GE(relayed, 3u) << "the quoting upstream errors reached no response";
  EXPECT_NE(s.process().stdout_text().find("health answered 500"), std::string::npos);
  EXPECT_TRUE(no_secret_in(ray_wrote, needles));
}

// ---- 4. the CLI views and startup refusals
// ------------------------------------------------------------------

struct cli_run {
  int code{-100};
  transcript out;
};

cli_run run_ray(std::vector<std::string> args, std::vector<std::pair<std::string, std::string>> env,
                fs::path const& cwd, std::string const& name) {
  rt::ray_process p(rt::spawn_options{
      .binary = ray_binary(), .args = std::move(args), .env = std::move(env), .working_directory = cwd});
  cli_run r;
  r.code = p.wait_exit(rt::in(kIo)).value_or(-100);
  add_process_output(r.out, p, name);
  return r;
}

// `ray config explain` and `ray config validate` on the full secret-bearing config.
TEST(secrets, ConfigExplainAndValidateShowNoSecret) {
  front_door_secrets sec;
  needle_set needles;
  sec.add_to(needles);
  rt::temp_dir dir;
  auto path = rt::write_config(dir, front_door_config(sec, 8081, 100, json::array{sha256_hex(sec.key3)}));
  auto explain = run_ray({"config", "explain", path.string()}, sec.env(), dir.path(), "ray config explain");
  ASSERT_EQ(explain.code, 0) << explain.out.items[1].second;
  auto const& text = explain.out.items[0].second;
  EXPECT_NE(text.find("model.adapter.headers.X-Ray-Test-Token = \"[redacted]\""), std::string::npos) << text;
  EXPECT_NE(text.find("auth.apiKeySha256 = [\"[redacted]\"]"), std::string::npos) << text;
  auto validate =
      run_ray({"config", "validate", path.string()}, sec.env(), dir.path(), "ray config validate");
  EXPECT_EQ(validate.code, 0) << validate.out.items[1].second;
  transcript all = explain.out;
  for (auto& i : validate.out.items)
    all.add(i.first, i.second);
  add_files(all, dir.path(), {path});
  ASSERT_TRUE(every_form_is_detectable(needles));
  transcript config_file;
  config_file.add("config", slurp(path));
  EXPECT_TRUE(finds(config_file, needles, "extraArgs --hf-token"));
  EXPECT_TRUE(no_secret_in(all, needles));
}

// A start refused for a bad key list, a bad digest or a bad header value names the entry, never the secret.
TEST(secrets, StartupRefusalsNameTheEntryNeverTheSecret) {
  auto const good = make_secret("GOODKEY");
  auto const bad_char = make_secret("BADCHARKEY") + "$";
  auto const short_key = "SEKRET-" + random_hex(6);  // 13 characters: below the 16 minimum
  auto const header = make_secret("CRHEADER");
  auto const digest_of = make_secret("BADDIGESTKEY");
  needle_set needles;
  needles.add_secret("good key", good);
  needles.add_secret("key with a bad character", bad_char);
  needles.add_token("short key", short_key);
  needles.add_secret("header value with CR LF", header);
  needles.add_secret("key of a 63-digit digest", digest_of);
  rt::temp_dir dir;
  json::object auth_cfg{{"profile", "tiny"},
                        {"auth", json::object{{"enabled", true}, {"apiKeyEnv", "SECRETS_TEST_KEYS"}}},
                        {"telemetry", json::object{{"logLevel", "debug"}}}};
  auto p1 = rt::write_config(dir, auth_cfg, "keys.json");
  auto digest_cfg = auth_cfg;
  digest_cfg["auth"].as_object()["apiKeySha256"] = json::array{sha256_hex(digest_of).substr(1)};
  auto p2 = rt::write_config(dir, digest_cfg, "digest.json");
  json::object header_cfg{
      {"profile", "tiny"},
      {"model",
       json::object{{"adapter", json::object{{"kind", "openai-compatible"},
                                             {"baseUrl", "http://127.0.0.1:9"},
                                             {"headers", json::object{{"X-Ray-Test-Token",
                                                                       header + "\r\nX-Injected: 1"}}}}}}}};
  auto p3 = rt::write_config(dir, header_cfg, "header.json");

  transcript all;
  auto refused = [&](std::vector<std::string> args, std::vector<std::pair<std::string, std::string>> env,
                     std::string const& name) {
    auto r = run_ray(std::move(args), std::move(env), dir.path(), name);
    EXPECT_EQ(r.code, 2) << name;
    EXPECT_FALSE(r.out.items[1].second.empty()) << name << ": the refusal says why";
    for (auto& i : r.out.items)
      all.add(i.first, i.second);
  };
  auto serve = [&](fs::path const& p) {
    return std::vector<std::string>{"serve", "--config", p.string(), "--port", "0"};
  };
  refused(serve(p1), {{"SECRETS_TEST_KEYS", good + "," + bad_char}},
          "serve with a key holding a bad character");
  refused(serve(p1), {{"SECRETS_TEST_KEYS", short_key + "\n" + good}}, "serve with a short key");
  refused(serve(p2), {{"SECRETS_TEST_KEYS", good}}, "serve with a 63-digit digest");
  refused({"config", "validate", p2.string()}, {}, "validate with a 63-digit digest");
  refused(serve(p3), {}, "serve with a CR LF header value");
  refused({"config", "validate", p3.string()}, {}, "validate with a CR LF header value");
  add_files(all, dir.path(), {p1, p2, p3});
  ASSERT_TRUE(every_form_is_detectable(needles));
  transcript written;
  written.add("config", slurp(p3));
  EXPECT_TRUE(finds(written, needles, "header value with CR LF"));
  EXPECT_TRUE(no_secret_in(all, needles));
}

// ---- 5. leaks this test found, each fixed --------------------------------

// Found: config/emit.cpp redact_extra_args() left the value after a secret flag in clear when it started
// with '-' ("--api-key", "-abc…"), but llama-server takes the next argument as the value whatever it starts
// with — /v1/config and `ray config explain` showed it.
TEST(secrets, TheConfigViewRedactsASecretFlagValueThatStartsWithADash) {
  auto const dash_key = "-" + make_secret("DASHAPIKEY");
  needle_set needles;
  needles.add_secret("extraArgs --api-key value starting with '-'", dash_key);
  auto const port =
      ray::test::free_loopback_port();  // nobody listens: the backend stays unreachable, which is fine here
  json::object launch{{"host", "127.0.0.1"},
                      {"port", port},
                      {"ctxSize", 2048},
                      {"parallel", 2},
                      {"extraArgs", json::array{"--api-key", dash_key}}};
  json::object cfg{
      {"profile", "sub1b"},
      {"model", json::object{{"id", "tiny-llama"},
                             {"adapter", json::object{{"kind", "llama.cpp"},
                                                      {"baseUrl", "http://127.0.0.1:" + std::to_string(port)},
                                                      {"launchProfile", launch}}}}},
      {"scheduler", json::object{{"maxInflightTokens", 2048}}},
      {"telemetry", json::object{{"logLevel", "debug"}}}};
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  transcript sent, got;
  driver d(s.port(), sent, got);
  auto config = d.send("GET /v1/config", get("/v1/config"));
  ASSERT_EQ(config.status, 200);
  EXPECT_NE(config.body.find("\"--api-key\""), std::string::npos) << "the flag itself is shown";
  auto explain =
      run_ray({"config", "explain", s.config_path().string()}, {}, s.dir().path(), "ray config explain");
  ASSERT_TRUE(s.process().signal(SIGTERM));
  ASSERT_TRUE(s.process().wait_exit(rt::in(kIo)));
  transcript ray_wrote = got;
  add_process_output(ray_wrote, s.process(), "ray");
  for (auto& i : explain.out.items)
    ray_wrote.add(i.first, i.second);
  ASSERT_TRUE(every_form_is_detectable(needles));
  EXPECT_TRUE(no_secret_in(ray_wrote, needles));
}

// Found: config errors quoted the offending value, secret or not, on stderr and in the log (at start and in
// "configuration reload failed"): an extraArgs entry with a control character (validate), and
// auth.apiKeySha256, launchProfile.extraArgs or model.adapter.headers of the wrong type (decode's "expected
// …, got <value>"). Values under secret-bearing paths are now described by their type only.
TEST(secrets, ConfigErrorsNeverQuoteASecretBearingValue) {
  auto const ctrl = make_secret("CTRLCHAREXTRA");
  auto const one_string_extra = make_secret("STRINGEXTRA");
  auto const one_string_digest_key = make_secret("STRINGDIGESTKEY");
  auto const one_string_header = make_secret("STRINGHEADER");
  auto const key = make_secret("CLIENTKEY");
  needle_set needles;
  needles.add_secret("extraArgs value with a tab", ctrl);
  needles.add_secret("extraArgs given as one string", one_string_extra);
  needles.add_secret("key whose digest is given as one string", one_string_digest_key);
  needles.add_secret("headers given as one string", one_string_header);
  needles.add_secret("client key", key);
  rt::temp_dir dir;
  auto llama = [](json::array extra) {
    json::object launch{{"host", "127.0.0.1"}, {"port", 8081}, {"ctxSize", 2048}, {"parallel", 2}};
    launch["extraArgs"] = std::move(extra);
    return json::object{{"profile", "sub1b"},
                        {"model", json::object{{"adapter", json::object{{"kind", "llama.cpp"},
                                                                        {"baseUrl", "http://127.0.0.1:8081"},
                                                                        {"launchProfile", launch}}}}},
                        {"scheduler", json::object{{"maxInflightTokens", 2048}}}};
  };
  auto p1 = rt::write_config(dir, llama(json::array{"--api-key=" + ctrl + "\t"}), "ctrl.json");
  auto as_string = llama({});
  as_string["model"].as_object()["adapter"].as_object()["launchProfile"].as_object()["extraArgs"] =
      "--api-key " + one_string_extra;
  auto p2 = rt::write_config(dir, as_string, "extra-string.json");
  json::object digest_string{
      {"profile", "tiny"},
      {"auth", json::object{{"enabled", true}, {"apiKeySha256", sha256_hex(one_string_digest_key)}}}};
  auto p3 = rt::write_config(dir, digest_string, "digest-string.json");
  json::object header_string{
      {"profile", "tiny"},
      {"model",
       json::object{{"adapter", json::object{{"kind", "openai-compatible"},
                                             {"baseUrl", "http://127.0.0.1:9"},
                                             {"headers", "X-Ray-Test-Token: " + one_string_header}}}}}};
  auto p4 = rt::write_config(dir, header_string, "header-string.json");

  transcript all;
  for (auto const& p : {p1, p2, p3, p4}) {
    auto r = run_ray({"serve", "--config", p.string(), "--port", "0"}, {}, dir.path(),
                     "serve " + p.filename().string());
    EXPECT_EQ(r.code, 2) << p;
    for (auto& i : r.out.items)
      all.add(i.first, i.second);
  }
  // The same mistake in a SIGHUP reload: logged as "configuration reload failed" by a running Ray.
  json::object good{{"profile", "tiny"},
                    {"auth", json::object{{"enabled", true}, {"apiKeyEnv", "SECRETS_TEST_KEYS"}}},
                    {"telemetry", json::object{{"logLevel", "debug"}}}};
  ray_server s(good, no_host_pressure(), {{"SECRETS_TEST_KEYS", key}});
  ASSERT_TRUE(s.wait_listening());
  auto reload = good;
  reload["auth"].as_object()["apiKeySha256"] = sha256_hex(one_string_digest_key);
  write_json(s.config_path(), reload);
  ASSERT_TRUE(s.process().signal(SIGHUP));
  ASSERT_TRUE(s.process().wait_for_json(message_is("configuration reload failed; configuration unchanged"),
                                        rt::in(kIo)))
      << s.output_tail();
  ASSERT_TRUE(s.process().signal(SIGTERM));
  ASSERT_TRUE(s.process().wait_exit(rt::in(kIo)));
  add_process_output(all, s.process(), "ray (reloaded)");

  ASSERT_TRUE(every_form_is_detectable(needles));
  transcript written;
  written.add("config", slurp(p2));
  EXPECT_TRUE(finds(written, needles, "extraArgs given as one string"));
  EXPECT_TRUE(no_secret_in(all, needles));
}

// Found: backend/supervisor.cpp on_line() forwarded llama-server's output verbatim into Ray's log ("backend
// output") and its exit report ("lastLines"); a child that echoes its secret arguments (the double does for
// flags it does not know: --hf-token, -hft) got them into Ray's log. The values of the secret flags are now
// replaced before a line is logged or kept.
TEST(secrets, WhatASupervisedLlamaServerEchoesOfItsSecretArgumentsIsNotLogged) {
  auto const key = make_secret("CLIENTKEY");
  auto const api = make_secret("SUPERVISEDAPIKEY");
  auto const hf = make_secret("SUPERVISEDHFTOKEN");
  auto const hft = make_secret("SUPERVISEDHFT");
  needle_set needles;
  needles.add_secret("client key", key);
  needles.add_secret("supervised --api-key", api);
  needles.add_secret("supervised --hf-token", hf);
  needles.add_secret("supervised -hft", hft);
  auto const port = ray::test::free_loopback_port();
  ray_server s(supervised_config(port, json::array{"--api-key", api, "--hf-token=" + hf, "-hft", hft},
                                 "SECRETS_TEST_SUPERVISED_KEY"),
               no_host_pressure(), {{"SECRETS_TEST_KEYS", key}, {"SECRETS_TEST_SUPERVISED_KEY", api}});
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(s.process().wait_for_json(provider_became("ready"), rt::in(kIo))) << s.output_tail();
  roundtrip(port, post_json("/__control", R"({"crash_now":true})"));
  ASSERT_TRUE(s.process().wait_for_log("lastLines", rt::in(kIo))) << s.output_tail();
  ASSERT_TRUE(s.process().signal(SIGTERM));
  ASSERT_TRUE(s.process().wait_exit(rt::in(2 * kIo)));
  transcript ray_wrote;
  add_process_output(ray_wrote, s.process(), "ray");
  EXPECT_GE(count_json(s.process(), message_is("backend output")), 1u);
  ASSERT_TRUE(every_form_is_detectable(needles));
  EXPECT_TRUE(no_secret_in(ray_wrote, needles));
}

}  // namespace
}  // namespace ray::itest
