// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_FLIGHT_WAITER_HPP
#define CACHEFLIGHT_DETAIL_FLIGHT_WAITER_HPP

// One caller of `flight::async_run`: its completion handler, allocated with
// the handler's allocator, completed on the handler's executor (with
// outstanding work held there meanwhile), and the two ways it may leave before
// the work completes: its cancellation slot and its timeout timer. Included by
// flight_impl.hpp, after `flight_state`.

#include <cacheflight/detail/block_cache.hpp>
#include <cacheflight/detail/with_allocator.hpp>

#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

namespace cacheflight::detail {

// The concrete waiter: holds the caller's completion handler, allocated with
// the handler's associated allocator.
template <class V, class Clock, class Handler>
class waiter_op final : public flight_waiter<V> {
 public:
  using state_type = flight_state<V, Clock>;
  struct no_executor {};
  using timer_type = typename state_type::timer_type;
  using allocator_type = asio::associated_allocator_t<Handler>;
  using handler_executor = asio::associated_executor_t<Handler, asio::any_io_executor>;
  // Whether the handler names an executor of its own.
  static constexpr bool own_executor =
      !requires { typename asio::associated_executor<Handler, asio::any_io_executor>::asio_associated_executor_is_unspecialised; };
  using work_type = std::decay_t<decltype(asio::prefer(std::declval<const handler_executor&>(),
                                                       asio::execution::outstanding_work.tracked))>;

  template <class H>
  static waiter_op* create(H&& h, const asio::any_io_executor& io_ex) {
    auto a = node_allocator(asio::get_associated_allocator(h));
    waiter_op* p = std::allocator_traits<decltype(a)>::allocate(a, 1);
    try {
      return ::new (static_cast<void*>(p)) waiter_op(std::forward<H>(h), io_ex);
    } catch (...) {
      std::allocator_traits<decltype(a)>::deallocate(a, p, 1);
      throw;
    }
  }

  Handler& handler() noexcept { return *handler_; }

  // Called in the initiating function, before the waiter is visible to others.
  void prepare(state_type& st, std::chrono::nanoseconds timeout, const asio::any_io_executor& io_ex) {
    auto slot = asio::get_associated_cancellation_slot(*handler_);
    if (slot.is_connected() || timeout != no_timeout) {
      st_ = st.shared_from_this();
      this->can_leave = true;
    }
    if (slot.is_connected()) {
      slot_ = slot;
      slot.template emplace<cancel_handler>(this);
    }
    if (timeout != no_timeout) {
      using talloc_t = typename std::allocator_traits<allocator_type>::template rebind_alloc<timer_type>;
      talloc_t a(alloc_);
      timer_type* t = std::allocator_traits<talloc_t>::allocate(a, 1);
      timer_ = ::new (static_cast<void*>(t)) timer_type(io_ex);
      timer_->expires_after(std::chrono::duration_cast<typename Clock::duration>(timeout));
    }
  }

  // Called under the shard lock, once the waiter is linked, so that the
  // timer is armed before anyone else can complete the waiter.
  void arm_timer_locked() {
    if (!timer_) return;
    refs_.fetch_add(1, std::memory_order_relaxed);
    timer_wait on_wait(this);
    // The timer's wait is bookkeeping of this waiter too: the handler's allocator.
    if constexpr (std::is_same_v<allocator_type, std::allocator<void>>)
      timer_->async_wait(std::move(on_wait));
    else
      timer_->async_wait(asio::bind_allocator(alloc_, std::move(on_wait)));
  }

 private:
  struct cancel_handler {
    waiter_op* self;
    void operator()(asio::cancellation_type_t t) {
      if ((t & (asio::cancellation_type::terminal | asio::cancellation_type::partial |
                asio::cancellation_type::total)) != asio::cancellation_type::none)
        self->st_->leave(self, leave_reason::cancelled);
    }
  };

  // The timer's wait handler owns the reference `arm_timer_locked` took: it
  // gives it back when it runs, or when it is destroyed without running
  // (its io_context shut down first).
  struct timer_wait {
    waiter_op* self;
    explicit timer_wait(waiter_op* s) noexcept : self(s) {}
    timer_wait(timer_wait&& o) noexcept : self(std::exchange(o.self, nullptr)) {}
    timer_wait& operator=(timer_wait&&) = delete;
    ~timer_wait() {
      if (self) self->release();
    }
    void operator()(const boost::system::error_code& ec) {
      if (!ec) self->st_->leave(self, leave_reason::timed_out);
      std::exchange(self, nullptr)->release();
    }
  };

  template <class H>
  waiter_op(H&& h, const asio::any_io_executor& io_ex)
      : flight_waiter<V>(&waiter_op::do_complete), alloc_(asio::get_associated_allocator(h)) {
    if constexpr (own_executor) {
      const handler_executor ex = asio::get_associated_executor(h, io_ex);
      if constexpr (std::is_same_v<handler_executor, asio::any_io_executor>) {
        same_executor_ = ex == io_ex;
      } else {
        auto* t = io_ex.template target<handler_executor>();
        same_executor_ = t && *t == ex;
      }
      // The flight's own context is kept busy by the work: track only foreign
      // executors. The tracked executor is also where the completion goes.
      if (!same_executor_) work_.emplace(asio::prefer(ex, asio::execution::outstanding_work.tracked));
    }
    handler_.emplace(std::forward<H>(h));
  }

  static void do_complete(flight_waiter<V>* base, const std::exception_ptr& ep, const std::shared_ptr<const V>& v,
                          const asio::any_io_executor& io_ex, delivery d) {
    auto* self = static_cast<waiter_op*>(base);
    if (self->timer_) self->timer_->cancel();
    if (d == delivery::direct && self->same_executor_) {
      self->finish(ep, v.get());
      return;
    }
    completion fn{self, ep, v};
    if constexpr (own_executor) {
      if (!self->same_executor_) return submit(*self->work_, std::move(fn), self->alloc_, d);
    }
    submit(io_ex, std::move(fn), self->alloc_, d);
  }

  template <class Ex, class Fn>
  static void submit(const Ex& ex, Fn&& fn, const allocator_type& alloc, delivery d) {
    if constexpr (std::is_same_v<allocator_type, std::allocator<void>>) {
      if (d == delivery::post) asio::post(ex, std::forward<Fn>(fn)); else asio::dispatch(ex, std::forward<Fn>(fn));
    } else {
      auto bound = allocated(std::forward<Fn>(fn), alloc);
      if (d == delivery::post) asio::post(ex, std::move(bound)); else asio::dispatch(ex, std::move(bound));
    }
  }

  // The call that finishes the waiter on its executor. It owns the waiter
  // until it runs: one destroyed unrun (its io_context shut down) destroys
  // the waiter with its handler, as Asio destroys its own operations.
  struct completion {
    waiter_op* self;
    std::exception_ptr ep;
    std::shared_ptr<const V> v;

    completion(waiter_op* s, std::exception_ptr e, std::shared_ptr<const V> value) noexcept
        : self(s), ep(std::move(e)), v(std::move(value)) {}
    completion(completion&& o) noexcept : self(std::exchange(o.self, nullptr)), ep(std::move(o.ep)), v(std::move(o.v)) {}
    completion& operator=(completion&&) = delete;
    ~completion() {
      if (self) self->abandon();
    }
    void operator()() { std::exchange(self, nullptr)->finish(ep, v.get()); }
  };

  // Destroys the waiter and its handler without calling it.
  void abandon() noexcept {
    if (slot_.is_connected()) slot_.clear();
    if constexpr (own_executor) work_.reset();
    handler_.reset();
    release();
  }

  // Runs on the handler's executor.
  void finish(const std::exception_ptr& ep, const V* v) {
    if (slot_.is_connected()) slot_.clear();
    Handler h(std::move(*handler_));
    if constexpr (own_executor) {
      if (work_) {
        work_type work(std::move(*work_));  // released after the upcall
        release_and_invoke(std::move(h), ep, v);
        return;
      }
    }
    release_and_invoke(std::move(h), ep, v);
  }

  void release_and_invoke(Handler&& h, const std::exception_ptr& ep, const V* v) {
    if (ep) {
      std::exception_ptr e = ep;
      release();  // free the node before the upcall, as Asio operations do
      std::move(h)(std::move(e), V{});
    } else if constexpr (std::is_nothrow_copy_constructible_v<V>) {
      V value(*v);
      release();
      std::move(h)(std::exception_ptr{}, std::move(value));
    } else {
      // This waiter's copy of the result may throw: it then completes with
      // that exception (the other waiters' copies are their own).
      std::optional<V> value;
      std::exception_ptr copy_failed;
      try {
        value.emplace(*v);
      } catch (...) {
        copy_failed = std::current_exception();
      }
      release();
      if (copy_failed)
        std::move(h)(std::move(copy_failed), V{});
      else
        std::move(h)(std::exception_ptr{}, std::move(*value));
    }
  }

  void release() noexcept {
    // Only an armed timer shares the node; without one the count is always 1.
    if (timer_ && refs_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    if (timer_) {
      using talloc_t = typename std::allocator_traits<allocator_type>::template rebind_alloc<timer_type>;
      talloc_t ta(alloc_);
      timer_->~timer_type();
      std::allocator_traits<talloc_t>::deallocate(ta, timer_, 1);
    }
    auto a = node_allocator(alloc_);
    this->~waiter_op();
    std::allocator_traits<decltype(a)>::deallocate(a, this, 1);
  }

  // The waiter's own memory: the handler's allocator, or for a handler
  // without one, the threads' block caches (its block is kept by the thread
  // that frees it, for the next waiter made there; see `block_cache`).
  static auto node_allocator([[maybe_unused]] const allocator_type& a) noexcept {
    if constexpr (std::is_same_v<allocator_type, std::allocator<void>>)
      return block_allocator<waiter_op>{};
    else
      return typename std::allocator_traits<allocator_type>::template rebind_alloc<waiter_op>(a);
  }

  [[no_unique_address]] allocator_type alloc_;
  // A foreign handler executor, tracked: outstanding work there until the
  // handler has run, and where its completion is submitted. Empty for a
  // handler on the flight's own executor or without one of its own (the
  // flight's executor serves it).
  [[no_unique_address]] std::conditional_t<own_executor, std::optional<work_type>, no_executor> work_;
  std::optional<Handler> handler_;
  asio::cancellation_slot slot_;
  std::shared_ptr<state_type> st_;  // set only when a slot or timer can call back
  timer_type* timer_ = nullptr;
  std::atomic<unsigned> refs_{1};
  bool same_executor_ = true;
};

}  // namespace cacheflight::detail

#endif
