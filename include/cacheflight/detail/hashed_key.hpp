// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_HASHED_KEY_HPP
#define CACHEFLIGHT_DETAIL_HASHED_KEY_HPP

#include <bit>
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

  // The key's hash, which avalanches: the indexes take it unmixed.
  //
  // The key is read as 8-byte words, each folded into a state by xor and
  // then mixed by a bijection of 64-bit words (two rounds of xorshift and
  // odd multiplier, the mixer of Boost's hash_combine); the state starts from
  // the key's length. A key of up to 8 bytes is one word, a longer key its
  // words in turn, the last one holding the 1 to 8 bytes left (a word is
  // read as whole loads, each byte at its place, zeros above). For a given
  // length the words determine the bytes, and for a given word each step is
  // a bijection of the state: two keys of one length that differ in their
  // last word alone never share a hash, and a difference in an earlier word
  // is undone only by a later word computed from the two states it led to.
  // No two values taken from the key are multiplied together, so no word of
  // a key zeroes a product and makes the hash forget the rest. It mixes
  // once per 8 bytes, where Boost's string hash mixes once per 4. Like
  // Boost's it is not seeded: it does not resist keys chosen to collide by
  // someone who computes its states.
  static std::size_t hash_of(std::string_view k) noexcept {
    const char* p = k.data();
    std::size_t n = k.size();
    std::uint64_t h = (std::uint64_t(n) + 1) * 0x9e3779b97f4a7c15ull;
    if (n <= 8) {
      std::uint64_t w = 0;
      if (n >= 4) {  // the first 4 bytes and the last 4, each at its place
        w = std::uint64_t(load<std::uint32_t>(p)) | std::uint64_t(load<std::uint32_t>(p + n - 4)) << (8 * (n - 4));
      } else if (n > 0) {  // the first, middle and last byte, each at its place
        w = std::uint64_t(static_cast<unsigned char>(p[0])) |
            std::uint64_t(static_cast<unsigned char>(p[n / 2])) << (8 * (n / 2)) |
            std::uint64_t(static_cast<unsigned char>(p[n - 1])) << (8 * (n - 1));
      }
      return std::size_t(mix(h ^ w));
    }
    for (; n > 8; p += 8, n -= 8) h = mix(h ^ load<std::uint64_t>(p));
    // The last 1 to 8 bytes, read as the key's last word and shifted down.
    return std::size_t(mix(h ^ (load<std::uint64_t>(p + n - 8) >> (8 * (8 - n)))));
  }

  hashed_key(std::string_view k) noexcept : key(k), hash(hash_of(k)) {}
  hashed_key(const std::string& k) noexcept : hashed_key(std::string_view(k)) {}
  hashed_key(const char* k) noexcept : hashed_key(std::string_view(k)) {}
  hashed_key(std::string_view k, std::size_t h) noexcept : key(k), hash(h) {}

 private:
  // A little-endian word: the byte at p is the lowest, on any machine.
  template <class Word>
  static Word load(const char* p) noexcept {
    Word w;
    std::memcpy(&w, p, sizeof(Word));
    if constexpr (std::endian::native == std::endian::big) {
      if constexpr (sizeof(Word) == 8)
        w = __builtin_bswap64(w);
      else
        w = __builtin_bswap32(w);
    }
    return w;
  }
  // A bijection of 64-bit words whose every input bit flips every output bit
  // about half the time.
  static std::uint64_t mix(std::uint64_t x) noexcept {
    constexpr std::uint64_t m = 0xe9846af9b1a615dull;
    x ^= x >> 32;
    x *= m;
    x ^= x >> 32;
    x *= m;
    x ^= x >> 28;
    return x;
  }
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
// is, and lookups by `hashed_key` need no rehash. The hash avalanches
// (hashed_key::hash_of): the table takes it unmixed.
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
