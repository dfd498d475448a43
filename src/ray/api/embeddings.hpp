// ray::api::embeddings — decoding and rendering of the embedding and rerank routes (models.md "Embeddings and
// rerank", docs/openai.md): OpenAI's POST /v1/embeddings, the native POST /v1/embed and llama-server's POST
// /v1/rerank. Private to the api component. Pure functions: no I/O, no Asio, no shared state.
//
// Field errors follow the OpenAI decoder (openai.hpp): errc::invalid_request, message "<path>: <rule>",
// `param` = the path; a body that is not JSON is errc::invalid_json. Token-array inputs are refused with
// errc::unsupported_parameter (param "input"): Ray hands texts to the backend and does not detokenize.
#pragma once

#include "ray/core/core.hpp"
#include "ray/runtime/runtime.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ray::api::embeddings {

// At most this many inputs per embeddings request (OpenAI's own bound) and documents per rerank request;
// more is a 400 naming the field. Each input and document must be a non-empty string.
inline constexpr std::size_t max_inputs = 2048;
inline constexpr std::size_t max_documents = 2048;

enum class encoding { float32, base64 };

// POST /v1/embeddings: {model?, input: string | [string…] (| token arrays: refused), encoding_format?:
// "float" | "base64", dimensions?: integer >= 1, user?: ignored}.
struct openai_request {
  std::string model;  // "" when absent
  std::vector<std::string> inputs;
  encoding format{encoding::float32};
  std::optional<std::uint32_t> dimensions{};
  std::vector<std::string> ignored_fields{};  // accepted and not used (`user`)
  std::vector<std::string> unknown_fields{};  // top-level keys Ray does not know (debug log)
};
result<openai_request> decode_openai(std::string_view body);

// POST /v1/embed (native): {model?, input | inputs: string | [string…]} (one of the two).
struct native_request {
  std::string model;
  std::vector<std::string> inputs;
  std::vector<std::string> unknown_fields{};
};
result<native_request> decode_native(std::string_view body);

// POST /v1/rerank: {model?, query: string, documents: [string…], top_n?: integer >= 1, return_documents?:
// bool}.
struct rerank_request {
  std::string model;
  std::string query;
  std::vector<std::string> documents;
  std::optional<std::uint32_t> top_n{};
  bool return_documents{false};
  std::vector<std::string> unknown_fields{};
};
result<rerank_request> decode_rerank(std::string_view body);

// `dimensions` against the model's native size (when known): 400 errc::unsupported_parameter (param
// "dimensions") unless equal. Ray does not shorten vectors.
std::optional<ray::error> check_dimensions(std::optional<std::uint32_t> asked,
                                           std::optional<std::uint32_t> native);

// Base64 (RFC 4648, padded) of the vector as little-endian IEEE-754 float32, as OpenAI's
// encoding_format=base64 sends it.
std::string base64_floats(std::span<float const> v);

// The OpenAI list: {"object":"list","data":[{"object":"embedding","index":i,"embedding":[…] | "…"}],
// "model":…,"usage":{"prompt_tokens","total_tokens"}}. Floats are written in their shortest round-trip
// form.
std::string render_openai(runtime::embed_result const& r, encoding format);

// The native answer: {"id","model","embeddings":[[…]],"usage":{"tokens":{"prompt","total"}},"cached":[…],
// "deduplicated","queueTimeMs","latencyMs"}.
std::string render_native(runtime::embed_result const& r, std::string const& request_id);

// llama-server's rerank shape: {"model","object":"list","usage":{"prompt_tokens","total_tokens"},
// "results":[{"index","relevance_score","document"?:{"text"}}]} (best first).
std::string render_rerank(runtime::rerank_result const& r, std::vector<std::string> const& documents,
                          bool return_documents);

}  // namespace ray::api::embeddings
