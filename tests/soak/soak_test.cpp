// The overload soak (issue 11): the real `ray` — one on the mock backend, one attached to the llama-server
// double — held at many times its capacity for RAY_SOAK_SECONDS (default 60) by clients that mix native and
// OpenAI, streaming and not, duplicate and distinct prompts, short and odd x-request-ids, and that leave at
// random points (before an answer while queued or running, mid-stream). Every few seconds the double is
// killed (SIGKILL) and started again on the same port. CI runs it in the ASan + UBSan build (`make soak`).
//
// It asserts: both processes live throughout; every answer is 200, a 4xx, or a 503 with Retry-After (no other
// 5xx, no connection closed without an answer unless the client left first); a 200 stream ends with
// `[DONE]` or an error event; peak RSS stays under RAY_SOAK_RSS_MIB; afterwards queue and in-flight are 0,
// the per-route/per-status counters of /metrics are at least what the clients saw and at most what they sent,
// a new request is answered 200, no sanitizer report is printed, and SIGTERM ends each with status 0.
#include "integration/fake_llama.hpp"
#include "soak/soak_support.hpp"

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

namespace ray::itest {
namespace {

// What the clients saw, per target and route.
struct ledger {
  std::mutex mu;
  std::map<std::string, int> sent;         // "target route"
  std::map<std::string, int> answered;     // "target route code"
  std::map<std::string, int> outcomes;     // readable summary: "503 queue_full", "left queued", …
  std::map<std::string, int> error_codes;  // "target code" from error bodies
  std::vector<std::string> broken;         // contract breaches (first few kept in full)
  int broken_total{0};

  void count(std::map<std::string, int>& m, std::string const& k) {
    std::lock_guard lock(mu);
    ++m[k];
  }
  void breach(std::string what) {
    std::lock_guard lock(mu);
    ++broken_total;
    if (broken.size() < 20) broken.push_back(std::move(what));
  }
};

enum class route { infer, chat, completions };
std::string route_template(route r) {
  switch (r) {
    case route::infer:
      return "/v1/infer";
    case route::chat:
      return "/v1/chat/completions";
    case route::completions:
      return "/v1/completions";
  }
  return "";
}

// The client x-request-ids the soak sends: none, 1–3 characters, the generated prefix alone, odd characters,
// the longest accepted and one over any sane limit.
std::vector<std::string> const& request_ids() {
  static std::vector<std::string> const ids{"",
                                            "a",
                                            "ab",
                                            "abc",
                                            "req_",
                                            "x.y-z:1",
                                            "with space",
                                            "%00%ff",
                                            std::string(128, 'q'),
                                            std::string(400, 'z'),
                                            "\xc3\xa9t\xc3\xa9"};
  return ids;
}

struct target {
  std::string name;
  std::uint16_t port;
};

// One client: loops until `until`, one request at a time, sometimes on a kept-alive connection.
void client_loop(int id, std::vector<target> const& targets, rt::deadline until, ledger& L) {
  std::mt19937 rng(static_cast<unsigned>(0x5eed + id));
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
  std::map<std::string, std::optional<rt::raw_client>> kept;  // by target name
  int seq = 0;
  while (std::chrono::steady_clock::now() < until) {
    auto const& t = targets[static_cast<std::size_t>(pick(static_cast<int>(targets.size())))];
    route r = static_cast<route>(pick(3));
    bool stream = r != route::infer && pick(2) == 0;
    bool duplicate = pick(10) < 4;
    std::string prompt = duplicate ? "the shared question number " + std::to_string(pick(4))
                                   : "distinct " + std::to_string(id) + "-" + std::to_string(seq);
    ++seq;
    std::string body;
    if (r == route::infer) {
      body = R"({"input":")" + prompt + R"(","maxTokens":)" + std::to_string(4 + pick(12)) +
             (pick(2) == 0 ? R"(,"cache":false)" : "") + (pick(8) == 0 ? R"(,"dedupeKey":"dk)" : "");
      if (body.ends_with("dk")) body += std::to_string(pick(3)) + "\"";
      body += "}";
    } else {
      std::string const temp = duplicate ? "0" : "0.7";
      if (r == route::chat)
        body = R"({"messages":[{"role":"user","content":")" + prompt + R"("}],"max_tokens":)" +
               std::to_string(4 + pick(12)) + R"(,"temperature":)" + temp;
      else
        body = R"({"prompt":")" + prompt + R"(","max_tokens":)" + std::to_string(4 + pick(12)) +
               R"(,"temperature":)" + temp;
      if (stream) body += R"(,"stream":true)";
      body += "}";
    }
    std::string headers;
    auto const& rid = request_ids()[static_cast<std::size_t>(pick(static_cast<int>(request_ids().size())))];
    if (!rid.empty()) headers += "x-request-id: " + rid + "\r\n";
    // 0..6: stay; 7: leave at once; 8: leave after a random wait (queued or running); 9: leave mid-stream
    int leave = pick(10);
    bool keep_alive = leave < 7 && pick(2) == 0;
    if (!keep_alive) headers += "Connection: close\r\n";
    std::string const rt_key = t.name + " " + route_template(r);
    L.count(L.sent, rt_key);

    std::optional<rt::raw_client> fresh;
    rt::raw_client* c = nullptr;
    auto& k = kept[t.name];
    bool const reused = keep_alive && k && !k->closed();
    if (reused) {
      c = &*k;
    } else {
      try {
        fresh.emplace(t.port);
      } catch (std::exception const& e) {
        L.breach(rt_key + ": connect failed: " + e.what());
        continue;
      }
      c = &*fresh;
    }
    if (!c->send(post_json(route_template(r), body, headers))) {
      if (reused) {  // a kept connection the server closed while idle: not an answer lost
        k.reset();
        L.count(L.outcomes, "kept connection gone before send");
        continue;
      }
      L.breach(rt_key + ": send failed: " + c->last_error());
      continue;
    }
    if (leave == 7) {
      L.count(L.outcomes, "left at once");
      continue;  // the connection closes when `fresh` dies
    }
    if (leave == 8) {
      c->wait_readable(rt::in(std::chrono::milliseconds(pick(250))));
      L.count(L.outcomes, "left after a wait");
      continue;
    }
    if (leave == 9 && stream) {
      c->wait_readable(rt::in(10s));
      L.count(L.outcomes, "left mid-stream");
      continue;
    }
    auto resp = c->read_response(rt::in(60s));
    if (!resp) {
      if (reused && c->pending().empty() && c->closed()) {
        // The server may close a kept-alive connection it just saw idle; only a fresh one must answer.
        k.reset();
        L.count(L.outcomes, "kept connection closed");
        continue;
      }
      L.breach(rt_key + " (x-request-id '" + rid + "'): no answer: " + c->last_error());
      if (reused) k.reset();
      continue;
    }
    L.count(L.answered, rt_key + " " + std::to_string(resp->status));
    int const s = resp->status;
    std::string code;
    if (auto o = json_body(*resp)) {
      if (auto const* e = o->if_contains("error"); e && e->is_object())
        code = rt::string_field(e->as_object(), "code");
    }
    if (!code.empty()) L.count(L.error_codes, t.name + " " + code);
    L.count(L.outcomes, std::to_string(s) + (code.empty() ? "" : " " + code));
    if (s == 200) {
      if (stream) {
        bool done = resp->body.find("data: [DONE]") != std::string::npos;
        bool error_event = resp->body.find("data: {\"error\"") != std::string::npos;
        if (!done && !error_event) L.breach(rt_key + ": 200 stream ended without [DONE] or an error event");
        if (error_event) L.count(L.outcomes, "200 stream ended by an error event");
      } else if (!json_body(*resp)) {
        L.breach(rt_key + ": 200 without a JSON body: " + resp->describe());
      }
    } else if (s == 503) {
      if (!resp->has_header("retry-after"))
        L.breach(rt_key + ": 503 without Retry-After: " + resp->describe());
    } else if (s >= 500 || s < 200) {
      L.breach(rt_key + ": status " + std::to_string(s) + ": " + resp->describe());
    }
    if (keep_alive && !resp->connection_close() && !reused) {
      k = std::move(fresh);
    } else if (reused && resp->connection_close()) {
      k.reset();
    }
  }
}

// Sum of ray_requests_total over the series of one route and code.
double requests_counted(std::string const& metrics, std::string const& route_tpl, int code) {
  return std::max(0.0, value_in(metrics, "ray_requests_total{route=\"" + route_tpl + "\",code=\"" +
                                             std::to_string(code) + "\"}"));
}

TEST(Soak, ManyTimesCapacityWithLeavingClientsAndADyingBackendLeavesRayHealthy) {
  int const seconds = std::max(5, env_int("RAY_SOAK_SECONDS", 60));
  int const clients = std::max(4, env_int("RAY_SOAK_CLIENTS", 48));
  // The bound of the `ray` under test: an ASan build carries shadow memory and a quarantine.
  bool const sanitized_ray = ray::itest::sanitized_ray();
  int const rss_bound = env_int("RAY_SOAK_RSS_MIB", sanitized_ray ? 192 : 16);
  // Capacity: 2 generations at once per ray (scheduler.concurrency), a queue of 8. `clients` threads that
  // send again as soon as they are answered offer clients/4 times the generation slots of the two.
  // requestTimeoutMs well above what queueing takes even on a starved CI box: a 504 is a breach here.
  auto sched = boost::json::object{{"concurrency", 2}, {"maxQueue", 8}, {"requestTimeoutMs", 60000}};
  auto degrade = boost::json::object{{"queueDepthThreshold", 4}};
  // The ASan children keep a small quarantine so their RSS measures Ray, not the allocator's delay line.
  std::vector<std::pair<std::string, std::string>> env{
      {"ASAN_OPTIONS", "detect_leaks=1:quarantine_size_mb=16"}};

  auto mock_cfg =
      with(test_config({}, {{"latencyMs", 40}}), {{"scheduler", sched},
                                                  {"gracefulDegradation", degrade},
                                                  {"rateLimit", boost::json::object{{"enabled", false}}}});
  ray_server mock(mock_cfg, no_host_pressure(), env);
  ASSERT_TRUE(mock.wait_listening());

  std::vector<std::string> const double_args{"-np", "2", "-c", "4096", "--gen-tps", "300", "--metrics"};
  auto dbl = std::make_unique<fake_llama>(double_args);
  ASSERT_TRUE(dbl->ok()) << dbl->output();
  std::uint16_t const double_port = dbl->port();
  // Attached (not supervised): Ray probes every 100 ms and sees the double go and come back.
  auto llama_cfg = boost::json::object{
      {"profile", "tiny"},
      {"scheduler", sched},
      {"gracefulDegradation", degrade},
      {"rateLimit", boost::json::object{{"enabled", false}}},
      {"model", boost::json::object{{"id", "tiny-llama"},
                                    {"adapter", boost::json::object{{"kind", "llama.cpp"},
                                                                    {"healthIntervalMs", 100},
                                                                    {"healthTimeoutMs", 500},
                                                                    {"timeoutMs", 5000},
                                                                    {"launchProfile", nullptr}}}}}};
  auto llama_args = attach(*dbl);
  ray_server llama(llama_cfg, llama_args, env);
  ASSERT_TRUE(llama.wait_listening());
  ASSERT_TRUE(eventually(
      [&] {
        auto r = roundtrip(llama.port(), get("/readyz"));
        return r && r->status == 200;
      },
      30s))
      << llama.output_tail();

  std::vector<target> const targets{{"mock", mock.port()}, {"llama", llama.port()}};
  auto const started = std::chrono::steady_clock::now();
  auto const until = rt::in(std::chrono::seconds(seconds));
  ledger L;

  // The monitor: RSS samples, and the double killed and started again on its port every ~7 s.
  std::atomic<bool> stop{false};
  double peak_mock = 0, peak_llama = 0;
  int restarts = 0;
  std::string restart_failure;
  std::thread monitor([&] {
    auto next_kill = rt::in(5s);
    while (!stop) {
      peak_mock = std::max(peak_mock, rss_mib(mock.process().pid()).first);
      peak_llama = std::max(peak_llama, rss_mib(llama.process().pid()).first);
      if (std::chrono::steady_clock::now() >= next_kill && std::chrono::steady_clock::now() < until - 8s) {
        dbl->process().signal(SIGKILL);
        dbl->process().wait_exit(rt::in(kIo));
        std::this_thread::sleep_for(700ms);  // the outage: Ray's probes and requests meet a closed port
        dbl = std::make_unique<fake_llama>(double_args, double_port);
        if (!dbl->ok() && restart_failure.empty()) restart_failure = dbl->output();
        ++restarts;
        next_kill = rt::in(7s);
      }
      std::this_thread::sleep_for(100ms);  // sampling interval, not a stand-in for an event
    }
  });

  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i)
    threads.emplace_back([&, i] { client_loop(i, targets, until, L); });
  for (auto& th : threads)
    th.join();
  stop = true;
  monitor.join();
  auto const ran_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  // The summary a reader of the CI log wants.
  std::ostringstream summary;
  summary << "soak: " << clients << " clients for " << ran_s << " s, double restarted " << restarts
          << " times; peak RSS mock " << peak_mock << " MiB, llama " << peak_llama << " MiB (bound "
          << rss_bound << ")\n";
  int sent_total = 0;
  for (auto const& [k, n] : L.sent) {
    summary << "  sent " << k << ": " << n << "\n";
    sent_total += n;
  }
  for (auto const& [k, n] : L.outcomes)
    summary << "  " << k << ": " << n << "\n";
  summary << "  ray: " << ray_binary() << "\n";
  std::cout << summary.str() << std::flush;

  EXPECT_TRUE(restart_failure.empty()) << "the double did not come back on its port:\n" << restart_failure;
  EXPECT_GE(restarts, seconds >= 30 ? 2 : seconds >= 15 ? 1 : 0);
  EXPECT_EQ(L.broken_total, 0) << L.broken_total << " contract breaches; first ones:\n"
                               << [&] {
                                    std::string s;
                                    for (auto const& b : L.broken)
                                      s += "  " + b + "\n";
                                    return s;
                                  }();
  EXPECT_GT(sent_total, clients * seconds / 2) << "the load generator did not generate load";
  // Overload was real: both rays refused work with queue_full, and both also served.
  EXPECT_GT(L.error_codes["mock queue_full"], 0) << summary.str();
  EXPECT_GT(L.error_codes["llama queue_full"], 0) << summary.str();
  EXPECT_GT(L.answered["mock /v1/infer 200"] + L.answered["mock /v1/chat/completions 200"], 0);
  EXPECT_GT(L.answered["llama /v1/infer 200"] + L.answered["llama /v1/chat/completions 200"], 0);
  EXPECT_LE(peak_mock, rss_bound);
  EXPECT_LE(peak_llama, rss_bound);

  for (auto* s : {&mock, &llama}) {
    auto const& name = s == &mock ? std::string("mock") : std::string("llama");
    SCOPED_TRACE(name);
    ASSERT_FALSE(s->process().has_exited()) << s->output_tail();
    // Drained: nothing queued or running once the clients are gone (the ones that left included).
    EXPECT_TRUE(eventually(
        [&] {
          auto h = roundtrip(s->port(), get("/health"));
          auto o = h ? json_body(*h) : std::nullopt;
          return o && num(*o, "queueDepth") == 0 && num(*o, "inFlight") == 0;
        },
        30s))
        << s->output_tail();
    auto text = scrape(s->port());
    EXPECT_EQ(value_in(text, "ray_inflight_requests"), 0);
    EXPECT_EQ(value_in(text, "ray_queue_depth"), 0);
    // /metrics counts add up: per route and code at least what clients were answered, and per route no
    // more than they sent (a request whose client left is counted with the code it was given).
    for (auto r : {route::infer, route::chat, route::completions}) {
      auto const tpl = route_template(r);
      double counted = 0;
      for (int code : {200, 400, 413, 429, 499, 503, 504}) {
        double seen = L.answered[name + " " + tpl + " " + std::to_string(code)];
        double n = requests_counted(text, tpl, code);
        EXPECT_GE(n, seen) << tpl << " " << code;
        counted += n;
      }
      EXPECT_LE(counted, L.sent[name + " " + tpl]) << tpl;
    }
    EXPECT_GE(std::max(0.0, value_in(text, "ray_rejections_total{reason=\"queue_full\"}")),
              L.error_codes[name + " queue_full"]);
    // And it still serves.
    auto again = roundtrip(s->port(), post_json("/v1/infer", R"({"input":"after the soak","cache":false})"),
                           rt::in(30s));
    ASSERT_TRUE(again) << s->output_tail();
    EXPECT_EQ(again->status, 200) << again->describe();
    ASSERT_TRUE(s->process().signal(SIGTERM));
    auto st = s->process().wait_exit(rt::in(30s));
    ASSERT_TRUE(st) << "no exit within 30 s of SIGTERM\n" << s->output_tail();
    EXPECT_EQ(*st, 0) << s->output_tail();
    EXPECT_FALSE(sanitizer_report(s->process().stderr_text())) << s->process().stderr_text().substr(0, 8000);
  }
}

}  // namespace
}  // namespace ray::itest
