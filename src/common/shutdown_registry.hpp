// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_SRC_COMMON_SHUTDOWN_REGISTRY_HPP
#define CACHEFLIGHT_SRC_COMMON_SHUTDOWN_REGISTRY_HPP

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/execution/context.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/query.hpp>

#include <memory>
#include <mutex>
#include <vector>

namespace cacheflight::detail {

// Objects that keep completion handlers of their own (queues of commands or
// writes) register here. When their execution context shuts down, no handler
// will ever run again: each live object's `drop_handlers()` destroys the ones
// it holds, releasing what they own (ownership cycles through the object
// included), as Asio does with the operations it holds itself.
template <class T>
class shutdown_registry final : public boost::asio::execution_context::service {
 public:
  using key_type = shutdown_registry;
  static boost::asio::execution_context::id id;

  explicit shutdown_registry(boost::asio::execution_context& ctx) : boost::asio::execution_context::service(ctx) {}

  void add(const std::shared_ptr<T>& p) {
    std::lock_guard lk(mu_);
    std::erase_if(live_, [](const auto& w) { return w.expired(); });
    live_.push_back(p);
  }

 private:
  void shutdown() override {
    std::vector<std::shared_ptr<T>> alive;
    {
      std::lock_guard lk(mu_);
      for (auto& w : live_)
        if (auto p = w.lock()) alive.push_back(std::move(p));
      live_.clear();
    }
    for (auto& p : alive) p->drop_handlers();
  }

  std::mutex mu_;
  std::vector<std::weak_ptr<T>> live_;
};

template <class T>
boost::asio::execution_context::id shutdown_registry<T>::id;

// Registers `p` with the context of `ex`.
template <class T>
void drop_handlers_at_shutdown(const boost::asio::any_io_executor& ex, const std::shared_ptr<T>& p) {
  boost::asio::use_service<shutdown_registry<T>>(boost::asio::query(ex, boost::asio::execution::context)).add(p);
}

}  // namespace cacheflight::detail

#endif
