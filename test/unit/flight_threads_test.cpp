// cf::flight under real concurrency: several threads calling, completing and
// cancelling at once. Run under ThreadSanitizer and AddressSanitizer by scripts/test.
#include "test_support.hpp"

#include <atomic>
#include <future>
#include <random>
#include <thread>

using namespace cftest;

namespace {

// A pool of threads running one io_context.
struct pool {
  explicit pool(unsigned n) : guard(asio::make_work_guard(io)) {
    for (unsigned i = 0; i < n; ++i) threads.emplace_back([this] { io.run(); });
  }
  void join() {
    guard.reset();
    for (auto& t : threads) t.join();
    threads.clear();
  }
  ~pool() {
    if (!threads.empty()) join();
  }
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard;
  std::vector<std::thread> threads;
};

// Work that takes a little real time and fails for some keys.
asio::awaitable<int> slow_work(int value, bool fail) {
  asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::microseconds(200 + value % 300));
  co_await t.async_wait(asio::use_awaitable);
  if (fail) throw cftest::test_error("work failed");
  co_return value;
}

TEST(FlightThreads, ThousandsOfCallersFromManyThreadsWithRandomCancels) {
  pool p(2);
  cf::flight<int> f{p.io, cf::flight_options{.shards = 4}};
  constexpr int callers_per_thread = 2000;
  constexpr int caller_threads = 3;
  std::atomic<int> completions{0}, values{0}, aborted{0}, cancelled{0}, errors{0}, runs{0};
  std::atomic<int> double_completion{0};

  auto caller = [&](int seed) {
    std::mt19937 rng(seed);
    for (int i = 0; i < callers_per_thread; ++i) {
      int k = static_cast<int>(rng() % 16);
      auto strand = asio::make_strand(p.io);
      auto sig = std::make_shared<asio::cancellation_signal>();
      auto done = std::make_shared<std::atomic<bool>>(false);
      auto h = [&, k, done, sig](std::exception_ptr e, int v) {
        if (done->exchange(true)) ++double_completion;
        ++completions;
        if (!e) {
          if (v == k) ++values;
          return;
        }
        try {
          std::rethrow_exception(e);
        } catch (const boost::system::system_error& se) {
          if (se.code() == asio::error::operation_aborted) ++aborted;
          else if (se.code() == cf::error::cancelled) ++cancelled;
          else ++errors;
        } catch (...) {
          ++errors;
        }
      };
      f.async_run(
          "key" + std::to_string(k),
          [&, k]() -> asio::awaitable<int> {
            ++runs;
            return slow_work(k, k == 13);
          },
          asio::bind_executor(strand, asio::bind_cancellation_slot(sig->slot(), std::move(h))));
      unsigned r = rng() % 100;
      if (r < 10) asio::post(strand, [sig] { sig->emit(asio::cancellation_type::terminal); });
      else if (r < 12) f.cancel("key" + std::to_string(k));
      if (i % 256 == 0) std::this_thread::yield();
    }
  };
  std::vector<std::thread> callers;
  for (int t = 0; t < caller_threads; ++t) callers.emplace_back(caller, 1234 + t);
  for (auto& t : callers) t.join();
  while (f.size() != 0) std::this_thread::sleep_for(1ms);
  p.join();

  const int total = callers_per_thread * caller_threads;
  EXPECT_EQ(completions.load(), total);
  EXPECT_EQ(double_completion.load(), 0);
  EXPECT_EQ(values + aborted + cancelled + errors, total);
  EXPECT_GT(values.load(), 0);
  EXPECT_LT(runs.load(), total);  // coalescing happened
  EXPECT_EQ(f.size(), 0u);
}

TEST(FlightThreads, Soak) {
  // 100 cycles x 100 calls over 20 keys, 30% of the work failing, random
  // timeouts and cancels: every caller completes exactly once.
  pool p(2);
  std::atomic<int> sink_events{0};
  cf::flight<int> f{p.io, cf::flight_options{.on_event = [&](const cf::event&) { ++sink_events; }, .shards = 2}};
  std::mt19937 rng(42);
  std::atomic<int> completions{0}, twice{0};
  int issued = 0;
  for (int cycle = 0; cycle < 100; ++cycle) {
    std::vector<std::shared_ptr<std::atomic<int>>> counts;
    for (int i = 0; i < 100; ++i) {
      int k = static_cast<int>(rng() % 20);
      bool fail = rng() % 10 < 3;
      auto count = std::make_shared<std::atomic<int>>(0);
      counts.push_back(count);
      auto strand = asio::make_strand(p.io);
      auto sig = std::make_shared<asio::cancellation_signal>();
      cf::run_options ro;
      if (rng() % 4 == 0) ro.timeout = std::chrono::microseconds(100 + rng() % 400);
      f.async_run("soak:" + std::to_string(k), ro, [k, fail] { return slow_work(k, fail); },
                  asio::bind_executor(strand, asio::bind_cancellation_slot(sig->slot(), [&, count, sig](std::exception_ptr, int) {
                    if (count->fetch_add(1) != 0) ++twice;
                    ++completions;
                  })));
      ++issued;
      unsigned r = rng() % 100;
      if (r < 10) asio::post(strand, [sig] { sig->emit(asio::cancellation_type::terminal); });
      else if (r < 13) f.cancel("soak:" + std::to_string(k));
    }
    // Let the cycle drain before the next.
    while (completions.load() < issued) std::this_thread::sleep_for(100us);
    for (auto& c : counts) ASSERT_EQ(c->load(), 1);
  }
  while (f.size() != 0) std::this_thread::sleep_for(1ms);
  p.join();
  EXPECT_EQ(completions.load(), 100 * 100);
  EXPECT_EQ(twice.load(), 0);
  EXPECT_EQ(f.size(), 0u);
  EXPECT_GT(sink_events.load(), 0);
}

TEST(FlightThreads, UseFutureCallersOnManyThreadsShareOneRun) {
  pool p(2);
  cf::flight<int> f{p.io};
  std::atomic<int> runs{0};
  std::atomic<bool> release{false};
  std::vector<std::future<int>> futures(64);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 16; ++i)
        futures[t * 16 + i] = f.async_run(
            "shared",
            [&]() -> asio::awaitable<int> {
              ++runs;
              asio::steady_timer timer(co_await asio::this_coro::executor);
              while (!release.load()) {
                timer.expires_after(200us);
                co_await timer.async_wait(asio::use_awaitable);
              }
              co_return 77;
            },
            asio::use_future);
    });
  for (auto& t : threads) t.join();
  release = true;
  for (auto& fu : futures) EXPECT_EQ(fu.get(), 77);
  EXPECT_EQ(runs.load(), 1);
  p.join();
}

// The work's executor on a context run by several threads is a strand: what
// is posted to it from several threads never runs at two places at once.
// `ex` is the flight's executor, whose context the caller runs on two threads.
void expect_work_serialised(const asio::any_io_executor& ex) {
  cf::flight<int> f{ex};
  std::promise<asio::any_io_executor> got;
  auto fut = f.async_run(
      "k",
      [&]() -> asio::awaitable<int> {
        got.set_value(co_await asio::this_coro::executor);
        co_return 1;
      },
      asio::use_future);
  EXPECT_EQ(fut.get(), 1);
  const asio::any_io_executor work_ex = got.get_future().get();
  EXPECT_TRUE(work_ex != ex);  // not the flight's executor itself
  std::atomic<bool> busy{false};
  std::atomic<int> overlaps{0}, ran{0};
  constexpr int per_thread = 2000;
  std::vector<std::thread> posters;
  for (int t = 0; t < 2; ++t)
    posters.emplace_back([&] {
      for (int i = 0; i < per_thread; ++i)
        asio::post(work_ex, [&] {
          if (busy.exchange(true)) ++overlaps;
          for (int spin = 0; spin < 50; ++spin) std::atomic_signal_fence(std::memory_order_seq_cst);
          busy.store(false);
          ++ran;
        });
    });
  for (auto& t : posters) t.join();
  while (ran.load() < 2 * per_thread) std::this_thread::sleep_for(100us);
  EXPECT_EQ(overlaps.load(), 0);
}

// `size()` never passes `max_keys`, even while threads race for the last
// places: a rejected key is never counted, not even for a moment.
TEST(FlightThreads, SizeNeverPassesMaxKeysWhileThreadsRaceForTheCap) {
  asio::io_context io(1);
  cf::flight<int> f{io, cf::flight_options{.max_keys = 4, .shards = 16}};
  gate held{io.get_executor()};
  for (int i = 0; i < 3; ++i) f.async_run("held" + std::to_string(i), held.fn(), [](std::exception_ptr, int) {});
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> most{0};
  std::thread watcher([&] {
    while (!stop.load()) most.store(std::max(most.load(), f.size()));
  });
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t)
    callers.emplace_back([&f, &held, t] {
      for (int i = 0; i < 5000; ++i)
        f.async_run("k" + std::to_string(t) + ":" + std::to_string(i), held.fn(), [](std::exception_ptr, int) {});
    });
  for (auto& c : callers) c.join();
  stop = true;
  watcher.join();
  EXPECT_LE(most.load(), 4u);
  EXPECT_EQ(f.size(), 4u);  // the three held keys and the one that took the last place
  f.clear();
  io.run();
}

TEST(FlightThreads, TheWorkRunsOnAStrandOfAnIoContextRunByTwoThreads) {
  pool p(2);
  expect_work_serialised(p.io.get_executor());
  p.join();
}

TEST(FlightThreads, TheWorkRunsOnAStrandOfAThreadPool) {
  asio::thread_pool tp(2);
  expect_work_serialised(tp.get_executor());
  tp.join();
}

TEST(FlightThreads, CallersOnAThreadPoolWithRandomCancelsEachCompleteOnce) {
  asio::thread_pool tp(2);
  cf::flight<int> f{tp.get_executor(), cf::flight_options{.shards = 2}};
  std::mt19937 rng(7);
  constexpr int total = 3000;
  std::atomic<int> completions{0}, twice{0}, values{0};
  std::vector<std::shared_ptr<std::atomic<int>>> counts;
  for (int i = 0; i < total; ++i) {
    int k = static_cast<int>(rng() % 8);
    auto count = std::make_shared<std::atomic<int>>(0);
    counts.push_back(count);
    auto strand = asio::make_strand(tp.get_executor());
    auto sig = std::make_shared<asio::cancellation_signal>();
    f.async_run("pool:" + std::to_string(k), [k] { return slow_work(k, false); },
                asio::bind_executor(strand, asio::bind_cancellation_slot(sig->slot(), [&, count, k, sig](std::exception_ptr e, int v) {
                  if (count->fetch_add(1) != 0) ++twice;
                  if (!e && v == k) ++values;
                  ++completions;
                })));
    unsigned r = rng() % 100;
    if (r < 10) asio::post(strand, [sig] { sig->emit(asio::cancellation_type::terminal); });
    else if (r < 12) f.cancel("pool:" + std::to_string(k));
  }
  while (completions.load() < total) std::this_thread::sleep_for(1ms);
  while (f.size() != 0) std::this_thread::sleep_for(1ms);
  tp.join();
  EXPECT_EQ(twice.load(), 0);
  for (auto& c : counts) EXPECT_EQ(c->load(), 1);
  EXPECT_GT(values.load(), 0);
}

// A caller that joins a run may be completed by another thread the moment it
// is linked, and an awaiting coroutine's frame (holding the key it passed)
// ends with it: the join reads nothing of the caller's afterwards. The
// sanitizer builds catch a read of the freed frame.
TEST(FlightThreads, AwaitingCoroutinesJoiningRunsThatEndOnOtherThreadsAllGetTheirValue) {
  pool p(4);
  cf::flight<int> f{p.io, cf::flight_options{.shards = 2}};
  constexpr int total = 4000;
  std::atomic<int> right{0}, done{0};
  for (int i = 0; i < total; ++i)
    asio::co_spawn(
        p.io,
        [&, k = i % 4]() -> asio::awaitable<void> {
          const int v = co_await f.async_run(
              "join:" + std::to_string(k), [k]() -> asio::awaitable<int> { co_return k; }, asio::use_awaitable);
          right += v == k;
          ++done;
        },
        asio::detached);
  while (done.load() < total) std::this_thread::sleep_for(1ms);
  p.join();
  EXPECT_EQ(right.load(), total);
  EXPECT_EQ(f.size(), 0u);
}

// Work whose copies and moves wait for its caller to be gone. Not an
// aggregate: built by aggregate initialisation in a `co_await` expression,
// GCC 12 frees the string its default member initializer made twice.
struct work_outliving_its_caller {
  static inline std::atomic<std::size_t> ran_with{0};
  waits_for_caller gate;
  std::string payload = std::string(200, 'x');
  work_outliving_its_caller() = default;
  asio::awaitable<int> operator()() {
    ran_with = payload.size();
    co_return 1;
  }
};

// Awaits `call()` (a run with a 1 ms timeout) in a coroutine on `io`, which
// two threads run, and sets `waits_for_caller::caller_gone` once the
// coroutine is gone. Returns whether the call timed out.
template <class Call>
bool await_timing_out(asio::io_context& io, Call call) {
  waits_for_caller::caller_gone = false;
  std::atomic<bool> timed_out{false};
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        try {
          co_await call();
        } catch (const boost::system::system_error& e) {
          timed_out = e.code() == cf::error::timed_out;
        }
      },
      [](std::exception_ptr) { waits_for_caller::caller_gone = true; });
  std::thread other([&] { io.run(); });
  io.run();
  other.join();
  return timed_out.load();
}

// An awaiting caller whose timeout ends it (on another thread) while its run
// is still starting: the frame that held the work is gone by then, and the
// run still starts from an intact copy of it.
TEST(FlightThreads, AnAwaitingCallerTimedOutWhileItsRunStartsLeavesTheRunItsWork) {
  work_outliving_its_caller::ran_with = 0;
  asio::io_context io(2);
  cf::flight<int> f{io, cf::flight_options{.on_abandon = cf::abandon_policy::finish}};
  EXPECT_TRUE(await_timing_out(io, [&]() -> asio::awaitable<void> {
    co_await f.async_run("k", cf::run_options{.timeout = 1ms}, work_outliving_its_caller{}, asio::use_awaitable);
  }));
  EXPECT_EQ(work_outliving_its_caller::ran_with.load(), 200u);
}

// The flight may be owned by the awaiting coroutine, and go as soon as its one
// caller is completed (here by its timeout, on another thread, while the run
// is reporting its miss): starting the run reads nothing of the flight's
// after that but what it holds a share of.
TEST(FlightThreads, AFlightOwnedByItsAwaitingCallerMayGoAsSoonAsTheCallerIsCompleted) {
  asio::io_context io(2);
  EXPECT_TRUE(await_timing_out(io, [&]() -> asio::awaitable<void> {
    cf::flight<int> f{io, cf::flight_options{.on_event = [](const cf::event& e) {
                        if (e.kind == cf::event_kind::miss) waits_for_caller::wait();
                      }}};
    co_await f.async_run(
        "k", cf::run_options{.timeout = 1ms}, []() -> asio::awaitable<int> { co_return 1; }, asio::use_awaitable);
  }));
  EXPECT_TRUE(waits_for_caller::caller_gone.load());
}

}  // namespace
