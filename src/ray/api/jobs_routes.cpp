// /v1/jobs (POST create, GET list) and /v1/jobs/{id} (GET, DELETE): durable jobs on the store
// (spec/jobs.md). A 202 is sent only after the store's commit; with auth on, a key sees only its own jobs.
#include "ray/api/app.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <cctype>

namespace ray::api {

namespace {

constexpr std::uint32_t max_list_limit = 500;

bool valid_job_id(std::string_view id) noexcept {
  return !id.empty() && id.size() <= 128 && std::all_of(id.begin(), id.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_' || c == '-';
  });
}

bool valid_idempotency_key(std::string_view k) noexcept {
  return !k.empty() && k.size() <= 128 &&
         std::all_of(k.begin(), k.end(), [](unsigned char c) { return c > 0x20 && c < 0x7f; });
}

jobs::millis now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The owner stored with a job: derived from the caller scope (itself from the key's SHA-256), never the
// digest itself — the store is a file an operator copies around, and a key's digest is what apiKeySha256
// configs hold.
std::string job_owner(std::string const& scope) {
  if (scope.empty()) return {};
  auto const d = sha256("ray job owner\n" + scope);
  return "owner_" + to_hex(d).substr(0, 32);
}

ray::error bad_field(std::string field, std::string message) {
  ray::error e{errc::invalid_request, std::move(message)};
  e.details = boost::json::object{{"field", field}};
  e.param = std::move(field);
  return e;
}

}  // namespace

boost::asio::awaitable<void> router::handle_jobs(http::exchange& ex) {
  auto const route = match_route(ex.path());
  http::response res;
  std::optional<errc> failed;
  if (!app_.job_store) {
    ray::error err{errc::async_queue_disabled,
                   "the async job queue is disabled (asyncQueue.enabled is false); send the request to "
                   "/v1/infer instead, or enable asyncQueue"};
    failed = err.code;
    res = api::error_response(err);
  } else if (route.id == route_id::jobs && ex.req().method() == http::verb::post) {
    res = co_await submit_job(ex, failed);
  } else if (route.id == route_id::jobs) {
    res = co_await list_jobs(ex, failed);
  } else {
    res = co_await job_by_id(ex, failed);
  }
  std::string_view error_code;
  if (failed) {
    error_code = code_name(*failed);
    app_.rt.count_rejection(*failed);
    if (app_.rejections) app_.rejections->record(error_code, {{"route", route.label}});
  }
  add_cors(ex.req().base(), res);
  unsigned status = static_cast<unsigned>(res.result());
  co_await ex.respond(std::move(res));
  record(route, status, ex.received_at(), ex.request_id(), error_code);
}

boost::asio::awaitable<http::response> router::submit_job(http::exchange& ex, std::optional<errc>& failed) {
  auto const& cfg = app_.cfg();
  auto refuse = [&](ray::error const& err) {
    failed = err.code;
    return api::error_response(err);
  };
  auto const& body = ex.req().body();
  boost::json::object fields;
  if (!trim(body).empty()) {
    boost::system::error_code ec;
    auto v = boost::json::parse(body, ec);
    if (ec)
      co_return refuse(ray::error{errc::invalid_json, "the request body is not valid JSON: " + ec.message()});
    if (!v.is_object())
      co_return refuse(ray::error{errc::invalid_request, "the request body must be a JSON object"});
    fields = std::move(v.get_object());
  }
  std::optional<std::string> callback_url, idempotency_key;
  if (auto* v = fields.if_contains("callbackUrl")) {
    if (!v->is_string() && !v->is_null())
      co_return refuse(bad_field("callbackUrl", "callbackUrl must be a string (an http or https URL)"));
    if (v->is_string()) callback_url = std::string(v->get_string());
    fields.erase("callbackUrl");
  }
  if (auto* v = fields.if_contains("idempotencyKey")) {
    if (!v->is_string() || !valid_idempotency_key(v->get_string()))
      co_return refuse(bad_field("idempotencyKey",
                                 "idempotencyKey must be 1–128 printable ASCII characters without spaces"));
    idempotency_key = std::string(v->get_string());
    fields.erase("idempotencyKey");
  }
  // The job's request must be a valid /v1/infer body now: a job that can never run is refused at once.
  auto const request_text = boost::json::serialize(fields);
  if (auto decoded = decode_infer_request(request_text, cfg); !decoded) co_return refuse(decoded.error());
  if (callback_url) {
    if (auto checked = jobs::check_callback_url(*callback_url, app_.callback_policy); !checked)
      co_return refuse(checked.error());
  }

  jobs::job j;
  j.id = new_id("job_");
  j.state = jobs::status::queued;
  j.created_at = j.updated_at = now_ms();
  j.max_attempts = cfg.async_queue.max_attempts;
  j.request = std::move(fields);
  j.owner = job_owner(caller_of(ex.req()));
  j.idempotency_key = std::move(idempotency_key);
  if (callback_url) j.callback = jobs::callback_state{.url = *callback_url};
  auto stored = co_await app_.job_store->insert(std::move(j));
  if (!stored) co_return refuse(stored.error());
  auto const& job = stored->stored;
  if (stored->existing) co_return json_response(http::status::ok, telemetry::to_json(jobs::to_json(job)));
  if (app_.job_dispatcher) app_.job_dispatcher->wake();
  auto const location = "/v1/jobs/" + job.id;
  boost::json::object o{
      {"id", job.id},
      {"status", jobs::status_name(job.state)},
      {"createdAt",
       format_timestamp(std::chrono::system_clock::time_point(std::chrono::milliseconds(job.created_at)))},
      {"location", location}};
  auto res = json_response(http::status::accepted, telemetry::to_json(o));
  res.set(http::field::location, location);
  co_return res;
}

boost::asio::awaitable<http::response> router::list_jobs(http::exchange& ex, std::optional<errc>& failed) {
  auto refuse = [&](ray::error const& err) {
    failed = err.code;
    return api::error_response(err);
  };
  jobs::list_query q;
  if (app_.access.auth.enabled) q.owner = job_owner(caller_of(ex.req()));
  // key=value pairs split on '&' (the values Ray reads are plain tokens; a percent-encoded one is refused).
  std::string_view rest = ex.query();
  while (!rest.empty()) {
    auto const amp = rest.find('&');
    auto const pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
    auto const eq = pair.find('=');
    auto const key = pair.substr(0, eq);
    auto const value = eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1);
    if (key == "status") {
      auto st = jobs::parse_status(value);
      if (!st)
        co_return refuse(
            bad_field("status", "status must be one of queued, running, succeeded, failed, cancelled"));
      q.state = *st;
    } else if (key == "limit") {
      std::uint32_t n = 0;
      bool ok = !value.empty() && value.size() <= 6;
      for (char c : value) {
        if (c < '0' || c > '9')
          ok = false;
        else
          n = n * 10 + static_cast<std::uint32_t>(c - '0');
      }
      if (!ok || n < 1 || n > max_list_limit)
        co_return refuse(
            bad_field("limit", "limit must be an integer from 1 to " + std::to_string(max_list_limit)));
      q.limit = n;
    }
  }
  auto listed = co_await app_.job_store->list(q);
  if (!listed) co_return refuse(listed.error());
  boost::json::array items;
  items.reserve(listed->size());
  for (auto const& j : *listed)
    items.push_back(jobs::to_json(j));
  boost::json::object o{{"object", "list"}, {"data", std::move(items)}, {"limit", q.limit}};
  if (q.state) o["status"] = jobs::status_name(*q.state);
  co_return json_response(http::status::ok, telemetry::to_json(o));
}

boost::asio::awaitable<http::response> router::job_by_id(http::exchange& ex, std::optional<errc>& failed) {
  auto refuse = [&](ray::error const& err) {
    failed = err.code;
    return api::error_response(err);
  };
  auto const id = std::string(ex.path().substr(ex.path().rfind('/') + 1));
  if (!valid_job_id(id)) co_return refuse(bad_field("id", "a job id is 1–128 characters of [A-Za-z0-9_-]"));
  std::optional<std::string> owner;
  if (app_.access.auth.enabled) owner = job_owner(caller_of(ex.req()));
  auto not_found = [&] { return refuse(ray::error{errc::job_not_found, "no job " + id}); };
  auto found = co_await app_.job_store->get(id);
  if (!found) co_return refuse(found.error());
  if (!*found || (owner && (*found)->owner != *owner)) co_return not_found();
  if (ex.req().method() != http::verb::delete_)
    co_return json_response(http::status::ok, telemetry::to_json(jobs::to_json(**found)));

  if (jobs::is_terminal((*found)->state)) {
    ray::error err{errc::job_not_cancellable, "job " + id + " already " +
                                                  std::string(jobs::status_name((*found)->state)) +
                                                  "; only queued or running jobs can be cancelled"};
    err.details = boost::json::object{{"status", jobs::status_name((*found)->state)}};
    co_return refuse(err);
  }
  auto cancelled = co_await app_.job_store->cancel(id, owner);
  if (!cancelled) co_return refuse(cancelled.error());
  if (!*cancelled) co_return not_found();
  if ((*cancelled)->state != jobs::status::cancelled) {
    // It finished between the two reads.
    ray::error err{errc::job_not_cancellable,
                   "job " + id + " already " + std::string(jobs::status_name((*cancelled)->state))};
    co_return refuse(err);
  }
  if (app_.job_dispatcher) app_.job_dispatcher->abort(id);
  co_return json_response(http::status::ok, telemetry::to_json(jobs::to_json(**cancelled)));
}

}  // namespace ray::api
