// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_HASHED_KEY_HPP
#define CACHEFLIGHT_DETAIL_HASHED_KEY_HPP

#include <boost/container_hash/hash.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace cacheflight::detail {

// A key seen with its hash, so that an operation that has hashed a key hands
// the hash on instead of hashing again: a cache miss's lookup gives it to the
// flight's shard and map, the load's token, and the memory's shard, index
// and ghost queue when the value is stored. It views the key: the key must
// outlive it.
struct hashed_key {
  std::string_view key;
  std::size_t hash;

  // Boost's string hash, which Boost declares avalanching: the indexes take
  // it unmixed. It is not seeded, so it does not resist keys chosen to
  // collide.
  static std::size_t hash_of(std::string_view k) noexcept { return boost::hash<std::string_view>{}(k); }

  hashed_key(std::string_view k) noexcept : key(k), hash(hash_of(k)) {}
  hashed_key(const std::string& k) noexcept : hashed_key(std::string_view(k)) {}
  hashed_key(const char* k) noexcept : hashed_key(std::string_view(k)) {}
  hashed_key(std::string_view k, std::size_t h) noexcept : key(k), hash(h) {}
};

// Whether the first and the last `sizeof(Word)` bytes of two ranges of `n`
// bytes (sizeof(Word) <= n <= 2 * sizeof(Word)) are equal: the whole ranges.
template <class Word>
[[gnu::always_inline]] inline bool same_ends(const char* p, const char* q, std::size_t n) noexcept {
  Word p0, p1, q0, q1;
  std::memcpy(&p0, p, sizeof(Word));
  std::memcpy(&q0, q, sizeof(Word));
  std::memcpy(&p1, p + n - sizeof(Word), sizeof(Word));
  std::memcpy(&q1, q + n - sizeof(Word), sizeof(Word));
  return ((p0 ^ q0) | (p1 ^ q1)) == 0;
}

// Whether two keys are equal, inlined for the lengths keys usually have: up to
// 16 bytes are compared as two overlapping words (of 8, 4 or 1 bytes) each,
// without a call to memcmp; longer keys are compared by memcmp.
[[gnu::always_inline]] inline bool same_key(std::string_view a, std::string_view b) noexcept {
  const std::size_t n = a.size();
  if (n != b.size()) return false;
  const char* p = a.data();
  const char* q = b.data();
  if (n > 16) return std::memcmp(p, q, n) == 0;
  if (n >= 8) return same_ends<std::uint64_t>(p, q, n);
  if (n >= 4) return same_ends<std::uint32_t>(p, q, n);
  // 0 to 3 bytes: the first, middle and last.
  return n == 0 || (p[0] == q[0] && p[n / 2] == q[n / 2] && p[n - 1] == q[n - 1]);
}

// The shard of a hash among `n`: the high bits of the hash times an odd
// constant, scaled by a multiplication (no division). The indexes take the
// hash's own bits (it avalanches), so a shard's keys still spread over its
// index.
inline std::size_t shard_index(std::size_t hash, std::size_t n) noexcept {
  const std::uint64_t mixed = std::uint64_t(hash) * 0xd6e8feb86659fd93ull;
  return std::size_t(((mixed >> 32) * std::uint64_t(n)) >> 32);  // n < 2^32
}

// Hash and equality over keys with their hashes: the stored hash is used as
// is, and lookups by `hashed_key` need no rehash. The hash is Boost's string
// hash, which Boost declares avalanching: the table takes it unmixed.
struct hashed_key_hash {
  using is_transparent = void;
  using is_avalanching = void;
  std::size_t operator()(const hashed_key& k) const noexcept { return k.hash; }
};
struct hashed_key_eq {
  using is_transparent = void;
  static std::string_view view(const hashed_key& k) noexcept { return k.key; }
  // Inlined: a probe compares keys, and an out-of-line call per probe costs
  // more than the comparison of two short keys.
  template <class A, class B>
  [[gnu::always_inline]] bool operator()(const A& a, const B& b) const noexcept {
    return same_key(view(a), view(b));
  }
};

}  // namespace cacheflight::detail

#endif
