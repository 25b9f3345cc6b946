// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_SHARD_MUTEX_HPP
#define CACHEFLIGHT_DETAIL_SHARD_MUTEX_HPP

#include <mutex>

namespace cacheflight::detail {

// The lock of one shard. Its critical sections are a few dozen nanoseconds
// long, far shorter than a futex sleep and wake-up, so a contended lock spins
// briefly before it blocks.
class shard_mutex {
 public:
  void lock() {
    for (int i = 0; i < 64; ++i) {
      if (m_.try_lock()) return;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    m_.lock();
  }
  bool try_lock() { return m_.try_lock(); }
  void unlock() { m_.unlock(); }

 private:
  std::mutex m_;
};

}  // namespace cacheflight::detail

#endif
