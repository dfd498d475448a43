// libFuzzer target for the /v1/infer body decoder (api::decode_infer_request) with the `tiny` profile: any
// bytes must give a request or an error naming the field, never a crash, and a decoded request must keep the
// bounds the decoder promises (http-api.md §2). Seeds: tests/fuzz/corpus/infer/.
#include "ray/api/api.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

namespace {

constexpr std::size_t max_input = 64 * 1024;

ray::config::config const& tiny() {
  static ray::config::config const cfg = ray::config::profile_defaults("tiny").value();
  return cfg;
}

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  if (size > max_input) return 0;
  std::string_view body(reinterpret_cast<char const*>(data), size);
  auto const& cfg = tiny();
  auto r = ray::api::decode_infer_request(body, cfg);
  if (!r) {
    // Errors are client errors with a message; a field error names the field it is about.
    auto const& e = r.error();
    check(e.code == ray::errc::invalid_json || e.code == ray::errc::invalid_request);
    check(!e.message.empty());
    if (!e.param.empty()) check(e.message.rfind(e.param, 0) == 0);
    (void)ray::api::error_response(e);
    return 0;
  }
  auto const& req = *r;
  if (req.template_id) {
    check(!req.template_id->empty());
    check(req.input.empty() && req.system.empty());
  } else {
    check(!ray::trim(req.input).empty());
    check(req.template_variables.empty());
  }
  if (req.max_tokens) check(*req.max_tokens >= 1 && *req.max_tokens <= cfg.model.max_output_tokens);
  check(std::isfinite(req.temperature) && req.temperature >= 0 && req.temperature <= 2);
  check(std::isfinite(req.top_p) && req.top_p >= 0.1 && req.top_p <= 1);
  check(req.stop.size() <= 16);
  for (auto const& s : req.stop) {
    auto n = ray::count_code_points(s);
    check(n >= 1 && n <= 256);
  }
  if (req.response_format) check(*req.response_format == "text" || *req.response_format == "json_object");
  if (req.dedupe_key) check(ray::count_code_points(*req.dedupe_key) <= 512);
  check(req.metadata.size() <= 32);

  // The decoded text goes back out in a response: rendering it must cope with whatever was accepted.
  ray::runtime::infer_result res;
  res.model = cfg.model.id;
  res.output = req.input;
  res.prompt_chars = req.input.size();
  res.completion_chars = req.input.size();
  res.prompt.family_key = req.template_id.value_or("");
  (void)ray::api::render_infer_response(res, "req_0000000000000000", std::chrono::system_clock::time_point{});
  return 0;
}
