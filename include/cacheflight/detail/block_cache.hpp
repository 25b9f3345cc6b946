// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_BLOCK_CACHE_HPP
#define CACHEFLIGHT_DETAIL_BLOCK_CACHE_HPP

#include <cstddef>
#include <new>
#include <type_traits>
#include <utility>

namespace cacheflight::detail {

// Whether freed blocks are kept (below). Under AddressSanitizer they are not,
// so that every block's lifetime and exact size stay visible to it. The
// switch follows how each translation unit is compiled; blocks are plain
// `operator new` memory either way, so units compiled both ways may free
// each other's.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool block_caching = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool block_caching = false;
#else
inline constexpr bool block_caching = true;
#endif
#else
inline constexpr bool block_caching = true;
#endif

// A thread's cache of freed memory blocks of one size, for the library's
// per-operation memory (waiters of handlers without an allocator of their
// own, flight entries, queued steps; see `block_allocator`). Many callers of
// one key make and free their waiters together, more of them than Asio's
// recycling keeps (two blocks a thread for each purpose) or the heap's
// per-thread cache does: a block freed here is kept for the next one of its
// size made on the same thread, up to `capacity` blocks (a mebibyte) a
// thread for each size; past that, and once the thread's cache is destroyed,
// blocks go back to the heap. A block may be freed on another thread than
// the one that made it: each comes from `operator new(Size)`. A thread whose
// first use of a size comes while its thread-local objects are being
// destroyed (the main thread's, during static destruction) may keep a
// block until the process ends.
template <std::size_t Size>
class block_cache {
  static_assert(Size >= sizeof(void*) && Size % __STDCPP_DEFAULT_NEW_ALIGNMENT__ == 0);

 public:
  static constexpr bool enabled = block_caching;
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

// The threads' block caches by size, chosen at run time: `bytes` of at most
// `largest_cached_block`, at the default new alignment.
inline constexpr std::size_t largest_cached_block = 256;

template <std::size_t... I>
void* allocate_cached_block(std::size_t bytes, std::index_sequence<I...>) {
  using fn = void* (*)();
  static constexpr fn table[] = {&block_cache<(I + 1) * __STDCPP_DEFAULT_NEW_ALIGNMENT__>::allocate...};
  return table[(bytes - 1) / __STDCPP_DEFAULT_NEW_ALIGNMENT__]();
}
template <std::size_t... I>
void deallocate_cached_block(void* p, std::size_t bytes, std::index_sequence<I...>) noexcept {
  using fn = void (*)(void*) noexcept;
  static constexpr fn table[] = {&block_cache<(I + 1) * __STDCPP_DEFAULT_NEW_ALIGNMENT__>::deallocate...};
  table[(bytes - 1) / __STDCPP_DEFAULT_NEW_ALIGNMENT__](p);
}
using cached_block_sizes = std::make_index_sequence<largest_cached_block / __STDCPP_DEFAULT_NEW_ALIGNMENT__>;

// An allocator over the threads' block caches, for the library's own
// bookkeeping and for the operations it starts with handlers of its own: an
// allocation of up to `largest_cached_block` bytes (at the default new
// alignment) comes from the `block_cache` of its rounded size; anything else,
// and everything while blocks are not kept, from `operator new`, at its
// exact size. Every instance is interchangeable with every other.
template <class T = void>
class block_allocator {
 public:
  using value_type = T;

  block_allocator() noexcept = default;
  template <class U>
  block_allocator(const block_allocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    if (n > std::size_t(-1) / sizeof(T)) throw std::bad_array_new_length();
    const std::size_t bytes = n * sizeof(T);
    if constexpr (over_aligned) {
      return static_cast<T*>(::operator new(bytes, std::align_val_t(alignof(T))));
    } else {
      if constexpr (block_caching)
        if (bytes - 1 < largest_cached_block) return static_cast<T*>(allocate_cached_block(bytes, cached_block_sizes{}));
      return static_cast<T*>(::operator new(bytes));
    }
  }

  void deallocate(T* p, std::size_t n) noexcept {
    const std::size_t bytes = n * sizeof(T);
    if constexpr (over_aligned) {
      ::operator delete(static_cast<void*>(p), bytes, std::align_val_t(alignof(T)));
    } else {
      if constexpr (block_caching)
        if (bytes - 1 < largest_cached_block) return deallocate_cached_block(p, bytes, cached_block_sizes{});
      ::operator delete(static_cast<void*>(p), bytes);
    }
  }

  template <class U>
  bool operator==(const block_allocator<U>&) const noexcept {
    return true;
  }

 private:
  static constexpr bool over_aligned = alignof(T) > __STDCPP_DEFAULT_NEW_ALIGNMENT__;
};

}  // namespace cacheflight::detail

#endif
