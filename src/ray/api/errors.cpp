#include "ray/api/api.hpp"

#include "ray/telemetry/telemetry.hpp"

#include <algorithm>
#include <cmath>

namespace ray::api {

http::status status_of(errc code) noexcept {
  using s = http::status;
  switch (code) {
    case errc::invalid_request:
    case errc::invalid_json:
    case errc::context_length_exceeded:
    case errc::unsupported_parameter:
    case errc::model_kind_mismatch:
      return s::bad_request;
    case errc::unauthorized:
      return s::unauthorized;
    case errc::not_found:
    case errc::job_not_found:
    case errc::model_not_found:
      return s::not_found;
    case errc::method_not_allowed:
      return s::method_not_allowed;
    case errc::request_read_timeout:
      return s::request_timeout;
    case errc::length_required:
      return s::length_required;
    case errc::body_too_large:
    case errc::request_context_window_exceeded:
    case errc::request_token_budget_exceeded:
      return s::payload_too_large;
    case errc::request_target_too_large:
      return s::uri_too_long;
    case errc::unsupported_media_type:
    case errc::unsupported_content_encoding:
      return s::unsupported_media_type;
    case errc::unsupported_expectation:
      return s::expectation_failed;
    case errc::rate_limited:
      return s::too_many_requests;
    case errc::job_not_cancellable:
      return s::conflict;
    case errc::request_headers_too_large:
      return s::request_header_fields_too_large;
    case errc::not_implemented:
      return s::not_implemented;
    case errc::provider_upstream_error:
    case errc::provider_invalid_response:
    case errc::provider_request_failed:
      return s::bad_gateway;
    case errc::queue_full:
    case errc::overloaded:
    case errc::provider_unavailable:
    case errc::async_queue_full:
    case errc::async_queue_storage_low:
    case errc::shutting_down:
    case errc::async_queue_disabled:
    case errc::async_queue_storage_unavailable:
    case errc::model_swap_busy:
      return s::service_unavailable;
    case errc::request_timeout:
    case errc::provider_timeout:
      return s::gateway_timeout;
  }
  return s::internal_server_error;
}

namespace {

// The Retry-After of each code, in ms, before clamping; nullopt = no retry headers.
std::optional<double> retry_after_ms(ray::error const& err) {
  switch (err.code) {
    case errc::queue_full:
    case errc::overloaded:
      return err.retry_after_ms.value_or(1000.0);  // 1 s without drain-rate history
    case errc::provider_unavailable:
      return err.retry_after_ms.value_or(5000.0);
    case errc::async_queue_full:
      return err.retry_after_ms.value_or(1000.0);  // the store computes when room appears
    case errc::async_queue_storage_low:
      return err.retry_after_ms.value_or(30000.0);
    case errc::async_queue_storage_unavailable:
      return err.retry_after_ms.value_or(5000.0);  // the store reconnects by itself
    case errc::model_swap_busy:
      return err.retry_after_ms.value_or(5000.0);  // the residency manager's measured load/drain time
    case errc::shutting_down:
      return 5000.0;
    case errc::request_timeout:
    case errc::provider_timeout:
      return 5000.0;
    case errc::rate_limited:
      return err.retry_after_ms.value_or(1000.0);
    default:
      return std::nullopt;
  }
}

std::string_view openai_type(errc code) noexcept {
  switch (code) {
    case errc::unauthorized:
      return "authentication_error";
    case errc::rate_limited:
      return "rate_limit_error";
    case errc::queue_full:
    case errc::overloaded:
    case errc::provider_unavailable:
    case errc::shutting_down:
    case errc::model_swap_busy:
      return "overloaded_error";
    default:
      break;
  }
  auto st = static_cast<unsigned>(status_of(code));
  return st >= 500 ? "server_error" : "invalid_request_error";
}

}  // namespace

http::response error_response(ray::error const& err, envelope env) {
  http::response res{status_of(err.code), 11};
  res.set(http::field::content_type, "application/json; charset=utf-8");
  boost::json::object e;
  if (env == envelope::openai) {
    e["message"] = err.message;
    e["type"] = openai_type(err.code);
    if (err.param.empty())
      e["param"] = nullptr;
    else
      e["param"] = err.param;
    e["code"] = code_name(err.code);
  } else {
    e["code"] = code_name(err.code);
    e["message"] = err.message;
    if (!err.details.empty()) e["details"] = err.details;
  }
  boost::json::object body;
  body["error"] = std::move(e);
  res.body() = telemetry::to_json(body);

  auto st = static_cast<unsigned>(res.result());
  // 501 too: SDKs retry any 5xx unless told not to, and "not implemented" will not change on a retry.
  if (st == 400 || st == 413 || st == 501) res.set("x-should-retry", "false");
  if (err.code == errc::unauthorized) res.set(http::field::www_authenticate, "Bearer realm=\"ray\"");
  if (auto ms = retry_after_ms(err)) {
    // [1, 30] s (OpenAI SDKs ignore 60 s and more), except a rate limit: its window reset is a fact, and a
    // client told 30 s for a window that ends in 50 would only be refused again.
    double const cap = err.code == errc::rate_limited ? 3'600'000.0 : 30'000.0;
    double clamped_ms = std::clamp(*ms, 1000.0, cap);
    auto secs = static_cast<long>(std::ceil(clamped_ms / 1000.0));
    res.set(http::field::retry_after, std::to_string(secs));
    res.set("retry-after-ms", std::to_string(static_cast<long>(std::llround(clamped_ms))));
  }
  return res;
}

}  // namespace ray::api
