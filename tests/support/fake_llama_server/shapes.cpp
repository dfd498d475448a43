#include "shapes.hpp"
#include "tools.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/stream_parser.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <optional>
#include <random>

namespace fake_llama {

namespace {

// ---- templates: the recorded bodies (data from the fixtures), parsed once and patched per answer.

constexpr std::string_view sampler_params_text = R"({"seed":4294967295,"temperature":0.800000011920929,
"dynatemp_range":0.0,"dynatemp_exponent":1.0,"top_k":40,"top_p":0.949999988079071,"min_p":0.05000000074505806,
"top_n_sigma":-1.0,"xtc_probability":0.0,"xtc_threshold":0.10000000149011612,"typical_p":1.0,
"repeat_last_n":64,"repeat_penalty":1.0,"presence_penalty":0.0,"frequency_penalty":0.0,"dry_multiplier":0.0,
"dry_base":1.75,"dry_allowed_length":2,"dry_penalty_last_n":64,"mirostat":0,"mirostat_tau":5.0,
"mirostat_eta":0.10000000149011612,"adaptive_target":-1.0,"adaptive_decay":0.8999999761581421,
"max_tokens":-1,"n_predict":-1,"n_keep":0,"n_discard":0,"ignore_eos":false,"stream":false,"n_probs":0,
"min_keep":0,"chat_format":"Content-only","reasoning_format":"none","reasoning_in_content":false,
"generation_prompt":"","samplers":["penalties","dry","top_n_sigma","top_k","typ_p","top_p","min_p","xtc",
"temperature"],"speculative.types":"none","timings_per_token":false,"post_sampling_probs":false,
"backend_sampling":false,"lora":[]})";

constexpr std::string_view generation_settings_text = R"({"seed":4294967295,"temperature":0.800000011920929,
"dynatemp_range":0.0,"dynatemp_exponent":1.0,"top_k":40,"top_p":0.949999988079071,"min_p":0.05000000074505806,
"top_n_sigma":-1.0,"xtc_probability":0.0,"xtc_threshold":0.10000000149011612,"typical_p":1.0,
"repeat_last_n":64,"repeat_penalty":1.0,"presence_penalty":0.0,"frequency_penalty":0.0,"dry_multiplier":0.0,
"dry_base":1.75,"dry_allowed_length":2,"dry_penalty_last_n":64,"dry_sequence_breakers":["\n",":","\"","*"],
"mirostat":0,"mirostat_tau":5.0,"mirostat_eta":0.10000000149011612,"adaptive_target":-1.0,
"adaptive_decay":0.8999999761581421,"stop":[],"max_tokens":-1,"n_predict":-1,"n_keep":0,"n_discard":0,
"ignore_eos":false,"stream":false,"logit_bias":[],"n_probs":0,"min_keep":0,"grammar":"","grammar_lazy":false,
"grammar_triggers":[],"preserved_tokens":[],"chat_format":"Content-only","reasoning_format":"deepseek",
"reasoning_in_content":false,"generation_prompt":"","samplers":["penalties","dry","top_n_sigma","top_k",
"typ_p","top_p","min_p","xtc","temperature"],"speculative.types":"none","timings_per_token":false,
"post_sampling_probs":false,"backend_sampling":false,"lora":[]})";

constexpr std::string_view props_text = R"({"default_generation_settings":{"params":null,"n_ctx":1024},
"total_slots":2,"model_alias":"tiny-llama","model_ftype":"F16","model_path":"models/tiny-llama-512x8.gguf",
"modalities":{"vision":false,"video":false,"audio":false},
"media_marker":"<__media_2ip4GJRJyD4xbQKzn4Rm7f3DG7g10wL3__>","endpoint_slots":true,"endpoint_props":false,
"endpoint_metrics":true,"ui":true,"ui_settings":{},
"chat_template":"{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
"chat_template_caps":{"supports_object_arguments":false,"supports_parallel_tool_calls":false,
"supports_preserve_reasoning":false,"supports_reasoning_effort":false,"supports_string_content":true,
"supports_system_role":true,"supports_tool_calls":false,"supports_tools":false,"supports_typed_content":false},
"bos_token":"<s>","eos_token":"</s>","build_info":"b1-80fb11a","is_sleeping":false,"cors_proxy_enabled":false})";

constexpr std::string_view models_text = R"({"models":[{"name":"tiny-llama","model":"tiny-llama",
"modified_at":"","size":"","digest":"","type":"model","description":"","tags":[""],
"capabilities":["completion"],"parameters":"","details":{"parent_model":"","format":"gguf","family":"",
"families":[""],"parameter_size":"","quantization_level":""}}],"object":"list","data":[{"id":"tiny-llama",
"aliases":["tiny-llama"],"tags":[],"object":"model","created":0,"owned_by":"llamacpp","meta":{
"vocab_type":true,"n_vocab":452,"n_ctx":1024,"n_ctx_train":4096,"n_embd":512,"n_params":27734528,
"size":55486464,"ftype":"F16"}}]})";

json::object const& parsed(std::string_view text) {
  // One parse per template (they are distinct constants; std::deque keeps references stable).
  static std::deque<std::pair<char const*, json::object>> cache;
  for (auto const& [p, o] : cache)
    if (p == text.data()) return o;
  cache.emplace_back(text.data(), json::parse(text).as_object());
  return cache.back().second;
}

// Generated "words": one token each.
constexpr std::array<std::string_view, 14> words = {" The", " queue", " moves", " on", " a", " cheap", " box",
                                                    ",",    " one",   " token", " at", " a", " time",  "."};

std::uint64_t fnv1a(std::string_view s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

double now_unix() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

void escape_into(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

void dump_into(std::string& out, json::value const& v) {
  switch (v.kind()) {
    case json::kind::null:
      out += "null";
      break;
    case json::kind::bool_:
      out += v.get_bool() ? "true" : "false";
      break;
    case json::kind::int64:
      out += std::to_string(v.get_int64());
      break;
    case json::kind::uint64:
      out += std::to_string(v.get_uint64());
      break;
    case json::kind::double_: {
      double d = v.get_double();
      if (!std::isfinite(d)) {
        out += "null";
        break;
      }
      char buf[64];
      auto r = std::to_chars(buf, buf + sizeof buf, d);
      std::string_view s(buf, static_cast<std::size_t>(r.ptr - buf));
      out += s;
      if (s.find_first_of(".eE") == std::string_view::npos) out += ".0";
      break;
    }
    case json::kind::string:
      escape_into(out, v.get_string());
      break;
    case json::kind::array: {
      out += '[';
      bool first = true;
      for (auto const& e : v.get_array()) {
        if (!first) out += ',';
        first = false;
        dump_into(out, e);
      }
      out += ']';
      break;
    }
    case json::kind::object: {
      out += '{';
      bool first = true;
      for (auto const& [key, e] : v.get_object()) {
        if (!first) out += ',';
        first = false;
        escape_into(out, key);
        out += ':';
        dump_into(out, e);
      }
      out += '}';
      break;
    }
  }
}

json::object timings(gen_result const& rs) {
  int prompt_n = rs.n_prompt - rs.n_cached;
  json::object t;
  t["cache_n"] = rs.n_cached;
  t["prompt_n"] = prompt_n;
  t["prompt_ms"] = rs.prompt_ms;
  t["prompt_per_token_ms"] = prompt_n > 0 ? rs.prompt_ms / prompt_n : 0.0;
  t["prompt_per_second"] = rs.prompt_ms > 0 ? 1e3 * prompt_n / rs.prompt_ms : 0.0;
  t["predicted_n"] = rs.n_predicted;
  t["predicted_ms"] = rs.predicted_ms;
  t["predicted_per_token_ms"] = rs.n_predicted > 0 ? rs.predicted_ms / rs.n_predicted : 0.0;
  t["predicted_per_second"] = rs.predicted_ms > 0 ? 1e3 * rs.n_predicted / rs.predicted_ms : 0.0;
  return t;
}

json::object usage(gen_result const& rs) {
  json::object u;
  u["completion_tokens"] = rs.n_predicted;
  u["prompt_tokens"] = rs.n_prompt;
  u["total_tokens"] = rs.n_prompt + rs.n_predicted;
  u["prompt_tokens_details"] = json::object{{"cached_tokens", rs.n_cached}};
  return u;
}

std::string model_name(gen_request const& rq, knobs const& k) {
  return rq.model.empty() ? k.alias : rq.model;
}

json::object openai_head(gen_request const& rq, gen_result const& rs, knobs const& k, char const* object) {
  // Key order of the recorded chunks: created, id, model, system_fingerprint, object.
  json::object o;
  o["created"] = rs.created;
  o["id"] = rs.id;
  o["model"] = model_name(rq, k);
  o["system_fingerprint"] = k.build_info;
  o["object"] = object;
  return o;
}

json::object generation_settings(gen_request const& rq) {
  json::object g = parsed(generation_settings_text);
  g["seed"] = rq.seed;
  g["temperature"] = rq.temperature;
  json::array stop;
  for (auto const& s : rq.stop)
    stop.emplace_back(s);
  g["stop"] = std::move(stop);
  g["max_tokens"] = rq.n_predict;
  g["n_predict"] = rq.n_predict;
  g["ignore_eos"] = rq.ignore_eos;
  g["stream"] = rq.stream;
  return g;
}

json::object completion_final(gen_request const& rq, gen_result const& rs, knobs const& k, bool streamed) {
  json::object o;
  o["index"] = 0;
  o["content"] = streamed ? std::string() : rs.content;
  o["tokens"] = json::array();
  o["id_slot"] = rs.id_slot;
  o["stop"] = true;
  o["model"] = k.alias;
  o["tokens_predicted"] = rs.n_predicted;
  o["tokens_evaluated"] = rs.n_prompt;
  o["generation_settings"] = generation_settings(rq);
  o["prompt"] = "<s> " + rq.prompt;
  o["has_new_line"] = rs.content.find('\n') != std::string::npos;
  o["truncated"] = false;
  o["stop_type"] = rs.stop_type;
  o["stopping_word"] = rs.stopping_word;
  o["tokens_cached"] = rs.n_prompt + rs.n_predicted - 1;
  o["timings"] = timings(rs);
  return o;
}

std::string parse_error_message(std::string_view body) {
  json::stream_parser p;
  boost::system::error_code ec;
  std::size_t used = p.write_some(body.data(), body.size(), ec);
  if (!ec) p.finish(ec);
  if (body.empty())
    return "[json.exception.parse_error.101] parse error at line 1, column 1: attempting to parse an empty "
           "input; check that your input string or stream contains the expected JSON";
  std::size_t line = 1, col = 1;
  for (std::size_t i = 0; i < used && i < body.size(); ++i) {
    if (body[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  std::size_t from = used > 16 ? used - 16 : 0;
  std::string last(body.substr(from, std::min<std::size_t>(used + 1, body.size()) - from));
  return "[json.exception.parse_error.101] parse error at line " + std::to_string(line) + ", column " +
         std::to_string(col) + ": syntax error while parsing value - " + ec.message() + "; last read: '" +
         last + "'";
}

int int_field(json::object const& o, std::string_view key, int fallback) {
  auto it = o.find(key);
  if (it == o.end()) return fallback;
  if (it->value().is_int64()) return static_cast<int>(it->value().get_int64());
  if (it->value().is_uint64())
    return static_cast<int>(std::min<std::uint64_t>(it->value().get_uint64(), 1u << 30));
  if (it->value().is_double()) return static_cast<int>(it->value().get_double());
  return fallback;
}

bool bool_field(json::object const& o, std::string_view key, bool fallback) {
  auto it = o.find(key);
  if (it == o.end() || !it->value().is_bool()) return fallback;
  return it->value().get_bool();
}

std::string message_text(json::value const& content) {
  if (content.is_string()) return std::string(content.get_string());
  std::string out;
  if (content.is_array()) {
    for (auto const& part : content.get_array()) {
      if (!part.is_object()) continue;
      auto const* t = part.get_object().if_contains("text");
      if (t && t->is_string()) out += t->get_string();
    }
  }
  return out;
}

}  // namespace

json::object chunk_head(gen_request const& rq, gen_result const& rs, knobs const& k, char const* object) {
  return openai_head(rq, rs, k, object);
}

std::string dump(json::value const& v) {
  std::string out;
  dump_into(out, v);
  return out;
}

std::vector<std::int32_t> tokenize(std::string_view text, bool add_bos) {
  std::vector<std::int32_t> out;
  if (add_bos) out.push_back(bos_id);
  for (std::size_t i = 0; i < text.size(); i += 4)
    out.push_back(static_cast<std::int32_t>(3 + fnv1a(text.substr(i, 4)) % 449));
  return out;
}

int count_tokens(std::string_view text, bool add_bos) {
  return static_cast<int>((text.size() + 3) / 4) + (add_bos ? 1 : 0);
}

int common_prefix_tokens(std::string_view cached, std::string_view next) {
  if (cached.empty()) return 0;
  std::size_t n = 0;
  std::size_t limit = std::min(cached.size(), next.size());
  while (n < limit && cached[n] == next[n])
    ++n;
  // A chunk is shared when its 4 bytes are equal, or when it is the (short) last chunk of both texts.
  std::size_t chunks = n / 4;
  if (n == cached.size() && n == next.size() && n % 4 != 0) ++chunks;
  return 1 + static_cast<int>(chunks);
}

std::string apply_template(json::array const& messages) {
  std::string out;
  for (auto const& m : messages) {
    if (!m.is_object()) continue;
    auto const& o = m.get_object();
    std::string role;
    if (auto const* r = o.if_contains("role"); r && r->is_string()) role = r->get_string();
    std::string content;
    if (auto const* c = o.if_contains("content")) content = message_text(*c);
    out += "<s>" + role + ": " + content + "\n";
  }
  out += "assistant:";
  if (out.starts_with("<s>")) out.erase(0, 3);
  return out;
}

std::variant<gen_request, reply> parse_request(api kind, std::string_view body, knobs const& k) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec) return reply{500, error_generic(500, parse_error_message(body), "server_error")};
  if (!v.is_object())
    return reply{500, error_generic(500,
                                    "[json.exception.type_error.302] type must be object, but is " +
                                        std::string(json::to_string(v.kind())),
                                    "server_error")};
  gen_request rq;
  rq.kind = kind;
  rq.body = std::move(v.get_object());
  auto const& o = rq.body;

  if (kind == api::chat) {
    auto const* msgs = o.if_contains("messages");
    if (!msgs) return reply{400, error_generic(400, "'messages' is required", "invalid_request_error")};
    if (!msgs->is_array())
      return reply{400, error_generic(400, "Expected 'messages' to be an array", "invalid_request_error")};
    rq.prompt = apply_template(msgs->get_array());
  } else {
    auto const* p = o.if_contains("prompt");
    if (!p) return reply{400, error_generic(400, "\"prompt\" must be provided", "invalid_request_error")};
    if (p->is_string()) {
      rq.prompt = std::string(p->get_string());
    } else if (p->is_array() && p->get_array().size() == 1 && p->get_array()[0].is_string()) {
      rq.prompt = std::string(p->get_array()[0].get_string());
    } else if (p->is_array()) {
      // Token ids: each stands for one 4-byte chunk of the evaluated text.
      for (auto const& t : p->get_array()) {
        if (!t.is_number())
          return reply{
              400, error_generic(400, "\"prompt\" must be a string, a list of tokens or a list of strings",
                                 "invalid_request_error")};
        std::int32_t id = t.to_number<std::int32_t>();
        char chunk[4];
        std::memcpy(chunk, &id, 4);
        rq.prompt.append(chunk, 4);
      }
    } else {
      return reply{400,
                   error_generic(400, "\"prompt\" must be a string, a list of tokens or a list of strings",
                                 "invalid_request_error")};
    }
  }
  rq.n_prompt = count_tokens(rq.prompt, true);

  if (kind == api::completion) {
    rq.n_predict = int_field(o, "n_predict", int_field(o, "max_tokens", -1));
  } else {
    rq.n_predict =
        int_field(o, "max_completion_tokens", int_field(o, "max_tokens", int_field(o, "n_predict", -1)));
  }
  if (rq.n_predict < -1) rq.n_predict = -1;
  rq.id_slot = int_field(o, "id_slot", -1);
  rq.cache_prompt = bool_field(o, "cache_prompt", k.cache_prompt);
  rq.stream = bool_field(o, "stream", false);
  rq.ignore_eos = bool_field(o, "ignore_eos", false);
  if (auto const* so = o.if_contains("stream_options"); so && so->is_object())
    rq.include_usage = bool_field(so->get_object(), "include_usage", false);
  if (auto const* m = o.if_contains("model"); m && m->is_string()) rq.model = m->get_string();
  if (auto const* s = o.if_contains("stop")) {
    if (s->is_string()) rq.stop.emplace_back(s->get_string());
    if (s->is_array())
      for (auto const& e : s->get_array())
        if (e.is_string() && !e.get_string().empty()) rq.stop.emplace_back(e.get_string());
  }
  if (auto const* t = o.if_contains("temperature"); t && t->is_number())
    rq.temperature = static_cast<double>(static_cast<float>(t->to_number<double>()));
  if (auto const* s = o.if_contains("seed"); s && (s->is_int64() || s->is_uint64()))
    rq.seed = s->is_int64() ? static_cast<std::uint64_t>(static_cast<std::uint32_t>(s->get_int64()))
                            : s->get_uint64();

  int n_ctx = k.n_ctx_per_request();
  int needed = rq.n_prompt + (k.ctx_check_prompt_only ? 0 : std::max(rq.n_predict, 0));
  if (rq.n_prompt >= n_ctx || needed > n_ctx) {
    json::object e;
    e["code"] = 400;
    e["message"] = "request (" + std::to_string(rq.n_prompt) +
                   " tokens) exceeds the available context size (" + std::to_string(n_ctx) +
                   " tokens), try increasing it";
    e["type"] = "exceed_context_size_error";
    e["n_prompt_tokens"] = rq.n_prompt;
    e["n_ctx"] = n_ctx;
    return reply{400, dump(json::object{{"error", std::move(e)}})};
  }
  plan_extras(rq);
  int room = n_ctx - rq.n_prompt;
  rq.n_gen_max =
      rq.n_predict >= 0 ? std::min(rq.n_predict, k.ctx_check_prompt_only ? room : rq.n_predict) : room;
  return rq;
}

token generated_token(std::string_view prompt, int i, bool ignore_eos, knobs const& k) {
  if (!ignore_eos && k.eos_after > 0 && i + 1 == k.eos_after) return token{2, "", true};
  std::size_t w = (fnv1a(prompt) + static_cast<std::size_t>(i)) % words.size();
  return token{static_cast<std::int32_t>(100 + w), std::string(words[w]), false};
}

std::string new_completion_id() {
  static std::mt19937_64 rng{std::random_device{}()};
  static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string id = "chatcmpl-";
  for (int i = 0; i < 32; ++i)
    id += alphabet[rng() % (sizeof alphabet - 1)];
  return id;
}

std::string render_result(gen_request const& rq, gen_result const& rs, knobs const& k) {
  if (rq.kind == api::completion) return dump(completion_final(rq, rs, k, false));
  json::object choice;
  if (rq.kind == api::chat) {
    choice["finish_reason"] = rs.finish_reason;
    choice["index"] = 0;
    json::object message{{"role", "assistant"}, {"content", rs.content}};
    if (!rs.tool_calls.empty()) {
      if (rs.content.empty()) message["content"] = nullptr;  // llama-server: null content beside tool calls
      message["tool_calls"] = rs.tool_calls;
    }
    choice["message"] = std::move(message);
    if (rq.logprobs) choice["logprobs"] = json::object{{"content", rs.logprobs}};
  } else {
    choice["text"] = rs.content;
    choice["index"] = 0;
    choice["logprobs"] = nullptr;
    choice["finish_reason"] = rs.finish_reason;
  }
  // Key order of the recorded answers: choices, created, model, system_fingerprint, object, usage, id,
  // timings.
  json::object o;
  o["choices"] = json::array{std::move(choice)};
  o["created"] = rs.created;
  o["model"] = model_name(rq, k);
  o["system_fingerprint"] = k.build_info;
  o["object"] = rq.kind == api::chat ? "chat.completion" : "text_completion";
  o["usage"] = usage(rs);
  o["id"] = rs.id;
  o["timings"] = timings(rs);
  return dump(o);
}

std::string sse(std::string const& json_text) {
  return "data: " + json_text + "\n\n";
}

std::vector<std::string> stream_start(gen_request const& rq, gen_result const& rs, knobs const& k) {
  if (rq.kind != api::chat) return {};
  json::object choice;
  choice["finish_reason"] = nullptr;
  choice["index"] = 0;
  choice["delta"] = json::object{{"role", "assistant"}, {"content", nullptr}};
  json::object o;
  o["choices"] = json::array{std::move(choice)};
  for (auto& [key, v] : openai_head(rq, rs, k, "chat.completion.chunk"))
    o[key] = v;
  return {sse(dump(o))};
}

std::string stream_token(gen_request const& rq, gen_result const& rs, token const& t, knobs const& k) {
  if (rq.kind == api::completion) {
    json::object o;
    o["index"] = 0;
    o["content"] = t.piece;
    o["tokens"] = json::array{t.id};
    o["stop"] = false;
    o["id_slot"] = -1;
    o["tokens_predicted"] = rs.n_predicted;
    o["tokens_evaluated"] = rs.n_prompt;
    return sse(dump(o));
  }
  json::object choice;
  if (rq.kind == api::chat) {
    choice["finish_reason"] = nullptr;
    choice["index"] = 0;
    choice["delta"] = json::object{{"content", t.piece}};
    if (rq.logprobs)
      choice["logprobs"] = json::object{{"content", json::array{logprob_entry(t, rq.top_logprobs)}}};
  } else {
    choice["text"] = t.piece;
    choice["index"] = 0;
    choice["logprobs"] = nullptr;
    choice["finish_reason"] = nullptr;
  }
  json::object o;
  o["choices"] = json::array{std::move(choice)};
  for (auto& [key, v] :
       openai_head(rq, rs, k, rq.kind == api::chat ? "chat.completion.chunk" : "text_completion"))
    o[key] = v;
  return sse(dump(o));
}

std::vector<std::string> stream_end(gen_request const& rq, gen_result const& rs, knobs const& k) {
  if (rq.kind == api::completion) return {sse(dump(completion_final(rq, rs, k, true)))};
  char const* object = rq.kind == api::chat ? "chat.completion.chunk" : "text_completion";
  std::vector<std::string> out;
  json::object choice;
  if (rq.kind == api::chat) {
    choice["finish_reason"] = rs.finish_reason;
    choice["index"] = 0;
    choice["delta"] = json::object{};
  } else {
    choice["text"] = "";
    choice["index"] = 0;
    choice["logprobs"] = nullptr;
    choice["finish_reason"] = rs.finish_reason;
  }
  json::object fin;
  fin["choices"] = json::array{std::move(choice)};
  for (auto& [key, v] : openai_head(rq, rs, k, object))
    fin[key] = v;
  out.push_back(sse(dump(fin)));
  if (rq.include_usage) {
    json::object u;
    u["choices"] = json::array();
    for (auto& [key, v] : openai_head(rq, rs, k, object))
      u[key] = v;
    u["usage"] = usage(rs);
    u["timings"] = timings(rs);
    out.push_back(sse(dump(u)));
  }
  out.push_back("data: [DONE]\n\n");
  return out;
}

std::string stream_error_json(std::string_view message) {
  return dump(json::object{
      {"error", json::object{{"code", 500}, {"message", json::string(message)}, {"type", "server_error"}}}});
}

std::string error_loading() {
  return R"({"error":{"message":"Loading model","type":"unavailable_error","code":503}})";
}
std::string error_unauthorized() {
  return R"({"error":{"message":"Invalid API Key","type":"authentication_error","code":401}})";
}
std::string error_not_found() {
  return R"({"error":{"message":"File Not Found","type":"not_found_error","code":404}})";
}

std::string error_generic(int code, std::string_view message, std::string_view type) {
  json::object e;
  e["code"] = code;
  e["message"] = message;
  e["type"] = type;
  return dump(json::object{{"error", std::move(e)}});
}

std::string error_for_status(int status) {
  switch (status) {
    case 401:
      return error_unauthorized();
    case 404:
      return error_not_found();
    case 503:
      return error_loading();
    case 400:
      return error_generic(400, "fake_llama_server: injected failure", "invalid_request_error");
    case 501:
      return error_generic(501, "fake_llama_server: injected failure", "not_supported_error");
    default:
      return error_generic(status, "fake_llama_server: injected failure", "server_error");
  }
}

std::string break_json(std::string const& text) {
  return text.substr(0, text.size() / 2) + "\x01{\"oops";
}

// ---- embeddings and rerank

namespace {

// Whether every element of an array is an integer token id (an empty array counts, like llama-server).
bool all_token_ids(json::array const& a) {
  for (auto const& e : a)
    if (!e.is_int64() && !e.is_uint64()) return false;
  return true;
}

// One prompt of strings and/or token ids: the text the double evaluates (a token id stands for its 4-byte
// chunk, as in parse_request) and its token count; nullopt when an element is neither.
struct one_prompt {
  std::string text;
  int tokens{0};
};
std::optional<one_prompt> prompt_of(json::value const& p) {
  one_prompt out;
  auto add_id = [&](json::value const& t) {
    std::int32_t id = t.to_number<std::int32_t>();
    char chunk[4];
    std::memcpy(chunk, &id, 4);
    out.text.append(chunk, 4);
    ++out.tokens;
  };
  if (p.is_string()) {
    out.text = std::string(p.get_string());
    out.tokens = count_tokens(out.text, true);
    return out;
  }
  if (!p.is_array()) return std::nullopt;
  bool any_string = false;
  for (auto const& e : p.get_array()) {
    if (e.is_string()) {
      any_string = true;
      out.text += std::string(e.get_string());
      out.tokens += count_tokens(e.get_string(), false);
    } else if (e.is_int64() || e.is_uint64()) {
      add_id(e);
    } else {
      return std::nullopt;
    }
  }
  if (any_string) out.tokens += 1;  // mixed prompts are tokenized with BOS; plain token lists are sent as is
  return out;
}

std::string base64_encode(std::string_view bytes) {
  static constexpr char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    std::uint32_t n =
        (std::uint8_t(bytes[i]) << 16) | (std::uint8_t(bytes[i + 1]) << 8) | std::uint8_t(bytes[i + 2]);
    out += table[(n >> 18) & 63];
    out += table[(n >> 12) & 63];
    out += table[(n >> 6) & 63];
    out += table[n & 63];
  }
  if (i < bytes.size()) {
    std::uint32_t n = std::uint8_t(bytes[i]) << 16;
    if (i + 1 < bytes.size()) n |= std::uint8_t(bytes[i + 1]) << 8;
    out += table[(n >> 18) & 63];
    out += table[(n >> 12) & 63];
    out += i + 1 < bytes.size() ? table[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

json::array float_array(std::vector<float> const& v) {
  json::array a;
  a.reserve(v.size());
  for (float x : v)
    a.emplace_back(static_cast<double>(x));
  return a;
}

std::string echoed_model(json::object const& body, knobs const& k) {
  if (auto const* m = body.if_contains("model"); m && m->is_string()) return std::string(m->get_string());
  return k.alias;
}

}  // namespace

std::vector<float> embedding_vector(std::string_view text, int dims, int normalize) {
  std::uint64_t state = fnv1a(text);
  std::vector<float> v(static_cast<std::size_t>(std::max(dims, 0)));
  for (auto& x : v) {
    state += 0x9e3779b97f4a7c15ull;  // splitmix64
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    x = static_cast<float>(2.0 * (static_cast<double>(z >> 11) * 0x1.0p-53) - 1.0);
  }
  double sum = 0;
  if (normalize < 0) return v;
  if (normalize == 0) {
    for (float x : v)
      sum = std::max(sum, static_cast<double>(std::fabs(x)));
    sum /= 32760.0;  // int16 range
  } else if (normalize == 1) {
    for (float x : v)
      sum += std::fabs(x);
  } else if (normalize == 2) {
    for (float x : v)
      sum += static_cast<double>(x) * x;
    sum = std::sqrt(sum);
  } else {
    for (float x : v)
      sum += std::pow(std::fabs(x), normalize);
    sum = std::pow(sum, 1.0 / normalize);
  }
  double const scale = sum > 0 ? 1.0 / sum : 0.0;
  for (auto& x : v)
    x = static_cast<float>(x * scale);
  return v;
}

std::variant<embd_request, reply> parse_embeddings(bool oai_route, std::string_view body, knobs const& k) {
  embd_request rq;
  rq.oai = oai_route;
  // llama-server checks the pooling before it reads the body.
  if (rq.oai && k.pooling_type() == "none")
    return reply{
        400,
        error_generic(400, "Pooling type 'none' is not OAI compatible. Please use a different pooling type",
                      "invalid_request_error")};
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec) return reply{500, error_generic(500, parse_error_message(body), "server_error")};
  // A body that is not an object has no `input` (nlohmann's count() is 0): llama-server's 400 below.
  if (v.is_object()) rq.body = std::move(v.get_object());
  auto const& o = rq.body;
  json::value const* prompt = o.if_contains("input");
  if (!prompt) {
    prompt = o.if_contains("content");
    rq.oai = false;  // "content" is not OpenAI's: llama-server answers its own shape
  }
  if (!prompt)
    return reply{400,
                 error_generic(400, "\"input\" or \"content\" must be provided", "invalid_request_error")};
  if (auto const* f = o.if_contains("encoding_format")) {
    if (f->is_string() && f->get_string() == "base64") {
      rq.base64 = true;
    } else if (!f->is_string() || f->get_string() != "float") {
      return reply{400,
                   error_generic(400, "The format to return the embeddings in. Can be either float or base64",
                                 "invalid_request_error")};
    }
  }
  std::vector<one_prompt> prompts;
  // llama-server's tokenize_input_prompts: a string, a token list or a mixed list is one prompt; any other
  // array is a list of prompts.
  auto is_id = [](json::value const& e) { return e.is_int64() || e.is_uint64(); };
  bool single = prompt->is_string();
  if (auto const* a = prompt->if_array()) {
    bool const ids_or_strings =
        std::all_of(a->begin(), a->end(), [&](json::value const& e) { return e.is_string() || is_id(e); });
    single = all_token_ids(*a) || (ids_or_strings && std::any_of(a->begin(), a->end(), is_id));
  }
  if (single) {
    prompts.push_back(*prompt_of(*prompt));
  } else if (prompt->is_array()) {
    for (auto const& p : prompt->get_array()) {
      auto one = prompt_of(p);
      if (!one)
        return reply{500,
                     error_generic(500,
                                   "element of \"prompt\" must be a string, an list of tokens, or a list of "
                                   "mixed strings & tokens",
                                   "server_error")};
      prompts.push_back(std::move(*one));
    }
  } else {
    return reply{500,
                 error_generic(500,
                               "\"prompt\" must be a string, an list of tokens, a list of mixed strings & "
                               "tokens, or a list of prompts",
                               "server_error")};
  }
  for (auto const& p : prompts) {
    if (p.tokens == 0)
      return reply{400, error_generic(400, "Input content cannot be empty", "invalid_request_error")};
    rq.inputs.push_back(p.text);
    rq.n_tokens += p.tokens;
  }
  rq.normalize = int_field(o, "embd_normalize", 2);
  rq.model = echoed_model(o, k);
  return rq;
}

std::string render_embeddings(embd_request const& rq, knobs const& k) {
  json::array data;
  for (std::size_t i = 0; i < rq.inputs.size(); ++i) {
    auto vec = embedding_vector(rq.inputs[i], k.embd_dim, rq.normalize);
    if (!rq.oai) {
      json::array rows;
      if (k.pooling_type() == "none") {
        // One unnormalised row per token: BOS, then each 4-byte chunk.
        rows.push_back(float_array(embedding_vector("<s>", k.embd_dim, -1)));
        for (std::size_t at = 0; at < rq.inputs[i].size(); at += 4)
          rows.push_back(float_array(embedding_vector(rq.inputs[i].substr(at, 4), k.embd_dim, -1)));
      } else {
        rows.push_back(float_array(vec));
      }
      data.push_back(json::object{{"index", static_cast<std::int64_t>(i)}, {"embedding", std::move(rows)}});
      continue;
    }
    json::object item;
    if (rq.base64) {
      item["embedding"] = base64_encode(
          std::string_view(reinterpret_cast<char const*>(vec.data()), vec.size() * sizeof(float)));
    } else {
      item["embedding"] = float_array(vec);
    }
    item["index"] = static_cast<std::int64_t>(i);
    item["object"] = "embedding";
    if (rq.base64) item["encoding_format"] = "base64";
    data.push_back(std::move(item));
  }
  if (!rq.oai) return dump(data);
  json::object o;
  o["model"] = rq.model;
  o["object"] = "list";
  o["usage"] = json::object{{"prompt_tokens", rq.n_tokens}, {"total_tokens", rq.n_tokens}};
  o["data"] = std::move(data);
  return dump(o);
}

std::variant<rerank_request, reply> parse_rerank(std::string_view body, knobs const& k) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec) return reply{500, error_generic(500, parse_error_message(body), "server_error")};
  rerank_request rq;
  if (v.is_object()) rq.body = std::move(v.get_object());  // else no `query`: the 400 below
  auto const& o = rq.body;
  rq.tei = o.contains("texts");
  auto const* q = o.if_contains("query");
  if (!q) return reply{400, error_generic(400, "\"query\" must be provided", "invalid_request_error")};
  if (!q->is_string())
    return reply{400, error_generic(400, "\"query\" must be a string", "invalid_request_error")};
  rq.query = std::string(q->get_string());
  auto const* docs = o.if_contains("documents");
  if (!docs) docs = o.if_contains("texts");
  if (docs && docs->is_array()) {
    for (auto const& d : docs->get_array()) {
      if (!d.is_string()) {
        rq.documents.clear();  // llama-server's json_value() falls back to its default: no documents
        break;
      }
      rq.documents.emplace_back(d.get_string());
    }
  }
  if (rq.documents.empty())
    return reply{
        400, error_generic(400, "\"documents\" must be a non-empty string array", "invalid_request_error")};
  int const n = static_cast<int>(rq.documents.size());
  rq.top_n = std::clamp(int_field(o, "top_n", n), 0, n);
  for (auto const& d : rq.documents)
    rq.n_tokens += count_tokens(rq.query, true) + 1 + count_tokens(d, false);
  rq.model = echoed_model(o, k);
  return rq;
}

std::string render_rerank(rerank_request const& rq, knobs const& k) {
  auto const query = embedding_vector(rq.query, k.embd_dim, 2);
  struct scored {
    std::size_t index;
    double score;
  };
  std::vector<scored> all;
  for (std::size_t i = 0; i < rq.documents.size(); ++i) {
    auto const doc = embedding_vector(rq.documents[i], k.embd_dim, 2);
    double dot = 0;
    for (std::size_t d = 0; d < doc.size(); ++d)
      dot += static_cast<double>(query[d]) * doc[d];
    all.push_back({i, dot});
  }
  std::stable_sort(all.begin(), all.end(),
                   [](scored const& a, scored const& b) { return a.score > b.score; });
  all.resize(static_cast<std::size_t>(rq.top_n));
  bool const return_text = rq.tei && bool_field(rq.body, "return_text", false);
  json::array results;
  for (auto const& s : all) {
    json::object e;
    e["index"] = static_cast<std::int64_t>(s.index);
    e[rq.tei ? "score" : "relevance_score"] = s.score;
    if (return_text) e["text"] = rq.documents[s.index];
    results.push_back(std::move(e));
  }
  if (rq.tei) return dump(results);
  json::object o;
  o["model"] = rq.model;
  o["object"] = "list";
  o["usage"] = json::object{{"prompt_tokens", rq.n_tokens}, {"total_tokens", rq.n_tokens}};
  o["results"] = std::move(results);
  return dump(o);
}

reply tokenize_reply(std::string_view body) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec) return reply{500, error_generic(500, parse_error_message(body), "server_error")};
  if (!v.is_object())
    return reply{500,
                 error_generic(500, "[json.exception.type_error.302] type must be object", "server_error")};
  auto const& o = v.get_object();
  std::string content;
  if (auto const* c = o.if_contains("content"); c && c->is_string()) content = c->get_string();
  bool add_special = bool_field(o, "add_special", false);
  bool with_pieces = bool_field(o, "with_pieces", false);
  json::array toks;
  auto ids = tokenize(content, add_special);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (!with_pieces) {
      toks.emplace_back(ids[i]);
      continue;
    }
    std::string piece;
    if (add_special && i == 0)
      piece = "<s>";
    else
      piece = content.substr((add_special ? i - 1 : i) * 4, 4);
    toks.emplace_back(json::object{{"id", ids[i]}, {"piece", piece}});
  }
  return reply{200, dump(json::object{{"tokens", std::move(toks)}})};
}

reply apply_template_reply(std::string_view body) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec) return reply{500, error_generic(500, parse_error_message(body), "server_error")};
  auto const* msgs = v.is_object() ? v.get_object().if_contains("messages") : nullptr;
  if (!msgs) return reply{400, error_generic(400, "'messages' is required", "invalid_request_error")};
  if (!msgs->is_array())
    return reply{400, error_generic(400, "Expected 'messages' to be an array", "invalid_request_error")};
  return reply{200, dump(json::object{{"prompt", apply_template(msgs->get_array())}})};
}

std::string render_props(knobs const& k) {
  json::object o = parsed(props_text);
  auto& dgs = o["default_generation_settings"].as_object();
  dgs["params"] = parsed(sampler_params_text);
  dgs["n_ctx"] = k.n_ctx_per_request();
  o["total_slots"] = k.parallel;
  o["model_alias"] = k.alias;
  o["model_path"] = k.model_path;
  o["endpoint_slots"] = k.slots_endpoint;
  o["endpoint_metrics"] = k.metrics;
  o["build_info"] = k.build_info;
  return dump(o);
}

std::string render_models(knobs const& k) {
  json::object o = parsed(models_text);
  auto& m = o["models"].as_array()[0].as_object();
  m["name"] = k.alias;
  m["model"] = k.alias;
  auto& d = o["data"].as_array()[0].as_object();
  d["id"] = k.alias;
  d["aliases"] = json::array{json::string(k.alias)};
  d["created"] = static_cast<std::int64_t>(now_unix());
  d["meta"].as_object()["n_ctx"] = k.n_ctx_per_request();
  return dump(o);
}

json::object slot_params(gen_request const& rq) {
  json::object p = parsed(sampler_params_text);
  p["seed"] = rq.seed;
  p["temperature"] = rq.temperature;
  p["max_tokens"] = rq.n_predict;
  p["n_predict"] = rq.n_predict;
  p["ignore_eos"] = rq.ignore_eos;
  p["stream"] = rq.stream;
  p["reasoning_format"] = "deepseek";
  if (rq.kind == api::chat) {
    p["chat_format"] = "peg-native";
    p["generation_prompt"] = "assistant:";
  }
  return p;
}

std::string render_slots(std::vector<slot_view> const& slots) {
  json::array a;
  for (auto const& s : slots) {
    json::object o;
    o["id"] = s.id;
    o["n_ctx"] = s.n_ctx;
    o["speculative"] = false;
    o["is_processing"] = s.is_processing;
    if (s.used) {
      o["id_task"] = s.id_task;
      o["n_prompt_tokens"] = s.n_prompt;
      o["n_prompt_tokens_processed"] = s.n_prompt_processed;
      o["n_prompt_tokens_cache"] = s.n_cache;
      o["params"] = s.params;
      json::object nt;
      nt["has_next_token"] = s.is_processing;
      nt["has_new_line"] = false;
      nt["n_remain"] = s.is_processing ? s.n_remain : -1;
      nt["n_decoded"] = s.is_processing ? s.n_decoded : 0;
      o["next_token"] = json::array{std::move(nt)};
    }
    a.push_back(std::move(o));
  }
  return dump(a);
}

std::string render_metrics(metrics_view const& m) {
  struct line {
    char const* name;
    char const* help;
    char const* type;
    double value;
  };
  double pt_s = m.prompt_seconds_total > 0 ? m.prompt_tokens_total / m.prompt_seconds_total : 0;
  double gen_s =
      m.tokens_predicted_seconds_total > 0 ? m.tokens_predicted_total / m.tokens_predicted_seconds_total : 0;
  double busy = m.n_decode_total > 0 ? m.busy_slot_decodes / m.n_decode_total : 0;
  line const lines[] = {
      {"prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens", "counter",
       m.prompt_tokens_total},
      {"prompt_tokens_cached_total", "Number of prompt tokens reused from the cache", "counter",
       m.prompt_tokens_cached_total},
      {"prompt_seconds_total", "Total time spent processing prompts", "counter", m.prompt_seconds_total},
      {"tokens_predicted_total", "Number of generation tokens processed", "counter",
       m.tokens_predicted_total},
      {"tokens_predicted_seconds_total", "Total time spent generating tokens", "counter",
       m.tokens_predicted_seconds_total},
      {"n_decode_total",
       "Total number of llama_decode() calls, excluding speculative decoding and multimodal decoding",
       "counter", m.n_decode_total},
      {"n_tokens_max", "Largest observed sequence length (prompt + generation)", "counter", m.n_tokens_max},
      {"spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated", "counter", 0},
      {"spec_decode_num_accepted_tokens_total",
       "Speculative: Total draft tokens accepted by the target model", "counter", 0},
      {"spec_decode_num_drafts_total", "Speculative: Total speculative decoding verification steps",
       "counter", 0},
      {"prompt_tokens_seconds", "Average prompt throughput in tokens/s", "gauge", pt_s},
      {"predicted_tokens_seconds", "Average generation throughput in tokens/s", "gauge", gen_s},
      {"requests_processing", "Number of requests processing", "gauge", m.requests_processing},
      {"requests_deferred", "Number of requests deferred", "gauge", m.requests_deferred},
      {"n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call", "gauge", busy},
  };
  std::string out;
  char buf[512];
  for (auto const& l : lines) {
    std::snprintf(buf, sizeof buf, "# HELP llamacpp:%s %s\n# TYPE llamacpp:%s %s\nllamacpp:%s %g\n", l.name,
                  l.help, l.name, l.type, l.name, l.value);
    out += buf;
  }
  return out;
}

}  // namespace fake_llama
