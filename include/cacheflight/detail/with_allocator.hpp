// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_WITH_ALLOCATOR_HPP
#define CACHEFLIGHT_DETAIL_WITH_ALLOCATOR_HPP

#include <type_traits>
#include <utility>

namespace cacheflight::detail {

// A call `f` whose associated allocator is `alloc`, declared through a nested
// `allocator_type`. `asio::bind_allocator` says the same through a binder that
// specialises every one of Asio's associators, executor included; `post` and
// `dispatch` then treat the binder as a handler that may have an executor of
// its own and wrap it in a work dispatcher: a count of outstanding work taken
// and released, and a second submission to the executor, on every call. This
// one has no associated executor, so it is submitted once, to the executor it
// is given.
template <class F, class Alloc>
struct with_allocator {
  using allocator_type = Alloc;

  F f;
  [[no_unique_address]] Alloc alloc;

  allocator_type get_allocator() const noexcept { return alloc; }
  void operator()() { f(); }
};

template <class F, class Alloc>
with_allocator<std::decay_t<F>, Alloc> allocated(F&& f, const Alloc& alloc) {
  return {std::forward<F>(f), alloc};
}

}  // namespace cacheflight::detail

#endif
