// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_OPTIONS_HPP
#define CACHEFLIGHT_OPTIONS_HPP

// The options of a `flight` and the policies and limits that `flight`,
// `cache` and `batch_loader` share. `cache_options` is in cache.hpp, and
// `batch_options` in batch_loader.hpp, beside their classes.

#include <cacheflight/event.hpp>

#include <chrono>
#include <cstddef>
#include <limits>
#include <optional>

namespace cacheflight {

/// A timeout value meaning "wait for as long as the work takes".
inline constexpr std::chrono::nanoseconds no_timeout = std::chrono::nanoseconds::max();
/// A TTL meaning "never expires".
inline constexpr std::chrono::nanoseconds no_expiry = std::chrono::nanoseconds::max();
/// A size limit meaning "no limit".
inline constexpr std::size_t unlimited = std::numeric_limits<std::size_t>::max();

/// What a flight does with work whose waiters have all left (by their own
/// cancellation slot or timeout).
enum class abandon_policy {
  /// Cancel the work (its cancellation slot receives `terminal`) and free the key.
  cancel,
  /// Let the work run to completion; the key stays in flight and new callers join it.
  finish,
};

/// How the memory tier of a `cache` chooses what to evict when it is full.
enum class eviction_policy {
  /// S3-FIFO (Yang et al., SOSP 2023): a small probationary FIFO, a main FIFO
  /// with 2-bit access counts and a ghost FIFO of recently evicted keys. Scan
  /// resistant and frequency aware, with a hit that only bumps a counter.
  s3fifo,
  /// Least recently used, exactly.
  lru,
};

/// Options for one `flight`. An aggregate: use designated initializers.
struct flight_options {
  /// Cap on keys in flight at once (as `flight::size` counts them). A call for
  /// a new key beyond it completes with `error::max_keys_exceeded`; joining a
  /// key already in flight is allowed. It bounds the works the flight waits
  /// for, not the runs of work functions that ignore their cancellation.
  std::size_t max_keys = 100'000;
  /// Each caller's wait bound when `run_options::timeout` is unset; `no_timeout` for none.
  std::chrono::nanoseconds default_timeout = no_timeout;
  /// Receives every event (see `event_kind`); may be empty. An exception thrown
  /// by the sink is caught and discarded; the flight's state is unaffected.
  event_sink on_event{};
  /// What happens to work when its last waiter leaves.
  abandon_policy on_abandon = abandon_policy::cancel;
  /// Longest accepted key, in bytes. Longer (or empty) keys get `error::invalid_key`.
  std::size_t max_key_length = 1024;
  /// Number of independently locked partitions of the key space (1 to 1024).
  /// More shards reduce lock contention when many threads call into one flight.
  std::size_t shards = 1;
};

/// Per-call options of `flight::async_run`.
struct run_options {
  /// This caller's wait bound. Unset: `flight_options::default_timeout`.
  /// Must be positive; zero or negative gets `error::invalid_timeout`.
  std::optional<std::chrono::nanoseconds> timeout;
};

}  // namespace cacheflight

#endif
