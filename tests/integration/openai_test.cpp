// The OpenAI-compatible surface through the real binary (http-api.md §3). So far: the model list.
#include "openai_support.hpp"

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

TEST(OpenAiChat, RejectedFieldsNameTheirParam) {
  ray_server s(test_config(), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto n2 = post_one(s, "/v1/chat/completions",
                     R"({"model":"m","messages":[{"role":"user","content":"x"}],"n":2})");
  ASSERT_EQ(n2.status, 400);
  EXPECT_EQ(rt::string_field(json_body(n2)->at("error").as_object(), "param"), "n");
  auto logprobs = post_one(s, "/v1/chat/completions",
                           R"({"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true,)"
                           R"("top_logprobs":21})");
  ASSERT_EQ(logprobs.status, 400) << logprobs.describe();
  EXPECT_EQ(rt::string_field(json_body(logprobs)->at("error").as_object(), "param"), "top_logprobs");
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

TEST(OpenAiStream, ChunksArriveAsTheyAreProducedAndEndWithDone) {
  // The mock streams one word every 50 ms: the first event is out long before the last word is produced.
  auto cfg = test_config({}, {{"latencyMs", 0}, {"tokensPerSecond", 20}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto c = s.connect();
  ASSERT_TRUE(c.send(post_json("/v1/chat/completions", stream_body("a b c d e f g h", 40, true))));
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r) << c.last_error();
  ASSERT_EQ(r->status, 200) << r->describe();
  EXPECT_EQ(r->header("content-type").value_or(""), "text/event-stream");
  EXPECT_EQ(r->header("cache-control").value_or(""), "no-cache");
  EXPECT_TRUE(r->chunked);
  EXPECT_GE(std::chrono::duration_cast<std::chrono::milliseconds>(r->done_at - r->head_at).count(), 200)
      << "the body was not streamed: headers and end arrived together";
  auto events = sse_data_events(r->body);
  ASSERT_GE(events.size(), 5u) << r->body;
  EXPECT_EQ(events.back(), "[DONE]");
  auto usage = boost::json::parse(events[events.size() - 2]).as_object();
  EXPECT_TRUE(usage.contains("usage")) << events[events.size() - 2];
  auto first = boost::json::parse(events[0]).as_object();
  EXPECT_EQ(first.at("object").as_string(), "chat.completion.chunk");
  EXPECT_EQ(first.at("choices").at(0).at("delta").at("role").as_string(), "assistant");
}

TEST(OpenAiStream, AdmissionRejectionsAreRealStatusesNotEvents) {
  auto cfg = with(test_config(), {{"server", boost::json::object{{"requestBodyLimitBytes", 60000}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto c = s.connect();
  ASSERT_TRUE(c.send(post_json("/v1/chat/completions", stream_body(std::string(20000, 'a'), 10))));
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400) << r->describe();
  EXPECT_EQ(rt::string_field(json_body(*r)->at("error").as_object(), "code"), "context_length_exceeded");
}

TEST(OpenAiStream, KeepAlivesAreSentWhileTheRequestWaits) {
  auto cfg =
      with(test_config({}, {{"latencyMs", 600}}), {{"server", boost::json::object{{"sseKeepAliveMs", 100}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto c = s.connect();
  ASSERT_TRUE(c.send(post_json("/v1/chat/completions", stream_body("hello", 5))));
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_NE(r->body.find(": ping\n\n"), std::string::npos) << r->body;
  EXPECT_EQ(sse_data_events(r->body).back(), "[DONE]");
}

TEST(OpenAiStream, AClientLeavingMidAnswerClosesTheUpstreamStream) {
  fake_llama fake({"-c", "2048", "-np", "2", "--gen-tps", "10"});
  ASSERT_TRUE(fake.ok()) << fake.output();
  auto const port = fake.port();
  ray_server s(attach_config(), attach(fake));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  auto c = s.connect();
  ASSERT_TRUE(c.send(post_json("/v1/chat/completions", stream_body("tell a long story", 100))));
  ASSERT_TRUE(c.wait_readable(rt::in(kIo)));  // the stream has started (headers with the first token)
  c.close();
  // The double (10 tokens/s = 100 ms per token) sees its connection closed within 5 token intervals.
  auto stats = [&] {
    auto r = roundtrip(port, get("/__stats"));
    return r ? json_body(*r).value_or(boost::json::object{}) : boost::json::object{};
  };
  EXPECT_TRUE(eventually(
      [&] {
        auto st = stats();
        return st.contains("cancelled_streams") && st.at("cancelled_streams").as_int64() >= 1;
      },
      500ms));
  EXPECT_TRUE(
      eventually([&] { return counter(s.port(), "ray_cancellations_total{phase=\"decode\"}") == 1; }));
}

TEST(OpenAiStream, IdenticalStreamsShareOneUpstreamCallAndALateJoinerGetsTheWholeSequence) {
  fake_llama fake({"-c", "2048", "-np", "2", "--gen-tps", "20", "--hang-before-first-token"});
  ASSERT_TRUE(fake.ok()) << fake.output();
  auto const port = fake.port();
  auto cfg = attach_config();
  cfg["model"].as_object()["warmOnBoot"] = false;
  ray_server s(cfg, attach(fake));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  std::string const body = stream_body("the same question", 12);
  std::vector<rt::raw_client> clients;
  for (int i = 0; i < 8; ++i) {
    clients.push_back(s.connect());
    ASSERT_TRUE(clients.back().send(post_json("/v1/chat/completions", body)));
  }
  ASSERT_TRUE(eventually([&] { return counter(s.port(), "ray_dedupe_joins_total") == 7; }));
  ASSERT_TRUE(roundtrip(port, post_json("/__control", R"({"hang_before_first_token":false})")));
  // A ninth client joins once tokens are flowing.
  auto first = clients[0].wait_readable(rt::in(kIo));
  ASSERT_TRUE(first);
  auto late = s.connect();
  ASSERT_TRUE(late.send(post_json("/v1/chat/completions", body)));
  std::vector<std::vector<std::string>> sequences;
  for (auto* c : {&clients[0], &clients[1], &clients[2], &clients[3], &clients[4], &clients[5], &clients[6],
                  &clients[7], &late}) {
    auto r = c->read_response(rt::in(kIo));
    ASSERT_TRUE(r) << c->last_error();
    ASSERT_EQ(r->status, 200) << r->describe();
    std::vector<std::string> seq;
    for (auto const& e : sse_data_events(r->body))
      seq.push_back(without_ids(e));
    sequences.push_back(std::move(seq));
  }
  for (std::size_t i = 1; i < sequences.size(); ++i)
    EXPECT_EQ(sequences[i], sequences[0]) << "client " << i;
  EXPECT_GE(sequences[0].size(), 4u);
  auto st = roundtrip(port, get("/__stats"));
  ASSERT_TRUE(st);
  EXPECT_EQ(json_body(*st)->at("requests").at("/v1/chat/completions").as_int64(), 1) << st->body;
  EXPECT_EQ(counter(s.port(), "ray_dedupe_joins_total"), 8);
}

TEST(OpenAiDeadline, ANonStreamingAnswerCutByTheDeadlineIsReturnedWithFinishReasonLength) {
  // 10 words/s and a 600 ms total deadline: a few words are out when the deadline fires.
  auto cfg = with(test_config({}, {{"latencyMs", 0}, {"tokensPerSecond", 10}}),
                  {{"scheduler", boost::json::object{{"requestTimeoutMs", 600}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto c = s.connect();
  ASSERT_TRUE(c.send(post_json(
      "/v1/chat/completions",
      R"({"model":"m","max_tokens":150,"messages":[{"role":"user","content":"w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20"}]})")));
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->describe();
  EXPECT_EQ(r->header("x-ray-truncated").value_or(""), "deadline");
  auto body = json_body(*r);
  ASSERT_TRUE(body) << r->describe();
  auto const& choice = body->at("choices").as_array().at(0).as_object();
  EXPECT_EQ(choice.at("finish_reason").as_string(), "length");
  EXPECT_FALSE(choice.at("message").at("content").as_string().empty());

  // The native route keeps its contract: the same deadline is 504 request_timeout.
  auto n = s.connect();
  ASSERT_TRUE(n.send(
      post_json("/v1/infer", R"({"input":"w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16"})")));
  auto nr = n.read_response(rt::in(kIo));
  ASSERT_TRUE(nr);
  EXPECT_TRUE(is_error(*nr, 504, "request_timeout"));
}

TEST(OpenAiDeadline, StreamsAreBoundByTokenDeadlinesNotTheTotalOne) {
  // 4 words/s for ~3 s against a 1 s total deadline: a stream keeps going while tokens keep coming.
  auto cfg =
      with(test_config({}, {{"latencyMs", 0}, {"tokensPerSecond", 4}}),
           {{"scheduler", boost::json::object{{"requestTimeoutMs", 1000}, {"idleTokenTimeoutMs", 1000}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto c = s.connect();
  ASSERT_TRUE(
      c.send(post_json("/v1/chat/completions",
                       R"({"model":"m","stream":true,"max_tokens":60,"messages":[{"role":"user","content":)"
                       R"("a b c d e f g h"}]})")));
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_GE(std::chrono::duration_cast<std::chrono::milliseconds>(r->done_at - r->head_at).count(), 1500);
  auto events = sse_data_events(r->body);
  ASSERT_GE(events.size(), 3u);
  auto finish = boost::json::parse(events[events.size() - 2]);
  EXPECT_EQ(finish.at("choices").at(0).at("finish_reason").as_string(), "stop") << r->body;
}

TEST(OpenAiDeadline, AnIdleGapLongerThanIdleTokenTimeoutEndsTheStreamWithWhatWasProduced) {
  // One word every 500 ms, 300 ms allowed between tokens: the first word arrives, then the idle deadline ends
  // it.
  auto cfg = with(test_config({}, {{"latencyMs", 0}, {"tokensPerSecond", 2}}),
                  {{"scheduler", boost::json::object{{"idleTokenTimeoutMs", 300}}}});
  ray_server s(cfg, no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto c = s.connect();
  ASSERT_TRUE(
      c.send(post_json("/v1/chat/completions",
                       R"({"model":"m","stream":true,"max_tokens":60,"messages":[{"role":"user","content":)"
                       R"("a b c d e f g h"}]})")));
  auto r = c.read_response(rt::in(kIo));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  auto events = sse_data_events(r->body);
  ASSERT_GE(events.size(), 3u) << r->body;
  EXPECT_EQ(events.back(), "[DONE]");
  auto finish = boost::json::parse(events[events.size() - 2]);
  EXPECT_EQ(finish.at("choices").at(0).at("finish_reason").as_string(), "length") << r->body;
  EXPECT_EQ(counter(s.port(), "ray_backend_requests_total{outcome=\"timeout\"}"), 1);
}

TEST(OpenAiTools, ToolsAndSamplingExtrasAreForwardedToTheBackendAndNeverCached) {
  fake_llama fake({"-c", "2048", "-np", "2"});
  ASSERT_TRUE(fake.ok()) << fake.output();
  auto const port = fake.port();
  auto cfg = attach_config();
  cfg["model"].as_object()["warmOnBoot"] = false;  // count only this test's generations
  ray_server s(cfg, attach(fake));
  ASSERT_TRUE(s.wait_listening());
  ASSERT_TRUE(ready(s));
  std::string const body =
      R"({"model":"m","temperature":0,"max_tokens":4,"top_k":7,"messages":[{"role":"user","content":"weather?"}],)"
      R"("tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],)"
      R"("tool_choice":"auto"})";
  for (int i = 0; i < 2; ++i) {
    auto r = post_one(s, "/v1/chat/completions", body);
    ASSERT_EQ(r.status, 200) << r.describe();
    EXPECT_FALSE(r.has_header("x-ray-cache")) << "a tool request is never served from the cache";
  }
  auto st = roundtrip(port, get("/__stats"));
  ASSERT_TRUE(st);
  auto stats = json_body(*st);
  ASSERT_TRUE(stats);
  EXPECT_EQ(stats->at("requests").at("/v1/chat/completions").as_int64(), 2);
  auto const& recent = stats->at("recent").as_array();
  ASSERT_FALSE(recent.empty());
  auto sent = recent.back().at("body").as_object();
  EXPECT_EQ(sent.at("tools").as_array().at(0).at("function").at("name").as_string(), "get_weather");
  EXPECT_EQ(sent.at("tool_choice").as_string(), "auto");
  EXPECT_EQ(sent.at("top_k").as_int64(), 7);
}

}  // namespace
}  // namespace ray::itest
