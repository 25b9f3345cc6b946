// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_HASHED_KEY_HPP
#define CACHEFLIGHT_DETAIL_HASHED_KEY_HPP

#include <boost/container_hash/hash.hpp>

#include <cstddef>
#include <cstdint>
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

  static std::size_t hash_of(std::string_view k) noexcept { return boost::hash<std::string_view>{}(k); }

  hashed_key(std::string_view k) noexcept : key(k), hash(hash_of(k)) {}
  hashed_key(const std::string& k) noexcept : hashed_key(std::string_view(k)) {}
  hashed_key(const char* k) noexcept : hashed_key(std::string_view(k)) {}
  hashed_key(std::string_view k, std::size_t h) noexcept : key(k), hash(h) {}
};

// The shard of a hash among `n`: the high bits of the hash times an odd
// constant, scaled by a multiplication (no division). The indexes mix the
// hash their own way, so a shard's keys still spread over its index.
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
    return view(a) == view(b);
  }
};

}  // namespace cacheflight::detail

#endif
