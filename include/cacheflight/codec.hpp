// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_CODEC_HPP
#define CACHEFLIGHT_CODEC_HPP

#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

namespace cacheflight {

/// How values of `T` become bytes for a tier (Redis, disk) and back.
///
/// A codec is a specialization providing
/// @code
///   static std::string encode(const T&);                    // may throw for values it rejects
///   static std::optional<T> decode(std::string_view bytes); // nullopt for bytes it cannot read
/// @endcode
/// Decoding must never trust its input: bytes come from outside the process.
/// Provided: `std::string`, `bool`, other trivially copyable types (see
/// below), and (in `cacheflight/json_codec.hpp`) types convertible with
/// Boost.JSON.
template <class T, class = void>
struct codec;

/// Opt a type into the JSON codec (`cacheflight/json_codec.hpp`) by
/// specializing this to `std::true_type`; such a type takes that codec even
/// when it is trivially copyable. Declare the specialization beside the type,
/// so that every use of `codec<T>` sees it: one that did not would write the
/// object representation.
template <class T>
struct use_json_codec : std::false_type {};

/// Strings are stored as they are.
template <>
struct codec<std::string> {
  static std::string encode(const std::string& v) { return v; }
  static std::optional<std::string> decode(std::string_view bytes) { return std::string(bytes); }
};

/// `bool`: one byte, 0 or 1; any other byte is refused.
template <>
struct codec<bool> {
  static std::string encode(bool v) { return std::string(1, v ? '\1' : '\0'); }
  static std::optional<bool> decode(std::string_view bytes) {
    if (bytes.size() != 1 || (bytes[0] != '\0' && bytes[0] != '\1')) return std::nullopt;
    return bytes[0] == '\1';
  }
};

namespace detail {
template <class T>
struct is_view_type : std::false_type {};
template <class C, class Tr>
struct is_view_type<std::basic_string_view<C, Tr>> : std::true_type {};
template <class T, std::size_t N>
struct is_view_type<std::span<T, N>> : std::true_type {};

// An unscoped enumeration may have no fixed underlying type, and then not
// every value of that type is one of its values; a scoped one always has one.
template <class T>
constexpr bool unscoped_enum() {
  if constexpr (std::is_enum_v<T>)
    return std::is_convertible_v<T, std::underlying_type_t<T>>;
  else
    return false;
}

// Whether the object representation of T is the codec for it: trivially
// copyable, holding no address (a pointer, a view) that another process, or
// this one after a restart, could not follow, and no value that some bytes
// would not make (bool, an unscoped enumeration).
template <class T>
inline constexpr bool bytes_codec = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> &&
                             !std::is_member_pointer_v<T> && !std::is_null_pointer_v<T> && !is_view_type<T>::value &&
                             !std::is_same_v<T, bool> && !unscoped_enum<T>() && !use_json_codec<T>::value;
}  // namespace detail

/// Other trivially copyable types are stored as their object representation:
/// only for tiers shared by processes of the same build and architecture.
/// Refused (no codec; give one of your own): pointers, member pointers, `std::nullptr_t`,
/// `std::string_view` and `std::span` (their addresses mean nothing to another
/// process, nor to this one after a restart, and a disk tier keeps values
/// across restarts), unscoped enumerations (without a fixed underlying type not
/// every value of it is one of theirs; scoped enumerations are accepted), and
/// types opted into the JSON codec. A decoded value is whatever the bytes
/// make: a struct that holds a `bool`, an enumeration or a pointer should have
/// a codec of its own, since bytes written by another build or changed on the
/// way can make a value that is not one of its values.
template <class T>
struct codec<T, std::enable_if_t<detail::bytes_codec<T>>> {
  static std::string encode(const T& v) { return std::string(reinterpret_cast<const char*>(&v), sizeof(T)); }
  static std::optional<T> decode(std::string_view bytes) {
    if (bytes.size() != sizeof(T)) return std::nullopt;
    T v;
    std::memcpy(&v, bytes.data(), sizeof(T));
    return v;
  }
};

namespace detail {

// The envelope of a value stored in a tier:
//
//   offset  size  field
//   0       4     magic "CFLT"
//   4       1     format version (1)
//   5       1     flags: bit 0 set when a fresh time follows; the others 0
//   6       8     absolute expiry, milliseconds since the Unix epoch, little
//                 endian; 0 for none
//   14      8     (flag bit 0 only) the end of the value's fresh time, in the
//                 same form, before the expiry: served stale (with a reload)
//                 between the two
//   14/22   n     the codec's bytes
//
// The times are wall-clock time because instances sharing a tier do not share
// a steady clock. A value without a stale window has no fresh time field, and
// is read by every version of this format; one with it is refused by readers
// from before the flag (a miss with a `tier_corrupt` event there), so a fleet
// sharing a tier turns stale windows on once every instance reads them.
struct envelope {
  static constexpr std::string_view magic = "CFLT";
  static constexpr std::uint8_t version = 1;
  static constexpr std::uint8_t has_fresh_until = 1;
  static constexpr std::size_t header_size = 14;

  std::int64_t expires_ms = 0;  // 0: never
  std::string_view payload;
  std::int64_t fresh_until_ms = 0;  // 0: fresh until it expires

  static std::string wrap(std::string_view payload, std::int64_t expires_ms, std::int64_t fresh_until_ms = 0) {
    const bool two = fresh_until_ms != 0 && fresh_until_ms != expires_ms;
    std::string out;
    out.reserve(header_size + (two ? 8 : 0) + payload.size());
    out.append(magic);
    out.push_back(static_cast<char>(version));
    out.push_back(static_cast<char>(two ? has_fresh_until : 0));
    auto put = [&](std::int64_t v) {
      auto e = static_cast<std::uint64_t>(v);
      for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((e >> (8 * i)) & 0xff));
    };
    put(expires_ms);
    if (two) put(fresh_until_ms);
    out.append(payload);
    return out;
  }

  // Reads an envelope; nullopt for anything that is not one of ours.
  static std::optional<envelope> unwrap(std::string_view bytes) {
    if (bytes.size() < header_size || bytes.substr(0, 4) != magic) return std::nullopt;
    const auto flags = static_cast<std::uint8_t>(bytes[5]);
    if (static_cast<std::uint8_t>(bytes[4]) != version || (flags & ~has_fresh_until) != 0) return std::nullopt;
    auto get = [&](std::size_t at) {
      std::uint64_t e = 0;
      for (int i = 0; i < 8; ++i) e |= std::uint64_t(static_cast<std::uint8_t>(bytes[at + i])) << (8 * i);
      return e;
    };
    const std::uint64_t e = get(6);
    if (e > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
    if (!(flags & has_fresh_until)) return envelope{static_cast<std::int64_t>(e), bytes.substr(header_size), 0};
    if (bytes.size() < header_size + 8) return std::nullopt;
    const std::uint64_t f = get(14);
    // A fresh time is before a finite expiry, and never 0.
    if (f == 0 || f > static_cast<std::uint64_t>(INT64_MAX) || (e != 0 && f > e)) return std::nullopt;
    return envelope{static_cast<std::int64_t>(e), bytes.substr(header_size + 8), static_cast<std::int64_t>(f)};
  }

  static std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
};

// Encodes a value with its expiry; decodes one, refusing expired or corrupt
// bytes (nullopt). Remaining lifetime is reported through `ttl_left`.
template <class V>
std::string encode_stored(const V& v, std::int64_t expires_ms, std::int64_t fresh_until_ms = 0) {
  return envelope::wrap(codec<V>::encode(v), expires_ms, fresh_until_ms);
}

template <class V>
std::optional<V> decode_stored(std::string_view bytes, std::int64_t now_ms, std::chrono::milliseconds* ttl_left) {
  auto env = envelope::unwrap(bytes);
  if (!env) return std::nullopt;
  if (env->expires_ms != 0 && env->expires_ms <= now_ms) return std::nullopt;
  std::optional<V> v = codec<V>::decode(env->payload);
  if (v && ttl_left)
    *ttl_left = env->expires_ms == 0 ? std::chrono::milliseconds::max()
                                     : std::chrono::milliseconds(env->expires_ms - now_ms);
  return v;
}

}  // namespace detail
}  // namespace cacheflight

#endif
