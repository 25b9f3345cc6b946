// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_SRC_REDIS_OPTIONS_CHECK_HPP
#define CACHEFLIGHT_SRC_REDIS_OPTIONS_CHECK_HPP

#include <cacheflight/error.hpp>
#include <cacheflight/redis/connection.hpp>

#include <boost/asio/ip/address_v6.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <utility>

namespace cacheflight::redis::detail {

// Durations in options past ten years count as ten years: a deadline drawn
// from one (or from one doubled by a backoff) then fits the clocks' 64-bit
// nanoseconds, where `milliseconds::max()` meaning "never" would overflow.
inline constexpr std::chrono::milliseconds max_duration = std::chrono::hours(24 * 3653);

inline void cap_duration(std::chrono::milliseconds& d) {
  if (d > max_duration) d = max_duration;
}

inline void cap_connection_durations(connection_options& o) {
  cap_duration(o.connect_timeout);
  cap_duration(o.command_timeout);
}

// Throws `error::invalid_option` for TLS options that cannot work.
inline void check_tls_options(const tls_options& t, const std::string& what) {
  if (t.cert_file.empty() != t.key_file.empty())
    cacheflight::detail::throw_invalid_option((what + ": cert_file and key_file go together").c_str());
}

// Throws `error::invalid_option` for connection options that cannot work.
inline void check_connection_options(const connection_options& o) {
  check_tls_options(o.tls, "redis::connection_options::tls");
  if (o.tls.enabled && !o.unix_socket.empty())
    cacheflight::detail::throw_invalid_option("redis::connection_options: TLS over a unix socket is not supported");
  if (o.connect_timeout <= std::chrono::milliseconds::zero() || o.command_timeout <= std::chrono::milliseconds::zero())
    cacheflight::detail::throw_invalid_option(
        "redis::connection_options: connect_timeout and command_timeout must be positive");
  if (o.max_pending == 0) cacheflight::detail::throw_invalid_option("redis::connection_options: max_pending must be positive");
  if (o.max_reply_bytes == 0 || o.max_reply_bytes > max_max_reply_bytes)
    cacheflight::detail::throw_invalid_option(
        "redis::connection_options: max_reply_bytes must be from 1 to max_max_reply_bytes");
  if (o.database < 0) cacheflight::detail::throw_invalid_option("redis::connection_options: database must not be negative");
}

// A port as written in an address: a number from 1 to 65535.
inline bool valid_port(const std::string& p) {
  if (p.empty() || p.size() > 5) return false;
  unsigned n = 0;
  for (char ch : p) {
    if (ch < '0' || ch > '9') return false;
    n = n * 10 + static_cast<unsigned>(ch - '0');
  }
  return n >= 1 && n <= 65535;
}

inline bool is_v6(const std::string& host) {
  boost::system::error_code ec;
  boost::asio::ip::make_address_v6(host, ec);
  return !ec;
}

// "host:port", "[v6]:port", "host", "[v6]" or a bare IPv6 address -> host
// and port (`default_port` when absent); nullopt for an empty host, a port
// that is not a number from 1 to 65535, a bracketed host that is not an IPv6
// address, or colons in anything else but an IPv6 address.
inline std::optional<std::pair<std::string, std::string>> split_address(const std::string& a,
                                                                       const char* default_port) {
  std::string host, port = default_port;
  if (!a.empty() && a.front() == '[') {
    const auto close = a.find(']');
    if (close == std::string::npos) return std::nullopt;
    host = a.substr(1, close - 1);
    if (close + 1 < a.size()) {
      if (a[close + 1] != ':') return std::nullopt;
      port = a.substr(close + 2);
    }
  } else if (const auto colon = a.find(':'); colon != std::string::npos && a.find(':', colon + 1) == std::string::npos) {
    host = a.substr(0, colon);
    port = a.substr(colon + 1);
  } else {
    host = a;  // no port, or a bare IPv6 address
    if (host.find(':') != std::string::npos && !is_v6(host)) return std::nullopt;
  }
  if (host.empty() || !valid_port(port)) return std::nullopt;
  if (a.front() == '[' && !is_v6(host)) return std::nullopt;
  return std::pair{std::move(host), std::move(port)};
}

}  // namespace cacheflight::redis::detail

#endif
