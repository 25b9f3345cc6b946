// A cache with tiers behind it, using a tier written here the way a user would
// write one: the lookup order, fills with the remaining lifetime, write-behind,
// corrupt bytes, failing tiers, invalidation and cancellation.
#include "memory_tier.hpp"
#include "test_support.hpp"

#include <algorithm>
#include <charconv>
#include <map>

using namespace cftest;

namespace {

using CK = cf::cache_event_kind;
using error_code = boost::system::error_code;

struct tier_log {
  std::vector<std::tuple<CK, std::string, std::string>> events;  // kind, key, tier
  cf::cache_event_sink sink() {
    return [this](const cf::cache_event& e) { events.emplace_back(e.kind, std::string(e.key), std::string(e.tier)); };
  }
  std::size_t count(CK k) const {
    std::size_t n = 0;
    for (auto& e : events) n += std::get<0>(e) == k;
    return n;
  }
};

std::string stored(int v, std::chrono::milliseconds ttl) {
  return cf::detail::encode_stored(v, cf::detail::envelope::now_ms() + ttl.count());
}

class Tier : public ::testing::Test {
 protected:
  void SetUp() override { cf::manual_clock::reset(); }

  cf::cache_options with(std::vector<std::shared_ptr<cf::tier>> tiers) {
    return cf::cache_options{.max_entries = 100, .default_ttl = 60s, .on_event = log.sink(), .tiers = std::move(tiers)};
  }

  // A loader that counts its calls and returns `v`.
  auto loader(int v) {
    return [this, v]() -> asio::awaitable<int> {
      ++loads;
      co_return v;
    };
  }

  template <class C>
  outcome<> get(C& c, std::string key, int v) {
    outcome<> o;
    c.async_get(std::move(key), loader(v), o.handler());
    drain(io);
    return o;
  }

  // Starts a get of "k" whose only caller leaves when `sig` is emitted, and
  // runs until `t` holds its read.
  template <class C>
  void get_held(C& c, memory_tier& t, asio::cancellation_signal& sig, outcome<>& o) {
    c.async_get("k", loader(1), asio::bind_cancellation_slot(sig.slot(), o.handler()));
    run_until(io, [&] { return t.log.size() == 1; });
  }

  asio::io_context io;
  tier_log log;
  int loads = 0;
};

using tcache = cf::cache<int, cf::manual_clock>;

TEST_F(Tier, AMemoryMissIsAnsweredByTheTierWithoutTheLoader) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  t->data["user:1"] = stored(7, 60s);
  tcache c{io, with({t})};

  auto o = get(c, "user:1", 99);
  ASSERT_FALSE(o.error);
  EXPECT_EQ(o.value, 7);
  EXPECT_EQ(loads, 0);
  EXPECT_EQ(c.peek("user:1"), 7);  // the tier's value filled memory
  auto s = c.stats();
  ASSERT_EQ(s.tiers.size(), 1u);
  EXPECT_EQ(s.tiers[0].name, "memory");
  EXPECT_EQ(s.l2_hits, 1u);
  EXPECT_EQ(s.l2_misses, 0u);
  EXPECT_EQ(s.loads, 0u);
  EXPECT_EQ(log.count(CK::tier_hit), 1u);
  EXPECT_EQ(log.count(CK::load_started), 0u);
}

TEST_F(Tier, ATierMissRunsTheLoaderAndWritesTheValueBehindWithItsTtl) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  tcache c{io, with({t})};

  auto o = get(c, "user:2", 42);
  EXPECT_EQ(o.value, 42);
  EXPECT_EQ(loads, 1);
  ASSERT_EQ(t->puts.size(), 1u);
  EXPECT_EQ(t->puts[0].key, "user:2");
  EXPECT_EQ(t->puts[0].ttl, 60s);
  std::chrono::milliseconds left{};
  EXPECT_EQ(cf::detail::decode_stored<int>(t->puts[0].bytes, cf::detail::envelope::now_ms(), &left), 42);
  EXPECT_GT(left, 59s);
  EXPECT_LE(left, 60s);
  EXPECT_EQ(c.stats().l2_misses, 1u);
  EXPECT_EQ(log.count(CK::tier_miss), 1u);

  // A per-call TTL reaches the tier too; no_expiry is stored without one.
  outcome<> p;
  c.async_get("user:3", cf::get_options{.ttl = 1500ms}, loader(3), p.handler());
  drain(io);
  c.async_set("user:4", 4, cf::no_expiry, [](std::exception_ptr) {});
  drain(io);
  ASSERT_EQ(t->puts.size(), 3u);
  EXPECT_EQ(t->puts[1].ttl, 1500ms);
  EXPECT_EQ(t->puts[2].ttl, std::chrono::milliseconds::max());
  EXPECT_EQ(cf::detail::envelope::unwrap(t->puts[2].bytes)->expires_ms, 0);
}

TEST_F(Tier, ATierHitFillsMemoryWithTheRemainingLifetime) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  t->data["k"] = stored(5, 10s);
  tcache c{io, with({t})};  // default_ttl is 60 s: the tier's 10 s must win

  EXPECT_EQ(get(c, "k", 0).value, 5);
  cf::manual_clock::advance(9s);
  EXPECT_EQ(c.peek("k"), 5);
  cf::manual_clock::advance(1500ms);
  EXPECT_EQ(c.peek("k"), std::nullopt);
}

TEST_F(Tier, CorruptBytesAreAMissWithAnEventAndTheLoaderRuns) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  t->data["a"] = "not an envelope";
  t->data["b"] = cf::detail::encode_stored(std::string("three bytes"), 0);  // wrong size for an int
  std::string truncated = stored(1, 60s);
  truncated.pop_back();
  t->data["c"] = truncated;
  t->data["d"] = stored(1, -1000ms);  // expired: a plain miss, not corrupt
  tcache c{io, with({t})};

  for (const char* k : {"a", "b", "c", "d"}) EXPECT_EQ(get(c, k, 8).value, 8) << k;
  EXPECT_EQ(loads, 4);
  auto s = c.stats();
  EXPECT_EQ(s.tiers[0].corrupt, 3u);
  EXPECT_EQ(s.l2_misses, 4u);
  EXPECT_EQ(s.l2_hits, 0u);
  EXPECT_EQ(log.count(CK::tier_corrupt), 3u);
  // The loaded value replaced the garbage.
  EXPECT_EQ(cf::detail::decode_stored<int>(t->data["a"], cf::detail::envelope::now_ms(), nullptr), 8);
}

TEST_F(Tier, AFailingTierIsSkippedCountedAndReported) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  t->fail = true;
  tcache c{io, with({t})};

  auto o = get(c, "x", 11);
  ASSERT_FALSE(o.error);
  EXPECT_EQ(o.value, 11);
  EXPECT_EQ(loads, 1);
  auto s = c.stats();
  EXPECT_EQ(s.l2_errors, 2u);  // the read and the write-behind
  EXPECT_EQ(log.count(CK::tier_error), 2u);
  EXPECT_EQ(std::get<2>(log.events.back()), "memory");
}

TEST_F(Tier, TiersAreAskedInOrderAndAHitFillsTheOnesBefore) {
  auto l2 = std::make_shared<memory_tier>(io.get_executor(), "l2");
  auto l3 = std::make_shared<memory_tier>(io.get_executor(), "l3");
  l3->data["k"] = stored(3, 30s);
  tcache c{io, with({l2, l3})};

  EXPECT_EQ(get(c, "k", 0).value, 3);
  EXPECT_EQ(loads, 0);
  EXPECT_EQ(l2->log, (std::vector<std::string>{"get k", "put k"}));
  EXPECT_EQ(l3->log, (std::vector<std::string>{"get k"}));
  ASSERT_EQ(l2->puts.size(), 1u);
  EXPECT_EQ(l2->puts[0].bytes, l3->data["k"]);
  EXPECT_LE(l2->puts[0].ttl, 30s);
  EXPECT_GT(l2->puts[0].ttl, 29s);
  auto s = c.stats();
  EXPECT_EQ(s.tiers[0].misses, 1u);
  EXPECT_EQ(s.tiers[1].hits, 1u);
}

TEST_F(Tier, EraseAndClearReachEveryTier) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  tcache c{io, with({t})};
  get(c, "a", 1);
  get(c, "b", 2);
  ASSERT_EQ(t->data.size(), 2u);

  std::optional<std::pair<std::exception_ptr, bool>> erased;
  c.async_erase("a", [&](std::exception_ptr e, bool b) { erased.emplace(e, b); });
  EXPECT_FALSE(erased);  // completes after the tier acknowledged
  drain(io);
  ASSERT_TRUE(erased);
  EXPECT_FALSE(erased->first);
  EXPECT_TRUE(erased->second);
  EXPECT_FALSE(t->data.contains("a"));

  // Another instance's value in the tier only: erase reaches it although memory lacks it.
  t->data["z"] = stored(26, 60s);
  erased.reset();
  c.async_erase("z", [&](std::exception_ptr e, bool b) { erased.emplace(e, b); });
  drain(io);
  EXPECT_FALSE(erased->second);
  EXPECT_FALSE(t->data.contains("z"));

  bool cleared = false;
  c.async_clear([&](std::exception_ptr e) { cleared = !e; });
  drain(io);
  EXPECT_TRUE(cleared);
  EXPECT_TRUE(t->data.empty());
  EXPECT_EQ(c.size(), 0u);
}

TEST_F(Tier, ATierThatCannotEraseReportsItAndMemoryIsErasedAnyway) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  tcache c{io, with({t})};
  get(c, "a", 1);
  t->fail = true;
  outcome<bool> o;
  c.async_erase("a", o.handler());
  drain(io);
  EXPECT_EQ(o.code(), cf::error::tier_unavailable);
  EXPECT_TRUE(o.value);
  EXPECT_EQ(c.peek("a"), std::nullopt);

  std::exception_ptr cleared;
  c.async_clear([&](std::exception_ptr e) { cleared = e; });
  drain(io);
  ASSERT_TRUE(cleared);
  EXPECT_THROW(std::rethrow_exception(cleared), boost::system::system_error);
}

TEST_F(Tier, AnEraseDuringALoadKeepsTheLoadedValueOutOfTheTiers) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  tcache c{io, with({t})};
  gate g{io.get_executor()};
  outcome<> o;
  c.async_get("k", g.fn(), o.handler());
  run_until(io, [&] { return g.calls() == 1; });
  c.async_erase("k", [](std::exception_ptr, bool) {});
  g.resolve(5);
  drain(io);
  EXPECT_EQ(o.value, 5);  // the caller gets it
  EXPECT_FALSE(t->data.contains("k"));
  EXPECT_TRUE(t->puts.empty());
}

TEST_F(Tier, AnEraseDuringATierReadKeepsTheReadValueOutOfTheTiersBefore) {
  auto l2 = std::make_shared<memory_tier>(io.get_executor(), "l2");
  auto l3 = std::make_shared<memory_tier>(io.get_executor(), "l3");
  l3->data["k"] = stored(3, 30s);
  l3->hold_gets = true;
  tcache c{io, with({l2, l3})};
  outcome<> o;
  c.async_get("k", loader(0), o.handler());
  run_until(io, [&] { return l3->log.size() == 1; });  // l3 is reading
  bool erased = false;
  c.async_erase("k", [&](std::exception_ptr e, bool) { erased = !e; });
  run_until(io, [&] { return erased; });
  l3->release();  // the read returns what it read before the erase
  drain(io);
  EXPECT_EQ(o.value, 3);          // the caller gets it
  EXPECT_TRUE(l2->puts.empty());  // but no tier is filled with it
  EXPECT_EQ(c.peek("k"), std::nullopt);
}

// A value type whose codec refuses negative numbers.
struct balance {
  int cents = 0;
};

}  // namespace

template <>
struct cacheflight::codec<balance> {
  static std::string encode(const balance& b) {
    if (b.cents < 0) throw std::invalid_argument("negative balance");
    return std::to_string(b.cents);
  }
  static std::optional<balance> decode(std::string_view s) {
    int v = 0;
    auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (r.ec != std::errc{} || r.ptr != s.data() + s.size()) return std::nullopt;
    return balance{v};
  }
};

namespace {

TEST_F(Tier, AValueTheCodecRefusesFailsTheSetButStaysInMemory) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  cf::cache<balance, cf::manual_clock> c{io, with({t})};
  std::exception_ptr err;
  c.async_set("b", balance{-5}, [&](std::exception_ptr e) { err = e; });
  drain(io);
  ASSERT_TRUE(err);
  EXPECT_THROW(std::rethrow_exception(err), std::invalid_argument);
  EXPECT_EQ(c.peek("b")->cents, -5);
  EXPECT_TRUE(t->puts.empty());
  EXPECT_EQ(c.stats().l2_errors, 1u);

  c.async_set("g", balance{5}, [&](std::exception_ptr e) { err = e; });
  drain(io);
  EXPECT_FALSE(err);
  ASSERT_EQ(t->puts.size(), 1u);
  EXPECT_EQ(cf::detail::decode_stored<balance>(t->puts[0].bytes, cf::detail::envelope::now_ms(), nullptr)->cents, 5);
}

TEST_F(Tier, CancellingTheLastCallerDuringATierReadCancelsTheLoad) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  t->hold_gets = true;
  tcache c{io, with({t})};
  asio::cancellation_signal sig;
  outcome<> o;
  get_held(c, *t, sig, o);
  sig.emit(asio::cancellation_type::terminal);
  drain(io);
  EXPECT_EQ(o.code(), asio::error::operation_aborted);
  EXPECT_EQ(loads, 0);
  EXPECT_EQ(c.stats().loads_in_flight, 0u);
  EXPECT_EQ(c.stats().l2_errors, 0u);  // a cancelled read is not the tier's failure

  // The key is not wedged: the next caller loads.
  t->hold_gets = false;
  EXPECT_EQ(get(c, "k", 2).value, 2);
}

TEST_F(Tier, ATierReadCompletingAfterItsLoadWasCancelledAsksNoFurtherTierAndStartsNoLoader) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  auto t2 = std::make_shared<memory_tier>(io.get_executor(), "second");
  t2->data["k"] = stored(5, 60s);
  t->hold_gets = true;
  t->ignore_cancel = true;
  tcache c{io, with({t, t2})};
  asio::cancellation_signal sig;
  outcome<> o;
  get_held(c, *t, sig, o);
  sig.emit(asio::cancellation_type::terminal);
  run_until(io, [&] { return o.done; });  // the read is still held: the context has work
  EXPECT_EQ(o.code(), asio::error::operation_aborted);
  t->release();  // a miss, after the load was cancelled
  drain(io);
  EXPECT_EQ(loads, 0);
  EXPECT_EQ(log.count(CK::load_started), 0u);
  EXPECT_TRUE(t2->log.empty());
  EXPECT_FALSE(c.peek("k"));
  EXPECT_EQ(c.stats().loads_in_flight, 0u);
  EXPECT_EQ(c.stats().l2_misses, 1u);
  EXPECT_EQ(c.stats().l2_errors, 0u);

  t->hold_gets = false;
  EXPECT_EQ(get(c, "k", 2).value, 5);  // not wedged: the second tier answers
  EXPECT_EQ(loads, 0);
}

TEST_F(Tier, ATierThatThrowsInsteadOfReadingFailsTheLoadWithItsException) {
  auto t1 = std::make_shared<memory_tier>(io.get_executor(), "first");
  auto t2 = std::make_shared<memory_tier>(io.get_executor(), "second");
  t2->throw_on_get = true;
  tcache c{io, with({t1, t2})};
  // The second tier is asked from the first one's completion.
  outcome<> a = get(c, "k", 1);
  ASSERT_TRUE(a.done);
  ASSERT_TRUE(a.error);
  EXPECT_THROW(std::rethrow_exception(a.error), std::runtime_error);
  EXPECT_EQ(loads, 0);
  EXPECT_EQ(c.stats().loads_in_flight, 0u);
  EXPECT_FALSE(c.peek("k"));
  // The first tier throwing: asked as the load starts.
  t1->throw_on_get = true;
  outcome<> b = get(c, "k", 1);
  ASSERT_TRUE(b.error);
  EXPECT_THROW(std::rethrow_exception(b.error), std::runtime_error);

  t1->throw_on_get = t2->throw_on_get = false;
  EXPECT_EQ(get(c, "k", 2).value, 2);  // not wedged
}

TEST_F(Tier, ImpossibleTierOptionsAreRejected) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  auto code_of = [](auto f) {
    try {
      f();
    } catch (const boost::system::system_error& e) {
      return e.code();
    }
    return error_code{};
  };
  // No codec for the value type.
  EXPECT_EQ(code_of([&] { cf::cache<std::vector<int>> c{io, with({t})}; }), cf::error::invalid_option);
  EXPECT_EQ(code_of([&] { tcache c{io, with({nullptr})}; }), cf::error::invalid_option);
}

TEST_F(Tier, StatsAndPrometheusCarryTheTiers) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  tcache c{io, with({t})};
  get(c, "a", 1);
  const std::string text = cf::to_prometheus(c.stats(), "app", "cache=\"users\"");
  EXPECT_NE(text.find("app_tier_misses_total{cache=\"users\",tier=\"memory\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("app_tier_breaker_open{cache=\"users\",tier=\"memory\"} 0\n"), std::string::npos);
}

TEST(TierPrometheus, TierNamesAreEscapedAndNoTwoSamplesShareTheirLabels) {
  cf::cache_stats s;
  for (const char* name : {"redis", "redis", "a\"b\\c\nd", "redis#2", "redis"}) {
    cf::tier_stats t;
    t.name = name;
    t.hits = s.tiers.size();
    s.tiers.push_back(t);
  }
  const std::string text = cf::to_prometheus(s, "app");
  EXPECT_NE(text.find("app_tier_hits_total{tier=\"redis\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("app_tier_hits_total{tier=\"redis#2\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("app_tier_hits_total{tier=\"a\\\"b\\\\c\\nd\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("app_tier_hits_total{tier=\"redis#2#2\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("app_tier_hits_total{tier=\"redis#3\"} 4\n"), std::string::npos) << text;
  // Every sample line of a family has labels of its own.
  std::vector<std::string> seen;
  std::size_t at = 0;
  while ((at = text.find("app_tier_hits_total{", at)) != std::string::npos) {
    const std::size_t end = text.find('}', at);
    seen.push_back(text.substr(at, end - at));
    at = end;
  }
  ASSERT_EQ(seen.size(), 5u);
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::adjacent_find(seen.begin(), seen.end()), seen.end());
  // No raw line feed inside a sample: every line is a comment or a sample.
  std::size_t line = 0;
  while (line < text.size()) {
    const std::size_t nl = text.find('\n', line);
    const std::string l = text.substr(line, nl - line);
    EXPECT_TRUE(l.starts_with("# ") || l.starts_with("app_")) << l;
    line = nl + 1;
  }
}

}  // namespace

TEST_F(Tier, ALoadAfterACompletedEraseNeverReadsAnOlderLoadsLateWrite) {
  // An older load stored its value, then an erase completed before that
  // load's write reached the tier; a caller after the erase starts a fresh
  // load, which must not pick the older value up from the tier.
  auto t = std::make_shared<memory_tier>(io.get_executor());
  tcache c{io, with({t})};
  outcome<> first, fresh;
  bool erased = false;
  t->before_put = [&] {
    // The older load is between its store and its write: the erase overtakes it.
    c.async_erase("k", [&](std::exception_ptr, bool) { erased = true; });
    run_until(io, [&] { return erased; });
  };
  t->after_put = [&] {
    // The older value reached the tier after the erase; its load has not
    // rechecked yet. A caller after the erase:
    c.async_get("k", loader(2), fresh.handler());
    run_until(io, [&] { return fresh.done; });
  };
  c.async_get("k", loader(1), first.handler());
  drain(io);
  EXPECT_EQ(first.value, 1);
  EXPECT_EQ(fresh.value, 2);    // loaded, not the older value from the tier
  EXPECT_EQ(loads, 2);
  EXPECT_EQ(c.peek("k"), 2);
  // The tier holds the fresh value or nothing (the older load's recheck may
  // erase the key once more), never the older value.
  if (t->data.count("k")) {
    EXPECT_EQ(cf::detail::decode_stored<int>(t->data["k"], cf::detail::envelope::now_ms(), nullptr), 2);
  }
}

namespace {

TEST_F(Tier, ALoadedValueIsWrittenAsAFillAndAnExplicitSetAsAPut) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  tcache c{io, with({t})};
  get(c, "k", 1);
  EXPECT_EQ(t->fills, 1);
  c.async_set("k", 2, [](std::exception_ptr) {});
  drain(io);
  EXPECT_EQ(t->fills, 1);
  EXPECT_EQ(t->puts.size(), 2u);
}

TEST_F(Tier, AChangeReportedByATierDropsTheKeyFromMemoryOnlyAndVoidsItsLoad) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  tcache c{io, with({t})};
  get(c, "a", 1);
  get(c, "b", 2);
  ASSERT_EQ(c.peek("a"), 1);
  t->report_change("a");
  EXPECT_FALSE(c.peek("a"));
  EXPECT_EQ(c.peek("b"), 2);
  EXPECT_TRUE(t->data.contains("a"));  // the tier is not written: the change came from it
  EXPECT_EQ(std::count(t->log.begin(), t->log.end(), "erase a"), 0);
  EXPECT_EQ(c.stats().invalidations_received, 1u);
  EXPECT_EQ(log.count(CK::invalidated), 1u);
  // A key memory does not hold is ignored, and not counted.
  t->report_change("nobody");
  t->report_change("");
  EXPECT_EQ(c.stats().invalidations_received, 1u);

  // A load in flight when the change is reported neither stores its value nor
  // writes it to the tier, and a later caller starts a load of its own.
  t->hold_gets = true;
  outcome<> first, second;
  c.async_get("c", loader(3), first.handler());
  run_until(io, [&] { return t->log.back() == "get c"; });  // the tier is reading
  t->report_change("c");
  t->hold_gets = false;
  c.async_get("c", loader(4), second.handler());
  t->release();
  drain(io);
  EXPECT_EQ(first.value, 3);
  EXPECT_EQ(second.value, 4);
  EXPECT_EQ(c.peek("c"), 4);
  EXPECT_EQ(t->puts.back().key, "c");
  std::chrono::milliseconds left{};
  EXPECT_EQ(cf::detail::decode_stored<int>(t->data["c"], cf::detail::envelope::now_ms(), &left), 4);
}

TEST_F(Tier, AChangeReportedByOneTierErasesTheKeyFromTheOthers) {
  auto shared = std::make_shared<memory_tier>(io.get_executor(), "shared");
  auto local = std::make_shared<memory_tier>(io.get_executor(), "local");
  tcache c{io, with({shared, local})};
  get(c, "a", 1);
  ASSERT_TRUE(local->data.contains("a"));
  shared->report_change("a");
  drain(io);
  EXPECT_FALSE(local->data.contains("a"));  // the local copy would have come back on the next miss
  EXPECT_TRUE(shared->data.contains("a"));  // the reporting tier holds the new value: not written
  EXPECT_EQ(std::count(shared->log.begin(), shared->log.end(), "erase a"), 0);
}

TEST_F(Tier, ALostLinkReportedByATierEmptiesMemoryOnly) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  tcache c{io, with({t})};
  get(c, "a", 1);
  get(c, "b", 2);
  t->report_lost_link();
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(t->data.size(), 2u);
  EXPECT_EQ(c.stats().memory_flushes, 1u);
  EXPECT_EQ(log.count(CK::memory_flushed), 1u);
  // Served again from the tier, without the loader.
  const int before = loads;
  EXPECT_EQ(get(c, "a", 9).value, 1);
  EXPECT_EQ(loads, before);
}

TEST_F(Tier, ATierOutlivingItsCacheReportsToNobody) {
  auto t = std::make_shared<memory_tier>(io.get_executor());
  {
    tcache c{io, with({t})};
    get(c, "a", 1);
  }
  drain(io);
  t->report_change("a");
  t->report_lost_link();
  // A cache made afterwards is told; the one destroyed is no longer listed.
  tcache d{io, with({t})};
  get(d, "a", 1);
  t->report_change("a");
  EXPECT_EQ(d.stats().invalidations_received, 1u);
  EXPECT_FALSE(d.peek("a"));
}

}  // namespace
