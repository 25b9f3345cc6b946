// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_BATCH_LOADER_HPP
#define CACHEFLIGHT_BATCH_LOADER_HPP

#include <cacheflight/error.hpp>
#include <cacheflight/flight.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/basic_waitable_timer.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <deque>
#include <exception>
#include <charconv>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>
#include <unordered_map>
#include <utility>
#include <vector>

namespace cacheflight {

/// How a batch key becomes a coalescing key: `to_string` must be injective
/// (distinct keys give distinct strings), since keys with equal strings share
/// one load and one result. Provided for strings and arithmetic types;
/// specialize it for others.
template <class K>
struct key_traits;

template <>
struct key_traits<std::string> {
  static std::string to_string(const std::string& k) { return k; }
};

/// Integers in decimal; floating-point numbers in the shortest form that reads
/// back to the same value (`std::to_chars`), so that `0.1` and `0.1000001`, or
/// `1e300` and `1.0000000000000001e300`, stay apart.
template <class K>
  requires std::is_arithmetic_v<K>
struct key_traits<K> {
  static std::string to_string(K k) {
    if constexpr (std::is_floating_point_v<K>) {
      char buf[64];
      auto r = std::to_chars(buf, buf + sizeof buf, k);
      return std::string(buf, r.ptr);
    } else {
      return std::to_string(k);
    }
  }
};

/// Options for one `batch_loader`. An aggregate: use designated initializers.
struct batch_options {
  /// How long the first key of a batch waits for others.
  std::chrono::nanoseconds window = std::chrono::milliseconds(5);
  /// A batch is sent as soon as it holds this many keys (1 or more).
  std::size_t max_batch = 100;
  /// Batches running at once (1 or more); further batches wait their turn.
  std::size_t max_concurrent_batches = 8;
  /// Cap on distinct keys queued or in flight through `async_load` and
  /// `async_load_many`; beyond it `error::max_keys_exceeded`. Loads made
  /// through `bind` (a cache's misses) are bounded by the cache's
  /// `cache_options::max_loads` instead.
  std::size_t max_keys = 100'000;
  /// Longest key, in bytes of its `key_traits<K>::to_string`; longer keys get
  /// `error::invalid_key`. No limit by default, so the loader accepts every key
  /// a cache in front of it accepts.
  std::size_t max_key_length = std::numeric_limits<std::size_t>::max();
};

/// One key's own result in a batch function's list of results (see
/// `batch_loader`): its value (alternative 0), or the exception its callers
/// get (alternative 1; a null one counts as `error::key_not_found`).
template <class V>
using batch_item = std::variant<V, std::exception_ptr>;

/// DataLoader-style batching: single-key requests made close together become
/// one call of a batch function.
///
/// `async_load(k)` queues `k` into the open batch; the batch is sent when
/// `window` has passed since its first key or when it holds `max_batch` keys.
/// A key already queued or in flight is not sent again: its callers share one
/// result (a `flight` inside the loader). Batches run concurrently, up to
/// `max_concurrent_batches`.
///
/// The batch function is `(std::vector<K>) -> asio::awaitable<R>`, or an Asio
/// asynchronous operation `(std::vector<K>, CompletionToken&&)` with signature
/// `void(error_code, R)` or `void(std::exception_ptr, R)`, where the result `R`
/// is one of:
///   - `std::unordered_map<K, V, Hash>`: the keys it has a value for;
///   - `std::vector<V>`: one value per key, in the order of the keys it was
///     given (the shape of graphql/dataloader's batch functions);
///   - `std::vector<std::optional<V>>`: in key order, `nullopt` for a key
///     without a value;
///   - `std::vector<batch_item<V>>`: in key order, a value or the exception
///     that key fails with (its callers get that exception; the others their
///     values).
/// A list's i-th result goes to the i-th key the function was given (keys
/// that compare equal, or not even to themselves, are still told apart). A key
/// missing from its result (absent from the map, or `nullopt`) fails for that
/// key only, with `error::key_not_found` (nothing is stored for it).
/// A list whose length is not the number of keys fails every key of the batch
/// with `error::batch_size_mismatch` (a `boost::system::system_error` whose
/// message gives both lengths). An exception from the batch function reaches
/// every caller of that batch.
///
/// @par Threads
/// Every member may be called from any thread. The batch function runs on the
/// loader's executor, never under a lock.
template <class K, class V, class Hash = std::hash<K>, class Clock = std::chrono::steady_clock>
class batch_loader {
 public:
  using key_type = K;
  using value_type = V;
  using result_map = std::unordered_map<K, V, Hash>;
  using executor_type = boost::asio::any_io_executor;

  /// @throws boost::system::system_error with `error::invalid_option` for options out of range.
  template <class BatchFn>
  batch_loader(executor_type ex, BatchFn fn, batch_options opts = {})
      : st_(std::make_shared<state>(std::move(ex), wrap(std::move(fn)), opts)) {}

  template <class ExecutionContext, class BatchFn>
    requires std::convertible_to<ExecutionContext&, boost::asio::execution_context&>
  batch_loader(ExecutionContext& ctx, BatchFn fn, batch_options opts = {})
      : batch_loader(ctx.get_executor(), std::move(fn), opts) {}

  batch_loader(const batch_loader&) = delete;
  batch_loader& operator=(const batch_loader&) = delete;

  /// Cancels every caller still waiting (`error::cancelled`, on its executor)
  /// and sends no further batch; a batch function already running is left to
  /// finish, and its result is discarded.
  ~batch_loader() {
    std::vector<std::shared_ptr<pending>> unsent;
    {
      std::lock_guard lk(st_->mu);
      st_->stopped = true;
      st_->timer.cancel();
      unsent = std::move(st_->open);
      st_->open.clear();
      for (auto& b : st_->waiting)
        for (auto& p : b) unsent.push_back(std::move(p));
      st_->waiting.clear();
    }
    st_->keys.clear();  // the callers: error::cancelled
    // The keys' own work handlers (the flight ignores them now).
    for (auto& p : unsent) complete(st_, *p, detail::make_error(error::cancelled), nullptr, true);
  }

  executor_type get_executor() const noexcept { return st_->ex; }

  /// Loads one key through the next batch.
  ///
  /// @par Completion signature
  /// @code void(std::exception_ptr error, V value) @endcode
  /// Errors: the batch function's exception; the key's own exception from a
  /// `batch_item`; `error::key_not_found` when the batch result lacks `key`;
  /// `error::batch_size_mismatch` when the batch function's list is not as
  /// long as its keys; `error::max_keys_exceeded`; `error::invalid_key`
  /// for a key whose string form is empty or longer than
  /// `batch_options::max_key_length`; `error::cancelled` when the loader is
  /// destroyed first; `operation_aborted` for a caller cancelled through its
  /// own slot.
  ///
  /// @par Per-Operation Cancellation
  /// `terminal`, `partial` and `total`: the caller completes with
  /// `operation_aborted`; other callers, and the batch, are unaffected. A key
  /// whose callers all left before its batch was sent is dropped from the batch.
  ///
  /// @par Executor
  /// The handler runs on its associated executor, never inside this call.
  template <boost::asio::completion_token_for<void(std::exception_ptr, V)> CompletionToken>
  auto async_load(K key, CompletionToken&& token) {
    std::string name = key_traits<K>::to_string(key);
    return st_->keys.async_run(std::move(name), fetch{st_, std::move(key)},
                               std::forward<CompletionToken>(token));
  }

  /// Loads several keys (through one or more batches).
  /// @par Completion signature
  /// @code void(std::exception_ptr error, std::vector<std::optional<V>> values) @endcode
  /// `values[i]` belongs to `keys[i]`; it is empty for a key the batch result
  /// lacked. `error` is the first other failure: the batch function's
  /// exception, or a key's own from a `batch_item` (the other keys' values
  /// are still in `values`).
  /// The handler runs on its associated executor, never inside this call;
  /// outstanding work is held on that executor until it runs.
  template <boost::asio::completion_token_for<void(std::exception_ptr, std::vector<std::optional<V>>)>
                CompletionToken>
  auto async_load_many(std::vector<K> keys, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, std::vector<std::optional<V>>)>(
        [this](auto handler, std::vector<K> keys) { start_many(std::move(handler), std::move(keys)); }, token,
        std::move(keys));
  }

  /// A loader for `cache::async_get`: an asynchronous operation that loads `key`
  /// through this batch loader, so concurrent cache misses share batches.
  ///
  /// Unlike `async_load`, it never joins a request of `key` already in flight:
  /// the cache coalesces its own misses, and a load it starts after an
  /// invalidation must not receive what a batch sent before it read. Its key
  /// goes into the next batch (a batch may then hold a key twice, when a
  /// direct `async_load` of it is in the same batch). Cancelling the load
  /// drops the key from its batch if that batch was not sent yet. It is not
  /// counted against `batch_options::max_keys`: the cache bounds its loads in
  /// flight with `cache_options::max_loads`. The batch loader must outlive
  /// the operation.
  auto bind(K key) {
    return [this, key = std::move(key)](auto&& token) {
      return async_load_unshared(key, std::forward<decltype(token)>(token));
    };
  }

 private:
  // Queues `key` into the open batch on its own, without the per-key flight.
  template <boost::asio::completion_token_for<void(std::exception_ptr, V)> CompletionToken>
  auto async_load_unshared(K key, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, V)>(
        [st = st_](auto handler, K key) { fetch{st, std::move(key)}(std::move(handler)); }, token, std::move(key));
  }

  // A batch's results in one shape: by key (a map result), or by position in
  // the batch (a list result: `items[i]` and `errors[i]` for the i-th key).
  struct outcome {
    bool ordered = false;
    result_map values;
    std::vector<std::optional<V>> items;
    std::vector<std::exception_ptr> errors;
  };
  using batch_fn = std::function<boost::asio::awaitable<outcome>(std::vector<K>)>;
  using key_handler = boost::asio::any_completion_handler<void(std::exception_ptr, V)>;

  // A key waiting in the open batch.
  struct pending {
    K key;
    std::optional<key_handler> handler;  // emplaced once, never assigned
    std::uint64_t id;
  };

  struct state : std::enable_shared_from_this<state> {
    state(executor_type e, batch_fn f, batch_options o)
        : ex(std::move(e)),
          fn(std::move(f)),
          opts(o),
          timer(ex),
          keys(ex, flight_options{.max_keys = o.max_keys, .max_key_length = o.max_key_length}) {
      if (o.window <= std::chrono::nanoseconds::zero()) detail::throw_invalid_option("batch_options::window must be positive");
      if (o.max_batch == 0) detail::throw_invalid_option("batch_options::max_batch must be at least 1");
      if (o.max_concurrent_batches == 0)
        detail::throw_invalid_option("batch_options::max_concurrent_batches must be at least 1");
      if (o.max_key_length == 0) detail::throw_invalid_option("batch_options::max_key_length must be at least 1");
    }

    executor_type ex;
    batch_fn fn;
    batch_options opts;

    std::mutex mu;                       // guards everything below
    std::vector<std::shared_ptr<pending>> open;  // the batch being filled
    std::uint64_t open_generation = 0;   // bumps each time a batch is taken
    std::uint64_t next_id = 0;
    std::deque<std::vector<std::shared_ptr<pending>>> waiting;  // taken, not yet running
    std::size_t running = 0;
    bool stopped = false;                // the loader was destroyed
    boost::asio::basic_waitable_timer<Clock, boost::asio::wait_traits<Clock>, executor_type> timer;

    flight<V, Clock> keys;  // last: its destruction cancels the keys' waiters first
  };

  // The per-key work run by the flight: joins the open batch.
  struct fetch {
    std::shared_ptr<state> st;
    K key;

    template <class Handler>
    void operator()(Handler&& h) {
      auto p = std::make_shared<pending>(pending{std::move(key), std::nullopt, 0});
      p->handler.emplace(std::forward<Handler>(h));
      enqueue(st, std::move(p));
    }
  };

  static void enqueue(const std::shared_ptr<state>& st, std::shared_ptr<pending> p) {
    namespace asio = boost::asio;
    auto slot = asio::get_associated_cancellation_slot(*p->handler);
    std::vector<std::shared_ptr<pending>> full;
    {
      std::unique_lock lk(st->mu);
      if (st->stopped) {
        lk.unlock();
        complete(st, *p, detail::make_error(error::cancelled), nullptr, true);
        return;
      }
      p->id = ++st->next_id;
      if (slot.is_connected()) {
        // The flight cancels a key's work when all its callers left: drop the
        // key if its batch has not been sent yet.
        slot.assign([w = std::weak_ptr<state>(st), id = p->id](asio::cancellation_type_t) {
          if (auto s = w.lock()) drop(s, id);
        });
      }
      st->open.push_back(std::move(p));
      if (st->open.size() >= st->opts.max_batch) {
        full = take_open_locked(*st);
      } else if (st->open.size() == 1) {
        st->timer.expires_after(std::chrono::duration_cast<typename Clock::duration>(st->opts.window));
        st->timer.async_wait([w = std::weak_ptr<state>(st), gen = st->open_generation](boost::system::error_code ec) {
          if (ec) return;
          if (auto s = w.lock()) window_passed(s, gen);
        });
      }
    }
    if (!full.empty()) launch(st, std::move(full));
  }

  static std::vector<std::shared_ptr<pending>> take_open_locked(state& st) {
    ++st.open_generation;
    st.timer.cancel();
    return std::exchange(st.open, {});
  }

  static void window_passed(const std::shared_ptr<state>& st, std::uint64_t gen) {
    std::vector<std::shared_ptr<pending>> batch;
    {
      std::lock_guard lk(st->mu);
      if (gen != st->open_generation || st->open.empty()) return;
      batch = take_open_locked(*st);
    }
    launch(st, std::move(batch));
  }

  // Removes a key whose callers all left from the batch that holds it, if
  // that batch was not sent yet: the open one or one waiting its turn.
  static void drop(const std::shared_ptr<state>& st, std::uint64_t id) {
    std::shared_ptr<pending> gone;
    {
      std::lock_guard lk(st->mu);
      auto take = [&](std::vector<std::shared_ptr<pending>>& batch) {
        for (auto it = batch.begin(); it != batch.end(); ++it)
          if ((*it)->id == id) {
            gone = std::move(*it);
            batch.erase(it);
            return true;
          }
        return false;
      };
      if (!take(st->open)) {
        for (auto it = st->waiting.begin(); it != st->waiting.end(); ++it)
          if (take(*it)) {
            if (it->empty()) st->waiting.erase(it);
            break;
          }
      }
    }
    // Posted: this runs inside the emit of the slot that complete() clears.
    if (gone) complete(st, *gone, detail::make_error(boost::asio::error::operation_aborted), nullptr, true);
  }

  static void launch(const std::shared_ptr<state>& st, std::vector<std::shared_ptr<pending>> batch) {
    {
      std::lock_guard lk(st->mu);
      if (st->stopped) return;  // its keys' callers were cancelled by the destructor
      if (st->running >= st->opts.max_concurrent_batches) {
        st->waiting.push_back(std::move(batch));
        return;
      }
      ++st->running;
    }
    run(st, std::move(batch));
  }

  static void run(const std::shared_ptr<state>& st, std::vector<std::shared_ptr<pending>> batch) {
    namespace asio = boost::asio;
    std::vector<K> keys;
    keys.reserve(batch.size());
    for (auto& p : batch) keys.push_back(p->key);
    auto done = [st, batch = std::move(batch)](std::exception_ptr e, outcome results) mutable {
      for (std::size_t i = 0; i < batch.size(); ++i) {
        pending& p = *batch[i];
        if (e) {
          complete(st, p, e, nullptr);
        } else if (results.ordered) {
          if (results.errors[i])
            complete(st, p, results.errors[i], nullptr);
          else if (results.items[i])
            complete(st, p, nullptr, &*results.items[i]);
          else
            complete(st, p, detail::make_error(error::key_not_found), nullptr);
        } else if (auto it = results.values.find(p.key); it != results.values.end()) {
          complete(st, p, nullptr, &it->second);
        } else {
          complete(st, p, detail::make_error(error::key_not_found), nullptr);
        }
      }
      batch_finished(st);
    };
    try {
      auto aw = st->fn(std::move(keys));
      asio::co_spawn(st->ex, std::move(aw), std::move(done));
    } catch (...) {
      asio::post(st->ex, [done = std::move(done), e = std::current_exception()]() mutable { done(e, {}); });
    }
  }

  static void batch_finished(const std::shared_ptr<state>& st) {
    std::vector<std::shared_ptr<pending>> next;
    {
      std::lock_guard lk(st->mu);
      if (st->waiting.empty() || st->stopped) {
        --st->running;
        return;
      }
      next = std::move(st->waiting.front());
      st->waiting.pop_front();
    }
    run(st, std::move(next));
  }

  // Hands a key its result, on its handler's executor.
  static void complete(const std::shared_ptr<state>& st, pending& p, std::exception_ptr e, const V* v,
                       bool post = false) {
    namespace asio = boost::asio;
    if (!p.handler) return;
    auto h = std::move(*p.handler);
    p.handler.reset();
    auto ex = asio::get_associated_executor(h, st->ex);
    std::optional<V> value;
    if (v) {
      try {
        value.emplace(*v);
      } catch (...) {
        e = std::current_exception();  // this key's result: the copy's exception
      }
    }
    auto fn = [h = std::move(h), e = std::move(e), value = std::move(value)]() mutable {
      asio::get_associated_cancellation_slot(h).clear();
      if (value)
        std::move(h)(std::exception_ptr{}, std::move(*value));
      else
        std::move(h)(std::move(e), V{});
    };
    if (post)
      asio::post(st->ex, [ex, fn = std::move(fn)]() mutable { asio::dispatch(ex, std::move(fn)); });
    else
      asio::dispatch(ex, std::move(fn));
  }

  template <class Handler>
  void start_many(Handler handler, std::vector<K> keys) {
    namespace asio = boost::asio;
    using handler_executor = asio::associated_executor_t<Handler, executor_type>;
    struct op {
      op(Handler h, const executor_type& e, std::size_t n)
          : handler(std::move(h)),
            work(asio::make_work_guard(asio::get_associated_executor(handler, e))),
            pending(n + 1),
            values(n) {}
      Handler handler;
      // The handler's context must not run out of work before the result.
      asio::executor_work_guard<handler_executor> work;
      std::mutex mu;
      std::size_t pending;  // one per key, plus the initiating call's own
      std::vector<std::optional<V>> values;
      std::exception_ptr error;
      void one_done() {
        std::unique_lock lk(mu);
        if (--pending != 0) return;
        lk.unlock();
        auto hex = work.get_executor();
        asio::dispatch(hex, [h = std::move(handler), e = std::move(error), v = std::move(values),
                             w = std::move(work)]() mutable { std::move(h)(std::move(e), std::move(v)); });
      }
    };
    auto o = std::make_shared<op>(std::move(handler), st_->ex, keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) {
      async_load(keys[i], [o, i](std::exception_ptr e, V v) {
        {
          std::lock_guard lk(o->mu);
          if (!e) {
            o->values[i].emplace(std::move(v));
          } else if (!o->error) {
            bool missing = false;
            try {
              std::rethrow_exception(e);
            } catch (const boost::system::system_error& se) {
              missing = se.code() == error::key_not_found;
            } catch (...) {
            }
            if (!missing) o->error = e;
          }
        }
        o->one_done();
      });
    }
    asio::post(st_->ex, [o] { o->one_done(); });  // never complete inside the call
  }

  template <class R>
  static constexpr bool is_ordered = std::is_same_v<R, std::vector<V>> ||
                                     std::is_same_v<R, std::vector<std::optional<V>>> ||
                                     std::is_same_v<R, std::vector<batch_item<V>>>;

  // A list of results in key order.
  template <class R>
    requires is_ordered<R>
  static outcome to_outcome(const std::vector<K>& keys, R r) {
    if (r.size() != keys.size())
      throw boost::system::system_error(make_error_code(error::batch_size_mismatch),
                                        std::to_string(r.size()) + " results for " + std::to_string(keys.size()) +
                                            " keys");
    outcome out;
    out.ordered = true;
    out.items.resize(keys.size());
    out.errors.resize(keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) {
      auto&& item = r[i];  // a proxy for std::vector<bool>
      if constexpr (std::is_same_v<R, std::vector<V>>) {
        out.items[i].emplace(std::move(item));
      } else if constexpr (std::is_same_v<R, std::vector<std::optional<V>>>) {
        if (item) out.items[i].emplace(std::move(*item));
      } else if (item.index() == 1) {  // by index: V may be std::exception_ptr itself
        out.errors[i] = std::get<1>(item) ? std::get<1>(item) : detail::make_error(error::key_not_found);
      } else {
        out.items[i].emplace(std::move(std::get<0>(item)));
      }
    }
    return out;
  }

  template <class T>
  struct is_awaitable : std::false_type {};
  template <class T, class E>
  struct is_awaitable<boost::asio::awaitable<T, E>> : std::true_type {};

  // Whether `fn(keys)` is the coroutine form.
  template <class Fn>
  static constexpr bool returns_awaitable() {
    if constexpr (std::is_invocable_v<Fn&, std::vector<K>>)
      return is_awaitable<std::invoke_result_t<Fn&, std::vector<K>>>::value;
    else
      return false;
  }

  template <class Fn>
  static batch_fn wrap(Fn fn) {
    namespace asio = boost::asio;
    auto shared = std::make_shared<Fn>(std::move(fn));
    // The coroutine form, or an Asio asynchronous operation run as one (even
    // one whose completion token has a default).
    auto call = [shared](std::vector<K> keys) {
      if constexpr (returns_awaitable<Fn>())
        return (*shared)(std::move(keys));
      else
        return (*shared)(std::move(keys), asio::use_awaitable);
    };
    using R = typename decltype(call(std::vector<K>{}))::value_type;
    static_assert(std::is_same_v<R, result_map> || is_ordered<R>,
                  "a batch function gives a std::unordered_map<K, V, Hash>, or in key order a std::vector of V, "
                  "std::optional<V> or batch_item<V>");
    return [call](std::vector<K> keys) { return run_batch_fn(call, std::move(keys)); };
  }

  // The batch function's result in the one shape; `call` is a parameter, so
  // the coroutine owns its copy.
  template <class Call>
  static boost::asio::awaitable<outcome> run_batch_fn(Call call, std::vector<K> keys) {
    using R = typename decltype(call(std::vector<K>{}))::value_type;
    // Each co_await in a statement of its own (GCC 12 miscompiles one inside
    // a braced initializer or an argument list).
    if constexpr (std::is_same_v<R, result_map>) {
      result_map values = co_await call(std::move(keys));
      outcome out;
      out.values = std::move(values);
      co_return out;
    } else {
      std::vector<K> order = keys;
      R results = co_await call(std::move(keys));
      co_return to_outcome(order, std::move(results));
    }
  }

  std::shared_ptr<state> st_;
};

}  // namespace cacheflight

#endif
