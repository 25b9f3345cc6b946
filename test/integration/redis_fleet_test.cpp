// Several cache instances sharing one real redis-server: a write through one
// drops the key from the others' memory (client-side caching with tracking,
// or a PUBLISH channel), a lost invalidation or data connection empties memory
// and the link comes back, and leases give a cold key one load for the fleet.
#include "redis_fixture.hpp"

#include <cacheflight/cacheflight.hpp>
#include <cacheflight/redis/tier.hpp>

#include <atomic>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace cftest;
using scache = cf::cache<std::string>;

class RedisFleet : public redis_fixture {
 protected:
  void SetUp() override {
    redis_fixture::SetUp();
    prefix = "cffleet:" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + ":" +
             std::to_string(std::random_device{}()) + ":";
    raw = std::make_shared<redis::client>(io.get_executor(), client_options());
    ASSERT_TRUE(run_until([&] { return raw->is_connected(); }));
  }

  // An instance: its own client, tier and cache, as another process has.
  struct instance {
    std::shared_ptr<redis::tier> tier;
    std::unique_ptr<scache> cache;
  };

  instance make(redis::tier_options o, std::chrono::nanoseconds ttl = std::chrono::seconds(60)) {
    o.prefix = prefix;
    instance i;
    i.tier = std::make_shared<redis::tier>(io.get_executor(), client_options(), std::move(o));
    i.cache = std::make_unique<scache>(io, cf::cache_options{.max_entries = 1000, .default_ttl = ttl, .tiers = {i.tier}});
    EXPECT_TRUE(run_until([&] { return i.tier->get_client().is_connected(); }));
    return i;
  }

  bool linked(const instance& i) {
    return run_until([&] { return i.tier->linked(); });
  }

  // Two instances with client tracking, their invalidations flowing.
  std::pair<instance, instance> tracking_pair() {
    auto a = make({.invalidation = redis::invalidation_mode::tracking});
    auto b = make({.invalidation = redis::invalidation_mode::tracking});
    EXPECT_TRUE(linked(a));
    EXPECT_TRUE(linked(b));
    return {std::move(a), std::move(b)};
  }

  // b holds `key`; a set of it through a makes b drop it.
  void expect_propagation(instance& a, instance& b, const std::string& key) {
    std::atomic<int> calls{0};
    get_now(b, key, "v", calls);
    ASSERT_TRUE(b.cache->peek(key));
    set_now(a, key, "w");
    ASSERT_TRUE(run_until([&] { return !b.cache->peek(key); }, 2s)) << "the set did not reach the other instance";
  }

  // async_get with a loader returning `v` (counted in `calls`) after `delay`.
  void get(instance& i, const std::string& key, std::string v, std::atomic<int>& calls,
           std::optional<std::string>& out, std::chrono::milliseconds delay = 0ms) {
    i.cache->async_get(
        key,
        [v, &calls, delay]() -> asio::awaitable<std::string> {
          ++calls;
          if (delay > 0ms) {
            asio::steady_timer t(co_await asio::this_coro::executor, delay);
            co_await t.async_wait(asio::use_awaitable);
          }
          co_return v;
        },
        [&out](std::exception_ptr e, std::string s) {
          if (!e) out = std::move(s);
        });
  }

  std::string get_now(instance& i, const std::string& key, std::string v, std::atomic<int>& calls) {
    std::optional<std::string> out;
    get(i, key, std::move(v), calls, out);
    EXPECT_TRUE(run_until([&] { return out.has_value(); }));
    return out.value_or("<none>");
  }

  void set_now(instance& i, const std::string& key, std::string v) {
    bool done = false;
    i.cache->async_set(key, std::move(v), [&](std::exception_ptr e) {
      EXPECT_FALSE(e);
      done = true;
    });
    ASSERT_TRUE(run_until([&] { return done; }));
  }

  // The id of every client connection whose CLIENT LIST line has `flag` in its flags.
  std::vector<std::string> clients_with_flag(char flag) {
    auto [ec, r] = exec(*raw, {"CLIENT", "LIST"});
    std::vector<std::string> ids;
    std::string line;
    std::istringstream in(r.str);
    while (std::getline(in, line)) {
      const auto id_at = line.find("id=");
      const auto flags_at = line.find(" flags=");
      if (id_at == std::string::npos || flags_at == std::string::npos) continue;
      const std::string flags = line.substr(flags_at + 7, line.find(' ', flags_at + 7) - flags_at - 7);
      if (flags.find(flag) != std::string::npos) ids.push_back(line.substr(id_at + 3, line.find(' ', id_at) - id_at - 3));
    }
    return ids;
  }

  std::string prefix;
  std::shared_ptr<redis::client> raw;
};

TEST_F(RedisFleet, TrackingDropsAKeySetElsewhereFromMemoryAndNotTheWritersOwn) {
  auto [a, b] = tracking_pair();
  std::atomic<int> calls{0};
  EXPECT_EQ(get_now(a, "user:1", "ada", calls), "ada");
  // a's fill is reported to b too: b reads once that report is behind it, or
  // the report would void b's read in flight (nothing stored, nothing counted).
  ASSERT_TRUE(run_until([&] { return a.tier->health().writes == 1 && b.tier->health().invalidations == 1; }, 2s));
  EXPECT_EQ(b.cache->stats().invalidations_received, 0u);  // b held nothing then
  EXPECT_EQ(get_now(b, "user:1", "never", calls), "ada");  // from Redis
  EXPECT_EQ(calls, 1);
  ASSERT_EQ(b.cache->peek("user:1"), std::optional<std::string>("ada"));

  set_now(a, "user:1", "grace");
  ASSERT_TRUE(run_until([&] { return !b.cache->peek("user:1"); }, 2s)) << "b still holds the old value";
  EXPECT_EQ(get_now(b, "user:1", "never", calls), "grace");
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(b.cache->stats().invalidations_received, 1u);
  // The writer keeps its own value: its write is not reported back to it (NOLOOP).
  io.restart();
  io.run_for(100ms);
  EXPECT_EQ(a.cache->peek("user:1"), std::optional<std::string>("grace"));
  EXPECT_EQ(a.cache->stats().invalidations_received, 0u);
  EXPECT_GE(b.tier->health().invalidations, 2u);  // a's fill, then its set
}

TEST_F(RedisFleet, TrackingReportsAWriteByAnyoneToRedisAndAnErase) {
  auto b = make({.invalidation = redis::invalidation_mode::tracking});
  ASSERT_TRUE(linked(b));
  std::atomic<int> calls{0};
  EXPECT_EQ(get_now(b, "k", "one", calls), "one");
  // Another program writes the key straight to Redis.
  auto [ec, r] = exec(*raw, {"DEL", prefix + "k"});
  ASSERT_FALSE(ec);
  ASSERT_TRUE(run_until([&] { return !b.cache->peek("k"); }, 2s));
  EXPECT_EQ(get_now(b, "k", "two", calls), "two");
  EXPECT_EQ(calls, 2);

  // An erase through another instance.
  auto a = make({.invalidation = redis::invalidation_mode::tracking});
  ASSERT_TRUE(linked(a));
  bool erased = false;
  a.cache->async_erase("k", [&](std::exception_ptr, bool) { erased = true; });
  ASSERT_TRUE(run_until([&] { return erased; }));
  ASSERT_TRUE(run_until([&] { return !b.cache->peek("k"); }, 2s));
}

TEST_F(RedisFleet, PublishModeDropsKeysSetOrErasedByOtherInstancesOnly) {
  auto a = make({.invalidation = redis::invalidation_mode::publish});
  auto b = make({.invalidation = redis::invalidation_mode::publish});
  ASSERT_TRUE(linked(a));
  ASSERT_TRUE(linked(b));
  std::atomic<int> calls{0};
  EXPECT_EQ(get_now(a, "p", "v1", calls), "v1");
  // a's fill is announced too: b reads once that message is behind it, or the
  // message would void b's read in flight (nothing stored, nothing counted).
  ASSERT_TRUE(run_until([&] { return a.tier->health().writes == 1 && b.tier->health().invalidations == 1; }, 2s));
  EXPECT_EQ(b.cache->stats().invalidations_received, 0u);  // b held nothing then
  EXPECT_EQ(get_now(b, "p", "x", calls), "v1");
  ASSERT_TRUE(b.cache->peek("p"));
  set_now(a, "p", "v2");
  ASSERT_TRUE(run_until([&] { return !b.cache->peek("p"); }, 2s));
  EXPECT_EQ(get_now(b, "p", "x", calls), "v2");
  io.restart();
  io.run_for(100ms);
  EXPECT_EQ(a.cache->peek("p"), std::optional<std::string>("v2"));  // its own message is ignored

  bool erased = false;
  b.cache->async_erase("p", [&](std::exception_ptr, bool) { erased = true; });
  ASSERT_TRUE(run_until([&] { return erased; }));
  ASSERT_TRUE(run_until([&] { return !a.cache->peek("p"); }, 2s));
  EXPECT_EQ(a.cache->stats().invalidations_received, 1u);
  EXPECT_EQ(b.cache->stats().invalidations_received, 1u);
}

TEST_F(RedisFleet, KillingTheInvalidationConnectionFlushesMemoryAndTrackingComesBack) {
  auto [a, b] = tracking_pair();
  std::atomic<int> calls{0};
  get_now(b, "k1", "v", calls);
  get_now(b, "k2", "v", calls);
  ASSERT_EQ(b.cache->size(), 2u);
  const auto flushes = b.cache->stats().memory_flushes;

  auto [ec, r] = exec(*raw, {"CLIENT", "KILL", "TYPE", "pubsub"});
  ASSERT_FALSE(ec);
  ASSERT_EQ(r.type, redis::reply::kind::integer);
  ASSERT_GE(r.integer, 2);  // both instances' invalidation connections
  ASSERT_TRUE(run_until([&] { return b.cache->size() == 0; }, 2s)) << "memory not flushed";
  EXPECT_GT(b.cache->stats().memory_flushes, flushes);
  ASSERT_TRUE(run_until([&] { return a.tier->linked() && b.tier->linked(); }, 3s)) << "tracking not back";
  expect_propagation(a, b, "k1");  // to the new connection
}

TEST_F(RedisFleet, KillingTheDataConnectionFlushesMemoryAndReenablesTracking) {
  auto [a, b] = tracking_pair();
  std::atomic<int> calls{0};
  get_now(b, "k1", "v", calls);
  ASSERT_EQ(b.cache->size(), 1u);
  // The data connections are the ones with tracking on ('t').
  const auto tracked = clients_with_flag('t');
  ASSERT_EQ(tracked.size(), 2u);
  for (const auto& id : tracked) {
    auto [ec, r] = exec(*raw, {"CLIENT", "KILL", "ID", id});
    ASSERT_FALSE(ec);
  }
  ASSERT_TRUE(run_until([&] { return b.cache->size() == 0; }, 2s)) << "memory not flushed";
  ASSERT_TRUE(run_until([&] { return clients_with_flag('t').size() == 2 && a.tier->linked() && b.tier->linked(); }, 3s))
      << "tracking not re-enabled";
  expect_propagation(a, b, "k1");
}

TEST_F(RedisFleet, ATrackingTierDestroyedFreesItsClientForAnotherAtOnce) {
  const redis::tier_options o{.prefix = prefix, .invalidation = redis::invalidation_mode::tracking};
  auto cl = std::make_shared<redis::client>(io.get_executor(), client_options());
  ASSERT_TRUE(run_until([&] { return cl->is_connected(); }));
  auto first = std::make_shared<redis::tier>(cl, o);
  EXPECT_THROW(redis::tier(cl, o), boost::system::system_error);  // the client serves one tracking tier
  ASSERT_TRUE(run_until([&] { return first->linked(); }));
  first.reset();
  auto second = std::make_shared<redis::tier>(cl, o);  // the context has not run since
  ASSERT_TRUE(run_until([&] { return second->linked(); }));
  // The client's connection hooks are the second tier's: killed, its data
  // connection comes back with tracking on again.
  ASSERT_TRUE(run_until([&] { return clients_with_flag('t').size() == 1; }, 3s));
  for (const auto& id : clients_with_flag('t')) ASSERT_FALSE(exec(*raw, {"CLIENT", "KILL", "ID", id}).first);
  ASSERT_TRUE(run_until([&] { return clients_with_flag('t').size() == 1 && cl->is_connected() && second->linked(); }, 3s))
      << "tracking not re-enabled for the second tier";
}

TEST_F(RedisFleet, ARestartedServerIsRelinkedAndServed) {
  auto [a, b] = tracking_pair();
  std::atomic<int> calls{0};
  get_now(b, "k", "v", calls);
  server("restart");
  ASSERT_TRUE(run_until([&] { return b.cache->size() == 0; }, 5s));
  ASSERT_TRUE(run_until([&] { return a.tier->linked() && b.tier->linked(); }, 10s));
  EXPECT_EQ(get_now(b, "k", "v2", calls), "v2");
  expect_propagation(a, b, "k2");
  ASSERT_TRUE(run_until([&] { return raw->is_connected(); }));
}

TEST_F(RedisFleet, LeasesGiveAColdKeyOneLoadForAllInstances) {
  const redis::tier_options o{.invalidation = redis::invalidation_mode::tracking, .leases = true};
  std::vector<instance> fleet;
  for (int i = 0; i < 3; ++i) fleet.push_back(make(o));
  for (auto& i : fleet) ASSERT_TRUE(linked(i));
  std::atomic<int> calls{0};
  std::vector<std::optional<std::string>> out(30);
  for (int n = 0; n < 30; ++n) get(fleet[n % 3], "cold", "v" + std::to_string(n % 3), calls, out[n], 200ms);
  ASSERT_TRUE(run_until([&] {
    for (auto& o : out)
      if (!o) return false;
    return true;
  }));
  EXPECT_EQ(calls, 1);
  for (auto& o : out) EXPECT_EQ(*o, *out[0]);
  std::uint64_t granted = 0, waited = 0;
  for (auto& i : fleet) {
    granted += i.tier->health().leases_granted;
    waited += i.tier->health().leases_waited;
  }
  EXPECT_EQ(granted, 1u);
  EXPECT_EQ(waited, 2u);  // one miss per instance reaches Redis; the other two wait
}

TEST_F(RedisFleet, AWaiterLoadsOnceALeaseLeftByACrashedHolderExpires) {
  auto a = make({.leases = true, .lease_poll = 20ms});
  // A holder that took the lease and died: nobody will fill.
  auto [ec, r] = exec(*raw, {"SET", "{" + prefix + "orphan}:lease", "dead-token", "PX", "300"});
  ASSERT_FALSE(ec);
  std::atomic<int> calls{0};
  std::optional<std::string> out;
  const auto t0 = std::chrono::steady_clock::now();
  get(a, "orphan", "mine", calls, out);
  ASSERT_TRUE(run_until([&] { return out.has_value(); }, 3s));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 250ms);
  EXPECT_EQ(*out, "mine");
  EXPECT_EQ(calls, 1);
  const auto h = a.tier->health();
  EXPECT_EQ(h.leases_waited, 1u);
  EXPECT_EQ(h.leases_expired, 1u);
  EXPECT_EQ(h.leases_granted, 1u);
}

TEST_F(RedisFleet, ASetVoidsTheLeaseSoAFillFromBeforeItDoesNotLand) {
  auto a = make({.leases = true});
  auto b = make({.leases = true});
  std::atomic<int> calls{0};
  std::optional<std::string> out;
  get(a, "k", "old", calls, out, 300ms);  // takes the lease, loads slowly
  ASSERT_TRUE(run_until([&] { return a.tier->health().leases_granted == 1; }));
  set_now(b, "k", "new");
  ASSERT_TRUE(run_until([&] { return out.has_value(); }, 3s));
  ASSERT_TRUE(run_until([&] { return a.tier->health().leases_lost == 1; }, 2s));
  auto [ec, r] = exec(*raw, {"GET", prefix + "k"});
  ASSERT_FALSE(ec);
  ASSERT_EQ(r.type, redis::reply::kind::bulk);
  EXPECT_NE(r.str.find("new"), std::string::npos);
  EXPECT_EQ(r.str.find("old"), std::string::npos);
  auto [ec2, lease] = exec(*raw, {"EXISTS", "{" + prefix + "k}:lease"});
  EXPECT_EQ(lease.integer, 0);
  // The loser's memory does not keep the value that lost: a newer one stands.
  EXPECT_EQ(*out, "old");
  EXPECT_FALSE(a.cache->peek("k"));
  EXPECT_EQ(get_now(a, "k", "never", calls), "new");
}

TEST_F(RedisFleet, ALeaseOfThisInstanceWhoseLoadWasVoidedIsTakenOverNotWaitedFor) {
  auto a = make({.invalidation = redis::invalidation_mode::tracking, .leases = true, .lease_ttl = 5000ms});
  ASSERT_TRUE(linked(a));
  std::atomic<int> calls{0};
  std::optional<std::string> first, second;
  get(a, "k", "first", calls, first, 300ms);
  ASSERT_TRUE(run_until([&] { return a.tier->health().leases_granted == 1; }));
  // The invalidation connection lost: memory is flushed and the load voided.
  auto [ec, r] = exec(*raw, {"CLIENT", "KILL", "TYPE", "pubsub"});
  ASSERT_FALSE(ec);
  ASSERT_TRUE(run_until([&] { return a.cache->stats().memory_flushes >= 2; }));
  const auto t0 = std::chrono::steady_clock::now();
  get(a, "k", "second", calls, second);
  ASSERT_TRUE(run_until([&] { return first && second; }, 3s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);  // not the lease's 5 s
  EXPECT_EQ(*second, "second");
  EXPECT_EQ(a.tier->health().leases_waited, 0u);
  EXPECT_EQ(calls, 2);
}

TEST_F(RedisFleet, ImpossibleFleetOptionsAreRefused) {
  EXPECT_THROW(redis::tier(io.get_executor(), client_options(), {.leases = true, .lease_ttl = 0ms}),
               boost::system::system_error);
  EXPECT_THROW(redis::tier(io.get_executor(), client_options(), {.leases = true, .lease_poll = -1ms}),
               boost::system::system_error);
  redis::client_options co = client_options();
  co.cluster.nodes = {"127.0.0.1:" + port};
  EXPECT_THROW(redis::tier(io.get_executor(), co, {.invalidation = redis::invalidation_mode::tracking}),
               boost::system::system_error);
  // Tracking sets up the client's connections: one tracking tier per client.
  auto shared = std::make_shared<redis::client>(io.get_executor(), client_options());
  redis::tier first(shared, {.prefix = prefix + "a:", .invalidation = redis::invalidation_mode::tracking});
  EXPECT_THROW(redis::tier(shared, {.prefix = prefix + "b:", .invalidation = redis::invalidation_mode::tracking}),
               boost::system::system_error);
  redis::tier publishing(shared, {.prefix = prefix + "c:", .invalidation = redis::invalidation_mode::publish});
}

}  // namespace
