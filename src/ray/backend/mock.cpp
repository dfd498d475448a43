#include "ray/backend/backend.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace ray::backend {

std::string_view state_name(state s) noexcept {
  switch (s) {
    case state::unknown:
      return "unknown";
    case state::starting:
      return "starting";
    case state::loading:
      return "loading";
    case state::warming:
      return "warming";
    case state::ready:
      return "ready";
    case state::degraded:
      return "degraded";
    case state::unreachable:
      return "unreachable";
    case state::restarting:
      return "restarting";
    case state::failed:
      return "failed";
    case state::misconfigured:
      return "misconfigured";
  }
  return "unknown";
}

namespace {

constexpr auto use_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);

class mock_backend final : public backend {
 public:
  mock_backend(boost::asio::any_io_executor ex, config::config const& cfg)
      : ex_(std::move(ex)),
        model_id_(cfg.model.id),
        header_("[ray:mock model=" + cfg.model.id + " profile=" + cfg.profile +
                " seed=" + cfg.model.adapter.seed + "]\n"),
        latency_(cfg.model.adapter.latency_ms),
        tokens_per_second_(cfg.model.adapter.tokens_per_second),
        context_(cfg.model.context_window),
        seed_(cfg.model.adapter.seed),
        dimensions_(cfg.model.adapter.dimensions) {}

  state current_state() const noexcept override { return state::ready; }

  description describe() const override {
    return {model_id_, "mock", context_, context_, 1, "mock:" + model_id_};
  }

  // The Inference Extension load view of the mock's own slots: every generate() in flight is running and
  // holds its prompt plus the tokens streamed so far, out of the one context window (describe().kv_pool).
  details current_details() const override {
    details d;
    d.slots_busy = running_;
    d.requests_deferred = 0;
    if (context_ > 0)
      d.kv_cache_usage = std::min(1.0, static_cast<double>(held_tokens_) / static_cast<double>(context_));
    return d;
  }

  void start() override {}
  void stop() override {}

  boost::asio::awaitable<result<generation_result>> generate(generation_request req,
                                                             token_sink* sink) override {
    ++requests_;
    std::size_t prompt_tokens = estimate_tokens(req.system) + estimate_tokens(req.prompt);
    for (auto const& m : req.messages)
      prompt_tokens += estimate_tokens(m.content);
    // What this call holds of the load view; released however the coroutine ends (cancellation included).
    struct hold {
      mock_backend& be;
      std::uint64_t tokens{0};
      explicit hold(mock_backend& b) : be(b) { ++be.running_; }
      void add(std::uint64_t n) {
        tokens += n;
        be.held_tokens_ += n;
      }
      ~hold() {
        --be.running_;
        be.held_tokens_ -= tokens;
      }
    } held(*this);
    held.add(prompt_tokens);
    auto const started = std::chrono::steady_clock::now();
    boost::asio::steady_timer timer(ex_);
    if (latency_.count() > 0) {
      timer.expires_after(latency_);
      auto [ec] = co_await timer.async_wait(use_tuple);
      if (ec) co_return ray::error{errc::provider_request_failed, "mock generation cancelled"};
    }
    std::string_view input = req.prompt;
    for (auto it = req.messages.rbegin(); it != req.messages.rend(); ++it) {
      if (it->role == "user") {
        input = it->content;
        break;
      }
    }
    std::string full = header_ + std::string(input);
    std::size_t const max_bytes = static_cast<std::size_t>(req.max_tokens) * 4;
    generation_result out;
    if (full.size() > max_bytes) {
      full.resize(utf8_safe_prefix(full, max_bytes));
      out.finish_reason = "length";
    }
    auto const first = std::chrono::steady_clock::now();
    if (tokens_per_second_ == 0 || full.empty()) {
      if (sink && !full.empty()) sink->on_delta(full);
    } else {
      auto const gap = std::chrono::microseconds(1'000'000 / tokens_per_second_);
      std::size_t pos = 0;
      while (pos < full.size()) {
        // One word (with its trailing space or newline) per token.
        std::size_t end = full.find_first_of(" \n", pos);
        end = end == std::string::npos ? full.size() : end + 1;
        if (sink) sink->on_delta(std::string_view(full).substr(pos, end - pos));
        held.add(estimate_tokens(std::string_view(full).substr(pos, end - pos)));
        pos = end;
        if (pos < full.size()) {
          timer.expires_after(gap);
          auto [ec] = co_await timer.async_wait(use_tuple);
          if (ec) co_return ray::error{errc::provider_request_failed, "mock generation cancelled"};
        }
      }
    }
    auto const done = std::chrono::steady_clock::now();
    out.prompt_tokens = static_cast<std::uint32_t>(prompt_tokens);
    out.completion_tokens = static_cast<std::uint32_t>(estimate_tokens(full));
    out.tokens_evaluated = *out.prompt_tokens;
    out.text = std::move(full);
    out.ttft_ms = std::chrono::duration<double, std::milli>(first - started).count();
    out.total_ms = std::chrono::duration<double, std::milli>(done - started).count();
    double decode_s = std::chrono::duration<double>(done - first).count();
    if (tokens_per_second_ > 0 && decode_s > 0)
      out.completion_tokens_per_second = *out.completion_tokens / decode_s;
    co_return out;
  }

  // ---- embeddings and rerank (models.md): deterministic unit vectors seeded by (adapter.seed, text); a
  // rerank score is the dot product of the query's and the document's vectors (an exact match scores 1).
  boost::asio::awaitable<result<embedding_result>> embed(embedding_request req) override {
    if (auto e = co_await wait_latency("mock embedding cancelled")) co_return *e;
    embedding_result out;
    std::uint64_t tokens = 0;
    out.vectors.reserve(req.inputs.size());
    for (auto const& text : req.inputs) {
      out.vectors.push_back(unit_vector(text));
      tokens += byte_tokens(text);
    }
    out.prompt_tokens = clamp_count(tokens);
    co_return out;
  }

  boost::asio::awaitable<result<rerank_result>> rerank(rerank_request req) override {
    if (auto e = co_await wait_latency("mock rerank cancelled")) co_return *e;
    auto const query = unit_vector(req.query);
    rerank_result out;
    std::uint64_t tokens = 0;
    out.results.reserve(req.documents.size());
    for (std::size_t i = 0; i < req.documents.size(); ++i) {
      auto const doc = unit_vector(req.documents[i]);
      double score = 0;
      for (std::size_t d = 0; d < doc.size(); ++d)
        score += static_cast<double>(query[d]) * static_cast<double>(doc[d]);
      out.results.push_back({static_cast<std::uint32_t>(i), score});
      tokens += byte_tokens(req.query) + byte_tokens(req.documents[i]);  // each pair is evaluated
    }
    std::stable_sort(out.results.begin(), out.results.end(),
                     [](rerank_item const& a, rerank_item const& b) { return a.score > b.score; });
    if (req.top_n && *req.top_n < out.results.size()) out.results.resize(*req.top_n);
    out.prompt_tokens = clamp_count(tokens);
    co_return out;
  }

  std::uint64_t requests_total() const noexcept override { return requests_; }

 private:
  // adapter.latencyMs, like generate(); an error when the awaiting coroutine was cancelled meanwhile.
  boost::asio::awaitable<std::optional<ray::error>> wait_latency(char const* cancelled) {
    if (latency_.count() <= 0) co_return std::nullopt;
    boost::asio::steady_timer timer(ex_);
    timer.expires_after(latency_);
    auto [ec] = co_await timer.async_wait(use_tuple);
    if (ec) co_return ray::error{errc::provider_request_failed, cancelled};
    co_return std::nullopt;
  }

  static std::uint64_t byte_tokens(std::string_view text) { return (text.size() + 3) / 4; }
  static std::uint32_t clamp_count(std::uint64_t n) {
    return static_cast<std::uint32_t>(std::min<std::uint64_t>(n, UINT32_MAX));
  }

  // `dimensions_` floats from a splitmix64 stream seeded by FNV-1a of (seed, NUL, text), scaled to norm 1.
  std::vector<float> unit_vector(std::string_view text) const {
    std::uint64_t h = 1469598103934665603ull;
    auto mix_in = [&h](std::string_view s) {
      for (unsigned char c : s) {
        h ^= c;
        h *= 1099511628211ull;
      }
    };
    mix_in(seed_);
    mix_in(std::string_view("\0", 1));
    mix_in(text);
    std::vector<float> v(dimensions_);
    double norm2 = 0;
    for (auto& x : v) {
      h += 0x9e3779b97f4a7c15ull;
      std::uint64_t z = h;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      double u = static_cast<double>(z >> 11) * 0x1.0p-53;  // [0, 1)
      x = static_cast<float>(2.0 * u - 1.0);
      norm2 += static_cast<double>(x) * static_cast<double>(x);
    }
    if (norm2 <= 0) {
      if (!v.empty()) v[0] = 1.0f;
      return v;
    }
    double const inv = 1.0 / std::sqrt(norm2);
    for (auto& x : v)
      x = static_cast<float>(x * inv);
    return v;
  }

  boost::asio::any_io_executor ex_;
  std::string model_id_;
  std::string header_;
  std::chrono::milliseconds latency_;
  std::uint32_t tokens_per_second_;
  std::uint32_t context_;
  std::string seed_;
  std::uint32_t dimensions_;
  std::uint64_t requests_{0};
  std::uint32_t running_{0};      // generate() calls in flight
  std::uint64_t held_tokens_{0};  // their prompt + streamed tokens
};

}  // namespace

std::unique_ptr<backend> make_mock(boost::asio::any_io_executor ex, config::config const& cfg) {
  return std::make_unique<mock_backend>(std::move(ex), cfg);
}

boost::asio::awaitable<std::optional<std::uint32_t>> backend::count_prompt_tokens(std::string system,
                                                                                  std::string prompt) {
  (void)system;
  (void)prompt;
  co_return std::nullopt;
}

boost::asio::awaitable<result<embedding_result>> backend::embed(embedding_request req) {
  (void)req;
  co_return ray::error{errc::not_implemented, "this backend does not serve embeddings"};
}

boost::asio::awaitable<result<rerank_result>> backend::rerank(rerank_request req) {
  (void)req;
  co_return ray::error{errc::not_implemented, "this backend does not serve rerank"};
}

}  // namespace ray::backend
