#include "ray/api/openai.hpp"
#include "ray/runtime/runtime.hpp"

#include <gtest/gtest.h>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <fstream>
#include <sstream>

namespace {

namespace oai = ray::api::openai;
using ray::errc;

bool contains(std::vector<std::string> const& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// A chat body with one user message plus the given extra top-level members (",\"x\":1" style).
std::string chat(std::string_view extra = "") {
  return std::string(R"({"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}])") +
         std::string(extra) + "}";
}

// The decode error's param, or "<decoded>" when the body was accepted.
std::string rejected_param(std::string_view body) {
  auto r = oai::decode_chat(body);
  if (r) return "<decoded>";
  EXPECT_EQ(r.error().code, errc::invalid_request) << r.error().message;
  EXPECT_EQ(r.error().message.rfind(r.error().param + ": ", 0), 0u) << r.error().message;
  return r.error().param;
}

ray::config::config tiny() {
  return ray::config::profile_defaults("tiny").value();
}

// ---- decode_chat: used fields ----

TEST(OpenAiChat, TheRecordedLlamaServerChatBodyDecodes) {
  std::ifstream in(std::string(RAY_TEST_FIXTURES) + "/llama-server/chat-nonstream.http");
  std::stringstream ss;
  ss << in.rdbuf();
  auto text = ss.str();
  auto start = text.find('{');
  auto end = text.find('\n', start);
  ASSERT_NE(start, std::string::npos);
  auto r = oai::decode_chat(std::string_view(text).substr(start, end - start));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->model, "tiny-llama");
  ASSERT_EQ(r->messages.size(), 2u);
  EXPECT_EQ(r->messages[0].role, "system");
  EXPECT_EQ(r->messages[0].content, "You are terse.");
  EXPECT_EQ(r->messages[1].role, "user");
  EXPECT_EQ(r->max_tokens, 16u);
  EXPECT_EQ(r->temperature, 0.0);
  EXPECT_EQ(r->seed, 1);
  EXPECT_TRUE(r->ignored_fields.empty());
  EXPECT_TRUE(r->unknown_fields.empty());
}

TEST(OpenAiChat, EveryUsedFieldIsDecoded) {
  auto r = oai::decode_chat(R"({
    "model":"m","messages":[{"role":"user","content":"q","name":"ann"}],
    "max_tokens":40,"temperature":0.7,"top_p":0.9,"seed":42,"stop":["END","\n\n"],"stream":true,
    "stream_options":{"include_usage":true},"response_format":{"type":"json_object"},
    "tools":[{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}}],
    "tool_choice":"auto","parallel_tool_calls":false,"frequency_penalty":-0.5,"presence_penalty":1.5,
    "logit_bias":{"50256":-100},"top_k":40,"min_p":0.05,"repeat_penalty":1.1})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->model, "m");
  EXPECT_EQ(r->messages[0].name, "ann");
  EXPECT_EQ(r->max_tokens, 40u);
  EXPECT_DOUBLE_EQ(*r->temperature, 0.7);
  EXPECT_DOUBLE_EQ(*r->top_p, 0.9);
  EXPECT_EQ(r->seed, 42);
  EXPECT_EQ(r->stop, (std::vector<std::string>{"END", "\n\n"}));
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_EQ(r->response_format_type, "json_object");
  EXPECT_EQ(r->response_format, boost::json::parse(R"({"type":"json_object"})"));
  ASSERT_TRUE(r->tools.is_array());
  EXPECT_EQ(r->tools.get_array().size(), 1u);
  EXPECT_EQ(r->tool_choice, "auto");
  EXPECT_EQ(r->parallel_tool_calls, false);
  EXPECT_DOUBLE_EQ(*r->frequency_penalty, -0.5);
  EXPECT_DOUBLE_EQ(*r->presence_penalty, 1.5);
  EXPECT_EQ(r->logit_bias, boost::json::parse(R"({"50256":-100})"));
  EXPECT_EQ(r->top_k, 40);
  EXPECT_DOUBLE_EQ(*r->min_p, 0.05);
  EXPECT_DOUBLE_EQ(*r->repeat_penalty, 1.1);
  EXPECT_TRUE(r->has_tools());
  EXPECT_TRUE(r->ignored_fields.empty());
  EXPECT_TRUE(r->unknown_fields.empty());
}

TEST(OpenAiChat, AbsentOptionalFieldsStayUnsetSoBackendDefaultsApply) {
  auto r = oai::decode_chat(chat());
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->max_tokens);
  EXPECT_FALSE(r->temperature);
  EXPECT_FALSE(r->top_p);
  EXPECT_FALSE(r->seed);
  EXPECT_TRUE(r->stop.empty());
  EXPECT_FALSE(r->stream);
  EXPECT_FALSE(r->response_format_type);
  EXPECT_TRUE(r->response_format.is_null());
  EXPECT_TRUE(r->tools.is_null());
  EXPECT_TRUE(r->tool_choice.is_null());
  EXPECT_TRUE(r->logit_bias.is_null());
  EXPECT_FALSE(r->has_tools());
}

TEST(OpenAiChat, NullFieldsAreTreatedAsAbsent) {
  auto r =
      oai::decode_chat(chat(R"(,"temperature":null,"stop":null,"tools":null,"top_logprobs":null,"n":null)"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->temperature);
  EXPECT_TRUE(r->ignored_fields.empty());
}

TEST(OpenAiChat, MaxCompletionTokensWinsOverMaxTokens) {
  auto r = oai::decode_chat(chat(R"(,"max_tokens":10,"max_completion_tokens":20)"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->max_tokens, 20u);
  auto only = oai::decode_chat(chat(R"(,"max_completion_tokens":7)"));
  EXPECT_EQ(only->max_tokens, 7u);
}

TEST(OpenAiChat, HugeMaxTokensIsSaturatedNotRejected) {
  auto r = oai::decode_chat(chat(R"(,"max_tokens":99999999999999)"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->max_tokens, 4294967295u);
  auto whole = oai::decode_chat(chat(R"(,"max_tokens":16.0)"));
  EXPECT_EQ(whole->max_tokens, 16u);
}

TEST(OpenAiChat, StopAcceptsASingleString) {
  auto r = oai::decode_chat(chat(R"(,"stop":"###")"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->stop, std::vector<std::string>{"###"});
}

TEST(OpenAiChat, DeveloperRoleBecomesSystem) {
  auto r = oai::decode_chat(
      R"({"messages":[{"role":"developer","content":"be brief"},{"role":"user","content":"x"}]})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->messages[0].role, "system");
  EXPECT_EQ(r->model, "");
}

TEST(OpenAiChat, TextPartsAreJoinedWithNewlines) {
  auto r = oai::decode_chat(
      R"({"messages":[{"role":"user","content":[{"type":"text","text":"first"},{"type":"text","text":"second"}]}]})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->messages[0].content, "first\nsecond");
}

TEST(OpenAiChat, ToolConversationFieldsArePassedThrough) {
  auto r = oai::decode_chat(R"({"messages":[
    {"role":"user","content":"weather?"},
    {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"w","arguments":"{}"}}]},
    {"role":"tool","tool_call_id":"c1","content":"sunny"}]})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->messages[1].content, "");
  ASSERT_TRUE(r->messages[1].tool_calls.is_array());
  EXPECT_EQ(r->messages[1].tool_calls.at(0).at("id"), "c1");
  EXPECT_EQ(r->messages[2].role, "tool");
  EXPECT_EQ(r->messages[2].tool_call_id, "c1");
  EXPECT_TRUE(r->messages[0].tool_calls.is_null());
}

TEST(OpenAiChat, JsonSchemaResponseFormatIsForwardedAsSent) {
  auto body = chat(
      R"(,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"},"strict":true}})");
  auto r = oai::decode_chat(body);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->response_format_type, "json_schema");
  EXPECT_EQ(r->response_format.at("json_schema").at("strict"), true);
}

// ---- decode_chat: accepted and ignored, unknown ----

TEST(OpenAiChat, AcceptedAndIgnoredFieldsAreListedAndNotErrors) {
  auto r = oai::decode_chat(chat(
      R"(,"user":"u1","store":false,"metadata":{"a":"b"},"n":1,"logprobs":false,"tools":[],"tool_choice":"none")"));
  ASSERT_TRUE(r) << r.error().message;
  for (auto f : {"user", "store", "metadata", "n", "logprobs", "tools", "tool_choice"})
    EXPECT_TRUE(contains(r->ignored_fields, f)) << f;
  EXPECT_TRUE(r->tools.is_null());
  EXPECT_TRUE(r->tool_choice.is_null());
  EXPECT_FALSE(r->has_tools());
  EXPECT_TRUE(r->unknown_fields.empty());
}

TEST(OpenAiChat, ToolChoiceNoneMakesAPlainChatEvenWithTools) {
  auto r = oai::decode_chat(chat(
      R"(,"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"none","parallel_tool_calls":true)"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->has_tools());
  EXPECT_TRUE(r->tools.is_null());
  EXPECT_TRUE(r->parallel_tool_calls.is_null());
  EXPECT_TRUE(contains(r->ignored_fields, "tools"));
  EXPECT_TRUE(contains(r->ignored_fields, "tool_choice"));
  EXPECT_TRUE(contains(r->ignored_fields, "parallel_tool_calls"));
}

TEST(OpenAiChat, ToolChoiceRequiredWithoutToolsIsRejected) {
  EXPECT_EQ(rejected_param(chat(R"(,"tool_choice":"required")")), "tool_choice");
  auto autoc = oai::decode_chat(chat(R"(,"tool_choice":"auto")"));
  ASSERT_TRUE(autoc);
  EXPECT_TRUE(contains(autoc->ignored_fields, "tool_choice"));
}

TEST(OpenAiChat, UnknownFieldsAreListedAndOtherwiseIgnored) {
  auto r = oai::decode_chat(chat(R"(,"reasoning_effort":"low","service_tier":"auto","temperature":1)"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->unknown_fields, (std::vector<std::string>{"reasoning_effort", "service_tier"}));
  EXPECT_TRUE(r->ignored_fields.empty());
}

TEST(OpenAiChat, UnknownMessageFieldsSuchAsRefusalAreIgnored) {
  auto r = oai::decode_chat(
      R"({"messages":[{"role":"assistant","content":"ok","refusal":null,"annotations":[]},{"role":"user","content":"x"}]})");
  ASSERT_TRUE(r) << r.error().message;
}

// ---- decode_chat: rejections ----

TEST(OpenAiChat, InvalidJsonIsInvalidJson) {
  auto r = oai::decode_chat("{not json");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::invalid_json);
}

TEST(OpenAiChat, ANonObjectBodyIsRejected) {
  auto r = oai::decode_chat("[]");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::invalid_request);
  EXPECT_EQ(r.error().message, "request body must be a JSON object");
}

TEST(OpenAiChat, MissingOrEmptyMessagesAreRejectedNamingMessages) {
  EXPECT_EQ(rejected_param(R"({"model":"x"})"), "messages");
  EXPECT_EQ(rejected_param(R"({"messages":[]})"), "messages");
  EXPECT_EQ(rejected_param(R"({"messages":"hi"})"), "messages");
  EXPECT_EQ(rejected_param(""), "messages");
}

TEST(OpenAiChat, MoreThan1024MessagesAreRejected) {
  std::string many = R"({"messages":[)";
  for (int i = 0; i < 1025; ++i)
    many += std::string(i ? "," : "") + R"({"role":"user","content":"x"})";
  EXPECT_EQ(rejected_param(many + "]}"), "messages");
  std::string exactly = R"({"messages":[)";
  for (int i = 0; i < 1024; ++i)
    exactly += std::string(i ? "," : "") + R"({"role":"user","content":"x"})";
  EXPECT_EQ(rejected_param(exactly + "]}"), "<decoded>");
}

TEST(OpenAiChat, UnknownRolesAreRejectedNamingTheMessage) {
  EXPECT_EQ(
      rejected_param(R"({"messages":[{"role":"user","content":"a"},{"role":"function","content":"b"}]})"),
      "messages[1].role");
  EXPECT_EQ(rejected_param(R"({"messages":[{"content":"a"}]})"), "messages[0].role");
  EXPECT_EQ(rejected_param(R"({"messages":["hi"]})"), "messages[0]");
}

TEST(OpenAiChat, ImageAndAudioPartsAreRejectedNamingThePartType) {
  for (auto type : {"image_url", "input_audio", "audio", "file"}) {
    auto body =
        std::string(R"({"messages":[{"role":"user","content":[{"type":"text","text":"look"},{"type":")") +
        type + R"("}]}]})";
    auto r = oai::decode_chat(body);
    ASSERT_FALSE(r) << type;
    EXPECT_EQ(r.error().param, "messages[0].content[1].type");
    EXPECT_NE(r.error().message.find(type), std::string::npos) << r.error().message;
  }
}

TEST(OpenAiChat, MalformedContentIsRejectedNamingTheField) {
  EXPECT_EQ(rejected_param(R"({"messages":[{"role":"user","content":42}]})"), "messages[0].content");
  EXPECT_EQ(rejected_param(R"({"messages":[{"role":"user","content":[]}]})"), "messages[0].content");
  EXPECT_EQ(rejected_param(R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})"),
            "messages[0].content[0].text");
  EXPECT_EQ(rejected_param(R"({"messages":[{"role":"user"}]})"), "messages[0].content");
  EXPECT_EQ(rejected_param(R"({"messages":[{"role":"assistant","content":null}]})"), "messages[0].content");
  EXPECT_EQ(rejected_param(R"({"messages":[{"role":"user","content":"x","name":7}]})"), "messages[0].name");
  EXPECT_EQ(rejected_param(R"({"messages":[{"role":"tool","content":"x","tool_call_id":1}]})"),
            "messages[0].tool_call_id");
  EXPECT_EQ(rejected_param(R"({"messages":[{"role":"assistant","tool_calls":{}}]})"),
            "messages[0].tool_calls");
}

TEST(OpenAiChat, MoreThanOneChoiceIsRejectedNamingN) {
  EXPECT_EQ(rejected_param(chat(R"(,"n":2)")), "n");
  EXPECT_EQ(rejected_param(chat(R"(,"n":0)")), "n");
}

TEST(OpenAiChat, LogprobsAreForwardedAndTopLogprobsIsBoundedAt20) {
  auto r = oai::decode_chat(chat(R"(,"logprobs":true,"top_logprobs":20)"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(r->logprobs);
  EXPECT_EQ(r->top_logprobs, 20);
  auto over = oai::decode_chat(chat(R"(,"logprobs":true,"top_logprobs":21)"));
  ASSERT_FALSE(over);
  EXPECT_EQ(over.error().code, errc::invalid_request);
  EXPECT_EQ(over.error().param, "top_logprobs");
  EXPECT_NE(over.error().message.find("0 to 20"), std::string::npos) << over.error().message;
  EXPECT_EQ(rejected_param(chat(R"(,"logprobs":true,"top_logprobs":-1)")), "top_logprobs");
  EXPECT_EQ(rejected_param(chat(R"(,"logprobs":true,"top_logprobs":1.5)")), "top_logprobs");
  // OpenAI's rule: top_logprobs only with logprobs: true.
  EXPECT_EQ(rejected_param(chat(R"(,"top_logprobs":0)")), "top_logprobs");
  EXPECT_EQ(rejected_param(chat(R"(,"logprobs":false,"top_logprobs":3)")), "top_logprobs");
}

TEST(OpenAiChat, NegativeNumbersAreRejectedNamingTheField) {
  for (auto field : {"max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "top_k", "min_p",
                     "repeat_penalty"}) {
    EXPECT_EQ(rejected_param(chat(std::string(",\"") + field + "\":-1")), field);
  }
}

TEST(OpenAiChat, OutOfRangeNumbersAreRejectedNamingTheField) {
  EXPECT_EQ(rejected_param(chat(R"(,"top_p":1.5)")), "top_p");
  EXPECT_EQ(rejected_param(chat(R"(,"frequency_penalty":3)")), "frequency_penalty");
  EXPECT_EQ(rejected_param(chat(R"(,"presence_penalty":-2.5)")), "presence_penalty");
  EXPECT_EQ(rejected_param(chat(R"(,"max_tokens":0)")), "max_tokens");
  EXPECT_EQ(rejected_param(chat(R"(,"max_tokens":1.5)")), "max_tokens");
  EXPECT_EQ(rejected_param(chat(R"(,"logit_bias":{"1":200})")), "logit_bias.1");
}

TEST(OpenAiChat, NonFiniteNumbersAreRejected) {
  // JSON has no NaN literal; an overflowing number is the way a non-finite value arrives.
  EXPECT_EQ(rejected_param(chat(R"(,"temperature":1e999)")), "temperature");
  EXPECT_EQ(rejected_param(chat(R"(,"presence_penalty":-1e999)")), "presence_penalty");
  // Anywhere in the body: forwarded tool schemas would otherwise reach the backend as `Infinity`.
  EXPECT_EQ(rejected_param(chat(
                R"(,"tools":[{"type":"function","function":{"name":"f","parameters":{"maximum":1e999}}}])")),
            "tools[0].function.parameters.maximum");
}

TEST(OpenAiChat, WrongTypesAreRejectedNamingTheField) {
  EXPECT_EQ(rejected_param(chat(R"(,"temperature":"0.5")")), "temperature");
  EXPECT_EQ(rejected_param(chat(R"(,"seed":"42")")), "seed");
  EXPECT_EQ(rejected_param(chat(R"(,"stream":"yes")")), "stream");
  EXPECT_EQ(rejected_param(chat(R"(,"stream_options":{"include_usage":1})")), "stream_options.include_usage");
  EXPECT_EQ(rejected_param(chat(R"(,"stream_options":true)")), "stream_options");
  EXPECT_EQ(rejected_param(chat(R"(,"model":5)")), "model");
  EXPECT_EQ(rejected_param(chat(R"(,"logprobs":"no")")), "logprobs");
  EXPECT_EQ(rejected_param(chat(R"(,"logit_bias":[1])")), "logit_bias");
  EXPECT_EQ(rejected_param(chat(R"(,"parallel_tool_calls":"yes")")), "parallel_tool_calls");
}

TEST(OpenAiChat, StopBoundsAreEnforced) {
  std::string seventeen = R"(,"stop":[)";
  for (int i = 0; i < 17; ++i)
    seventeen += std::string(i ? "," : "") + "\"s" + std::to_string(i) + "\"";
  EXPECT_EQ(rejected_param(chat(seventeen + "]")), "stop");
  EXPECT_EQ(rejected_param(chat(R"(,"stop":["ok",")" + std::string(257, 'x') + "\"]")), "stop[1]");
  EXPECT_EQ(rejected_param(chat(R"(,"stop":[""])")), "stop[0]");
  EXPECT_EQ(rejected_param(chat(R"(,"stop":[1])")), "stop[0]");
  EXPECT_EQ(rejected_param(chat(R"(,"stop":7)")), "stop");
  EXPECT_EQ(rejected_param(chat(R"(,"stop":")" + std::string(256, 'x') + "\"")), "<decoded>");
}

TEST(OpenAiChat, MalformedResponseFormatIsRejected) {
  EXPECT_EQ(rejected_param(chat(R"(,"response_format":"json")")), "response_format");
  EXPECT_EQ(rejected_param(chat(R"(,"response_format":{"type":"xml"})")), "response_format.type");
  EXPECT_EQ(rejected_param(chat(R"(,"response_format":{"type":"json_schema"})")),
            "response_format.json_schema");
  EXPECT_EQ(rejected_param(chat(R"(,"response_format":{"type":"json_schema","json_schema":{"schema":"x"}})")),
            "response_format.json_schema.schema");
}

TEST(OpenAiChat, MalformedToolsAreRejectedNamingTheEntry) {
  EXPECT_EQ(rejected_param(chat(R"(,"tools":{})")), "tools");
  EXPECT_EQ(rejected_param(chat(R"(,"tools":[{"type":"retrieval"}])")), "tools[0].type");
  EXPECT_EQ(rejected_param(chat(R"(,"tools":[{"type":"function"}])")), "tools[0].function");
  EXPECT_EQ(rejected_param(chat(R"(,"tools":[{"type":"function","function":{"name":""}}])")),
            "tools[0].function.name");
  EXPECT_EQ(rejected_param(
                chat(R"(,"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"always")")),
            "tool_choice");
  EXPECT_EQ(
      rejected_param(chat(
          R"(,"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function"})")),
      "tool_choice.function.name");
}

TEST(OpenAiChat, ANamedToolChoiceIsForwarded) {
  auto r = oai::decode_chat(chat(
      R"(,"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"f"}})"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->tool_choice.at("function").at("name"), "f");
  EXPECT_TRUE(r->has_tools());
}

TEST(OpenAiChat, ErrorsCarryTheFieldInDetailsLikeTheNativeDecoder) {
  auto r = oai::decode_chat(chat(R"(,"top_p":2)"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "top_p: must be a number from 0 to 1");
  EXPECT_EQ(r.error().details.at("field"), "top_p");
}

// ---- decode_completion ----

TEST(OpenAiCompletion, PromptAndSamplingFieldsAreDecoded) {
  auto r = oai::decode_completion(
      R"({"model":"m","prompt":"Once upon","max_tokens":8,"temperature":0,"stop":"\n","stream":true,"stream_options":{"include_usage":true},"seed":3,"top_k":10})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->prompt, "Once upon");
  EXPECT_EQ(r->max_tokens, 8u);
  EXPECT_EQ(r->temperature, 0.0);
  EXPECT_EQ(r->stop, std::vector<std::string>{"\n"});
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_EQ(r->seed, 3);
  EXPECT_EQ(r->top_k, 10);
}

TEST(OpenAiCompletion, AnArrayOfOneStringIsAccepted) {
  auto r = oai::decode_completion(R"({"prompt":["abc"]})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->prompt, "abc");
}

TEST(OpenAiCompletion, BatchedTokenAndMissingPromptsAreRejected) {
  auto param = [](std::string_view body) {
    auto r = oai::decode_completion(body);
    return r ? std::string("<decoded>") : r.error().param;
  };
  EXPECT_EQ(param(R"({"prompt":["a","b"]})"), "prompt");
  EXPECT_EQ(param(R"({"prompt":[[1,2,3]]})"), "prompt[0]");
  EXPECT_EQ(param(R"({"prompt":[1,2,3]})"), "prompt");
  EXPECT_EQ(param(R"({"prompt":""})"), "prompt");
  EXPECT_EQ(param(R"({"model":"m"})"), "prompt");
  EXPECT_EQ(param(R"({"prompt":"x","n":3})"), "n");
  EXPECT_EQ(param(R"({"prompt":"x","best_of":2})"), "best_of");
  EXPECT_EQ(param(R"({"prompt":"x","echo":true})"), "echo");
  EXPECT_EQ(param(R"({"prompt":"x","logprobs":5})"), "logprobs");
  EXPECT_EQ(param(R"({"prompt":"x","suffix":"end"})"), "suffix");
  EXPECT_EQ(param(R"({"prompt":"x","temperature":-1})"), "temperature");
}

TEST(OpenAiCompletion, NeutralLegacyFieldsAreIgnoredAndUnknownOnesListed) {
  auto r = oai::decode_completion(
      R"({"prompt":"x","logprobs":0,"echo":false,"best_of":1,"suffix":"","user":"u","frobnicate":1})");
  ASSERT_TRUE(r) << r.error().message;
  for (auto f : {"logprobs", "echo", "best_of", "suffix", "user"})
    EXPECT_TRUE(contains(r->ignored_fields, f)) << f;
  EXPECT_EQ(r->unknown_fields, std::vector<std::string>{"frobnicate"});
}

// ---- cacheable ----

TEST(OpenAiCacheable, TemperatureZeroIsCacheable) {
  EXPECT_TRUE(oai::cacheable(*oai::decode_chat(chat(R"(,"temperature":0)")), false));
  EXPECT_FALSE(oai::cacheable(*oai::decode_chat(chat(R"(,"temperature":0.2)")), false));
}

TEST(OpenAiCacheable, ASeedMakesARequestCacheable) {
  EXPECT_TRUE(oai::cacheable(*oai::decode_chat(chat(R"(,"temperature":0.9,"seed":7)")), false));
  EXPECT_TRUE(oai::cacheable(*oai::decode_chat(chat(R"(,"seed":0)")), false));
}

TEST(OpenAiCacheable, LlamaCppsRandomSeedIsNotAFixedSeed) {
  EXPECT_FALSE(oai::cacheable(*oai::decode_chat(chat(R"(,"seed":4294967295)")), false));
}

TEST(OpenAiCacheable, NoTemperatureAndNoSeedIsNotCacheable) {
  EXPECT_FALSE(oai::cacheable(*oai::decode_chat(chat()), false));
}

TEST(OpenAiCacheable, ToolsMakeARequestUncacheable) {
  auto tools = R"(,"temperature":0,"seed":1,"tools":[{"type":"function","function":{"name":"f"}}])";
  EXPECT_FALSE(oai::cacheable(*oai::decode_chat(chat(tools)), false));
  EXPECT_TRUE(
      oai::cacheable(*oai::decode_chat(chat(std::string(tools) + R"(,"tool_choice":"none")")), false));
  EXPECT_TRUE(oai::cacheable(*oai::decode_chat(chat(R"(,"temperature":0,"tools":[])")), false));
}

TEST(OpenAiCacheable, LogprobsMakeARequestUncacheableEvenWithTheXRayCacheHeader) {
  EXPECT_FALSE(oai::cacheable(*oai::decode_chat(chat(R"(,"temperature":0,"logprobs":true)")), true));
  EXPECT_TRUE(oai::cacheable(*oai::decode_chat(chat(R"(,"temperature":0,"logprobs":false)")), false));
}

TEST(OpenAiCacheable, StructuredOutputsAreCandidatesOnlyAtTemperatureZero) {
  for (std::string rf :
       {R"(,"response_format":{"type":"json_object"})",
        R"(,"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{}}})"}) {
    EXPECT_TRUE(oai::cacheable(*oai::decode_chat(chat(rf + R"(,"temperature":0)")), false)) << rf;
    EXPECT_FALSE(oai::cacheable(*oai::decode_chat(chat(rf + R"(,"temperature":0.9,"seed":7)")), false)) << rf;
    EXPECT_FALSE(oai::cacheable(*oai::decode_chat(chat(rf + R"(,"temperature":0.5)")), true)) << rf;
    EXPECT_FALSE(oai::cacheable(*oai::decode_chat(chat(rf)), true)) << rf;
  }
  // response_format text is a plain chat.
  EXPECT_TRUE(
      oai::cacheable(*oai::decode_chat(chat(R"(,"response_format":{"type":"text"},"seed":7)")), false));
}

TEST(OpenAiCacheable, TheXRayCacheHeaderMakesAnyRequestWithoutToolsCacheable) {
  EXPECT_TRUE(oai::cacheable(*oai::decode_chat(chat(R"(,"temperature":1.2)")), true));
}

// Review finding: `x-ray-cache: on` cached tool requests, and a hit returned no tool_calls.
TEST(OpenAiCacheable, ToolRequestsAreNeverCacheableEvenWithTheXRayCacheHeader) {
  EXPECT_FALSE(oai::cacheable(
      *oai::decode_chat(chat(R"(,"tools":[{"type":"function","function":{"name":"f"}}])")), true));
  EXPECT_FALSE(oai::cacheable(
      *oai::decode_chat(chat(R"(,"temperature":0,"tools":[{"type":"function","function":{"name":"f"}}])")),
      false));
}

TEST(OpenAiCacheable, CompletionsFollowTheSameRule) {
  EXPECT_TRUE(oai::cacheable(*oai::decode_completion(R"({"prompt":"x","temperature":0})"), false));
  EXPECT_TRUE(oai::cacheable(*oai::decode_completion(R"({"prompt":"x","seed":5})"), false));
  EXPECT_FALSE(oai::cacheable(*oai::decode_completion(R"({"prompt":"x"})"), false));
  EXPECT_TRUE(oai::cacheable(*oai::decode_completion(R"({"prompt":"x"})"), true));
}

// ---- canonical_messages ----

TEST(OpenAiCanonical, EveryMessageFieldChangesTheCanonicalText) {
  oai::message base{"user", "hello", std::string("ann"), std::nullopt, nullptr};
  auto const text = oai::canonical_messages({base});
  EXPECT_EQ(oai::canonical_messages({base}), text);

  auto role = base;
  role.role = "system";
  auto content = base;
  content.content = "hello!";
  auto name = base;
  name.name = "bob";
  auto no_name = base;
  no_name.name.reset();
  auto empty_name = base;
  empty_name.name = "";
  auto call_id = base;
  call_id.tool_call_id = "c1";
  auto calls = base;
  calls.tool_calls = boost::json::parse(R"([{"id":"c1","function":{"name":"f","arguments":"{}"}}])");
  auto calls2 = base;
  calls2.tool_calls = boost::json::parse(R"([{"id":"c1","function":{"name":"f","arguments":"{\"a\":1}"}}])");
  for (auto const& m : {role, content, name, no_name, empty_name, call_id, calls, calls2})
    EXPECT_NE(oai::canonical_messages({m}), text) << oai::canonical_messages({m});
  EXPECT_NE(oai::canonical_messages({no_name}), oai::canonical_messages({empty_name}));
  EXPECT_NE(oai::canonical_messages({calls}), oai::canonical_messages({calls2}));
}

TEST(OpenAiCanonical, MessageBoundariesCannotBeForgedThroughContent) {
  oai::message a{"user", "a", std::nullopt, std::nullopt, nullptr};
  oai::message b{"user", "b", std::nullopt, std::nullopt, nullptr};
  oai::message joined{"user", "a\nb", std::nullopt, std::nullopt, nullptr};
  EXPECT_NE(oai::canonical_messages({a, b}), oai::canonical_messages({joined}));
  EXPECT_NE(oai::canonical_messages({a, b}), oai::canonical_messages({b, a}));
}

TEST(OpenAiCanonical, ToolCallKeyOrderDoesNotMatter) {
  oai::message x{
      "assistant", "", std::nullopt, std::nullopt,
      boost::json::parse(R"([{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}])")};
  auto y = x;
  y.tool_calls =
      boost::json::parse(R"([{"function":{"arguments":"{}","name":"f"},"type":"function","id":"c"}])");
  EXPECT_EQ(oai::canonical_messages({x}), oai::canonical_messages({y}));
}

TEST(OpenAiCanonical, DeveloperAndSystemMessagesShareACacheKey) {
  auto dev =
      oai::decode_chat(R"({"messages":[{"role":"developer","content":"s"},{"role":"user","content":"u"}]})");
  auto sys =
      oai::decode_chat(R"({"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}]})");
  EXPECT_EQ(oai::canonical_messages(dev->messages), oai::canonical_messages(sys->messages));
}

// ---- resolve_model ----

TEST(OpenAiModel, AnyNameResolvesToTheConfiguredIdWhenLenient) {
  auto cfg = tiny();
  EXPECT_EQ(oai::resolve_model("gpt-4o-mini", cfg).value(), cfg.model.id);
  EXPECT_EQ(oai::resolve_model("", cfg).value(), cfg.model.id);
  EXPECT_FALSE(oai::is_configured_model("gpt-4o-mini", cfg));
  EXPECT_TRUE(oai::is_configured_model(cfg.model.id, cfg));
}

TEST(OpenAiModel, StrictModeAcceptsTheIdAndItsAliases) {
  auto cfg = tiny();
  cfg.openai.strict_model_names = true;
  cfg.model.aliases = {"small", "tiny-llama"};
  EXPECT_EQ(oai::resolve_model(cfg.model.id, cfg).value(), cfg.model.id);
  EXPECT_EQ(oai::resolve_model("tiny-llama", cfg).value(), cfg.model.id);
  EXPECT_TRUE(oai::is_configured_model("small", cfg));
}

TEST(OpenAiModel, StrictModeRejectsUnknownNamesListingTheValidIds) {
  auto cfg = tiny();
  cfg.openai.strict_model_names = true;
  cfg.model.aliases = {"small"};
  auto r = oai::resolve_model("gpt-4o-mini", cfg);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::model_not_found);
  EXPECT_EQ(r.error().param, "model");
  EXPECT_EQ(r.error().message,
            "The model 'gpt-4o-mini' does not exist; valid ids: " + cfg.model.id + ", small");
  auto missing = oai::resolve_model("", cfg);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, errc::model_not_found);
  EXPECT_NE(missing.error().message.find(cfg.model.id), std::string::npos);
}

TEST(OpenAiModel, NamesAreCaseSensitive) {
  auto cfg = tiny();
  cfg.openai.strict_model_names = true;
  EXPECT_FALSE(oai::resolve_model("TINY-DEV", cfg));
}

// ---- context_length_exceeded (built by the runtime, answered on the OpenAI routes) ----

TEST(OpenAiContext, TheMessageHasTheWordingClientsRecognise) {
  auto err = ray::runtime::context_length_exceeded(1024, 1000, 200);
  EXPECT_EQ(err.code, errc::context_length_exceeded);
  EXPECT_EQ(err.param, "messages");
  EXPECT_EQ(
      err.message,
      "This model's maximum context length is 1024 tokens. However, you requested 1200 tokens (1000 in the "
      "messages, 200 in the completion). Please reduce the length of the messages or completion.");
  EXPECT_EQ(err.details.at("contextWindow"), 1024);
  EXPECT_EQ(err.details.at("promptTokens"), 1000);
  EXPECT_EQ(err.details.at("completionTokens"), 200);
}

TEST(OpenAiContext, TheRequestedTotalDoesNotOverflow) {
  auto err = ray::runtime::context_length_exceeded(4096, 4294967295u, 10);
  EXPECT_NE(err.message.find("you requested 4294967305 tokens"), std::string::npos) << err.message;
}

}  // namespace

// ---- decode_responses ----

namespace {
std::string responses_param(std::string_view body, errc code) {
  auto r = oai::decode_responses(body);
  if (r) return "<decoded>";
  EXPECT_EQ(r.error().code, code) << r.error().message;
  return r.error().param;
}
}  // namespace

TEST(OpenAiResponses, AStringInputAndInstructionsBecomeASystemAndAUserMessage) {
  auto r = oai::decode_responses(
      R"({"model":"gpt-4.1","instructions":"be brief","input":"hi","max_output_tokens":9,"temperature":0,)"
      R"("store":true,"metadata":{"k":"v"},"frobnicate":1})");
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->chat.messages.size(), 2u);
  EXPECT_EQ(r->chat.messages[0].role, "system");
  EXPECT_EQ(r->chat.messages[0].content, "be brief");
  EXPECT_EQ(r->chat.messages[1].role, "user");
  EXPECT_EQ(r->chat.messages[1].content, "hi");
  EXPECT_EQ(r->chat.max_tokens, 9u);
  EXPECT_EQ(r->chat.temperature, 0.0);
  EXPECT_EQ(r->instructions, "be brief");
  EXPECT_EQ(boost::json::serialize(r->metadata), R"({"k":"v"})");
  EXPECT_EQ(r->chat.unknown_fields, std::vector<std::string>{"frobnicate"});
  EXPECT_TRUE(oai::cacheable(r->chat, false));
}

TEST(OpenAiResponses, MessageItemsWithTextPartsAreTheConversation) {
  auto r = oai::decode_responses(
      R"({"input":[{"role":"developer","content":"rules"},{"type":"message","role":"user","content":)"
      R"([{"type":"input_text","text":"a"},{"type":"input_text","text":"b"}]},)"
      R"({"role":"assistant","content":[{"type":"output_text","text":"c"}]}]})");
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->chat.messages.size(), 3u);
  EXPECT_EQ(r->chat.messages[0].role, "system");
  EXPECT_EQ(r->chat.messages[1].content, "a\nb");
  EXPECT_EQ(r->chat.messages[2].role, "assistant");
  EXPECT_EQ(r->chat.messages[2].content, "c");
}

TEST(OpenAiResponses, TextFormatJsonSchemaBecomesResponseFormat) {
  auto r =
      oai::decode_responses(R"({"input":"x","text":{"format":{"type":"json_schema","name":"w","strict":true,)"
                            R"("schema":{"type":"object","properties":{"a":{"type":"string"}}}}}})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->chat.response_format_type, "json_schema");
  EXPECT_EQ(r->chat.response_format.at("json_schema").at("name").as_string(), "w");
  EXPECT_TRUE(r->chat.response_format.at("json_schema").at("schema").is_object());
  EXPECT_EQ(r->text_format.at("type").as_string(), "json_schema");
}

TEST(OpenAiResponses, StatefulAndUnsupportedFieldsAreRefusedNamingThem) {
  EXPECT_EQ(responses_param(R"({"input":"x","previous_response_id":"resp_1"})", errc::unsupported_parameter),
            "previous_response_id");
  EXPECT_EQ(responses_param(R"({"input":"x","conversation":"c_1"})", errc::unsupported_parameter),
            "conversation");
  EXPECT_EQ(responses_param(R"({"input":"x","background":true})", errc::unsupported_parameter), "background");
  EXPECT_EQ(responses_param(R"({"input":"x","tools":[{"type":"function","name":"f"}]})",
                            errc::unsupported_parameter),
            "tools");
  EXPECT_EQ(responses_param(R"({"input":[{"type":"function_call_output","call_id":"c","output":"1"}]})",
                            errc::unsupported_parameter),
            "input[0].type");
  EXPECT_EQ(
      responses_param(R"({"input":[{"role":"user","content":[{"type":"input_image","image_url":"u"}]}]})",
                      errc::invalid_request),
      "input[0].content[0].type");
  EXPECT_EQ(responses_param(R"({"instructions":"x"})", errc::invalid_request), "input");
  EXPECT_EQ(responses_param(R"({"input":[]})", errc::invalid_request), "input");
  EXPECT_EQ(responses_param(R"({"input":"x","temperature":-1})", errc::invalid_request), "temperature");
  auto r = oai::decode_responses(R"({"input":"x","previous_response_id":"resp_1"})");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("stateless"), std::string::npos) << r.error().message;
  EXPECT_EQ(oai::decode_responses("{nope").error().code, errc::invalid_json);
}
