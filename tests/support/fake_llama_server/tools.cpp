#include "tools.hpp"

#include <algorithm>

namespace fake_llama {

namespace {

std::uint64_t hash(std::string_view s) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s)
    h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

constexpr std::string_view cities[] = {"Paris", "Oslo", "Lima", "Cairo", "Quito"};

json::value const* field(json::object const& o, std::string_view key) {
  auto const* v = o.if_contains(key);
  return v && !v->is_null() ? v : nullptr;
}

// A value of a JSON-schema type, deterministic from the prompt.
json::value sample_of(json::value const& schema, std::string_view prompt, int depth) {
  auto const* s = schema.if_object();
  std::string_view type = "string";
  if (s)
    if (auto const* t = field(*s, "type"); t && t->is_string()) type = t->get_string();
  if (s)
    if (auto const* e = field(*s, "enum"); e && e->is_array() && !e->get_array().empty())
      return e->get_array()[0];
  if (type == "integer") return static_cast<std::int64_t>(1 + hash(prompt) % 9);
  if (type == "number") return 0.5;
  if (type == "boolean") return true;
  if (type == "null") return nullptr;
  if (type == "array") {
    json::array a;
    if (s && depth < 4)
      if (auto const* items = field(*s, "items")) a.push_back(sample_of(*items, prompt, depth + 1));
    return a;
  }
  if (type == "object") {
    json::object o;
    if (s && depth < 4)
      if (auto const* props = field(*s, "properties"); props && props->is_object())
        for (auto const& kv : props->get_object())
          o[kv.key()] = sample_of(kv.value(), prompt, depth + 1);
    return o;
  }
  return json::string(cities[hash(prompt) % std::size(cities)]);
}

}  // namespace

void plan_extras(gen_request& rq) {
  auto const& o = rq.body;
  if (auto const* lp = field(o, "logprobs"); lp && lp->is_bool()) rq.logprobs = lp->get_bool();
  if (auto const* n = field(o, "top_logprobs"); n && n->is_number()) rq.top_logprobs = n->to_number<int>();
  if (rq.kind != api::chat) return;

  auto const* tools = field(o, "tools");
  auto const* choice = field(o, "tool_choice");
  bool const none = choice && choice->is_string() && choice->get_string() == "none";
  if (tools && tools->is_array() && !tools->get_array().empty() && !none) {
    auto name_of = [](json::value const& t) -> std::string {
      auto const* fn = t.is_object() ? field(t.get_object(), "function") : nullptr;
      auto const* n = fn && fn->is_object() ? field(fn->get_object(), "name") : nullptr;
      return n && n->is_string() ? std::string(n->get_string()) : std::string("unnamed");
    };
    auto const& a = tools->get_array();
    auto const* parallel = field(o, "parallel_tool_calls");
    if (choice && choice->is_object()) {
      rq.tool_names.push_back(name_of(*choice));
    } else if (parallel && parallel->is_bool() && parallel->get_bool()) {
      for (std::size_t i = 0; i < std::min<std::size_t>(a.size(), 2); ++i)
        rq.tool_names.push_back(name_of(a[i]));
    } else {
      rq.tool_names.push_back(name_of(a[0]));
    }
    return;
  }
  if (auto const* rf = field(o, "response_format"); rf && rf->is_object()) {
    auto const* type = field(rf->get_object(), "type");
    if (type && type->is_string() && type->get_string() == "json_object") {
      rq.planned_text = dump(json::object{{"answer", sample_of(json::value(), rq.prompt, 0)}});
    } else if (type && type->is_string() && type->get_string() == "json_schema") {
      auto const* js = field(rf->get_object(), "json_schema");
      auto const* schema = js && js->is_object() ? field(js->get_object(), "schema") : nullptr;
      json::value fallback = json::object{{"type", "object"}};
      rq.planned_text = dump(sample_of(schema ? *schema : fallback, rq.prompt, 0));
    }
  }
}

std::string tool_arguments(std::string_view prompt, int j) {
  auto h = hash(prompt) + static_cast<std::uint64_t>(j);
  // An escaped quote inside a string: argument fragments cut it, and the assembled text must still parse.
  return dump(json::object{{"city", cities[h % std::size(cities)]},
                           {"days", static_cast<std::int64_t>(1 + h % 7)},
                           {"note", "say \"hi\""}});
}

std::vector<tool_piece> plan_tool_calls(gen_request const& rq) {
  std::vector<tool_piece> out;
  for (std::size_t j = 0; j < rq.tool_names.size(); ++j) {
    tool_piece head;
    head.index = static_cast<int>(j);
    head.header = true;
    head.name = rq.tool_names[j];
    // llama-server's ids are random 32-character strings; the double's are derived, so tests can predict
    // them.
    head.id = "call_" + std::to_string(hash(rq.prompt) % 1000000) + "_" + std::to_string(j);
    out.push_back(head);
    auto args = tool_arguments(rq.prompt, static_cast<int>(j));
    for (std::size_t i = 0; i < args.size(); i += 4) {
      tool_piece p;
      p.index = static_cast<int>(j);
      p.fragment = args.substr(i, 4);
      out.push_back(std::move(p));
    }
  }
  return out;
}

void add_tool_piece(gen_result& rs, tool_piece const& p) {
  if (p.header) {
    // Non-streaming key order of llama-server's message.tool_calls[]: type, function, id.
    rs.tool_calls.push_back(json::object{
        {"type", "function"}, {"function", json::object{{"name", p.name}, {"arguments", ""}}}, {"id", p.id}});
    return;
  }
  auto& fn = rs.tool_calls.at(static_cast<std::size_t>(p.index)).as_object()["function"].as_object();
  std::string args(fn["arguments"].as_string());
  fn["arguments"] = args + p.fragment;
}

std::string stream_tool_piece(gen_request const& rq, gen_result const& rs, tool_piece const& p,
                              knobs const& k) {
  json::object d{{"index", p.index}};
  if (p.header) {
    d["id"] = p.id;
    d["type"] = "function";
    d["function"] = json::object{{"name", p.name}, {"arguments", ""}};
  } else {
    d["function"] = json::object{{"arguments", p.fragment}};
  }
  json::object choice;
  choice["finish_reason"] = nullptr;
  choice["index"] = 0;
  choice["delta"] = json::object{{"tool_calls", json::array{std::move(d)}}};
  json::object o;
  o["choices"] = json::array{std::move(choice)};
  for (auto& [key, v] : chunk_head(rq, rs, k, "chat.completion.chunk"))
    o[key] = v;
  return sse(dump(o));
}

token planned_token(gen_request const& rq, int i) {
  std::size_t const at = static_cast<std::size_t>(i) * 4;
  if (at >= rq.planned_text.size()) return token{2, "", true};
  auto piece = rq.planned_text.substr(at, 4);
  return token{static_cast<std::int32_t>(3 + hash(piece) % 449), piece, false};
}

json::object logprob_entry(token const& t, int top) {
  auto bytes_of = [](std::string_view s) {
    json::array b;
    for (unsigned char c : s)
      b.push_back(c);
    return b;
  };
  double const lp = -0.25 - static_cast<double>(hash(t.piece) % 100) / 100.0;
  json::object e{{"id", t.id}, {"token", t.piece}, {"bytes", bytes_of(t.piece)}, {"logprob", lp}};
  json::array alts;
  for (int i = 0; i < top; ++i) {
    std::string alt = i == 0 ? t.piece : " alt" + std::to_string(i);
    alts.push_back(json::object{{"id", i == 0 ? t.id : 500 + i},
                                {"token", alt},
                                {"bytes", bytes_of(alt)},
                                {"logprob", i == 0 ? lp : lp - i}});
  }
  e["top_logprobs"] = std::move(alts);
  return e;
}

}  // namespace fake_llama
