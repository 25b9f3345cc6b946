// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_TAGS_HPP
#define CACHEFLIGHT_TAGS_HPP

#include <cacheflight/detail/post_result.hpp>
#include <cacheflight/error.hpp>
#include <cacheflight/flight.hpp>
#include <cacheflight/tier.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/unordered/unordered_flat_map.hpp>
#include <boost/unordered/unordered_flat_set.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cacheflight {

/// Options of a `tag_registry`. An aggregate: use designated initializers.
struct tag_options {
  /// Where tag generations are shared with other processes: typically the
  /// Redis tier the caches use as their L2 (or a second Redis tier with a
  /// prefix of its own). Null: generations live in this process only.
  std::shared_ptr<tier> store{};
  /// The store key of a tag's generation is `key_prefix + tag`.
  std::string key_prefix = "cf:tag:";
  /// How long a generation read from the store is used before the store is
  /// asked again. Zero (the default): every resolve asks the store, so a tag
  /// invalidated by any process is seen by the next call in every process.
  /// Longer: fewer store reads, but a process may use an entry of a tag up to
  /// this long after another process invalidated it. Ignored without a store.
  std::chrono::nanoseconds recheck_interval = std::chrono::nanoseconds::zero();
  /// Cap on the keys remembered for eager removal (see `tag_registry::track`)
  /// and on the tags whose generation is kept in memory. Past it, the keys
  /// remembered first are forgotten (their entries are not erased eagerly:
  /// they become unreachable when a tag of theirs is invalidated, or their
  /// session ends, and leave memory by eviction or expiry), and some tag's
  /// generation is forgotten (it is read again or, without a store, replaced
  /// by a new one: entries of that tag are then missed, never served stale).
  std::size_t max_tracked = 100'000;
};

/// Counters of a `tag_registry`.
struct tag_stats {
  std::uint64_t invalidations = 0;  ///< tags invalidated through this registry
  std::uint64_t store_reads = 0;    ///< generation reads sent to the store
  std::uint64_t store_errors = 0;   ///< store reads and writes that failed
  std::uint64_t changes_seen = 0;   ///< generations found changed in the store (invalidated elsewhere)
  std::uint64_t keys_removed = 0;   ///< remembered keys erased because a tag of theirs was invalidated or removed
  std::size_t tracked_keys = 0;     ///< keys remembered now
  std::size_t tags = 0;             ///< tags whose generation is in memory now
};

/// Generations of tags: the mechanism behind tagged entries, `memoized::clear`
/// and `agent_cache` resources.
///
/// Each tag has a generation, a random 64-bit number. A tagged entry is stored
/// under a key that ends with a stamp combining the generations of its tags
/// (`async_resolve`). Invalidating a tag gives it a new random generation:
/// from then on every lookup of an entry of that tag computes another key and
/// misses, in this process and, through `tag_options::store`, in every process
/// sharing the store. Nothing has to enumerate the entries of a tag, so an
/// invalidation costs one store write per tag, whatever the number of entries;
/// a tagged lookup costs one store read per tag (with a `recheck_interval`,
/// one read per tag and interval, shared by concurrent lookups). Generations are
/// random rather than counted, so two processes invalidating a tag at once
/// never give it the same generation twice, and a generation lost from the
/// store is replaced by a new one (a miss), never by an old one.
///
/// Entries of an old generation are unreachable; to free their memory at
/// once, the keys an instance stores are remembered with their tags (`track`)
/// and erased, from memory and from every tier, when the tag is invalidated
/// here or its generation is found changed in the store.
///
/// @par Threads
/// Every member may be called from any thread, concurrently. State is kept
/// behind one lock, held for bookkeeping proportional to the keys of the tags
/// involved; erasers and handlers never run under it.
///
/// @par Lifetime
/// A handle: copies share one registry. The store must stay usable while the
/// registry is.
class tag_registry {
 public:
  using executor_type = boost::asio::any_io_executor;
  /// Erases one key (from memory at once, from tiers before `done`): what a
  /// cache's `async_erase` does. Called outside any lock.
  using eraser = std::function<void(const std::string& key, std::function<void(std::exception_ptr)> done)>;

  /// @throws boost::system::system_error with `error::invalid_option` when
  /// `max_tracked` is 0 or the recheck interval is negative.
  explicit tag_registry(executor_type ex, tag_options opts = {})
      : impl_(std::make_shared<impl>(std::move(ex), std::move(opts))) {}

  executor_type get_executor() const noexcept { return impl_->ex; }
  const tag_options& options() const noexcept { return impl_->opts; }

  /// The stamp of `tags`: a 64-bit combination of their generations, in order.
  /// Equal while none of them is invalidated.
  ///
  /// @par Completion signature
  /// @code void(std::exception_ptr error, std::uint64_t stamp) @endcode
  /// Errors: `error::invalid_key` for an empty tag or one longer than 1024
  /// bytes; the store's failure as a `boost::system::system_error`.
  /// A tag absent from the store (never invalidated, or lost) gets a new
  /// generation, written to the store.
  /// @par Executor
  /// Runs on the registry's executor; the handler runs on its associated
  /// executor, never inside this call.
  /// @par Per-Operation Cancellation
  /// `terminal`: the caller stops waiting (`operation_aborted`) at once, even
  /// when the store's read does not honour cancellation; a store read it
  /// shares with others goes on, one of its own is cancelled.
  template <boost::asio::completion_token_for<void(std::exception_ptr, std::uint64_t)> CompletionToken>
  auto async_resolve(std::vector<std::string> tags, CompletionToken&& token) {
    return boost::asio::co_spawn(impl_->ex, resolve(std::move(tags)), std::forward<CompletionToken>(token));
  }

  /// `async_resolve` as an awaitable. A tag whose generation is known and
  /// current completes without suspending.
  boost::asio::awaitable<std::uint64_t> resolve(std::vector<std::string> tags) const {
    return resolve(impl_, std::move(tags));
  }

  /// Gives each tag a new generation, erases the keys remembered under it
  /// (from memory at once, when the operation is initiated: within this call
  /// for a callback, when awaited for `use_awaitable`), and writes the new
  /// generation to the store.
  ///
  /// @par Completion signature
  /// @code void(std::exception_ptr error) @endcode
  /// Completes once the store has the new generations and the remembered keys
  /// are erased from every tier. Errors: `error::invalid_key` for a bad tag
  /// (then nothing changed); the first failure of the store or of an erase (the
  /// local generations are new regardless, but other processes may not see
  /// the invalidation).
  /// @par Executor
  /// The handler runs on its associated executor, never inside this call.
  template <boost::asio::completion_token_for<void(std::exception_ptr)> CompletionToken>
  auto async_invalidate(std::vector<std::string> tags, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr)>(
        [self = impl_](auto handler, std::vector<std::string> tags) {
          auto j = make_join(self->ex, std::move(handler));
          for (const auto& t : tags) {
            if (t.empty() || t.size() > max_tag_length) {
              j->fail(detail::make_error(error::invalid_key));
              j->done({});
              return;
            }
          }
          for (const auto& t : tags) self->invalidate_one(t, j);
          j->done({});
        },
        token, std::move(tags));
  }

  /// Erases the keys remembered under `tag` (from memory at once, when the
  /// operation is initiated) and forgets
  /// the tag, without changing its generation in the store: for tags no other
  /// process can use, such as a session's.
  /// @par Completion signature
  /// @code void(std::exception_ptr error) @endcode
  /// Completes once every remembered key is erased from every tier; error: the
  /// first erase's failure.
  template <boost::asio::completion_token_for<void(std::exception_ptr)> CompletionToken>
  auto async_remove_tracked(std::string tag, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr)>(
        [self = impl_](auto handler, std::string tag) {
          auto j = make_join(self->ex, std::move(handler));
          std::vector<victim> victims;
          {
            std::lock_guard lk(self->mu);
            if (auto it = self->tags.find(tag); it != self->tags.end()) {
              self->take_keys(it->second, victims);
              self->tags.erase(it);
            }
          }
          self->erase_all(std::move(victims), j);
          j->done({});
        },
        token, std::move(tag));
  }

  /// Remembers that `key` was stored with `tags` through `erase` (held weakly:
  /// keys of an eraser that is gone are skipped). Thread-safe, never blocks on
  /// I/O.
  void track(const std::vector<std::string>& tags, const std::string& key, const std::shared_ptr<const eraser>& erase) {
    std::lock_guard lk(impl_->mu);
    impl_->track(tags, key, erase);
  }

  tag_stats stats() const {
    std::lock_guard lk(impl_->mu);
    tag_stats s = impl_->counters;
    s.store_reads = impl_->store_reads.load(std::memory_order_relaxed);
    s.store_errors = impl_->store_errors.load(std::memory_order_relaxed);
    s.tracked_keys = impl_->keys.size();
    s.tags = impl_->tags.size();
    return s;
  }

  /// Longest accepted tag, in bytes.
  static constexpr std::size_t max_tag_length = 1024;

 private:
  struct impl;

  static boost::asio::awaitable<std::uint64_t> resolve(std::shared_ptr<impl> self, std::vector<std::string> tags) {
    for (const auto& t : tags) check_tag(t);
    std::uint64_t stamp = 0x9e37'79b9'7f4a'7c15ULL;
    for (const auto& t : tags) {
      std::uint64_t g = 0, epoch = 0;
      if (!self->cached_generation(t, g, epoch)) {
        std::pair<std::uint64_t, std::uint64_t> read;
        if (self->opts.recheck_interval == std::chrono::nanoseconds::zero()) {
          // Every call reads the store itself: a read that started before
          // this call could miss an invalidation made elsewhere since. The
          // read is this call's own work in the flight, which a cancelled
          // caller stops waiting for even if the store does not stop it.
          std::string own = t;
          own += '\0';
          own += std::to_string(self->own_reads.fetch_add(1, std::memory_order_relaxed));
          auto op = self->reads.async_run(std::move(own), [self, t]() { return self->read_store(t); },
                                          boost::asio::use_awaitable);
          read = co_await std::move(op);
        } else {
          // Within the recheck interval, concurrent calls share one read.
          auto op = self->reads.async_run(t, [self, t]() { return self->read_store(t); }, boost::asio::use_awaitable);
          read = co_await std::move(op);
        }
        // A read that started before an invalidation made here (which this
        // caller saw) gives way to the invalidation's generation.
        g = read.second < epoch ? self->local_generation(t, read.first) : read.first;
      }
      stamp = mix(stamp ^ g);
    }
    co_return stamp;
  }

  static void check_tag(const std::string& t) {
    if (t.empty() || t.size() > max_tag_length) throw boost::system::system_error(make_error_code(error::invalid_key));
  }

  static std::uint64_t mix(std::uint64_t x) noexcept {  // splitmix64's finalizer
    x ^= x >> 30;
    x *= 0xbf58'476d'1ce4'e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d0'49bb'1331'11ebULL;
    return x ^ (x >> 31);
  }

  struct victim {
    std::weak_ptr<const eraser> erase;
    std::string key;
  };

  // Counts outstanding parts of one operation; completes the handler with the
  // first failure when the last part is done.
  struct join_base {
    virtual ~join_base() = default;
    std::mutex mu;
    std::size_t pending = 1;  // the initiating call's own part
    std::exception_ptr first;
    void add() {
      std::lock_guard lk(mu);
      ++pending;
    }
    void fail(std::exception_ptr e) {
      std::lock_guard lk(mu);
      if (!first) first = std::move(e);
    }
    void done(std::exception_ptr e) {
      std::unique_lock lk(mu);
      if (e && !first) first = std::move(e);
      if (--pending != 0) return;
      lk.unlock();
      complete();
    }
    virtual void complete() = 0;
  };

  template <class Handler>
  struct join_op final : join_base {
    using work_type = boost::asio::executor_work_guard<
        boost::asio::associated_executor_t<Handler, boost::asio::any_io_executor>>;
    join_op(const boost::asio::any_io_executor& ex, Handler h)
        : fallback(ex), handler(std::move(h)), work(boost::asio::get_associated_executor(handler, ex)) {}
    boost::asio::any_io_executor fallback;
    Handler handler;
    work_type work;
    void complete() override {
      detail::post_result(fallback, std::move(handler), std::move(first));
      work.reset();
    }
  };

  template <class Handler>
  static std::shared_ptr<join_base> make_join(const boost::asio::any_io_executor& ex, Handler h) {
    return std::make_shared<join_op<Handler>>(ex, std::move(h));
  }

  struct impl : std::enable_shared_from_this<impl> {
    struct tag_entry {
      std::uint64_t gen = 0;
      bool known = false;
      std::uint64_t epoch = 0;  // bumped by each local invalidation
      std::chrono::steady_clock::time_point fetched{};
      boost::unordered_flat_set<std::string> keys;  // remembered keys carrying the tag
    };

    impl(executor_type e, tag_options o)
        : ex(std::move(e)),
          opts(std::move(o)),
          // No cap on reads in flight: each is a caller's, which the callers bound.
          reads(ex, flight_options{.max_keys = std::numeric_limits<std::size_t>::max(),
                                   .max_key_length = max_tag_length + 24}) {
      if (opts.max_tracked == 0) detail::throw_invalid_option("tag_options::max_tracked must be positive");
      if (opts.recheck_interval < std::chrono::nanoseconds::zero())
        detail::throw_invalid_option("tag_options::recheck_interval must not be negative");
      std::random_device rd;
      rng.seed((std::uint64_t{rd()} << 32) ^ rd());
    }

    executor_type ex;
    tag_options opts;
    // The store reads: one per tag at a time within the recheck interval, one
    // per call under a key of its own without it (the tag, a NUL and a count).
    // A read gives the generation, and the tag's epoch when the read started.
    flight<std::pair<std::uint64_t, std::uint64_t>, std::chrono::steady_clock> reads;
    std::atomic<std::uint64_t> own_reads{0};
    mutable std::mutex mu;
    boost::unordered_flat_map<std::string, tag_entry> tags;
    // Remembered keys: their eraser and tags, and the order they came in
    // (each with the number it was remembered under: a key forgotten and
    // remembered again is found in `order` at its new place only).
    struct tracked_key {
      std::weak_ptr<const eraser> erase;
      std::vector<std::string> tags;
      std::uint64_t seq = 0;
    };
    boost::unordered_flat_map<std::string, tracked_key> keys;
    std::deque<std::pair<std::uint64_t, std::string>> order;
    std::uint64_t tracked_seq = 0;

    // Under mu. Whether an entry of `order` names a key still remembered
    // under that entry's number.
    bool current(const std::pair<std::uint64_t, std::string>& o) const {
      auto it = keys.find(o.second);
      return it != keys.end() && it->second.seq == o.first;
    }
    std::uint64_t epochs = 0;  // registry-wide, so a recreated tag never repeats an epoch
    std::mt19937_64 rng;
    tag_stats counters;
    std::atomic<std::uint64_t> store_reads{0}, store_errors{0};

    std::uint64_t fresh_generation() { return rng() ^ (std::uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()) * 0x9e37'79b9'7f4a'7c15ULL); }

    // Under mu. Makes room past the cap by forgetting some tag (its keys are
    // forgotten with it: they stay in memory, unreachable if the tag changes,
    // until evicted).
    tag_entry& entry(const std::string& t) {
      auto it = tags.find(t);
      if (it != tags.end()) return it->second;
      if (tags.size() >= opts.max_tracked) {
        auto victim_it = tags.begin();
        std::vector<std::string> forget(victim_it->second.keys.begin(), victim_it->second.keys.end());
        for (const auto& k : forget) untrack(k);
        tags.erase(victim_it);
      }
      auto& e = tags[t];
      e.epoch = ++epochs;
      return e;
    }

    // Under mu. Forgets one remembered key.
    void untrack(const std::string& k) {
      auto it = keys.find(k);
      if (it == keys.end()) return;
      for (const auto& t : it->second.tags)
        if (auto ti = tags.find(t); ti != tags.end()) ti->second.keys.erase(k);
      keys.erase(it);
    }

    // Under mu.
    void track(const std::vector<std::string>& ts, const std::string& k, const std::shared_ptr<const eraser>& erase) {
      if (auto known = keys.find(k); known != keys.end()) {
        known->second.erase = erase;  // the latest owner erases it
      } else {
        while (keys.size() >= opts.max_tracked && !order.empty()) {  // forget the first remembered
          if (current(order.front())) untrack(order.front().second);
          order.pop_front();
        }
        if (order.size() > 2 * opts.max_tracked) {  // drop the names of keys removed since
          std::erase_if(order, [&](const auto& o) { return !current(o); });
        }
        order.emplace_back(++tracked_seq, k);
        try {
          keys.emplace(k, tracked_key{erase, {}, tracked_seq});
        } catch (...) {
          order.pop_back();
          throw;
        }
      }
      for (const auto& t : ts) {
        // entry() may forget a tag, and keys with it: look the key up again.
        auto& e = entry(t);
        auto kit = keys.find(k);
        if (kit == keys.end()) return;
        if (e.keys.insert(k).second) kit->second.tags.push_back(t);
      }
    }

    // Under mu. Takes every key remembered under `e`, forgetting them.
    void take_keys(tag_entry& e, std::vector<victim>& out) {
      std::vector<std::string> ks(e.keys.begin(), e.keys.end());
      for (auto& k : ks) {
        auto it = keys.find(k);
        if (it == keys.end()) continue;
        out.push_back(victim{it->second.erase, k});
        untrack(k);
      }
      e.keys.clear();
    }

    // A generation usable without asking the store; else the tag's epoch.
    bool cached_generation(const std::string& t, std::uint64_t& g, std::uint64_t& epoch) {
      std::lock_guard lk(mu);
      if (opts.store) {
        auto it = tags.find(t);
        if (it == tags.end()) return false;
        epoch = it->second.epoch;
        if (!it->second.known || opts.recheck_interval == std::chrono::nanoseconds::zero() ||
            std::chrono::steady_clock::now() - it->second.fetched >= opts.recheck_interval)
          return false;
        g = it->second.gen;
        return true;
      }
      auto& e = entry(t);
      if (!e.known) {
        e.gen = fresh_generation();
        e.known = true;
      }
      g = e.gen;
      return true;
    }

    std::uint64_t local_generation(const std::string& t, std::uint64_t fallback) {
      std::lock_guard lk(mu);
      auto it = tags.find(t);
      return it != tags.end() && it->second.known ? it->second.gen : fallback;
    }

    static bool parse(const std::string& s, std::uint64_t& g) {
      if (s.size() != 16) return false;
      std::uint64_t v = 0;
      for (char c : s) {
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return false;
        v = (v << 4) | std::uint64_t(d);
      }
      g = v;
      return true;
    }

    static std::string format(std::uint64_t g) {
      static constexpr char digits[] = "0123456789abcdef";
      std::string s(16, '0');
      for (int i = 15; i >= 0; --i, g >>= 4) s[std::size_t(i)] = digits[g & 15];
      return s;
    }

    boost::asio::awaitable<std::pair<std::uint64_t, std::uint64_t>> read_store(std::string t) {
      namespace asio = boost::asio;
      auto self = shared_from_this();
      std::uint64_t epoch0 = 0;
      {
        std::lock_guard lk(mu);
        epoch0 = entry(t).epoch;
      }
      store_reads.fetch_add(1, std::memory_order_relaxed);
      auto get = opts.store->async_get(opts.key_prefix + t, asio::as_tuple(asio::use_awaitable));
      auto [ec, bytes] = co_await std::move(get);
      if (ec) {
        store_errors.fetch_add(1, std::memory_order_relaxed);
        throw boost::system::system_error(ec);
      }
      std::uint64_t g = 0;
      if (!bytes || !parse(*bytes, g)) {
        // Absent (never invalidated, or lost) or unreadable: a new generation,
        // never an old one.
        {
          std::lock_guard lk(mu);
          g = fresh_generation();
        }
        auto put = opts.store->async_put(opts.key_prefix + t, format(g), std::chrono::milliseconds::max(),
                                         asio::as_tuple(asio::use_awaitable));
        auto [pec] = co_await std::move(put);
        if (pec) {
          store_errors.fetch_add(1, std::memory_order_relaxed);
          throw boost::system::system_error(pec);
        }
      }
      std::vector<victim> victims;
      {
        std::lock_guard lk(mu);
        auto& e = entry(t);
        if (e.epoch != epoch0) {
          // Invalidated here meanwhile (or forgotten and recreated): the newer
          // generation wins; a recreated entry is left to the next read.
          if (e.known) g = e.gen;
        } else {
          if (e.known && e.gen != g) {
            ++counters.changes_seen;
            take_keys(e, victims);
          }
          e.gen = g;
          e.known = true;
          e.fetched = std::chrono::steady_clock::now();
        }
      }
      if (!victims.empty()) {
        struct ignore final : join_base {
          void complete() override {}
        };
        auto j = std::make_shared<ignore>();
        erase_all(std::move(victims), j);
        j->done({});
      }
      co_return std::pair{g, epoch0};
    }

    void invalidate_one(const std::string& t, const std::shared_ptr<join_base>& j) {
      std::vector<victim> victims;
      std::uint64_t g = 0;
      {
        std::lock_guard lk(mu);
        auto& e = entry(t);
        g = fresh_generation();
        e.gen = g;
        e.known = true;
        e.epoch = ++epochs;
        e.fetched = std::chrono::steady_clock::now();
        take_keys(e, victims);
        ++counters.invalidations;
      }
      erase_all(std::move(victims), j);
      if (!opts.store) return;
      j->add();
      opts.store->async_put(opts.key_prefix + t, format(g), std::chrono::milliseconds::max(),
                            [self = shared_from_this(), j](boost::system::error_code ec) {
                              if (ec) self->store_errors.fetch_add(1, std::memory_order_relaxed);
                              j->done(ec ? detail::make_error(ec) : std::exception_ptr{});
                            });
    }

    void erase_all(std::vector<victim> victims, const std::shared_ptr<join_base>& j) {
      std::size_t n = 0;
      for (auto& v : victims) {
        auto e = v.erase.lock();
        if (!e) continue;
        ++n;
        j->add();
        (*e)(v.key, [j](std::exception_ptr ex) { j->done(std::move(ex)); });
      }
      if (n) {
        std::lock_guard lk(mu);
        counters.keys_removed += n;
      }
    }
  };

  std::shared_ptr<impl> impl_;
};

}  // namespace cacheflight

#endif
