// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_MEMORY_TIER_HPP
#define CACHEFLIGHT_DETAIL_MEMORY_TIER_HPP

#include <cacheflight/detail/cache_events.hpp>
#include <cacheflight/detail/l1_store.hpp>
#include <cacheflight/detail/reader_slots.hpp>
#include <cacheflight/options.hpp>
#include <cacheflight/stats.hpp>


#include <algorithm>
#include <cassert>
#include <cmath>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

namespace cacheflight::detail {

// The cache's memory (L1): its shards of entries, and the tokens of the loads
// that may still store into it. Every function is thread-safe; each takes one
// shard's lock for constant-time bookkeeping, and runs user code (weigher,
// event sink, V's copy into a store) outside it; a lookup copies the value it
// finds in place. Under S3-FIFO, a lookup whose read changes nothing
// in the shard takes no lock (see `read_unlocked`); every function that
// changes what such a read sees holds the shard's lock and waits for the
// shard's readers (`write_lock`).
//
// A key's epoch (`std::atomic<std::uint64_t>*`, null without tiers) belongs to
// the tier pipeline: it is bumped by every invalidation and read by every
// store, under the key's shard lock, so that a write to the tiers can tell
// whether an invalidation came after the value it writes (see tier_pipeline).
// What a lookup found beyond the value, for a caller that can start a reload.
struct read_state {
  bool stale = false;    // served past its fresh time
  bool refresh = false;  // this caller is to start the reload (stale, or early)
  bool early = false;    // the reload is an early one (probabilistic, while still fresh)
  bool after_error = false;  // served stale after its reload failed
  std::int64_t fresh_left = 0;  // with `refresh`: the fresh time the value had left (0 when stale)
};

// A uniform double in (0, 1], from a per-thread generator (splitmix64).
inline double unit_random() noexcept {
  thread_local std::uint64_t state = 0x9e3779b97f4a7c15ull ^ std::uint64_t(reinterpret_cast<std::uintptr_t>(&state));
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return double((z >> 11) + 1) * 0x1.0p-53;
}

// XFetch (Vattani, Chierichetti and Lowenstein, VLDB 2015): recompute early
// when `now - delta * beta * ln(u) >= fresh_until`, u uniform in (0, 1], delta
// the load's duration. The probability grows as the fresh time runs out.
inline bool early_refresh_due(std::int64_t now, std::int64_t fresh_until, std::int64_t delta, double beta) noexcept {
  if (beta <= 0 || delta <= 0 || now >= fresh_until) return false;
  const double gap = double(fresh_until - now);
  const double scale = double(delta) * beta;
  if (gap > scale * 37.5) return false;  // -ln(u) <= 36.8 for every u this draws
  return -std::log(unit_random()) * scale >= gap;
}

template <class V, class Clock>
class memory_tier {
 public:
  using shard = l1_shard<V>;
  using node = l1_node<V>;
  using weigher_type = std::function<std::size_t(std::string_view, const V&)>;
  using epoch_counter = std::atomic<std::uint64_t>;

  memory_tier(eviction_policy policy, std::size_t shards, std::size_t max_entries, std::size_t max_weight,
              weigher_type weigher, const cache_events& events, double early_beta = 0)
      : nshards_(shards_within(shards, max_entries, max_weight)),
        early_beta_(early_beta),
        unlocked_reads_(policy == eviction_policy::s3fifo && !unordered_find_writes),
        readers_(unlocked_reads_),
        weigher_(std::move(weigher)),
        events_(events),
        shards_(std::make_unique<shard[]>(nshards_)) {
    // The caps are split exactly: the shards' shares add up to them, the
    // first `total % nshards_` shards taking one more.
    auto split = [&](std::size_t total, std::size_t i) {
      if (total == unlimited || total == 0) return total;
      return total / nshards_ + (i < total % nshards_ ? 1 : 0);
    };
    for (std::size_t i = 0; i < nshards_; ++i)
      shards_[i].configure(policy, split(max_entries, i), split(max_weight, i));
  }

  // No more shards than a cap has units, so that every shard holds something.
  static std::size_t shards_within(std::size_t shards, std::size_t max_entries, std::size_t max_weight) noexcept {
    for (const std::size_t cap : {max_entries, max_weight})
      if (cap != unlimited && cap != 0) shards = std::min(shards, cap);
    return shards;
  }

  static std::int64_t now() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
  }

  static std::int64_t deadline(std::int64_t now, std::chrono::nanoseconds ttl) noexcept {
    if (now == std::numeric_limits<std::int64_t>::max() || ttl == no_expiry ||
        ttl.count() > std::numeric_limits<std::int64_t>::max() - now)
      return std::numeric_limits<std::int64_t>::max();
    return now + std::max<std::int64_t>(ttl.count(), 0);
  }

  // A reload started by a stale or early read has ended. On failure, a stale
  // entry keeps its value until it expires (`keep`, stale-if-error: later
  // reads see it as served after an error), or is dropped; a value still
  // fresh (an early reload failed) is kept either way.
  void refresh_ended(const hashed_key& key, bool failed, bool keep) {
    shard& sh = shard_for(key);
    typename shard::graveyard dead;
    {
      write_lock lk(*this, sh);
      node* n = sh.peek(key);
      // A replaced value has a new life of its own: leave it alone.
      if (n && n->refreshing) {
        n->refreshing = false;
        const bool stale = now() >= n->fresh_until;
        if (failed && stale && !keep)
          sh.drop(n, dead);
        else if (failed && stale)
          n->refresh_failed = true;
      }
    }
    bury(dead);
  }

  // Marks `key`'s entry as being reloaded (refresh-ahead), so that a stale
  // read does not start a second reload.
  void mark_refreshing(const hashed_key& key) {
    shard& sh = shard_for(key);
    write_lock lk(*this, sh);
    if (node* n = sh.peek(key)) n->refreshing = true;
  }

  // For refresh-ahead: the fresh time of `key`'s value and whether it was read
  // since it was stored; nullopt when memory holds no live value of it.
  std::optional<std::pair<std::int64_t, bool>> freshness_of(const hashed_key& key) {
    shard& sh = shard_for(key);
    std::lock_guard lk(sh.mu);
    node* n = sh.peek(key);
    if (!n || !n->value() || n->expires <= now()) return std::nullopt;
    return std::pair<std::int64_t, bool>(n->fresh_until, bool(n->read));
  }

  // Looks `key` up, counting a hit or a miss (unless `count` is false). A
  // cached failure (negative entry) yields no value and, when `failure` is
  // given, sets it. `purge` bounds the expired entries reclaimed on the way (0
  // on the allocation-free peek path). A value past its fresh time is served
  // (stale) until it expires; a caller that passes `rs` can start its reload:
  // `rs->refresh` is set for one caller at a time (the entry remembers that a
  // reload was started until it is replaced or the reload ends). `hash`, if
  // given, receives the key's hash, for the caller's load of a miss.
  // The value found goes into `v` (empty on entry), the caller's own object:
  // an optional returned by value from here would come back packed in a
  // register from the two stores that built it, which stalls the load that
  // packs it on every hit.
  void lookup(std::optional<V>& v, std::string_view k, std::size_t purge, std::exception_ptr* failure,
              bool count = true, read_state* rs = nullptr, std::size_t* hash = nullptr) {
    assert(!v);
    const hashed_key key(k);
    if (hash) *hash = key.hash;
    const std::size_t index = shard_index_of(key);
    if (unlocked_reads_) {
      // Served without the lock: nothing to start, nothing reclaimed.
      if (rs) *rs = read_state{};
      if (const int found = read_unlocked(shards_[index], std::uint32_t(index), key, v, purge, count, rs != nullptr);
          found >= 0) {
        if (count && events_) events_.emit(found ? cache_event_kind::hit : cache_event_kind::miss, key.key);
        return;
      }
    }
    lookup_locked(v, key, shards_[index], purge, failure, count, rs);
  }

 private:
  // A lookup under the shard's lock (see lookup). Out of line, so that the
  // frame of a read without the lock stays small.
  [[gnu::noinline]] void lookup_locked(std::optional<V>& v, const hashed_key& key, shard& sh, std::size_t purge,
                     std::exception_ptr* failure, bool count, read_state* rs) {
    typename shard::graveyard dead;
    bool hit = false;
    read_state local;
    read_state& seen = rs ? (*rs = read_state{}) : local;  // written in place, not copied out
    constexpr bool nothrow_copy = std::is_nothrow_copy_constructible_v<V>;
    [[maybe_unused]] std::conditional_t<nothrow_copy, std::nullptr_t, std::exception_ptr> copy_failed{};
    {
      write_lock lk(*this, sh);
      std::int64_t t = -1;  // the clock is read at most once, and only if needed
      auto clock = [&t] { return t < 0 ? (t = now()) : t; };
      if (purge && sh.has_expiring()) sh.purge(clock(), purge, dead);
      if (node* n = sh.find(key, clock, dead)) {
        // A cached failure is a hit only for callers that take failures.
        if (const V* stored = n->value()) {
          if constexpr (nothrow_copy) {
            v.emplace(*stored);
            hit = true;
          } else {
            try {
              v.emplace(*stored);
              hit = true;
            } catch (...) {
              copy_failed = std::current_exception();
            }
          }
        } else if (failure && n->error()) {
          *failure = *n->error();
          hit = true;
        }
        if (hit && n->value()) {
          if (!n->read) n->read = true;
          // A finite fresh time implies a finite expiry: the clock was read.
          if (n->fresh_until != std::numeric_limits<std::int64_t>::max()) {
            if (clock() >= n->fresh_until) {
              seen.stale = true;
              seen.after_error = n->refresh_failed;
              if (count) {
                ++sh.counters.stale_hits;
                if (n->refresh_failed) ++sh.counters.stale_after_error;
              }
              if (rs && !n->refreshing) n->refreshing = seen.refresh = true;  // fresh_left stays 0
            } else if (rs && !n->refreshing &&
                       early_refresh_due(clock(), n->fresh_until, decode_load_time(n->load_time), early_beta_)) {
              n->refreshing = seen.refresh = seen.early = true;
              seen.fresh_left = n->fresh_until - clock();
            }
          }
        }
      }
      if (count) ++(hit ? sh.counters.hits : sh.counters.misses);
    }
    if constexpr (!nothrow_copy) {
      if (copy_failed) {  // V's copy threw: nothing changed but reclaimed entries
        bury(dead);
        std::rethrow_exception(copy_failed);
      }
    }
    if (count && events_) {
      events_.emit(hit ? cache_event_kind::hit : cache_event_kind::miss, key.key);
      if (seen.stale) events_.emit(cache_event_kind::stale_hit, key.key);
      if (seen.after_error) events_.emit(cache_event_kind::stale_after_error, key.key);
    }
    if (!dead.empty()) bury(dead);
  }

 public:
  // Stores a value (or a failure, for negative caching), fresh for `ttl`, then
  // servable stale for `stale` more (0: none); `took` (if not negative) is
  // the load's duration, averaged into the entry's. With a load token,
  // only if the load was not invalidated meanwhile; without one (an explicit
  // set), it voids the load in flight and bumps `epoch`. Returns false when
  // the load was invalidated (nothing stored); true otherwise, even when the
  // value was refused for its weight. `*seen` receives `epoch` as of the
  // store. The weigher and V's copy run first, outside the lock: if either
  // throws, nothing is stored, the load's token is released, and the
  // exception propagates.
  bool store(const hashed_key& key, const V* v, std::exception_ptr error, std::chrono::nanoseconds ttl,
             std::optional<std::uint64_t> token, epoch_counter* epoch, std::uint64_t* seen,
             std::chrono::nanoseconds stale = std::chrono::nanoseconds::zero(),
             std::chrono::nanoseconds took = std::chrono::nanoseconds(-1)) {
    shard& sh = shard_for(key);
    std::size_t w = 1;
    std::optional<V> copy;
    std::optional<V> old_value;  // the replaced slot, destroyed after the lock
    std::exception_ptr old_error;
    std::exception_ptr failed;
    try {
      if (v && weigher_) w = weigher_(key.key, *v);  // user code: outside the lock
      if (v && !sh.stores_nothing()) copy.emplace(*v);
    } catch (...) {
      if (token) end_load(key, *token);
      throw;
    }
    typename shard::graveyard dead;
    bool oversized = false;
    std::string k(key.key);
    {
      write_lock lk(*this, sh);
      if (token) {
        if (!sh.end_load(key, *token)) return false;  // erased, cleared or set meanwhile
      } else {
        sh.invalidate_load(key);  // an explicit set is newer than any load in flight
        if (epoch) epoch->fetch_add(1, std::memory_order_relaxed);
      }
      if (epoch && seen) *seen = epoch->load(std::memory_order_relaxed);
      const std::int64_t t = now();
      sh.purge(t, 8, dead);
      const std::int64_t fresh_until = deadline(t, ttl);
      const std::int64_t expires = deadline(fresh_until, stale);
      try {
        oversized = !sh.put(std::move(k), key.hash, expires, w,
                            [&](node& n) {
                              // The old value, if any, is destroyed after the lock.
                              n.take_slot(old_value, old_error);
                              if (v)
                                n.set_value(std::move(*copy));
                              else
                                n.set_error(error);
                              n.fresh_until = fresh_until;
                              n.refreshing = n.refresh_failed = n.read = false;
                              n.load_time = average_load_time(n.load_time, took.count());
                            },
                            dead);
      } catch (...) {
        failed = std::current_exception();  // V's move threw: the key's entry is gone
      }
    }
    if (oversized) events_.emit(cache_event{cache_event_kind::eviction, key.key, {}, {}, eviction_cause::oversized});
    bury(dead);
    if (failed) std::rethrow_exception(failed);
    return true;
  }

  // Removes `key` and voids its load in flight; bumps `epoch`. Returns whether
  // a fresh value was removed (an expired one is reclaimed as an expiration).
  bool erase(const hashed_key& key, epoch_counter* epoch) {
    shard& sh = shard_for(key);
    typename shard::graveyard dead;
    bool erased;
    {
      write_lock lk(*this, sh);
      sh.invalidate_load(key);
      if (epoch) epoch->fetch_add(1, std::memory_order_relaxed);
      erased = sh.erase(key, [] { return now(); }, dead);
    }
    bury(dead);
    return erased;
  }

  // Removes everything and voids every load in flight, shard by shard;
  // `locked()` runs under each shard's lock (the pipeline bumps every epoch).
  template <class Locked>
  void clear(Locked&& locked) {
    for (std::size_t i = 0; i < nshards_; ++i) {
      typename shard::graveyard dead;
      {
        write_lock lk(*this, shards_[i]);
        shards_[i].invalidate_loads();
        locked();
        shards_[i].clear(dead);
      }
      bury(dead);
    }
  }

  // Load tokens: a load stores its result only while its token is registered
  // (no erase, clear or set of the key meanwhile).
  std::uint64_t begin_load(const hashed_key& key) {
    const std::uint64_t token = next_token_.fetch_add(1, std::memory_order_relaxed) + 1;
    shard& sh = shard_for(key);
    std::lock_guard lk(sh.mu);
    sh.begin_load(key, token);
    return token;
  }

  void end_load(const hashed_key& key, std::uint64_t token) {
    if (!token) return;
    shard& sh = shard_for(key);
    std::lock_guard lk(sh.mu);
    sh.end_load(key, token);
  }

  // Adds the memory's counters to `s`, reclaiming expired entries first.
  void add_stats(cache_stats& s) {
    for (std::size_t i = 0; i < nshards_; ++i) {
      typename shard::graveyard dead;
      {
        write_lock lk(*this, shards_[i]);
        shards_[i].purge(now(), unlimited, dead);  // expired entries do not count
        const l1_counters& c = shards_[i].counters;
        s.hits += c.hits;
        s.misses += c.misses;
        s.stale_hits += c.stale_hits;
        s.stale_after_error += c.stale_after_error;
        s.evictions_capacity += c.evictions_capacity;
        s.evictions_oversized += c.evictions_oversized;
        s.expirations += c.expirations;
        s.size += shards_[i].count();
        s.weight += shards_[i].weight();
      }
      bury(dead);
    }
    readers_.add_counts(s.hits, s.misses);
    s.evictions = s.evictions_capacity + s.evictions_oversized;
    s.hit_rate = s.hits + s.misses == 0 ? 0.0 : double(s.hits) / double(s.hits + s.misses);
  }

 private:
  // The shard of a key, from the hash it carries (see shard_index).
  std::size_t shard_index_of(const hashed_key& key) const noexcept {
    return nshards_ == 1 ? 0 : shard_index(key.hash, nshards_);
  }
  shard& shard_for(const hashed_key& key) const noexcept { return shards_[shard_index_of(key)]; }

  // A shard's lock, taken by whatever changes what an unlocked read sees:
  // once it is held, no reader is in the shard until it is released.
  class write_lock {
   public:
    write_lock(const memory_tier& t, shard& sh) noexcept : sh_(sh) {
      sh.mu.lock();
      if (t.unlocked_reads_) t.readers_.wait_for_readers(std::uint32_t(&sh - t.shards_.get()));
    }
    write_lock(const write_lock&) = delete;
    write_lock& operator=(const write_lock&) = delete;
    ~write_lock() { sh_.mu.unlock(); }

   private:
    shard& sh_;
  };

  // A lookup without the shard's lock, for the cases where the locked one
  // would change nothing in the shard: a fresh value already read since it
  // was stored whose access count is full (S3-FIFO's touch then writes
  // nothing), or an absent key; in both cases only while, with `purge`, no
  // entry of the shard is due to be purged, and for a hit with `may_refresh`
  // only without early refresh. Returns 1 for a hit (the value in `v`), 0
  // for a miss, each counted in the thread's slot (with `count`); -1, having
  // changed nothing, for every other case (the slot taken by a thread sharing
  // it, the shard's lock held, an entry expired, stale, not yet read or
  // counted in full, a cached failure, early refresh on), which the caller
  // handles under the lock. V's copy runs here, as it runs under the lock
  // otherwise; if it throws, the lookup is counted as a miss, as the locked
  // one counts it, and the exception propagates.
  int read_unlocked(shard& sh, std::uint32_t index, const hashed_key& key, std::optional<V>& v, std::size_t purge,
                    bool count, bool may_refresh) {
    reader_slots::slot* const slot = readers_.enter(index);
    if (!slot) return -1;
    struct leave_at_exit {
      reader_slots::slot* s;
      ~leave_at_exit() { reader_slots::leave(s); }
    } leave{slot};
    if (sh.mu.held()) return -1;
    std::int64_t t = -1;
    auto clock = [&t] { return t < 0 ? (t = now()) : t; };
    if (purge && sh.has_expiring() && sh.earliest_expiry() <= clock()) return -1;
    const node* n = sh.peek(key);
    if (!n) {
      if (count) reader_slots::count_miss(slot);
      return 0;
    }
    const V* stored = n->value();
    if (!stored || !n->read || !sh.untouched_by_read(*n)) return -1;
    if (n->expires != std::numeric_limits<std::int64_t>::max() && n->expires <= clock()) return -1;
    if (n->fresh_until != std::numeric_limits<std::int64_t>::max() &&
        (clock() >= n->fresh_until || (may_refresh && early_beta_ > 0)))
      return -1;
    if constexpr (std::is_nothrow_copy_constructible_v<V>) {
      v.emplace(*stored);
    } else {
      try {
        v.emplace(*stored);
      } catch (...) {
        if (count) reader_slots::count_miss(slot);
        throw;
      }
    }
    if (count) reader_slots::count_hit(slot);
    return 1;
  }

  // Emits the events of removed entries and frees them, outside any lock.
  void bury(typename shard::graveyard& dead) {
    while (node* n = dead.pop_front()) {
      if (n->why == removal::capacity)
        events_.emit(cache_event{cache_event_kind::eviction, n->key, {}, {}, eviction_cause::capacity});
      else if (n->why == removal::expired)
        events_.emit(cache_event_kind::expiration, n->key);
      delete n;
    }
  }

  const std::size_t nshards_;
  const double early_beta_;
  // Boost.Unordered's statistics, when a build turns them on, are written by
  // every lookup: reads of one table are then no longer free of each other.
#if defined(BOOST_UNORDERED_ENABLE_STATS)
  static constexpr bool unordered_find_writes = true;
#else
  static constexpr bool unordered_find_writes = false;
#endif
  const bool unlocked_reads_;  // S3-FIFO: a read of a hot entry changes nothing in its shard
  reader_slots readers_;
  weigher_type weigher_;
  const cache_events& events_;
  std::unique_ptr<shard[]> shards_;
  std::atomic<std::uint64_t> next_token_{0};
};

}  // namespace cacheflight::detail

#endif
