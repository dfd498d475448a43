// libFuzzer target for the OpenAI-compatible body decoders (api::openai::decode_chat, decode_completion). The
// first byte picks the decoder (even: /v1/chat/completions, odd: /v1/completions; the seeds use '0' and '1'),
// the rest is the body. Any body must give a request or a field error, never a crash; a decoded request must
// keep the bounds openai.hpp promises, and what the router forwards upstream must be finite JSON. There is no
// embeddings decoder (the route answers 501). Seeds: tests/fuzz/corpus/openai/.
#include "ray/api/api.hpp"
#include "ray/api/openai.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

namespace {

namespace oai = ray::api::openai;
namespace json = boost::json;

constexpr std::size_t max_input = 64 * 1024;

void check(bool ok) {
  if (!ok) std::abort();
}

ray::config::config const& lenient() {
  static ray::config::config const cfg = ray::config::profile_defaults("tiny").value();
  return cfg;
}

ray::config::config const& strict() {
  static ray::config::config const cfg = [] {
    auto c = ray::config::profile_defaults("tiny").value();
    c.openai.strict_model_names = true;
    c.model.aliases = {"gpt-4o-mini", "tiny"};
    return c;
  }();
  return cfg;
}

// No NaN or infinity anywhere (it would be forwarded as text that is not JSON).
bool finite_everywhere(json::value const& v) {
  switch (v.kind()) {
    case json::kind::double_:
      return std::isfinite(v.get_double());
    case json::kind::array:
      for (auto const& e : v.get_array())
        if (!finite_everywhere(e)) return false;
      return true;
    case json::kind::object:
      for (auto const& kv : v.get_object())
        if (!finite_everywhere(kv.value())) return false;
      return true;
    default:
      return true;
  }
}

bool in(std::optional<double> v, double lo, double hi) {
  return !v || (std::isfinite(*v) && *v >= lo && *v <= hi);
}

void check_error(ray::error const& e) {
  check(e.code == ray::errc::invalid_json || e.code == ray::errc::invalid_request);
  check(!e.message.empty());
  if (e.code == ray::errc::invalid_request && !e.param.empty())
    check(e.message.rfind(e.param + ": ", 0) == 0);
  (void)ray::api::error_response(e, ray::api::envelope::openai);
}

void check_sampling(oai::sampling_fields const& f) {
  if (f.max_tokens) check(*f.max_tokens >= 1);
  check(in(f.temperature, 0, HUGE_VAL));
  check(in(f.top_p, 0, 1));
  check(in(f.frequency_penalty, -2, 2));
  check(in(f.presence_penalty, -2, 2));
  check(in(f.min_p, 0, 1));
  check(in(f.repeat_penalty, 0, HUGE_VAL));
  if (f.seed) check(*f.seed >= 0);
  if (f.top_k) check(*f.top_k >= 0);
  check(f.stop.size() <= oai::max_stop_entries);
  for (auto const& s : f.stop) {
    auto n = ray::count_code_points(s);
    check(n >= 1 && n <= oai::max_stop_chars);
  }
  if (!f.logit_bias.is_null()) {
    check(f.logit_bias.is_object());
    for (auto const& kv : f.logit_bias.get_object()) {
      auto n = kv.value().is_number() ? kv.value().to_number<double>() : NAN;
      check(std::isfinite(n) && n >= -100 && n <= 100);
    }
  }
  // Model names: lenient resolution always succeeds, strict resolution names `model` when it fails.
  check(oai::resolve_model(f.model, lenient()).has_value());
  if (auto r = oai::resolve_model(f.model, strict()); !r) {
    check(r.error().code == ray::errc::model_not_found && r.error().param == "model");
    (void)ray::api::error_response(r.error(), ray::api::envelope::openai);
  }
  (void)oai::object_id("chatcmpl-", f.model);
}

void fuzz_chat(std::string_view body) {
  auto r = oai::decode_chat(body);
  if (!r) return check_error(r.error());
  auto const& req = *r;
  check_sampling(req);
  check(!req.messages.empty() && req.messages.size() <= oai::max_messages);
  for (auto const& m : req.messages) {
    check(m.role == "system" || m.role == "user" || m.role == "assistant" || m.role == "tool");
    check(m.tool_calls.is_null() || finite_everywhere(m.tool_calls));
  }
  if (req.response_format_type) {
    auto const& t = *req.response_format_type;
    check(t == "text" || t == "json_object" || t == "json_schema");
  }
  check(finite_everywhere(req.response_format));
  check(finite_everywhere(req.tools) && finite_everywhere(req.tool_choice) &&
        finite_everywhere(req.parallel_tool_calls));
  if (req.has_tools()) check(req.tools.is_array() && !req.tools.get_array().empty());
  if (req.has_tools()) check(!oai::cacheable(req, true));
  (void)oai::cacheable(req, false);
  // The cache key text is JSON (its serializer's output must parse back). The body may nest 64 deep and the
  // canonical form adds two levels.
  auto canonical = oai::canonical_messages(req.messages);
  json::parse_options opts;
  opts.max_depth = 128;
  boost::system::error_code ec;
  (void)json::parse(canonical, ec, {}, opts);
  check(!ec);
}

void fuzz_completion(std::string_view body) {
  auto r = oai::decode_completion(body);
  if (!r) return check_error(r.error());
  auto const& req = *r;
  check_sampling(req);
  check(!req.prompt.empty());
  check(oai::cacheable(req, true));
  (void)oai::cacheable(req, false);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  if (size < 1 || size > max_input) return 0;
  std::string_view body(reinterpret_cast<char const*>(data) + 1, size - 1);
  if (data[0] % 2 == 0)
    fuzz_chat(body);
  else
    fuzz_completion(body);
  return 0;
}
