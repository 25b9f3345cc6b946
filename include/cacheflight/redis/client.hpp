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
struct client_options {
  connection_options connection{};
  /// First delay before reconnecting; it doubles on each failure up to `reconnect_max`,
  /// and each delay is drawn between half of it and all of it (jitter).
  std::chrono::milliseconds reconnect_min{50};
  std::chrono::milliseconds reconnect_max{5000};
  /// How often the connection is checked: a lost connection is reopened, an idle
  /// one is sent a PING, and a PING that fails closes it for reopening.
  std::chrono::milliseconds health_check_interval{1000};
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
  /// for refused credentials, or `connection_refused`); cleared by a success.
  boost::system::error_code last_error() const;

 private:
  using exec_handler = boost::asio::any_completion_handler<void(boost::system::error_code, reply)>;
  void start_exec(std::vector<std::string> args, exec_handler h);

  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace cacheflight::redis

#endif
