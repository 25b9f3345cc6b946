// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_MEMOIZE_HPP
#define CACHEFLIGHT_MEMOIZE_HPP

#include <cacheflight/cache.hpp>
#include <cacheflight/tags.hpp>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_state.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <charconv>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ranges>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace cacheflight {

/// The customization point for keys: specialize it for a type of your own
/// with `static void append(std::string& out, const T& value)`, which appends
/// a text that identifies the value (equal values, equal text; different
/// values, different text). A specialization takes precedence over the
/// built-in rules of `append_key_part`.
template <class T>
struct key_encoder;

namespace detail {
template <class T>
concept has_key_encoder = requires(std::string& out, const T& v) { key_encoder<T>::append(out, v); };
template <class T>
concept string_like = std::is_convertible_v<const T&, std::string_view>;
template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};
template <class T>
concept tuple_like = requires { std::tuple_size<T>::value; };
template <class T>
concept key_range = std::ranges::input_range<const T> && !string_like<T> &&
                    !std::is_same_v<std::remove_cvref_t<std::ranges::range_value_t<const T>>, T>;
template <class>
inline constexpr bool no_key_rule = false;

// Whether `append_key_part` has a rule for T (a tuple's elements are checked
// when it is written).
template <class T>
constexpr bool key_encodable() {
  if constexpr (has_key_encoder<T> || std::is_arithmetic_v<T> || std::is_enum_v<T> ||
                std::is_same_v<T, std::nullopt_t> || std::is_same_v<T, std::nullptr_t> || string_like<T>)
    return true;
  else if constexpr (tuple_like<T>)
    return []<std::size_t... I>(std::index_sequence<I...>) {
      return (key_encodable<std::remove_cvref_t<std::tuple_element_t<I, T>>>() && ...);
    }(std::make_index_sequence<std::tuple_size_v<T>>{});
  else if constexpr (is_optional<T>::value)
    return key_encodable<typename T::value_type>();
  else if constexpr (key_range<T>)
    return key_encodable<std::ranges::range_value_t<const T>>();
  else
    return false;
}
}  // namespace detail

/// Appends the key text of `v` to `out`. The rule, stable across versions:
/// - a `key_encoder<T>` specialization, if there is one;
/// - `bool`: `true` or `false`; an enumeration: its underlying integer;
/// - integers (including character types, and 128-bit integers where the
///   compiler counts them as integers): decimal; floating point: the
///   shortest text that reads back the same value (`std::to_chars`; `-0` as `0`);
/// - strings (anything convertible to `std::string_view`): between double
///   quotes, with `"` and `\` escaped by a backslash; other bytes as they are;
/// - `std::optional`: `null` when empty, else its value, preceded by `?` when
///   the value's text is `null` after any number of `?` (so that an empty
///   optional inside an optional, or a null `const char*` inside one, stays
///   apart: `null`, `?null` and `5` for the three kinds of
///   `std::optional<std::optional<int>>`); `std::nullopt`, `nullptr` and a
///   null `const char*`: `null`;
/// - tuples, pairs and `std::array`: `(a,b,...)`; other ranges: `[a,b,...]`.
/// Any other type does not compile: give it a `key_encoder`.
template <class T>
void append_key_part(std::string& out, const T& v) {
  if constexpr (detail::has_key_encoder<T>) {
    key_encoder<T>::append(out, v);
  } else if constexpr (std::is_same_v<T, bool>) {
    out += v ? "true" : "false";
  } else if constexpr (std::is_enum_v<T>) {
    append_key_part(out, static_cast<std::underlying_type_t<T>>(v));
  } else if constexpr (std::is_integral_v<T> && (sizeof(T) > sizeof(long long))) {
    using U = std::make_unsigned_t<T>;
    U m = static_cast<U>(v);
    bool negative = false;
    if constexpr (std::is_signed_v<T>) {
      if (v < 0) {
        negative = true;
        m = U(0) - m;
      }
    }
    char buf[48];
    char* p = buf + sizeof buf;
    do {
      *--p = char('0' + int(m % 10));
      m /= 10;
    } while (m != 0);
    if (negative) *--p = '-';
    out.append(p, buf + sizeof buf);
  } else if constexpr (std::is_integral_v<T>) {
    char buf[24];
    using wide = std::conditional_t<std::is_signed_v<T>, long long, unsigned long long>;
    auto r = std::to_chars(buf, buf + sizeof buf, static_cast<wide>(v));
    out.append(buf, r.ptr);
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v == T(0) ? T(0) : v);  // -0 is 0
    out.append(buf, r.ptr);
  } else if constexpr (std::is_same_v<T, std::nullopt_t> || std::is_same_v<T, std::nullptr_t>) {
    out += "null";
  } else if constexpr (detail::string_like<T>) {
    if constexpr (std::is_pointer_v<T>) {
      if (!v) {
        out += "null";
        return;
      }
    }
    const std::string_view s(v);
    out += '"';
    for (char c : s) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  } else if constexpr (detail::is_optional<T>::value) {
    if (!v) {
      out += "null";
      return;
    }
    const std::size_t at = out.size();
    append_key_part(out, *v);
    std::string_view text = std::string_view(out).substr(at);
    while (text.starts_with('?')) text.remove_prefix(1);
    if (text == "null") out.insert(at, 1, '?');
  } else if constexpr (detail::tuple_like<T>) {
    out += '(';
    std::apply(
        [&](const auto&... e) {
          bool first = true;
          ((out += first ? "" : ",", first = false, append_key_part(out, e)), ...);
        },
        v);
    out += ')';
  } else if constexpr (detail::key_range<T>) {
    out += '[';
    bool first = true;
    for (const auto& e : v) {
      if (!first) out += ',';
      first = false;
      append_key_part(out, e);
    }
    out += ']';
  } else {
    static_assert(detail::no_key_rule<T>, "no key rule for this type: specialize cacheflight::key_encoder<T>");
  }
}

/// `name(a,b,...)`: the key of a call of `name` with these arguments, each
/// written by `append_key_part` and separated by commas.
template <class... A>
std::string make_key(std::string_view name, const A&... args) {
  std::string out(name);
  out += '(';
  bool first = true;
  ((out += first ? "" : ",", first = false, append_key_part(out, args)), ...);
  out += ')';
  return out;
}

/// Counters of one memoized function (or one agent tool). Each is exact; read
/// together they are a snapshot taken without a lock.
struct memo_stats {
  std::uint64_t calls = 0;          ///< cached calls (`operator()`, `async_call`)
  /// Cached calls answered without running the function (from memory, a
  /// tier, or a run already in flight) and without an error.
  std::uint64_t hits = 0;
  std::uint64_t loads = 0;          ///< times the function ran for a cached call (misses)
  std::uint64_t load_failures = 0;  ///< of those, the ones that threw
  std::uint64_t bypassed = 0;       ///< calls that ran the function past the cache
  std::uint64_t invalidations = 0;  ///< `invalidate` calls that reached the cache (their key resolved)
  std::uint64_t clears = 0;         ///< `clear` calls
  /// Tag store failures; each such call ran the function without the cache.
  std::uint64_t store_errors = 0;
  /// `hits / calls`, 0 before the first call.
  double hit_rate() const noexcept { return calls ? double(hits) / double(calls) : 0.0; }
};

/// Writes `s` in the Prometheus text format (see the `cache_stats` overload):
/// `<prefix>_calls_total`, `_hits_total`, `_misses_total`, `_hit_ratio`,
/// `_load_failures_total`, `_bypassed_total`, `_invalidations_total`,
/// `_clears_total`, `_tag_store_errors_total`.
inline std::string to_prometheus(const memo_stats& s, std::string_view prefix = "cacheflight_memo",
                                 std::string_view labels = {}) {
  std::string out;
  auto family = [&](std::string_view name, std::string_view type, std::string_view help, const std::string& value) {
    detail::prometheus_family(out, prefix, labels, name, type, help, value);
  };
  family("calls_total", "counter", "Cached calls.", std::to_string(s.calls));
  family("hits_total", "counter", "Cached calls that did not run the function.", std::to_string(s.hits));
  family("misses_total", "counter", "Cached calls that ran the function.", std::to_string(s.loads));
  family("hit_ratio", "gauge", "Hits divided by cached calls.", std::to_string(s.hit_rate()));
  family("load_failures_total", "counter", "Runs of the function that threw.", std::to_string(s.load_failures));
  family("bypassed_total", "counter", "Calls that ran the function past the cache.", std::to_string(s.bypassed));
  family("invalidations_total", "counter", "Invalidate calls that reached the cache.", std::to_string(s.invalidations));
  family("clears_total", "counter", "Times every entry was invalidated.", std::to_string(s.clears));
  family("tag_store_errors_total", "counter", "Tag store failures (the call ran uncached).",
         std::to_string(s.store_errors));
  return out;
}

namespace detail {

struct memo_counters {
  std::atomic<std::uint64_t> calls{0}, hits{0}, loads{0}, load_failures{0}, bypassed{0}, invalidations{0}, clears{0},
      store_errors{0};
  memo_stats snapshot() const noexcept {
    auto r = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    return {r(calls), r(hits), r(loads), r(load_failures), r(bypassed), r(invalidations), r(clears), r(store_errors)};
  }
};

inline void append_stamp(std::string& key, std::uint64_t stamp) {
  static constexpr char digits[] = "0123456789abcdef";
  key += '#';
  for (int shift = 60; shift >= 0; shift -= 4) key += digits[(stamp >> shift) & 15];
}

// What memoized functions and agent tools share: a cache, a tag registry, the
// function's own tag, and the path of one cached call.
template <class V, class Clock>
struct memo_core {
  memo_core(cache<V, Clock>& c, std::string n, std::vector<std::string> tags, std::optional<std::chrono::nanoseconds> t,
            std::shared_ptr<tag_registry> r)
      : target(&c),
        name(std::move(n)),
        own_tag("memo:" + name),
        static_tags(std::move(tags)),
        ttl(t),
        registry(r ? std::move(r) : std::make_shared<tag_registry>(c.get_executor())) {
    if (name.empty()) throw_invalid_option("a memoized function needs a name");
    if (ttl && *ttl <= std::chrono::nanoseconds::zero()) throw_invalid_option("a memoized function's ttl must be positive");
    for (const auto& tag : static_tags)
      if (tag.empty() || tag.size() > tag_registry::max_tag_length) throw_invalid_option("a tag is empty or too long");
    erase = std::make_shared<const tag_registry::eraser>(
        [c = target](const std::string& key, std::function<void(std::exception_ptr)> done) {
          c->async_erase(key, [done = std::move(done)](std::exception_ptr e, bool) { done(std::move(e)); });
        });
  }

  cache<V, Clock>* target;
  std::string name;
  std::string own_tag;
  std::vector<std::string> static_tags;
  std::optional<std::chrono::nanoseconds> ttl;
  std::shared_ptr<tag_registry> registry;
  std::shared_ptr<const tag_registry::eraser> erase;
  memo_counters n;

  std::vector<std::string> tags_with(std::vector<std::string> extra) const {
    std::vector<std::string> all;
    all.reserve(1 + static_tags.size() + extra.size());
    all.push_back(own_tag);
    all.insert(all.end(), static_tags.begin(), static_tags.end());
    for (auto& t : extra) all.push_back(std::move(t));
    return all;
  }

  // The key of an entry now: the argument key and the stamp of its tags.
  boost::asio::awaitable<std::string> current_key(std::string argkey, std::vector<std::string> tags) const {
    auto op = registry->resolve(std::move(tags));
    const std::uint64_t stamp = co_await std::move(op);
    append_stamp(argkey, stamp);
    co_return argkey;
  }

  // One cached call: the value, and whether this call ran the function.
  // `track_tags` are remembered with the key besides `tags` (a session's,
  // which take no part in the stamp).
  template <class Load>
  static boost::asio::awaitable<std::pair<V, bool>> get(std::shared_ptr<memo_core> self, std::string argkey,
                                                        std::vector<std::string> tags,
                                                        std::vector<std::string> track_tags, Load load) {
    self->n.calls.fetch_add(1, std::memory_order_relaxed);
    for (const auto& t : tags)
      if (t.empty() || t.size() > tag_registry::max_tag_length)
        throw boost::system::system_error(make_error_code(error::invalid_key));
    std::optional<std::string> key;
    std::exception_ptr failure;
    try {
      auto op = self->current_key(std::move(argkey), tags);
      key = co_await std::move(op);
    } catch (const boost::system::system_error& e) {
      // The tag store failed: the entry's generation is unknown, so the cache
      // can neither be read nor written safely. Run the function, unless this
      // caller was cancelled.
      if (e.code() == boost::asio::error::operation_aborted) failure = std::current_exception();
    }
    if (failure) std::rethrow_exception(failure);
    if (!key) {
      self->n.store_errors.fetch_add(1, std::memory_order_relaxed);
      self->n.bypassed.fetch_add(1, std::memory_order_relaxed);
      auto run = load();
      V v = co_await std::move(run);
      co_return std::pair<V, bool>(std::move(v), true);
    }
    // A key the cache refuses (`co_get` fails the call with invalid_key) is
    // stored nowhere, and is not remembered for invalidations to erase.
    const std::size_t max_key = self->target->options().max_key_length;
    const bool tracked = !key->empty() && key->size() <= max_key;
    std::string tracked_key;
    if (tracked) {
      tags.insert(tags.end(), track_tags.begin(), track_tags.end());
      self->registry->track(tags, *key, self->erase);
      tracked_key = *key;
    } else {
      tags.clear();
    }
    auto ran = std::make_shared<std::atomic<bool>>(false);
    auto loader = [self, load = std::move(load), ran, tracked, tags = std::move(tags),
                   tracked_key = std::move(tracked_key)]() -> boost::asio::awaitable<V> {
      // An invalidation between the call remembering its key and this load's
      // start erased nothing (there was no load to void) and forgot the key:
      // remember it again, now that an invalidation voids this load.
      if (tracked) self->registry->track(tags, tracked_key, self->erase);
      self->n.loads.fetch_add(1, std::memory_order_relaxed);
      ran->store(true, std::memory_order_relaxed);
      try {
        auto run = load();
        co_return co_await std::move(run);
      } catch (...) {
        self->n.load_failures.fetch_add(1, std::memory_order_relaxed);
        throw;
      }
    };
    auto op = self->target->co_get(std::move(*key), std::move(loader), get_options{.ttl = self->ttl});
    V v = co_await std::move(op);
    const bool by_this_call = ran->load(std::memory_order_relaxed);
    if (!by_this_call) self->n.hits.fetch_add(1, std::memory_order_relaxed);
    co_return std::pair<V, bool>(std::move(v), by_this_call);
  }

  static boost::asio::awaitable<bool> invalidate(std::shared_ptr<memo_core> self, std::string argkey,
                                                 std::vector<std::string> tags) {
    auto key_op = self->current_key(std::move(argkey), std::move(tags));
    std::string key = co_await std::move(key_op);
    self->n.invalidations.fetch_add(1, std::memory_order_relaxed);
    auto op = self->target->async_erase(std::move(key), boost::asio::use_awaitable);
    co_return co_await std::move(op);
  }

  static boost::asio::awaitable<void> clear(std::shared_ptr<memo_core> self) {
    self->n.clears.fetch_add(1, std::memory_order_relaxed);
    auto op = self->registry->async_invalidate({self->own_tag}, boost::asio::use_awaitable);
    co_await std::move(op);
  }
};

// Adapts a coroutine function or an asynchronous operation taking a completion
// token to `(Args...) -> awaitable<R>`.
template <class R, class... Args, class F>
std::function<boost::asio::awaitable<R>(Args...)> as_coroutine_function(F f) {
  if constexpr (std::is_invocable_r_v<boost::asio::awaitable<R>, F&, Args...>) {
    return std::function<boost::asio::awaitable<R>(Args...)>(std::move(f));
  } else {
    static_assert(std::is_invocable_v<F&, Args..., const boost::asio::use_awaitable_t<>&>,
                  "the function must be (Args...) -> asio::awaitable<R>, or an asynchronous operation "
                  "(Args..., CompletionToken)");
    return [f = std::move(f)](Args... a) -> boost::asio::awaitable<R> {
      auto op = f(std::forward<Args>(a)..., boost::asio::use_awaitable);
      co_return co_await std::move(op);
    };
  }
}

template <class R>
boost::asio::awaitable<void> discard_result(boost::asio::awaitable<R> a) {
  co_await std::move(a);
}

// Holds a mutation's result, or nothing for `void`.
template <class R>
struct result_box {
  explicit result_box(R v) : value(std::move(v)) {}
  R value;
};
template <>
struct result_box<void> {};

// Runs `mutation`, then `invalidate` whatever the mutation did: succeeded,
// threw, or was cancelled (it may have taken effect all the same). The
// mutation's failure wins over the invalidation's.
template <class R, class Mutation, class Invalidate>
boost::asio::awaitable<R> mutate_then_invalidate(Mutation mutation, Invalidate invalidate) {
  std::exception_ptr failure;
  std::optional<result_box<R>> result;
  try {
    auto op = mutation();
    if constexpr (std::is_void_v<R>) {
      co_await std::move(op);
      result.emplace();
    } else {
      R r = co_await std::move(op);
      result.emplace(std::move(r));
    }
  } catch (...) {
    failure = std::current_exception();
  }
  co_await boost::asio::this_coro::throw_if_cancelled(false);
  co_await boost::asio::this_coro::reset_cancellation_state(boost::asio::disable_cancellation());
  std::exception_ptr after_failure;
  try {
    auto after = invalidate();
    co_await std::move(after);
  } catch (...) {
    after_failure = std::current_exception();
  }
  if (failure) std::rethrow_exception(failure);
  if (after_failure) std::rethrow_exception(after_failure);
  if constexpr (!std::is_void_v<R>) co_return std::move(result->value);
}

}  // namespace detail

template <class Signature, class Clock = coarse_steady_clock>
class memoized;

/// A function whose results are cached by its arguments in a `cache<V>`.
///
/// @code
/// cf::cache<User> users{ex};
/// cf::memoized<User(int)> get_user{users, "get_user", [&](int id) { return db.load_user(id); },
///                                  {.ttl = std::chrono::seconds(60)}};
/// User u = co_await get_user(42);                       // loads
/// User v = co_await get_user(42);                       // from memory
/// get_user.async_call(42, [](std::exception_ptr, User) {});  // any completion token
/// co_await get_user.invalidate(42);
/// @endcode
///
/// Concurrent calls with equal arguments run the function once (the cache's
/// coalescing); the function's exception reaches every one of them unchanged.
///
/// @par Keys
/// An entry's key is `name(args...)` as `make_key` writes it (the first
/// `skip_args` arguments left out, or the text of `options::key` between the
/// parentheses), then `#` and 16 hexadecimal digits: the stamp of the entry's
/// tags (see `tag_registry`). Its tags are `memo:<name>`, then
/// `options::tags`, then those `options::tags_of` gives for the arguments.
/// Two memoized functions sharing a cache need distinct names.
///
/// @par Across processes
/// Processes share entries through the cache's tiers only when they share
/// tag generations: give each a registry on the same store (the Redis L2).
/// The default registry is this function's own, in memory: each process (and
/// each restart) then has keys of its own. With a shared registry, `clear`
/// and tag invalidations reach every process; `invalidate(args...)` erases
/// the entry from this process's memory and from the tiers, while other
/// processes keep their in-memory copy until it expires: give such entries a
/// tag of their own (`tags_of`) and invalidate the tag to reach them.
///
/// @tparam Signature  `V(Args...)`: `V` is the cache's value type; `Args` are
///                    values or const references (each call copies them, so
///                    they must be copy constructible). A view or pointer
///                    argument (`std::string_view`, `const char*`) is copied
///                    as a view: what it points to must outlive the operation
///                    (with `use_awaitable` or `deferred`, until it is awaited
///                    or launched and has completed).
///
/// @par Threads
/// Every member may be called from any thread, concurrently.
///
/// @par Lifetime
/// The cache must outlive the memoized function and every operation it
/// started (including `async_call`s launched with `deferred`); operations
/// share the function's own state, so the memoized object itself may be
/// moved or destroyed while they run.
template <class V, class... Args, class Clock>
class memoized<V(Args...), Clock> {
  using core = detail::memo_core<V, Clock>;

 public:
  using value_type = V;
  using args_tuple = std::tuple<std::decay_t<Args>...>;
  using function_type = std::function<boost::asio::awaitable<V>(Args...)>;
  /// Writes the argument part of a key (what goes between the parentheses).
  using key_function = std::function<std::string(const std::decay_t<Args>&...)>;
  /// Gives an entry's tags from the call's arguments (e.g. `{"user:42"}`).
  using tag_function = std::function<std::vector<std::string>(const std::decay_t<Args>&...)>;

  /// Options of one memoized function. An aggregate: use designated initializers.
  struct options {
    /// Leading arguments left out of the key (an object pointer, a connection...).
    std::size_t skip_args = 0;
    /// Lifetime of a cached result; unset: the cache's `default_ttl`.
    std::optional<std::chrono::nanoseconds> ttl{};
    /// Tags of every entry.
    std::vector<std::string> tags{};
    /// Tags of the entry of one call; may be empty.
    tag_function tags_of{};
    /// Replaces the rule of `make_key` for the arguments; may be empty.
    key_function key{};
    /// Tag generations; null: one of this function's own, in this process only.
    std::shared_ptr<tag_registry> registry{};
  };

  /// @param cache  Where results are cached.
  /// @param name   Non-empty; the first part of every key, and the function's tag `memo:<name>`.
  /// @param fn     `(Args...) -> asio::awaitable<V>`, or an asynchronous operation
  ///               `(Args..., CompletionToken)` whose completion is `void(error_code, V)`
  ///               or `void(std::exception_ptr, V)`.
  /// @throws boost::system::system_error with `error::invalid_option` for an
  ///         empty name, a TTL that is not positive, a bad tag, or `skip_args`
  ///         beyond the number of arguments.
  template <class F>
  memoized(cache<V, Clock>& cache, std::string name, F fn, options opts = {})
      : core_(std::make_shared<core>(cache, std::move(name), std::move(opts.tags), opts.ttl, std::move(opts.registry))),
        fn_(std::make_shared<const function_type>(detail::as_coroutine_function<V, Args...>(std::move(fn)))),
        keys_(std::make_shared<const keying>(keying{core_->name, opts.skip_args, std::move(opts.key),
                                                    std::move(opts.tags_of)})) {
    if (keys_->skip > sizeof...(Args))
      detail::throw_invalid_option("memoized: skip_args exceeds the number of arguments");
    if (!keys_->key_fn && keys_->skip < first_keyed())
      detail::throw_invalid_option("memoized: an argument without a key rule must be skipped (skip_args) or keyed (key)");
  }

  /// Calls the function through the cache.
  ///
  /// Returns a lazy awaitable; the arguments are copied when this is called.
  /// Throws what `async_call` delivers as its error.
  boost::asio::awaitable<V> operator()(Args... args) const {
    return call(core_, fn_, keys_, args_tuple(std::forward<Args>(args)...));
  }

  /// Calls the function through the cache, completing through `token`.
  ///
  /// @par Completion signature
  /// @code void(std::exception_ptr error, V value) @endcode
  /// Errors: the function's own exception, unchanged; `error::invalid_key`
  /// (a key or tag too long or empty); the cache's errors (`error::timed_out`,
  /// `error::max_keys_exceeded`...). A tag store failure is not an error: the
  /// function then runs without the cache (counted in `memo_stats::store_errors`).
  /// @par Executor
  /// Runs on the cache's executor; the handler runs on its associated
  /// executor (the cache's by default), never inside this call.
  /// @par Per-Operation Cancellation
  /// `terminal`: the caller stops waiting (`operation_aborted`); as with
  /// `cache::async_get`, a run whose callers all left is cancelled.
  template <boost::asio::completion_token_for<void(std::exception_ptr, V)> CompletionToken>
  auto async_call(Args... args, CompletionToken&& token) const {
    return boost::asio::co_spawn(core_->target->get_executor(), (*this)(std::forward<Args>(args)...),
                                 std::forward<CompletionToken>(token));
  }

  /// Runs the function without reading or writing the cache (counted as bypassed).
  boost::asio::awaitable<V> call_uncached(Args... args) const {
    core_->n.bypassed.fetch_add(1, std::memory_order_relaxed);
    return run(fn_, args_tuple(std::forward<Args>(args)...));
  }

  /// Removes the entry of these arguments from the cache's memory and from
  /// every tier. Returns whether memory held it. Throws the cache's or the
  /// tag store's failure.
  boost::asio::awaitable<bool> invalidate(Args... args) const {
    return invalidate_args(core_, keys_, args_tuple(std::forward<Args>(args)...));
  }

  /// `invalidate` through a completion token: `void(std::exception_ptr, bool)`;
  /// the handler runs on its associated executor, never inside this call.
  template <boost::asio::completion_token_for<void(std::exception_ptr, bool)> CompletionToken>
  auto async_invalidate(Args... args, CompletionToken&& token) const {
    return boost::asio::co_spawn(core_->target->get_executor(), invalidate(std::forward<Args>(args)...),
                                 std::forward<CompletionToken>(token));
  }

  /// Invalidates every entry of this function, and of no other: its tag
  /// `memo:<name>` gets a new generation (in the registry's store, so in every
  /// process sharing it), and the keys this process stored are erased from
  /// memory and from the tiers. Throws the store's failure.
  boost::asio::awaitable<void> clear() const { return core::clear(core_); }

  /// `clear` through a completion token: `void(std::exception_ptr)`.
  template <boost::asio::completion_token_for<void(std::exception_ptr)> CompletionToken>
  auto async_clear(CompletionToken&& token) const {
    return boost::asio::co_spawn(core_->target->get_executor(), clear(), std::forward<CompletionToken>(token));
  }

  /// The argument key of a call: `name(...)`, without the tags' stamp.
  std::string key(const std::decay_t<Args>&... args) const { return keys_->key(args...); }

  /// The tags of a call's entry, in stamp order.
  std::vector<std::string> tags(const std::decay_t<Args>&... args) const {
    return core_->tags_with(keys_->tags_of(args...));
  }

  const std::string& name() const noexcept { return core_->name; }
  /// The function's own tag, `memo:<name>`.
  const std::string& tag() const noexcept { return core_->own_tag; }
  const std::shared_ptr<tag_registry>& registry() const noexcept { return core_->registry; }
  memo_stats stats() const noexcept { return core_->n.snapshot(); }

 private:
  // How keys and tags are made from arguments; shared with operations in
  // flight, which compute them when they start.
  struct keying {
    std::string name;
    std::size_t skip;
    key_function key_fn;
    tag_function tags_fn;

    std::string key(const std::decay_t<Args>&... args) const {
      if (key_fn) {
        std::string k = name;
        k += '(';
        k += key_fn(args...);
        k += ')';
        return k;
      }
      return skipped_key(std::index_sequence_for<Args...>{}, std::forward_as_tuple(args...));
    }

    std::vector<std::string> tags_of(const std::decay_t<Args>&... args) const {
      return tags_fn ? tags_fn(args...) : std::vector<std::string>{};
    }

    template <std::size_t... I, class Tuple>
    std::string skipped_key(std::index_sequence<I...>, const Tuple& t) const {
      std::string out = name;
      out += '(';
      bool first = true;
      auto one = [&](std::size_t i, const auto& a) {
        if constexpr (detail::key_encodable<std::decay_t<decltype(a)>>()) {
          if (i < skip) return;
          if (!first) out += ',';
          first = false;
          append_key_part(out, a);
        }  // else skipped: the constructor saw to it
      };
      (one(I, std::get<I>(t)), ...);
      out += ')';
      return out;
    }
  };

  // The number of leading arguments that must be skipped: up to the last one
  // without a key rule.
  static constexpr std::size_t first_keyed() {
    constexpr bool encodable[] = {true, detail::key_encodable<std::decay_t<Args>>()...};
    std::size_t n = 0;
    for (std::size_t i = 1; i < sizeof encodable; ++i)
      if (!encodable[i]) n = i;
    return n;
  }

  static boost::asio::awaitable<V> run(std::shared_ptr<const function_type> fn, args_tuple t) {
    auto op = std::apply(*fn, t);
    co_return co_await std::move(op);
  }

  // The key and tags are computed here, so that a throwing key or tag
  // function reaches the caller as the operation's error.
  static boost::asio::awaitable<V> call(std::shared_ptr<core> c, std::shared_ptr<const function_type> fn,
                                        std::shared_ptr<const keying> k, args_tuple t) {
    std::string argkey = std::apply([&k](const auto&... a) { return k->key(a...); }, t);
    auto tags = c->tags_with(std::apply([&k](const auto&... a) { return k->tags_of(a...); }, t));
    auto load = [fn, t = std::move(t)]() { return run(fn, t); };
    auto op = core::get(c, std::move(argkey), std::move(tags), {}, std::move(load));
    auto r = co_await std::move(op);
    co_return std::move(r.first);
  }

  static boost::asio::awaitable<bool> invalidate_args(std::shared_ptr<core> c, std::shared_ptr<const keying> k,
                                                      args_tuple t) {
    std::string argkey = std::apply([&k](const auto&... a) { return k->key(a...); }, t);
    auto tags = c->tags_with(std::apply([&k](const auto&... a) { return k->tags_of(a...); }, t));
    auto op = core::invalidate(c, std::move(argkey), std::move(tags));
    co_return co_await std::move(op);
  }

  std::shared_ptr<core> core_;
  std::shared_ptr<const function_type> fn_;
  std::shared_ptr<const keying> keys_;
};

template <class Signature>
class invalidating;

/// A mutation that invalidates what it makes stale before it runs.
///
/// @code
/// cf::invalidating<void(int, std::string)> rename{
///     [&](int id, std::string name) { return db.rename(id, std::move(name)); }};
/// rename.invalidates(get_user, [](int id, const std::string&) { return std::tuple{id}; });
/// co_await rename(42, "Ada");   // get_user(42) is gone from memory and tiers, then the row changes
/// @endcode
///
/// Each call first runs every invalidation, in the order they were added,
/// each completing in memory and in every tier, then runs the mutation, then
/// runs the invalidations again (a read that missed while the mutation ran may
/// have loaded, and stored, what the mutation replaced), whether the mutation
/// succeeded or threw. If an invalidation before it fails, the mutation does not
/// run and the failure is thrown. If the mutation throws, its exception reaches
/// the caller unchanged. If only an invalidation after it fails, that failure
/// is thrown (the mutation's result is lost: the cache may hold stale data).
///
/// @par Threads
/// Configure (`invalidates...`) before the first call; calls may then come
/// from any thread, concurrently.
///
/// @par Lifetime
/// The memoized functions, caches and registries it names must outlive it,
/// and it every call it started.
template <class R, class... Args>
class invalidating<R(Args...)> {
 public:
  using args_tuple = std::tuple<std::decay_t<Args>...>;
  using function_type = std::function<boost::asio::awaitable<R>(Args...)>;
  /// One invalidation, given the call's arguments.
  using step = std::function<boost::asio::awaitable<void>(const args_tuple&)>;

  /// @param mutation `(Args...) -> asio::awaitable<R>`, or an asynchronous
  ///        operation `(Args..., CompletionToken)`.
  template <class F>
  explicit invalidating(F mutation)
      : st_(std::make_shared<state>(detail::as_coroutine_function<R, Args...>(std::move(mutation)))) {}

  /// Invalidates `reads`'s entry for the call's own arguments.
  template <class Sig, class C>
  invalidating& invalidates(const memoized<Sig, C>& reads) {
    return invalidates(reads, [](const std::decay_t<Args>&... a) { return std::tuple<const std::decay_t<Args>&...>(a...); });
  }

  /// Invalidates `reads`'s entry for the arguments `args_of` gives (a tuple of
  /// `reads`'s arguments) from the call's arguments.
  template <class Sig, class C, class ArgsOf>
  invalidating& invalidates(const memoized<Sig, C>& reads, ArgsOf args_of) {
    st_->steps.push_back([r = &reads, args_of = std::move(args_of)](const args_tuple& t) {
      auto read_args = std::apply(args_of, t);
      return detail::discard_result(std::apply([r](const auto&... a) { return r->invalidate(a...); }, read_args));
    });
    return *this;
  }

  /// Invalidates every entry of `reads` (its `clear`).
  template <class Sig, class C>
  invalidating& clears(const memoized<Sig, C>& reads) {
    st_->steps.push_back([r = &reads](const args_tuple&) { return r->clear(); });
    return *this;
  }

  /// Invalidates fixed tags in `registry`.
  invalidating& invalidates_tags(std::shared_ptr<tag_registry> registry, std::vector<std::string> tags) {
    return invalidates_tags(std::move(registry), [tags = std::move(tags)](const std::decay_t<Args>&...) { return tags; });
  }

  /// Invalidates, in `registry`, the tags `tags_of` gives from the call's arguments.
  template <class TagsOf>
    requires std::is_invocable_r_v<std::vector<std::string>, TagsOf&, const std::decay_t<Args>&...>
  invalidating& invalidates_tags(std::shared_ptr<tag_registry> registry, TagsOf tags_of) {
    st_->steps.push_back([reg = std::move(registry), tags_of = std::move(tags_of)](const args_tuple& t) {
      return reg->async_invalidate(std::apply(tags_of, t), boost::asio::use_awaitable);
    });
    return *this;
  }

  /// Erases from `cache` the keys `keys_of` gives from the call's arguments.
  template <class V, class C, class KeysOf>
  invalidating& invalidates_keys(cache<V, C>& cache, KeysOf keys_of) {
    st_->steps.push_back([c = &cache, keys_of = std::move(keys_of)](const args_tuple& t) {
      return erase_keys(c, std::apply(keys_of, t));
    });
    return *this;
  }

  /// Invalidates, then runs the mutation. Returns a lazy awaitable; the
  /// arguments are copied when this is called.
  boost::asio::awaitable<R> operator()(Args... args) const {
    return call(st_, args_tuple(std::forward<Args>(args)...));
  }

  /// The same through a completion token.
  /// @par Completion signature
  /// `void(std::exception_ptr error, R value)`, or `void(std::exception_ptr error)`
  /// when `R` is `void`. Errors: the mutation's own exception, or an
  /// invalidation's failure (see the class).
  /// @par Executor
  /// Runs on `ex`; the handler runs on its associated executor (`ex` by
  /// default), never inside this call.
  template <class CompletionToken>
  auto async_call(boost::asio::any_io_executor ex, Args... args, CompletionToken&& token) const {
    return boost::asio::co_spawn(std::move(ex), (*this)(std::forward<Args>(args)...),
                                 std::forward<CompletionToken>(token));
  }

  /// Runs the mutation without invalidating anything.
  boost::asio::awaitable<R> call_without_invalidation(Args... args) const {
    return run(st_, args_tuple(std::forward<Args>(args)...));
  }

 private:
  struct state {
    explicit state(function_type f) : fn(std::move(f)) {}
    function_type fn;
    std::vector<step> steps;
  };

  template <class V, class C>
  static boost::asio::awaitable<void> erase_keys(cache<V, C>* c, std::vector<std::string> keys) {
    for (auto& k : keys) {
      auto op = c->async_erase(std::move(k), boost::asio::use_awaitable);
      co_await std::move(op);
    }
  }

  static boost::asio::awaitable<R> run(std::shared_ptr<state> st, args_tuple t) {
    auto op = std::apply(st->fn, t);
    co_return co_await std::move(op);
  }

  static boost::asio::awaitable<void> invalidate_all(const std::shared_ptr<state>& st, const args_tuple& t) {
    for (const auto& s : st->steps) {
      auto op = s(t);
      co_await std::move(op);
    }
  }

  static boost::asio::awaitable<R> call(std::shared_ptr<state> st, args_tuple t) {
    auto before = invalidate_all(st, t);
    co_await std::move(before);
    // Then the mutation, then the invalidations again: a read that missed
    // while the mutation ran may have stored what it replaced.
    auto op = detail::mutate_then_invalidate<R>([&st, &t] { return std::apply(st->fn, t); },
                                                [&st, &t] { return invalidate_all(st, t); });
    co_return co_await std::move(op);
  }

  std::shared_ptr<state> st_;
};

}  // namespace cacheflight

#endif
