// S3-FIFO's ghost: the hashes of the last `window` keys evicted, as a table of
// fingerprints and insertion times. Checked against an exact FIFO beside a
// multiset, which it must match but for the rare cases its header names.
#include <cacheflight/detail/ghost_table.hpp>
#include <cacheflight/detail/hashed_key.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using cacheflight::detail::ghost_table;
using cacheflight::detail::hashed_key;

std::size_t h(const std::string& key) { return hashed_key::hash_of(key); }

// The exact queue the table stands for.
struct exact_ghost {
  std::deque<std::size_t> fifo;
  std::unordered_map<std::size_t, int> count;
  void insert(std::size_t hash, std::size_t window) {
    fifo.push_back(hash);
    ++count[hash];
    while (fifo.size() > window) {
      if (--count[fifo.front()] == 0) count.erase(fifo.front());
      fifo.pop_front();
    }
  }
  bool contains(std::size_t hash) const { return count.contains(hash); }
};

TEST(GhostTable, AnEmptyTableHoldsNothingAndTakesNoMemory) {
  ghost_table g;
  EXPECT_FALSE(g.contains(h("a"), 16));
  EXPECT_EQ(g.capacity(), 0u);
}

TEST(GhostTable, AHashIsHeldUntilAWindowOfInsertionsFollowsIt) {
  ghost_table g;
  const std::size_t window = 100;
  g.insert(h("first"), window);
  for (int i = 0; i < 100; ++i) {
    EXPECT_TRUE(g.contains(h("first"), window)) << "after " << i << " more";
    g.insert(h("other" + std::to_string(i)), window);
  }
  // One hundred insertions since: the window no longer reaches it.
  EXPECT_FALSE(g.contains(h("first"), window));
  EXPECT_TRUE(g.contains(h("other0"), window));
  EXPECT_TRUE(g.contains(h("other99"), window));
}

TEST(GhostTable, AReinsertedHashStaysForAWindowFromItsLastInsertion) {
  ghost_table g;
  const std::size_t window = 20;
  g.insert(h("k"), window);
  for (int i = 0; i < 10; ++i) g.insert(h("x" + std::to_string(i)), window);
  g.insert(h("k"), window);
  for (int i = 10; i < 29; ++i) g.insert(h("x" + std::to_string(i)), window);
  EXPECT_TRUE(g.contains(h("k"), window));  // 19 insertions after its second
  g.insert(h("x29"), window);
  EXPECT_FALSE(g.contains(h("k"), window));
}

TEST(GhostTable, AShorterWindowAsksOnlyForTheNewestHashes) {
  ghost_table g;
  for (int i = 0; i < 50; ++i) g.insert(h("k" + std::to_string(i)), 64);
  EXPECT_TRUE(g.contains(h("k0"), 64));
  EXPECT_FALSE(g.contains(h("k0"), 10));
  EXPECT_TRUE(g.contains(h("k40"), 10));
  EXPECT_FALSE(g.contains(h("k39"), 10));
}

TEST(GhostTable, GrowingKeepsTheLiveHashes) {
  ghost_table g;
  g.insert(h("k0"), 16);
  const std::size_t small = g.capacity();
  // The window grows with the shard: the table grows with it, keeping what it held.
  for (int i = 1; i < 5000; ++i) g.insert(h("k" + std::to_string(i)), std::size_t(i) + 16);
  EXPECT_GT(g.capacity(), small);
  EXPECT_GE(g.capacity(), 3u * 5000u);
  int held = 0;
  for (int i = 0; i < 5000; ++i) held += g.contains(h("k" + std::to_string(i)), 5016);
  // All but those of buckets that overflowed on the way (see the header):
  // a few in a thousand while the window grows with every insertion.
  EXPECT_GE(held, 4950);
}

TEST(GhostTable, ClearForgetsEveryHash) {
  ghost_table g;
  for (int i = 0; i < 100; ++i) g.insert(h("k" + std::to_string(i)), 100);
  g.clear();
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(g.contains(h("k" + std::to_string(i)), 100));
  g.insert(h("k1"), 100);
  EXPECT_TRUE(g.contains(h("k1"), 100));
}

// A long random stream with repeats, a fixed window: every answer matches the
// exact queue's but for buckets that overflowed, which the table's sizing
// keeps to a handful in 200,000 lookups.
TEST(GhostTable, AgreesWithAnExactFifoOnARandomStream) {
  ghost_table g;
  exact_ghost exact;
  std::mt19937_64 rng(42);
  const std::size_t window = 10'000;
  std::uniform_int_distribution<int> key(0, 40'000);  // about one lookup in four finds its key
  std::size_t found = 0, differ = 0, false_positive = 0;
  for (int i = 0; i < 200'000; ++i) {
    const std::size_t q = h("q" + std::to_string(key(rng)));
    const bool want = exact.contains(q);
    const bool got = g.contains(q, window);
    found += want;
    differ += want != got;
    false_positive += got && !want;
    const std::size_t e = h("q" + std::to_string(key(rng)));
    g.insert(e, window);
    exact.insert(e, window);
  }
  EXPECT_GT(found, 30'000u);
  EXPECT_EQ(false_positive, 0u);
  EXPECT_LE(differ, 20u) << "of " << found << " hashes the exact queue held";
}

// Keys are compared inline up to 16 bytes, as overlapping words: every
// length from 0 to 40 bytes, keys that differ in any one byte, and keys that
// differ only in length, each compare as std::string_view does.
TEST(HashedKey, KeysCompareEqualExactlyWhenTheirBytesAre) {
  using cacheflight::detail::same_key;
  for (std::size_t n = 0; n <= 40; ++n) {
    std::string a(n, 'k');
    for (std::size_t i = 0; i < n; ++i) a[i] = char('a' + i % 26);
    const std::string b = a;  // separate storage
    EXPECT_TRUE(same_key(a, b)) << n;
    for (std::size_t i = 0; i < n; ++i) {
      std::string c = a;
      c[i] = char(c[i] ^ 0x01);
      EXPECT_FALSE(same_key(a, c)) << "length " << n << ", byte " << i;
      EXPECT_FALSE(same_key(c, a)) << "length " << n << ", byte " << i;
    }
    EXPECT_FALSE(same_key(a, a + 'x')) << n;
    if (n > 0) {
      EXPECT_FALSE(same_key(a, std::string_view(a).substr(0, n - 1))) << n;
    }
  }
  // Views into larger buffers read only their own bytes.
  const std::string buffer = "xxuser:42yy";
  EXPECT_TRUE(same_key(std::string_view(buffer).substr(2, 7), "user:42"));
  EXPECT_TRUE(same_key(std::string_view(buffer).substr(2, 8), "user:42y"));
  EXPECT_FALSE(same_key(std::string_view(buffer).substr(1, 8), "user:42y"));
}

// Whether no two of `hashes` are equal (sorts them).
bool all_distinct(std::vector<std::size_t>& hashes) {
  std::sort(hashes.begin(), hashes.end());
  return std::adjacent_find(hashes.begin(), hashes.end()) == hashes.end();
}

// A key's hash depends on its bytes alone, wherever they lie: each key (every
// length from 0 to 70 bytes) is hashed from a heap block of exactly its size
// (an overread is caught by AddressSanitizer) and from inside a larger buffer
// at every offset of a word.
TEST(HashedKey, EqualBytesHashEqualWhereverTheyLie) {
  for (std::size_t n = 0; n <= 70; ++n) {
    std::string key(n, 'k');
    for (std::size_t i = 0; i < n; ++i) key[i] = char('!' + (i * 7) % 90);
    auto exact = std::make_unique<char[]>(n == 0 ? 1 : n);
    std::memcpy(exact.get(), key.data(), n);
    const std::size_t h = hashed_key::hash_of(std::string_view(exact.get(), n));
    EXPECT_EQ(hashed_key(key).hash, h) << n;
    for (std::size_t off = 0; off < 8; ++off) {
      std::string buffer(off, '#');
      buffer += key;
      buffer += "########";
      EXPECT_EQ(hashed_key::hash_of(std::string_view(buffer).substr(off, n)), h) << n << " at " << off;
    }
  }
}

// Each bit of a key flips each bit of its hash with a probability near 1/2
// (the tables take the hash unmixed, by its high and its low bits). For keys
// of lengths from 1 to 64 bytes (each remainder of a length by 4 and by 8, and
// lengths about 16, 32 and 64), 1,000 random keys of each length, every bit of
// each key flipped in turn: a fair coin over 1,000 tosses stays within
// 400..600 but once in 10^9.
// The 256 keys of one byte are taken all: their flips of one bit come in 128
// pairs, and a fair coin over 128 tosses stays within 0.3..0.7 but once in
// 10^5.
TEST(HashedKey, EveryKeyBitFlipsEveryHashBitAboutHalfTheTime) {
  std::mt19937_64 rng(20261204);
  for (std::size_t n : {1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33, 48, 64}) {
    const int samples = n == 1 ? 256 : 1000;
    std::vector<std::array<int, 64>> flips(n * 8);
    for (auto& f : flips) f.fill(0);
    std::string key(n, '\0');
    for (int s = 0; s < samples; ++s) {
      if (n == 1)
        key[0] = char(s);
      else
        for (auto& c : key) c = char(rng());
      const std::uint64_t h = hashed_key::hash_of(key);
      for (std::size_t bit = 0; bit < n * 8; ++bit) {
        key[bit / 8] = char(key[bit / 8] ^ (1 << (bit % 8)));
        const std::uint64_t d = h ^ hashed_key::hash_of(key);
        key[bit / 8] = char(key[bit / 8] ^ (1 << (bit % 8)));
        for (int out = 0; out < 64; ++out) flips[bit][out] += int((d >> out) & 1);
      }
    }
    double worst = 0.5;
    for (const auto& f : flips)
      for (int c : f)
        if (std::abs(double(c) / samples - 0.5) > std::abs(worst - 0.5)) worst = double(c) / samples;
    const double margin = n == 1 ? 0.2 : 0.1;
    EXPECT_GE(worst, 0.5 - margin) << "length " << n;
    EXPECT_LE(worst, 0.5 + margin) << "length " << n;
  }
}

// Keys that differ in a counter, as keys usually do (short keys, and keys of
// several words), spread evenly over the buckets a table takes from the
// hash's high bits, those it takes from its low bits, and the shards; none
// of 200,000 such keys collide.
TEST(HashedKey, SequentialKeysSpreadEvenly) {
  for (const char* prefix : {"key:", "user:profile:v2:", "https://example.com/api/v1/items/"}) {
    constexpr std::size_t keys = 200'000, buckets = 1024;
    std::vector<std::size_t> high(buckets), low(buckets), shards(64);
    std::vector<std::size_t> hashes;
    hashes.reserve(keys);
    for (std::size_t i = 0; i < keys; ++i) {
      const std::size_t h = hashed_key::hash_of(prefix + std::to_string(i));
      hashes.push_back(h);
      ++high[h >> 54];
      ++low[h % buckets];
      ++shards[cacheflight::detail::shard_index(h, shards.size())];
    }
    // 195 keys a bucket on average, a standard deviation of 14: 5 deviations.
    const std::size_t mean = keys / buckets;
    for (const auto* counts : {&high, &low}) {
      EXPECT_LE(*std::max_element(counts->begin(), counts->end()), mean + 70) << prefix;
      EXPECT_GE(*std::min_element(counts->begin(), counts->end()), mean - 70) << prefix;
    }
    const std::size_t per_shard = keys / shards.size();  // 3,125, deviation 55
    EXPECT_LE(*std::max_element(shards.begin(), shards.end()), per_shard + 275) << prefix;
    EXPECT_GE(*std::min_element(shards.begin(), shards.end()), per_shard - 275) << prefix;
    EXPECT_TRUE(all_distinct(hashes)) << prefix;
  }
}

// Keys that differ only in their length hash apart: a key followed by any
// number of zero bytes, and strings of zero bytes alone. An empty view with
// no data hashes as the empty string.
TEST(HashedKey, KeysDifferingOnlyInTrailingZeroBytesHashApart) {
  EXPECT_EQ(hashed_key::hash_of(std::string_view()), hashed_key::hash_of(""));
  for (std::string prefix : {"", "a", "key:1", "user:profile:42", "a-key-of-18-bytes!"}) {
    std::vector<std::size_t> hashes;
    for (std::size_t zeros = 0; zeros <= 40; ++zeros)
      hashes.push_back(hashed_key::hash_of(prefix + std::string(zeros, '\0')));
    EXPECT_TRUE(all_distinct(hashes)) << prefix;
  }
}

// Keys that differ only in a counter held in 8 bytes at any place (the
// start, the end, or the middle of a longer key, in a key of any length from
// 8 to 40 bytes) never share a hash: 200,000 each.
TEST(HashedKey, KeysDifferingInACounterAnywhereNeverCollide) {
  for (std::size_t n : {8, 9, 12, 15, 16, 17, 20, 24, 25, 31, 32, 40}) {
    std::vector<std::size_t> places{0, n - 8};
    for (std::size_t at = 1; at + 8 < n; at += 7) places.push_back(at);
    for (std::size_t at : places) {
      std::string key(n, 'x');
      std::vector<std::size_t> hashes;
      hashes.reserve(200'000);
      for (std::uint64_t i = 0; i < 200'000; ++i) {
        std::memcpy(key.data() + at, &i, 8);
        hashes.push_back(hashed_key::hash_of(key));
      }
      EXPECT_TRUE(all_distinct(hashes)) << "length " << n << " at " << at;
    }
  }
}

// Constants that degrade a product or a sum: zero, all ones, one, the top
// bit alone, and the golden-ratio, pi and SplitMix64 constants that hashes
// commonly use, with their complements and negations.
std::vector<std::uint64_t> special_words() {
  std::vector<std::uint64_t> special{0, ~0ull, 1, 1ull << 63};
  for (std::uint64_t k : {0x9e3779b97f4a7c15ull, 0x243f6a8885a308d3ull, 0xbf58476d1ce4e5b9ull, 0x94d049bb133111ebull}) {
    special.push_back(k);
    special.push_back(~k);
    special.push_back(0 - k);
  }
  return special;
}

// A word of the key that zeroes or otherwise degrades a product does not make
// the hash forget the rest of the key: 2,000 keys holding such a word at any
// 8-byte position, with random bytes elsewhere, hash apart, at each length
// from 16 to 40 bytes in steps of 8.
TEST(HashedKey, AWordOfSpecialBitsDoesNotMakeTheHashForgetTheRest) {
  std::mt19937_64 rng(7);
  for (std::size_t n = 16; n <= 40; n += 8) {
    for (std::size_t at = 0; at + 8 <= n; at += 8) {
      for (std::uint64_t word : special_words()) {
        std::vector<std::size_t> hashes;
        std::string key(n, '\0');
        for (int i = 0; i < 2000; ++i) {
          for (auto& c : key) c = char(rng());
          std::memcpy(key.data() + at, &word, 8);
          hashes.push_back(hashed_key::hash_of(key));
        }
        EXPECT_TRUE(all_distinct(hashes))
            << "length " << n << ", word " << std::hex << word << " at " << std::dec << at;
      }
    }
  }
}

// Two words of a key that differ by a constant (equal words among them) do
// not cancel each other, as they would in a hash that xors a term per word:
// 20,000 keys whose 8-byte words at two places are random but that fixed
// distance apart, other bytes fixed, hash apart; and a key's words swapped
// change its hash.
TEST(HashedKey, TwoRelatedWordsDoNotCancelEachOther) {
  std::mt19937_64 rng(11);
  for (std::size_t n : {16, 24, 40}) {
    for (std::uint64_t distance : special_words()) {
      for (std::size_t second = 8; second + 8 <= n; second += 8) {
        std::string key(n, 'x');
        std::vector<std::size_t> hashes;
        for (int i = 0; i < 20'000; ++i) {
          const std::uint64_t w = rng(), v = w - distance;
          std::memcpy(key.data(), &w, 8);
          std::memcpy(key.data() + second, &v, 8);
          hashes.push_back(hashed_key::hash_of(key));
        }
        EXPECT_TRUE(all_distinct(hashes))
            << "length " << n << ", distance " << std::hex << distance << " at " << std::dec << second;
      }
    }
  }
  for (int i = 0; i < 1000; ++i) {
    std::uint64_t w[2] = {rng(), rng()};
    std::string key(16, '\0'), swapped(16, '\0');
    std::memcpy(key.data(), w, 16);
    std::memcpy(swapped.data(), w + 1, 8);
    std::memcpy(swapped.data() + 8, w, 8);
    EXPECT_NE(hashed_key::hash_of(key), hashed_key::hash_of(swapped));
  }
}

}  // namespace
