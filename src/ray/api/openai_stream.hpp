// Private to ray::api: what the OpenAI-shaped routes (openai_routes.cpp, responses_routes.cpp) share — the
// translation of a decoded chat request into the runtime's call, the usage object, and the event format one
// stream writer (router::stream_openai) drives, so /v1/responses streams through the same admission,
// keep-alive, back-pressure and client-left rules as /v1/chat/completions.
#pragma once

#include "ray/api/openai.hpp"
#include "ray/runtime/runtime.hpp"

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <string>
#include <string_view>

namespace ray::api {

// The server-sent events of one route. Each call returns the bytes to write (whole events).
class sse_format {
 public:
  virtual ~sse_format() = default;
  // Right after the 200 headers (chat: the role chunk; Responses: created … content_part.added).
  virtual std::string opening() = 0;
  // One text delta; `logprobs` is the backend chunk's logprobs object, or null.
  virtual std::string text(std::string_view delta, boost::json::value const& logprobs) = 0;
  // One `delta.tool_calls` array as the backend sent it.
  virtual std::string tool_calls(boost::json::value const& delta) = 0;
  // The end of a successful stream; `streamed_any` is false for a cache hit (its text arrives whole here).
  virtual std::string finish(runtime::infer_result const& r, bool streamed_any) = 0;
  // A failure after the headers went out (the stream then ends).
  virtual std::string failure(ray::error const& err) = 0;
};

// Fills `call` from a decoded chat request: forwarded fields, response_format, tools, logprobs, messages
// (assistant tool_calls included), cacheability. Consumes the messages.
void to_runtime_call(openai::chat_request& d, runtime::chat_request& call, bool x_ray_cache);

// Chat `usage`: prompt/completion/total tokens and, when the backend reported it,
// prompt_tokens_details.cached_tokens.
boost::json::object chat_usage(runtime::infer_result const& r);

// One server-sent event: "data: <payload>\n\n" (or with an `event:` line first).
std::string sse_data(std::string_view payload);
std::string sse_event(std::string_view event, std::string_view payload);

}  // namespace ray::api
