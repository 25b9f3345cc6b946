// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_SRC_DISK_FORMAT_HPP
#define CACHEFLIGHT_SRC_DISK_FORMAT_HPP

// The layout of a disk store. An LMDB environment with four named databases:
//
//   meta    "format" -> "cacheflight-disk 1"
//   data    data key -> record
//   order   write sequence (8 bytes, big-endian) -> data key
//   expiry  absolute expiry (8 bytes, big-endian ms since the Unix epoch) and
//           write sequence (8 bytes, big-endian) -> data key; only entries
//           that expire are indexed
//
// A data key is 'k' and the key itself for keys of at most 510 bytes (LMDB's
// keys stop at 511), or 'h' and a 128-bit digest of the key for longer ones.
//
// A record, integers little-endian:
//
//   offset  size  field
//   0       4     magic "CFD1"
//   4       8     write sequence
//   12      8     absolute expiry, ms since the Unix epoch (0: never)
//   20      4     length of the full key that follows (0 for a plain data key)
//   24      n     the full key, for a digest data key
//   24 + n  ...   the value's bytes

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace cacheflight::disk::detail {

inline constexpr std::string_view format_name = "cacheflight-disk 1";
inline constexpr std::string_view record_magic = "CFD1";
inline constexpr std::size_t record_header_size = 24;
inline constexpr std::size_t max_plain_key = 510;

inline void store_le64(char* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
inline std::uint64_t load_le64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= std::uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}
inline void store_be64(char* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (56 - 8 * i));
}
inline std::uint64_t load_be64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// A 128-bit digest: two independent 64-bit hashes (FNV-1a, and a
// multiply-xorshift over 8-byte words). Not cryptographic: a collision only
// makes two keys replace each other, since the full key is compared.
inline std::array<char, 16> digest(std::string_view s) {
  std::uint64_t a = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) a = (a ^ c) * 0x100000001b3ULL;
  std::uint64_t b = 0x9e3779b97f4a7c15ULL ^ (s.size() * 0xff51afd7ed558ccdULL);
  auto mix = [](std::uint64_t x) {
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 29;
    return x;
  };
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    b = mix(b ^ w) * 0x9ddfea08eb382d69ULL;
  }
  std::uint64_t tail = 0;
  for (std::size_t j = 0; i + j < s.size(); ++j) tail |= std::uint64_t{static_cast<unsigned char>(s[i + j])} << (8 * j);
  b = mix(b ^ tail ^ 0xa5a5a5a5a5a5a5a5ULL);
  std::array<char, 16> out;
  store_be64(out.data(), a);
  store_be64(out.data() + 8, b);
  return out;
}

inline bool is_digest_key(std::string_view key) { return key.size() > max_plain_key; }

inline std::string data_key(std::string_view key) {
  std::string k;
  if (!is_digest_key(key)) {
    k.reserve(key.size() + 1);
    k.push_back('k');
    k.append(key);
  } else {
    const auto d = digest(key);
    k.push_back('h');
    k.append(d.data(), d.size());
  }
  return k;
}

struct record_view {
  std::uint64_t seq = 0;
  std::int64_t expires_ms = 0;
  std::string_view full_key;  // empty for a plain data key
  std::string_view bytes;
};

inline std::size_t record_size(std::string_view key, std::size_t value_size) {
  return record_header_size + (is_digest_key(key) ? key.size() : 0) + value_size;
}

// Writes a record into `out` (record_size(key, bytes.size()) bytes).
inline void write_record(char* out, std::uint64_t seq, std::int64_t expires_ms, std::string_view key,
                         std::string_view bytes) {
  std::memcpy(out, record_magic.data(), 4);
  store_le64(out + 4, seq);
  store_le64(out + 12, static_cast<std::uint64_t>(expires_ms));
  const std::uint32_t klen = is_digest_key(key) ? static_cast<std::uint32_t>(key.size()) : 0;
  for (int i = 0; i < 4; ++i) out[20 + i] = static_cast<char>(klen >> (8 * i));
  std::memcpy(out + record_header_size, key.data(), klen);
  if (!bytes.empty()) std::memcpy(out + record_header_size + klen, bytes.data(), bytes.size());
}

// Reads the record stored under data key `dk`; nullopt when its header is
// damaged: a wrong magic, or a full-key length that does not fit the data key
// (0 under a plain data key; more than `max_plain_key` bytes, within the
// record, under a digest one).
inline std::optional<record_view> parse_record(std::string_view dk, std::string_view r) {
  if (r.size() < record_header_size || r.substr(0, 4) != record_magic) return std::nullopt;
  record_view v;
  v.seq = load_le64(r.data() + 4);
  v.expires_ms = static_cast<std::int64_t>(load_le64(r.data() + 12));
  std::uint32_t klen = 0;
  for (int i = 0; i < 4; ++i) klen |= std::uint32_t{static_cast<unsigned char>(r[20 + i])} << (8 * i);
  if (klen > r.size() - record_header_size) return std::nullopt;
  if (dk.starts_with('k')) {
    if (klen != 0) return std::nullopt;
  } else if (!dk.starts_with('h') || klen <= max_plain_key) {
    return std::nullopt;
  }
  v.full_key = r.substr(record_header_size, klen);
  v.bytes = r.substr(record_header_size + klen);
  return v;
}

// The expiry index's key.
inline std::array<char, 16> expiry_key(std::int64_t expires_ms, std::uint64_t seq) {
  std::array<char, 16> k;
  store_be64(k.data(), static_cast<std::uint64_t>(expires_ms));
  store_be64(k.data() + 8, seq);
  return k;
}

}  // namespace cacheflight::disk::detail

#endif
