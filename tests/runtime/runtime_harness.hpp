// The backend double and the harness of the ray::runtime unit tests (runtime_test.cpp,
// runtime_failure_test.cpp).
//
// Every test runs on its own io_context and waits on events only: a gated backend call finishes when the test
// releases it, and `settle()` runs the handlers that are ready without waiting. The harness drains the
// context (releasing every gate) before the runtime and the backend are destroyed, so no spawned frame
// outlives what it points into.
#pragma once

#include "ray/runtime/runtime.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace runtime_test {

namespace asio = boost::asio;
namespace rr = ray::runtime;
namespace rb = ray::backend;
using namespace std::chrono_literals;
using ray::errc;

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// ---- the backend double ----------------------------------------------------------------------------------

// What generate() does with the next calls.
enum class mode { answer, fail, throw_now, throw_inside };

class test_backend final : public rb::backend {
 public:
  // One generate() call as the test sees it.
  struct call {
    explicit call(asio::any_io_executor const& ex) : gate(ex, std::chrono::steady_clock::time_point::max()) {}
    rb::generation_request req;
    asio::steady_timer gate;
    bool released{false};
    bool cancelled{false};  // the call saw its cancellation (the runtime stopped it)
    bool finished{false};   // the call returned its answer
    void release() {
      released = true;
      gate.cancel();
    }
  };

  explicit test_backend(asio::any_io_executor ex) : ex_(std::move(ex)) {}

  // Knobs, read when a call starts.
  rb::description desc{"test-model", "mock", 4096, 0, 4, "test:1"};
  mode next{mode::answer};
  bool hold{true};                  // calls wait for release() (or open())
  std::vector<std::string> pre{};   // deltas streamed before waiting on the gate
  std::vector<std::string> post{};  // deltas streamed after it; both empty = one delta "out:<input>"
  std::optional<std::uint32_t> exact_prompt_tokens{};  // count_prompt_tokens' answer
  std::function<void()> restart_hook{};
  std::vector<std::shared_ptr<call>> calls;

  // Releases every call and lets later ones through at once.
  void open() {
    hold = false;
    for (auto& c : calls)
      c->release();
    for (auto& c : aux_calls)
      c->release();
  }

  // ---- embed() and rerank(): gated like generate() (hold/open/release), `next` = answer or fail.
  struct aux_call : call {
    using call::call;
    rb::embedding_request embed;
    rb::rerank_request rerank;
    bool is_rerank{false};
  };
  std::vector<std::shared_ptr<aux_call>> aux_calls;
  std::uint32_t dims{4};
  std::size_t drop_vectors{0};  // answers this many vectors fewer than asked (a broken backend)
  // The double's vector of a text (what a test expects back): {length, first byte, last byte, 1, 0…}.
  static std::vector<float> vector_of(std::string const& text, std::uint32_t dims = 4) {
    std::vector<float> v(dims, 0.0f);
    float const parts[] = {static_cast<float>(text.size()),
                           text.empty() ? 0.0f : static_cast<float>(static_cast<unsigned char>(text.front())),
                           text.empty() ? 0.0f : static_cast<float>(static_cast<unsigned char>(text.back())),
                           1.0f};
    for (std::size_t i = 0; i < v.size() && i < std::size(parts); ++i)
      v[i] = parts[i];
    return v;
  }
  // Rerank score: the number of bytes of the query found in the document (deterministic, testable order).
  static double score_of(std::string const& query, std::string const& doc) {
    double s = 0;
    for (char c : query)
      s += doc.find(c) != std::string::npos ? 1 : 0;
    return s;
  }
  asio::awaitable<ray::result<rb::embedding_result>> embed(rb::embedding_request req) override {
    auto c = std::make_shared<aux_call>(ex_);
    c->embed = std::move(req);
    aux_calls.push_back(c);
    return run_embed(c, next, hold, dims, drop_vectors);
  }
  asio::awaitable<ray::result<rb::rerank_result>> rerank(rb::rerank_request req) override {
    auto c = std::make_shared<aux_call>(ex_);
    c->rerank = std::move(req);
    c->is_rerank = true;
    aux_calls.push_back(c);
    return run_rerank(c, next, hold);
  }
  std::vector<std::shared_ptr<aux_call>> embed_calls() const {
    std::vector<std::shared_ptr<aux_call>> out;
    for (auto const& c : aux_calls)
      if (!c->is_rerank) out.push_back(c);
    return out;
  }

  rb::state current_state() const noexcept override { return rb::state::ready; }
  rb::description describe() const override { return desc; }
  void on_restart(std::function<void()> fn) override { restart_hook = std::move(fn); }
  void start() override {}
  void stop() override {}
  std::uint64_t requests_total() const noexcept override { return requests_; }

  bool throw_counting{false};  // count_prompt_tokens throws (an exception before any flight exists)
  asio::awaitable<std::optional<std::uint32_t>> count_prompt_tokens(std::string, std::string) override {
    if (throw_counting) throw std::runtime_error("tokenizer exploded");
    co_return exact_prompt_tokens;
  }

  // Not a coroutine itself, so throw_now throws from the call expression, before any awaitable exists.
  asio::awaitable<ray::result<rb::generation_result>> generate(rb::generation_request req,
                                                               rb::token_sink* sink) override {
    ++requests_;
    auto c = std::make_shared<call>(ex_);
    c->req = std::move(req);
    calls.push_back(c);
    if (next == mode::throw_now) throw std::runtime_error("backend exploded before starting");
    return run(c, sink, next, hold, pre, post);
  }

 private:
  static asio::awaitable<ray::result<rb::generation_result>> run(std::shared_ptr<call> c,
                                                                 rb::token_sink* sink, mode m, bool hold,
                                                                 std::vector<std::string> pre,
                                                                 std::vector<std::string> post) {
    co_await asio::this_coro::throw_if_cancelled(false);
    auto cs = co_await asio::this_coro::cancellation_state;
    if (m == mode::throw_inside) throw std::runtime_error("backend exploded mid-call");
    if (m == mode::fail) co_return ray::error{errc::provider_upstream_error, "upstream refused"};
    rb::generation_result out;
    auto emit = [&](std::string const& d) {
      out.text += d;
      if (sink) sink->on_delta(d);
    };
    for (auto const& d : pre)
      emit(d);
    while (hold && !c->released) {
      if (cs.cancelled() != asio::cancellation_type::none) {
        c->cancelled = true;
        co_return ray::error{errc::provider_request_failed, "generation cancelled"};
      }
      co_await c->gate.async_wait(use_tuple);
    }
    for (auto const& d : post)
      emit(d);
    if (pre.empty() && post.empty())
      emit("out:" + (c->req.messages.empty() ? c->req.prompt : c->req.messages.back().content));
    out.prompt_tokens = 7;
    out.completion_tokens = static_cast<std::uint32_t>(pre.size() + post.size());
    c->finished = true;
    co_return out;
  }

  // Waits for the gate (or the cancellation); false when cancelled.
  // `c` is kept alive by the caller's shared_ptr.
  static asio::awaitable<bool> wait_gate(call& c, bool hold) {
    co_await asio::this_coro::throw_if_cancelled(false);
    auto cs = co_await asio::this_coro::cancellation_state;
    while (hold && !c.released) {
      if (cs.cancelled() != asio::cancellation_type::none) {
        c.cancelled = true;
        co_return false;
      }
      co_await c.gate.async_wait(use_tuple);
    }
    co_return true;
  }
  static asio::awaitable<ray::result<rb::embedding_result>> run_embed(std::shared_ptr<aux_call> c, mode m,
                                                                      bool hold, std::uint32_t dims,
                                                                      std::size_t drop) {
    if (m == mode::fail) co_return ray::error{errc::provider_upstream_error, "upstream refused"};
    if (!co_await wait_gate(*c, hold)) co_return ray::error{errc::provider_request_failed, "embed cancelled"};
    rb::embedding_result out;
    for (auto const& in : c->embed.inputs)
      out.vectors.push_back(vector_of(in, dims));
    out.vectors.resize(out.vectors.size() - std::min(drop, out.vectors.size()));
    out.prompt_tokens = static_cast<std::uint32_t>(10 * c->embed.inputs.size());
    c->finished = true;
    co_return out;
  }
  static asio::awaitable<ray::result<rb::rerank_result>> run_rerank(std::shared_ptr<aux_call> c, mode m,
                                                                    bool hold) {
    if (m == mode::fail) co_return ray::error{errc::provider_upstream_error, "upstream refused"};
    if (!co_await wait_gate(*c, hold))
      co_return ray::error{errc::provider_request_failed, "rerank cancelled"};
    rb::rerank_result out;
    auto const& docs = c->rerank.documents;
    for (std::size_t i = 0; i < docs.size(); ++i)  // in document order: the runtime sorts
      out.results.push_back({static_cast<std::uint32_t>(i), score_of(c->rerank.query, docs[i])});
    out.prompt_tokens = 3;
    c->finished = true;
    co_return out;
  }

  asio::any_io_executor ex_;
  std::uint64_t requests_{0};
};

// ---- the harness -----------------------------------------------------------------------------------------

struct outcome {
  bool done{false};
  std::exception_ptr escaped{};
  std::optional<ray::result<rr::infer_result>> r{};

  bool ok() const { return r && r->has_value(); }
  rr::infer_result const& value() const { return r->value(); }
  ray::error error() const { return r->error(); }
};
using outcome_ptr = std::shared_ptr<outcome>;

class recorder final : public rr::stream_listener {
 public:
  std::vector<std::string> deltas;
  void on_text(std::string_view d) override { deltas.emplace_back(d); }
};

inline asio::awaitable<void> do_infer(rr::runtime& rt, rr::infer_request req, outcome_ptr o) {
  auto r = co_await rt.infer(std::move(req));
  o->r.emplace(std::move(r));
}

inline asio::awaitable<void> do_chat(rr::runtime& rt, rr::chat_request req, rr::stream_listener* l,
                                     outcome_ptr o) {
  auto r = co_await rt.chat(std::move(req), l);
  o->r.emplace(std::move(r));
}

inline ray::config::config base_config() {
  auto cfg = ray::config::profile_defaults("tiny");
  EXPECT_TRUE(cfg.has_value());
  return *cfg;
}

inline rr::infer_request infer_req(std::string input, bool cache = true) {
  rr::infer_request q;
  q.input = std::move(input);
  q.cache = cache;
  return q;
}

inline rr::chat_request chat_req(std::string content, bool cacheable = true) {
  rr::chat_request q;
  q.messages.push_back(rb::chat_message{.role = "user", .content = content});
  q.temperature = 0.0;
  q.cacheable = cacheable;
  q.canonical = "user:" + content;
  return q;
}

struct harness {
  explicit harness(std::function<void(ray::config::config&)> const& tweak = {})
      : cfg(base_config()), be(io.get_executor()) {
    if (tweak) tweak(cfg);
    rt = std::make_unique<rr::runtime>(io.get_executor(), cfg, be, metrics, log);
  }
  // Every spawned frame finishes before the runtime and the backend go.
  ~harness() {
    be.open();
    io.restart();
    io.run();
  }
  harness(harness const&) = delete;
  harness& operator=(harness const&) = delete;

  void spawn(asio::awaitable<void> work, outcome_ptr const& o, asio::cancellation_signal* sig) {
    auto handler = [o](std::exception_ptr e) {
      o->escaped = e;
      o->done = true;
    };
    if (sig)
      asio::co_spawn(io, std::move(work), asio::bind_cancellation_slot(sig->slot(), handler));
    else
      asio::co_spawn(io, std::move(work), handler);
  }
  // Cancelling `sig` (emit terminal) is how a client that leaves is modelled.
  outcome_ptr infer(rr::infer_request req, asio::cancellation_signal* sig = nullptr) {
    auto o = std::make_shared<outcome>();
    spawn(do_infer(*rt, std::move(req), o), o, sig);
    return o;
  }
  outcome_ptr chat(rr::chat_request req, rr::stream_listener* l = nullptr,
                   asio::cancellation_signal* sig = nullptr) {
    auto o = std::make_shared<outcome>();
    spawn(do_chat(*rt, std::move(req), l, o), o, sig);
    return o;
  }
  asio::cancellation_signal* signal() { return &signals.emplace_back(); }

  // Runs the handlers that are ready now, without waiting for time to pass.
  void settle() {
    io.restart();
    io.poll();
  }
  // Runs until `done` holds. The bound only turns a hang into a failure; nothing asserts on time.
  bool run_until(std::function<bool()> const& done) {
    io.restart();
    while (!done())
      if (io.run_one_for(20s) == 0) return done();
    return true;
  }
  static bool all_done(std::vector<outcome_ptr> const& v) {
    return std::all_of(v.begin(), v.end(), [](auto const& o) { return o->done; });
  }
  bool drained() const {
    auto s = rt->stats();
    return s.queue_depth == 0 && s.in_flight == 0 && s.queued_tokens == 0 && s.in_flight_tokens == 0;
  }
  std::uint64_t counter(std::string const& key) const {
    std::string text;
    metrics.render_json(text);
    auto v = boost::json::parse(text);
    auto const* c = v.at("counters").as_object().if_contains(key);
    return c ? c->to_number<std::uint64_t>() : 0;
  }

  asio::io_context io;
  ray::config::config cfg;
  ray::telemetry::registry metrics{{.standard_series = false}};
  ray::telemetry::logger log{
      {.service = "runtime-test", .min_level = ray::telemetry::level::error, .synchronous = true}};
  test_backend be;
  std::deque<asio::cancellation_signal> signals;  // outlive the frames bound to them (destroyed after drain)
  std::unique_ptr<rr::runtime> rt;
};

}  // namespace runtime_test
