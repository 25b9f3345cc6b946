// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_READER_SLOTS_HPP
#define CACHEFLIGHT_DETAIL_READER_SLOTS_HPP

#include <cacheflight/detail/cpu_relax.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>

namespace cacheflight::detail {

// A small number per thread, for the threads that read caches: the lowest
// free one of `reader_thread_index::tracked` when the thread first asks, given
// back when it exits, so that a pool's threads keep the numbers low. Past that
// many threads alive at once, numbers are handed out again round the range,
// and a thread that reads while its thread-locals are destroyed keeps the
// number it gave back: two threads may then share one (see reader_slots).
class reader_thread_index {
 public:
  static constexpr unsigned tracked = 256;

  static unsigned get() noexcept {
    const unsigned i = mine();
    return i ? i - 1 : assign();
  }

  // One more than the highest number handed out so far (at most `tracked`).
  static unsigned high_water() noexcept { return high().load(std::memory_order_seq_cst); }

 private:
  static constexpr unsigned words = tracked / 64;

  // 0 before the thread's first call, else its number plus one. Trivially
  // destructible, so it stays readable while the thread's other
  // thread-locals are destroyed.
  static unsigned& mine() noexcept {
    thread_local unsigned i = 0;
    return i;
  }
  static std::atomic<std::uint64_t>* used() noexcept {
    static std::atomic<std::uint64_t> bits[words] = {};
    return bits;
  }
  static std::atomic<unsigned>& high() noexcept {
    static std::atomic<unsigned> h{0};
    return h;
  }
  static std::atomic<unsigned>& overflow() noexcept {
    static std::atomic<unsigned> n{0};
    return n;
  }

  // Gives the number back when the thread exits.
  struct release {
    unsigned i;
    ~release() {
      if (i < tracked) used()[i / 64].fetch_and(~(std::uint64_t(1) << (i % 64)), std::memory_order_release);
    }
  };

  [[gnu::noinline, gnu::cold]] static unsigned assign() noexcept {
    unsigned i = tracked;
    for (unsigned w = 0; w < words && i == tracked; ++w) {
      std::uint64_t cur = used()[w].load(std::memory_order_relaxed);
      while (~cur != 0) {
        const unsigned b = unsigned(__builtin_ctzll(~cur));
        if (used()[w].compare_exchange_weak(cur, cur | (std::uint64_t(1) << b), std::memory_order_acquire,
                                            std::memory_order_relaxed)) {
          i = w * 64 + b;
          break;
        }
      }
    }
    unsigned result;
    if (i < tracked) {
      result = i;
      // Sequentially consistent even when it finds the mark high enough
      // already: the mark this thread saw then comes before its first claim
      // of a slot, and so before the load of any writer that missed the claim.
      unsigned h = high().load(std::memory_order_seq_cst);
      while (h < i + 1 && !high().compare_exchange_weak(h, i + 1, std::memory_order_seq_cst, std::memory_order_seq_cst)) {
      }
    } else {
      result = overflow().fetch_add(1, std::memory_order_relaxed) % tracked;
      high().store(tracked, std::memory_order_seq_cst);
    }
    thread_local release give_back{tracked};
    give_back.i = i;  // `tracked` for a shared number: nothing to give back
    mine() = result + 1;
    return result;
  }
};

// Readers of a cache's memory that take no shard lock: each thread reads
// through a slot of its own (one cache line, written by that thread alone
// while it owns it), so that concurrent reads of one shard write no line
// they share. A reader announces the shard it reads in its slot, then checks
// that the shard's lock is free; a writer takes the shard's lock, then waits
// until no slot announces that shard. Both steps are sequentially consistent,
// so at least one of the two sees the other: either the reader backs off (and
// takes the lock as a writer does) or the writer waits for it to finish.
//
// Threads that share a slot (more threads alive than slots) take it by
// compare-and-swap: the one that finds it taken backs off to the lock. The
// slot also counts the hits and misses of the reads made through it.
class reader_slots {
 public:
  static constexpr unsigned count = 64;

  struct alignas(64) slot {
    std::atomic<std::uint32_t> reading{0};  // 0, or one more than the shard being read
    std::atomic<std::uint64_t> hits{0};
    std::atomic<std::uint64_t> misses{0};
  };

  // The slots (`count` cache lines) exist only when `used`: a cache whose
  // reads all lock (LRU) needs none, and then only `add_counts` may be called.
  explicit reader_slots(bool used) : slots_(used ? std::make_unique<slot[]>(count) : nullptr) {}

  // Claims this thread's slot for reading `shard`; null when it is taken (by
  // a thread sharing it). The caller then checks the shard's lock and, if it
  // is held, calls `leave` and takes the lock instead.
  slot* enter(std::uint32_t shard) noexcept {
    slot& s = slots_[reader_thread_index::get() % count];
    std::uint32_t expected = 0;
    if (!s.reading.compare_exchange_strong(expected, shard + 1, std::memory_order_seq_cst,
                                           std::memory_order_relaxed))
      return nullptr;
    return &s;
  }

  // Ends a read: what the reader read happens before what a writer then does.
  static void leave(slot* s) noexcept { s->reading.store(0, std::memory_order_release); }

  // Counts a read made through the slot the caller holds.
  static void count_hit(slot* s) noexcept { s->hits.store(s->hits.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); }
  static void count_miss(slot* s) noexcept {
    s->misses.store(s->misses.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }

  // By a writer holding `shard`'s lock (taken by a sequentially consistent
  // exchange): returns once no reader is in that shard. A reader in it is
  // inside a bounded read (a probe and V's copy).
  void wait_for_readers(std::uint32_t shard) const noexcept {
    const unsigned n = std::min(reader_thread_index::high_water(), count);
    for (unsigned i = 0; i < n; ++i) {
      const std::atomic<std::uint32_t>& r = slots_[i].reading;
      for (unsigned spins = 0; r.load(std::memory_order_seq_cst) == shard + 1; ++spins) {
        if (spins < 1024)
          cpu_relax();
        else
          std::this_thread::yield();
      }
    }
  }

  // The hits and misses counted through the slots.
  void add_counts(std::uint64_t& hits, std::uint64_t& misses) const noexcept {
    if (!slots_) return;
    for (unsigned i = 0; i < count; ++i) {
      hits += slots_[i].hits.load(std::memory_order_relaxed);
      misses += slots_[i].misses.load(std::memory_order_relaxed);
    }
  }

 private:
  std::unique_ptr<slot[]> slots_;
};

}  // namespace cacheflight::detail

#endif
