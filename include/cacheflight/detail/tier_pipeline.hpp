// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_TIER_PIPELINE_HPP
#define CACHEFLIGHT_DETAIL_TIER_PIPELINE_HPP

#include <cacheflight/codec.hpp>
#include <cacheflight/detail/cache_events.hpp>
#include <cacheflight/detail/hashed_key.hpp>
#include <cacheflight/error.hpp>
#include <cacheflight/options.hpp>
#include <cacheflight/stats.hpp>
#include <cacheflight/tier.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cacheflight::detail {

// Whether values of `V` can cross a tier.
template <class V>
concept has_codec = requires(const V& v, std::string_view bytes) {
  { codec<V>::encode(v) } -> std::convertible_to<std::string>;
  { codec<V>::decode(bytes) } -> std::same_as<std::optional<V>>;
};

// The tiers behind a cache's memory: reads in order on a miss, fills of the
// tiers before the one that answered, write-behind of loaded and set values,
// erases and clears reaching every tier, and the per-tier counters.
//
// Ordering with invalidations rests on two counters per key stripe:
// - the epoch, bumped by every set, erase and clear under the key's memory
//   lock (memory_tier does it) and read by every store. A write to the tiers
//   compares it after initiating its puts (`recheck`): if an invalidation came
//   since its value was stored, that invalidation's erase may have reached a
//   tier first, so the key is erased again. No tier keeps a value memory
//   dropped, at the price of an occasional extra miss (keys share stripes).
// - the pending count (`invalidation`), held by a set, erase or clear from
//   before it changes memory until its tier operations are initiated, and by
//   a load from before it stores its value until its writes to the tiers (and
//   their recheck) are initiated. Loads skip the tiers while it is held: a
//   tier may still answer with what an invalidation replaces, or with the
//   value of an older load that an invalidation overtook between its store and
//   its write. After that, tiers read their own writes (the `cf::tier`
//   contract), so a later read sees the invalidation or the recheck's erase.
//   A write whose value an invalidation already overtook is not made at all.
//
// Owned through a shared_ptr: the tiers' completions refer to it weakly.
template <class V>
class tier_pipeline : public std::enable_shared_from_this<tier_pipeline<V>> {
 public:
  using epoch_counter = std::atomic<std::uint64_t>;

  tier_pipeline(std::vector<std::shared_ptr<tier>> tiers, std::shared_ptr<const cache_events> events)
      : tiers_(std::move(tiers)), events_(std::move(events)) {
    if (tiers_.empty()) return;
    if constexpr (!has_codec<V>)
      throw_invalid_option("cache_options::tiers needs a cacheflight::codec for the value type");
    for (const auto& t : tiers_)
      if (!t) throw_invalid_option("cache_options::tiers holds a null tier");
    counts_ = std::make_unique<counters[]>(tiers_.size());
    epochs_ = std::make_unique<epoch_counter[]>(stripes);
    pending_ = std::make_unique<std::atomic<std::uint32_t>[]>(stripes);
  }

  bool empty() const noexcept { return tiers_.empty(); }
  std::size_t size() const noexcept { return tiers_.size(); }

  // The key's epoch, or null without tiers (see above).
  epoch_counter* epoch_of(std::string_view key) noexcept { return empty() ? nullptr : &epochs_[stripe_of(key)]; }

  // Bumps every epoch (a clear). Called under each memory shard's lock.
  void bump_all_epochs() noexcept {
    if (empty()) return;
    for (std::size_t e = 0; e < stripes; ++e) epochs_[e].fetch_add(1, std::memory_order_relaxed);
  }

  // Held by an invalidation from before it changes memory until its tier
  // operations are initiated (see above).
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
    return empty() ? invalidation() : invalidation(&pending_[stripe_of(key)]);
  }
  invalidation invalidate_all() { return empty() ? invalidation() : invalidation(&clearing_); }

  bool invalidating(std::string_view key) const noexcept {
    return clearing_.load(std::memory_order_acquire) != 0 ||
           pending_[stripe_of(key)].load(std::memory_order_acquire) != 0;
  }

  // Tier `i`, for the reads of a load (see cache_load.hpp), which asks the
  // tiers in order and passes each answer to `failed` or `take`.
  tier& at(std::size_t i) const noexcept { return *tiers_[i]; }

  // Tier `i`'s answer `bytes` (nullopt: absent) for `key`. A hit is stored in
  // `memory` under the load's `token` (consumed), fills the tiers before `i`
  // with the value's remaining lifetime, and is returned; a miss, or bytes the
  // codec refuses, is counted and reported and returns nullopt. A value past
  // its fresh time keeps its stale state in memory. With `fresher_than` (a
  // reload), a value with no more fresh time left than that is a miss.
  template <class Memory>
  std::optional<V> take(std::size_t i, const std::string& key, const std::optional<std::string>& bytes,
                        std::uint64_t& token, Memory& memory, std::optional<std::chrono::nanoseconds> fresher_than) {
    if constexpr (has_codec<V>) {
      counters& c = counts_[i];
      if (!bytes) {
        c.misses.fetch_add(1, std::memory_order_relaxed);
        emit(cache_event_kind::tier_miss, key, i);
        return std::nullopt;
      }
      const std::int64_t now_ms = envelope::now_ms();
      std::optional<envelope> env = envelope::unwrap(*bytes);
      std::optional<V> v;
      if (env) {
        const std::int64_t fresh_end = env->fresh_until_ms != 0 ? env->fresh_until_ms : env->expires_ms;
        if ((env->expires_ms != 0 && env->expires_ms <= now_ms) ||  // expired in transit: a plain miss
            (fresher_than && fresh_end != 0 && std::chrono::milliseconds(fresh_end - now_ms) <= *fresher_than)) {
          c.misses.fetch_add(1, std::memory_order_relaxed);
          emit(cache_event_kind::tier_miss, key, i);
          return std::nullopt;
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
        emit(cache_event_kind::tier_corrupt, key, i);
        return std::nullopt;
      }
      c.hits.fetch_add(1, std::memory_order_relaxed);
      emit(cache_event_kind::tier_hit, key, i);
      // Remaining lifetime; a century at most (foreign bytes may claim any expiry).
      constexpr std::chrono::milliseconds century = std::chrono::hours(24 * 36524);
      const auto left = env->expires_ms == 0 ? std::chrono::milliseconds::max()
                                               : std::min(std::chrono::milliseconds(env->expires_ms - now_ms), century);
      // Of which fresh (the rest is its stale window).
      std::chrono::nanoseconds fresh =
          left == std::chrono::milliseconds::max() ? no_expiry : std::chrono::nanoseconds(left);
      std::chrono::nanoseconds stale = std::chrono::nanoseconds::zero();
      if (env->fresh_until_ms != 0 && fresh != no_expiry) {
        const auto fresh_left = std::clamp(std::chrono::milliseconds(env->fresh_until_ms - now_ms),
                                           std::chrono::milliseconds::zero(), left);
        stale = std::chrono::nanoseconds(left - fresh_left);
        fresh = std::chrono::nanoseconds(fresh_left);
      }
      std::uint64_t epoch = 0;
      auto writing = i > 0 ? invalidate_key(key) : invalidation();  // until the fills and their recheck
      const bool kept = memory.store(key, &*v, nullptr, fresh, std::exchange(token, 0), epoch_of(key), &epoch, stale);
      if (kept && i > 0) {
        for (std::size_t j = 0; j < i; ++j) put(j, key, *bytes, left, true);
        recheck(key, epoch);
      }
      return v;
    } else {
      return std::nullopt;
    }
  }

  // Counts and reports tier `i`'s failure `ec` on `key`.
  void failed(std::size_t i, std::string_view key, const boost::system::error_code& ec) {
    counts_[i].errors.fetch_add(1, std::memory_order_relaxed);
    if (*events_)
      events_->emit(cache_event{cache_event_kind::tier_error, key, {}, make_error(ec), {}, tiers_[i]->name()});
  }

  // Writes `v` to every tier, behind the callers' backs; `epoch` is the key's
  // epoch seen when `v` was stored in memory. A value the codec refuses is
  // reported (event and error count per tier), erased from the tiers (they
  // must not keep the value it replaced) and rethrown when `rethrow` is set.
  // `ttl` is its fresh time, `stale` the window after it; the tiers keep it
  // for both.
  // `fill`: a loaded value (see `tier::async_fill`), not an explicit set.
  void write(const std::string& key, const V& v, std::chrono::nanoseconds ttl, std::uint64_t epoch, bool rethrow,
             std::chrono::nanoseconds stale = std::chrono::nanoseconds::zero(), bool fill = false) {
    if constexpr (has_codec<V>) {
      if (empty()) return;
      // An invalidation overtook this value since it was stored: its own tier
      // operation stands, and this older value must not follow it there.
      if (epochs_[stripe_of(key)].load(std::memory_order_relaxed) != epoch) return;
      std::chrono::milliseconds left = std::chrono::milliseconds::max();
      std::int64_t expires_ms = 0, fresh_until_ms = 0;
      if (ttl != no_expiry) {
        const std::int64_t now_ms = envelope::now_ms();
        auto fresh = std::max(std::chrono::ceil<std::chrono::milliseconds>(ttl), std::chrono::milliseconds(1));
        left = fresh;
        if (stale > std::chrono::nanoseconds::zero()) {
          // Whole milliseconds, the end rounded down: never kept past memory's expiry.
          left = std::max(std::chrono::floor<std::chrono::milliseconds>(ttl > no_expiry - stale ? no_expiry : ttl + stale),
                          std::chrono::milliseconds(1));
          fresh = std::min(fresh, left);
          if (left > fresh) fresh_until_ms = now_ms + fresh.count();
        }
        expires_ms = now_ms + left.count();
      }
      std::string bytes;
      try {
        bytes = encode_stored(v, expires_ms, fresh_until_ms);
      } catch (...) {
        const std::exception_ptr e = std::current_exception();
        for (std::size_t i = 0; i < tiers_.size(); ++i) {
          counts_[i].errors.fetch_add(1, std::memory_order_relaxed);
          events_->emit(cache_event{cache_event_kind::tier_error, key, {}, e, {}, tiers_[i]->name()});
        }
        erase(key);
        if (rethrow) throw;
        return;
      }
      for (std::size_t i = 0; i + 1 < tiers_.size(); ++i) put(i, key, bytes, left, fill);
      put(tiers_.size() - 1, key, std::move(bytes), left, fill);
      recheck(key, epoch);
    }
  }

  // Erases `key` from every tier local to this process but `from`; failures
  // are counted and reported.
  void erase_local(const std::string& key, const tier* from) {
    for (std::size_t i = 0; i < tiers_.size(); ++i) {
      if (tiers_[i].get() == from || tiers_[i]->shared()) continue;
      tiers_[i]->async_erase(key, report_failure(i, key));
    }
  }

  // Erases `key` from every tier; failures are counted and reported.
  void erase(const std::string& key) {
    on_every_tier(key, [&](tier& t, auto h) { t.async_erase(key, std::move(h)); }, [](boost::system::error_code) {});
  }

  // Runs `op(tier&, handler)` on every tier and calls `done(first error)` once
  // all have completed; each failure is counted and reported.
  template <class Op, class Done>
  void on_every_tier(const std::string& key, Op op, Done done) {
    struct join {
      join(Done d, std::size_t n) : done(std::move(d)), pending(n) {}
      Done done;
      std::mutex mu;
      std::size_t pending;
      boost::system::error_code first;
    };
    auto j = std::make_shared<join>(std::move(done), tiers_.size());
    for (std::size_t i = 0; i < tiers_.size(); ++i) {
      // Weak: a tier's queue must not keep the cache alive.
      op(*tiers_[i], [w = this->weak_from_this(), j, i, key](boost::system::error_code ec) {
        if (ec)
          if (auto self = w.lock()) self->failed(i, key, ec);
        std::unique_lock lk(j->mu);
        if (ec && !j->first) j->first = ec;
        if (--j->pending != 0) return;
        lk.unlock();
        j->done(j->first);
      });
    }
  }

  // Appends each tier's figures to `s`, the first one's as the L2's too.
  void add_stats(cache_stats& s) const {
    for (std::size_t i = 0; i < tiers_.size(); ++i) {
      const counters& c = counts_[i];
      const tier_health h = tiers_[i]->health();
      s.tiers.push_back(tier_stats{std::string(tiers_[i]->name()), c.hits.load(std::memory_order_relaxed),
                                   c.misses.load(std::memory_order_relaxed), c.errors.load(std::memory_order_relaxed),
                                   c.corrupt.load(std::memory_order_relaxed), h.breaker, h.queued_writes, h.writes,
                                   h.writes_dropped, h});
    }
    if (!s.tiers.empty()) {
      s.l2_hits = s.tiers[0].hits;
      s.l2_misses = s.tiers[0].misses;
      s.l2_errors = s.tiers[0].errors;
    }
  }

 private:
  struct counters {
    std::atomic<std::uint64_t> hits{0}, misses{0}, errors{0}, corrupt{0};
  };

  // Keys share epochs and pending counts by stripe.
  static constexpr std::size_t stripes = 256;
  static std::size_t stripe_of(std::string_view key) noexcept {
    return hashed_key::hash_of(key) % stripes;
  }

  // An invalidation of `key` since a value was stored in memory (at `epoch`)
  // may have reached the tiers before that value's write: erase it again.
  void recheck(const std::string& key, std::uint64_t epoch) {
    if (epochs_[stripe_of(key)].load(std::memory_order_relaxed) != epoch) erase(key);
  }

  // A tier operation's handler that counts and reports its failure, if any.
  // Weak: a tier's queue must not keep the cache alive.
  auto report_failure(std::size_t i, const std::string& key) {
    return [w = this->weak_from_this(), i, key](boost::system::error_code ec) {
      if (!ec) return;
      if (auto self = w.lock()) self->failed(i, key, ec);
    };
  }

  void put(std::size_t i, const std::string& key, std::string bytes, std::chrono::milliseconds ttl, bool fill) {
    if (fill)
      tiers_[i]->async_fill(key, std::move(bytes), ttl, report_failure(i, key));
    else
      tiers_[i]->async_put(key, std::move(bytes), ttl, report_failure(i, key));
  }

  void emit(cache_event_kind k, std::string_view key, std::size_t i) const {
    if (*events_) events_->emit(cache_event{k, key, {}, {}, {}, tiers_[i]->name()});
  }

  const std::vector<std::shared_ptr<tier>> tiers_;
  const std::shared_ptr<const cache_events> events_;
  std::unique_ptr<counters[]> counts_;
  std::unique_ptr<epoch_counter[]> epochs_;
  std::unique_ptr<std::atomic<std::uint32_t>[]> pending_;
  std::atomic<std::uint32_t> clearing_{0};
};

}  // namespace cacheflight::detail

#endif
