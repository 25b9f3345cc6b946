// S3-FIFO's ghost: the hashes of the last `window` keys evicted, as a table of
// fingerprints and insertion times. Checked against an exact FIFO beside a
// multiset, which it must match but for the rare cases its header names.
#include <cacheflight/detail/ghost_table.hpp>
#include <cacheflight/detail/hashed_key.hpp>

#include <gtest/gtest.h>

#include <deque>
#include <random>
#include <string>
#include <unordered_map>

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

}  // namespace
