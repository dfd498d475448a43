// libpq, loaded on first use: Ray does not link it. Linking libpq.so.5 pulls in some twenty shared libraries
// (its TLS, Kerberos and LDAP stacks) and megabytes of resident memory at every start, for a store almost no
// deployment uses. `load()` dlopen()s it (RTLD_NOW | RTLD_LOCAL) the first time the PostgreSQL store opens
// and resolves exactly the functions the store calls into one table; <libpq-fe.h> is included for its types
// only.
#pragma once

#include "ray/core/core.hpp"

#include <libpq-fe.h>

namespace ray::jobs::pq {

// Every libpq function the store uses. X(name) for each.
// clang-format off
#define RAY_LIBPQ_FUNCTIONS(X) \
  X(PQclear) \
  X(PQcmdTuples) \
  X(PQconnectPoll) \
  X(PQconnectStartParams) \
  X(PQconnectdbParams) \
  X(PQconsumeInput) \
  X(PQdb) \
  X(PQerrorMessage) \
  X(PQexec) \
  X(PQexecParams) \
  X(PQfinish) \
  X(PQfreemem) \
  X(PQgetisnull) \
  X(PQgetlength) \
  X(PQgetvalue) \
  X(PQhost) \
  X(PQnotifies) \
  X(PQntuples) \
  X(PQport) \
  X(PQresultErrorField) \
  X(PQresultStatus) \
  X(PQsetNoticeProcessor) \
  X(PQsocket) \
  X(PQstatus)
// clang-format on

// The resolved functions, typed from <libpq-fe.h>; member names are the libpq names (`fns().PQexec(...)`).
struct functions {
#define RAY_LIBPQ_MEMBER(name) decltype(&::name) name{nullptr};
  RAY_LIBPQ_FUNCTIONS(RAY_LIBPQ_MEMBER)
#undef RAY_LIBPQ_MEMBER
};

// The shared object `load()` opens.
inline constexpr char const* soname = "libpq.so.5";

// Loads libpq.so.5 once per process (thread-safe; later calls return the same table, or the same error).
// The error names what is missing and how to fix it ("… install the libpq5 package"). Never unloaded.
result<functions const*> load();

// The table of a successful `load()`; calling it before one is a programming error (aborts).
functions const& fns() noexcept;

// What `load()` does, for any shared object (tests: a missing library, a library without the symbols). On
// failure the handle is closed again.
result<functions> load_from(char const* library);

}  // namespace ray::jobs::pq
