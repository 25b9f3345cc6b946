// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_CACHE_HPP
#define CACHEFLIGHT_CACHE_HPP

#include <cacheflight/batch_loader.hpp>
#include <cacheflight/clock.hpp>
#include <cacheflight/codec.hpp>
#include <cacheflight/detail/l1_store.hpp>
#include <cacheflight/error.hpp>
#include <cacheflight/event.hpp>
#include <cacheflight/flight.hpp>
#include <cacheflight/stats.hpp>
#include <cacheflight/tier.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/executor_work_guard.hpp>
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

/// A size limit meaning "no limit".
inline constexpr std::size_t unlimited = std::numeric_limits<std::size_t>::max();
/// A TTL meaning "never expires".
inline constexpr std::chrono::nanoseconds no_expiry = std::chrono::nanoseconds::max();

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
  /// Independently locked partitions of the memory tier (1 to 1024). Each holds
  /// `max_entries / shards` entries, so eviction is exact only with one shard.
  /// Use several when many threads share the cache.
  std::size_t shards = 1;
  /// Cap on keys being loaded at once; beyond it a load fails with `error::max_keys_exceeded`.
  std::size_t max_loads = 100'000;
  /// Bound on each caller's wait for a load (`no_timeout` for none); `error::timed_out` after it.
  std::chrono::nanoseconds load_timeout = no_timeout;
  /// What happens to a load whose callers have all left: cancelled (default), or
  /// left to finish and fill the cache.
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

namespace detail {

// Whether values of `V` can cross a tier.
template <class V>
concept has_codec = requires(const V& v, std::string_view bytes) {
  { codec<V>::encode(v) } -> std::convertible_to<std::string>;
  { codec<V>::decode(bytes) } -> std::same_as<std::optional<V>>;
};

// Completes a handler with an immediate result: posted straight to the
// handler's associated executor (`fallback` when it has none), so a caller on
// another context is not routed through the cache's.
template <class Handler, class... Args>
void post_result(const asio::any_io_executor& fallback, Handler&& h, Args&&... args) {
  auto ex = asio::get_associated_executor(h, fallback);
  if constexpr (std::is_same_v<decltype(ex), asio::any_io_executor> &&
                std::is_same_v<asio::associated_allocator_t<std::decay_t<Handler>>, std::allocator<void>>) {
    // The handler's executor is an io_context's: post the call to that context
    // directly, skipping the type-erased executor and its work dispatcher. The
    // handler still runs on (a thread running) its associated executor.
    if (auto* io = ex.template target<asio::io_context::executor_type>()) {
      asio::post(*io, [h = std::forward<Handler>(h), ... a = std::forward<Args>(args)]() mutable {
        std::move(h)(std::move(a)...);
      });
      return;
    }
  }
  asio::post(ex, asio::append(std::forward<Handler>(h), std::forward<Args>(args)...));
}

template <class V, class Clock>
class cache_state : public std::enable_shared_from_this<cache_state<V, Clock>> {
 public:
  using shard = l1_shard<V>;
  using node = l1_node<V>;
  using weigher_type = std::function<std::size_t(std::string_view, const V&)>;

  cache_state(asio::any_io_executor ex, cache_options opts, weigher_type weigher)
      : ex_(std::move(ex)),
        opts_(std::move(opts)),
        weigher_(std::move(weigher)),
        flight_(ex_, flight_options{.max_keys = opts_.max_loads,
                                    .default_timeout = opts_.load_timeout,
                                    .on_event = [this](const event& e) {
                                      if (e.kind == event_kind::hit) coalesced_.fetch_add(1, std::memory_order_relaxed);
                                    },
                                    .on_abandon = opts_.on_abandon,
                                    .max_key_length = opts_.max_key_length,
                                    .shards = opts_.shards}) {
    if (opts_.default_ttl <= std::chrono::nanoseconds::zero())
      throw_invalid_option("cache_options::default_ttl must be positive (or no_expiry)");
    if (opts_.negative_ttl && *opts_.negative_ttl <= std::chrono::nanoseconds::zero())
      throw_invalid_option("cache_options::negative_ttl must be positive");
    shards_ = std::make_unique<shard[]>(opts_.shards);
    auto split = [&](std::size_t total) {
      if (total == unlimited || total == 0) return total;
      return std::max<std::size_t>(1, (total + opts_.shards - 1) / opts_.shards);
    };
    for (std::size_t i = 0; i < opts_.shards; ++i)
      shards_[i].configure(opts_.policy, split(opts_.max_entries), split(opts_.max_weight));
    if (!opts_.tiers.empty()) {
      if constexpr (!has_codec<V>)
        throw_invalid_option("cache_options::tiers needs a cacheflight::codec for the value type");
      for (const auto& t : opts_.tiers)
        if (!t) throw_invalid_option("cache_options::tiers holds a null tier");
      tier_counts_ = std::make_unique<tier_counters[]>(opts_.tiers.size());
      epochs_ = std::make_unique<std::atomic<std::uint64_t>[]>(epoch_stripes);
      pending_ = std::make_unique<std::atomic<std::uint32_t>[]>(epoch_stripes);
    }
  }

  const asio::any_io_executor& executor() const noexcept { return ex_; }
  const cache_options& options() const noexcept { return opts_; }
  flight<V, Clock>& get_flight() noexcept { return flight_; }

  bool valid_key(std::string_view key) const noexcept {
    return !key.empty() && key.size() <= opts_.max_key_length;
  }

  static std::int64_t now() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
  }

  static std::int64_t deadline(std::int64_t now, std::chrono::nanoseconds ttl) noexcept {
    if (ttl == no_expiry || ttl.count() > std::numeric_limits<std::int64_t>::max() - now)
      return std::numeric_limits<std::int64_t>::max();
    return now + ttl.count();
  }

  shard& shard_for(std::string_view key) const noexcept {
    if (opts_.shards == 1) return shards_[0];
    return shards_[boost::hash<std::string_view>{}(key) % opts_.shards];
  }

  // Looks `key` up in memory, counting a hit or a miss (unless `count` is
  // false). A cached failure (negative entry) yields no value and, when
  // `failure` is given, sets it. `purge` bounds the expired entries reclaimed on
  // the way (0 on the allocation-free peek path).
  std::optional<V> lookup(std::string_view key, std::size_t purge, std::exception_ptr* failure, bool count = true) {
    shard& sh = shard_for(key);
    typename shard::graveyard dead;
    std::optional<V> v;
    bool hit = false;
    constexpr bool nothrow_copy = std::is_nothrow_copy_constructible_v<V>;
    [[maybe_unused]] std::conditional_t<nothrow_copy, std::nullptr_t, std::exception_ptr> copy_failed{};
    {
      std::lock_guard lk(sh.mu);
      std::int64_t t = -1;  // the clock is read at most once, and only if needed
      auto clock = [&t] { return t < 0 ? (t = now()) : t; };
      if (purge && sh.has_expiring()) sh.purge(clock(), purge, dead);
      if (node* n = sh.find(key, clock, dead)) {
        // A cached failure is a hit only for callers that take failures.
        if (n->value) {
          if constexpr (nothrow_copy) {
            v.emplace(*n->value);
            hit = true;
          } else {
            try {
              v.emplace(*n->value);
              hit = true;
            } catch (...) {
              copy_failed = std::current_exception();
            }
          }
        } else if (failure) {
          *failure = n->error;
          hit = true;
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
    if (count && opts_.on_event) emit_kind(hit ? cache_event_kind::hit : cache_event_kind::miss, key);
    if (!dead.empty()) bury(dead);
    return v;
  }

  // Stores a value (or a failure, for negative caching). With a load token, only
  // if the load was not invalidated meanwhile. Returns false when the load was
  // invalidated (nothing stored); true otherwise, even when the value was refused
  // for its weight. The weigher and V's copy run first, outside the lock: if
  // either throws, nothing changed and the exception propagates.
  bool store(std::string key, const V* v, std::exception_ptr error, std::chrono::nanoseconds ttl,
             std::optional<std::uint64_t> token, std::uint64_t* epoch = nullptr) {
    shard& sh = shard_for(key);
    std::size_t w = 1;
    if (v && weigher_) w = weigher_(key, *v);  // user code: outside the lock
    std::optional<V> copy;
    if (v && !sh.stores_nothing()) copy.emplace(*v);
    typename shard::graveyard dead;
    bool oversized = false;
    std::string k = key;
    {
      std::lock_guard lk(sh.mu);
      if (token) {
        if (!sh.end_load(key, *token)) return false;  // erased, cleared or set meanwhile
      } else {
        sh.invalidate_load(key);  // an explicit set is newer than any load in flight
        if (has_tiers()) epoch_of(key).fetch_add(1, std::memory_order_relaxed);
      }
      if (epoch && has_tiers()) *epoch = epoch_of(key).load(std::memory_order_relaxed);
      const std::int64_t t = now();
      sh.purge(t, 8, dead);
      oversized = !sh.put(std::move(k), deadline(t, ttl), w,
                      [&](node& n) {
                        if (v) {
                          n.value.swap(copy);  // the old value, if any, is destroyed after the lock
                          n.error = nullptr;
                        } else {
                          n.value.reset();
                          n.error = error;
                        }
                      },
                      dead);
    }
    if (oversized) emit(cache_event{cache_event_kind::eviction, key, {}, {}, eviction_cause::oversized});
    bury(dead);
    return true;
  }

  // Removes `key` from memory, voids its load in flight (it will not store)
  // and makes later callers start a fresh one. Returns whether memory held a
  // fresh value.
  bool erase(const std::string& key) {
    shard& sh = shard_for(key);
    typename shard::graveyard dead;
    bool erased;
    {
      std::lock_guard lk(sh.mu);
      sh.invalidate_load(key);
      if (has_tiers()) epoch_of(key).fetch_add(1, std::memory_order_relaxed);
      erased = sh.erase(key, [] { return now(); }, dead);
    }
    flight_.forget(key);
    bury(dead);
    return erased;
  }

  void clear() {
    for (std::size_t i = 0; i < opts_.shards; ++i) {
      typename shard::graveyard dead;
      {
        std::lock_guard lk(shards_[i].mu);
        shards_[i].invalidate_loads();
        if (has_tiers())
          for (std::size_t e = 0; e < epoch_stripes; ++e) epochs_[e].fetch_add(1, std::memory_order_relaxed);
        shards_[i].clear(dead);
      }
      bury(dead);
    }
    flight_.forget_all();
  }

  // Later callers of `key` start a fresh load instead of joining the one in
  // flight (whose result an invalidation made stale).
  void forget_load(std::string_view key) { flight_.forget(key); }

  // While an invalidation (set, erase, clear) is between its change of memory
  // and the initiation of its writes to the tiers, a tier may still answer
  // with what the invalidation replaces: loads must not read the tiers for
  // that key then. Held from before memory changes until the tiers' operations
  // are initiated (tiers answer reads in the order operations were initiated).
  class invalidation {
   public:
    invalidation() = default;
    explicit invalidation(std::atomic<std::uint32_t>* c) noexcept : c_(c) {
      if (c_) c_->fetch_add(1, std::memory_order_relaxed);
    }
    invalidation(invalidation&& o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
    invalidation& operator=(invalidation&&) = delete;
    ~invalidation() {
      if (c_) c_->fetch_sub(1, std::memory_order_release);
    }

   private:
    std::atomic<std::uint32_t>* c_ = nullptr;
  };
  invalidation invalidate_key(std::string_view key) {
    return has_tiers() ? invalidation(&pending_of(key)) : invalidation();
  }
  invalidation invalidate_all() { return has_tiers() ? invalidation(&clearing_) : invalidation(); }

  bool invalidating(std::string_view key) const noexcept {
    return clearing_.load(std::memory_order_acquire) != 0 || pending_of(key).load(std::memory_order_acquire) != 0;
  }

  std::optional<V> peek(std::string_view key) { return lookup(key, 0, nullptr); }

  cache_stats stats() {
    cache_stats s;
    for (std::size_t i = 0; i < opts_.shards; ++i) {
      typename shard::graveyard dead;
      {
        std::lock_guard lk(shards_[i].mu);
        shards_[i].purge(now(), unlimited, dead);  // expired entries do not count
        const l1_counters& c = shards_[i].counters;
        s.hits += c.hits;
        s.misses += c.misses;
        s.evictions_capacity += c.evictions_capacity;
        s.evictions_oversized += c.evictions_oversized;
        s.expirations += c.expirations;
        s.size += shards_[i].count();
        s.weight += shards_[i].weight();
      }
      bury(dead);
    }
    s.evictions = s.evictions_capacity + s.evictions_oversized;
    s.hit_rate = s.hits + s.misses == 0 ? 0.0 : double(s.hits) / double(s.hits + s.misses);
    s.loads = loads_.load(std::memory_order_relaxed);
    s.load_failures = load_failures_.load(std::memory_order_relaxed);
    s.load_time = std::chrono::nanoseconds(load_time_.load(std::memory_order_relaxed));
    s.coalesced = coalesced_.load(std::memory_order_relaxed);
    s.loads_in_flight = flight_.size();
    for (std::size_t i = 0; i < opts_.tiers.size(); ++i) {
      const tier_counters& c = tier_counts_[i];
      const tier_health h = opts_.tiers[i]->health();
      s.tiers.push_back(tier_stats{std::string(opts_.tiers[i]->name()), c.hits.load(std::memory_order_relaxed),
                                   c.misses.load(std::memory_order_relaxed), c.errors.load(std::memory_order_relaxed),
                                   c.corrupt.load(std::memory_order_relaxed), h.breaker, h.queued_writes, h.writes,
                                   h.writes_dropped});
    }
    if (!s.tiers.empty()) {
      s.l2_hits = s.tiers[0].hits;
      s.l2_misses = s.tiers[0].misses;
      s.l2_errors = s.tiers[0].errors;
    }
    return s;
  }

  bool has_tiers() const noexcept { return !opts_.tiers.empty(); }

  // Looks `key` up in the tiers, in order. A hit fills memory (under the load's
  // token) and the tiers before the one that answered, with the value's
  // remaining lifetime. Failures and unreadable bytes are skipped, counted and
  // reported. Throws `operation_aborted` only when the load itself is cancelled.
  asio::awaitable<std::optional<V>> read_tiers(const std::string& key, std::uint64_t& token) {
    if constexpr (has_codec<V>) {
      for (std::size_t i = 0; i < opts_.tiers.size(); ++i) {
        // An invalidation of this key is reaching the tiers: what they hold may
        // be what it replaces. Load instead.
        if (invalidating(key)) break;
        tier& t = *opts_.tiers[i];
        auto [ec, bytes] = co_await t.async_get(key, asio::as_tuple(asio::use_awaitable));
        if (ec) {
          asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
          if (cs.cancelled() != asio::cancellation_type::none)
            throw boost::system::system_error(asio::error::operation_aborted);
          tier_failed(i, key, ec);
          continue;
        }
        tier_counters& c = tier_counts_[i];
        if (!bytes) {
          c.misses.fetch_add(1, std::memory_order_relaxed);
          emit_tier(cache_event_kind::tier_miss, key, i);
          continue;
        }
        const std::int64_t now_ms = envelope::now_ms();
        std::optional<envelope> env = envelope::unwrap(*bytes);
        std::optional<V> v;
        if (env) {
          if (env->expires_ms != 0 && env->expires_ms <= now_ms) {  // expired in transit: a plain miss
            c.misses.fetch_add(1, std::memory_order_relaxed);
            emit_tier(cache_event_kind::tier_miss, key, i);
            continue;
          }
          try {
            v = codec<V>::decode(env->payload);
          } catch (...) {
            // A throwing decoder is treated as refusing the bytes.
          }
        }
        if (!v) {
          c.misses.fetch_add(1, std::memory_order_relaxed);
          c.corrupt.fetch_add(1, std::memory_order_relaxed);
          emit_tier(cache_event_kind::tier_corrupt, key, i);
          continue;
        }
        c.hits.fetch_add(1, std::memory_order_relaxed);
        emit_tier(cache_event_kind::tier_hit, key, i);
        // Remaining lifetime; a century at most (foreign bytes may claim any expiry).
        constexpr std::chrono::milliseconds century = std::chrono::hours(24 * 36524);
        const auto left = env->expires_ms == 0 ? std::chrono::milliseconds::max()
                                                 : std::min(std::chrono::milliseconds(env->expires_ms - now_ms), century);
        std::uint64_t epoch = 0;
        const bool kept = store(
            key, &*v, nullptr, left == std::chrono::milliseconds::max() ? no_expiry : std::chrono::nanoseconds(left),
            std::exchange(token, 0), &epoch);
        if (kept && i > 0) {
          for (std::size_t j = 0; j < i; ++j) put_tier(j, key, *bytes, left);
          recheck(key, epoch);
        }
        co_return v;
      }
    }
    co_return std::nullopt;
  }

  // Writes `v` to every tier, behind the callers' backs; `epoch` is the key's
  // invalidation count (see recheck) seen when `v` was stored in memory. A value the codec
  // refuses is reported (event and error count per tier) and rethrown when
  // `rethrow` is set.
  void write_tiers(const std::string& key, const V& v, std::chrono::nanoseconds ttl, std::uint64_t epoch,
                   bool rethrow) {
    if constexpr (has_codec<V>) {
      if (opts_.tiers.empty()) return;
      std::chrono::milliseconds left = std::chrono::milliseconds::max();
      std::int64_t expires_ms = 0;
      if (ttl != no_expiry) {
        left = std::max(std::chrono::ceil<std::chrono::milliseconds>(ttl), std::chrono::milliseconds(1));
        expires_ms = envelope::now_ms() + left.count();
      }
      std::string bytes;
      try {
        bytes = encode_stored(v, expires_ms);
      } catch (...) {
        const std::exception_ptr e = std::current_exception();
        for (std::size_t i = 0; i < opts_.tiers.size(); ++i) {
          tier_counts_[i].errors.fetch_add(1, std::memory_order_relaxed);
          emit(cache_event{cache_event_kind::tier_error, key, {}, e, {}, opts_.tiers[i]->name()});
        }
        erase_tiers(key);  // the tiers must not keep the value this one replaced
        if (rethrow) throw;
        return;
      }
      for (std::size_t i = 0; i + 1 < opts_.tiers.size(); ++i) put_tier(i, key, bytes, left);
      put_tier(opts_.tiers.size() - 1, key, std::move(bytes), left);
      recheck(key, epoch);
    }
  }

  // An erase, clear or set of `key` since a value was stored in memory (at
  // `epoch`) may have reached the tiers before that value's write: erase it
  // again, so that no tier keeps a value memory has dropped. Keys share
  // epochs by stripe, so this may erase a value that was fine: a later miss.
  void recheck(const std::string& key, std::uint64_t epoch) {
    if (epoch_of(key).load(std::memory_order_relaxed) != epoch) erase_tiers(key);
  }

  void erase_tiers(const std::string& key) {
    on_every_tier(key, [&](tier& t, auto h) { t.async_erase(key, std::move(h)); }, [](boost::system::error_code) {});
  }

  // Runs `op(tier&, handler)` on every tier and calls `done(first error)` once
  // all have completed.
  template <class Op, class Done>
  void on_every_tier(const std::string& key, Op op, Done done) {
    struct join {
      join(Done d, std::size_t n) : done(std::move(d)), pending(n) {}
      Done done;
      std::mutex mu;
      std::size_t pending;
      boost::system::error_code first;
    };
    auto j = std::make_shared<join>(std::move(done), opts_.tiers.size());
    for (std::size_t i = 0; i < opts_.tiers.size(); ++i) {
      // Weak: a tier's queue must not keep the cache alive.
      op(*opts_.tiers[i], [w = this->weak_from_this(), j, i, key](boost::system::error_code ec) {
        if (ec)
          if (auto self = w.lock()) self->tier_failed(i, key, ec);
        std::unique_lock lk(j->mu);
        if (ec && !j->first) j->first = ec;
        if (--j->pending != 0) return;
        lk.unlock();
        j->done(j->first);
      });
    }
  }

  // A load's right to store its result: a token registered when the load's
  // flight entry is created, so that an invalidation from then on voids it.
  // Released when the load ends without storing, however it ends.
  class load_ticket {
   public:
    load_ticket(std::shared_ptr<cache_state> st, std::string key) : st_(std::move(st)), key_(std::move(key)) {}
    load_ticket(load_ticket&& o) noexcept
        : st_(std::move(o.st_)), key_(std::move(o.key_)), token_(std::exchange(o.token_, 0)) {}
    load_ticket& operator=(load_ticket&&) = delete;
    ~load_ticket() {
      if (token_) st_->end_load(key_, token_);
    }

    void issue() { token_ = st_->begin_load(key_); }
    cache_state& state() const noexcept { return *st_; }
    const std::string& key() const noexcept { return key_; }
    std::uint64_t& token() noexcept { return token_; }

   private:
    std::shared_ptr<cache_state> st_;
    std::string key_;
    std::uint64_t token_ = 0;
  };

  // The work of a coalesced miss, given to the flight.
  template <class Loader>
  struct load_work {
    load_ticket ticket;
    Loader loader;
    std::chrono::nanoseconds ttl;

    // Under the flight's lock, as the load's entry is inserted.
    void on_entry_created(entry_created_tag) { ticket.issue(); }
    // Called once, by the flight.
    asio::awaitable<V> operator()() { return load_and_fill(std::move(ticket), std::move(loader), ttl); }
  };

  // The tiers, then the loader, then the fill, generation-safe.
  template <class Loader>
  static asio::awaitable<V> load_and_fill(load_ticket ticket, Loader loader, std::chrono::nanoseconds ttl) {
    cache_state& st = ticket.state();
    const std::string& key = ticket.key();
    if (st.has_tiers()) {
      std::optional<V> found = co_await st.read_tiers(key, ticket.token());
      if (found) co_return std::move(*found);
    }
    st.emit_kind(cache_event_kind::load_started, key);
    const auto t0 = Clock::now();
    std::optional<V> value;
    std::exception_ptr failure;
    try {
      if constexpr (coroutine_work<Loader, V>)
        value.emplace(co_await loader());
      else
        value.emplace(co_await loader(asio::use_awaitable));
    } catch (...) {
      failure = std::current_exception();
    }
    const auto took = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0);
    st.load_time_.fetch_add(took.count(), std::memory_order_relaxed);
    if (failure) {
      // A cancelled load is not the loader's failure, whatever it threw; a
      // loader that fails with operation_aborted on its own is.
      asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
      st.load_failed(key, std::exchange(ticket.token(), 0), failure, took,
                     cs.cancelled() != asio::cancellation_type::none);
      std::rethrow_exception(failure);
    }
    st.loads_.fetch_add(1, std::memory_order_relaxed);
    st.emit(cache_event{cache_event_kind::load_resolved, key, took, {}, {}});
    std::uint64_t epoch = 0;
    if (st.store(key, &*value, nullptr, ttl, std::exchange(ticket.token(), 0), &epoch) && st.has_tiers())
      st.write_tiers(key, *value, ttl, epoch, false);
    co_return std::move(*value);
  }

  void emit(const cache_event& e) const {
    if (!opts_.on_event) return;
    try {
      opts_.on_event(e);
    } catch (...) {
      // Documented: a throwing sink does not disturb the cache.
    }
  }
  void emit_kind(cache_event_kind k, std::string_view key) const {
    if (opts_.on_event) emit(cache_event{k, key, {}, {}, {}});
  }

  void end_load(const std::string& key, std::uint64_t token) {
    if (!token) return;
    shard& sh = shard_for(key);
    std::lock_guard lk(sh.mu);
    sh.end_load(key, token);
  }

 private:
  struct tier_counters {
    std::atomic<std::uint64_t> hits{0}, misses{0}, errors{0}, corrupt{0};
  };

  void emit_tier(cache_event_kind k, std::string_view key, std::size_t i) const {
    if (opts_.on_event) emit(cache_event{k, key, {}, {}, {}, opts_.tiers[i]->name()});
  }

  void tier_failed(std::size_t i, std::string_view key, const boost::system::error_code& ec) {
    tier_counts_[i].errors.fetch_add(1, std::memory_order_relaxed);
    if (opts_.on_event) emit(cache_event{cache_event_kind::tier_error, key, {}, make_error(ec), {}, opts_.tiers[i]->name()});
  }

  void put_tier(std::size_t i, const std::string& key, std::string bytes, std::chrono::milliseconds ttl) {
    opts_.tiers[i]->async_put(key, std::move(bytes), ttl,
                              [w = this->weak_from_this(), i, key](boost::system::error_code ec) {
                                if (!ec) return;
                                if (auto self = w.lock()) self->tier_failed(i, key, ec);
                              });
  }

  std::unique_ptr<tier_counters[]> tier_counts_;
  // Invalidation counts by key stripe, kept only with tiers (see recheck).
  static constexpr std::size_t epoch_stripes = 256;
  std::unique_ptr<std::atomic<std::uint64_t>[]> epochs_;

  // Invalidations between their change of memory and their tier initiations,
  // by key stripe and for clears (see `invalidation`).
  std::unique_ptr<std::atomic<std::uint32_t>[]> pending_;
  std::atomic<std::uint32_t> clearing_{0};

  static std::size_t stripe_of(std::string_view key) noexcept {
    return boost::hash<std::string_view>{}(key) % epoch_stripes;
  }
  std::atomic<std::uint64_t>& epoch_of(std::string_view key) noexcept { return epochs_[stripe_of(key)]; }
  std::atomic<std::uint32_t>& pending_of(std::string_view key) const noexcept { return pending_[stripe_of(key)]; }

  std::uint64_t begin_load(const std::string& key) {
    const std::uint64_t token = next_token_.fetch_add(1, std::memory_order_relaxed) + 1;
    shard& sh = shard_for(key);
    std::lock_guard lk(sh.mu);
    sh.begin_load(key, token);
    return token;
  }

  void load_failed(const std::string& key, std::uint64_t token, const std::exception_ptr& failure,
                   std::chrono::nanoseconds took, bool cancelled) {
    if (cancelled) {
      // Cancelled because its callers left (or cancel/clear): not the loader's failure.
      end_load(key, token);
      return;
    }
    load_failures_.fetch_add(1, std::memory_order_relaxed);
    emit(cache_event{cache_event_kind::load_failed, key, took, failure, {}});
    if (opts_.negative_ttl) {
      store(key, nullptr, failure, *opts_.negative_ttl, token);
    } else {
      end_load(key, token);
    }
  }

  // Emits the events of removed entries and frees them, outside any lock.
  void bury(typename shard::graveyard& dead) {
    while (node* n = dead.pop_front()) {
      if (n->why == removal::capacity)
        emit(cache_event{cache_event_kind::eviction, n->key, {}, {}, eviction_cause::capacity});
      else if (n->why == removal::expired)
        emit_kind(cache_event_kind::expiration, n->key);
      delete n;
    }
  }

  asio::any_io_executor ex_;
  const cache_options opts_;
  weigher_type weigher_;
  std::unique_ptr<shard[]> shards_;
  std::atomic<std::uint64_t> loads_{0}, load_failures_{0}, load_time_{0}, coalesced_{0}, next_token_{0};
  flight<V, Clock> flight_;  // last: destroyed first, while the counters it reports to exist
};

}  // namespace detail

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

  /// @throws boost::system::system_error with `error::invalid_option` for options out of range.
  explicit cache(executor_type ex, cache_options opts = {}, weigher_type weigher = {})
      : st_(std::make_shared<state_type>(std::move(ex), std::move(opts), std::move(weigher))) {}

  template <class ExecutionContext>
    requires std::convertible_to<ExecutionContext&, boost::asio::execution_context&>
  explicit cache(ExecutionContext& ctx, cache_options opts = {}, weigher_type weigher = {})
      : cache(ctx.get_executor(), std::move(opts), std::move(weigher)) {}

  cache(const cache&) = delete;
  cache& operator=(const cache&) = delete;

  /// Cancels the loads in flight (their callers get `error::cancelled`).
  ~cache() {
    if (st_) st_->get_flight().clear();
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
  /// inside this call: a value found in memory is posted.
  ///
  /// @par Per-Operation Cancellation
  /// While waiting for a load: `terminal`, `partial` and `total`, as in
  /// `flight::async_run`; when the last caller leaves, the load is cancelled
  /// (unless `on_abandon` is `finish`). A value found in memory is not cancellable.
  ///
  /// @par Invalidation
  /// An `async_erase`, `async_clear` or `async_set` of `key` issued once this
  /// call started a load (even before the load's first step ran) does not stop
  /// the load: the callers already waiting for it still receive its value, but
  /// the value is stored nowhere, and callers arriving after the invalidation
  /// do not join it: they start a fresh load. While an invalidation is being
  /// handed to the tiers, loads of its key skip the tiers and run the loader.
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
    return async_get(std::move(key), get_options{}, std::move(loader), std::forward<CompletionToken>(token));
  }

  /// As above, loading a miss through `loader` with the cache key as the batch
  /// key: concurrent misses for different keys share batches. The batch loader
  /// must outlive the operation.
  template <class Hash, class BatchClock,
            boost::asio::completion_token_for<void(std::exception_ptr, V)> CompletionToken>
  auto async_get(std::string key, batch_loader<std::string, V, Hash, BatchClock>& loader, CompletionToken&& token) {
    auto bound = loader.bind(key);
    return async_get(std::move(key), get_options{}, std::move(bound), std::forward<CompletionToken>(token));
  }

  /// Looks `key` up in memory only; never loads.
  ///
  /// @par Completion signature
  /// @code void(std::exception_ptr error, std::optional<V> value) @endcode
  /// `value` is empty when no fresh value is in memory (a cached failure counts as
  /// none). `error` only for `error::invalid_key`. Posted to the handler's executor.
  template <boost::asio::completion_token_for<void(std::exception_ptr, std::optional<V>)> CompletionToken>
  auto async_get(std::string key, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, std::optional<V>)>(
        [st = st_.get()](auto handler, std::string key) {
          std::exception_ptr e;
          std::optional<V> v;
          if (!st->valid_key(key))
            e = detail::make_error(error::invalid_key);
          else
            v = st->lookup(key, 2, nullptr);
          detail::post_result(st->executor(), std::move(handler), std::move(e), std::move(v));
        },
        token, std::move(key));
  }

  /// The coroutine fast path of `async_get`: a value found in memory is returned
  /// without suspending the caller or posting anything; a miss continues as
  /// `async_get(key, opts, loader, use_awaitable)`. Prefer it in coroutines on hot
  /// paths; use `async_get` for other tokens, or where a hit must not resume the
  /// caller inline. Errors are thrown. The cache must outlive the awaitable.
  template <class Loader>
  boost::asio::awaitable<V> co_get(std::string key, Loader loader, get_options opts = {}) {
    if (st_->valid_key(key)) {
      std::exception_ptr failure;
      if (auto v = st_->lookup(key, 2, &failure)) co_return std::move(*v);
      if (failure) std::rethrow_exception(failure);
    }
    // The miss path lives in its own frame, keeping the hit path's small.
    auto op = co_get_miss(std::move(key), std::move(loader), opts);
    co_return co_await std::move(op);
  }


 private:
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
  /// and loads in flight are as before). A value heavier than the cap is
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
              auto inv = st->invalidate_key(key);
              std::uint64_t epoch = 0;
              st->store(key, &value, nullptr, ttl, std::nullopt, &epoch);
              st->forget_load(key);
              if (st->has_tiers()) st->write_tiers(key, value, ttl, epoch, true);
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
  /// `erased`: whether memory held a fresh value of the key (an expired one is
  /// reclaimed and counted as an expiration). Errors: `error::invalid_key`; the
  /// first tier's failure as a `boost::system::system_error` (for instance
  /// `error::tier_unavailable` while its breaker is open); memory is erased
  /// regardless.
  template <boost::asio::completion_token_for<void(std::exception_ptr, bool)> CompletionToken>
  auto async_erase(std::string key, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, bool)>(
        [st = st_.get()](auto handler, std::string key) {
          if (!st->valid_key(key)) {
            detail::post_result(st->executor(), std::move(handler), detail::make_error(error::invalid_key), false);
            return;
          }
          auto inv = st->invalidate_key(key);  // until the tiers' erases are initiated
          const bool erased = st->erase(key);
          if (!st->has_tiers()) {
            detail::post_result(st->executor(), std::move(handler), std::exception_ptr{}, erased);
            return;
          }
          auto work = boost::asio::make_work_guard(boost::asio::get_associated_executor(handler, st->executor()));
          st->on_every_tier(
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
          auto inv = st->invalidate_all();  // until the tiers' clears are initiated
          st->clear();
          if (!st->has_tiers()) {
            detail::post_result(st->executor(), std::move(handler), std::exception_ptr{});
            return;
          }
          auto work = boost::asio::make_work_guard(boost::asio::get_associated_executor(handler, st->executor()));
          st->on_every_tier(
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

  /// The value of `key` if it is in memory and fresh. Synchronous, thread-safe,
  /// no executor hop; a hit allocates nothing beyond `V`'s copy. Counts a hit or
  /// a miss like any lookup.
  std::optional<V> peek(std::string_view key) const { return st_->peek(key); }

  /// A snapshot of the counters. Reclaims expired entries first, so `size`
  /// counts fresh entries only.
  cache_stats stats() const { return st_->stats(); }

  /// Entries in memory (fresh ones only).
  std::size_t size() const { return stats().size; }

 private:
  struct initiate_get {
    state_type* st;
    bool counted = false;  // the caller counted this lookup already (co_get's miss)

    template <class Handler, class Loader>
    void operator()(Handler&& handler, std::string&& key, get_options opts, Loader&& loader) const {
      namespace asio = boost::asio;
      if (!st->valid_key(key)) {
        detail::post_result(st->executor(), std::forward<Handler>(handler), detail::make_error(error::invalid_key), V{});
        return;
      }
      std::exception_ptr failure;
      std::optional<V> v;
      if constexpr (std::is_nothrow_copy_constructible_v<V>) {
        v = st->lookup(key, 2, &failure, !counted);
      } else {
        try {
          v = st->lookup(key, 2, &failure, !counted);
        } catch (...) {
          failure = std::current_exception();  // V's copy threw
        }
      }
      if (v) {
        detail::post_result(st->executor(), std::forward<Handler>(handler), std::exception_ptr{}, std::move(*v));
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
      using work_type = typename state_type::template load_work<std::decay_t<Loader>>;
      work_type work{typename state_type::load_ticket(st->shared_from_this(), key), std::forward<Loader>(loader), ttl};
      st->get_flight().async_run(std::move(key), run_options{.timeout = opts.timeout}, std::move(work),
                                 std::forward<Handler>(handler));
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
      if (st_->lookup(key, 0, nullptr, false)) {
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
        const bool kept = !e && st->lookup(k, 0, nullptr, false).has_value();
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
