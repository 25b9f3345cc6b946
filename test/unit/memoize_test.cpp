// Memoized functions, invalidating mutations and tags: keys, coalescing,
// invalidation in memory and tiers, tags shared through a store, every
// completion token.
#include <cacheflight/memoize.hpp>

#include "memory_tier.hpp"
#include "test_support.hpp"

#include <algorithm>

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <future>
#include <thread>

using namespace cftest;

namespace {

enum class color : std::uint8_t { red = 1, blue = 7 };

struct point {
  int x, y;
};

// Written as its text, whatever it is.
struct marked {
  std::string text;
};

}  // namespace

template <>
struct cacheflight::key_encoder<marked> {
  static void append(std::string& out, const marked& m) { out += m.text; }
};

template <>
struct cacheflight::key_encoder<point> {
  static void append(std::string& out, const point& p) {
    out += "pt:";
    append_key_part(out, p.x);
    out += '/';
    append_key_part(out, p.y);
  }
};

namespace {

class Memoize : public ::testing::Test {
 protected:
  asio::io_context io;
  cf::cache<int> c{io};
  int runs = 0;
  // A function that counts its runs and returns its argument times ten.
  std::function<asio::awaitable<int>(int)> times_ten = [this](int x) -> asio::awaitable<int> {
    ++runs;
    co_return x * 10;
  };
};

TEST(MemoKeys, FollowTheDocumentedRule) {
  EXPECT_EQ(cf::make_key("f"), "f()");
  EXPECT_EQ(cf::make_key("f", 42, -7, std::uint64_t{18446744073709551615ULL}),
            "f(42,-7,18446744073709551615)");
  EXPECT_EQ(cf::make_key("f", std::string("a\"b\\c"), std::string_view("x"), "lit"), R"(f("a\"b\\c","x","lit"))");
  EXPECT_EQ(cf::make_key("f", true, false, color::blue), "f(true,false,7)");
  EXPECT_EQ(cf::make_key("f", std::optional<int>{}, std::optional<int>{3}, std::nullopt), "f(null,3,null)");
  EXPECT_EQ(cf::make_key("f", std::tuple{1, std::string("a")}, std::pair{2, 3}), R"(f((1,"a"),(2,3)))");
  EXPECT_EQ(cf::make_key("f", std::vector<int>{1, 2}, std::vector<std::string>{}), "f([1,2],[])");
  EXPECT_EQ(cf::make_key("f", 0.5, 0.1), "f(0.5,0.1)");
  EXPECT_EQ(cf::make_key("f", point{1, 2}), "f(pt:1/2)");
  // A string never reads as a number, null or a list.
  EXPECT_NE(cf::make_key("f", std::string("1")), cf::make_key("f", 1));
  EXPECT_NE(cf::make_key("f", std::string("null")), cf::make_key("f", std::optional<int>{}));
  EXPECT_NE(cf::make_key("f", std::string("a,b")), cf::make_key("f", std::string("a"), std::string("b")));
}

TEST(MemoKeys, AnOptionalHoldingWhatIsWrittenNullIsMarkedAndOthersKeepTheirText) {
  using oo = std::optional<std::optional<int>>;
  EXPECT_EQ(cf::make_key("f", oo{}, oo{std::optional<int>{}}, oo{5}), "f(null,?null,5)");
  using oc = std::optional<const char*>;
  EXPECT_EQ(cf::make_key("f", oc{}, oc{nullptr}, oc{"x"}), R"(f(null,?null,"x"))");
  using ooo = std::optional<oo>;
  EXPECT_EQ(cf::make_key("f", ooo{}, ooo{oo{}}, ooo{oo{std::optional<int>{}}}, ooo{oo{1}}),
            "f(null,?null,??null,1)");
  // The same inside a range: [null] and [?null] differ.
  EXPECT_NE(cf::make_key("f", std::vector<oo>{oo{}}), cf::make_key("f", std::vector<oo>{oo{std::optional<int>{}}}));
  // An optional whose value is not written null keeps that value's text.
  EXPECT_EQ(cf::make_key("f", std::optional<std::string>{"s"}), R"(f("s"))");
  EXPECT_EQ(cf::make_key("f", std::optional<std::string>{"null"}), R"(f("null"))");
  // The same for texts of a key_encoder of one's own.
  EXPECT_EQ(cf::make_key("f", std::optional<marked>{marked{"?1"}}), "f(?1)");
  EXPECT_EQ(cf::make_key("f", std::optional<marked>{marked{"null"}}), "f(?null)");
  EXPECT_EQ(cf::make_key("f", std::optional<marked>{marked{"??null"}}), "f(???null)");
  using om = std::optional<marked>;
  using oom = std::optional<om>;
  EXPECT_EQ(cf::make_key("f", oom{}, oom{om{}}, oom{om{marked{"null"}}}, oom{om{marked{"?null"}}}),
            "f(null,?null,??null,???null)");
}

#if defined(__SIZEOF_INT128__)
// Built with GNU extensions (see test/CMakeLists.txt), where 128-bit integers are integers.
__extension__ typedef __int128 i128;
__extension__ typedef unsigned __int128 u128;
static_assert(std::is_integral_v<i128>, "memoize_test.cpp is built with -std=gnu++20");
TEST(MemoKeys, A128BitIntegerIsWrittenWhole) {
  const i128 big = (i128(1) << 64) + 7;
  EXPECT_EQ(cf::make_key("f", big), "f(18446744073709551623)");
  EXPECT_EQ(cf::make_key("f", -big), "f(-18446744073709551623)");
  EXPECT_NE(cf::make_key("f", big), cf::make_key("f", i128(7)));
  const u128 top = ~u128(0);
  EXPECT_EQ(cf::make_key("f", top), "f(340282366920938463463374607431768211455)");
  const i128 lowest = -i128(top >> 1) - 1;
  EXPECT_EQ(cf::make_key("f", lowest), "f(-170141183460469231731687303715884105728)");
  EXPECT_EQ(cf::make_key("f", i128(0)), "f(0)");
}
#endif

TEST_F(Memoize, FirstCallLoadsSecondHitsAndStatsCountBoth) {
  cf::memoized<int(int)> f{c, "times_ten", times_ten};
  EXPECT_EQ(await(io, f(4)), 40);
  EXPECT_EQ(await(io, f(4)), 40);
  EXPECT_EQ(await(io, f(5)), 50);
  EXPECT_EQ(runs, 2);
  auto s = f.stats();
  EXPECT_EQ(s.calls, 3u);
  EXPECT_EQ(s.loads, 2u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_DOUBLE_EQ(s.hit_rate(), 1.0 / 3.0);
  EXPECT_EQ(f.key(4), "times_ten(4)");
  EXPECT_EQ(c.size(), 2u);
}

TEST_F(Memoize, ConcurrentEqualCallsRunOnceAndShareTheException) {
  gate g{io.get_executor()};
  auto work = g.fn();
  cf::memoized<int(int)> f{c, "gated", [&](int) { return work(); }};
  std::vector<outcome<int>> outs(5);
  for (auto& o : outs) f.async_call(1, o.handler());
  run_until(io, [&] { return g.calls() == 1; });
  for (int i = 0; i < 50; ++i) io.poll();  // every caller reaches the load
  EXPECT_EQ(g.calls(), 1);
  g.reject(std::make_exception_ptr(test_error("backend down")));
  run_until(io, [&] { return std::all_of(outs.begin(), outs.end(), [](auto& o) { return o.done; }); });
  for (auto& o : outs) {
    ASSERT_TRUE(o.done);
    try {
      std::rethrow_exception(o.error);
    } catch (const test_error& e) {
      EXPECT_STREQ(e.what(), "backend down");
    }
    EXPECT_EQ(o.error, outs[0].error);  // the same exception object
  }
  EXPECT_EQ(f.stats().load_failures, 1u);
}

TEST_F(Memoize, EveryCompletionTokenKind) {
  cf::memoized<int(int)> f{c, "times_ten", times_ten};
  // Callback: never inside the initiating call.
  outcome<int> cb;
  f.async_call(1, cb.handler());
  EXPECT_FALSE(cb.done);
  drain(io);
  EXPECT_EQ(cb.value, 10);
  // use_future, with the context run by another thread.
  {
    auto work = asio::make_work_guard(io);
    std::thread t([&] { io.restart(), io.run(); });
    EXPECT_EQ(f.async_call(2, asio::use_future).get(), 20);
    work.reset();
    t.join();
  }
  // deferred: nothing runs until launched.
  auto d = f.async_call(3, asio::deferred);
  drain(io);
  EXPECT_EQ(runs, 2);
  outcome<int> dv;
  std::move(d)(dv.handler());
  drain(io);
  EXPECT_EQ(dv.value, 30);
  // use_awaitable.
  EXPECT_EQ(await(io, f.async_call(3, asio::use_awaitable)), 30);
  EXPECT_EQ(runs, 3);
}

TEST_F(Memoize, WrapsAnAsynchronousOperationTakingAToken) {
  int ops = 0;
  auto op = [&](int x, auto&& token) {
    ++ops;
    return asio::async_initiate<decltype(token), void(boost::system::error_code, int)>(
        [&io = io, x](auto handler) {
          asio::post(io, [h = std::move(handler), x]() mutable { std::move(h)(boost::system::error_code{}, x + 1); });
        },
        token);
  };
  cf::memoized<int(int)> f{c, "plus_one", op};
  EXPECT_EQ(await(io, f(1)), 2);
  EXPECT_EQ(await(io, f(1)), 2);
  EXPECT_EQ(ops, 1);
  // An error code from the operation arrives as a system_error.
  auto failing = [&](int, auto&& token) {
    return asio::async_initiate<decltype(token), void(boost::system::error_code, int)>(
        [&io = io](auto handler) {
          asio::post(io, [h = std::move(handler)]() mutable {
            std::move(h)(make_error_code(boost::system::errc::connection_refused), 0);
          });
        },
        token);
  };
  cf::memoized<int(int)> g{c, "failing", failing};
  outcome<int> o;
  g.async_call(1, o.handler());
  drain(io);
  EXPECT_EQ(o.code(), boost::system::errc::connection_refused);
}

TEST_F(Memoize, SkippedLeadingArgumentsAndCustomKeys) {
  struct repo {
    int base;
  } r1{100}, r2{200};
  cf::memoized<int(repo*, int)> f{c, "find", [&](repo* r, int id) -> asio::awaitable<int> {
                                    ++runs;
                                    co_return r->base + id;
                                  },
                                  {.skip_args = 1}};
  EXPECT_EQ(f.key(&r1, 5), "find(5)");
  EXPECT_EQ(await(io, f(&r1, 5)), 105);
  EXPECT_EQ(await(io, f(&r2, 5)), 105);  // the object is not part of the key
  EXPECT_EQ(runs, 1);

  cf::memoized<int(std::string, int)> g{
      c, "by_name",
      [&](std::string, int n) -> asio::awaitable<int> {
        ++runs;
        co_return n;
      },
      {.key = [](const std::string& s, const int&) { return s.substr(0, 1); }}};
  EXPECT_EQ(g.key("apple", 1), "by_name(a)");
  EXPECT_EQ(await(io, g("apple", 1)), 1);
  EXPECT_EQ(await(io, g("avocado", 2)), 1);  // same key, the cached value
  EXPECT_EQ(runs, 2);

  EXPECT_THROW((cf::memoized<int(int)>{c, "bad", times_ten, {.skip_args = 2}}), boost::system::system_error);
  EXPECT_THROW((cf::memoized<int(int)>{c, "", times_ten}), boost::system::system_error);
}

TEST_F(Memoize, InvalidateRemovesOneEntryFromMemoryAndTiers) {
  auto tier = std::make_shared<memory_tier>(io.get_executor());
  cf::cache<int> tiered{io, {.tiers = {tier}}};
  cf::memoized<int(int)> f{tiered, "times_ten", times_ten};
  await(io, f(1));
  await(io, f(2));
  ASSERT_EQ(tier->data.size(), 2u);
  EXPECT_TRUE(await(io, f.invalidate(1)));
  EXPECT_EQ(tier->data.size(), 1u);  // gone from the tier too
  EXPECT_FALSE(await(io, f.invalidate(1)));
  await(io, f(1));
  await(io, f(2));
  EXPECT_EQ(runs, 3);  // 1 loaded again, 2 still cached
  EXPECT_EQ(f.stats().invalidations, 2u);
}

TEST_F(Memoize, ClearInvalidatesThisFunctionOnly) {
  cf::memoized<int(int)> f{c, "f", times_ten};
  cf::memoized<int(int)> g{c, "g", times_ten};
  for (int i = 0; i < 3; ++i) {
    await(io, f(i));
    await(io, g(i));
  }
  EXPECT_EQ(runs, 6);
  EXPECT_EQ(c.size(), 6u);
  await(io, f.clear());
  EXPECT_EQ(c.size(), 3u);  // f's entries were erased from memory at once
  for (int i = 0; i < 3; ++i) {
    await(io, f(i));
    await(io, g(i));
  }
  EXPECT_EQ(runs, 9);  // f reloaded, g did not
  EXPECT_EQ(f.stats().clears, 1u);
}

TEST_F(Memoize, CallUncachedRunsTheFunctionAndStoresNothing) {
  cf::memoized<int(int)> f{c, "f", times_ten};
  EXPECT_EQ(await(io, f.call_uncached(1)), 10);
  EXPECT_EQ(await(io, f.call_uncached(1)), 10);
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(f.stats().bypassed, 2u);
  EXPECT_EQ(f.stats().calls, 0u);
}

TEST_F(Memoize, EntriesExpireByTheirTtlOnTheCachesClock) {
  cf::manual_clock::reset();
  cf::cache<int, cf::manual_clock> mc{io};
  cf::memoized<int(int), cf::manual_clock> f{mc, "f", times_ten, {.ttl = std::chrono::seconds(60)}};
  await(io, f(1));
  cf::manual_clock::advance(std::chrono::seconds(59));
  await(io, f(1));
  EXPECT_EQ(runs, 1);
  cf::manual_clock::advance(std::chrono::seconds(2));
  await(io, f(1));
  EXPECT_EQ(runs, 2);
  EXPECT_THROW((cf::memoized<int(int), cf::manual_clock>{mc, "g", times_ten, {.ttl = std::chrono::seconds(0)}}),
               boost::system::system_error);
}

TEST_F(Memoize, AKeyTooLongIsAnInvalidKeyError) {
  cf::memoized<int(std::string)> f{c, "f", [](std::string) -> asio::awaitable<int> { co_return 1; }};
  outcome<int> o;
  f.async_call(std::string(2000, 'x'), o.handler());
  drain(io);
  EXPECT_EQ(o.code(), cf::error::invalid_key);
  // The refused key is not remembered: invalidating the function later
  // erases only the keys the cache took.
  await(io, f("a"));
  EXPECT_EQ(c.size(), 1u);
  await(io, f.clear());
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(f.stats().clears, 1u);
}

TEST_F(Memoize, InvalidatingMutationInvalidatesBeforeItRunsEvenWhenItThrows) {
  cf::memoized<int(int)> get{c, "get", times_ten};
  std::vector<std::size_t> sizes;  // entries in memory when the mutation ran
  cf::invalidating<void(int, bool)> update{[&](int, bool fail) -> asio::awaitable<void> {
    sizes.push_back(c.size());
    if (fail) throw test_error("constraint violated");
    co_return;
  }};
  update.invalidates(get, [](int id, bool) { return std::tuple{id}; });
  await(io, get(1));
  await(io, get(2));
  ASSERT_EQ(c.size(), 2u);
  await(io, update(1, false));
  EXPECT_EQ(c.size(), 1u);
  await(io, get(1));
  EXPECT_EQ(runs, 3);
  // A throwing mutation: its exception reaches the caller unchanged, and the
  // entry was invalidated all the same.
  try {
    await(io, update(1, true));
    ADD_FAILURE() << "the mutation's exception was lost";
  } catch (const test_error& e) {
    EXPECT_STREQ(e.what(), "constraint violated");
  }
  await(io, get(1));
  EXPECT_EQ(runs, 4);
  await(io, get(2));
  EXPECT_EQ(runs, 4);
  EXPECT_EQ(sizes, (std::vector<std::size_t>{1, 1}));  // the entry was gone before each run
}

TEST_F(Memoize, AReadDuringTheMutationDoesNotLeaveTheOldValueBehind) {
  int row = 1;
  cf::memoized<int(int)> get{c, "get", [&](int) -> asio::awaitable<int> { co_return row; }};
  asio::steady_timer hold(io, asio::steady_timer::time_point::max());
  cf::invalidating<void(int)> update{[&](int) -> asio::awaitable<void> {
    boost::system::error_code ec;
    co_await hold.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    row = 2;
  }};
  update.invalidates(get);
  EXPECT_EQ(await(io, get(1)), 1);
  bool updated = false;
  asio::co_spawn(io, update(1), [&](std::exception_ptr e) { updated = !e; });
  // While the mutation runs, a read misses and stores the old row.
  std::optional<int> during;
  asio::co_spawn(io, get(1), [&](std::exception_ptr, int v) { during = v; });
  run_until(io, [&] { return during.has_value(); });
  EXPECT_EQ(*during, 1);
  EXPECT_EQ(c.size(), 1u);
  hold.cancel();
  run_until(io, [&] { return updated; });
  EXPECT_EQ(c.size(), 0u);  // invalidated again once the mutation was done
  EXPECT_EQ(await(io, get(1)), 2);
}

TEST_F(Memoize, ACancelledMutationStillInvalidatesAfterwards) {
  int row = 1;
  cf::memoized<int(int)> get{c, "get", [&](int) -> asio::awaitable<int> { co_return row; }};
  asio::steady_timer hold(io, asio::steady_timer::time_point::max());
  cf::invalidating<void(int)> update{[&](int) -> asio::awaitable<void> {
    row = 2;  // takes effect, then waits: its caller gives up meanwhile
    co_await hold.async_wait(asio::use_awaitable);
  }};
  update.invalidates(get);
  asio::cancellation_signal cancel;
  std::exception_ptr failure;
  bool done = false;
  asio::co_spawn(io, update(1), asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr e) {
                   failure = e;
                   done = true;
                 }));
  run_until(io, [&] { return row == 2; });
  // A read while the mutation runs: a miss that stores the new row... or, had
  // it started a moment earlier, the old one. Either way the second pass runs.
  std::optional<int> during;
  asio::co_spawn(io, get(1), [&](std::exception_ptr, int v) { during = v; });
  run_until(io, [&] { return during.has_value(); });
  ASSERT_EQ(c.size(), 1u);
  cancel.emit(asio::cancellation_type::terminal);
  run_until(io, [&] { return done; });
  EXPECT_TRUE(failure);  // the mutation's own operation_aborted
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(get.registry()->stats().invalidations, 0u);  // plain keys: no tags were involved
}

TEST(MemoKeys, EdgeCases) {
  EXPECT_EQ(cf::make_key("f", -0.0, 0.0), "f(0,0)");
  EXPECT_EQ(cf::make_key("f", static_cast<const char*>(nullptr), nullptr), "f(null,null)");
  static_assert(!cf::detail::key_encodable<std::pair<int*, int>>());
  static_assert(cf::detail::key_encodable<std::tuple<int, std::string>>());
}

TEST_F(Memoize, AThrowingKeyFunctionReachesTheHandler) {
  cf::memoized<int(int)> f{c, "f", times_ten, {.key = [](const int&) -> std::string { throw test_error("no key"); }}};
  outcome<int> o;
  EXPECT_NO_THROW(f.async_call(1, o.handler()));
  drain(io);
  ASSERT_TRUE(o.error);
  EXPECT_THROW(std::rethrow_exception(o.error), test_error);
}

TEST_F(Memoize, InvalidatingMutationWithTheSameArgumentsTagsAndKeys) {
  auto reg = std::make_shared<cf::tag_registry>(io.get_executor());
  cf::memoized<int(int)> get{c, "get", times_ten, {.registry = reg}};
  cf::memoized<int(int)> list{c, "list", times_ten, {.tags = {"lists"}, .registry = reg}};
  int writes = 0;
  cf::invalidating<int(int)> put{[&](int x) -> asio::awaitable<int> { co_return ++writes + x; }};
  put.invalidates(get).invalidates_tags(reg, {"lists"});
  await(io, get(7));
  await(io, list(7));
  await(io, list(8));
  EXPECT_EQ(runs, 3);
  // Through a completion token; the result of the mutation comes back.
  auto f = put.async_call(io.get_executor(), 7, asio::use_future);
  drain(io);
  EXPECT_EQ(f.get(), 8);
  await(io, get(7));
  await(io, list(7));
  await(io, list(8));
  EXPECT_EQ(runs, 6);
  // Plain keys of a cache.
  await(io, c.async_set("raw", 5, asio::use_awaitable));
  cf::invalidating<void()> drop_raw{[]() -> asio::awaitable<void> { co_return; }};
  drop_raw.invalidates_keys(c, [] { return std::vector<std::string>{"raw"}; });
  await(io, drop_raw());
  EXPECT_FALSE(c.peek("raw"));
}

TEST_F(Memoize, AnInvalidationFailureStopsTheMutation) {
  auto tier = std::make_shared<memory_tier>(io.get_executor());
  cf::cache<int> tiered{io, {.tiers = {tier}}};
  cf::memoized<int(int)> get{tiered, "get", times_ten};
  bool ran = false;
  cf::invalidating<void(int)> update{[&](int) -> asio::awaitable<void> {
    ran = true;
    co_return;
  }};
  update.invalidates(get);
  await(io, get(1));
  tier->fail = true;
  try {
    await(io, update(1));
    ADD_FAILURE() << "no error";
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), cf::error::tier_unavailable);
  }
  EXPECT_FALSE(ran);
  EXPECT_EQ(tiered.size(), 0u);  // memory was erased regardless
}

TEST_F(Memoize, TagsOfOneCallAndTagInvalidation) {
  auto reg = std::make_shared<cf::tag_registry>(io.get_executor());
  cf::memoized<int(int)> profile{c, "profile", times_ten,
                                 {.tags_of = [](const int& id) { return std::vector<std::string>{"user:" + std::to_string(id)}; },
                                  .registry = reg}};
  cf::memoized<int(int)> orders{c, "orders", times_ten,
                                {.tags_of = [](const int& id) { return std::vector<std::string>{"user:" + std::to_string(id)}; },
                                 .registry = reg}};
  EXPECT_EQ(profile.tags(42), (std::vector<std::string>{"memo:profile", "user:42"}));
  for (int id : {42, 43}) {
    await(io, profile(id));
    await(io, orders(id));
  }
  EXPECT_EQ(runs, 4);
  await(io, reg->async_invalidate({"user:42"}, asio::use_awaitable));
  EXPECT_EQ(c.size(), 2u);  // both entries of user 42 erased at once
  for (int id : {42, 43}) {
    await(io, profile(id));
    await(io, orders(id));
  }
  EXPECT_EQ(runs, 6);
  auto s = reg->stats();
  EXPECT_EQ(s.invalidations, 1u);
  EXPECT_EQ(s.keys_removed, 2u);
  // A bad tag.
  auto bad = reg->async_invalidate({""}, asio::use_future);
  drain(io);
  EXPECT_THROW(bad.get(), boost::system::system_error);
}

TEST_F(Memoize, TagInvalidationReachesAnotherCacheSharingTheStore) {
  auto shared_tier = std::make_shared<memory_tier>(io.get_executor());
  cf::cache<int> ca{io, {.tiers = {shared_tier}}}, cb{io, {.tiers = {shared_tier}}};
  auto ra = std::make_shared<cf::tag_registry>(io.get_executor(), cf::tag_options{.store = shared_tier});
  auto rb = std::make_shared<cf::tag_registry>(io.get_executor(), cf::tag_options{.store = shared_tier});
  int value = 1;
  auto read = [&](int) -> asio::awaitable<int> {
    ++runs;
    co_return value;
  };
  cf::memoized<int(int)> fa{ca, "read", read, {.tags = {"cart"}, .registry = ra}};
  cf::memoized<int(int)> fb{cb, "read", read, {.tags = {"cart"}, .registry = rb}};
  EXPECT_EQ(await(io, fa(1)), 1);
  EXPECT_EQ(await(io, fb(1)), 1);  // from the shared tier: the same key in both
  EXPECT_EQ(runs, 1);
  ASSERT_EQ(cb.size(), 1u);
  EXPECT_TRUE(shared_tier->data.contains("cf:tag:cart"));
  // Instance A invalidates the tag; B's memory copy is never served again.
  value = 2;
  await(io, ra->async_invalidate({"cart"}, asio::use_awaitable));
  EXPECT_EQ(await(io, fb(1)), 2);
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(rb->stats().changes_seen, 1u);
  drain(io);
  EXPECT_EQ(cb.size(), 1u);  // B erased its old entry when it saw the change
  EXPECT_EQ(await(io, fa(1)), 2);  // A reads B's fill from the tier
  EXPECT_EQ(runs, 2);
  // clear() reaches B the same way.
  value = 3;
  await(io, fa.clear());
  EXPECT_EQ(await(io, fb(1)), 3);
  EXPECT_EQ(runs, 3);
}

TEST_F(Memoize, ALostOrCorruptGenerationIsReplacedNeverReused) {
  auto store = std::make_shared<memory_tier>(io.get_executor());
  cf::cache<int> cc{io};
  auto reg = std::make_shared<cf::tag_registry>(io.get_executor(), cf::tag_options{.store = store});
  cf::memoized<int(int)> f{cc, "f", times_ten, {.registry = reg}};
  await(io, f(1));
  const std::string before = store->data.at("cf:tag:memo:f");
  store->data.erase("cf:tag:memo:f");  // lost (evicted, flushed)
  await(io, f(1));
  EXPECT_EQ(runs, 2);
  EXPECT_NE(store->data.at("cf:tag:memo:f"), before);
  store->data["cf:tag:memo:f"] = "garbage";
  await(io, f(1));
  EXPECT_EQ(runs, 3);
  EXPECT_EQ(store->data.at("cf:tag:memo:f").size(), 16u);
}

TEST_F(Memoize, AFailingStoreRunsTheFunctionUncached) {
  auto store = std::make_shared<memory_tier>(io.get_executor());
  store->fail = true;
  auto reg = std::make_shared<cf::tag_registry>(io.get_executor(), cf::tag_options{.store = store});
  cf::memoized<int(int)> f{c, "f", times_ten, {.registry = reg}};
  EXPECT_EQ(await(io, f(1)), 10);
  EXPECT_EQ(await(io, f(1)), 10);
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(f.stats().store_errors, 2u);
  EXPECT_EQ(reg->stats().store_errors, 2u);
  // An invalidation cannot be made: it says so.
  auto inv = reg->async_invalidate({"memo:f"}, asio::use_future);
  drain(io);
  EXPECT_THROW(inv.get(), boost::system::system_error);
}

TEST_F(Memoize, ARecheckIntervalSparesStoreReads) {
  auto store = std::make_shared<memory_tier>(io.get_executor());
  auto every = std::make_shared<cf::tag_registry>(io.get_executor(), cf::tag_options{.store = store});
  auto rarely = std::make_shared<cf::tag_registry>(
      io.get_executor(), cf::tag_options{.store = store, .recheck_interval = std::chrono::hours(1)});
  cf::memoized<int(int)> f{c, "f", times_ten, {.registry = every}};
  cf::memoized<int(int)> g{c, "g", times_ten, {.registry = rarely}};
  for (int i = 0; i < 5; ++i) {
    await(io, f(1));
    await(io, g(1));
  }
  EXPECT_EQ(every->stats().store_reads, 5u);
  EXPECT_EQ(rarely->stats().store_reads, 1u);
}

TEST_F(Memoize, ACancelledResolveStopsWaitingForAStoreReadThatIgnoresCancellation) {
  auto poll = [&] {
    io.restart();
    io.poll();
  };
  for (auto recheck : {std::chrono::nanoseconds::zero(), std::chrono::nanoseconds(std::chrono::seconds(1))}) {
    // Reads wait until `release` and ignore cancellation, as a tier may.
    auto store = std::make_shared<memory_tier>(io.get_executor());
    store->hold_gets = true;
    store->ignore_cancel = true;
    auto reads = [&] {
      return std::count_if(store->log.begin(), store->log.end(),
                           [](const std::string& l) { return l.starts_with("get "); });
    };
    cf::tag_registry reg(io.get_executor(), {.store = store, .recheck_interval = recheck});
    asio::cancellation_signal sig;
    std::optional<std::exception_ptr> got;
    reg.async_resolve({"t"}, asio::bind_cancellation_slot(sig.slot(), [&](std::exception_ptr e, std::uint64_t) {
                        got = e;
                      }));
    poll();
    ASSERT_EQ(reads(), 1);
    sig.emit(asio::cancellation_type::terminal);
    poll();
    ASSERT_TRUE(got.has_value()) << "recheck " << recheck.count();
    try {
      std::rethrow_exception(*got);
      ADD_FAILURE() << "no error";
    } catch (const boost::system::system_error& e) {
      EXPECT_EQ(e.code(), asio::error::operation_aborted);
    }
    // The read completing later harms nothing, and the next resolve works.
    store->release();
    poll();
    std::optional<std::uint64_t> stamp;
    reg.async_resolve({"t"}, [&](std::exception_ptr e, std::uint64_t s) {
      if (!e) stamp = s;
    });
    poll();
    if (reads() == 2) store->release();  // without a recheck interval, read again
    poll();
    EXPECT_TRUE(stamp.has_value()) << "recheck " << recheck.count();
  }
}

TEST_F(Memoize, PastTheCapTheKeyRememberedFirstIsForgottenEvenAfterAnotherWasRememberedAgain) {
  cf::tag_registry reg(io.get_executor(), {.max_tracked = 3});
  std::vector<std::string> erased;
  auto er = std::make_shared<const cf::tag_registry::eraser>(
      [&](const std::string& k, std::function<void(std::exception_ptr)> done) {
        erased.push_back(k);
        done({});
      });
  reg.track({"ta"}, "A", er);
  reg.track({"tb"}, "B", er);
  reg.track({"tb"}, "C", er);
  reg.async_remove_tracked("ta", [](std::exception_ptr) {});
  io.run();
  io.restart();
  EXPECT_EQ(erased, std::vector<std::string>{"A"});
  erased.clear();
  reg.track({"ta"}, "A", er);  // remembered again: now the newest
  reg.track({"tb"}, "D", er);  // past the cap: B, the first remembered, is forgotten
  reg.async_invalidate({"ta", "tb"}, [](std::exception_ptr) {});
  io.run();
  std::sort(erased.begin(), erased.end());
  EXPECT_EQ(erased, (std::vector<std::string>{"A", "C", "D"}));
}

TEST_F(Memoize, PrometheusText) {
  cf::memoized<int(int)> f{c, "f", times_ten};
  await(io, f(1));
  await(io, f(1));
  const auto text = cf::to_prometheus(f.stats(), "app_memo", "fn=\"f\"");
  EXPECT_NE(text.find("# TYPE app_memo_calls_total counter\napp_memo_calls_total{fn=\"f\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("app_memo_hits_total{fn=\"f\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("app_memo_misses_total{fn=\"f\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("app_memo_hit_ratio{fn=\"f\"} 0.5"), std::string::npos);
}

TEST(MemoizeThreads, ConcurrentCallersOnSeveralThreads) {
  asio::io_context io;
  cf::cache<int> c{io, {.shards = 8}};
  std::atomic<int> runs{0};
  auto reg = std::make_shared<cf::tag_registry>(io.get_executor());
  cf::memoized<int(int)> f{c, "f",
                           [&](int x) -> asio::awaitable<int> {
                             runs.fetch_add(1);
                             co_return x;
                           },
                           {.tags = {"t"}, .registry = reg}};
  std::atomic<int> sum{0};
  for (int i = 0; i < 400; ++i)
    f.async_call(i % 20, [&](std::exception_ptr e, int v) {
      if (!e) sum += v;
    });
  for (int i = 0; i < 4; ++i) reg->async_invalidate({"t"}, asio::detached);
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i) ts.emplace_back([&] { io.run(); });
  for (auto& t : ts) t.join();
  int expected = 0;
  for (int i = 0; i < 400; ++i) expected += i % 20;
  EXPECT_EQ(sum.load(), expected);
  EXPECT_GE(runs.load(), 20);
}

// A tag invalidation that lands after a call remembered its key but before the
// call's load started has no load to void; the entry that load stores is still
// one the registry remembers, so invalidating the tag again erases it.
TEST(MemoizeThreads, EntriesStoredByLoadsRacingInvalidationsStayErasable) {
  asio::io_context io;
  cf::cache<int> c{io, {.shards = 8}};
  auto reg = std::make_shared<cf::tag_registry>(io.get_executor());
  cf::memoized<int(int)> f{c, "f", [](int x) -> asio::awaitable<int> { co_return x; }, {.tags = {"t"}, .registry = reg}};
  auto guard = asio::make_work_guard(io);
  std::vector<std::thread> runners;
  for (int i = 0; i < 4; ++i) runners.emplace_back([&] { io.run(); });
  std::atomic<int> pending{0}, failures{0};
  for (int round = 0; round < 50; ++round) {
    std::thread callers([&] {
      for (int k = 0; k < 40; ++k) {
        ++pending;
        f.async_call(k % 7, [&](std::exception_ptr e, int) {
          failures += e != nullptr;
          --pending;
        });
      }
    });
    std::thread invalidations([&] {
      for (int k = 0; k < 5; ++k) {
        ++pending;
        reg->async_invalidate({"t"}, [&](std::exception_ptr e) {
          failures += e != nullptr;
          --pending;
        });
      }
    });
    callers.join();
    invalidations.join();
    while (pending.load() != 0) std::this_thread::yield();
  }
  EXPECT_EQ(failures.load(), 0);
  reg->async_invalidate({"t"}, asio::use_future).get();
  guard.reset();
  for (auto& t : runners) t.join();
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(reg->stats().tracked_keys, 0u);
}

}  // namespace
