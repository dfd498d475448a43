// ray::runtime — the request pipeline between the API handlers and the backend.
//
// Today (foundation): template rendering, token estimate, context check with the defaulted-max clamp, the
// token-budget check, the total deadline (request_timeout) and the backend call; every stage is counted.
// The serving core (admission queue, lanes, single-flight, result cache, prompt compiler, degradation) slots
// in between the context check and the backend call without changing this interface.
//
// Threading: confined to the io_context's executor it was made with (one thread by default). Cancellation: a
// cancelled infer() (client gone) cancels the backend call.
#pragma once

#include "ray/backend/backend.hpp"
#include "ray/config/config.hpp"
#include "ray/core/core.hpp"
#include "ray/telemetry/telemetry.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ray::runtime {

// A decoded, validated /v1/infer request (api decodes; the runtime never sees JSON).
struct infer_request {
  std::string input;
  std::string system;
  std::optional<std::uint32_t> max_tokens{};  // already floored and clamped to [1, maxOutputTokens]
  double temperature{0.2};
  double top_p{0.95};
  std::optional<std::int64_t> seed{};
  std::vector<std::string> stop{};
  std::optional<std::string> response_format{};  // "text" | "json_object"
  bool cache{true};
  std::optional<std::string> dedupe_key{};
  std::map<std::string, std::string> metadata{};
  std::optional<std::string> template_id{};
  std::map<std::string, std::string> template_variables{};
};

struct degradation_report {
  bool applied{false};
  std::vector<std::string> reasons{};
  std::uint32_t requested_max_tokens{0};
  std::uint32_t applied_max_tokens{0};
};

struct prompt_report {
  std::string family_key;
  std::size_t chars_before{0};
  std::size_t chars_after{0};
};

struct infer_result {
  std::string model;
  std::string output;
  std::string finish_reason;
  std::size_t prompt_chars{0};
  std::size_t completion_chars{0};
  std::optional<std::uint32_t> prompt_tokens{};
  std::optional<std::uint32_t> completion_tokens{};
  bool cached{false};
  bool deduplicated{false};
  double queue_ms{0};
  double latency_ms{0};
  degradation_report degradation{};
  prompt_report prompt{};
  backend::generation_result provider{};
};

struct runtime_stats {
  std::uint32_t queue_depth{0};
  std::uint32_t in_flight{0};
  std::uint64_t queued_tokens{0};
  std::uint64_t in_flight_tokens{0};
};

class runtime {
 public:
  runtime(boost::asio::any_io_executor ex, config::config const& cfg, backend::backend& be,
          telemetry::registry& metrics, ray::clock const& clock = ray::system_clock());

  // Runs one native inference. Errors are values (context, budget, deadline, backend).
  boost::asio::awaitable<result<infer_result>> infer(infer_request req);

  runtime_stats stats() const noexcept { return stats_; }
  backend::backend& backend_ref() noexcept { return backend_; }
  config::config const& cfg() const noexcept { return cfg_; }

  // The per-request context (tokens) in force: the backend's, else model.contextWindow.
  std::uint32_t context_window() const;

 private:
  boost::asio::any_io_executor ex_;
  config::config const& cfg_;
  backend::backend& backend_;
  ray::clock const& clock_;
  runtime_stats stats_{};
  telemetry::counter backend_ok_;
  telemetry::counter backend_error_;
  telemetry::counter backend_cancelled_;
  telemetry::counter_family rejections_;
  telemetry::histogram ttft_;
};

}  // namespace ray::runtime
