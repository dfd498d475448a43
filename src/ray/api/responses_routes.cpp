// POST /v1/responses: the stateless Responses API, translated to one chat completion that runs through the
// same runtime path as /v1/chat/completions (admission, queue, cancellation, Retry-After, cache and dedupe
// rules) and streamed by the same writer (router::stream_openai). Translating rather than forwarding to
// llama-server's own /v1/responses keeps one backend path and one set of rules (docs/openai.md).
#include "ray/api/app.hpp"
#include "ray/api/openai.hpp"
#include "ray/api/openai_stream.hpp"

#include <boost/json/serialize.hpp>

#include <chrono>

namespace ray::api {

namespace {

namespace json = boost::json;

// What the response object echoes of the request.
struct response_echo {
  std::string id, message_id, model;
  std::int64_t created_at{0};
  json::value instructions, max_output_tokens, temperature, top_p, text_format, metadata;
};

response_echo make_echo(openai::responses_request const& d, std::string_view request_id, std::string model) {
  response_echo e;
  e.id = openai::object_id("resp_", request_id);
  e.message_id = openai::object_id("msg_", request_id);
  e.model = std::move(model);
  e.created_at =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  if (d.instructions) e.instructions = *d.instructions;
  if (d.chat.max_tokens) e.max_output_tokens = *d.chat.max_tokens;
  if (d.chat.temperature) e.temperature = *d.chat.temperature;
  if (d.chat.top_p) e.top_p = *d.chat.top_p;
  e.text_format = d.text_format.is_null() ? json::value(json::object{{"type", "text"}}) : d.text_format;
  e.metadata = d.metadata.is_null() ? json::value(json::object{}) : d.metadata;
  return e;
}

json::object output_text_part(std::string_view text) {
  return {{"type", "output_text"}, {"text", text}, {"annotations", json::array{}}};
}

json::object message_item(response_echo const& e, std::string_view status, json::array content) {
  return {{"type", "message"},
          {"id", e.message_id},
          {"status", status},
          {"role", "assistant"},
          {"content", std::move(content)}};
}

// The response object; `r` null while in progress (no output, no usage yet).
json::object response_object(response_echo const& e, runtime::infer_result const* r) {
  json::object o{{"id", e.id},
                 {"object", "response"},
                 {"created_at", e.created_at},
                 {"status", "in_progress"},
                 {"error", nullptr},
                 {"incomplete_details", nullptr},
                 {"instructions", e.instructions},
                 {"max_output_tokens", e.max_output_tokens},
                 {"model", e.model},
                 {"output", json::array{}},
                 {"parallel_tool_calls", false},
                 {"previous_response_id", nullptr},
                 {"store", false},  // stateless: nothing is kept, whatever `store` said
                 {"temperature", e.temperature},
                 {"text", json::object{{"format", e.text_format}}},
                 {"tool_choice", "auto"},
                 {"tools", json::array{}},
                 {"top_p", e.top_p},
                 {"truncation", "disabled"},
                 {"usage", nullptr},
                 {"metadata", e.metadata}};
  if (!r) return o;
  bool const cut = r->finish_reason == "length";
  o["status"] = cut ? "incomplete" : "completed";
  if (cut) o["incomplete_details"] = json::object{{"reason", "max_output_tokens"}};
  o["output"] = json::array{
      message_item(e, cut ? "incomplete" : "completed", json::array{output_text_part(r->output)})};
  std::uint32_t const in = r->prompt_tokens.value_or(0);
  std::uint32_t const out = r->completion_tokens.value_or(0);
  o["usage"] = json::object{
      {"input_tokens", in},
      {"input_tokens_details", json::object{{"cached_tokens", r->provider.cached_tokens.value_or(0)}}},
      {"output_tokens", out},
      {"output_tokens_details", json::object{{"reasoning_tokens", 0}}},
      {"total_tokens", in + out}};
  return o;
}

// The Responses event sequence: created, in_progress, output_item.added, content_part.added, then
// output_text.delta per token, and output_text.done, content_part.done, output_item.done, completed (or
// incomplete). Every event carries `type` and a `sequence_number` counting from 0, as the SDKs expect.
class responses_stream_format final : public sse_format {
 public:
  explicit responses_stream_format(response_echo e) : e_(std::move(e)) {}

  std::string opening() override {
    std::string out;
    out += emit("response.created", {{"response", response_object(e_, nullptr)}});
    out += emit("response.in_progress", {{"response", response_object(e_, nullptr)}});
    out += emit("response.output_item.added",
                {{"output_index", 0}, {"item", message_item(e_, "in_progress", json::array{})}});
    out += emit("response.content_part.added", {{"item_id", e_.message_id},
                                                {"output_index", 0},
                                                {"content_index", 0},
                                                {"part", output_text_part("")}});
    return out;
  }
  std::string text(std::string_view delta, json::value const& logprobs) override {
    (void)logprobs;
    if (delta.empty()) return {};
    text_.append(delta);
    return emit("response.output_text.delta", {{"item_id", e_.message_id},
                                               {"output_index", 0},
                                               {"content_index", 0},
                                               {"delta", delta},
                                               {"logprobs", json::array{}}});
  }
  std::string tool_calls(json::value const& delta) override {
    (void)delta;  // /v1/responses refuses tools at decoding: nothing to map
    return {};
  }
  std::string finish(runtime::infer_result const& r, bool streamed_any) override {
    std::string out;
    if (!streamed_any) out += text(r.output, nullptr);  // a cache hit arrives whole
    bool const cut = r.finish_reason == "length";
    out += emit("response.output_text.done", {{"item_id", e_.message_id},
                                              {"output_index", 0},
                                              {"content_index", 0},
                                              {"text", text_},
                                              {"logprobs", json::array{}}});
    out += emit("response.content_part.done", {{"item_id", e_.message_id},
                                               {"output_index", 0},
                                               {"content_index", 0},
                                               {"part", output_text_part(text_)}});
    out += emit(
        "response.output_item.done",
        {{"output_index", 0},
         {"item", message_item(e_, cut ? "incomplete" : "completed", json::array{output_text_part(text_)})}});
    runtime::infer_result whole = r;
    whole.output = text_;
    out +=
        emit(cut ? "response.incomplete" : "response.completed", {{"response", response_object(e_, &whole)}});
    return out;
  }
  std::string failure(ray::error const& err) override {
    // The `error` event of the Responses stream; the SDKs raise it as an APIError. The stream then ends.
    json::object o{{"code", code_name(err.code)},
                   {"message", err.message},
                   {"param", err.param.empty() ? json::value(nullptr) : json::value(err.param)}};
    return emit("error", std::move(o));
  }

 private:
  std::string emit(std::string_view type, json::object fields) {
    json::object o{{"type", type}, {"sequence_number", seq_++}};
    for (auto& kv : fields)
      o[kv.key()] = std::move(kv.value());
    return sse_event(type, telemetry::to_json(o));
  }

  response_echo e_;
  std::string text_;
  std::uint64_t seq_{0};
};

}  // namespace

boost::asio::awaitable<void> router::handle_responses(http::exchange& ex) {
  auto const route = match_route(ex.path());
  auto const& cfg = app_.cfg();
  http::response res;
  std::string_view error_code;
  std::optional<result<runtime::infer_result>> held;
  runtime::infer_result const* result_for_log = nullptr;

  std::optional<ray::error> bad;
  runtime::chat_request call;
  if (cfg.cache.scope == config::cache_scope::key) call.caller = caller_of(ex.req());
  bool stream = false;
  std::optional<response_echo> echo;
  std::string requested_model;
  auto d = openai::decode_responses(ex.req().body());
  if (!d) {
    bad = d.error();
  } else {
    log_unknown_fields(d->chat.unknown_fields, route.label);
    stream = d->chat.stream;
    auto model = openai::resolve_model(d->chat.model, cfg);
    if (!model) {
      bad = model.error();
    } else {
      requested_model = d->chat.model;
      echo = make_echo(*d, ex.request_id(), app_.models.served_id(requested_model, config::model_kind::chat));
      to_runtime_call(d->chat, call, iequals(trim(ex.req()["x-ray-cache"]), "on"));
      if (!call.extra.empty()) call.extra_key = telemetry::to_json(call.extra);
    }
  }

  if (!bad && stream) {
    responses_stream_format format(std::move(*echo));
    unsigned status = co_await stream_openai(ex, requested_model, std::move(call), format, error_code);
    record(route, status, ex.received_at(), ex.request_id(), error_code);
    co_return;
  }
  auto refuse = [&](ray::error const& err) {
    error_code = code_name(err.code);
    res = api::error_response(err, envelope::openai);
    app_.rt.count_rejection(err.code);
    if (app_.rejections) app_.rejections->record(error_code, {{"route", route.label}});
  };
  if (bad) {
    refuse(*bad);
  } else {
    held = co_await unless_client_leaves(ex, chat_on_model(app_, requested_model, std::move(call)));
    if (!held) {
      ex.close_after_response();
      record(route, 499, ex.received_at(), ex.request_id(), "client_closed_request");
      co_return;
    }
    auto& r = *held;
    if (!r) {
      refuse(r.error());
    } else {
      res = json_response(http::status::ok, telemetry::to_json(response_object(*echo, &*r)));
      res.set("x-ray-max-tokens", std::to_string(r->degradation.applied_max_tokens));
      if (r->truncated_by_deadline) res.set("x-ray-truncated", "deadline");
      if (r->degradation.applied) res.set("x-ray-degraded", "true");
      if (r->cached) res.set("x-ray-cache", "hit");
      result_for_log = &*r;
    }
  }
  add_cors(ex.req().base(), res);
  unsigned status = static_cast<unsigned>(res.result());
  co_await ex.respond(std::move(res));
  record(route, status, ex.received_at(), ex.request_id(), error_code, result_for_log);
}

}  // namespace ray::api
