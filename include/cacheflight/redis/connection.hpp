// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_REDIS_CONNECTION_HPP
#define CACHEFLIGHT_REDIS_CONNECTION_HPP

#include <cacheflight/redis/resp.hpp>

#include <boost/asio/any_completion_executor.hpp>
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/associator.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/strand.hpp>

#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace cacheflight::redis {

class client;
namespace detail {
struct exec_cancel;

// The candidate executor that marks a handler without one of its own. Never
// executes anything: it only stands in a query.
struct no_executor {
  template <class F>
  void execute(F&&) const noexcept {
    std::terminate();
  }
  friend bool operator==(const no_executor&, const no_executor&) noexcept { return true; }
  friend bool operator!=(const no_executor&, const no_executor&) noexcept { return false; }
};

// Outstanding work on a command's handler's executor, found from the
// handler's own type before it is type-erased, in the common cases: none for
// a handler without an executor (it runs on the connection's strand), and
// the io_context's executor itself for a handler whose executor is one
// (coroutines awaiting with `use_awaitable`, handlers bound to an
// io_context's executor), held without the type-erased wrapper around it
// (which would not fit an `any_completion_executor`'s own storage).
// `nullopt` otherwise (an executor of another kind): the connection then asks
// the erased handler.
template <class Handler>
std::optional<boost::asio::any_completion_executor> typed_work(const Handler& h) {
  namespace asio = boost::asio;
  using io_executor = asio::io_context::executor_type;
  using ex_type = asio::associated_executor_t<Handler, no_executor>;
  if constexpr (std::is_same_v<ex_type, no_executor>) {
    return asio::any_completion_executor();
  } else if constexpr (std::is_same_v<ex_type, io_executor>) {
    return asio::any_completion_executor(
        asio::prefer(asio::get_associated_executor(h, no_executor{}), asio::execution::outstanding_work.tracked));
  } else if constexpr (std::is_same_v<ex_type, asio::any_io_executor>) {
    const asio::any_io_executor ex = asio::get_associated_executor(h, no_executor{});
    if (const io_executor* io = ex.template target<io_executor>())
      return asio::any_completion_executor(asio::prefer(*io, asio::execution::outstanding_work.tracked));
    return std::nullopt;
  } else {
    return std::nullopt;
  }
}

// A `void(error_code)` handler taking a command's completion,
// `void(error_code, reply)`, whose reply was swapped into the caller's
// `reply` already (`async_exec(args, into, token)`). Its associated
// executor, allocator and cancellation slot are the handler's own.
template <class Handler>
struct reply_taken {
  Handler handler;
  void operator()(boost::system::error_code ec, reply) { std::move(handler)(ec); }
};

// A command's handler as the connection takes it, `void(error_code, reply)`,
// from the handler of an `async_exec` whose completion signature is
// `Signature`.
template <class Signature, class Handler>
auto exec_handler_for(Handler&& h) {
  if constexpr (std::is_same_v<Signature, void(boost::system::error_code)>)
    return reply_taken<std::decay_t<Handler>>{std::forward<Handler>(h)};
  else
    return std::decay_t<Handler>(std::forward<Handler>(h));
}
}  // namespace detail
}  // namespace cacheflight::redis

template <template <typename, typename> class Associator, class Handler, class DefaultCandidate>
struct boost::asio::associator<Associator, cacheflight::redis::detail::reply_taken<Handler>, DefaultCandidate>
    : Associator<Handler, DefaultCandidate> {
  static typename Associator<Handler, DefaultCandidate>::type get(
      const cacheflight::redis::detail::reply_taken<Handler>& h) noexcept {
    return Associator<Handler, DefaultCandidate>::get(h.handler);
  }
  static auto get(const cacheflight::redis::detail::reply_taken<Handler>& h, const DefaultCandidate& c) noexcept
      -> decltype(Associator<Handler, DefaultCandidate>::get(h.handler, c)) {
    return Associator<Handler, DefaultCandidate>::get(h.handler, c);
  }
};

namespace cacheflight::redis {

/// Where and how to connect.
/// TLS for a connection (`connection_options::tls`), over OpenSSL through
/// `boost::asio::ssl`. An aggregate: use designated initializers.
///
/// With `enabled`, the connection performs a TLS handshake after TCP connects
/// and before anything else (AUTH, SELECT); it never falls back to plain TCP.
/// The server's certificate is verified against `ca_file` and `ca_path` (the
/// system's default trust store when both are empty), and its name against
/// `server_name` (or `host`): a DNS name or an IP address, matched against the
/// certificate's subject alternative names. A handshake that fails (a
/// certificate that does not verify, a name that does not match, a client
/// certificate the server requires and was not given) fails the connect with
/// the TLS error (category `asio.ssl`, e.g. "certificate verify failed"),
/// which `client::last_error()` reports. So do files that cannot be read.
struct tls_options {
  /// Connect with TLS.
  bool enabled = false;
  /// A PEM file of CA certificates to verify the server with.
  std::string ca_file{};
  /// A directory of CA certificates (OpenSSL's hashed names, `c_rehash`).
  std::string ca_path{};
  /// A PEM client certificate, for servers that require one (mutual TLS).
  std::string cert_file{};
  /// The PEM private key of `cert_file`.
  std::string key_file{};
  /// The name sent with SNI (when it is not an IP address) and verified in
  /// the server's certificate; empty: `connection_options::host`.
  std::string server_name{};
  /// Verify the server's certificate and name. Turning it off is UNSAFE: any
  /// server, or anyone between, is accepted; for tests against throwaway
  /// certificates only.
  bool verify_peer = true;
};

/// Options of a `connection` (and of each connection of a `client`).
/// Durations above ten years count as ten years (`milliseconds::max()` can
/// stand for never).
struct connection_options {
  std::string host = "127.0.0.1";
  std::string port = "6379";
  /// A unix-domain socket path; when set, used instead of host and port.
  std::string unix_socket{};
  /// ACL user name (Redis 6 and later); empty: AUTH with the password alone.
  std::string username{};
  /// Empty: no AUTH.
  std::string password{};
  /// SELECT this database after connecting, when not 0.
  int database = 0;
  std::chrono::milliseconds connect_timeout{1000};
  /// Bound on each command's wait for its reply: a command that has no reply
  /// this long after it was issued completes with `error::timed_out`.
  std::chrono::milliseconds command_timeout{1000};
  /// Commands whose callers wait (queued or written; cancelled and timed-out
  /// ones excluded) at most; beyond it `error::queue_full`.
  std::size_t max_pending = 10'000;
  /// TLS; off by default.
  tls_options tls{};
  /// Bound on one reply: its strings' bytes plus `sizeof(reply)` per array
  /// element, from 1 to `max_max_reply_bytes` (see `reply_reader`). A reply
  /// beyond it fails the connection with `error::protocol_error`, as malformed
  /// bytes do (every command waiting on it fails), before the connection has
  /// received much more than the bound of it; the memory it holds for one
  /// reply stays under about twice the bound.
  std::size_t max_reply_bytes = default_max_reply_bytes;
};

/// One connection to a Redis server over TCP (optionally TLS, see
/// `tls_options`) or a unix-domain socket, with pipelining: concurrent commands share the connection, are written together,
/// and complete in order. Asio owns the socket; replies are parsed by hiredis.
/// Without TLS, the commands of one write are first sent in place on the
/// strand (the socket is in non-blocking mode); what the socket does not take
/// at once is written by an asynchronous operation, and commands issued
/// meanwhile go out in the write after it.
///
/// A connection is opened once. When it is lost (an I/O or protocol error, or
/// `close`), every command waiting on it fails with that error and later
/// commands fail at once with `error::not_connected`: make a new connection to
/// reconnect.
///
/// @par Threads
/// Every member may be called from any thread; the connection's state lives on
/// a strand of its executor.
class connection {
 public:
  using executor_type = boost::asio::any_io_executor;

  /// @throws boost::system::system_error with `error::invalid_option` for
  /// options that cannot work: TLS over a unix socket, a client certificate
  /// without its key or a key without its certificate, a `connect_timeout` or
  /// `command_timeout` that is not positive, a `max_pending` of 0, a
  /// `max_reply_bytes` of 0 or above `max_max_reply_bytes`, a negative
  /// `database`.
  connection(executor_type ex, connection_options opts);
  /// Closes the connection: waiting commands fail with `operation_aborted`.
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  /// Connects, then authenticates (AUTH) and selects the database if asked.
  /// @par Completion signature
  /// @code void(boost::system::error_code ec) @endcode
  /// Errors: resolver and socket errors, `error::timed_out` (after
  /// `connect_timeout`), `error::auth_failed`, `error::protocol_error`;
  /// `asio::error::already_started` for any call after the first (connecting,
  /// open or closed: a connection is opened once), which leaves the
  /// connection as it was.
  template <boost::asio::completion_token_for<void(boost::system::error_code)> CompletionToken>
  auto async_connect(CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(boost::system::error_code)>(
        [this](auto handler) { start_connect(std::move(handler)); }, token);
  }

  /// Sends one command (`args[0]` its name; every argument is binary safe) and
  /// waits for its reply. The views are serialized before this function
  /// returns, into a buffer the operation owns (in place up to 104 bytes of
  /// protocol, which covers a GET or a short SET, so that no allocation is
  /// made for them): they may refer to temporaries, whatever the completion
  /// token (`deferred` included).
  /// (GCC 12 does not compile a braced list inside a `co_await` expression:
  /// name it first, `std::initializer_list<std::string_view> get{"GET", k};`,
  /// then `co_await c.async_exec(get, use_awaitable)`.)
  /// @par Completion signature
  /// @code void(boost::system::error_code ec, redis::reply r) @endcode
  /// A server error reply (`-ERR ...`) is a reply with `is_error()`, not an
  /// `ec`. Errors: `asio::error::invalid_argument` (no arguments, nothing
  /// sent), `error::not_connected`, `error::queue_full`,
  /// `error::timed_out` (after `command_timeout`), `error::protocol_error`,
  /// socket errors (the connection is then lost).
  /// @par Per-Operation Cancellation
  /// `terminal`, `partial` and `total`, honoured from the moment this function
  /// returns: the command completes with `operation_aborted`. One not written
  /// yet is never sent; if it was written already, its reply is read and
  /// dropped when it comes, and the connection stays usable (as after a timeout).
  /// @par Executor
  /// The handler runs on its associated executor, never inside this call;
  /// outstanding work is held on that executor until it has run. A handler
  /// that throws propagates its exception out of the `run()` that ran it; the
  /// connection goes on (the other commands complete as they would have).
  template <boost::asio::completion_token_for<void(boost::system::error_code, reply)> CompletionToken>
  auto async_exec(std::initializer_list<std::string_view> args, CompletionToken&& token) {
    return exec_command(detail::command_bytes(args), std::forward<CompletionToken>(token));
  }

  /// As above, with arguments known at run time; the strings are moved into
  /// the operation and serialized straight into the connection's next write.
  template <boost::asio::completion_token_for<void(boost::system::error_code, reply)> CompletionToken>
  auto async_exec(std::vector<std::string> args, CompletionToken&& token) {
    return exec_command(detail::command_bytes(std::move(args)), std::forward<CompletionToken>(token));
  }

  /// As above, with the reply read into `into` instead of passed to the
  /// handler. The connection swaps its reply with `into`'s contents, and
  /// builds a later reply in the memory `into` had. So a caller that reads
  /// every reply into one `reply` keeps lending memory back: once the few
  /// buffers that change hands this way have grown to its replies' size, a
  /// status, error or bulk reply allocates nothing (an array's elements are
  /// made anew). A reply handed to a handler instead (another command's, on
  /// the same connection) takes the memory it was built in out of the
  /// exchange, and a later reply allocates again. Without an error, `into`
  /// holds the reply, a server error reply (`-ERR ...`, `is_error()`)
  /// included; with one, `into` is left as it was.
  /// `into` must stay valid, and must not be used, until the handler runs;
  /// the connection does not touch it afterwards (after a cancellation or a
  /// timeout, a reply that comes later is dropped).
  /// @par Completion signature
  /// @code void(boost::system::error_code ec) @endcode
  /// Errors, cancellation and executor: as above.
  template <boost::asio::completion_token_for<void(boost::system::error_code)> CompletionToken>
  auto async_exec(std::initializer_list<std::string_view> args, reply& into, CompletionToken&& token) {
    detail::command_bytes cmd(args);
    cmd.into = &into;
    return exec_command<void(boost::system::error_code)>(std::move(cmd), std::forward<CompletionToken>(token));
  }

  /// As above, with arguments known at run time.
  template <boost::asio::completion_token_for<void(boost::system::error_code)> CompletionToken>
  auto async_exec(std::vector<std::string> args, reply& into, CompletionToken&& token) {
    detail::command_bytes cmd(std::move(args));
    cmd.into = &into;
    return exec_command<void(boost::system::error_code)>(std::move(cmd), std::forward<CompletionToken>(token));
  }

  /// Closes the connection; waiting commands fail with `operation_aborted`.
  /// Asynchronous: `is_open()` turns false once the connection's strand has
  /// run the close.
  void close();

  /// Whether the connection is open (connected and authenticated).
  bool is_open() const noexcept;

  executor_type get_executor() const noexcept;

 private:
  friend class client;
  friend class tier;
  using connect_handler = boost::asio::any_completion_handler<void(boost::system::error_code)>;
  using exec_handler = boost::asio::any_completion_handler<void(boost::system::error_code, reply)>;

  void start_connect(connect_handler h);
  // As `close`, failing the waiting commands with `reason`.
  void close_with(boost::system::error_code reason);
  // `Signature`: the completion's, `void(error_code, reply)` or, with the
  // reply read into the caller's, `void(error_code)`.
  template <class Signature = void(boost::system::error_code, reply), class CompletionToken>
  auto exec_command(detail::command_bytes cmd, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, Signature>(
        [this](auto handler, detail::command_bytes cmd) {
          auto h = detail::exec_handler_for<Signature>(std::move(handler));
          auto work = detail::typed_work(h);
          start_exec(std::move(cmd), std::move(h), std::move(work));
        },
        token, std::move(cmd));
  }
  // `work`: from `detail::typed_work`.
  void start_exec(detail::command_bytes&& cmd, exec_handler h,
                  std::optional<boost::asio::any_completion_executor> work);

  // For `client`, which shares the connection's strand: a command whose
  // cancellation was hooked in its initiating function (`watch_cancel`), and
  // a callback run on the strand when an open connection is lost.
  static std::shared_ptr<detail::exec_cancel> watch_cancel(exec_handler& h,
                                                          const boost::asio::strand<executor_type>& strand);
  // Outstanding work on the handler's executor, held until it has run (none
  // when it is `strand`, the connection's own): `known` if `typed_work`
  // found it, else asked of the erased handler.
  static boost::asio::any_completion_executor track_work(exec_handler& h,
                                                        const boost::asio::strand<executor_type>& strand,
                                                        std::optional<boost::asio::any_completion_executor> known);
  // `work`: outstanding work on the handler's executor, taken in the initiating function.
  void exec_on_strand(detail::command_bytes&& cmd, exec_handler h, std::shared_ptr<detail::exec_cancel> c,
                      boost::asio::any_completion_executor work);
  void on_lost(std::function<void()> f);
  // For a subscribed connection (SUBSCRIBE): each `message` or `pmessage`
  // reply is given to `f` on the strand instead of being taken for a
  // command's reply. Set it before subscribing.
  void on_push(std::function<void(reply&)> f);
  // On the strand only: a command already serialized (RESP), completed by
  // `fn(ctx, ec, reply)` called on the strand, never inside this call; the
  // bytes are copied before it returns. The
  // first `skip` replies are those of commands written before it in `bytes`
  // (ASKING): dropped, and written or not together with it.
  using direct_fn = void (*)(const std::shared_ptr<void>& ctx, boost::system::error_code ec, reply r);
  void exec_direct(std::string_view bytes, direct_fn fn, std::shared_ptr<void> ctx,
                   const std::shared_ptr<detail::exec_cancel>& cancel, unsigned skip = 0);

  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace cacheflight::redis

#endif
