// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_AGENT_HPP
#define CACHEFLIGHT_AGENT_HPP

#include <cacheflight/memoize.hpp>

#include <boost/asio/detached.hpp>
#include <boost/unordered/unordered_flat_map.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace cacheflight {

/// Who shares a read tool's entries.
enum class tool_scope {
  global,   ///< every caller, in or out of a session
  session,  ///< the session of the call only; removed when the session ends
};

/// What a session's loop guard does when a call breaks one of its rules.
enum class loop_policy {
  /// The call fails with `error::loop_detected`; the tool does not run.
  raise,
  /// The call goes on; only `agent_options::on_loop` and the counters hear of it.
  warn,
  /// A read tool answers from memory without running the tool; without a
  /// value in memory, and for write tools, the call fails as with `raise`
  /// (a key the cache refuses fails with `error::invalid_key`, as without
  /// the guard).
  short_circuit,
};

/// The rule a call broke.
enum class loop_kind {
  identical_calls,  ///< the same tool with the same arguments, more than `max_identical_calls` times
  too_many_calls,   ///< more than `max_calls` calls in the session
  cycle,            ///< a sequence of two or more calls repeated `cycle_repeats` times back to back
};

/// Rules of a session's loop guard. A call is identified by its tool's name
/// and its arguments, written as `make_key` writes them (`search("shoes")`).
/// Every call through a session counts, read or write, including refused ones.
struct loop_guard_options {
  /// The call made identically (same tool, same arguments) for the (N+1)th
  /// time in the session breaks the rule. 0: no limit.
  std::size_t max_identical_calls = 3;
  /// The (N+1)th call of the session breaks the rule. 0: no limit.
  std::size_t max_calls = 100;
  /// Longest sequence checked for repetition, at most 64; 0 (or 1): no cycle detection.
  std::size_t max_cycle_length = 4;
  /// Back-to-back repetitions of a sequence that make a cycle (2 to 1024).
  std::size_t cycle_repeats = 2;
  loop_policy policy = loop_policy::raise;
};

/// What `agent_options::on_loop` receives.
struct loop_report {
  loop_kind kind;
  /// The session's policy for the call. Under `short_circuit`, a call that
  /// cannot be answered from memory (a write tool, or a read with nothing
  /// there) is reported with `short_circuit` and fails as with `raise`.
  loop_policy action;
  std::string session;        ///< the session's name
  std::string call;           ///< the call that broke the rule
  std::vector<std::string> cycle;  ///< for `cycle`: the repeated sequence, oldest first
  std::string message;        ///< also the message of the `loop_detected` error
};

/// Options of an `agent_cache`. An aggregate: use designated initializers.
struct agent_options {
  /// The rules of sessions that do not bring their own.
  loop_guard_options loop_guard{};
  /// Hears of every broken rule, outside any lock; exceptions it throws are discarded.
  std::function<void(const loop_report&)> on_loop{};
  /// Tag generations of tools and resources; null: one of the agent cache's
  /// own, in this process only. Build it on the Redis L2 to share
  /// invalidations between processes.
  std::shared_ptr<tag_registry> registry{};
};

/// Options of a read tool.
struct read_tool_options {
  /// Resources the tool reads: tags of its entries, invalidated by write tools.
  std::vector<std::string> resources{};
  tool_scope scope = tool_scope::global;
  /// Lifetime of a cached result; unset: the cache's `default_ttl`.
  std::optional<std::chrono::nanoseconds> ttl{};
};

/// Options of a write tool.
struct write_tool_options {
  /// Resources the tool changes: every entry of each is invalidated (in
  /// memory, in the tiers, and in every process sharing the registry's store)
  /// before the tool runs and again after it.
  std::vector<std::string> invalidates{};
};

/// Counters of an agent cache or of one session.
struct agent_stats {
  std::uint64_t calls = 0;            ///< tool calls, read and write
  /// Read tool calls the loop guard let through (or short-circuited) that
  /// completed with a value.
  std::uint64_t reads = 0;
  /// Of those, the ones answered without running the tool in this call
  /// (short-circuited ones included).
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;           ///< of those, the ones that ran the tool
  /// Resources invalidated by write tools and `async_invalidate` (counted as
  /// the invalidation starts).
  std::uint64_t invalidations = 0;
  std::uint64_t loop_detections = 0;  ///< calls that broke a loop guard rule
  std::uint64_t sessions_opened = 0;  ///< the agent cache's only
  std::uint64_t sessions_ended = 0;   ///< the agent cache's only
  /// `hits / reads`, 0 before the first read.
  double hit_rate() const noexcept { return reads ? double(hits) / double(reads) : 0.0; }
};

/// Writes `s` in the Prometheus text format: `<prefix>_calls_total`,
/// `_hits_total`, `_misses_total`, `_hit_ratio`, `_invalidations_total`,
/// `_loop_detections_total`, `_sessions_opened_total`, `_sessions_ended_total`.
/// Give a session's stats a label of their own (`session="support-1"`).
inline std::string to_prometheus(const agent_stats& s, std::string_view prefix = "cacheflight_agent",
                                 std::string_view labels = {}) {
  std::string out;
  auto family = [&](std::string_view name, std::string_view type, std::string_view help, const std::string& value) {
    detail::prometheus_family(out, prefix, labels, name, type, help, value);
  };
  family("calls_total", "counter", "Tool calls, read and write.", std::to_string(s.calls));
  family("hits_total", "counter", "Read tool calls that did not run the tool.", std::to_string(s.hits));
  family("misses_total", "counter", "Read tool calls that ran the tool.", std::to_string(s.misses));
  family("hit_ratio", "gauge", "Hits divided by read tool calls.", std::to_string(s.hit_rate()));
  family("invalidations_total", "counter", "Resources invalidated by write tools and async_invalidate.",
         std::to_string(s.invalidations));
  family("loop_detections_total", "counter", "Calls that broke a loop guard rule.", std::to_string(s.loop_detections));
  family("sessions_opened_total", "counter", "Sessions opened.", std::to_string(s.sessions_opened));
  family("sessions_ended_total", "counter", "Sessions ended.", std::to_string(s.sessions_ended));
  return out;
}

namespace detail {

struct agent_counters {
  std::atomic<std::uint64_t> calls{0}, reads{0}, hits{0}, misses{0}, invalidations{0}, loop_detections{0},
      sessions_opened{0}, sessions_ended{0};
  agent_stats snapshot() const noexcept {
    auto r = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    return {r(calls), r(reads), r(hits), r(misses), r(invalidations), r(loop_detections), r(sessions_opened),
            r(sessions_ended)};
  }
};

// A session's state: its identity, counters and loop guard.
struct agent_session_state {
  agent_session_state(std::string n, std::string i, loop_guard_options g)
      : name(std::move(n)), id(std::move(i)), tag("session:" + id), guard(g) {}
  const std::string name;
  const std::string id;   // unique in the process: name, a dot, 16 random hexadecimal digits
  const std::string tag;  // every entry of the session carries it
  const loop_guard_options guard;
  agent_counters n;
  std::atomic<bool> ended{false};

  std::mutex mu;
  std::deque<std::string> history;  // the last calls, oldest first
  boost::unordered_flat_map<std::string, std::size_t> identical;
  std::size_t total = 0;

  // Records `call`; returns the report of the rule it breaks, if any.
  std::optional<loop_report> record(const std::string& call) {
    std::lock_guard lk(mu);
    const std::size_t count = ++identical[call];
    ++total;
    const std::size_t keep = guard.max_cycle_length >= 2 ? guard.max_cycle_length * guard.cycle_repeats : 0;
    if (keep) {
      history.push_back(call);
      while (history.size() > keep) history.pop_front();
    }
    loop_report r{loop_kind::identical_calls, guard.policy, name, call, {}, {}};
    if (guard.max_calls && total > guard.max_calls) {
      r.kind = loop_kind::too_many_calls;
      r.message = "loop detected in session " + name + ": " + call + " is call " + std::to_string(total) +
                  ", more than the limit of " + std::to_string(guard.max_calls);
      return r;
    }
    if (guard.max_identical_calls && count > guard.max_identical_calls) {
      r.message = "loop detected in session " + name + ": " + call + " called " + std::to_string(count) +
                  " times, more than the limit of " + std::to_string(guard.max_identical_calls);
      return r;
    }
    for (std::size_t p = 2; keep && p <= guard.max_cycle_length; ++p) {
      const std::size_t need = p * guard.cycle_repeats;
      if (history.size() < need) break;
      const std::size_t start = history.size() - need;
      bool repeats = true, varied = false;
      for (std::size_t j = p; j < need && repeats; ++j) repeats = history[start + j] == history[start + j % p];
      for (std::size_t j = 1; j < p && !varied; ++j) varied = history[start + j] != history[start];
      if (!repeats || !varied) continue;
      r.kind = loop_kind::cycle;
      r.cycle.assign(history.begin() + std::ptrdiff_t(start), history.begin() + std::ptrdiff_t(start + p));
      std::string seq;
      for (const auto& c : r.cycle) seq += (seq.empty() ? "" : " -> ") + c;
      r.message = "loop detected in session " + name + ": cycle " + seq + " repeated " +
                  std::to_string(guard.cycle_repeats) + " times";
      return r;
    }
    return std::nullopt;
  }
};

}  // namespace detail

/// Caching for the tools of AI agents, on top of a `cache<V>`: read tools
/// cached by their arguments (for everyone, or per session), write tools that
/// invalidate the resources they change, sessions whose entries end with
/// them, and a loop guard per session.
///
/// @code
/// cf::cache<std::string> results{ex};
/// cf::agent_cache<std::string> agent{results};
/// auto get_cart = agent.read_tool<std::string>("get_cart", backend_get_cart,
///                                              {.resources = {"cart"}, .scope = cf::tool_scope::session});
/// auto add_to_cart = agent.write_tool<int, std::string, int>("add_to_cart", backend_add,
///                                                                    {.invalidates = {"cart"}});
/// auto s = agent.open_session("shopper-1");
/// co_await get_cart(s, "alice");           // runs the tool
/// co_await get_cart(s, "alice");           // from memory
/// co_await add_to_cart(s, "apple", 2);     // invalidates "cart", then runs
/// co_await get_cart(s, "alice");           // runs the tool again
/// co_await s.end();                        // the session's entries are gone
/// @endcode
///
/// Tool results are values of the cache's type `V` (a JSON text, a
/// `boost::json::value`...). A read tool is a memoized function (see
/// `memoized`): its entries carry the tags `memo:<tool>` and its resources;
/// a session-scoped entry's key also holds the session's id, and the session
/// remembers it so that `session::end` (or the session's destruction) erases
/// it from memory and from the tiers.
///
/// @par Threads
/// Every member, of the agent cache, its tools and its sessions, may be
/// called from any thread, concurrently.
///
/// @par Lifetime
/// The cache must outlive the agent cache, which must outlive its tools and
/// sessions, which must outlive the calls made through them.
template <class V, class Clock = coarse_steady_clock>
class agent_cache {
  struct shared {
    shared(cache<V, Clock>& c, agent_options o)
        : target(&c),
          opts(std::move(o)),
          registry(opts.registry ? opts.registry : std::make_shared<tag_registry>(c.get_executor())) {
      std::random_device rd;
      rng.seed((std::uint64_t{rd()} << 32) ^ rd());
    }
    cache<V, Clock>* target;
    agent_options opts;
    std::shared_ptr<tag_registry> registry;
    detail::agent_counters n;
    std::mutex mu;
    std::mt19937_64 rng;

    // Runs the guard for `call` in session `s`: the report of a broken rule.
    std::optional<loop_report> guard(detail::agent_session_state& s, const std::string& call) {
      auto report = s.record(call);
      if (!report) return report;
      n.loop_detections.fetch_add(1, std::memory_order_relaxed);
      s.n.loop_detections.fetch_add(1, std::memory_order_relaxed);
      if (opts.on_loop) {
        try {
          opts.on_loop(*report);
        } catch (...) {
        }
      }
      return report;
    }
  };

  static void check_resources(const std::vector<std::string>& tags) {
    for (const auto& t : tags)
      if (t.empty() || t.size() > tag_registry::max_tag_length) detail::throw_invalid_option("a resource name is empty or too long");
  }

  [[noreturn]] static void throw_loop(const std::string& message) {
    throw boost::system::system_error(make_error_code(error::loop_detected), message);
  }

 public:
  /// A session: a scope of calls with entries of its own and a loop guard.
  /// Moveable, not copyable; ending it (`end`, or destroying it) erases its
  /// entries, from memory at once and from the tiers behind the caller's back.
  class session {
   public:
    session(session&&) noexcept = default;
    session& operator=(session&& other) noexcept {
      if (this != &other) {
        end_now();
        st_ = std::move(other.st_);
        ag_ = std::move(other.ag_);
      }
      return *this;
    }
    ~session() { end_now(); }

    /// The name given to `open_session`.
    const std::string& name() const noexcept { return st_->name; }
    /// Unique in the process: the name, a dot and 16 random hexadecimal digits.
    const std::string& id() const noexcept { return st_->id; }
    /// Whether calls may still be made through it.
    bool active() const noexcept { return st_ && !st_->ended.load(std::memory_order_acquire); }
    /// This session's counters (`sessions_*` are 0).
    agent_stats stats() const noexcept { return st_->n.snapshot(); }

    /// Ends the session when awaited: calls made through it from then on fail
    /// with `error::no_session`, and its entries are erased from memory at
    /// once, and from every tier before the awaitable completes. A
    /// session-scoped call in flight whose load has not started yet fails with
    /// `error::no_session` too; one whose load has started gets its value,
    /// which is not stored. Ending twice
    /// does nothing the second time; an awaitable never awaited ends nothing
    /// (the session still ends when destroyed).
    [[nodiscard]] boost::asio::awaitable<void> end() { return end_session(st_, ag_); }

    /// `end` through a completion token: `void(std::exception_ptr)`, the first
    /// tier's failure; the handler runs on its associated executor, never
    /// inside this call.
    template <boost::asio::completion_token_for<void(std::exception_ptr)> CompletionToken>
    auto async_end(CompletionToken&& token) {
      return boost::asio::co_spawn(ag_->target->get_executor(), end(), std::forward<CompletionToken>(token));
    }

   private:
    friend class agent_cache;
    session(std::shared_ptr<detail::agent_session_state> st, std::shared_ptr<shared> ag)
        : st_(std::move(st)), ag_(std::move(ag)) {}

    static bool begin_end(const std::shared_ptr<detail::agent_session_state>& st, shared& ag) {
      if (!st || st->ended.exchange(true, std::memory_order_acq_rel)) return false;
      ag.n.sessions_ended.fetch_add(1, std::memory_order_relaxed);
      return true;
    }

    static boost::asio::awaitable<void> end_session(std::shared_ptr<detail::agent_session_state> st,
                                                    std::shared_ptr<shared> ag) {
      if (!begin_end(st, *ag)) co_return;
      auto op = ag->registry->async_remove_tracked(st->tag, boost::asio::use_awaitable);
      co_await std::move(op);
    }

    void end_now() {
      if (ag_ && begin_end(st_, *ag_)) ag_->registry->async_remove_tracked(st_->tag, boost::asio::detached);
    }

    std::shared_ptr<detail::agent_session_state> st_;
    std::shared_ptr<shared> ag_;
  };

  /// A cached read tool; made by `read_tool`. Cheap to copy (copies share counters).
  template <class... Args>
  class reader {
    using core = detail::memo_core<V, Clock>;
    using args_tuple = std::tuple<std::decay_t<Args>...>;
    using function_type = std::function<boost::asio::awaitable<V>(Args...)>;

   public:
    /// Calls the tool in `s`: the loop guard first, then the cache (the
    /// session's entries for a session-scoped tool, everyone's otherwise).
    /// Throws `error::loop_detected` when the guard refuses the call,
    /// `error::no_session` when `s` has ended (for a session-scoped tool, also
    /// when it ends after the call but before the call's load starts: nothing
    /// is stored then), and what `memoized` throws.
    boost::asio::awaitable<V> operator()(session& s, Args... args) const {
      std::string call = make_key(core_->name, args...);
      return run_call(ag_, core_, fn_, scope_, s.st_, std::move(call), args_tuple(std::forward<Args>(args)...));
    }

    /// Calls the tool outside any session (no loop guard): global tools only;
    /// a session-scoped tool throws `error::no_session`.
    boost::asio::awaitable<V> operator()(Args... args) const {
      std::string call = make_key(core_->name, args...);
      return run_call(ag_, core_, fn_, scope_, nullptr, std::move(call), args_tuple(std::forward<Args>(args)...));
    }

    /// `operator()(s, args...)` through a completion token.
    /// @par Completion signature
    /// @code void(std::exception_ptr error, V value) @endcode
    /// @par Executor
    /// Runs on the cache's executor; the handler runs on its associated
    /// executor, never inside this call.
    template <boost::asio::completion_token_for<void(std::exception_ptr, V)> CompletionToken>
    auto async_call(session& s, Args... args, CompletionToken&& token) const {
      return boost::asio::co_spawn(ag_->target->get_executor(), (*this)(s, std::forward<Args>(args)...),
                                   std::forward<CompletionToken>(token));
    }

    const std::string& name() const noexcept { return core_->name; }
    tool_scope scope() const noexcept { return scope_; }
    /// Calls, loads and failures of this tool, in and out of sessions.
    memo_stats stats() const noexcept { return core_->n.snapshot(); }

   private:
    friend class agent_cache;
    reader(std::shared_ptr<shared> ag, std::shared_ptr<core> c, std::shared_ptr<const function_type> fn,
           tool_scope scope)
        : ag_(std::move(ag)), core_(std::move(c)), fn_(std::move(fn)), scope_(scope) {}

    static boost::asio::awaitable<V> run(std::shared_ptr<const function_type> fn, args_tuple t) {
      auto op = std::apply(*fn, t);
      co_return co_await std::move(op);
    }

    static boost::asio::awaitable<V> run_call(std::shared_ptr<shared> ag, std::shared_ptr<core> c,
                                              std::shared_ptr<const function_type> fn, tool_scope scope,
                                              std::shared_ptr<detail::agent_session_state> s, std::string call,
                                              args_tuple t) {
      if ((scope == tool_scope::session && !s) || (s && s->ended.load(std::memory_order_acquire)))
        throw boost::system::system_error(make_error_code(error::no_session));
      ag->n.calls.fetch_add(1, std::memory_order_relaxed);
      if (s) s->n.calls.fetch_add(1, std::memory_order_relaxed);
      // The key: the call, with the session's id for a session-scoped tool.
      std::string argkey = call;
      if (scope == tool_scope::session) argkey.insert(c->name.size(), "@" + s->id);
      std::vector<std::string> tags = c->tags_with({});
      if (s) {
        auto report = ag->guard(*s, call);
        if (report && report->action == loop_policy::raise) throw_loop(report->message);
        if (report && report->action == loop_policy::short_circuit) {
          std::string message = std::move(report->message);
          auto key_op = c->current_key(std::move(argkey), std::move(tags));
          std::string key = co_await std::move(key_op);
          // A key the cache refuses fails as the call would without the guard.
          if (key.size() > c->target->options().max_key_length)
            throw boost::system::system_error(make_error_code(error::invalid_key));
          auto v = c->target->peek(key);
          if (!v) throw_loop(message);
          count_read(*ag, s.get(), false);
          co_return std::move(*v);
        }
      }
      std::vector<std::string> track;
      if (scope == tool_scope::session) track.push_back(s->tag);
      // A session-scoped load that starts after its session ended fails: the
      // end's erase may have run between this call remembering its key and the
      // load's start, when there was no load yet for it to void. An end from
      // the load's start on voids the load itself.
      std::shared_ptr<detail::agent_session_state> owner;
      if (scope == tool_scope::session) owner = s;
      auto load = [fn, t = std::move(t), owner = std::move(owner)]() {
        if (owner && owner->ended.load(std::memory_order_acquire))
          throw boost::system::system_error(make_error_code(error::no_session));
        return run(fn, t);
      };
      auto op = core::get(c, std::move(argkey), std::move(tags), std::move(track), std::move(load));
      std::optional<std::pair<V, bool>> r;
      std::exception_ptr failure;
      try {
        r.emplace(co_await std::move(op));
      } catch (...) {
        failure = std::current_exception();
      }
      if (scope == tool_scope::session && s->ended.load(std::memory_order_acquire)) {
        // The session ended while this call ran: what it stored or remembered
        // goes too.
        auto drop = ag->registry->async_remove_tracked(s->tag, boost::asio::use_awaitable);
        if (!failure) {
          co_await std::move(drop);
        } else {
          try {
            co_await std::move(drop);
          } catch (...) {
            // The call's own failure is the one reported.
          }
        }
      }
      if (failure) std::rethrow_exception(failure);
      count_read(*ag, s.get(), r->second);
      co_return std::move(r->first);
    }

    static void count_read(shared& ag, detail::agent_session_state* s, bool ran) {
      auto& which = ran ? ag.n.misses : ag.n.hits;
      ag.n.reads.fetch_add(1, std::memory_order_relaxed);
      which.fetch_add(1, std::memory_order_relaxed);
      if (!s) return;
      s->n.reads.fetch_add(1, std::memory_order_relaxed);
      (ran ? s->n.misses : s->n.hits).fetch_add(1, std::memory_order_relaxed);
    }

    std::shared_ptr<shared> ag_;
    std::shared_ptr<core> core_;
    std::shared_ptr<const function_type> fn_;
    tool_scope scope_;
  };

  /// A write tool; made by `write_tool`. Cheap to copy.
  template <class R, class... Args>
  class writer {
    using args_tuple = std::tuple<std::decay_t<Args>...>;
    using function_type = std::function<boost::asio::awaitable<R>(Args...)>;

   public:
    /// Calls the tool in `s`: the loop guard first (a refused call changes
    /// nothing), then the invalidation of its resources (in memory, the tiers
    /// and the registry's store), then the tool, then the invalidation again
    /// (a read that missed while the tool ran may have stored what the tool
    /// replaced), whether the tool succeeded or threw. A failure of the first
    /// invalidation is thrown and the tool does not run; the tool's own
    /// exception reaches the caller unchanged; a failure of the second alone
    /// is thrown in place of the tool's result.
    boost::asio::awaitable<R> operator()(session& s, Args... args) const {
      std::string call = make_key(name_, args...);
      return run_call(ag_, fn_, invalidates_, s.st_, std::move(call), args_tuple(std::forward<Args>(args)...));
    }

    /// Calls the tool outside any session (no loop guard).
    boost::asio::awaitable<R> operator()(Args... args) const {
      std::string call = make_key(name_, args...);
      return run_call(ag_, fn_, invalidates_, nullptr, std::move(call), args_tuple(std::forward<Args>(args)...));
    }

    /// `operator()(s, args...)` through a completion token: `void(std::exception_ptr, R)`
    /// (`void(std::exception_ptr)` when `R` is `void`); the handler runs on its
    /// associated executor, never inside this call.
    template <class CompletionToken>
    auto async_call(session& s, Args... args, CompletionToken&& token) const {
      return boost::asio::co_spawn(ag_->target->get_executor(), (*this)(s, std::forward<Args>(args)...),
                                   std::forward<CompletionToken>(token));
    }

    const std::string& name() const noexcept { return name_; }

   private:
    friend class agent_cache;
    writer(std::shared_ptr<shared> ag, std::string name, std::shared_ptr<const function_type> fn,
           std::vector<std::string> invalidates)
        : ag_(std::move(ag)), name_(std::move(name)), fn_(std::move(fn)), invalidates_(std::move(invalidates)) {}

    static boost::asio::awaitable<R> run_call(std::shared_ptr<shared> ag, std::shared_ptr<const function_type> fn,
                                              std::vector<std::string> invalidates,
                                              std::shared_ptr<detail::agent_session_state> s, std::string call,
                                              args_tuple t) {
      if (s && s->ended.load(std::memory_order_acquire))
        throw boost::system::system_error(make_error_code(error::no_session));
      ag->n.calls.fetch_add(1, std::memory_order_relaxed);
      if (s) {
        s->n.calls.fetch_add(1, std::memory_order_relaxed);
        if (auto report = ag->guard(*s, call); report && report->action != loop_policy::warn)
          throw_loop(report->message);
      }
      if (invalidates.empty()) {
        auto op = std::apply(*fn, t);
        co_return co_await std::move(op);
      }
      const auto count = invalidates.size();
      ag->n.invalidations.fetch_add(count, std::memory_order_relaxed);
      if (s) s->n.invalidations.fetch_add(count, std::memory_order_relaxed);
      auto before = ag->registry->async_invalidate(invalidates, boost::asio::use_awaitable);
      co_await std::move(before);
      // The tool, then the resources again: a read that missed while it ran
      // may have stored what it replaced.
      auto op = detail::mutate_then_invalidate<R>(
          [&fn, &t] { return std::apply(*fn, t); },
          [&ag, &invalidates] { return ag->registry->async_invalidate(invalidates, boost::asio::use_awaitable); });
      co_return co_await std::move(op);
    }

    std::shared_ptr<shared> ag_;
    std::string name_;
    std::shared_ptr<const function_type> fn_;
    std::vector<std::string> invalidates_;
  };

  /// @throws boost::system::system_error with `error::invalid_option` for
  ///         impossible loop guard rules (see `open_session`).
  explicit agent_cache(cache<V, Clock>& cache, agent_options opts = {})
      : ag_(std::make_shared<shared>(cache, std::move(opts))) {
    check_guard(ag_->opts.loop_guard);
  }

  /// Makes a read tool.
  /// @param name  Non-empty, unique among the tools of this cache.
  /// @param fn    `(Args...) -> asio::awaitable<V>`, or an asynchronous
  ///              operation `(Args..., CompletionToken)`.
  /// @throws boost::system::system_error with `error::invalid_option` for an
  ///         empty name, a bad resource name or a TTL that is not positive.
  template <class... Args, class F>
  reader<Args...> read_tool(std::string name, F fn, read_tool_options opts = {}) {
    check_resources(opts.resources);
    auto c = std::make_shared<detail::memo_core<V, Clock>>(*ag_->target, std::move(name), std::move(opts.resources),
                                                           opts.ttl, ag_->registry);
    auto f = std::make_shared<const std::function<boost::asio::awaitable<V>(Args...)>>(
        detail::as_coroutine_function<V, Args...>(std::move(fn)));
    return reader<Args...>(ag_, std::move(c), std::move(f), opts.scope);
  }

  /// Makes a write tool returning `R`.
  template <class R, class... Args, class F>
  writer<R, Args...> write_tool(std::string name, F fn, write_tool_options opts = {}) {
    if (name.empty()) detail::throw_invalid_option("a tool needs a name");
    check_resources(opts.invalidates);
    auto f = std::make_shared<const std::function<boost::asio::awaitable<R>(Args...)>>(
        detail::as_coroutine_function<R, Args...>(std::move(fn)));
    return writer<R, Args...>(ag_, std::move(name), std::move(f), std::move(opts.invalidates));
  }

  /// Opens a session named `name` (names need not be unique: the id is), with
  /// the agent's loop guard rules or `guard`. The id (the name, a dot and 16
  /// hexadecimal digits) is part of the keys of the session's read tools:
  /// with `tool_scope::session`, a call whose key then exceeds the cache's
  /// `max_key_length` fails with `error::invalid_key`, so keep names short.
  /// @throws boost::system::system_error with `error::invalid_option` for
  ///         impossible rules (`cycle_repeats` below 2 or above 1024 with
  ///         cycle detection on, `max_cycle_length` above 64).
  session open_session(std::string name, std::optional<loop_guard_options> guard = {}) {
    const loop_guard_options g = guard ? *guard : ag_->opts.loop_guard;
    check_guard(g);
    std::uint64_t r = 0;
    {
      std::lock_guard lk(ag_->mu);
      r = ag_->rng();
    }
    std::string id = name;
    id += '.';
    static constexpr char digits[] = "0123456789abcdef";
    for (int shift = 60; shift >= 0; shift -= 4) id += digits[(r >> shift) & 15];
    ag_->n.sessions_opened.fetch_add(1, std::memory_order_relaxed);
    return session(std::make_shared<detail::agent_session_state>(std::move(name), std::move(id), g), ag_);
  }

  /// Invalidates resources outside any tool (as a write tool does before it runs).
  /// @par Completion signature
  /// @code void(std::exception_ptr error) @endcode
  template <boost::asio::completion_token_for<void(std::exception_ptr)> CompletionToken>
  auto async_invalidate(std::vector<std::string> resources, CompletionToken&& token) {
    ag_->n.invalidations.fetch_add(resources.size(), std::memory_order_relaxed);
    return ag_->registry->async_invalidate(std::move(resources), std::forward<CompletionToken>(token));
  }

  /// Counters of every call, in and out of sessions.
  agent_stats stats() const noexcept { return ag_->n.snapshot(); }
  const std::shared_ptr<tag_registry>& registry() const noexcept { return ag_->registry; }

 private:
  static void check_guard(const loop_guard_options& g) {
    if (g.max_cycle_length >= 2 && g.cycle_repeats < 2)
      detail::throw_invalid_option("loop_guard_options::cycle_repeats must be at least 2");
    if (g.max_cycle_length >= 2 && g.cycle_repeats > 1024)
      detail::throw_invalid_option("loop_guard_options::cycle_repeats is at most 1024");
    if (g.max_cycle_length > 64) detail::throw_invalid_option("loop_guard_options::max_cycle_length is at most 64");
  }

  std::shared_ptr<shared> ag_;
};

}  // namespace cacheflight

#endif
