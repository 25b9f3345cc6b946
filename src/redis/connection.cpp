// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#include <cacheflight/error.hpp>
#include <cacheflight/redis/connection.hpp>

#include "../common/shutdown_registry.hpp"
#include "command_ring.hpp"
#include "exec_cancel.hpp"
#include "strand_hop.hpp"
#include "options_check.hpp"

#include <boost/asio/any_completion_executor.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/require.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <atomic>
#include <exception>
#include <mutex>
#include <vector>
#include <optional>
#include <type_traits>
#include <utility>

namespace cacheflight::redis {

namespace asio = boost::asio;
using boost::system::error_code;
using clock_type = std::chrono::steady_clock;

namespace {

using detail::no_executor;

// Outstanding work on a handler's associated executor, held while the handler
// waits (as Asio's own operations do), so that its context does not run out
// of work and return from run() before the result arrives.
// A handler bound to the connection's own strand needs none: the connection's
// pending I/O keeps that context busy.
template <class Handler>
asio::any_completion_executor tracked(const Handler& h, const asio::strand<asio::any_io_executor>& strand) {
  // Asked with a marker as the candidate: a handler without an executor of
  // its own (it runs on the strand) is found out without wrapping the strand,
  // which is too large for an any_completion_executor's own storage. (An
  // executor that could not be wrapped comes back empty: prefer() throws.)
  asio::any_completion_executor ex = asio::get_associated_executor(h, asio::any_completion_executor(no_executor{}));
  if (ex.target<no_executor>()) return {};
  if (auto* s = ex.target<asio::strand<asio::any_io_executor>>(); s && *s == strand) return {};
  return asio::prefer(ex, asio::execution::outstanding_work.tracked);
}

// Dispatches `h(args...)` to `ex`, releasing `work` after the upcall.
template <class Executor, class Handler, class... Args>
void dispatch_upcall(const Executor& ex, Handler h, asio::any_completion_executor work, Args&&... args) {
  asio::dispatch(ex, [h = std::move(h), w = std::move(work), ... a = std::forward<Args>(args)]() mutable {
    asio::get_associated_cancellation_slot(h).clear();
    std::move(h)(std::move(a)...);
  });
}

// Completes `h` on its associated executor; `work` (from `tracked`) is released
// after the upcall. Called on the connection's strand, never inside an
// initiating function. Without `work`, that executor is the strand: `h` runs
// here, as a dispatch would run it. With it, `h` is dispatched to `work`'s
// executor (the handler's, with outstanding work tracked): asking the erased
// handler for its executor again would wrap it once more.
template <class Handler, class... Args>
void complete(Handler h, asio::any_completion_executor work, Args&&... args) {
  if (!work) {
    asio::get_associated_cancellation_slot(h).clear();
    std::move(h)(std::forward<Args>(args)...);
    return;
  }
  // An io_context's executor (see detail::typed_work): dispatched to it
  // directly, not through a type-erased copy.
  using tracked_io = std::decay_t<decltype(asio::prefer(std::declval<asio::io_context::executor_type>(),
                                                        asio::execution::outstanding_work.tracked))>;
  if (const tracked_io* io = work.target<tracked_io>()) {
    const auto ex = asio::require(*io, asio::execution::outstanding_work.untracked);
    return dispatch_upcall(ex, std::move(h), std::move(work), std::forward<Args>(args)...);
  }
  // A target of its own (not shared with `work`, which is released on the
  // handler's side), without a second count of outstanding work.
  const asio::any_completion_executor ex = asio::prefer(work, asio::execution::outstanding_work.untracked);
  dispatch_upcall(ex, std::move(h), std::move(work), std::forward<Args>(args)...);
}

// As `complete`, for a result known inside an initiating function: posted, so
// the handler never runs inside the call.
template <class Handler, class... Args>
void complete_later(Handler h, asio::any_completion_executor work, const asio::strand<asio::any_io_executor>& strand,
                    Args... args) {
  asio::post(strand, [w = std::move(work), h = std::move(h), ... a = std::move(args)]() mutable {
    complete(std::move(h), std::move(w), std::move(a)...);
  });
}

// The strand a connection runs on: the executor itself when it is already a
// strand (a client shares its strand with its connection), else a new one.
asio::strand<asio::any_io_executor> strand_of(const asio::any_io_executor& ex) {
  if (auto* s = ex.target<asio::strand<asio::any_io_executor>>()) return *s;
  return asio::make_strand(ex);
}

}  // namespace


namespace {

// The TLS context for these options. Files that cannot be read leave `ec` set:
// the connect then fails with it.
std::shared_ptr<asio::ssl::context> make_tls_context(const tls_options& t, error_code& ec) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                   asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 | asio::ssl::context::no_tlsv1_1, ec);
  if (!ec && t.ca_file.empty() && t.ca_path.empty()) ctx->set_default_verify_paths(ec);
  if (!ec && !t.ca_file.empty()) ctx->load_verify_file(t.ca_file, ec);
  if (!ec && !t.ca_path.empty()) ctx->add_verify_path(t.ca_path, ec);
  if (!ec && !t.cert_file.empty()) ctx->use_certificate_chain_file(t.cert_file, ec);
  if (!ec && !t.key_file.empty()) ctx->use_private_key_file(t.key_file, asio::ssl::context::pem, ec);
  if (!ec) ctx->set_verify_mode(t.verify_peer ? asio::ssl::verify_peer : asio::ssl::verify_none, ec);
  return ctx;
}

// A message of a subscribed connection: `message <channel> <payload>`, or
// `pmessage <pattern> <channel> <payload>`, which may come before the reply
// of a command in flight.
bool is_message(const reply& r) {
  if (r.type != reply::kind::array || r.elements.empty() || r.elements[0].type != reply::kind::bulk) return false;
  const std::string& k = r.elements[0].str;
  return (k == "message" && r.elements.size() == 3) || (k == "pmessage" && r.elements.size() == 4);
}

bool is_ip_address(const std::string& s) {
  error_code ec;
  asio::ip::make_address(s, ec);
  return !ec;
}

}  // namespace

struct connection::impl : std::enable_shared_from_this<impl> {
  impl(asio::any_io_executor ex, connection_options o)
      : strand(strand_of(ex)), opts(std::move(o)), socket(strand.get_inner_executor()), resolver(strand),
        connect_timer(strand),
        deadline_timer(strand),
        reader(opts.max_reply_bytes) {
    if (opts.tls.enabled) tls_ctx = make_tls_context(opts.tls, tls_error);
  }

  enum class state { idle, connecting, open, closed };

  struct command {
    std::uint64_t id = 0;
    std::size_t size = 0;  // of its bytes: in `out` while pending
    std::optional<exec_handler> handler;  // empty once abandoned (timed out or cancelled)
    asio::any_completion_executor work;    // outstanding work on the handler's executor
    direct_fn fn = nullptr;                // instead of `handler`: called on the strand
    std::shared_ptr<void> ctx;             // fn's argument
    std::shared_ptr<detail::exec_cancel> cancel;  // its caller's cancellation, if it has a slot
    unsigned skip = 0;                     // replies before its own to drop (a prefix such as ASKING)
    reply* into = nullptr;                 // the caller's reply to swap its reply into
    bool waiting() const noexcept { return handler || fn; }
    bool to_send() const noexcept { return waiting() || auth; }  // not abandoned before its write
    bool auth = false;        // a handshake step: a failed reply means auth_failed
    bool last_step = false;   // the handshake's last step: its reply opens the connection
    clock_type::time_point deadline;
  };

  asio::strand<asio::any_io_executor> strand;
  connection_options opts;
  // On the strand's inner executor, not on the strand: every operation on it
  // is started on the strand and completes there (its handler is bound to the
  // strand, or a plain read's enters it through `strand.dispatch`, see read()).
  asio::generic::stream_protocol::socket socket;
  std::shared_ptr<asio::ssl::context> tls_ctx;  // with TLS
  error_code tls_error;                         // the context could not be made
  std::optional<asio::ssl::stream<asio::generic::stream_protocol::socket&>> tls;
  asio::ip::tcp::resolver resolver;
  asio::steady_timer connect_timer;
  asio::steady_timer deadline_timer;
  reply_reader reader;
  // The reply read last. A command's reply is moved to its caller; the
  // memory of one not delivered (a dropped prefix's, a handshake step's)
  // goes back to the reader.
  reply incoming;
  std::array<char, 16 * 1024> read_buf{};
  // The bytes of the pending commands, in their order, serialized there
  // directly; they change places with `write_buf` when written.
  std::string out;
  std::string write_buf;
  bool writing = false;
  bool flush_scheduled = false;  // a write() is posted
  bool delivering = false;       // completing the replies of one read
  bool write_after = false;      // commands were queued meanwhile: written once they are all completed
  // The commands, in their order: the first `written` were written and await
  // their replies in order, the rest are pending. A command stays in its
  // place from its queueing until its reply is taken, unless it is abandoned
  // before its write (see write()).
  detail::ring<command> queue;
  std::size_t written = 0;
  std::size_t live = 0;          // commands whose callers still wait (abandoned ones excluded)
  std::uint64_t next_id = 0;
  state st = state::idle;
  std::atomic<bool> open_flag{false};
  std::optional<connect_handler> connecting;
  asio::any_completion_executor connecting_work;
  bool armed = false;                  // the deadline timer has a wait pending
  std::function<void()> lost;          // run on the strand when an open connection is lost
  std::function<void(reply&)> push;    // subscribed: run on the strand for each message

  // --- connecting ------------------------------------------------------------
  void connect(connect_handler h) {
    if (st != state::idle) {
      auto work = tracked(h, strand);
      complete_later(std::move(h), std::move(work), strand, error_code(asio::error::already_started));
      return;
    }
    st = state::connecting;
    connecting_work = tracked(h, strand);
    connecting.emplace(std::move(h));
    if (tls_error) {  // failed here, on the strand: never inside the initiating function
      asio::post(strand, [self = shared_from_this()] { self->fail(self->tls_error); });
      return;
    }
    connect_timer.expires_after(opts.connect_timeout);
    connect_timer.async_wait([self = shared_from_this()](error_code ec) {
      if (!ec && self->st == state::connecting) self->fail(make_error_code(error::timed_out));
    });
    if (!opts.unix_socket.empty()) {
      asio::local::stream_protocol::endpoint ep(opts.unix_socket);
      socket.async_connect(asio::generic::stream_protocol::endpoint(ep),
                           asio::bind_executor(strand, [self = shared_from_this()](error_code ec) {
                             self->on_connected(ec);
                           }));
      return;
    }
    resolver.async_resolve(opts.host, opts.port,
                           [self = shared_from_this()](error_code ec, asio::ip::tcp::resolver::results_type rs) {
                             if (ec || self->st != state::connecting) return self->on_connected(ec);
                             std::vector<asio::generic::stream_protocol::endpoint> eps;
                             for (const auto& r : rs) eps.emplace_back(r.endpoint());
                             asio::async_connect(self->socket, eps,
                                                 asio::bind_executor(self->strand, [self](error_code ec, const auto&) {
                                                   self->on_connected(ec);
                                                 }));
                           });
  }

  void on_connected(error_code ec) {
    if (st != state::connecting) return;  // timed out or closed meanwhile
    if (ec) return fail(ec);
    if (opts.unix_socket.empty()) {
      // Pipelined commands are small writes: do not let Nagle hold them back.
      error_code ignored;
      socket.set_option(asio::ip::tcp::no_delay(true), ignored);
    }
    if (tls_ctx) return start_tls();
    // Without TLS a write is first tried in place (see write()): the
    // socket's synchronous operations must not block.
    error_code nb;
    socket.non_blocking(true, nb);
    if (nb) return fail(nb);
    start_protocol();
  }

  // The TLS handshake, before anything else is said.
  void start_tls() {
    tls.emplace(socket, *tls_ctx);
    const std::string& name = opts.tls.server_name.empty() ? opts.host : opts.tls.server_name;
    if (!is_ip_address(name)) ::SSL_set_tlsext_host_name(tls->native_handle(), name.c_str());
    if (opts.tls.verify_peer) tls->set_verify_callback(asio::ssl::host_name_verification(name));
    tls->async_handshake(asio::ssl::stream_base::client,
                         asio::bind_executor(strand, [self = shared_from_this()](error_code ec) {
                           if (self->st != state::connecting) return;
                           if (ec) return self->fail(ec);
                           self->start_protocol();
                         }));
  }

  void start_protocol() {
    read();
    // The handshake goes through the pipeline like any command.
    std::vector<std::vector<std::string>> steps;
    if (!opts.password.empty()) {
      if (opts.username.empty())
        steps.push_back({"AUTH", opts.password});
      else
        steps.push_back({"AUTH", opts.username, opts.password});
    }
    if (opts.database != 0) steps.push_back({"SELECT", std::to_string(opts.database)});
    steps.push_back({"PING"});
    for (std::size_t i = 0; i < steps.size(); ++i)
      enqueue(
          [&](command& c) {
            c.auth = true;
            c.last_step = i + 1 == steps.size();
          },
          [&](std::string& o) { append_command(o, steps[i]); });
    write();
  }

  void handshake_reply(command& c, const reply& r) {
    if (r.is_error()) return fail(make_error_code(error::auth_failed));
    if (!c.last_step) return;
    connect_timer.cancel();
    st = state::open;
    open_flag = true;
    if (connecting) {
      auto h = std::move(*connecting);
      connecting.reset();
      complete(std::move(h), std::move(connecting_work), error_code{});
    }
  }

  // --- commands --------------------------------------------------------------
  // Queues a command, built in place at the back of the queue and set up by
  // `setup(c)`, its bytes appended to `out` by `append(out)`. If any of it
  // throws (memory), nothing was queued and `out` is as it was: a command's
  // bytes are never sent without their command.
  template <class Setup, class Append>
  void enqueue(Setup&& setup, Append&& append) {
    const std::size_t before = out.size();
    command& c = queue.emplace_back();
    try {
      c.id = ++next_id;
      c.deadline = clock_type::now() + opts.command_timeout;
      setup(c);
      append(out);
      c.size = out.size() - before;
    } catch (...) {
      queue.pop_back();
      out.resize(before);
      throw;
    }
  }

  // Points the caller's cancellation hook at `c`: from now on a cancellation
  // abandons it (or, before its write, keeps it from being sent).
  void watch(command& c, const std::shared_ptr<detail::exec_cancel>& cancel) {
    cancel->conn = shared_from_this();
    cancel->abandon = [](const std::shared_ptr<void>& self, std::uint64_t id) {
      static_cast<impl*>(self.get())->abandon(id, asio::error::operation_aborted);
    };
    cancel->id = c.id;
    c.cancel = cancel;
  }

  // On the strand. `cancel` is the command's cancellation hook, if its caller
  // has a slot (see watch_cancel).
  void exec(const detail::command_bytes& cmd, exec_handler h, const std::shared_ptr<detail::exec_cancel>& cancel,
            asio::any_completion_executor work) {
    auto early = [&](error_code ec) { complete_later(std::move(h), std::move(work), strand, ec, reply{}); };
    if (cancel && cancel->requested.load(std::memory_order_acquire)) return early(asio::error::operation_aborted);
    if (st != state::open) return early(make_error_code(error::not_connected));
    if (cmd.empty()) return early(asio::error::invalid_argument);
    if (live >= opts.max_pending) return early(make_error_code(error::queue_full));
    enqueue(
        [&](command& c) {
          if (cancel) watch(c, cancel);
          c.work = std::move(work);
          c.handler.emplace(std::move(h));
          c.into = cmd.into;
        },
        [&](std::string& o) { cmd.append_to(o); });
    ++live;
    arm_deadline();
    schedule_write();
  }

  // As exec(), for a command already serialized whose completion is `fn`,
  // called on the strand (never inside this call).
  void exec_direct(std::string_view bytes, direct_fn fn, std::shared_ptr<void> ctx,
                   const std::shared_ptr<detail::exec_cancel>& cancel, unsigned skip) {
    auto early = [&](error_code ec) {
      asio::post(strand, [fn, ctx = std::move(ctx), ec] { fn(ctx, ec, reply{}); });
    };
    if (cancel && cancel->requested.load(std::memory_order_acquire)) return early(asio::error::operation_aborted);
    if (st != state::open) return early(make_error_code(error::not_connected));
    if (bytes.empty()) return early(asio::error::invalid_argument);
    if (live >= opts.max_pending) return early(make_error_code(error::queue_full));
    enqueue(
        [&](command& c) {
          if (cancel) watch(c, cancel);
          c.fn = fn;
          c.ctx = std::move(ctx);
          c.skip = skip;
        },
        [&](std::string& o) { o += bytes; });
    ++live;
    arm_deadline();
    schedule_write();
  }

  // Completes a command that still waits: its handler on its executor, or its
  // direct completion here. Taken out first: completing may queue more commands.
  // `r` is moved from only once the completion has it (it may be `incoming`).
  void deliver(command& c, error_code ec, reply&& r) {
    if (c.fn) {
      const direct_fn fn = std::exchange(c.fn, nullptr);
      std::shared_ptr<void> ctx = std::move(c.ctx);
      c.ctx.reset();
      fn(ctx, ec, std::move(r));
    } else if (c.handler) {
      exec_handler h(std::move(*c.handler));
      c.handler.reset();
      complete(std::move(h), std::move(c.work), ec, std::move(r));
    }
  }

  // Writes what is pending once the current handler returns, so that commands
  // issued together share one write; commands issued by the completions of
  // one read are written as soon as all of them have run.
  void schedule_write() {
    if (writing) return;
    if (delivering) {
      write_after = true;
      return;
    }
    if (flush_scheduled) return;
    flush_scheduled = true;
    detail::post_on(strand, [self = shared_from_this()] {
      self->flush_scheduled = false;
      self->write();
    });
  }

  // Completes a command early. It keeps its place in the queue (removing it
  // from the middle of the queue would move-assign handlers, which recurses in
  // Boost 1.81's any_completion_handler): an unwritten one is left out of
  // the next write, and of the queue, by write(); a written one's reply is
  // matched and dropped. The handler is taken out before it is completed,
  // since completing may run code that queues more commands.
  void abandon(std::uint64_t id, error_code ec) {
    for (auto& c : queue)
      if (c.id == id) {
        if (!c.waiting()) return;
        --live;
        deliver(c, ec, reply{});
        return;
      }
  }

  void write() {
    if (writing || written == queue.size() || (st != state::open && st != state::connecting)) return;
    // A command whose caller cancelled it after it was queued is never sent,
    // even if this write runs before the cancellation's own (posted) turn:
    // it is completed here, before the write takes the bytes. Its completion
    // may queue more commands (they go out with this write).
    std::vector<std::uint64_t> cancelled;
    for (std::size_t i = written; i < queue.size(); ++i) {
      const command& c = queue[i];
      if (c.cancel && c.waiting() && c.cancel->requested.load(std::memory_order_acquire)) cancelled.push_back(c.id);
    }
    for (std::size_t i = 0; i < cancelled.size(); ++i) {
      try {
        abandon(cancelled[i], asio::error::operation_aborted);
      } catch (...) {
        // The write, and the other cancelled commands' completions, in a turn
        // of their own.
        schedule_write();
        throw;
      }
    }
    if (writing || written == queue.size() || (st != state::open && st != state::connecting)) return;
    write_buf.clear();
    bool all = true;
    for (std::size_t i = written; i < queue.size(); ++i)
      if (!queue[i].to_send()) all = false;
    if (all) {
      write_buf.swap(out);
    } else {
      // Abandoned commands are not sent: their bytes are left out, and they
      // leave the queue. The commands after them are moved down (built anew
      // in place, never assigned); what may throw comes first, so that a
      // failure leaves the queue and `out` as they were.
      std::vector<command> unsent;
      unsent.reserve(queue.size() - written);
      std::size_t at = 0;
      for (std::size_t i = written; i < queue.size(); ++i) {
        const command& c = queue[i];
        if (c.to_send()) write_buf.append(out, at, c.size);
        at += c.size;
      }
      while (queue.size() > written) {
        unsent.push_back(std::move(queue[queue.size() - 1]));
        queue.pop_back();
      }
      // Never grows the ring: it held them all a moment ago.
      for (auto c = unsent.rbegin(); c != unsent.rend(); ++c)
        if (c->to_send()) queue.push_back(std::move(*c));
    }
    out.clear();
    written = queue.size();
    if (write_buf.empty()) return;
    // Without TLS the bytes are first sent in place: when the socket takes
    // them all, as it does unless the peer falls behind, no operation is
    // started and no completion is queued (a turn of the scheduler, and with
    // it a poll of the reactor, saved on every write). What it does not take
    // is written by an operation, which also reports any error.
    std::size_t sent = 0;
    if (!tls) {
      error_code ec;
      while (sent < write_buf.size()) {
        const std::size_t n = socket.write_some(asio::buffer(write_buf.data() + sent, write_buf.size() - sent), ec);
        if (ec || n == 0) break;
        sent += n;
      }
      if (sent == write_buf.size()) return;
    }
    writing = true;
    auto done = asio::bind_executor(strand, [self = shared_from_this()](error_code ec, std::size_t) {
      self->writing = false;
      if (ec) return self->fail(ec);
      self->write();
    });
    if (tls)
      asio::async_write(*tls, asio::buffer(write_buf), std::move(done));
    else
      asio::async_write(socket, asio::buffer(write_buf.data() + sent, write_buf.size() - sent), std::move(done));
  }

  void read() {
    // TLS: bound to the strand, so that the stream's intermediate steps, which
    // share its engine with a write in progress, run there too.
    if (tls) {
      tls->async_read_some(asio::buffer(read_buf),
                           asio::bind_executor(strand, [self = shared_from_this()](error_code ec, std::size_t n) {
                             self->on_read(ec, n);
                           }));
      return;
    }
    // A plain read completes on the inner executor and enters the strand
    // through its `dispatch` (run at once when the strand is free, as a bound
    // handler would be). Not a bound handler: on a strand of a type-erased
    // executor, Boost 1.81 completes one through a copy of the strand wrapped
    // in `any_io_executor` (too large for its own storage) and `blocking`
    // queries answered on the heap: three allocations for each read. Until
    // `on_read` runs, only `self` is touched; the bytes were received into
    // `read_buf`, which nothing on the strand uses while a read is pending.
    socket.async_read_some(asio::buffer(read_buf), [self = shared_from_this()](error_code ec, std::size_t n) {
      detail::dispatch_on(self->strand, [self, ec, n] { self->on_read(ec, n); });
    });
  }

  void on_read(error_code ec, std::size_t n) {
    if (ec) return fail(ec);
    reader.feed(std::string_view(read_buf.data(), n));
    on_replies();
  }

  // Completes the replies read so far, writes the commands their completions
  // issued, then reads on. A completion that throws propagates (out of run(),
  // to its caller); the rest of the replies, and the reads after them, go on
  // in a turn of their own.
  void on_replies() {
    delivering = true;
    bool open = false;
    try {
      open = take_replies();
    } catch (...) {
      if (end_delivery()) schedule_write();
      if (st != state::closed) asio::post(strand, [self = shared_from_this()] { self->on_replies(); });
      throw;
    }
    const bool queued = end_delivery();
    if (!open) {
      if (queued) schedule_write();
      return;
    }
    // The commands the completions issued go out together, before the next
    // read is started.
    if (queued) write();
    read();
  }

  // Ends the completion of one read's replies: whether commands were queued
  // meanwhile.
  bool end_delivery() {
    delivering = false;
    return std::exchange(write_after, false);
  }

  // Completes the commands whose replies were read; false once the connection
  // failed or was closed.
  bool take_replies() {
    for (;;) {
      error_code perr;
      reply& r = incoming;
      if (!reader.next(r, perr)) {
        if (perr) {
          fail(perr);
          return false;
        }
        return true;
      }
      if (push && is_message(r)) {
        push(r);
        if (st == state::closed) return false;
        continue;
      }
      if (written == 0) {
        fail(make_error_code(error::protocol_error));
        return false;
      }
      if (queue.front().skip > 0) {  // the reply to a prefix written with the command
        --queue.front().skip;
        continue;
      }
      command c = std::move(queue.front());
      queue.pop_front();
      --written;
      if (c.auth)
        handshake_reply(c, r);
      else if (c.waiting() && c.cancel && c.cancel->requested.load(std::memory_order_acquire)) {
        // Cancelled by its caller before its reply was taken (its abandonment
        // is still on its way to the strand): the reply is dropped.
        --live;
        deliver(c, asio::error::operation_aborted, reply{});
      } else if (c.waiting()) {
        --live;
        if (c.into) {  // set only with a handler
          // The caller's memory comes back to the reader through `incoming`.
          swap(*c.into, r);
          deliver(c, error_code{}, reply{});
        } else {
          deliver(c, error_code{}, std::move(r));
        }
      }
      if (st == state::closed) return false;
    }
  }

  // One timer for every command's deadline. All commands share one timeout, so
  // deadlines grow in queue order: the first live command is the earliest.
  const command* first_live() const {
    for (const auto& c : queue)
      if (c.waiting()) return &c;
    return nullptr;
  }

  void arm_deadline() {
    // An armed timer is set for a deadline no later than any live command's:
    // commands are queued in the order of their deadlines.
    if (armed) return;
    const command* first = first_live();
    if (!first) return;
    armed = true;
    deadline_timer.expires_at(first->deadline);
    deadline_timer.async_wait([self = shared_from_this()](error_code ec) {
      if (ec) return;  // closed
      self->armed = false;
      if (self->st == state::closed) return;
      const auto now = clock_type::now();
      std::vector<std::uint64_t> late;
      auto collect = [&] {
        for (auto& c : self->queue) {
          if (!c.waiting()) continue;
          if (c.deadline > now) return;
          late.push_back(c.id);
        }
      };
      collect();
      self->time_out(std::move(late), 0);
    });
  }

  // Completes the commands `late[from...]` with `error::timed_out`, then
  // arms the timer for the next deadline. A completion that throws
  // propagates; the commands after it, and the timer, follow in a turn of
  // their own.
  void time_out(std::vector<std::uint64_t> late, std::size_t from) {
    for (std::size_t i = from; i < late.size(); ++i) {
      try {
        abandon(late[i], make_error_code(error::timed_out));
      } catch (...) {
        asio::post(strand, [self = shared_from_this(), late = std::move(late), i]() mutable {
          if (self->st != state::closed) self->time_out(std::move(late), i + 1);
        });
        throw;
      }
    }
    arm_deadline();
  }

  // The execution context is shutting down: no handler will ever run again.
  // Destroys the stored ones, releasing what they own (the cycles through this
  // object included), as Asio does with the operations it holds.
  void drop_handlers() {
    std::optional<connect_handler> c = std::move(connecting);
    connecting.reset();
    detail::ring<command> q = std::move(queue);
    queue.clear();
    written = 0;
    out.clear();
    live = 0;
  }

  // The connection is lost: everyone waiting learns why.
  void fail(error_code ec) {
    if (st == state::closed) return;
    const bool was_open = st == state::open;
    st = state::closed;
    open_flag = false;
    if (was_open && lost) std::exchange(lost, nullptr)();
    error_code ignored;
    socket.close(ignored);
    resolver.cancel();
    connect_timer.cancel();
    deadline_timer.cancel();
    if (connecting) {
      auto h = std::move(*connecting);
      connecting.reset();
      complete(std::move(h), std::move(connecting_work), ec);
    }
    live = 0;
    // Out of the queues first: a completion may issue commands (they fail at once).
    auto doomed = std::make_shared<detail::ring<command>>(std::move(queue));
    queue.clear();
    written = 0;
    out.clear();
    fail_all(std::move(doomed), ec);
  }

  // Completes the commands of `doomed` with `ec`, in order. A completion that
  // throws propagates; the commands after it are completed in a turn of their
  // own.
  void fail_all(std::shared_ptr<detail::ring<command>> doomed, error_code ec) {
    while (!doomed->empty()) {
      command c = std::move(doomed->front());
      doomed->pop_front();
      if (!c.waiting()) continue;
      try {
        deliver(c, ec, reply{});
      } catch (...) {
        if (!doomed->empty())
          asio::post(strand, [self = shared_from_this(), doomed = std::move(doomed), ec]() mutable {
            self->fail_all(std::move(doomed), ec);
          });
        throw;
      }
    }
  }
};


connection::connection(executor_type ex, connection_options opts) {
  detail::check_connection_options(opts);
  detail::cap_connection_durations(opts);
  impl_ = std::make_shared<impl>(ex, std::move(opts));
  cacheflight::detail::drop_handlers_at_shutdown(ex, impl_);
}

connection::~connection() { close(); }

void connection::close() { close_with(asio::error::operation_aborted); }

void connection::close_with(error_code reason) {
  asio::post(impl_->strand, [self = impl_, reason] { self->fail(reason); });
}

bool connection::is_open() const noexcept { return impl_->open_flag.load(); }

connection::executor_type connection::get_executor() const noexcept { return impl_->strand; }

void connection::start_connect(connect_handler h) {
  asio::post(impl_->strand, [self = impl_, h = std::move(h)]() mutable { self->connect(std::move(h)); });
}

asio::any_completion_executor connection::track_work(exec_handler& h, const asio::strand<executor_type>& strand,
                                                     std::optional<asio::any_completion_executor> known) {
  return known ? std::move(*known) : tracked(h, strand);
}

std::shared_ptr<detail::exec_cancel> connection::watch_cancel(exec_handler& h,
                                                             const asio::strand<executor_type>& strand) {
  auto slot = asio::get_associated_cancellation_slot(h);
  if (!slot.is_connected()) return nullptr;
  return detail::hook_cancel(slot, strand);
}

void connection::start_exec(detail::command_bytes&& cmd, exec_handler h,
                            std::optional<asio::any_completion_executor> known) {
  auto cancel = watch_cancel(h, impl_->strand);
  auto work = track_work(h, impl_->strand, std::move(known));
  exec_on_strand(std::move(cmd), std::move(h), std::move(cancel), std::move(work));
}

void connection::exec_on_strand(detail::command_bytes&& cmd, exec_handler h,
                                std::shared_ptr<detail::exec_cancel> cancel, asio::any_completion_executor work) {
  // Already on the strand (a client's, or a completion's): no hop needed.
  if (impl_->strand.running_in_this_thread())
    return impl_->exec(cmd, std::move(h), cancel, std::move(work));
  detail::post_on(impl_->strand, [self = impl_, cmd = std::move(cmd), h = std::move(h), cancel = std::move(cancel),
                                  work = std::move(work)]() mutable {
    self->exec(cmd, std::move(h), cancel, std::move(work));
  });
}

void connection::exec_direct(std::string_view bytes, direct_fn fn, std::shared_ptr<void> ctx,
                             const std::shared_ptr<detail::exec_cancel>& cancel, unsigned skip) {
  impl_->exec_direct(bytes, fn, std::move(ctx), cancel, skip);
}

void connection::on_push(std::function<void(reply&)> f) {
  asio::dispatch(impl_->strand, [self = impl_, f = std::move(f)]() mutable { self->push = std::move(f); });
}

void connection::on_lost(std::function<void()> f) {
  asio::dispatch(impl_->strand, [self = impl_, f = std::move(f)]() mutable { self->lost = std::move(f); });
}

}  // namespace cacheflight::redis
