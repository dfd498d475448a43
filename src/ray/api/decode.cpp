#include "ray/api/api.hpp"

#include <boost/json/parse.hpp>
#include "ray/telemetry/telemetry.hpp"

#include <algorithm>
#include <cmath>

namespace ray::api {

namespace {

ray::error field_error(std::string const& path, std::string const& rule) {
  ray::error err{errc::invalid_request, path + ": " + rule};
  err.param = path;
  err.details["field"] = path;
  return err;
}

std::optional<double> as_number(boost::json::value const& v) {
  if (v.is_double()) return v.get_double();
  if (v.is_int64()) return static_cast<double>(v.get_int64());
  if (v.is_uint64()) return static_cast<double>(v.get_uint64());
  return std::nullopt;
}

std::optional<std::int64_t> as_integer(boost::json::value const& v) {
  if (v.is_int64()) return v.get_int64();
  if (v.is_uint64() && v.get_uint64() <= static_cast<std::uint64_t>(INT64_MAX))
    return static_cast<std::int64_t>(v.get_uint64());
  if (v.is_double()) {
    double d = v.get_double();
    if (std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9.007199254740992e15)
      return static_cast<std::int64_t>(d);
  }
  return std::nullopt;
}

}  // namespace

result<runtime::infer_request> decode_infer_request(std::string_view body, config::config const& cfg) {
  boost::json::value doc;
  if (trim(body).empty()) {
    doc = boost::json::object{};
  } else {
    boost::system::error_code ec;
    doc = boost::json::parse(body, ec);
    if (ec) return ray::error{errc::invalid_json, "request body is not valid JSON: " + ec.message()};
  }
  if (!doc.is_object()) return ray::error{errc::invalid_request, "request body must be a JSON object"};
  auto const& o = doc.get_object();
  runtime::infer_request req;

  auto get = [&](std::string_view key) -> boost::json::value const* {
    auto it = o.find(key);
    if (it == o.end() || it->value().is_null()) return nullptr;
    return &it->value();
  };
  auto get_string = [&](std::string_view key) -> result<std::optional<std::string>> {
    auto v = get(key);
    if (!v) return std::optional<std::string>{};
    if (!v->is_string()) return field_error(std::string(key), "must be a string");
    return std::optional<std::string>{std::string(v->get_string())};
  };

  auto template_id = get_string("templateId");
  if (!template_id) return template_id.error();
  auto input = get_string("input");
  if (!input) return input.error();
  auto system = get_string("system");
  if (!system) return system.error();

  if (*template_id) {
    if (template_id->value().empty()) return field_error("templateId", "must not be empty");
    if (*input || *system)
      return field_error("templateId",
                         "cannot be combined with input or system (the template provides them)");
    req.template_id = std::move(**template_id);
    if (auto v = get("templateVariables")) {
      if (!v->is_object()) return field_error("templateVariables", "must be an object of strings");
      for (auto const& kv : v->get_object()) {
        std::string path = "templateVariables." + std::string(kv.key());
        if (!kv.value().is_string()) return field_error(path, "must be a string");
        req.template_variables.emplace(std::string(kv.key()), std::string(kv.value().get_string()));
      }
    }
  } else {
    if (get("templateVariables")) return field_error("templateVariables", "is only allowed with templateId");
    if (!*input || trim(**input).empty()) return field_error("input", "is required and must not be blank");
    req.input = std::move(**input);
    if (*system && !trim(**system).empty()) req.system = std::move(**system);
  }

  if (auto v = get("maxTokens")) {
    auto n = as_number(*v);
    if (!n || !std::isfinite(*n)) return field_error("maxTokens", "must be a number");
    double f = std::floor(*n);
    f = std::clamp(f, 1.0, static_cast<double>(cfg.model.max_output_tokens));
    req.max_tokens = static_cast<std::uint32_t>(f);
  }
  if (auto v = get("temperature")) {
    auto n = as_number(*v);
    if (!n || !std::isfinite(*n)) return field_error("temperature", "must be a number");
    req.temperature = std::clamp(*n, 0.0, 2.0);
  }
  if (auto v = get("topP")) {
    auto n = as_number(*v);
    if (!n || !std::isfinite(*n)) return field_error("topP", "must be a number");
    req.top_p = std::clamp(*n, 0.1, 1.0);
  }
  if (auto v = get("seed")) {
    auto n = as_integer(*v);
    if (!n) return field_error("seed", "must be an integer");
    req.seed = *n;
  }
  if (auto v = get("stop")) {
    if (!v->is_array()) return field_error("stop", "must be an array of strings");
    auto const& a = v->get_array();
    if (a.empty() || a.size() > 16) return field_error("stop", "must have 1 to 16 entries");
    for (std::size_t i = 0; i < a.size(); ++i) {
      std::string path = "stop[" + std::to_string(i) + "]";
      if (!a[i].is_string()) return field_error(path, "must be a string");
      std::string_view s = a[i].get_string();
      auto len = count_code_points(s);
      if (len < 1 || len > 256) return field_error(path, "must be 1 to 256 characters");
      req.stop.emplace_back(s);
    }
  }
  if (auto v = get("responseFormat")) {
    if (!v->is_object())
      return field_error("responseFormat", "must be an object like {\"type\":\"json_object\"}");
    auto const& rf = v->get_object();
    auto t = rf.find("type");
    if (t == rf.end() || !t->value().is_string() ||
        (t->value().get_string() != "text" && t->value().get_string() != "json_object"))
      return field_error("responseFormat.type", "must be \"text\" or \"json_object\"");
    req.response_format = std::string(t->value().get_string());
  }
  if (auto v = get("cache")) {
    if (!v->is_bool()) return field_error("cache", "must be a boolean");
    req.cache = v->get_bool();
  }
  if (auto v = get("dedupeKey")) {
    if (!v->is_string()) return field_error("dedupeKey", "must be a string");
    if (count_code_points(v->get_string()) > 512)
      return field_error("dedupeKey", "must be at most 512 characters");
    req.dedupe_key = std::string(v->get_string());
  }
  if (auto v = get("metadata")) {
    if (!v->is_object()) return field_error("metadata", "must be an object of strings");
    auto const& m = v->get_object();
    if (m.size() > 32) return field_error("metadata", "must have at most 32 entries");
    for (auto const& kv : m) {
      std::string path = "metadata." + std::string(kv.key());
      auto klen = count_code_points(kv.key());
      if (klen < 1 || klen > 128) return field_error("metadata", "keys must be 1 to 128 characters");
      if (!kv.value().is_string()) return field_error(path, "must be a string");
      if (count_code_points(kv.value().get_string()) > 1024)
        return field_error(path, "must be at most 1024 characters");
      req.metadata.emplace(std::string(kv.key()), std::string(kv.value().get_string()));
    }
  }
  return req;
}

std::string render_infer_response(runtime::infer_result const& r, std::string const& request_id,
                                  std::chrono::system_clock::time_point created) {
  namespace json = boost::json;
  json::object o;
  o["id"] = request_id;
  o["model"] = r.model;
  o["output"] = r.output;
  json::object usage;
  usage["chars"] = json::object{{"prompt", r.prompt_chars},
                                {"completion", r.completion_chars},
                                {"total", r.prompt_chars + r.completion_chars}};
  if (r.prompt_tokens && r.completion_tokens) {
    usage["tokens"] = json::object{{"prompt", *r.prompt_tokens},
                                   {"completion", *r.completion_tokens},
                                   {"total", *r.prompt_tokens + *r.completion_tokens}};
  }
  o["usage"] = std::move(usage);
  o["cached"] = r.cached;
  o["deduplicated"] = r.deduplicated;
  o["queueTimeMs"] = std::llround(r.queue_ms);
  o["latencyMs"] = std::llround(r.latency_ms);
  o["degraded"] = r.degradation.applied;
  json::array reasons;
  for (auto const& reason : r.degradation.reasons)
    reasons.emplace_back(reason);
  json::object degradation{{"applied", r.degradation.applied},
                           {"reasons", std::move(reasons)},
                           {"requestedMaxTokens", r.degradation.requested_max_tokens},
                           {"appliedMaxTokens", r.degradation.applied_max_tokens}};
  json::object compiler{
      {"familyKey", r.prompt.family_key},
      {"charsBefore", r.prompt.chars_before},
      {"charsAfter", r.prompt.chars_after},
      {"charsSaved", r.prompt.chars_before - std::min(r.prompt.chars_before, r.prompt.chars_after)}};
  auto const& p = r.provider;
  json::object provider;
  if (p.slot_id)
    provider["slotId"] = *p.slot_id;
  else
    provider["slotId"] = nullptr;
  provider["tokensCached"] = p.tokens_cached;
  provider["tokensEvaluated"] = p.tokens_evaluated;
  // Whole numbers: Boost.JSON prints fractional doubles in exponent form ("3.51E1"), which clients parse but
  // people misread; millisecond and tokens-per-second precision is plenty here.
  provider["timings"] =
      json::object{{"ttftMs", std::llround(p.ttft_ms)},
                   {"totalMs", std::llround(p.total_ms)},
                   {"promptTokensPerSecond", std::llround(p.prompt_tokens_per_second)},
                   {"completionTokensPerSecond", std::llround(p.completion_tokens_per_second)}};
  o["diagnostics"] = json::object{{"degradation", std::move(degradation)},
                                  {"promptCompiler", std::move(compiler)},
                                  {"provider", std::move(provider)}};
  o["createdAt"] = format_timestamp(created);
  return telemetry::to_json(o);
}

}  // namespace ray::api
