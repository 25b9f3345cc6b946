// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_ERROR_HPP
#define CACHEFLIGHT_ERROR_HPP

#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>

#include <string>
#include <type_traits>

namespace cacheflight {

/// Errors reported by the library, in the `cacheflight` error category.
///
/// They reach a completion handler as a `std::exception_ptr` holding a
/// `boost::system::system_error` whose `code()` compares equal to the enumerator.
enum class error {
  /// The waiter's own timeout passed before the work completed.
  timed_out = 1,
  /// A new key was refused because `flight_options::max_keys` keys are in flight.
  max_keys_exceeded,
  /// The work was cancelled through `flight::cancel`, `flight::clear` or the
  /// destruction of its owner.
  cancelled,
  /// The key is empty or longer than the configured maximum.
  invalid_key,
  /// A batch result did not contain the requested key.
  key_not_found,
  /// A per-call timeout was zero or negative.
  invalid_timeout,
  /// An options aggregate holds a value out of range.
  invalid_option,
  /// A server or tier sent bytes that do not follow its protocol or format,
  /// or a Redis reply beyond `redis::connection_options::max_reply_bytes`.
  protocol_error,
  /// The connection is not open (never opened, lost, or closed).
  not_connected,
  /// Too many commands are queued on the connection.
  queue_full,
  /// The server refused the credentials (AUTH) or the database (SELECT).
  auth_failed,
  /// A tier is being skipped: its circuit breaker is open after failures.
  tier_unavailable,
  /// A value is larger than the tier can store (see `disk::tier_options::max_bytes`).
  value_too_large,
  /// The store's directory is already open in this process (by any spelling of its path).
  already_open,
  /// The store's files are not a store of this library, or are damaged (truncated, corrupt).
  corrupt_store,
  /// No sentinel named a master for the set (see `redis::sentinel_options`).
  master_not_found,
  /// The server named as master does not report itself one (`ROLE`).
  not_master,
  /// A batch function gave a list of results whose length is not its number of keys.
  batch_size_mismatch,
  /// A session's loop guard refused a call (see `agent_cache`); the exception's
  /// message names the rule and the calls (for a cycle, the repeated sequence).
  loop_detected,
  /// A session-scoped tool was called without a session, or a tool through a
  /// session that has ended (see `agent_cache`).
  no_session,
};

namespace detail {

class error_category final : public boost::system::error_category {
 public:
  // A fixed identifier lets categories from different shared objects compare equal.
  constexpr error_category() noexcept : boost::system::error_category(0xcf1f'9a7e'5c0d'2b31ULL) {}

  const char* name() const noexcept override { return "cacheflight"; }

  std::string message(int ev) const override { return message(ev, nullptr, 0); }

  const char* message(int ev, char*, std::size_t) const noexcept override {
    switch (static_cast<error>(ev)) {
      case error::timed_out: return "the operation timed out";
      case error::max_keys_exceeded: return "too many keys in flight";
      case error::cancelled: return "the operation was cancelled";
      case error::invalid_key: return "the key is empty or too long";
      case error::key_not_found: return "the batch result did not contain the key";
      case error::invalid_timeout: return "a timeout must be positive";
      case error::invalid_option: return "an option is out of range";
      case error::protocol_error: return "malformed data from a server or tier";
      case error::not_connected: return "not connected to the server";
      case error::queue_full: return "too many commands queued on the connection";
      case error::auth_failed: return "the server refused the credentials or the database";
      case error::tier_unavailable: return "the tier is skipped after failures (circuit breaker open)";
      case error::value_too_large: return "the value is larger than the tier can store";
      case error::already_open: return "the store's directory is already open in this process";
      case error::corrupt_store: return "the store's files are not a cacheflight store or are damaged";
      case error::master_not_found: return "no sentinel named a master for the set";
      case error::not_master: return "the server named as master is not a master";
      case error::batch_size_mismatch: return "the batch function's list of results is not as long as its list of keys";
      case error::loop_detected: return "the session's loop guard refused the call";
      case error::no_session: return "a session-scoped tool was called without a session, or the session has ended";
    }
    return "unknown cacheflight error";
  }
};

}  // namespace detail

/// The `cacheflight` error category.
inline const boost::system::error_category& error_category() noexcept {
  static constexpr detail::error_category instance;
  return instance;
}

inline boost::system::error_code make_error_code(error e) noexcept {
  return {static_cast<int>(e), error_category()};
}

}  // namespace cacheflight

template <>
struct boost::system::is_error_code_enum<cacheflight::error> : std::true_type {};

namespace cacheflight::detail {

// What a waiter receives for a library error.
inline std::exception_ptr make_error(error e) {
  return std::make_exception_ptr(boost::system::system_error(make_error_code(e)));
}

inline std::exception_ptr make_error(const boost::system::error_code& ec) {
  return std::make_exception_ptr(boost::system::system_error(ec));
}

// Throws a `system_error` for invalid options, naming the option.
[[noreturn]] inline void throw_invalid_option(const char* what) {
  throw boost::system::system_error(make_error_code(error::invalid_option), what);
}

}  // namespace cacheflight::detail

#endif
