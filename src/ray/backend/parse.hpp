// ray::backend parse — what a llama-server or OpenAI-compatible backend answers, read from the bytes it sent:
// /props, /slots, /apply-template, /tokenize, an error body, one streamed completion chunk. Used by the
// remote backend (remote.cpp) and fuzzed on its own (tests/fuzz/backend_fuzz.cpp): every number a backend
// sends is bounded here, whatever the backend says.
//
// Pure functions: no I/O, no Asio, no shared state; safe from any thread. Nothing here throws except on
// allocation failure.
#pragma once

#include "ray/core/core.hpp"

#include <boost/json/array.hpp>
#include <boost/json/value.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ray::backend {

// At most `n` bytes of a body (never splitting a UTF-8 sequence), line ends turned into spaces: for messages.
std::string excerpt(std::string_view body, std::size_t n = 240);

// GET /props: what the served model and server are. Counts are bounded (a hostile /props must not size Ray's
// slot table or overflow the KV pool: 2^9 slots x 2^22 tokens fits 32 bits) and nullopt when absent, not a
// number, negative or beyond the bound; strings are "" when absent or not strings.
struct props_info {
  std::optional<std::uint32_t> n_ctx{};        // default_generation_settings.n_ctx, at most 2^22
  std::optional<std::uint32_t> total_slots{};  // total_slots, at most 2^9
  std::string build{};                         // build_info
  std::string model_path{};                    // model_path
};
// nullopt when the body is not JSON.
std::optional<props_info> parse_props(std::string_view body);

// GET /slots: the slots the server reports processing that Ray did not dispatch to (`busy`, indexed by slot
// id, holds Ray's own). The result has busy.size() entries; ids outside it, and entries without a numeric
// `id` or a boolean `is_processing`, are ignored. nullopt when the body is not a JSON array.
std::optional<std::vector<bool>> parse_slots(std::string_view body, std::vector<bool> const& busy);

// GET /slots as a load view for the Inference Extension gauges (docs/scale-out.md). Per slot with a numeric
// `n_ctx` (at most 2^22; at most 2^9 slots are read): capacity adds its n_ctx (with a unified KV buffer every
// slot reports the whole buffer, so capacity is the largest n_ctx instead). A slot whose `is_processing` is
// true counts in `processing` and holds n_prompt_tokens + next_token[0].n_decoded tokens (absent fields count
// 0), at most its n_ctx. An idle slot holds nothing: the prompt it keeps cached is reused or overwritten by
// the next request at no cost, like the freed prefix-cache blocks vLLM counts as free. kv_usage =
// tokens_held / capacity, clamped to 0..1, nullopt when no slot reports n_ctx. nullopt when the body is not
// a JSON array.
struct slots_load {
  std::uint32_t slots{0};       // slots read (those with a numeric n_ctx)
  std::uint32_t processing{0};  // of them, is_processing true
  std::uint64_t tokens_held{0};
  std::uint64_t capacity{0};
  std::optional<double> kv_usage{};
};
std::optional<slots_load> parse_slots_load(std::string_view body, bool unified_kv);

// The value of the first unlabelled sample `name` in a Prometheus text body (e.g. llama-server's
// `llamacpp:requests_deferred`); nullopt when absent or not a finite number.
std::optional<double> parse_prometheus_sample(std::string_view body, std::string_view name);

// A 400 body of llama-server's `exceed_context_size_error`: the token counts it reports (each nullopt when
// absent or out of range). nullopt for any other body.
struct context_exceeded {
  std::optional<std::uint32_t> n_prompt_tokens{};
  std::optional<std::uint32_t> n_ctx{};
};
std::optional<context_exceeded> parse_context_exceeded(std::string_view body);

// POST /apply-template: the rendered `prompt`; nullopt when the body is not JSON or the prompt is missing or
// empty.
std::optional<std::string> parse_applied_template(std::string_view body);
// POST /tokenize: the number of `tokens`; nullopt when the body is not JSON or has no `tokens` array.
std::optional<std::uint32_t> parse_token_count(std::string_view body);

// One streamed event of /v1/chat/completions or /v1/completions (the `data:` of an SSE event other than
// `[DONE]`), the fields Ray uses. `has_usage` / `has_timings`: the chunk carried that object (its fields are
// then read, each nullopt when absent or out of range).
struct stream_chunk {
  std::string content{};  // choices[0].delta.content (chat) or choices[0].text (completions); "" if none
  boost::json::value tool_calls{};             // choices[0].delta.tool_calls as sent when an array, else null
  boost::json::value logprobs{};               // choices[0].logprobs as sent when an object, else null
  std::optional<std::string> finish_reason{};  // choices[0].finish_reason when a string
  bool has_usage{false};
  std::optional<std::uint32_t> prompt_tokens{}, completion_tokens{}, cached_tokens{};
  bool has_timings{false};
  std::optional<double> prompt_per_second{}, predicted_per_second{};
  std::optional<std::uint32_t> prompt_n{}, cache_n{};
};
// The chunk; errc::provider_invalid_response when the data is not a JSON object,
// errc::provider_upstream_error when it carries an `error` (the backend failed mid-stream).
result<stream_chunk> parse_stream_chunk(std::string_view data);

// Assembles streamed `delta.tool_calls` pieces into `calls` (OpenAI shape) by their `index` (absent or not a
// number = 0): id, type and function.name replace, function.arguments is appended. A piece whose index is
// negative, not finite or above 64 is skipped, so `calls` never holds more than 65 entries.
void merge_tool_call_deltas(boost::json::array& calls, boost::json::array const& delta);

}  // namespace ray::backend
