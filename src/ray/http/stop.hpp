// ray::http::stop_source — how one coroutine asks a spawned one to stop, without handing it memory it may
// outlive.
//
// The rule it serves (docs/architecture.md, "Spawned work"): a coroutine started with co_spawn owns what it
// touches. Binding a cancellation_signal that lives in someone else's object to a co_spawn is the pattern
// this replaces: Asio keeps the spawned thread's cancellation state inside the signal's handler memory until
// the thread has fully unwound, so the signal's owner dying first is a use after free (the round-one overload
// crash). Instead the spawned coroutine holds the stop_source (by shared state) and races its work against
// wait(); the requester only calls request_stop() on state both of them keep alive.
//
// Threading: confined to the executor the timer was made with.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace ray::http {

class stop_source {
 public:
  explicit stop_source(boost::asio::any_io_executor const& ex)
      : timer_(ex, std::chrono::steady_clock::time_point::max()) {}

  // Idempotent; wakes every wait().
  void request_stop() noexcept {
    if (requested_) return;
    requested_ = true;
    timer_.cancel();
  }
  bool stop_requested() const noexcept { return requested_; }

  // Completes once stop is requested, or when the awaiting operation is cancelled (e.g. by the `||` it is
  // raced in). Never completes inline: check stop_requested() before racing it (Asio 1.81's parallel_group
  // loses the cancellation of an operation launched after one that completed inline).
  boost::asio::awaitable<void> wait() {
    auto cs = co_await boost::asio::this_coro::cancellation_state;
    co_await boost::asio::this_coro::throw_if_cancelled(false);
    while (!requested_ && cs.cancelled() == boost::asio::cancellation_type::none)
      co_await timer_.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
  }

 private:
  boost::asio::steady_timer timer_;
  bool requested_{false};
};

}  // namespace ray::http
