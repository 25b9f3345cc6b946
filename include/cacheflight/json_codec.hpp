// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_JSON_CODEC_HPP
#define CACHEFLIGHT_JSON_CODEC_HPP

// A codec for types that Boost.JSON converts (`value_from` / `value_to`, that
// is `tag_invoke` overloads or described types). Link Boost::json to use it.

#include <cacheflight/codec.hpp>

#include <boost/json.hpp>

namespace cacheflight {

// Opt a type into this codec by specializing `use_json_codec` (codec.hpp) to
// `std::true_type`.
template <class T>
struct codec<T, std::enable_if_t<use_json_codec<T>::value>> {
  static std::string encode(const T& v) { return boost::json::serialize(boost::json::value_from(v)); }
  static std::optional<T> decode(std::string_view bytes) {
    boost::system::error_code ec;
    boost::json::value jv = boost::json::parse(bytes, ec);
    if (ec) return std::nullopt;
    auto r = boost::json::try_value_to<T>(jv);
    if (r.has_error()) return std::nullopt;
    return std::move(r.value());
  }
};

}  // namespace cacheflight

#endif
