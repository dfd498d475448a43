// The libpq loader (libpq.hpp).
#include "ray/jobs/libpq.hpp"

#include <dlfcn.h>

#include <type_traits>

#include <cstdio>
#include <cstdlib>

namespace ray::jobs::pq {

namespace {

ray::error unloadable(char const* library, std::string why) {
  return ray::error{errc::async_queue_storage_unavailable,
                    std::string("asyncQueue.store is postgres but ") + library +
                        " could not be loaded: " + std::move(why) + "; install the libpq5 package"};
}

struct loaded {
  result<functions> table;
};

loaded const& instance() {
  static loaded const l{load_from(soname)};
  return l;
}

}  // namespace

result<functions> load_from(char const* library) {
  ::dlerror();  // clear a stale message
  void* handle = ::dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    char const* why = ::dlerror();
    return unloadable(library, why ? why : "dlopen failed");
  }
  functions f;
  char const* missing = nullptr;
  auto resolve = [&](auto& slot, char const* name) {
    if (missing) return;
    void* sym = ::dlsym(handle, name);
    if (!sym) {
      missing = name;
      return;
    }
    // POSIX guarantees a function pointer round-trips through void* from dlsym.
    slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(sym);
  };
#define RAY_LIBPQ_RESOLVE(name) resolve(f.name, #name);
  RAY_LIBPQ_FUNCTIONS(RAY_LIBPQ_RESOLVE)
#undef RAY_LIBPQ_RESOLVE
  if (missing) {
    ::dlclose(handle);
    return unloadable(library, std::string("it has no function ") + missing + " (not libpq, or too old)");
  }
  return f;  // the handle stays open for the life of the process
}

result<functions const*> load() {
  auto const& l = instance();
  if (!l.table) return l.table.error();
  return &*l.table;
}

functions const& fns() noexcept {
  auto const& l = instance();
  if (!l.table) {
    std::fprintf(stderr, "ray: libpq used before it was loaded\n");
    std::abort();
  }
  return *l.table;
}

}  // namespace ray::jobs::pq
