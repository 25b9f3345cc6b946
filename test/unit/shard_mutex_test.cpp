// The shards' lock: mutual exclusion between threads hammering it, try_lock,
// and a waiter that outlasts the spinning and yielding steps (the holder keeps
// the lock for far longer than they take) and takes the lock once it is free.
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

TEST(ShardMutex, AWaiterPastItsSpinsAndYieldsTakesTheLockOnceItIsReleased) {
  shard_mutex mu;
  mu.lock();
  std::atomic<bool> released{false};
  std::atomic<bool> started{false};
  auto waiter = std::async(std::launch::async, [&] {
    started = true;
    mu.lock();
    const bool after_release = released.load();
    mu.unlock();
    return after_release;
  });
  while (!started) std::this_thread::yield();
  // Far longer than the spins and yields: the waiter is napping by now.
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout)
      << "the waiter took a lock that was held";
  released = true;
  mu.unlock();
  ASSERT_EQ(waiter.wait_for(std::chrono::seconds(10)), std::future_status::ready) << "the waiter never took the lock";
  EXPECT_TRUE(waiter.get());
}

}  // namespace
