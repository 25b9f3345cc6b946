// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_SRC_REDIS_STRAND_HOP_HPP
#define CACHEFLIGHT_SRC_REDIS_STRAND_HOP_HPP

// Posting to, and dispatching on, the strand the Redis side keeps its state
// on. `asio::post(strand, f)` and `asio::dispatch(strand, f)` go through
// `strand::execute`, which first asks the inner executor whether it may block;
// Boost 1.81's `any_io_executor` answers that query with a heap allocation,
// one per hop. The strand's own `post` and `dispatch` members queue `f` the
// same way without asking: `post` never runs it inside the call, `dispatch`
// runs it at once when called on the strand. Their memory is Asio's
// per-thread recycled memory, as for the free functions.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/strand.hpp>

#include <memory>
#include <utility>

namespace cacheflight::redis::detail {

// `alloc`: the memory of the strand's queued operation.
template <class F, class Alloc = std::allocator<void>>
void post_on(const boost::asio::strand<boost::asio::any_io_executor>& strand, F&& f, const Alloc& alloc = Alloc()) {
  strand.post(std::forward<F>(f), alloc);
}

template <class F>
void dispatch_on(const boost::asio::strand<boost::asio::any_io_executor>& strand, F&& f) {
  strand.dispatch(std::forward<F>(f), std::allocator<void>());
}

}  // namespace cacheflight::redis::detail

#endif
