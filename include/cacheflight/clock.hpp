// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_CLOCK_HPP
#define CACHEFLIGHT_CLOCK_HPP

#include <chrono>
#include <ctime>

namespace cacheflight {

/// A monotonic clock read from the kernel's coarse timer
/// (`CLOCK_MONOTONIC_COARSE`): a few nanoseconds a read instead of a few tens,
/// at the resolution of the kernel tick (1 to 4 ms). The cache's default clock:
/// TTLs are checked on every hit, and cache lifetimes are far longer than a tick.
struct coarse_steady_clock {
  using duration = std::chrono::nanoseconds;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<coarse_steady_clock>;
  static constexpr bool is_steady = true;

  static time_point now() noexcept {
    timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return time_point(duration(static_cast<rep>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec));
  }
};

}  // namespace cacheflight

#endif
