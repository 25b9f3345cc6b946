// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_TIER_HPP
#define CACHEFLIGHT_TIER_HPP

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/system/error_code.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cacheflight {

/// The state of a tier's circuit breaker.
enum class breaker_state {
  closed,     ///< the tier is used
  open,       ///< the tier is skipped after failures; operations fail at once
  half_open,  ///< one probe is let through; its outcome closes or reopens the breaker
};

/// Returns the enumerator's name, e.g. `"open"`.
constexpr std::string_view to_string(breaker_state s) noexcept {
  switch (s) {
    case breaker_state::closed: return "closed";
    case breaker_state::open: return "open";
    case breaker_state::half_open: return "half_open";
  }
  return "unknown";
}

/// What a tier reports of itself (see `tier::health`).
struct tier_health {
  breaker_state breaker = breaker_state::closed;
  std::size_t queued_writes = 0;       ///< writes accepted and not yet sent
  std::uint64_t writes = 0;            ///< writes (puts, erases, clears) the backend acknowledged
  std::uint64_t writes_dropped = 0;    ///< writes given up: queue full, breaker open, or failed
  /// A tier shared by several processes (Redis with `tier_options::invalidation`
  /// or `leases`); 0 otherwise.
  std::uint64_t invalidations = 0;     ///< keys reported changed elsewhere, passed to the caches
  std::uint64_t link_flushes = 0;      ///< times the caches were told to drop everything (link lost or back)
  std::uint64_t leases_granted = 0;    ///< misses that got the key's lease: this process loads
  std::uint64_t leases_waited = 0;     ///< misses that found another's lease and waited for its fill
  std::uint64_t leases_expired = 0;    ///< waits that ended with this process taking the lease (the other expired unfilled, or was voided)
  std::uint64_t leases_lost = 0;       ///< fills not written: the lease was voided or had expired
};

class tier;

/// What a cache in front of a shared tier is told of changes made elsewhere
/// (`tier::add_listener`). A cache registers itself with each of its tiers.
class tier_listener {
 public:
  virtual ~tier_listener() = default;
  /// `key` was written or erased behind this process's back (another
  /// instance), as `from` reports: drop it from memory, void its load in
  /// flight, and erase it from the tiers that are not shared (`tier::shared`;
  /// a local disk behind a shared Redis must not bring the old value back).
  /// `from` is given for its identity only.
  virtual void on_invalidate(std::string_view key, const tier* from) = 0;
  /// Changes may have been missed (the channel that reports them was lost, or
  /// the backend was flushed): drop everything from memory. The tiers are not
  /// touched.
  virtual void on_invalidate_all() = 0;
};

/// A storage tier behind a cache's memory (L1): a shared Redis, a local disk,
/// or one of your own. The cache calls its tiers in order on a miss, before the
/// loader, and writes loaded values to them.
///
/// A tier stores opaque bytes under string keys: the cache hands it values
/// already encoded, with their absolute expiry inside (see `codec.hpp`), so a
/// tier never interprets them, and bytes read back are checked by the cache
/// (corrupt or foreign bytes are a miss, never undefined behaviour).
///
/// @par Implementing a tier
/// Derive from `tier` and implement `name` and the four `do_` functions. Each
/// receives a type-erased completion handler and must complete it exactly once,
/// on the handler's associated executor and never inside the `do_` call itself
/// (for instance: post to the tier's own executor, then
/// `asio::dispatch(asio::get_associated_executor(h, ex), ...)`). A handler may
/// carry a cancellation slot; honouring it is welcome but not required. In
/// Boost 1.81, move-assigning an `any_completion_handler` recurses without end:
/// move-construct it, or `swap`. The `do_` functions may be called from any thread,
/// concurrently.
///
/// @par Ordering the cache relies on
/// Operations on one key take effect in the order they were initiated, and a
/// read reflects every put, erase and clear initiated before it (read your
/// writes), even while a write is still queued behind the caller's back. The
/// cache depends on it: after an `async_erase` or `async_set` it reads the
/// tiers again only once their operations were initiated, and a tier that
/// answered a later read with the value the erase removed would bring that
/// value back into memory.
///
/// @par Lifetime
/// Tiers are held by `std::shared_ptr` (see `cache_options::tiers`); a tier
/// outlives every cache that holds it.
class tier {
 public:
  /// Completion signature of `async_get`: the bytes, or nullopt when the key is absent.
  using get_signature = void(boost::system::error_code, std::optional<std::string>);
  /// Completion signature of `async_put`, `async_erase` and `async_clear`.
  using done_signature = void(boost::system::error_code);

  virtual ~tier() = default;

  /// A short name for stats and events, e.g. `"redis"`.
  virtual std::string_view name() const noexcept = 0;

  /// The tier's own state; thread-safe. The default reports a closed breaker
  /// and no write queue.
  virtual tier_health health() const { return {}; }

  /// Whether other processes read and write what this tier holds (a Redis
  /// tier: true; the default: false, a tier local to this process). A change
  /// one tier reports (`tier_listener::on_invalidate`) is erased from the
  /// cache's tiers that are not shared: a shared one holds what the other
  /// processes wrote, and tells its own listeners of it.
  virtual bool shared() const noexcept { return false; }

  /// Registers a listener to be told of changes made elsewhere (see
  /// `tier_listener`). It is held weakly: an expired one is dropped. Tiers
  /// that see no such changes (a local disk) never call it. Thread-safe; the
  /// listener is called from the tier's own thread of control (a Redis tier:
  /// its strand), never under a lock of the tier.
  void add_listener(std::weak_ptr<tier_listener> l) { listeners_->add(std::move(l)); }

  /// Reads the bytes stored under `key`.
  /// @par Completion signature
  /// @code void(boost::system::error_code ec, std::optional<std::string> bytes) @endcode
  /// `bytes` is empty when the key is absent (that is not an error).
  template <boost::asio::completion_token_for<get_signature> CompletionToken>
  auto async_get(std::string key, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, get_signature>(
        [this](auto handler, std::string key) { do_get(std::move(key), get_handler(std::move(handler))); }, token,
        std::move(key));
  }

  /// Stores `bytes` under `key` for `ttl` (`std::chrono::milliseconds::max()`:
  /// no expiry). A tier may acknowledge the write before it is durable
  /// (write-behind); it completes when the write is done or given up.
  /// @par Completion signature
  /// @code void(boost::system::error_code ec) @endcode
  template <boost::asio::completion_token_for<done_signature> CompletionToken>
  auto async_put(std::string key, std::string bytes, std::chrono::milliseconds ttl, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, done_signature>(
        [this](auto handler, std::string key, std::string bytes, std::chrono::milliseconds ttl) {
          do_put(std::move(key), std::move(bytes), ttl, done_handler(std::move(handler)));
        },
        token, std::move(key), std::move(bytes), ttl);
  }

  /// As `async_put`, for a value the cache loaded (or read from a later tier)
  /// after this tier missed, rather than one it was given with
  /// `cache::async_set`. A tier that hands out leases on misses
  /// (`redis::tier_options::leases`) writes it only while the lease it granted
  /// for the miss still holds, so that a value superseded meanwhile does not
  /// land. By default the same as `async_put`.
  /// @par Completion signature
  /// @code void(boost::system::error_code ec) @endcode
  template <boost::asio::completion_token_for<done_signature> CompletionToken>
  auto async_fill(std::string key, std::string bytes, std::chrono::milliseconds ttl, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, done_signature>(
        [this](auto handler, std::string key, std::string bytes, std::chrono::milliseconds ttl) {
          do_fill(std::move(key), std::move(bytes), ttl, done_handler(std::move(handler)));
        },
        token, std::move(key), std::move(bytes), ttl);
  }

  /// Removes `key`. Never reordered before an earlier `async_put` of the same key.
  /// @par Completion signature
  /// @code void(boost::system::error_code ec) @endcode
  template <boost::asio::completion_token_for<done_signature> CompletionToken>
  auto async_erase(std::string key, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, done_signature>(
        [this](auto handler, std::string key) { do_erase(std::move(key), done_handler(std::move(handler))); },
        token, std::move(key));
  }

  /// Removes every key this tier holds for its owner (a Redis tier: its prefix
  /// only). Never reordered before earlier writes.
  /// @par Completion signature
  /// @code void(boost::system::error_code ec) @endcode
  template <boost::asio::completion_token_for<done_signature> CompletionToken>
  auto async_clear(CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, done_signature>(
        [this](auto handler) { do_clear(done_handler(std::move(handler))); }, token);
  }

 protected:
  using get_handler = boost::asio::any_completion_handler<get_signature>;
  using done_handler = boost::asio::any_completion_handler<done_signature>;

  /// The listeners registered with `add_listener`, for tiers shared with
  /// other processes to tell of changes made elsewhere. Shared, so that the
  /// tier's asynchronous parts may keep it after the tier is destroyed.
  class listener_set {
   public:
    explicit listener_set(const tier* owner) noexcept : owner_(owner) {}
    void add(std::weak_ptr<tier_listener> l) {
      std::lock_guard lk(mu_);
      std::erase_if(list_, [](const std::weak_ptr<tier_listener>& w) { return w.expired(); });
      list_.push_back(std::move(l));
    }
    /// Calls `on_invalidate(key, the tier)` on each live listener, outside the lock.
    void invalidate(std::string_view key) {
      for (const auto& l : live()) l->on_invalidate(key, owner_);
    }
    /// Calls `on_invalidate_all()` on each live listener, outside the lock.
    void invalidate_all() {
      for (const auto& l : live()) l->on_invalidate_all();
    }

   private:
    std::vector<std::shared_ptr<tier_listener>> live() {
      std::vector<std::shared_ptr<tier_listener>> out;
      std::lock_guard lk(mu_);
      out.reserve(list_.size());
      for (const auto& w : list_)
        if (auto l = w.lock()) out.push_back(std::move(l));
      return out;
    }
    const tier* owner_;
    std::mutex mu_;
    std::vector<std::weak_ptr<tier_listener>> list_;
  };
  const std::shared_ptr<listener_set>& listeners() const noexcept { return listeners_; }

  virtual void do_get(std::string key, get_handler handler) = 0;
  virtual void do_put(std::string key, std::string bytes, std::chrono::milliseconds ttl, done_handler handler) = 0;
  /// `async_fill`'s; the default calls `do_put`.
  virtual void do_fill(std::string key, std::string bytes, std::chrono::milliseconds ttl, done_handler handler) {
    do_put(std::move(key), std::move(bytes), ttl, std::move(handler));
  }
  virtual void do_erase(std::string key, done_handler handler) = 0;
  virtual void do_clear(done_handler handler) = 0;

 private:
  std::shared_ptr<listener_set> listeners_ = std::make_shared<listener_set>(this);
};

}  // namespace cacheflight

#endif
