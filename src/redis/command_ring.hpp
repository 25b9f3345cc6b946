// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_SRC_REDIS_COMMAND_RING_HPP
#define CACHEFLIGHT_SRC_REDIS_COMMAND_RING_HPP

#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

namespace cacheflight::redis::detail {

// A first-in first-out queue that keeps its storage: a ring whose capacity (a
// power of two) doubles when it is full and never shrinks. A connection's
// command queues go through the same few slots on every round trip, where a
// std::deque of elements this size frees and allocates a block every three.
// Elements are moved when the ring grows: they must not throw doing so.
template <class T>
class ring {
  static_assert(std::is_nothrow_move_constructible_v<T>);

 public:
  template <bool Const>
  class basic_iterator {
    using ring_type = std::conditional_t<Const, const ring, ring>;

   public:
    using reference = std::conditional_t<Const, const T&, T&>;
    basic_iterator(ring_type* r, std::size_t i) noexcept : r_(r), i_(i) {}
    reference operator*() const noexcept { return r_->at(i_); }
    basic_iterator& operator++() noexcept {
      ++i_;
      return *this;
    }
    bool operator==(const basic_iterator& o) const noexcept { return i_ == o.i_; }

   private:
    ring_type* r_;
    std::size_t i_;  // from the front
  };
  using iterator = basic_iterator<false>;
  using const_iterator = basic_iterator<true>;

  ring() noexcept = default;
  ring(ring&& o) noexcept
      : slots_(std::move(o.slots_)),
        mask_(std::exchange(o.mask_, 0)),
        head_(std::exchange(o.head_, 0)),
        size_(std::exchange(o.size_, 0)) {}
  ring(const ring&) = delete;
  ring& operator=(const ring&) = delete;
  ring& operator=(ring&&) = delete;
  ~ring() { clear(); }

  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }
  T& front() noexcept { return at(0); }

  // Throws what allocating a larger ring throws, and then holds what it held.
  void push_back(T&& v) {
    if (size_ == capacity()) grow();
    ::new (static_cast<void*>(slot(size_))) T(std::move(v));
    ++size_;
  }
  // A value-initialized element at the back, built in place. Throws what
  // growing or T's constructor throws, and then holds what it held.
  T& emplace_back() {
    if (size_ == capacity()) grow();
    T* p = ::new (static_cast<void*>(slot(size_))) T();
    ++size_;
    return *p;
  }
  // Removes the element at the back.
  void pop_back() noexcept {
    std::destroy_at(&at(size_ - 1));
    --size_;
  }
  // The element `i` places from the front.
  T& operator[](std::size_t i) noexcept { return at(i); }
  const T& operator[](std::size_t i) const noexcept { return at(i); }
  void pop_front() noexcept {
    std::destroy_at(&at(0));
    head_ = (head_ + 1) & mask_;
    --size_;
  }
  void clear() noexcept {
    while (size_ > 0) pop_front();
  }

  iterator begin() noexcept { return {this, 0}; }
  iterator end() noexcept { return {this, size_}; }
  const_iterator begin() const noexcept { return {this, 0}; }
  const_iterator end() const noexcept { return {this, size_}; }

 private:
  struct alignas(T) storage {
    std::byte bytes[sizeof(T)];
  };

  std::size_t capacity() const noexcept { return slots_ ? mask_ + 1 : 0; }
  storage* slot(std::size_t i) const noexcept { return &slots_[(head_ + i) & mask_]; }
  T& at(std::size_t i) noexcept { return *std::launder(reinterpret_cast<T*>(slot(i))); }
  const T& at(std::size_t i) const noexcept { return *std::launder(reinterpret_cast<const T*>(slot(i))); }

  void grow() {
    const std::size_t cap = slots_ ? 2 * capacity() : 16;
    std::unique_ptr<storage[]> bigger(new storage[cap]);
    for (std::size_t i = 0; i < size_; ++i) {
      ::new (static_cast<void*>(&bigger[i])) T(std::move(at(i)));
      std::destroy_at(&at(i));
    }
    slots_ = std::move(bigger);
    mask_ = cap - 1;
    head_ = 0;
  }

  std::unique_ptr<storage[]> slots_;
  std::size_t mask_ = 0;
  std::size_t head_ = 0;
  std::size_t size_ = 0;
};

}  // namespace cacheflight::redis::detail

#endif
