// Freshness: stale-while-revalidate, stale-if-error, the hard cap, reload
// timeouts, the per-entry policy, TTL jitter, early refresh (XFetch),
// refresh-ahead, and freshness carried through a tier. Time is the manual
// clock's; only the tiers' envelopes use wall-clock time.
#include "memory_tier.hpp"
#include "test_support.hpp"

#include <cmath>

using namespace cftest;

namespace {

using mcache = cf::cache<int, cf::manual_clock>;
using CK = cf::cache_event_kind;

struct kinds_log {
  std::vector<CK> kinds;
  std::vector<std::exception_ptr> errors;
  cf::cache_event_sink sink() {
    return [this](const cf::cache_event& e) {
      kinds.push_back(e.kind);
      if (e.kind == CK::refresh_failed) errors.push_back(e.error);
    };
  }
  std::size_t count(CK k) const { return std::size_t(std::count(kinds.begin(), kinds.end(), k)); }
};

// A loader returning 1, 2, 3... on successive calls, counting them.
struct counting_loader {
  std::shared_ptr<int> calls = std::make_shared<int>(0);
  auto fn() {
    return [calls = calls]() -> asio::awaitable<int> { co_return ++*calls; };
  }
};

class Freshness : public ::testing::Test {
 protected:
  void SetUp() override { cf::manual_clock::reset(); }

  template <class Loader>
  outcome<> get(mcache& c, const std::string& key, Loader loader) {
    outcome<> o;
    c.async_get(key, std::move(loader), o.handler());
    run_until(io, [&] { return o.done; });
    return o;
  }

  // Loads "k" with `first` (1), makes it stale, and fails the reload that a
  // stale read starts (the read gets the stale value).
  void fail_one_reload(mcache& c, counting_loader& first) {
    EXPECT_EQ(get(c, "k", first.fn()).value, 1);
    cf::manual_clock::advance(1200ms);
    gate failing{io.get_executor()};
    EXPECT_EQ(get(c, "k", failing.fn()).value, 1);
    run_until(io, [&] { return failing.calls() == 1; });
    failing.reject(std::make_exception_ptr(std::runtime_error("db down")));
    run_until(io, [&] { return c.stats().refreshes_failed == 1; });
  }

  asio::io_context io;
  kinds_log log;
};

cf::cache_options swr_options(kinds_log& log) {
  return cf::cache_options{.default_ttl = 1s, .on_event = log.sink(), .stale_while_revalidate = 1s};
}

TEST_F(Freshness, StaleValueIsServedAtOnceWhileOneReloadRuns) {
  mcache c{io, swr_options(log)};
  gate first{io.get_executor()};
  outcome<> o;
  c.async_get("k", first.fn(), o.handler());
  run_until(io, [&] { return first.calls() == 1; });
  first.resolve(1);
  run_until(io, [&] { return o.done; });
  EXPECT_EQ(o.value, 1);

  cf::manual_clock::advance(999ms);  // still fresh: no reload
  gate reload{io.get_executor()};
  EXPECT_EQ(get(c, "k", reload.fn()).value, 1);
  drain(io);
  EXPECT_EQ(reload.calls(), 0);
  EXPECT_EQ(c.stats().stale_hits, 0u);

  cf::manual_clock::advance(1ms);  // fresh time over: stale for one more second
  std::vector<outcome<>> stale(5);
  for (auto& s : stale) c.async_get("k", reload.fn(), s.handler());
  run_until(io, [&] { return std::all_of(stale.begin(), stale.end(), [](auto& s) { return s.done; }); });
  for (auto& s : stale) EXPECT_EQ(s.value, 1);  // delivered before the reload resolved
  run_until(io, [&] { return reload.calls() == 1; });
  io.poll();
  EXPECT_EQ(reload.calls(), 1);  // one reload for five stale readers
  auto s = c.stats();
  EXPECT_EQ(s.stale_hits, 5u);
  EXPECT_EQ(s.hits, 6u);  // stale hits are hits
  EXPECT_EQ(s.refreshes, 1u);
  EXPECT_EQ(log.count(CK::refresh_started), 1u);
  EXPECT_EQ(log.count(CK::stale_hit), 5u);

  reload.resolve(2);
  run_until(io, [&] { return c.stats().refreshes_succeeded == 1; });
  EXPECT_EQ(log.count(CK::refresh_resolved), 1u);
  EXPECT_EQ(get(c, "k", reload.fn()).value, 2);  // fresh again, for a full TTL
  EXPECT_EQ(c.stats().stale_hits, 5u);
  cf::manual_clock::advance(999ms);
  EXPECT_EQ(get(c, "k", reload.fn()).value, 2);
  EXPECT_EQ(c.stats().stale_hits, 5u);
  EXPECT_EQ(reload.calls(), 1);
}

TEST_F(Freshness, NothingIsServedPastTheStaleWindowWhateverTheReloadDoes) {
  mcache c{io, swr_options(log)};
  counting_loader first;
  EXPECT_EQ(get(c, "k", first.fn()).value, 1);
  cf::manual_clock::advance(1500ms);
  gate stuck{io.get_executor()};
  EXPECT_EQ(get(c, "k", stuck.fn()).value, 1);  // stale; the reload hangs
  run_until(io, [&] { return stuck.calls() == 1; });

  cf::manual_clock::advance(499ms);
  EXPECT_EQ(c.peek("k"), 1);  // 1 ms before the window ends: still served
  cf::manual_clock::advance(1ms);
  EXPECT_EQ(c.peek("k"), std::nullopt);  // expired: never served again
  outcome<> late;
  c.async_get("k", stuck.fn(), late.handler());
  io.poll();
  EXPECT_FALSE(late.done);        // it waits for the reload in flight, not the old value
  EXPECT_EQ(stuck.calls(), 1);    // and joins it instead of loading again
  stuck.resolve(7);
  run_until(io, [&] { return late.done; });
  EXPECT_EQ(late.value, 7);
  EXPECT_EQ(c.peek("k"), 7);
}

TEST_F(Freshness, AFailedReloadKeepsServingTheStaleValueUntilTheWindowEnds) {
  mcache c{io, swr_options(log)};
  counting_loader first;
  fail_one_reload(c, first);
  ASSERT_EQ(log.errors.size(), 1u);
  try {
    std::rethrow_exception(log.errors[0]);
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "db down");  // the loader's exception, unchanged
  }
  EXPECT_EQ(c.stats().load_failures, 1u);

  // Served past the error, and the next stale read tries again.
  gate again{io.get_executor()};
  EXPECT_EQ(get(c, "k", again.fn()).value, 1);
  run_until(io, [&] { return again.calls() == 1; });
  auto s = c.stats();
  EXPECT_EQ(s.stale_after_error, 1u);
  EXPECT_EQ(s.refreshes, 2u);
  EXPECT_EQ(log.count(CK::stale_after_error), 1u);

  cf::manual_clock::advance(800ms);  // the window is over
  EXPECT_EQ(c.peek("k"), std::nullopt);
  again.resolve(3);
  drain(io);
  EXPECT_EQ(c.peek("k"), 3);
}

TEST_F(Freshness, WithNegativeCachingAFailedReloadStoresNoFailureOverTheStaleValue) {
  auto o = swr_options(log);
  o.negative_ttl = 10s;
  mcache c{io, o};
  counting_loader first;
  fail_one_reload(c, first);
  auto again = get(c, "k", first.fn());
  EXPECT_FALSE(again.error);  // the stale value, not the cached failure
  EXPECT_EQ(again.value, 1);
  drain(io);  // the read retried the reload, which succeeded
  EXPECT_EQ(c.peek("k"), 2);
}

TEST_F(Freshness, WithoutStaleIfErrorAFailedReloadDropsTheValue) {
  auto o = swr_options(log);
  o.stale_if_error = false;
  mcache c{io, o};
  counting_loader first;
  fail_one_reload(c, first);
  EXPECT_EQ(c.peek("k"), std::nullopt);
  EXPECT_EQ(get(c, "k", first.fn()).value, 2);  // waited for a load
}

TEST_F(Freshness, AReloadHasItsOwnTimeout) {
  auto o = swr_options(log);
  o.refresh_timeout = 100ms;
  mcache c{io, o};
  counting_loader first;
  EXPECT_EQ(get(c, "k", first.fn()).value, 1);
  cf::manual_clock::advance(1100ms);
  gate stuck{io.get_executor()};
  EXPECT_EQ(get(c, "k", stuck.fn()).value, 1);
  cf::manual_clock::advance(100ms);
  run_until(io, [&] { return c.stats().refreshes_failed == 1; });
  ASSERT_EQ(log.errors.size(), 1u);
  try {
    std::rethrow_exception(log.errors[0]);
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), cf::error::timed_out);
  }
  run_until(io, [&] { return stuck.cancelled() == 1; });  // its only waiter left: cancelled
  EXPECT_EQ(c.peek("k"), 1);                               // still servable, stale
  EXPECT_EQ(get(c, "k", first.fn()).value, 1);             // and a new reload starts
  drain(io);
  EXPECT_EQ(c.peek("k"), 2);
}

TEST_F(Freshness, ThePolicyDecidesEachEntrysTimesFromKeyValueAndLoadTime) {
  std::vector<std::chrono::nanoseconds> load_times;
  mcache c{io, cf::cache_options{.default_ttl = 1s, .on_event = log.sink()}, {},
           [&](std::string_view key, const int& v, std::chrono::nanoseconds took) {
             load_times.push_back(took);
             if (key == "never") return cf::freshness{0s, 0s};
             return v >= 100 ? cf::freshness{10s, 5s} : cf::freshness{2s, 0s};
           }};
  auto slow = [](int v) {
    return [v]() -> asio::awaitable<int> {
      cf::manual_clock::advance(30ms);  // the load takes 30 ms of cache time
      co_return v;
    };
  };
  EXPECT_EQ(get(c, "big", slow(100)).value, 100);
  EXPECT_EQ(get(c, "small", slow(1)).value, 1);
  EXPECT_EQ(get(c, "never", slow(5)).value, 5);
  ASSERT_EQ(load_times.size(), 3u);
  for (auto t : load_times) EXPECT_EQ(t, 30ms);
  EXPECT_EQ(c.peek("never"), std::nullopt);  // not stored

  cf::manual_clock::advance(2s);
  EXPECT_EQ(c.peek("small"), std::nullopt);  // 2 s fresh, no stale window
  EXPECT_EQ(c.peek("big"), 100);
  cf::manual_clock::advance(9s);  // 11 s: stale for "big"
  EXPECT_EQ(get(c, "big", slow(101)).value, 100);
  EXPECT_EQ(c.stats().stale_hits, 1u);
  drain(io);
  EXPECT_EQ(c.peek("big"), 101);
}

TEST_F(Freshness, JitterSpreadsExpiriesWithinItsBounds) {
  mcache c{io, cf::cache_options{.max_entries = 1000, .default_ttl = 1000s, .ttl_jitter = 0.2}};
  counting_loader l;
  for (int i = 0; i < 200; ++i) get(c, "k" + std::to_string(i), l.fn());
  auto present = [&] {
    int n = 0;
    for (int i = 0; i < 200; ++i) n += c.peek("k" + std::to_string(i)).has_value();
    return n;
  };
  cf::manual_clock::advance(800s - 1ms);
  EXPECT_EQ(present(), 200);  // none before 0.8 x TTL
  cf::manual_clock::advance(200s + 1ms);
  const int at_ttl = present();
  EXPECT_GT(at_ttl, 0);  // spread on both sides of the TTL
  EXPECT_LT(at_ttl, 200);
  cf::manual_clock::advance(200s + 1ms);
  EXPECT_EQ(present(), 0);  // none after 1.2 x TTL
}

TEST_F(Freshness, EarlyRefreshProbabilityGrowsAsTheFreshTimeRunsOut) {
  const std::int64_t delta = 100'000'000;  // 100 ms
  auto rate = [&](std::int64_t gap) {
    int early = 0;
    for (int i = 0; i < 20000; ++i) early += cf::detail::early_refresh_due(0, gap, delta, 1.0);
    return early / 20000.0;
  };
  const double far = rate(400'000'000), mid = rate(100'000'000), near = rate(10'000'000);
  EXPECT_LT(far, mid);
  EXPECT_LT(mid, near);
  // P(early) = exp(-gap / (delta * beta)).
  EXPECT_NEAR(mid, std::exp(-1.0), 0.02);
  EXPECT_NEAR(near, std::exp(-0.1), 0.02);
  EXPECT_EQ(rate(10'000'000'000), 0.0);            // far beyond reach
  EXPECT_FALSE(cf::detail::early_refresh_due(5, 5, delta, 1.0));  // at the fresh time: stale, not early
  EXPECT_FALSE(cf::detail::early_refresh_due(0, 1, 0, 1.0));      // no load time known
  EXPECT_FALSE(cf::detail::early_refresh_due(0, 1, delta, 0.0));  // off
}

TEST_F(Freshness, EarlyRefreshReloadsAFreshValueBeforeItGoesStale) {
  mcache c{io, cf::cache_options{.default_ttl = 10s, .on_event = log.sink(), .early_refresh_beta = 1.0}};
  auto n = std::make_shared<int>(0);
  auto loader = [n]() -> asio::awaitable<int> {
    cf::manual_clock::advance(100ms);  // each load takes 100 ms
    co_return ++*n;
  };
  EXPECT_EQ(get(c, "k", loader).value, 1);  // fresh until 10.1 s
  for (int i = 0; i < 200; ++i) EXPECT_EQ(get(c, "k", loader).value, 1);
  EXPECT_EQ(c.stats().early_refreshes, 0u);  // 10 s from expiry: P = e^-100
  cf::manual_clock::advance(9900ms);         // 100 ms left: P = e^-1 per read
  int reads = 0;
  while (c.stats().early_refreshes == 0 && reads < 100) {
    EXPECT_EQ(get(c, "k", loader).value, 1);  // the fresh value, while the reload runs
    ++reads;
  }
  drain(io);
  auto s = c.stats();
  EXPECT_EQ(s.early_refreshes, 1u);
  EXPECT_EQ(s.refreshes_succeeded, 1u);
  EXPECT_EQ(s.stale_hits, 0u);
  EXPECT_EQ(log.count(CK::early_refresh), 1u);
  EXPECT_EQ(*n, 2);
  EXPECT_EQ(c.peek("k"), 2);
}

TEST_F(Freshness, ExplicitSetsTakeTheStaleWindowToo) {
  mcache c{io, swr_options(log)};
  bool done = false;
  c.async_set("k", 5, 2s, [&](std::exception_ptr e) { done = !e; });
  run_until(io, [&] { return done; });
  cf::manual_clock::advance(2500ms);
  counting_loader l;
  EXPECT_EQ(get(c, "k", l.fn()).value, 5);  // stale
  drain(io);
  EXPECT_EQ(c.peek("k"), 1);  // reloaded
}

TEST_F(Freshness, CoGetServesStaleAndReloadsInTheBackground) {
  mcache c{io, swr_options(log)};
  counting_loader l;
  std::vector<int> got;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        got.push_back(co_await c.co_get("k", l.fn()));
        cf::manual_clock::advance(1500ms);
        got.push_back(co_await c.co_get("k", l.fn()));
      },
      asio::detached);
  drain(io);
  EXPECT_EQ(got, (std::vector<int>{1, 1}));
  EXPECT_EQ(*l.calls, 2);
  EXPECT_EQ(c.peek("k"), 2);
  EXPECT_EQ(c.stats().stale_hits, 1u);
}

// With options, co_get stores its load under the given TTL, and a stale read
// reloads under it too; without, both take the cache's default (1 s here).
TEST_F(Freshness, CoGetWithOptionsLoadsAndReloadsUnderItsTtl) {
  mcache c{io, swr_options(log)};
  counting_loader l;
  std::vector<int> got;
  boost::system::error_code bad_ttl;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        got.push_back(co_await c.co_get("k", l.fn(), cf::get_options{.ttl = 5s}));  // loads 1
        cf::manual_clock::advance(4s);
        got.push_back(co_await c.co_get("k", l.fn(), cf::get_options{.ttl = 5s}));  // fresh under 5 s
        cf::manual_clock::advance(1500ms);
        got.push_back(co_await c.co_get("k", l.fn(), cf::get_options{.ttl = 5s}));  // stale: reloads 2
        try {
          co_await c.co_get("other", l.fn(), cf::get_options{.ttl = 0s});
        } catch (const boost::system::system_error& e) {
          bad_ttl = e.code();
        }
      },
      asio::detached);
  drain(io);
  EXPECT_EQ(got, (std::vector<int>{1, 1, 1}));
  EXPECT_EQ(*l.calls, 2);
  EXPECT_EQ(c.stats().stale_hits, 1u);
  EXPECT_EQ(bad_ttl, cf::error::invalid_timeout);
  cf::manual_clock::advance(4s);  // the reload's value is fresh for 5 s
  EXPECT_EQ(c.peek("k"), 2);
  EXPECT_EQ(c.stats().stale_hits, 1u);

  // The default: the same steps find the value stale after 1 s.
  counting_loader d;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        got.push_back(co_await c.co_get("d", d.fn()));
        cf::manual_clock::advance(1500ms);
        got.push_back(co_await c.co_get("d", d.fn()));  // stale: reloads
      },
      asio::detached);
  drain(io);
  EXPECT_EQ(*d.calls, 2);
  EXPECT_EQ(c.stats().stale_hits, 2u);
  EXPECT_EQ(c.peek("d"), 2);  // reloaded under the default TTL: gone 2 s on
  cf::manual_clock::advance(2100ms);
  EXPECT_EQ(c.peek("d"), std::nullopt);
}

TEST_F(Freshness, ValuesCarryTheirFreshnessThroughATier) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  auto o = swr_options(log);
  o.default_ttl = 60s;
  o.stale_while_revalidate = 30s;
  o.tiers = {t};
  {
    mcache writer{io, o};
    counting_loader l;
    EXPECT_EQ(get(writer, "k", l.fn()).value, 1);
    drain(io);
  }
  ASSERT_EQ(t->puts.size(), 1u);
  EXPECT_EQ(t->puts[0].ttl, 90s);  // kept by the tier for both windows
  auto env = cf::detail::envelope::unwrap(t->data["k"]);
  ASSERT_TRUE(env);
  EXPECT_EQ(env->expires_ms - env->fresh_until_ms, 30'000);

  // Another instance finds the value in the tier already stale: it is served
  // as stale, and the reload that follows does not take it from the tier again.
  const std::int64_t now_ms = cf::detail::envelope::now_ms();
  t->data["k"] = cf::detail::encode_stored(41, now_ms + 20'000, now_ms - 1'000);
  mcache reader{io, o};
  counting_loader l2;
  EXPECT_EQ(get(reader, "k", l2.fn()).value, 41);
  EXPECT_EQ(*l2.calls, 0);
  EXPECT_EQ(get(reader, "k", l2.fn()).value, 41);  // a stale hit in memory: reload
  drain(io);
  EXPECT_EQ(*l2.calls, 1);
  EXPECT_EQ(reader.peek("k"), 1);
  auto s = reader.stats();
  EXPECT_EQ(s.stale_hits, 1u);
  EXPECT_EQ(s.refreshes_succeeded, 1u);
  auto fresh = cf::detail::envelope::unwrap(t->data["k"]);
  ASSERT_TRUE(fresh);
  EXPECT_GT(fresh->fresh_until_ms, now_ms + 50'000);  // written behind with new times

  // A value fresh in the tier is taken by a reload (another instance reloaded it).
  t->data["k"] = cf::detail::encode_stored(77, now_ms + 90'000, now_ms + 60'000);
  cf::manual_clock::advance(61s);  // the reader's copy is stale
  EXPECT_EQ(get(reader, "k", l2.fn()).value, 1);
  drain(io);
  EXPECT_EQ(*l2.calls, 1);
  EXPECT_EQ(reader.peek("k"), 77);
}

TEST_F(Freshness, EnvelopesWithoutAStaleWindowKeepTheOldLayout) {
  const auto plain = cf::detail::encode_stored(5, 1000);
  EXPECT_EQ(plain.size(), cf::detail::envelope::header_size + sizeof(int));
  EXPECT_EQ(plain[5], 0);
  const auto two = cf::detail::encode_stored(5, 1000, 400);
  EXPECT_EQ(two.size(), plain.size() + 8);
  auto env = cf::detail::envelope::unwrap(two);
  ASSERT_TRUE(env);
  EXPECT_EQ(env->fresh_until_ms, 400);
  EXPECT_EQ(env->expires_ms, 1000);
  // A fresh time after the expiry, a truncated header, unknown flags: refused.
  EXPECT_FALSE(cf::detail::envelope::unwrap(cf::detail::encode_stored(5, 1000, 2000)));
  EXPECT_FALSE(cf::detail::envelope::unwrap(two.substr(0, 20)));
  std::string flags = two;
  flags[5] = 3;
  EXPECT_FALSE(cf::detail::envelope::unwrap(flags));
}

TEST_F(Freshness, RefreshAheadReloadsReadKeysBeforeTheyGoStaleAndStopsForUnreadOnes) {
  mcache c{io, cf::cache_options{.default_ttl = 10s, .on_event = log.sink(), .refresh_ahead_lead = 1s}};
  counting_loader l;
  c.refresh_ahead("k", l.fn());
  run_until(io, [&] { return c.peek("k") == 1; });  // absent: loaded at once
  EXPECT_EQ(c.stats().refresh_ahead_keys, 1u);

  cf::manual_clock::advance(9s);  // a lead before the fresh time ends
  run_until(io, [&] { return *l.calls == 2; });
  run_until(io, [&] { return c.peek("k") == 2; });  // the first reload, read or not (the peek reads it)
  cf::manual_clock::advance(9s);
  run_until(io, [&] { return *l.calls == 3; });  // read since: reloaded
  run_until(io, [&] { return c.stats().refreshes_succeeded == 3; });

  cf::manual_clock::advance(9s);  // nobody read the third value
  run_until(io, [&] { return c.stats().refresh_ahead_keys == 0; });
  EXPECT_EQ(log.count(CK::refresh_ahead_stopped), 1u);
  EXPECT_EQ(*l.calls, 3);
  drain(io);  // returns: no timer left behind
  EXPECT_TRUE(io.stopped());
}

TEST_F(Freshness, RefreshAheadRunsAtMostItsCapAtOnce) {
  mcache c{io, cf::cache_options{.default_ttl = 10s, .max_refreshes_ahead = 2}};
  std::vector<std::unique_ptr<gate>> gates;
  for (int i = 0; i < 5; ++i) {
    gates.push_back(std::make_unique<gate>(io.get_executor()));
    c.refresh_ahead("k" + std::to_string(i), gates.back()->fn());
  }
  auto calls = [&] {
    int n = 0;
    for (auto& g : gates) n += g->calls();
    return n;
  };
  io.poll();
  EXPECT_EQ(calls(), 2);
  // One running load resolves at a time; a waiting key takes its place.
  std::vector<bool> resolved(5, false);
  for (int done = 1; done <= 5; ++done) {
    for (int i = 0; i < 5; ++i)
      if (gates[i]->calls() == 1 && !resolved[i]) {
        gates[i]->resolve(9);
        resolved[i] = true;
        break;
      }
    run_until(io, [&] { return calls() == std::min(5, done + 2); });
    io.poll();
    EXPECT_LE(calls() - done, 2);
  }
  run_until(io, [&] { return c.size() == 5; });
  EXPECT_EQ(c.stats().refresh_ahead_keys, 5u);
  EXPECT_TRUE(c.stop_refresh_ahead("k0"));
  EXPECT_FALSE(c.stop_refresh_ahead("k0"));
  for (int i = 1; i < 5; ++i) c.stop_refresh_ahead("k" + std::to_string(i));
  EXPECT_EQ(c.stats().refresh_ahead_keys, 0u);
  drain(io);  // the timer is cancelled with the last key
  EXPECT_THROW(c.refresh_ahead("", gates[0]->fn()), boost::system::system_error);
}

TEST_F(Freshness, ThreadsReadingAStaleKeyStartOneReloadAndAllGetAValue) {
  mcache c{io, cf::cache_options{.default_ttl = 1s, .shards = 4, .stale_while_revalidate = 10s}};
  std::atomic<int> loads{0};
  auto loader = [&]() -> asio::awaitable<int> {
    asio::steady_timer t(co_await asio::this_coro::executor, 2ms);  // the reload takes a while
    co_await t.async_wait(asio::use_awaitable);
    co_return ++loads;
  };
  EXPECT_EQ(get(c, "k", loader).value, 1);
  for (int round = 0; round < 5; ++round) {
    cf::manual_clock::advance(2s);  // stale again
    const int before = loads.load();
    std::atomic<int> done{0};
    asio::thread_pool callers(4);
    for (int i = 0; i < 400; ++i)
      asio::post(callers, [&] {
        c.async_get("k", loader, asio::bind_executor(callers, [&, before](std::exception_ptr e, int v) {
                      EXPECT_FALSE(e);
                      EXPECT_GE(v, before);
                      ++done;
                    }));
      });
    io.restart();
    std::thread runner([&] {
      auto guard = asio::make_work_guard(io);
      while (done < 400 || c.stats().refreshes_succeeded < std::uint64_t(round + 1)) io.run_for(1ms);
    });
    runner.join();
    callers.join();
    EXPECT_EQ(loads.load(), before + 1);  // one reload per expiry
  }
  EXPECT_EQ(c.stats().refreshes, 5u);
}

// A loader whose copies and moves wait for the awaiting reader to be gone.
struct loader_outliving_its_reader {
  waits_for_caller gate;
  std::shared_ptr<std::atomic<int>> loads = std::make_shared<std::atomic<int>>(0);
  asio::awaitable<int> operator()() const { co_return ++*loads; }
};

// A stale read hands its value on before it starts the reload, and the
// awaiting reader may resume on another thread and free the frame holding the
// key and the loader it passed at once: the reload starts from copies taken
// before.
TEST_F(Freshness, AStaleReadByAnAwaitingReaderGoneAtOnceStillStartsItsReload) {
  mcache c{io, cf::cache_options{.default_ttl = 1s, .stale_while_revalidate = 10s}};
  loader_outliving_its_reader loader;
  waits_for_caller::caller_gone = true;  // no wait for the first load
  EXPECT_EQ(get(c, "k", loader).value, 1);
  cf::manual_clock::advance(2s);  // stale
  waits_for_caller::caller_gone = false;
  std::atomic<int> got{0};
  io.restart();
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { got = co_await c.async_get("k", loader, asio::use_awaitable); },
      [](std::exception_ptr) { waits_for_caller::caller_gone = true; });
  auto run = [&] {
    while (!waits_for_caller::caller_gone.load() || c.stats().refreshes_succeeded < 1) io.run_for(1ms);
  };
  std::thread other(run);
  run();
  other.join();
  EXPECT_EQ(got.load(), 1);  // the stale value
  EXPECT_EQ(loader.loads->load(), 2);
  EXPECT_EQ(c.peek("k"), std::optional<int>(2));
}

TEST_F(Freshness, AnEarlyReloadRunsTheLoaderRatherThanTakeBackItsOwnTierCopy) {
  // Real time here: the tier's times are wall-clock times, memory's the cache's clock.
  auto t = std::make_shared<memory_tier>(io.get_executor());
  cf::cache<int> c{io, cf::cache_options{.default_ttl = 2s, .tiers = {t}, .early_refresh_beta = 1000}};
  int loads = 0;
  auto loader = [&]() -> asio::awaitable<int> {
    // The cache times a load with its coarse clock, which a CPU left idle
    // through a short wait may not have moved on: the load lasts until that
    // clock says 5 ms, or the early reload would have no duration to go by.
    const auto start = cf::coarse_steady_clock::now();
    while (cf::coarse_steady_clock::now() - start < 5ms) {
      asio::steady_timer wait(io, 1ms);
      co_await wait.async_wait(asio::use_awaitable);
    }
    co_return ++loads;
  };
  auto read = [&] {
    outcome<> o;
    c.async_get("k", loader, o.handler());
    run_until(io, [&] { return o.done; });
    return o.value;
  };
  EXPECT_EQ(read(), 1);
  drain(io);  // written behind to the tier
  ASSERT_EQ(t->puts.size(), 1u);
  // With delta about 5 ms and beta 1000, a read 2 s before the expiry refreshes
  // early with probability exp(-2000 / 5000): a few reads start one.
  for (int i = 0; i < 200 && c.stats().early_refreshes == 0; ++i) EXPECT_EQ(read(), 1);
  ASSERT_EQ(c.stats().early_refreshes, 1u);
  drain(io);
  EXPECT_EQ(loads, 2);  // the tier held only the value being replaced
  EXPECT_EQ(c.stats().l2_hits, 0u);
  EXPECT_EQ(c.peek("k"), 2);
}

TEST_F(Freshness, AFailedEarlyReloadKeepsTheFreshValueEvenWithoutStaleIfError) {
  mcache c{io, cf::cache_options{.default_ttl = 10s, .negative_ttl = 10s, .on_event = log.sink(),
                                 .stale_if_error = false, .early_refresh_beta = 1000}};
  int calls = 0;
  auto loader = [&]() -> asio::awaitable<int> {
    cf::manual_clock::advance(100ms);
    if (++calls > 1) throw std::runtime_error("db down");
    co_return 1;
  };
  EXPECT_EQ(get(c, "k", loader).value, 1);
  for (int i = 0; i < 200 && c.stats().early_refreshes == 0; ++i) EXPECT_EQ(get(c, "k", loader).value, 1);
  drain(io);
  EXPECT_EQ(c.stats().refreshes_failed, 1u);
  auto after = get(c, "k", loader);  // neither dropped nor replaced by the failure
  EXPECT_FALSE(after.error);
  EXPECT_EQ(after.value, 1);
}

TEST_F(Freshness, AFailingReloadAheadWithNoLeadIsRetriedAfterAPauseNotAtOnce) {
  mcache c{io, cf::cache_options{.default_ttl = 10s, .stale_while_revalidate = 10s, .refresh_ahead_lead = 0s}};
  int calls = 0;
  c.refresh_ahead("k", [&]() -> asio::awaitable<int> {
    if (++calls > 1) throw std::runtime_error("db down");
    co_return 1;
  });
  run_until(io, [&] { return c.peek("k") == 1; });
  cf::manual_clock::advance(10s);  // due; the key was read (the peek above)
  run_until(io, [&] { return c.stats().refreshes_failed == 1; });
  EXPECT_EQ(c.peek("k"), 1);  // stale, kept
  io.run_for(20ms);           // no time passes on the cache's clock: no retry
  EXPECT_EQ(calls, 2);
  cf::manual_clock::advance(100ms);
  run_until(io, [&] { return calls == 3; });
  c.stop_refresh_ahead("k");
}

TEST_F(Freshness, RegisteringAKeyAgainGivesItOneMoreReloadReadOrNot) {
  mcache c{io, cf::cache_options{.default_ttl = 10s, .refresh_ahead_lead = 1s}};
  counting_loader l;
  c.refresh_ahead("k", l.fn());
  run_until(io, [&] { return c.stats().refreshes_succeeded == 1; });
  c.refresh_ahead("k", l.fn());   // nobody read it, but registered again
  cf::manual_clock::advance(9s);  // due
  run_until(io, [&] { return c.stats().refreshes_succeeded == 2; });
  EXPECT_EQ(*l.calls, 2);
  cf::manual_clock::advance(9s);  // due again, unread: stopped
  run_until(io, [&] { return c.stats().refresh_ahead_keys == 0; });
  EXPECT_EQ(*l.calls, 2);
}

TEST_F(Freshness, ACacheDestroyedWithReloadsInFlightLeavesNothingBehind) {
  // Under LeakSanitizer: the reloads' completions, destroyed unrun with their
  // stopped io_context, must not keep the cache's state alive.
  {
    asio::io_context ctx;
    gate stuck{ctx.get_executor()};
    {
      mcache c{ctx, cf::cache_options{.default_ttl = 1s, .stale_while_revalidate = 10s}};
      counting_loader l;
      bool first = false;
      c.async_get("a", l.fn(), [&](std::exception_ptr, int) { first = true; });
      run_until(ctx, [&] { return first; });
      c.refresh_ahead("b", stuck.fn());
      cf::manual_clock::advance(2s);
      bool stale = false;
      c.async_get("a", stuck.fn(), [&](std::exception_ptr, int) { stale = true; });
      run_until(ctx, [&] { return stale && stuck.calls() == 2; });
      ctx.stop();
    }
  }
  SUCCEED();
}

TEST_F(Freshness, ImpossibleOptionsAreRefused) {
  auto refused = [&](cf::cache_options o) {
    try {
      mcache c{io, std::move(o)};
    } catch (const boost::system::system_error& e) {
      return e.code() == cf::error::invalid_option;
    }
    return false;
  };
  EXPECT_TRUE(refused({.stale_while_revalidate = -1s}));
  EXPECT_TRUE(refused({.refresh_timeout = 0s}));
  EXPECT_TRUE(refused({.early_refresh_beta = -1}));
  EXPECT_TRUE(refused({.early_refresh_beta = std::nan("")}));
  EXPECT_TRUE(refused({.ttl_jitter = 1.0}));
  EXPECT_TRUE(refused({.ttl_jitter = -0.1}));
  EXPECT_TRUE(refused({.refresh_ahead_lead = -1s}));
  EXPECT_TRUE(refused({.max_refreshes_ahead = 0}));
  EXPECT_FALSE(refused({.stale_while_revalidate = 1s, .early_refresh_beta = 2, .ttl_jitter = 0.5}));
}

TEST_F(Freshness, ARefusedOptionIsNamedAsTheCacheCallsIt) {
  auto message = [&](cf::cache_options o) -> std::string {
    try {
      mcache c{io, std::move(o)};
    } catch (const boost::system::system_error& e) {
      EXPECT_EQ(e.code(), cf::error::invalid_option);
      return e.what();
    }
    return "accepted";
  };
  EXPECT_NE(message({.max_loads = 0}).find("cache_options::max_loads"), std::string::npos);
  EXPECT_NE(message({.load_timeout = 0s}).find("cache_options::load_timeout"), std::string::npos);
  EXPECT_NE(message({.load_timeout = -1s}).find("cache_options::load_timeout"), std::string::npos);
  EXPECT_NE(message({.max_key_length = 0}).find("cache_options::max_key_length"), std::string::npos);
  EXPECT_NE(message({.shards = 0}).find("cache_options::shards"), std::string::npos);
}

TEST_F(Freshness, PrometheusTextHasTheFreshnessCounters) {
  mcache c{io, swr_options(log)};
  counting_loader l;
  get(c, "k", l.fn());
  cf::manual_clock::advance(1500ms);
  get(c, "k", l.fn());
  drain(io);
  const std::string text = cf::to_prometheus(c.stats());
  EXPECT_NE(text.find("cacheflight_stale_hits_total 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("cacheflight_refreshes_succeeded_total 1\n"), std::string::npos) << text;
}

}  // namespace
