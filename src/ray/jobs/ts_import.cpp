// Upgrading from the TypeScript gateway: its store was one JSON file per job under <storageDir>/jobs/. On
// first start they are imported into SQLite and the folder is moved aside — nothing is silently orphaned.
#include "ray/jobs/jobs.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json/parse.hpp>

#include <fstream>

namespace ray::jobs {

namespace {
constexpr std::uintmax_t max_record_bytes = 16u << 20;

std::optional<std::string> read_bounded(std::filesystem::path const& p) {
  std::error_code ec;
  auto size = std::filesystem::file_size(p, ec);
  if (ec || size > max_record_bytes) return std::nullopt;
  std::ifstream in(p, std::ios::binary);
  if (!in) return std::nullopt;
  std::string text(static_cast<std::size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (static_cast<std::uintmax_t>(in.gcount()) != size) return std::nullopt;
  return text;
}

std::string stamp() {
  auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}
}  // namespace

result<import_report> import_ts_jobs(std::filesystem::path const& storage_dir, store& s,
                                     telemetry::logger& log) {
  import_report rep;
  auto const dir = storage_dir / "jobs";
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return rep;
  std::vector<job> jobs;
  boost::json::array bad_files;
  for (auto const& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".json") continue;
    auto text = read_bounded(entry.path());
    boost::system::error_code jec;
    std::optional<boost::json::value> v;
    if (text) {
      auto parsed = boost::json::parse(*text, jec);
      if (!jec) v = std::move(parsed);
    }
    auto j = v ? from_ts_json(*v) : result<job>(ray::error{errc::invalid_json, "not readable JSON"});
    if (!j) {
      ++rep.unreadable;
      if (bad_files.size() < 20)
        bad_files.emplace_back(
            boost::json::object{{"file", entry.path().filename().string()}, {"reason", j.error().message}});
      continue;
    }
    // Records the gateway wrote carry no owner: they belong to no API key (visible to the operator, and to
    // clients when auth is off).
    if (j->callback && j->callback->status == callback_status::pending) j->callback->next_attempt_at = 0;
    jobs.push_back(std::move(*j));
  }
  if (ec)
    return ray::error{errc::async_queue_storage_low, "cannot read " + dir.string() + ": " + ec.message()};
  if (jobs.empty() && rep.unreadable == 0) {
    // An empty folder: nothing to import, nothing to move.
    return rep;
  }

  // Drive the store's awaitable on a private loop (this runs at startup, before the server's loop).
  boost::asio::io_context ioc;
  std::optional<result<std::pair<std::uint32_t, std::uint32_t>>> done;
  boost::asio::co_spawn(
      ioc, [&]() -> boost::asio::awaitable<void> { done = co_await s.import(std::move(jobs)); },
      boost::asio::detached);
  ioc.run();
  if (!done)
    return ray::error{errc::async_queue_storage_low,
                      "importing the TypeScript gateway's jobs did not finish"};
  if (!*done) return done->error();
  rep.imported = (*done)->first;
  rep.skipped = (*done)->second;

  auto target = storage_dir / ("jobs.imported-" + stamp());
  std::filesystem::rename(dir, target, ec);
  if (ec) {
    log.warn("imported the TypeScript gateway's jobs but could not move their folder aside",
             {{"folder", dir.string()}, {"reason", ec.message()}});
  } else {
    rep.moved_to = target;
  }
  boost::json::object f{{"imported", rep.imported},
                        {"alreadyPresent", rep.skipped},
                        {"unreadable", rep.unreadable},
                        {"from", dir.string()}};
  if (rep.moved_to) f["movedTo"] = rep.moved_to->string();
  if (!bad_files.empty()) f["unreadableFiles"] = std::move(bad_files);
  log.log(rep.unreadable ? telemetry::level::warn : telemetry::level::info,
          "imported the TypeScript gateway's job records", std::move(f));
  return rep;
}

}  // namespace ray::jobs
