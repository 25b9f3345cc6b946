// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_REDIS_TIER_HPP
#define CACHEFLIGHT_REDIS_TIER_HPP

#include <cacheflight/redis/client.hpp>
#include <cacheflight/tier.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace cacheflight::redis {

/// How a Redis `tier` learns that another instance wrote or erased a key, so
/// that the caches in front of it drop their copy from memory
/// (`tier_options::invalidation`).
enum class invalidation_mode {
  /// None: a copy in memory lasts until its TTL ends.
  off,
  /// Redis' server-assisted client-side caching in its two-connection mode:
  /// the data connection runs `CLIENT TRACKING on REDIRECT <id> BCAST PREFIX
  /// <prefix> NOLOOP`, and a second connection of the tier (`<id>`) subscribes
  /// to `__redis__:invalidate`. Every write to a key under the prefix, by
  /// anyone (another instance, a script, `redis-cli`, an expiry), is reported;
  /// this process's own writes are not (NOLOOP), except a fill under a lease:
  /// Redis reports a script's writes to its caller too, so the instance that
  /// filled the key checks such a report with one GET, and keeps its value
  /// when Redis holds what it wrote. Redis 6 or later; not with
  /// Cluster (use `publish`); refused by some managed services. The tier
  /// installs the setup of the client's connections, so a client serves one
  /// tracking tier (a second is refused with `error::invalid_option`).
  tracking,
  /// An application channel: each write of this tier (a set, a fill, an
  /// erase) runs as a script that also publishes `<instance id><key>` on the
  /// channel, so a write that happened is always announced; a clear publishes
  /// `<instance id>` alone once it ends (everything is dropped). A second
  /// connection of the tier subscribes to the channel. Only writes made
  /// through cacheflight are reported. Works wherever scripts and PUBLISH do,
  /// Cluster included (a message published on one node reaches subscribers
  /// on every node).
  publish,
};

/// Options of a Redis `tier`. An aggregate: use designated initializers.
/// Durations above ten years count as ten years.
struct tier_options {
  /// Prepended to every key; `async_clear` removes only keys with it. Must not
  /// be empty. Give each cache its own prefix when several share one server.
  std::string prefix = "cacheflight:";
  /// Sets accepted and not yet sent at most; beyond it a set fails with
  /// `error::queue_full` (so does a set that would take the place of a queued
  /// erase of its key: the erase then stays). A set replacing a queued set of
  /// its key is always accepted. Erases and clears are never refused: each has
  /// a caller waiting for it, or repairs a write an invalidation overtook.
  std::size_t max_queued_writes = 10'000;
  /// Writes sent together in one pipelined batch at most.
  std::size_t write_batch = 64;
  /// Consecutive failed operations that open the breaker; a lost connection
  /// opens it at once. Which error replies count: see `tier`.
  unsigned breaker_failures = 5;
  /// How long the breaker stays open before letting one probe through; doubled
  /// after each failed probe, up to `breaker_max`.
  std::chrono::milliseconds breaker_min{100};
  std::chrono::milliseconds breaker_max{5000};
  /// Called on every change of the breaker's state, on the tier's strand.
  /// Exceptions it throws are discarded.
  std::function<void(breaker_state)> on_breaker{};
  /// Invalidation across instances (see `invalidation_mode` and the class
  /// documentation); off by default.
  invalidation_mode invalidation = invalidation_mode::off;
  /// The channel of `invalidation_mode::publish`; empty: the prefix followed
  /// by `"invalidate"`. Instances sharing a prefix must share the channel.
  std::string channel{};
  /// One load per key for the whole fleet (see the class documentation): a
  /// miss in Redis takes the key's lease, or waits for the instance that holds
  /// it to fill the key. Off by default.
  bool leases = false;
  /// How long a lease lasts: an instance that took one and did not fill the
  /// key by then (it crashed, or its loader failed) lets the next one load.
  /// Longer than a load takes.
  std::chrono::milliseconds lease_ttl{3000};
  /// How often a miss waiting for another instance's fill asks Redis again
  /// when no invalidation wakes it first.
  std::chrono::milliseconds lease_poll{50};
};

/// A cache tier in Redis, shared by every cache instance that uses the same
/// server and prefix: on a miss in memory the cache asks Redis before running
/// its loader, and writes what it loads back to Redis.
///
/// - Reads are `GET <prefix><key>`; values are the cache's encoded bytes (with
///   their absolute expiry), written with `SET <prefix><key> <bytes> PX <ttl>`.
/// - Writes go behind the caller's back through a bounded queue: a newer write
///   of a key replaces an older one not yet sent (the last write wins), and an
///   erase is never sent before an earlier write of the same key; batches are
///   pipelined one after the other, so their order holds across reconnects.
/// - Reads see the writes initiated before them: a key whose write is still
///   queued is answered from the queue (its bytes, or nothing for an erase),
///   and every key reads as absent while a clear is queued or running.
/// - A circuit breaker: after `breaker_failures` consecutive failures, or at
///   once when an operation finds the client not connected
///   (`error::not_connected`: the connection was lost and not yet reopened),
///   every operation fails at once with `error::tier_unavailable` (the cache
///   then serves memory and loaders); a connection lost and reopened before
///   any operation needed it leaves the breaker closed. After
///   `breaker_min` (doubling per failed probe, up to `breaker_max`) one
///   operation is let through as a probe, and its success closes the breaker.
///   An error reply fails its operation (`error::protocol_error`) but counts
///   as a failure only when it says the server cannot serve now (`LOADING`,
///   `BUSY`, `MASTERDOWN`, `READONLY`, `NOREPLICAS`, `OOM`, `MISCONF`,
///   `TRYAGAIN`, `CLUSTERDOWN`); any other (`WRONGTYPE` for a key held under
///   another type, `NOPERM`, a script's error) refuses that one command of a
///   server that answered, and counts as a success. (Redis before 7 reports
///   an error raised inside the tier's scripts as `ERR Error running script
///   ... -OOM ...`: the code inside is the one that counts.)
///   Writes queued when it opens are dropped. Erases and clears fail too, and
///   the cache's `async_erase` and `async_clear` report that to their callers:
///   Redis still holds what it held, so retry them once Redis is back (or give
///   values a TTL, which bounds how long a missed erase lasts).
///   With Redis Cluster (`client_options::cluster`) the breaker is per master
///   and lives in the client: a master that cannot be reached fails the
///   operations on its slots at once (`error::not_connected`) while the other
///   slots are served, and the tier's own breaker stays closed.
/// - `async_clear` removes the prefix's keys with `SCAN` and `UNLINK`, never
///   the whole database; with Cluster, on every master of the slot map in
///   turn (each key unlinked on its own, pipelined, since a page's keys lie in
///   different slots). A master that fails mid-way fails the clear.
/// - With Cluster, each key lives in its own slot; values are single keys, so
///   no command of the tier spans slots. Keys that must share a slot (for
///   commands of your own over several of them) share a hash tag: the prefix
///   is part of the key, so put the tag in the cache key (`{user:42}:name`).
///
/// @par Across instances
/// With `tier_options::invalidation`, a cache whose tier this is drops a key
/// from memory (and voids its load in flight, and erases the key from its
/// other tiers, such as a local disk) when another instance writes or erases
/// it: see `invalidation_mode` for the two ways. Invalidations travel on a
/// second connection the tier opens to the same server (with Sentinel, to the
/// master the data connection reaches, followed after a failover; with
/// Cluster, to one of the masters), checked with a
/// PING each `client_options::health_check_interval`. When that connection is
/// lost (or its PING fails), or with `tracking` the data connection, the
/// caches empty their memory (writes made meanwhile would go unreported), and
/// again once the subscription and tracking are back
/// (`tier_health::link_flushes`); while
/// they are down, memory is only as fresh as its TTL allows. `linked()` tells
/// whether invalidations are flowing now. Messages that arrive are counted in
/// `tier_health::invalidations`, whether or not a cache held the key.
///
/// With `tier_options::leases`, a miss runs one script that returns the value
/// or, when Redis holds none, sets the key's lease (`SET <lease key> <token>
/// NX PX lease_ttl`, a random token) and reports it taken. The instance that
/// got the lease loads; its fill (`tier::async_fill`) is written by a second
/// script only if the lease still holds that token, and removes the lease.
/// A fill that finds its lease gone is not written (`tier_health::leases_lost`)
/// and the key is dropped from the caches' memory: a newer value stands.
/// The other instances' misses wait: a message on the invalidation channel
/// for the key wakes them, and they also ask again each `lease_poll`; they
/// get the filled value, or the lease once it expired unfilled (then they
/// load). A lease of this instance's own whose load was voided (memory
/// flushed, the key erased) is taken over by the next miss rather than waited
/// for. A set removes the lease before it writes the value, and an erase
/// removes both at once, so a fill from a load that started before either
/// never lands. The lease key shares the value key's hash slot and lies
/// outside the prefix: `{<tag>}:lease:<key>` when the key has a hash tag,
/// else `{<key>}:lease` (with Cluster, keys with a `}` but no hash tag are
/// read without a lease). A load that fails leaves its lease to expire: the
/// others wait about `lease_ttl` for each lease that expires unfilled (a
/// waiter can lose the race for the next lease to another instance), then
/// one of them loads. `async_clear` removes the prefix's values, not the
/// leases, which expire on their own. With a prefix that starts with a hash
/// tag, lease keys of tagged keys start with the prefix too, and tracking
/// reports their changes as changes of keys no cache holds. Coalescing in
/// each process applies first: one script per key per instance.
///
/// @par Threads
/// Every member may be called from any thread; the state lives on a strand.
///
/// @par Lifetime
/// Destroying the tier fails the queued writes with `operation_aborted`; it
/// closes the client only if the tier made it.
class tier final : public cacheflight::tier {
 public:
  using executor_type = boost::asio::any_io_executor;

  /// Uses a client of the caller's, which may be shared with other uses.
  /// @throws boost::system::system_error with `error::invalid_option` for options out of range
  /// (a lease TTL or poll interval that is not positive, `invalidation_mode::tracking` with Cluster).
  tier(std::shared_ptr<client> c, tier_options opts = {});
  /// Makes and owns a client with these options.
  tier(executor_type ex, client_options copts, tier_options opts = {});
  ~tier() override;

  std::string_view name() const noexcept override { return "redis"; }
  tier_health health() const override;
  /// True: every instance using the server and prefix shares it.
  bool shared() const noexcept override { return true; }

  /// The client this tier uses.
  client& get_client() noexcept;

  /// With `tier_options::invalidation`: whether invalidations are flowing now
  /// (subscribed, and with `tracking` enabled on the current data connection).
  /// Always false with invalidation off.
  bool linked() const noexcept;

 protected:
  void do_get(std::string key, get_handler handler) override;
  void do_put(std::string key, std::string bytes, std::chrono::milliseconds ttl, done_handler handler) override;
  void do_fill(std::string key, std::string bytes, std::chrono::milliseconds ttl, done_handler handler) override;
  void do_erase(std::string key, done_handler handler) override;
  void do_clear(done_handler handler) override;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace cacheflight::redis

#endif
