// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_REDIS_CLIENT_HPP
#define CACHEFLIGHT_REDIS_CLIENT_HPP

#include <cacheflight/redis/connection.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/strand.hpp>

#include <chrono>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cacheflight::redis {

/// Options of a `client`: the connection's, and how to keep it alive.
/// Redis Sentinel: where the client finds the master of a replicated set
/// (`client_options::sentinel`). An aggregate: use designated initializers.
///
/// With `master_name` set, every connect (the first and each reconnect) asks
/// the sentinels in turn, starting with the last one that answered,
/// `SENTINEL get-master-addr-by-name <master_name>`, connects to the address
/// given with `client_options::connection` (its host and port replaced), and
/// checks with `ROLE` that the server is a master. The health check asks
/// `ROLE` instead of `PING`, so a master demoted in a failover is left at the
/// next check even if its connection stays up; a lost connection reconnects
/// after the client's backoff, to whatever master the sentinels name then.
/// Until a master is found and checked, commands fail with
/// `error::not_connected`, and `client::last_error()` says why:
/// `error::master_not_found` (a sentinel was reached and none named a master;
/// when none could be reached, the last one's error), `error::not_master` (the
/// named server is not a master, yet), `error::auth_failed` (a refused AUTH,
/// or an ACL user that may not run ROLE), or the data connection's error.
///
/// With TLS to the data nodes, their certificates are checked against the
/// address the sentinels give (usually an IP address) unless
/// `connection.tls.server_name` names what the certificates carry.
struct sentinel_options {
  /// The sentinels, "host:port" each (IPv6: "[::1]:26379").
  std::vector<std::string> sentinels{};
  /// The name of the master set, as in the sentinels' `sentinel monitor`.
  std::string master_name{};
  /// ACL user and password of the sentinels (Redis 6.2 and later), if any.
  std::string username{};
  std::string password{};
  /// TLS to the sentinels (the data nodes use `connection.tls`).
  tls_options tls{};
};

/// Redis Cluster: the seed nodes the client learns the cluster from
/// (`client_options::cluster`). An aggregate: use designated initializers.
///
/// With `nodes` set, the client asks the seeds (then any master it knows)
/// `CLUSTER SLOTS`, keeps one pipelined connection to each master (all of
/// them on the client's strand), and sends each command to the master of its
/// key's slot (`key_slot`): the key is `args[1]`, or for `EVAL`, `EVALSHA`,
/// `EVAL_RO`, `EVALSHA_RO`, `FCALL` and `FCALL_RO` with keys, `args[3]`.
/// Commands without a key (a one-element command, or one of `PING`, `ECHO`,
/// `INFO`, `TIME`, `ROLE`, `DBSIZE`, `SCAN`, `KEYS`, `RANDOMKEY`, `CLUSTER`,
/// `CLIENT`, `CONFIG`, `COMMAND`, `FLUSHALL`, `FLUSHDB`, `SCRIPT`,
/// `FUNCTION`, `PUBLISH`, `WAIT`) go to the master of slot 0 (while it is
/// down, another master that is up); send them to a given master with
/// `client::async_exec_at`. A command with several keys (`MGET`, `DEL a b`,
/// a script) must keep them in one slot, with hash tags
/// (`{user:42}:name` and `{user:42}:mail` share the slot of `user:42`);
/// otherwise the server answers with a `CROSSSLOT` error reply.
///
/// - `MOVED`: the slot's new master is recorded, the command re-sent there,
///   and the whole map refreshed in the background.
/// - `ASK` (a slot being migrated): the command is re-sent once to the named
///   node, preceded by `ASKING`; the map is left as it is.
/// - `TRYAGAIN` and `CLUSTERDOWN`: re-sent after `retry_delay`, doubling each
///   time, at most `max_retries` times; then the error reply is the result.
/// - The first redirection of a command is followed at once, each further
///   one after `retry_delay`, doubling (the nodes of a migrated slot learn its
///   new owner one after the other and can send a command back and forth
///   meanwhile). More than `max_redirects` redirections of one command: the
///   last redirection's error reply is the result.
/// - A master that was connected and is lost fails the commands for its slots
///   at once with `error::not_connected` (the other slots are not affected)
///   and is reconnected with the client's backoff; `node_failures` consecutive
///   timeouts on one master, or a failed PING (sent to every master that is up
///   each `health_check_interval`), close its connection as if it were lost.
///   Either makes the client refresh the map, which picks up a replica
///   promoted in its place. The map is also refreshed every
///   `refresh_interval`. Commands wait only for a master's first connection
///   (a master new in the map, or named by a redirection): at most
///   `connect_timeout`, and at most `connection.max_pending` of them (beyond:
///   `error::queue_full`).
/// - A master that leaves the map gets no new command; commands already
///   written to it complete there (a `MOVED` reply is followed), and its
///   connection is closed after `command_timeout` + `connect_timeout`.
/// - A command that fails on its connection (an I/O error, a timeout, or the
///   connection closed under it: `error::not_connected`) is not re-sent: it
///   may have been executed.
///
/// Every node is reached with `client_options::connection` (its host and
/// port replaced): the same credentials and TLS options; with TLS, node
/// certificates are checked against the addresses the cluster announces unless
/// `connection.tls.server_name` is set. Cluster has no databases: `database`
/// must be 0.
struct cluster_options {
  /// Seed nodes, "host:port" each (IPv6: "[::1]:6379"); any node of the
  /// cluster will do, several guard against one being down.
  std::vector<std::string> nodes{};
  /// How often the slot map is refreshed when nothing else asks for it.
  std::chrono::milliseconds refresh_interval{10'000};
  /// Redirections (`MOVED`, `ASK`) followed for one command at most.
  unsigned max_redirects = 8;
  /// `TRYAGAIN` / `CLUSTERDOWN` replies retried for one command at most, the
  /// first after `retry_delay`, each next one after twice the previous delay.
  unsigned max_retries = 5;
  std::chrono::milliseconds retry_delay{20};
  /// Consecutive command timeouts on one master that close its connection.
  unsigned node_failures = 3;
};

/// Options of a `client`. Durations above ten years, here and in
/// `connection` and `cluster`, count as ten years (`milliseconds::max()` can
/// stand for never); `client::options()` returns them so.
struct client_options {
  connection_options connection{};
  /// First delay before reconnecting; it doubles on each failure up to `reconnect_max`,
  /// and each delay is drawn between half of it and all of it (jitter).
  std::chrono::milliseconds reconnect_min{50};
  std::chrono::milliseconds reconnect_max{5000};
  /// How often the connection is checked: a lost connection is reopened, an open
  /// one is sent a PING, and a PING that fails closes it for reopening (one the
  /// connection refuses itself, its queue full, waits for the next check).
  std::chrono::milliseconds health_check_interval{1000};
  /// Find the server through Redis Sentinel (see `sentinel_options`); off
  /// while `sentinel.master_name` is empty.
  sentinel_options sentinel{};
  /// Talk to a Redis Cluster (see `cluster_options`); off while
  /// `cluster.nodes` is empty. Not combined with Sentinel.
  cluster_options cluster{};
};

/// Counters of a Cluster client (`client::cluster_info()`).
struct cluster_stats {
  std::size_t map_refreshes = 0;  ///< slot maps read and applied
  std::size_t moved = 0;          ///< MOVED replies seen
  std::size_t ask = 0;            ///< ASK replies seen
  std::size_t retries = 0;        ///< TRYAGAIN / CLUSTERDOWN replies retried
};

/// The cluster hash slot of a key (0 to 16383): CRC16 (XMODEM) of the key, or
/// of its hash tag (the part between the first `{` and the next `}`, when not
/// empty), modulo 16384, as Redis Cluster computes it.
std::uint16_t key_slot(std::string_view key) noexcept;

/// A Redis client that keeps one pipelined `connection` open: it connects in
/// the background, reconnects with capped exponential backoff and jitter when
/// the connection is lost, and checks it with PING when idle. While it is not
/// connected, commands fail at once with `error::not_connected`: nothing is
/// queued without bound. The same client talks to one server, to the master
/// of a set behind Sentinel (`sentinel_options`), or to a Redis Cluster
/// (`cluster_options`, one pipelined connection per master).
///
/// @par Threads
/// Every member may be called from any thread.
class client {
 public:
  using executor_type = boost::asio::any_io_executor;

  /// Starts connecting at once.
  /// @throws boost::system::system_error with `error::invalid_option` for
  /// options that cannot work: those `connection` refuses; a `reconnect_min`
  /// or `health_check_interval` that is not positive, a `reconnect_max` below
  /// `reconnect_min`; sentinels without a
  /// master name or a master name without sentinels; a sentinel address that
  /// is not `host:port`, `[v6]:port`, `host`, `[v6]` or a bare IPv6 address
  /// (port 26379 when absent; a port is a number from 1 to 65535); Sentinel
  /// with a unix socket. Cluster: Sentinel too, a unix socket, a database
  /// other than 0, a seed not written as a sentinel's is (port 6379 when
  /// absent), zero `max_redirects` or `node_failures`, a refresh interval or
  /// retry delay that is not positive.
  client(executor_type ex, client_options opts);
  /// Stops reconnecting and closes the connection.
  ~client();
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  /// As `connection::async_exec`, on the current connection. The views are
  /// serialized before this function returns (they may refer to temporaries,
  /// whatever the token); with Cluster a command is serialized once, and
  /// those bytes are what a redirection or a retry sends again.
  /// @par Completion signature
  /// @code void(boost::system::error_code ec, redis::reply r) @endcode
  /// Errors: those of `connection::async_exec`; `error::not_connected` while
  /// (re)connecting (with Cluster: while no slot map is known, or the master
  /// of the command's slot cannot be reached), and for a command waiting on a
  /// connection the client closes to reopen it (its health check failed); one
  /// waiting on a connection that is lost gets the socket's error. Neither is
  /// re-sent: it may have been executed. `operation_aborted` only for a
  /// command its caller cancelled, or when the client is destroyed. With Cluster, redirections and
  /// retries are followed before the handler runs (see `cluster_options`).
  /// @par Executor
  /// The handler runs on its associated executor, never inside this call;
  /// outstanding work is held on that executor until it has run. A handler
  /// without an associated executor runs on `get_strand()`.
  /// @par Per-Operation Cancellation
  /// `terminal`, `partial` and `total`, honoured from the moment this function
  /// returns: the command completes with `operation_aborted`; one not sent yet
  /// is never sent, and the reply of one already sent is dropped when it comes.
  /// @par Thread safety
  /// Any thread.
  template <boost::asio::completion_token_for<void(boost::system::error_code, reply)> CompletionToken>
  auto async_exec(std::initializer_list<std::string_view> args, CompletionToken&& token) {
    return exec_command({}, detail::command_bytes(args), std::forward<CompletionToken>(token));
  }

  /// As above, with arguments known at run time (see `connection::async_exec`).
  template <boost::asio::completion_token_for<void(boost::system::error_code, reply)> CompletionToken>
  auto async_exec(std::vector<std::string> args, CompletionToken&& token) {
    return exec_command({}, detail::command_bytes(std::move(args)), std::forward<CompletionToken>(token));
  }

  /// As above, with the reply read into `into` (see the same overload of
  /// `connection::async_exec`): without an error `into` holds the reply,
  /// with one it is left as it was; it must stay valid, and must not be used,
  /// until the handler runs. Without Cluster, a caller that reads every reply
  /// into one `reply` lends its memory back to the connection, which builds
  /// later replies in it; a command returning its reply to a handler on the
  /// same connection (another caller's, or the client's health-check `PING`)
  /// takes the memory its reply was built in along. With Cluster, the reply
  /// is swapped into `into` at the end of its redirections, and `into`'s
  /// previous memory is freed.
  /// @par Completion signature
  /// @code void(boost::system::error_code ec) @endcode
  /// Errors, executor, cancellation and thread safety: as above.
  template <boost::asio::completion_token_for<void(boost::system::error_code)> CompletionToken>
  auto async_exec(std::initializer_list<std::string_view> args, reply& into, CompletionToken&& token) {
    detail::command_bytes cmd(args);
    cmd.into = &into;
    return exec_command<void(boost::system::error_code)>({}, std::move(cmd), std::forward<CompletionToken>(token));
  }

  /// As above, with arguments known at run time.
  template <boost::asio::completion_token_for<void(boost::system::error_code)> CompletionToken>
  auto async_exec(std::vector<std::string> args, reply& into, CompletionToken&& token) {
    detail::command_bytes cmd(std::move(args));
    cmd.into = &into;
    return exec_command<void(boost::system::error_code)>({}, std::move(cmd), std::forward<CompletionToken>(token));
  }

  /// As `async_exec`, sent to one node: with Cluster, the master `node`
  /// ("host:port", as `masters()` gives it) whatever the command's key, and
  /// neither redirections nor retries are followed (`MOVED`, `ASK`,
  /// `TRYAGAIN` and `CLUSTERDOWN` replies are the result); without Cluster,
  /// `node` is ignored and the command goes to the one server.
  /// @par Completion signature
  /// @code void(boost::system::error_code ec, redis::reply r) @endcode
  /// Errors: as `async_exec`; with Cluster, `error::not_connected` for a node
  /// that is not a master of the current map or cannot be reached.
  /// @par Executor, cancellation and thread safety
  /// As `async_exec`.
  template <boost::asio::completion_token_for<void(boost::system::error_code, reply)> CompletionToken>
  auto async_exec_at(std::string node, std::initializer_list<std::string_view> args, CompletionToken&& token) {
    return exec_command(std::move(node), detail::command_bytes(args), std::forward<CompletionToken>(token));
  }

  /// As above, with arguments known at run time.
  template <boost::asio::completion_token_for<void(boost::system::error_code, reply)> CompletionToken>
  auto async_exec_at(std::string node, std::vector<std::string> args, CompletionToken&& token) {
    return exec_command(std::move(node), detail::command_bytes(std::move(args)), std::forward<CompletionToken>(token));
  }

  /// As above, with the reply read into `into` (see `async_exec(args, into, token)`).
  /// @par Completion signature
  /// @code void(boost::system::error_code ec) @endcode
  template <boost::asio::completion_token_for<void(boost::system::error_code)> CompletionToken>
  auto async_exec_at(std::string node, std::initializer_list<std::string_view> args, reply& into,
                     CompletionToken&& token) {
    detail::command_bytes cmd(args);
    cmd.into = &into;
    return exec_command<void(boost::system::error_code)>(std::move(node), std::move(cmd), std::forward<CompletionToken>(token));
  }

  /// As above, with arguments known at run time.
  template <boost::asio::completion_token_for<void(boost::system::error_code)> CompletionToken>
  auto async_exec_at(std::string node, std::vector<std::string> args, reply& into, CompletionToken&& token) {
    detail::command_bytes cmd(std::move(args));
    cmd.into = &into;
    return exec_command<void(boost::system::error_code)>(std::move(node), std::move(cmd), std::forward<CompletionToken>(token));
  }

  /// The executor given at construction.
  executor_type get_executor() const noexcept;

  /// The strand the client and its connection keep their state on. A command
  /// initiated on it is queued without a hop; `redis::tier` shares it.
  boost::asio::strand<executor_type> get_strand() const noexcept;

  /// Whether a connection is open now: false from the moment the client's
  /// strand sees the connection lost (a reconnect is then scheduled at once),
  /// so a command issued after it turned false fails with `not_connected`.
  /// With Cluster: whether every one of the 16384 slots has a master in the
  /// map whose connection is open.
  bool is_connected() const noexcept;

  /// How many connections were opened so far (1 after the first connect);
  /// with Cluster, to every master together.
  std::size_t connections_opened() const noexcept;

  /// The masters of the current slot map ("host:port" each, sorted), with
  /// Cluster; otherwise `server()` alone.
  std::vector<std::string> masters() const;

  /// What the Cluster side did so far (all 0 without Cluster).
  cluster_stats cluster_info() const noexcept;

  /// The options the client was made with.
  const client_options& options() const noexcept;

  /// Why the last attempt to connect failed (for instance `error::auth_failed`
  /// for refused credentials, `connection_refused`, a TLS error, or with
  /// Sentinel `error::master_not_found` or `error::not_master`); cleared by a
  /// success.
  boost::system::error_code last_error() const;

  /// The address ("host:port") of the server the client is connected to, or
  /// last tried (over a unix-domain socket, the socket's path); with
  /// Sentinel, the master the sentinels named; with Cluster, the node that
  /// gave the last slot map.
  std::string server() const;

 private:
  friend class tier;
  using exec_handler = boost::asio::any_completion_handler<void(boost::system::error_code, reply)>;
  // `node`: empty, or the one of `async_exec_at`. `Signature`: the
  // completion's, `void(error_code, reply)` or, with the reply read into the
  // caller's, `void(error_code)`.
  template <class Signature = void(boost::system::error_code, reply), class CompletionToken>
  auto exec_command(std::string node, detail::command_bytes cmd, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, Signature>(
        [this](auto handler, std::string node, detail::command_bytes cmd) {
          auto h = detail::exec_handler_for<Signature>(std::move(handler));
          auto work = detail::typed_work(h);
          start_exec_at(std::move(node), std::move(cmd), std::move(h), std::move(work));
        },
        token, std::move(node), std::move(cmd));
  }
  // For `tier` (one server or Sentinel): `setup(conn, done)` runs on the
  // strand on each new connection, once it is open and checked, and commands
  // are let through after it calls `done({})` (an error closes the connection
  // for reopening); `lost()` runs on the strand when a connection that was let
  // through is lost or replaced. A connection open before this call is
  // reopened so that it gets its setup.
  using setup_fn = std::function<void(const std::shared_ptr<connection>&, std::function<void(boost::system::error_code)>)>;
  // `claim`: from claim_connection_hook; ignored once it is released.
  void on_connection(std::uint64_t claim, setup_fn setup, std::function<void()> lost);
  // Takes the hooks above if they are free: a claim, nonzero; 0 if they are
  // taken, and with Cluster.
  std::uint64_t claim_connection_hook() noexcept;
  // Frees the hooks for another claim at once, and removes those `claim` set.
  void release_connection_hook(std::uint64_t claim);
  // `work`: from `detail::typed_work`.
  void start_exec_at(std::string node, detail::command_bytes&& cmd, exec_handler h,
                     std::optional<boost::asio::any_completion_executor> work);
  // For `tier`, on the strand, for a caller that hooked its own cancellation
  // (`cancel`, may be null) and whose handler runs on the strand. The command
  // with a handler (any deployment), or with `fn(ctx, ec, reply)` called on
  // the strand, never inside this call (one server or Sentinel only).
  using direct_fn = void (*)(const std::shared_ptr<void>& ctx, boost::system::error_code ec, reply r);
  void exec_on_strand(detail::command_bytes&& cmd, exec_handler h, std::shared_ptr<detail::exec_cancel> cancel);
  void exec_serialized(std::string_view bytes, direct_fn fn, std::shared_ptr<void> ctx,
                       const std::shared_ptr<detail::exec_cancel>& cancel);

  struct impl;
  struct cluster;
  std::shared_ptr<impl> impl_;          // one server, or Sentinel
  std::shared_ptr<cluster> cluster_;    // Cluster
};

}  // namespace cacheflight::redis

#endif
