// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_MANUAL_CLOCK_HPP
#define CACHEFLIGHT_MANUAL_CLOCK_HPP

#include <boost/asio/wait_traits.hpp>

#include <atomic>
#include <chrono>

namespace cacheflight {

/// A steady clock that moves only when told to, for deterministic tests of
/// timeouts and expiry. It is a global clock: `now()` is static, as the Asio
/// timer machinery requires, so tests that use it must not run in parallel
/// within one process.
///
/// Pass it as the `Clock` parameter of `flight` (and of `cache`). Asio timers on
/// this clock poll it at least once a millisecond of real time, so after
/// `advance()` an `io_context::run_one()` fires any timer that is due.
struct manual_clock {
  using duration = std::chrono::nanoseconds;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<manual_clock>;
  static constexpr bool is_steady = true;

  static time_point now() noexcept { return time_point(duration(ticks().load(std::memory_order_acquire))); }

  /// Moves the clock forward by `d` (which must not be negative).
  static void advance(duration d) noexcept { ticks().fetch_add(d.count(), std::memory_order_acq_rel); }

  /// Sets the clock back to its epoch (for test fixtures).
  static void reset() noexcept { ticks().store(0, std::memory_order_release); }

 private:
  static std::atomic<rep>& ticks() noexcept {
    static std::atomic<rep> t{0};
    return t;
  }
};

}  // namespace cacheflight

// A timer waiting on manual time must not sleep for the manual duration: cap
// each reactor wait so that an advanced clock is noticed promptly.
template <>
struct boost::asio::wait_traits<cacheflight::manual_clock> {
  static cacheflight::manual_clock::duration to_wait_duration(const cacheflight::manual_clock::duration& d) {
    return d > std::chrono::milliseconds(1) ? std::chrono::milliseconds(1) : d;
  }
  static cacheflight::manual_clock::duration to_wait_duration(const cacheflight::manual_clock::time_point& t) {
    return to_wait_duration(t - cacheflight::manual_clock::now());
  }
};

#endif
