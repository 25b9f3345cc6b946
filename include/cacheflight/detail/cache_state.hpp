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

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace cacheflight::detail {

// What a `cache` shares with its operations in flight: the memory tier, the
// tier pipeline, the flight its loads coalesce on, the load counters and the
// event sink. Kept alive by the operations (a load holds it through its
// ticket), so that a cache may be destroyed with loads in flight.
template <class V, class Clock>
class cache_state : public std::enable_shared_from_this<cache_state<V, Clock>> {
 public:
  using value_type = V;
  using clock_type = Clock;
  using memory_type = memory_tier<V, Clock>;
  using weigher_type = typename memory_type::weigher_type;
  using invalidation = typename tier_pipeline<V>::invalidation;

  cache_state(boost::asio::any_io_executor ex, cache_options opts, weigher_type weigher)
      : ex_(std::move(ex)),
        opts_(checked(std::move(opts))),
        ready_(ready_for(ex_, opts_.batch_hits)),
        events_(std::make_shared<const cache_events>(opts_.on_event)),
        memory_(opts_.policy, opts_.shards, opts_.max_entries, opts_.max_weight, std::move(weigher), *events_),
        tiers_(std::make_shared<tier_pipeline<V>>(opts_.tiers, events_)),
        flight_(ex_, flight_options{.max_keys = opts_.max_loads,
                                    .default_timeout = opts_.load_timeout,
                                    .on_event =
                                        [this](const event& e) {
                                          if (e.kind == event_kind::hit)
                                            loads_.coalesced.fetch_add(1, std::memory_order_relaxed);
                                        },
                                    .on_abandon = opts_.on_abandon,
                                    .max_key_length = opts_.max_key_length,
                                    .shards = opts_.shards}) {}

  const boost::asio::any_io_executor& executor() const noexcept { return ex_; }
  // The queue of immediate completions bound for the cache's io_context (null
  // without `batch_hits`, or when its executor is not an io_context's).
  ready_queue* ready() const noexcept { return ready_.get(); }
  const cache_options& options() const noexcept { return opts_; }
  flight<V, Clock>& get_flight() noexcept { return flight_; }
  memory_type& memory() noexcept { return memory_; }
  tier_pipeline<V>& tiers() noexcept { return *tiers_; }
  const cache_events& events() const noexcept { return *events_; }
  load_counters& load_stats() noexcept { return loads_; }
  bool has_tiers() const noexcept { return !tiers_->empty(); }

  bool valid_key(std::string_view key) const noexcept { return !key.empty() && key.size() <= opts_.max_key_length; }

  std::optional<V> lookup(std::string_view key, std::size_t purge, std::exception_ptr* failure, bool count = true) {
    return memory_.lookup(key, purge, failure, count);
  }

  // An explicit set: stored in memory over any value, voiding the load in
  // flight, which later callers no longer join; then written to the tiers.
  // The caller holds `invalidate_key(key)` around it.
  void set(const std::string& key, const V& value, std::chrono::nanoseconds ttl, bool rethrow_codec) {
    std::uint64_t epoch = 0;
    memory_.store(key, &value, nullptr, ttl, std::nullopt, tiers_->epoch_of(key), &epoch);
    flight_.forget(key);
    if (has_tiers()) tiers_->write(key, value, ttl, epoch, rethrow_codec);
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

  invalidation invalidate_key(std::string_view key) { return tiers_->invalidate_key(key); }
  invalidation invalidate_all() { return tiers_->invalidate_all(); }

  cache_stats stats() {
    cache_stats s;
    memory_.add_stats(s);
    loads_.add_stats(s);
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
    return opts;
  }

  static std::shared_ptr<ready_queue> ready_for(const boost::asio::any_io_executor& ex, bool batch) {
    if (!batch) return nullptr;
    if (auto* io = ex.target<boost::asio::io_context::executor_type>())
      return std::make_shared<ready_queue>(io->context());
    return nullptr;
  }

  boost::asio::any_io_executor ex_;
  const cache_options opts_;
  std::shared_ptr<ready_queue> ready_;
  std::shared_ptr<const cache_events> events_;
  memory_type memory_;
  std::shared_ptr<tier_pipeline<V>> tiers_;
  load_counters loads_;
  flight<V, Clock> flight_;  // last: destroyed first, while the counters it reports to exist
};

}  // namespace cacheflight::detail

#endif
