// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_CACHE_STATE_HPP
#define CACHEFLIGHT_DETAIL_CACHE_STATE_HPP

// Included by cache.hpp, after `cache_options`, which it needs.

#include <cacheflight/detail/cache_events.hpp>
#include <cacheflight/detail/cache_load.hpp>
#include <cacheflight/detail/memory_tier.hpp>
#include <cacheflight/detail/ready_queue.hpp>
#include <cacheflight/detail/tier_pipeline.hpp>
#include <cacheflight/error.hpp>
#include <cacheflight/flight.hpp>
#include <cacheflight/stats.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/basic_waitable_timer.hpp>
#include <boost/unordered/unordered_flat_map.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace cacheflight::detail {

// What a `cache` shares with its operations in flight: the memory tier, the
// tier pipeline, the flight its loads coalesce on, the load counters and the
// event sink. Kept alive by the operations (a load holds it through its
// ticket), so that a cache may be destroyed with loads in flight.
template <class V, class Clock>
class cache_state : public std::enable_shared_from_this<cache_state<V, Clock>>, public tier_listener {
 public:
  using value_type = V;
  using clock_type = Clock;
  using memory_type = memory_tier<V, Clock>;
  using weigher_type = typename memory_type::weigher_type;
  using invalidation = typename tier_pipeline<V>::invalidation;
  using freshness_policy = std::function<freshness(std::string_view, const V&, std::chrono::nanoseconds)>;
  using ahead_loader = std::function<boost::asio::awaitable<V>()>;

  cache_state(boost::asio::any_io_executor ex, cache_options opts, weigher_type weigher, freshness_policy policy = {})
      : ex_(std::move(ex)),
        opts_(checked(std::move(opts))),
        ready_(ready_for(ex_, opts_.batch_hits)),
        events_(std::make_shared<const cache_events>(opts_.on_event)),
        policy_(std::move(policy)),
        memory_(opts_.policy, opts_.shards, opts_.max_entries, opts_.max_weight, std::move(weigher), *events_,
                opts_.early_refresh_beta),
        tiers_(std::make_shared<tier_pipeline<V>>(opts_.tiers, events_)),
        flight_(ex_, flight_options{.max_keys = opts_.max_loads,
                                    .default_timeout = opts_.load_timeout,
                                    .on_abandon = opts_.on_abandon,
                                    .max_key_length = opts_.max_key_length,
                                    .shards = opts_.shards}) {
    // Callers that join a load are counted without an event sink on the
    // flight, which would be called for each of its events.
    flight_.st_->count_joins(&loads_.coalesced);
  }

  const boost::asio::any_io_executor& executor() const noexcept { return ex_; }
  // The queue of immediate completions bound for the cache's io_context (null
  // without `batch_hits`, or when its executor is not an io_context's).
  ready_queue* ready() const noexcept { return ready_.get(); }
  const cache_options& options() const noexcept { return opts_; }
  flight<V, Clock>& get_flight() noexcept { return flight_; }
  // `flight::async_run` for a handler the caller already holds: the key and
  // the work are moved straight into the flight's bookkeeping.
  template <class Handler, class Work>
  void run_load(Handler&& handler, std::string&& key, run_options ro, Work&& work) {
    flight_.st_->run(std::forward<Handler>(handler), std::move(key), ro, std::forward<Work>(work));
  }
  memory_type& memory() noexcept { return memory_; }
  tier_pipeline<V>& tiers() noexcept { return *tiers_; }
  const cache_events& events() const noexcept { return *events_; }
  load_counters& load_stats() noexcept { return loads_; }
  bool has_tiers() const noexcept { return !tiers_->empty(); }

  bool valid_key(std::string_view key) const noexcept { return !key.empty() && key.size() <= opts_.max_key_length; }

  // See memory_tier::lookup: the value goes into `v`, which is empty on entry.
  void lookup(std::optional<V>& v, std::string_view key, std::size_t purge, std::exception_ptr* failure,
              bool count = true, read_state* rs = nullptr, std::size_t* hash = nullptr) {
    memory_.lookup(v, key, purge, failure, count, rs, hash);
  }

  // The fresh time (jittered) and stale window of a value stored with `ttl`:
  // from the freshness policy for a loaded value when there is one (`took`
  // not negative), else `ttl` and the options' window.
  std::pair<std::chrono::nanoseconds, std::chrono::nanoseconds> entry_times(const std::string& key, const V& value,
                                                                            std::chrono::nanoseconds ttl,
                                                                            std::chrono::nanoseconds took) const {
    freshness f{ttl, ttl == no_expiry ? std::chrono::nanoseconds::zero() : opts_.stale_while_revalidate};
    if (policy_ && took.count() >= 0) f = policy_(key, value, took);  // user code: no lock held
    if (f.stale < std::chrono::nanoseconds::zero() || f.fresh == no_expiry) f.stale = std::chrono::nanoseconds::zero();
    if (opts_.ttl_jitter > 0 && f.fresh > std::chrono::nanoseconds::zero() && f.fresh != no_expiry) {
      const double factor = 1 + opts_.ttl_jitter * (2 * unit_random() - 1);
      const double scaled = double(f.fresh.count()) * factor;
      f.fresh = std::chrono::nanoseconds(
          scaled >= 9.2e18 ? std::numeric_limits<std::int64_t>::max() - 1 : std::max<std::int64_t>(1, std::llround(scaled)));
    }
    return {f.fresh, f.stale};
  }

  // An explicit set: stored in memory over any value, voiding the load in
  // flight, which later callers no longer join; then written to the tiers.
  // The caller holds `invalidate_key(key)` around it.
  void set(const std::string& key, const V& value, std::chrono::nanoseconds ttl, bool rethrow_codec) {
    std::uint64_t epoch = 0;
    const auto [fresh, stale] = entry_times(key, value, ttl, std::chrono::nanoseconds(-1));
    memory_.store(key, &value, nullptr, fresh, std::nullopt, tiers_->epoch_of(key), &epoch, stale);
    flight_.forget(key);
    if (has_tiers()) tiers_->write(key, value, fresh, epoch, rethrow_codec, stale);
  }

  // Starts a background reload of `key`: for a stale or early read (`early`),
  // or refresh-ahead (`ahead`). It is a load like any other, coalesced with
  // the key's load in flight if there is one; its own wait is bounded by
  // `refresh_timeout`. `replaces`: the fresh time left to the value it is to
  // replace (unset: memory holds none, and this is a plain load). A TTL that
  // is not positive starts nothing (the entry's mark is cleared).
  template <class Loader>
  void start_refresh(std::string key, Loader loader, std::chrono::nanoseconds ttl, reload_of replaces, bool early,
                     bool ahead) {
    if (ttl <= std::chrono::nanoseconds::zero()) {
      memory_.refresh_ended(key, false, true);
      return;
    }
    refresh_counts_.started.fetch_add(1, std::memory_order_relaxed);
    if (early) refresh_counts_.early.fetch_add(1, std::memory_order_relaxed);
    events_->emit(cache_event_kind::refresh_started, key);
    if (early) events_->emit(cache_event_kind::early_refresh, key);
    std::optional<std::chrono::nanoseconds> timeout;
    if (opts_.refresh_timeout != no_timeout) timeout = opts_.refresh_timeout;
    using work_type = load_work<cache_state, Loader>;
    work_type work{load_ticket<cache_state>(this, hashed_key::hash_of(key)), std::move(loader), ttl, replaces};
    refresh_done done{this->weak_from_this(), key, Clock::now(), ahead};
    run_load(std::move(done), std::move(key), run_options{.timeout = timeout}, std::move(work));
  }

  // The reload a stale or early read starts (`rs.refresh`), with the
  // caller's loader and TTL.
  template <class Loader>
  void refresh_for_read(std::string key, Loader&& loader, std::optional<std::chrono::nanoseconds> ttl,
                        const read_state& rs) {
    start_refresh(std::move(key), std::forward<Loader>(loader), ttl ? *ttl : opts_.default_ttl,
                  reload_of(std::chrono::nanoseconds(rs.fresh_left)), rs.early, false);
  }

  // Refresh-ahead: keeps `key` fresh with `loader` until nobody reads it.
  // Loaders are shared so that none is copied or destroyed under the lock.
  void refresh_ahead(std::string key, ahead_loader loader) {
    auto shared = std::make_shared<const ahead_loader>(std::move(loader));
    {
      std::lock_guard lk(ahead_mu_);
      if (ahead_stopped_) return;
      ahead_entry& e = ahead_[key];
      e.loader.swap(shared);  // the old one, if any, is released after the lock
      e.first = true;
      e.not_before = std::numeric_limits<std::int64_t>::min();
    }
    ahead_scan();
  }

  bool stop_refresh_ahead(std::string_view key) {
    std::shared_ptr<const ahead_loader> released;
    std::lock_guard lk(ahead_mu_);
    auto it = ahead_.find(key);
    if (it == ahead_.end()) return false;
    released = std::move(it->second.loader);
    ahead_.erase(it);
    if (ahead_.empty() && ahead_timer_) ahead_timer_->cancel();
    return true;
  }

  // For the cache's destructor: no reload ahead starts once this returns
  // (a scan that picked some waits until they are initiated, so that the
  // destructor's clear of the flight cancels them).
  void stop_refresh_ahead_all() {
    std::vector<std::shared_ptr<const ahead_loader>> released;
    {
      std::lock_guard lk(ahead_mu_);
      ahead_stopped_ = true;
      for (auto& [k, e] : ahead_) released.push_back(std::move(e.loader));
      ahead_.clear();
      if (ahead_timer_) ahead_timer_->cancel();
    }
    while (ahead_starting_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  }

  // Removes `key` from memory, voids its load in flight (it will not store)
  // and makes later callers start a fresh one. Returns whether memory held a
  // fresh value. The tiers are the caller's (under `invalidate_key(key)`).
  bool erase(const std::string& key) {
    const bool erased = memory_.erase(key, tiers_->epoch_of(key));
    flight_.forget(key);
    return erased;
  }

  // As `erase`, for every key.
  void clear() {
    memory_.clear([this] { tiers_->bump_all_epochs(); });
    flight_.forget_all();
  }

  // A tier's notice that `key` changed elsewhere: memory drops it and its
  // load in flight stores nothing (nor writes to the tiers). Keys this cache
  // could not hold (empty, too long) are ignored.
  void on_invalidate(std::string_view key, const tier* from) override {
    if (!valid_key(key)) return;
    const std::string k(key);
    // A local tier (a disk behind Redis) may hold the old value: erased there,
    // so that a miss does not bring it back.
    if (tiers_->size() > 1) tiers_->erase_local(k, from);
    // The key's tier epoch is left alone: bumping it would make a write of
    // this cache's in progress erase, on its recheck, the very value whose
    // write is being reported.
    const bool held = memory_.erase(k, nullptr);
    flight_.forget(k);
    if (!held) return;
    remote_.invalidations.fetch_add(1, std::memory_order_relaxed);
    events_->emit(cache_event_kind::invalidated, key);
  }

  // A tier's notice that changes may have been missed: memory is emptied.
  void on_invalidate_all() override {
    memory_.clear([] {});  // the tier epochs are left alone, as in on_invalidate
    flight_.forget_all();
    remote_.flushes.fetch_add(1, std::memory_order_relaxed);
    events_->emit(cache_event_kind::memory_flushed, {});
  }

  // Registers with every tier for its notices (see `tier_listener`).
  void listen_to_tiers() {
    for (const auto& t : opts_.tiers)
      if (t) t->add_listener(std::weak_ptr<tier_listener>(this->shared_from_this()));
  }

  invalidation invalidate_key(std::string_view key) { return tiers_->invalidate_key(key); }
  invalidation invalidate_all() { return tiers_->invalidate_all(); }

  cache_stats stats() {
    cache_stats s;
    memory_.add_stats(s);
    loads_.add_stats(s);
    s.refreshes = refresh_counts_.started.load(std::memory_order_relaxed);
    s.refreshes_succeeded = refresh_counts_.succeeded.load(std::memory_order_relaxed);
    s.refreshes_failed = refresh_counts_.failed.load(std::memory_order_relaxed);
    s.early_refreshes = refresh_counts_.early.load(std::memory_order_relaxed);
    s.invalidations_received = remote_.invalidations.load(std::memory_order_relaxed);
    s.memory_flushes = remote_.flushes.load(std::memory_order_relaxed);
    {
      std::lock_guard lk(ahead_mu_);
      s.refresh_ahead_keys = ahead_.size();
    }
    s.loads_in_flight = flight_.size();
    tiers_->add_stats(s);
    return s;
  }

 private:
  static cache_options checked(cache_options opts) {
    if (opts.default_ttl <= std::chrono::nanoseconds::zero())
      throw_invalid_option("cache_options::default_ttl must be positive (or no_expiry)");
    if (opts.negative_ttl && *opts.negative_ttl <= std::chrono::nanoseconds::zero())
      throw_invalid_option("cache_options::negative_ttl must be positive");
    if (opts.shards == 0 || opts.shards > 1024) throw_invalid_option("cache_options::shards must be in [1, 1024]");
    // Checked here too, though the flight checks them, so that the message names the option that was set.
    if (opts.max_loads == 0) throw_invalid_option("cache_options::max_loads must be at least 1");
    if (opts.load_timeout <= std::chrono::nanoseconds::zero())
      throw_invalid_option("cache_options::load_timeout must be positive (or no_timeout)");
    if (opts.max_key_length == 0) throw_invalid_option("cache_options::max_key_length must be at least 1");
    if (opts.stale_while_revalidate < std::chrono::nanoseconds::zero())
      throw_invalid_option("cache_options::stale_while_revalidate must not be negative");
    if (opts.refresh_timeout <= std::chrono::nanoseconds::zero())
      throw_invalid_option("cache_options::refresh_timeout must be positive (or no_timeout)");
    if (!(opts.early_refresh_beta >= 0) || !std::isfinite(opts.early_refresh_beta))
      throw_invalid_option("cache_options::early_refresh_beta must be finite and not negative");
    if (!(opts.ttl_jitter >= 0 && opts.ttl_jitter < 1))
      throw_invalid_option("cache_options::ttl_jitter must be in [0, 1)");
    if (opts.refresh_ahead_lead < std::chrono::nanoseconds::zero())
      throw_invalid_option("cache_options::refresh_ahead_lead must not be negative");
    if (opts.max_refreshes_ahead == 0) throw_invalid_option("cache_options::max_refreshes_ahead must be positive");
    return opts;
  }

  // The handler of a background reload: counts and reports how it ended, and
  // lets the entry's next stale read start another one if it failed.
  // Weak: a completion destroyed unrun (its io_context stopped and gone)
  // must not keep the state alive; a running load keeps it through its ticket.
  struct refresh_done {
    std::weak_ptr<cache_state> st;
    std::string key;
    typename Clock::time_point started;
    bool ahead;
    void operator()(std::exception_ptr e, V) {
      if (auto self = st.lock()) self->refresh_finished(key, std::move(e), started, ahead);
    }
  };

  void refresh_finished(const std::string& key, std::exception_ptr e, typename Clock::time_point started, bool ahead) {
    const auto took = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - started);
    bool by_cache = false;  // cancelled by the cache itself (cleared, destroyed): not a failure
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const boost::system::system_error& x) {
        by_cache = x.code() == error::cancelled;
      } catch (...) {
      }
    }
    memory_.refresh_ended(key, e && !by_cache, opts_.stale_if_error);
    if (!e) {
      refresh_counts_.succeeded.fetch_add(1, std::memory_order_relaxed);
      events_->emit(cache_event{cache_event_kind::refresh_resolved, key, took, {}, {}});
    } else if (!by_cache) {
      refresh_counts_.failed.fetch_add(1, std::memory_order_relaxed);
      events_->emit(cache_event{cache_event_kind::refresh_failed, key, took, e, {}});
    }
    if (ahead) {
      {
        std::lock_guard lk(ahead_mu_);
        --ahead_running_;
        if (auto it = ahead_.find(key); it != ahead_.end()) {
          it->second.running = false;
          // A failed reload is retried a lead later (100 ms at least), not at once.
          if (e)
            it->second.not_before = memory_type::deadline(
                memory_type::now(), std::max<std::chrono::nanoseconds>(opts_.refresh_ahead_lead, ahead_retry));
        }
      }
      ahead_scan();
    }
  }

  // Refresh-ahead's scheduler: starts the reloads that are due (within the
  // concurrency cap), stops keys nobody read since their last reload (or that
  // memory no longer holds), and sets the timer for the next one due.
  void ahead_scan() {
    struct due_key {
      std::string key;
      std::shared_ptr<const ahead_loader> loader;
      reload_of replaces;
    };
    std::vector<due_key> start;
    std::vector<std::string> stopped;
    std::vector<std::shared_ptr<const ahead_loader>> released;
    {
      std::lock_guard lk(ahead_mu_);
      if (ahead_stopped_) return;
      const std::int64_t now = memory_type::now();
      std::int64_t next = std::numeric_limits<std::int64_t>::max();
      for (auto it = ahead_.begin(); it != ahead_.end();) {
        ahead_entry& e = it->second;
        if (e.running) {
          ++it;
          continue;
        }
        const auto f = memory_.freshness_of(it->first);
        if (!e.first && (!f || (f->first != std::numeric_limits<std::int64_t>::max() &&
                                f->first - opts_.refresh_ahead_lead.count() <= now && !f->second))) {
          stopped.push_back(it->first);
          ++it;
          continue;
        }
        std::int64_t due = std::numeric_limits<std::int64_t>::max();
        if (!f)
          due = now;  // registered, not in memory yet: load it
        else if (f->first != std::numeric_limits<std::int64_t>::max())
          due = f->first - std::min<std::int64_t>(opts_.refresh_ahead_lead.count(), f->first);
        due = std::max(due, e.not_before);
        if (due > now) {
          next = std::min(next, due);
        } else if (ahead_running_ < opts_.max_refreshes_ahead) {
          e.running = true;
          e.first = false;
          ++ahead_running_;
          reload_of replaces;
          if (f) {
            replaces = std::chrono::nanoseconds(std::max<std::int64_t>(0, f->first - now));
            memory_.mark_refreshing(it->first);  // stale reads meanwhile start no second reload
          }
          start.push_back(due_key{it->first, e.loader, replaces});
        }  // else: started when a running reload ends
        ++it;
      }
      for (const std::string& k : stopped) {
        auto it = ahead_.find(k);
        released.push_back(std::move(it->second.loader));
        ahead_.erase(it);
      }
      if (!start.empty()) ahead_starting_.fetch_add(1, std::memory_order_acq_rel);
      if (next != std::numeric_limits<std::int64_t>::max()) {
        if (!ahead_timer_) ahead_timer_.emplace(ex_);
        ahead_timer_->expires_at(typename Clock::time_point(std::chrono::duration_cast<typename Clock::duration>(
            std::chrono::nanoseconds(next))));
        ahead_timer_->async_wait([w = this->weak_from_this()](boost::system::error_code ec) {
          if (ec) return;  // re-armed, stopped, or the cache is gone
          if (auto self = w.lock()) self->ahead_scan();
        });
      } else if (ahead_timer_) {
        ahead_timer_->cancel();
      }
    }
    released.clear();
    for (const std::string& k : stopped) events_->emit(cache_event_kind::refresh_ahead_stopped, k);
    if (start.empty()) return;
    struct starting {
      std::atomic<int>& n;
      ~starting() { n.fetch_sub(1, std::memory_order_acq_rel); }
    } guard{ahead_starting_};
    for (auto& d : start)
      start_refresh(
          std::move(d.key), [l = std::move(d.loader)]() { return (*l)(); }, opts_.default_ttl, d.replaces, false,
          true);
  }

  static std::shared_ptr<ready_queue> ready_for(const boost::asio::any_io_executor& ex, bool batch) {
    if (!batch) return nullptr;
    if (auto* io = ex.target<boost::asio::io_context::executor_type>())
      return std::make_shared<ready_queue>(io->context());
    return nullptr;
  }

  struct refresh_counters {
    std::atomic<std::uint64_t> started{0}, succeeded{0}, failed{0}, early{0};
  };
  static constexpr std::chrono::nanoseconds ahead_retry = std::chrono::milliseconds(100);
  struct ahead_entry {
    std::shared_ptr<const ahead_loader> loader;
    bool running = false;
    bool first = true;  // not reloaded since it was registered: due whether read or not
    std::int64_t not_before = std::numeric_limits<std::int64_t>::min();
  };
  struct string_hash {
    using is_transparent = void;
    using is_avalanching = void;  // hashed_key::hash_of
    std::size_t operator()(std::string_view k) const noexcept { return hashed_key::hash_of(k); }
  };
  using ahead_timer = boost::asio::basic_waitable_timer<Clock, boost::asio::wait_traits<Clock>,
                                                        boost::asio::any_io_executor>;

  boost::asio::any_io_executor ex_;
  const cache_options opts_;
  std::shared_ptr<ready_queue> ready_;
  std::shared_ptr<const cache_events> events_;
  freshness_policy policy_;
  refresh_counters refresh_counts_;
  struct {
    std::atomic<std::uint64_t> invalidations{0}, flushes{0};
  } remote_;  // tiers' notices (see `on_invalidate`)
  mutable std::mutex ahead_mu_;
  boost::unordered_flat_map<std::string, ahead_entry, string_hash, std::equal_to<>> ahead_;
  std::size_t ahead_running_ = 0;
  bool ahead_stopped_ = false;
  std::atomic<int> ahead_starting_{0};  // scans initiating reloads outside the lock
  std::optional<ahead_timer> ahead_timer_;
  memory_type memory_;
  std::shared_ptr<tier_pipeline<V>> tiers_;
  load_counters loads_;
  flight<V, Clock> flight_;  // last: destroyed first, while the counters it reports to exist
};

}  // namespace cacheflight::detail

#endif
