// fake_llama_server tools: the shapes llama-server (--jinja) gives tool calls, structured outputs and
// logprobs, as the double produces them deterministically from the request. Derived from llama-server's
// documented OpenAI-compatible output (tests/fixtures/llama-server/chat-tool-call-*.http,
// chat-json-schema.http, chat-logprobs.http say where each shape comes from); not recorded from a real
// server. No Asio here.
//
// Tool calls: a request with a non-empty `tools` (and tool_choice other than "none") calls the function
// tool_choice names, else all tools (at most 2) with `parallel_tool_calls: true`, else the first. Each call
// is "generated" as tokens: one header token (index, id, type, function.name, empty arguments), then the
// arguments JSON in 4-byte fragments; finish_reason "tool_calls". Structured output: `response_format`
// json_object → {"answer":"…"}; json_schema → an object with every property of the schema filled by type;
// the JSON text is emitted in 4-byte tokens, then EOS.
#pragma once

#include "shapes.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace fake_llama {

struct tool_piece {
  int index{0};
  bool header{false};    // the first piece of a call: id, type, name
  std::string id, name;  // header only
  std::string fragment;  // argument bytes (not on the header)
};

// Fills rq.tool_names / rq.planned_text / rq.logprobs / rq.top_logprobs from the body (parse_request calls
// it).
void plan_extras(gen_request& rq);
// The arguments JSON the double calls function `j` with, for a prompt.
std::string tool_arguments(std::string_view prompt, int j);
std::vector<tool_piece> plan_tool_calls(gen_request const& rq);
// Adds a piece to the assembled calls of a non-streaming answer (rs.tool_calls).
void add_tool_piece(gen_result& rs, tool_piece const& p);
// The SSE event of one piece: choices[0].delta.tool_calls = [one delta].
std::string stream_tool_piece(gen_request const& rq, gen_result const& rs, tool_piece const& p,
                              knobs const& k);
// The i-th token of rq.planned_text (EOS past its end).
token planned_token(gen_request const& rq, int i);
// One `logprobs.content` entry for a token, with `top` alternatives.
json::object logprob_entry(token const& t, int top);

}  // namespace fake_llama
