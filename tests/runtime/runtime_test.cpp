// Unit tests of ray::runtime (src/ray/runtime): overload, single-flight, cache, deadlines, context clamping,
// streaming fan-out and metrics, against the backend double of runtime_harness.hpp.
#include "runtime_harness.hpp"

#include <gtest/gtest.h>

using namespace runtime_test;

// ---- 1. overload ------------------------------------------------------------------------------------------

TEST(RuntimeOverload, AdmitsConcurrencyPlusMaxQueueAndRefusesTheRestWithRetryAfter) {
  harness h([](auto& c) {
    c.scheduler.concurrency = 1;
    c.scheduler.max_queue = 2;
    c.cache.enabled = false;
  });
  std::vector<outcome_ptr> all;
  for (int i = 0; i < 7; ++i)
    all.push_back(h.infer(infer_req("distinct request " + std::to_string(i))));
  h.settle();

  // One dispatched, two waiting, four refused at once.
  EXPECT_EQ(h.be.calls.size(), 1u);
  auto mid = h.rt->stats();
  EXPECT_EQ(mid.in_flight, 1u);
  EXPECT_EQ(mid.queue_depth, 2u);
  EXPECT_GT(mid.in_flight_tokens, 0u);
  EXPECT_GT(mid.queued_tokens, 0u);
  int refused = 0;
  for (auto const& o : all) {
    if (!o->done) continue;
    ++refused;
    ASSERT_FALSE(o->ok());
    EXPECT_EQ(o->error().code, errc::queue_full);
    ASSERT_TRUE(o->error().retry_after_ms.has_value());
    EXPECT_GT(*o->error().retry_after_ms, 0);
  }
  EXPECT_EQ(refused, 4);

  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return harness::all_done(all); }));
  int ok = 0;
  for (auto const& o : all) {
    EXPECT_FALSE(o->escaped);
    ok += o->ok();
  }
  EXPECT_EQ(ok, 3);
  EXPECT_EQ(h.be.requests_total(), 3u);
  EXPECT_TRUE(h.drained());
  EXPECT_EQ(h.counter("rejections{reason=queue_full}"), 4u);
}

TEST(RuntimeOverload, TokenBudgetOverflowIsRefusedBeforeTheBackend) {
  harness h([](auto& c) { c.scheduler.max_inflight_tokens = 50; });
  auto q = infer_req("fits the context, not the budget");
  q.max_tokens = 100;
  auto o = h.infer(q);
  ASSERT_TRUE(h.run_until([&] { return o->done; }));
  ASSERT_FALSE(o->ok());
  EXPECT_EQ(o->error().code, errc::request_token_budget_exceeded);
  EXPECT_TRUE(h.be.calls.empty());
  EXPECT_TRUE(h.drained());
}

TEST(RuntimeOverload, QueueDepthClampsPlainRequestsAndRefusesJsonMode) {
  harness h([](auto& c) {
    c.scheduler.concurrency = 1;
    c.graceful_degradation.queue_depth_threshold = 1;
    c.graceful_degradation.degrade_to_max_tokens = 16;
  });
  auto a = h.infer(infer_req("first, dispatched"));
  auto b = h.infer(infer_req("second, waits"));
  h.settle();
  ASSERT_EQ(h.rt->stats().queue_depth, 1u);
  auto c = h.infer(infer_req("third, degraded"));
  auto json = infer_req("fourth, json");
  json.response_format = "json_object";
  auto d = h.infer(json);
  ASSERT_TRUE(h.run_until([&] { return d->done; }));
  ASSERT_FALSE(d->ok());
  EXPECT_EQ(d->error().code, errc::overloaded);
  ASSERT_TRUE(d->error().retry_after_ms.has_value());
  EXPECT_GT(*d->error().retry_after_ms, 0);

  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return harness::all_done({a, b, c}); }));
  ASSERT_TRUE(c->ok());
  auto const& deg = c->value().degradation;
  EXPECT_TRUE(deg.applied);
  EXPECT_EQ(deg.applied_max_tokens, 16u);
  EXPECT_NE(std::find(deg.reasons.begin(), deg.reasons.end(), "queue_depth"), deg.reasons.end());
  auto degraded_call = std::find_if(h.be.calls.begin(), h.be.calls.end(),
                                    [](auto const& k) { return k->req.prompt == "third, degraded"; });
  ASSERT_NE(degraded_call, h.be.calls.end());
  EXPECT_EQ((*degraded_call)->req.max_tokens, 16u);

  // A degraded answer is not stored: the same request on an idle gateway reaches the backend again.
  auto again = h.infer(infer_req("third, degraded"));
  ASSERT_TRUE(h.run_until([&] { return again->done; }));
  ASSERT_TRUE(again->ok());
  EXPECT_FALSE(again->value().cached);
  EXPECT_FALSE(again->value().degradation.applied);
  EXPECT_EQ(h.be.requests_total(), 4u);
  EXPECT_TRUE(h.drained());
}

// ---- 2. single-flight ------------------------------------------------------------------------------------

TEST(RuntimeDedupe, IdenticalConcurrentRequestsShareOneBackendCall) {
  harness h;
  std::vector<outcome_ptr> all;
  for (int i = 0; i < 5; ++i)
    all.push_back(h.infer(infer_req("same question")));
  h.settle();
  EXPECT_EQ(h.be.calls.size(), 1u);
  EXPECT_EQ(h.rt->stats().in_flight, 1u);
  EXPECT_EQ(h.rt->stats().queue_depth, 0u);  // joiners take no queue place

  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return harness::all_done(all); }));
  int joined = 0;
  for (auto const& o : all) {
    ASSERT_TRUE(o->ok());
    EXPECT_EQ(o->value().output, "out:same question");
    joined += o->value().deduplicated;
  }
  EXPECT_EQ(joined, 4);
  EXPECT_EQ(h.be.requests_total(), 1u);
  EXPECT_EQ(h.counter("dedupe.joins"), 4u);
  EXPECT_TRUE(h.drained());
}

TEST(RuntimeDedupe, DedupeKeyIsScopedToTheCaller) {
  harness h([](auto& c) { c.scheduler.concurrency = 2; });
  auto keyed = [](std::string input, std::string caller) {
    auto q = infer_req(std::move(input), false);
    q.dedupe_key = "shared-key";
    q.caller = std::move(caller);
    return q;
  };
  auto a1 = h.infer(keyed("alice asks", "alice"));
  auto a2 = h.infer(keyed("alice asks again", "alice"));
  auto b1 = h.infer(keyed("bob asks", "bob"));
  h.settle();
  EXPECT_EQ(h.be.calls.size(), 2u);  // alice's pair shares; bob never receives alice's answer
  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return harness::all_done({a1, a2, b1}); }));
  ASSERT_TRUE(a1->ok() && a2->ok() && b1->ok());
  EXPECT_EQ(a2->value().output, a1->value().output);
  EXPECT_TRUE(a2->value().deduplicated);
  EXPECT_FALSE(b1->value().deduplicated);
  EXPECT_EQ(b1->value().output, "out:bob asks");
}

// ---- 3. result cache -------------------------------------------------------------------------------------

TEST(RuntimeCache, SecondIdenticalRequestIsAHitUnlessCacheIsOff) {
  harness h;
  h.be.hold = false;
  auto first = h.infer(infer_req("cache me"));
  ASSERT_TRUE(h.run_until([&] { return first->done; }));
  ASSERT_TRUE(first->ok());
  EXPECT_FALSE(first->value().cached);

  auto hit = h.infer(infer_req("cache me"));
  ASSERT_TRUE(h.run_until([&] { return hit->done; }));
  ASSERT_TRUE(hit->ok());
  EXPECT_TRUE(hit->value().cached);
  EXPECT_EQ(hit->value().output, first->value().output);
  EXPECT_EQ(h.be.requests_total(), 1u);
  EXPECT_EQ(h.rt->cache_stats().hits, 1u);

  auto off = h.infer(infer_req("cache me", false));
  ASSERT_TRUE(h.run_until([&] { return off->done; }));
  ASSERT_TRUE(off->ok());
  EXPECT_FALSE(off->value().cached);
  EXPECT_EQ(h.be.requests_total(), 2u);
}

TEST(RuntimeCache, BackendRestartEmptiesTheCache) {
  harness h;
  h.be.hold = false;
  auto first = h.infer(infer_req("model answer"));
  ASSERT_TRUE(h.run_until([&] { return first->done; }));
  ASSERT_EQ(h.rt->cache_stats().entries, 1u);
  ASSERT_TRUE(h.be.restart_hook);
  h.be.restart_hook();
  EXPECT_EQ(h.rt->cache_stats().entries, 0u);
  auto second = h.infer(infer_req("model answer"));
  ASSERT_TRUE(h.run_until([&] { return second->done; }));
  ASSERT_TRUE(second->ok());
  EXPECT_FALSE(second->value().cached);
  EXPECT_EQ(h.be.requests_total(), 2u);
}

// Issue 12 (cache.scope): with the default `key`, callers with different API keys share neither a cached nor
// a deduplicated answer — a shared one would tell one key, by timing, what another asked; `global` shares
// both.
TEST(RuntimeCache, CacheAndDedupeAreScopedToTheCallerUnlessScopeIsGlobal) {
  for (auto scope : {ray::config::cache_scope::key, ray::config::cache_scope::global}) {
    bool const global = scope == ray::config::cache_scope::global;
    SCOPED_TRACE(global ? "cache.scope global" : "cache.scope key");
    harness h([&](auto& c) {
      c.scheduler.concurrency = 2;
      c.cache.scope = scope;
    });
    auto as = [](std::string caller) {
      auto q = infer_req("what did the others ask?");
      q.caller = std::move(caller);
      return q;
    };
    // Concurrent: bob joins alice's flight only when sharing is allowed.
    auto a = h.infer(as("alice"));
    auto b = h.infer(as("bob"));
    auto a2 = h.infer(as("alice"));
    h.settle();
    EXPECT_EQ(h.be.calls.size(), global ? 1u : 2u);
    h.be.open();
    ASSERT_TRUE(h.run_until([&] { return harness::all_done({a, b, a2}); }));
    ASSERT_TRUE(a->ok() && b->ok() && a2->ok());
    EXPECT_TRUE(a2->value().deduplicated);  // the same caller always shares
    EXPECT_EQ(b->value().deduplicated, global);
    // Afterwards: a cache hit for carol only when sharing is allowed; alice's own repeat is always one.
    h.be.hold = false;
    auto c = h.infer(as("carol"));
    auto a3 = h.infer(as("alice"));
    ASSERT_TRUE(h.run_until([&] { return harness::all_done({c, a3}); }));
    ASSERT_TRUE(c->ok() && a3->ok());
    EXPECT_EQ(c->value().cached, global);
    EXPECT_TRUE(a3->value().cached);
    EXPECT_TRUE(h.drained());
  }
}

// ---- 4. deadlines ----------------------------------------------------------------------------------------

TEST(RuntimeDeadline, QueueTimeoutFailsTheWaitingRequestAndFreesItsPlace) {
  harness h([](auto& c) {
    c.scheduler.concurrency = 1;
    c.scheduler.queue_timeout_ms = 1;
  });
  auto a = h.infer(infer_req("occupies the slot"));
  auto b = h.infer(infer_req("waits too long"));
  ASSERT_TRUE(h.run_until([&] { return b->done; }));
  ASSERT_FALSE(b->ok());
  EXPECT_EQ(b->error().code, errc::request_timeout);
  auto s = h.rt->stats();
  EXPECT_EQ(s.queue_depth, 0u);
  EXPECT_EQ(s.queued_tokens, 0u);
  EXPECT_EQ(s.in_flight, 1u);
  EXPECT_EQ(h.counter("cancellations{phase=queued}"), 1u);

  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return a->done; }));
  EXPECT_TRUE(a->ok());
  EXPECT_EQ(h.be.calls.size(), 1u);  // the timed-out request never reached the backend
  EXPECT_TRUE(h.drained());
}

TEST(RuntimeDeadline, RequestTimeoutCancelsTheBackendCall) {
  harness h([](auto& c) {
    c.scheduler.concurrency = 1;
    c.scheduler.request_timeout_ms = 30;
  });
  auto a = h.infer(infer_req("never answered"));
  auto b = h.infer(infer_req("queued behind it"));
  ASSERT_TRUE(h.run_until([&] { return a->done && b->done; }));
  for (auto const& o : {a, b}) {
    ASSERT_FALSE(o->ok());
    EXPECT_EQ(o->error().code, errc::request_timeout);
  }
  ASSERT_TRUE(h.run_until([&] { return h.drained(); }));
  ASSERT_FALSE(h.be.calls.empty());
  for (auto const& c : h.be.calls) {
    EXPECT_TRUE(c->cancelled);  // a slot is not counted free while the backend still works on it
    EXPECT_FALSE(c->finished);
  }
  EXPECT_EQ(h.counter("backend.requests{outcome=timeout}"), h.be.calls.size());
}

TEST(RuntimeDeadline, DeadlineDuringGenerationReturnsThePartialTextUncached) {
  harness h([](auto& c) { c.scheduler.request_timeout_ms = 30; });
  h.be.pre = {"par", "tial"};
  auto a = h.infer(infer_req("slow answer"));
  ASSERT_TRUE(h.run_until([&] { return a->done; }));
  ASSERT_TRUE(a->ok());
  EXPECT_TRUE(a->value().truncated_by_deadline);
  EXPECT_EQ(a->value().output, "partial");
  EXPECT_EQ(a->value().finish_reason, "length");
  ASSERT_TRUE(h.run_until([&] { return h.drained(); }));
  EXPECT_EQ(h.rt->cache_stats().entries, 0u);
}

// ---- 7. context ------------------------------------------------------------------------------------------

TEST(RuntimeContext, ChatMaxTokensUint32MaxIsClampedToTheContextLeft) {
  harness h;
  h.be.desc.context_per_request = 64;
  h.be.hold = false;
  auto q = chat_req(std::string(40, 'a'));  // 10 tokens + 4 of template = 14
  q.max_tokens = UINT32_MAX;
  auto o = h.chat(q);
  ASSERT_TRUE(h.run_until([&] { return o->done; }));
  ASSERT_TRUE(o->ok()) << o->error().message;
  EXPECT_EQ(o->value().degradation.requested_max_tokens, UINT32_MAX);
  EXPECT_EQ(o->value().degradation.applied_max_tokens, 50u);
  ASSERT_EQ(h.be.calls.size(), 1u);
  EXPECT_EQ(h.be.calls[0]->req.max_tokens, 50u);
  EXPECT_TRUE(h.drained());
}

TEST(RuntimeContext, ChatPromptThatDoesNotFitIsContextLengthExceeded) {
  harness h;
  h.be.desc.context_per_request = 64;
  auto q = chat_req(std::string(400, 'a'));  // 100 + 4 tokens
  q.max_tokens = UINT32_MAX;
  auto o = h.chat(q);
  ASSERT_TRUE(h.run_until([&] { return o->done; }));
  ASSERT_FALSE(o->ok());
  auto const& e = o->error();
  EXPECT_EQ(e.code, errc::context_length_exceeded);
  EXPECT_EQ(e.param, "messages");
  EXPECT_EQ(e.details.at("contextWindow").to_number<std::uint64_t>(), 64u);
  EXPECT_EQ(e.details.at("promptTokens").to_number<std::uint64_t>(), 104u);
  EXPECT_EQ(e.details.at("completionTokens").to_number<std::uint64_t>(), UINT32_MAX);
  EXPECT_NE(e.message.find(std::to_string(104ull + UINT32_MAX)), std::string::npos) << e.message;
  EXPECT_TRUE(h.be.calls.empty());
  EXPECT_EQ(h.counter("rejections{reason=context_length_exceeded}"), 1u);
}

TEST(RuntimeContext, ContextLengthExceededTotalsIn64Bits) {
  auto e = rr::context_length_exceeded(4096, UINT32_MAX, UINT32_MAX);
  EXPECT_EQ(e.code, errc::context_length_exceeded);
  EXPECT_NE(e.message.find("8589934590 tokens"), std::string::npos) << e.message;
  EXPECT_EQ(e.details.at("promptTokens").to_number<std::uint64_t>(), UINT32_MAX);
  EXPECT_EQ(e.details.at("completionTokens").to_number<std::uint64_t>(), UINT32_MAX);
}

TEST(RuntimeContext, InferDefaultedMaxTokensIsClampedAndExplicitOneIsRefused) {
  harness h;
  h.be.desc.context_per_request = 64;
  h.be.hold = false;
  auto defaulted = h.infer(infer_req(std::string(80, 'b')));  // 20 tokens; default 192 → 44 left
  ASSERT_TRUE(h.run_until([&] { return defaulted->done; }));
  ASSERT_TRUE(defaulted->ok()) << defaulted->error().message;
  EXPECT_EQ(defaulted->value().degradation.applied_max_tokens, 44u);

  auto q = infer_req(std::string(80, 'c'));
  q.max_tokens = 100;
  auto explicit_ = h.infer(q);
  ASSERT_TRUE(h.run_until([&] { return explicit_->done; }));
  ASSERT_FALSE(explicit_->ok());
  auto const& e = explicit_->error();
  EXPECT_EQ(e.code, errc::request_context_window_exceeded);
  EXPECT_EQ(e.details.at("totalTokens").to_number<std::uint64_t>(), 120u);
  EXPECT_EQ(h.be.requests_total(), 1u);
}

// ---- 8. streaming ----------------------------------------------------------------------------------------

TEST(RuntimeStream, LateJoinerReplaysEveryDeltaSoBothSeeTheSameSequence) {
  harness h;
  h.be.pre = {"Hel", "lo"};
  h.be.post = {" wor", "ld"};
  recorder early, late;
  auto a = h.chat(chat_req("greet"), &early);
  h.settle();
  ASSERT_EQ(early.deltas, (std::vector<std::string>{"Hel", "lo"}));
  auto b = h.chat(chat_req("greet"), &late);
  h.settle();
  EXPECT_EQ(late.deltas, early.deltas);  // caught up before anything new arrives

  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return a->done && b->done; }));
  std::vector<std::string> const all{"Hel", "lo", " wor", "ld"};
  EXPECT_EQ(early.deltas, all);
  EXPECT_EQ(late.deltas, all);
  ASSERT_TRUE(a->ok() && b->ok());
  EXPECT_EQ(a->value().output, "Hello world");
  EXPECT_EQ(b->value().output, "Hello world");
  EXPECT_TRUE(b->value().deduplicated);
  EXPECT_EQ(h.be.requests_total(), 1u);
  EXPECT_TRUE(h.drained());
}

TEST(RuntimeStream, NonCacheableStreamsDoNotJoin) {
  harness h([](auto& c) { c.scheduler.concurrency = 2; });
  recorder one, two;
  auto a = h.chat(chat_req("creative", false), &one);
  auto b = h.chat(chat_req("creative", false), &two);
  h.settle();
  EXPECT_EQ(h.be.calls.size(), 2u);
  h.be.open();
  ASSERT_TRUE(h.run_until([&] { return a->done && b->done; }));
  EXPECT_EQ(one.deltas, (std::vector<std::string>{"out:creative"}));
  EXPECT_EQ(two.deltas, one.deltas);
  EXPECT_FALSE(b->value().deduplicated);
}

// ---- metrics ---------------------------------------------------------------------------------------------

TEST(RuntimeMetrics, CountRejectionShowsUnderItsReason) {
  harness h;
  h.rt->count_rejection(errc::body_too_large);
  h.rt->count_rejection(errc::body_too_large);
  EXPECT_EQ(h.counter("rejections{reason=body_too_large}"), 2u);
}

// Finding (fixed): infer()'s context error computed totalTokens = prompt_tokens + maxTokens in 32 bits, so a
// backend count near UINT32_MAX (count_prompt_tokens is backend input) wrapped it.
TEST(RuntimeContext, InferContextErrorTotalIsComputedIn64Bits) {
  harness h;
  h.be.desc.context_per_request = 64;
  h.be.exact_prompt_tokens = UINT32_MAX - 10;
  auto q = infer_req(std::string(80, 'd'));
  q.max_tokens = 100;
  auto o = h.infer(q);
  ASSERT_TRUE(h.run_until([&] { return o->done; }));
  ASSERT_FALSE(o->ok());
  EXPECT_EQ(o->error().code, errc::request_context_window_exceeded);
  EXPECT_EQ(o->error().details.at("totalTokens").to_number<std::uint64_t>(), std::uint64_t{UINT32_MAX} + 90);
}
