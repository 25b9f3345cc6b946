// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_L1_STORE_HPP
#define CACHEFLIGHT_DETAIL_L1_STORE_HPP

#include <cacheflight/detail/ghost_table.hpp>
#include <cacheflight/detail/hashed_key.hpp>
#include <cacheflight/detail/intrusive_list.hpp>
#include <cacheflight/detail/shard_mutex.hpp>
#include <cacheflight/detail/table_room.hpp>
#include <cacheflight/options.hpp>

#include <boost/unordered/unordered_flat_map.hpp>
#include <boost/unordered/unordered_flat_set.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cacheflight {

namespace detail {

enum class removal : std::uint8_t { none, capacity, expired, replaced, erased };

// A load's duration in 16 bits: microseconds as an 11-bit mantissa and a 5-bit
// exponent (within 0.1%, up to 50 days). 0 means unknown.
constexpr std::uint16_t encode_load_time(std::int64_t ns) noexcept {
  if (ns <= 0) return 0;
  std::uint64_t us = std::uint64_t(ns) / 1000;
  if (us == 0) us = 1;
  unsigned e = 0;
  while ((us >> e) >= 2048 && e < 31) ++e;
  std::uint64_t m = us >> e;
  if (m >= 2048) m = 2047;
  return static_cast<std::uint16_t>(e * 2048 + m);
}
constexpr std::int64_t decode_load_time(std::uint16_t code) noexcept {
  return std::int64_t(std::uint64_t(code % 2048) << (code / 2048)) * 1000;
}
// The running average kept per entry: the mean of the previous average and
// the new sample (the sample alone the first time).
constexpr std::uint16_t average_load_time(std::uint16_t old, std::int64_t sample_ns) noexcept {
  if (sample_ns < 0) return old;
  if (old == 0) return encode_load_time(sample_ns);
  return encode_load_time((decode_load_time(old) + sample_ns) / 2);
}

// One entry. Laid out small: for a `cache<std::uint64_t>` it is 88 bytes
// (a 96-byte heap block): the list links (16), the key (32), the value or
// cached failure (8, which of the two is kept among the flag bits), the end
// of its fresh time and its expiry (16), the weight (8), and the heap index
// with the policy's bits, the reload's state and the load time (8).
template <class V>
struct l1_node final : list_hook {
  static constexpr std::uint32_t no_heap = std::numeric_limits<std::uint32_t>::max();

  // A thread keeps one freed node for the next node it makes: a cache at
  // capacity frees one node and makes one on every miss, on one thread. A
  // node whose `V` needs more than the default new alignment is not kept.
  static void* operator new(std::size_t size) {
    if constexpr (over_aligned) {
      return ::operator new(size, std::align_val_t(alignof(l1_node)));
    } else {
      if (!spare_closed())
        if (void* p = std::exchange(spare().p, nullptr)) return p;
      return ::operator new(size);
    }
  }
  static void operator delete(void* p) noexcept {
    if constexpr (over_aligned) {
      ::operator delete(p, std::align_val_t(alignof(l1_node)));
    } else {
      if (!spare_closed() && !spare().p) {
        spare().p = p;
        return;
      }
      ::operator delete(p);
    }
  }

  l1_node() noexcept {}
  l1_node(const l1_node&) = delete;
  l1_node& operator=(const l1_node&) = delete;
  ~l1_node() { reset_slot(); }

  std::string key;

 private:
  // The value, or the cached failure of a negative entry, or nothing (a node
  // being filled); `kind` says which.
  union storage {
    storage() noexcept {}
    ~storage() {}
    V value;
    std::exception_ptr error;
  } slot_;

 public:
  // Cache clock, ns. Served as fresh before `fresh_until`, as stale (with a
  // reload) from then until `expires`, never after.
  std::int64_t fresh_until = std::numeric_limits<std::int64_t>::max();
  std::int64_t expires = std::numeric_limits<std::int64_t>::max();
  std::size_t weight = 1;
  std::uint32_t heap_index = no_heap;
  removal why = removal::none;
  std::uint8_t freq : 2 = 0;
  bool in_main : 1 = false;
  std::uint8_t kind : 2 = 0;  // 0: nothing, 1: value, 2: failure
  bool refreshing : 1 = false;      // a reload was started by a stale or early read
  bool refresh_failed : 1 = false;  // the last reload failed; the value is kept (stale-if-error)
  bool read : 1 = false;            // read since it was stored (refresh-ahead stops otherwise)
  std::uint16_t load_time = 0;      // running average of its loads, `encode_load_time`

  const V* value() const noexcept { return kind == 1 ? &slot_.value : nullptr; }
  const std::exception_ptr* error() const noexcept { return kind == 2 ? &slot_.error : nullptr; }

  // Replaces the slot. If V's move throws, the node holds nothing.
  void set_value(V&& v) {
    reset_slot();
    ::new (static_cast<void*>(&slot_.value)) V(std::move(v));
    kind = 1;
  }
  void set_error(std::exception_ptr e) noexcept {
    reset_slot();
    ::new (static_cast<void*>(&slot_.error)) std::exception_ptr(std::move(e));
    kind = 2;
  }
  // Moves the slot out (to be destroyed later, outside a lock).
  void take_slot(std::optional<V>& v, std::exception_ptr& e) {
    if (kind == 1) v.emplace(std::move(slot_.value));
    if (kind == 2) e = std::move(slot_.error);
    reset_slot();
  }

 private:
  void reset_slot() noexcept {
    if (kind == 1) slot_.value.~V();
    if (kind == 2) slot_.error.~exception_ptr();
    kind = 0;
  }

  static constexpr bool over_aligned = alignof(V) > __STDCPP_DEFAULT_NEW_ALIGNMENT__;

  // Freed when the thread's thread-locals are destroyed; a node freed after
  // that is freed at once. (One freed during the process's exit after the
  // main thread's thread-locals are gone, by a static cache, may be kept
  // until the process ends.)
  struct spare_node {
    void* p = nullptr;
    ~spare_node() {
      ::operator delete(p);
      spare_closed() = true;
    }
  };
  static spare_node& spare() noexcept {
    thread_local spare_node s;
    return s;
  }
  static bool& spare_closed() noexcept {
    thread_local bool closed = false;  // trivially destructible: readable until the thread ends
    return closed;
  }
};

// The index of a shard: the nodes themselves, hashed and compared by key (a
// pointer per slot, where a map from key views would take three).
template <class Node>
struct l1_node_hash {
  using is_transparent = void;
  using is_avalanching = void;  // hashed_key::hash_of
  std::size_t operator()(std::string_view k) const noexcept { return hashed_key::hash_of(k); }
  std::size_t operator()(const hashed_key& k) const noexcept { return k.hash; }
  std::size_t operator()(const Node* n) const noexcept { return hashed_key::hash_of(n->key); }
};
template <class Node>
struct l1_node_eq {
  using is_transparent = void;
  static std::string_view view(std::string_view k) noexcept { return k; }
  static std::string_view view(const hashed_key& k) noexcept { return k.key; }
  static std::string_view view(const Node* n) noexcept { return n->key; }
  template <class A, class B>
  [[gnu::always_inline]] bool operator()(const A& a, const B& b) const noexcept {
    return same_key(view(a), view(b));
  }
};

// Counters kept per shard, under its lock, so that hits on different shards
// never share a cache line. (Lookups made without the lock are counted in the
// reading thread's slot instead: see reader_slots.)
struct l1_counters {
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;
  std::uint64_t stale_hits = 0;
  std::uint64_t stale_after_error = 0;
  std::uint64_t evictions_capacity = 0;
  std::uint64_t evictions_oversized = 0;
  std::uint64_t expirations = 0;
};

// One lock-protected partition of the memory tier. Every member function
// requires `mu` held, except the const ones, which a reader may also call
// while no holder of `mu` changes the shard (see memory_tier::read_unlocked).
// Removed nodes are handed back on a graveyard list so that events and frees
// happen after the lock is released.
template <class V>
class alignas(64) l1_shard {
 public:
  using node = l1_node<V>;
  using graveyard = intrusive_list<node>;

  l1_shard() = default;
  l1_shard(const l1_shard&) = delete;
  l1_shard& operator=(const l1_shard&) = delete;
  ~l1_shard() {
    for (node* n : map_) delete n;
  }

  void configure(eviction_policy p, std::size_t max_entries, std::size_t max_weight) {
    policy_ = p;
    max_entries_ = max_entries;
    max_weight_ = max_weight;
  }

  shard_mutex mu;
  l1_counters counters;


  std::size_t count() const noexcept { return map_.size(); }
  std::size_t weight() const noexcept { return weight_; }
  std::size_t max_weight() const noexcept { return max_weight_; }
  bool has_expiring() const noexcept { return !heap_.empty(); }
  // The soonest expiry of the shard's entries (requires has_expiring()).
  std::int64_t earliest_expiry() const noexcept { return heap_.front()->expires; }
  // Whether a hit on `n` would record nothing for the eviction policy: under
  // S3-FIFO once its access count is full; never under LRU, which moves it.
  bool untouched_by_read(const node& n) const noexcept { return policy_ != eviction_policy::lru && n.freq >= 3; }
  bool stores_nothing() const noexcept { return max_entries_ == 0 || max_weight_ == 0; }

  // A fresh entry for `key`, or null. An expired entry found on the way is
  // removed onto `dead`. A hit records the access for the eviction policy.
  // `now()` gives the clock, read only for an entry that can expire.
  template <class Now>
  node* find(const hashed_key& key, Now&& now, graveyard& dead) {
    auto it = map_.find(key);
    if (it == map_.end()) return nullptr;
    node* n = *it;
    if (n->expires != std::numeric_limits<std::int64_t>::max() && n->expires <= now()) {
      remove(n, removal::expired, dead);
      return nullptr;
    }
    touch(n);
    return n;
  }

  // The entry of `key`, expired or not, without recording an access.
  node* peek(const hashed_key& key) const {
    auto it = map_.find(key);
    return it == map_.end() ? nullptr : *it;
  }

  // Removes one entry (its reload failed and its stale value is not kept).
  void drop(node* n, graveyard& dead) { remove(n, removal::replaced, dead); }

  // Inserts or replaces. Returns false (storing nothing) for an entry heavier
  // than the shard's capacity. Evictions go onto `dead`.
  template <class Fill>
  bool put(std::string&& key, std::size_t hash, std::int64_t expires, std::size_t w, Fill&& fill, graveyard& dead) {
    if (stores_nothing()) return true;
    // What a new entry's admission and the eviction it may cause will read,
    // requested before the index is searched: the key's ghost bucket and the
    // first candidate for eviction.
    if (policy_ == eviction_policy::s3fifo) ghost_.prefetch(hash);
    prefetch_node(policy_ == eviction_policy::lru ? main_.back() : small_.back());
    const hashed_key hk(key, hash);
    if (w > max_weight_) {
      ++counters.evictions_oversized;
      if (auto it = map_.find(hk); it != map_.end()) remove(*it, removal::replaced, dead);
      return false;
    }
    if (auto it = map_.find(hk); it != map_.end()) {
      node* n = *it;
      try {
        fill(*n);
      } catch (...) {
        remove(n, removal::replaced, dead);  // its value may be gone: never leave it half filled
        throw;
      }
      weight_ = weight_ - n->weight + w;
      if (policy_ == eviction_policy::s3fifo) {
        std::size_t& part = n->in_main ? main_weight_ : small_weight_;
        part = part - n->weight + w;
      }
      n->weight = w;
      set_expiry(n, expires);
      touch(n);
    } else {
      // Nothing is linked until every step that may throw has succeeded.
      auto owned = std::make_unique<node>();
      node* n = owned.get();
      n->key = std::move(key);  // `hk` views `key`: not used from here on
      fill(*n);
      n->weight = w;
      if (expires != std::numeric_limits<std::int64_t>::max()) heap_.reserve(heap_.size() + 1);
      map_.insert(n);
      owned.release();
      weight_ += w;
      set_expiry(n, expires);
      // Room is made before the entry joins a queue, as S3-FIFO inserts after
      // evicting: it counts toward the caps, but no eviction can pick it.
      const bool to_main = admitted_to_main(hash);
      evict(dead);
      link(n, to_main);
      return true;
    }
    evict(dead);
    return true;
  }

  // Removes `key`. Returns whether a fresh entry was removed: an expired one
  // is reclaimed as an expiration and reported as absent, as `find` would.
  template <class Now>
  bool erase(const hashed_key& key, Now&& now, graveyard& dead) {
    auto it = map_.find(key);
    if (it == map_.end()) return false;
    node* n = *it;
    if (n->expires != std::numeric_limits<std::int64_t>::max() && n->expires <= now()) {
      remove(n, removal::expired, dead);
      return false;
    }
    remove(n, removal::erased, dead);
    return true;
  }

  // In time linear in the entries: every node is on one of the two queues.
  std::size_t clear(graveyard& dead) noexcept {
    const std::size_t n = map_.size();
    for (intrusive_list<node>* q : {&small_, &main_})
      while (node* x = q->pop_front()) {
        x->heap_index = node::no_heap;
        x->why = removal::erased;
        dead.push_back(x);
      }
    map_.clear();
    heap_.clear();
    weight_ = small_weight_ = main_weight_ = 0;
    ghost_.clear();
    return n;
  }

  // Removes up to `limit` expired entries, soonest first.
  std::size_t purge(std::int64_t now, std::size_t limit, graveyard& dead) {
    std::size_t n = 0;
    while (n < limit && !heap_.empty() && heap_.front()->expires <= now) {
      remove(heap_.front(), removal::expired, dead);
      ++n;
    }
    return n;
  }

  // Generation tokens of loads in flight: a load stores its result only if its
  // token is still registered (no erase, clear or set of the key meanwhile).
  // They are filed by the key's hash alone. Tokens are unique, so two keys
  // of one hash can only void each other's registration: the later
  // registration replaces the earlier (whose load then does not store its
  // result), and an invalidation of either voids both. Nothing stale is ever
  // stored. (With a 32-bit size_t such collisions are likelier, with the same
  // consequence.)
  void begin_load(const hashed_key& key, std::uint64_t token) {
    keep_room(loading_);
    loading_.insert_or_assign(key.hash, token);
  }
  bool end_load(const hashed_key& key, std::uint64_t token) {
    auto it = loading_.find(key.hash);
    if (it == loading_.end() || it->second != token) return false;
    loading_.erase(it);
    return true;
  }
  void invalidate_load(const hashed_key& key) {
    if (auto it = loading_.find(key.hash); it != loading_.end()) loading_.erase(it);
  }
  void invalidate_loads() { loading_.clear(); }

 private:
  void touch(node* n) {
    if (policy_ == eviction_policy::lru) {
      main_.erase(n);
      main_.push_front(n);
    } else if (n->freq < 3) {
      ++n->freq;
    }
  }

  // Whether a new entry of hash `h` goes to the main queue: always under LRU;
  // under S3-FIFO when it was recently evicted from the small queue (proven
  // reuse), else it starts on probation in the small queue.
  bool admitted_to_main(std::uint64_t h) const noexcept {
    return policy_ == eviction_policy::lru || ghost_.contains(h, ghost_window());
  }

  void link(node* n, bool to_main) noexcept {
    if (to_main) {
      n->in_main = true;
      main_.push_front(n);
      if (policy_ != eviction_policy::lru) main_weight_ += n->weight;
    } else {
      small_.push_front(n);
      small_weight_ += n->weight;
    }
  }

  bool over() const noexcept { return map_.size() > max_entries_ || weight_ > max_weight_; }

  // Evicts until the caps hold. An entry being stored is on neither queue yet
  // (see put): it counts toward the caps but is never picked.
  void evict(graveyard& dead) {
    while (over() && !(small_.empty() && main_.empty())) {
      if (policy_ == eviction_policy::lru) {
        remove(main_.back(), removal::capacity, dead);
        continue;
      }
      // The small queue is evicted from while it holds at least a tenth of the
      // cache (`small * 10 >= cap`, written without the product), measured in
      // the limit being enforced now: entries when the count is over, weight
      // otherwise (a weight cap that is not reached must not size the queue).
      // Under a count cap below 10 that is whenever it holds an entry, so that
      // an entry readmitted from the ghost into main is not the one evicted
      // while the small queue keeps one read once.
      const bool by_count = map_.size() > max_entries_;
      const std::size_t cap = by_count ? max_entries_ : max_weight_;
      const std::size_t small_size = by_count ? small_.size() : small_weight_;
      const std::size_t small_target = cap / 10 + (cap % 10 != 0);
      if (!small_.empty() && (small_size >= small_target || main_.empty()))
        evict_small(dead);
      else
        evict_main(dead);
    }
  }

  void evict_small(graveyard& dead) {
    node* n = small_.back();
    if (n->freq > 0) {
      // Reused while on probation: promote.
      small_.erase(n);
      small_weight_ -= n->weight;
      n->freq = 0;
      n->in_main = true;
      main_.push_front(n);
      main_weight_ += n->weight;
      return;
    }
    // The ghost's bucket is requested first and written last, so that its
    // fetch overlaps the removal's.
    const std::size_t h = hashed_key::hash_of(n->key);
    const std::size_t window = ghost_window();
    ghost_.prefetch(h);
    remove(n, removal::capacity, dead, &h);
    ghost_.insert(h, window);
  }

  void evict_main(graveyard& dead) {
    // Bounded: every pass decrements a count of at most 3.
    for (;;) {
      node* n = main_.back();
      if (n->freq == 0) {
        remove(n, removal::capacity, dead);
        return;
      }
      --n->freq;
      main_.erase(n);
      main_.push_front(n);
    }
  }

  static void prefetch_node(const node* n) noexcept {
#if defined(__GNUC__)
    if (n) __builtin_prefetch(n);
#else
    (void)n;
#endif
  }

  // The ghost remembers as many evicted keys as the shard holds (at least 16).
  std::size_t ghost_window() const noexcept { return std::max<std::size_t>(16, std::min(map_.size(), max_entries_)); }

  // `hash`, if given, is the hash of the node's key.
  void remove(node* n, removal why, graveyard& dead, const std::size_t* hash = nullptr) {
    if (policy_ == eviction_policy::lru || n->in_main) {
      main_.erase(n);
      if (policy_ != eviction_policy::lru) main_weight_ -= n->weight;
    } else {
      small_.erase(n);
      small_weight_ -= n->weight;
    }
    heap_erase(n);
    if (hash)
      map_.erase(hashed_key(n->key, *hash));
    else
      map_.erase(n);
    weight_ -= n->weight;
    if (why == removal::capacity) ++counters.evictions_capacity;
    if (why == removal::expired) ++counters.expirations;
    n->why = why;
    dead.push_back(n);
  }

  // --- expiry heap (min-heap on `expires`, nodes know their index) -------------
  void set_expiry(node* n, std::int64_t expires) {
    n->expires = expires;
    const bool finite = expires != std::numeric_limits<std::int64_t>::max();
    if (n->heap_index == node::no_heap) {
      if (!finite) return;
      n->heap_index = static_cast<std::uint32_t>(heap_.size());
      heap_.push_back(n);
      sift_up(n->heap_index);
    } else if (!finite) {
      heap_erase(n);
    } else {
      sift_up(n->heap_index);
      sift_down(n->heap_index);
    }
  }

  void heap_erase(node* n) {
    std::size_t i = n->heap_index;
    if (i == node::no_heap) return;
    n->heap_index = node::no_heap;
    node* last = heap_.back();
    heap_.pop_back();
    if (i == heap_.size()) return;
    heap_[i] = last;
    last->heap_index = static_cast<std::uint32_t>(i);
    sift_up(i);
    sift_down(last->heap_index);
  }

  void sift_up(std::size_t i) {
    while (i > 0) {
      std::size_t p = (i - 1) / 2;
      if (heap_[p]->expires <= heap_[i]->expires) break;
      swap_nodes(i, p);
      i = p;
    }
  }

  void sift_down(std::size_t i) {
    for (;;) {
      std::size_t l = 2 * i + 1, r = l + 1, m = i;
      if (l < heap_.size() && heap_[l]->expires < heap_[m]->expires) m = l;
      if (r < heap_.size() && heap_[r]->expires < heap_[m]->expires) m = r;
      if (m == i) return;
      swap_nodes(i, m);
      i = m;
    }
  }

  void swap_nodes(std::size_t a, std::size_t b) {
    std::swap(heap_[a], heap_[b]);
    heap_[a]->heap_index = static_cast<std::uint32_t>(a);
    heap_[b]->heap_index = static_cast<std::uint32_t>(b);
  }

  eviction_policy policy_ = eviction_policy::s3fifo;
  std::size_t max_entries_ = std::numeric_limits<std::size_t>::max();
  std::size_t max_weight_ = std::numeric_limits<std::size_t>::max();
  boost::unordered_flat_set<node*, l1_node_hash<node>, l1_node_eq<node>> map_;
  intrusive_list<node> small_, main_;
  std::size_t weight_ = 0, small_weight_ = 0, main_weight_ = 0;
  ghost_table ghost_;
  std::vector<node*> heap_;
  boost::unordered_flat_map<std::size_t, std::uint64_t> loading_;  // key hash -> token
};

}  // namespace detail
}  // namespace cacheflight

#endif
