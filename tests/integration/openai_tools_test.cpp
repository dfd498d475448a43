// Tool calls, structured outputs, logprobs, cached_tokens and /v1/responses through the real binary attached
// to the llama-server double (http-api.md §3, docs/openai.md). The double's tool-call, json_schema and
// logprobs shapes are derived from llama-server's documented output
// (tests/fixtures/llama-server/chat-tool-call-*.http).
#include "openai_support.hpp"

namespace ray::itest {
namespace {

constexpr char kTools[] =
    R"("tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}},)"
    R"({"type":"function","function":{"name":"get_time","parameters":{"type":"object"}}}])";

std::string tool_body(bool stream, std::string const& extra = {}) {
  return std::string(
             R"({"model":"m","max_tokens":200,"messages":[{"role":"user","content":"weather in two cities?"}],)") +
         kTools + R"(,"tool_choice":"auto","parallel_tool_calls":true)" +
         (stream ? R"(,"stream":true)" : "") + extra + "}";
}

// The `delta.tool_calls` arrays of a chat stream, serialized, and the last finish_reason.
std::vector<std::string> tool_deltas(std::string const& sse, std::string* finish = nullptr) {
  std::vector<std::string> out;
  for (auto const& e : sse_data_events(sse)) {
    if (e == "[DONE]") continue;
    auto v = boost::json::parse(e);
    auto const& choices = v.at("choices").as_array();
    if (choices.empty()) continue;
    auto const& c = choices.at(0).as_object();
    if (auto const* d = c.at("delta").as_object().if_contains("tool_calls"))
      out.push_back(boost::json::serialize(*d));
    if (finish && c.at("finish_reason").is_string()) *finish = c.at("finish_reason").as_string();
  }
  return out;
}

boost::json::object last_sent(fake_llama const& f) {
  auto st = f.stats();
  auto const& recent = st.at("recent").as_array();
  return recent.back().at("body").as_object();
}

// How many of the double's slots are processing, from its /slots view (-1 when it does not answer).
int slots_processing(fake_llama const& f) {
  auto r = roundtrip(f.port(), get("/slots"));
  if (!r || r->status != 200) return -1;
  int n = 0;
  auto const slots = boost::json::parse(r->body);
  for (auto const& slot : slots.as_array())
    n += slot.at("is_processing").as_bool() ? 1 : 0;
  return n;
}

struct attached {
  fake_llama fake;
  ray_server s;
  explicit attached(std::vector<std::string> args) : fake(std::move(args)), s(no_warm(), attach(fake)) {}
  static boost::json::object no_warm() {
    auto cfg = attach_config();
    cfg["model"].as_object()["warmOnBoot"] = false;
    return cfg;
  }
  bool up() { return fake.ok() && s.wait_listening() && ready(s); }
};

TEST(OpenAiTools, StreamedToolCallDeltasPassThroughAsTheBackendSentThem) {
  attached a({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(a.up()) << a.fake.output();
  auto r = post_one(a.s, "/v1/chat/completions", tool_body(true));
  ASSERT_EQ(r.status, 200) << r.describe();
  std::string finish;
  auto through_ray = tool_deltas(r.body, &finish);
  // The same body straight to the double: its deltas are deterministic for a prompt (ids included).
  auto direct = roundtrip(a.fake.port(), post_json("/v1/chat/completions", tool_body(true)));
  ASSERT_TRUE(direct);
  std::string direct_finish;
  auto from_double = tool_deltas(direct->body, &direct_finish);
  ASSERT_GT(from_double.size(), 4u);
  EXPECT_EQ(through_ray, from_double);
  EXPECT_EQ(finish, "tool_calls");
  EXPECT_EQ(direct_finish, "tool_calls");
  // Two parallel calls, indexes 0 and 1, each with arguments that assemble into JSON.
  boost::json::array calls;
  for (auto const& d : through_ray) {
    auto const delta = boost::json::parse(d);
    for (auto const& piece : delta.as_array()) {
      auto i = static_cast<std::size_t>(piece.at("index").as_int64());
      while (calls.size() <= i)
        calls.push_back(boost::json::object{{"args", ""}});
      auto& c = calls[i].as_object();
      if (auto const* fn = piece.as_object().if_contains("function"))
        if (auto const* args = fn->as_object().if_contains("arguments"))
          c["args"] = std::string(c["args"].as_string()) + std::string(args->as_string());
    }
  }
  ASSERT_EQ(calls.size(), 2u);
  for (auto const& c : calls) {
    auto parsed = boost::json::parse(c.at("args").as_string());
    EXPECT_EQ(parsed.at("note").as_string(), "say \"hi\"");
  }
  // Ray's request (the direct one came after it).
  auto const stats = a.fake.stats();
  auto const& recent = stats.at("recent").as_array();
  auto const& ray_sent = recent.at(recent.size() - 2).at("body").as_object();
  EXPECT_TRUE(ray_sent.at("parallel_tool_calls").as_bool());
  EXPECT_EQ(ray_sent.at("tool_choice").as_string(), "auto");
  EXPECT_FALSE(ray_sent.contains("response_format")) << "a tool request is not turned into JSON mode";
}

TEST(OpenAiTools, NonStreamingToolCallsAndTheAssistantTurnThatCalledThemGoBack) {
  attached a({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(a.up()) << a.fake.output();
  std::string const body = tool_body(false, R"(,"temperature":0)");
  for (int i = 0; i < 2; ++i) {
    auto r = post_one(a.s, "/v1/chat/completions", body);
    ASSERT_EQ(r.status, 200) << r.describe();
    EXPECT_FALSE(r.has_header("x-ray-cache"));
    auto v = json_body(r);
    auto const& choice = v->at("choices").at(0).as_object();
    EXPECT_EQ(choice.at("finish_reason").as_string(), "tool_calls");
    EXPECT_TRUE(choice.at("message").at("content").is_null());
    auto const& calls = choice.at("message").at("tool_calls").as_array();
    ASSERT_EQ(calls.size(), 2u) << r.body;
    EXPECT_EQ(calls[0].at("function").at("name").as_string(), "get_weather");
    EXPECT_EQ(calls[1].at("function").at("name").as_string(), "get_time");
    EXPECT_TRUE(boost::json::parse(calls[0].at("function").at("arguments").as_string()).is_object());
  }
  EXPECT_EQ(a.fake.stats().at("requests").at("/v1/chat/completions").as_int64(), 2)
      << "temperature 0 with tools is neither cached nor joined";

  // The next turn: the assistant's tool_calls and the tool's answer reach the backend.
  std::string const turn2 =
      std::string(R"({"model":"m","max_tokens":5,"messages":[{"role":"user","content":"weather?"},)") +
      R"({"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",)" +
      R"("function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},)" +
      R"({"role":"tool","tool_call_id":"call_1","content":"sunny"}],)" + kTools + "}";
  auto r = post_one(a.s, "/v1/chat/completions", turn2);
  ASSERT_EQ(r.status, 200) << r.describe();
  auto sent = last_sent(a.fake);
  auto const& msgs = sent.at("messages").as_array();
  ASSERT_EQ(msgs.size(), 3u);
  EXPECT_TRUE(msgs[1].at("content").is_null());
  EXPECT_EQ(msgs[1].at("tool_calls").at(0).at("id").as_string(), "call_1");
  EXPECT_EQ(msgs[2].at("tool_call_id").as_string(), "call_1");
}

// Acceptance 2: a client that leaves mid tool-call stream frees the backend slot at once.
TEST(OpenAiTools, AClientLeavingMidToolCallStreamFreesTheBackendSlot) {
  attached a({"-c", "2048", "-np", "2", "--gen-tps", "10"});
  ASSERT_TRUE(a.up()) << a.fake.output();
  auto c = a.s.connect();
  ASSERT_TRUE(c.send(post_json("/v1/chat/completions", tool_body(true))));
  // The stream starts with the first tool-call delta (Ray sends its headers with the first delta; the double
  // sends ~30 pieces at 10/s, so the call is mid-way for seconds).
  ASSERT_TRUE(c.wait_readable(rt::in(kIo)));
  auto processing = [&] { return slots_processing(a.fake); };
  ASSERT_EQ(processing(), 1);
  c.close();
  EXPECT_TRUE(eventually([&] { return processing() == 0; }, 1s));
  EXPECT_TRUE(eventually([&] { return a.fake.stats().at("cancelled_streams").as_int64() == 1; }, 1s));
  EXPECT_LT(a.fake.stats().at("completed").as_int64(), 1) << "the call was not run to its end";
}

TEST(OpenAiUsage, CachedTokensFromTheBackendReachTheClientStreamingOrNot) {
  attached a({"-c", "2048", "-np", "1"});
  ASSERT_TRUE(a.up()) << a.fake.output();
  std::string const sys(400, 's');
  std::string const body = R"({"model":"m","max_tokens":3,"messages":[{"role":"system","content":")" + sys +
                           R"("},{"role":"user","content":"q"}]})";
  ASSERT_EQ(post_one(a.s, "/v1/chat/completions", body).status, 200);
  auto r = post_one(a.s, "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.describe();
  auto const cached = a.fake.stats().at("slots").at(0).at("last_cached_tokens").as_int64();
  ASSERT_GT(cached, 90);
  EXPECT_EQ(json_body(r)->at("usage").at("prompt_tokens_details").at("cached_tokens").as_int64(), cached);

  std::string sbody = body;
  sbody.insert(sbody.size() - 1, R"(,"stream":true,"stream_options":{"include_usage":true})");
  auto s = post_one(a.s, "/v1/chat/completions", sbody);
  ASSERT_EQ(s.status, 200) << s.describe();
  auto events = sse_data_events(s.body);
  ASSERT_GE(events.size(), 2u);
  auto usage = boost::json::parse(events[events.size() - 2]);
  EXPECT_EQ(usage.at("usage").at("prompt_tokens_details").at("cached_tokens").as_int64(),
            a.fake.stats().at("slots").at(0).at("last_cached_tokens").as_int64())
      << s.body;
}

TEST(OpenAiLogprobs, LogprobsAreForwardedAndReturnedAndMoreThan20TopLogprobsIs400) {
  attached a({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(a.up()) << a.fake.output();
  std::string const body =
      R"({"model":"m","max_tokens":4,"logprobs":true,"top_logprobs":3,"messages":[{"role":"user","content":"x"}]})";
  auto r = post_one(a.s, "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.describe();
  auto const answer = json_body(r);
  ASSERT_TRUE(answer) << r.describe();
  auto const& content = answer->at("choices").at(0).at("logprobs").at("content").as_array();
  ASSERT_EQ(content.size(), 4u) << r.body;
  EXPECT_EQ(content[0].at("top_logprobs").as_array().size(), 3u);
  auto sent = last_sent(a.fake);
  EXPECT_TRUE(sent.at("logprobs").as_bool());
  EXPECT_EQ(sent.at("top_logprobs").as_int64(), 3);

  std::string sbody = body;
  sbody.insert(sbody.size() - 1, R"(,"stream":true)");
  auto s = post_one(a.s, "/v1/chat/completions", sbody);
  ASSERT_EQ(s.status, 200) << s.describe();
  int with_logprobs = 0;
  for (auto const& e : sse_data_events(s.body)) {
    if (e == "[DONE]") continue;
    auto v = boost::json::parse(e);
    auto const& c = v.at("choices").at(0).as_object();
    if (auto const* lp = c.if_contains("logprobs"); lp && lp->is_object()) {
      ++with_logprobs;
      EXPECT_EQ(lp->at("content").at(0).at("token").as_string(), c.at("delta").at("content").as_string());
    }
  }
  EXPECT_EQ(with_logprobs, 4) << s.body;

  auto over = post_one(
      a.s, "/v1/chat/completions",
      R"({"model":"m","logprobs":true,"top_logprobs":21,"messages":[{"role":"user","content":"x"}]})");
  ASSERT_EQ(over.status, 400) << over.describe();
  auto const over_body = json_body(over);
  auto const& e = over_body->at("error").as_object();
  EXPECT_EQ(e.at("param").as_string(), "top_logprobs");
  EXPECT_EQ(e.at("code").as_string(), "invalid_request");
  EXPECT_EQ(e.at("type").as_string(), "invalid_request_error");
}

TEST(OpenAiStructured, JsonSchemaIsForwardedAndTheAnswerFollowsIt) {
  attached a({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(a.up()) << a.fake.output();
  std::string const body =
      R"({"model":"m","temperature":0,"max_tokens":100,"messages":[{"role":"user","content":"weather"}],)"
      R"("response_format":{"type":"json_schema","json_schema":{"name":"w","strict":true,"schema":)"
      R"({"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city","days"]}}}})";
  auto r = post_one(a.s, "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.describe();
  auto content =
      boost::json::parse(json_body(r)->at("choices").at(0).at("message").at("content").as_string());
  EXPECT_TRUE(content.at("city").is_string());
  EXPECT_TRUE(content.at("days").is_int64());
  auto sent = last_sent(a.fake);
  EXPECT_EQ(sent.at("response_format").at("type").as_string(), "json_schema");
  EXPECT_EQ(sent.at("response_format").at("json_schema").at("name").as_string(), "w");
  // Temperature 0: a cache candidate — the second answer is Ray's.
  auto again = post_one(a.s, "/v1/chat/completions", body);
  EXPECT_EQ(again.header("x-ray-cache"), "hit");
}

// ---- /v1/responses

TEST(OpenAiResponses, ANonStreamingResponseIsTheResponseObjectWithOutputText) {
  attached a({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(a.up()) << a.fake.output();
  auto r = post_one(a.s, "/v1/responses",
                    R"({"model":"gpt-4.1","instructions":"be brief","input":"hello","max_output_tokens":5})");
  ASSERT_EQ(r.status, 200) << r.describe();
  auto v = json_body(r);
  EXPECT_EQ(v->at("object").as_string(), "response");
  EXPECT_EQ(std::string(v->at("id").as_string()).substr(0, 5), "resp_");
  EXPECT_EQ(v->at("status").as_string(), "incomplete");  // the double fills max_output_tokens
  EXPECT_EQ(v->at("incomplete_details").at("reason").as_string(), "max_output_tokens");
  EXPECT_EQ(v->at("model").as_string(), "tiny-llama");
  EXPECT_FALSE(v->at("store").as_bool());
  auto const& part = v->at("output").at(0).at("content").at(0).as_object();
  EXPECT_EQ(part.at("type").as_string(), "output_text");
  EXPECT_FALSE(part.at("text").as_string().empty());
  EXPECT_EQ(v->at("usage").at("output_tokens").as_int64(), 5);
  auto const sent = last_sent(a.fake);
  auto const& msgs = sent.at("messages").as_array();
  ASSERT_EQ(msgs.size(), 2u);
  EXPECT_EQ(msgs[0].at("role").as_string(), "system");
  EXPECT_EQ(msgs[0].at("content").as_string(), "be brief");
  EXPECT_EQ(sent.at("max_tokens").as_int64(), 5);
}

TEST(OpenAiResponses, AStreamIsTheEventSequenceWithContiguousSequenceNumbers) {
  attached a({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(a.up()) << a.fake.output();
  auto r = post_one(a.s, "/v1/responses", R"({"input":"hello","max_output_tokens":4,"stream":true})");
  ASSERT_EQ(r.status, 200) << r.describe();
  std::vector<std::string> types;
  std::string deltas, done_text;
  std::int64_t seq = 0;
  for (auto const& [name, e] : sse_named_events(r.body)) {
    auto v = boost::json::parse(e).as_object();
    types.emplace_back(v.at("type").as_string());
    EXPECT_EQ(name, types.back()) << "the event: line names the event's type";
    EXPECT_EQ(v.at("sequence_number").as_int64(), seq++) << e;
    if (types.back() == "response.output_text.delta") deltas += v.at("delta").as_string();
    if (types.back() == "response.output_text.done") done_text = v.at("text").as_string();
  }
  EXPECT_NE(r.body.find("event: response.created\n"), std::string::npos);
  ASSERT_GE(types.size(), 9u);
  std::vector<std::string> const head{"response.created", "response.in_progress",
                                      "response.output_item.added", "response.content_part.added"};
  EXPECT_EQ(std::vector<std::string>(types.begin(), types.begin() + 4), head);
  std::vector<std::string> const tail{"response.output_text.done", "response.content_part.done",
                                      "response.output_item.done", "response.incomplete"};
  EXPECT_EQ(std::vector<std::string>(types.end() - 4, types.end()), tail);
  EXPECT_EQ(std::count(types.begin(), types.end(), "response.output_text.delta"), 4);
  EXPECT_EQ(deltas, done_text);
  EXPECT_EQ(r.body.find("[DONE]"), std::string::npos);
}

TEST(OpenAiResponses, AClientLeavingMidStreamFreesTheBackendSlot) {
  attached a({"-c", "2048", "-np", "2", "--gen-tps", "10"});
  ASSERT_TRUE(a.up()) << a.fake.output();
  auto c = a.s.connect();
  ASSERT_TRUE(c.send(
      post_json("/v1/responses", R"({"input":"a long story","max_output_tokens":200,"stream":true})")));
  ASSERT_TRUE(c.wait_readable(rt::in(kIo)));  // response.created … went out with the first token
  ASSERT_EQ(slots_processing(a.fake), 1);
  c.close();
  EXPECT_TRUE(eventually([&] { return slots_processing(a.fake) == 0; }, 1s));
  EXPECT_TRUE(eventually([&] { return a.fake.stats().at("cancelled_streams").as_int64() == 1; }, 1s));
}

TEST(OpenAiResponses, PreviousResponseIdIs400UnsupportedParameter) {
  attached a({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(a.up()) << a.fake.output();
  for (bool stream : {false, true}) {
    auto r = post_one(a.s, "/v1/responses",
                      std::string(R"({"input":"x","previous_response_id":"resp_abc")") +
                          (stream ? R"(,"stream":true})" : "}"));
    ASSERT_EQ(r.status, 400) << r.describe();
    auto const body = json_body(r);
    auto const& e = body->at("error").as_object();
    EXPECT_EQ(e.at("code").as_string(), "unsupported_parameter");
    EXPECT_EQ(e.at("param").as_string(), "previous_response_id");
    EXPECT_NE(std::string(e.at("message").as_string()).find("stateless"), std::string::npos);
  }
  EXPECT_EQ(a.fake.stats().at("inference_requests").as_int64(), 0);
}

}  // namespace
}  // namespace ray::itest
