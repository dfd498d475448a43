// ray::api::openai — decoding of the OpenAI-compatible request bodies (http-api.md §3) into plain structs,
// the cacheability rule of those routes, the canonical message text for cache keys, model-name resolution and
// the context-length error clients recognise. Private to the api component. Pure functions: no I/O, no Asio,
// no shared state; safe to call from any thread.
//
// Field errors follow the native decoder: errc::invalid_request, message "<path>: <rule>", `param` = the path
// (`messages[2].content[0].type`). A body that is not JSON is errc::invalid_json.
#pragma once

#include "ray/config/config.hpp"
#include "ray/core/core.hpp"

#include <boost/json/value.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ray::api::openai {

// Bounds of a request (beyond the HTTP body limit).
inline constexpr std::int64_t max_top_logprobs = 20;  // OpenAI's bound; more is a 400 (param top_logprobs)
inline constexpr std::size_t max_messages = 1024;
inline constexpr std::size_t max_stop_entries = 16;
inline constexpr std::size_t max_stop_chars = 256;  // code points per stop string

struct message {
  std::string role;     // system | user | assistant | tool ("developer" arrives here as "system")
  std::string content;  // a string as sent, or the text parts joined with "\n"; "" for an assistant
                        // message whose content was null/absent (it carries tool_calls)
  std::optional<std::string> name{};
  std::optional<std::string> tool_call_id{};
  boost::json::value tool_calls{};  // null when absent; otherwise the array as sent, forwarded as is

  friend bool operator==(message const&, message const&) = default;
};

// Fields both routes share. Absent and `null` fields are the same thing: unset.
struct sampling_fields {
  std::string model;  // as sent ("" when absent); resolve_model() gives the real id
  // max_tokens or max_completion_tokens (the latter wins when both); >= 1, saturated at UINT32_MAX (the
  // caller clamps to the cap and the context left, never a 400).
  std::optional<std::uint32_t> max_tokens{};
  std::optional<double> temperature{};        // >= 0
  std::optional<double> top_p{};              // [0, 1]
  std::optional<double> frequency_penalty{};  // [-2, 2]
  std::optional<double> presence_penalty{};   // [-2, 2]
  std::optional<double> min_p{};              // [0, 1] (llama.cpp)
  std::optional<double> repeat_penalty{};     // >= 0 (llama.cpp)
  std::optional<std::int64_t> seed{};         // >= 0
  std::optional<std::int64_t> top_k{};        // >= 0 (llama.cpp; 0 = disabled)
  std::vector<std::string> stop{};            // a string or a list, each 1..256 chars, at most 16
  bool stream{false};
  bool include_usage{false};        // stream_options.include_usage as sent (meaningful only when streaming)
  boost::json::value logit_bias{};  // null when absent; an object of numbers in [-100, 100], forwarded as is
  std::vector<std::string> ignored_fields{};  // accepted and ignored (not forwarded), in a fixed order
  std::vector<std::string> unknown_fields{};  // top-level keys Ray does not know, for the debug log line
};

struct chat_request : sampling_fields {
  std::vector<message> messages;
  std::optional<std::string> response_format_type{};  // text | json_object | json_schema
  boost::json::value response_format{};  // the object as sent (json_schema forwarded); null if absent
  // null when absent. tools: a non-empty array of {"type":"function","function":{"name",…}}; `tools: []` and
  // `tool_choice: "none"` are accepted and ignored (all three tool fields are then unset: a plain chat).
  boost::json::value tools{}, tool_choice{}, parallel_tool_calls{};
  bool logprobs{false};                        // forwarded when true
  std::optional<std::int64_t> top_logprobs{};  // 0..max_top_logprobs, only with logprobs: true; forwarded

  // Non-empty tools and tool_choice != "none".
  bool has_tools() const;
};

struct completion_request : sampling_fields {
  std::string prompt;  // a non-empty string, or an array of exactly one such string
};

// POST /v1/chat/completions. Rejected with 400 (param names it): roles other than system, developer, user,
// assistant and tool; non-text content parts; `n` other than 1; `top_logprobs` above 20 or without
// `logprobs: true`;
// negative, out-of-range, non-finite or ill-typed numbers; missing or empty `messages`; more than 1024
// messages; stop lists beyond the bounds above. A non-finite number anywhere in the body is refused too (it
// would be forwarded as `Infinity`, which is not JSON).
result<chat_request> decode_chat(std::string_view body);
// POST /v1/completions: `prompt` plus the same sampling fields. Also rejected: `echo: true`, `best_of` > 1,
// a non-empty `suffix`, `logprobs` > 0, token-array or batched prompts (`best_of: 1`, `echo: false`, `suffix:
// ""`, `logprobs: 0` are accepted and ignored).
result<completion_request> decode_completion(std::string_view body);

// Cacheable/joinable (http-api.md §3): `temperature: 0` or a fixed seed, and no tools — or `x-ray-cache: on`.
// Never with tools or logprobs (the cache keeps text, not tool calls or token probabilities); a structured
// output (`response_format` json_object / json_schema) only at `temperature: 0`, whatever x-ray-cache says.
// A seed whose low 32 bits are all ones is not fixed: llama.cpp reads the seed as uint32 and 0xFFFFFFFF means
// "random".
bool cacheable(chat_request const& req, bool x_ray_cache_on);
bool cacheable(completion_request const& req, bool x_ray_cache_on);

// The canonical text of the messages for the cache key: every field of every message (role, name, content,
// tool_call_id, tool_calls with object keys sorted), unambiguous — any difference in any field gives a
// different text.
std::string canonical_messages(std::vector<message> const& messages);

// POST /v1/responses, stateless, translated to one chat completion (http-api.md §3, docs/openai.md):
// `instructions` becomes a leading system message, `input` (a string, or message items with string or
// input_text/output_text parts) the conversation; `max_output_tokens`, `temperature`, `top_p`, `stream`,
// `text.format` (→ response_format) are carried over. Refused with 400 errc::unsupported_parameter:
// `previous_response_id`, `conversation`, `background: true`, `tools` (non-empty), and non-message input
// items. `store` is accepted and nothing is stored (the response says `store: false`).
struct responses_request {
  chat_request chat;                          // what runs; chat.stream etc. as carried over
  std::optional<std::string> instructions{};  // echoed in the response object
  boost::json::value text_format{};           // text.format as sent (null: {"type":"text"})
  boost::json::value metadata{};              // echoed (null: {})
};
result<responses_request> decode_responses(std::string_view body);

// Model resolution: lenient (default) accepts any name — including none — and returns the configured id;
// with openai.strictModelNames the name must be the configured id or one of model.aliases, else
// errc::model_not_found (param "model") with a message listing the valid ids.
result<std::string> resolve_model(std::string const& requested, config::config const& cfg);
// True when the name is the configured id or one of its aliases (the lenient route warns once otherwise).
bool is_configured_model(std::string const& requested, config::config const& cfg);

// The `id` of a completion object: `prefix` ("chatcmpl-", "cmpl-") + the request id without Ray's "req_"
// (a client's own x-request-id, of any accepted length, is used whole).
std::string object_id(std::string_view prefix, std::string_view request_id);

}  // namespace ray::api::openai
