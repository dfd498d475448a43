// `models` (spec/models.md "Config"): the list, its first model as `model`, names unique across it, the
// errors naming the list entry, `residency`, and the round trip through to_json.
#include "ray/config/config.hpp"

#include <gtest/gtest.h>
#include <boost/json/serialize.hpp>

#include <filesystem>

namespace {

namespace rc = ray::config;
namespace fs = std::filesystem;

std::string load_error(std::string_view text) {
  auto r = rc::load_from_text(text, {}, {});
  EXPECT_FALSE(r.has_value()) << "loaded, expected an error";
  return r.has_value() ? std::string() : r.error().message;
}

constexpr char two_models[] = R"({"profile":"tiny","models":[
  {"id":"chat-a","aliases":["a"]},
  {"id":"embed-b","kind":"embedding","pinned":true,"idleUnloadMs":5000,"aliases":["B"],
   "adapter":{"kind":"mock","dimensions":32}}],
  "residency":{"memoryBudgetMiB":2048,"reserveMiB":256}})";

TEST(Models, TheListsFirstModelIsModelAndTheRestFollowInOrder) {
  auto r = rc::load_from_text(two_models, {}, {});
  ASSERT_TRUE(r.has_value()) << r.error().message;
  auto const& c = r->cfg;
  EXPECT_EQ(c.model.id, "chat-a");
  EXPECT_EQ(c.model.kind, rc::model_kind::chat);
  EXPECT_FALSE(c.model.pinned);
  ASSERT_EQ(c.more_models.size(), 1u);
  auto const& b = c.more_models[0];
  EXPECT_EQ(b.id, "embed-b");
  EXPECT_EQ(b.kind, rc::model_kind::embedding);
  EXPECT_TRUE(b.pinned);
  EXPECT_EQ(b.idle_unload_ms, 5000u);
  EXPECT_EQ(b.adapter.dimensions, 32u);
  // Unnamed fields come from the profile's model defaults, as for `model`.
  EXPECT_EQ(b.max_output_tokens, c.model.max_output_tokens);
  EXPECT_EQ(c.residency.memory_budget_mib, 2048u);
  EXPECT_EQ(c.residency.reserve_mib, 256u);
  // The effective config's sources name the list as one leaf.
  ASSERT_TRUE(r->sources.contains("models"));
  EXPECT_NE(r->sources.at("models").find("file"), std::string::npos) << r->sources.at("models");
}

TEST(Models, ModelAloneIsAOneModelListAndEveryUpstreamConfigLoadsUnchanged) {
  for (auto const& e : fs::directory_iterator(fs::path(RAY_TEST_FIXTURES) / "upstream-configs")) {
    SCOPED_TRACE(e.path().filename().string());
    auto r = rc::load(e.path().string(), {}, {});
    ASSERT_TRUE(r.has_value()) << r.error().message;
    EXPECT_TRUE(r->cfg.more_models.empty());
    EXPECT_EQ(r->cfg.model.kind, rc::model_kind::chat);
    EXPECT_FALSE(r->cfg.model.pinned);
    EXPECT_FALSE(r->cfg.model.idle_unload_ms.has_value());
    // A one-model config is written back as `model`, never as a list.
    auto j = rc::to_json(r->cfg);
    EXPECT_TRUE(j.contains("model"));
    EXPECT_FALSE(j.contains("models"));
  }
}

TEST(Models, ModelAndModelsTogetherAreRefused) {
  auto msg = load_error(R"({"model":{"id":"x"},"models":[{"id":"y"}]})");
  EXPECT_NE(msg.find("`model` and `models` are both set"), std::string::npos) << msg;
}

TEST(Models, AnEmptyListIsRefused) {
  auto msg = load_error(R"({"models":[]})");
  EXPECT_NE(msg.find("models"), std::string::npos) << msg;
  EXPECT_NE(msg.find("at least one model"), std::string::npos) << msg;
}

TEST(Models, NamesAreUniqueAcrossTheListCaseInsensitively) {
  auto msg =
      load_error(R"({"models":[{"id":"chat","aliases":["Shared"]},{"id":"other","aliases":["shared"]}]})");
  EXPECT_NE(msg.find("models[1].aliases[0]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("models[0].aliases[0]"), std::string::npos) << msg;
  auto dup_id = load_error(R"({"models":[{"id":"same"},{"id":"SAME","kind":"embedding"}]})");
  EXPECT_NE(dup_id.find("models[1].id"), std::string::npos) << dup_id;
}

TEST(Models, AnErrorInALaterModelNamesItsListEntry) {
  auto msg = load_error(R"({"models":[{"id":"a"},{"id":"b"},{"id":"c","maxOutputTokens":0}]})");
  EXPECT_NE(msg.find("models[2].maxOutputTokens"), std::string::npos) << msg;
  auto kind = load_error(R"({"models":[{"id":"a"},{"id":"b","kind":"vision"}]})");
  EXPECT_NE(kind.find("models[1].kind"), std::string::npos) << kind;
  auto pooling =
      load_error(R"({"models":[{"id":"a"},{"id":"b","kind":"embedding","adapter":{"pooling":"max"}}]})");
  EXPECT_NE(pooling.find("models[1].adapter.pooling"), std::string::npos) << pooling;
}

TEST(Models, TwoSupervisedModelsCannotShareAPort) {
  auto msg = load_error(R"({"models":[
    {"id":"a","adapter":{"kind":"llama.cpp","launchProfile":{"supervise":true,"port":8091}}},
    {"id":"b","adapter":{"kind":"llama.cpp","launchProfile":{"supervise":true,"port":8091}}}]})");
  EXPECT_NE(msg.find("models[1].adapter.launchProfile.port"), std::string::npos) << msg;
}

TEST(Models, EachModelDerivesItsOwnLaunchPathsFromItsModelRef) {
  auto r = rc::load_from_text(R"({"models":[
    {"id":"a","adapter":{"kind":"llama.cpp","modelRef":"chat-q4","launchProfile":{"supervise":true,"port":8091}}},
    {"id":"b","kind":"embedding","adapter":{"kind":"llama.cpp","modelRef":"embed-f16",
      "launchProfile":{"supervise":true,"port":8092}}}]})",
                              {}, {});
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->cfg.model.adapter.launch->model_path, "/var/lib/ray/models/chat-q4.gguf");
  ASSERT_EQ(r->cfg.more_models.size(), 1u);
  auto const& b = r->cfg.more_models[0].adapter;
  EXPECT_EQ(b.launch->model_path, "/var/lib/ray/models/embed-f16.gguf");
  EXPECT_EQ(b.launch->alias, "embed-f16");
  EXPECT_EQ(b.base_url, "http://127.0.0.1:8092");
}

TEST(Models, AListRoundTripsThroughToJson) {
  auto r = rc::load_from_text(two_models, {}, {});
  ASSERT_TRUE(r.has_value()) << r.error().message;
  auto text = boost::json::serialize(rc::to_json(r->cfg));
  EXPECT_EQ(text.find("\"model\":"), std::string::npos) << "a list is written as `models` only";
  auto again = rc::load_from_text(text, {}, {});
  ASSERT_TRUE(again.has_value()) << again.error().message << "\n" << text;
  EXPECT_TRUE(again->cfg == r->cfg) << text;
}

}  // namespace
