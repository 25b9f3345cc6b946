// keep_room: an open-addressing table whose elements come and go at a steady
// count is rebuilt about as often as it grows, not every few insertions, and
// keeps every element through it.
#include <cacheflight/detail/table_room.hpp>

#include <boost/unordered/unordered_flat_map.hpp>

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <utility>

namespace {

using cacheflight::detail::keep_room;

std::size_t g_arrays = 0;  // the tables' allocations: one per rehash

template <class T>
struct counting_allocator {
  using value_type = T;
  counting_allocator() = default;
  template <class U>
  counting_allocator(const counting_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    ++g_arrays;
    return std::allocator<T>{}.allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept { std::allocator<T>{}.deallocate(p, n); }
  template <class U>
  bool operator==(const counting_allocator<U>&) const noexcept {
    return true;
  }
};

// Keys as the library's tables see them: hashes of keys, spread over 64 bits.
std::uint64_t key(std::uint64_t i) {
  i ^= i >> 31;
  i *= 0x9e3779b97f4a7c15ull;
  i ^= i >> 29;
  i *= 0xbf58476d1ce4e5b9ull;
  return i ^ (i >> 32);
}

using table = boost::unordered_flat_map<std::uint64_t, std::uint64_t, std::hash<std::uint64_t>,
                                        std::equal_to<std::uint64_t>,
                                        counting_allocator<std::pair<const std::uint64_t, std::uint64_t>>>;

struct churned {
  std::size_t rehashes;  // allocations of the table during the rounds
  bool intact;           // exactly the live keys, each with its value
};

// `live` elements, then `rounds` of erasing the oldest and inserting a new one.
churned churn(std::size_t live, std::size_t rounds, bool with_room) {
  table t;
  std::deque<std::uint64_t> order;
  std::uint64_t next = 0;
  auto insert = [&] {
    if (with_room) keep_room(t);
    t.emplace(key(next), next);
    order.push_back(next++);
  };
  for (std::size_t i = 0; i < live; ++i) insert();
  const std::size_t before = g_arrays;
  for (std::size_t r = 0; r < rounds; ++r) {
    t.erase(key(order.front()));
    order.pop_front();
    insert();
  }
  churned c{g_arrays - before, t.size() == live};
  for (std::uint64_t i : order) {
    auto it = t.find(key(i));
    c.intact = c.intact && it != t.end() && it->second == i;
  }
  return c;
}

TEST(TableRoom, ASteadyCountUnderChurnIsRebuiltRarely) {
  // 50 and 51 sit just under a capacity step of Boost 1.81's tables, where a
  // table left alone rehashes every 10 to 20 insertions.
  for (std::size_t live : {2, 14, 29, 50, 51, 100, 200, 1000}) {
    const churned c = churn(live, 100'000, true);
    EXPECT_TRUE(c.intact) << live;
    EXPECT_LE(c.rehashes, 100u) << live << " elements: " << c.rehashes << " rehashes in 100,000 insertions";
  }
}

TEST(TableRoom, AGrowingTableKeepsEveryElementAndGrowsByDoubling) {
  table t;
  std::size_t grew = 0;
  for (std::uint64_t i = 0; i < 100'000; ++i) {
    const std::size_t before = t.bucket_count();
    keep_room(t);
    if (t.bucket_count() != before) ++grew;
    t.emplace(key(i), i);
    ASSERT_GT(t.max_load(), t.size() + t.size() / 4) << i;  // room was made ahead of the insertion
  }
  EXPECT_EQ(t.size(), 100'000u);
  for (std::uint64_t i = 0; i < 100'000; ++i) ASSERT_EQ(t.at(key(i)), i);
  EXPECT_LE(grew, 16u);  // 100,000 elements from an empty table: about log2 of it
}

}  // namespace
