// Embeddings and rerank in the backends (models.md "Embeddings and rerank"): the mock's deterministic unit
// vectors and scores, the remote backend's POST /v1/embeddings and /v1/rerank against the llama-server test
// double (tests/support/fake_llama_server, a child process), and the wire format of remote_embed.hpp. Tests
// never sleep to wait: they run the io_context in short slices until an event happened or a deadline passed.
#include "ray/backend/backend.hpp"
#include "ray/backend/remote_embed.hpp"
#include "ray/http/client.hpp"
#include "support/ray_process.hpp"
#include "support/require.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace ray::backend {
namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using ::testing::HasSubstr;

double l2(std::vector<float> const& v) {
  double s = 0;
  for (float x : v)
    s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

// One io_context and a logger writing nowhere; runs coroutines to completion (or cancels them).
struct harness {
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> guard{ioc.get_executor()};
  int null_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  telemetry::logger log{[this] {
    telemetry::logger_options o;
    o.service = "ray-test";
    o.out_fd = null_fd;
    o.err_fd = null_fd;
    o.synchronous = true;
    return o;
  }()};

  ~harness() { ::close(null_fd); }

  bool run_until(std::function<bool()> const& pred, steady::duration timeout = 10s) {
    auto deadline = steady::now() + timeout;
    while (!pred() && steady::now() < deadline)
      ioc.run_for(5ms);
    return pred();
  }

  // A coroutine started on the loop, with a cancellation signal bound to it.
  template <class T>
  struct call {
    asio::cancellation_signal cancel;
    std::optional<T> out;
    bool done() const { return out.has_value(); }
  };
  template <class T>
  std::shared_ptr<call<T>> start(asio::awaitable<T> aw) {
    auto c = std::make_shared<call<T>>();
    asio::co_spawn(ioc, std::move(aw),
                   asio::bind_cancellation_slot(c->cancel.slot(), [c](std::exception_ptr e, T v) {
                     if (e) std::rethrow_exception(e);
                     c->out.emplace(std::move(v));
                   }));
    return c;
  }
  template <class T>
  std::optional<T> run(asio::awaitable<T> aw, steady::duration timeout = 10s) {
    auto c = start(std::move(aw));
    run_until([&] { return c->done(); }, timeout);
    return std::move(c->out);
  }
};

// ======================= the mock backend

config::config mock_config(std::uint32_t dims = 64, std::string seed = "ray", std::uint32_t latency_ms = 0) {
  config::config cfg;
  cfg.model.id = "tiny-embed";
  cfg.model.kind = config::model_kind::embedding;
  cfg.model.adapter.kind = config::adapter_kind::mock;
  cfg.model.adapter.dimensions = dims;
  cfg.model.adapter.seed = std::move(seed);
  cfg.model.adapter.latency_ms = latency_ms;
  return cfg;
}

TEST(MockEmbed, UnitVectorsOfTheConfiguredLengthSeededByTheTextAndTheSeed) {
  harness h;
  auto cfg = mock_config(16);
  auto be = make_mock(h.ioc.get_executor(), cfg);
  auto r = h.run(be->embed({{"apple", "banana", "apple", ""}}));
  ASSERT_TRUE(r && *r) << (r ? r->error().message : "did not finish");
  auto const& v = (*r)->vectors;
  ASSERT_EQ(v.size(), 4u);
  for (auto const& x : v) {
    EXPECT_EQ(x.size(), 16u);
    EXPECT_NEAR(l2(x), 1.0, 1e-5);
  }
  EXPECT_EQ(v[0], v[2]) << "the same text, the same vector";
  EXPECT_NE(v[0], v[1]);
  EXPECT_NE(v[0], v[3]);
  // Another backend with the same config gives the same vectors; another seed other ones.
  auto again = make_mock(h.ioc.get_executor(), cfg);
  auto r2 = h.run(again->embed({{"banana"}}));
  ASSERT_TRUE(r2 && *r2);
  EXPECT_EQ((*r2)->vectors[0], v[1]);
  auto other_cfg = mock_config(16, "other");
  auto other = make_mock(h.ioc.get_executor(), other_cfg);
  auto r3 = h.run(other->embed({{"banana"}}));
  ASSERT_TRUE(r3 && *r3);
  EXPECT_NE((*r3)->vectors[0], v[1]);
  EXPECT_EQ(be->requests_total(), 0u) << "requests_total counts generate() calls only";
}

TEST(MockEmbed, DefaultsTo64DimensionsAndCountsCeilBytesOverFourTokens) {
  harness h;
  config::config cfg;  // the defaults: dimensions 64, latency 35 ms
  ASSERT_EQ(cfg.model.adapter.dimensions, 64u);
  auto be = make_mock(h.ioc.get_executor(), cfg);
  auto r = h.run(be->embed({{"abcd", "abcde", "", "héllo wörld"}}));  // 1 + 2 + 0 + ceil(13 / 4)
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->vectors.size(), 4u);
  EXPECT_EQ((*r)->vectors[0].size(), 64u);
  EXPECT_EQ((*r)->prompt_tokens, 1u + 2u + 0u + 4u);
  auto none = h.run(be->embed({}));
  ASSERT_TRUE(none && *none);
  EXPECT_TRUE((*none)->vectors.empty());
  EXPECT_EQ((*none)->prompt_tokens, 0u);
}

TEST(MockRerank, AnExactMatchRanksFirstResultsAreSortedAndCutToTopN) {
  harness h;
  auto cfg = mock_config(32);
  auto be = make_mock(h.ioc.get_executor(), cfg);
  rerank_request rq{"the queue is full", {"hello operator", "a cheap box", "the queue is full", "queue"}, {}};
  auto r = h.run(be->rerank(rq));
  ASSERT_TRUE(r && *r);
  auto const& res = (*r)->results;
  ASSERT_EQ(res.size(), 4u);
  EXPECT_EQ(res[0].index, 2u);
  EXPECT_NEAR(res[0].score, 1.0, 1e-5);
  std::set<std::uint32_t> seen;
  for (std::size_t i = 0; i < res.size(); ++i) {
    seen.insert(res[i].index);
    if (i > 0) EXPECT_GE(res[i - 1].score, res[i].score);
  }
  EXPECT_EQ(seen.size(), 4u) << "every document once";
  // The score is the dot product of the mock's embeddings.
  auto e = h.run(be->embed({{rq.query, rq.documents[0]}}));
  ASSERT_TRUE(e && *e);
  double dot = 0;
  for (std::size_t d = 0; d < 32; ++d)
    dot += static_cast<double>((*e)->vectors[0][d]) * (*e)->vectors[1][d];
  for (auto const& item : res)
    if (item.index == 0) EXPECT_NEAR(item.score, dot, 1e-9);
  // top_n cuts; deterministic.
  rq.top_n = 2;
  auto top = h.run(be->rerank(rq));
  ASSERT_TRUE(top && *top);
  ASSERT_EQ((*top)->results.size(), 2u);
  EXPECT_EQ((*top)->results[0].index, res[0].index);
  EXPECT_EQ((*top)->results[1].index, res[1].index);
  EXPECT_EQ((*top)->results[1].score, res[1].score);
  rq.top_n = 10;
  auto more = h.run(be->rerank(rq));
  ASSERT_TRUE(more && *more);
  EXPECT_EQ((*more)->results.size(), 4u);
  EXPECT_EQ((*more)->prompt_tokens, 4u * 5u + 4u + 3u + 5u + 2u) << "query (17 bytes: 5) per pair + each doc";
}

TEST(MockEmbed, WaitsTheLatencyAndACancelledCallEndsPromptly) {
  harness h;
  auto cfg = mock_config(8, "ray", 60);
  auto be = make_mock(h.ioc.get_executor(), cfg);
  auto t0 = steady::now();
  auto r = h.run(be->embed({{"x"}}));
  ASSERT_TRUE(r && *r);
  EXPECT_GE(steady::now() - t0, 60ms);

  auto slow_cfg = mock_config(8, "ray", 600'000);
  auto slow = make_mock(h.ioc.get_executor(), slow_cfg);
  auto e = h.start(slow->embed({{"x"}}));
  auto k = h.start(slow->rerank({"q", {"d"}, {}}));
  h.ioc.run_for(20ms);
  ASSERT_FALSE(e->done());
  ASSERT_FALSE(k->done());
  auto c0 = steady::now();
  e->cancel.emit(asio::cancellation_type::terminal);
  k->cancel.emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(h.run_until([&] { return e->done() && k->done(); }, 5s));
  EXPECT_LT(steady::now() - c0, 2s);
  ASSERT_FALSE(*e->out);
  EXPECT_EQ(e->out->error().code, errc::provider_request_failed);
  ASSERT_FALSE(*k->out);
  EXPECT_EQ(k->out->error().code, errc::provider_request_failed);
}

// A backend that implements neither: the base class defaults.
class bare_backend final : public backend {
 public:
  state current_state() const noexcept override { return state::ready; }
  description describe() const override { return {}; }
  void start() override {}
  void stop() override {}
  asio::awaitable<result<generation_result>> generate(generation_request, token_sink*) override {
    co_return generation_result{};
  }
  std::uint64_t requests_total() const noexcept override { return 0; }
};

TEST(BackendDefaults, EmbedAndRerankAnswerNotImplemented) {
  harness h;
  bare_backend be;
  auto e = h.run(be.embed({{"x"}}));
  ASSERT_TRUE(e);
  ASSERT_FALSE(*e);
  EXPECT_EQ(e->error().code, errc::not_implemented);
  auto r = h.run(be.rerank({"q", {"d"}, {}}));
  ASSERT_TRUE(r);
  ASSERT_FALSE(*r);
  EXPECT_EQ(r->error().code, errc::not_implemented);
}

// ======================= the wire format (remote_embed.hpp)

TEST(RemoteEmbedWire, RequestBodiesAreLlamaServersShape) {
  auto e = json::parse(embeddings_request_body("m", {"a", "b"})).as_object();
  EXPECT_EQ(e,
            (json::object{{"model", "m"}, {"input", json::array{"a", "b"}}, {"encoding_format", "float"}}));
  auto r = json::parse(rerank_request_body("m", "q", {"a", "b"}, 1)).as_object();
  EXPECT_EQ(
      r, (json::object{{"model", "m"}, {"query", "q"}, {"documents", json::array{"a", "b"}}, {"top_n", 1}}));
  EXPECT_FALSE(json::parse(rerank_request_body("m", "q", {"a"}, std::nullopt)).as_object().contains("top_n"));
}

TEST(RemoteEmbedWire, EmbeddingsArePlacedByIndexAndBadAnswersAreInvalid) {
  auto ok = parse_embeddings_answer(
      R"({"data":[{"embedding":[3,4],"index":1},{"embedding":[0.5,-1e-3],"index":0}],"usage":{"prompt_tokens":7}})",
      2);
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_EQ(ok->vectors[0], (std::vector<float>{0.5f, -1e-3f}));
  EXPECT_EQ(ok->vectors[1], (std::vector<float>{3.0f, 4.0f}));
  EXPECT_EQ(ok->prompt_tokens, 7u);
  auto by_position = parse_embeddings_answer(R"({"data":[{"embedding":[1]},{"embedding":[2]}]})", 2);
  ASSERT_TRUE(by_position);
  EXPECT_EQ(by_position->vectors[1], std::vector<float>{2.0f});
  EXPECT_FALSE(by_position->prompt_tokens.has_value());
  for (char const* bad : {
           "not json",
           "[1]",
           R"({"object":"list"})",
           R"({"data":[{"embedding":[1]}]})",                                        // 1 for 2 inputs
           R"({"data":[{"embedding":[1],"index":0},{"embedding":[2],"index":0}]})",  // twice
           R"({"data":[{"embedding":[1],"index":0},{"embedding":[2],"index":2}]})",  // out of range
           R"({"data":[{"embedding":[1],"index":0},{"embedding":[2],"index":-1}]})",
           R"({"data":[{"embedding":[1],"index":0},{"embedding":[2],"index":0.5}]})",
           R"({"data":[{"embedding":[1],"index":0},{"embedding":"AACAPw==","index":1}]})",  // base64
           R"({"data":[{"embedding":[1],"index":0},{"embedding":[],"index":1}]})",
           R"({"data":[{"embedding":[1],"index":0},{"embedding":[1,2],"index":1}]})",  // lengths differ
           R"({"data":[{"embedding":[1],"index":0},{"embedding":["x"],"index":1}]})",
           R"({"data":[{"embedding":[1],"index":0},{"embedding":[1e300],"index":1}]})",  // not a float
           R"({"data":[{"embedding":[1],"index":0},7]})",
       }) {
    auto r = parse_embeddings_answer(bad, 2);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code, errc::provider_invalid_response) << bad;
  }
}

TEST(RemoteEmbedWire, RerankResultsAreSortedCutAndChecked) {
  auto ok = parse_rerank_answer(
      R"({"results":[{"index":0,"relevance_score":-1.5},{"index":2,"relevance_score":3},{"index":1,"score":0.25}],"usage":{"prompt_tokens":9}})",
      3, std::nullopt);
  ASSERT_TRUE(ok) << ok.error().message;
  ASSERT_EQ(ok->results.size(), 3u);
  EXPECT_EQ(ok->results[0].index, 2u);
  EXPECT_EQ(ok->results[1].index, 1u);
  EXPECT_EQ(ok->results[2].index, 0u);
  EXPECT_EQ(ok->results[2].score, -1.5);
  EXPECT_EQ(ok->prompt_tokens, 9u);
  auto cut = parse_rerank_answer(
      R"({"results":[{"index":0,"relevance_score":1},{"index":1,"relevance_score":2}]})", 2, 1);
  ASSERT_TRUE(cut);
  ASSERT_EQ(cut->results.size(), 1u);
  EXPECT_EQ(cut->results[0].index, 1u);
  for (
      char const* bad : {
          "nope",
          R"({"data":[]})",
          R"({"results":[{"index":0,"relevance_score":1},{"index":1,"relevance_score":1},{"index":2,"relevance_score":1}]})",
          R"({"results":[{"relevance_score":1}]})",
          R"({"results":[{"index":5,"relevance_score":1}]})",
          R"({"results":[{"index":0,"relevance_score":1},{"index":0,"relevance_score":2}]})",
          R"({"results":[{"index":0,"relevance_score":"high"}]})",
          R"({"results":[{"index":0}]})",
      }) {
    auto r = parse_rerank_answer(bad, 2, std::nullopt);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code, errc::provider_invalid_response) << bad;
  }
}

// ======================= the remote backend against the llama-server double

#ifdef FAKE_LLAMA_SERVER

// The double as a child process (killed with the object).
struct double_process {
  std::unique_ptr<ray::test::ray_process> proc;
  std::uint16_t port{0};

  explicit double_process(std::vector<std::string> args) {
    std::vector<std::string> a{"--port", "0", "-a", "tiny-embed", "--embd-dim", "8"};
    a.insert(a.end(), args.begin(), args.end());
    proc = std::make_unique<ray::test::ray_process>(
        ray::test::spawn_options{.binary = FAKE_LLAMA_SERVER, .args = a});
    auto line = proc->wait_for_log([](std::string_view l) { return l.starts_with("listening "); },
                                   ray::test::in(10s));
    if (line) port = static_cast<std::uint16_t>(std::stoi(line->substr(10)));
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
};

// The remote backend (kind llama.cpp) attached to a double, driven on the harness's loop.
struct remote_fixture {
  harness h;
  double_process fake;
  config::config cfg;
  std::unique_ptr<backend> be;

  explicit remote_fixture(std::vector<std::string> args, std::function<void(config::config&)> tweak = {})
      : fake(std::move(args)) {
    cfg.model.id = "tiny-embed";
    cfg.model.kind = config::model_kind::embedding;
    cfg.model.adapter.kind = config::adapter_kind::llama_cpp;
    cfg.model.adapter.base_url = fake.url();
    cfg.model.adapter.timeout_ms = 10'000;
    cfg.model.adapter.health_interval_ms = 100;
    cfg.model.adapter.health_timeout_ms = 2'000;
    if (tweak) tweak(cfg);
    be = make_remote(h.ioc.get_executor(), cfg, h.log);
  }
  ~remote_fixture() {
    if (be) be->stop();
    be.reset();  // the loop is not run again: pending work dies with the io_context
  }
  bool ready() {
    be->start();
    return h.run_until([&] { return be->current_state() == state::ready; });
  }

  // GET / POST on the double from the test (the double's /__stats, /__control, its own answers).
  std::optional<http::client_response> ask(http::verb verb, std::string target, std::string body = {}) {
    http::client c(h.ioc.get_executor(), "127.0.0.1", fake.port);
    http::client_request const rq{verb, std::move(target), std::move(body), {}, std::chrono::seconds(5)};
    auto r =
        h.run([&]() -> asio::awaitable<result<http::client_response>> { co_return co_await c.send(rq); }());
    if (!r || !*r) return std::nullopt;
    return std::move(**r);
  }
  json::object stats() {
    auto r = ask(http::verb::get, "/__stats");
    return r ? json::parse(r->body).as_object() : json::object{};
  }
  bool control(std::string const& knobs) {
    auto r = ask(http::verb::post, "/__control", knobs);
    return r && r->status == 200;
  }
  std::int64_t stat(std::string_view key) {
    auto st = stats();
    auto const* v = st.if_contains(key);
    return v ? v->to_number<std::int64_t>() : -1;
  }
  bool stat_until(std::string_view key, std::int64_t want) {
    auto deadline = steady::now() + 10s;
    while (steady::now() < deadline) {
      if (stat(key) == want) return true;
      h.ioc.run_for(5ms);
    }
    return false;
  }
};

std::vector<std::string> const two_inputs{"Hello operator.", "The queue is full."};

TEST(RemoteEmbed, PostsV1EmbeddingsAndReturnsTheVectorsInInputOrder) {
  remote_fixture f({"--embedding"}, [](config::config& c) { c.model.adapter.model_ref = "embed-ref"; });
  ASSERT_NE(f.fake.port, 0) << f.fake.proc->output();
  ASSERT_TRUE(f.ready()) << state_name(f.be->current_state());
  auto r = f.h.run(f.be->embed({two_inputs}));
  ASSERT_TRUE(r) << "did not finish";
  ASSERT_TRUE(*r) << r->error().message;
  auto const& v = (*r)->vectors;
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[0].size(), 8u);
  EXPECT_NEAR(l2(v[0]), 1.0, 1e-5);
  EXPECT_NE(v[0], v[1]);
  EXPECT_EQ((*r)->prompt_tokens, 11u) << "the double's usage.prompt_tokens";
  // What reached the double: Ray's request shape, once.
  auto st = f.stats();
  EXPECT_EQ(st.at("embedding_requests"), 1);
  EXPECT_EQ(st.at("embedding_inputs"), 2);
  auto const& sent = st.at("recent").as_array().back().as_object();
  EXPECT_EQ(sent.at("path"), "/v1/embeddings");
  EXPECT_EQ(sent.at("body"), (json::object{{"model", "embed-ref"},
                                           {"input", json::array{two_inputs[0], two_inputs[1]}},
                                           {"encoding_format", "float"}}));
  // The same vectors the double answers for each input alone, in input order.
  for (std::size_t i = 0; i < 2; ++i) {
    auto own =
        f.ask(http::verb::post, "/v1/embeddings", json::serialize(json::object{{"input", two_inputs[i]}}));
    ASSERT_TRUE(own);
    auto const answer = json::parse(own->body);
    auto const& arr = answer.at("data").at(0).at("embedding").as_array();
    ASSERT_EQ(arr.size(), v[i].size());
    for (std::size_t d = 0; d < arr.size(); ++d)
      EXPECT_EQ(static_cast<float>(arr[d].to_number<double>()), v[i][d]) << "input " << i << " dim " << d;
  }
  EXPECT_EQ(f.be->requests_total(), 0u);
}

TEST(RemoteEmbed, PostsV1RerankAndReturnsTheResultsBestFirst) {
  remote_fixture f({"--reranking"});
  ASSERT_TRUE(f.ready());
  rerank_request rq{"Is the queue full?", {"Hello operator.", "The queue is full.", "Is the queue full?"}, 2};
  auto r = f.h.run(f.be->rerank(rq));
  ASSERT_TRUE(r && *r) << (r ? r->error().message : "did not finish");
  auto const& res = (*r)->results;
  ASSERT_EQ(res.size(), 2u);
  EXPECT_EQ(res[0].index, 2u) << "the exact match first";
  EXPECT_GE(res[0].score, res[1].score);
  EXPECT_EQ((*r)->prompt_tokens, 35u);
  auto const st = f.stats();
  auto const& sent = st.at("recent").as_array().back().as_object();
  EXPECT_EQ(sent.at("path"), "/v1/rerank");
  EXPECT_EQ(sent.at("body"),
            (json::object{{"model", "tiny-embed"},
                          {"query", rq.query},
                          {"documents", json::array{rq.documents[0], rq.documents[1], rq.documents[2]}},
                          {"top_n", 2}}));
  rq.top_n.reset();
  auto all = f.h.run(f.be->rerank(rq));
  ASSERT_TRUE(all && *all);
  EXPECT_EQ((*all)->results.size(), 3u);
  EXPECT_EQ(f.stat("rerank_requests"), 2);
}

TEST(RemoteEmbed, UpstreamErrorsMapLikeGenerate) {
  remote_fixture f({});  // no --embedding: llama-server's 501
  ASSERT_TRUE(f.ready());
  auto off = f.h.run(f.be->embed({two_inputs}));
  ASSERT_TRUE(off);
  ASSERT_FALSE(*off);
  EXPECT_EQ(off->error().code, errc::provider_upstream_error);
  EXPECT_THAT(off->error().message, HasSubstr("501"));
  EXPECT_THAT(off->error().message, HasSubstr("does not support embeddings"));
  auto rr = f.h.run(f.be->rerank({"q", {"d"}, {}}));
  ASSERT_TRUE(rr);
  ASSERT_FALSE(*rr);
  EXPECT_EQ(rr->error().code, errc::provider_upstream_error);

  ASSERT_TRUE(f.control(R"({"embedding":true,"fail_status":503})"));
  auto loading = f.h.run(f.be->embed({two_inputs}));
  ASSERT_TRUE(loading);
  ASSERT_FALSE(*loading);
  EXPECT_EQ(loading->error().code, errc::provider_unavailable);

  ASSERT_TRUE(f.control(R"({"fail_status":500})"));
  auto failed = f.h.run(f.be->embed({two_inputs}));
  ASSERT_TRUE(failed);
  ASSERT_FALSE(*failed);
  EXPECT_EQ(failed->error().code, errc::provider_upstream_error);

  ASSERT_TRUE(f.control(R"({"fail_status":0,"malformed_json":true})"));
  ASSERT_TRUE(f.h.run_until([&] { return f.be->current_state() == state::ready; }));
  auto broken = f.h.run(f.be->embed({two_inputs}));
  ASSERT_TRUE(broken);
  ASSERT_FALSE(*broken);
  EXPECT_EQ(broken->error().code, errc::provider_invalid_response);
  auto broken_rank = f.h.run(f.be->rerank({"q", {"d"}, {}}));
  ASSERT_TRUE(broken_rank);
  ASSERT_FALSE(*broken_rank);
  EXPECT_EQ(broken_rank->error().code, errc::provider_upstream_error) << "still not ranking: 501 first";

  ASSERT_TRUE(f.control(R"({"malformed_json":false,"fail_status":401})"));
  auto denied = f.h.run(f.be->embed({two_inputs}));
  ASSERT_TRUE(denied);
  ASSERT_FALSE(*denied);
  EXPECT_EQ(denied->error().code, errc::provider_upstream_error);
  EXPECT_THAT(denied->error().message, HasSubstr("credentials"));
  EXPECT_EQ(f.be->current_state(), state::misconfigured);
}

TEST(RemoteEmbed, ARefusedConnectionIsProviderUnavailable) {
  remote_fixture f({"--embedding"});
  ASSERT_TRUE(f.ready());
  auto ok = f.h.run(f.be->embed({two_inputs}));
  ASSERT_TRUE(ok && *ok);
  f.fake.proc.reset();  // SIGKILL: the port refuses from now on
  auto gone = f.h.run(f.be->embed({two_inputs}));
  ASSERT_TRUE(gone);
  ASSERT_FALSE(*gone);
  EXPECT_EQ(gone->error().code, errc::provider_unavailable) << gone->error().message;
  auto gone_rank = f.h.run(f.be->rerank({"q", {"d"}, {}}));
  ASSERT_TRUE(gone_rank);
  ASSERT_FALSE(*gone_rank);
  EXPECT_EQ(gone_rank->error().code, errc::provider_unavailable);
  EXPECT_TRUE(f.h.run_until([&] { return f.be->current_state() == state::unreachable; }));
}

TEST(RemoteEmbed, TheTimeoutIsAdapterTimeoutMsAndACancelledCallLeavesTheBackend) {
  remote_fixture f({"--reranking", "--hang-before-first-token"},
                   [](config::config& c) { c.model.adapter.timeout_ms = 300; });
  ASSERT_TRUE(f.ready());
  auto t0 = steady::now();
  auto late = f.h.run(f.be->embed({two_inputs}));
  ASSERT_TRUE(late);
  ASSERT_FALSE(*late);
  EXPECT_EQ(late->error().code, errc::provider_timeout) << late->error().message;
  EXPECT_GE(steady::now() - t0, 300ms);
  EXPECT_TRUE(f.stat_until("cancelled_embeddings", 1)) << "the double saw Ray leave";

  // Cancelled through the awaiting coroutine's slot while the double holds the request (the backend reads
  // its config at each call: a timeout far away now, so only the cancellation can end the call).
  f.cfg.model.adapter.timeout_ms = 120'000;
  auto c = f.h.start(f.be->rerank({"q", {"d1", "d2"}, {}}));
  ASSERT_TRUE(f.stat_until("active", 1));
  ASSERT_FALSE(c->done());
  auto c0 = steady::now();
  c->cancel.emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(f.h.run_until([&] { return c->done(); }, 5s));
  EXPECT_LT(steady::now() - c0, 2s) << "ends at once, not at the timeout";
  EXPECT_FALSE(*c->out);
  EXPECT_TRUE(f.stat_until("cancelled_embeddings", 2));
  EXPECT_EQ(f.stat("completed"), 0);
}

TEST(RemoteEmbed, SendsTheBearerKeyOfApiKeyEnv) {
  ::setenv("RAY_EMBED_TEST_KEY", "sekrit-key", 1);
  remote_fixture f({"--embedding", "--reranking", "--api-key", "sekrit-key"},
                   [](config::config& c) { c.model.adapter.api_key_env = "RAY_EMBED_TEST_KEY"; });
  ASSERT_TRUE(f.ready()) << state_name(f.be->current_state());
  auto r = f.h.run(f.be->embed({two_inputs}));
  ASSERT_TRUE(r && *r) << (r ? r->error().message : "did not finish");
  auto k = f.h.run(f.be->rerank({"q", {"d"}, 1}));
  ASSERT_TRUE(k && *k) << (k ? k->error().message : "did not finish");
  ::unsetenv("RAY_EMBED_TEST_KEY");
}

TEST(RemoteEmbed, NotServingAnswersUnavailableWithoutCallingTheBackend) {
  remote_fixture f({"--embedding", "--load-delay-ms", "600000"});
  f.be->start();
  ASSERT_TRUE(f.h.run_until([&] { return f.be->current_state() == state::loading; }));
  auto r = f.h.run(f.be->embed({two_inputs}));
  ASSERT_TRUE(r);
  ASSERT_FALSE(*r);
  EXPECT_EQ(r->error().code, errc::provider_unavailable);
  EXPECT_EQ(f.stat("embedding_requests"), 0);
  auto st = f.stats();
  EXPECT_FALSE(st.at("requests").as_object().contains("/v1/embeddings"));
}

#else

TEST(RemoteEmbed, NeedsTheDouble) {
  RAY_SKIP_OR_FAIL("fake_llama_server target not available");
}

#endif

}  // namespace
}  // namespace ray::backend
