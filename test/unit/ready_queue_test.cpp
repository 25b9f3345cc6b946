// With batch_hits, values found in memory complete in rounds on the cache's
// io_context: one scheduling runs every completion queued before it, in
// order; completions queued by a round run in the next one, after the
// context's other work; none runs inside its initiating function, each runs
// on its executor. Without it, each is posted on its own.
#include "test_support.hpp"

#include <atomic>
#include <future>
#include <thread>

using namespace cftest;

namespace {

asio::awaitable<int> never_called() {
  ADD_FAILURE() << "the loader ran on a hit";
  co_return 0;
}

class HitCompletion : public ::testing::Test {
 protected:
  asio::io_context io;
  cf::cache<int> c{io, cf::cache_options{.batch_hits = true}};

  void fill(int n) {
    for (int i = 0; i < n; ++i) c.async_set("k" + std::to_string(i), i, [](std::exception_ptr) {});
    drain(io);
    io.restart();
  }
};

TEST_F(HitCompletion, OneSchedulingRunsEveryQueuedHitInOrder) {
  fill(3);
  std::vector<int> got;
  for (int i = 0; i < 3; ++i)
    c.async_get("k" + std::to_string(i), never_called, [&](std::exception_ptr e, int v) {
      EXPECT_FALSE(e);
      got.push_back(v);
    });
  EXPECT_TRUE(got.empty()) << "a hit completed inside its initiating function";
  EXPECT_EQ(io.run_one(), 1u);  // one handler of the context: the round
  EXPECT_EQ(got, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(io.poll(), 0u);
}

TEST_F(HitCompletion, AHitStartedByARoundRunsInTheNextRoundAfterOtherWork) {
  fill(2);
  std::vector<std::string> order;
  c.async_get("k0", never_called, [&](std::exception_ptr, int) {
    order.push_back("first hit");
    c.async_get("k1", never_called, [&](std::exception_ptr, int) { order.push_back("second hit"); });
    order.push_back("first hit returned");
  });
  asio::post(io, [&] { order.push_back("other work"); });
  EXPECT_EQ(io.run_one(), 1u);
  EXPECT_EQ(order, (std::vector<std::string>{"first hit", "first hit returned"}));
  EXPECT_EQ(io.run_one(), 1u);
  EXPECT_EQ(order.back(), "other work");
  EXPECT_EQ(io.run_one(), 1u);
  EXPECT_EQ(order.back(), "second hit");
  EXPECT_EQ(io.poll(), 0u);
}

TEST_F(HitCompletion, LookupsWithoutALoaderShareTheRounds) {
  fill(2);
  std::vector<std::optional<int>> got;
  c.async_get("k1", [&](std::exception_ptr, std::optional<int> v) { got.push_back(v); });
  c.async_get("absent", [&](std::exception_ptr, std::optional<int> v) { got.push_back(v); });
  c.async_get("k0", [&](std::exception_ptr, std::optional<int> v) { got.push_back(v); });
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(io.run_one(), 1u);
  EXPECT_EQ(got, (std::vector<std::optional<int>>{1, std::nullopt, 0}));
}

TEST_F(HitCompletion, AThrowingHandlerLeavesTheRestOfItsRoundForTheNextRun) {
  fill(3);
  std::vector<int> got;
  c.async_get("k0", never_called, [&](std::exception_ptr, int v) { got.push_back(v); });
  c.async_get("k1", never_called, [&](std::exception_ptr, int) -> void { throw test_error("handler"); });
  c.async_get("k2", never_called, [&](std::exception_ptr, int v) { got.push_back(v); });
  EXPECT_THROW(io.run(), test_error);
  EXPECT_EQ(got, (std::vector<int>{0}));
  drain(io);
  EXPECT_EQ(got, (std::vector<int>{0, 2}));
}

// A handler whose move throws once armed: the move that takes it out of its
// queue item throws inside the round. Its moves copy `alive`, so only the
// destruction of the queued handler itself releases it.
struct throwing_move_handler {
  std::shared_ptr<bool> armed;
  std::shared_ptr<int> alive;
  std::vector<int>* got;
  throwing_move_handler(std::shared_ptr<bool> a, std::shared_ptr<int> l, std::vector<int>* g)
      : armed(std::move(a)), alive(std::move(l)), got(g) {}
  throwing_move_handler(throwing_move_handler&& o) : armed(o.armed), alive(o.alive), got(o.got) {
    if (*armed) throw test_error("move");
  }
  void operator()(std::exception_ptr, int v) { got->push_back(v); }
};

TEST_F(HitCompletion, AHandlerWhoseMoveThrowsIsReleasedAndTheRoundGoesOn) {
  fill(2);
  auto armed = std::make_shared<bool>(false);
  auto alive = std::make_shared<int>(0);
  std::weak_ptr<int> watch = alive;
  std::vector<int> got;
  c.async_get("k0", never_called, throwing_move_handler{armed, std::move(alive), &got});
  c.async_get("k1", never_called, [&](std::exception_ptr, int v) { got.push_back(v); });
  *armed = true;
  EXPECT_THROW(io.run(), test_error);
  EXPECT_TRUE(watch.expired()) << "the handler whose move threw was not destroyed";
  EXPECT_TRUE(got.empty());
  drain(io);
  EXPECT_EQ(got, (std::vector<int>{1}));
}

TEST(HitCompletionShutdown, QueuedHitsAreDestroyedNotRunWhenTheContextShutsDown) {
  auto alive = std::make_shared<int>(0);
  std::weak_ptr<int> watch = alive;
  bool ran = false;
  {
    asio::io_context io;
    {
      cf::cache<int> c{io, cf::cache_options{.batch_hits = true}};
      c.async_set("k", 1, [](std::exception_ptr) {});
      drain(io);
      io.restart();
      c.async_get("k", never_called, [&ran, keep = std::move(alive)](std::exception_ptr, int) { ran = true; });
    }  // the cache is gone; its queued completion is still owed to the context
    EXPECT_FALSE(watch.expired());
  }  // the context shuts down without running it
  EXPECT_FALSE(ran);
  EXPECT_TRUE(watch.expired());
}

TEST_F(HitCompletion, AHandlerBoundToAnotherContextRunsThere) {
  fill(1);
  asio::io_context other;
  bool ran = false;
  c.async_get("k0", never_called, asio::bind_executor(other, [&](std::exception_ptr, int v) {
                ran = v == 0;
                EXPECT_TRUE(other.get_executor().running_in_this_thread());
              }));
  EXPECT_EQ(io.poll(), 0u);
  EXPECT_FALSE(ran);
  EXPECT_EQ(other.run(), 1u);
  EXPECT_TRUE(ran);
}

TEST_F(HitCompletion, CoroutinesAwaitingHitsResumeOnTheContextInTurn) {
  fill(2);
  std::vector<int> got;
  for (int i = 0; i < 2; ++i)
    asio::co_spawn(
        io,
        [&, i]() -> asio::awaitable<void> {
          for (int round = 0; round < 3; ++round) {
            int v = co_await c.async_get("k" + std::to_string(i), never_called, asio::use_awaitable);
            got.push_back(v);
          }
        },
        asio::detached);
  drain(io);
  EXPECT_EQ(got, (std::vector<int>{0, 1, 0, 1, 0, 1}));
}

TEST(HitCompletionThreads, ChainsOnTwoThreadsAndCallersOutsideTheContextAllComplete) {
  asio::io_context io;
  cf::cache<int> c{io, cf::cache_options{.shards = 4, .batch_hits = true}};
  for (int i = 0; i < 64; ++i) c.async_set("k" + std::to_string(i), 1, [](std::exception_ptr) {});
  drain(io);
  io.restart();
  constexpr int chains = 16, per_chain = 2000, outside = 2000;
  std::atomic<int> total{0};
  struct chain {
    cf::cache<int>* c;
    std::atomic<int>* total;
    int left, at;
    void next() {
      if (left-- == 0) return;
      at = (at + 7) % 64;
      c->async_get("k" + std::to_string(at), never_called, [this](std::exception_ptr e, int v) {
        EXPECT_FALSE(e);
        total->fetch_add(v, std::memory_order_relaxed);
        next();
      });
    }
  };
  std::vector<chain> cs;
  for (int i = 0; i < chains; ++i) cs.push_back(chain{&c, &total, per_chain, i});
  auto work = asio::make_work_guard(io);
  std::thread runner([&] { io.run(); });
  std::thread caller([&] {
    for (int i = 0; i < outside; ++i)
      c.async_get("k" + std::to_string(i % 64), never_called,
                  [&](std::exception_ptr, int v) { total.fetch_add(v, std::memory_order_relaxed); });
  });
  for (auto& ch : cs) asio::post(io, [&ch] { ch.next(); });
  caller.join();
  while (total.load() < chains * per_chain + outside) io.run_one_for(std::chrono::milliseconds(10));
  work.reset();
  io.run();
  runner.join();
  EXPECT_EQ(total.load(), chains * per_chain + outside);
}

TEST(HitCompletionDefault, EachHitIsItsOwnPostAndAnotherThreadMayRunIt) {
  asio::io_context io;
  cf::cache<int> c{io};
  c.async_set("k", 1, [](std::exception_ptr) {});
  drain(io);
  io.restart();
  std::vector<int> got;
  for (int i = 0; i < 3; ++i) c.async_get("k", never_called, [&](std::exception_ptr, int v) { got.push_back(v); });
  EXPECT_EQ(io.run_one(), 1u);
  EXPECT_EQ(got.size(), 1u);
  EXPECT_EQ(io.run(), 2u);
  EXPECT_EQ(got.size(), 3u);

  // A handler that waits for a hit it started does not hold it back: the
  // other thread running the context completes it.
  io.restart();
  auto work = asio::make_work_guard(io);
  std::atomic<bool> second{false};
  std::thread helper([&] { io.run(); });
  std::thread helper2([&] { io.run(); });
  std::promise<void> first_done;
  c.async_get("k", never_called, [&](std::exception_ptr, int) {
    c.async_get("k", never_called, [&](std::exception_ptr, int) { second = true; });
    for (int i = 0; i < 5000 && !second; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    first_done.set_value();
  });
  first_done.get_future().wait();
  EXPECT_TRUE(second.load());
  work.reset();
  helper.join();
  helper2.join();
}

}  // namespace
