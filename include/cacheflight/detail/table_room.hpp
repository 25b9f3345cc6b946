// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_TABLE_ROOM_HPP
#define CACHEFLIGHT_DETAIL_TABLE_ROOM_HPP

#include <cstddef>

namespace cacheflight::detail {

// Called before an insertion into a Boost.Unordered open-addressing table
// whose elements come and go at a steady count (the loads in flight, their
// registrations): once the room left before the table's next rehash is at
// most a quarter of its `n` elements plus one, makes room for `2n + 2`
// elements in all.
//
// Such a table lowers its maximum load by one on each erasure of an element
// whose group has overflowed for that element's hash, and rehashes once its
// size reaches that maximum, at the capacity its size needs
// (Boost.Unordered's guard against probe lengths drifting up under
// insert/erase cycles). A table holding a steady number of elements close to
// its maximum load has many overflowed groups, and under churn it rehashes
// every few insertions, each rehash moving every element: 50 loads in flight
// on one shard cost a rehash every 5 loads with Boost 1.81. At under half its
// maximum load few groups overflow, and the table is rebuilt about as often
// as it grows.
//
// When the capacity already holds `2n + 2` but the maximum load no longer
// does (erasures took the room), the table is rebuilt: shrunk to the
// capacity its elements need, then grown back, two rehashes. A table at
// Boost's smallest capacity (29 slots, which holds up to 11 elements with
// this room) cannot be rebuilt that way; Boost's own rehash restores its
// maximum load when its size reaches it, at the cost of moving at most 29
// elements.
//
// May throw what the table's rehash throws (`std::bad_alloc`); the table
// then holds the same elements.
template <class Table>
[[gnu::noinline, gnu::cold]] void make_room(Table& t) {
  const std::size_t want = 2 * t.size() + 2;
  const std::size_t before = t.bucket_count();
  t.reserve(want);
  if (t.bucket_count() == before && t.max_load() < want) {
    // Its capacity would hold `want`, its maximum load no longer does: the
    // room went to erasures in overflowed groups. Rebuilt (shrunk, then
    // grown back), the table has its full maximum load again.
    t.rehash(0);
    t.reserve(want);
  }
}

template <class Table>
void keep_room(Table& t) {
  const std::size_t n = t.size();
  if (t.max_load() - n <= n / 4 + 1) make_room(t);
}

}  // namespace cacheflight::detail

#endif
