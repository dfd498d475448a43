// The wire format of remote embeddings and rerank (remote_embed.hpp).
#include "ray/backend/remote_embed.hpp"

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

namespace ray::backend {

namespace {

namespace json = boost::json;

ray::error invalid(std::string message) {
  return ray::error{errc::provider_invalid_response, std::move(message)};
}

std::optional<double> number_of(json::value const& v) {
  if (v.is_double()) return v.get_double();
  if (v.is_int64()) return static_cast<double>(v.get_int64());
  if (v.is_uint64()) return static_cast<double>(v.get_uint64());
  return std::nullopt;
}

// usage.prompt_tokens of an answer, when it is a count.
std::optional<std::uint32_t> prompt_tokens_of(json::object const& o) {
  auto const* u = o.if_contains("usage");
  if (!u || !u->is_object()) return std::nullopt;
  auto const* p = u->get_object().if_contains("prompt_tokens");
  if (!p) return std::nullopt;
  auto d = number_of(*p);
  return d ? to_count(*d) : std::nullopt;
}

// An `index` field: nullopt when absent; -1 when present but not an index below `n`.
std::optional<long long> index_of(json::object const& o, std::size_t n) {
  auto const* i = o.if_contains("index");
  if (!i) return std::nullopt;
  auto d = number_of(*i);
  if (!d || n == 0) return -1;
  auto c = to_count(*d, static_cast<std::uint32_t>(std::min<std::size_t>(n - 1, UINT32_MAX)));
  if (!c || static_cast<double>(*c) != *d) return -1;
  return static_cast<long long>(*c);
}

std::optional<json::object> parse_object(std::string_view body) {
  boost::system::error_code ec;
  auto v = json::parse(body, ec);
  if (ec || !v.is_object()) return std::nullopt;
  return std::move(v.get_object());
}

}  // namespace

std::string embeddings_request_body(std::string const& model, std::vector<std::string> const& inputs) {
  json::array input;
  input.reserve(inputs.size());
  for (auto const& s : inputs)
    input.emplace_back(s);
  return json::serialize(
      json::object{{"model", model}, {"input", std::move(input)}, {"encoding_format", "float"}});
}

result<embedding_result> parse_embeddings_answer(std::string_view body, std::size_t n_inputs) {
  auto o = parse_object(body);
  if (!o) return invalid("the backend's embeddings answer is not a JSON object");
  auto const* data = o->if_contains("data");
  if (!data || !data->is_array()) return invalid("the backend's embeddings answer has no `data` array");
  auto const& items = data->get_array();
  if (items.size() != n_inputs)
    return invalid("the backend answered " + std::to_string(items.size()) + " embeddings for " +
                   std::to_string(n_inputs) + " inputs");
  embedding_result out;
  out.vectors.resize(n_inputs);
  std::vector<bool> seen(n_inputs, false);
  std::size_t dims = 0;
  for (std::size_t pos = 0; pos < items.size(); ++pos) {
    if (!items[pos].is_object())
      return invalid("an entry of the backend's embeddings `data` is not an object");
    auto const& item = items[pos].get_object();
    auto idx = index_of(item, n_inputs);
    if (idx && *idx < 0) return invalid("the backend answered an embedding index out of range");
    std::size_t const at = idx ? static_cast<std::size_t>(*idx) : pos;
    if (seen[at]) return invalid("the backend answered embedding index " + std::to_string(at) + " twice");
    seen[at] = true;
    auto const* e = item.if_contains("embedding");
    if (!e || !e->is_array() || e->get_array().empty())
      return invalid("the backend's embedding " + std::to_string(at) + " is not an array of numbers");
    auto const& values = e->get_array();
    if (dims == 0) dims = values.size();
    if (values.size() != dims)
      return invalid("the backend answered vectors of " + std::to_string(dims) + " and " +
                     std::to_string(values.size()) + " dimensions");
    auto& vec = out.vectors[at];
    vec.reserve(values.size());
    for (auto const& x : values) {
      auto d = number_of(x);
      if (!d || !std::isfinite(*d) || std::fabs(*d) > std::numeric_limits<float>::max())
        return invalid("the backend's embedding " + std::to_string(at) +
                       " holds a value that is not a number");
      vec.push_back(static_cast<float>(*d));
    }
  }
  out.prompt_tokens = prompt_tokens_of(*o);
  return out;
}

std::string rerank_request_body(std::string const& model, std::string const& query,
                                std::vector<std::string> const& documents,
                                std::optional<std::uint32_t> top_n) {
  json::array docs;
  docs.reserve(documents.size());
  for (auto const& d : documents)
    docs.emplace_back(d);
  json::object body{{"model", model}, {"query", query}, {"documents", std::move(docs)}};
  if (top_n) body["top_n"] = *top_n;
  return json::serialize(body);
}

result<rerank_result> parse_rerank_answer(std::string_view body, std::size_t n_documents,
                                          std::optional<std::uint32_t> top_n) {
  auto o = parse_object(body);
  if (!o) return invalid("the backend's rerank answer is not a JSON object");
  auto const* results = o->if_contains("results");
  if (!results || !results->is_array()) return invalid("the backend's rerank answer has no `results` array");
  auto const& items = results->get_array();
  if (items.size() > n_documents)
    return invalid("the backend ranked " + std::to_string(items.size()) + " results for " +
                   std::to_string(n_documents) + " documents");
  rerank_result out;
  out.results.reserve(items.size());
  std::vector<bool> seen(n_documents, false);
  for (auto const& v : items) {
    if (!v.is_object()) return invalid("an entry of the backend's rerank `results` is not an object");
    auto const& item = v.get_object();
    auto idx = index_of(item, n_documents);
    if (!idx || *idx < 0)
      return invalid("the backend answered a rerank index that is missing or out of range");
    auto const at = static_cast<std::size_t>(*idx);
    if (seen[at]) return invalid("the backend ranked document " + std::to_string(at) + " twice");
    seen[at] = true;
    auto const* s = item.if_contains("relevance_score");
    if (!s) s = item.if_contains("score");
    auto score = s ? number_of(*s) : std::nullopt;
    if (!score || !std::isfinite(*score))
      return invalid("the backend's score of document " + std::to_string(at) + " is not a number");
    out.results.push_back({static_cast<std::uint32_t>(at), *score});
  }
  std::stable_sort(out.results.begin(), out.results.end(),
                   [](rerank_item const& a, rerank_item const& b) { return a.score > b.score; });
  if (top_n && *top_n < out.results.size()) out.results.resize(*top_n);
  out.prompt_tokens = prompt_tokens_of(*o);
  return out;
}

}  // namespace ray::backend
