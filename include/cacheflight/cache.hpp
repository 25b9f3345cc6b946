// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_CACHE_HPP
#define CACHEFLIGHT_CACHE_HPP

#include <cacheflight/batch_loader.hpp>
#include <cacheflight/clock.hpp>
#include <cacheflight/codec.hpp>
#include <cacheflight/error.hpp>
#include <cacheflight/event.hpp>
#include <cacheflight/flight.hpp>
#include <cacheflight/options.hpp>
#include <cacheflight/stats.hpp>
#include <cacheflight/tier.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/unordered/unordered_flat_set.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cacheflight {

/// Options for one `cache`. An aggregate: use designated initializers.
struct cache_options {
  /// Cap on entries in memory; 0 stores nothing, `unlimited` for no cap.
  std::size_t max_entries = 10'000;
  /// Lifetime of a value stored without an explicit TTL; `no_expiry` for none.
  std::chrono::nanoseconds default_ttl = no_expiry;
  /// Cap on the total weight given by the weigher (see the cache constructor);
  /// `unlimited` for no cap. Without a weigher every entry weighs 1.
  std::size_t max_weight = unlimited;
  /// Which entry to evict when full.
  eviction_policy policy = eviction_policy::s3fifo;
  /// When set, a loader's failure is cached for this long (negative caching):
  /// callers within it get the same exception without a new load. Unset: failures
  /// are never cached.
  std::optional<std::chrono::nanoseconds> negative_ttl{};
  /// Receives every cache event; may be empty. Exceptions it throws are discarded.
  cache_event_sink on_event{};
  /// Independently locked partitions of the memory tier (1 to 1024). The caps
  /// are split between them exactly: each holds `max_entries / shards` entries
  /// (and `max_weight / shards` weight), the remainder going one each to the
  /// first shards, so the totals never exceed the caps and eviction is exact
  /// only with one shard. A cap smaller than `shards` uses that many shards.
  /// Use several when many threads share the cache.
  std::size_t shards = 1;
  /// Cap on keys being loaded at once; beyond it a load fails with `error::max_keys_exceeded`.
  std::size_t max_loads = 100'000;
  /// Bound on each caller's wait for a load (`no_timeout` for none); `error::timed_out` after it.
  std::chrono::nanoseconds load_timeout = no_timeout;
  /// What happens to a load whose callers have all left: cancelled (default), or
  /// left to finish and fill the cache. Cancelling asks the loader to stop (its
  /// cancellation slot receives `terminal`) and frees the key for a new load; a
  /// loader that ignores it and still returns a value has that value counted
  /// in `cache_stats::loads`, and stored as any load's, unless the key was
  /// erased, cleared or set, or a new load of it started, meanwhile.
  abandon_policy on_abandon = abandon_policy::cancel;
  /// Longest accepted key, in bytes.
  std::size_t max_key_length = 1024;
  /// Tiers behind memory, consulted in order on a miss before the loader (the
  /// first is the L2): a Redis tier, a disk tier, or your own (`tier.hpp`). A
  /// tier's hit fills memory, and the tiers before it, with the value's remaining
  /// lifetime; a loaded or `async_set` value is written to every tier behind the
  /// callers' backs (write-behind); `async_erase` and `async_clear` reach every
  /// tier. A failing tier is skipped with a `tier_error` event and a stat. Values
  /// cross tiers through `codec<V>`, which must exist when tiers are given.
  std::vector<std::shared_ptr<tier>> tiers{};
  /// Completes values found in memory for handlers on the cache's own
  /// `io_context` executor (without an allocator of their own) in rounds, as a
  /// strand runs its queue (see `async_get`): one scheduling for many
  /// completions, at the price of running a round's completions one after
  /// another on one thread. Off, each is posted on its own, and threads
  /// running the context run them in parallel. Ignored when the cache's
  /// executor is not an `io_context`'s.
  bool batch_hits = false;
  /// Stale-while-revalidate: how long a value stays servable after its fresh
  /// time (its TTL) has run out. A caller with a loader that finds it stale
  /// gets it at once, and one background reload of the key starts (coalesced
  /// with any other load of it); nothing is served once this window has
  /// passed too, whatever the reload does. 0 (the default): values expire at
  /// the end of their TTL. Applies to values loaded or set with a finite TTL;
  /// the freshness policy (see the cache constructor) overrides it per entry.
  std::chrono::nanoseconds stale_while_revalidate = std::chrono::nanoseconds::zero();
  /// Stale-if-error: a background reload that fails or times out leaves the
  /// stale value servable until its window ends (a `refresh_failed` event, and
  /// `stale_after_error` for each caller served then; the next stale read
  /// starts another reload). Off: the stale value is dropped, and the next
  /// caller waits for a load. Either way a failed reload stores no failure
  /// (`negative_ttl`) over the value, and a value still fresh (its reload
  /// was early, or ahead) is kept until its fresh time ends.
  bool stale_if_error = true;
  /// Bound on a background reload: after it, the reload counts as failed and
  /// is cancelled unless other callers wait for it (`on_abandon` as for any
  /// load). `no_timeout`: `load_timeout` applies.
  std::chrono::nanoseconds refresh_timeout = no_timeout;
  /// XFetch's beta: with a positive value, a read of a fresh value starts a
  /// background reload early, with a probability that grows as the fresh time
  /// runs out: when `now - delta * beta * ln(u) >= fresh_until` for a uniform
  /// u in (0, 1], delta the key's running average load time (so keys never
  /// loaded here, and reads without a loader, do not refresh early). Load
  /// times are read from the cache's clock: with the default
  /// `coarse_steady_clock`, a load shorter than its tick (1 to 4 ms, more on
  /// a CPU left idle meanwhile) may be timed at zero, and a key whose loads
  /// all were does not refresh early either. 1 is the paper's default; larger
  /// refreshes earlier. 0 (the default): off.
  double early_refresh_beta = 0;
  /// TTL jitter: each fresh time is multiplied by a uniform factor in
  /// [1 - ttl_jitter, 1 + ttl_jitter], so that values stored together do not
  /// expire together. In [0, 1); 0 (the default): exact TTLs.
  double ttl_jitter = 0;
  /// Refresh-ahead (`cache::refresh_ahead`): how long before its fresh time
  /// runs out a key is reloaded (and how long a failed reload waits, 100 ms
  /// at least, before it is tried again).
  std::chrono::nanoseconds refresh_ahead_lead = std::chrono::seconds(1);
  /// Refresh-ahead: cap on its reloads running at once; keys due beyond it wait.
  std::size_t max_refreshes_ahead = 4;
};

/// How long one loaded value is fresh, then servable stale: what a freshness
/// policy returns (see `cache::freshness_policy`).
struct freshness {
  /// Fresh time. Not positive: the value is served to its callers but not stored.
  std::chrono::nanoseconds fresh = no_expiry;
  /// Stale-while-revalidate window after it (negative counts as 0).
  std::chrono::nanoseconds stale = std::chrono::nanoseconds::zero();
};

/// Per-call options of `cache::async_get` with a loader.
struct get_options {
  /// This caller's wait bound; unset: `cache_options::load_timeout`.
  std::optional<std::chrono::nanoseconds> timeout{};
  /// Lifetime of the value this call loads; unset: `cache_options::default_ttl`.
  std::optional<std::chrono::nanoseconds> ttl{};
};

/// Result of `cache::async_warmup`.
struct warmup_result {
  /// Keys obtained (loaded, read from a tier, or from a load already in flight)
  /// and held in memory when their load completed.
  std::size_t loaded = 0;
  std::size_t skipped = 0;  ///< keys already in memory (left untouched)
  /// Keys whose load failed, with the failure.
  std::vector<std::pair<std::string, std::exception_ptr>> failed;
  /// Keys obtained but not held in memory: invalidated while loading, heavier
  /// than the weight cap, or a cache that stores nothing.
  std::size_t not_stored = 0;
};

}  // namespace cacheflight

// The machinery, which needs the options above: memory, tiers, loads, events.
#include <cacheflight/detail/cache_state.hpp>
#include <cacheflight/detail/post_result.hpp>

namespace cacheflight {

/// An asynchronous read-through cache: memory first, then one coalesced load.
///
/// `async_get(key, loader, token)` answers from memory when a fresh value is
/// there; otherwise it joins or starts the one load of `key` in flight (a
/// `flight` inside the cache), stores the result and completes every caller.
///
/// @tparam V      The value type: copy constructible and default constructible.
/// @tparam Clock  The clock of TTLs and load timeouts (default: `coarse_steady_clock`;
///                tests use `manual_clock`).
///
/// @par Threads
/// Every member may be called from any thread, concurrently. Memory is split in
/// `cache_options::shards` partitions, each guarded by a lock held for
/// constant-time bookkeeping only; loaders, weighers, event sinks and handlers
/// never run under it. For a multi-core server, run one `io_context(1)` per
/// thread, share one cache with `shards` of 16 or more among them, and bind
/// handlers to the caller's context (coroutines are): an immediate result is
/// then posted straight to that context and never crosses threads.
///
/// @par Lifetime
/// The cache may be destroyed with loads in flight: their callers complete with
/// `error::cancelled`. Deferred operations must be launched before it is destroyed.
template <class V, class Clock = coarse_steady_clock>
class cache {
  using state_type = detail::cache_state<V, Clock>;

 public:
  using value_type = V;
  using clock_type = Clock;
  using executor_type = boost::asio::any_io_executor;
  /// Gives the weight of a value; called outside any lock, once per stored value.
  using weigher_type = std::function<std::size_t(std::string_view key, const V& value)>;
  /// Decides how long a loaded value is fresh, then servable stale, from its
  /// key, the value and how long its load took (the loader's run time, as
  /// `cache_event_kind::load_resolved` measures it). Called
  /// outside any lock, once per value a loader produces (not for values read
  /// from a tier, which keep the times they were stored with, nor for
  /// `async_set`, which uses its TTL and `stale_while_revalidate`). It
  /// overrides the TTL of the call and `stale_while_revalidate`; `ttl_jitter`
  /// still applies. If it throws, the callers of the load get its exception
  /// and nothing is stored.
  using freshness_policy =
      std::function<freshness(std::string_view key, const V& value, std::chrono::nanoseconds load_time)>;

  /// @throws boost::system::system_error with `error::invalid_option` for options out of range.
  explicit cache(executor_type ex, cache_options opts = {}, weigher_type weigher = {})
      : st_(std::make_shared<state_type>(std::move(ex), std::move(opts), std::move(weigher))) {
    st_->listen_to_tiers();
  }

  /// As above, with a freshness policy deciding each loaded value's times.
  cache(executor_type ex, cache_options opts, weigher_type weigher, freshness_policy policy)
      : st_(std::make_shared<state_type>(std::move(ex), std::move(opts), std::move(weigher), std::move(policy))) {
    st_->listen_to_tiers();
  }

  template <class ExecutionContext>
    requires std::convertible_to<ExecutionContext&, boost::asio::execution_context&>
  cache(ExecutionContext& ctx, cache_options opts, weigher_type weigher, freshness_policy policy)
      : cache(ctx.get_executor(), std::move(opts), std::move(weigher), std::move(policy)) {}

  template <class ExecutionContext>
    requires std::convertible_to<ExecutionContext&, boost::asio::execution_context&>
  explicit cache(ExecutionContext& ctx, cache_options opts = {}, weigher_type weigher = {})
      : cache(ctx.get_executor(), std::move(opts), std::move(weigher)) {}

  cache(const cache&) = delete;
  cache& operator=(const cache&) = delete;

  /// Cancels the loads in flight (their callers get `error::cancelled`) and
  /// stops refresh-ahead.
  ~cache() {
    if (st_) {
      st_->stop_refresh_ahead_all();
      st_->get_flight().clear();
    }
  }

  executor_type get_executor() const noexcept { return st_->executor(); }
  const cache_options& options() const noexcept { return st_->options(); }

  /// Gets `key`: from memory if fresh, else from one load shared by all concurrent callers.
  ///
  /// @param key     Non-empty, at most `cache_options::max_key_length` bytes.
  /// @param opts    This caller's timeout and the TTL of a value this call loads.
  /// @param loader  Runs on a miss, once for all concurrent callers of `key`:
  ///                `() -> asio::awaitable<V>`, or an Asio asynchronous operation
  ///                taking a completion token with signature
  ///                `void(error_code, V)` or `void(std::exception_ptr, V)` (a
  ///                `batch_loader`'s `async_load` bound to a key, for instance).
  ///                Moved, never copied: a move-only callable is fine. Called
  ///                once, by the load it starts; a caller that joins a load in
  ///                flight has its loader destroyed unused.
  /// @param token   The completion token.
  ///
  /// @par Completion signature
  /// @code void(std::exception_ptr error, V value) @endcode
  /// Errors: the loader's exception, unchanged (the same object for every caller;
  /// a loader failing with `operation_aborted` of its own accord is a failure like
  /// any other, counted and negatively cached; only a load cancelled because its
  /// callers left, or by the cache's destruction, is not); a throwing weigher's
  /// exception (the value is then not stored);
  /// `error::invalid_key`, `error::invalid_timeout`, `error::timed_out`,
  /// `error::max_keys_exceeded` (too many loads in flight), `error::cancelled`;
  /// `operation_aborted` for a caller cancelled through its own slot. With
  /// `negative_ttl`, a cached failure is delivered as on the original load.
  ///
  /// @par Executor
  /// The handler runs on its associated executor (the cache's by default), never
  /// inside this call: a value found in memory is posted. With
  /// `cache_options::batch_hits`, when that executor is the cache's own
  /// `io_context` executor and the handler has no allocator of its own,
  /// values found in memory complete in rounds, as a
  /// strand runs its queue: one scheduling on the context runs, on one thread
  /// and one after another, every such completion queued before it started,
  /// in the order each thread queued them (those queued by the previous round
  /// first). One queued by a handler of a round (a caller that starts its next
  /// call) runs in the next round, posted when the current one ends, so the
  /// context's other handlers run between rounds. A handler of a round must
  /// not block waiting for another completion of the cache. A handler that
  /// throws leaves the rest of its round for the next one. Completions still
  /// queued when the context is shut down are destroyed without being run, as
  /// its own handlers are.
  ///
  /// @par Freshness
  /// A value past its fresh time (its TTL) but within its stale window
  /// (`cache_options::stale_while_revalidate`, or the freshness policy's) is
  /// a hit: it is delivered at once, and this caller's `loader` starts one
  /// background reload of the key, unless one is already running (later
  /// callers keep getting the stale value meanwhile, and the reload is
  /// coalesced with any load of the key in flight). The reload stores its
  /// value as any load does; if it fails or outlasts `refresh_timeout`, the
  /// stale value is kept until its window ends (`stale_if_error`), and the
  /// next stale read starts another reload. Past the window nothing is served:
  /// the caller misses and joins (or starts) a load. With
  /// `early_refresh_beta`, a read of a fresh value may likewise start the
  /// reload early. The reload runs on the cache's executor, whatever this
  /// caller's executor is, and outlives this call.
  ///
  /// @par Per-Operation Cancellation
  /// While waiting for a load: `terminal`, `partial` and `total`, as in
  /// `flight::async_run`; when the last caller leaves, the load is cancelled
  /// (unless `on_abandon` is `finish`). A value found in memory is not
  /// cancellable, and neither is the background reload it may start.
  ///
  /// @par Invalidation
  /// An `async_erase`, `async_clear` or `async_set` of `key` issued once this
  /// call started a load (even before the load's first step ran) does not stop
  /// the load: the callers already waiting for it still receive its value, but
  /// the value is stored nowhere, and callers arriving after the invalidation
  /// do not join it: they start a fresh load. Loads of a key skip the tiers and
  /// run the loader while an invalidation of it is being handed to the tiers,
  /// or while a loaded value of it is being written to them (keys share these
  /// marks by stripes of 256, so another key's load may skip the tiers then too).
  ///
  /// @par Thread safety
  /// Any thread, concurrently with every other member.
  template <class Loader, boost::asio::completion_token_for<void(std::exception_ptr, V)> CompletionToken>
  auto async_get(std::string key, get_options opts, Loader loader, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, V)>(
        initiate_get{st_.get()}, token, std::move(key), opts, std::move(loader));
  }

  /// As above, with default `get_options`.
  template <class Loader, boost::asio::completion_token_for<void(std::exception_ptr, V)> CompletionToken>
    requires(!std::same_as<std::decay_t<Loader>, get_options>)
  auto async_get(std::string key, Loader loader, CompletionToken&& token) {
    // Initiated here rather than through the overload above: a hit's key is
    // then moved once, not twice.
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, V)>(
        initiate_get{st_.get()}, token, std::move(key), get_options{}, std::move(loader));
  }

  /// As above, loading a miss through `loader` with the cache key as the batch
  /// key: concurrent misses for different keys share batches. The batch loader
  /// must outlive the operation.
  template <class Hash, class BatchClock,
            boost::asio::completion_token_for<void(std::exception_ptr, V)> CompletionToken>
  auto async_get(std::string key, batch_loader<std::string, V, Hash, BatchClock>& loader, CompletionToken&& token) {
    auto bound = loader.bind(key);
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, V)>(
        initiate_get{st_.get()}, token, std::move(key), get_options{}, std::move(bound));
  }

  /// Looks `key` up in memory only; never loads.
  ///
  /// @par Completion signature
  /// @code void(std::exception_ptr error, std::optional<V> value) @endcode
  /// `value` is empty when no value is in memory (a cached failure counts as
  /// none); a stale value (within its stale window) is returned, and starts no
  /// reload. `error` only for `error::invalid_key`. Posted to the handler's
  /// executor; with `cache_options::batch_hits`, on the cache's own
  /// `io_context` executor, in rounds (see the other overload).
  template <boost::asio::completion_token_for<void(std::exception_ptr, std::optional<V>)> CompletionToken>
  auto async_get(std::string key, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, std::optional<V>)>(
        [st = st_.get()](auto handler, std::string key) {
          std::exception_ptr e;
          std::optional<V> v;
          if (!st->valid_key(key))
            e = detail::make_error(error::invalid_key);
          else
            st->lookup(v, key, 2, nullptr);
          detail::post_result(st->ready(), st->executor(), std::move(handler), std::move(e), std::move(v));
        },
        token, std::move(key));
  }

  /// The coroutine fast path of `async_get`: a value found in memory is returned
  /// without suspending the caller or posting anything; a miss continues as
  /// `async_get(key, opts, loader, use_awaitable)`. Prefer it in coroutines on hot
  /// paths; use `async_get` for other tokens, or where a hit must not resume the
  /// caller inline. Errors are thrown. The cache must outlive the awaitable.
  template <class Loader>
  boost::asio::awaitable<V> co_get(std::string key, Loader loader, get_options opts) {
    std::optional<V> v;
    if (co_get_found(v, key, loader, &opts.ttl)) co_return std::move(*v);
    // The miss path lives in its own frame, keeping the hit path's small.
    auto op = co_get_miss(std::move(key), std::move(loader), opts);
    co_return co_await std::move(op);
  }

  /// As above, with default `get_options`.
  template <class Loader>
  boost::asio::awaitable<V> co_get(std::string key, Loader loader) {
    // Its own coroutine, not a call of the one above: that would move the key
    // once more, and copy a `get_options` whose unset members were just built
    // (only their flags written), a load that waits for those stores.
    std::optional<V> v;
    if (co_get_found(v, key, loader, nullptr)) co_return std::move(*v);
    auto op = co_get_miss(std::move(key), std::move(loader), get_options{});
    co_return co_await std::move(op);
  }

 private:
  // co_get's look in memory: true with the value in `v` (starting the
  // background reload of a stale or early read, see async_get), false for a
  // miss; throws a cached failure, and `V`'s copy's exception. `ttl` is the
  // caller's option, null for the default (an unset optional passed by value
  // would be built and then loaded whole, the stall co_get avoids).
  template <class Loader>
  bool co_get_found(std::optional<V>& v, std::string& key, Loader& loader,
                    const std::optional<std::chrono::nanoseconds>* ttl) {
    if (!st_->valid_key(key)) return false;
    std::exception_ptr failure;
    detail::read_state rs;
    st_->lookup(v, key, 2, &failure, true, &rs);
    if (v) {
      if (rs.refresh)
        st_->refresh_for_read(std::move(key), std::move(loader), ttl ? *ttl : std::nullopt, rs);
      return true;
    }
    if (failure) std::rethrow_exception(failure);
    return false;
  }

  template <class Loader>
  boost::asio::awaitable<V> co_get_miss(std::string key, Loader loader, get_options opts) {
    // The fast path counted this miss already.
    auto op = boost::asio::async_initiate<const boost::asio::use_awaitable_t<>&, void(std::exception_ptr, V)>(
        initiate_get{st_.get(), true}, boost::asio::use_awaitable, std::move(key), opts, std::move(loader));
    co_return co_await std::move(op);
  }

 public:
  /// Stores `value` under `key` with the default TTL (`ttl`: this one; `no_expiry`:
  /// none), replacing any value and superseding any load of `key` in flight (it
  /// will not be stored, and later callers do not join it). With
  /// tiers, the value is also written to each of them, behind the caller's back:
  /// the operation completes once memory holds it (a tier's failure to store it
  /// is reported through events and `tier_stats::errors`).
  ///
  /// @par Completion signature
  /// @code void(std::exception_ptr error) @endcode
  /// Errors: `error::invalid_key`, `error::invalid_timeout` (a TTL that is not
  /// positive); with tiers, the exception of a `codec<V>::encode` that refuses
  /// the value (memory holds it nonetheless); the exception of a weigher, or of
  /// `V`'s copy constructor, that throws (then nothing changed: memory, tiers
  /// and loads in flight are as before); the exception of `V`'s move
  /// constructor, if it throws while the value replaces the one in memory
  /// (then the key is absent from memory). A value heavier than the cap is
  /// not stored in memory (an `eviction` event with cause `oversized`); that is
  /// not an error. Posted to the handler's executor.
  template <boost::asio::completion_token_for<void(std::exception_ptr)> CompletionToken>
  auto async_set(std::string key, V value, std::chrono::nanoseconds ttl, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr)>(
        [st = st_.get()](auto handler, std::string key, V value, std::chrono::nanoseconds ttl) {
          std::exception_ptr e;
          if (!st->valid_key(key))
            e = detail::make_error(error::invalid_key);
          else if (ttl <= std::chrono::nanoseconds::zero())
            e = detail::make_error(error::invalid_timeout);
          else {
            try {
              auto inv = st->invalidate_key(key);  // until the tiers' writes are initiated
              st->set(key, value, ttl, true);
            } catch (...) {
              e = std::current_exception();
            }
          }
          detail::post_result(st->executor(), std::move(handler), std::move(e));
        },
        token, std::move(key), std::move(value), ttl);
  }

  template <boost::asio::completion_token_for<void(std::exception_ptr)> CompletionToken>
  auto async_set(std::string key, V value, CompletionToken&& token) {
    return async_set(std::move(key), std::move(value), st_->options().default_ttl,
                     std::forward<CompletionToken>(token));
  }

  /// Removes `key` from memory and from every tier; a load of it in flight will
  /// not be stored, and callers from now on start a fresh load instead of
  /// joining it. With tiers, completes once every tier has acknowledged the
  /// removal (a tier never applies it before an earlier write of the key).
  /// @par Completion signature
  /// @code void(std::exception_ptr error, bool erased) @endcode
  /// `erased`: whether memory held a live entry of the key: a value, fresh or
  /// stale, or a cached failure (an expired one is reclaimed and counted as an
  /// expiration). Errors: `error::invalid_key`; the first tier's failure as a
  /// `boost::system::system_error` (for instance `error::tier_unavailable`
  /// while its breaker is open); memory is erased regardless.
  template <boost::asio::completion_token_for<void(std::exception_ptr, bool)> CompletionToken>
  auto async_erase(std::string key, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, bool)>(
        [st = st_.get()](auto handler, std::string key) {
          if (!st->valid_key(key)) {
            detail::post_result(st->executor(), std::move(handler), detail::make_error(error::invalid_key), false);
            return;
          }
          // With tiers, the handler may run (and its owner destroy the cache)
          // before `inv` ends: `keep` outlives it.
          const auto keep = st->has_tiers() ? st->shared_from_this() : nullptr;
          auto inv = st->invalidate_key(key);  // until the tiers' erases are initiated
          const bool erased = st->erase(key);
          if (!st->has_tiers()) {
            detail::post_result(st->executor(), std::move(handler), std::exception_ptr{}, erased);
            return;
          }
          auto work = boost::asio::make_work_guard(boost::asio::get_associated_executor(handler, st->executor()));
          st->tiers().on_every_tier(
              key, [&](tier& t, auto h) { t.async_erase(key, std::move(h)); },
              [ex = st->executor(), h = std::move(handler), work = std::move(work),
               erased](boost::system::error_code ec) mutable {
                detail::post_result(ex, std::move(h), ec ? detail::make_error(ec) : std::exception_ptr{}, erased);
              });
        },
        token, std::move(key));
  }

  /// Removes every entry from memory and from every tier (a Redis tier removes
  /// its prefix's keys only); loads in flight will not be stored, and callers
  /// from now on start fresh loads. With tiers, completes once every tier has
  /// acknowledged.
  /// @par Completion signature
  /// @code void(std::exception_ptr error) @endcode
  /// Errors: the first tier's failure as a `boost::system::system_error`; memory
  /// is cleared regardless.
  template <boost::asio::completion_token_for<void(std::exception_ptr)> CompletionToken>
  auto async_clear(CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr)>(
        [st = st_.get()](auto handler) {
          const auto keep = st->has_tiers() ? st->shared_from_this() : nullptr;  // as in async_erase
          auto inv = st->invalidate_all();  // until the tiers' clears are initiated
          st->clear();
          if (!st->has_tiers()) {
            detail::post_result(st->executor(), std::move(handler), std::exception_ptr{});
            return;
          }
          auto work = boost::asio::make_work_guard(boost::asio::get_associated_executor(handler, st->executor()));
          st->tiers().on_every_tier(
              std::string{}, [&](tier& t, auto h) { t.async_clear(std::move(h)); },
              [ex = st->executor(), h = std::move(handler), work = std::move(work)](boost::system::error_code ec) mutable {
                detail::post_result(ex, std::move(h), ec ? detail::make_error(ec) : std::exception_ptr{});
              });
        },
        token);
  }

  /// A warmup entry: a key and the coroutine that loads it.
  using warmup_entry = std::pair<std::string, std::function<boost::asio::awaitable<V>()>>;

  /// Loads every key not already in memory, concurrently (coalesced with any
  /// other caller of the same key). A failure does not stop the others. A key
  /// given twice is loaded and counted once (the first entry's loader is used).
  /// @par Completion signature
  /// @code void(std::exception_ptr error, warmup_result result) @endcode
  /// `error` is never set; failures are listed in `result.failed` (an invalid key
  /// fails with `error::invalid_key`). The handler runs on its associated
  /// executor, never inside this call; outstanding work is held on that
  /// executor until it runs.
  template <boost::asio::completion_token_for<void(std::exception_ptr, warmup_result)> CompletionToken>
  auto async_warmup(std::vector<warmup_entry> entries, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, warmup_result)>(
        [this](auto handler, std::vector<warmup_entry> entries) { start_warmup(std::move(handler), std::move(entries)); },
        token, std::move(entries));
  }

  /// The value of `key` if it is in memory, fresh or within its stale window
  /// (a stale value starts no reload here). Synchronous, thread-safe, no
  /// executor hop; a hit allocates nothing beyond `V`'s copy. Counts a hit or
  /// a miss like any lookup.
  std::optional<V> peek(std::string_view key) const {
    std::optional<V> v;
    st_->lookup(v, key, 0, nullptr);
    return v;
  }

  /// Refresh-ahead: keeps `key` fresh in the background, for keys that must
  /// never make a caller wait (warmed ones, say). `loader` runs as a load of
  /// the key (coalesced with any other, stored and written to the tiers like
  /// any) `cache_options::refresh_ahead_lead` before the key's fresh time runs
  /// out, at most `max_refreshes_ahead` of them at once (others wait their
  /// turn), with `default_ttl` as its TTL. A key absent from memory is
  /// loaded at once. The key stops being refreshed (a `refresh_ahead_stopped`
  /// event) once a reload falls due and nobody has read it since the last one,
  /// or memory no longer holds it (evicted, erased, expired); a failed reload
  /// is retried a lead (100 ms at least) later. Registering a key again
  /// replaces its loader and gives it one more reload whether read or not.
  /// A reload takes a value from a tier only when it is fresher than the one
  /// in memory (another instance reloaded it), as a stale read's reload does.
  ///
  /// While keys are registered, a timer of the cache waits on its executor:
  /// `io_context::run()` does not return before they stop, `stop_refresh_ahead`
  /// is called for them, or the cache is destroyed. Thread-safe.
  ///
  /// @param key     Non-empty, at most `cache_options::max_key_length` bytes.
  /// @throws boost::system::system_error with `error::invalid_key` for a bad key.
  void refresh_ahead(std::string key, std::function<boost::asio::awaitable<V>()> loader) {
    if (!st_->valid_key(key)) throw boost::system::system_error(make_error_code(error::invalid_key), "refresh_ahead");
    st_->refresh_ahead(std::move(key), std::move(loader));
  }

  /// Stops refreshing `key` ahead (a reload running goes on). Returns whether
  /// it was registered. Thread-safe.
  bool stop_refresh_ahead(std::string_view key) { return st_->stop_refresh_ahead(key); }

  /// A snapshot of the counters. Reclaims expired entries first, so `size`
  /// counts live entries only (fresh, or stale within their window).
  cache_stats stats() const { return st_->stats(); }

  /// Entries in memory (live ones only: fresh, or stale within their window).
  std::size_t size() const { return stats().size; }

 private:
  struct initiate_get {
    state_type* st;
    bool counted = false;  // the caller counted this lookup already (co_get's miss)

    // Once the handler is handed on it may run on another thread and end the
    // initiation (an awaiting coroutine's frame holds this object, `key` and
    // `loader`): nothing of theirs is read after that.
    template <class Handler, class Loader>
    void operator()(Handler&& handler, std::string&& key, get_options opts, Loader&& loader) const {
      namespace asio = boost::asio;
      state_type* const st = this->st;
      if (!st->valid_key(key)) {
        detail::post_result(st->executor(), std::forward<Handler>(handler), detail::make_error(error::invalid_key), V{});
        return;
      }
      std::exception_ptr failure;
      std::optional<V> v;
      detail::read_state rs;
      std::size_t hash = 0;  // the lookup hashes the key once for memory, the flight and the load's token
      if constexpr (std::is_nothrow_copy_constructible_v<V>) {
        st->lookup(v, key, 2, &failure, !counted, &rs, &hash);
      } else {
        try {
          st->lookup(v, key, 2, &failure, !counted, &rs, &hash);
        } catch (...) {
          failure = std::current_exception();  // V's copy threw
        }
      }
      if (v) {
        if (rs.refresh) {
          // A stale or early read: the reload takes the key and the loader
          // before the value is handed on, and the cache is held until it has
          // started.
          const auto keep = st->shared_from_this();
          std::string k = std::move(key);
          std::decay_t<Loader> l(std::forward<Loader>(loader));
          const auto ttl = opts.ttl;
          detail::post_result(st->ready(), st->executor(), std::forward<Handler>(handler), std::exception_ptr{},
                              std::move(*v));
          st->refresh_for_read(std::move(k), std::move(l), ttl, rs);
          return;
        }
        detail::post_result(st->ready(), st->executor(), std::forward<Handler>(handler), std::exception_ptr{},
                            std::move(*v));
        return;
      }
      if (failure) {
        detail::post_result(st->executor(), std::forward<Handler>(handler), std::move(failure), V{});
        return;
      }
      const auto ttl = opts.ttl ? *opts.ttl : st->options().default_ttl;
      if (ttl <= std::chrono::nanoseconds::zero()) {
        detail::post_result(st->executor(), std::forward<Handler>(handler), detail::make_error(error::invalid_timeout), V{});
        return;
      }
      using work_type = detail::load_work<state_type, std::decay_t<Loader>>;
      work_type work{detail::load_ticket<state_type>(st, hash), std::forward<Loader>(loader), ttl};
      st->run_load(std::forward<Handler>(handler), std::move(key), run_options{.timeout = opts.timeout},
                   std::move(work));
    }
  };

  template <class Handler>
  void start_warmup(Handler handler, std::vector<warmup_entry> entries) {
    namespace asio = boost::asio;
    using handler_executor = asio::associated_executor_t<Handler, asio::any_io_executor>;
    struct op {
      op(Handler h, const asio::any_io_executor& fallback, std::size_t n)
          : handler(std::move(h)),
            work(asio::make_work_guard(asio::get_associated_executor(handler, fallback))),
            pending(n + 1) {}
      Handler handler;
      // The handler's context must not run out of work before the result.
      asio::executor_work_guard<handler_executor> work;
      std::mutex mu;
      std::size_t pending;  // one per entry, plus the initiating call's own
      warmup_result result;
      void one_done() {
        std::unique_lock lk(mu);
        if (--pending != 0) return;
        lk.unlock();
        auto hex = work.get_executor();
        asio::dispatch(hex, [h = std::move(handler), r = std::move(result), w = std::move(work)]() mutable {
          std::move(h)(std::exception_ptr{}, std::move(r));
        });
      }
    };
    auto o = std::make_shared<op>(std::move(handler), st_->executor(), entries.size());
    boost::unordered_flat_set<std::string_view> seen;
    for (auto& [key, loader] : entries) {
      if (!seen.insert(std::string_view(key)).second) {  // a duplicate: the first one loads it
        std::lock_guard lk(o->mu);
        --o->pending;
        continue;
      }
      if (!st_->valid_key(key)) {
        std::lock_guard lk(o->mu);
        o->result.failed.emplace_back(key, detail::make_error(error::invalid_key));
        --o->pending;
        continue;
      }
      std::optional<V> held;
      st_->lookup(held, key, 0, nullptr, false);
      if (held) {
        std::lock_guard lk(o->mu);
        ++o->result.skipped;
        --o->pending;
        continue;
      }
      std::string k = key;
      async_get(k, std::move(loader), [o, st = st_, k](std::exception_ptr e, V) {
        // Loaded, and still in memory as the load completes (it may not have
        // been stored: invalidated meanwhile, too heavy, or a cache that
        // stores nothing).
        std::optional<V> held;
        if (!e) st->lookup(held, k, 0, nullptr, false);
        const bool kept = held.has_value();
        {
          std::lock_guard lk(o->mu);
          if (e)
            o->result.failed.emplace_back(k, std::move(e));
          else
            ++(kept ? o->result.loaded : o->result.not_stored);
        }
        o->one_done();
      });
    }
    // The last reference: posted, so the handler never runs inside this call.
    asio::post(st_->executor(), [o] { o->one_done(); });
  }

  std::shared_ptr<state_type> st_;
};

}  // namespace cacheflight

#endif
