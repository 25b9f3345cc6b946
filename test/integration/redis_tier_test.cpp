// Caches sharing a real redis-server through redis::tier: values, TTLs and
// erasures cross instances; garbage under a key is a miss; the server killed in
// the middle of a burst neither hangs nor fails a caller, and once it is back
// the tier is used again; AUTH with the right and a wrong password.
#include "redis_fixture.hpp"

#include <cacheflight/cacheflight.hpp>
#include <cacheflight/manual_clock.hpp>
#include <cacheflight/redis/tier.hpp>
#ifdef CACHEFLIGHT_TEST_WITH_DISK
#include <cacheflight/disk/tier.hpp>

#include <filesystem>
#endif

#include <atomic>
#include <functional>
#include <random>
#include <thread>

namespace {

using namespace cftest;

using CK = cf::cache_event_kind;
using mcache = cf::cache<int, cf::manual_clock>;

class RedisTier : public redis_fixture {
 protected:
  void SetUp() override {
    redis_fixture::SetUp();
    cf::manual_clock::reset();
    // A prefix of this test's own, so that tests never see each other's keys.
    prefix = "cftest:" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + ":" +
             std::to_string(std::random_device{}()) + ":";
    raw = std::make_shared<redis::client>(io.get_executor(), client_options());
    ASSERT_TRUE(run_until([&] { return raw->is_connected(); }));
  }

  std::shared_ptr<redis::tier> make_tier(redis::tier_options o = {}) {
    o.prefix = prefix;
    auto t = std::make_shared<redis::tier>(io.get_executor(), client_options(), std::move(o));
    EXPECT_TRUE(run_until([&] { return t->get_client().is_connected(); }));
    return t;
  }

  cf::cache_options options(std::shared_ptr<cf::tier> t, std::vector<std::string>* events = nullptr) {
    cf::cache_options o{.max_entries = 10'000, .default_ttl = 60s, .tiers = {std::move(t)}};
    if (events)
      o.on_event = [events](const cf::cache_event& e) {
        if (e.kind >= CK::tier_hit) events->push_back(std::string(to_string(e.kind)) + " " + std::string(e.key));
      };
    return o;
  }

  // A loader returning `v` and counting into `calls`.
  static auto loader(int v, std::atomic<int>& calls) {
    return [v, &calls]() -> asio::awaitable<int> {
      ++calls;
      co_return v;
    };
  }

  template <class C, class L>
  int get(C& c, std::string key, L load) {
    std::optional<std::pair<std::exception_ptr, int>> r;
    c.async_get(std::move(key), load, [&](std::exception_ptr e, int v) { r.emplace(e, v); });
    EXPECT_TRUE(run_until([&] { return r.has_value(); }));
    if (!r) return -1;
    EXPECT_FALSE(r->first);
    return r->second;
  }

  // Waits until the tier has acknowledged `n` writes.
  bool written(redis::tier& t, std::uint64_t n) {
    return run_until([&] { return t.health().writes >= n; });
  }

  std::string prefix;
  std::shared_ptr<redis::client> raw;
};

TEST_F(RedisTier, ASecondInstanceGetsTheFirstOnesValueWithItsTtlAndSeesItsErase) {
  auto ta = make_tier(), tb = make_tier();
  mcache a{io, options(ta)};
  mcache b{io, options(tb)};
  std::atomic<int> calls_a{0}, calls_b{0};

  EXPECT_EQ(get(a, "user:1", loader(41, calls_a)), 41);
  ASSERT_TRUE(written(*ta, 1));
  auto [ec, pttl] = exec(*raw, {"PTTL", prefix + "user:1"});
  EXPECT_GT(pttl.integer, 59'000);  // SET ... PX with the load's TTL
  EXPECT_LE(pttl.integer, 60'000);

  EXPECT_EQ(get(b, "user:1", loader(99, calls_b)), 41);  // from Redis
  EXPECT_EQ(calls_a, 1);
  EXPECT_EQ(calls_b, 0);
  auto sb = b.stats();
  EXPECT_EQ(sb.l2_hits, 1u);
  EXPECT_EQ(sb.loads, 0u);
  EXPECT_EQ(sb.tiers[0].name, "redis");
  EXPECT_EQ(sb.tiers[0].breaker, cf::breaker_state::closed);

  // b's memory holds it for the remaining lifetime only.
  cf::manual_clock::advance(59s);
  EXPECT_EQ(b.peek("user:1"), 41);
  cf::manual_clock::advance(2s);
  EXPECT_EQ(b.peek("user:1"), std::nullopt);

  // An erase on a reaches Redis before it completes: b's next miss loads.
  std::optional<std::exception_ptr> erased;
  a.async_erase("user:1", [&](std::exception_ptr e, bool) { erased = e; });
  ASSERT_TRUE(run_until([&] { return erased.has_value(); }));
  EXPECT_FALSE(*erased);
  EXPECT_EQ(exec(*raw, {"EXISTS", prefix + "user:1"}).second.integer, 0);
  EXPECT_EQ(get(b, "user:1", loader(7, calls_b)), 7);
  EXPECT_EQ(calls_b, 1);
}

TEST_F(RedisTier, FreshAndStaleTimesCrossInstancesThroughRedis) {
  auto ta = make_tier(), tb = make_tier();
  auto o = options(ta);
  o.stale_while_revalidate = 30s;
  mcache a{io, o};
  std::atomic<int> calls{0};
  EXPECT_EQ(get(a, "u", loader(1, calls)), 1);
  ASSERT_TRUE(written(*ta, 1));
  // Redis keeps it for both windows; the envelope says where the first ends.
  const auto pttl = exec(*raw, {"PTTL", prefix + "u"}).second.integer;
  EXPECT_GT(pttl, 89'000);
  EXPECT_LE(pttl, 90'000);
  const auto env = cf::detail::envelope::unwrap(exec(*raw, {"GET", prefix + "u"}).second.str);
  ASSERT_TRUE(env);
  EXPECT_EQ(env->expires_ms - env->fresh_until_ms, 30'000);

  // A value another instance left stale in Redis: served as stale by b, whose
  // reload then skips it and runs the loader.
  const std::int64_t now_ms = cf::detail::envelope::now_ms();
  exec(*raw, {"SET", prefix + "s", cf::detail::encode_stored(41, now_ms + 20'000, now_ms - 1'000), "PX", "20000"});
  auto ob = options(tb);
  ob.stale_while_revalidate = 30s;
  mcache b{io, ob};
  EXPECT_EQ(get(b, "s", loader(99, calls)), 41);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(get(b, "s", loader(99, calls)), 41);  // stale in memory: one reload
  EXPECT_EQ(b.stats().stale_hits, 1u);
  // The reload stores in memory, then writes to Redis. (No polling with peek
  // meanwhile: a peek at the stale value would count as a stale hit too.)
  ASSERT_TRUE(written(*tb, 1));
  EXPECT_EQ(b.peek("s"), 99);
  EXPECT_EQ(calls, 2);
  const auto renewed = cf::detail::envelope::unwrap(exec(*raw, {"GET", prefix + "s"}).second.str);
  ASSERT_TRUE(renewed);
  EXPECT_GT(renewed->fresh_until_ms, now_ms + 59'000);
  EXPECT_EQ(b.stats().stale_hits, 1u);
}

TEST_F(RedisTier, GarbageUnderAKeyIsAMissWithAnEventAndTheLoaderRuns) {
  auto t = make_tier();
  std::vector<std::string> events;
  mcache c{io, options(t, &events)};
  exec(*raw, {"SET", prefix + "g", std::string("\x00garbage\xff", 9)});
  exec(*raw, {"SET", prefix + "h", std::string("CFLT\x01\x00", 6)});  // a truncated envelope
  std::atomic<int> calls{0};

  EXPECT_EQ(get(c, "g", loader(5, calls)), 5);
  EXPECT_EQ(get(c, "h", loader(6, calls)), 6);
  EXPECT_EQ(calls, 2);
  auto s = c.stats();
  EXPECT_EQ(s.tiers[0].corrupt, 2u);
  EXPECT_EQ(s.l2_misses, 2u);
  EXPECT_EQ(s.l2_errors, 0u);
  EXPECT_EQ(events, (std::vector<std::string>{"tier_corrupt g", "tier_corrupt h"}));

  // The loaded value replaced the garbage.
  ASSERT_TRUE(written(*t, 2));
  auto [ec, bytes] = exec(*raw, {"GET", prefix + "g"});
  EXPECT_EQ(cf::detail::decode_stored<int>(bytes.str, cf::detail::envelope::now_ms(), nullptr), 5);
}

// An error reply refusing one command (a key that another application keeps
// a list under answers GET with WRONGTYPE) fails that read, but the server
// answered: the breaker stays closed and other keys are read. Error replies
// that say the server cannot serve (OOM for every write once it is past
// `maxmemory`) count as failures and open it.
TEST_F(RedisTier, ErrorRepliesOpenTheBreakerOnlyWhenTheySayTheServerCannotServe) {
  std::vector<cf::breaker_state> states;
  auto t = make_tier(redis::tier_options{
      .breaker_failures = 2, .breaker_min = 10s, .breaker_max = 10s,
      .on_breaker = [&](cf::breaker_state s) { states.push_back(s); }});
  exec(*raw, {"LPUSH", prefix + "list", "x"});
  ASSERT_FALSE(exec(*raw, {"SET", prefix + "plain", "v"}).first);
  auto read = [&](std::string key) {
    std::optional<std::pair<error_code, std::optional<std::string>>> r;
    t->async_get(std::move(key), [&](error_code ec, std::optional<std::string> b) { r.emplace(ec, std::move(b)); });
    EXPECT_TRUE(run_until([&] { return r.has_value(); }));
    return r.value_or(std::pair{make_error_code(asio::error::timed_out), std::optional<std::string>{}});
  };
  for (int i = 0; i < 5; ++i) {
    auto [ec, bytes] = read("list");
    EXPECT_EQ(ec, cf::error::protocol_error) << ec.message();
    EXPECT_FALSE(bytes);
  }
  EXPECT_TRUE(states.empty());
  EXPECT_EQ(t->health().breaker, cf::breaker_state::closed);
  auto [ec, plain] = read("plain");
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(plain, "v");

  // Past maxmemory (with the default noeviction policy) every write is
  // answered with OOM.
  ASSERT_FALSE(exec(*raw, {"CONFIG", "SET", "maxmemory", "1"}).first);
  const std::shared_ptr<void> restore(nullptr, [&](void*) { exec(*raw, {"CONFIG", "SET", "maxmemory", "0"}); });
  std::vector<error_code> writes;
  for (int i = 0; i < 3; ++i) {
    std::optional<error_code> w;
    t->async_put("w" + std::to_string(i), "bytes", std::chrono::milliseconds(60'000), [&](error_code e) { w = e; });
    EXPECT_TRUE(run_until([&] { return w.has_value(); }));
    writes.push_back(w.value_or(asio::error::timed_out));
  }
  EXPECT_EQ(writes[0], cf::error::protocol_error) << writes[0].message();
  EXPECT_EQ(writes[1], cf::error::protocol_error) << writes[1].message();
  EXPECT_EQ(writes[2], cf::error::tier_unavailable) << writes[2].message();
  EXPECT_EQ(states, (std::vector<cf::breaker_state>{cf::breaker_state::open}));
}

TEST_F(RedisTier, WritesKeepTheirOrderPerKeyAndTheLastOneWins) {
  auto t = make_tier(redis::tier_options{.max_queued_writes = 3});
  std::vector<std::string> results;
  auto done = [&](const char* what) {
    return [&results, what](error_code ec) { results.push_back(std::string(what) + (ec ? ":" + ec.message() : "")); };
  };
  // Back to back: the first write is sent at once; the rest queue behind it.
  t->async_put("k", "1", 60s, done("put1"));
  t->async_put("k", "2", 60s, done("put2"));  // queued sets: 1
  t->async_erase("k", done("erase"));          // replaces it: 0
  t->async_put("k", "3", 60s, done("put3"));  // replaces the erase: 1
  t->async_put("j", "a", 60s, done("putj"));  // 2
  t->async_put("e", "x", 60s, done("pute"));  // 3
  t->async_erase("e", done("erasee"));         // replaces the set of e: 2
  t->async_put("i", "b", 60s, done("puti"));  // 3
  t->async_put("h", "c", 60s, done("puth"));  // over the bound: dropped
  ASSERT_TRUE(run_until([&] { return results.size() == 9; }));
  EXPECT_EQ(exec(*raw, {"GET", prefix + "k"}).second.str, "3");
  EXPECT_EQ(exec(*raw, {"GET", prefix + "j"}).second.str, "a");
  EXPECT_EQ(exec(*raw, {"GET", prefix + "i"}).second.str, "b");
  EXPECT_EQ(exec(*raw, {"EXISTS", prefix + "e"}).second.integer, 0);
  EXPECT_EQ(exec(*raw, {"EXISTS", prefix + "h"}).second.integer, 0);
  EXPECT_EQ(results[0], "puth:" + make_error_code(cf::error::queue_full).message());  // refused at once
  EXPECT_EQ(std::count_if(results.begin(), results.end(), [](auto& r) { return r.find(':') != std::string::npos; }),
            1);
  EXPECT_EQ(t->health().writes_dropped, 1u);
  EXPECT_EQ(t->health().queued_writes, 0u);
}

TEST_F(RedisTier, AReadCancelledBeforeOrWhileRedisHoldsItsGetEndsAtOnceAndTheNextReadIsAnswered) {
  // No health check while Redis is paused below: its PING would wait too.
  auto co = client_options();
  co.health_check_interval = 60s;
  auto t = std::make_shared<redis::tier>(io.get_executor(), co, redis::tier_options{.prefix = prefix});
  ASSERT_TRUE(run_until([&] { return t->get_client().is_connected(); }));
  ASSERT_EQ(exec(*raw, {"SET", prefix + "k", "v"}).second.str, "OK");
  using result = std::optional<std::pair<error_code, std::optional<std::string>>>;
  auto read = [&](result& r, asio::cancellation_signal& sig) {
    t->async_get("k", asio::bind_cancellation_slot(sig.slot(), [&r](error_code ec, std::optional<std::string> v) {
                   r.emplace(ec, std::move(v));
                 }));
  };
  {  // Cancelled as soon as it is initiated: its GET is never sent.
    result r;
    asio::cancellation_signal sig;
    read(r, sig);
    sig.emit(asio::cancellation_type::terminal);
    ASSERT_TRUE(run_until([&] { return r.has_value(); }));
    EXPECT_EQ(r->first, asio::error::operation_aborted);
    EXPECT_FALSE(r->second);
  }
  {  // Cancelled while Redis holds its GET: it ends without waiting for the reply.
    const auto paused_at = std::chrono::steady_clock::now();
    ASSERT_EQ(exec(*raw, {"CLIENT", "PAUSE", "900", "ALL"}).second.str, "OK");
    result r;
    asio::cancellation_signal sig;
    read(r, sig);
    io.restart();
    io.run_for(100ms);
    ASSERT_FALSE(r.has_value());
    sig.emit(asio::cancellation_type::terminal);
    ASSERT_TRUE(run_until([&] { return r.has_value(); }));
    EXPECT_EQ(r->first, asio::error::operation_aborted);
    EXPECT_LT(std::chrono::steady_clock::now() - paused_at, 800ms);
    // The pause ends, and the abandoned GET's reply with it.
    while (std::chrono::steady_clock::now() - paused_at < 1000ms) {
      io.restart();
      io.run_for(10ms);
    }
  }
  // The abandoned reply is not taken for the next read's.
  result r;
  asio::cancellation_signal sig;
  read(r, sig);
  ASSERT_TRUE(run_until([&] { return r.has_value(); }));
  EXPECT_FALSE(r->first) << r->first.message();
  EXPECT_EQ(r->second, std::optional<std::string>("v"));
  EXPECT_EQ(t->health().breaker, cf::breaker_state::closed);
}

TEST_F(RedisTier, ASetTakingAQueuedErasesPlaceCountsAgainstTheBound) {
  auto t = make_tier(redis::tier_options{.max_queued_writes = 1});
  std::vector<std::string> results;
  auto done = [&](const char* what) {
    return [&results, what](error_code ec) { results.push_back(std::string(what) + (ec ? ":" + ec.message() : "")); };
  };
  exec(*raw, {"SET", prefix + "k", "old"});
  t->async_put("x", "1", 60s, done("putx"));  // sent at once
  t->async_put("k", "1", 60s, done("putk"));  // queued sets: 1
  t->async_erase("k", done("erasek"));         // replaces it: 0
  t->async_put("m", "1", 60s, done("putm"));  // 1
  t->async_put("k", "2", 60s, done("putk2")); // would take the erase's place: over the bound, refused
  t->async_erase("j", done("erasej"));         // erases are never refused
  ASSERT_TRUE(run_until([&] { return results.size() == 6; }));
  EXPECT_EQ(results[0], "putk2:" + make_error_code(cf::error::queue_full).message());
  EXPECT_EQ(exec(*raw, {"EXISTS", prefix + "k"}).second.integer, 0);  // the erase stayed
  EXPECT_EQ(exec(*raw, {"GET", prefix + "m"}).second.str, "1");
  EXPECT_EQ(t->health().writes_dropped, 1u);
}

TEST_F(RedisTier, ClearRemovesThisPrefixOnly) {
  // A prefix with glob characters must match itself only.
  prefix += "t[1]*?:";
  auto t = make_tier();
  mcache c{io, options(t)};
  std::atomic<int> calls{0};
  for (int i = 0; i < 300; ++i) get(c, "k" + std::to_string(i), loader(i, calls));
  ASSERT_TRUE(written(*t, 300));
  const std::string lookalike = prefix.substr(0, prefix.size() - 7) + "t1xx:k1";
  exec(*raw, {"SET", lookalike, "theirs"});
  exec(*raw, {"SET", "elsewhere:k1", "theirs"});

  std::optional<std::exception_ptr> cleared;
  c.async_clear([&](std::exception_ptr e) { cleared = e; });
  ASSERT_TRUE(run_until([&] { return cleared.has_value(); }));
  EXPECT_FALSE(*cleared);
  EXPECT_EQ(c.size(), 0u);
  auto [ec, keys] = exec(*raw, {"KEYS", prefix.substr(0, prefix.size() - 7) + "*"});
  ASSERT_EQ(keys.elements.size(), 1u);
  EXPECT_EQ(keys.elements[0].str, lookalike);
  EXPECT_EQ(exec(*raw, {"GET", "elsewhere:k1"}).second.str, "theirs");
  exec(*raw, {"DEL", lookalike, "elsewhere:k1"});
}

TEST_F(RedisTier, TheServerKilledDuringABurstFailsNoCallerAndIsUsedAgainOnceBack) {
  std::vector<cf::breaker_state> states;
  auto t = make_tier(redis::tier_options{.breaker_failures = 3,
                                         .breaker_min = 50ms,
                                         .breaker_max = 200ms,
                                         .on_breaker = [&](cf::breaker_state s) { states.push_back(s); }});
  cf::cache<int> c{io, options(t)};
  std::atomic<int> calls{0};
  // A database that takes 2 ms a key.
  auto db = [&](int v) {
    return [&calls, v]() -> asio::awaitable<int> {
      ++calls;
      asio::steady_timer tm(co_await asio::this_coro::executor, 2ms);
      co_await tm.async_wait(asio::use_awaitable);
      co_return v;
    };
  };

  // 400 keys, 5 callers each, arriving in waves of 10 keys every 2 ms; the
  // server dies once a quarter of the callers have completed.
  constexpr int keys = 400, per_key = 5, wave = 10;
  int completed = 0, failed = 0, launched = 0;
  asio::steady_timer waves(io);
  std::function<void()> next_wave = [&] {
    for (int i = 0; i < wave && launched < keys; ++i, ++launched)
      for (int j = 0; j < per_key; ++j)
        c.async_get("burst:" + std::to_string(launched), db(launched), [&, k = launched](std::exception_ptr e, int v) {
          ++completed;
          if (e || v != k) ++failed;
        });
    if (launched == keys) return;
    waves.expires_after(2ms);
    waves.async_wait([&](error_code) { next_wave(); });
  };
  next_wave();
  ASSERT_TRUE(run_until([&] { return completed >= keys * per_key / 4; }, 10s));
  server("kill");
  const int at_kill = completed;
  ASSERT_TRUE(run_until([&] { return completed == keys * per_key; }, 20s)) << completed << " completed";
  EXPECT_LT(at_kill, keys * per_key / 2);
  EXPECT_EQ(failed, 0);
  auto s = c.stats();
  EXPECT_GT(s.l2_errors, 0u);
  ASSERT_GE(states.size(), 1u);
  EXPECT_EQ(states.front(), cf::breaker_state::open);
  EXPECT_NE(s.tiers[0].breaker, cf::breaker_state::closed);
  EXPECT_EQ(static_cast<int>(s.loads + s.l2_hits), keys);  // each key loaded once

  // While down: served by the loader at once, the tier skipped.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(get(c, "down:1", db(1)), 1);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);

  // Back: without restarting anything here, the tier is used again.
  server("restart");
  auto other = make_tier();
  cf::cache<int> d{io, options(other)};
  std::atomic<int> d_calls{0};
  int round = 0;
  ASSERT_TRUE(run_until(
      [&] {
        // Each round writes a fresh key through c, and reads it through d.
        const std::string key = "after:" + std::to_string(round++);
        get(c, key, db(round));
        run_until([] { return false; }, 20ms);
        get(d, key, loader(-1, d_calls));
        return d.stats().l2_hits > 0;
      },
      10s));
  EXPECT_EQ(c.stats().tiers[0].breaker, cf::breaker_state::closed);
  EXPECT_EQ(states.back(), cf::breaker_state::closed);
}

class RedisTierAuth : public RedisTier {
 protected:
  void SetUp() override {
    redis_fixture::use_server("redis-auth");
    cf::manual_clock::reset();
    prefix = "cftest:auth:";
  }
  redis::client_options with_password(std::string pw) {
    auto o = client_options();
    o.connection.password = std::move(pw);
    return o;
  }
};

TEST_F(RedisTierAuth, TheRightPasswordWorksAndAWrongOneIsAClearError) {
  auto good = std::make_shared<redis::tier>(io.get_executor(), with_password("s3cret"),
                                            redis::tier_options{.prefix = prefix});
  auto bad = std::make_shared<redis::tier>(io.get_executor(), with_password("wrong"),
                                           redis::tier_options{.prefix = prefix});
  ASSERT_TRUE(run_until([&] { return good->get_client().is_connected(); }));
  ASSERT_TRUE(run_until([&] { return bad->get_client().last_error() == cf::error::auth_failed; }));
  EXPECT_FALSE(bad->get_client().is_connected());

  mcache a{io, options(good)};
  mcache b{io, options(bad)};
  std::atomic<int> calls{0};
  EXPECT_EQ(get(a, "k", loader(1, calls)), 1);
  ASSERT_TRUE(written(*good, 1));
  mcache a2{io, options(good)};
  EXPECT_EQ(get(a2, "k", loader(2, calls)), 1);  // through Redis
  EXPECT_EQ(get(b, "k", loader(3, calls)), 3);   // Redis refused b: its loader serves
  EXPECT_GT(b.stats().l2_errors, 0u);
  std::optional<std::exception_ptr> done;
  a.async_clear([&](std::exception_ptr e) { done = e; });
  ASSERT_TRUE(run_until([&] { return done.has_value(); }));
}

}  // namespace

namespace {

using namespace cftest;

TEST_F(RedisTier, AnInvalidationIssuedBeforeALoadRunsIsNotUndoneByTheValueInRedis) {
  auto t = make_tier();
  mcache c{io, options(t)};
  std::atomic<int> calls{0};
  const auto old_bytes = cf::detail::encode_stored(1, cf::detail::envelope::now_ms() + 60'000);

  // A set: the load exists before it, its first step (the Redis read) runs after.
  exec(*raw, {"SET", prefix + "s", old_bytes});
  std::optional<int> got;
  c.async_get("s", loader(3, calls), [&](std::exception_ptr, int v) { got = v; });
  bool set_done = false;
  c.async_set("s", 2, [&](std::exception_ptr e) { set_done = !e; });
  ASSERT_TRUE(run_until([&] { return got && set_done; }));
  EXPECT_EQ(c.peek("s"), 2);
  ASSERT_TRUE(run_until([&] { return t->health().queued_writes == 0 && t->health().writes >= 1; }));
  EXPECT_EQ(cf::detail::decode_stored<int>(exec(*raw, {"GET", prefix + "s"}).second.str,
                                           cf::detail::envelope::now_ms(), nullptr),
            2);

  // An erase: nothing of what Redis held comes back into memory, and the next
  // caller, after the erase completed, loads.
  exec(*raw, {"SET", prefix + "e", old_bytes});
  std::optional<int> before;
  c.async_get("e", loader(3, calls), [&](std::exception_ptr, int v) { before = v; });
  std::optional<std::exception_ptr> erased;
  c.async_erase("e", [&](std::exception_ptr e, bool) { erased = e; });
  ASSERT_TRUE(run_until([&] { return before && erased; }));
  EXPECT_FALSE(*erased);
  EXPECT_EQ(c.peek("e"), std::nullopt);
  EXPECT_EQ(get(c, "e", loader(7, calls)), 7);
  EXPECT_EQ(c.peek("e"), 7);
}

TEST_F(RedisTier, AfterRacingSetsErasesClearsAndLoadsRedisHoldsMemorysValueOrNothing) {
  // Two threads run the cache and the tier; eight actors issue random
  // operations on 16 keys. Once everything settled, Redis must hold, for each
  // key, what memory holds, or nothing (a later miss), unless a write was
  // reported dropped.
  asio::io_context work;
  auto t = std::make_shared<redis::tier>(work.get_executor(), client_options(), redis::tier_options{.prefix = prefix});
  cf::cache<int, cf::manual_clock> c{work, cf::cache_options{.max_entries = 10'000,
                                                             .default_ttl = 60s,
                                                             .shards = 4,
                                                             .tiers = {t}}};
  std::atomic<int> next_value{1}, finished{0}, errors{0};
  constexpr int actors = 8, ops = 600, keys = 16;
  auto actor = [&](unsigned seed) -> asio::awaitable<void> {
    std::mt19937 rng(seed);
    for (int i = 0; i < ops; ++i) {
      const std::string key = "k" + std::to_string(rng() % keys);
      const unsigned what = rng() % 100;
      try {
        if (what < 35) {
          co_await c.async_set(key, next_value++, asio::use_awaitable);
        } else if (what < 55) {
          co_await c.async_erase(key, asio::use_awaitable);
        } else if (what < 57) {
          co_await c.async_clear(asio::use_awaitable);
        } else {
          // A loader that takes a few scheduling rounds, so that loads are in
          // flight while other actors write.
          const int v = next_value++;
          const int rounds = static_cast<int>(rng() % 4);
          co_await c.async_get(
              key,
              [v, rounds]() -> asio::awaitable<int> {
                for (int r = 0; r < rounds; ++r)
                  co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
                co_return v;
              },
              asio::use_awaitable);
        }
      } catch (const std::exception&) {
        ++errors;
      }
    }
    // Each actor ends with a set, so that the last operation of all leaves a
    // value in memory (a clear can take long, and end an actor last).
    co_await c.async_set("k" + std::to_string(seed % keys), next_value++, asio::use_awaitable);
    ++finished;
  };
  auto guard = asio::make_work_guard(work);
  std::thread t1([&] { work.run(); }), t2([&] { work.run(); });
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (!t->get_client().is_connected() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  for (unsigned a = 0; a < actors; ++a) asio::co_spawn(work, actor(a + 1), asio::detached);
  while (finished < actors && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
  // Settled: nothing queued in the tier for a while.
  int quiet = 0;
  while (quiet < 20 && std::chrono::steady_clock::now() < deadline) {
    quiet = t->health().queued_writes == 0 ? quiet + 1 : 0;
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(finished.load(), actors);
  EXPECT_EQ(errors.load(), 0);
  const auto health = t->health();
  const auto st = c.stats();
  int mismatched = 0, both = 0;
  for (int k = 0; k < keys; ++k) {
    const std::string key = "k" + std::to_string(k);
    const std::optional<int> mem = c.peek(key);
    auto [ec, r] = exec(*raw, {"GET", prefix + key});
    ASSERT_FALSE(ec);
    if (r.type == redis::reply::kind::nil) continue;
    const auto in_redis = cf::detail::decode_stored<int>(r.str, cf::detail::envelope::now_ms(), nullptr);
    if (in_redis && mem && *in_redis == *mem)
      ++both;
    else {
      ++mismatched;
      ADD_FAILURE() << key << ": memory " << (mem ? std::to_string(*mem) : "none") << ", Redis "
                    << (in_redis ? std::to_string(*in_redis) : "unreadable");
    }
  }
  EXPECT_EQ(health.writes_dropped, 0u);
  EXPECT_EQ(st.l2_errors, 0u);
  EXPECT_EQ(mismatched, 0);
  EXPECT_GT(both, 0) << "in memory: " << st.size << ", tier writes " << health.writes << ", queued "
                     << health.queued_writes;
  guard.reset();
  work.stop();
  t1.join();
  t2.join();
}

}  // namespace

#ifdef CACHEFLIGHT_TEST_WITH_DISK
// Memory -> Redis -> disk -> loader, and memory -> disk -> Redis -> loader: a
// value is found in whichever tier has it, fills the tiers before it, and an
// erase through the cache reaches both.
TEST_F(RedisTier, RedisAndDiskTiersWorkInEitherOrder) {
  std::string dir = (std::filesystem::temp_directory_path() / "cf-redis-disk-XXXXXX").string();
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  for (bool redis_first : {true, false}) {
    SCOPED_TRACE(redis_first ? "redis, disk" : "disk, redis");
    auto rt = make_tier();
    auto dt = std::make_shared<cf::disk::tier>(
        io.get_executor(), cf::disk::tier_options{.path = dir + (redis_first ? "/a" : "/b"), .max_bytes = 1 << 24});
    std::vector<std::shared_ptr<cf::tier>> order{rt, dt};
    if (!redis_first) std::swap(order[0], order[1]);
    auto opts = [&] {
      cf::cache_options o{.max_entries = 10'000, .default_ttl = 60s, .tiers = order};
      return o;
    };
    std::atomic<int> calls{0};
    const std::string k = redis_first ? "k1" : "k2";
    {
      mcache a{io, opts()};
      EXPECT_EQ(get(a, k, loader(7, calls)), 7);
      EXPECT_TRUE(written(*rt, 1));
      std::optional<error_code> flushed;
      dt->async_flush([&](error_code ec) { flushed = ec; });
      EXPECT_TRUE(run_until([&] { return flushed.has_value(); }));
    }
    {  // a new instance finds it in the first tier
      mcache b{io, opts()};
      EXPECT_EQ(get(b, k, loader(8, calls)), 7);
      EXPECT_EQ(b.stats().tiers.at(0).hits, 1u);
    }
    // Only the second tier has it now: found there, and the first refilled.
    std::optional<error_code> erased;
    order[0]->async_erase(k, [&](error_code ec) { erased = ec; });
    EXPECT_TRUE(run_until([&] { return erased.has_value(); }));
    {
      mcache c{io, opts()};
      EXPECT_EQ(get(c, k, loader(9, calls)), 7);
      const auto s = c.stats();
      EXPECT_EQ(s.tiers.at(0).misses, 1u);
      EXPECT_EQ(s.tiers.at(1).hits, 1u);
      std::optional<std::optional<std::string>> back;
      EXPECT_TRUE(run_until([&] {
        if (back && *back) return true;
        back.reset();
        order[0]->async_get(k, [&](error_code, std::optional<std::string> v) { back = std::move(v); });
        return run_until([&] { return back.has_value(); }) && back->has_value();
      }));
      // An erase through the cache reaches both tiers.
      std::optional<std::exception_ptr> done;
      c.async_erase(k, [&](std::exception_ptr e, bool) { done = e; });
      EXPECT_TRUE(run_until([&] { return done.has_value(); }));
    }
    {
      mcache d{io, opts()};
      EXPECT_EQ(get(d, k, loader(10, calls)), 10);
    }
    EXPECT_EQ(calls.load(), 2);  // the first load and the one after the erase
  }
  std::filesystem::remove_all(dir);
}
#endif

namespace {

// Tags whose generations live in Redis: two caches, each with its own tier
// and registry on the same server, see each other's invalidations.
TEST_F(RedisTier, TagInvalidationsCrossInstancesThroughRedis) {
  auto ta = make_tier(), tb = make_tier();
  cf::cache<int> ca{io, options(ta)}, cb{io, options(tb)};
  auto ra = std::make_shared<cf::tag_registry>(io.get_executor(), cf::tag_options{.store = ta});
  auto rb = std::make_shared<cf::tag_registry>(io.get_executor(), cf::tag_options{.store = tb});
  std::atomic<int> calls{0};
  std::atomic<int> price{100};
  auto load = [&](int) -> asio::awaitable<int> {
    ++calls;
    co_return price.load();
  };
  auto sku_tag = [](const int& sku) { return std::vector<std::string>{"sku:" + std::to_string(sku)}; };
  cf::memoized<int(int)> fa{ca, "price", load, {.tags_of = sku_tag, .registry = ra}};
  cf::memoized<int(int)> fb{cb, "price", load, {.tags_of = sku_tag, .registry = rb}};
  auto call = [&](const cf::memoized<int(int)>& f, int sku) {
    std::optional<int> r;
    asio::co_spawn(io, f(sku), [&](std::exception_ptr e, int v) {
      EXPECT_FALSE(e);
      r = v;
    });
    EXPECT_TRUE(run_until([&] { return r.has_value(); }));
    return r.value_or(-1);
  };
  auto done = [&](auto&& op) {
    bool finished = false;
    std::move(op)([&](std::exception_ptr e) {
      EXPECT_FALSE(e);
      finished = true;
    });
    EXPECT_TRUE(run_until([&] { return finished; }));
  };

  EXPECT_EQ(call(fa, 1), 100);
  EXPECT_TRUE(written(*ta, 3));  // the generations of memo:price and sku:1, and the value
  EXPECT_EQ(call(fb, 1), 100);   // B reads A's value from Redis: the same key
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(exec(*raw, {"STRLEN", prefix + "cf:tag:sku:1"}).second.integer, 16);

  // A invalidates the tag; B's copy in memory is never served again.
  price = 200;
  done(ra->async_invalidate({"sku:1"}, asio::deferred));
  EXPECT_EQ(call(fb, 1), 200);
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(rb->stats().changes_seen, 1u);
  EXPECT_TRUE(written(*tb, 1));
  EXPECT_EQ(call(fa, 1), 200);  // A reads B's fill
  EXPECT_EQ(calls.load(), 2);

  // clear() on B reaches A.
  price = 300;
  done(fb.async_clear(asio::deferred));
  EXPECT_EQ(call(fa, 1), 300);
  EXPECT_EQ(calls.load(), 3);

  // A generation flushed from Redis is replaced by a new one: a miss, never an old value.
  exec(*raw, {"DEL", prefix + "cf:tag:sku:1", prefix + "cf:tag:memo:price"});
  price = 400;
  EXPECT_EQ(call(fb, 1), 400);
  EXPECT_EQ(calls.load(), 4);
}

}  // namespace
