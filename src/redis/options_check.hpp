// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_SRC_REDIS_OPTIONS_CHECK_HPP
#define CACHEFLIGHT_SRC_REDIS_OPTIONS_CHECK_HPP

#include <cacheflight/error.hpp>
#include <cacheflight/redis/connection.hpp>

#include <optional>
#include <string>
#include <utility>

namespace cacheflight::redis::detail {

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
}

// "host:port", "[v6]:port", "host", "[v6]" or a bare IPv6 address -> host
// and port (`default_port` when absent); nullopt for an empty host or port.
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
  }
  if (host.empty() || port.empty()) return std::nullopt;
  return std::pair{std::move(host), std::move(port)};
}

}  // namespace cacheflight::redis::detail

#endif
