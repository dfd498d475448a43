// Helpers of the OpenAI-surface suites (openai_test.cpp, openai_tools_test.cpp, openai_responses_test.cpp):
// one request, SSE parsing, the config that attaches Ray to the llama-server double.
#pragma once

#include "fake_llama.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

namespace ray::itest {

inline rt::http_response post_one(ray_server& s, std::string const& path, std::string const& body,
                                  std::string const& headers = {}) {
  auto c = s.connect();
  EXPECT_TRUE(c.send(post_json(path, body, headers)));
  return c.read_response(rt::in(kIo)).value_or(rt::http_response{});
}

// The `data:` payloads of an SSE body, comments dropped.
inline std::vector<std::string> sse_data_events(std::string const& body) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < body.size()) {
    auto end = body.find("\n\n", pos);
    if (end == std::string::npos) break;
    std::string_view ev(body.data() + pos, end - pos);
    if (ev.rfind("data: ", 0) == 0) out.emplace_back(ev.substr(6));
    pos = end + 2;
  }
  return out;
}

// The events of an SSE body as (event name, data) pairs ("" when the event has no `event:` line).
inline std::vector<std::pair<std::string, std::string>> sse_named_events(std::string const& body) {
  std::vector<std::pair<std::string, std::string>> out;
  std::size_t pos = 0;
  while (pos < body.size()) {
    auto end = body.find("\n\n", pos);
    if (end == std::string::npos) break;
    std::string_view ev(body.data() + pos, end - pos);
    pos = end + 2;
    std::string name, data;
    while (!ev.empty()) {
      auto nl = ev.find('\n');
      auto line = ev.substr(0, nl);
      if (line.rfind("event: ", 0) == 0) name = line.substr(7);
      if (line.rfind("data: ", 0) == 0) data = line.substr(6);
      ev = nl == std::string_view::npos ? std::string_view() : ev.substr(nl + 1);
    }
    if (!data.empty()) out.emplace_back(std::move(name), std::move(data));
  }
  return out;
}

// An event with its per-response id and timestamp removed, for comparing sequences across clients.
inline std::string without_ids(std::string const& data) {
  if (data == "[DONE]") return data;
  auto v = boost::json::parse(data);
  if (v.is_object()) {
    v.as_object().erase("id");
    v.as_object().erase("created");
  }
  return boost::json::serialize(v);
}

inline std::string stream_body(std::string const& input, int max_tokens, bool usage = false) {
  return R"({"model":"m","temperature":0,"stream":true,"max_tokens":)" + std::to_string(max_tokens) +
         (usage ? R"(,"stream_options":{"include_usage":true})" : "") +
         R"(,"messages":[{"role":"user","content":")" + input + R"("}]})";
}

inline boost::json::object attach_config() {
  boost::json::object a{{"kind", "llama.cpp"},
                        {"healthIntervalMs", 100},
                        {"healthTimeoutMs", 500},
                        {"timeoutMs", 5000},
                        {"launchProfile", nullptr}};
  return boost::json::object{{"profile", "sub1b"},
                             {"model", boost::json::object{{"id", "tiny-llama"}, {"adapter", a}}},
                             {"rateLimit", boost::json::object{{"enabled", false}}}};
}

inline bool ready(ray_server& s) {
  return eventually([&] {
    auto r = roundtrip(s.port(), get("/readyz"));
    return r && r->status == 200;
  });
}

}  // namespace ray::itest
