// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_SHARD_MUTEX_HPP
#define CACHEFLIGHT_DETAIL_SHARD_MUTEX_HPP

#include <atomic>
#include <chrono>
#include <thread>

namespace cacheflight::detail {

// The lock of one shard, a test-and-set lock. Its critical sections are
// constant-time bookkeeping, a few dozen nanoseconds, so the uncontended path
// is what counts: one exchange to lock and a plain release store to unlock,
// both inlined. Nothing is woken by an unlock; a contended lock waits in
// steps instead: it spins (reading, not writing, the lock's line), then
// yields its thread, then sleeps in naps of `nap`, so a holder that was
// preempted, or that holds the lock for longer (a shard's `clear`, an index
// growing), costs its waiters no spinning core.
class shard_mutex {
 public:
  static constexpr unsigned spins = 128;
  static constexpr unsigned yields = 64;
  static constexpr std::chrono::microseconds nap{50};

  void lock() noexcept {
    if (!locked_.exchange(true, std::memory_order_acquire)) return;
    lock_contended();
  }

  bool try_lock() noexcept {
    return !locked_.load(std::memory_order_relaxed) && !locked_.exchange(true, std::memory_order_acquire);
  }

  void unlock() noexcept { locked_.store(false, std::memory_order_release); }

 private:
  [[gnu::noinline]] void lock_contended() noexcept {
    for (unsigned attempt = 0;; ++attempt) {
      if (attempt < spins) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield");
#endif
      } else if (attempt < spins + yields) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(nap);
      }
      if (try_lock()) return;
    }
  }

  std::atomic<bool> locked_{false};
};

}  // namespace cacheflight::detail

#endif
