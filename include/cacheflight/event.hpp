// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_EVENT_HPP
#define CACHEFLIGHT_EVENT_HPP

#include <chrono>
#include <exception>
#include <functional>
#include <string_view>

namespace cacheflight {

/// Why an entry left the memory tier (see `cache_event_kind::eviction`).
enum class eviction_cause {
  capacity,   ///< evicted to respect `max_entries` / `max_weight`
  oversized,  ///< never stored: its weight alone exceeds the tier's share of `max_weight`
};

/// What happened, as reported to an `on_event` sink.
enum class event_kind {
  hit,                ///< a caller joined work already in flight for its key
  miss,               ///< a caller found no work in flight and started it
  task_started,       ///< the work function was invoked
  task_resolved,      ///< the work produced a value
  task_rejected,      ///< the work failed; `event::error` holds its exception
  task_timed_out,     ///< every waiter left by timeout; the work was cancelled
  task_cancelled,     ///< the work was cancelled (`cancel`, `clear`, or waiters cancelled)
  max_keys_rejected,  ///< a new key was refused at the `max_keys` cap
};

/// Returns the enumerator's name, e.g. `"task_resolved"`.
constexpr std::string_view to_string(event_kind k) noexcept {
  switch (k) {
    case event_kind::hit: return "hit";
    case event_kind::miss: return "miss";
    case event_kind::task_started: return "task_started";
    case event_kind::task_resolved: return "task_resolved";
    case event_kind::task_rejected: return "task_rejected";
    case event_kind::task_timed_out: return "task_timed_out";
    case event_kind::task_cancelled: return "task_cancelled";
    case event_kind::max_keys_rejected: return "max_keys_rejected";
  }
  return "unknown";
}

/// One observation passed to an event sink.
struct event {
  event_kind kind;
  /// The key concerned. Valid only during the sink's call: copy it to keep it.
  std::string_view key;
  /// For `task_*` kinds after `task_started`: time since the work started
  /// (zero if the work never started). Zero for the other kinds.
  std::chrono::nanoseconds duration{};
  /// For `task_rejected`: the work's exception. Empty otherwise.
  std::exception_ptr error;
};

/// What happened in a `cache`, as reported to `cache_options::on_event`.
enum class cache_event_kind {
  hit,            ///< a caller was served from memory: a value, fresh or stale (a
                  ///< `stale_hit` follows), or a cached failure
  miss,           ///< a caller found nothing in memory to serve it
  load_started,   ///< a loader was invoked (once per coalesced load)
  load_resolved,  ///< a loader produced a value; `duration` is its run time, from its
                  ///< spawn on the load's executor to its result's return there (a
                  ///< loader that never suspends also counts one wait in that queue)
  load_failed,    ///< a loader failed; `error` holds its exception
  eviction,       ///< an entry was evicted or refused for size; see `cause`
  expiration,     ///< an expired entry was removed
  tier_hit,       ///< a tier answered a memory miss; `tier` names it
  tier_miss,      ///< a tier had no value for the key
  /// A tier operation failed (`error` holds a `system_error`); the next tier
  /// or the loader is used. Also, once for each tier, a loaded or set value
  /// that `codec<V>::encode` refused: `error` then holds the codec's exception,
  /// and the key is erased from the tiers instead (an erase that fails is
  /// reported as well).
  tier_error,
  tier_corrupt,   ///< a tier returned bytes that are not a readable value: treated as a miss
  /// A caller was served a value past its fresh time (stale-while-revalidate);
  /// follows its `hit`.
  stale_hit,
  /// A stale value was served after its reload failed (stale-if-error); follows its `stale_hit`.
  stale_after_error,
  /// A background reload started: for a stale read, an early refresh or refresh-ahead.
  refresh_started,
  /// A read while the value was still fresh started an early reload (XFetch); follows `refresh_started`.
  early_refresh,
  /// A background reload produced a value; `duration` is its time since `refresh_started`.
  refresh_resolved,
  /// A background reload failed or timed out; `error` holds why. With
  /// `stale_if_error` the stale value is still served until its expiry.
  refresh_failed,
  /// A key stopped being refreshed ahead: nobody read it during its last fresh
  /// time, or memory no longer holds it.
  refresh_ahead_stopped,
  /// A tier reported that the key was written or erased elsewhere (another
  /// instance, through Redis): memory dropped the value it held.
  invalidated,
  /// A tier reported that changes may have been missed (its invalidation
  /// channel was lost or re-established, or Redis was flushed): memory was
  /// emptied. `key` is empty.
  memory_flushed,
};

/// Returns the enumerator's name, e.g. `"load_resolved"`.
constexpr std::string_view to_string(cache_event_kind k) noexcept {
  switch (k) {
    case cache_event_kind::hit: return "hit";
    case cache_event_kind::miss: return "miss";
    case cache_event_kind::load_started: return "load_started";
    case cache_event_kind::load_resolved: return "load_resolved";
    case cache_event_kind::load_failed: return "load_failed";
    case cache_event_kind::eviction: return "eviction";
    case cache_event_kind::expiration: return "expiration";
    case cache_event_kind::tier_hit: return "tier_hit";
    case cache_event_kind::tier_miss: return "tier_miss";
    case cache_event_kind::tier_error: return "tier_error";
    case cache_event_kind::tier_corrupt: return "tier_corrupt";
    case cache_event_kind::stale_hit: return "stale_hit";
    case cache_event_kind::stale_after_error: return "stale_after_error";
    case cache_event_kind::refresh_started: return "refresh_started";
    case cache_event_kind::early_refresh: return "early_refresh";
    case cache_event_kind::refresh_resolved: return "refresh_resolved";
    case cache_event_kind::refresh_failed: return "refresh_failed";
    case cache_event_kind::refresh_ahead_stopped: return "refresh_ahead_stopped";
    case cache_event_kind::invalidated: return "invalidated";
    case cache_event_kind::memory_flushed: return "memory_flushed";
  }
  return "unknown";
}

/// One observation passed to a cache's event sink.
struct cache_event {
  cache_event_kind kind;
  /// The key concerned. Valid only during the sink's call.
  std::string_view key;
  /// For `load_resolved` and `load_failed`: the loader's run time; for
  /// `refresh_resolved` and `refresh_failed`: the time since the reload started.
  std::chrono::nanoseconds duration{};
  /// For `load_failed` and `refresh_failed`: the exception; for `tier_error`: a
  /// `boost::system::system_error` with the tier's error code, or the codec's
  /// exception for a value it could not encode.
  std::exception_ptr error;
  /// For `eviction`: why.
  eviction_cause cause = eviction_cause::capacity;
  /// For `tier_*` kinds: the tier's name. Valid only during the sink's call.
  std::string_view tier{};
};

/// A cache's event sink; the same calling rules as `event_sink`.
using cache_event_sink = std::function<void(const cache_event&)>;

/// An event sink. It is called synchronously from whichever thread caused the
/// event, possibly from several threads at once, never under a library lock.
using event_sink = std::function<void(const event&)>;

}  // namespace cacheflight

#endif
