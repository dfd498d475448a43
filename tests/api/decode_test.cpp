#include "ray/api/api.hpp"

#include <gtest/gtest.h>
#include <boost/json/parse.hpp>

namespace {

ray::config::config tiny() {
  return ray::config::profile_defaults("tiny").value();
}

TEST(DecodeInfer, MinimalInputUsesDefaults) {
  auto r = ray::api::decode_infer_request(R"({"input":"hi"})", tiny());
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->input, "hi");
  EXPECT_FALSE(r->max_tokens.has_value());
  EXPECT_DOUBLE_EQ(r->temperature, 0.2);
  EXPECT_DOUBLE_EQ(r->top_p, 0.95);
  EXPECT_TRUE(r->cache);
}

TEST(DecodeInfer, EmptyBodyIsTreatedAsAnEmptyObjectAndNeedsInput) {
  auto r = ray::api::decode_infer_request("", tiny());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ray::errc::invalid_request);
  EXPECT_NE(r.error().message.find("input"), std::string::npos);
}

TEST(DecodeInfer, NonObjectBodyIsRejectedWithTheContractMessage) {
  auto r = ray::api::decode_infer_request("[1,2]", tiny());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "request body must be a JSON object");
}

TEST(DecodeInfer, MalformedJsonIsInvalidJson) {
  auto r = ray::api::decode_infer_request("{\"input\":", tiny());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ray::errc::invalid_json);
}

TEST(DecodeInfer, BlankInputIsRejectedAndBlankSystemDropped) {
  EXPECT_FALSE(ray::api::decode_infer_request(R"({"input":"   "})", tiny()));
  auto r = ray::api::decode_infer_request(R"({"input":"x","system":"  "})", tiny());
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->system.empty());
}

TEST(DecodeInfer, NumbersAreFlooredAndClamped) {
  auto r = ray::api::decode_infer_request(R"({"input":"x","maxTokens":10000.9,"temperature":9,"topP":0.01})",
                                          tiny());
  ASSERT_TRUE(r);
  EXPECT_EQ(*r->max_tokens, 192u);  // tiny maxOutputTokens
  EXPECT_DOUBLE_EQ(r->temperature, 2.0);
  EXPECT_DOUBLE_EQ(r->top_p, 0.1);
  auto low = ray::api::decode_infer_request(R"({"input":"x","maxTokens":-5})", tiny());
  ASSERT_TRUE(low);
  EXPECT_EQ(*low->max_tokens, 1u);
  auto floored = ray::api::decode_infer_request(R"({"input":"x","maxTokens":7.9})", tiny());
  EXPECT_EQ(*floored->max_tokens, 7u);
}

TEST(DecodeInfer, IllTypedFieldsNameTheField) {
  struct c {
    char const* body;
    char const* field;
  };
  c const cases[] = {
      {R"({"input":5})", "input"},
      {R"({"input":"x","maxTokens":"10"})", "maxTokens"},
      {R"({"input":"x","seed":1.5})", "seed"},
      {R"({"input":"x","stop":"END"})", "stop"},
      {R"({"input":"x","stop":[]})", "stop"},
      {R"({"input":"x","stop":["a",3]})", "stop[1]"},
      {R"({"input":"x","responseFormat":{"type":"xml"}})", "responseFormat.type"},
      {R"({"input":"x","cache":"yes"})", "cache"},
      {R"({"input":"x","metadata":{"k":1}})", "metadata.k"},
  };
  for (auto const& cs : cases) {
    auto r = ray::api::decode_infer_request(cs.body, tiny());
    ASSERT_FALSE(r) << cs.body;
    EXPECT_EQ(r.error().code, ray::errc::invalid_request) << cs.body;
    EXPECT_EQ(r.error().message.rfind(cs.field, 0), 0u) << r.error().message;
  }
}

TEST(DecodeInfer, BoundsOnStopDedupeKeyAndMetadata) {
  std::string long_stop = R"({"input":"x","stop":[")" + std::string(257, 'a') + "\"]}";
  EXPECT_FALSE(ray::api::decode_infer_request(long_stop, tiny()));
  std::string long_key = R"({"input":"x","dedupeKey":")" + std::string(513, 'k') + "\"}";
  EXPECT_FALSE(ray::api::decode_infer_request(long_key, tiny()));
  std::string many = R"({"input":"x","metadata":{)";
  for (int i = 0; i < 33; ++i)
    many += (i ? "," : "") + std::string("\"k") + std::to_string(i) + "\":\"v\"";
  many += "}}";
  EXPECT_FALSE(ray::api::decode_infer_request(many, tiny()));
}

TEST(DecodeInfer, TemplatesCannotBeCombinedWithInput) {
  auto r = ray::api::decode_infer_request(R"({"templateId":"email.follow_up.v1","input":"x"})", tiny());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().param, "templateId");
  auto ok = ray::api::decode_infer_request(
      R"({"templateId":"email.reply_classification.v1","templateVariables":{"replyText":"hi"}})", tiny());
  ASSERT_TRUE(ok);
  EXPECT_EQ(*ok->template_id, "email.reply_classification.v1");
  EXPECT_EQ(ok->template_variables.at("replyText"), "hi");
}

TEST(DecodeInfer, UnknownFieldsAreIgnored) {
  EXPECT_TRUE(ray::api::decode_infer_request(R"({"input":"x","somethingNew":true})", tiny()));
}

TEST(RenderInfer, KeysFollowTheTypeScriptGatewayOrder) {
  ray::runtime::infer_result r;
  r.model = "tiny-dev";
  r.output = "out";
  r.prompt_chars = 2;
  r.completion_chars = 3;
  r.prompt_tokens = 1;
  r.completion_tokens = 1;
  auto text = ray::api::render_infer_response(r, "req_1", std::chrono::system_clock::time_point{});
  auto o = boost::json::parse(text).as_object();
  std::vector<std::string> keys;
  for (auto const& kv : o)
    keys.emplace_back(kv.key());
  std::vector<std::string> expected{"id",       "model",        "output",      "usage",
                                    "cached",   "deduplicated", "queueTimeMs", "latencyMs",
                                    "degraded", "diagnostics",  "createdAt"};
  EXPECT_EQ(keys, expected);
  EXPECT_EQ(o.at("usage").at("chars").at("total").as_int64(), 5);
  EXPECT_EQ(o.at("usage").at("tokens").at("total").as_int64(), 2);
  EXPECT_TRUE(o.at("diagnostics").as_object().contains("promptCompiler"));
}

}  // namespace
