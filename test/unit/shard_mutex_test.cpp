// The shards' lock: mutual exclusion between threads hammering it, try_lock,
// and a waiter that outlasts its spins (the holder keeps the lock far longer),
// sleeps, and takes the lock once it is released.
#include <cacheflight/detail/shard_mutex.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

namespace {

using cacheflight::detail::shard_mutex;

TEST(ShardMutex, ExcludesEveryOtherHolder) {
  shard_mutex mu;
  std::atomic<bool> inside{false};
  std::atomic<int> overlaps{0};
  long counter = 0;  // plain: guarded by mu alone
  constexpr int threads = 4;
  constexpr int rounds = 100'000;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&] {
      for (int i = 0; i < rounds; ++i) {
        std::lock_guard lk(mu);
        if (inside.exchange(true, std::memory_order_relaxed)) overlaps.fetch_add(1);
        ++counter;
        inside.store(false, std::memory_order_relaxed);
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(counter, long(threads) * rounds);
}

TEST(ShardMutex, TryLockFailsWhileHeldAndSucceedsOnceReleased) {
  shard_mutex mu;
  ASSERT_TRUE(mu.try_lock());
  EXPECT_FALSE(mu.try_lock());
  EXPECT_FALSE(std::async(std::launch::async, [&] { return mu.try_lock(); }).get());
  mu.unlock();
  EXPECT_TRUE(std::async(std::launch::async, [&] {
                const bool got = mu.try_lock();
                if (got) mu.unlock();
                return got;
              }).get());
}

// A waiter past its spins sleeps on the lock, counted as a sleeper, and takes
// the lock once the holder releases it, not before. On failure the waiter is
// detached and what it uses leaked, so that a waiter that never returns is
// reported, not waited for forever.
TEST(ShardMutex, ASleepingWaiterTakesTheLockOnceItIsReleased) {
  struct shared {
    shard_mutex mu;
    std::atomic<bool> released{false};
    std::atomic<int> took{0};  // 1: after the release; 2: before it
  };
  auto* sh = new shared;
  sh->mu.lock();
  std::thread waiter([sh] {
    sh->mu.lock();
    sh->took.store(sh->released.load() ? 1 : 2);
    sh->mu.unlock();
  });
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  auto fail = [&](const char* what) {
    waiter.detach();
    FAIL() << what;
  };
  while (sh->mu.sleepers() == 0 && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
  if (sh->mu.sleepers() != 1) return fail("the waiter never went to sleep");
  std::this_thread::sleep_for(std::chrono::milliseconds(5));  // past several backstops
  EXPECT_EQ(sh->took.load(), 0) << "the waiter took a lock that was held";
  sh->released.store(true);
  sh->mu.unlock();
  while (sh->took.load() == 0 && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
  if (sh->took.load() == 0) return fail("the waiter did not take the lock after its release");
  waiter.join();
  EXPECT_EQ(sh->took.load(), 1);
  EXPECT_EQ(sh->mu.sleepers(), 0u);
  delete sh;
}

}  // namespace
