// The llama.cpp adapter through the real binary: `ray serve --backend-url` attached to the llama-server test
// double (tests/support/fake_llama_server) on loopback. Loading → warming → ready, streamed generation
// assembled into native answers, crash / restart / new build detection, cancellation in each phase, slot
// affinity, context errors, the KV pool budget, and upstream error mapping (spec/backends.md).
//
// Timing assertions are multiples of the configured health interval (kHealthMs) or of the double's token
// interval (1 / its tokens-per-second knob); everything else waits against generous deadlines.
#include "fake_llama.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <mutex>
#include <thread>

namespace ray::itest {
namespace {

namespace json = boost::json;
using steady = std::chrono::steady_clock;

constexpr int kHealthMs = 100;
constexpr auto kHealth = std::chrono::milliseconds(kHealthMs);

// ---- helpers

double dnum(json::value const& v) {
  return v.is_number() ? v.to_number<double>() : -1;
}

// Inference POSTs the double received on the chat route (whatever it answered).
std::int64_t chat_posts(json::object const& stats) {
  auto const* req = stats.if_contains("requests");
  if (!req || !req->is_object()) return 0;
  return num(req->as_object(), "/v1/chat/completions") < 0 ? 0
                                                           : num(req->as_object(), "/v1/chat/completions");
}

json::object last_body(json::object const& stats) {
  auto const& recent = stats.at("recent").as_array();
  if (recent.empty()) return {};
  return recent.back().at("body").as_object();
}

json::object const& slot_of(json::object const& stats, std::int64_t id) {
  return stats.at("slots").as_array().at(static_cast<std::size_t>(id)).as_object();
}

// A config attached to the double by --backend-url: profile sub1b, the llama.cpp adapter probing every
// kHealthMs, no launch profile (its host:port would override the URL), no rate limit.
json::object llama_config(json::object adapter = {}, json::object const& extra = {}) {
  json::object a{{"kind", "llama.cpp"},
                 {"healthIntervalMs", kHealthMs},
                 {"healthTimeoutMs", 500},
                 {"timeoutMs", 5000},
                 {"launchProfile", nullptr}};
  for (auto const& [k, v] : adapter)
    a[k] = v;
  json::object cfg{{"profile", "sub1b"},
                   {"model", json::object{{"id", "tiny-llama"}, {"adapter", a}}},
                   {"rateLimit", json::object{{"enabled", false}}}};
  return with(cfg, extra);
}

struct readiness {
  int status{0};
  std::string provider;
};

readiness readyz(std::uint16_t port) {
  auto r = roundtrip(port, get("/readyz"));
  if (!r) return {};
  auto b = json_body(*r);
  return {r->status, b ? rt::string_field(*b, "providerStatus") : std::string()};
}

json::object health(std::uint16_t port) {
  auto r = roundtrip(port, get("/health"));
  if (!r) return {};
  return json_body(*r).value_or(json::object{});
}

json::object provider_details(std::uint16_t port) {
  auto h = health(port);
  if (!h.contains("provider")) return {};
  return h.at("provider").at("details").as_object();
}

::testing::AssertionResult ready(ray_server& s, steady::duration within = kIo) {
  if (eventually(
          [&] {
            auto r = readyz(s.port());
            return r.status == 200 && r.provider == "ready";
          },
          within))
    return ::testing::AssertionSuccess();
  auto r = readyz(s.port());
  return ::testing::AssertionFailure()
         << "Ray not ready: /readyz " << r.status << " providerStatus `" << r.provider << "`\n"
         << s.output_tail();
}

std::string infer_body(std::string const& input, json::object extra = {}) {
  extra["input"] = input;
  return json::serialize(extra);
}

rt::http_response infer(std::uint16_t port, std::string const& body) {
  auto r = roundtrip(port, post_json("/v1/infer", body));
  EXPECT_TRUE(r) << "no answer to POST /v1/infer";
  return r.value_or(rt::http_response{});
}

// Waits for Ray's "provider state changed" log line from → to (the logger writes in batches).
::testing::AssertionResult logged_transition(ray_server& s, std::string const& from, std::string const& to) {
  auto line = s.process().wait_for_json(
      [&](json::object const& o) {
        return rt::string_field(o, "message") == "provider state changed" &&
               rt::string_field(o, "from") == from && rt::string_field(o, "to") == to;
      },
      rt::in(kIo));
  if (line) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "no `provider state changed` " << from << " -> " << to << " line:\n"
                                       << s.output_tail();
}

// ---- 1. attach: loading → warming → ready

TEST(Backend, LoadingThenWarmingThenReadyWithPropsInHealth) {
  // Long enough that a loaded machine still starts the (sanitizer-built) ray while the double is loading.
  constexpr double load_ms = 1500;
  fake_llama f({"-c", "2048", "-np", "2", "--load-delay-ms", "1500"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());

  // While the double answers 503 "Loading model", Ray is not ready and says why.
  ASSERT_TRUE(eventually(
      [&] {
        auto r = readyz(s.port());
        return r.status == 503 && r.provider == "loading";
      },
      3 * kHealth))
      << "providerStatus `" << readyz(s.port()).provider << "`\n"
      << s.output_tail();
  EXPECT_EQ(metric(s.port(), "ray_backend_state{state=\"loading\"}"), 1);
  auto early = infer(s.port(), infer_body("too early"));
  EXPECT_TRUE(is_error(early, 503, "provider_unavailable"));

  // Then ready, never before the double finished loading, and within 3 health intervals after it did.
  std::optional<steady::time_point> ready_at;
  ASSERT_TRUE(eventually([&] {
    auto r = readyz(s.port());
    if (r.status == 200) ready_at = steady::now();
    return r.status == 200;
  }));
  EXPECT_EQ(readyz(s.port()).provider, "ready");
  EXPECT_GE(rt::ms(*ready_at - f.spawned_at()), load_ms) << "ready before the double's load delay ended";
  EXPECT_LE(rt::ms(*ready_at - f.listening_at()), load_ms + 3 * kHealthMs);
  EXPECT_TRUE(logged_transition(s, "loading", "warming"));
  EXPECT_TRUE(logged_transition(s, "warming", "ready"));

  auto d = provider_details(s.port());
  ASSERT_FALSE(d.empty());
  EXPECT_GT(dnum(d.at("loadMs")), 0.0) << json::serialize(d);
  EXPECT_LE(dnum(d.at("loadMs")), load_ms + 3 * kHealthMs) << json::serialize(d);
  EXPECT_EQ(num(d, "nCtx"), 1024) << json::serialize(d);  // -c 2048 -np 2: 1024 per request
  EXPECT_EQ(num(d, "totalSlots"), 2);
  EXPECT_EQ(num(d, "restarts"), 0);
  EXPECT_EQ(rt::string_field(d, "build"), "b1-80fb11a");
  EXPECT_EQ(rt::string_field(d, "modelPath"), "models/tiny-llama-512x8.gguf");
  EXPECT_GT(metric(s.port(), "ray_backend_load_seconds"), 0);
}

// ---- 2. generation through the double

TEST(Backend, InferStreamsUpstreamAndAssemblesTheAnswer) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));

  auto r =
      infer(s.port(), infer_body("Tell me about llamas", {{"system", "You are terse."}, {"maxTokens", 8}}));
  ASSERT_EQ(r.status, 200) << r.describe();
  auto body = *json_body(r);
  EXPECT_FALSE(body.at("cached").as_bool());
  ASSERT_TRUE(body.at("usage").as_object().contains("tokens")) << "no token usage: " << r.describe();
  auto const& tokens = body.at("usage").at("tokens").as_object();
  EXPECT_EQ(num(tokens, "completion"), 8);
  auto const& provider = body.at("diagnostics").at("provider").as_object();
  ASSERT_TRUE(provider.at("slotId").is_number()) << r.describe();
  auto const slot = num(provider, "slotId");
  EXPECT_TRUE(slot == 0 || slot == 1);
  auto const& timings = provider.at("timings").as_object();
  for (auto key : {"ttftMs", "totalMs", "promptTokensPerSecond", "completionTokensPerSecond"})
    EXPECT_TRUE(timings.contains(key)) << key << " missing: " << r.describe();
  EXPECT_GE(num(timings, "totalMs"), num(timings, "ttftMs"));

  // What Ray sent: a stream with usage, the llama.cpp extras, the slot it reports.
  auto st = f.stats();
  auto sent = last_body(st);
  EXPECT_EQ(rt::string_field(st.at("recent").as_array().back().as_object(), "path"), "/v1/chat/completions");
  EXPECT_TRUE(sent.at("stream").as_bool()) << json::serialize(sent);
  EXPECT_TRUE(sent.at("stream_options").at("include_usage").as_bool()) << json::serialize(sent);
  EXPECT_EQ(num(sent, "max_tokens"), 8);
  EXPECT_TRUE(sent.at("cache_prompt").as_bool());
  EXPECT_EQ(num(sent, "id_slot"), slot);
  auto const& msgs = sent.at("messages").as_array();
  ASSERT_EQ(msgs.size(), 2u);
  EXPECT_EQ(msgs[0].at("role").as_string(), "system");
  EXPECT_EQ(msgs[1].at("content").as_string(), "Tell me about llamas");
  EXPECT_EQ(num(provider, "tokensCached"), num(slot_of(st, slot), "last_cached_tokens"));

  // The same body, non-streaming, straight to the double: Ray's assembled text and counts match it.
  auto replay = sent;
  replay["stream"] = false;
  replay.erase("stream_options");
  auto direct = roundtrip(f.port(), post_json("/v1/chat/completions", json::serialize(replay)));
  ASSERT_TRUE(direct && direct->status == 200);
  auto dbody = *json_body(*direct);
  EXPECT_EQ(rt::string_field(body, "output"),
            std::string(dbody.at("choices").at(0).at("message").at("content").as_string()));
  EXPECT_EQ(num(tokens, "prompt"), num(dbody.at("usage").as_object(), "prompt_tokens"));
  EXPECT_EQ(metric(s.port(), "ray_backend_requests_total{outcome=\"ok\"}"), 1);
}

// ---- 3. crash, unreachable, restart on the same port

TEST(Backend, CrashIsSeenWithinTwoIntervalsAndARestartIsCountedAndEmptiesTheCache) {
  auto f = std::make_unique<fake_llama>(std::vector<std::string>{"-c", "2048", "-np", "2", "--gen-tps", "5"});
  ASSERT_TRUE(f->ok()) << f->output();
  ray_server s(llama_config(), attach(*f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  auto const ray_pid = s.process().pid();

  // An answer in the cache before the crash.
  auto const remembered = infer_body("remember this answer", {{"maxTokens", 2}});
  auto first = infer(s.port(), remembered);
  ASSERT_EQ(first.status, 200) << first.describe();
  auto again = infer(s.port(), remembered);
  ASSERT_EQ(again.status, 200);
  ASSERT_TRUE(json_body(again)->at("cached").as_bool()) << again.describe();

  // A request in the middle of its stream (5 tokens/s, 50 tokens).
  auto inflight = s.connect();
  ASSERT_TRUE(inflight.send(post_json("/v1/infer", infer_body("a long answer", {{"maxTokens", 50}}))));
  ASSERT_TRUE(eventually([&] {
    auto st = f->stats();
    if (num(st, "processing") != 1) return false;
    for (auto const& sl : st.at("slots").as_array())
      if (sl.at("is_processing").as_bool() && num(sl.as_object(), "n_decoded") >= 1) return true;
    return false;
  }));
  EXPECT_EQ(num(provider_details(s.port()), "slotsBusy"), 1);

  auto const crashed_at = steady::now();
  f->control({{"crash_now", true}});
  std::optional<steady::time_point> seen_at;
  ASSERT_TRUE(eventually([&] {
    auto r = readyz(s.port());
    if (r.status == 503 && r.provider == "unreachable") seen_at = steady::now();
    return seen_at.has_value();
  })) << "providerStatus `"
      << readyz(s.port()).provider << "`";
  EXPECT_LE(rt::ms(*seen_at - crashed_at), 3.0 * kHealthMs)
      << "spec: within 2 x healthIntervalMs (+1 of slack)";
  EXPECT_EQ(metric(s.port(), "ray_backend_state{state=\"unreachable\"}"), 1);
  auto failed = inflight.read_response(rt::in(kIo));
  ASSERT_TRUE(failed) << inflight.last_error();
  // The backend went away mid-answer: 503 with Retry-After (retry once it is back), not a 502.
  EXPECT_TRUE(is_error(*failed, 503, "provider_unavailable"));
  EXPECT_TRUE(failed->has_header("retry-after")) << failed->describe();
  EXPECT_EQ(f->process().wait_exit(rt::in(kIo)), -SIGABRT);

  // The same port again: Ray is back without being restarted itself, and counts one restart.
  auto const port = f->port();
  f = std::make_unique<fake_llama>(std::vector<std::string>{"-c", "2048", "-np", "2"}, port);
  ASSERT_TRUE(f->ok()) << f->output();
  ASSERT_TRUE(ready(s));
  EXPECT_LE(rt::ms(steady::now() - f->listening_at()), 3.0 * kHealthMs)
      << "ready again within 3 health intervals";
  EXPECT_FALSE(s.process().has_exited());
  EXPECT_EQ(s.process().pid(), ray_pid);
  EXPECT_EQ(metric(s.port(), "ray_backend_restarts_total"), 1);
  auto d = provider_details(s.port());
  EXPECT_EQ(num(d, "restarts"), 1);
  EXPECT_TRUE(d.at("lastRestartAt").is_string()) << json::serialize(d);

  // The answer cached before the restart is not served.
  auto before = chat_posts(f->stats());
  auto after = infer(s.port(), remembered);
  ASSERT_EQ(after.status, 200) << after.describe();
  EXPECT_FALSE(json_body(after)->at("cached").as_bool()) << after.describe();
  EXPECT_EQ(chat_posts(f->stats()), before + 1);
}

// ---- 4. a new build_info is a restart

TEST(Backend, ANewBuildInfoCountsOneRestartAndEmptiesTheCache) {
  auto f = std::make_unique<fake_llama>(std::vector<std::string>{"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f->ok()) << f->output();
  ray_server s(llama_config(), attach(*f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  auto const q = infer_body("what is a llama", {{"maxTokens", 4}});
  auto cache_entries = [&] {
    auto h = health(s.port());
    return num(h.at("runtime").at("cache").as_object(), "entries");
  };
  auto fill_cache = [&] {
    auto a = infer(s.port(), q);
    auto b = infer(s.port(), q);
    return a.status == 200 && b.status == 200 && json_body(b)->at("cached").as_bool();
  };

  // (a) /props changes build_info with no connection refused in between.
  ASSERT_TRUE(fill_cache());
  ASSERT_GE(cache_entries(), 1);
  auto const changed_at = steady::now();
  ASSERT_TRUE(f->control({{"build_info", "b2-new"}}));
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_backend_restarts_total") == 1; }));
  EXPECT_LE(rt::ms(steady::now() - changed_at), 3.0 * kHealthMs);
  EXPECT_EQ(cache_entries(), 0);
  EXPECT_EQ(rt::string_field(provider_details(s.port()), "build"), "b2-new");
  auto r = infer(s.port(), q);
  ASSERT_EQ(r.status, 200);
  EXPECT_FALSE(json_body(r)->at("cached").as_bool()) << r.describe();
  EXPECT_TRUE(s.process().wait_for_json(
      [](json::object const& o) {
        return rt::string_field(o, "message") == "provider restart detected" &&
               rt::string_field(o, "build") == "b2-new";
      },
      rt::in(kIo)))
      << s.output_tail();

  // (b) A real restart with another build on the same port: refused→answering and the new build are one
  // restart, not two. No traffic in flight, so only the health probe can see the backend die.
  ASSERT_TRUE(fill_cache());
  auto const killed_at = steady::now();
  ASSERT_TRUE(f->process().signal(SIGKILL));
  std::optional<steady::time_point> seen_at;
  ASSERT_TRUE(eventually([&] {
    auto rz = readyz(s.port());
    if (rz.status == 503 && rz.provider == "unreachable") seen_at = steady::now();
    return seen_at.has_value();
  }));
  EXPECT_LE(rt::ms(*seen_at - killed_at), 3.0 * kHealthMs)
      << "spec: within 2 x healthIntervalMs (+1 of slack)";
  auto const port = f->port();
  f = std::make_unique<fake_llama>(
      std::vector<std::string>{"-c", "2048", "-np", "2", "--build-info", "b3-newer"}, port);
  ASSERT_TRUE(f->ok()) << f->output();
  ASSERT_TRUE(ready(s));
  EXPECT_EQ(metric(s.port(), "ray_backend_restarts_total"), 2);
  EXPECT_EQ(cache_entries(), 0);
  EXPECT_EQ(rt::string_field(provider_details(s.port()), "build"), "b3-newer");
}

// An answer the old build was still generating when the restart was detected is the old model's answer: it
// may go to its client, but must not be served from the cache after the restart.
TEST(Backend, AnAnswerSpanningARestartIsNotCachedForAfterIt) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  ASSERT_TRUE(f.control({{"gen_tps", 10}}));
  auto const q = infer_body("an answer spanning the restart", {{"maxTokens", 10}});
  auto c = s.connect();
  ASSERT_TRUE(c.send(post_json("/v1/infer", q)));
  ASSERT_TRUE(eventually([&] { return num(f.stats(), "processing") == 1; }));
  ASSERT_TRUE(f.control({{"build_info", "b2-new"}}));
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_backend_restarts_total") == 1; }));
  auto spanning = c.read_response(rt::in(kIo));
  ASSERT_TRUE(spanning) << c.last_error();
  ASSERT_EQ(spanning->status, 200) << spanning->describe();
  auto posts = chat_posts(f.stats());
  auto after = infer(s.port(), q);
  ASSERT_EQ(after.status, 200) << after.describe();
  EXPECT_FALSE(json_body(after)->at("cached").as_bool())
      << "the old build's answer was served from the cache after the restart:\n"
      << after.describe();
  EXPECT_EQ(chat_posts(f.stats()), posts + 1);
}

// A slow /health (a long prefill on 2 cores can delay it) is not a failure until healthTimeoutMs; a timed-out
// probe is `unreachable`, but when /health answers again with the same build it is not a restart: nothing
// refused a connection and /props is unchanged.
TEST(Backend, ASlowHealthIsNotAFailureAndATimeoutIsNotARestart) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));  // healthTimeoutMs 500
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  auto const q = infer_body("keep me cached", {{"maxTokens", 2}});
  ASSERT_EQ(infer(s.port(), q).status, 200);

  ASSERT_TRUE(f.control({{"slow_health_ms", 250}}));
  auto const until = steady::now() + 3 * (std::chrono::milliseconds(250) + kHealth);
  while (steady::now() < until) {
    auto rz = readyz(s.port());
    ASSERT_EQ(rz.status, 200) << "providerStatus `" << rz.provider << "` with /health answering in 250 ms";
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // sampling /readyz over 3 probe cycles
  }

  ASSERT_TRUE(f.control({{"slow_health_ms", 800}}));
  auto const slowed_at = steady::now();
  ASSERT_TRUE(eventually([&] { return readyz(s.port()).provider == "unreachable"; }));
  EXPECT_LE(rt::ms(steady::now() - slowed_at), 250 + 500 + 2.0 * kHealthMs)
      << "a probe started before the change, then one that times out after healthTimeoutMs";

  ASSERT_TRUE(f.control({{"slow_health_ms", 0}}));
  ASSERT_TRUE(ready(s));
  EXPECT_EQ(metric(s.port(), "ray_backend_restarts_total"), 0) << "a health timeout was counted as a restart";
  auto again = infer(s.port(), q);
  ASSERT_EQ(again.status, 200);
  EXPECT_TRUE(json_body(again)->at("cached").as_bool()) << "the cache was emptied without a restart";
}

// ---- 5. cancellation

TEST(Backend, AClientLeavingDuringPrefillStopsTheBackendStream) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  constexpr double prompt_tps = 20;  // a 400-token prompt takes 20 s to prefill
  ASSERT_TRUE(f.control({{"prompt_tps", prompt_tps}, {"reset_stats", true}}));

  auto c = s.connect();
  ASSERT_TRUE(c.send(post_json("/v1/infer", infer_body(std::string(1600, 'p'), {{"maxTokens", 16}}))));
  ASSERT_TRUE(eventually([&] { return num(f.stats(), "processing") == 1; }));
  auto const closed_before = num(f.stats(), "closed_connections");
  auto const left_at = steady::now();
  c.close();
  auto const interval_ms = 1000.0 / prompt_tps;
  std::optional<steady::time_point> stopped_at;
  ASSERT_TRUE(eventually([&] {
    auto st = f.stats();
    if (num(st, "cancelled_streams") == 1 && num(st, "processing") == 0) stopped_at = steady::now();
    return stopped_at.has_value();
  }));
  EXPECT_LE(rt::ms(*stopped_at - left_at), 5 * interval_ms)
      << "the double kept prefilling after the client left";
  EXPECT_GT(num(f.stats(), "closed_connections"), closed_before);
  EXPECT_EQ(num(f.stats(), "completed"), 0);
  EXPECT_TRUE(
      eventually([&] { return metric(s.port(), "ray_cancellations_total{phase=\"prefill\"}") == 1; }));
  EXPECT_EQ(counter(s.port(), "ray_cancellations_total{phase=\"decode\"}"), 0);
  EXPECT_EQ(metric(s.port(), "ray_backend_requests_total{outcome=\"cancelled\"}"), 1);
  EXPECT_EQ(metric(s.port(), "ray_inflight_requests"), 0);
}

TEST(Backend, AClientLeavingDuringDecodeStopsTheBackendStream) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  constexpr double gen_tps = 10;
  ASSERT_TRUE(f.control({{"gen_tps", gen_tps}, {"reset_stats", true}}));

  auto c = s.connect();
  ASSERT_TRUE(c.send(post_json("/v1/infer", infer_body("decode for a while", {{"maxTokens", 100}}))));
  ASSERT_TRUE(eventually([&] {
    auto st = f.stats();
    if (num(st, "processing") != 1) return false;
    for (auto const& sl : st.at("slots").as_array())
      if (sl.at("is_processing").as_bool() && num(sl.as_object(), "n_decoded") >= 3) return true;
    return false;
  }));
  auto const closed_before = num(f.stats(), "closed_connections");
  auto const left_at = steady::now();
  c.close();
  std::optional<steady::time_point> stopped_at;
  ASSERT_TRUE(eventually([&] {
    auto st = f.stats();
    if (num(st, "cancelled_streams") == 1 && num(st, "processing") == 0) stopped_at = steady::now();
    return stopped_at.has_value();
  }));
  EXPECT_LE(rt::ms(*stopped_at - left_at), 5 * 1000.0 / gen_tps) << "the double kept generating";
  EXPECT_GT(num(f.stats(), "closed_connections"), closed_before);
  EXPECT_TRUE(eventually([&] { return metric(s.port(), "ray_cancellations_total{phase=\"decode\"}") == 1; }));
  EXPECT_EQ(counter(s.port(), "ray_cancellations_total{phase=\"prefill\"}"), 0);
  EXPECT_EQ(metric(s.port(), "ray_backend_requests_total{outcome=\"cancelled\"}"), 1);
}

TEST(Backend, AQueuedRequestWhoseClientLeavesNeverReachesTheDouble) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config({}, {{"scheduler", json::object{{"concurrency", 1}}}}), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  constexpr double gen_tps = 10;
  ASSERT_TRUE(f.control({{"gen_tps", gen_tps}}));

  auto busy = s.connect();
  ASSERT_TRUE(busy.send(post_json("/v1/infer", infer_body("the slow first one", {{"maxTokens", 40}}))));
  ASSERT_TRUE(eventually([&] { return num(f.stats(), "processing") == 1; }));
  auto const seen_before = num(f.stats(), "inference_requests");
  auto const posts_before = chat_posts(f.stats());

  auto queued = s.connect();
  ASSERT_TRUE(queued.send(post_json("/v1/infer", infer_body("the queued second one", {{"maxTokens", 4}}))));
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_queue_depth") == 1; }));
  auto const left_at = steady::now();
  queued.close();
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "ray_queue_depth") == 0; }));
  EXPECT_LE(rt::ms(steady::now() - left_at), 5 * 1000.0 / gen_tps);
  EXPECT_EQ(metric(s.port(), "ray_queue_tokens"), 0);
  EXPECT_TRUE(eventually([&] { return metric(s.port(), "ray_cancellations_total{phase=\"queued\"}") == 1; }));

  // End the first one too; nothing else may reach the double afterwards.
  busy.close();
  ASSERT_TRUE(eventually(
      [&] { return metric(s.port(), "ray_inflight_requests") == 0 && num(f.stats(), "active") == 0; }));
  auto st = f.stats();
  EXPECT_EQ(num(st, "inference_requests"), seen_before);
  EXPECT_EQ(chat_posts(st), posts_before);
  EXPECT_EQ(metric(s.port(), "ray_queue_depth"), 0);
}

// ---- 6. slot affinity

TEST(Backend, EachSystemPromptKeepsItsOwnSlotWhileSlotsAreFree) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));

  std::string sys_a, sys_b;
  for (int i = 0; i < 12; ++i) {
    sys_a += "You are the billing assistant. ";
    sys_b += "You are the travel assistant.. ";
  }
  // ~93 tokens of system prompt each; the same input shape, so the family key is the same.
  auto ask = [&](std::string const& system, int max_tokens = 4) {
    auto r = infer(s.port(), infer_body("Summarize the last message.",
                                        {{"system", system}, {"maxTokens", max_tokens}, {"cache", false}}));
    EXPECT_EQ(r.status, 200) << r.describe();
    auto b = json_body(r).value_or(json::object{});
    auto const& p = b.at("diagnostics").at("provider").as_object();
    auto sent = last_body(f.stats());
    EXPECT_EQ(num(sent, "id_slot"), num(p, "slotId")) << "Ray reports another slot than it asked for";
    return std::pair{num(p, "slotId"), num(p, "tokensCached")};
  };

  auto [a1, a1_cached] = ask(sys_a);
  auto [b1, b1_cached] = ask(sys_b);
  auto [a2, a2_cached] = ask(sys_a);
  auto [b2, b2_cached] = ask(sys_b);
  EXPECT_NE(a1, b1);
  EXPECT_EQ(a1, a2);
  EXPECT_EQ(b1, b2);
  EXPECT_GE(a2_cached, 90) << "A's second request should reuse A's cached system prompt";
  EXPECT_GE(b2_cached, 90) << "B's second request should reuse B's cached system prompt";
  auto st = f.stats();
  EXPECT_EQ(num(slot_of(st, a1), "tasks") + num(slot_of(st, b1), "tasks"), 5);  // 4 + the warm-up

  // A's slot busy (a long A request in flight): another A request goes to the other (free) slot.
  ASSERT_TRUE(f.control({{"gen_tps", 10}}));
  auto long_a = s.connect();
  ASSERT_TRUE(long_a.send(post_json(
      "/v1/infer", infer_body("Summarize the last message.",
                              {{"system", sys_a}, {"maxTokens", 60}, {"cache", false}, {"seed", 7}}))));
  auto const a_slot =
      a1;  // structured bindings cannot be captured by a lambda before C++20's P1091 in clang 14
  ASSERT_TRUE(eventually([&] { return slot_of(f.stats(), a_slot).at("is_processing").as_bool(); }));
  auto [a3, a3_cached] = ask(sys_a, 1);
  EXPECT_EQ(a3, b1) << "with A's slot busy, the A request should use the free slot";
  long_a.close();
  ASSERT_TRUE(eventually([&] { return num(f.stats(), "processing") == 0; }));
  ASSERT_TRUE(f.control({{"gen_tps", 0}}));

  // Both slots free again: the two families must again each have their own slot (one busy collision must
  // not leave them sharing one slot while the other idles).
  auto [a4, a4_cached] = ask(sys_a);
  auto [b3, b3_cached] = ask(sys_b);
  auto [a5, a5_cached] = ask(sys_a);
  auto [b4, b4_cached] = ask(sys_b);
  EXPECT_NE(a4, b3) << "A and B share slot " << a4 << " after one collision";
  EXPECT_EQ(a4, a5);
  EXPECT_EQ(b3, b4);
  EXPECT_GE(a5_cached, 90) << "A's prompt was evicted by B (shared slot)";
  EXPECT_GE(b4_cached, 90) << "B's prompt was evicted by A (shared slot)";
}

// ---- 7. context window

TEST(Backend, ContextOverflowIsRefusedBeforeTheBackendOrMappedFromIts400) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config({}, {{"gracefulDegradation", json::object{{"enabled", false}}}}), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));

  // Clearly over n_ctx (1024 from /props): Ray refuses it before generation — confirmed by the backend's own
  // tokenizer (/apply-template + /tokenize: 2000 bytes/4 + template + BOS = 2006) — and the double never sees
  // a generation request for it.
  auto posts = chat_posts(f.stats());
  auto over = infer(s.port(), infer_body(std::string(8000, 'a')));
  ASSERT_TRUE(is_error(over, 413, "request_context_window_exceeded"));
  auto od = json_body(over)->at("error").at("details").as_object();
  EXPECT_EQ(num(od, "contextWindow"), 1024) << over.describe();
  EXPECT_EQ(num(od, "promptTokens"), 2006);
  EXPECT_EQ(chat_posts(f.stats()), posts);
  EXPECT_GE(num(f.stats().at("requests").as_object(), "/tokenize"), 1);

  // A defaulted maxTokens near the limit is clamped by the backend's count, so the backend never overflows:
  // the estimate (1000) would leave 24 tokens, the real prompt (1006) leaves 18.
  std::string near;
  for (int i = 0; i < 1000; ++i)
    near += "abcd";
  auto clamped = infer(s.port(), infer_body(near, {{"cache", false}}));
  ASSERT_EQ(clamped.status, 200) << clamped.describe();
  EXPECT_EQ(json_body(clamped)->at("diagnostics").at("degradation").at("appliedMaxTokens").as_int64(), 18);

  // Just under by both counts: served.
  std::string fits;
  for (int i = 0; i < 975; ++i)
    fits += "abcd";  // 3900 bytes: Ray ~975 tokens; the double 981 (template + BOS) + 20 ≤ 1024
  auto ok = infer(s.port(), infer_body(fits, {{"maxTokens", 20}, {"cache", false}}));
  EXPECT_EQ(ok.status, 200) << ok.describe();

  // At the boundary: Ray's estimate fits (1000 + 20 ≤ 1024) but the double's tokenizer counts the chat
  // template and BOS (1006 + 20 > 1024): its 400 exceed_context_size_error becomes Ray's 413.
  std::string edge;
  for (int i = 0; i < 1000; ++i)
    edge += "abcd";
  posts = chat_posts(f.stats());
  auto mapped = infer(s.port(), infer_body(edge, {{"maxTokens", 20}, {"cache", false}}));
  ASSERT_TRUE(is_error(mapped, 413, "request_context_window_exceeded"));
  auto md = json_body(mapped)->at("error").at("details").as_object();
  EXPECT_EQ(num(md, "promptTokens"), 1006) << mapped.describe();
  EXPECT_EQ(num(md, "contextWindow"), 1024) << mapped.describe();
  EXPECT_EQ(chat_posts(f.stats()), posts + 1);
}

// ---- 8. the KV pool

struct burst_result {
  std::vector<int> statuses;
};

burst_result burst(std::uint16_t port, int n, std::size_t input_bytes, int max_tokens) {
  burst_result out;
  std::mutex mu;
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      std::string input(input_bytes, static_cast<char>('a' + i));
      auto r = roundtrip(
          port, post_json("/v1/infer", infer_body(input, {{"maxTokens", max_tokens}, {"cache", false}})),
          rt::in(30s));
      std::lock_guard lock(mu);
      out.statuses.push_back(r ? r->status : 0);
    });
  }
  for (auto& t : threads)
    t.join();
  return out;
}

TEST(Backend, InFlightTokensNeverExceedThePool) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  ASSERT_TRUE(f.control({{"gen_tps", 100}, {"reset_stats", true}}));
  // Each request: 906 prompt tokens (double's count) + 40 = 946. With 2 slots of 1024 the double itself can
  // never hold more than 2048, so the pool bound alone cannot fail here; what can fail is Ray using the pool:
  // two such requests fit, so both slots must have been busy at once (no needless serialization).
  auto b = burst(s.port(), 6, 3600, 40);
  for (int st : b.statuses)
    EXPECT_EQ(st, 200);
  auto st = f.stats();
  EXPECT_EQ(num(st, "inference_requests"), 6);
  EXPECT_LE(num(st, "max_inflight_tokens"), 2048);
  EXPECT_EQ(num(st, "max_processing"), 2);
}

// With --kv-unified one request may use all 2048 tokens, but all slots share that one pool: two requests of
// ~1150 tokens must not run at once. Ray learns the pool from the launch profile's ctxSize (attach mode:
// launchProfile host:port = the double's, not supervised).
TEST(Backend, InFlightTokensNeverExceedTheUnifiedPool) {
  fake_llama f({"-c", "2048", "-np", "2", "--kv-unified"});
  ASSERT_TRUE(f.ok()) << f.output();
  auto cfg = llama_config({{"launchProfile", json::object{{"host", "127.0.0.1"},
                                                          {"port", f.port()},
                                                          {"ctxSize", 2048},
                                                          {"parallel", 2},
                                                          {"enableUnifiedKv", true}}}});
  ray_server s(cfg, attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  EXPECT_EQ(num(provider_details(s.port()), "nCtx"), 2048);
  ASSERT_TRUE(f.control({{"gen_tps", 100}, {"reset_stats", true}}));
  auto b = burst(s.port(), 6, 4400, 40);  // 1106 + 40 = 1146 tokens each by the double's count
  for (int st : b.statuses)
    EXPECT_EQ(st, 200);
  auto st = f.stats();
  EXPECT_EQ(num(st, "inference_requests"), 6);
  EXPECT_LE(num(st, "max_inflight_tokens"), 2048);
  EXPECT_EQ(num(st, "max_processing"), 1);
}

// ---- 9. upstream errors

TEST(Backend, UpstreamErrorsAreMappedAndA401MakesTheBackendMisconfigured) {
  fake_llama f({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));

  ASSERT_TRUE(f.control({{"fail_status", 500}}));
  auto r500 = infer(s.port(), infer_body("five hundred"));
  EXPECT_TRUE(is_error(r500, 502, "provider_upstream_error"));
  EXPECT_NE(r500.body.find("500"), std::string::npos) << r500.describe();
  EXPECT_EQ(readyz(s.port()).status, 200) << "a 500 on one request does not make the backend unready";

  ASSERT_TRUE(f.control({{"fail_status", 0}, {"malformed_json", true}}));
  auto bad = infer(s.port(), infer_body("malformed"));
  EXPECT_TRUE(is_error(bad, 502, "provider_invalid_response"));

  ASSERT_TRUE(f.control({{"malformed_json", false}, {"fail_after_tokens", 2}}));
  auto mid = infer(s.port(), infer_body("fails mid-stream", {{"maxTokens", 8}}));
  EXPECT_TRUE(is_error(mid, 502, "provider_upstream_error"));

  ASSERT_TRUE(f.control({{"fail_after_tokens", -1}, {"fail_status", 503}}));
  auto r503 = infer(s.port(), infer_body("unavailable"));
  EXPECT_TRUE(is_error(r503, 503, "provider_unavailable"));
  EXPECT_TRUE(r503.has_header("retry-after"));

  ASSERT_TRUE(f.control({{"fail_status", 401}}));
  auto r401 = infer(s.port(), infer_body("unauthorized"));
  EXPECT_TRUE(is_error(r401, 502, "provider_upstream_error"));
  ASSERT_TRUE(eventually(
      [&] {
        auto rz = readyz(s.port());
        return rz.status == 503 && rz.provider == "misconfigured";
      },
      3 * kHealth));
  EXPECT_NE(rt::string_field(provider_details(s.port()), "lastError").find("401"), std::string::npos);
  // It stays so: the backend still rejects Ray's credentials.
  auto const until = steady::now() + 3 * kHealth;
  while (steady::now() < until) {
    auto rz = readyz(s.port());
    ASSERT_EQ(rz.status, 503) << "providerStatus `" << rz.provider << "` while every request gets 401";
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // sampling /readyz over 3 intervals
  }
  EXPECT_EQ(metric(s.port(), "ray_backend_requests_total{outcome=\"error\"}"), 5);
}

// The realistic 401: llama-server started with --api-key, Ray holding another key. /health needs no key,
// /props and inference do: Ray must say `misconfigured` and keep saying it, whether or not it warms up.
TEST(Backend, AWrongApiKeyKeepsTheBackendMisconfigured) {
  fake_llama f({"-c", "2048", "-np", "2", "--api-key", "the-right-key"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config({{"apiKeyEnv", "BACKEND_TEST_LLAMA_KEY"}},
                            {{"model", json::object{{"warmOnBoot", false}}}}),
               attach(f), {{"BACKEND_TEST_LLAMA_KEY", "a-wrong-key"}});
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(eventually([&] { return readyz(s.port()).provider != "unknown"; }));
  auto r = infer(s.port(), infer_body("hello"));
  EXPECT_EQ(r.status / 100, 5) << r.describe();
  ASSERT_TRUE(eventually([&] { return readyz(s.port()).provider == "misconfigured"; }, 3 * kHealth))
      << "providerStatus `" << readyz(s.port()).provider << "`\n"
      << s.output_tail();
  auto const until = steady::now() + 3 * kHealth;
  while (steady::now() < until) {
    auto rz = readyz(s.port());
    ASSERT_EQ(rz.status, 503) << "providerStatus `" << rz.provider << "` with a rejected API key";
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // sampling /readyz over 3 intervals
  }
}

TEST(Backend, AnOpenAiCompatibleServerIsProbedOnModelsAndGetsTheBearerKey) {
  fake_llama f({"-c", "2048", "-np", "2", "--api-key", "upstream-key-0123456789"});
  ASSERT_TRUE(f.ok()) << f.output();
  json::object a{{"kind", "openai-compatible"},
                 {"baseUrl", f.url()},
                 {"modelRef", "tiny-llama"},
                 {"apiKeyEnv", "BACKEND_TEST_UPSTREAM_KEY"},
                 {"healthIntervalMs", kHealthMs},
                 {"healthTimeoutMs", 500},
                 {"timeoutMs", 5000}};
  json::object cfg{{"profile", "vps"},
                   {"model", json::object{{"id", "small-model"}, {"adapter", a}}},
                   {"rateLimit", json::object{{"enabled", false}}}};
  ray_server s(cfg, no_host_pressure(), {{"BACKEND_TEST_UPSTREAM_KEY", "upstream-key-0123456789"}});
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(eventually([&] { return readyz(s.port()).provider == "ready"; })) << s.output_tail();
  auto r = infer(s.port(), infer_body("hello upstream"));
  ASSERT_EQ(r.status, 200) << r.describe();
  EXPECT_FALSE(rt::string_field(*json_body(r), "output").empty());
  auto stats = f.stats();
  auto body = last_body(stats);
  EXPECT_EQ(rt::string_field(body, "model"), "tiny-llama");  // modelRef is what the upstream is asked for
  EXPECT_FALSE(body.contains("id_slot"));                    // llama.cpp extras only for llama.cpp
  EXPECT_GE(num(stats.at("requests").as_object(), "/v1/models"), 1);
}

TEST(Backend, ASlotBusyWithAnotherClientsWorkIsAvoided) {
  fake_llama f({"-c", "2048", "-np", "2", "--gen-tps", "20"});
  ASSERT_TRUE(f.ok()) << f.output();
  ray_server s(llama_config(), attach(f));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  // Another client of the same llama-server holds slot 0 for a while (60 tokens at 20/s).
  rt::raw_client other(f.port());
  ASSERT_TRUE(other.send(post_json(
      "/completion", R"({"prompt":"someone else's long job","n_predict":60,"id_slot":0,"stream":true})")));
  // Ray sees it through /slots (polled about every second) and sends its own request to slot 1.
  ASSERT_TRUE(eventually([&] {
    auto st = f.stats();
    return st.contains("processing") && num(st, "processing") >= 1;
  }));
  std::this_thread::sleep_for(1200ms);  // one /slots reconcile period: the behaviour under test is periodic
  auto r = infer(s.port(), infer_body("my own request", {{"cache", false}, {"maxTokens", 4}}));
  ASSERT_EQ(r.status, 200) << r.describe();
  EXPECT_EQ(num(last_body(f.stats()), "id_slot"), 1);
}

TEST(Backend, ASupervisedLlamaServerThatCrashesIsRespawnedAndItsLoadTimeReported) {
  auto const port = ray::test::free_loopback_port();
  std::string const url = "http://127.0.0.1:" + std::to_string(port);
  json::object lp{{"host", "127.0.0.1"},
                  {"port", port},
                  {"ctxSize", 2048},
                  {"parallel", 2},
                  {"binaryPath", FAKE_LLAMA_SERVER},
                  {"extraArgs", json::array{"--load-delay-ms", "300"}}};
  json::object a{{"kind", "llama.cpp"},    {"baseUrl", url},    {"healthIntervalMs", kHealthMs},
                 {"healthTimeoutMs", 500}, {"timeoutMs", 5000}, {"launchProfile", lp}};
  json::object cfg{{"profile", "sub1b"},
                   {"model", json::object{{"id", "tiny-llama"}, {"adapter", a}}},
                   {"scheduler", json::object{{"maxInflightTokens", 2048}}},
                   {"rateLimit", json::object{{"enabled", false}}}};
  auto args = no_host_pressure();
  args.push_back("--model-path");
  args.push_back(std::string(RAY_TEST_FIXTURES) + "/models/tiny-llama-64x2.gguf");
  ray_server s(cfg, args);
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(eventually([&] { return readyz(s.port()).provider == "ready"; })) << s.output_tail();
  auto d = provider_details(s.port());
  ASSERT_TRUE(d.contains("loadMs") && d.at("loadMs").is_number()) << json::serialize(d);
  EXPECT_GE(dnum(d.at("loadMs")), 300.0);  // the double's load delay, measured spawn -> first /health 200
  EXPECT_EQ(infer(s.port(), infer_body("before the crash")).status, 200);

  // Crash it: Ray reports restarting, respawns it after the back-off, and it is ready again.
  roundtrip(port, post_json("/__control", R"({"crash_now":true})"));
  ASSERT_TRUE(eventually([&] {
    auto p = readyz(s.port()).provider;
    return p == "restarting" || p == "starting" || p == "loading";
  })) << s.output_tail();
  ASSERT_TRUE(eventually([&] { return readyz(s.port()).provider == "ready"; }, 15s)) << s.output_tail();
  EXPECT_EQ(infer(s.port(), infer_body("after the crash")).status, 200);
  auto const log = s.output_tail(200000);
  EXPECT_NE(log.find("\"to\":\"restarting\""), std::string::npos) << s.output_tail();
  EXPECT_EQ(counter(s.port(), "ray_backend_restarts_total"), 1);
}

}  // namespace
}  // namespace ray::itest
