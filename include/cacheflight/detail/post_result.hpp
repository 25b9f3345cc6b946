// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_POST_RESULT_HPP
#define CACHEFLIGHT_DETAIL_POST_RESULT_HPP

#include <cacheflight/detail/ready_queue.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <memory>
#include <type_traits>
#include <utility>

namespace cacheflight::detail {

// Completes a handler with an immediate result: posted straight to the
// handler's associated executor (`fallback` when it has none), so a caller on
// another context is not routed through the cache's, and the handler never
// runs inside the initiating function. A handler bound to the io_context that
// `ready` serves is queued on `ready`, to run in its next round.
template <class Handler, class... Args>
void post_result(ready_queue* ready, const boost::asio::any_io_executor& fallback, Handler&& h, Args&&... args) {
  namespace asio = boost::asio;
  // A handler without an executor of its own uses `fallback` in place, not a
  // copy of it (a type-erased copy and its destruction on every completion).
  // Any other is taken by value: it may refer into the handler, which moves.
  using assoc = asio::associated_executor<std::decay_t<Handler>, asio::any_io_executor>;
  decltype(auto) ex = [&]() -> decltype(auto) {
    if constexpr (requires { typename assoc::asio_associated_executor_is_unspecialised; })
      return (fallback);
    else
      return asio::associated_executor_t<std::decay_t<Handler>, asio::any_io_executor>(
          asio::get_associated_executor(h, fallback));
  }();
  if constexpr (std::is_same_v<std::remove_cvref_t<decltype(ex)>, asio::any_io_executor> &&
                std::is_same_v<asio::associated_allocator_t<std::decay_t<Handler>>, std::allocator<void>>) {
    // The handler's executor is an io_context's: post the call to that context
    // directly, skipping the type-erased executor and its work dispatcher. The
    // handler still runs on (a thread running) its associated executor.
    if (auto* io = ex.template target<asio::io_context::executor_type>()) {
      auto call = [h = std::forward<Handler>(h), ... a = std::forward<Args>(args)]() mutable {
        std::move(h)(std::move(a)...);
      };
      if (ready && &io->context() == &ready->context())
        ready->push(std::move(call));
      else
        asio::post(*io, std::move(call));
      return;
    }
  }
  asio::post(ex, asio::append(std::forward<Handler>(h), std::forward<Args>(args)...));
}

template <class Handler, class... Args>
void post_result(const boost::asio::any_io_executor& fallback, Handler&& h, Args&&... args) {
  post_result(nullptr, fallback, std::forward<Handler>(h), std::forward<Args>(args)...);
}

}  // namespace cacheflight::detail

#endif
