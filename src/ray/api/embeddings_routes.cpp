// POST /v1/embeddings (OpenAI), POST /v1/embed (native) and POST /v1/rerank (llama-server's shape): decode
// (embeddings.cpp), choose the model through the registry by name and kind (a model of another kind is 400
// model_kind_mismatch), run it through that model's serving core (runtime::embed / rerank: admission, queue,
// per-input cache, in-flight dedupe, cancellation) unless the client leaves first (499), render.
#include "ray/api/app.hpp"
#include "ray/api/embeddings.hpp"

#include <algorithm>
#include <chrono>

namespace ray::api {

namespace {

// How long a request may wait for its model to be loaded (models.md "Residency": bounded like a queue wait).
ray::clock::time_point model_deadline(config::config const& cfg) {
  auto const wait = cfg.scheduler.queue_timeout_ms.value_or(cfg.scheduler.request_timeout_ms);
  return ray::system_clock().now() + std::chrono::milliseconds(wait);
}

// What a public call may throw, as a value (these calls are operands of `||` in unless_client_leaves, where a
// throw would not end the other side).
ray::error thrown(std::exception_ptr ep) {
  std::string what = "unknown exception";
  try {
    std::rethrow_exception(ep);
  } catch (std::exception const& e) {
    what = e.what();
  } catch (...) {
  }
  return ray::error{errc::provider_request_failed, "the request failed inside the gateway: " + what};
}

// Errors decided here (the registry's choice of model, dimensions) are counted as rejections here; the
// runtime counts its own.
boost::asio::awaitable<result<runtime::embed_result>> embed_on(app& a, std::string model,
                                                               runtime::embed_call call) {
  std::exception_ptr failed;
  try {
    auto const& cfg = a.cfg();
    auto lease = co_await a.models.acquire(model, config::model_kind::embedding,
                                           cfg.openai.strict_model_names, model_deadline(cfg));
    if (!lease) {
      a.rt.count_rejection(lease.error().code);
      co_return lease.error();
    }
    auto& core = lease->core();
    if (auto e = embeddings::check_dimensions(call.dimensions, core.embedding_dimensions())) {
      a.rt.count_rejection(e->code);
      co_return *e;
    }
    co_return co_await core.embed(std::move(call));
  } catch (...) {
    failed = std::current_exception();
  }
  co_return thrown(failed);
}

boost::asio::awaitable<result<runtime::rerank_result>> rerank_on(app& a, std::string model,
                                                                 runtime::rerank_call call) {
  std::exception_ptr failed;
  try {
    auto const& cfg = a.cfg();
    auto lease = co_await a.models.acquire(model, config::model_kind::rerank, cfg.openai.strict_model_names,
                                           model_deadline(cfg));
    if (!lease) {
      a.rt.count_rejection(lease.error().code);
      co_return lease.error();
    }
    co_return co_await lease->core().rerank(std::move(call));
  } catch (...) {
    failed = std::current_exception();
  }
  co_return thrown(failed);
}

}  // namespace

boost::asio::awaitable<void> router::handle_embeddings(http::exchange& ex, route_id id) {
  auto const route = match_route(ex.path());
  auto const env = route.openai ? envelope::openai : envelope::native;
  auto const& cfg = app_.cfg();
  http::response res;
  std::string_view error_code;
  auto refuse = [&](ray::error const& err) {
    error_code = code_name(err.code);
    res = api::error_response(err, env);
    if (app_.rejections) app_.rejections->record(error_code, {{"route", route.label}});
  };
  auto refuse_decoded = [&](ray::error const& err) {  // decoding errors: the runtime never saw them
    app_.rt.count_rejection(err.code);
    refuse(err);
  };
  auto client_left = [&] {
    ex.close_after_response();
    record(route, 499, ex.received_at(), ex.request_id(), "client_closed_request");
  };
  std::string const caller =
      cfg.cache.scope == config::cache_scope::key ? caller_of(ex.req()) : std::string();

  if (id == route_id::rerank) {
    auto d = embeddings::decode_rerank(ex.req().body());
    if (!d) {
      refuse_decoded(d.error());
    } else {
      log_unknown_fields(d->unknown_fields, route.label);
      std::vector<std::string> documents;
      if (d->return_documents) documents = d->documents;
      runtime::rerank_call call;
      call.query = std::move(d->query);
      call.documents = std::move(d->documents);
      call.top_n = d->top_n;
      auto held = co_await unless_client_leaves(ex, rerank_on(app_, std::move(d->model), std::move(call)));
      if (!held) {
        client_left();
        co_return;
      }
      if (!*held)
        refuse(held->error());
      else
        res = json_response(http::status::ok,
                            embeddings::render_rerank(**held, documents, d->return_documents));
    }
  } else {
    runtime::embed_call call;
    call.caller = caller;
    std::string model;
    auto format = embeddings::encoding::float32;
    std::optional<ray::error> bad;
    if (id == route_id::embeddings) {
      auto d = embeddings::decode_openai(ex.req().body());
      if (!d) {
        bad = d.error();
      } else {
        log_unknown_fields(d->unknown_fields, route.label);
        model = std::move(d->model);
        format = d->format;
        call.inputs = std::move(d->inputs);
        call.dimensions = d->dimensions;
      }
    } else {
      auto d = embeddings::decode_native(ex.req().body());
      if (!d) {
        bad = d.error();
      } else {
        log_unknown_fields(d->unknown_fields, route.label);
        model = std::move(d->model);
        call.inputs = std::move(d->inputs);
      }
    }
    if (bad) {
      refuse_decoded(*bad);
    } else {
      auto held = co_await unless_client_leaves(ex, embed_on(app_, std::move(model), std::move(call)));
      if (!held) {
        client_left();
        co_return;
      }
      auto& r = *held;
      if (!r) {
        refuse(r.error());
      } else {
        res = json_response(http::status::ok, id == route_id::embeddings
                                                  ? embeddings::render_openai(*r, format)
                                                  : embeddings::render_native(*r, ex.request_id()));
        bool const all_cached = std::all_of(r->cached.begin(), r->cached.end(), [](bool c) { return c; });
        if (all_cached) res.set("x-ray-cache", "hit");
      }
    }
  }
  add_cors(ex.req().base(), res);
  unsigned status = static_cast<unsigned>(res.result());
  co_await ex.respond(std::move(res));
  record(route, status, ex.received_at(), ex.request_id(), error_code);
}

}  // namespace ray::api
