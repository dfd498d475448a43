// ray::backend remote embeddings / rerank — the request bodies the remote backend sends to llama-server's
// (or an OpenAI-compatible server's) POST /v1/embeddings and POST /v1/rerank, and the reading of their
// answers. The I/O (client, timeout, auth, error mapping, cancellation) is remote.cpp's, shared with
// generate(); this file is the wire format only, kept apart so it can be tested and fuzzed on its own.
//
// Answers (llama-server tools/server: format_embeddings_response_oaicompat, format_response_rerank):
//   /v1/embeddings {"model":…,"object":"list","usage":{"prompt_tokens":N,"total_tokens":N},
//                   "data":[{"embedding":[…floats…],"index":i,"object":"embedding"},…]}
//   /v1/rerank     {"model":…,"object":"list","usage":{…},"results":[{"index":i,"relevance_score":x},…]}
//
// Pure functions: no I/O, no Asio, no shared state; safe from any thread.
#pragma once

#include "ray/backend/backend.hpp"
#include "ray/core/core.hpp"

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ray::backend {

// {"model": model, "input": [inputs…], "encoding_format": "float"}
std::string embeddings_request_body(std::string const& model, std::vector<std::string> const& inputs);

// The vectors of a /v1/embeddings answer for `n_inputs` inputs, placed by their `index` (absent: by
// position), and usage.prompt_tokens when present. errc::provider_invalid_response when the body is not a
// JSON object, has no `data` array, holds another number of entries than inputs, an index out of range or
// given twice, an embedding that is not a non-empty array of finite numbers (a base64 string included: Ray
// asks for floats), or vectors of different lengths.
result<embedding_result> parse_embeddings_answer(std::string_view body, std::size_t n_inputs);

// {"model": model, "query": query, "documents": [documents…], "top_n": top_n (when set)}
std::string rerank_request_body(std::string const& model, std::string const& query,
                                std::vector<std::string> const& documents,
                                std::optional<std::uint32_t> top_n);

// The `results` of a /v1/rerank answer for `n_documents` documents: {index, relevance_score} each (`score`,
// TEI's name, is accepted too), sorted best first (ties keep the backend's order) and cut to top_n, and
// usage.prompt_tokens when present. errc::provider_invalid_response when the body is not a JSON object, has
// no `results` array, more entries than documents, an index out of range or given twice, or a score that is
// not a finite number.
result<rerank_result> parse_rerank_answer(std::string_view body, std::size_t n_documents,
                                          std::optional<std::uint32_t> top_n);

}  // namespace ray::backend
