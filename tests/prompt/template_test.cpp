#include "ray/prompt/prompt.hpp"

#include <gtest/gtest.h>

namespace {

ray::config::config tiny() {
  return ray::config::profile_defaults("tiny").value();
}

TEST(Templates, BuiltInClassificationRendersItsVariableAndIsShortJson) {
  auto r =
      ray::prompt::render_template(tiny(), "email.reply_classification.v1", {{"replyText", "Send pricing."}});
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_NE(r->input.find("Send pricing."), std::string::npos);
  EXPECT_EQ(r->lane, ray::config::lane::short_lane);
  EXPECT_EQ(r->response_format.value_or(""), "json_object");
  EXPECT_EQ(r->default_max_tokens.value_or(0), 80u);
}

TEST(Templates, MissingBlankUnknownVariablesAndUnknownTemplatesAreErrors) {
  auto cfg = tiny();
  EXPECT_FALSE(ray::prompt::render_template(cfg, "email.reply_classification.v1", {}));
  EXPECT_FALSE(ray::prompt::render_template(cfg, "email.reply_classification.v1", {{"replyText", "  "}}));
  EXPECT_FALSE(ray::prompt::render_template(cfg, "email.reply_classification.v1",
                                            {{"replyText", "x"}, {"other", "y"}}));
  auto unknown = ray::prompt::render_template(cfg, "nope.v1", {});
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().param, "templateId");
}

TEST(Templates, ConfiguredTemplatesRenderWithSpacesInsideBraces) {
  auto cfg = tiny();
  ray::config::template_config t;
  t.family = "support";
  t.input = "Answer {{ question }} for {{name}}.";
  t.variables = {"question", "name"};
  cfg.templates["support.v1"] = t;
  auto r = ray::prompt::render_template(cfg, "support.v1", {{"question", "Q"}, {"name", "N"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->input, "Answer Q for N.");
  EXPECT_EQ(r->family, "support");
}

TEST(Templates, EveryBuiltInTemplateRendersWithItsDeclaredVariables) {
  auto cfg = tiny();
  for (auto const& [id, tpl] : ray::config::builtin_templates()) {
    std::map<std::string, std::string> vars;
    for (auto const& v : tpl.variables)
      vars[v] = "value-" + v;
    auto r = ray::prompt::render_template(cfg, id, vars);
    ASSERT_TRUE(r) << id << ": " << r.error().message;
    for (auto const& v : tpl.variables)
      EXPECT_NE((r->system + r->input).find("value-" + v), std::string::npos) << id << " " << v;
  }
}

}  // namespace
