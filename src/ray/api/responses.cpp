// POST /v1/responses decoding (openai.hpp): the Responses request is rewritten as the equivalent
// /v1/chat/completions body and decoded by decode_chat(), so both routes share every field rule (sampling
// bounds, roles, content parts, response_format). What only the Responses API has is checked here first,
// with its own field paths.
#include "ray/api/openai.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

namespace ray::api::openai {

namespace {

namespace json = boost::json;

ray::error field_error(std::string const& path, std::string const& rule, errc code = errc::invalid_request) {
  ray::error err{code, path + ": " + rule};
  err.param = path;
  err.details["field"] = path;
  return err;
}

json::value const* present(json::object const& o, std::string_view key) {
  auto it = o.find(key);
  if (it == o.end() || it->value().is_null()) return nullptr;
  return &it->value();
}

std::string at(std::string_view base, std::size_t i) {
  return std::string(base) + "[" + std::to_string(i) + "]";
}

// One input item → one chat message. Message items (with or without "type":"message") only: function calls,
// their outputs, images, files and item references need server-side state or modalities Ray does not have.
result<json::object> translate_item(json::value const& v, std::size_t i) {
  auto path = at("input", i);
  if (!v.is_object())
    return field_error(path, "must be a message item like {\"role\":\"user\",\"content\":\"…\"}");
  auto const& item = v.get_object();
  if (auto type = present(item, "type")) {
    if (!type->is_string() || type->get_string() != "message")
      return field_error(path + ".type",
                         "only message items are supported (got " + json::serialize(*type) +
                             "); Ray's /v1/responses is stateless and text-only",
                         errc::unsupported_parameter);
  }
  auto role = present(item, "role");
  if (!role || !role->is_string())
    return field_error(path + ".role", "is required: one of user, assistant, system, developer");
  auto content = present(item, "content");
  if (!content) return field_error(path + ".content", "is required: a string or an array of text parts");
  json::object msg{{"role", *role}};
  if (content->is_string()) {
    msg["content"] = *content;
    return msg;
  }
  if (!content->is_array())
    return field_error(path + ".content", "must be a string or an array of text parts");
  json::array parts;
  auto const& a = content->get_array();
  for (std::size_t j = 0; j < a.size(); ++j) {
    auto part_path = at(path + ".content", j);
    auto const* part = a[j].if_object();
    auto const* type = part ? present(*part, "type") : nullptr;
    auto const* text = part ? present(*part, "text") : nullptr;
    bool const text_part = type && type->is_string() &&
                           (type->get_string() == "input_text" || type->get_string() == "output_text");
    if (!text_part)
      return field_error(part_path + ".type",
                         "must be \"input_text\" or \"output_text\": this model takes text only");
    if (!text || !text->is_string()) return field_error(part_path + ".text", "must be a string");
    parts.push_back(json::object{{"type", "text"}, {"text", *text}});
  }
  msg["content"] = std::move(parts);
  return msg;
}

// text.format → response_format.
result<json::value> translate_format(json::value const& fmt) {
  if (!fmt.is_object())
    return field_error("text.format", "must be an object like {\"type\":\"json_object\"}");
  auto const& f = fmt.get_object();
  auto type = present(f, "type");
  if (!type || !type->is_string())
    return field_error("text.format.type", "must be text, json_object or json_schema");
  if (type->get_string() != "json_schema") return json::object{{"type", *type}};
  json::object schema;
  for (std::string_view key : {"name", "schema", "strict", "description"})
    if (auto v = present(f, key)) schema[key] = *v;
  return json::object{{"type", "json_schema"}, {"json_schema", std::move(schema)}};
}

}  // namespace

result<responses_request> decode_responses(std::string_view body) {
  boost::system::error_code ec;
  auto doc = json::parse(body, ec);
  if (ec) return ray::error{errc::invalid_json, "the request body is not valid JSON"};
  if (!doc.is_object()) return ray::error{errc::invalid_json, "the request body must be a JSON object"};
  auto const& o = doc.get_object();
  responses_request out;

  for (std::string_view key : {"previous_response_id", "conversation"})
    if (present(o, key))
      return field_error(std::string(key),
                         "is not supported: Ray's /v1/responses is stateless and keeps no responses or "
                         "conversations; send the whole conversation in `input`",
                         errc::unsupported_parameter);
  if (auto v = present(o, "background"); v && (!v->is_bool() || v->get_bool()))
    return field_error("background", "background responses are not supported (omit it or send false)",
                       errc::unsupported_parameter);
  if (auto v = present(o, "tools"); v && (!v->is_array() || !v->get_array().empty()))
    return field_error("tools",
                       "tools are not supported on /v1/responses; use /v1/chat/completions with tools",
                       errc::unsupported_parameter);

  json::object chat;
  json::array messages;
  if (auto v = present(o, "instructions")) {
    if (!v->is_string()) return field_error("instructions", "must be a string");
    out.instructions = std::string(v->get_string());
    messages.push_back(json::object{{"role", "system"}, {"content", *v}});
  }
  auto input = present(o, "input");
  if (!input) return field_error("input", "is required: a string or an array of message items");
  if (input->is_string()) {
    messages.push_back(json::object{{"role", "user"}, {"content", *input}});
  } else if (input->is_array() && !input->get_array().empty()) {
    auto const& items = input->get_array();
    for (std::size_t i = 0; i < items.size(); ++i) {
      auto m = translate_item(items[i], i);
      if (!m) return m.error();
      messages.push_back(std::move(*m));
    }
  } else {
    return field_error("input", "must be a non-empty string or array of message items");
  }
  chat["messages"] = std::move(messages);

  if (auto v = present(o, "max_output_tokens")) chat["max_tokens"] = *v;
  for (std::string_view key : {"model", "temperature", "top_p", "stream", "seed", "top_logprobs"})
    if (auto v = present(o, key)) chat[key] = *v;
  if (auto v = present(o, "top_logprobs"); v) chat["logprobs"] = true;
  if (auto v = present(o, "text")) {
    if (!v->is_object())
      return field_error("text", "must be an object like {\"format\":{\"type\":\"text\"}}");
    if (auto fmt = present(v->get_object(), "format")) {
      auto rf = translate_format(*fmt);
      if (!rf) return rf.error();
      chat["response_format"] = std::move(*rf);
      out.text_format = *fmt;
    }
  }
  if (auto v = present(o, "metadata")) out.metadata = *v;

  auto decoded = decode_chat(json::serialize(chat));
  if (!decoded) return decoded.error();
  out.chat = std::move(*decoded);
  // Accepted, nothing kept or forwarded: store (nothing is stored; the response says store: false),
  // metadata (echoed), user, truncation, include, parallel_tool_calls / tool_choice without tools, reasoning,
  // service_tier, prompt_cache_key, safety_identifier.
  static constexpr std::string_view known[] = {"previous_response_id",
                                               "conversation",
                                               "background",
                                               "tools",
                                               "instructions",
                                               "input",
                                               "max_output_tokens",
                                               "model",
                                               "temperature",
                                               "top_p",
                                               "stream",
                                               "seed",
                                               "top_logprobs",
                                               "text",
                                               "metadata",
                                               "store",
                                               "user",
                                               "truncation",
                                               "include",
                                               "parallel_tool_calls",
                                               "tool_choice",
                                               "reasoning",
                                               "service_tier",
                                               "prompt_cache_key",
                                               "safety_identifier",
                                               "stream_options"};
  out.chat.unknown_fields.clear();
  out.chat.ignored_fields.clear();
  for (auto const& kv : o) {
    bool found = false;
    for (auto k : known)
      found = found || kv.key() == k;
    if (!found) out.chat.unknown_fields.emplace_back(kv.key());
  }
  return out;
}

}  // namespace ray::api::openai
