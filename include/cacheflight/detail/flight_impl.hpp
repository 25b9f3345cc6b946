// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_FLIGHT_IMPL_HPP
#define CACHEFLIGHT_DETAIL_FLIGHT_IMPL_HPP

#include <cacheflight/detail/block_cache.hpp>
#include <cacheflight/detail/hashed_key.hpp>
#include <cacheflight/detail/intrusive_list.hpp>
#include <cacheflight/detail/shard_mutex.hpp>
#include <cacheflight/detail/table_room.hpp>
#include <cacheflight/detail/with_allocator.hpp>
#include <cacheflight/error.hpp>
#include <cacheflight/event.hpp>
#include <cacheflight/options.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/basic_waitable_timer.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/unordered/unordered_flat_map.hpp>

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace cacheflight {

namespace detail {

namespace asio = boost::asio;

template <class V>
struct flight_entry;
template <class V>
struct flight_shard;

// A caller waiting for a key's result. The concrete node (waiter_op) holds the
// type-erased completion handler. `owner` and the list hooks are guarded by the
// shard mutex; a waiter with a null owner has been detached and is being completed.
// How a waiter's handler is reached.
enum class delivery {
  post,      // always through a post: the caller must not run handlers (initiating functions, cancel)
  dispatch,  // asio::dispatch to the handler's executor
  direct,    // the caller runs on the flight's io_context thread: a handler bound to the
             // flight's executor may be invoked right here, as dispatch would
};

template <class V>
struct flight_waiter : list_hook {
  using complete_fn = void (*)(flight_waiter*, const std::exception_ptr&, const std::shared_ptr<const V>&,
                               const asio::any_io_executor&, delivery);

  explicit flight_waiter(complete_fn f) noexcept : complete_(f) {}

  // Completes the waiter and releases it. Called once, outside any lock.
  void complete(const std::exception_ptr& ep, const std::shared_ptr<const V>& v, const asio::any_io_executor& io_ex,
                delivery d) {
    complete_(this, ep, v, io_ex, d);
  }

  flight_entry<V>* owner = nullptr;
  flight_shard<V>* shard = nullptr;
  // Whether a cancellation slot or timer may call leave() for this waiter.
  bool can_leave = false;

 private:
  complete_fn complete_;
};

enum class entry_state : unsigned char {
  pending,   // in the map, work not started yet
  running,   // in the map, work started
  detached,  // out of the map: settled, cancelled or abandoned
};

template <class V>
struct flight_entry {
  // `track`: whether the entry must keep the context busy itself (coroutine
  // work is tracked by co_spawn from its start to its completion).
  flight_entry(std::string k, std::size_t h, flight_shard<V>* s, const asio::any_io_executor& ex, bool serial,
               bool track)
      : key(std::move(k)), hash(h), shard(s), strand(serial ? ex : strand_of(ex)) {
    if (track) work = asio::prefer(ex, asio::execution::outstanding_work.tracked);
  }

  // A strand of an io_context's own executor is kept in the type-erased
  // executor's own storage; a strand of the type-erased executor is not (a
  // heap block for each entry, shared by every copy), and each post to it
  // asks the inner executor's `blocking` property through the type erasure
  // (a heap-allocated answer in Boost 1.81).
  static asio::any_io_executor strand_of(const asio::any_io_executor& ex) {
    if (const auto* io = ex.template target<asio::io_context::executor_type>()) return asio::make_strand(*io);
    return asio::make_strand(ex);
  }

  const std::string key;
  const std::size_t hash;  // of `key`
  flight_shard<V>* const shard;

  // Guarded by shard->mu.
  intrusive_list<flight_waiter<V>> waiters;
  entry_state state = entry_state::pending;
  bool in_map = true;          // false once forgotten (or detached): new callers no longer join it
  bool any_cancelled = false;  // some waiter left by cancellation rather than timeout
  std::size_t can_leave = 0;   // linked waiters that may leave on their own
  std::chrono::nanoseconds started{};  // Clock::now() since its epoch, when the work started

  // The work's own executor: its start, completion and cancellation are
  // serialised here, so cancelling from any thread is safe for the work. A
  // strand, unless the flight's context is declared single-threaded.
  asio::any_io_executor strand;
  // Keeps the flight's execution context alive while the work is in flight,
  // unless the work is a coroutine (see the constructor).
  asio::any_io_executor work;
  // Touched only on `strand`.
  asio::cancellation_signal signal;
  bool task_done = false;
  bool cancel_requested = false;  // `signal` was emitted
};

template <class V>
struct alignas(64) flight_shard {
  shard_mutex mu;
  // Keyed by views of the entries' own keys, with their hashes.
  boost::unordered_flat_map<hashed_key, std::shared_ptr<flight_entry<V>>, hashed_key_hash, hashed_key_eq> map;
  // Entries still running after `forget`: out of `map`, so new callers start
  // fresh work, but still cancellable by `clear`.
  boost::unordered_flat_map<const flight_entry<V>*, std::shared_ptr<flight_entry<V>>> forgotten;
};

// Work functions whose owner must learn, atomically with the key's insertion,
// that a new entry was made for them, with its key (the cache registers its
// load there). The key is the entry's own, shared: holding it keeps the
// entry's memory (not its place in the map) alive.
// Called under the shard lock: it must be short and must not call back into
// the flight.
struct entry_created_tag {};
template <class Fn>
concept observes_creation = requires(Fn& f, std::shared_ptr<const std::string> key) {
  f.on_entry_created(entry_created_tag{}, std::move(key));
};
// Work functions that carry their key's hash (the cache's loads, whose caller
// hashed the key already).
template <class Fn>
concept carries_key_hash = requires(const Fn& f) {
  { f.key_hash(entry_created_tag{}) } -> std::convertible_to<std::size_t>;
};

enum class leave_reason { cancelled, timed_out };

template <class R, class V>
inline constexpr bool is_awaitable_of = false;
template <class V>
inline constexpr bool is_awaitable_of<asio::awaitable<V, asio::any_io_executor>, V> = true;

template <class Fn, class V>
concept coroutine_work = std::invocable<Fn&> && is_awaitable_of<std::invoke_result_t<Fn&>, V>;

}  // namespace detail

namespace detail {

template <class V, class Clock>
class flight_state : public std::enable_shared_from_this<flight_state<V, Clock>> {
 public:
  using entry = flight_entry<V>;
  using entry_ptr = std::shared_ptr<entry>;
  using waiter = flight_waiter<V>;
  using shard = flight_shard<V>;
  using timer_type = asio::basic_waitable_timer<Clock, asio::wait_traits<Clock>, asio::any_io_executor>;

  flight_state(asio::any_io_executor ex, flight_options opts)
      : ex_(std::move(ex)), opts_(std::move(opts)) {
    if (opts_.max_keys == 0) throw_invalid_option("flight_options::max_keys must be at least 1");
    if (opts_.default_timeout <= std::chrono::nanoseconds::zero())
      throw_invalid_option("flight_options::default_timeout must be positive (or no_timeout)");
    if (opts_.max_key_length == 0) throw_invalid_option("flight_options::max_key_length must be at least 1");
    if (opts_.shards == 0 || opts_.shards > 1024) throw_invalid_option("flight_options::shards must be in [1, 1024]");
    shards_ = std::make_unique<shard[]>(opts_.shards);
    serial_ = single_threaded(ex_);
  }

  const asio::any_io_executor& executor() const noexcept { return ex_; }
  const flight_options& options() const noexcept { return opts_; }
  std::size_t size() const noexcept { return keys_.load(std::memory_order_relaxed); }

  // Counts, in `*n`, the callers that join work in flight (what a `hit`
  // event reports), for an owner that needs the count without an event sink.
  // Set before the flight is used.
  void count_joins(std::atomic<std::uint64_t>* n) noexcept { joins_ = n; }

  bool has(std::string_view key) {
    const hashed_key hk(key);
    shard& sh = shard_for(hk);
    std::lock_guard lk(sh.mu);
    return sh.map.contains(hk);
  }

  template <class Handler, class Fn>
  void run(Handler&& handler, std::string&& key, run_options ro, Fn&& fn);

  bool cancel(std::string_view key) {
    const hashed_key hk(key);
    shard& sh = shard_for(hk);
    entry_ptr e;
    intrusive_list<waiter> waiters;
    std::chrono::nanoseconds dur{};
    {
      std::lock_guard lk(sh.mu);
      auto it = sh.map.find(hk);
      if (it == sh.map.end()) return false;
      e = take_locked(sh, *it->second);
      dur = detach_locked(*e, waiters);
    }
    finish_cancelled(e, dur, waiters);
    return true;
  }

  std::size_t clear() {
    std::size_t n = 0;
    for (std::size_t i = 0; i < opts_.shards; ++i) {
      shard& sh = shards_[i];
      std::vector<std::pair<entry_ptr, std::chrono::nanoseconds>> taken;
      std::vector<intrusive_list<waiter>> lists;
      {
        std::lock_guard lk(sh.mu);
        taken.reserve(sh.map.size() + sh.forgotten.size());
        lists.resize(sh.map.size() + sh.forgotten.size());
        auto take = [&](entry_ptr& p) {
          p->in_map = false;
          auto dur = detach_locked(*p, lists[taken.size()]);
          taken.emplace_back(std::move(p), dur);
        };
        for (auto& kv : sh.map) take(kv.second);
        for (auto& kv : sh.forgotten) take(kv.second);
        keys_.fetch_sub(taken.size(), std::memory_order_relaxed);
        sh.map.clear();
        sh.forgotten.clear();
      }
      for (std::size_t j = 0; j < taken.size(); ++j) finish_cancelled(taken[j].first, taken[j].second, lists[j]);
      n += taken.size();
    }
    return n;
  }

  // Detaches the key's entry from the map: callers from now on start fresh
  // work; the entry's own waiters still get its result.
  bool forget(std::string_view key) {
    const hashed_key hk(key);
    shard& sh = shard_for(hk);
    std::lock_guard lk(sh.mu);
    return forget_locked(sh, hk);
  }

  std::size_t forget_all() {
    std::size_t n = 0;
    for (std::size_t i = 0; i < opts_.shards; ++i) {
      shard& sh = shards_[i];
      std::lock_guard lk(sh.mu);
      // One pass over the map (erasing at begin() one by one would rescan the
      // emptied slots each time). The entries are filed as forgotten first,
      // which may throw (the set may grow): then those filed are taken back
      // and this shard is as it was (the shards before it stay forgotten).
      // What follows cannot throw.
      std::size_t filed = 0;
      try {
        for (auto& kv : sh.map) {
          sh.forgotten.emplace(kv.second.get(), kv.second);
          ++filed;
        }
      } catch (...) {
        for (auto& kv : sh.map) {
          if (filed-- == 0) break;
          sh.forgotten.erase(kv.second.get());
        }
        throw;
      }
      for (auto& kv : sh.map) kv.second->in_map = false;
      n += sh.map.size();
      sh.map.clear();
    }
    return n;
  }

  // A waiter leaves by its own cancellation slot or timeout. Thread-safe.
  void leave(waiter* w, leave_reason why) {
    shard& sh = *w->shard;
    entry_ptr abandoned;
    bool all_timed_out = false;
    std::chrono::nanoseconds dur{};
    {
      std::lock_guard lk(sh.mu);
      entry* e = w->owner;
      if (!e) return;  // already detached: its completion is on the way
      e->waiters.erase(w);
      w->owner = nullptr;
      --e->can_leave;
      if (why == leave_reason::cancelled) e->any_cancelled = true;
      if (e->waiters.empty() && opts_.on_abandon == abandon_policy::cancel) {
        abandoned = take_locked(sh, *e);
        all_timed_out = !e->any_cancelled;
        dur = started_duration_locked(*e);
        e->state = entry_state::detached;
      }
    }
    if (abandoned) {
      emit(all_timed_out ? event_kind::task_timed_out : event_kind::task_cancelled, abandoned->key, dur);
      request_cancel(abandoned);
    }
    // Posted after a cancellation: the slot handler runs inside the emitter's code.
    if (why == leave_reason::timed_out)
      w->complete(make_error(error::timed_out), nullptr, ex_, delivery::dispatch);
    else
      w->complete(make_error(asio::error::operation_aborted), nullptr, ex_, delivery::post);
  }

  void emit(event_kind k, std::string_view key, std::chrono::nanoseconds d = {}, std::exception_ptr ep = {}) const {
    if (!opts_.on_event) return;
    try {
      opts_.on_event(event{k, key, d, std::move(ep)});
    } catch (...) {
      // Documented: a throwing sink does not disturb the flight.
    }
  }

 private:
  template <class Keep>
  struct task_handler;

  // The shard of a key, from the hash it carries (see shard_index).
  shard& shard_for(const hashed_key& key) const noexcept {
    return opts_.shards == 1 ? shards_[0] : shards_[shard_index(key.hash, opts_.shards)];
  }

  // Whether the caller runs on the thread of the flight's io_context, so that
  // dispatching to the flight's executor would run a handler inline.
  bool on_own_thread() const noexcept {
    auto* io = ex_.template target<asio::io_context::executor_type>();
    return io && io->running_in_this_thread();
  }

  // Counts a new key in unless the cap is reached. The count never passes
  // the cap, even for a moment: `size()` is bounded by it.
  bool reserve_key() noexcept {
    std::size_t n = keys_.load(std::memory_order_relaxed);
    do {
      if (n >= opts_.max_keys) return false;
    } while (!keys_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed));
    return true;
  }

  // Removes `e`, not yet detached, from its shard (its map, or the forgotten
  // entries). Requires the shard lock.
  entry_ptr take_locked(shard& sh, entry& e) {
    entry_ptr p;
    if (e.in_map) {
      auto it = sh.map.find(hashed_key(e.key, e.hash));
      p = std::move(it->second);
      sh.map.erase(it);
      e.in_map = false;
    } else {
      auto it = sh.forgotten.find(&e);
      p = std::move(it->second);
      sh.forgotten.erase(it);
    }
    keys_.fetch_sub(1, std::memory_order_relaxed);
    return p;
  }

  bool forget_locked(shard& sh, hashed_key key) {
    auto it = sh.map.find(key);
    if (it == sh.map.end()) return false;
    entry& e = *it->second;
    sh.forgotten.emplace(&e, it->second);  // may throw: nothing changed yet
    e.in_map = false;
    sh.map.erase(it);
    return true;
  }

  static std::chrono::nanoseconds now() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch());
  }

  // How long the work has run, for an event: zero without an event sink,
  // which is also when its start was not timed (see start).
  std::chrono::nanoseconds started_duration_locked(const entry& e) const noexcept {
    if (e.state != entry_state::running || !opts_.on_event) return {};
    return now() - e.started;
  }

  // Marks `e` detached and moves its waiters to `out`. Requires the shard lock.
  std::chrono::nanoseconds detach_locked(entry& e, intrusive_list<waiter>& out) const {
    auto dur = started_duration_locked(e);
    e.state = entry_state::detached;
    out = std::move(e.waiters);
    // Only waiters that can leave ever look at their owner again.
    if (e.can_leave != 0)
      for (waiter* w = out.front(); w; w = static_cast<waiter*>(w->next)) w->owner = nullptr;
    e.can_leave = 0;
    return dur;
  }

  void finish_cancelled(const entry_ptr& e, std::chrono::nanoseconds dur, intrusive_list<waiter>& waiters) {
    emit(event_kind::task_cancelled, e->key, dur);
    request_cancel(e);
    // Posted: cancel() and clear() may be called from a waiter's handler, and
    // must not run other handlers inside themselves.
    deliver(waiters, make_error(error::cancelled), nullptr, delivery::post);
  }

  // Cancels the work of a detached entry, on the work's own strand.
  static void request_cancel(const entry_ptr& e) {
    asio::post(e->strand, [e] {
      if (e->task_done) return;
      e->cancel_requested = true;
      e->signal.emit(asio::cancellation_type::terminal);
    });
  }

  // Runs on e->strand.
  template <class Fn>
  void start(const entry_ptr& e, Fn& fn);

  // The work completed. Runs on e->strand.
  void settle(const entry_ptr& e, std::exception_ptr ep, std::shared_ptr<const V> v) {
    e->signal.slot().clear();
    e->task_done = true;
    intrusive_list<waiter> waiters;
    std::chrono::nanoseconds dur{};
    {
      std::lock_guard lk(e->shard->mu);
      if (e->state != entry_state::running) return;  // cancelled or abandoned; already reported
      take_locked(*e->shard, *e);
      dur = detach_locked(*e, waiters);
    }
    if (ep)
      emit(event_kind::task_rejected, e->key, dur, ep);
    else
      emit(event_kind::task_resolved, e->key, dur);
    deliver(waiters, ep, v, on_own_thread() ? delivery::direct : delivery::dispatch);
  }

  // Completes every waiter of `waiters`. If a handler run inline throws, the
  // remaining waiters are posted their result before the exception propagates
  // (out of io_context::run, as Asio handlers' exceptions do).
  void deliver(intrusive_list<waiter>& waiters, const std::exception_ptr& ep, const std::shared_ptr<const V>& v,
               delivery d) {
    while (waiter* w = waiters.pop_front()) {
      try {
        w->complete(ep, v, ex_, d);
      } catch (...) {
        while (waiter* rest = waiters.pop_front()) rest->complete(ep, v, ex_, delivery::post);
        throw;
      }
    }
  }

  // Fails a fresh entry that could not be started (resource exhaustion).
  void abort_fresh(const entry_ptr& e, std::exception_ptr ep) {
    intrusive_list<waiter> waiters;
    {
      std::lock_guard lk(e->shard->mu);
      if (e->state != entry_state::pending) return;
      take_locked(*e->shard, *e);
      detach_locked(*e, waiters);
    }
    emit(event_kind::task_rejected, e->key, {}, ep);
    deliver(waiters, ep, nullptr, delivery::post);
  }

  // An io_context built with concurrency hint 1 promises that one thread runs
  // it: its handlers are already serialised, so the work needs no strand.
  static bool single_threaded(const asio::any_io_executor& ex) {
    auto* io = ex.template target<asio::io_context::executor_type>();
    return io && asio::use_service<asio::detail::scheduler>(io->context()).concurrency_hint() == 1;
  }

  asio::any_io_executor ex_;
  bool serial_ = false;
  const flight_options opts_;
  std::unique_ptr<shard[]> shards_;
  std::atomic<std::size_t> keys_{0};
  std::atomic<std::uint64_t>* joins_ = nullptr;  // see count_joins
};

// The completion handler given to the work. It completes on the entry's strand
// and exposes the entry's cancellation slot.
template <class V, class Clock>
template <class Keep>
struct flight_state<V, Clock>::task_handler {
  std::shared_ptr<flight_state> st;
  entry_ptr e;
  Keep keep;  // keeps a coroutine lambda (and its captures) alive while it runs

  using executor_type = asio::any_io_executor;
  executor_type get_executor() const noexcept { return e->strand; }
  using cancellation_slot_type = asio::cancellation_slot;
  cancellation_slot_type get_cancellation_slot() const noexcept { return e->signal.slot(); }
  // What the work allocates for its steps comes from the threads' block caches.
  using allocator_type = block_allocator<void>;
  allocator_type get_allocator() const noexcept { return {}; }

  // For work that completes through its own steps (the cache's loads): whether
  // the work was asked to stop, and its failure. On the entry's strand.
  bool cancel_requested() const noexcept { return e->cancel_requested; }
  // Whether the work has completed (this handler, or a copy, was called).
  bool completed() const noexcept { return e->task_done; }
  void fail(std::exception_ptr ep) { st->settle(e, std::move(ep), nullptr); }

  template <class T>
  void operator()(std::exception_ptr ep, T&& v) {
    if (ep)
      st->settle(e, std::move(ep), nullptr);
    else
      resolve(std::forward<T>(v));
  }

  template <class T>
  void operator()(const boost::system::error_code& ec, T&& v) {
    if (ec)
      st->settle(e, make_error(ec), nullptr);
    else
      resolve(std::forward<T>(v));
  }

 private:
  template <class T>
  void resolve(T&& v) {
    std::shared_ptr<const V> p;
    try {
      p = std::allocate_shared<const V>(block_allocator<const V>{}, std::forward<T>(v));
    } catch (...) {
      // Storing the value failed (allocation, or V's constructor): that is the result.
      st->settle(e, std::current_exception(), nullptr);
      return;
    }
    st->settle(e, nullptr, std::move(p));
  }
};

template <class V, class Clock>
template <class Fn>
void flight_state<V, Clock>::start(const entry_ptr& e, Fn& fn) {
  {
    std::lock_guard lk(e->shard->mu);
    if (e->state != entry_state::pending) {
      e->task_done = true;  // cancelled before it started
      return;
    }
    e->state = entry_state::running;
    if (opts_.on_event) e->started = now();  // durations are only reported to a sink
  }
  emit(event_kind::task_started, e->key);
  try {
    if constexpr (coroutine_work<Fn, V> && (std::is_empty_v<Fn> || std::is_pointer_v<Fn>)) {
      asio::co_spawn(e->strand, fn(), task_handler<std::nullptr_t>{this->shared_from_this(), e, nullptr});
    } else if constexpr (coroutine_work<Fn, V>) {
      // The coroutine may refer to the lambda's captures: keep it at a stable address.
      auto keep = std::make_unique<Fn>(std::move(fn));
      auto aw = (*keep)();
      asio::co_spawn(e->strand, std::move(aw),
                     task_handler<std::unique_ptr<Fn>>{this->shared_from_this(), e, std::move(keep)});
    } else {
      static_assert(std::invocable<Fn&, task_handler<std::nullptr_t>>,
                    "the work function must be () -> asio::awaitable<V>, or an Asio asynchronous operation taking a "
                    "completion token with signature void(error_code, V) or void(std::exception_ptr, V)");
      fn(task_handler<std::nullptr_t>{this->shared_from_this(), e, nullptr});
    }
  } catch (...) {
    // Thrown once the work had completed (a handler run inline by its
    // completion): not the work's failure; it propagates, as a handler's
    // exception does.
    if (e->task_done) throw;
    // The work threw before completing: that is its result.
    settle(e, std::current_exception(), nullptr);
  }
}

}  // namespace detail
}  // namespace cacheflight

// The waiter node, which the initiation below makes.
#include <cacheflight/detail/flight_waiter.hpp>

namespace cacheflight {
namespace detail {

template <class V, class Clock>
template <class Handler, class Fn>
void flight_state<V, Clock>::run(Handler&& handler, std::string&& key, run_options ro, Fn&& fn) {
  using op_t = waiter_op<V, Clock, std::decay_t<Handler>>;
  op_t* op = op_t::create(std::forward<Handler>(handler), ex_);

  if (key.empty() || key.size() > opts_.max_key_length) {
    op->complete(make_error(error::invalid_key), nullptr, ex_, delivery::post);
    return;
  }
  if (ro.timeout && *ro.timeout <= std::chrono::nanoseconds::zero()) {
    op->complete(make_error(error::invalid_timeout), nullptr, ex_, delivery::post);
    return;
  }
  op->prepare(*this, ro.timeout ? *ro.timeout : opts_.default_timeout, ex_);

  hashed_key hk = [&] {
    if constexpr (carries_key_hash<std::remove_cvref_t<Fn>>)
      return hashed_key(key, fn.key_hash(entry_created_tag{}));
    else
      return hashed_key(key);
  }();
  shard& sh = shard_for(hk);
  op->shard = &sh;
  bool joined = false;
  auto link_locked = [op](entry& e) {
    e.waiters.push_back(op);
    op->owner = &e;
    e.can_leave += op->can_leave;
    op->arm_timer_locked();
  };

  // Once the waiter is linked, the entry may complete it on another thread at
  // any moment (its result, its timeout, a cancellation), and with it end the
  // initiation: an awaiting coroutine's frame holds `key` and `fn`, and may
  // own the flight itself. From then on only the entry's copy of the key and
  // what this call holds are read.
  std::shared_ptr<entry> joined_entry;
  std::shared_ptr<flight_state> keep;
  {
    std::lock_guard lk(sh.mu);
    if (auto it = sh.map.find(hk); it != sh.map.end()) {
      link_locked(*it->second);
      joined = true;
      if (joins_) joins_->fetch_add(1, std::memory_order_relaxed);
      if (opts_.on_event) {
        joined_entry = it->second;
        keep = this->shared_from_this();
      }
    }
  }
  if (joined) {
    if (joined_entry) keep->emit(event_kind::hit, joined_entry->key);
    return;
  }

  // A new key: build the entry, and take the work, outside the lock; then
  // insert the entry unless another caller got there first.
  struct starter {
    starter(std::shared_ptr<flight_state> s, std::shared_ptr<entry> en, Fn&& fn)
        : st(std::move(s)), e(std::move(en)), f(std::forward<Fn>(fn)) {}
    std::shared_ptr<flight_state> st;
    std::shared_ptr<entry> e;
    std::decay_t<Fn> f;
    void operator()() { st->start(e, f); }
  };
  std::optional<starter> begin;
  try {
    auto fresh = std::allocate_shared<entry>(block_allocator<entry>{}, std::move(key), hk.hash, &sh, ex_, serial_,
                                             !coroutine_work<std::decay_t<Fn>, V>);
    begin.emplace(this->shared_from_this(), std::move(fresh), std::forward<Fn>(fn));
  } catch (...) {
    op->complete(std::current_exception(), nullptr, ex_, delivery::post);
    return;
  }
  const std::shared_ptr<entry>& fresh = begin->e;
  bool rejected = false;
  std::exception_ptr failure;
  {
    std::lock_guard lk(sh.mu);
    hk = hashed_key(fresh->key, fresh->hash);  // the key now lives in the entry
    if (auto it = sh.map.find(hk); it != sh.map.end()) {
      link_locked(*it->second);
      joined = true;
      if (joins_) joins_->fetch_add(1, std::memory_order_relaxed);
    } else if (!reserve_key()) {
      rejected = true;
    } else {
      try {
        keep_room(sh.map);
        if constexpr (observes_creation<std::remove_reference_t<Fn>>)
          begin->f.on_entry_created(entry_created_tag{}, std::shared_ptr<const std::string>(fresh, &fresh->key));
        sh.map.emplace(hk, fresh);
      } catch (...) {
        keys_.fetch_sub(1, std::memory_order_relaxed);
        failure = std::current_exception();
      }
      if (!failure) link_locked(*fresh);
    }
  }
  if (failure) {
    op->complete(failure, nullptr, ex_, delivery::post);
  } else if (joined) {
    emit(event_kind::hit, fresh->key);
  } else if (rejected) {
    emit(event_kind::max_keys_rejected, fresh->key);
    op->complete(make_error(error::max_keys_exceeded), nullptr, ex_, delivery::post);
  } else {
    emit(event_kind::miss, fresh->key);
    // `begin` is moved into the post below; should that throw, the waiter may
    // be gone with its flight, and these keep what failing the entry needs.
    std::shared_ptr<flight_state> self = begin->st;
    std::shared_ptr<entry> e = fresh;
    try {
      const auto& strand = e->strand;
      auto start = allocated(std::move(*begin), block_allocator<void>{});
      // An io_context's own executor queues it in the allocator's memory; the
      // type-erased one would take Asio's per-thread recycled memory instead.
      if (const auto* io = strand.template target<asio::io_context::executor_type>())
        asio::post(*io, std::move(start));
      else if (const auto* s = strand.template target<asio::strand<asio::io_context::executor_type>>())
        asio::post(*s, std::move(start));
      else
        asio::post(strand, std::move(start));
    } catch (...) {
      self->abort_fresh(e, std::current_exception());
    }
  }
}

}  // namespace detail
}  // namespace cacheflight

#endif
