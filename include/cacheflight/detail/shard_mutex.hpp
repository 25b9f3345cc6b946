// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_SHARD_MUTEX_HPP
#define CACHEFLIGHT_DETAIL_SHARD_MUTEX_HPP

#include <atomic>
#include <cstdint>

namespace cacheflight::detail {

// The lock of one shard: a three-state futex lock (unlocked, locked, locked
// with waiters) over std::atomic wait/notify. Its critical sections are a few
// dozen nanoseconds, far shorter than a sleep and wake-up, so a contended lock
// spins briefly before it blocks; the uncontended path is one compare-exchange
// to lock and one exchange to unlock, both inlined.
class shard_mutex {
 public:
  void lock() noexcept {
    std::uint32_t expected = 0;
    if (state_.compare_exchange_strong(expected, 1, std::memory_order_acquire, std::memory_order_relaxed)) return;
    lock_contended();
  }

  bool try_lock() noexcept {
    std::uint32_t expected = 0;
    return state_.compare_exchange_strong(expected, 1, std::memory_order_acquire, std::memory_order_relaxed);
  }

  void unlock() noexcept {
    if (state_.exchange(0, std::memory_order_release) == 2) wake();
  }

 private:
  [[gnu::noinline]] void wake() noexcept { state_.notify_one(); }

  [[gnu::noinline]] void lock_contended() noexcept {
    for (int i = 0; i < 64; ++i) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
      if (state_.load(std::memory_order_relaxed) == 0 && try_lock()) return;
    }
    // Announce a waiter (state 2) and sleep until the holder releases.
    while (state_.exchange(2, std::memory_order_acquire) != 0) state_.wait(2, std::memory_order_relaxed);
  }

  std::atomic<std::uint32_t> state_{0};
};

}  // namespace cacheflight::detail

#endif
