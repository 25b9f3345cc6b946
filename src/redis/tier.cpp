// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#include <cacheflight/detail/block_cache.hpp>
#include <cacheflight/detail/with_allocator.hpp>
#include <cacheflight/error.hpp>
#include <cacheflight/redis/tier.hpp>

#include "../common/shutdown_registry.hpp"
#include "exec_cancel.hpp"
#include "options_check.hpp"
#include "strand_hop.hpp"

#include <boost/asio/steady_timer.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>

#include <algorithm>
#include <cstdio>
#include <random>
#include <atomic>
#include <list>
#include <optional>
#include <unordered_map>
#include <vector>

namespace cacheflight::redis {

namespace asio = boost::asio;
using boost::system::error_code;
using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

namespace {

// A glob pattern matching every key that starts with `prefix`.
std::string prefix_pattern(std::string_view prefix) {
  std::string out;
  out.reserve(prefix.size() + 1);
  for (char c : prefix) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('*');
  return out;
}

// Whether an error reply refuses its one command (`WRONGTYPE` for a key
// another application keeps a list under, `NOPERM`, a script's own error) of
// a server that is up, rather than saying the server cannot serve now
// (loading its data, busy with a script, a replica or a master without its
// replicas, out of memory, unable to persist, a cluster slot unavailable):
// only the second counts toward the breaker. Either fails the command. Redis
// before 7 reports an error raised inside a script as "ERR Error running
// script ...: -OOM ...": the code inside counts as the reply's.
bool refuses_one(const reply& r) {
  if (!r.is_error()) return false;
  static constexpr std::string_view codes[] = {"LOADING", "BUSY",    "MASTERDOWN", "READONLY",   "NOREPLICAS",
                                               "OOM",     "MISCONF", "TRYAGAIN",   "CLUSTERDOWN"};
  const std::string_view text(r.str);
  const bool in_script = text.substr(0, 3) == "ERR" && text.find("Error running script") != std::string_view::npos;
  for (std::string_view c : codes) {
    if (text.substr(0, c.size()) == c && (text.size() == c.size() || text[c.size()] == ' ')) return false;
    if (in_script)
      for (auto at = text.find(c); at != std::string_view::npos; at = text.find(c, at + 1))
        if (at > 0 && text[at - 1] == '-' && (at + c.size() == text.size() || text[at + c.size()] == ' '))
          return false;
  }
  return true;
}

// What a write of a batch came to, besides its error code.
constexpr char lost_lease = 1;     // a fill whose lease was lost: not written
constexpr char refused_write = 2;  // an error reply of a server that is up

// A read's cancellation, handed to the strand: the signal the command in
// flight listens to, and whether it was emitted (a read waiting for a lease's
// fill checks it between its steps).
struct read_cancel : asio::cancellation_signal {
  bool requested = false;  // on the strand
};

// The lease key of a value key: in the value key's hash slot, and outside
// the prefix (so that a lease is not reported as a change of a cached key):
// `{<tag>}:lease:<key>` for a key with a hash tag, else `{<key>}:lease`; none
// when that cannot be, with Cluster (a key with a `}` but no hash tag).
std::optional<std::string> lease_key_of(const std::string& k, bool cluster) {
  const auto open = k.find('{');
  if (open != std::string::npos) {
    const auto close = k.find('}', open + 1);
    if (close != std::string::npos && close > open + 1) return k.substr(open, close - open + 1) + ":lease:" + k;
  }
  if (k.find('}') == std::string::npos) return "{" + k + "}:lease";
  if (!cluster) return "cflease:" + k;
  return std::nullopt;
}

// KEYS: value, lease. ARGV: token, lease TTL (ms), the token of a lease of
// this instance's for the key (or empty). {1, value}, {2} (the lease is
// taken), {4} (this instance's own lease, renewed: its load was voided before
// it could fill), or {3, the lease's PTTL}.
constexpr const char* get_or_lease_script =
    "local v = redis.call('GET', KEYS[1]) "
    "if v then return {1, v} end "
    "if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end "
    "if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then "
    "redis.call('PEXPIRE', KEYS[2], ARGV[2]) return {4} end "
    "return {3, redis.call('PTTL', KEYS[2])}";

// KEYS: value, lease. ARGV: token, bytes, TTL (ms; empty: none). 1 when
// written, 0 when the lease no longer holds the token.
constexpr const char* fill_script =
    "if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end "
    "if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[2]) "
    "else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end "
    "redis.call('DEL', KEYS[2]) return 1";

// Every write with `invalidation_mode::publish`: the write and its message
// together, so that a write that happened is always announced. KEYS: value,
// and the lease with leases. ARGV: the operation (s: a set, which voids the
// lease; f: a fill under the lease whose token is ARGV[2]; p: a plain fill;
// e: an erase, which voids the lease), bytes, TTL (ms; empty: none), channel,
// message. 1 when written, 0 when a fill's lease was lost.
constexpr const char* publish_write_script =
    "local op = ARGV[1] "
    "if op == 'f' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end "
    "if op == 'e' then redis.call('UNLINK', KEYS[1]) "
    "elseif ARGV[4] == '' then redis.call('SET', KEYS[1], ARGV[3]) "
    "else redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4]) end "
    "if KEYS[2] and op ~= 'p' then redis.call('DEL', KEYS[2]) end "
    "redis.call('PUBLISH', ARGV[5], ARGV[6]) "
    "return 1";

std::string random_hex(std::mt19937_64& rng) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
  return std::string(buf, 16);
}

}  // namespace

struct tier::impl : std::enable_shared_from_this<impl> {
  using get_handler = asio::any_completion_handler<cacheflight::tier::get_signature>;
  using done_handler = asio::any_completion_handler<cacheflight::tier::done_signature>;

  impl(std::shared_ptr<client> c, tier_options o, std::shared_ptr<cacheflight::tier::listener_set> l)
      : cl(std::move(c)), strand(cl->get_strand()), opts(std::move(o)), cluster(!cl->options().cluster.nodes.empty()),
        open_for(opts.breaker_min), listeners(std::move(l)), sub_timer(strand), sub_backoff(cl->options().reconnect_min),
        rng(std::random_device{}()) {
    instance = random_hex(rng);
    channel = opts.channel.empty() ? opts.prefix + "invalidate" : opts.channel;
  }

  // A write waiting in the queue: the latest for its key (set or erase), or a
  // clear. Its waiters complete when it is done or given up.
  struct write_op {
    enum class kind { set, erase, clear } what;
    std::string key;  // with the prefix
    std::string bytes;
    milliseconds ttl{};
    std::vector<done_handler> waiters;
    bool fill = false;   // a loaded value (`async_fill`), not an explicit set
    std::string token;   // a fill's lease token: written only while the lease holds it
    bool void_lease = false;  // a set, or a write that took an erase's place: removes the key's lease
  };
  using op_list = std::list<write_op>;

  std::shared_ptr<client> cl;
  asio::strand<asio::any_io_executor> strand;
  tier_options opts;
  // With Cluster, the breaker is per master, in the client (a master that
  // cannot be reached fails its slots at once): the tier's own stays closed.
  const bool cluster;
  bool stopped = false;
  std::uint64_t hook_claim = 0;  // the client's connection hooks, with tracking
  std::string get_cmd;  // a plain read's GET, serialized (see get())

  // The breaker, on the strand. `gen` changes with every state change: an
  // operation's outcome counts only if the state it was admitted in still holds.
  breaker_state state = breaker_state::closed;
  std::uint64_t gen = 0;
  unsigned failures = 0;
  milliseconds open_for;  // the next open period
  steady::time_point reopen_at{};
  bool probing = false;

  // The write queue, on the strand: unsent operations in order, and the unsent
  // set or erase of each key.
  op_list queue;
  std::unordered_map<std::string_view, op_list::iterator> index;
  std::size_t queued_sets = 0;    // sets in `queue`: the bound applies to them
  std::size_t queued_clears = 0;  // clears in `queue`
  bool writing = false;
  bool clearing = false;          // the batch being written is a clear
  // With Cluster, the batch being written, by key: its bytes, or nothing for an
  // erase. A GET may overtake a write there (a write waits out a redirection
  // while the GET goes to the slot's owner), so reads are answered from here.
  std::unordered_map<std::string, std::optional<std::string>> sent;

  // Published for health().
  std::atomic<breaker_state> state_pub{breaker_state::closed};
  std::atomic<std::size_t> queued_pub{0};
  std::atomic<std::uint64_t> writes{0}, dropped{0};
  std::atomic<std::uint64_t> invalidations{0}, link_flushes{0}, leases_granted{0}, leases_waited{0},
      leases_expired{0}, leases_lost{0};

  // --- across instances, on the strand --------------------------------------
  std::shared_ptr<cacheflight::tier::listener_set> listeners;
  std::shared_ptr<connection> sub;  // the invalidation connection
  asio::steady_timer sub_timer;     // its reconnect
  milliseconds sub_backoff;
  std::string sub_id;               // its CLIENT ID
  std::string sub_server;           // the server it reaches (`server_now()` when it was opened)
  bool sub_up = false;              // subscribed
  bool linked_state = false;        // invalidations flowing (published in `linked_pub`)
  std::atomic<bool> linked_pub{false};
  std::mt19937_64 rng;
  std::string instance;             // this tier's id in `publish` messages
  std::string channel;              // `publish`'s channel

  // Leases this tier took, by value key: the token, or empty once voided by a
  // set or erase through this tier (its fill is then dropped); and when.
  struct held_lease {
    std::string token;
    steady::time_point taken;
  };
  std::unordered_map<std::string, held_lease> held;
  std::size_t held_checked_at = 64;  // `held`'s size at which expired leases are next swept

  // A miss waiting for another instance's fill.
  struct lease_wait {
    explicit lease_wait(asio::strand<asio::any_io_executor>& s) : timer(s) {}
    std::optional<get_handler> h;
    std::shared_ptr<read_cancel> cancel;
    asio::steady_timer timer;
    std::string key, lease;
  };
  std::unordered_map<std::string, std::vector<std::shared_ptr<lease_wait>>> waits;

  // With tracking: this instance's fill scripts whose report is still to
  // come, by key (see `invalidated`): how many, and the last one's bytes' hash.
  struct echo {
    std::size_t count = 0;
    std::size_t digest = 0;
  };
  std::unordered_map<std::string, echo> echoes;

  std::string full(std::string_view key) const {
    std::string k;
    k.reserve(opts.prefix.size() + key.size());
    k.append(opts.prefix).append(key);
    return k;
  }

  // Completes `h` on its associated executor (where its cancellation slot is
  // also cleared, in the context that emits on it).
  // The handler's executor is asked for with a marker as the candidate: one
  // without an executor of its own runs on the strand, found out without
  // wrapping the strand into an any_completion_executor (too large for its
  // own storage: each wrap would allocate).
  template <class Handler, class... Args>
  void complete(Handler h, Args... args) {
    asio::any_completion_executor ex = asio::get_associated_executor(h, asio::any_completion_executor(detail::no_executor{}));
    auto run = [h = std::move(h), ... a = std::move(args)]() mutable {
      asio::get_associated_cancellation_slot(h).clear();
      std::move(h)(std::move(a)...);
    };
    if (ex.target<detail::no_executor>())
      detail::dispatch_on(strand, std::move(run));
    else if (const auto* io = ex.target<asio::io_context::executor_type>())
      // Queued, if it must be, in the memory of the threads' block caches
      // (the type-erased executor would take Asio's recycled memory instead).
      asio::dispatch(*io, cacheflight::detail::allocated(std::move(run), cacheflight::detail::block_allocator<void>{}));
    else
      asio::dispatch(ex, std::move(run));
  }

  // --- the breaker ---------------------------------------------------------

  void set_state(breaker_state s) {
    if (s == state) return;
    state = s;
    ++gen;
    state_pub.store(s, std::memory_order_relaxed);
    if (opts.on_breaker) {
      try {
        opts.on_breaker(s);
      } catch (...) {
        // Documented: discarded.
      }
    }
  }

  bool open_now() {
    if (state == breaker_state::open && steady::now() >= reopen_at) set_state(breaker_state::half_open);
    return state == breaker_state::open || (state == breaker_state::half_open && probing);
  }

  // Whether an operation may be sent now, and the generation it is sent in;
  // in half-open state, the first one becomes the probe.
  std::optional<std::uint64_t> admit() {
    if (open_now()) return std::nullopt;
    if (state == breaker_state::half_open) probing = true;
    return gen;
  }

  void succeeded() {
    failures = 0;
    probing = false;
    open_for = opts.breaker_min;
    set_state(breaker_state::closed);
  }

  void failed(const error_code& ec) {
    probing = false;
    if (state == breaker_state::open) return;
    if (state == breaker_state::half_open || ec == error::not_connected || ++failures >= opts.breaker_failures) trip();
  }

  void trip() {
    failures = 0;
    reopen_at = steady::now() + open_for;
    open_for = std::min(open_for * 2, opts.breaker_max);
    set_state(breaker_state::open);
    fail_queue(make_error_code(error::tier_unavailable));
  }

  // Accounts for the outcome of an operation admitted in generation `g`. One
  // admitted before the state changed says nothing of the present; a
  // cancellation by its caller says nothing of the server.
  void outcome(const error_code& ec, std::uint64_t g) {
    if (g != gen) return;
    if (ec && cluster) return;
    if (ec == asio::error::operation_aborted)
      probing = false;
    else if (ec)
      failed(ec);
    else
      succeeded();
  }

  // --- reads ---------------------------------------------------------------

  // Completes a read without bytes: a miss (`ec` empty) or a failure.
  void end_read(get_handler h, error_code ec) { complete(std::move(h), ec, std::optional<std::string>{}); }

  // Completes a plain read: the reply of its GET.
  void read_reply(get_handler h, std::uint64_t g, error_code ec, reply r) {
    std::optional<std::string> v;
    bool refused = false;  // the server refused the command, and is up
    if (!ec) {
      if (r.type == reply::kind::bulk)
        v = std::move(r.str);
      else if (r.type != reply::kind::nil) {
        ec = make_error_code(error::protocol_error);
        refused = refuses_one(r);
      }
    }
    outcome(refused ? error_code{} : ec, g);
    complete(std::move(h), ec, std::move(v));
  }

  // A plain read's GET sent serialized: its state until the reply.
  struct read_op {
    std::shared_ptr<impl> self;
    get_handler h;
    std::uint64_t g;
  };

  // A read. With leases, `lease_cancel`, when set, is emitted on the strand
  // when the caller cancels; without, `cancel`, when set, is the caller's
  // cancellation hooked for the command itself.
  void get(std::string key, get_handler h, std::shared_ptr<read_cancel> lease_cancel,
           std::shared_ptr<detail::exec_cancel> cancel) {
    if (stopped) return end_read(std::move(h), error_code(asio::error::operation_aborted));
    // The command first: its key (with the prefix) is the one looked up.
    // Read your writes: a write of the key not sent yet, or a clear not
    // finished, is what Redis will hold; a write already sent is ahead of
    // this GET on the connection.
    // Serialized in a buffer kept for its capacity, and copied into the
    // connection's next write: no allocation of its own. get() is never
    // re-entered while it uses the buffer: a read started by a completion
    // run from here is posted to the strand (do_get).
    std::string& cmd = get_cmd;
    cmd.clear();
    cmd.append(std::string_view("*2\r\n$3\r\nGET\r\n"));
    const std::size_t at = detail::append_bulk(cmd, opts.prefix, key);
    const std::string_view k(cmd.data() + at, opts.prefix.size() + key.size());
    if (auto it = index.find(k); it != index.end()) {
      const write_op& op = *it->second;
      std::optional<std::string> v;
      if (op.what == write_op::kind::set) v = op.bytes;
      return complete(std::move(h), error_code{}, std::move(v));
    }
    if (queued_clears != 0 || clearing) return end_read(std::move(h), error_code{});
    if (!sent.empty())
      if (auto it = sent.find(std::string(k)); it != sent.end())
        return complete(std::move(h), error_code{}, std::optional<std::string>(it->second));
    const auto g = admit();
    if (!g) return end_read(std::move(h), make_error_code(error::tier_unavailable));
    if (opts.leases) {
      if (auto lk = lease_key_of(std::string(k), cluster))
        return lease_get(std::string(k), std::move(*lk), std::move(h), std::move(lease_cancel), *g, false);
      // A key that can have no lease (see lease_key_of): a plain GET.
      asio::cancellation_slot slot = lease_cancel ? lease_cancel->slot() : asio::cancellation_slot();
      // No executor bound: the client completes it on its strand, which is
      // this tier's, without wrapping one.
      cl->async_exec({"GET", k},
                     asio::bind_cancellation_slot(slot, [self = shared_from_this(), h = std::move(h), lease_cancel,
                                                         g = *g](error_code ec, reply r) mutable {
                       self->read_reply(std::move(h), g, ec, std::move(r));
                     }));
      return;
    }
    if (cluster) {
      cl->exec_on_strand(detail::command_bytes({"GET", k}),
                         [self = shared_from_this(), h = std::move(h), g = *g](error_code ec, reply r) mutable {
                           self->read_reply(std::move(h), g, ec, std::move(r));
                         },
                         std::move(cancel));
      return;
    }
    auto op = std::allocate_shared<read_op>(cacheflight::detail::block_allocator<read_op>{},
                                            read_op{shared_from_this(), std::move(h), *g});
    cl->exec_serialized(
        cmd,
        [](const std::shared_ptr<void>& ctx, error_code ec, reply r) {
          auto& o = *static_cast<read_op*>(ctx.get());
          o.self->read_reply(std::move(o.h), o.g, ec, std::move(r));
        },
        std::move(op), cancel);
  }

  // --- leases --------------------------------------------------------------

  // A miss with leases: the value, or the lease, or a wait for another
  // instance's fill. `waited`: this miss waited already.
  void lease_get(std::string k, std::string lk, get_handler h, std::shared_ptr<read_cancel> cancel,
                 std::uint64_t g, bool waited) {
    std::string token = random_hex(rng);
    asio::cancellation_slot slot = cancel ? cancel->slot() : asio::cancellation_slot();
    std::string mine;
    if (auto it = held.find(k); it != held.end()) mine = it->second.token;
    std::vector<std::string> args{"EVAL", get_or_lease_script, "2", k, lk, token, std::to_string(opts.lease_ttl.count()),
                                  std::move(mine)};
    cl->async_exec(
        std::move(args),
        asio::bind_cancellation_slot(slot, [self = shared_from_this(), h = std::move(h), cancel, g, waited,
                                            k = std::move(k), lk = std::move(lk),
                                            token = std::move(token)](error_code ec, reply r) mutable {
          const bool shaped = !ec && r.type == reply::kind::array && !r.elements.empty() &&
                              r.elements[0].type == reply::kind::integer;
          const bool refused = !ec && refuses_one(r);
          if (!ec && !shaped) ec = make_error_code(error::protocol_error);
          self->outcome(refused ? error_code{} : ec, g);
          if (ec) return self->end_read(std::move(h), ec);
          const long long what = r.elements[0].integer;
          if (what == 1 && r.elements.size() == 2 && r.elements[1].type == reply::kind::bulk)
            return self->complete(std::move(h), error_code{}, std::optional<std::string>(std::move(r.elements[1].str)));
          if (what == 2) {
            self->leases_granted.fetch_add(1, std::memory_order_relaxed);
            if (waited) self->leases_expired.fetch_add(1, std::memory_order_relaxed);
            self->hold(k, std::move(token));
            return self->end_read(std::move(h), error_code{});
          }
          if (what != 3 && what != 4)
            return self->end_read(std::move(h), make_error_code(error::protocol_error));
          // The lease is this instance's own, taken by a load that was voided
          // before it could fill (memory flushed, the key erased): this load
          // takes it over, renewed, rather than wait for it to expire.
          if (what == 4) {
            if (auto it = self->held.find(k); it != self->held.end()) it->second.taken = steady::now();
            return self->end_read(std::move(h), error_code{});
          }
          if (!waited) self->leases_waited.fetch_add(1, std::memory_order_relaxed);
          long long pttl = r.elements.size() >= 2 && r.elements[1].type == reply::kind::integer ? r.elements[1].integer : 0;
          self->wait_for_fill(std::move(k), std::move(lk), std::move(h), std::move(cancel), pttl);
        }));
  }

  void hold(const std::string& k, std::string token) {
    const auto now = steady::now();
    if (held.size() >= held_checked_at) {  // leases long expired: their fills will not come
      std::erase_if(held, [&](const auto& e) { return now - e.second.taken > 2 * opts.lease_ttl; });
      held_checked_at = std::max<std::size_t>(64, held.size() * 2);
    }
    held.insert_or_assign(k, held_lease{std::move(token), now});
  }

  // Waits for a message about `k` on the invalidation channel, for the
  // lease's end, or `lease_poll`, whichever comes first, then asks again.
  void wait_for_fill(std::string k, std::string lk, get_handler h, std::shared_ptr<read_cancel> cancel,
                     long long pttl) {
    if (stopped || (cancel && cancel->requested))
      return end_read(std::move(h), error_code(asio::error::operation_aborted));
    auto w = std::make_shared<lease_wait>(strand);
    w->h.emplace(std::move(h));
    w->cancel = std::move(cancel);
    w->key = k;
    w->lease = std::move(lk);
    milliseconds d = opts.lease_poll;
    if (pttl > 0 && milliseconds(pttl + 1) < d) d = milliseconds(pttl + 1);
    w->timer.expires_after(d);
    if (w->cancel)
      w->cancel->slot().assign([ws = weak_from_this(), ww = std::weak_ptr<lease_wait>(w)](asio::cancellation_type_t) {
        auto self = ws.lock();
        auto w = ww.lock();
        if (!self || !w || !w->h) return;
        self->drop_wait(*w);
        auto h = std::move(*w->h);
        w->h.reset();
        w->timer.cancel();
        self->end_read(std::move(h), error_code(asio::error::operation_aborted));
      });
    w->timer.async_wait(asio::bind_executor(strand, [self = shared_from_this(), w](error_code) { self->retry(w); }));
    waits[std::move(k)].push_back(std::move(w));
  }

  void drop_wait(const lease_wait& w) {
    auto it = waits.find(w.key);
    if (it == waits.end()) return;
    std::erase_if(it->second, [&](const std::shared_ptr<lease_wait>& p) { return p.get() == &w; });
    if (it->second.empty()) waits.erase(it);
  }

  void retry(const std::shared_ptr<lease_wait>& w) {
    if (!w->h) return;  // cancelled, or woken already
    drop_wait(*w);
    auto h = std::move(*w->h);
    w->h.reset();
    if (w->cancel) w->cancel->slot().clear();
    if (stopped) return end_read(std::move(h), error_code(asio::error::operation_aborted));
    const auto g = admit();
    if (!g) return end_read(std::move(h), make_error_code(error::tier_unavailable));
    lease_get(std::move(w->key), std::move(w->lease), std::move(h), std::move(w->cancel), *g, true);
  }

  // A message about `k` (with the prefix): its waiting misses ask again now.
  void wake(const std::string& k) {
    auto it = waits.find(k);
    if (it == waits.end()) return;
    for (auto& w : it->second) w->timer.cancel();
  }

  // --- writes --------------------------------------------------------------

  void publish_queue() { queued_pub.store(queue.size(), std::memory_order_relaxed); }

  void give_up(done_handler h, error_code ec) {
    dropped.fetch_add(1, std::memory_order_relaxed);
    complete(std::move(h), ec);
  }

  // An explicit set, or with `fill` a loaded value (see `tier::async_fill`).
  void put(std::string key, std::string bytes, milliseconds ttl, done_handler h, bool fill = false) {
    if (stopped) return give_up(std::move(h), asio::error::operation_aborted);
    if (open_now()) return give_up(std::move(h), make_error_code(error::tier_unavailable));
    std::string k = full(key);
    std::string token;
    if (opts.leases && fill)
      if (auto it = held.find(k); it != held.end()) {
        token = std::move(it->second.token);
        held.erase(it);
        // A set or an erase of the key is queued, unsent: it removes the lease
        // before this fill would be written, which it supersedes. (Once sent,
        // Redis itself refuses the fill: the lease is gone.)
        if (auto q = index.find(k); q != index.end() && q->second->void_lease) {
          leases_lost.fetch_add(1, std::memory_order_relaxed);
          return complete(std::move(h), error_code{});
        }
      }
    if (auto it = index.find(k); it != index.end()) {  // the last write wins, in the older one's place
      write_op& op = *it->second;
      if (op.what == write_op::kind::erase) {
        // A set taking an erase's place is one more queued set: bounded too.
        // Refused, the erase stays: Redis holds nothing for the key.
        if (queued_sets >= opts.max_queued_writes) return give_up(std::move(h), make_error_code(error::queue_full));
        ++queued_sets;
      }
      // A write taking the place of a set or an erase still removes the lease
      // they would have removed.
      op.void_lease = op.void_lease || op.what == write_op::kind::erase || !fill;
      op.what = write_op::kind::set;
      op.bytes = std::move(bytes);
      op.ttl = ttl;
      op.fill = fill;
      op.token = std::move(token);
      op.waiters.push_back(std::move(h));
      return;
    }
    if (queued_sets >= opts.max_queued_writes) return give_up(std::move(h), make_error_code(error::queue_full));
    enqueue(write_op{write_op::kind::set, std::move(k), std::move(bytes), ttl, {}, fill, std::move(token), !fill},
            std::move(h));
    ++queued_sets;
  }

  void erase(std::string key, done_handler h) {
    if (stopped) return give_up(std::move(h), asio::error::operation_aborted);
    if (open_now()) return give_up(std::move(h), make_error_code(error::tier_unavailable));
    std::string k = full(key);
    if (auto it = index.find(k); it != index.end()) {  // replaces the unsent set, in its place
      write_op& op = *it->second;
      if (op.what == write_op::kind::set) --queued_sets;
      op.what = write_op::kind::erase;
      op.bytes.clear();
      op.fill = false;
      op.token.clear();
      op.void_lease = true;
      op.waiters.push_back(std::move(h));
      return;
    }
    // Erases are not refused: each has a caller waiting for it, or repairs a
    // write that an invalidation overtook; refusing one would leave Redis
    // holding a value memory dropped.
    enqueue(write_op{write_op::kind::erase, std::move(k), {}, {}, {}, false, {}, true}, std::move(h));
  }

  void clear(done_handler h) {
    if (stopped) return give_up(std::move(h), asio::error::operation_aborted);
    if (open_now()) return give_up(std::move(h), make_error_code(error::tier_unavailable));
    // Every unsent write is superseded by the clear: its waiters complete with it.
    write_op c{write_op::kind::clear, {}, {}, {}, {}, false, {}, false};
    for (write_op& op : queue)
      for (done_handler& w : op.waiters) c.waiters.emplace_back(std::move(w));
    queue.clear();
    index.clear();
    queued_sets = 0;
    queued_clears = 1;
    enqueue(std::move(c), std::move(h));
  }

  void enqueue(write_op op, done_handler h) {
    op.waiters.emplace_back(std::move(h));
    queue.push_back(std::move(op));
    if (queue.back().what != write_op::kind::clear) index.emplace(queue.back().key, std::prev(queue.end()));
    publish_queue();
    pump();
  }

  void fail_queue(error_code ec) {
    for (write_op& op : queue) {
      dropped.fetch_add(1, std::memory_order_relaxed);
      for (done_handler& w : op.waiters) complete(std::move(w), ec);
    }
    queue.clear();
    index.clear();
    queued_sets = 0;
    queued_clears = 0;
    publish_queue();
  }

  // Sends the next batch when none is in flight: one batch at a time keeps the
  // order of writes across reconnects.
  void pump() {
    if (writing || queue.empty() || stopped) return;
    const auto g = admit();
    if (!g) return fail_queue(make_error_code(error::tier_unavailable));
    writing = true;
    auto batch = std::make_shared<op_list>();
    if (queue.front().what == write_op::kind::clear) {
      batch->splice(batch->end(), queue, queue.begin());
      --queued_clears;
      clearing = true;
      publish_queue();
      return scan_all(batch, *g);
    }
    while (!queue.empty() && batch->size() < opts.write_batch && queue.front().what != write_op::kind::clear) {
      index.erase(queue.front().key);
      if (queue.front().what == write_op::kind::set) --queued_sets;
      batch->splice(batch->end(), queue, queue.begin());
    }
    publish_queue();
    auto results = std::make_shared<std::vector<error_code>>(batch->size());
    // Per write: `lost_lease` (a fill whose lease was lost), `refused_write`
    // (an error reply of a server that is up).
    auto marks = std::make_shared<std::vector<char>>(batch->size());
    auto remaining = std::make_shared<std::size_t>(batch->size());
    std::size_t i = 0;
    for (write_op& op : *batch) {
      if (cluster)
        sent.insert_or_assign(op.key, op.what == write_op::kind::set ? std::optional<std::string>(op.bytes)
                                                                     : std::optional<std::string>());
      const std::optional<std::string> lk = opts.leases ? lease_key_of(op.key, cluster) : std::nullopt;
      const std::string px =
          op.ttl == milliseconds::max() ? std::string() : std::to_string(std::max<long long>(op.ttl.count(), 1));
      // s: a set (voids the lease), f: a fill under its lease, p: a plain fill, e: an erase.
      const char kind = op.what == write_op::kind::erase ? 'e'
                        : !op.token.empty() && lk   ? 'f'
                        : op.void_lease             ? 's'
                                                    : 'p';
      std::vector<std::string> args;
      if (opts.invalidation == invalidation_mode::publish) {
        args = {"EVAL", publish_write_script, lk ? "2" : "1", op.key};
        if (lk) args.push_back(*lk);
        args.push_back(std::string(1, kind));
        args.push_back(op.token);
        args.push_back(std::move(op.bytes));
        args.push_back(px);
        args.push_back(channel);
        args.push_back(instance + op.key);
      } else if (kind == 'f') {
        if (opts.invalidation == invalidation_mode::tracking) {
          echo& e = echoes[op.key];
          ++e.count;
          e.digest = std::hash<std::string>{}(op.bytes);
        }
        args = {"EVAL", fill_script, "2", op.key, *lk, op.token, std::move(op.bytes), px};
      } else if (kind == 'e') {
        args = {"UNLINK", op.key};
        if (lk) args.push_back(*lk);  // the lease goes with the value: a fill in flight will not land
      } else {
        // The lease is removed before the value is set, by plain commands (a
        // script's writes would be reported back to this instance despite
        // NOLOOP). A fill between the two finds no lease and does not land;
        // a lease taken between them is for a load that starts after this
        // set's source of truth was written, whose fill may land.
        if (kind == 's' && lk)
          cl->async_exec({"DEL", *lk}, asio::bind_executor(strand, [](error_code, reply) {}));
        args.reserve(5);
        args.emplace_back("SET");
        args.push_back(op.key);
        args.push_back(std::move(op.bytes));
        if (!px.empty()) {
          args.emplace_back("PX");
          args.push_back(px);
        }
      }
      const bool conditional = kind == 'f' || opts.invalidation == invalidation_mode::publish;
      const bool echoed = kind == 'f' && opts.invalidation == invalidation_mode::tracking;
      cl->async_exec(std::move(args), asio::bind_executor(strand, [self = shared_from_this(), batch, results,
                                                                   remaining, marks, i, g = *g, conditional, echoed,
                                                                   key = op.key](error_code ec, reply r) {
                       if (!ec && r.is_error()) {
                         ec = make_error_code(error::protocol_error);
                         if (refuses_one(r)) (*marks)[i] |= refused_write;
                       }
                       // No write, no report to expect (after a failure, one that comes is
                       // passed on).
                       if (echoed && (ec || (r.type == reply::kind::integer && r.integer == 0)))
                         if (auto e = self->echoes.find(key); e != self->echoes.end() && --e->second.count == 0)
                           self->echoes.erase(e);
                       if (!ec && conditional && r.type == reply::kind::integer && r.integer == 0) {
                         // The fill's lease was voided or expired: a newer value stands (or
                         // none), which this instance's memory must not outlast.
                         self->leases_lost.fetch_add(1, std::memory_order_relaxed);
                         (*marks)[i] |= lost_lease;
                         self->listeners->invalidate(std::string_view(key).substr(self->opts.prefix.size()));
                       }
                       (*results)[i] = ec;
                       if (--*remaining == 0) self->batch_done(*batch, *results, *marks, g);
                     }));
      ++i;
    }
  }

  void batch_done(op_list& batch, const std::vector<error_code>& results, const std::vector<char>& marks,
                  std::uint64_t g) {
    writing = false;
    sent.clear();
    error_code counted;  // the batch's first failure that the breaker counts
    std::size_t i = 0;
    for (write_op& op : batch) {
      const char flags = marks[i];
      const error_code ec = results[i++];
      if (ec) {
        dropped.fetch_add(1, std::memory_order_relaxed);
        if (!counted && !(flags & refused_write)) counted = ec;
      } else if (!(flags & lost_lease)) {  // a lost fill is counted in leases_lost only
        writes.fetch_add(1, std::memory_order_relaxed);
      }
      for (done_handler& w : op.waiters) complete(std::move(w), ec);
    }
    outcome(counted, g);
    pump();
  }

  // Removes the prefix's keys: SCAN with MATCH, UNLINK each page; with
  // Cluster, on every master of the map in turn, each key unlinked on its own
  // (a page's keys are in different slots), pipelined.
  void scan_all(std::shared_ptr<op_list> batch, std::uint64_t g) {
    auto nodes = std::make_shared<std::vector<std::string>>();
    if (cluster)
      *nodes = cl->masters();
    else
      nodes->emplace_back();
    if (nodes->empty()) return clear_done(*batch, make_error_code(error::not_connected), g);
    scan(std::move(batch), std::move(nodes), 0, "0", g);
  }

  void scan(std::shared_ptr<op_list> batch, std::shared_ptr<std::vector<std::string>> nodes, std::size_t i,
            std::string cursor, std::uint64_t g) {
    cl->async_exec_at(
        (*nodes)[i], {"SCAN", std::move(cursor), "MATCH", prefix_pattern(opts.prefix), "COUNT", "1000"},
        asio::bind_executor(strand, [self = shared_from_this(), batch, nodes, i, g](error_code ec, reply r) {
          const bool refused = !ec && refuses_one(r);
          if (!ec && (r.type != reply::kind::array || r.elements.size() != 2 ||
                      r.elements[0].type != reply::kind::bulk || r.elements[1].type != reply::kind::array))
            ec = make_error_code(error::protocol_error);
          if (ec) return self->clear_done(*batch, ec, g, refused);
          std::string next = std::move(r.elements[0].str);
          // After this page: the next page, the next node, or done.
          auto then = [self, batch, nodes, i, g, next](error_code ec, bool refused) {
            if (ec) return self->clear_done(*batch, ec, g, refused);
            if (next != "0") return self->scan(batch, nodes, i, next, g);
            if (i + 1 < nodes->size()) return self->scan(batch, nodes, i + 1, "0", g);
            self->clear_done(*batch, {}, g);
          };
          std::vector<std::vector<std::string>> commands;
          for (reply& k : r.elements[1].elements) {
            if (k.type != reply::kind::bulk) continue;
            if (self->cluster || commands.empty()) commands.push_back({"UNLINK"});
            commands.back().push_back(std::move(k.str));
          }
          if (commands.empty()) return then({}, false);
          auto remaining = std::make_shared<std::size_t>(commands.size());
          auto first = std::make_shared<std::pair<error_code, bool>>();  // the first failure, and if it was refused
          for (auto& args : commands)
            self->cl->async_exec(std::move(args), asio::bind_executor(self->strand, [remaining, first, then](
                                                                                      error_code ec, reply r) {
                                   const bool refused = !ec && refuses_one(r);
                                   if (!ec && r.is_error()) ec = make_error_code(error::protocol_error);
                                   if (ec && !first->first) *first = {ec, refused};
                                   if (--*remaining == 0) then(first->first, first->second);
                                 }));
        }));
  }

  // `refused`: `ec` is an error reply of a server that is up (see refuses_one).
  void clear_done(op_list& batch, error_code ec, std::uint64_t g, bool refused = false) {
    writing = false;
    clearing = false;
    announce_clear();  // a clear that failed part of the way changed something too
    (ec ? dropped : writes).fetch_add(1, std::memory_order_relaxed);
    for (done_handler& w : batch.front().waiters) complete(std::move(w), ec);
    outcome(refused ? error_code{} : ec, g);
    pump();
  }

  // --- invalidation across instances ---------------------------------------

  // With `publish`: tells the other instances that everything may have
  // changed (a clear; other writes publish in their own script). Its outcome
  // does not change the clear's.
  void announce_clear() {
    if (opts.invalidation != invalidation_mode::publish) return;
    cl->async_exec({"PUBLISH", channel, instance}, asio::bind_executor(strand, [](error_code, reply) {}));
  }

  void set_linked(bool up) {
    linked_state = up;
    linked_pub.store(up, std::memory_order_relaxed);
  }

  // Invalidations may have been missed: the caches empty their memory.
  void flush_caches() {
    link_flushes.fetch_add(1, std::memory_order_relaxed);
    listeners->invalidate_all();
  }

  void link_lost() {
    echoes.clear();  // reports on the way are lost with the link
    const bool was = linked_state;
    set_linked(false);
    if (was) flush_caches();
  }

  // Subscribed (and with `tracking`, tracking redirected to the subscriber):
  // what changed while the link was down is unknown, so memory goes.
  void link_up() {
    sub_backoff = cl->options().reconnect_min;  // not before: a refused TRACKING retries with a growing delay
    set_linked(true);
    flush_caches();
  }

  void start_invalidation() {
    if (opts.invalidation == invalidation_mode::off) return;
    if (opts.invalidation == invalidation_mode::tracking) {
      std::weak_ptr<impl> w = weak_from_this();
      cl->on_connection(
          hook_claim, [w](const std::shared_ptr<connection>& c, std::function<void(error_code)> done) {
            auto self = w.lock();
            if (!self || self->stopped) return done({});
            // After a failover the data connection reaches another server: the
            // subscriber follows it, and enables tracking once it is there.
            if (self->sub && self->sub_server != self->server_now()) self->restart_sub();
            if (!self->sub_up) {
              // Enabled once the subscriber is back; with Sentinel it may have
              // waited for this connection: it is opened now.
              done({});
              if (!self->sub) {
                self->sub_timer.cancel();
                asio::post(self->strand, [w] {
                  auto self = w.lock();
                  if (self && !self->stopped && !self->sub) self->sub_connect();
                });
              }
              return;
            }
            c->async_exec(self->tracking_command(),
                          asio::bind_executor(self->strand, [w, c, sub = self->sub, done = std::move(done)](
                                                                error_code ec, reply r) {
                            done(ec);  // usable unless lost; a refusal is the tier's business
                            auto self = w.lock();
                            if (!self || self->stopped) return;
                            // Redirected to a subscriber replaced meanwhile, whose own
                            // attempt found no connection: redirect to the new one.
                            if (sub != self->sub) {
                              if (self->sub_up && !ec) self->enable_tracking();
                              return;
                            }
                            self->tracking_result(ec, r);
                          }));
          },
          [w] {
            auto self = w.lock();
            if (!self || self->stopped) return;
            self->link_lost();
          });
    }
    sub_connect();
  }

  // Tracking on the current data connection, redirected to the subscriber
  // (off first: a connection already tracking keeps its prefix otherwise).
  void enable_tracking() {
    cl->async_exec({"CLIENT", "TRACKING", "off"}, asio::bind_executor(strand, [](error_code, reply) {}));
    cl->async_exec(tracking_command(), asio::bind_executor(strand, [w = weak_from_this(), c = sub](error_code ec, reply r) {
      auto self = w.lock();
      if (!self || self->stopped || c != self->sub) return;
      // Not connected: the client's setup enables it on connecting.
      if (ec == error::not_connected) return;
      self->tracking_result(ec, r);
    }));
  }

  std::vector<std::string> tracking_command() const {
    return {"CLIENT", "TRACKING", "on", "REDIRECT", sub_id, "BCAST", "PREFIX", opts.prefix, "NOLOOP"};
  }

  void tracking_result(error_code ec, const reply& r) {
    if (!ec && !r.is_error()) {
      if (sub_up) link_up();
      return;
    }
    // The data connection lost: its setup enables tracking on the next one.
    if (ec == error::not_connected || !cl->is_connected()) return;
    // Refused (the subscriber's id is not on this server) or timed out: the
    // subscriber starts over, and enables it again once back.
    if (sub) restart_sub();
  }

  // The address the data connection reaches now ("host:port"; empty with
  // Sentinel until a master was named).
  std::string server_now() const { return cl->options().sentinel.master_name.empty() ? std::string("-") : cl->server(); }

  // Closes the invalidation connection and opens a new one (memory is flushed).
  void restart_sub() {
    auto c = std::exchange(sub, nullptr);
    if (c) c->close();
    sub_lost_now();
  }

  // Where the invalidation connection goes: the data connection's server.
  connection_options sub_options() const {
    connection_options co = cl->options().connection;
    if (cluster) {
      const auto masters = cl->masters();
      const std::string& node = masters.empty() ? cl->options().cluster.nodes.front() : masters.front();
      if (auto hp = split_host_port(node)) std::tie(co.host, co.port) = *hp;
    } else if (!cl->options().sentinel.master_name.empty()) {
      if (auto hp = split_host_port(server_now())) std::tie(co.host, co.port) = *hp;
    }
    co.max_pending = 16;
    return co;
  }

  // "host:port" as `client::server()` and `client::masters()` give it: an
  // IPv6 host without brackets, so split at the last colon (unlike
  // `detail::split_address`, which parses what users write).
  static std::optional<std::pair<std::string, std::string>> split_host_port(const std::string& a) {
    const auto colon = a.rfind(':');
    if (colon == std::string::npos || colon == 0) return std::nullopt;
    std::string host = a.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    return std::pair{std::move(host), a.substr(colon + 1)};
  }

  void sub_connect() {
    if (stopped) return;
    // With Sentinel, the subscriber goes where the data connection went: not
    // before the sentinels named a master and the client reached it.
    if (!cl->options().sentinel.master_name.empty() && (!cl->is_connected() || server_now().empty()))
      return sub_lost_now();
    auto c = std::make_shared<connection>(strand, sub_options());
    sub = c;
    sub_server = server_now();
    std::weak_ptr<impl> w = weak_from_this();
    c->on_push([w](reply& r) {
      if (auto self = w.lock()) self->on_message(r);
    });
    c->on_lost([w, raw = c.get()] {
      auto self = w.lock();
      if (!self || self->stopped || raw != self->sub.get()) return;
      self->sub.reset();
      self->sub_lost_now();
    });
    c->async_connect(asio::bind_executor(strand, [w, c](error_code ec) {
      auto self = w.lock();
      if (!self || self->stopped || c != self->sub) return c->close();
      if (ec) return self->sub_failed(c);
      c->async_exec({"CLIENT", "ID"}, asio::bind_executor(self->strand, [w, c](error_code ec, reply r) {
        auto self = w.lock();
        if (!self || self->stopped || c != self->sub) return;
        if (ec || r.type != reply::kind::integer) return self->sub_failed(c);
        self->sub_id = std::to_string(r.integer);
        const bool tracking = self->opts.invalidation == invalidation_mode::tracking;
        c->async_exec({"SUBSCRIBE", tracking ? std::string("__redis__:invalidate") : self->channel},
                      asio::bind_executor(self->strand, [w, c](error_code ec, reply r) {
                        auto self = w.lock();
                        if (!self || self->stopped || c != self->sub) return;
                        if (ec || r.is_error()) return self->sub_failed(c);
                        self->sub_up = true;
                        self->sub_check(c);
                        if (self->opts.invalidation == invalidation_mode::publish) return self->link_up();
                        self->enable_tracking();
                      }));
      }));
    }));
  }

  // PINGs the invalidation connection each health-check interval: one that
  // fails (a server gone silent, no reset seen) is closed and reopened, and
  // memory flushed, as for a lost one.
  void sub_check(const std::shared_ptr<connection>& c) {
    auto t = std::make_shared<asio::steady_timer>(strand, cl->options().health_check_interval);
    t->async_wait(asio::bind_executor(strand, [w = weak_from_this(), c, t](error_code ec) {
      auto self = w.lock();
      if (ec || !self || self->stopped || c != self->sub) return;
      if (self->cl->is_connected() && self->server_now() != self->sub_server) return self->restart_sub();  // a failover
      c->async_exec({"PING"}, asio::bind_executor(self->strand, [w, c](error_code ec, reply r) {
        auto self = w.lock();
        if (!self || self->stopped || c != self->sub) return;
        if (ec || r.is_error()) return self->sub_failed(c);
        self->sub_check(c);
      }));
    }));
  }

  void sub_failed(const std::shared_ptr<connection>& c) {
    c->close();
    if (c == sub) sub.reset();
    sub_lost_now();
  }

  // The invalidation connection is gone (or never came): memory goes, and it
  // is reopened after a backoff.
  void sub_lost_now() {
    sub_up = false;
    link_lost();
    if (stopped) return;
    const milliseconds d = sub_backoff;
    sub_backoff = std::min(sub_backoff * 2, cl->options().reconnect_max);
    sub_timer.expires_after(d);
    sub_timer.async_wait(asio::bind_executor(strand, [w = weak_from_this()](error_code ec) {
      auto self = w.lock();
      if (ec || !self || self->stopped || self->sub) return;
      self->sub_connect();
    }));
  }

  // A message on the invalidation connection.
  void on_message(reply& r) {
    if (r.elements.size() != 3 || r.elements[0].str != "message") return;
    reply& payload = r.elements[2];
    if (opts.invalidation == invalidation_mode::tracking) {
      if (payload.type == reply::kind::nil) return flush_caches();  // FLUSHDB / FLUSHALL
      if (payload.type != reply::kind::array) return;
      for (reply& k : payload.elements)
        if (k.type == reply::kind::bulk) invalidated(k.str);
      return;
    }
    if (payload.type != reply::kind::bulk || payload.str.size() < instance.size()) return;
    if (std::string_view(payload.str).substr(0, instance.size()) == instance) return;  // this tier's own write
    const std::string k = payload.str.substr(instance.size());
    if (k.empty()) return flush_caches();  // a clear elsewhere
    invalidated(k);
  }

  void invalidated(const std::string& k) {
    if (!k.starts_with(opts.prefix)) return;
    invalidations.fetch_add(1, std::memory_order_relaxed);
    wake(k);
    // With tracking, Redis reports this instance's own fill scripts back to
    // it: a report for a key with such a fill outstanding is checked against
    // Redis, and passed on only if Redis holds something else (a write of
    // another's came with it).
    if (auto e = echoes.find(k); e != echoes.end()) {
      const std::size_t digest = e->second.digest;
      if (--e->second.count == 0) echoes.erase(e);
      cl->async_exec({"GET", k}, asio::bind_executor(strand, [w = weak_from_this(), k, digest](error_code ec, reply r) {
        auto self = w.lock();
        if (!self || self->stopped) return;
        if (!ec && r.type == reply::kind::bulk && std::hash<std::string>{}(r.str) == digest) return;
        self->listeners->invalidate(std::string_view(k).substr(self->opts.prefix.size()));
      }));
      return;
    }
    listeners->invalidate(std::string_view(k).substr(opts.prefix.size()));
  }

  void stop() {
    stopped = true;
    fail_queue(asio::error::operation_aborted);
    sub_timer.cancel();
    if (sub) std::exchange(sub, nullptr)->close();
    set_linked(false);
    auto w = std::move(waits);
    waits.clear();
    for (auto& [k, list] : w)
      for (auto& one : list) one->timer.cancel();  // each completes with operation_aborted (stopped)
  }

  // The execution context is shutting down (see src/common/shutdown_registry.hpp).
  void drop_handlers() {
    auto doomed_waits = std::move(waits);
    waits.clear();
    for (auto& [k, list] : doomed_waits)
      for (auto& one : list) one->h.reset();
    op_list doomed = std::move(queue);
    queue.clear();
    index.clear();
    queued_sets = 0;
    queued_clears = 0;
  }
};

tier::tier(std::shared_ptr<client> c, tier_options opts) {
  if (!c) cacheflight::detail::throw_invalid_option("redis::tier needs a client");
  if (opts.prefix.empty()) cacheflight::detail::throw_invalid_option("redis::tier_options::prefix must not be empty");
  if (opts.write_batch == 0) cacheflight::detail::throw_invalid_option("redis::tier_options::write_batch must be positive");
  if (opts.breaker_failures == 0)
    cacheflight::detail::throw_invalid_option("redis::tier_options::breaker_failures must be positive");
  if (opts.breaker_min <= milliseconds::zero() || opts.breaker_max < opts.breaker_min)
    cacheflight::detail::throw_invalid_option("redis::tier_options: need 0 < breaker_min <= breaker_max");
  if (opts.leases && (opts.lease_ttl <= milliseconds::zero() || opts.lease_poll <= milliseconds::zero()))
    cacheflight::detail::throw_invalid_option("redis::tier_options: lease_ttl and lease_poll must be positive");
  if (opts.invalidation == invalidation_mode::tracking && !c->options().cluster.nodes.empty())
    cacheflight::detail::throw_invalid_option(
        "redis::tier_options: invalidation_mode::tracking cannot be used with Cluster (use publish)");
  for (milliseconds* d : {&opts.breaker_min, &opts.breaker_max, &opts.lease_ttl, &opts.lease_poll})
    detail::cap_duration(*d);
  std::uint64_t claim = 0;
  if (opts.invalidation == invalidation_mode::tracking && (claim = c->claim_connection_hook()) == 0)
    cacheflight::detail::throw_invalid_option(
        "redis::tier_options: invalidation_mode::tracking needs a client no other tracking tier uses");
  try {
    impl_ = std::make_shared<impl>(c, std::move(opts), listeners());
  } catch (...) {
    c->release_connection_hook(claim);
    throw;
  }
  impl_->hook_claim = claim;
  cacheflight::detail::drop_handlers_at_shutdown(impl_->strand, impl_);
  asio::post(impl_->strand, [self = impl_] { self->start_invalidation(); });
}

tier::tier(executor_type ex, client_options copts, tier_options opts)
    : tier(std::make_shared<client>(std::move(ex), std::move(copts)), std::move(opts)) {}

tier::~tier() {
  // The hooks are free for another tracking tier on the client from now on.
  impl_->cl->release_connection_hook(impl_->hook_claim);
  asio::post(impl_->strand, [self = impl_] { self->stop(); });
}

tier_health tier::health() const {
  const auto r = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  return tier_health{impl_->state_pub.load(std::memory_order_relaxed),
                     impl_->queued_pub.load(std::memory_order_relaxed),
                     r(impl_->writes),
                     r(impl_->dropped),
                     r(impl_->invalidations),
                     r(impl_->link_flushes),
                     r(impl_->leases_granted),
                     r(impl_->leases_waited),
                     r(impl_->leases_expired),
                     r(impl_->leases_lost)};
}

bool tier::linked() const noexcept { return impl_->linked_pub.load(std::memory_order_relaxed); }

client& tier::get_client() noexcept { return *impl_->cl; }

void tier::do_get(std::string key, get_handler handler) {
  // The caller's slot is assigned here, in the caller's context, which is
  // where it is emitted and cleared; its handler hands the cancellation to the
  // strand. Without leases it cancels the GET itself (a command cancelled
  // before it is queued is never queued, one queued is abandoned); with them,
  // whichever step the read is at (a script, a wait for another fill).
  std::shared_ptr<read_cancel> lease_cancel;
  std::shared_ptr<detail::exec_cancel> cancel;
  if (auto slot = asio::get_associated_cancellation_slot(handler); slot.is_connected()) {
    if (impl_->opts.leases) {
      lease_cancel = std::make_shared<read_cancel>();
      slot.assign([lease_cancel, strand = impl_->strand](asio::cancellation_type_t t) {
        asio::post(strand, [lease_cancel, t] {
          lease_cancel->requested = true;
          lease_cancel->emit(t);
        });
      });
    } else {
      cancel = detail::hook_cancel(slot, impl_->strand);
    }
  }
  // The hop is the read's own bookkeeping: in the memory of the handler's allocator.
  const auto alloc = asio::get_associated_allocator(handler);
  detail::post_on(
      impl_->strand,
      [self = impl_, key = std::move(key), h = std::move(handler), lease_cancel, cancel]() mutable {
        self->get(std::move(key), std::move(h), std::move(lease_cancel), std::move(cancel));
      },
      alloc);
}

void tier::do_put(std::string key, std::string bytes, milliseconds ttl, done_handler handler) {
  detail::post_on(impl_->strand, [self = impl_, key = std::move(key), bytes = std::move(bytes), ttl,
                                  h = std::move(handler)]() mutable {
    self->put(std::move(key), std::move(bytes), ttl, std::move(h));
  });
}

void tier::do_fill(std::string key, std::string bytes, milliseconds ttl, done_handler handler) {
  detail::post_on(impl_->strand, [self = impl_, key = std::move(key), bytes = std::move(bytes), ttl,
                                  h = std::move(handler)]() mutable {
    self->put(std::move(key), std::move(bytes), ttl, std::move(h), true);
  });
}

void tier::do_erase(std::string key, done_handler handler) {
  detail::post_on(impl_->strand, [self = impl_, key = std::move(key), h = std::move(handler)]() mutable {
    self->erase(std::move(key), std::move(h));
  });
}

void tier::do_clear(done_handler handler) {
  detail::post_on(impl_->strand, [self = impl_, h = std::move(handler)]() mutable { self->clear(std::move(h)); });
}

}  // namespace cacheflight::redis
