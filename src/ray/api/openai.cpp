#include "ray/api/openai.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>

namespace ray::api::openai {

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

std::optional<double> as_number(json::value const& v) {
  if (v.is_double()) return v.get_double();
  if (v.is_int64()) return static_cast<double>(v.get_int64());
  if (v.is_uint64()) return static_cast<double>(v.get_uint64());
  return std::nullopt;
}

// A whole number (a double such as 16.0 counts), saturated to the int64 range: only the sign and size of huge
// values matter to the rules below.
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

// Present and not null.
json::value const* find(json::object const& o, std::string_view key) {
  auto it = o.find(key);
  if (it == o.end() || it->value().is_null()) return nullptr;
  return &it->value();
}

std::string describe_range(double lo, double hi) {
  auto fmt = [](double d) {
    if (std::floor(d) == d) return std::to_string(static_cast<long long>(d));
    auto s = std::to_string(d);
    while (!s.empty() && s.back() == '0')
      s.pop_back();
    return s;
  };
  if (hi == std::numeric_limits<double>::infinity()) return "must be a number >= " + fmt(lo);
  return "must be a number from " + fmt(lo) + " to " + fmt(hi);
}

std::optional<ray::error> decode_number(json::object const& o, std::string_view key, double lo, double hi,
                                        std::optional<double>& out) {
  auto v = find(o, key);
  if (!v) return std::nullopt;
  auto n = as_number(*v);
  if (!n || !std::isfinite(*n) || *n < lo || *n > hi)
    return field_error(std::string(key), describe_range(lo, hi));
  out = *n;
  return std::nullopt;
}

std::optional<ray::error> decode_non_negative_integer(json::object const& o, std::string_view key,
                                                      std::optional<std::int64_t>& out) {
  auto v = find(o, key);
  if (!v) return std::nullopt;
  auto n = as_integer(*v);
  if (!n || *n < 0) return field_error(std::string(key), "must be an integer >= 0");
  out = *n;
  return std::nullopt;
}

std::optional<ray::error> decode_bool(json::object const& o, std::string_view key, std::string const& path,
                                      bool& out) {
  auto v = find(o, key);
  if (!v) return std::nullopt;
  if (!v->is_bool()) return field_error(path, "must be a boolean");
  out = v->get_bool();
  return std::nullopt;
}

std::optional<ray::error> decode_max_tokens(json::object const& o, std::string_view key,
                                            std::optional<std::uint32_t>& out) {
  auto v = find(o, key);
  if (!v) return std::nullopt;
  auto n = as_integer(*v);
  if (!n || *n < 1) return field_error(std::string(key), "must be an integer >= 1");
  // Above the cap or the context left is clamped later (http-api.md §3), never a 400.
  out = static_cast<std::uint32_t>(std::min<std::int64_t>(*n, std::numeric_limits<std::uint32_t>::max()));
  return std::nullopt;
}

std::optional<ray::error> decode_stop(json::object const& o, std::vector<std::string>& out) {
  auto v = find(o, "stop");
  if (!v) return std::nullopt;
  auto take = [&](json::value const& s, std::string const& path) -> std::optional<ray::error> {
    if (!s.is_string()) return field_error(path, "must be a string");
    auto len = count_code_points(s.get_string());
    if (len < 1 || len > max_stop_chars)
      return field_error(path, "must be 1 to " + std::to_string(max_stop_chars) + " characters");
    out.emplace_back(s.get_string());
    return std::nullopt;
  };
  if (v->is_string()) return take(*v, "stop");
  if (!v->is_array()) return field_error("stop", "must be a string or an array of strings");
  auto const& a = v->get_array();
  if (a.size() > max_stop_entries)
    return field_error("stop", "must have at most " + std::to_string(max_stop_entries) + " entries");
  for (std::size_t i = 0; i < a.size(); ++i)
    if (auto e = take(a[i], index_path("stop", i))) return e;
  return std::nullopt;
}

std::optional<ray::error> decode_logit_bias(json::object const& o, json::value& out) {
  auto v = find(o, "logit_bias");
  if (!v) return std::nullopt;
  if (!v->is_object()) return field_error("logit_bias", "must be an object of token id to bias");
  for (auto const& kv : v->get_object()) {
    auto n = as_number(kv.value());
    if (!n || !std::isfinite(*n) || *n < -100 || *n > 100)
      return field_error("logit_bias." + std::string(kv.key()), "must be a number from -100 to 100");
  }
  out = *v;
  return std::nullopt;
}

// `n`: 1 is accepted and ignored, anything else is refused.
std::optional<ray::error> decode_n(json::object const& o, std::string_view key, sampling_fields& out) {
  auto v = find(o, key);
  if (!v) return std::nullopt;
  auto n = as_integer(*v);
  if (!n || *n != 1)
    return field_error(std::string(key), "only 1 choice per request is supported (send 1 or omit it)");
  out.ignored_fields.emplace_back(key);
  return std::nullopt;
}

// Fields of both routes, in a fixed order.
std::optional<ray::error> decode_sampling(json::object const& o, sampling_fields& out) {
  if (auto v = find(o, "model")) {
    if (!v->is_string()) return field_error("model", "must be a string");
    out.model = std::string(v->get_string());
  }
  if (auto e = decode_max_tokens(o, "max_tokens", out.max_tokens)) return e;
  std::optional<std::uint32_t> max_completion;
  if (auto e = decode_max_tokens(o, "max_completion_tokens", max_completion)) return e;
  if (max_completion) out.max_tokens = max_completion;

  constexpr double inf = std::numeric_limits<double>::infinity();
  if (auto e = decode_number(o, "temperature", 0, inf, out.temperature)) return e;
  if (auto e = decode_number(o, "top_p", 0, 1, out.top_p)) return e;
  if (auto e = decode_number(o, "frequency_penalty", -2, 2, out.frequency_penalty)) return e;
  if (auto e = decode_number(o, "presence_penalty", -2, 2, out.presence_penalty)) return e;
  if (auto e = decode_number(o, "min_p", 0, 1, out.min_p)) return e;
  if (auto e = decode_number(o, "repeat_penalty", 0, inf, out.repeat_penalty)) return e;
  if (auto e = decode_non_negative_integer(o, "seed", out.seed)) return e;
  if (auto e = decode_non_negative_integer(o, "top_k", out.top_k)) return e;
  if (auto e = decode_stop(o, out.stop)) return e;
  if (auto e = decode_bool(o, "stream", "stream", out.stream)) return e;
  if (auto v = find(o, "stream_options")) {
    if (!v->is_object())
      return field_error("stream_options", "must be an object like {\"include_usage\":true}");
    if (auto e =
            decode_bool(v->get_object(), "include_usage", "stream_options.include_usage", out.include_usage))
      return e;
  }
  if (auto e = decode_logit_bias(o, out.logit_bias)) return e;
  if (auto e = decode_n(o, "n", out)) return e;
  for (std::string_view key : {"user", "store", "metadata"})
    if (find(o, key)) out.ignored_fields.emplace_back(key);
  return std::nullopt;
}

constexpr std::string_view sampling_keys[] = {"model",
                                              "max_tokens",
                                              "max_completion_tokens",
                                              "temperature",
                                              "top_p",
                                              "frequency_penalty",
                                              "presence_penalty",
                                              "min_p",
                                              "repeat_penalty",
                                              "seed",
                                              "top_k",
                                              "stop",
                                              "stream",
                                              "stream_options",
                                              "logit_bias",
                                              "n",
                                              "user",
                                              "store",
                                              "metadata"};

template <std::size_t N>
void list_unknown(json::object const& o, std::string_view const (&route_keys)[N], sampling_fields& out) {
  for (auto const& kv : o) {
    auto key = kv.key();
    bool known =
        std::find(std::begin(sampling_keys), std::end(sampling_keys), key) != std::end(sampling_keys) ||
        std::find(std::begin(route_keys), std::end(route_keys), key) != std::end(route_keys);
    if (!known) out.unknown_fields.emplace_back(key);
  }
}

// Boost.JSON reads an overflowing number (1e999) as infinity and would write it back as `Infinity`, which is
// not JSON: a non-finite number anywhere in the body (tool schemas and tool calls are forwarded as is) is
// refused, naming its path.
std::optional<ray::error> find_non_finite(json::value const& v, std::string const& path) {
  if (v.is_double() && !std::isfinite(v.get_double()))
    return field_error(path.empty() ? "body" : path, "must be a finite number");
  if (v.is_array()) {
    auto const& a = v.get_array();
    for (std::size_t i = 0; i < a.size(); ++i)
      if (auto e = find_non_finite(a[i], index_path(path, i))) return e;
  } else if (v.is_object()) {
    for (auto const& kv : v.get_object()) {
      auto child = path.empty() ? std::string(kv.key()) : path + "." + std::string(kv.key());
      if (auto e = find_non_finite(kv.value(), child)) return e;
    }
  }
  return std::nullopt;
}

result<json::object> parse_body(std::string_view body) {
  if (trim(body).empty()) return json::object{};
  json::parse_options opts;
  opts.max_depth = 64;  // tool and JSON-schema definitions nest deeper than Boost's default of 32
  boost::system::error_code ec;
  json::value doc = json::parse(body, ec, {}, opts);
  if (ec) return ray::error{errc::invalid_json, "request body is not valid JSON: " + ec.message()};
  if (!doc.is_object()) return ray::error{errc::invalid_request, "request body must be a JSON object"};
  if (auto e = find_non_finite(doc, "")) return *e;  // depth is bounded by max_depth above
  return std::move(doc.get_object());
}

// Content: a string, or an array of text parts joined with "\n".
result<std::string> decode_content(json::value const& v, std::string const& path) {
  if (v.is_string()) return std::string(v.get_string());
  if (!v.is_array()) return field_error(path, "must be a string or an array of text parts");
  auto const& parts = v.get_array();
  if (parts.empty()) return field_error(path, "must not be an empty array");
  std::string text;
  for (std::size_t j = 0; j < parts.size(); ++j) {
    auto part_path = index_path(path, j);
    if (!parts[j].is_object())
      return field_error(part_path, "must be an object like {\"type\":\"text\",\"text\":\"…\"}");
    auto const& part = parts[j].get_object();
    auto type = find(part, "type");
    if (!type || !type->is_string()) return field_error(part_path + ".type", "must be \"text\"");
    if (type->get_string() != "text")
      return field_error(part_path + ".type", "\"" + std::string(type->get_string()) +
                                                  "\" parts are not supported: this model takes text only "
                                                  "(send text parts or a string)");
    auto t = find(part, "text");
    if (!t || !t->is_string()) return field_error(part_path + ".text", "must be a string");
    if (j > 0) text += '\n';
    text += t->get_string();
  }
  return text;
}

result<message> decode_message(json::value const& v, std::size_t i) {
  auto path = index_path("messages", i);
  if (!v.is_object())
    return field_error(path, "must be an object like {\"role\":\"user\",\"content\":\"…\"}");
  auto const& o = v.get_object();
  message m;

  auto role = find(o, "role");
  if (!role || !role->is_string())
    return field_error(path + ".role", "is required: one of system, developer, user, assistant, tool");
  std::string_view r = role->get_string();
  if (r == "developer") {
    m.role = "system";
  } else if (r == "system" || r == "user" || r == "assistant" || r == "tool") {
    m.role = std::string(r);
  } else {
    return field_error(path + ".role", "must be one of system, developer, user, assistant, tool (got \"" +
                                           std::string(r) + "\")");
  }

  if (auto tc = find(o, "tool_calls")) {
    if (!tc->is_array()) return field_error(path + ".tool_calls", "must be an array of tool calls");
    auto const& calls = tc->get_array();
    for (std::size_t k = 0; k < calls.size(); ++k)
      if (!calls[k].is_object()) return field_error(index_path(path + ".tool_calls", k), "must be an object");
    m.tool_calls = *tc;
  }

  if (auto c = find(o, "content")) {
    auto text = decode_content(*c, path + ".content");
    if (!text) return text.error();
    m.content = std::move(*text);
  } else if (m.role != "assistant") {
    return field_error(path + ".content", "is required: a string or an array of text parts");
  } else if (m.tool_calls.is_null()) {
    return field_error(path + ".content", "is required unless the assistant message has tool_calls");
  }

  if (auto n = find(o, "name")) {
    if (!n->is_string()) return field_error(path + ".name", "must be a string");
    m.name = std::string(n->get_string());
  }
  if (auto id = find(o, "tool_call_id")) {
    if (!id->is_string()) return field_error(path + ".tool_call_id", "must be a string");
    m.tool_call_id = std::string(id->get_string());
  }
  return m;
}

std::optional<ray::error> decode_tools(json::object const& o, chat_request& out) {
  auto tools = find(o, "tools");
  if (tools) {
    if (!tools->is_array()) return field_error("tools", "must be an array of {\"type\":\"function\",…}");
    auto const& a = tools->get_array();
    for (std::size_t i = 0; i < a.size(); ++i) {
      auto path = index_path("tools", i);
      if (!a[i].is_object()) return field_error(path, "must be an object like {\"type\":\"function\",…}");
      auto const& t = a[i].get_object();
      auto type = find(t, "type");
      if (!type || !type->is_string() || type->get_string() != "function")
        return field_error(path + ".type", "must be \"function\"");
      auto fn = find(t, "function");
      if (!fn || !fn->is_object()) return field_error(path + ".function", "must be an object with a name");
      auto name = find(fn->get_object(), "name");
      if (!name || !name->is_string() || name->get_string().empty())
        return field_error(path + ".function.name", "must be a non-empty string");
      if (auto params = find(fn->get_object(), "parameters"); params && !params->is_object())
        return field_error(path + ".function.parameters", "must be a JSON schema object");
    }
  }
  bool const any_tools = tools && !tools->get_array().empty();

  std::optional<std::string_view> choice_word;
  auto choice = find(o, "tool_choice");
  if (choice) {
    if (choice->is_string()) {
      auto const& s = choice->get_string();  // a reference: choice_word views it below
      if (s != "none" && s != "auto" && s != "required")
        return field_error("tool_choice",
                           "must be \"none\", \"auto\", \"required\" or {\"type\":\"function\",\"function\":"
                           "{\"name\":…}}");
      choice_word = s;
    } else if (choice->is_object()) {
      auto const& c = choice->get_object();
      auto type = find(c, "type");
      if (!type || !type->is_string() || type->get_string() != "function")
        return field_error("tool_choice.type", "must be \"function\"");
      auto fn = find(c, "function");
      auto name = fn && fn->is_object() ? find(fn->get_object(), "name") : nullptr;
      if (!name || !name->is_string() || name->get_string().empty())
        return field_error("tool_choice.function.name", "must be a non-empty string");
    } else {
      return field_error("tool_choice", "must be a string or an object");
    }
  }

  auto parallel = find(o, "parallel_tool_calls");
  if (parallel && !parallel->is_bool()) return field_error("parallel_tool_calls", "must be a boolean");

  // A plain chat: `tools: []`, `tool_choice: "none"` (http-api.md §3), or `auto` with no tools. Nothing
  // tool-related is forwarded, so the backend sees exactly what the cache key describes.
  bool const plain = !any_tools || choice_word == "none";
  if (plain) {
    if (choice && !any_tools && choice_word != "none" && choice_word != "auto")
      return field_error("tool_choice", "requires a non-empty tools list");
    if (tools) out.ignored_fields.emplace_back("tools");
    if (choice) out.ignored_fields.emplace_back("tool_choice");
    if (parallel) out.ignored_fields.emplace_back("parallel_tool_calls");
    return std::nullopt;
  }
  out.tools = *tools;
  if (choice) out.tool_choice = *choice;
  if (parallel) out.parallel_tool_calls = *parallel;
  return std::nullopt;
}

std::optional<ray::error> decode_response_format(json::object const& o, chat_request& out) {
  auto v = find(o, "response_format");
  if (!v) return std::nullopt;
  if (!v->is_object())
    return field_error("response_format", "must be an object like {\"type\":\"json_object\"}");
  auto const& rf = v->get_object();
  auto type = find(rf, "type");
  if (!type || !type->is_string() ||
      (type->get_string() != "text" && type->get_string() != "json_object" &&
       type->get_string() != "json_schema"))
    return field_error("response_format.type", "must be \"text\", \"json_object\" or \"json_schema\"");
  if (type->get_string() == "json_schema") {
    auto js = find(rf, "json_schema");
    if (!js || !js->is_object())
      return field_error("response_format.json_schema",
                         "is required with type json_schema: {\"schema\":{…}}");
    if (auto schema = find(js->get_object(), "schema"); schema && !schema->is_object() && !schema->is_bool())
      return field_error("response_format.json_schema.schema", "must be a JSON schema object");
  }
  out.response_format_type = std::string(type->get_string());
  out.response_format = *v;
  return std::nullopt;
}

// Object keys sorted at every level, so equal tool calls sent in a different key order give the same text.
json::value sorted_keys(json::value const& v) {
  if (v.is_array()) {
    json::array a;
    a.reserve(v.get_array().size());
    for (auto const& e : v.get_array())
      a.push_back(sorted_keys(e));
    return a;
  }
  if (!v.is_object()) return v;
  std::vector<json::key_value_pair const*> kvs;
  for (auto const& kv : v.get_object())
    kvs.push_back(&kv);
  std::sort(kvs.begin(), kvs.end(), [](auto* a, auto* b) { return a->key() < b->key(); });
  json::object o;
  o.reserve(kvs.size());
  for (auto* kv : kvs)
    o.emplace(kv->key(), sorted_keys(kv->value()));
  return o;
}

bool fixed_seed(std::optional<std::int64_t> seed) {
  return seed && (static_cast<std::uint64_t>(*seed) & 0xFFFF'FFFFu) != 0xFFFF'FFFFu;
}

bool deterministic(sampling_fields const& req) {
  return (req.temperature && *req.temperature == 0.0) || fixed_seed(req.seed);
}

}  // namespace

bool chat_request::has_tools() const {
  bool const any = tools.is_array() && !tools.get_array().empty();
  bool const none = tool_choice.is_string() && tool_choice.get_string() == "none";
  return any && !none;
}

result<chat_request> decode_chat(std::string_view body) {
  auto parsed = parse_body(body);
  if (!parsed) return parsed.error();
  auto const& o = *parsed;
  chat_request req;

  auto msgs = find(o, "messages");
  if (!msgs || !msgs->is_array() || msgs->get_array().empty())
    return field_error("messages", "is required: a non-empty array of {\"role\",\"content\"} messages");
  auto const& a = msgs->get_array();
  if (a.size() > max_messages)
    return field_error("messages", "must have at most " + std::to_string(max_messages) + " messages");
  req.messages.reserve(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto m = decode_message(a[i], i);
    if (!m) return m.error();
    req.messages.push_back(std::move(*m));
  }

  if (auto e = decode_sampling(o, req)) return *e;
  if (auto v = find(o, "logprobs")) {
    if (!v->is_bool()) return field_error("logprobs", "must be a boolean");
    req.logprobs = v->get_bool();
    if (!req.logprobs) req.ignored_fields.emplace_back("logprobs");
  }
  if (auto v = find(o, "top_logprobs")) {
    auto n = as_integer(*v);
    if (!n || *n < 0 || *n > max_top_logprobs)
      return field_error("top_logprobs", "must be an integer from 0 to " + std::to_string(max_top_logprobs));
    if (!req.logprobs) return field_error("top_logprobs", "requires \"logprobs\": true");
    req.top_logprobs = *n;
  }
  if (auto e = decode_response_format(o, req)) return *e;
  if (auto e = decode_tools(o, req)) return *e;

  static constexpr std::string_view chat_keys[] = {"messages",           "logprobs", "top_logprobs",
                                                   "response_format",    "tools",    "tool_choice",
                                                   "parallel_tool_calls"};
  list_unknown(o, chat_keys, req);
  return req;
}

result<completion_request> decode_completion(std::string_view body) {
  auto parsed = parse_body(body);
  if (!parsed) return parsed.error();
  auto const& o = *parsed;
  completion_request req;

  auto prompt = find(o, "prompt");
  if (!prompt) return field_error("prompt", "is required: a non-empty string");
  if (prompt->is_array()) {
    auto const& a = prompt->get_array();
    if (a.size() != 1) return field_error("prompt", "batched prompts are not supported: send one string");
    if (!a[0].is_string())
      return field_error("prompt[0]", "token arrays are not supported: send the prompt as a string");
    prompt = &a[0];
  }
  if (!prompt->is_string() || prompt->get_string().empty())
    return field_error("prompt", "is required: a non-empty string");
  req.prompt = std::string(prompt->get_string());

  if (auto e = decode_sampling(o, req)) return *e;
  // On /v1/completions `logprobs` is a count (legacy API); 0 or false asks for none.
  if (auto v = find(o, "logprobs")) {
    auto n = as_integer(*v);
    bool const none = v->is_bool() ? !v->get_bool() : (n && *n == 0);
    if (!none) return field_error("logprobs", "log probabilities are not supported (omit it or send 0)");
    req.ignored_fields.emplace_back("logprobs");
  }
  if (auto v = find(o, "echo")) {
    if (!v->is_bool()) return field_error("echo", "must be a boolean");
    if (v->get_bool())
      return field_error("echo", "echoing the prompt is not supported (omit it or send false)");
    req.ignored_fields.emplace_back("echo");
  }
  if (auto e = decode_n(o, "best_of", req)) return *e;
  if (auto v = find(o, "suffix")) {
    if (!v->is_string()) return field_error("suffix", "must be a string");
    if (!v->get_string().empty()) return field_error("suffix", "is not supported (omit it)");
    req.ignored_fields.emplace_back("suffix");
  }

  static constexpr std::string_view completion_keys[] = {"prompt", "logprobs", "echo", "best_of", "suffix"};
  list_unknown(o, completion_keys, req);
  return req;
}

bool cacheable(chat_request const& req, bool x_ray_cache_on) {
  // A tool or logprobs request is never cached, whatever x-ray-cache says: the cache keeps text, not tool
  // calls or token probabilities.
  if (req.has_tools() || req.logprobs) return false;
  // A structured output is a deterministic candidate only at temperature 0: a seed alone still samples, and
  // two different valid JSON answers must not be served as one.
  if (req.response_format_type && *req.response_format_type != "text")
    return req.temperature && *req.temperature == 0.0;
  return x_ray_cache_on || deterministic(req);
}

bool cacheable(completion_request const& req, bool x_ray_cache_on) {
  return x_ray_cache_on || deterministic(req);
}

std::string canonical_messages(std::vector<message> const& messages) {
  json::array all;
  all.reserve(messages.size());
  for (auto const& m : messages) {
    json::array one;
    one.emplace_back(m.role);
    if (m.name)
      one.emplace_back(*m.name);
    else
      one.emplace_back(nullptr);
    one.emplace_back(m.content);
    if (m.tool_call_id)
      one.emplace_back(*m.tool_call_id);
    else
      one.emplace_back(nullptr);
    one.push_back(sorted_keys(m.tool_calls));
    all.emplace_back(std::move(one));
  }
  return json::serialize(all);
}

bool is_configured_model(std::string const& requested, config::config const& cfg) {
  auto names = [&](config::model_config const& m) {
    return requested == m.id || std::find(m.aliases.begin(), m.aliases.end(), requested) != m.aliases.end();
  };
  return names(cfg.model) ||
         std::any_of(cfg.more_models.begin(), cfg.more_models.end(), [&](auto const& m) { return names(m); });
}

result<std::string> resolve_model(std::string const& requested, config::config const& cfg) {
  auto const& model = cfg.model;
  if (!cfg.openai.strict_model_names || is_configured_model(requested, cfg)) return model.id;
  std::string valid;
  json::array ids;
  auto list = [&](config::model_config const& m) {
    valid += (valid.empty() ? "" : ", ") + m.id;
    ids.emplace_back(m.id);
    for (auto const& alias : m.aliases) {
      valid += ", " + alias;
      ids.emplace_back(alias);
    }
  };
  list(model);
  for (auto const& m : cfg.more_models)
    list(m);
  ray::error err{errc::model_not_found,
                 requested.empty() ? "model: is required; valid ids: " + valid
                                   : "The model '" + requested + "' does not exist; valid ids: " + valid};
  err.param = "model";
  err.details["validIds"] = std::move(ids);
  return err;
}

std::string object_id(std::string_view prefix, std::string_view request_id) {
  std::string id(prefix);
  id += request_id.starts_with("req_") ? request_id.substr(4) : request_id;
  return id;
}

}  // namespace ray::api::openai
