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
