#include "ray/api/api.hpp"

#include <gtest/gtest.h>
#include <boost/json/parse.hpp>

namespace {

using ray::errc;

TEST(ErrorMapping, EveryCodeOfTheContractTableHasItsStatus) {
  struct row {
    errc code;
    unsigned status;
  };
  row const table[] = {
      {errc::invalid_request, 400},
      {errc::invalid_json, 400},
      {errc::unauthorized, 401},
      {errc::not_found, 404},
      {errc::job_not_found, 404},
      {errc::model_not_found, 404},
      {errc::method_not_allowed, 405},
      {errc::request_read_timeout, 408},
      {errc::length_required, 411},
      {errc::body_too_large, 413},
      {errc::request_context_window_exceeded, 413},
      {errc::request_token_budget_exceeded, 413},
      {errc::request_target_too_large, 414},
      {errc::unsupported_media_type, 415},
      {errc::unsupported_content_encoding, 415},
      {errc::unsupported_expectation, 417},
      {errc::rate_limited, 429},
      {errc::request_headers_too_large, 431},
      {errc::not_implemented, 501},
      {errc::provider_upstream_error, 502},
      {errc::provider_invalid_response, 502},
      {errc::provider_request_failed, 502},
      {errc::queue_full, 503},
      {errc::overloaded, 503},
      {errc::provider_unavailable, 503},
      {errc::async_queue_full, 503},
      {errc::async_queue_storage_low, 503},
      {errc::shutting_down, 503},
      {errc::async_queue_disabled, 503},
      {errc::async_queue_storage_unavailable, 503},
      {errc::unsupported_parameter, 400},
      {errc::request_timeout, 504},
      {errc::provider_timeout, 504},
  };
  for (auto const& r : table) {
    auto res = ray::api::error_response({r.code, "x"});
    EXPECT_EQ(static_cast<unsigned>(res.result()), r.status) << ray::code_name(r.code);
    auto body = boost::json::parse(res.body()).as_object();
    EXPECT_EQ(body.at("error").at("code").as_string(), ray::code_name(r.code));
    EXPECT_EQ(body.at("error").at("message").as_string(), "x");
  }
}

TEST(ErrorMapping, ClientErrorsSayDoNotRetry) {
  EXPECT_EQ(ray::api::error_response({errc::invalid_json, "x"})["x-should-retry"], "false");
  EXPECT_EQ(ray::api::error_response({errc::body_too_large, "x"})["x-should-retry"], "false");
  EXPECT_EQ(ray::api::error_response({errc::request_token_budget_exceeded, "x"})["x-should-retry"], "false");
}

TEST(ErrorMapping, RetryAfterIsClampedToOneToThirtySecondsWithUnroundedMilliseconds) {
  ray::error e{errc::queue_full, "full"};
  e.retry_after_ms = 4200.0;
  auto res = ray::api::error_response(e);
  EXPECT_EQ(res["retry-after"], "5");
  EXPECT_EQ(res["retry-after-ms"], "4200");
  e.retry_after_ms = 90'000.0;
  EXPECT_EQ(ray::api::error_response(e)["retry-after"], "30");
  e.retry_after_ms = 10.0;
  EXPECT_EQ(ray::api::error_response(e)["retry-after"], "1");
}

TEST(ErrorMapping, FixedRetryAftersFollowTheTable) {
  EXPECT_EQ(ray::api::error_response({errc::queue_full, "x"})["retry-after"], "1");
  EXPECT_EQ(ray::api::error_response({errc::shutting_down, "x"})["retry-after"], "5");
  EXPECT_EQ(ray::api::error_response({errc::async_queue_storage_low, "x"})["retry-after"], "30");
  EXPECT_EQ(ray::api::error_response({errc::async_queue_storage_unavailable, "x"})["retry-after"], "5");
  EXPECT_EQ(ray::api::error_response({errc::request_timeout, "x"})["retry-after"], "5");
  auto disabled = ray::api::error_response({errc::async_queue_disabled, "x"});
  EXPECT_EQ(disabled.find("retry-after"), disabled.end());
}

TEST(ErrorMapping, UnauthorizedCarriesTheBearerChallenge) {
  auto res = ray::api::error_response({errc::unauthorized, "x"});
  EXPECT_EQ(res[boost::beast::http::field::www_authenticate], "Bearer realm=\"ray\"");
}

TEST(ErrorMapping, OpenAiEnvelopeHasTypeParamAndCode) {
  ray::error e{errc::context_length_exceeded, "too long"};
  e.param = "messages";
  auto res = ray::api::error_response(e, ray::api::envelope::openai);
  EXPECT_EQ(static_cast<unsigned>(res.result()), 400u);
  auto err = boost::json::parse(res.body()).at("error").as_object();
  EXPECT_EQ(err.at("type").as_string(), "invalid_request_error");
  EXPECT_EQ(err.at("param").as_string(), "messages");
  EXPECT_EQ(err.at("code").as_string(), "context_length_exceeded");
  auto overloaded = boost::json::parse(
      ray::api::error_response({errc::queue_full, "x"}, ray::api::envelope::openai).body());
  EXPECT_EQ(overloaded.at("error").at("type").as_string(), "overloaded_error");
}

TEST(ErrorMapping, DetailsAppearOnlyWhenPresent) {
  ray::error e{errc::request_context_window_exceeded, "x"};
  e.details["contextWindow"] = 4096;
  auto body = boost::json::parse(ray::api::error_response(e).body());
  EXPECT_EQ(body.at("error").at("details").at("contextWindow").as_int64(), 4096);
  auto plain = boost::json::parse(ray::api::error_response({errc::not_found, "x"}).body());
  EXPECT_FALSE(plain.at("error").as_object().contains("details"));
}

}  // namespace
