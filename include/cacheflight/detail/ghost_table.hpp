// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_GHOST_TABLE_HPP
#define CACHEFLIGHT_DETAIL_GHOST_TABLE_HPP

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <vector>

namespace cacheflight::detail {

// S3-FIFO's ghost queue: the hashes of the last `window` keys evicted from the
// small queue, asked whether a key was among them when it is admitted again.
//
// Laid out as the S3-FIFO paper suggests, as a hash table of fingerprints and
// insertion times rather than a queue beside a set: each record is a 32-bit
// fingerprint of the key's hash and the 32-bit sequence number of its
// insertion, and a record is live while fewer than `window` insertions came
// after it. Nothing is ever removed: an expired record is free for reuse. The
// records are grouped in buckets of one cache line (eight records), so an
// insertion and a lookup each touch one line, where a FIFO beside a hash set
// touches three (the set's slot for the new hash, the set's slot of the hash
// leaving the FIFO, and the FIFO's end).
//
// It answers as an exact FIFO would but in three cases, all rare: two keys
// whose hashes have the same fingerprint (a chance of about one in 2^29 per
// lookup in a full bucket) are taken for each other; a bucket whose eight
// records are all live drops its oldest record early to take a new one (the
// table holds at least three records per live one, so a bucket is full only
// when eight of the keys evicted last fall in it: about one bucket in a
// thousand at a time); and every 2^32 insertions, when the sequence number
// wraps, the table is emptied.
//
// Not thread-safe: the memory shard's lock guards it.
class ghost_table {
 public:
  // Whether `hash` is among the last `window` hashes inserted.
  bool contains(std::size_t hash, std::size_t window) const noexcept {
    if (!buckets_) return false;
    const std::uint32_t fp = fingerprint(hash);
    const bucket& b = buckets_[index(fp)];
    for (const record& r : b.r)
      if (r.fp == fp && live(r, window)) return true;
    return false;
  }

  // Records `hash` as the newest of the window, which holds the last
  // `window` hashes inserted (`window` ≥ 1). The table grows with the
  // window; if it cannot (memory is exhausted), it keeps its size and
  // remembers less, or, before its first insertion, nothing.
  void insert(std::size_t hash, std::size_t window) noexcept {
    if (window > capacity() / 3) {
      try {
        grow(window);
      } catch (const std::bad_alloc&) {
        if (!buckets_) return;
      }
    }
    if (++seq_ == 0) {
      // The sequence wrapped: every record's age would be read wrong.
      clear();
      seq_ = 1;
    }
    put(fingerprint(hash), seq_, window);
  }

  // Starts bringing `hash`'s bucket into the cache, for a `contains` or an
  // `insert` a little later.
  void prefetch(std::size_t hash) const noexcept {
#if defined(__GNUC__)
    if (buckets_) __builtin_prefetch(&buckets_[index(fingerprint(hash))]);
#else
    (void)hash;
#endif
  }

  // Forgets every hash; keeps the memory.
  void clear() noexcept {
    for (std::size_t i = 0; i < buckets_count_; ++i) buckets_[i] = bucket{};
    seq_ = 0;
  }

  // Records the table has room for (0 before the first insertion).
  std::size_t capacity() const noexcept { return buckets_count_ * 8; }

 private:
  struct record {
    std::uint32_t fp = 0;   // 0: never used
    std::uint32_t seq = 0;  // the insertion's sequence number
  };
  struct alignas(64) bucket {
    record r[8];
  };
  struct bucket_delete {
    void operator()(bucket* b) const noexcept { delete[] b; }
  };

  static std::uint32_t fingerprint(std::size_t hash) noexcept {
    const auto fp = static_cast<std::uint32_t>(std::uint64_t(hash) ^ (std::uint64_t(hash) >> 32));
    return fp == 0 ? 1 : fp;
  }
  // A record's bucket follows from its fingerprint alone, so that the table
  // can grow: the fingerprint mixed by a multiplication, scaled to the
  // number of buckets (which need not be a power of two).
  std::size_t index(std::uint32_t fp) const noexcept {
    return std::size_t((std::uint64_t(std::uint32_t(fp * 0x9E3779B1u)) * buckets_count_) >> 32);
  }
  bool live(const record& r, std::size_t window) const noexcept {
    return r.fp != 0 && std::size_t(std::uint32_t(seq_ - r.seq)) < window;
  }

  // Writes a record of `fp` inserted at `seq`: over the live record of `fp` if
  // the bucket has one (an older insertion of the same key), else over a free
  // or expired record, else over the bucket's oldest.
  void put(std::uint32_t fp, std::uint32_t seq, std::size_t window) noexcept {
    bucket& b = buckets_[index(fp)];
    record* target = nullptr;
    std::uint32_t oldest_age = 0;
    for (record& r : b.r) {
      if (r.fp == fp && live(r, window)) {
        target = &r;
        break;
      }
      const std::uint32_t age = live(r, window) ? std::uint32_t(seq_ - r.seq) : UINT32_MAX;
      if (!target || age > oldest_age) {
        target = &r;
        oldest_age = age;
      }
    }
    target->fp = fp;
    target->seq = seq;
  }

  // Rebuilds the table with 3.75 records per hash of a window of `window`
  // (it grows again past 3), moving the live records, oldest first (a bucket
  // that overflows keeps the newest).
  void grow(std::size_t window) {
    const std::size_t buckets = std::max<std::size_t>(2, (window * 15 + 31) / 32);
    if (buckets > UINT32_MAX) throw std::bad_alloc();
    std::unique_ptr<bucket[], bucket_delete> fresh(new bucket[buckets]);
    std::vector<record> kept;
    for (std::size_t i = 0; i < buckets_count_; ++i)
      for (const record& r : buckets_[i].r)
        if (live(r, window)) kept.push_back(r);
    std::sort(kept.begin(), kept.end(),
              [this](const record& a, const record& b) { return std::uint32_t(seq_ - a.seq) > std::uint32_t(seq_ - b.seq); });
    buckets_ = std::move(fresh);
    buckets_count_ = buckets;
    for (const record& r : kept) put(r.fp, r.seq, window);
  }

  std::unique_ptr<bucket[], bucket_delete> buckets_;
  std::size_t buckets_count_ = 0;
  std::uint32_t seq_ = 0;  // the last insertion's sequence number
};

}  // namespace cacheflight::detail

#endif
