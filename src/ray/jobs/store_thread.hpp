// Private to the jobs component: how a job store runs a call on its own thread and completes the awaiting
// coroutine on that coroutine's executor. The SQLite and the PostgreSQL store both queue `task<Store>`s to
// their thread; `submit` is how a call gets there.
#pragma once

#include "ray/jobs/jobs.hpp"

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <memory>
#include <utility>

namespace ray::jobs::store_thread {

// A task for the store thread. Move-only (the awaiting coroutine's handler is).
template <class Store>
struct task {
  virtual ~task() = default;
  virtual void run(Store& s) = 0;
  virtual bool is_insert() const noexcept { return false; }
};

template <class Handler>
auto work_of(Handler const& h) {
  return boost::asio::prefer(boost::asio::get_associated_executor(h),
                             boost::asio::execution::outstanding_work.tracked);
}

// The awaiting coroutine's completion: posted to its own executor, holding outstanding work on it from the
// start, so io_context::run does not return while a store call is in progress.
template <class R>
struct completion_base {
  virtual ~completion_base() = default;
  virtual void complete(R r) = 0;
};

template <class R, class Handler>
struct completion final : completion_base<R> {
  explicit completion(Handler h) : handler(std::move(h)), work(work_of(handler)) {}
  void complete(R r) override {
    boost::asio::post(work,
                      [h = std::move(handler), r = std::move(r)]() mutable { std::move(h)(std::move(r)); });
  }
  Handler handler;
  decltype(work_of(std::declval<Handler const&>())) work;
};

// A call onto the store thread: `fn` runs there, its value completes the awaiting coroutine.
template <class Store, class R, class F>
struct call_task final : task<Store> {
  explicit call_task(F f) : fn(std::move(f)) {}
  void run(Store& s) override { done->complete(fn(s)); }
  F fn;
  std::unique_ptr<completion_base<R>> done;
};

// One insert of a group commit: the store thread takes every waiting insert at once and completes each.
template <class Store>
struct insert_task final : task<Store> {
  explicit insert_task(job j) : item(std::move(j)) {}
  bool is_insert() const noexcept override { return true; }
  void run(Store&) override {}
  void complete(result<insert_outcome> r) { done->complete(std::move(r)); }
  job item;
  std::unique_ptr<completion_base<result<insert_outcome>>> done;
};

// Queues `t` (a call_task or insert_task completing with R) to `s`'s thread; the awaitable completes with
// its value. Not a coroutine, on purpose: the caller moved the arguments (strings, jobs) into the heap task
// and only pointers cross into Asio's coroutine machinery — GCC 12 mis-copies class-type prvalues passed by
// value into a coroutine, Asio's async_initiate initiation included (docs/architecture.md, compiler notes).
// The queue owns the task once the awaitable is awaited (callers always co_await at once).
template <class R, class Store, class Task>
boost::asio::awaitable<R> submit(Store* s, Task* t) {
  return boost::asio::async_initiate<decltype(boost::asio::use_awaitable), void(R)>(
      [s, t](auto handler) {
        t->done = std::make_unique<completion<R, decltype(handler)>>(std::move(handler));
        s->push(std::unique_ptr<task<Store>>(t));
      },
      boost::asio::use_awaitable);
}

}  // namespace ray::jobs::store_thread
