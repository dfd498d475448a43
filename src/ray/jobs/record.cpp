// The job record: names, the wire format (TypeScript gateway field names and order), its reader for the
// gateway's files, and the retry rules.
#include "ray/jobs/jobs.hpp"

#include <algorithm>
#include <cmath>
#include <ctime>

namespace ray::jobs {

namespace json = boost::json;

namespace {
constexpr std::string_view status_names[] = {"queued", "running", "succeeded", "failed", "cancelled"};

std::string timestamp(millis ms) {
  return format_timestamp(std::chrono::system_clock::time_point(std::chrono::milliseconds(ms)));
}

// "2026-12-06T12:51:10.321Z" (the gateway's Date.toISOString()) → epoch ms; also accepts no fraction.
std::optional<millis> parse_timestamp(std::string_view s) {
  int y, mo, d, h, mi, sec;
  int n = 0;
  std::string text(s);
  if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6) return {};
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) return {};
  std::size_t pos = static_cast<std::size_t>(n);
  millis frac = 0;
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    int digits = 0;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      if (digits < 3) frac = frac * 10 + (text[pos] - '0');
      ++digits;
      ++pos;
    }
    if (digits == 0) return {};
    for (; digits < 3; ++digits)
      frac *= 10;
  }
  if (pos >= text.size() || (text[pos] != 'Z' && text[pos] != 'z') || pos + 1 != text.size()) return {};
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = sec;
  auto t = timegm(&tm);
  if (t == -1) return {};
  return static_cast<millis>(t) * 1000 + frac;
}

std::optional<std::string> string_at(json::object const& o, std::string_view key) {
  auto const* v = o.if_contains(key);
  if (!v || !v->is_string()) return {};
  return std::string(v->get_string());
}

std::optional<millis> time_at(json::object const& o, std::string_view key) {
  auto s = string_at(o, key);
  if (!s) return {};
  return parse_timestamp(*s);
}

std::optional<std::uint32_t> count_at(json::object const& o, std::string_view key) {
  auto const* v = o.if_contains(key);
  if (!v) return {};
  if (v->is_int64() && v->get_int64() >= 0 && v->get_int64() <= 1'000'000)
    return static_cast<std::uint32_t>(v->get_int64());
  if (v->is_uint64() && v->get_uint64() <= 1'000'000) return static_cast<std::uint32_t>(v->get_uint64());
  if (v->is_double()) return to_count(v->get_double(), 1'000'000);
  return {};
}
}  // namespace

std::string_view status_name(status s) noexcept {
  return status_names[static_cast<std::size_t>(s)];
}

std::optional<status> parse_status(std::string_view s) noexcept {
  for (std::size_t i = 0; i < status_count; ++i)
    if (status_names[i] == s) return static_cast<status>(i);
  return std::nullopt;
}

std::string_view callback_status_name(callback_status s) noexcept {
  switch (s) {
    case callback_status::pending:
      return "pending";
    case callback_status::delivered:
      return "delivered";
    case callback_status::failed:
      return "failed";
  }
  return "pending";
}

json::object to_json(job const& j) {
  json::object o;
  o.reserve(13);
  o["id"] = j.id;
  o["status"] = status_name(j.state);
  o["request"] = j.request;
  o["createdAt"] = timestamp(j.created_at);
  o["updatedAt"] = timestamp(j.updated_at);
  o["attempts"] = j.attempts;
  o["maxAttempts"] = j.max_attempts;
  if (j.idempotency_key) o["idempotencyKey"] = *j.idempotency_key;
  if (j.callback) {
    auto const& c = *j.callback;
    json::object cb{{"url", c.url}, {"status", callback_status_name(c.status)}, {"attempts", c.attempts}};
    if (c.last_attempt_at) cb["lastAttemptAt"] = timestamp(*c.last_attempt_at);
    if (c.last_error) cb["lastError"] = *c.last_error;
    if (c.delivered_at) cb["deliveredAt"] = timestamp(*c.delivered_at);
    o["callback"] = std::move(cb);
  }
  if (j.started_at) o["startedAt"] = timestamp(*j.started_at);
  if (j.result) o["result"] = *j.result;
  if (j.error) o["error"] = json::object{{"code", j.error->code}, {"message", j.error->message}};
  if (j.completed_at) o["completedAt"] = timestamp(*j.completed_at);
  return o;
}

result<job> from_ts_json(json::value const& v) {
  auto bad = [](std::string why) { return ray::error{errc::invalid_request, std::move(why)}; };
  if (!v.is_object()) return bad("the record is not a JSON object");
  auto const& o = v.get_object();
  job j;
  auto id = string_at(o, "id");
  auto valid_id = [](std::string const& s) {
    return !s.empty() && s.size() <= 128 && std::all_of(s.begin(), s.end(), [](unsigned char c) {
      return std::isalnum(c) || c == '_' || c == '-';
    });
  };
  if (!id || !valid_id(*id)) return bad("missing or invalid \"id\"");
  j.id = *id;
  auto st = string_at(o, "status");
  auto parsed = st ? parse_status(*st) : std::nullopt;
  if (!parsed) return bad("missing or unknown \"status\"");
  j.state = *parsed;
  auto created = time_at(o, "createdAt");
  if (!created) return bad("missing or invalid \"createdAt\"");
  j.created_at = *created;
  j.updated_at = time_at(o, "updatedAt").value_or(j.created_at);
  j.started_at = time_at(o, "startedAt");
  j.completed_at = time_at(o, "completedAt");
  if (is_terminal(j.state) && !j.completed_at) j.completed_at = j.updated_at;
  j.attempts = count_at(o, "attempts").value_or(0);
  j.max_attempts = std::max<std::uint32_t>(1, count_at(o, "maxAttempts").value_or(3));
  auto const* req = o.if_contains("request");
  if (!req || !req->is_object()) return bad("missing \"request\" object");
  j.request = req->get_object();
  if (auto const* r = o.if_contains("result"); r && !r->is_null()) j.result = *r;
  if (auto const* e = o.if_contains("error"); e && e->is_object()) {
    j.error = job_error{string_at(e->get_object(), "code").value_or("unknown"),
                        string_at(e->get_object(), "message").value_or("")};
  } else if (e && e->is_string()) {
    j.error = job_error{"unknown", std::string(e->get_string())};
  }
  if (auto const* c = o.if_contains("callback"); c && c->is_object()) {
    auto const& co = c->get_object();
    callback_state cb;
    auto url = string_at(co, "url");
    if (!url) return bad("\"callback\" without a \"url\"");
    cb.url = *url;
    auto cs = string_at(co, "status").value_or("pending");
    cb.status = cs == "delivered" ? callback_status::delivered
                : cs == "failed"  ? callback_status::failed
                                  : callback_status::pending;
    cb.attempts = count_at(co, "attempts").value_or(0);
    if (auto le = string_at(co, "lastError")) cb.last_error = le->substr(0, utf8_safe_prefix(*le, 1024));
    cb.last_attempt_at = time_at(co, "lastAttemptAt");
    cb.delivered_at = time_at(co, "deliveredAt");
    j.callback = std::move(cb);
  }
  return j;
}

bool is_retryable(errc code) noexcept {
  switch (code) {
    case errc::queue_full:
    case errc::overloaded:
    case errc::provider_unavailable:
    case errc::provider_timeout:
    case errc::provider_request_failed:
    case errc::shutting_down:
      return true;
    default:
      return false;
  }
}

std::chrono::milliseconds backoff(std::uint32_t attempt, std::chrono::milliseconds base, double jitter01) {
  double const cap = 60'000.0;
  double ms = static_cast<double>(std::max<std::int64_t>(base.count(), 1));
  for (std::uint32_t i = 1; i < attempt && ms < cap; ++i)
    ms *= 2;
  ms = std::min(ms, cap);
  double const j = std::clamp(jitter01, 0.0, 1.0);
  ms *= 0.8 + 0.4 * j;
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(ms)));
}

}  // namespace ray::jobs
