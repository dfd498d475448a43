// Private to ray::api: the process-wide state the handlers share, and the router.
#pragma once

#include "ray/access/access.hpp"
#include "ray/api/api.hpp"
#include "ray/backend/backend.hpp"
#include "ray/jobs/jobs.hpp"
#include "ray/runtime/registry.hpp"
#include "ray/telemetry/telemetry.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <memory>

namespace ray::backend {
class supervisor;
}

namespace ray::api {

class sse_format;  // openai_stream.hpp

enum class route_id : std::uint8_t {
  root,
  livez,
  readyz,
  health,
  metrics,
  config,
  infer,
  jobs,
  job,
  embeddings,
  embed,   // native POST /v1/embed
  rerank,  // POST /v1/rerank (llama-server's shape)
  models,
  model,
  chat,
  completions,
  responses,
  none
};

struct route_info {
  route_id id{route_id::none};
  std::string_view label{"other"};  // the path template, the `route` metric label
  std::string_view allow{};         // the `allow` header for 405
  bool openai{false};               // errors use OpenAI's envelope
};

// Matches a path to its route (exact paths; "/v1/jobs/{id}").
route_info match_route(std::string_view path) noexcept;

// Auth and rate limiting as currently in force (replaced on SIGHUP).
struct access_state {
  config::auth_config auth{};
  config::rate_limit_config rate{};
  std::shared_ptr<access::key_set const> keys{};
  std::unique_ptr<access::rate_limiter> limiter{};
  access::proxy_list proxies{};  // rateLimit.trustedProxies
  // Once per access state (so once per reload): X-Forwarded-For arrived from a peer that is not listed.
  bool warned_untrusted_forwarder{false};
};

struct app {
  config::loaded_config& loaded;  // the live view: SIGHUP updates the reloadable sections
  telemetry::logger& log;
  telemetry::registry& metrics;
  backend::backend& backend;
  runtime::runtime& rt;       // the first chat model's serving core (models.primary())
  runtime::registry& models;  // every model: routing by name and kind, residency
  http::server* server{nullptr};
  backend::supervisor* supervisor{nullptr};  // when Ray runs llama-server itself
  jobs::store* job_store{nullptr};           // asyncQueue.enabled and the store opened
  jobs::dispatcher* job_dispatcher{nullptr};
  jobs::callback_policy callback_policy{};  // checks a callbackUrl at submission
  std::atomic<bool> shutting_down{false};
  std::atomic<bool> draining{false};  // SIGTERM with server.drainMs: readyz 503, still serving
  std::shared_ptr<boost::asio::steady_timer> drain_timer;  // while draining; a second signal cancels it
  std::chrono::steady_clock::time_point started{std::chrono::steady_clock::now()};
  std::unique_ptr<telemetry::rejection_summarizer> rejections;
  access_state access{};

  config::config const& cfg() const noexcept { return loaded.cfg; }
};

// The operator status page (status_page.cpp): whether an Accept value prefers text/html over JSON (an
// explicit `text/html` range with a higher q than application/json gets), and the page with its security
// headers.
bool prefers_html(std::string_view accept) noexcept;
http::response status_page();

// Runs `work` unless the client leaves first (then nullopt: `work` was cancelled with it). client_gone() goes
// first: it must be waiting before `work` can complete inline (see runtime/flight.cpp on parallel_group), or
// its cancellation would be lost and the request would hang until the client left.
template <class T>
boost::asio::awaitable<std::optional<T>> unless_client_leaves(http::exchange& ex,
                                                              boost::asio::awaitable<T> work) {
  using namespace boost::asio::experimental::awaitable_operators;
  auto outcome = co_await (ex.client_gone() || std::move(work));
  if (outcome.index() == 0) co_return std::nullopt;
  co_return std::move(std::get<1>(outcome));
}

// Runs an OpenAI chat/completion, or a native inference, on the chat model `model` names (registry
// acquire: id or alias, lenient or openai.strictModelNames, loading it when it must), the model held busy
// until the answer; the wait for a load is bounded by scheduler.queueTimeoutMs (default requestTimeoutMs).
boost::asio::awaitable<result<runtime::infer_result>> chat_on_model(
    app& a, std::string model, runtime::chat_request call, runtime::stream_listener* listener = nullptr);
boost::asio::awaitable<result<runtime::infer_result>> infer_on_model(app& a, std::string model,
                                                                     runtime::infer_request req);

// One model as /v1/models and /health.models[] show it: OpenAI's fields (id, object, created, owned_by),
// then Ray's (models.md "Visibility": kind, state, pinned, memoryMiB, lastLoadMs, loadCount, meta).
boost::json::object model_object(runtime::model_view const& v, std::int64_t created);

class router final : public http::handler {
 public:
  explicit router(app& a);

  std::optional<ray::error> check_headers(http::request_header const& header, std::string_view path,
                                          http::tcp::endpoint const& peer, http::header_list& extra) override;
  bool accepts_body(http::request_header const& header, std::string_view path) override;
  std::optional<std::string> connection_owner(boost::asio::ip::address const& peer) override;
  http::response error_response(ray::error const& err, http::request_header const* header,
                                std::string_view path,
                                std::chrono::steady_clock::time_point started) override;
  boost::asio::awaitable<void> handle(http::exchange& ex) override;

 private:
  boost::asio::awaitable<void> handle_infer(http::exchange& ex);
  boost::asio::awaitable<void> handle_openai(http::exchange& ex, bool completion);
  // POST /v1/responses, translated to one chat completion (responses_routes.cpp).
  boost::asio::awaitable<void> handle_responses(http::exchange& ex);
  // POST /v1/embeddings, /v1/embed and /v1/rerank through the model registry (embeddings_routes.cpp).
  boost::asio::awaitable<void> handle_embeddings(http::exchange& ex, route_id id);
  // /v1/jobs and /v1/jobs/{id} (jobs_routes.cpp).
  boost::asio::awaitable<void> handle_jobs(http::exchange& ex);
  boost::asio::awaitable<http::response> submit_job(http::exchange& ex, std::optional<errc>& failed);
  boost::asio::awaitable<http::response> list_jobs(http::exchange& ex, std::optional<errc>& failed);
  boost::asio::awaitable<http::response> job_by_id(http::exchange& ex, std::optional<errc>& failed);
  // The opaque caller scope of an authenticated request ("" when auth is off): see infer_request::caller.
  std::string caller_of(http::request const& req) const;
  void log_unknown_fields(std::vector<std::string> const& fields, std::string_view route) const;
  // Streams an admitted OpenAI request as server-sent events; returns the status it answered for the log.
  // `model` is the name the request gave (chat_on_model chooses by it).
  boost::asio::awaitable<unsigned> stream_openai(http::exchange& ex, std::string model,
                                                 runtime::chat_request call, sse_format& format,
                                                 std::string_view& error_code);
  http::response json_response(http::status st, std::string body) const;
  http::response readyz() const;
  http::response health() const;
  http::response metrics(http::request const& req) const;
  void add_cors(http::request_header const& header, http::response& res) const;
  void record(route_info const& route, unsigned status, std::chrono::steady_clock::time_point started,
              std::string const& request_id, std::string_view error_code,
              runtime::infer_result const* result = nullptr);

  app& app_;
  telemetry::counter_family requests_;
  telemetry::histogram_family durations_;
  std::chrono::steady_clock::time_point last_slow_warn_{};
  std::uint64_t slow_since_warn_{0};
  std::vector<std::string> warned_models_;  // unknown model names already warned about (bounded)
};

}  // namespace ray::api
