// cf::cache: read-through, TTL, size caps, eviction, invalidation, negative
// caching, warmup, the coroutine fast path, events, stats and threads.
#include "test_support.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <iterator>
#include <random>
#include <thread>

using namespace cftest;

namespace {

using mcache = cf::cache<int, cf::manual_clock>;
using CK = cf::cache_event_kind;

struct cache_log {
  std::vector<std::pair<CK, std::string>> events;
  std::vector<cf::eviction_cause> causes;
  cf::cache_event_sink sink() {
    return [this](const cf::cache_event& e) {
      events.emplace_back(e.kind, std::string(e.key));
      if (e.kind == CK::eviction) causes.push_back(e.cause);
    };
  }
  std::size_t count(CK k) const {
    std::size_t n = 0;
    for (auto& e : events) n += e.first == k;
    return n;
  }
};

class Cache : public ::testing::Test {
 protected:
  void SetUp() override { cf::manual_clock::reset(); }

  template <class C>
  void set(C& c, std::string key, int v, std::optional<std::chrono::nanoseconds> ttl = {}) {
    bool done = false;
    if (ttl)
      c.async_set(std::move(key), v, *ttl, [&](std::exception_ptr e) { done = !e; });
    else
      c.async_set(std::move(key), v, [&](std::exception_ptr e) { done = !e; });
    run_until(io, [&] { return done; });
  }

  asio::io_context io;
  cache_log log;
};

TEST_F(Cache, ReadThroughLoadsOnceForConcurrentCallersThenHits) {
  mcache c{io, cf::cache_options{.max_entries = 100, .on_event = log.sink()}};
  gate g{io.get_executor()};
  std::vector<outcome<>> out(10);
  for (auto& o : out) c.async_get("user:42", g.fn(), o.handler());
  run_until(io, [&] { return g.calls() == 1; });
  g.resolve(42);
  drain(io);
  for (auto& o : out) EXPECT_EQ(o.value, 42);
  EXPECT_EQ(c.peek("user:42"), 42);

  outcome<> hit;
  c.async_get("user:42", g.fn(), hit.handler());
  EXPECT_FALSE(hit.done);  // a hit is posted, never run inside the call
  drain(io);
  EXPECT_EQ(hit.value, 42);
  EXPECT_EQ(g.calls(), 1);

  auto s = c.stats();
  EXPECT_EQ(s.misses, 10u);
  EXPECT_EQ(s.hits, 2u);  // the peek and the last get
  EXPECT_EQ(s.coalesced, 9u);
  EXPECT_EQ(s.loads, 1u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_DOUBLE_EQ(s.hit_rate, 2.0 / 12.0);
  EXPECT_EQ(log.count(CK::load_started), 1u);
  EXPECT_EQ(log.count(CK::load_resolved), 1u);
  EXPECT_EQ(log.count(CK::miss), 10u);
}

TEST_F(Cache, LookupOnlyGetNeverLoads) {
  mcache c{io};
  std::optional<std::optional<int>> got;
  c.async_get("k", [&](std::exception_ptr, std::optional<int> v) { got = v; });
  drain(io);
  ASSERT_TRUE(got);
  EXPECT_FALSE(*got);
  set(c, "k", 5);
  got.reset();
  c.async_get("k", [&](std::exception_ptr, std::optional<int> v) { got = v; });
  drain(io);
  EXPECT_EQ(**got, 5);
}

TEST_F(Cache, TtlDefaultExplicitAndNoExpiry) {
  mcache c{io, cf::cache_options{.default_ttl = 10s, .on_event = log.sink()}};
  set(c, "default", 1);
  set(c, "short", 2, 1s);
  set(c, "forever", 3, cf::no_expiry);
  cf::manual_clock::advance(999ms);
  EXPECT_EQ(c.peek("short"), 2);
  cf::manual_clock::advance(1ms);
  EXPECT_EQ(c.peek("short"), std::nullopt);  // never returned once expired
  EXPECT_EQ(c.peek("default"), 1);
  cf::manual_clock::advance(9s);
  EXPECT_EQ(c.peek("default"), std::nullopt);
  cf::manual_clock::advance(1000h);
  EXPECT_EQ(c.peek("forever"), 3);
  EXPECT_EQ(log.count(CK::expiration), 2u);
}

TEST_F(Cache, ExpiredEntriesAreReclaimedWithoutATouchAndDoNotCount) {
  mcache c{io, cf::cache_options{.max_entries = 1000, .default_ttl = 1s, .on_event = log.sink()}};
  for (int i = 0; i < 100; ++i) set(c, "k" + std::to_string(i), i);
  set(c, "keep", 1, 1h);
  EXPECT_EQ(c.size(), 101u);
  cf::manual_clock::advance(2s);
  auto s = c.stats();  // no key was touched
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(s.expirations, 100u);
  EXPECT_EQ(log.count(CK::expiration), 100u);
  // Writes reclaim a bounded number of expired entries as they go.
  for (int i = 0; i < 100; ++i) set(c, "again" + std::to_string(i), i, 1s);
  cf::manual_clock::advance(2s);
  for (int i = 0; i < 13; ++i) set(c, "w" + std::to_string(i), i, 1h);
  EXPECT_EQ(log.count(CK::expiration), 200u);  // 13 writes x 8 >= 100
}

TEST_F(Cache, LruEvictsTheLeastRecentlyUsed) {
  mcache c{io, cf::cache_options{.max_entries = 3, .policy = cf::eviction_policy::lru, .on_event = log.sink()}};
  set(c, "a", 1);
  set(c, "b", 2);
  set(c, "c", 3);
  EXPECT_EQ(c.peek("a"), 1);
  set(c, "d", 4);
  EXPECT_EQ(c.peek("b"), std::nullopt);
  EXPECT_EQ(c.peek("a"), 1);
  EXPECT_EQ(c.peek("c"), 3);
  EXPECT_EQ(c.peek("d"), 4);
  EXPECT_EQ(c.stats().evictions_capacity, 1u);
  ASSERT_EQ(log.causes.size(), 1u);
  EXPECT_EQ(log.causes[0], cf::eviction_cause::capacity);
}

TEST_F(Cache, S3FifoKeepsAHotSetThroughAScanWhereLruLosesIt) {
  auto survivors = [&](cf::eviction_policy p) {
    mcache c{io, cf::cache_options{.max_entries = 100, .policy = p}};
    for (int round = 0; round < 3; ++round)
      for (int i = 0; i < 50; ++i) {
        if (!c.peek("hot" + std::to_string(i))) set(c, "hot" + std::to_string(i), i);
      }
    for (int i = 0; i < 1000; ++i) set(c, "scan" + std::to_string(i), i);
    int alive = 0;
    for (int i = 0; i < 50; ++i) alive += c.peek("hot" + std::to_string(i)).has_value();
    return alive;
  };
  EXPECT_EQ(survivors(cf::eviction_policy::s3fifo), 50);
  EXPECT_EQ(survivors(cf::eviction_policy::lru), 0);
}

// Under a cap below 10 the small queue's tenth is less than one entry: a key
// read again after its eviction comes back from the ghost into main, and the
// entry read once waiting in the small queue is the one that goes.
TEST_F(Cache, S3FifoUnderACapBelowTenKeepsAKeyReadAgainRatherThanOneReadOnce) {
  for (std::size_t cap : {1u, 2u, 9u}) {
    SCOPED_TRACE(cap);
    mcache c{io, cf::cache_options{.max_entries = cap, .shards = 1}};
    int calls = 0;
    auto get = [&](const std::string& k) {
      bool done = false;
      c.async_get(
          k,
          [&calls]() -> asio::awaitable<int> {
            ++calls;
            co_return 1;
          },
          [&](std::exception_ptr e, int) { done = !e; });
      run_until(io, [&] { return done; });
    };
    // Fill the cache with keys read once, then read "a" (evicted by then) again and again.
    get("a");
    for (std::size_t i = 0; i < cap; ++i) get("once" + std::to_string(i));
    ASSERT_FALSE(c.peek("a"));
    for (int i = 0; i < 5; ++i) get("a");
    EXPECT_EQ(calls, int(cap) + 2);  // "a" twice, each key read once once
    EXPECT_TRUE(c.peek("a"));
    EXPECT_EQ(c.stats().size, cap);
  }
}

// S3-FIFO makes room before it inserts: a new entry is never the one its own
// store evicts, whatever the cap.
TEST_F(Cache, S3FifoKeepsTheEntryJustStoredUnderEveryCap) {
  for (std::size_t cap : {1u, 2u, 8u, 9u, 10u, 25u}) {
    SCOPED_TRACE(cap);
    mcache c{io, cf::cache_options{.max_entries = cap, .shards = 1}};
    // Fill memory with keys read once more, then store new keys one at a time.
    for (std::size_t i = 0; i < cap; ++i) {
      set(c, "hot" + std::to_string(i), 1);
      EXPECT_TRUE(c.peek("hot" + std::to_string(i)));
    }
    for (std::size_t i = 0; i < 3 * cap; ++i) {
      set(c, "new" + std::to_string(i), 2);
      EXPECT_EQ(c.peek("new" + std::to_string(i)), 2) << i;
    }
    EXPECT_EQ(c.size(), cap);
  }
  // A key back from the ghost into main is not evicted by its own store either.
  {
    mcache c{io, cf::cache_options{.max_entries = 2, .shards = 1}};
    set(c, "a", 1);
    set(c, "b", 2);
    set(c, "c", 3);  // "a" goes to the ghost
    ASSERT_FALSE(c.peek("a"));
    EXPECT_TRUE(c.peek("b"));
    EXPECT_TRUE(c.peek("c"));
    set(c, "d", 4);  // "b" and "c" move to main, "b" goes
    EXPECT_TRUE(c.peek("c"));
    EXPECT_TRUE(c.peek("d"));
    set(c, "a", 5);  // back from the ghost, into main
    EXPECT_EQ(c.peek("a"), 5);
  }
  // The same under a weight cap.
  mcache w{io, cf::cache_options{.max_weight = 5, .shards = 1}, [](std::string_view, const int& v) -> std::size_t {
             return std::size_t(v);
           }};
  for (int i = 0; i < 20; ++i) {
    set(w, "k" + std::to_string(i), 1 + i % 3);
    EXPECT_EQ(w.peek("k" + std::to_string(i)), 1 + i % 3) << i;
  }
}

TEST_F(Cache, ZeroEntriesStoresNothing) {
  mcache c{io, cf::cache_options{.max_entries = 0}};
  int calls = 0;
  auto fn = [&]() -> asio::awaitable<int> { co_return ++calls; };
  outcome<> a, b;
  c.async_get("k", fn, a.handler());
  drain(io);
  c.async_get("k", fn, b.handler());
  drain(io);
  EXPECT_EQ(a.value, 1);
  EXPECT_EQ(b.value, 2);
  EXPECT_EQ(c.size(), 0u);
}

// A value type aligned beyond what plain `new` guarantees: every copy checks
// where it was made.
struct alignas(64) wide_value {
  std::uint64_t words[8] = {};
  wide_value() = default;
  explicit wide_value(std::uint64_t v) { words[0] = v; }
  wide_value(const wide_value& o) : words{} {
    misaligned += reinterpret_cast<std::uintptr_t>(this) % 64 != 0;
    std::copy(std::begin(o.words), std::end(o.words), std::begin(words));
  }
  wide_value& operator=(const wide_value&) = default;
  static inline int misaligned = 0;
};

TEST_F(Cache, OverAlignedValuesAreStoredAligned) {
  wide_value::misaligned = 0;
  cf::cache<wide_value, cf::manual_clock> c{io, cf::cache_options{.max_entries = 8}};
  // At capacity, every store frees a node and makes one.
  for (std::uint64_t i = 0; i < 100; ++i) {
    bool done = false;
    c.async_set("k" + std::to_string(i), wide_value(i), [&](std::exception_ptr e) { done = !e; });
    run_until(io, [&] { return done; });
  }
  EXPECT_EQ(c.size(), 8u);
  for (std::uint64_t i = 92; i < 100; ++i) {
    auto v = c.peek("k" + std::to_string(i));
    ASSERT_TRUE(v) << i;
    EXPECT_EQ(v->words[0], i);
  }
  EXPECT_EQ(wide_value::misaligned, 0);
}

TEST_F(Cache, WeigherCapsTotalWeightAndRefusesOversizedValues) {
  cf::cache<std::string, cf::manual_clock> c{
      io, cf::cache_options{.max_entries = cf::unlimited, .max_weight = 10, .on_event = log.sink()},
      [](std::string_view, const std::string& v) { return v.size(); }};
  bool done = false;
  c.async_set("a", std::string(4, 'a'), [&](std::exception_ptr) { done = true; });
  run_until(io, [&] { return done; });
  done = false;
  c.async_set("b", std::string(4, 'b'), [&](std::exception_ptr) { done = true; });
  run_until(io, [&] { return done; });
  EXPECT_EQ(c.stats().weight, 8u);
  done = false;
  c.async_set("c", std::string(4, 'c'), [&](std::exception_ptr) { done = true; });
  run_until(io, [&] { return done; });
  auto s = c.stats();
  EXPECT_LE(s.weight, 10u);
  EXPECT_EQ(s.size, 2u);
  EXPECT_EQ(s.evictions_capacity, 1u);

  // A value heavier than the cap is returned to the caller but not stored.
  outcome<std::string> big;
  c.async_get("big", []() -> asio::awaitable<std::string> { co_return std::string(11, 'x'); }, big.handler());
  drain(io);
  EXPECT_EQ(big.value, std::string(11, 'x'));
  EXPECT_EQ(c.peek("big"), std::nullopt);
  EXPECT_EQ(c.stats().evictions_oversized, 1u);
  EXPECT_EQ(c.stats().evictions, 2u);
  EXPECT_EQ(log.causes.back(), cf::eviction_cause::oversized);
}

TEST_F(Cache, EraseDuringALoadDeliversTheValueButDoesNotStoreIt) {
  mcache c{io};
  gate g{io.get_executor()};
  outcome<> a;
  c.async_get("k", g.fn(), a.handler());
  run_until(io, [&] { return g.calls() == 1; });
  bool erased = true;
  c.async_erase("k", [&](std::exception_ptr, bool e) { erased = e; });
  g.resolve(9);
  drain(io);
  EXPECT_FALSE(erased);  // nothing was stored yet
  EXPECT_EQ(a.value, 9);
  EXPECT_EQ(c.peek("k"), std::nullopt);  // the stale value did not land
  gate g2{io.get_executor()};
  outcome<> next;
  c.async_get("k", g2.fn(), next.handler());
  run_until(io, [&] { return g2.calls() == 1; });  // the next get loads again
  g2.resolve(10);
  drain(io);
  EXPECT_EQ(next.value, 10);
  EXPECT_EQ(c.peek("k"), 10);
}

TEST_F(Cache, ClearOrSetDuringALoadWinsOverTheLoad) {
  mcache c{io};
  gate g1{io.get_executor()}, g2{io.get_executor()};
  outcome<> a, b;
  c.async_get("x", g1.fn(), a.handler());
  c.async_get("y", g2.fn(), b.handler());
  run_until(io, [&] { return g1.calls() == 1 && g2.calls() == 1; });
  bool cleared = false;
  c.async_clear([&](std::exception_ptr) { cleared = true; });
  run_until(io, [&] { return cleared; });
  set(c, "y", 100);
  g1.resolve(1);
  g2.resolve(2);
  drain(io);
  EXPECT_EQ(a.value, 1);
  EXPECT_EQ(b.value, 2);
  EXPECT_EQ(c.peek("x"), std::nullopt);
  EXPECT_EQ(c.peek("y"), 100);  // the explicit set is newer than the load
}

TEST_F(Cache, ErrorsAreNotCachedByDefault) {
  mcache c{io, cf::cache_options{.on_event = log.sink()}};
  int calls = 0;
  auto fail = [&]() -> asio::awaitable<int> {
    ++calls;
    throw cftest::test_error("db down");
    co_return 0;
  };
  outcome<> a, b;
  c.async_get("k", fail, a.handler());
  drain(io);
  c.async_get("k", fail, b.handler());
  drain(io);
  EXPECT_EQ(calls, 2);
  EXPECT_THROW(std::rethrow_exception(b.error), cftest::test_error);
  EXPECT_EQ(c.stats().load_failures, 2u);
  EXPECT_EQ(log.count(CK::load_failed), 2u);
}

TEST_F(Cache, NegativeCachingServesTheFailureForItsTtl) {
  mcache c{io, cf::cache_options{.negative_ttl = 1s}};
  int calls = 0;
  auto fail = [&]() -> asio::awaitable<int> {
    ++calls;
    throw cftest::test_error("not found");
    co_return 0;
  };
  outcome<> a, b, later;
  c.async_get("k", fail, a.handler());
  drain(io);
  c.async_get("k", fail, b.handler());
  drain(io);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(a.error, b.error);  // the same exception object
  EXPECT_EQ(c.peek("k"), std::nullopt);
  auto s = c.stats();
  EXPECT_EQ(s.hits, 1u);    // the second get, served the cached failure
  EXPECT_EQ(s.misses, 2u);  // the first get, and the peek that found no value
  cf::manual_clock::advance(1s);
  c.async_get("k", fail, later.handler());
  drain(io);
  EXPECT_EQ(calls, 2);
}

TEST_F(Cache, WarmupLoadsConcurrentlyReportsFailuresAndKeepsPresentKeys) {
  mcache c{io};
  set(c, "present", 1);
  std::optional<cf::warmup_result> r;
  int loads = 0;
  c.async_warmup(
      {{"a", [&]() -> asio::awaitable<int> { ++loads; co_return 10; }},
       {"b", []() -> asio::awaitable<int> { throw cftest::test_error("b failed"); co_return 0; }},
       {"present", [&]() -> asio::awaitable<int> { ++loads; co_return 99; }},
       {"", [&]() -> asio::awaitable<int> { co_return 0; }},
       {"c", [&]() -> asio::awaitable<int> { ++loads; co_return 30; }}},
      [&](std::exception_ptr, cf::warmup_result res) { r = std::move(res); });
  EXPECT_FALSE(r);
  drain(io);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->loaded, 2u);
  EXPECT_EQ(r->skipped, 1u);
  ASSERT_EQ(r->failed.size(), 2u);
  EXPECT_EQ(loads, 2);
  EXPECT_EQ(c.peek("present"), 1);  // not overwritten
  EXPECT_EQ(c.peek("a"), 10);
  EXPECT_EQ(c.peek("c"), 30);
  EXPECT_EQ(c.peek("b"), std::nullopt);
}

TEST_F(Cache, CoGetHitCompletesWithoutSuspendingWhileAsyncGetPosts) {
  mcache c{io};
  set(c, "k", 7);
  bool posted_ran_fast = true, posted_ran_token = false;
  int fast = 0, token = 0;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        bool flag = false;
        asio::post(io, [&] { flag = true; });
        fast = co_await c.co_get("k", []() -> asio::awaitable<int> { co_return 0; });
        posted_ran_fast = flag;
        bool flag2 = false;
        asio::post(io, [&] { flag2 = true; });
        token = co_await c.async_get("k", []() -> asio::awaitable<int> { co_return 0; }, asio::use_awaitable);
        posted_ran_token = flag2;
      },
      asio::detached);
  drain(io);
  EXPECT_EQ(fast, 7);
  EXPECT_EQ(token, 7);
  EXPECT_FALSE(posted_ran_fast);  // the fast path did not suspend
  EXPECT_TRUE(posted_ran_token);  // the token form resumed through a post
}

TEST_F(Cache, CoGetMissLoadsAndStores) {
  mcache c{io};
  int got = 0;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { got = co_await c.co_get("k", []() -> asio::awaitable<int> { co_return 3; }); },
      asio::detached);
  drain(io);
  EXPECT_EQ(got, 3);
  EXPECT_EQ(c.peek("k"), 3);
}

TEST_F(Cache, BadInputGetsClearErrors) {
  mcache c{io, cf::cache_options{.max_key_length = 4}};
  outcome<> empty, longkey;
  std::exception_ptr set_error, ttl_error;
  c.async_get("", []() -> asio::awaitable<int> { co_return 0; }, empty.handler());
  c.async_get("12345", []() -> asio::awaitable<int> { co_return 0; }, longkey.handler());
  c.async_set("", 1, [&](std::exception_ptr e) { set_error = e; });
  c.async_set("k", 1, 0s, [&](std::exception_ptr e) { ttl_error = e; });
  drain(io);
  EXPECT_EQ(empty.code(), cf::error::invalid_key);
  EXPECT_EQ(longkey.code(), cf::error::invalid_key);
  outcome<> o;
  o.error = set_error;
  EXPECT_EQ(o.code(), cf::error::invalid_key);
  o.error = ttl_error;
  EXPECT_EQ(o.code(), cf::error::invalid_timeout);
  EXPECT_THROW((mcache{io, cf::cache_options{.default_ttl = 0s}}), boost::system::system_error);
  EXPECT_THROW((mcache{io, cf::cache_options{.negative_ttl = -1s}}), boost::system::system_error);
  EXPECT_THROW((mcache{io, cf::cache_options{.shards = 0}}), boost::system::system_error);
}

// The caps bound the whole cache, however many shards share them.
TEST_F(Cache, ShardsSplitTheCapsWithoutExceedingThem) {
  struct limits {
    std::size_t max_entries, max_weight, shards;
  };
  for (const limits l : {limits{3, cf::unlimited, 4}, limits{1, cf::unlimited, 64}, limits{10, cf::unlimited, 4},
                         limits{100, cf::unlimited, 16}, limits{cf::unlimited, 10, 8}, limits{50, 7, 4}}) {
    SCOPED_TRACE(std::to_string(l.max_entries) + " entries, weight " + std::to_string(l.max_weight) + ", " +
                 std::to_string(l.shards) + " shards");
    mcache c{io, cf::cache_options{.max_entries = l.max_entries, .max_weight = l.max_weight, .shards = l.shards}};
    const std::size_t cap = std::min(l.max_entries, l.max_weight);
    for (int i = 0; i < 400; ++i) {
      set(c, "key:" + std::to_string(i), i);
      ASSERT_LE(c.size(), cap);
    }
    // Each shard holds its share: a full cache holds the whole cap.
    EXPECT_EQ(c.size(), cap);
  }
}

TEST_F(Cache, LastCallerCancellingCancelsTheLoadAndStoresNothing) {
  mcache c{io};
  gate g{io.get_executor()};
  asio::cancellation_signal s1, s2;
  outcome<> a, b;
  c.async_get("k", g.fn(), asio::bind_cancellation_slot(s1.slot(), a.handler()));
  c.async_get("k", g.fn(), asio::bind_cancellation_slot(s2.slot(), b.handler()));
  run_until(io, [&] { return g.calls() == 1; });
  s1.emit(asio::cancellation_type::terminal);
  run_until(io, [&] { return a.done; });
  EXPECT_EQ(a.code(), asio::error::operation_aborted);
  EXPECT_FALSE(b.done);
  s2.emit(asio::cancellation_type::terminal);
  run_until(io, [&] { return b.done && g.cancelled() == 1; });
  drain(io);
  EXPECT_EQ(c.peek("k"), std::nullopt);
  EXPECT_EQ(c.stats().load_failures, 0u);  // a cancelled load is not a failure
}

TEST_F(Cache, PerCallTimeoutAndTtl) {
  mcache c{io};
  gate g{io.get_executor()};
  outcome<> impatient, patient;
  c.async_get("k", cf::get_options{.timeout = 50ms}, g.fn(), impatient.handler());
  c.async_get("k", cf::get_options{.ttl = 5s}, g.fn(), patient.handler());
  run_until(io, [&] { return g.calls() == 1; });
  cf::manual_clock::advance(50ms);
  run_until(io, [&] { return impatient.done; });
  EXPECT_EQ(impatient.code(), cf::error::timed_out);
  g.resolve(4);
  drain(io);
  EXPECT_EQ(patient.value, 4);
  // The first caller's options started the load: its TTL (the default) applies.
  EXPECT_EQ(c.peek("k"), 4);
}

TEST_F(Cache, DestroyingTheCacheCancelsLoadsInFlight) {
  gate g{io.get_executor()};
  outcome<> o;
  {
    mcache c{io};
    c.async_get("k", g.fn(), o.handler());
    run_until(io, [&] { return g.calls() == 1; });
  }
  drain(io);
  EXPECT_EQ(o.code(), cf::error::cancelled);
}

TEST_F(Cache, PrometheusExposition) {
  mcache c{io};
  set(c, "k", 1);
  (void)c.peek("k");
  (void)c.peek("nope");
  const std::string text = cf::to_prometheus(c.stats(), "app_cache", "cache=\"users\"");
  EXPECT_NE(text.find("# TYPE app_cache_hits_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("app_cache_hits_total{cache=\"users\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("app_cache_misses_total{cache=\"users\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("app_cache_entries{cache=\"users\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("# HELP app_cache_hit_ratio"), std::string::npos);
}

TEST(CacheThreads, TwoThreadsReadWriteAndLoadConcurrently) {
  // The cache's context runs on its own thread; two caller threads each run
  // their own single-threaded context and bind their handlers to it.
  asio::io_context cio;
  cf::cache<int> c{cio, cf::cache_options{.max_entries = 64, .default_ttl = 50ms, .shards = 4}};
  auto guard = asio::make_work_guard(cio);
  std::thread cache_thread([&] { cio.run(); });
  std::atomic<int> wrong{0};
  constexpr int per_thread = 3000;
  // The callers' contexts outlive the cache's thread, which posts into them.
  asio::io_context ios[2] = {asio::io_context(1), asio::io_context(1)};
  auto worker = [&](int seed) {
    asio::io_context& io = ios[seed - 1];
    int done = 0;
    std::mt19937 rng(seed);
    auto mine = [&](auto f) { return asio::bind_executor(io, std::move(f)); };
    for (int i = 0; i < per_thread; ++i) {
      int k = static_cast<int>(rng() % 100);
      std::string key = "k" + std::to_string(k);
      switch (rng() % 4) {
        case 0:
          c.async_set(key, k, mine([&](std::exception_ptr) { ++done; }));
          break;
        case 1:
          c.async_erase(key, mine([&](std::exception_ptr, bool) { ++done; }));
          break;
        case 2:
          if (auto v = c.peek(key); v && *v != k) ++wrong;
          ++done;
          break;
        default:
          c.async_get(key, [k]() -> asio::awaitable<int> { co_return k; }, mine([&, k](std::exception_ptr e, int v) {
                        if (e || v != k) ++wrong;
                        ++done;
                      }));
      }
      if (i % 64 == 0) io.poll();
    }
    while (done < per_thread) {
      io.restart();
      io.run_for(1ms);
    }
    return done;
  };
  int a = 0, b = 0;
  std::thread other([&] { b = worker(2); });
  a = worker(1);
  other.join();
  guard.reset();
  cache_thread.join();
  EXPECT_EQ(a, per_thread);
  EXPECT_EQ(b, per_thread);
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_LE(c.stats().size, 64u);
}

}  // namespace

// --- invalidation against loads that exist but have not run yet --------------

TEST_F(Cache, ASetIssuedBeforeAStartedLoadRunsWinsOverTheLoad) {
  mcache c{io};
  outcome<> a;
  int runs = 0;
  c.async_get("k", [&]() -> asio::awaitable<int> { ++runs; co_return 1; }, a.handler());
  // The load exists (its first step is posted) but has not run.
  bool set_done = false;
  c.async_set("k", 2, [&](std::exception_ptr e) { set_done = !e; });
  drain(io);
  EXPECT_TRUE(set_done);
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(a.value, 1);         // its caller gets what it loaded
  EXPECT_EQ(c.peek("k"), 2);     // but the newer set stays
}

TEST_F(Cache, AnEraseOrClearIssuedBeforeAStartedLoadRunsKeepsItsValueOut) {
  for (bool clear : {false, true}) {
    mcache c{io};
    outcome<> a;
    c.async_get("k", []() -> asio::awaitable<int> { co_return 1; }, a.handler());
    if (clear)
      c.async_clear([](std::exception_ptr) {});
    else
      c.async_erase("k", [](std::exception_ptr, bool) {});
    drain(io);
    EXPECT_EQ(a.value, 1) << clear;
    EXPECT_EQ(c.peek("k"), std::nullopt) << clear;
    EXPECT_EQ(c.size(), 0u) << clear;
  }
}

TEST_F(Cache, ACallerAfterAnEraseOrClearStartsAFreshLoad) {
  for (bool clear : {false, true}) {
    mcache c{io, cf::cache_options{.on_event = log.sink()}};
    gate before{io.get_executor()}, after{io.get_executor()};
    outcome<> a, b;
    c.async_get("k", before.fn(), a.handler());
    run_until(io, [&] { return before.calls() == 1; });
    bool done = false;
    if (clear)
      c.async_clear([&](std::exception_ptr) { done = true; });
    else
      c.async_erase("k", [&](std::exception_ptr, bool) { done = true; });
    run_until(io, [&] { return done; });
    c.async_get("k", after.fn(), b.handler());  // must not join the pre-erase load
    run_until(io, [&] { return after.calls() == 1; });
    before.resolve(1);
    after.resolve(2);
    drain(io);
    EXPECT_EQ(a.value, 1) << clear;  // the old load's own caller keeps its value
    EXPECT_EQ(b.value, 2) << clear;
    EXPECT_EQ(c.peek("k"), 2) << clear;
    EXPECT_EQ(c.stats().coalesced, 0u) << clear;
  }
}

TEST_F(Cache, ACallerAfterASetThatMemoryCouldNotHoldStartsAFreshLoad) {
  // The set's value is too heavy to keep: a later caller misses, and must not
  // join the load that the set superseded.
  mcache c{io, cf::cache_options{.max_weight = 10}, [](std::string_view, const int& v) -> std::size_t { return v; }};
  gate before{io.get_executor()}, after{io.get_executor()};
  outcome<> a, b;
  c.async_get("k", before.fn(), a.handler());
  run_until(io, [&] { return before.calls() == 1; });
  set(c, "k", 50);
  c.async_get("k", after.fn(), b.handler());
  run_until(io, [&] { return after.calls() == 1; });
  before.resolve(1);
  after.resolve(7);
  drain(io);
  EXPECT_EQ(a.value, 1);
  EXPECT_EQ(b.value, 7);
  EXPECT_EQ(c.peek("k"), 7);
}

TEST_F(Cache, CoGetCountsOneMissPerMissingCaller) {
  mcache c{io, cf::cache_options{.on_event = log.sink()}};
  std::optional<int> got;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { got = co_await c.co_get("k", []() -> asio::awaitable<int> { co_return 3; }); },
      asio::detached);
  drain(io);
  EXPECT_EQ(got, 3);
  const auto s = c.stats();
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 0u);
  EXPECT_EQ(log.count(CK::miss), 1u);
}

TEST_F(Cache, ALoaderFailingWithOperationAbortedOnItsOwnIsALoadFailure) {
  // What an Asio client reports when its socket is closed under it: the load
  // was not cancelled, so it is a failure like any other, and negatively cached.
  mcache c{io, cf::cache_options{.negative_ttl = std::chrono::seconds(5), .on_event = log.sink()}};
  int runs = 0;
  auto loader = [&]() -> asio::awaitable<int> {
    ++runs;
    throw boost::system::system_error(asio::error::operation_aborted);
    co_return 0;
  };
  outcome<> a, b;
  c.async_get("k", loader, a.handler());
  drain(io);
  EXPECT_EQ(a.code(), asio::error::operation_aborted);
  EXPECT_EQ(c.stats().load_failures, 1u);
  EXPECT_EQ(log.count(CK::load_failed), 1u);
  c.async_get("k", loader, b.handler());
  drain(io);
  EXPECT_EQ(b.code(), asio::error::operation_aborted);
  EXPECT_EQ(runs, 1);  // served from the negative entry
}

TEST_F(Cache, ErasingAnExpiredEntryReportsNothingErasedAndCountsAnExpiration) {
  mcache c{io, cf::cache_options{.on_event = log.sink()}};
  set(c, "k", 1, std::chrono::seconds(1));
  cf::manual_clock::advance(std::chrono::seconds(2));
  std::optional<bool> erased;
  c.async_erase("k", [&](std::exception_ptr, bool e) { erased = e; });
  drain(io);
  EXPECT_EQ(erased, false);
  EXPECT_EQ(c.stats().expirations, 1u);
  EXPECT_EQ(log.count(CK::expiration), 1u);
}

TEST_F(Cache, AThrowingWeigherFailsTheSetOrTheLoadAndLeavesTheCacheUsable) {
  mcache c{io, cf::cache_options{.max_weight = 100}, [](std::string_view, const int& v) -> std::size_t {
             if (v < 0) throw cftest::test_error("cannot weigh");
             return 1;
           }};
  std::exception_ptr set_error;
  bool set_done = false;
  c.async_set("k", -1, [&](std::exception_ptr e) {
    set_done = true;
    set_error = e;
  });
  EXPECT_FALSE(set_done);  // completed through a post, not inside the call
  drain(io);
  ASSERT_TRUE(set_done);
  EXPECT_THROW(std::rethrow_exception(set_error), cftest::test_error);
  EXPECT_EQ(c.peek("k"), std::nullopt);

  outcome<> a;
  c.async_get("k", []() -> asio::awaitable<int> { co_return -2; }, a.handler());
  drain(io);
  ASSERT_TRUE(a.done);
  EXPECT_THROW(std::rethrow_exception(a.error), cftest::test_error);
  outcome<> b;
  c.async_get("k", []() -> asio::awaitable<int> { co_return 5; }, b.handler());
  drain(io);
  EXPECT_EQ(b.value, 5);
  EXPECT_EQ(c.peek("k"), 5);
}

namespace {
// A value whose copy throws on demand.
struct fragile {
  static inline bool throw_on_copy = false;
  int v = 0;
  fragile() = default;
  explicit fragile(int x) : v(x) {}
  fragile(const fragile& o) : v(o.v) {
    if (throw_on_copy) throw cftest::test_error("copy failed");
  }
  fragile(fragile&&) noexcept = default;
  fragile& operator=(const fragile&) = default;
  fragile& operator=(fragile&&) noexcept = default;
};
}  // namespace

TEST_F(Cache, AValueWhoseCopyThrowsIsNotStoredAndLeaksNothing) {
  cf::cache<fragile, cf::manual_clock> c{io};
  c.async_set("k", fragile(1), [](std::exception_ptr) {});
  drain(io);
  fragile::throw_on_copy = true;
  std::exception_ptr e;
  bool done = false;
  c.async_set("k", fragile(2), [&](std::exception_ptr x) {
    e = x;
    done = true;
  });
  c.async_set("n", fragile(3), [](std::exception_ptr) {});
  fragile::throw_on_copy = false;
  drain(io);
  ASSERT_TRUE(done);
  EXPECT_THROW(std::rethrow_exception(e), cftest::test_error);
  ASSERT_TRUE(c.peek("k"));
  EXPECT_EQ(c.peek("k")->v, 1);  // the old value is intact
  EXPECT_EQ(c.peek("n"), std::nullopt);
  EXPECT_EQ(c.size(), 1u);
}

TEST_F(Cache, WarmupCountsDuplicatesOnceAndValuesNotStoredApart) {
  mcache c{io, cf::cache_options{.max_weight = 10}, [](std::string_view, const int& v) -> std::size_t { return v; }};
  int loads = 0;
  std::optional<cf::warmup_result> r;
  c.async_warmup({{"a", [&]() -> asio::awaitable<int> { ++loads; co_return 1; }},
                  {"a", [&]() -> asio::awaitable<int> { ++loads; co_return 2; }},
                  {"heavy", [&]() -> asio::awaitable<int> { ++loads; co_return 50; }}},
                 [&](std::exception_ptr, cf::warmup_result res) { r = std::move(res); });
  drain(io);
  ASSERT_TRUE(r);
  EXPECT_EQ(loads, 2);
  EXPECT_EQ(r->loaded, 1u);
  EXPECT_EQ(r->not_stored, 1u);
  EXPECT_EQ(c.peek("a"), 1);
}

TEST_F(Cache, WarmupHoldsWorkOnTheHandlersExecutorUntilItRuns) {
  mcache c{io};
  asio::io_context other;
  std::optional<cf::warmup_result> r;
  c.async_warmup({{"a", []() -> asio::awaitable<int> { co_return 1; }}},
                 asio::bind_executor(other, [&](std::exception_ptr, cf::warmup_result res) { r = std::move(res); }));
  // The handler's context has nothing to run yet, but must not consider itself out of work.
  EXPECT_EQ(other.poll(), 0u);
  EXPECT_FALSE(other.stopped());
  drain(io);
  other.run();  // returns once the handler ran
  ASSERT_TRUE(r);
  EXPECT_EQ(r->loaded, 1u);
}

TEST_F(Cache, S3FifoStaysScanResistantWhenAWeightCapIsSetButNotReached) {
  auto survivors = [&](std::size_t max_weight) {
    mcache c{io, cf::cache_options{.max_entries = 100, .max_weight = max_weight}};
    for (int round = 0; round < 3; ++round)
      for (int i = 0; i < 50; ++i)
        if (!c.peek("hot" + std::to_string(i))) set(c, "hot" + std::to_string(i), i);
    for (int i = 0; i < 1000; ++i) set(c, "scan" + std::to_string(i), i);
    int alive = 0;
    for (int i = 0; i < 50; ++i) alive += c.peek("hot" + std::to_string(i)).has_value();
    return alive;
  };
  EXPECT_EQ(survivors(cf::unlimited), 50);
  EXPECT_EQ(survivors(1'000'000), 50);
}

TEST_F(Cache, AMoveOnlyLoaderIsAccepted) {
  mcache c{io};
  auto owned = std::make_unique<int>(12);
  outcome<> o;
  c.async_get("k", [p = std::move(owned)]() -> asio::awaitable<int> { co_return *p; }, o.handler());
  drain(io);
  EXPECT_EQ(o.value, 12);
}

TEST_F(Cache, AStatefulLoadersCapturesStayValidAcrossItsSuspensions) {
  // The coroutine refers to the lambda's captures after it has suspended:
  // the loader object must outlive the coroutine (ASan reports otherwise).
  mcache c{io, cf::cache_options{.on_event = log.sink()}};
  const std::string long_key(64, 'k');
  outcome<> a, b;
  auto loader = [name = std::string(100, 'x'), parts = std::vector<int>{1, 2, 3}]() -> asio::awaitable<int> {
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    co_return static_cast<int>(name.size()) + parts[0] + parts[1] + parts[2];
  };
  c.async_get(long_key, loader, a.handler());
  c.async_get(long_key, loader, b.handler());
  drain(io);
  EXPECT_FALSE(a.error);
  EXPECT_EQ(a.value, 106);
  EXPECT_EQ(b.value, 106);
  EXPECT_EQ(c.peek(long_key), 106);
  EXPECT_EQ(c.stats().loads, 1u);
  EXPECT_EQ(c.stats().coalesced, 1u);
  // One load: started, then resolved, for the key as given.
  std::vector<std::pair<CK, std::string>> loads;
  for (auto& e : log.events)
    if (e.first == CK::load_started || e.first == CK::load_resolved) loads.push_back(e);
  ASSERT_EQ(loads.size(), 2u);
  EXPECT_EQ(loads[0], std::make_pair(CK::load_started, long_key));
  EXPECT_EQ(loads[1], std::make_pair(CK::load_resolved, long_key));
}

TEST_F(Cache, ALoaderThatIsAnAsynchronousOperationIsAccepted) {
  // A loader taking a completion token: its value is stored; its error code
  // reaches every caller as a system_error and counts as a load failure.
  mcache c{io, cf::cache_options{.on_event = log.sink()}};
  auto op = [this](boost::system::error_code ec, int v) {
    return [this, ec, v](auto&& token) {
      return asio::async_initiate<decltype(token), void(boost::system::error_code, int)>(
          [this, ec, v](auto handler) {
            asio::post(io, [h = std::move(handler), ec, v]() mutable { std::move(h)(ec, v); });
          },
          token);
    };
  };
  outcome<> a, b, f1, f2;
  c.async_get("good", op({}, 41), a.handler());
  c.async_get("good", op({}, 99), b.handler());  // joins the first load
  drain(io);
  EXPECT_FALSE(a.error);
  EXPECT_EQ(a.value, 41);
  EXPECT_EQ(b.value, 41);
  EXPECT_EQ(c.peek("good"), 41);
  c.async_get("bad", op(asio::error::connection_reset, 0), f1.handler());
  c.async_get("bad", op({}, 1), f2.handler());
  drain(io);
  EXPECT_EQ(f1.code(), asio::error::connection_reset);
  EXPECT_EQ(f2.code(), asio::error::connection_reset);
  EXPECT_FALSE(c.peek("bad"));
  const auto s = c.stats();
  EXPECT_EQ(s.loads, 1u);
  EXPECT_EQ(s.load_failures, 1u);
  EXPECT_EQ(log.count(CK::load_started), 2u);
  EXPECT_EQ(log.count(CK::load_resolved), 1u);
  EXPECT_EQ(log.count(CK::load_failed), 1u);
}

TEST_F(Cache, AStoreRefusedByAThrowingWeigherReleasesTheLoadsToken) {
  cf::detail::cache_events events{{}};
  cf::detail::memory_tier<int, cf::manual_clock> memory{
      cf::eviction_policy::s3fifo, 1, 100, 100,
      [](std::string_view, const int& v) -> std::size_t {
        if (v < 0) throw cftest::test_error("cannot weigh");
        return 1;
      },
      events};
  const std::uint64_t token = memory.begin_load("k");
  EXPECT_THROW(memory.store("k", std::make_unique<int>(-1).get(), nullptr, std::chrono::seconds(1), token, nullptr,
                            nullptr),
               cftest::test_error);
  // Released: the same token no longer entitles anyone to store.
  int v = 1;
  EXPECT_FALSE(memory.store("k", &v, nullptr, std::chrono::seconds(1), token, nullptr, nullptr));
  std::optional<int> found;
  memory.lookup(found, "k", 0, nullptr);
  EXPECT_EQ(found, std::nullopt);
}

// Load registrations are filed by the key's hash alone: two keys of one
// hash can only void each other's registration (the later replaces the
// earlier, whose load then stores nothing; an invalidation of either voids
// both); neither is ever let in over an invalidation.
TEST_F(Cache, LoadsOfKeysOfOneHashFailSafe) {
  using shard_t = cf::detail::l1_shard<int>;
  shard_t shard;
  shard.configure(cf::eviction_policy::s3fifo, 100, 100);
  const std::string a = "alpha", b = "beta";
  const cf::detail::hashed_key ka(a, 7), kb(b, 7);

  // b's registration replaces a's: a's load may no longer store; b's may.
  shard.begin_load(ka, 1);
  shard.begin_load(kb, 2);
  EXPECT_FALSE(shard.end_load(ka, 1));
  EXPECT_TRUE(shard.end_load(kb, 2));
  // An invalidation of a voids b's load too.
  shard.begin_load(kb, 3);
  shard.invalidate_load(ka);
  EXPECT_FALSE(shard.end_load(kb, 3));
  // A key of another hash is not disturbed by either.
  const cf::detail::hashed_key kc("gamma", 8);
  shard.begin_load(kc, 4);
  shard.begin_load(ka, 5);
  shard.invalidate_load(kb);
  EXPECT_TRUE(shard.end_load(kc, 4));
  EXPECT_FALSE(shard.end_load(ka, 5));
}
