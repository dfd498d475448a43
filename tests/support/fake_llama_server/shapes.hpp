// fake_llama_server shapes: what the double says, byte-shaped like the recorded llama-server b1-80fb11a
// replies in tests/fixtures/llama-server/ — tokenizer and chat template rules, deterministic generation,
// request parsing with llama-server's error bodies, and the JSON / SSE / Prometheus renderers. No Asio here.
//
// Token rule (the double's "vocabulary"): a text is one token per 4 bytes (the last may be shorter); a
// prompt that is evaluated gets a BOS token in front. So n_prompt = 1 + ceil(bytes / 4) of the evaluated
// text: the raw prompt for /completion and /v1/completions, the /apply-template output for chat — i.e.
// exactly `/tokenize {"content": <that text>, "add_special": true}`.
#pragma once

#include "knobs.hpp"

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace fake_llama {

namespace json = boost::json;

// JSON text like llama-server's: keys in insertion order, doubles in shortest round-trip form ("0.0", not
// "0E0"), UTF-8 kept, control characters escaped.
std::string dump(json::value const& v);

// ---- tokens
constexpr std::int32_t bos_id = 1;
std::vector<std::int32_t> tokenize(std::string_view text, bool add_bos);
int count_tokens(std::string_view text, bool add_bos);
// Prompt tokens a slot whose cache holds `cached` can reuse for `next` (both evaluated texts, BOS first):
// BOS plus every leading 4-byte chunk that is equal; 0 when the slot holds nothing.
int common_prefix_tokens(std::string_view cached, std::string_view next);
// The fixture model's template ("<s>role: content\n" per message, then "assistant:"), without the leading
// BOS (llama-server's /apply-template strips it; the tokenizer adds it back).
std::string apply_template(json::array const& messages);

// ---- requests
enum class api { completion, chat, text };  // /completion, /v1/chat/completions, /v1/completions

struct reply {  // a whole non-streaming answer
  int status{200};
  std::string body;
};

struct gen_request {
  api kind{api::completion};
  json::object body;   // as received
  std::string prompt;  // evaluated text (chat: templated)
  int n_prompt{0};     // tokens, BOS included
  int n_predict{-1};   // asked for; -1 = until EOS / the context is full
  int n_gen_max{0};    // what the double will generate at most
  int id_slot{-1};
  bool cache_prompt{true};
  bool stream{false};
  bool include_usage{false};
  bool ignore_eos{false};
  std::string model;  // echoed by the OpenAI routes
  std::vector<std::string> stop;
  double temperature{0.800000011920929};
  std::uint64_t seed{4294967295u};
  // tools.hpp: the functions this request calls (empty: plain text), the text a structured output produces
  // (empty: the word list), and the logprobs asked for.
  std::vector<std::string> tool_names{};
  std::string planned_text{};
  bool logprobs{false};
  int top_logprobs{0};
};

// Parses and validates an inference body (status/body like llama-server on failure: invalid JSON → 500
// server_error; 'messages' / 'prompt' missing → 400 invalid_request_error; prompt too long → 400
// exceed_context_size_error with n_prompt_tokens and n_ctx).
std::variant<gen_request, reply> parse_request(api kind, std::string_view body, knobs const& k);

// ---- generation
struct token {
  std::int32_t id{0};
  std::string piece;  // empty for EOS
  bool eos{false};
};
// The i-th (0-based) generated token for a prompt; the N-th is EOS when k.eos_after == N (unless ignore_eos).
token generated_token(std::string_view prompt, int i, bool ignore_eos, knobs const& k);

struct gen_result {
  std::string id;  // "chatcmpl-…"
  std::int64_t created{0};
  int id_slot{-1};
  int n_prompt{0};
  int n_cached{0};
  int n_predicted{0};
  std::string content;
  std::string finish_reason{"length"};  // "length" | "stop"
  std::string stop_type{"limit"};       // "limit" | "eos" | "word"
  std::string stopping_word;
  double prompt_ms{0};
  double predicted_ms{0};
  json::array tool_calls{};  // non-streaming: the assembled calls (tools.hpp)
  json::array logprobs{};    // non-streaming: logprobs.content entries
};

// The head of an OpenAI chunk (created, id, model, system_fingerprint, object), in the recorded key order.
json::object chunk_head(gen_request const& rq, gen_result const& rs, knobs const& k, char const* object);

std::string new_completion_id();

// Non-streaming answer body.
std::string render_result(gen_request const& rq, gen_result const& rs, knobs const& k);
// One SSE event: "data: <json>\n\n".
std::string sse(std::string const& json_text);
// SSE events before the first token (chat: the role delta).
std::vector<std::string> stream_start(gen_request const& rq, gen_result const& rs, knobs const& k);
// SSE event for one generated token (rs.n_predicted already counts it).
std::string stream_token(gen_request const& rq, gen_result const& rs, token const& t, knobs const& k);
// SSE events after the last token (finish chunk, usage chunk when asked, [DONE]; /completion: the final
// object and no [DONE]).
std::vector<std::string> stream_end(gen_request const& rq, gen_result const& rs, knobs const& k);
// Body of an error event sent after the stream started.
std::string stream_error_json(std::string_view message);

// ---- error bodies
std::string error_loading();       // 503
std::string error_unauthorized();  // 401
std::string error_not_found();     // 404
std::string error_generic(int code, std::string_view message, std::string_view type);
std::string error_for_status(int status);  // --fail-status bodies
// A JSON text cut in half with garbage appended (--malformed-json).
std::string break_json(std::string const& text);

// ---- embeddings and rerank (llama-server's --embedding / --reranking routes)
// Vectors: `dims` floats from a splitmix64 stream seeded by FNV-1a of the evaluated text (token-id inputs:
// their 4-byte chunks), normalised like llama-server's `embd_normalize` (2 = Euclidean, the default; -1 none;
// 0 max-abs scaled to int16; 1 taxicab; > 2 p-norm). Tokens: an input is count_tokens(text, true) (BOS
// included); a rerank pair is BOS + query + SEP + document.
std::vector<float> embedding_vector(std::string_view text, int dims, int normalize = 2);

struct embd_request {
  bool oai{true};  // /v1/embeddings shape; false: /embeddings, /embedding or a `content` body
  json::object body;
  std::string model;                // "model" of the request (echoed), else the alias
  std::vector<std::string> inputs;  // evaluated texts, in input order
  int n_tokens{0};                  // all inputs, BOS included
  bool base64{false};               // encoding_format "base64"
  int normalize{2};                 // embd_normalize
};
// Validates a body like llama-server's handle_embeddings_impl (after its --embeddings check, which the server
// does): pooling `none` on the OpenAI route → 400; neither `input` nor `content` → 400; encoding_format
// other than float|base64 → 400; invalid JSON or an input that is not a string, a token list or a list of
// those → 500 server_error.
std::variant<embd_request, reply> parse_embeddings(bool oai_route, std::string_view body, knobs const& k);
// OpenAI: {"model","object":"list","usage":{"prompt_tokens","total_tokens"},"data":[{"embedding","index",
// "object":"embedding"}…]} (base64: the float32 bytes and "encoding_format":"base64"); else
// [{"index","embedding":[[…]]}…] (pooling none: one row per token, unnormalised).
std::string render_embeddings(embd_request const& rq, knobs const& k);

struct rerank_request {
  json::object body;
  std::string model;
  std::string query;
  std::vector<std::string> documents;
  int top_n{0};
  bool tei{false};  // `texts` instead of `documents`: TEI's answer (a bare array with `score`)
  int n_tokens{0};
};
// Like llama-server's post_rerank after its --reranking check: `query` missing or not a string → 400,
// `documents` (or TEI `texts`) not a non-empty string array → 400, invalid JSON → 500.
std::variant<rerank_request, reply> parse_rerank(std::string_view body, knobs const& k);
// {"model","object":"list","usage":{…},"results":[{"index","relevance_score"}…]} best first, cut to top_n
// (default: all); the score is the cosine of the query's and the document's vectors (an exact match: 1).
std::string render_rerank(rerank_request const& rq, knobs const& k);

// ---- other endpoints
reply tokenize_reply(std::string_view body);        // POST /tokenize
reply apply_template_reply(std::string_view body);  // POST /apply-template
std::string render_props(knobs const& k);
std::string render_models(knobs const& k);

struct slot_view {
  int id{0};
  int n_ctx{0};
  bool is_processing{false};
  bool used{false};  // ever ran a task: then the task fields are shown
  int id_task{0};
  int n_prompt{0};
  int n_prompt_processed{0};
  int n_cache{0};
  int n_decoded{0};
  int n_remain{-1};
  json::object params;
};
json::object slot_params(gen_request const& rq);
std::string render_slots(std::vector<slot_view> const& slots);

struct metrics_view {
  double prompt_tokens_total{0};
  double prompt_tokens_cached_total{0};
  double prompt_seconds_total{0};
  double tokens_predicted_total{0};
  double tokens_predicted_seconds_total{0};
  double n_decode_total{0};
  double n_tokens_max{0};
  double busy_slot_decodes{0};  // sum over decodes of the busy slots at that decode
  double requests_processing{0};
  double requests_deferred{0};
};
std::string render_metrics(metrics_view const& m);

}  // namespace fake_llama
