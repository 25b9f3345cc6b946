// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_CACHE_LOAD_HPP
#define CACHEFLIGHT_DETAIL_CACHE_LOAD_HPP

#include <cacheflight/detail/cache_events.hpp>
#include <cacheflight/detail/flight_impl.hpp>
#include <cacheflight/stats.hpp>
#include <cacheflight/tier.hpp>

#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/any_completion_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace cacheflight::detail {

// How a cache's loads went, for `cache_stats`.
struct load_counters {
  std::atomic<std::uint64_t> loads{0}, failures{0}, time_ns{0}, coalesced{0};

  void add_stats(cache_stats& s) const {
    s.loads = loads.load(std::memory_order_relaxed);
    s.load_failures = failures.load(std::memory_order_relaxed);
    s.load_time = std::chrono::nanoseconds(time_ns.load(std::memory_order_relaxed));
    s.coalesced = coalesced.load(std::memory_order_relaxed);
  }
};

// A load's right to store its result: a token registered in memory when the
// load's flight entry is created, so that an invalidation from then on voids
// it. Released when the load ends without storing, however it ends (thrown,
// cancelled before it started, destroyed unrun at shutdown). Until it is
// issued, it holds neither the state nor the key: a caller that joins a load
// already in flight builds one and drops it without touching either. It
// carries the key's hash, computed once by the caller, and shares the key
// with the load's flight entry rather than copying it.
//
// `State` is the cache's state (cache_state.hpp): `memory()` gives its memory tier.
template <class State>
class load_ticket {
 public:
  load_ticket(State* st, std::size_t hash) noexcept : raw_(st), hash_(hash) {}
  load_ticket(load_ticket&& o) noexcept
      : raw_(o.raw_), st_(std::move(o.st_)), key_(std::move(o.key_)), hash_(o.hash_), token_(std::exchange(o.token_, 0)) {}
  load_ticket& operator=(load_ticket&&) = delete;
  // Inline, as most tickets destroyed are moved-from ones on the way to the load.
  [[gnu::always_inline]] ~load_ticket() {
    if (token_) [[unlikely]]
      end();
  }

  // Called once, as the load's entry is created, with the entry's key: keeps
  // the state alive for the load and registers its token.
  void issue(std::shared_ptr<const std::string> key) {
    key_ = std::move(key);
    st_ = raw_->shared_from_this();
    token_ = st_->memory().begin_load(hashed());
  }
  State& state() const noexcept { return *raw_; }
  // From issue() on.
  const std::string& key() const noexcept { return *key_; }
  std::size_t hash() const noexcept { return hash_; }
  hashed_key hashed() const noexcept { return hashed_key(*key_, hash_); }
  std::uint64_t& token() noexcept { return token_; }

 private:
  [[gnu::noinline]] void end() noexcept { st_->memory().end_load(hashed(), token_); }

  State* raw_;
  std::shared_ptr<State> st_;  // from issue() on
  std::shared_ptr<const std::string> key_;  // from issue() on
  std::size_t hash_;
  std::uint64_t token_ = 0;
};

// Set for a background reload: the fresh time the value it replaces had left
// when it started (0 for a stale one).
using reload_of = std::optional<std::chrono::nanoseconds>;

template <class State, class Handler>
struct fill_after_load;

template <class State, class Loader, class Handler>
struct tier_read;

// The work of a coalesced miss, given to the flight: the ticket is issued as
// the flight inserts the load's entry (under its lock), and the flight calls
// it once.
// How much longer a tier's value must stay fresh than the value a reload
// replaces for the reload to take it: more than the tiers' rounding to whole
// milliseconds and a coarse clock's step.
inline constexpr std::chrono::nanoseconds reload_margin = std::chrono::milliseconds(50);

template <class State, class Loader>
struct load_work {
  load_ticket<State> ticket;
  Loader loader;
  std::chrono::nanoseconds ttl;
  reload_of refresh{};  // a background reload of a stale (or soon stale) value

  void on_entry_created(entry_created_tag, std::shared_ptr<const std::string> key) { ticket.issue(std::move(key)); }
  // The key's hash, which the flight takes instead of hashing the key again.
  std::size_t key_hash(entry_created_tag) const noexcept { return ticket.hash(); }
  // Called once, on the load's strand, with the flight's handler for it (see
  // flight_state::task_handler): the tiers are asked in turn by plain
  // completions, and the loader runs as a coroutine only when none answers.
  template <class Handler>
  void operator()(Handler h) {
    tier_read<State, Loader, Handler>::ask(
        tier_read<State, Loader, Handler>{std::move(ticket), std::move(loader), ttl, refresh, std::move(h)});
  }
};

// A load's walk through the tiers, in order: each tier's completion handler
// is the walk itself, which completes on the load's strand (its executor and
// cancellation slot are the flight handler's). A hit completes the load; past
// the last tier, or once an invalidation of the key is reaching the tiers
// (what they hold may be what it replaces), the loader runs. A load cancelled
// while a tier answers asks no further tier and runs no loader.
template <class State, class Loader, class Handler>
struct tier_read {
  load_ticket<State> ticket;
  Loader loader;
  std::chrono::nanoseconds ttl;
  reload_of refresh;
  Handler h;
  std::size_t i = 0;  // the tier asked

  // The load's executor, as the type-erased handler a tier receives holds it:
  // an io_context's own executor (a flight on a single-threaded context) is
  // held in place, where wrapping the `any_io_executor` holding it would
  // allocate each time a tier asks for it.
  using executor_type = boost::asio::any_completion_executor;
  executor_type get_executor() const noexcept {
    const auto ex = boost::asio::get_associated_executor(h);
    if (const auto* io = ex.template target<boost::asio::io_context::executor_type>()) return executor_type(*io);
    return executor_type(ex);
  }
  using cancellation_slot_type = boost::asio::associated_cancellation_slot_t<Handler>;
  cancellation_slot_type get_cancellation_slot() const noexcept {
    return boost::asio::get_associated_cancellation_slot(h);
  }
  // A tier's memory for the read (the type-erased handler it receives, the
  // operations it starts with it) comes from the flight handler's allocator.
  using allocator_type = boost::asio::associated_allocator_t<Handler>;
  allocator_type get_allocator() const noexcept { return boost::asio::get_associated_allocator(h); }

  // Asks tier `i`, or, past the last tier or while an invalidation of the key
  // is reaching the tiers, starts the loader; a load cancelled meanwhile
  // goes no further. Throws what starting the read or the loader throws
  // (resource exhaustion, a tier's own exception): as the load starts, the
  // flight takes that for its result.
  static void ask(tier_read&& self) {
    if (self.h.cancel_requested())
      return self.h.fail(std::make_exception_ptr(boost::system::system_error(boost::asio::error::operation_aborted)));
    State& st = self.ticket.state();
    if (self.i == st.tiers().size() || st.tiers().invalidating(self.ticket.key())) {
      start_loader(std::move(self));
      return;
    }
    st.tiers().at(self.i).async_get(self.ticket.key(), std::move(self));
  }

  // Runs the loader as a coroutine on the load's executor, completing with
  // fill_after_load. The coroutine frames alive at once are the spawn's and
  // the loader's: Asio's per-thread recycling of frames (two blocks) serves
  // both, so a miss allocates no frame in steady state. The loader object
  // lives in the spawn's frame, where a coroutine lambda's captures stay
  // valid. On the load's executor the spawn dispatches: the loader starts
  // inside `co_spawn`, so its start is reported and timed before.
  static void start_loader(tier_read&& self) {
    namespace asio = boost::asio;
    using V = typename State::value_type;
    State& st = self.ticket.state();
    auto ex = asio::get_associated_executor(self.h);
    st.events().emit(cache_event_kind::load_started, self.ticket.key());
    auto fill = fill_after_load<State, Handler>::make(std::move(self.ticket), self.ttl, self.refresh,
                                                      State::clock_type::now(), std::move(self.h));
    asio::co_spawn(
        std::move(ex),
        [l = std::move(self.loader)]() mutable {
          if constexpr (coroutine_work<Loader, V>)
            return l();
          else
            return l(asio::use_awaitable);
        },
        std::move(fill));
  }

  // As `ask`, from a tier's completion, where what it throws fails the load:
  // the flight's handler is copied first, as the one moved into the failed
  // initiation is gone. Thrown once the load had completed (by a caller's
  // handler run inline), it propagates, as a handler's exception does.
  static void next(tier_read&& self) {
    Handler keep = self.h;
    std::exception_ptr failure;
    try {
      ask(std::move(self));
    } catch (...) {
      failure = std::current_exception();
    }
    if (!failure) return;
    if (keep.completed()) std::rethrow_exception(failure);
    keep.fail(std::move(failure));
  }

  void operator()(const boost::system::error_code& ec, std::optional<std::string> bytes) {
    std::optional<typename State::value_type> v;
    try {
      State& st = ticket.state();
      if (ec) {
        // A read ended by the load's own cancellation is not the tier's
        // failure; one failing with operation_aborted of its own accord is.
        if (!h.cancel_requested()) st.tiers().failed(i, ticket.key(), ec);
      } else {
        // A reload takes a value from a tier only if it is fresher than the
        // one it replaces by a margin: otherwise it is that value (this
        // instance wrote it) or an older one.
        std::optional<std::chrono::nanoseconds> fresher_than;
        if (refresh) fresher_than = *refresh + reload_margin;
        v = st.tiers().take(i, ticket.key(), bytes, ticket.token(), st.memory(), fresher_than);
      }
    } catch (...) {
      return h.fail(std::current_exception());  // counting, reporting or storing failed
    }
    if (v) return std::move(h)(std::exception_ptr{}, std::move(*v));
    ++i;
    next(std::move(*this));
  }
};

// A load that failed: counted, reported and, with negative caching, stored as
// a failure, unless it was cancelled (its callers left, or cancel/clear): that
// is not the loader's failure, whatever it threw. A failed background reload
// stores no failure over the value it was to replace: whether that value
// stays is the reload's end's to decide (stale-if-error, see
// memory_tier::refresh_ended).
template <class State>
void load_failed(State& st, const std::string& key, std::uint64_t token, const std::exception_ptr& failure,
                 std::chrono::nanoseconds took, bool cancelled, bool refresh) {
  if (!cancelled) {
    st.load_stats().failures.fetch_add(1, std::memory_order_relaxed);
    st.events().emit(cache_event{cache_event_kind::load_failed, key, took, failure, {}});
  }
  const auto& negative = st.options().negative_ttl;
  if (negative && !cancelled && !refresh)
    st.memory().store(key, nullptr, failure, *negative, token, nullptr, nullptr);
  else
    st.memory().end_load(key, token);
}

// The end of a load that ran its loader (the tiers missed, see tier_read):
// the loader's completion, on the load's executor. Counts and reports the
// load (timed from the spawn: a loader that never suspends completes through
// one more post), then stores the value and writes it behind, all under the
// ticket: an invalidation since the load's entry was created keeps the value
// out of memory and out of the tiers (its callers still get it). What the
// loader threw, or what storing throws, is the load's result.
template <class State, class Handler>
struct fill_after_load {
  using V = typename State::value_type;
  using Clock = typename State::clock_type;

  // The load's state, in one block from the flight handler's allocator:
  // `co_spawn` moves its completion handler several times on its way to the
  // call, and each move of this handle is a pointer's.
  using allocator_type = boost::asio::associated_allocator_t<Handler>;
  struct parts;
  using parts_allocator = typename std::allocator_traits<allocator_type>::template rebind_alloc<parts>;
  struct parts {
    [[no_unique_address]] parts_allocator alloc;  // what the block came from
    load_ticket<State> ticket;
    std::chrono::nanoseconds ttl;
    reload_of refresh;
    typename Clock::time_point t0;
    Handler h;
  };
  struct release {
    void operator()(parts* p) const noexcept {
      parts_allocator a(p->alloc);
      p->~parts();
      std::allocator_traits<parts_allocator>::deallocate(a, p, 1);
    }
  };
  std::unique_ptr<parts, release> p;

  // Throws what the allocation (or the handler's move) throws, and then owns nothing.
  static fill_after_load make(load_ticket<State>&& ticket, std::chrono::nanoseconds ttl, reload_of refresh,
                              typename Clock::time_point t0, Handler&& h) {
    parts_allocator a(boost::asio::get_associated_allocator(h));
    parts* raw = std::allocator_traits<parts_allocator>::allocate(a, 1);
    try {
      ::new (static_cast<void*>(raw)) parts{a, std::move(ticket), ttl, refresh, t0, std::move(h)};
    } catch (...) {
      std::allocator_traits<parts_allocator>::deallocate(a, raw, 1);
      throw;
    }
    return fill_after_load{std::unique_ptr<parts, release>(raw)};
  }

  // The spawn completes on the load's executor, and the loader sees the
  // load's cancellation (the flight's handler's slot).
  using executor_type = boost::asio::associated_executor_t<Handler>;
  executor_type get_executor() const noexcept { return boost::asio::get_associated_executor(p->h); }
  using cancellation_slot_type = boost::asio::associated_cancellation_slot_t<Handler>;
  cancellation_slot_type get_cancellation_slot() const noexcept {
    return boost::asio::get_associated_cancellation_slot(p->h);
  }
  allocator_type get_allocator() const noexcept { return boost::asio::get_associated_allocator(p->h); }

  void operator()(std::exception_ptr failure, V value) {
    parts& f = *p;
    State& st = f.ticket.state();
    try {
      const auto took = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - f.t0);
      st.load_stats().time_ns.fetch_add(took.count(), std::memory_order_relaxed);
      if (failure) {
        // Cancelled: the load was asked to stop (its callers left, or
        // cancel/clear) by the time its result reached the load's executor.
        // Asked of the load, not of what it threw: a loader failing with
        // operation_aborted of its own accord (a socket closed under it) is a
        // failure like any other.
        load_failed(st, f.ticket.key(), std::exchange(f.ticket.token(), 0), failure, took, f.h.cancel_requested(),
                    f.refresh.has_value());
      } else {
        fill(f, st, value, took);
      }
    } catch (...) {
      failure = std::current_exception();  // counting, reporting or storing failed
    }
    if (failure) return f.h.fail(std::move(failure));
    std::move(f.h)(std::exception_ptr{}, std::move(value));
  }

 private:
  static void fill(parts& f, State& st, V& value, std::chrono::nanoseconds took) {
    const std::string& key = f.ticket.key();
    st.load_stats().loads.fetch_add(1, std::memory_order_relaxed);
    st.events().emit(cache_event{cache_event_kind::load_resolved, key, took, {}, {}});
    // The freshness policy (user code) decides the value's times, if there is one.
    const auto [fresh, stale] = st.entry_times(key, value, f.ttl, took);
    const hashed_key hkey = f.ticket.hashed();
    if (fresh <= std::chrono::nanoseconds::zero()) {  // served, not stored
      st.memory().end_load(hkey, std::exchange(f.ticket.token(), 0));
      return;
    }
    std::uint64_t epoch = 0;
    // Loads of this key skip the tiers from before the store until the write and
    // its recheck are initiated (see tier_pipeline.hpp).
    auto writing = st.tiers().invalidate_key(key);
    if (st.memory().store(hkey, &value, nullptr, fresh, std::exchange(f.ticket.token(), 0), st.tiers().epoch_of(key),
                          &epoch, stale, took) &&
        st.has_tiers())
      st.tiers().write(key, value, fresh, epoch, false, stale, true);
  }
};

}  // namespace cacheflight::detail

#endif
