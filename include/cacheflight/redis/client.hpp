// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_REDIS_CLIENT_HPP
#define CACHEFLIGHT_REDIS_CLIENT_HPP

#include <cacheflight/redis/connection.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/strand.hpp>

#include <chrono>
#include <memory>
#include <string>
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

struct client_options {
  connection_options connection{};
  /// First delay before reconnecting; it doubles on each failure up to `reconnect_max`,
  /// and each delay is drawn between half of it and all of it (jitter).
  std::chrono::milliseconds reconnect_min{50};
  std::chrono::milliseconds reconnect_max{5000};
  /// How often the connection is checked: a lost connection is reopened, an idle
  /// one is sent a PING, and a PING that fails closes it for reopening.
  std::chrono::milliseconds health_check_interval{1000};
  /// Find the server through Redis Sentinel (see `sentinel_options`); off
  /// while `sentinel.master_name` is empty.
  sentinel_options sentinel{};
};

/// A Redis client that keeps one pipelined `connection` open: it connects in
/// the background, reconnects with capped exponential backoff and jitter when
/// the connection is lost, and checks it with PING when idle. While it is not
/// connected, commands fail at once with `error::not_connected`: nothing is
/// queued without bound.
///
/// @par Threads
/// Every member may be called from any thread.
class client {
 public:
  using executor_type = boost::asio::any_io_executor;

  /// Starts connecting at once.
  /// @throws boost::system::system_error with `error::invalid_option` for
  /// options that cannot work: those `connection` refuses; sentinels without a
  /// master name or a master name without sentinels; a sentinel address that
  /// is not `host:port`, `[v6]:port`, `host` or `[v6]` (port 26379); Sentinel
  /// with a unix socket.
  client(executor_type ex, client_options opts);
  /// Stops reconnecting and closes the connection.
  ~client();
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  /// As `connection::async_exec`, on the current connection.
  /// @par Completion signature
  /// @code void(boost::system::error_code ec, redis::reply r) @endcode
  /// Errors: those of `connection::async_exec`; `error::not_connected` while
  /// (re)connecting.
  /// @par Executor
  /// The handler runs on its associated executor, never inside this call;
  /// outstanding work is held on that executor until it has run.
  /// @par Per-Operation Cancellation
  /// `terminal`, `partial` and `total`, honoured from the moment this function
  /// returns: the command completes with `operation_aborted`; one not sent yet
  /// is never sent, and the reply of one already sent is dropped when it comes.
  /// @par Thread safety
  /// Any thread.
  template <boost::asio::completion_token_for<void(boost::system::error_code, reply)> CompletionToken>
  auto async_exec(std::vector<std::string> args, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(boost::system::error_code, reply)>(
        [this](auto handler, std::vector<std::string> args) { start_exec(std::move(args), std::move(handler)); },
        token, std::move(args));
  }

  /// The executor given at construction.
  executor_type get_executor() const noexcept;

  /// The strand the client and its connection keep their state on. A command
  /// initiated on it is queued without a hop; `redis::tier` shares it.
  boost::asio::strand<executor_type> get_strand() const noexcept;

  /// Whether a connection is open now: false from the moment the client's
  /// strand sees the connection lost (a reconnect is then scheduled at once),
  /// so a command issued after it turned false fails with `not_connected`.
  bool is_connected() const noexcept;

  /// How many connections were opened so far (1 after the first connect).
  std::size_t connections_opened() const noexcept;

  /// Why the last attempt to connect failed (for instance `error::auth_failed`
  /// for refused credentials, `connection_refused`, a TLS error, or with
  /// Sentinel `error::master_not_found` or `error::not_master`); cleared by a
  /// success.
  boost::system::error_code last_error() const;

  /// The address ("host:port") of the server the client is connected to, or
  /// last tried; with Sentinel, the master the sentinels named.
  std::string server() const;

 private:
  using exec_handler = boost::asio::any_completion_handler<void(boost::system::error_code, reply)>;
  void start_exec(std::vector<std::string> args, exec_handler h);

  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace cacheflight::redis

#endif
