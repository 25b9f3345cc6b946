// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_FLIGHT_HPP
#define CACHEFLIGHT_FLIGHT_HPP

#include <cacheflight/detail/flight_impl.hpp>
#include <cacheflight/error.hpp>
#include <cacheflight/event.hpp>
#include <cacheflight/options.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/execution_context.hpp>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace cacheflight {

namespace detail {
template <class V, class Clock>
class cache_state;
}  // namespace detail

/// Request coalescing ("singleflight") on an Asio executor.
///
/// While work for a key is in flight, every further `async_run` for that key
/// joins it instead of starting it again; when the work completes, each caller
/// receives its own copy of the result. Nothing is kept afterwards: a call made
/// after completion starts the work anew. (`cache` keeps results.)
///
/// @tparam V      The result type. It must be copy constructible (each waiter gets
///                a copy) and default constructible (the value argument that
///                accompanies an error).
/// @tparam Clock  The clock of the timeout timers and event durations. Tests use
///                `manual_clock`; production code keeps the default.
///
/// @par Threads
/// Every member function may be called from any thread, concurrently. State is
/// kept in `flight_options::shards` partitions, each guarded by a lock held only
/// for constant-time bookkeeping (`clear` and `forget_all` hold it for time
/// linear in the partition's keys); no user code (work functions, handlers, event
/// sinks) ever runs under it. The recommended setup for a multi-core server is
/// one `io_context(1)` (concurrency hint 1) per thread: the work then runs on it
/// without a strand. Callers on several threads may share one flight; give it
/// `shards` (16 or more) when they are many.
///
/// @par Lifetime
/// The flight may be destroyed with operations pending: the destructor acts as
/// `clear()`, so every waiter completes with `error::cancelled`. Internal state
/// is reference counted and outlives the object until the last handler ran.
/// A completion queued on an `io_context` that is stopped and destroyed
/// before it runs is destroyed with it, handler included, without being
/// called, as Asio's own operations are.
///
/// The work must end by calling its completion handler. Work waiting on an
/// operation of another `io_context` must not outlive that context: if the
/// context is destroyed first, the operation's handler, and the work's, are
/// destroyed without being called, and the key stays in flight (its waiters
/// leave only by their own timeout or cancellation, or by `cancel`, `clear` or
/// `forget`; later callers join it); the work's cancellation slot then still
/// holds the destroyed operation's cancellation handler, which `cancel`,
/// `clear` or the flight's destruction would call, as with any Asio operation
/// whose context is gone before it completed.
template <class V, class Clock = std::chrono::steady_clock>
class flight {
  static_assert(std::is_copy_constructible_v<V>, "flight<V>: V must be copy constructible");
  static_assert(std::is_default_constructible_v<V>, "flight<V>: V must be default constructible");

  using state_type = detail::flight_state<V, Clock>;

 public:
  using value_type = V;
  using clock_type = Clock;
  using executor_type = boost::asio::any_io_executor;
  /// The completion signature of `async_run`.
  using completion_signature = void(std::exception_ptr, V);

  /// Constructs a flight whose work starts on `ex`.
  /// @throws boost::system::system_error with `error::invalid_option` when an
  ///         option is out of range (for example `max_keys == 0`).
  explicit flight(executor_type ex, flight_options opts = {})
      : st_(std::make_shared<state_type>(std::move(ex), std::move(opts))) {}

  /// Constructs a flight on the context's executor.
  template <class ExecutionContext>
    requires std::convertible_to<ExecutionContext&, boost::asio::execution_context&>
  explicit flight(ExecutionContext& ctx, flight_options opts = {}) : flight(ctx.get_executor(), std::move(opts)) {}

  flight(const flight&) = delete;
  flight& operator=(const flight&) = delete;
  /// A moved-from flight may only be destroyed or assigned to.
  flight(flight&&) noexcept = default;
  flight& operator=(flight&& o) noexcept {
    if (this != &o) {
      if (st_) st_->clear();
      st_ = std::move(o.st_);
    }
    return *this;
  }

  /// Cancels everything in flight (see `clear`).
  ~flight() {
    if (st_) st_->clear();
  }

  /// The executor on which work functions are started.
  executor_type get_executor() const noexcept { return st_->executor(); }

  /// The options the flight was built with.
  const flight_options& options() const noexcept { return st_->options(); }

  /// Runs `fn` once for all concurrent callers of `key`, and delivers its result.
  ///
  /// If work for `key` is in flight, the caller joins it (a `hit` event);
  /// otherwise the caller starts it (a `miss` event) and `fn` is started on a
  /// strand of the flight's executor, never inside this call and never under a
  /// lock. Only the starting caller's `fn` is used; joiners' are discarded.
  ///
  /// @param key    The key: non-empty, at most `flight_options::max_key_length`
  ///               bytes. Taken by value, so deferred tokens keep their own copy.
  /// @param opts   Per-call options; the overload without them uses the defaults.
  /// @param fn     The work, one of:
  ///   - `() -> boost::asio::awaitable<V>`: a coroutine, spawned on the work's strand;
  ///     the callable is kept alive until the coroutine finishes.
  ///   - an Asio asynchronous operation `(CompletionToken&&) -> ...` whose handler
  ///     signature is `void(boost::system::error_code, V)` or
  ///     `void(std::exception_ptr, V)`. Its handler's associated executor is the
  ///     work's strand and its associated cancellation slot is the work's; its
  ///     associated allocator is the flight's own, which serves allocations of
  ///     up to 256 bytes from its thread's freed blocks (see below).
  ///   An exception thrown by `fn` itself counts as the work's failure.
  /// @param token  The completion token.
  ///
  /// @par Completion signature
  /// @code void(std::exception_ptr error, V value) @endcode
  /// On success `error` is null and `value` a copy of the work's result. On
  /// failure `value` is `V{}` and `error` holds:
  ///   - the work's own exception, the same object for every waiter; an
  ///     asynchronous operation's `error_code` arrives as `boost::system::system_error`;
  ///   - `boost::system::system_error` with a `cacheflight::error`:
  ///     `invalid_key`, `invalid_timeout`, `max_keys_exceeded`, `timed_out`
  ///     (this caller's wait bound passed), `cancelled` (`cancel`, `clear` or the
  ///     flight's destruction);
  ///   - `boost::system::system_error` with `boost::asio::error::operation_aborted`
  ///     when this caller was cancelled through its own cancellation slot;
  ///   - the exception thrown by `V`'s copy constructor when this caller's copy
  ///     of the result threw (the other waiters get their own copies).
  ///
  /// @par Executor and allocator
  /// The handler runs on its associated executor (the flight's executor when it
  /// has none), never inside `async_run`: results known at once are posted. The
  /// waiter's bookkeeping is allocated with the handler's associated allocator.
  /// For a handler without one (`std::allocator<void>`), a waiter of up to 256
  /// bytes (aligned to no more than `__STDCPP_DEFAULT_NEW_ALIGNMENT__`) takes
  /// a block its thread freed before, as Asio recycles its operations' memory:
  /// the thread that frees a waiter keeps its block for the next one made
  /// there, up to 1 MiB of blocks a thread for each block size (multiples of
  /// 16 bytes), freed when the thread ends (under AddressSanitizer, none is
  /// kept).
  /// While the caller waits, outstanding work is held on its executor.
  ///
  /// @par Timeouts
  /// `opts.timeout` (else `flight_options::default_timeout`) bounds this caller's
  /// wait only: when it passes, this caller completes with `error::timed_out` and
  /// the other waiters are unaffected.
  ///
  /// @par Per-Operation Cancellation
  /// This operation supports `terminal`, `partial` and `total` cancellation. A
  /// cancelled caller completes with `operation_aborted`; the other waiters and
  /// the work are unaffected. When the last waiter of a key leaves (by
  /// cancellation or timeout), the work is cancelled through its cancellation slot
  /// with `terminal`, a single `task_timed_out` (every waiter timed out) or
  /// `task_cancelled` event is emitted, and the key is free again, unless
  /// `flight_options::on_abandon` is `abandon_policy::finish`.
  ///
  /// @par Object lifetimes
  /// `key` and `fn` are moved into the operation. The flight must outlive the
  /// initiation: with a deferred token (`asio::deferred`, `use_awaitable`), until
  /// the operation is launched. Once launched, it may be destroyed at any time:
  /// pending waiters then complete with `error::cancelled`.
  ///
  /// @par Thread safety
  /// May be called from any thread, concurrently with every other member.
  template <class Fn, boost::asio::completion_token_for<void(std::exception_ptr, V)> CompletionToken>
  auto async_run(std::string key, run_options opts, Fn fn, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, V)>(
        initiate_run{st_.get()}, token, std::move(key), opts, std::move(fn));
  }

  /// As above, with default `run_options`.
  template <class Fn, boost::asio::completion_token_for<void(std::exception_ptr, V)> CompletionToken>
  auto async_run(std::string key, Fn fn, CompletionToken&& token) {
    // Initiated here rather than through the overload above, so that the key
    // is moved once.
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, V)>(
        initiate_run{st_.get()}, token, std::move(key), run_options{}, std::move(fn));
  }

  /// Whether work for `key` is in flight. Thread-safe; the answer may be stale
  /// by the time it is used.
  bool has(std::string_view key) const { return st_->has(key); }

  /// The number of works in flight (forgotten ones still running included).
  /// Work that was cancelled (by `cancel`, `clear`, or its last waiter leaving)
  /// is no longer counted, even while it goes on running because it ignores
  /// its cancellation slot. Thread-safe; lock free. `flight_options::max_keys`
  /// bounds it.
  std::size_t size() const noexcept { return st_->size(); }

  /// Forgets the work in flight for `key` (Go's `singleflight.Forget`): callers
  /// from now on start fresh work instead of joining it, while the callers
  /// already waiting keep waiting for its result, which it delivers as usual.
  /// Use it when the work's result has become stale (the data it reads
  /// changed). A forgotten work still counts against `max_keys` until it
  /// completes, and `clear` still cancels it; `cancel(key)` and `has(key)` see
  /// only the newest work of `key`.
  /// @returns whether work for `key` was in flight (and is now forgotten).
  /// @par Thread safety
  /// Any thread, including from a waiter's completion handler.
  bool forget(std::string_view key) { return st_->forget(key); }

  /// Forgets every work in flight, as `forget` does for each key, one
  /// partition at a time.
  /// @returns the number of works forgotten.
  /// @throws std::bad_alloc when the record of forgotten works cannot grow;
  ///         the partition being forgotten is then left as it was, those
  ///         before it stay forgotten.
  std::size_t forget_all() { return st_->forget_all(); }

  /// Cancels the work for `key`: every waiter completes with `error::cancelled`
  /// (posted to its executor), the work's cancellation slot receives `terminal`,
  /// a `task_cancelled` event is emitted and the key is free at once. The work's
  /// eventual result, if any, is discarded and touches nothing, even if a new
  /// call for `key` has started fresh work meanwhile.
  /// @returns whether work for `key` was in flight.
  /// @par Thread safety
  /// Any thread, including from a waiter's completion handler.
  bool cancel(std::string_view key) { return st_->cancel(key); }

  /// Cancels all work in flight, forgotten work included, as `cancel` does for
  /// each key.
  /// @returns the number of works cancelled.
  std::size_t clear() { return st_->clear(); }

 private:
  // Like the initiations of Asio's I/O objects, it refers to the flight, which
  // must outlive a deferred operation until the operation is launched.
  struct initiate_run {
    state_type* st;

    template <class Handler, class Fn>
    void operator()(Handler&& handler, std::string&& key, run_options opts, Fn&& fn) const {
      st->run(std::forward<Handler>(handler), std::move(key), opts, std::forward<Fn>(fn));
    }
  };

  // The cache starts its loads on the flight's state directly, with a handler
  // it already holds (no second move of the key and the work).
  template <class, class>
  friend class detail::cache_state;

  std::shared_ptr<state_type> st_;
};

}  // namespace cacheflight

#endif
