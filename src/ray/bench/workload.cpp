// Workload files: JSONL, one request per line (bench.hpp).
#include "ray/bench/bench.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace ray::bench {

namespace {

namespace json = boost::json;

ray::error line_error(std::size_t line, std::string const& what) {
  return ray::error{errc::invalid_request, "line " + std::to_string(line) + ": " + what};
}

json::value const* find(json::object const& o, std::string_view key) {
  auto it = o.find(key);
  return it == o.end() || it->value().is_null() ? nullptr : &it->value();
}

// A native /v1/infer body as an OpenAI chat body (workload_options::openai).
result<json::object> native_to_chat(json::object const& in, std::size_t line) {
  if (find(in, "templateId"))
    return line_error(line,
                      "a template line (templateId) needs Ray to render it and cannot be sent to a backend "
                      "directly; drop --openai, or write the request as {\"openai\": {…}}");
  auto input = find(in, "input");
  if (!input || !input->is_string()) return line_error(line, "\"input\" must be a string");
  json::array messages;
  if (auto sys = find(in, "system")) {
    if (!sys->is_string()) return line_error(line, "\"system\" must be a string");
    if (!trim(sys->get_string()).empty())
      messages.push_back(json::object{{"role", "system"}, {"content", sys->get_string()}});
  }
  messages.push_back(json::object{{"role", "user"}, {"content", input->get_string()}});
  json::object out{{"messages", std::move(messages)}};
  static constexpr std::pair<std::string_view, std::string_view> renames[] = {
      {"maxTokens", "max_tokens"},
      {"temperature", "temperature"},
      {"topP", "top_p"},
      {"seed", "seed"},
      {"stop", "stop"},
      {"responseFormat", "response_format"}};
  for (auto const& [from, to] : renames)
    if (auto v = find(in, from)) out[to] = *v;
  return out;
}

void make_streaming(json::object& body) {
  body["stream"] = true;
  if (!body.contains("stream_options")) body["stream_options"] = json::object{{"include_usage", true}};
}

result<workload_item> parse_line(std::string_view text, std::size_t line, workload_options const& opts) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec) return line_error(line, "not valid JSON (" + ec.message() + ")");
  if (!v.is_object())
    return line_error(line, "must be a JSON object (a /v1/infer body or {\"openai\": {…}})");
  auto& o = v.get_object();
  workload_item item;
  item.line = line;
  json::object body;
  if (auto it = o.find("openai"); it != o.end()) {
    for (auto const& kv : o)
      if (kv.key() != "openai")
        return line_error(line, "unknown key \"" + std::string(kv.key()) + "\" beside \"openai\"");
    if (!it->value().is_object())
      return line_error(line, "\"openai\" must be an object: a chat body {\"messages\": […], …}");
    body = std::move(it->value().get_object());
    auto messages = find(body, "messages");
    auto prompt = find(body, "prompt");
    if (messages) {
      if (!messages->is_array() || messages->get_array().empty())
        return line_error(line, "openai.messages must be a non-empty array");
      item.target = "/v1/chat/completions";
    } else if (prompt) {
      item.target = "/v1/completions";
    } else {
      return line_error(line, "an OpenAI body needs \"messages\" (chat) or \"prompt\" (completion)");
    }
    item.openai = true;
  } else if (opts.openai) {
    auto chat = native_to_chat(o, line);
    if (!chat) return chat.error();
    body = std::move(*chat);
    item.target = "/v1/chat/completions";
    item.openai = true;
  } else {
    if (!find(o, "input") && !find(o, "templateId"))
      return line_error(line,
                        "a /v1/infer body needs \"input\" or \"templateId\" (an OpenAI body is written "
                        "{\"openai\": {…}})");
    if (opts.stream)
      return line_error(line,
                        "/v1/infer does not stream: --stream needs {\"openai\": {…}} lines (or --openai)");
    body = std::move(o);
    item.target = "/v1/infer";
  }
  if (item.openai && opts.stream) make_streaming(body);
  item.body = json::serialize(body);
  return item;
}

}  // namespace

result<std::vector<workload_item>> parse_workload(std::string_view text, workload_options const& opts) {
  std::vector<workload_item> items;
  std::size_t line = 0;
  while (!text.empty()) {
    ++line;
    auto nl = text.find('\n');
    std::string_view l = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (trim(l).empty()) continue;
    auto item = parse_line(l, line, opts);
    if (!item) return item.error();
    items.push_back(std::move(*item));
  }
  if (items.empty())
    return ray::error{errc::invalid_request, "the workload has no requests (no non-blank line)"};
  return items;
}

result<std::vector<workload_item>> load_workload(std::string const& path, workload_options const& opts) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return ray::error{errc::invalid_request,
                      "cannot read the workload " + path + ": " + std::strerror(errno)};
  std::ostringstream ss;
  ss << in.rdbuf();
  auto items = parse_workload(ss.str(), opts);
  if (!items) return ray::error{errc::invalid_request, path + ": " + items.error().message};
  return items;
}

}  // namespace ray::bench
