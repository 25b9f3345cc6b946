// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_SRC_REDIS_OPTIONS_CHECK_HPP
#define CACHEFLIGHT_SRC_REDIS_OPTIONS_CHECK_HPP

#include <cacheflight/error.hpp>
#include <cacheflight/redis/connection.hpp>

#include <string>

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

}  // namespace cacheflight::redis::detail

#endif
