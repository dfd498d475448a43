// The ray_jobs table of the PostgreSQL job store (postgres_store.cpp): its schema, its column order, and the
// mapping between a row and a `job` (text parameters in, text results out). No connection here: the store
// runs the statements on its thread.
#pragma once

#include "ray/jobs/jobs.hpp"
#include "ray/jobs/libpq.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ray::jobs::pg {

// Schema version 1: table ray_jobs (every job field plus lease_owner, lease_until) and its indexes, and
// ray_schema holding the version.
extern char const* const schema_v1;

inline constexpr char const* terminal_in = "('succeeded','failed','cancelled')";
// The database's wall clock in Unix milliseconds: leases are measured on one clock whatever the nodes' are.
inline constexpr char const* db_now = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

// Every column in row order ("id, owner, …"), and the same qualified for UPDATE … AS j … RETURNING.
std::string const& columns();
std::string const& j_columns();

struct result_deleter {
  void operator()(PGresult* r) const noexcept { pq::fns().PQclear(r); }
};
using pg_result = std::unique_ptr<PGresult, result_deleter>;

// A statement parameter in text form; nullopt is SQL NULL.
using param = std::optional<std::string>;
param num(std::int64_t v);
param opt_num(std::optional<millis> v);
// A text[] literal (a parameter value, not SQL): every element double-quoted, `"` and `\` escaped.
std::string text_array(std::vector<std::string> const& items);

// Cells of a result: nullopt for NULL (or, for int_at, text that is not an integer).
std::optional<std::string> text_at(PGresult* r, int row, int col);
std::optional<std::int64_t> int_at(PGresult* r, int row, int col);
// Row `i` (every column, in order) as a job; all rows.
job row_of(PGresult* r, int i);
std::vector<job> rows_of(PGresult* r);
// The row count of an INSERT, UPDATE or DELETE.
std::uint32_t affected(PGresult* r);

// The INSERT of every column (lease columns included) and its parameters for a job.
std::string const& insert_sql();
std::vector<param> insert_params(job const& j);

}  // namespace ray::jobs::pg
