// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#include <cacheflight/error.hpp>
#include <cacheflight/redis/tier.hpp>

#include "../common/shutdown_registry.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>

#include <algorithm>
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

}  // namespace

struct tier::impl : std::enable_shared_from_this<impl> {
  using get_handler = asio::any_completion_handler<cacheflight::tier::get_signature>;
  using done_handler = asio::any_completion_handler<cacheflight::tier::done_signature>;

  impl(std::shared_ptr<client> c, tier_options o)
      : cl(std::move(c)), strand(cl->get_strand()), opts(std::move(o)), cluster(!cl->options().cluster.nodes.empty()),
        open_for(opts.breaker_min) {}

  // A write waiting in the queue: the latest for its key (set or erase), or a
  // clear. Its waiters complete when it is done or given up.
  struct write_op {
    enum class kind { set, erase, clear } what;
    std::string key;  // with the prefix
    std::string bytes;
    milliseconds ttl{};
    std::vector<done_handler> waiters;
  };
  using op_list = std::list<write_op>;

  std::shared_ptr<client> cl;
  asio::strand<asio::any_io_executor> strand;
  tier_options opts;
  // With Cluster, the breaker is per master, in the client (a master that
  // cannot be reached fails its slots at once): the tier's own stays closed.
  const bool cluster;
  bool stopped = false;

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

  std::string full(std::string_view key) const {
    std::string k;
    k.reserve(opts.prefix.size() + key.size());
    k.append(opts.prefix).append(key);
    return k;
  }

  // Completes `h` on its associated executor (where its cancellation slot is
  // also cleared, in the context that emits on it).
  template <class Handler, class... Args>
  void complete(Handler h, Args... args) {
    auto ex = asio::get_associated_executor(h, strand);
    asio::dispatch(ex, [h = std::move(h), ... a = std::move(args)]() mutable {
      asio::get_associated_cancellation_slot(h).clear();
      std::move(h)(std::move(a)...);
    });
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

  // `cancel`, when set, is emitted on the strand when the caller cancels.
  void get(std::string key, get_handler h, std::shared_ptr<asio::cancellation_signal> cancel) {
    if (stopped) return complete(std::move(h), error_code(asio::error::operation_aborted), std::optional<std::string>{});
    // Read your writes: a write of the key not sent yet, or a clear not
    // finished, is what Redis will hold; a write already sent is ahead of
    // this GET on the connection.
    std::string k = full(key);
    if (auto it = index.find(k); it != index.end()) {
      const write_op& op = *it->second;
      std::optional<std::string> v;
      if (op.what == write_op::kind::set) v = op.bytes;
      return complete(std::move(h), error_code{}, std::move(v));
    }
    if (queued_clears != 0 || clearing) return complete(std::move(h), error_code{}, std::optional<std::string>{});
    if (!sent.empty())
      if (auto it = sent.find(k); it != sent.end())
        return complete(std::move(h), error_code{}, std::optional<std::string>(it->second));
    const auto g = admit();
    if (!g) return complete(std::move(h), make_error_code(error::tier_unavailable), std::optional<std::string>{});
    asio::cancellation_slot slot = cancel ? cancel->slot() : asio::cancellation_slot();
    // No executor bound: the client completes it on its strand, which is this
    // tier's, without wrapping one.
    cl->async_exec({"GET", std::move(k)},
                   asio::bind_cancellation_slot(slot, [self = shared_from_this(), h = std::move(h), cancel,
                                                       g = *g](error_code ec, reply r) mutable {
                     std::optional<std::string> v;
                     if (!ec) {
                       if (r.type == reply::kind::bulk)
                         v = std::move(r.str);
                       else if (r.type != reply::kind::nil)
                         ec = make_error_code(error::protocol_error);
                     }
                     self->outcome(ec, g);
                     self->complete(std::move(h), ec, std::move(v));
                   }));
  }

  // --- writes --------------------------------------------------------------

  void publish_queue() { queued_pub.store(queue.size(), std::memory_order_relaxed); }

  void give_up(done_handler h, error_code ec) {
    dropped.fetch_add(1, std::memory_order_relaxed);
    complete(std::move(h), ec);
  }

  void put(std::string key, std::string bytes, milliseconds ttl, done_handler h) {
    if (stopped) return give_up(std::move(h), asio::error::operation_aborted);
    if (open_now()) return give_up(std::move(h), make_error_code(error::tier_unavailable));
    std::string k = full(key);
    if (auto it = index.find(k); it != index.end()) {  // the last write wins, in the older one's place
      write_op& op = *it->second;
      if (op.what == write_op::kind::erase) {
        // A set taking an erase's place is one more queued set: bounded too.
        // Refused, the erase stays: Redis holds nothing for the key.
        if (queued_sets >= opts.max_queued_writes) return give_up(std::move(h), make_error_code(error::queue_full));
        ++queued_sets;
      }
      op.what = write_op::kind::set;
      op.bytes = std::move(bytes);
      op.ttl = ttl;
      op.waiters.push_back(std::move(h));
      return;
    }
    if (queued_sets >= opts.max_queued_writes) return give_up(std::move(h), make_error_code(error::queue_full));
    enqueue(write_op{write_op::kind::set, std::move(k), std::move(bytes), ttl, {}}, std::move(h));
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
      op.waiters.push_back(std::move(h));
      return;
    }
    // Erases are not refused: each has a caller waiting for it, or repairs a
    // write that an invalidation overtook; refusing one would leave Redis
    // holding a value memory dropped.
    enqueue(write_op{write_op::kind::erase, std::move(k), {}, {}, {}}, std::move(h));
  }

  void clear(done_handler h) {
    if (stopped) return give_up(std::move(h), asio::error::operation_aborted);
    if (open_now()) return give_up(std::move(h), make_error_code(error::tier_unavailable));
    // Every unsent write is superseded by the clear: its waiters complete with it.
    write_op c{write_op::kind::clear, {}, {}, {}, {}};
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
    auto remaining = std::make_shared<std::size_t>(batch->size());
    std::size_t i = 0;
    for (write_op& op : *batch) {
      if (cluster)
        sent.insert_or_assign(op.key, op.what == write_op::kind::set ? std::optional<std::string>(op.bytes)
                                                                     : std::optional<std::string>());
      std::vector<std::string> args;
      args.reserve(5);
      if (op.what == write_op::kind::set) {
        args.emplace_back("SET");
        args.push_back(op.key);
        args.push_back(std::move(op.bytes));
        if (op.ttl != milliseconds::max()) {
          args.emplace_back("PX");
          args.push_back(std::to_string(std::max<long long>(op.ttl.count(), 1)));
        }
      } else {
        args.emplace_back("UNLINK");
        args.push_back(op.key);
      }
      cl->async_exec(std::move(args), asio::bind_executor(strand, [self = shared_from_this(), batch, results,
                                                                   remaining, i, g = *g](error_code ec, reply r) {
                       if (!ec && r.is_error()) ec = make_error_code(error::protocol_error);
                       (*results)[i] = ec;
                       if (--*remaining == 0) self->batch_done(*batch, *results, g);
                     }));
      ++i;
    }
  }

  void batch_done(op_list& batch, const std::vector<error_code>& results, std::uint64_t g) {
    writing = false;
    sent.clear();
    error_code first;
    std::size_t i = 0;
    for (write_op& op : batch) {
      const error_code ec = results[i++];
      if (ec) {
        dropped.fetch_add(1, std::memory_order_relaxed);
        if (!first) first = ec;
      } else {
        writes.fetch_add(1, std::memory_order_relaxed);
      }
      for (done_handler& w : op.waiters) complete(std::move(w), ec);
    }
    outcome(first, g);
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
          if (!ec && (r.type != reply::kind::array || r.elements.size() != 2 ||
                      r.elements[0].type != reply::kind::bulk || r.elements[1].type != reply::kind::array))
            ec = make_error_code(error::protocol_error);
          if (ec) return self->clear_done(*batch, ec, g);
          std::string next = std::move(r.elements[0].str);
          // After this page: the next page, the next node, or done.
          auto then = [self, batch, nodes, i, g, next](error_code ec) {
            if (ec) return self->clear_done(*batch, ec, g);
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
          if (commands.empty()) return then({});
          auto remaining = std::make_shared<std::size_t>(commands.size());
          auto first = std::make_shared<error_code>();
          for (auto& args : commands)
            self->cl->async_exec(std::move(args), asio::bind_executor(self->strand, [remaining, first, then](
                                                                                      error_code ec, reply r) {
                                   if (!ec && r.is_error()) ec = make_error_code(error::protocol_error);
                                   if (ec && !*first) *first = ec;
                                   if (--*remaining == 0) then(*first);
                                 }));
        }));
  }

  void clear_done(op_list& batch, error_code ec, std::uint64_t g) {
    writing = false;
    clearing = false;
    (ec ? dropped : writes).fetch_add(1, std::memory_order_relaxed);
    for (done_handler& w : batch.front().waiters) complete(std::move(w), ec);
    outcome(ec, g);
    pump();
  }

  void stop() {
    stopped = true;
    fail_queue(asio::error::operation_aborted);
  }

  // The execution context is shutting down (see src/common/shutdown_registry.hpp).
  void drop_handlers() {
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
  impl_ = std::make_shared<impl>(std::move(c), std::move(opts));
  cacheflight::detail::drop_handlers_at_shutdown(impl_->strand, impl_);
}

tier::tier(executor_type ex, client_options copts, tier_options opts)
    : tier(std::make_shared<client>(std::move(ex), std::move(copts)), std::move(opts)) {}

tier::~tier() {
  asio::post(impl_->strand, [self = impl_] { self->stop(); });
}

tier_health tier::health() const {
  return tier_health{impl_->state_pub.load(std::memory_order_relaxed), impl_->queued_pub.load(std::memory_order_relaxed),
                     impl_->writes.load(std::memory_order_relaxed), impl_->dropped.load(std::memory_order_relaxed)};
}

client& tier::get_client() noexcept { return *impl_->cl; }

void tier::do_get(std::string key, get_handler handler) {
  // The caller's slot is assigned here, in the caller's context, which is
  // where it is emitted and cleared; its handler hands the cancellation to the
  // strand, where the command's own slot lives.
  std::shared_ptr<asio::cancellation_signal> cancel;
  if (auto slot = asio::get_associated_cancellation_slot(handler); slot.is_connected()) {
    cancel = std::make_shared<asio::cancellation_signal>();
    slot.assign([cancel, strand = impl_->strand](asio::cancellation_type_t t) {
      asio::post(strand, [cancel, t] { cancel->emit(t); });
    });
  }
  asio::post(impl_->strand, [self = impl_, key = std::move(key), h = std::move(handler), cancel]() mutable {
    self->get(std::move(key), std::move(h), std::move(cancel));
  });
}

void tier::do_put(std::string key, std::string bytes, milliseconds ttl, done_handler handler) {
  asio::post(impl_->strand, [self = impl_, key = std::move(key), bytes = std::move(bytes), ttl,
                             h = std::move(handler)]() mutable {
    self->put(std::move(key), std::move(bytes), ttl, std::move(h));
  });
}

void tier::do_erase(std::string key, done_handler handler) {
  asio::post(impl_->strand, [self = impl_, key = std::move(key), h = std::move(handler)]() mutable {
    self->erase(std::move(key), std::move(h));
  });
}

void tier::do_clear(done_handler handler) {
  asio::post(impl_->strand, [self = impl_, h = std::move(handler)]() mutable { self->clear(std::move(h)); });
}

}  // namespace cacheflight::redis
