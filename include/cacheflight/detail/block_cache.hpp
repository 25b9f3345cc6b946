// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_BLOCK_CACHE_HPP
#define CACHEFLIGHT_DETAIL_BLOCK_CACHE_HPP

#include <cstddef>
#include <new>

namespace cacheflight::detail {

// A thread's cache of freed memory blocks of one size, for the waiters of
// handlers without an allocator of their own. Many callers of one key make
// and free their waiters together, more of them than Asio's recycling keeps
// (two blocks a thread) or the heap's per-thread cache does: a block freed
// here is kept for the next one made on the same thread, up to `capacity`
// blocks (a mebibyte) a thread; past that, and after the thread's cache is
// destroyed, blocks go back to the heap. A block may be freed on another
// thread than the one that made it: each comes from `operator new(Size)`.
// Under AddressSanitizer nothing is kept, so that every block's lifetime
// stays visible to it.
template <std::size_t Size>
class block_cache {
  static_assert(Size >= sizeof(void*) && Size % __STDCPP_DEFAULT_NEW_ALIGNMENT__ == 0);

 public:
#if defined(__SANITIZE_ADDRESS__)
  static constexpr bool enabled = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  static constexpr bool enabled = false;
#else
  static constexpr bool enabled = true;
#endif
#else
  static constexpr bool enabled = true;
#endif

  static constexpr std::size_t capacity = (std::size_t(1) << 20) / Size;

  static void* allocate() {
    if constexpr (enabled) {
      if (!closed()) {
        list& l = local();
        if (free_block* b = l.head) {
          l.head = b->next;
          --l.count;
          b->~free_block();
          return b;
        }
      }
    }
    return ::operator new(Size);
  }

  static void deallocate(void* p) noexcept {
    if constexpr (enabled) {
      if (!closed()) {
        list& l = local();
        if (l.count < capacity) {
          l.head = ::new (p) free_block{l.head};
          ++l.count;
          return;
        }
      }
    }
    ::operator delete(p, Size);
  }

  // Blocks kept by the calling thread (for tests and benchmarks).
  static std::size_t kept() noexcept { return enabled && !closed() ? local().count : 0; }

 private:

  struct free_block {
    free_block* next;
  };

  struct list {
    free_block* head = nullptr;
    std::size_t count = 0;
    list() = default;
    list(const list&) = delete;
    list& operator=(const list&) = delete;
    ~list() {
      closed() = true;
      while (free_block* b = head) {
        head = b->next;
        b->~free_block();
        ::operator delete(static_cast<void*>(b), Size);
      }
    }
  };

  static list& local() noexcept {
    thread_local list l;
    return l;
  }
  // Trivially destructible: readable until the thread ends.
  static bool& closed() noexcept {
    thread_local bool c = false;
    return c;
  }
};

// The block size that serves an object of `n` bytes: a multiple of the
// default new alignment.
constexpr std::size_t block_size_for(std::size_t n) noexcept {
  constexpr std::size_t a = __STDCPP_DEFAULT_NEW_ALIGNMENT__;
  return (n + a - 1) / a * a;
}

}  // namespace cacheflight::detail

#endif
