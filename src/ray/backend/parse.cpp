// Reading a backend's answers (parse.hpp). Moved out of remote.cpp unchanged, so they can be fuzzed.
#include "ray/backend/parse.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <initializer_list>

namespace ray::backend {

namespace {

namespace json = boost::json;

json::value const* find_path(json::value const& v, std::initializer_list<std::string_view> path) {
  json::value const* cur = &v;
  for (auto key : path) {
    if (!cur->is_object()) return nullptr;
    auto it = cur->get_object().find(key);
    if (it == cur->get_object().end()) return nullptr;
    cur = &it->value();
  }
  return cur;
}

std::optional<double> number_at(json::value const& v, std::initializer_list<std::string_view> path) {
  auto p = find_path(v, path);
  if (!p) return std::nullopt;
  if (p->is_double()) return p->get_double();
  if (p->is_int64()) return static_cast<double>(p->get_int64());
  if (p->is_uint64()) return static_cast<double>(p->get_uint64());
  return std::nullopt;
}

// A non-negative count at `path`, at most `max`; nullopt when absent or out of range (hostile backends).
std::optional<std::uint32_t> count_at(json::value const& v, std::initializer_list<std::string_view> path,
                                      std::uint32_t max = UINT32_MAX) {
  auto d = number_at(v, path);
  if (!d) return std::nullopt;
  return to_count(*d, max);
}

std::string string_at(json::value const& v, std::initializer_list<std::string_view> path) {
  auto p = find_path(v, path);
  return p && p->is_string() ? std::string(p->get_string()) : std::string();
}

}  // namespace

std::string excerpt(std::string_view body, std::size_t n) {
  std::string s(body.substr(0, utf8_safe_prefix(body, n)));
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

std::optional<props_info> parse_props(std::string_view body) {
  boost::system::error_code ec;
  auto v = json::parse(body, ec);
  if (ec) return std::nullopt;
  props_info out;
  out.n_ctx = count_at(v, {"default_generation_settings", "n_ctx"}, 1u << 22);
  out.total_slots = count_at(v, {"total_slots"}, 1u << 9);
  out.build = string_at(v, {"build_info"});
  out.model_path = string_at(v, {"model_path"});
  return out;
}

std::optional<std::vector<bool>> parse_slots(std::string_view body, std::vector<bool> const& busy) {
  boost::system::error_code ec;
  auto v = json::parse(body, ec);
  if (ec || !v.is_array()) return std::nullopt;
  std::vector<bool> ext(busy.size(), false);
  for (auto const& slot : v.get_array()) {
    auto id = count_at(slot, {"id"});
    auto proc = find_path(slot, {"is_processing"});
    if (!id || !proc || !proc->is_bool()) continue;
    std::size_t const i = *id;
    if (i < ext.size() && proc->get_bool() && !busy[i]) ext[i] = true;
  }
  return ext;
}

std::optional<slots_load> parse_slots_load(std::string_view body, bool unified_kv) {
  boost::system::error_code ec;
  auto v = json::parse(body, ec);
  if (ec || !v.is_array()) return std::nullopt;
  constexpr std::uint32_t max_slots = 1u << 9, max_ctx = 1u << 22;
  slots_load out;
  for (auto const& slot : v.get_array()) {
    if (out.slots >= max_slots) break;
    auto n_ctx = count_at(slot, {"n_ctx"}, max_ctx);
    if (!n_ctx) continue;
    ++out.slots;
    out.capacity = unified_kv ? std::max<std::uint64_t>(out.capacity, *n_ctx) : out.capacity + *n_ctx;
    auto proc = find_path(slot, {"is_processing"});
    if (!proc || !proc->is_bool() || !proc->get_bool()) continue;
    ++out.processing;
    std::uint64_t held = count_at(slot, {"n_prompt_tokens"}, max_ctx).value_or(0);
    if (auto next = find_path(slot, {"next_token"}); next && next->is_array() && !next->get_array().empty())
      held += count_at(next->get_array()[0], {"n_decoded"}, max_ctx).value_or(0);
    out.tokens_held += std::min<std::uint64_t>(held, *n_ctx);
  }
  if (out.capacity > 0)
    out.kv_usage = std::min(1.0, static_cast<double>(out.tokens_held) / static_cast<double>(out.capacity));
  return out;
}

std::optional<double> parse_prometheus_sample(std::string_view body, std::string_view name) {
  while (!body.empty()) {
    auto nl = body.find('\n');
    std::string_view line = body.substr(0, nl);
    body.remove_prefix(nl == std::string_view::npos ? body.size() : nl + 1);
    if (!line.starts_with(name) || line.size() <= name.size() || line[name.size()] != ' ') continue;
    line.remove_prefix(name.size() + 1);
    line = line.substr(0, line.find(' '));  // a timestamp may follow
    double d{};
    auto [p, err] = std::from_chars(line.data(), line.data() + line.size(), d);
    if (err != std::errc() || p != line.data() + line.size() || !std::isfinite(d)) return std::nullopt;
    return d;
  }
  return std::nullopt;
}

std::optional<context_exceeded> parse_context_exceeded(std::string_view body) {
  boost::system::error_code ec;
  auto v = json::parse(body, ec);
  if (ec || string_at(v, {"error", "type"}) != "exceed_context_size_error") return std::nullopt;
  return context_exceeded{count_at(v, {"error", "n_prompt_tokens"}), count_at(v, {"error", "n_ctx"})};
}

std::optional<std::string> parse_applied_template(std::string_view body) {
  boost::system::error_code ec;
  auto v = json::parse(body, ec);
  if (ec) return std::nullopt;
  auto text = string_at(v, {"prompt"});
  if (text.empty()) return std::nullopt;
  return text;
}

std::optional<std::uint32_t> parse_token_count(std::string_view body) {
  boost::system::error_code ec;
  auto v = json::parse(body, ec);
  if (ec) return std::nullopt;
  auto tokens = find_path(v, {"tokens"});
  if (!tokens || !tokens->is_array()) return std::nullopt;
  return static_cast<std::uint32_t>(tokens->get_array().size());
}

result<stream_chunk> parse_stream_chunk(std::string_view data) {
  boost::system::error_code ec;
  auto v = json::parse(data, ec);
  if (ec || !v.is_object())
    return ray::error{errc::provider_invalid_response, "the backend sent an event that is not JSON"};
  if (auto e = find_path(v, {"error"})) {
    return ray::error{errc::provider_upstream_error,
                      "the backend failed mid-stream: " + excerpt(json::serialize(*e))};
  }
  stream_chunk out;
  if (auto choices = find_path(v, {"choices"});
      choices && choices->is_array() && !choices->get_array().empty()) {
    auto const& c0 = choices->get_array()[0];
    auto content = find_path(c0, {"delta", "content"});
    if (!content) content = find_path(c0, {"text"});  // /v1/completions chunks
    if (content && content->is_string()) out.content = std::string(content->get_string());
    if (auto tc = find_path(c0, {"delta", "tool_calls"}); tc && tc->is_array()) out.tool_calls = *tc;
    if (auto lp = find_path(c0, {"logprobs"}); lp && lp->is_object()) out.logprobs = *lp;
    if (auto fr = find_path(c0, {"finish_reason"}); fr && fr->is_string())
      out.finish_reason = std::string(fr->get_string());
  }
  if (auto u = find_path(v, {"usage"}); u && u->is_object()) {
    out.has_usage = true;
    out.prompt_tokens = count_at(*u, {"prompt_tokens"});
    out.completion_tokens = count_at(*u, {"completion_tokens"});
    out.cached_tokens = count_at(*u, {"prompt_tokens_details", "cached_tokens"});
  }
  if (auto t = find_path(v, {"timings"}); t && t->is_object()) {
    out.has_timings = true;
    out.prompt_per_second = number_at(*t, {"prompt_per_second"});
    out.predicted_per_second = number_at(*t, {"predicted_per_second"});
    out.prompt_n = count_at(*t, {"prompt_n"});
    out.cache_n = count_at(*t, {"cache_n"});
  }
  return out;
}

void merge_tool_call_deltas(json::array& calls, json::array const& delta) {
  // Assemble by index: id/type/name arrive once, `arguments` in pieces.
  for (auto const& piece : delta) {
    auto index = number_at(piece, {"index"});
    auto bounded = index ? to_count(*index, 64) : std::optional<std::uint32_t>(0);
    if (!bounded) continue;  // negative, NaN or beyond 64 parallel calls: not a call we keep
    std::size_t const i = *bounded;
    while (calls.size() <= i)
      calls.push_back(json::object{
          {"id", ""}, {"type", "function"}, {"function", json::object{{"name", ""}, {"arguments", ""}}}});
    auto& call = calls[i].as_object();
    if (auto id = find_path(piece, {"id"}); id && id->is_string()) call["id"] = id->get_string();
    if (auto ty = find_path(piece, {"type"}); ty && ty->is_string()) call["type"] = ty->get_string();
    auto& fn = call["function"].as_object();
    if (auto n = find_path(piece, {"function", "name"}); n && n->is_string()) fn["name"] = n->get_string();
    if (auto a = find_path(piece, {"function", "arguments"}); a && a->is_string()) {
      std::string args(fn["arguments"].as_string());
      args.append(a->get_string());
      fn["arguments"] = args;
    }
  }
}

}  // namespace ray::backend
