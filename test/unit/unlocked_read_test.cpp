// Reads of memory that take no shard lock: the per-thread numbers behind the
// readers' slots; a read of a hot value that goes on while another read of
// the same shard is in progress; a write that waits for the reads in progress
// in its shard; readers that keep seeing whole values, counted once each,
// while writers replace, evict, erase and clear them; a read whose copy
// throws; and LRU, whose reads still lock and whose stats count every read.
#include <cacheflight/cacheflight.hpp>
#include <cacheflight/detail/reader_slots.hpp>

#include <boost/asio.hpp>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace cf = cacheflight;
using namespace std::chrono_literals;
using cf::detail::reader_thread_index;

TEST(ReaderThreadIndex, ThreadsAliveTogetherHoldDistinctNumbersGivenBackWhenTheyExit) {
  constexpr int threads = 8;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  std::vector<unsigned> got(threads);
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      got[t] = reader_thread_index::get();
      EXPECT_EQ(reader_thread_index::get(), got[t]);  // the same number on every call
      std::unique_lock lk(mu);
      ++arrived;
      cv.notify_all();
      cv.wait(lk, [&] { return arrived == threads; });  // all alive at once
    });
  for (auto& t : ts) t.join();
  const std::set<unsigned> distinct(got.begin(), got.end());
  EXPECT_EQ(distinct.size(), std::size_t(threads));
  EXPECT_LE(*distinct.rbegin() + 1, reader_thread_index::high_water());
  // Their numbers are free again: a new thread takes the lowest free one,
  // which is no higher than the highest of theirs.
  const unsigned next = std::async(std::launch::async, [] { return reader_thread_index::get(); }).get();
  EXPECT_LE(next, *distinct.rbegin());
}

// A value whose copy, made on the thread named in `gate`, announces itself and
// waits until the gate opens.
struct gate {
  std::mutex mu;
  std::condition_variable cv;
  std::thread::id held_thread;
  bool inside = false;
  bool open = true;
};
std::atomic<gate*> the_gate{nullptr};

struct gated {
  std::string text;
  gated() = default;
  explicit gated(std::string t) : text(std::move(t)) {}
  gated(const gated& o) : text() {
    if (gate* g = the_gate.load(); g && std::this_thread::get_id() == g->held_thread) {
      std::unique_lock lk(g->mu);
      g->inside = true;
      g->cv.notify_all();
      g->cv.wait(lk, [&] { return g->open; });
    }
    text = o.text;
  }
  gated& operator=(const gated&) = default;
  gated(gated&&) noexcept = default;
  gated& operator=(gated&&) noexcept = default;
};

// A one-shard cache holding a hot value of "k" (read since stored, access
// count full, so that the next read takes no lock), and a read of it on a
// thread of its own, stopped inside the value's copy until `release`.
class HeldRead : public ::testing::Test {
 protected:
  ~HeldRead() override {
    if (held.joinable()) release();
  }

  void hold(const std::string& text) {
    c.async_set("k", gated(text), [](std::exception_ptr e) { ASSERT_FALSE(e); });
    io.run();
    io.restart();
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(c.peek("k"));
    the_gate = &g;
    std::promise<void> named;
    auto named_f = named.get_future();
    held = std::thread([this, named = std::move(named)]() mutable {
      {
        std::lock_guard lk(g.mu);
        g.held_thread = std::this_thread::get_id();
        g.open = false;
      }
      named.set_value();
      auto v = c.peek("k");
      held_seen = v ? v->text : "<none>";
    });
    named_f.get();
    std::unique_lock lk(g.mu);
    g.cv.wait(lk, [&] { return g.inside; });
  }

  void release() {
    {
      std::lock_guard lk(g.mu);
      g.open = true;
      g.cv.notify_all();
    }
    held.join();
    the_gate = nullptr;
  }

  asio::io_context io;
  cf::cache<gated> c{io, cf::cache_options{.shards = 1}};
  gate g;
  std::thread held;
  std::string held_seen;
};

TEST_F(HeldRead, AHotValueIsReadWhileAnotherReadOfItsShardIsInProgress) {
  hold("v1");
  // The held read is inside the shard; a second reader of the same shard
  // finishes without it.
  auto other = std::async(std::launch::async, [&] {
    auto v = c.peek("k");
    return v ? v->text : std::string("<none>");
  });
  const bool finished = other.wait_for(10s) == std::future_status::ready;
  release();
  EXPECT_TRUE(finished) << "a read waited for another read of its shard";
  EXPECT_EQ(other.get(), "v1");
  EXPECT_EQ(held_seen, "v1");
  EXPECT_EQ(c.stats().hits, 4u + 2u);
}

TEST_F(HeldRead, AWriteToAShardWaitsForTheReadsInProgressThere) {
  hold("old");
  // The set replaces the value the held read is copying: it must wait.
  std::atomic<bool> stored{false};
  std::thread writer([&] {
    asio::io_context wio;
    c.async_set("k", gated("new"), asio::bind_executor(wio, [&](std::exception_ptr e) { EXPECT_FALSE(e); }));
    stored = true;  // the store happens inside the call
    wio.run();
  });
  // Time for a writer that did not wait to replace the value under the read
  // (one that does not get that far within it goes unnoticed here; the
  // readers-and-writers test below catches it too, as torn values).
  std::this_thread::sleep_for(100ms);
  const bool stored_during_read = stored.load();
  release();
  writer.join();
  EXPECT_FALSE(stored_during_read) << "a write went ahead of a read in progress in its shard";
  EXPECT_EQ(held_seen, "old");
  auto now = c.peek("k");
  ASSERT_TRUE(now);
  EXPECT_EQ(now->text, "new");
}

// Readers on two threads, a writer on a third replacing, erasing and
// clearing the same keys in a cache small enough to evict: every value read
// is one stored for its key, whole, and every read is counted once.
TEST(UnlockedRead, ReadersSeeWholeValuesCountedOnceWhileWritersChangeThem) {
  asio::io_context io;
  cf::cache<std::string> c{io, cf::cache_options{.max_entries = 48, .shards = 4}};
  constexpr int keys = 64;
  std::vector<std::string> names;
  for (int k = 0; k < keys; ++k) names.push_back("key:" + std::to_string(k));
  for (int k = 0; k < keys; ++k) c.async_set(names[k], names[k] + "#0#" + std::string(40, 'x'), [](std::exception_ptr) {});
  io.run();
  io.restart();
  std::atomic<bool> stop{false};
  std::atomic<long> reads{0}, found{0}, wrong{0};
  auto reader = [&](unsigned seed) {
    std::minstd_rand rng(seed);
    long n = 0, f = 0;
    for (int i = 0; i < 200'000; ++i) {
      const std::string& k = names[rng() % keys];
      auto v = c.peek(k);
      ++n;
      if (v) {
        ++f;
        // "<key>#<n>#" and 40 x's: whole and of its own key.
        if (v->compare(0, k.size() + 1, k + "#") != 0 || v->size() < 40 ||
            v->substr(v->size() - 40) != std::string(40, 'x'))
          wrong.fetch_add(1);
      }
    }
    reads.fetch_add(n);
    found.fetch_add(f);
  };
  std::thread writer([&] {
    asio::io_context wio;
    std::minstd_rand rng(99);
    for (int i = 1; !stop.load(); ++i) {
      const std::string& k = names[rng() % keys];
      switch (rng() % 16) {
        case 0:
          c.async_erase(k, asio::bind_executor(wio, [](std::exception_ptr, bool) {}));
          break;
        case 1:
          if (i % 64 == 1) c.async_clear(asio::bind_executor(wio, [](std::exception_ptr) {}));
          break;
        default:
          c.async_set(k, k + "#" + std::to_string(i) + "#" + std::string(40, 'x'),
                      asio::bind_executor(wio, [](std::exception_ptr) {}));
      }
      if (i % 32 == 0) {
        wio.run();
        wio.restart();
      }
    }
    wio.run();
  });
  std::thread r1(reader, 1u), r2(reader, 2u);
  r1.join();
  r2.join();
  stop = true;
  writer.join();
  const auto s = c.stats();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(found.load(), 0);
  // The initial sets counted nothing; every peek counted one hit or one miss.
  EXPECT_EQ(s.hits, std::uint64_t(found.load()));
  EXPECT_EQ(s.hits + s.misses, std::uint64_t(reads.load()));
  EXPECT_LE(s.size, 48u);
}

// A value whose copy throws while `copy_throws` is set.
std::atomic<bool> copy_throws{false};
struct fragile {
  int n = 0;
  fragile() = default;
  explicit fragile(int v) : n(v) {}
  fragile(const fragile& o) : n(o.n) {
    if (copy_throws.load()) throw std::runtime_error("copy");
  }
  fragile& operator=(const fragile&) = default;
};

// A hot value whose copy throws: the exception reaches the reader, the read
// is counted as a miss (as a read under the lock counts it), and the entry
// is still there for the next read.
TEST(UnlockedRead, AReadWhoseCopyThrowsCountsAMissAndLeavesTheEntry) {
  asio::io_context io;
  cf::cache<fragile> c{io, cf::cache_options{.shards = 1}};
  c.async_set("k", fragile(7), [](std::exception_ptr e) { ASSERT_FALSE(e); });
  io.run();
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(c.peek("k"));
  copy_throws = true;
  EXPECT_THROW(c.peek("k"), std::runtime_error);
  copy_throws = false;
  auto s = c.stats();
  EXPECT_EQ(s.hits, 4u);
  EXPECT_EQ(s.misses, 1u);
  auto v = c.peek("k");
  ASSERT_TRUE(v);
  EXPECT_EQ(v->n, 7);
}

// Under LRU every hit moves its entry: hits keep taking the lock, and the
// policy still evicts the least recently read entry.
TEST(UnlockedRead, LruHitsStillReorderTheirEntries) {
  asio::io_context io;
  cf::cache<int> c{io, cf::cache_options{.max_entries = 2, .policy = cf::eviction_policy::lru, .shards = 1}};
  c.async_set("a", 1, [](std::exception_ptr) {});
  c.async_set("b", 2, [](std::exception_ptr) {});
  io.run();
  io.restart();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(c.peek("a"));
  c.async_set("c", 3, [](std::exception_ptr) {});
  io.run();
  EXPECT_TRUE(c.peek("a"));
  EXPECT_FALSE(c.peek("b"));
  EXPECT_TRUE(c.peek("c"));
}

// An LRU cache keeps no reader slots: its hits and misses are all counted
// by its shards, and its stats add up to the reads made.
TEST(UnlockedRead, LruStatsCountEveryReadWithoutReaderSlots) {
  asio::io_context io;
  cf::cache<int> c{io, cf::cache_options{.max_entries = 8, .policy = cf::eviction_policy::lru, .shards = 2}};
  c.async_set("a", 1, [](std::exception_ptr) {});
  io.run();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(c.peek("a"));
  ASSERT_FALSE(c.peek("b"));
  ASSERT_FALSE(c.peek("c"));
  const auto s = c.stats();
  EXPECT_EQ(s.hits, 5u);
  EXPECT_EQ(s.misses, 2u);
  EXPECT_EQ(s.size, 1u);
}

}  // namespace
