// The OpenAI handlers: /v1/chat/completions and /v1/completions, non-streaming and as server-sent events.
#include "ray/api/app.hpp"
#include "ray/api/openai.hpp"
#include "ray/api/openai_stream.hpp"
#include "ray/http/stop.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>

namespace ray::api {

namespace {
using namespace boost::asio::experimental::awaitable_operators;
}  // namespace

std::string sse_data(std::string_view payload) {
  std::string out;
  out.reserve(payload.size() + 8);
  out.append("data: ").append(payload).append("\n\n");
  return out;
}

std::string sse_event(std::string_view event, std::string_view payload) {
  std::string out;
  out.reserve(payload.size() + event.size() + 16);
  out.append("event: ").append(event).append("\ndata: ").append(payload).append("\n\n");
  return out;
}

boost::json::object chat_usage(runtime::infer_result const& r) {
  std::uint32_t const pt = r.prompt_tokens.value_or(0);
  std::uint32_t const ct = r.completion_tokens.value_or(0);
  boost::json::object u{{"prompt_tokens", pt}, {"completion_tokens", ct}, {"total_tokens", pt + ct}};
  // What the backend reported, passed on: clients use it for cost and prompt-cache accounting.
  if (r.provider.cached_tokens)
    u["prompt_tokens_details"] = boost::json::object{{"cached_tokens", *r.provider.cached_tokens}};
  return u;
}

void to_runtime_call(openai::chat_request& d, runtime::chat_request& call, bool x_ray_cache) {
  call.max_tokens = d.max_tokens;
  call.temperature = d.temperature;
  call.top_p = d.top_p;
  call.seed = d.seed;
  call.stop = d.stop;
  if (d.frequency_penalty) call.extra["frequency_penalty"] = *d.frequency_penalty;
  if (d.presence_penalty) call.extra["presence_penalty"] = *d.presence_penalty;
  if (d.top_k) call.extra["top_k"] = *d.top_k;
  if (d.min_p) call.extra["min_p"] = *d.min_p;
  if (d.repeat_penalty) call.extra["repeat_penalty"] = *d.repeat_penalty;
  if (!d.logit_bias.is_null()) call.extra["logit_bias"] = d.logit_bias;
  call.cacheable = openai::cacheable(d, x_ray_cache);
  call.canonical = openai::canonical_messages(d.messages);
  if (d.response_format_type && *d.response_format_type != "text") {
    // Never clamped or stripped under pressure: refused instead (runtime.cpp, json_mode).
    call.json_mode = true;
    call.extra["response_format"] = d.response_format;
  }
  if (d.has_tools()) {
    // Forwarded as sent; a tool request is never cached, joined or clamped (a cut tool call is invalid).
    call.json_mode = true;
    call.extra["tools"] = d.tools;
    if (!d.tool_choice.is_null()) call.extra["tool_choice"] = d.tool_choice;
    if (!d.parallel_tool_calls.is_null()) call.extra["parallel_tool_calls"] = d.parallel_tool_calls;
  }
  if (d.logprobs) {
    call.extra["logprobs"] = true;
    if (d.top_logprobs) call.extra["top_logprobs"] = *d.top_logprobs;
  }
  for (auto& m : d.messages)
    call.messages.push_back({m.role, std::move(m.content), m.name, m.tool_call_id, std::move(m.tool_calls)});
}

void router::log_unknown_fields(std::vector<std::string> const& fields, std::string_view route) const {
  if (fields.empty() || !app_.log.enabled(telemetry::level::debug)) return;
  boost::json::array names;
  for (auto const& f : fields)
    names.emplace_back(f);
  app_.log.debug("request fields ignored as unknown", {{"route", route}, {"fields", std::move(names)}});
}

namespace {

// chat.completion.chunk / text_completion events, then `data: [DONE]`.
class chat_stream_format final : public sse_format {
 public:
  chat_stream_format(std::string id, std::string model, bool completion, bool include_usage)
      : id_(std::move(id)),
        model_(std::move(model)),
        completion_(completion),
        include_usage_(include_usage),
        created_(std::chrono::duration_cast<std::chrono::seconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count()) {}

  std::string opening() override {
    if (completion_) return {};
    return event(boost::json::object{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr);
  }
  std::string text(std::string_view delta, boost::json::value const& logprobs) override {
    if (completion_) {
      boost::json::object choice{
          {"index", 0}, {"text", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
      return wrap(std::move(choice));
    }
    return event(boost::json::object{{"content", delta}}, logprobs, nullptr);
  }
  std::string tool_calls(boost::json::value const& delta) override {
    // The backend's array as it came: index, id, type, function.name and argument fragments untouched.
    return event(boost::json::object{{"tool_calls", delta}}, nullptr, nullptr);
  }
  std::string finish(runtime::infer_result const& r, bool streamed_any) override {
    std::string out;
    if (!streamed_any && !r.output.empty()) out += text(r.output, nullptr);  // a cache hit arrives whole
    boost::json::value reason(r.finish_reason.empty() ? "stop" : r.finish_reason);
    if (completion_) {
      out += wrap(
          boost::json::object{{"index", 0}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", reason}});
    } else {
      out += event(boost::json::object{}, nullptr, reason);
    }
    if (include_usage_) {
      boost::json::object usage = head();
      usage["choices"] = boost::json::array{};
      usage["usage"] = chat_usage(r);
      out += sse_data(telemetry::to_json(usage));
    }
    out += sse_data("[DONE]");
    return out;
  }
  std::string failure(ray::error const& err) override {
    return sse_data(api::error_response(err, envelope::openai).body());  // and no [DONE]
  }

 private:
  boost::json::object head() const {
    return {{"id", id_},
            {"object", completion_ ? "text_completion" : "chat.completion.chunk"},
            {"created", created_},
            {"model", model_}};
  }
  std::string wrap(boost::json::object choice) const {
    auto o = head();
    o["choices"] = boost::json::array{std::move(choice)};
    return sse_data(telemetry::to_json(o));
  }
  std::string event(boost::json::object delta, boost::json::value const& logprobs,
                    boost::json::value const& finish) const {
    boost::json::object choice{{"index", 0}, {"delta", std::move(delta)}};
    if (!logprobs.is_null()) choice["logprobs"] = logprobs;
    choice["finish_reason"] = finish;
    return wrap(std::move(choice));
  }

  std::string id_, model_;
  bool completion_, include_usage_;
  std::int64_t created_;
};

}  // namespace

boost::asio::awaitable<void> router::handle_openai(http::exchange& ex, bool completion) {
  auto const route = match_route(ex.path());
  auto const& cfg = app_.cfg();
  http::response res;
  std::string_view error_code;
  std::optional<result<runtime::infer_result>> held;
  runtime::infer_result const* result_for_log = nullptr;
  auto refuse = [&](ray::error const& err) {
    error_code = code_name(err.code);
    res = api::error_response(err, envelope::openai);
    app_.rt.count_rejection(err.code);
    if (app_.rejections) app_.rejections->record(error_code, {{"route", route.label}});
  };

  runtime::chat_request call;
  if (app_.cfg().cache.scope == config::cache_scope::key) call.caller = caller_of(ex.req());
  std::string requested_model;
  bool stream = false;
  bool include_usage = false;
  std::optional<ray::error> bad;
  bool const x_ray_cache = iequals(trim(ex.req()["x-ray-cache"]), "on");
  if (completion) {
    auto d = openai::decode_completion(ex.req().body());
    if (!d) {
      bad = d.error();
    } else {
      requested_model = d->model;
      stream = d->stream;
      include_usage = d->include_usage;
      log_unknown_fields(d->unknown_fields, route.label);
      call.max_tokens = d->max_tokens;
      call.temperature = d->temperature;
      call.top_p = d->top_p;
      call.seed = d->seed;
      call.stop = d->stop;
      if (d->frequency_penalty) call.extra["frequency_penalty"] = *d->frequency_penalty;
      if (d->presence_penalty) call.extra["presence_penalty"] = *d->presence_penalty;
      if (d->top_k) call.extra["top_k"] = *d->top_k;
      if (d->min_p) call.extra["min_p"] = *d->min_p;
      if (d->repeat_penalty) call.extra["repeat_penalty"] = *d->repeat_penalty;
      if (!d->logit_bias.is_null()) call.extra["logit_bias"] = d->logit_bias;
      call.cacheable = openai::cacheable(*d, x_ray_cache);
      call.canonical = d->prompt;
      call.prompt = std::move(d->prompt);
    }
  } else {
    auto d = openai::decode_chat(ex.req().body());
    if (!d) {
      bad = d.error();
    } else {
      requested_model = d->model;
      stream = d->stream;
      include_usage = d->include_usage;
      log_unknown_fields(d->unknown_fields, route.label);
      to_runtime_call(*d, call, x_ray_cache);
    }
  }
  if (!bad) {
    auto model = openai::resolve_model(requested_model, cfg);
    if (!model) {
      bad = model.error();
    } else if (!requested_model.empty() && !openai::is_configured_model(requested_model, cfg) &&
               std::find(warned_models_.begin(), warned_models_.end(), requested_model) ==
                   warned_models_.end() &&
               warned_models_.size() < 64) {
      warned_models_.push_back(requested_model);
      app_.log.warn("unknown model name accepted",
                    {{"requested", requested_model}, {"served", cfg.model.id}});
    }
  }
  if (!call.extra.empty()) call.extra_key = telemetry::to_json(call.extra);

  if (!bad && stream) {
    chat_stream_format format(openai::object_id(completion ? "cmpl-" : "chatcmpl-", ex.request_id()),
                              app_.models.served_id(requested_model, config::model_kind::chat), completion,
                              include_usage);
    unsigned status = co_await stream_openai(ex, requested_model, std::move(call), format, error_code);
    record(route, status, ex.received_at(), ex.request_id(), error_code);
    co_return;
  }
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
      auto created = std::chrono::duration_cast<std::chrono::seconds>(
          std::chrono::system_clock::now().time_since_epoch());
      boost::json::object choice{{"index", 0}};
      if (completion) {
        choice["text"] = r->output;
        choice["logprobs"] = nullptr;
      } else {
        boost::json::object message{{"role", "assistant"}};
        if (r->output.empty() && !r->tool_calls.empty())
          message["content"] = nullptr;
        else
          message["content"] = r->output;
        if (!r->tool_calls.empty()) message["tool_calls"] = r->tool_calls;
        choice["message"] = std::move(message);
        choice["logprobs"] = r->provider.logprobs;  // null unless asked for
      }
      choice["finish_reason"] = r->finish_reason.empty() ? "stop" : r->finish_reason;
      boost::json::object o{{"id", openai::object_id(completion ? "cmpl-" : "chatcmpl-", ex.request_id())},
                            {"object", completion ? "text_completion" : "chat.completion"},
                            {"created", created.count()},
                            {"model", r->model},
                            {"choices", boost::json::array{std::move(choice)}},
                            {"usage", chat_usage(*r)}};
      res = json_response(http::status::ok, telemetry::to_json(o));
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

namespace {

constexpr auto stream_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);

// A stream's shared state: the generation coroutine (which owns it with the writer, so either may end first)
// queues deltas here, bounded by server.streamBufferBytes, and wakes the writer; the writer asks the
// generation to leave the flight through `stop` (see http/stop.hpp: no cancellation signal of the writer's
// frame is bound to the spawned generation).
struct stream_state final : runtime::stream_listener {
  stream_state(boost::asio::any_io_executor ex, std::size_t limit) : wake(ex), stop(ex), limit(limit) {}
  void on_text(std::string_view delta) override {
    if (overflow) return;
    queued += delta.size();
    if (queued > limit) {
      overflow =
          true;  // a client this far behind is dropped with an error event, not allowed to grow the flight
    } else {
      deltas.push_back({std::string(delta), {}, std::move(pending_logprobs)});
      pending_logprobs = nullptr;
    }
    wake.cancel();
  }
  void on_tool_calls(boost::json::value const& delta) override {
    if (overflow) return;
    deltas.push_back({{}, delta, {}});
    wake.cancel();
  }
  void on_logprobs(boost::json::value const& logprobs) override {
    // Travels with the text of the same chunk (on_text comes next, synchronously); a chunk with logprobs and
    // no text is flushed on its own.
    if (!pending_logprobs.is_null()) deltas.push_back({{}, {}, std::move(pending_logprobs)});
    pending_logprobs = logprobs;
    wake.cancel();
  }
  struct delta {
    std::string text;
    boost::json::value tool_calls;  // non-null: a tool-call delta
    boost::json::value logprobs;    // the chunk's logprobs (with `text`), or null
  };
  boost::asio::steady_timer wake;
  http::stop_source stop;
  std::vector<delta> deltas;
  boost::json::value pending_logprobs;
  std::size_t queued{0};
  std::size_t limit;
  bool overflow{false};
  bool done{false};
  std::optional<result<runtime::infer_result>> outcome;
};

// Runs the generation of a stream; always ends with `done` set and an outcome, whatever happens inside.
boost::asio::awaitable<void> generate_stream(app& a, std::string model, runtime::chat_request call,
                                             std::shared_ptr<stream_state> st) {
  try {
    if (st->stop.stop_requested()) {
      st->outcome = ray::error{errc::provider_request_failed, "the client left"};
    } else {
      auto out = co_await (st->stop.wait() || chat_on_model(a, std::move(model), std::move(call), st.get()));
      if (out.index() == 0)
        st->outcome = ray::error{errc::provider_request_failed, "the client left"};
      else
        st->outcome = std::move(std::get<1>(out));
    }
  } catch (std::exception const& e) {
    st->outcome = ray::error{errc::provider_request_failed, std::string("the stream failed: ") + e.what()};
  }
  st->done = true;
  st->wake.cancel();
}

}  // namespace

boost::asio::awaitable<unsigned> router::stream_openai(http::exchange& ex, std::string model,
                                                       runtime::chat_request call, sse_format& format,
                                                       std::string_view& error_code) {
  namespace asio = boost::asio;
  using namespace boost::asio::experimental::awaitable_operators;
  auto const& cfg = app_.cfg();
  auto ex_exec = co_await asio::this_coro::executor;
  // The generation runs beside this writer and shares `buf` with it (the runtime outlives both: shutdown
  // destroys pending work before it).
  auto const st = std::make_shared<stream_state>(ex_exec, cfg.server.stream_buffer_bytes);
  auto& buf = *st;
  asio::co_spawn(ex_exec, generate_stream(app_, std::move(model), std::move(call), st),
                 [](std::exception_ptr) {});
  // Whatever way this writer ends (an exception included), the generation leaves the flight.
  struct leave_on_exit {
    stream_state& s;
    ~leave_on_exit() { s.stop.request_stop(); }
  } leave{buf};

  bool headers = false;
  bool alive = true;
  auto send_headers = [&]() -> asio::awaitable<bool> {
    headers = true;
    http::response head{http::status::ok, 11};
    head.set(http::field::content_type, "text/event-stream");
    head.set(http::field::cache_control, "no-cache");
    head.set("x-accel-buffering", "no");
    add_cors(ex.req().base(), head);
    bool ok = co_await ex.begin_stream(std::move(head));
    std::string const opening = format.opening();
    if (ok && !opening.empty()) ok = co_await ex.write_chunk(opening);
    co_return ok;
  };

  auto const keepalive = std::chrono::milliseconds(cfg.server.sse_keep_alive_ms);
  bool streamed_any = false;
  while (alive) {
    if ((!buf.deltas.empty() || !buf.pending_logprobs.is_null()) && !buf.overflow) {
      if (!headers) alive = co_await send_headers();
      if (!buf.pending_logprobs.is_null()) {  // logprobs of a chunk without text
        buf.deltas.push_back({{}, {}, std::move(buf.pending_logprobs)});
        buf.pending_logprobs = nullptr;
      }
      std::string out;
      for (auto const& d : buf.deltas) {
        if (!d.tool_calls.is_null())
          out += format.tool_calls(d.tool_calls);
        else
          out += format.text(d.text, d.logprobs);
      }
      buf.deltas.clear();
      buf.queued = 0;
      streamed_any = true;
      if (alive) alive = co_await ex.write_chunk(out);
      continue;
    }
    if (buf.done || buf.overflow) break;
    buf.wake.expires_after(keepalive);
    // client_gone() first (see runtime.cpp on parallel_group and inline completion).
    auto r = co_await (ex.client_gone() || buf.wake.async_wait(stream_tuple));
    if (r.index() == 0) {
      alive = false;
      break;
    }
    auto [ec] = std::get<1>(r);
    if (!ec && !buf.done && buf.deltas.empty()) {  // the keep-alive is due
      if (!headers) alive = co_await send_headers();
      static constexpr std::string_view ping = ": ping\n\n";  // not a literal inside co_await (GCC 12)
      if (alive) alive = co_await ex.write_chunk(ping);
    }
  }

  if (!alive || buf.overflow) {
    // The client left (or fell too far behind): leave the flight; the last waiter out cancels the backend
    // call. The generation ends on its own (it owns its state); nothing here waits for it.
    buf.stop.request_stop();
    if (alive && buf.overflow) {
      std::string const line = format.failure(
          ray::error{errc::overloaded, "the client read the stream too slowly (server.streamBufferBytes)"});
      co_await ex.write_chunk(line);
      co_await ex.end_stream();
    }
    ex.close_after_response();
    error_code = "client_closed_request";
    co_return 499;
  }

  auto& outcome = *buf.outcome;
  if (!outcome) {
    error_code = code_name(outcome.error().code);
    app_.rt.count_rejection(outcome.error().code);
    if (!headers) {
      // Decided before anything was sent (admission, context, pressure): a real HTTP status with its headers.
      auto res = api::error_response(outcome.error(), envelope::openai);
      add_cors(ex.req().base(), res);
      unsigned status = static_cast<unsigned>(res.result());
      co_await ex.respond(std::move(res));
      co_return status;
    }
    std::string const line = format.failure(outcome.error());
    co_await ex.write_chunk(line);
    co_await ex.end_stream();
    co_return 200;
  }
  auto const& r = *outcome;
  if (!headers && !(co_await send_headers())) co_return 200;
  std::string const out = format.finish(r, streamed_any);
  if (co_await ex.write_chunk(out)) co_await ex.end_stream();
  co_return 200;
}

}  // namespace ray::api
