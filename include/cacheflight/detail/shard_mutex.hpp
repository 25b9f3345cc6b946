// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_SHARD_MUTEX_HPP
#define CACHEFLIGHT_DETAIL_SHARD_MUTEX_HPP

#include <cacheflight/detail/cpu_relax.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <ctime>
#endif

namespace cacheflight::detail {

// The lock of one shard. Its critical sections are short bookkeeping (a
// probe, a link, an eviction), so the uncontended path is what counts: one
// atomic exchange to lock, and to unlock a release store followed by a
// relaxed load of the count of sleeping waiters (no locked instruction), both
// inlined; only when a waiter sleeps does the unlock make a system call to
// wake one.
//
// A thread that finds the lock taken spins `spins` times, reading the lock's
// line, then counts itself among the sleepers and sleeps on the lock word
// (a futex) until an unlock wakes it or `backstop` passes, then competes for
// the lock again. Because the unlock orders no fence between its store and
// its load, it can read the sleeper count before a new sleeper's increment
// shows while that sleeper still saw the lock taken: such a sleeper misses
// its wake-up, and its sleep ends at a later unlock's wake-up or after
// `backstop`.
// Elsewhere than Linux, the sleeping waiter naps for `backstop` at a time.
class shard_mutex {
 public:
  static constexpr unsigned spins = 128;
  static constexpr std::chrono::microseconds backstop{1000};

  // The exchange that takes the lock is sequentially consistent: a cache's
  // lock-free readers check the lock after announcing themselves, and the
  // holder looks for them after taking it (see reader_slots).
  void lock() noexcept {
    if (!locked_.exchange(1, std::memory_order_seq_cst)) return;
    lock_contended();
  }

  bool try_lock() noexcept {
    return !locked_.load(std::memory_order_relaxed) && !locked_.exchange(1, std::memory_order_seq_cst);
  }

  // Whether the lock is held now, read in the sequentially consistent order
  // of the exchanges that take it.
  bool held() const noexcept { return locked_.load(std::memory_order_seq_cst) != 0; }

  void unlock() noexcept {
    locked_.store(0, std::memory_order_release);
    if (sleepers_.load(std::memory_order_relaxed) != 0) wake();
  }

  // Threads sleeping for the lock now (for tests; stale at once).
  std::uint32_t sleepers() const noexcept { return sleepers_.load(std::memory_order_relaxed); }

 private:
  [[gnu::noinline]] void lock_contended() noexcept {
    for (unsigned i = 0; i < spins; ++i) {
      cpu_relax();
      if (try_lock()) return;
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (locked_.exchange(1, std::memory_order_seq_cst)) sleep();
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }

  // Sleeps while the lock word reads taken, until woken or for `backstop`.
  void sleep() noexcept {
#if defined(__linux__)
    constexpr auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(backstop).count();
    const timespec ts{static_cast<std::time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&locked_), FUTEX_WAIT_PRIVATE, 1u, &ts, nullptr, 0);
#else
    std::this_thread::sleep_for(backstop);
#endif
  }

  [[gnu::noinline]] void wake() noexcept {
#if defined(__linux__)
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&locked_), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
#endif
  }

  std::atomic<std::uint32_t> locked_{0};
  std::atomic<std::uint32_t> sleepers_{0};
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
                std::atomic<std::uint32_t>::is_always_lock_free);
};

}  // namespace cacheflight::detail

#endif
