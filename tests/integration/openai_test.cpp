// The OpenAI-compatible surface through the real binary (http-api.md §3). So far: the model list.
#include "http_test_util.hpp"

namespace ray::itest {
namespace {

rt::http_response get_one(ray_server& s, std::string const& path) {
  auto c = s.connect();
  EXPECT_TRUE(c.send(get(path)));
  return c.read_response(rt::in(kIo)).value_or(rt::http_response{});
}

TEST(OpenAi, ModelsListsTheConfiguredModelWithItsContextAndBackend) {
  ray_server s(test_config());
  ASSERT_TRUE(s.wait_listening());
  for (auto path : {"/v1/models", "/models"}) {
    auto r = get_one(s, path);
    ASSERT_EQ(r.status, 200) << r.describe();
    auto body = json_body(r);
    ASSERT_TRUE(body);
    EXPECT_EQ(rt::string_field(*body, "object"), "list");
    auto const& m = body->at("data").as_array().at(0).as_object();
    EXPECT_EQ(rt::string_field(m, "id"), "tiny-dev");
    EXPECT_EQ(rt::string_field(m, "object"), "model");
    EXPECT_EQ(rt::string_field(m, "owned_by"), "ray");
    EXPECT_EQ(m.at("meta").at("context_window").as_int64(), 4096);
    EXPECT_EQ(m.at("meta").at("backend").as_string(), "mock");
  }
}

TEST(OpenAi, OneModelByIdOrAliasAndAnUnknownIdIs404InOpenAisEnvelope) {
  boost::json::object cfg = test_config();
  cfg["model"].as_object()["aliases"] = boost::json::array{"gpt-4o-mini"};
  ray_server s(cfg);
  ASSERT_TRUE(s.wait_listening());
  EXPECT_EQ(get_one(s, "/v1/models/tiny-dev").status, 200);
  auto alias = get_one(s, "/v1/models/gpt-4o-mini");
  ASSERT_EQ(alias.status, 200) << alias.describe();
  auto alias_body = json_body(alias);
  ASSERT_TRUE(alias_body) << alias.describe();
  EXPECT_EQ(rt::string_field(*alias_body, "id"), "tiny-dev");
  auto r = get_one(s, "/v1/models/nope");
  ASSERT_EQ(r.status, 404) << r.describe();
  auto body = json_body(r);
  ASSERT_TRUE(body) << r.describe();
  auto const& e = body->at("error").as_object();
  EXPECT_EQ(rt::string_field(e, "code"), "model_not_found");
  EXPECT_EQ(rt::string_field(e, "type"), "invalid_request_error");
  EXPECT_EQ(rt::string_field(e, "param"), "model");
}

}  // namespace
}  // namespace ray::itest

namespace ray::itest {
namespace {

rt::http_response post_one(ray_server& s, std::string const& path, std::string const& body,
                           std::string const& headers = {}) {
  auto c = s.connect();
  EXPECT_TRUE(c.send(post_json(path, body, headers)));
  return c.read_response(rt::in(kIo)).value_or(rt::http_response{});
}

TEST(OpenAiChat, AnyModelNameIsAnsweredWithTheRealIdInOpenAisShape) {
  ray_server s(test_config(), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  for (auto path : {"/v1/chat/completions", "/chat/completions"}) {
    auto r = post_one(s, path,
                      R"({"model":"gpt-4o-mini","messages":[{"role":"developer","content":"be brief"},)"
                      R"({"role":"user","content":"Say hi"}]})");
    ASSERT_EQ(r.status, 200) << r.describe();
    auto body = json_body(r);
    ASSERT_TRUE(body);
    EXPECT_EQ(rt::string_field(*body, "object"), "chat.completion");
    EXPECT_EQ(rt::string_field(*body, "model"), "tiny-dev");
    EXPECT_EQ(rt::string_field(*body, "id").rfind("chatcmpl-", 0), 0u);
    auto const& choice = body->at("choices").as_array().at(0).as_object();
    EXPECT_EQ(choice.at("message").at("role").as_string(), "assistant");
    EXPECT_NE(std::string(choice.at("message").at("content").as_string()).find("Say hi"), std::string::npos);
    EXPECT_EQ(choice.at("finish_reason").as_string(), "stop");
    auto const& usage = body->at("usage").as_object();
    EXPECT_EQ(usage.at("total_tokens").as_int64(),
              usage.at("prompt_tokens").as_int64() + usage.at("completion_tokens").as_int64());
    EXPECT_GT(usage.at("prompt_tokens").as_int64(), 0);
  }
  auto warned = s.process().wait_for_log(
      [](std::string_view l) { return l.find("unknown model name accepted") != std::string_view::npos; },
      rt::in(kIo));
  EXPECT_TRUE(warned);
}

TEST(OpenAiChat, StrictModelNamesTurnUnknownNamesInto404) {
  auto cfg = with(test_config(), {{"openai", boost::json::object{{"strictModelNames", true}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto r = post_one(s, "/v1/chat/completions",
                    R"({"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]})");
  ASSERT_EQ(r.status, 404) << r.describe();
  EXPECT_EQ(rt::string_field(json_body(r)->at("error").as_object(), "code"), "model_not_found");
  EXPECT_EQ(post_one(s, "/v1/chat/completions",
                     R"({"model":"tiny-dev","messages":[{"role":"user","content":"x"}]})")
                .status,
            200);
}

TEST(OpenAiChat, MaxTokensAboveTheCapIsClampedAndReported) {
  ray_server s(test_config(), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto r = post_one(s, "/v1/chat/completions",
                    R"({"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":100000})");
  ASSERT_EQ(r.status, 200) << r.describe();
  EXPECT_EQ(r.header("x-ray-max-tokens").value_or(""), "192");  // tiny: maxOutputTokens
}

TEST(OpenAiChat, AContextOverflowIs400WithTheWordingClientsRecognise) {
  auto cfg = with(test_config(), {{"server", boost::json::object{{"requestBodyLimitBytes", 60000}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto r = post_one(
      s, "/v1/chat/completions",
      R"({"model":"m","messages":[{"role":"user","content":")" + std::string(20000, 'a') + R"("}]})");
  ASSERT_EQ(r.status, 400) << r.describe();
  auto const e = json_body(r)->at("error").as_object();
  EXPECT_EQ(rt::string_field(e, "code"), "context_length_exceeded");
  EXPECT_EQ(rt::string_field(e, "type"), "invalid_request_error");
  EXPECT_EQ(rt::string_field(e, "param"), "messages");
  EXPECT_EQ(rt::string_field(e, "message")
                .rfind("This model's maximum context length is 4096 tokens. However, you "
                       "requested",
                       0),
            0u);
}

TEST(OpenAiChat, TemperatureZeroIsCachedAndWithoutItIsNot) {
  ray_server s(test_config(), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  std::string const det = R"({"model":"m","messages":[{"role":"user","content":"same"}],"temperature":0})";
  EXPECT_FALSE(post_one(s, "/v1/chat/completions", det).has_header("x-ray-cache"));
  EXPECT_EQ(post_one(s, "/v1/chat/completions", det).header("x-ray-cache").value_or(""), "hit");
  std::string const sampled =
      R"({"model":"m","messages":[{"role":"user","content":"same"}],"temperature":0.7})";
  post_one(s, "/v1/chat/completions", sampled);
  EXPECT_FALSE(post_one(s, "/v1/chat/completions", sampled).has_header("x-ray-cache"));
  EXPECT_EQ(post_one(s, "/v1/chat/completions", sampled, "x-ray-cache: on\r\n").status, 200);
}

TEST(OpenAiChat, RejectedFieldsAndNotYetAvailableFeaturesSaySo) {
  ray_server s(test_config(), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto n2 = post_one(s, "/v1/chat/completions",
                     R"({"model":"m","messages":[{"role":"user","content":"x"}],"n":2})");
  ASSERT_EQ(n2.status, 400);
  EXPECT_EQ(rt::string_field(json_body(n2)->at("error").as_object(), "param"), "n");
  auto stream = post_one(s, "/v1/chat/completions",
                         R"({"model":"m","messages":[{"role":"user","content":"x"}],"stream":true})");
  EXPECT_EQ(stream.status, 501);
  auto bad = post_one(s, "/v1/chat/completions", "{not json");
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(rt::string_field(json_body(bad)->at("error").as_object(), "code"), "invalid_json");
}

TEST(OpenAiCompletions, APromptIsCompletedInTextCompletionShape) {
  ray_server s(test_config(), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto r = post_one(s, "/v1/completions", R"({"model":"m","prompt":"Once upon","max_tokens":5})");
  ASSERT_EQ(r.status, 200) << r.describe();
  auto body = json_body(r);
  EXPECT_EQ(rt::string_field(*body, "object"), "text_completion");
  auto const& choice = body->at("choices").as_array().at(0).as_object();
  EXPECT_EQ(choice.at("finish_reason").as_string(), "length");
  EXPECT_EQ(body->at("usage").at("completion_tokens").as_int64(), 5);
}

}  // namespace
}  // namespace ray::itest
