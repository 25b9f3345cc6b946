// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_HASHED_KEY_HPP
#define CACHEFLIGHT_DETAIL_HASHED_KEY_HPP

#include <boost/container_hash/hash.hpp>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace cacheflight::detail {

// The hash of a key's bytes. On 64-bit targets with a 128-bit product, the
// key is cut into 64-bit words, each of bytes no other word holds: 16 bytes
// at a time, then the last 1 to 16 bytes as one or two words (a key of up to
// 8 bytes as one word, its first and last four bytes, or first, middle and
// last byte, side by side), read without a loop and, past the first 16
// bytes, from loads that overlap the bytes already taken and shift them out.
// Each word, plus a constant of its position, is multiplied by a constant
// into a 128-bit product whose halves are xored; the results are xored
// together with the length, and a last such multiplication mixes the sum. A
// key of up to 8 bytes costs two multiplications, of 9 to 16 bytes three (the
// first two independent of each other), a longer one up to two more for each
// 16 bytes, or part of them, beyond the first 16. No word is multiplied by
// another word or by a state earlier words have set, so no one word can make
// the hash forget the others (as a word that zeroes a product of two would),
// and no byte is in two words (two words of the same bytes would make their
// terms' xor depend on carries alone). The result is avalanching (each bit of
// the key flips each bit of the hash with a probability near 1/2), so hash
// tables take it unmixed and shard and bucket it by its high or low bits
// alike. It is not seeded: like Boost's string hash, whose structure it
// shares, it does not resist keys chosen to collide. Elsewhere, Boost's
// string hash.
#if defined(__SIZEOF_INT128__)
namespace key_hash {
inline constexpr std::uint64_t k0 = 0x9e3779b97f4a7c15ull;  // 2^64 / the golden ratio
inline constexpr std::uint64_t k1 = 0x243f6a8885a308d3ull;  // the fraction of pi
inline constexpr std::uint64_t k2 = 0xbf58476d1ce4e5b9ull;  // SplitMix64's multipliers
inline constexpr std::uint64_t k3 = 0x94d049bb133111ebull;

__extension__ using u128 = unsigned __int128;  // a GNU extension, accepted under -Wpedantic this way

[[gnu::always_inline]] inline std::uint64_t fold_mul(std::uint64_t a, std::uint64_t b) noexcept {
  const u128 r = static_cast<u128>(a) * b;
  return static_cast<std::uint64_t>(r) ^ static_cast<std::uint64_t>(r >> 64);
}
template <class Word>
[[gnu::always_inline]] inline std::uint64_t load(const char* p) noexcept {
  Word w;
  std::memcpy(&w, p, sizeof(Word));
  return w;
}
// The 8 bytes at `p` without their first `skip` (0 to 7), which another word holds.
[[gnu::always_inline]] inline std::uint64_t load_skipping(const char* p, std::size_t skip) noexcept {
  const std::uint64_t w = load<std::uint64_t>(p);
  if constexpr (std::endian::native == std::endian::little)
    return w >> (8 * skip);
  else
    return w << (8 * skip);
}
// Up to 8 bytes as one word: 4 to 8 as their first and last four bytes side
// by side, 1 to 3 as their first, middle and last byte (0: zero). With the
// length, the word tells the bytes.
[[gnu::always_inline]] inline std::uint64_t short_word(const char* p, std::size_t n) noexcept {
  if (n >= 4) return load<std::uint32_t>(p) << 32 | load<std::uint32_t>(p + n - 4);
  if (n == 0) return 0;
  return std::uint64_t(static_cast<unsigned char>(p[0])) << 16 |
         std::uint64_t(static_cast<unsigned char>(p[n / 2])) << 8 | std::uint64_t(static_cast<unsigned char>(p[n - 1]));
}

[[gnu::always_inline]] inline std::uint64_t bytes(const char* p, std::size_t n) noexcept {
  std::uint64_t h = k0 ^ n, position = k0;
  const auto word = [&](std::uint64_t w) {
    position += k1;
    h ^= fold_mul(w + position, k2);
  };
  if (n <= 8) {
    word(short_word(p, n));
  } else if (n <= 16) {
    word(load<std::uint64_t>(p));
    word(load_skipping(p + n - 8, 16 - n));
  } else {
    const char* const end = p + n;
    for (; end - p > 16; p += 16) {
      word(load<std::uint64_t>(p));
      word(load<std::uint64_t>(p + 8));
    }
    // 1 to 16 bytes are left, with at least 16 taken before them.
    const auto left = std::size_t(end - p);
    if (left > 8) {
      word(load<std::uint64_t>(p));
      word(load_skipping(end - 8, 16 - left));
    } else {
      word(load_skipping(end - 8, 8 - left));
    }
  }
  return fold_mul(h, k3);
}
}  // namespace key_hash
#endif

// A key seen with its hash, so that an operation that has hashed a key hands
// the hash on instead of hashing again: a cache miss's lookup gives it to the
// flight's shard and map, the load's token, and the memory's shard, index
// and ghost queue when the value is stored. It views the key: the key must
// outlive it.
struct hashed_key {
  std::string_view key;
  std::size_t hash;

  static std::size_t hash_of(std::string_view k) noexcept {
#if defined(__SIZEOF_INT128__)
    return static_cast<std::size_t>(key_hash::bytes(k.data(), k.size()));
#else
    return boost::hash<std::string_view>{}(k);
#endif
  }

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
// is, and lookups by `hashed_key` need no rehash. The hash is `hash_of`'s,
// avalanching (as Boost declares its string hash): the table takes it unmixed.
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
