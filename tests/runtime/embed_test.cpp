// Unit tests of runtime::embed() and runtime::rerank() (src/ray/runtime/embed.cpp): the per-input cache, the
// dedupe of identical inputs in flight, admission (queue_full, 413), cancellation, kinds and dimensions,
// against the gated backend double of runtime_harness.hpp.
#include "runtime_harness.hpp"

#include <gtest/gtest.h>

using namespace runtime_test;

namespace {

template <class T>
struct done_with {
  bool done{false};
  std::exception_ptr escaped{};
  std::optional<ray::result<T>> r{};
  bool ok() const { return r && r->has_value(); }
  T const& value() const { return r->value(); }
  ray::error error() const { return r->error(); }
};
template <class T>
using done_ptr = std::shared_ptr<done_with<T>>;

asio::awaitable<void> do_embed(rr::runtime& rt, rr::embed_call call, done_ptr<rr::embed_result> o) {
  auto r = co_await rt.embed(std::move(call));
  o->r.emplace(std::move(r));
}

asio::awaitable<void> do_rerank(rr::runtime& rt, rr::rerank_call call, done_ptr<rr::rerank_result> o) {
  auto r = co_await rt.rerank(std::move(call));
  o->r.emplace(std::move(r));
}

template <class T>
void spawn(harness& h, asio::awaitable<void> work, done_ptr<T> const& o, asio::cancellation_signal* sig) {
  auto handler = [o](std::exception_ptr e) {
    o->escaped = e;
    o->done = true;
  };
  if (sig)
    asio::co_spawn(h.io, std::move(work), asio::bind_cancellation_slot(sig->slot(), handler));
  else
    asio::co_spawn(h.io, std::move(work), handler);
}

done_ptr<rr::embed_result> embed(harness& h, std::vector<std::string> inputs,
                                 asio::cancellation_signal* sig = nullptr) {
  auto o = std::make_shared<done_with<rr::embed_result>>();
  rr::embed_call call;
  call.inputs = std::move(inputs);
  spawn(h, do_embed(*h.rt, std::move(call), o), o, sig);
  return o;
}

done_ptr<rr::rerank_result> rerank(harness& h, std::string query, std::vector<std::string> docs,
                                   std::optional<std::uint32_t> top_n = std::nullopt,
                                   asio::cancellation_signal* sig = nullptr) {
  auto o = std::make_shared<done_with<rr::rerank_result>>();
  rr::rerank_call call;
  call.query = std::move(query);
  call.documents = std::move(docs);
  call.top_n = top_n;
  spawn(h, do_rerank(*h.rt, std::move(call), o), o, sig);
  return o;
}

// A runtime serving an embedding (or rerank) model; the double's vectors have 4 dimensions, and so does the
// configured (mock-kind) model.
std::function<void(ray::config::config&)> kind(ray::config::model_kind k,
                                               std::function<void(ray::config::config&)> more = {}) {
  return [k, more](ray::config::config& c) {
    c.model.kind = k;
    c.model.adapter.dimensions = 4;
    if (more) more(c);
  };
}

std::vector<std::string> inputs_of(test_backend::aux_call const& c) {
  return c.embed.inputs;
}

using strings = std::vector<std::string>;

}  // namespace

// ---- cache ------------------------------------------------------------------------------------------------

TEST(RuntimeEmbed, ARepeatedInputIsServedFromTheCacheAndOnlyTheNewOneIsSent) {
  harness h(kind(ray::config::model_kind::embedding));
  h.be.open();
  auto first = embed(h, {"alpha", "beta"});
  ASSERT_TRUE(h.run_until([&] { return first->done; }));
  ASSERT_TRUE(first->ok()) << first->error().message;
  ASSERT_EQ(h.be.embed_calls().size(), 1u);
  EXPECT_EQ(inputs_of(*h.be.embed_calls()[0]), (strings{"alpha", "beta"}));
  EXPECT_EQ(first->value().cached, (std::vector<bool>{false, false}));
  EXPECT_EQ(first->value().sent, 2u);
  EXPECT_EQ(first->value().prompt_tokens, 20u);  // the double counts 10 per input

  auto second = embed(h, {"beta", "gamma", "alpha"});
  ASSERT_TRUE(h.run_until([&] { return second->done; }));
  ASSERT_TRUE(second->ok()) << second->error().message;
  ASSERT_EQ(h.be.embed_calls().size(), 2u);
  EXPECT_EQ(inputs_of(*h.be.embed_calls()[1]), (strings{"gamma"}));  // only the miss reaches the backend
  auto const& r = second->value();
  ASSERT_EQ(r.vectors.size(), 3u);
  EXPECT_EQ(r.vectors[0], test_backend::vector_of("beta"));  // reassembled in input order
  EXPECT_EQ(r.vectors[1], test_backend::vector_of("gamma"));
  EXPECT_EQ(r.vectors[2], test_backend::vector_of("alpha"));
  EXPECT_EQ(r.cached, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(r.sent, 1u);
  EXPECT_EQ(r.prompt_tokens, 30u);  // the cached inputs keep the share they were counted for
  EXPECT_EQ(h.counter("cache.hits"), 2u);
  EXPECT_EQ(h.counter("cache.misses"), 3u);
  EXPECT_EQ(h.counter("backend.requests{outcome=ok}"), 2u);
  EXPECT_TRUE(h.drained());
}

TEST(RuntimeEmbed, AllCachedNeedsNoBackendCallAndCacheOffAlwaysSends) {
  harness h(kind(ray::config::model_kind::embedding));
  h.be.open();
  auto a = embed(h, {"one"});
  ASSERT_TRUE(h.run_until([&] { return a->done; }));
  auto b = embed(h, {"one", "one"});
  ASSERT_TRUE(h.run_until([&] { return b->done; }));
  ASSERT_TRUE(b->ok());
  EXPECT_EQ(h.be.embed_calls().size(), 1u);
  EXPECT_EQ(b->value().cached, (std::vector<bool>{true, true}));
  EXPECT_EQ(b->value().vectors[1], test_backend::vector_of("one"));

  harness off(kind(ray::config::model_kind::embedding, [](auto& c) { c.cache.enabled = false; }));
  off.be.open();
  for (int i = 0; i < 2; ++i) {
    auto o = embed(off, {"one"});
    ASSERT_TRUE(off.run_until([&] { return o->done; }));
    ASSERT_TRUE(o->ok());
    EXPECT_EQ(o->value().cached, (std::vector<bool>{false}));
  }
  EXPECT_EQ(off.be.embed_calls().size(), 2u);
  EXPECT_EQ(off.counter("cache.hits"), 0u);
}

TEST(RuntimeEmbed, DuplicateInputsOfOneRequestAreSentOnce) {
  harness h(kind(ray::config::model_kind::embedding));
  h.be.open();
  auto o = embed(h, {"x", "y", "x"});
  ASSERT_TRUE(h.run_until([&] { return o->done; }));
  ASSERT_TRUE(o->ok());
  ASSERT_EQ(h.be.embed_calls().size(), 1u);
  EXPECT_EQ(inputs_of(*h.be.embed_calls()[0]), (strings{"x", "y"}));
  ASSERT_EQ(o->value().vectors.size(), 3u);
  EXPECT_EQ(o->value().vectors[2], test_backend::vector_of("x"));
}

// ---- dedupe -----------------------------------------------------------------------------------------------

TEST(RuntimeEmbed, ConcurrentIdenticalInputsShareTheCallInFlight) {
  harness h(kind(ray::config::model_kind::embedding, [](auto& c) { c.scheduler.concurrency = 2; }));
  auto a = embed(h, {"p", "q"});
  h.settle();
  auto b = embed(h, {"q", "r"});
  h.settle();
  ASSERT_EQ(h.be.embed_calls().size(), 2u);
  EXPECT_EQ(inputs_of(*h.be.embed_calls()[1]), (strings{"r"}));  // "q" is already being computed
  EXPECT_FALSE(b->done);
  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return a->done && b->done; }));
  ASSERT_TRUE(a->ok() && b->ok());
  EXPECT_FALSE(a->value().deduplicated);
  EXPECT_TRUE(b->value().deduplicated);
  EXPECT_EQ(b->value().vectors[0], test_backend::vector_of("q"));
  EXPECT_EQ(b->value().vectors[1], test_backend::vector_of("r"));
  EXPECT_EQ(h.counter("dedupe.joins"), 1u);
  EXPECT_TRUE(h.drained());
}

TEST(RuntimeEmbed, WithoutDedupeInflightIdenticalInputsAreSentAgain) {
  harness h(kind(ray::config::model_kind::embedding, [](auto& c) {
    c.scheduler.concurrency = 2;
    c.scheduler.dedupe_inflight = false;
  }));
  auto a = embed(h, {"p"});
  auto b = embed(h, {"p"});
  h.settle();
  EXPECT_EQ(h.be.embed_calls().size(), 2u);
  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return a->done && b->done; }));
  EXPECT_FALSE(b->value().deduplicated);
}

// ---- admission --------------------------------------------------------------------------------------------

TEST(RuntimeEmbed, QueueFullIsRefusedWithRetryAfterAndTheQueueDrains) {
  harness h(kind(ray::config::model_kind::embedding, [](auto& c) {
    c.scheduler.concurrency = 1;
    c.scheduler.max_queue = 1;
  }));
  auto a = embed(h, {"first"});
  auto b = embed(h, {"second"});
  auto c = embed(h, {"third"});
  h.settle();
  EXPECT_EQ(h.be.embed_calls().size(), 1u);
  EXPECT_EQ(h.rt->stats().queue_depth, 1u);
  ASSERT_TRUE(c->done);
  ASSERT_FALSE(c->ok());
  EXPECT_EQ(c->error().code, errc::queue_full);
  ASSERT_TRUE(c->error().retry_after_ms.has_value());
  EXPECT_GT(*c->error().retry_after_ms, 0);
  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return a->done && b->done; }));
  EXPECT_TRUE(a->ok() && b->ok());
  EXPECT_TRUE(h.drained());
  EXPECT_EQ(h.counter("rejections{reason=queue_full}"), 1u);
}

TEST(RuntimeEmbed, ABatchOverTheTokenBudgetIs413BeforeTheBackendEvenWhenCached) {
  harness h(kind(ray::config::model_kind::embedding, [](auto& c) { c.scheduler.max_inflight_tokens = 40; }));
  h.be.open();
  std::string const text(100, 'a');  // ~25 tokens each: one fits, two do not
  auto one = embed(h, {text});
  ASSERT_TRUE(h.run_until([&] { return one->done; }));
  ASSERT_TRUE(one->ok());
  auto two = embed(h, {text, text + "b"});
  ASSERT_TRUE(h.run_until([&] { return two->done; }));
  ASSERT_FALSE(two->ok());
  EXPECT_EQ(two->error().code, errc::request_token_budget_exceeded);
  auto same_twice = embed(h, {text, text});  // cached, but the batch as sent never fits: same answer
  ASSERT_TRUE(h.run_until([&] { return same_twice->done; }));
  ASSERT_FALSE(same_twice->ok());
  EXPECT_EQ(same_twice->error().code, errc::request_token_budget_exceeded);
  EXPECT_EQ(h.be.embed_calls().size(), 1u);
}

// ---- cancellation -----------------------------------------------------------------------------------------

TEST(RuntimeEmbed, ALeavingWaiterKeepsTheCallForTheOtherAndTheLastOneCancelsIt) {
  harness h(kind(ray::config::model_kind::embedding));
  auto* sig_a = h.signal();
  auto a = embed(h, {"shared"}, sig_a);
  h.settle();
  auto b = embed(h, {"shared"});
  h.settle();
  ASSERT_EQ(h.be.embed_calls().size(), 1u);
  sig_a->emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(h.run_until([&] { return a->done; }));
  ASSERT_FALSE(a->ok());
  EXPECT_FALSE(h.be.embed_calls()[0]->cancelled);  // b still needs it
  h.be.embed_calls()[0]->release();
  ASSERT_TRUE(h.run_until([&] { return b->done; }));
  ASSERT_TRUE(b->ok()) << b->error().message;
  EXPECT_EQ(b->value().vectors[0], test_backend::vector_of("shared"));

  auto* sig_c = h.signal();
  auto c = embed(h, {"alone"}, sig_c);
  h.settle();
  ASSERT_EQ(h.be.embed_calls().size(), 2u);
  sig_c->emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(h.run_until([&] { return c->done && h.be.embed_calls()[1]->cancelled; }));
  ASSERT_FALSE(c->ok());
  EXPECT_FALSE(c->escaped);
  ASSERT_TRUE(h.run_until([&] { return h.drained(); }));
  EXPECT_EQ(h.counter("backend.requests{outcome=cancelled}"), 1u);
  // Nothing of the cancelled call was stored: asking again reaches the backend.
  h.be.open();
  auto again = embed(h, {"alone"});
  ASSERT_TRUE(h.run_until([&] { return again->done; }));
  ASSERT_TRUE(again->ok());
  EXPECT_EQ(again->value().cached, (std::vector<bool>{false}));
  EXPECT_EQ(h.be.embed_calls().size(), 3u);
}

TEST(RuntimeEmbed, LeavingWhileQueuedFreesThePlaceAndNeverReachesTheBackend) {
  harness h(kind(ray::config::model_kind::embedding, [](auto& c) { c.scheduler.concurrency = 1; }));
  auto a = embed(h, {"running"});
  auto* sig = h.signal();
  auto b = embed(h, {"queued"}, sig);
  h.settle();
  ASSERT_EQ(h.rt->stats().queue_depth, 1u);
  sig->emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(h.run_until([&] { return b->done && h.rt->stats().queue_depth == 0; }));
  ASSERT_FALSE(b->ok());
  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return a->done; }));
  ASSERT_EQ(h.be.embed_calls().size(), 1u);
  EXPECT_EQ(inputs_of(*h.be.embed_calls()[0]), (strings{"running"}));
  EXPECT_TRUE(h.drained());
}

// ---- errors, kinds, dimensions ----------------------------------------------------------------------------

TEST(RuntimeEmbed, KindsMustMatch) {
  harness chat;  // the default model is a chat model
  auto e = embed(chat, {"text"});
  ASSERT_TRUE(chat.run_until([&] { return e->done; }));
  ASSERT_FALSE(e->ok());
  EXPECT_EQ(e->error().code, errc::model_kind_mismatch);
  EXPECT_EQ(e->error().param, "model");

  harness emb(kind(ray::config::model_kind::embedding));
  auto c = emb.chat(chat_req("hello"));
  auto i = emb.infer(infer_req("hello"));
  auto r = rerank(emb, "q", {"d"});
  ASSERT_TRUE(emb.run_until([&] { return c->done && i->done && r->done; }));
  EXPECT_EQ(c->error().code, errc::model_kind_mismatch);
  EXPECT_EQ(i->error().code, errc::model_kind_mismatch);
  EXPECT_EQ(r->error().code, errc::model_kind_mismatch);
  EXPECT_TRUE(emb.be.calls.empty());
  EXPECT_TRUE(emb.be.aux_calls.empty());
}

TEST(RuntimeEmbed, DimensionsOtherThanTheNativeSizeAreRefused) {
  // Known up front (the mock-kind model's adapter.dimensions).
  harness h(kind(ray::config::model_kind::embedding));
  EXPECT_EQ(h.rt->embedding_dimensions(), 4u);
  rr::embed_call call;
  call.inputs = {"t"};
  call.dimensions = 8;
  auto o = std::make_shared<done_with<rr::embed_result>>();
  spawn(h, do_embed(*h.rt, call, o), o, nullptr);
  ASSERT_TRUE(h.run_until([&] { return o->done; }));
  ASSERT_FALSE(o->ok());
  EXPECT_EQ(o->error().code, errc::unsupported_parameter);
  EXPECT_EQ(o->error().param, "dimensions");
  EXPECT_TRUE(h.be.aux_calls.empty());

  // A remote model: unknown until the first answer, then learnt.
  harness remote(kind(ray::config::model_kind::embedding,
                      [](auto& c) { c.model.adapter.kind = ray::config::adapter_kind::llama_cpp; }));
  remote.be.open();
  EXPECT_FALSE(remote.rt->embedding_dimensions().has_value());
  auto first = std::make_shared<done_with<rr::embed_result>>();
  spawn(remote, do_embed(*remote.rt, call, first), first, nullptr);
  ASSERT_TRUE(remote.run_until([&] { return first->done; }));
  ASSERT_FALSE(first->ok());
  EXPECT_EQ(first->error().code, errc::unsupported_parameter);
  EXPECT_EQ(remote.rt->embedding_dimensions(), 4u);
  call.dimensions = 4;
  auto fits = std::make_shared<done_with<rr::embed_result>>();
  spawn(remote, do_embed(*remote.rt, call, fits), fits, nullptr);
  ASSERT_TRUE(remote.run_until([&] { return fits->done; }));
  ASSERT_TRUE(fits->ok());
  EXPECT_EQ(fits->value().cached, (std::vector<bool>{true}));
}

TEST(RuntimeEmbed, BackendErrorsAndShortAnswersAreErrorsAndNotCached) {
  harness h(kind(ray::config::model_kind::embedding));
  h.be.open();
  h.be.drop_vectors = 1;
  auto shortened = embed(h, {"a", "b"});
  ASSERT_TRUE(h.run_until([&] { return shortened->done; }));
  ASSERT_FALSE(shortened->ok());
  EXPECT_EQ(shortened->error().code, errc::provider_invalid_response);
  h.be.drop_vectors = 0;
  h.be.next = mode::fail;
  auto failed = embed(h, {"a"});
  ASSERT_TRUE(h.run_until([&] { return failed->done; }));
  ASSERT_FALSE(failed->ok());
  EXPECT_EQ(failed->error().code, errc::provider_upstream_error);
  h.be.next = mode::answer;
  auto fine = embed(h, {"a"});
  ASSERT_TRUE(h.run_until([&] { return fine->done; }));
  ASSERT_TRUE(fine->ok());
  EXPECT_EQ(fine->value().cached, (std::vector<bool>{false}));
  EXPECT_EQ(h.counter("backend.requests{outcome=error}"), 2u);
  EXPECT_TRUE(h.drained());
}

// ---- rerank -----------------------------------------------------------------------------------------------

TEST(RuntimeRerank, ResultsComeBestFirstCutToTopNAndAreNeverCached) {
  harness h(kind(ray::config::model_kind::rerank));
  h.be.open();
  auto r = rerank(h, "abc", {"x", "abc", "ab"}, 2);
  ASSERT_TRUE(h.run_until([&] { return r->done; }));
  ASSERT_TRUE(r->ok()) << r->error().message;
  auto const& res = r->value().results;
  ASSERT_EQ(res.size(), 2u);
  EXPECT_EQ(res[0].index, 1u);
  EXPECT_EQ(res[0].score, 3);
  EXPECT_EQ(res[1].index, 2u);
  EXPECT_EQ(r->value().prompt_tokens, 3u);
  auto again = rerank(h, "abc", {"x", "abc", "ab"}, 2);
  ASSERT_TRUE(h.run_until([&] { return again->done; }));
  ASSERT_TRUE(again->ok());
  EXPECT_EQ(h.be.aux_calls.size(), 2u);
  EXPECT_EQ(h.counter("cache.hits"), 0u);
}

TEST(RuntimeRerank, TheClientLeavingCancelsTheCall) {
  harness h(kind(ray::config::model_kind::rerank));
  auto* sig = h.signal();
  auto r = rerank(h, "q", {"d1", "d2"}, std::nullopt, sig);
  h.settle();
  ASSERT_EQ(h.be.aux_calls.size(), 1u);
  sig->emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(h.run_until([&] { return r->done && h.be.aux_calls[0]->cancelled; }));
  ASSERT_FALSE(r->ok());
  ASSERT_TRUE(h.run_until([&] { return h.drained(); }));
}
