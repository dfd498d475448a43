// The ray_jobs table of the PostgreSQL job store (postgres_rows.hpp).
#include "ray/jobs/postgres_rows.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <charconv>
#include <cstring>
#include <iterator>

namespace ray::jobs::pg {

namespace json = boost::json;

char const* const schema_v1 = R"sql(
CREATE TABLE ray_jobs(
  id text PRIMARY KEY,
  owner text NOT NULL DEFAULT '',
  status text NOT NULL,
  created_at bigint NOT NULL,
  updated_at bigint NOT NULL,
  started_at bigint,
  completed_at bigint,
  attempts integer NOT NULL DEFAULT 0,
  max_attempts integer NOT NULL,
  not_before bigint NOT NULL DEFAULT 0,
  request text NOT NULL,
  result text,
  error_code text,
  error_message text,
  idempotency_key text,
  cb_url text,
  cb_status text,
  cb_attempts integer NOT NULL DEFAULT 0,
  cb_last_error text,
  cb_last_attempt_at bigint,
  cb_delivered_at bigint,
  cb_next_at bigint NOT NULL DEFAULT 0,
  lease_owner text,
  lease_until bigint
);
CREATE INDEX ray_jobs_queued ON ray_jobs(created_at, id) WHERE status = 'queued';
CREATE INDEX ray_jobs_created ON ray_jobs(created_at);
CREATE INDEX ray_jobs_leases ON ray_jobs(lease_until) WHERE status = 'running';
CREATE UNIQUE INDEX ray_jobs_idempotency ON ray_jobs(owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX ray_jobs_callbacks ON ray_jobs(cb_next_at) WHERE cb_status = 'pending';
CREATE TABLE ray_schema(version integer NOT NULL);
INSERT INTO ray_schema(version) VALUES (1);
)sql";

namespace {

constexpr char const* column_names[] = {"id",
                                        "owner",
                                        "status",
                                        "created_at",
                                        "updated_at",
                                        "started_at",
                                        "completed_at",
                                        "attempts",
                                        "max_attempts",
                                        "not_before",
                                        "request",
                                        "result",
                                        "error_code",
                                        "error_message",
                                        "idempotency_key",
                                        "cb_url",
                                        "cb_status",
                                        "cb_attempts",
                                        "cb_last_error",
                                        "cb_last_attempt_at",
                                        "cb_delivered_at",
                                        "cb_next_at",
                                        "lease_owner",
                                        "lease_until"};

std::string column_list(std::string_view prefix) {
  std::string out;
  for (auto const* c : column_names) {
    if (!out.empty()) out += ", ";
    out += prefix;
    out += c;
  }
  return out;
}

}  // namespace

std::string const& columns() {
  static std::string const s = column_list("");
  return s;
}
std::string const& j_columns() {  // qualified, for UPDATE … FROM … RETURNING
  static std::string const s = column_list("j.");
  return s;
}

// A text[] literal (a parameter value, not SQL): every element double-quoted, `"` and `\` escaped.
std::string text_array(std::vector<std::string> const& items) {
  std::string out = "{";
  for (auto const& s : items) {
    if (out.size() > 1) out += ',';
    out += '"';
    for (char c : s) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  out += '}';
  return out;
}

param num(std::int64_t v) {
  return std::to_string(v);
}
param opt_num(std::optional<millis> v) {
  return v ? num(*v) : std::nullopt;
}

std::optional<std::string> text_at(PGresult* r, int row, int col) {
  if (pq::fns().PQgetisnull(r, row, col)) return std::nullopt;
  return std::string(pq::fns().PQgetvalue(r, row, col),
                     static_cast<std::size_t>(pq::fns().PQgetlength(r, row, col)));
}
std::optional<std::int64_t> int_at(PGresult* r, int row, int col) {
  if (pq::fns().PQgetisnull(r, row, col)) return std::nullopt;
  char const* p = pq::fns().PQgetvalue(r, row, col);
  std::int64_t v = 0;
  auto [end, ec] = std::from_chars(p, p + pq::fns().PQgetlength(r, row, col), v);
  (void)end;
  if (ec != std::errc{}) return std::nullopt;
  return v;
}

job row_of(PGresult* r, int i) {
  job j;
  j.id = text_at(r, i, 0).value_or("");
  j.owner = text_at(r, i, 1).value_or("");
  j.state = parse_status(text_at(r, i, 2).value_or("")).value_or(status::failed);
  j.created_at = int_at(r, i, 3).value_or(0);
  j.updated_at = int_at(r, i, 4).value_or(0);
  j.started_at = int_at(r, i, 5);
  j.completed_at = int_at(r, i, 6);
  j.attempts = static_cast<std::uint32_t>(int_at(r, i, 7).value_or(0));
  j.max_attempts = static_cast<std::uint32_t>(int_at(r, i, 8).value_or(1));
  j.not_before = int_at(r, i, 9).value_or(0);
  boost::system::error_code ec;
  if (auto text = text_at(r, i, 10)) {
    auto v = json::parse(*text, ec);
    if (!ec && v.is_object()) j.request = std::move(v.get_object());
  }
  if (auto text = text_at(r, i, 11)) {
    auto v = json::parse(*text, ec);
    if (!ec) j.result = std::move(v);
  }
  if (auto code = text_at(r, i, 12)) j.error = job_error{*code, text_at(r, i, 13).value_or("")};
  j.idempotency_key = text_at(r, i, 14);
  if (auto url = text_at(r, i, 15)) {
    callback_state cb;
    cb.url = *url;
    auto s = text_at(r, i, 16).value_or("pending");
    cb.status = s == "delivered" ? callback_status::delivered
                : s == "failed"  ? callback_status::failed
                                 : callback_status::pending;
    cb.attempts = static_cast<std::uint32_t>(int_at(r, i, 17).value_or(0));
    cb.last_error = text_at(r, i, 18);
    cb.last_attempt_at = int_at(r, i, 19);
    cb.delivered_at = int_at(r, i, 20);
    cb.next_attempt_at = int_at(r, i, 21).value_or(0);
    j.callback = std::move(cb);
  }
  return j;
}

std::vector<job> rows_of(PGresult* r) {
  std::vector<job> out;
  int const n = pq::fns().PQntuples(r);
  out.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i)
    out.push_back(row_of(r, i));
  return out;
}

std::uint32_t affected(PGresult* r) {
  std::uint32_t n = 0;
  char const* s = pq::fns().PQcmdTuples(r);
  std::from_chars(s, s + std::strlen(s), n);
  return n;
}
// The INSERT of every column (lease columns included).
std::string const& insert_sql() {
  static std::string const s = [] {
    std::string sql = "INSERT INTO ray_jobs(" + columns() + ") VALUES(";
    for (std::size_t i = 1; i <= std::size(column_names); ++i)
      sql += (i > 1 ? ", $" : "$") + std::to_string(i);
    return sql + ")";
  }();
  return s;
}

std::vector<param> insert_params(job const& j) {
  std::vector<param> p;
  p.reserve(std::size(column_names));
  p.push_back(j.id);
  p.push_back(j.owner);
  p.push_back(std::string(status_name(j.state)));
  p.push_back(num(j.created_at));
  p.push_back(num(j.updated_at));
  p.push_back(opt_num(j.started_at));
  p.push_back(opt_num(j.completed_at));
  p.push_back(num(j.attempts));
  p.push_back(num(j.max_attempts));
  p.push_back(num(j.not_before));
  p.push_back(json::serialize(j.request));
  p.push_back(j.result ? param(json::serialize(*j.result)) : std::nullopt);
  p.push_back(j.error ? param(j.error->code) : std::nullopt);
  p.push_back(j.error ? param(j.error->message) : std::nullopt);
  p.push_back(j.idempotency_key);
  if (j.callback) {
    p.push_back(j.callback->url);
    p.push_back(std::string(callback_status_name(j.callback->status)));
    p.push_back(num(j.callback->attempts));
    p.push_back(j.callback->last_error);
    p.push_back(opt_num(j.callback->last_attempt_at));
    p.push_back(opt_num(j.callback->delivered_at));
    p.push_back(num(j.callback->next_attempt_at));
  } else {
    p.insert(p.end(), {std::nullopt, std::nullopt, num(0), std::nullopt, std::nullopt, std::nullopt, num(0)});
  }
  p.push_back(std::nullopt);  // lease_owner: a job inserted running (an import) has no live lease
  p.push_back(std::nullopt);  // lease_until
  return p;
}

}  // namespace ray::jobs::pg
