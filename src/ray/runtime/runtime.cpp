#include "ray/runtime/runtime.hpp"

#include "ray/prompt/prompt.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>

namespace ray::runtime {

namespace {
using namespace boost::asio::experimental::awaitable_operators;
constexpr auto use_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);

double ms_between(ray::clock::time_point a, ray::clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
}  // namespace

runtime::runtime(boost::asio::any_io_executor ex, config::config const& cfg, backend::backend& be,
                 telemetry::registry& metrics, ray::clock const& clock)
    : ex_(std::move(ex)),
      cfg_(cfg),
      backend_(be),
      clock_(clock),
      rejections_(metrics.add_counter("ray_rejections_total", "Requests refused by the runtime, by reason.",
                                      {"reason"}, {.json_name = "rejections"})) {
  auto backend_requests =
      metrics.add_counter("ray_backend_requests_total", "Generation calls sent to the backend, by outcome.",
                          {"outcome"}, {.json_name = "backend.requests"});
  backend_ok_ = backend_requests.with({"ok"});
  backend_error_ = backend_requests.with({"error"});
  backend_cancelled_ = backend_requests.with({"cancelled"});
  ttft_ = metrics
              .add_histogram("ray_time_to_first_token_seconds",
                             "Time from dispatch to the first token, for requests that reached the backend.")
              .with();
}

std::uint32_t runtime::context_window() const {
  auto d = backend_.describe();
  return d.context_per_request > 0 ? std::min(d.context_per_request, cfg_.model.context_window)
                                   : cfg_.model.context_window;
}

boost::asio::awaitable<result<infer_result>> runtime::infer(infer_request req) {
  auto const arrived = clock_.now();
  auto reject = [this](ray::error err) -> result<infer_result> {
    rejections_.with({code_name(err.code)}).inc();
    return err;
  };

  std::optional<std::uint32_t> template_default;
  if (req.template_id) {
    auto r = prompt::render_template(cfg_, *req.template_id, req.template_variables);
    if (!r) co_return r.error();
    req.input = std::move(r->input);
    req.system = std::move(r->system);
    template_default = r->default_max_tokens;
    if (!req.response_format && r->response_format) req.response_format = r->response_format;
  }

  // Context check: the prompt must fit; an explicit maxTokens must fit; a defaulted one is clamped.
  std::uint32_t const context = context_window();
  std::uint32_t const prompt_tokens =
      static_cast<std::uint32_t>(estimate_tokens(req.system) + estimate_tokens(req.input));
  bool const defaulted = !req.max_tokens.has_value();
  std::uint32_t requested = req.max_tokens.value_or(template_default.value_or(cfg_.model.max_output_tokens));
  requested = std::clamp<std::uint32_t>(requested, 1, cfg_.model.max_output_tokens);
  std::uint32_t max_tokens = requested;
  auto context_error = [&](std::uint32_t mt) {
    ray::error err{errc::request_context_window_exceeded,
                   "the prompt (~" + std::to_string(prompt_tokens) + " tokens) plus maxTokens (" +
                       std::to_string(mt) + ") exceeds the context window of " + std::to_string(context) +
                       " tokens; shorten the input or lower maxTokens"};
    err.details["promptTokens"] = prompt_tokens;
    err.details["maxTokens"] = mt;
    err.details["totalTokens"] = prompt_tokens + mt;
    err.details["contextWindow"] = context;
    return err;
  };
  if (prompt_tokens >= context) co_return reject(context_error(max_tokens));
  if (prompt_tokens + max_tokens > context) {
    if (!defaulted) co_return reject(context_error(max_tokens));
    max_tokens = context - prompt_tokens;
  }

  // Token budget: a request that can never fit the in-flight or queued budget is refused outright.
  std::uint64_t const cost = std::uint64_t{prompt_tokens} + max_tokens;
  std::uint64_t const budget = std::min(cfg_.scheduler.max_inflight_tokens, cfg_.scheduler.max_queued_tokens);
  if (cost > budget) {
    ray::error err{errc::request_token_budget_exceeded, "the request needs ~" + std::to_string(cost) +
                                                            " tokens (prompt + maxTokens); the budget is " +
                                                            std::to_string(budget) +
                                                            "; shorten the input or lower maxTokens"};
    err.details["requestTokens"] = cost;
    err.details["budgetTokens"] = budget;
    co_return reject(std::move(err));
  }

  backend::generation_request gen;
  gen.system = req.system;
  gen.prompt = req.input;
  gen.max_tokens = max_tokens;
  gen.temperature = req.temperature;
  gen.top_p = req.top_p;
  gen.seed = req.seed;
  gen.stop = req.stop;
  gen.json_mode = req.response_format && *req.response_format == "json_object";

  ++stats_.in_flight;
  stats_.in_flight_tokens += cost;
  auto const dispatched = clock_.now();
  boost::asio::steady_timer deadline(ex_);
  auto const total = std::chrono::milliseconds(cfg_.scheduler.request_timeout_ms);
  deadline.expires_after(total - std::chrono::duration_cast<std::chrono::milliseconds>(dispatched - arrived));

  struct guard {
    runtime_stats& s;
    std::uint64_t cost;
    ~guard() {
      --s.in_flight;
      s.in_flight_tokens -= cost;
    }
  } g{stats_, cost};

  std::variant<result<backend::generation_result>, std::tuple<boost::system::error_code>> outcome;
  try {
    outcome = co_await (backend_.generate(std::move(gen), nullptr) || deadline.async_wait(use_tuple));
  } catch (...) {
    backend_cancelled_.inc();
    throw;
  }
  if (outcome.index() == 1) {
    backend_cancelled_.inc();
    ray::error err{errc::request_timeout, "the request did not complete within scheduler.requestTimeoutMs (" +
                                              std::to_string(cfg_.scheduler.request_timeout_ms) + " ms)"};
    co_return reject(std::move(err));
  }
  auto& gen_result = std::get<0>(outcome);
  if (!gen_result) {
    backend_error_.inc();
    co_return gen_result.error();
  }
  backend_ok_.inc();
  ttft_.observe(gen_result->ttft_ms / 1000.0);

  infer_result out;
  out.model = cfg_.model.id;
  out.prompt_chars = count_code_points(req.system) + count_code_points(req.input);
  out.completion_chars = count_code_points(gen_result->text);  // before the text moves below
  out.prompt_tokens = gen_result->prompt_tokens;
  out.completion_tokens = gen_result->completion_tokens;
  out.finish_reason = gen_result->finish_reason;
  out.output = std::move(gen_result->text);
  out.queue_ms = ms_between(arrived, dispatched);
  out.latency_ms = ms_between(arrived, clock_.now());
  out.degradation.requested_max_tokens = requested;
  out.degradation.applied_max_tokens = max_tokens;
  out.prompt.chars_before = out.prompt_chars;
  out.prompt.chars_after = out.prompt_chars;
  out.prompt.family_key = req.template_id ? *req.template_id : std::string("default");
  out.provider = std::move(*gen_result);
  co_return out;
}

}  // namespace ray::runtime
