#include "ray/api/embeddings.hpp"

#include "ray/telemetry/telemetry.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <initializer_list>
#include <limits>

namespace ray::api::embeddings {

namespace {

namespace json = boost::json;

ray::error field_error(std::string const& path, std::string const& rule) {
  ray::error err{errc::invalid_request, path + ": " + rule};
  err.param = path;
  err.details["field"] = path;
  return err;
}

std::string index_path(std::string_view base, std::size_t i) {
  return std::string(base) + "[" + std::to_string(i) + "]";
}

result<json::object> parse_body(std::string_view body) {
  if (trim(body).empty()) return ray::error{errc::invalid_request, "request body must be a JSON object"};
  boost::system::error_code ec;
  json::value doc = json::parse(body, ec);
  if (ec) return ray::error{errc::invalid_json, "request body is not valid JSON: " + ec.message()};
  if (!doc.is_object()) return ray::error{errc::invalid_request, "request body must be a JSON object"};
  return std::move(doc.get_object());
}

// Present and not null.
json::value const* find(json::object const& o, std::string_view key) {
  auto it = o.find(key);
  if (it == o.end() || it->value().is_null()) return nullptr;
  return &it->value();
}

std::optional<std::int64_t> as_integer(json::value const& v) {
  if (v.is_int64()) return v.get_int64();
  if (v.is_uint64()) {
    auto u = v.get_uint64();
    return u > static_cast<std::uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<std::int64_t>(u);
  }
  if (v.is_double()) {
    double d = v.get_double();
    if (!std::isfinite(d) || std::floor(d) != d) return std::nullopt;
    if (d >= 9.2e18) return INT64_MAX;
    if (d <= -9.2e18) return INT64_MIN;
    return static_cast<std::int64_t>(d);
  }
  return std::nullopt;
}

bool is_token(json::value const& v) {
  return v.is_int64() || v.is_uint64() || (v.is_double() && as_integer(v).has_value());
}

// An integer >= 1, saturated to uint32.
std::optional<ray::error> decode_positive(json::object const& o, std::string_view key,
                                          std::optional<std::uint32_t>& out) {
  auto v = find(o, key);
  if (!v) return std::nullopt;
  auto n = as_integer(*v);
  if (!n || *n < 1) return field_error(std::string(key), "must be an integer >= 1");
  out = static_cast<std::uint32_t>(std::min<std::int64_t>(*n, std::numeric_limits<std::uint32_t>::max()));
  return std::nullopt;
}

std::optional<ray::error> decode_model(json::object const& o, std::string& out) {
  auto v = find(o, "model");
  if (!v) return std::nullopt;
  if (!v->is_string()) return field_error("model", "must be a string");
  out = std::string(v->get_string());
  return std::nullopt;
}

// A string or an array of strings, each non-empty, at most `max` of them. Token arrays (an array of integers,
// or an array of such arrays) are refused as unsupported.
std::optional<ray::error> decode_texts(json::value const& v, std::string const& path, std::size_t max,
                                       std::vector<std::string>& out) {
  auto const token_arrays = [&] {
    ray::error err{
        errc::unsupported_parameter,
        path + ": token arrays are not supported; send the text (a string or an array of strings)"};
    err.param = path;
    err.details["field"] = path;
    return err;
  };
  if (v.is_string()) {
    if (v.get_string().empty()) return field_error(path, "must not be an empty string");
    out.emplace_back(v.get_string());
    return std::nullopt;
  }
  if (!v.is_array()) return field_error(path, "must be a string or an array of strings");
  auto const& a = v.get_array();
  if (a.empty()) return field_error(path, "must not be an empty array");
  if (a.size() > max) return field_error(path, "must have at most " + std::to_string(max) + " entries");
  out.reserve(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto const& e = a[i];
    if (is_token(e)) return token_arrays();  // [1, 2, 3]: one token array
    if (e.is_array()) {
      auto const& inner = e.get_array();
      if (!inner.empty() && std::all_of(inner.begin(), inner.end(), is_token)) return token_arrays();
      return field_error(index_path(path, i), "must be a string");
    }
    if (!e.is_string()) return field_error(index_path(path, i), "must be a string");
    if (e.get_string().empty()) return field_error(index_path(path, i), "must not be an empty string");
    out.emplace_back(e.get_string());
  }
  return std::nullopt;
}

std::vector<std::string> unknown_keys(json::object const& o, std::initializer_list<std::string_view> known) {
  std::vector<std::string> out;
  for (auto const& kv : o)
    if (std::find(known.begin(), known.end(), kv.key()) == known.end()) out.emplace_back(kv.key());
  return out;
}

void put_float(std::string& out, float x) {
  if (!std::isfinite(x)) x = 0.0f;  // never produced (the runtime refuses non-finite answers); JSON has none
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, x);  // shortest form that reads back as this float
  out.append(buf, ec == std::errc{} ? end : buf);
}

void put_vector(std::string& out, std::vector<float> const& v) {
  out.push_back('[');
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out.push_back(',');
    put_float(out, v[i]);
  }
  out.push_back(']');
}

void put_string(std::string& out, std::string_view s) {
  out += json::serialize(json::string(s));
}

}  // namespace

result<openai_request> decode_openai(std::string_view body) {
  auto parsed = parse_body(body);
  if (!parsed) return parsed.error();
  auto const& o = *parsed;
  openai_request req;
  if (auto e = decode_model(o, req.model)) return *e;
  auto input = find(o, "input");
  if (!input) return field_error("input", "is required (a string or an array of strings)");
  if (auto e = decode_texts(*input, "input", max_inputs, req.inputs)) return *e;
  if (auto v = find(o, "encoding_format")) {
    if (v->is_string() && v->get_string() == "float")
      req.format = encoding::float32;
    else if (v->is_string() && v->get_string() == "base64")
      req.format = encoding::base64;
    else
      return field_error("encoding_format", "must be \"float\" or \"base64\"");
  }
  if (auto e = decode_positive(o, "dimensions", req.dimensions)) return *e;
  if (auto v = find(o, "user")) {
    if (!v->is_string()) return field_error("user", "must be a string");
    req.ignored_fields.emplace_back("user");
  }
  req.unknown_fields = unknown_keys(o, {"model", "input", "encoding_format", "dimensions", "user"});
  return req;
}

result<native_request> decode_native(std::string_view body) {
  auto parsed = parse_body(body);
  if (!parsed) return parsed.error();
  auto const& o = *parsed;
  native_request req;
  if (auto e = decode_model(o, req.model)) return *e;
  auto input = find(o, "input");
  auto inputs = find(o, "inputs");
  if (input && inputs) return field_error("inputs", "send either input or inputs, not both");
  if (!input && !inputs) return field_error("input", "is required (a string or an array of strings)");
  if (auto e = decode_texts(input ? *input : *inputs, input ? "input" : "inputs", max_inputs, req.inputs))
    return *e;
  req.unknown_fields = unknown_keys(o, {"model", "input", "inputs"});
  return req;
}

result<rerank_request> decode_rerank(std::string_view body) {
  auto parsed = parse_body(body);
  if (!parsed) return parsed.error();
  auto const& o = *parsed;
  rerank_request req;
  if (auto e = decode_model(o, req.model)) return *e;
  auto query = find(o, "query");
  if (!query || !query->is_string() || query->get_string().empty())
    return field_error("query", "must be a non-empty string");
  req.query = std::string(query->get_string());
  auto docs = find(o, "documents");
  if (!docs || !docs->is_array() || docs->get_array().empty())
    return field_error("documents", "must be a non-empty array of strings");
  auto const& a = docs->get_array();
  if (a.size() > max_documents)
    return field_error("documents", "must have at most " + std::to_string(max_documents) + " entries");
  req.documents.reserve(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!a[i].is_string() || a[i].get_string().empty())
      return field_error(index_path("documents", i), "must be a non-empty string");
    req.documents.emplace_back(a[i].get_string());
  }
  if (auto e = decode_positive(o, "top_n", req.top_n)) return *e;
  if (auto v = find(o, "return_documents")) {
    if (!v->is_bool()) return field_error("return_documents", "must be a boolean");
    req.return_documents = v->get_bool();
  }
  req.unknown_fields = unknown_keys(o, {"model", "query", "documents", "top_n", "return_documents"});
  return req;
}

std::optional<ray::error> check_dimensions(std::optional<std::uint32_t> asked,
                                           std::optional<std::uint32_t> native) {
  if (!asked || !native || *asked == *native) return std::nullopt;
  ray::error err{errc::unsupported_parameter, "dimensions: this model's embeddings have " +
                                                  std::to_string(*native) +
                                                  " dimensions and Ray does not shorten them; send " +
                                                  std::to_string(*native) + " or leave dimensions out"};
  err.param = "dimensions";
  err.details["dimensions"] = *asked;
  err.details["nativeDimensions"] = *native;
  return err;
}

std::string base64_floats(std::span<float const> v) {
  static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string bytes;
  bytes.reserve(v.size() * 4);
  for (float x : v) {
    auto const u = std::bit_cast<std::uint32_t>(x);
    for (int shift = 0; shift < 32; shift += 8)  // little-endian whatever the host
      bytes.push_back(static_cast<char>((u >> shift) & 0xff));
  }
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    std::uint32_t const n = (std::uint32_t{static_cast<unsigned char>(bytes[i])} << 16) |
                            (std::uint32_t{static_cast<unsigned char>(bytes[i + 1])} << 8) |
                            std::uint32_t{static_cast<unsigned char>(bytes[i + 2])};
    out.push_back(alphabet[(n >> 18) & 63]);
    out.push_back(alphabet[(n >> 12) & 63]);
    out.push_back(alphabet[(n >> 6) & 63]);
    out.push_back(alphabet[n & 63]);
  }
  if (std::size_t const rest = bytes.size() - i; rest > 0) {
    std::uint32_t n = std::uint32_t{static_cast<unsigned char>(bytes[i])} << 16;
    if (rest == 2) n |= std::uint32_t{static_cast<unsigned char>(bytes[i + 1])} << 8;
    out.push_back(alphabet[(n >> 18) & 63]);
    out.push_back(alphabet[(n >> 12) & 63]);
    out.push_back(rest == 2 ? alphabet[(n >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::string render_openai(runtime::embed_result const& r, encoding format) {
  std::string out;
  std::size_t const dims = r.vectors.empty() ? 0 : r.vectors.front().size();
  out.reserve(64 + r.vectors.size() * (64 + dims * (format == encoding::base64 ? 6 : 12)));
  out += R"({"object":"list","data":[)";
  for (std::size_t i = 0; i < r.vectors.size(); ++i) {
    if (i) out.push_back(',');
    out += R"({"object":"embedding","index":)";
    out += std::to_string(i);
    out += R"(,"embedding":)";
    if (format == encoding::base64) {
      out.push_back('"');
      out += base64_floats(r.vectors[i]);
      out.push_back('"');
    } else {
      put_vector(out, r.vectors[i]);
    }
    out.push_back('}');
  }
  out += R"(],"model":)";
  put_string(out, r.model);
  out += R"(,"usage":{"prompt_tokens":)";
  out += std::to_string(r.prompt_tokens);
  out += R"(,"total_tokens":)";
  out += std::to_string(r.prompt_tokens);
  out += "}}";
  return out;
}

std::string render_native(runtime::embed_result const& r, std::string const& request_id) {
  std::string out;
  out += R"({"id":)";
  put_string(out, request_id);
  out += R"(,"model":)";
  put_string(out, r.model);
  out += R"(,"embeddings":[)";
  for (std::size_t i = 0; i < r.vectors.size(); ++i) {
    if (i) out.push_back(',');
    put_vector(out, r.vectors[i]);
  }
  out += R"(],"usage":{"tokens":{"prompt":)";
  out += std::to_string(r.prompt_tokens);
  out += R"(,"total":)";
  out += std::to_string(r.prompt_tokens);
  out += R"(}},"cached":[)";
  for (std::size_t i = 0; i < r.cached.size(); ++i) {
    if (i) out.push_back(',');
    out += r.cached[i] ? "true" : "false";
  }
  out += R"(],"deduplicated":)";
  out += r.deduplicated ? "true" : "false";
  out += R"(,"queueTimeMs":)";
  out += std::to_string(std::llround(r.queue_ms));
  out += R"(,"latencyMs":)";
  out += std::to_string(std::llround(r.latency_ms));
  out += "}";
  return out;
}

std::string render_rerank(runtime::rerank_result const& r, std::vector<std::string> const& documents,
                          bool return_documents) {
  json::array results;
  for (auto const& item : r.results) {
    json::object o{{"index", item.index}, {"relevance_score", item.score}};
    if (return_documents && item.index < documents.size())
      o["document"] = json::object{{"text", documents[item.index]}};
    results.emplace_back(std::move(o));
  }
  json::object o{
      {"model", r.model},
      {"object", "list"},
      {"usage", json::object{{"prompt_tokens", r.prompt_tokens}, {"total_tokens", r.prompt_tokens}}},
      {"results", std::move(results)}};
  return telemetry::to_json(o);
}

}  // namespace ray::api::embeddings
