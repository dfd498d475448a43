// `ray jobs`: list, show and cancel jobs in the store of a config, for the operator (no HTTP, no auth:
// whoever can read the 0700 folder is the operator).
#include "ray/jobs/jobs.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json/serialize.hpp>

#include <cstdio>
#include <ostream>

namespace ray::jobs {

namespace {

template <class T>
T run(boost::asio::awaitable<T> a) {
  boost::asio::io_context ioc;
  std::optional<T> out;
  boost::asio::co_spawn(ioc, std::move(a), [&](std::exception_ptr e, T v) {
    if (!e) out = std::move(v);
  });
  ioc.run();
  if (!out) return T(ray::error{errc::async_queue_storage_low, "the job store call did not complete"});
  return std::move(*out);
}

std::string when(std::optional<millis> t) {
  if (!t) return "-";
  return format_timestamp(std::chrono::system_clock::time_point(std::chrono::milliseconds(*t)));
}

std::string callback_cell(job const& j) {
  if (!j.callback) return "-";
  return std::string(callback_status_name(j.callback->status)) + "/" + std::to_string(j.callback->attempts);
}

void print_record(job const& j, std::ostream& out) {
  out << "id:          " << j.id << "\n"
      << "status:      " << status_name(j.state) << "\n"
      << "attempts:    " << j.attempts << " of " << j.max_attempts << "\n"
      << "created:     " << when(j.created_at) << "\n"
      << "updated:     " << when(j.updated_at) << "\n"
      << "started:     " << when(j.started_at) << "\n"
      << "completed:   " << when(j.completed_at) << "\n";
  if (j.idempotency_key) out << "idempotency: " << *j.idempotency_key << "\n";
  if (!j.owner.empty()) out << "owner:       " << j.owner << " (an API key's scope)\n";
  if (j.callback) {
    out << "callback:    " << j.callback->url << " — " << callback_status_name(j.callback->status)
        << " after " << j.callback->attempts << " attempt(s)";
    if (j.callback->last_error) out << "; last error: " << *j.callback->last_error;
    out << "\n";
  }
  if (j.error) out << "error:       " << j.error->code << ": " << j.error->message << "\n";
  out << "request:     " << boost::json::serialize(j.request) << "\n";
  if (j.result) {
    if (j.result->is_object() && j.result->as_object().contains("output") &&
        j.result->as_object().at("output").is_string())
      out << "output:      " << j.result->as_object().at("output").as_string().c_str() << "\n";
    else
      out << "result:      " << boost::json::serialize(*j.result) << "\n";
  }
}

}  // namespace

int cli_command(cli_options const& o, std::ostream& out, std::ostream& err) {
  if (!std::filesystem::exists(o.storage_dir / "jobs.sqlite3")) {
    err << "ray: no job store at " << (o.storage_dir / "jobs.sqlite3").string()
        << " (asyncQueue.storageDir; is asyncQueue enabled, and is this the config the server runs with?)\n";
    return 1;
  }
  sqlite_options so;
  so.dir = o.storage_dir;
  so.read_only = false;  // a WAL database is opened read-write even to read it (the -shm index)
  auto opened = open_sqlite_store(so);
  if (!opened) {
    err << "ray: " << opened.error().message << "\n";
    return 1;
  }
  auto& s = **opened;

  if (o.action == "list") {
    list_query q;
    q.limit = o.limit;
    if (o.status) {
      q.state = parse_status(*o.status);
      if (!q.state) {
        err << "ray: --status must be one of queued, running, succeeded, failed, cancelled\n";
        return 2;
      }
    }
    auto listed = run(s.list(q));
    if (!listed) {
      err << "ray: " << listed.error().message << "\n";
      return 1;
    }
    if (o.json) {
      boost::json::array a;
      for (auto const& j : *listed)
        a.push_back(to_json(j));
      out << boost::json::serialize(a) << "\n";
      return 0;
    }
    auto const c = s.current_counts();
    char line[256];
    std::snprintf(line, sizeof line, "%-22s %-10s %-8s %-25s %-25s %s\n", "ID", "STATUS", "ATTEMPTS",
                  "CREATED", "UPDATED", "CALLBACK");
    out << line;
    for (auto const& j : *listed) {
      std::snprintf(line, sizeof line, "%-22s %-10s %-8s %-25s %-25s %s\n", j.id.c_str(),
                    std::string(status_name(j.state)).c_str(),
                    (std::to_string(j.attempts) + "/" + std::to_string(j.max_attempts)).c_str(),
                    when(j.created_at).c_str(), when(j.updated_at).c_str(), callback_cell(j).c_str());
      out << line;
    }
    out << listed->size() << " shown (newest first, --limit " << q.limit << "); store: " << c.total()
        << " jobs — queued " << c.by_status[0] << ", running " << c.by_status[1] << ", succeeded "
        << c.by_status[2] << ", failed " << c.by_status[3] << ", cancelled " << c.by_status[4]
        << "; callbacks pending " << c.callback_pending << "\n";
    return 0;
  }

  if (o.action == "show" || o.action == "cancel") {
    auto found = run(s.get(o.id));
    if (!found) {
      err << "ray: " << found.error().message << "\n";
      return 1;
    }
    if (!*found) {
      err << "ray: no job " << o.id << " in " << o.storage_dir.string() << "\n";
      return 1;
    }
    if (o.action == "cancel") {
      if (is_terminal((*found)->state)) {
        err << "ray: job " << o.id << " already " << status_name((*found)->state) << "; nothing to cancel\n";
        return 1;
      }
      bool const was_running = (*found)->state == status::running;
      auto cancelled = run(s.cancel(o.id, std::nullopt));
      if (!cancelled || !*cancelled) {
        err << "ray: " << (cancelled ? "the job disappeared" : cancelled.error().message) << "\n";
        return 1;
      }
      found = std::move(cancelled);
      if (!o.json && was_running)
        err << "ray: note: the job was running; the server discards that attempt's result when it ends "
               "(DELETE /v1/jobs/"
            << o.id << " aborts it at once)\n";
    }
    if (o.json)
      out << boost::json::serialize(to_json(**found)) << "\n";
    else
      print_record(**found, out);
    return 0;
  }
  err << "ray: unknown jobs action " << o.action << "\n";
  return 2;
}

}  // namespace ray::jobs
