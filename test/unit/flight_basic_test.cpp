// cf::flight: coalescing, work forms, completion tokens, errors, events, options.
#include "test_support.hpp"

#include <cacheflight/detail/with_allocator.hpp>

#include <boost/asio/deferred.hpp>
#include <boost/asio/use_future.hpp>

#include <functional>
#include <future>
#include <thread>

using namespace cftest;

namespace {

class FlightBasic : public ::testing::Test {
 protected:
  asio::io_context io;
};

TEST_F(FlightBasic, ConcurrentCallersShareOneExecution) {
  cf::flight<int> f{io};
  gate g{io.get_executor()};
  std::vector<outcome<>> out(100);
  for (auto& o : out) f.async_run("user:42", g.fn(), o.handler());
  EXPECT_TRUE(f.has("user:42"));
  EXPECT_EQ(f.size(), 1u);
  run_until(io, [&] { return g.calls() == 1; });
  g.resolve(7);
  drain(io);
  EXPECT_EQ(g.calls(), 1);
  for (auto& o : out) {
    EXPECT_EQ(o.completions, 1);
    EXPECT_FALSE(o.error);
    EXPECT_EQ(o.value, 7);
  }
  EXPECT_FALSE(f.has("user:42"));
  EXPECT_EQ(f.size(), 0u);
}

TEST_F(FlightBasic, DifferentKeysRunIndependently) {
  cf::flight<int> f{io};
  gate a{io.get_executor()}, b{io.get_executor()};
  outcome<> oa, ob;
  f.async_run("a", a.fn(), oa.handler());
  f.async_run("b", b.fn(), ob.handler());
  EXPECT_EQ(f.size(), 2u);
  run_until(io, [&] { return a.calls() == 1 && b.calls() == 1; });
  b.resolve(2);
  run_until(io, [&] { return ob.done; });
  EXPECT_FALSE(oa.done);
  EXPECT_TRUE(f.has("a"));
  EXPECT_FALSE(f.has("b"));
  a.resolve(1);
  drain(io);
  EXPECT_EQ(oa.value, 1);
  EXPECT_EQ(ob.value, 2);
}

TEST_F(FlightBasic, NotACacheACallAfterCompletionRunsAgain) {
  cf::flight<int> f{io};
  int calls = 0;
  auto fn = [&]() -> asio::awaitable<int> { co_return ++calls; };
  outcome<> o1, o2;
  f.async_run("k", fn, o1.handler());
  drain(io);
    f.async_run("k", fn, o2.handler());
  drain(io);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(o1.value, 1);
  EXPECT_EQ(o2.value, 2);
}

TEST_F(FlightBasic, AsyncOperationWithErrorCodeSignature) {
  cf::flight<int> f{io};
  int calls = 0;
  // An Asio-style initiating function completing with void(error_code, int).
  auto op = [&](auto&& token) {
    ++calls;
    return asio::async_initiate<decltype(token), void(boost::system::error_code, int)>(
        [&](auto handler) { asio::post(io, [h = std::move(handler)]() mutable { std::move(h)(boost::system::error_code{}, 5); }); }, token);
  };
  std::vector<outcome<>> out(3);
  for (auto& o : out) f.async_run("k", op, o.handler());
  drain(io);
  EXPECT_EQ(calls, 1);
  for (auto& o : out) EXPECT_EQ(o.value, 5);
}

TEST_F(FlightBasic, AsyncOperationErrorCodeBecomesSystemError) {
  cf::flight<int> f{io};
  auto op = [&](auto&& token) {
    return asio::async_initiate<decltype(token), void(boost::system::error_code, int)>(
        [&](auto handler) {
          asio::post(io, [h = std::move(handler)]() mutable { std::move(h)(asio::error::connection_refused, 0); });
        },
        token);
  };
  outcome<> a, b;
  f.async_run("k", op, a.handler());
  f.async_run("k", op, b.handler());
  drain(io);
  EXPECT_EQ(a.code(), asio::error::connection_refused);
  EXPECT_EQ(b.code(), asio::error::connection_refused);
  EXPECT_EQ(f.size(), 0u);
}

TEST_F(FlightBasic, AsyncOperationWithExceptionPtrSignature) {
  cf::flight<std::string> f{io};
  // co_spawn is itself an operation with signature void(exception_ptr, T).
  auto op = [&](auto&& token) {
    return asio::co_spawn(io, []() -> asio::awaitable<std::string> { co_return "v"; }, std::move(token));
  };
  outcome<std::string> a, b;
  f.async_run("k", op, a.handler());
  f.async_run("k", op, b.handler());
  drain(io);
  EXPECT_EQ(a.value, "v");
  EXPECT_EQ(b.value, "v");
}

TEST_F(FlightBasic, WorkRunsOutsideTheInitiatingCallAndOutsideAnyLock) {
  cf::flight<int> f{io};
  bool in_call = false, ran_in_call = false, saw_key = false;
  std::size_t seen_size = 0;
  auto fn = [&]() -> asio::awaitable<int> {
    ran_in_call = in_call;
    // Calling back into the flight would deadlock if the work ran under its lock.
    saw_key = f.has("k");
    seen_size = f.size();
    co_return 1;
  };
  outcome<> o;
  in_call = true;
  f.async_run("k", fn, o.handler());
  in_call = false;
  drain(io);
  EXPECT_FALSE(ran_in_call);
  EXPECT_TRUE(saw_key);
  EXPECT_EQ(seen_size, 1u);
  EXPECT_EQ(o.value, 1);
}

TEST_F(FlightBasic, WorkThatThrowsBeforeStartingAnOperationRejectsAllWaiters) {
  cf::flight<int> f{io};
  auto op = [](auto&&) -> void { throw cftest::test_error("synchronous failure"); };
  outcome<> a, b;
  f.async_run("k", op, a.handler());
  f.async_run("k", op, b.handler());
  drain(io);
  ASSERT_TRUE(a.error);
  EXPECT_EQ(a.error, b.error);
  EXPECT_THROW(std::rethrow_exception(a.error), cftest::test_error);
  EXPECT_EQ(f.size(), 0u);
}

TEST_F(FlightBasic, LoaderExceptionReachesEveryWaiterUnchanged) {
  cf::flight<int> f{io};
  struct db_error : std::runtime_error {
    using std::runtime_error::runtime_error;
    int code = 1205;
  };
  auto fn = []() -> asio::awaitable<int> {
    throw db_error("deadlock found");
    co_return 0;
  };
  std::vector<outcome<>> out(5);
  for (auto& o : out) f.async_run("k", fn, o.handler());
  drain(io);
  for (auto& o : out) {
    ASSERT_TRUE(o.error);
    try {
      std::rethrow_exception(o.error);
      FAIL() << "no exception";
    } catch (const db_error& e) {
      EXPECT_STREQ(e.what(), "deadlock found");
      EXPECT_EQ(e.code, 1205);
    }
  }
  // The key is not wedged after a failure.
  outcome<> again;
    f.async_run("k", []() -> asio::awaitable<int> { co_return 3; }, again.handler());
  drain(io);
  EXPECT_EQ(again.value, 3);
}

TEST_F(FlightBasic, UseAwaitable) {
  cf::flight<int> f{io};
  int calls = 0;
  std::vector<int> got;
  auto fn = [&]() -> asio::awaitable<int> {
    ++calls;
    asio::steady_timer t(co_await asio::this_coro::executor, 1ms);
    co_await t.async_wait(asio::use_awaitable);
    co_return 9;
  };
  for (int i = 0; i < 10; ++i)
    asio::co_spawn(
        io, [&]() -> asio::awaitable<void> { got.push_back(co_await f.async_run("k", fn, asio::use_awaitable)); },
        asio::detached);
  drain(io);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(got, std::vector<int>(10, 9));
}

TEST_F(FlightBasic, UseAwaitableRethrowsTheLoaderException) {
  cf::flight<int> f{io};
  std::string caught;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        try {
          co_await f.async_run(
              "k", []() -> asio::awaitable<int> { throw cftest::test_error("boom"); co_return 0; },
              asio::use_awaitable);
        } catch (const cftest::test_error& e) {
          caught = e.what();
        }
      },
      asio::detached);
  drain(io);
  EXPECT_EQ(caught, "boom");
}

TEST_F(FlightBasic, UseFutureWaitedOnFromAnotherThread) {
  cf::flight<int> f{io};
  auto guard = asio::make_work_guard(io);
  std::thread runner([&] { io.run(); });
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 8; ++i)
    futures.push_back(f.async_run(
        "k",
        []() -> asio::awaitable<int> {
          asio::steady_timer t(co_await asio::this_coro::executor, 5ms);
          co_await t.async_wait(asio::use_awaitable);
          co_return 11;
        },
        asio::use_future));
  for (auto& fu : futures) EXPECT_EQ(fu.get(), 11);
  auto failing = f.async_run(
      "bad", []() -> asio::awaitable<int> { throw cftest::test_error("nope"); co_return 0; }, asio::use_future);
  EXPECT_THROW(failing.get(), cftest::test_error);
  guard.reset();
  runner.join();
}

TEST_F(FlightBasic, DeferredKeepsItsOwnCopyOfTheKey) {
  cf::flight<int> f{io};
  gate g{io.get_executor()};
  auto op = [&] {
    std::string key = "a-key-long-enough-to-live-on-the-heap:";
    key += "42";
    return f.async_run(key, g.fn(), asio::deferred);
  }();  // the caller's string is gone
  outcome<> o;
  std::move(op)(o.handler());
  EXPECT_TRUE(f.has("a-key-long-enough-to-live-on-the-heap:42"));
  run_until(io, [&] { return g.calls() == 1; });
  g.resolve(4);
  drain(io);
  EXPECT_EQ(o.value, 4);
}

TEST_F(FlightBasic, InvalidKeysAreRejectedWithoutRunningTheHandlerInline) {
  cf::flight<int> f{io, cf::flight_options{.max_key_length = 8}};
  int calls = 0;
  auto fn = [&]() -> asio::awaitable<int> { co_return ++calls; };
  outcome<> empty, too_long, longest;
  f.async_run("", fn, empty.handler());
  f.async_run("123456789", fn, too_long.handler());
  f.async_run("12345678", fn, longest.handler());
  EXPECT_FALSE(empty.done);  // posted, never inline
  EXPECT_FALSE(too_long.done);
  drain(io);
  EXPECT_EQ(empty.code(), cf::error::invalid_key);
  EXPECT_EQ(too_long.code(), cf::error::invalid_key);
  EXPECT_FALSE(longest.error);
  EXPECT_EQ(calls, 1);
}

TEST_F(FlightBasic, NonPositiveTimeoutIsRejected) {
  cf::flight<int> f{io};
  outcome<> zero, negative;
  auto fn = []() -> asio::awaitable<int> { co_return 1; };
  f.async_run("k", cf::run_options{.timeout = 0ms}, fn, zero.handler());
  f.async_run("k", cf::run_options{.timeout = -5ms}, fn, negative.handler());
  drain(io);
  EXPECT_EQ(zero.code(), cf::error::invalid_timeout);
  EXPECT_EQ(negative.code(), cf::error::invalid_timeout);
  EXPECT_EQ(f.size(), 0u);
}

TEST_F(FlightBasic, ImpossibleOptionsThrowInvalidOption) {
  auto make = [&](cf::flight_options o) { cf::flight<int> f{io, std::move(o)}; };
  auto expect_invalid = [&](cf::flight_options o) {
    try {
      make(std::move(o));
      ADD_FAILURE() << "no exception";
    } catch (const boost::system::system_error& e) {
      EXPECT_EQ(e.code(), cf::error::invalid_option);
    }
  };
  expect_invalid({.max_keys = 0});
  expect_invalid({.default_timeout = 0ms});
  expect_invalid({.default_timeout = -1s});
  expect_invalid({.max_key_length = 0});
  expect_invalid({.shards = 0});
  EXPECT_NO_THROW(make({.max_keys = 1, .default_timeout = 1s, .shards = 4}));
}

TEST_F(FlightBasic, MaxKeysRejectsNewKeysButAllowsJoining) {
  event_log log;
  cf::flight<int> f{io, cf::flight_options{.max_keys = 1, .on_event = log.sink()}};
  gate g{io.get_executor()};
  outcome<> first, joiner, other;
  f.async_run("a", g.fn(), first.handler());
  f.async_run("b", g.fn(), other.handler());
  f.async_run("a", g.fn(), joiner.handler());
  run_until(io, [&] { return other.done; });
  EXPECT_EQ(other.code(), cf::error::max_keys_exceeded);
  EXPECT_EQ(log.count(cf::event_kind::max_keys_rejected), 1u);
  EXPECT_EQ(log.count(cf::event_kind::miss), 1u);  // only "a"
  for (auto& e : log.events) {
    if (e.kind == cf::event_kind::max_keys_rejected) {
      EXPECT_EQ(e.key, "b");
    }
  }
  g.resolve(1);
  drain(io);
  EXPECT_EQ(first.value, 1);
  EXPECT_EQ(joiner.value, 1);
  EXPECT_EQ(g.calls(), 1);
  // Once "a" is done, "b" fits.
  outcome<> later;
    f.async_run("b", []() -> asio::awaitable<int> { co_return 2; }, later.handler());
  drain(io);
  EXPECT_EQ(later.value, 2);
}

TEST_F(FlightBasic, EventsInOrderWithDurations) {
  cf::manual_clock::reset();
  event_log log;
  cf::flight<int, cf::manual_clock> f{io, cf::flight_options{.on_event = log.sink()}};
  gate g{io.get_executor()};
  outcome<> a, b, c;
  f.async_run("k", g.fn(), a.handler());
  run_until(io, [&] { return g.calls() == 1; });
  f.async_run("k", g.fn(), b.handler());
  f.async_run("k", g.fn(), c.handler());
  cf::manual_clock::advance(5ms);
  g.resolve(1);
  drain(io);
  using K = cf::event_kind;
  EXPECT_EQ(log.kinds(), (std::vector<K>{K::miss, K::task_started, K::hit, K::hit, K::task_resolved}));
  EXPECT_EQ(log.events.back().duration, 5ms);
  for (auto& e : log.events) EXPECT_EQ(e.key, "k");
}

TEST_F(FlightBasic, RejectedEventCarriesTheError) {
  event_log log;
  cf::flight<int> f{io, cf::flight_options{.on_event = log.sink()}};
  outcome<> o;
  f.async_run("k", []() -> asio::awaitable<int> { throw cftest::test_error("x"); co_return 0; }, o.handler());
  drain(io);
  ASSERT_EQ(log.count(cf::event_kind::task_rejected), 1u);
  EXPECT_EQ(log.events.back().kind, cf::event_kind::task_rejected);
  EXPECT_EQ(log.events.back().error, o.error);
  EXPECT_EQ(log.count(cf::event_kind::task_resolved), 0u);
}

TEST_F(FlightBasic, ThrowingEventSinkDoesNotCorruptTheFlight) {
  int events = 0;
  cf::flight<int> f{io, cf::flight_options{.on_event = [&](const cf::event&) {
                      ++events;
                      throw std::runtime_error("sink failure");
                    }}};
  std::vector<outcome<>> out(3);
  for (auto& o : out) f.async_run("k", []() -> asio::awaitable<int> { co_return 6; }, o.handler());
  drain(io);
  for (auto& o : out) EXPECT_EQ(o.value, 6);
  EXPECT_EQ(events, 5);  // miss, 2 hits, started, resolved
  EXPECT_EQ(f.size(), 0u);
}

TEST_F(FlightBasic, HandlerRunsOnItsAssociatedExecutor) {
  cf::flight<int> f{io};
  asio::io_context other;
  bool on_other = false;
  auto h = asio::bind_executor(other.get_executor(), [&](std::exception_ptr, int) {
    on_other = other.get_executor().running_in_this_thread();
  });
  f.async_run("k", []() -> asio::awaitable<int> { co_return 1; }, std::move(h));
  drain(io);
  EXPECT_FALSE(on_other);
  EXPECT_GE(other.run(), 1u);
  EXPECT_TRUE(on_other);
}

TEST_F(FlightBasic, WaitersOnAnotherContextKeepItBusyUntilTheyRunThere) {
  cf::flight<int> f{io};
  asio::io_context other;
  auto strand = asio::make_strand(other);
  int plain = 0, erased = 0, stranded = 0;
  bool all_on_other = true;
  auto work = []() -> asio::awaitable<int> { co_return 7; };
  auto on_other = [&](int& ran) {
    return [&](std::exception_ptr e, int v) {
      all_on_other = all_on_other && other.get_executor().running_in_this_thread();
      if (!e && v == 7) ++ran;
    };
  };
  // The handler's executor as its own type, type-erased, and a strand of it.
  f.async_run("k", work, asio::bind_executor(other.get_executor(), on_other(plain)));
  f.async_run("k", work, asio::bind_executor(asio::any_io_executor(other.get_executor()), on_other(erased)));
  f.async_run("k", work, asio::bind_executor(strand, [&](std::exception_ptr e, int v) {
                all_on_other = all_on_other && strand.running_in_this_thread();
                if (!e && v == 7) ++stranded;
              }));
  // Nothing to run there yet, but the waiters count as its outstanding work.
  EXPECT_EQ(other.poll(), 0u);
  EXPECT_FALSE(other.stopped());
  drain(io);
  EXPECT_EQ(plain + erased + stranded, 0);
  other.run();  // returns once every waiter ran
  EXPECT_EQ(plain, 1);
  EXPECT_EQ(erased, 1);
  EXPECT_EQ(stranded, 1);
  EXPECT_TRUE(all_on_other);
}

TEST_F(FlightBasic, WaiterUsesTheHandlersAssociatedAllocator) {
  cf::flight<int> f{io};
  allocation_counts allocations;
  outcome<> o;
  f.async_run("k", []() -> asio::awaitable<int> { co_return 1; },
              asio::bind_allocator(counting_allocator<void>(&allocations), o.handler()));
  drain(io);
  EXPECT_EQ(o.value, 1);
  EXPECT_GE(allocations.made, 1);
}

TEST(BlockCache, KeepsFreedBlocksForItsThreadUpToItsCapacity) {
  // A size no waiter of these tests has, so that the thread's list starts empty.
  using blocks = cf::detail::block_cache<4096>;
  static_assert(blocks::capacity == 256);
  std::vector<void*> made;
  for (std::size_t i = 0; i < blocks::capacity + 2; ++i) made.push_back(blocks::allocate());
  EXPECT_EQ(blocks::kept(), 0u);
  for (void* p : made) blocks::deallocate(p);
  if constexpr (!blocks::enabled) {
    // Under AddressSanitizer every block goes back to the heap at once.
    EXPECT_EQ(blocks::kept(), 0u);
    return;
  }
  // The first `capacity` freed blocks are kept; the two after them are freed.
  EXPECT_EQ(blocks::kept(), blocks::capacity);
  void* again = blocks::allocate();
  EXPECT_EQ(again, made[blocks::capacity - 1]);  // the last one kept comes back first
  EXPECT_EQ(blocks::kept(), blocks::capacity - 1);

  // A block freed on another thread is kept by that thread, not by this one.
  std::size_t kept_there = 0, kept_there_after = 0;
  std::thread([&] {
    blocks::deallocate(again);
    kept_there = blocks::kept();
    void* p = blocks::allocate();
    kept_there_after = blocks::kept();
    blocks::deallocate(p);
  }).join();
  EXPECT_EQ(kept_there, 1u);
  EXPECT_EQ(kept_there_after, 0u);
  EXPECT_EQ(blocks::kept(), blocks::capacity - 1);
  while (blocks::kept() > 0) ::operator delete(blocks::allocate(), 4096);
}

TEST(BlockCache, TheAllocatorServesEachSizeFromItsRoundedBlockSize) {
  namespace d = cf::detail;
  d::block_allocator<unsigned char> bytes;
  // 200 bytes are served by the 208-byte blocks; 300 bytes by the heap.
  using blocks = d::block_cache<d::block_size_for(200)>;
  static_assert(d::block_size_for(200) == 208);
  const std::size_t before = blocks::kept();
  unsigned char* a = bytes.allocate(200);
  unsigned char* big = bytes.allocate(300);
  bytes.deallocate(big, 300);
  EXPECT_EQ(blocks::kept(), before == 0 ? 0 : before - 1);
  bytes.deallocate(a, 200);
  if constexpr (!blocks::enabled) {
    EXPECT_EQ(blocks::kept(), 0u);
    return;
  }
  EXPECT_EQ(blocks::kept(), before == 0 ? 1 : before);
  // An object of 200 bytes takes the same block back.
  struct two_hundred {
    unsigned char b[200];
  };
  d::block_allocator<two_hundred> objects{bytes};
  two_hundred* o = objects.allocate(1);
  EXPECT_EQ(static_cast<void*>(o), static_cast<void*>(a));
  objects.deallocate(o, 1);
  EXPECT_TRUE(bytes == objects);

  // Each size goes to the block of its size rounded up to 16; past 256, or
  // none, to the heap.
  auto kept_after_free = [&]<std::size_t Block>(std::size_t n, std::integral_constant<std::size_t, Block>) {
    unsigned char* p = bytes.allocate(n);
    const std::size_t kept = d::block_cache<Block>::kept();
    bytes.deallocate(p, n);
    return d::block_cache<Block>::kept() - kept;
  };
  using c16 = std::integral_constant<std::size_t, 16>;
  using c32 = std::integral_constant<std::size_t, 32>;
  using c256 = std::integral_constant<std::size_t, 256>;
  EXPECT_EQ(kept_after_free(1, c16{}), 1u);
  EXPECT_EQ(kept_after_free(16, c16{}), 1u);
  EXPECT_EQ(kept_after_free(17, c16{}), 0u);
  EXPECT_EQ(kept_after_free(17, c32{}), 1u);
  EXPECT_EQ(kept_after_free(255, c256{}), 1u);
  EXPECT_EQ(kept_after_free(256, c256{}), 1u);
  EXPECT_EQ(kept_after_free(257, c256{}), 0u);
  EXPECT_EQ(kept_after_free(0, c16{}), 0u);
}

TEST(WithAllocator, APostedCallTakesItsMemoryFromItsAllocatorAndRunsOnceOutsideThePost) {
  using call = cf::detail::with_allocator<std::function<void()>, counting_allocator<void>>;
  // No associated executor of its own: post and dispatch submit it to the
  // executor they are given, without a work dispatcher around it.
  static_assert(requires {
    typename asio::associated_executor<call, asio::any_io_executor>::asio_associated_executor_is_unspecialised;
  });
  static_assert(std::is_same_v<asio::associated_allocator_t<call>, counting_allocator<void>>);
  asio::io_context io;
  allocation_counts allocations;
  int runs = 0;
  asio::post(io, cf::detail::allocated(std::function<void()>([&] { ++runs; }), counting_allocator<void>(&allocations)));
  EXPECT_EQ(runs, 0);
  EXPECT_EQ(allocations.made, 1);
  EXPECT_EQ(allocations.live, 1);
  EXPECT_EQ(io.run(), 1u);
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(allocations.made, 1);
  EXPECT_EQ(allocations.live, 0);
}

TEST(WithAllocator, ADispatchOnTheContextsOwnThreadRunsTheCallAtOnce) {
  asio::io_context io;
  allocation_counts allocations;
  int runs = 0;
  bool ran_in_place = false;
  asio::post(io, [&] {
    asio::dispatch(io.get_executor(), cf::detail::allocated(std::function<void()>([&] { ++runs; }),
                                                            counting_allocator<void>(&allocations)));
    ran_in_place = runs == 1;
  });
  io.run();
  EXPECT_TRUE(ran_in_place);
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(allocations.made, 0);  // nothing was queued
}

TEST_F(FlightBasic, WaitersOfHandlersWithoutAnAllocatorReuseTheBlocksTheirThreadFreed) {
  cf::flight<int> f{io};
  int sum = 0;
  auto handler = [&sum](std::exception_ptr e, int v) {
    if (!e) sum += v;
  };
  using waiter = cf::detail::waiter_op<int, std::chrono::steady_clock, decltype(handler)>;
  using blocks = cf::detail::block_cache<cf::detail::block_size_for(sizeof(waiter))>;
  constexpr int callers = 100;
  const std::size_t kept_before = blocks::kept();
  ASSERT_LE(kept_before + callers, blocks::capacity);
  auto round = [&](int value) {
    gate g{io.get_executor()};
    for (int i = 0; i < callers; ++i) f.async_run("k", g.fn(), handler);
    const std::size_t kept_while_waiting = blocks::kept();
    run_until(io, [&] { return g.calls() == 1; });
    g.resolve(value);
    drain(io);
    return kept_while_waiting;
  };
  if constexpr (!blocks::enabled) {
    EXPECT_EQ(round(1), 0u);
    EXPECT_EQ(round(2), 0u);
    EXPECT_EQ(blocks::kept(), 0u);
  } else {
    // The first round's waiters take what this thread kept, if anything; once
    // they complete, their blocks are kept by this thread, which ran them.
    const std::size_t taken = std::min<std::size_t>(kept_before, callers);
    EXPECT_EQ(round(1), kept_before - taken);
    EXPECT_EQ(blocks::kept(), kept_before - taken + callers);
    // The second round's waiters take those blocks, and give them back.
    EXPECT_EQ(round(2), kept_before - taken);
    EXPECT_EQ(blocks::kept(), kept_before - taken + callers);
  }
  EXPECT_EQ(sum, callers * 3);
}

TEST_F(FlightBasic, DestroyingTheFlightCancelsWaiters) {
  gate g{io.get_executor()};
  outcome<> o;
  {
    cf::flight<int> f{io};
    f.async_run("k", g.fn(), o.handler());
    run_until(io, [&] { return g.calls() == 1; });
  }
  drain(io);
  EXPECT_EQ(o.code(), cf::error::cancelled);
  EXPECT_EQ(g.cancelled(), 1);
}

TEST_F(FlightBasic, AThrowingHandlerDoesNotStrandTheOtherWaiters) {
  cf::flight<int> f{io};
  std::vector<outcome<>> out(4);
  f.async_run("k", []() -> asio::awaitable<int> { co_return 5; }, out[0].handler());
  f.async_run("k", []() -> asio::awaitable<int> { co_return 5; },
              [](std::exception_ptr, int) { throw cftest::test_error("handler failed"); });
  for (std::size_t i = 1; i < out.size(); ++i)
    f.async_run("k", []() -> asio::awaitable<int> { co_return 5; }, out[i].handler());
  // As with any Asio handler, the exception leaves io_context::run().
  EXPECT_THROW(drain(io), cftest::test_error);
  drain(io);
  for (auto& o : out) {
    EXPECT_EQ(o.completions, 1);
    EXPECT_EQ(o.value, 5);
  }
  EXPECT_EQ(f.size(), 0u);
}

// Work that completes inside its initiation runs the waiters' handlers
// there: one that throws is not the work's failure, and leaves
// io_context::run() as any handler's exception does.
TEST_F(FlightBasic, AHandlerThrowingWhenTheWorkCompletesInsideItsInitiationLeavesRun) {
  cf::flight<int> f{io};
  int calls = 0;
  auto at_once = [&calls](auto&& token) {
    return asio::async_initiate<decltype(token), void(boost::system::error_code, int)>(
        [&calls](auto h) {
          ++calls;
          std::move(h)(boost::system::error_code{}, 4);
        },
        token);
  };
  std::vector<outcome<>> out(2);
  f.async_run("k", at_once, out[0].handler());
  f.async_run("k", at_once, [](std::exception_ptr, int) { throw cftest::test_error("handler failed"); });
  f.async_run("k", at_once, out[1].handler());
  EXPECT_THROW(drain(io), cftest::test_error);
  drain(io);
  EXPECT_EQ(calls, 1);
  for (auto& o : out) {
    EXPECT_EQ(o.completions, 1);
    EXPECT_FALSE(o.error);
    EXPECT_EQ(o.value, 4);
  }
  EXPECT_EQ(f.size(), 0u);
}

TEST_F(FlightBasic, ShardedFlightCoalescesPerKey) {
  cf::flight<int> f{io, cf::flight_options{.shards = 8}};
  int calls = 0;
  auto fn = [&]() -> asio::awaitable<int> { co_return ++calls; };
  std::vector<outcome<>> out(64);
  for (std::size_t i = 0; i < out.size(); ++i) f.async_run("key" + std::to_string(i % 16), fn, out[i].handler());
  EXPECT_EQ(f.size(), 16u);
  drain(io);
  EXPECT_EQ(calls, 16);
  for (auto& o : out) EXPECT_EQ(o.completions, 1);
  EXPECT_EQ(f.size(), 0u);
}

TEST(FlightErrors, CategoryAndMessages) {
  boost::system::error_code ec = cf::error::timed_out;
  EXPECT_EQ(ec.category().name(), std::string("cacheflight"));
  EXPECT_EQ(ec.message(), "the operation timed out");
  EXPECT_EQ(ec, cf::make_error_code(cf::error::timed_out));
  EXPECT_NE(ec, cf::error::cancelled);
  EXPECT_EQ(cf::to_string(cf::event_kind::task_timed_out), "task_timed_out");
}

}  // namespace

TEST_F(FlightBasic, TheTimeoutTimerUsesTheHandlersAllocatorToo) {
  auto count = [&](std::optional<std::chrono::nanoseconds> timeout) {
    cf::flight<int> f{io};
    allocation_counts allocations;
    outcome<> o;
    f.async_run("k", cf::run_options{.timeout = timeout}, []() -> asio::awaitable<int> { co_return 1; },
                asio::bind_allocator(counting_allocator<void>(&allocations), o.handler()));
    drain(io);
    EXPECT_EQ(o.value, 1);
    return allocations.made;
  };
  // With a timeout: the timer object and its wait operation besides the waiter.
  EXPECT_GE(count(std::chrono::seconds(5)), count(std::nullopt) + 2);
}

TEST_F(FlightBasic, ForgetLetsNewCallersStartFreshWorkWhileTheOldWaitersKeepTheirs) {
  cf::flight<int> f{io, cf::flight_options{.max_keys = 2}};
  gate old_work{io.get_executor()}, new_work{io.get_executor()};
  outcome<> a, b, c;
  f.async_run("k", old_work.fn(), a.handler());
  run_until(io, [&] { return old_work.calls() == 1; });
  EXPECT_TRUE(f.forget("k"));
  EXPECT_FALSE(f.has("k"));
  EXPECT_EQ(f.size(), 1u);  // still running, still counted
  EXPECT_FALSE(f.forget("k"));
  f.async_run("k", new_work.fn(), b.handler());
  run_until(io, [&] { return new_work.calls() == 1; });
  EXPECT_EQ(f.size(), 2u);
  f.async_run("other", []() -> asio::awaitable<int> { co_return 0; }, c.handler());  // over max_keys
  new_work.resolve(2);
  old_work.resolve(1);
  drain(io);
  EXPECT_EQ(a.value, 1);
  EXPECT_EQ(b.value, 2);
  EXPECT_EQ(c.code(), cf::error::max_keys_exceeded);
  EXPECT_EQ(f.size(), 0u);
}

TEST_F(FlightBasic, ClearCancelsForgottenWorkToo) {
  cf::flight<int> f{io};
  gate g{io.get_executor()};
  outcome<> a;
  f.async_run("k", g.fn(), a.handler());
  run_until(io, [&] { return g.calls() == 1; });
  f.forget("k");
  EXPECT_EQ(f.clear(), 1u);
  drain(io);
  EXPECT_EQ(a.code(), cf::error::cancelled);
  EXPECT_EQ(g.cancelled(), 1);
  EXPECT_EQ(f.size(), 0u);
}

TEST_F(FlightBasic, ForgetAllForgetsEveryKeyWhileTheirWaitersKeepTheirResults) {
  cf::flight<int> f{io, cf::flight_options{.shards = 4}};
  constexpr int keys = 1000;
  std::vector<std::unique_ptr<gate>> old_work;
  std::vector<outcome<>> old_out(keys);
  for (int i = 0; i < keys; ++i) {
    old_work.push_back(std::make_unique<gate>(io.get_executor()));
    f.async_run("k" + std::to_string(i), old_work.back()->fn(), old_out[i].handler());
  }
  run_until(io, [&] { return old_work.back()->calls() == 1; });
  EXPECT_EQ(f.forget_all(), std::size_t(keys));
  EXPECT_EQ(f.forget_all(), 0u);
  EXPECT_EQ(f.size(), std::size_t(keys));  // still running, still counted
  for (int i = 0; i < keys; ++i) EXPECT_FALSE(f.has("k" + std::to_string(i)));
  // A new caller of a forgotten key starts fresh work.
  gate fresh{io.get_executor()};
  outcome<> b;
  f.async_run("k7", fresh.fn(), b.handler());
  run_until(io, [&] { return fresh.calls() == 1; });
  EXPECT_TRUE(f.has("k7"));
  fresh.resolve(-7);
  for (int i = 0; i < keys; ++i) old_work[i]->resolve(i);
  drain(io);
  for (int i = 0; i < keys; ++i) {
    EXPECT_EQ(old_out[i].completions, 1);
    EXPECT_EQ(old_out[i].value, i);
  }
  EXPECT_EQ(b.value, -7);
  EXPECT_EQ(f.size(), 0u);
}

namespace {
// A result whose copies throw while `failing_copies` is positive, each such
// copy using one up; its moves never throw.
struct brittle {
  static inline int failing_copies = 0;
  int v = 0;
  brittle() = default;
  explicit brittle(int x) : v(x) {}
  brittle(const brittle& o) : v(o.v) {
    if (failing_copies > 0) {
      --failing_copies;
      throw test_error("copy failed");
    }
  }
  brittle(brittle&&) noexcept = default;
  brittle& operator=(const brittle&) = default;
  brittle& operator=(brittle&&) noexcept = default;
};
}  // namespace

TEST_F(FlightBasic, AWaiterWhoseCopyOfTheResultThrowsCompletesWithThatException) {
  cf::flight<brittle> f{io};
  struct result {
    int completions = 0;
    std::exception_ptr error;
    int value = -1;
  };
  std::vector<result> out(3);
  for (auto& r : out)
    f.async_run("k", []() -> asio::awaitable<brittle> { co_return brittle(7); },
                [&r](std::exception_ptr e, brittle v) {
                  ++r.completions;
                  r.error = e;
                  r.value = v.v;
                });
  brittle::failing_copies = 1;  // the first waiter's copy throws
  drain(io);
  brittle::failing_copies = 0;
  int failed = 0;
  for (auto& r : out) {
    EXPECT_EQ(r.completions, 1);
    if (r.error) {
      ++failed;
      EXPECT_THROW(std::rethrow_exception(r.error), test_error);
      EXPECT_EQ(r.value, 0);
    } else {
      EXPECT_EQ(r.value, 7);
    }
  }
  EXPECT_EQ(failed, 1);
  EXPECT_EQ(f.size(), 0u);
}
