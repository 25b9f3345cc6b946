// cf::batch_loader: windows, size caps, deduplication, per-key failures,
// concurrency cap, cancellation, both batch-function forms, and the cache.
#include "test_support.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

using namespace cftest;

namespace {

using map_t = std::unordered_map<int, std::string>;
using loader_t = cf::batch_loader<int, std::string, std::hash<int>, cf::manual_clock>;

// Runs what is ready, restarting a context that ran out of work earlier.
void poll(asio::io_context& io) {
  if (io.stopped()) io.restart();
  io.poll();
}

class BatchLoader : public ::testing::Test {
 protected:
  void SetUp() override { cf::manual_clock::reset(); }

  // A batch function that records its calls and answers "v<k>" for every key
  // except those in `missing`.
  auto recording(std::set<int> missing = {}) {
    return [this, missing](std::vector<int> keys) -> asio::awaitable<map_t> {
      calls.push_back(keys);
      map_t m;
      for (int k : keys)
        if (!missing.count(k)) m[k] = "v" + std::to_string(k);
      co_return m;
    };
  }

  // A batch function that records its calls and holds each batch until its
  // timer in `held` is cancelled; then answers "x" for every key.
  auto holding() {
    return [this](std::vector<int> keys) -> asio::awaitable<map_t> {
      calls.push_back(keys);
      auto t = std::make_shared<asio::steady_timer>(io, asio::steady_timer::time_point::max());
      held.push_back(t);
      boost::system::error_code ec;
      co_await t->async_wait(asio::redirect_error(asio::use_awaitable, ec));
      map_t m;
      for (int k : keys) m[k] = "x";
      co_return m;
    };
  }

  std::vector<std::size_t> sizes() const {
    std::vector<std::size_t> s;
    for (auto& c : calls) s.push_back(c.size());
    return s;
  }

  asio::io_context io;
  std::vector<std::vector<int>> calls;
  std::vector<std::shared_ptr<asio::steady_timer>> held;
};

TEST_F(BatchLoader, KeysWithinAWindowMakeOneCall) {
  loader_t l{io, recording(), cf::batch_options{.window = 10ms, .max_batch = 5}};
  std::vector<outcome<std::string>> out(3);
  for (int k = 0; k < 3; ++k) l.async_load(k, out[k].handler());
  io.poll();
  EXPECT_TRUE(calls.empty());  // the window has not passed
  cf::manual_clock::advance(10ms);
  run_until(io, [&] { return out[2].done; });
  drain(io);
  EXPECT_EQ(sizes(), std::vector<std::size_t>{3});
  for (int k = 0; k < 3; ++k) EXPECT_EQ(out[k].value, "v" + std::to_string(k));
}

TEST_F(BatchLoader, MaxBatchSplitsSevenKeysIntoThreeThreeOne) {
  loader_t l{io, recording(), cf::batch_options{.window = 10ms, .max_batch = 3}};
  std::vector<outcome<std::string>> out(7);
  for (int k = 0; k < 7; ++k) l.async_load(k, out[k].handler());
  io.poll();
  EXPECT_EQ(sizes(), (std::vector<std::size_t>{3, 3}));  // full batches go at once
  cf::manual_clock::advance(10ms);
  run_until(io, [&] { return out[6].done; });
  drain(io);
  EXPECT_EQ(sizes(), (std::vector<std::size_t>{3, 3, 1}));
  for (int k = 0; k < 7; ++k) EXPECT_EQ(out[k].value, "v" + std::to_string(k));
}

TEST_F(BatchLoader, HundredKeysInBatchesOfFiftyAllCorrect) {
  loader_t l{io, recording(), cf::batch_options{.window = 10ms, .max_batch = 50}};
  std::vector<outcome<std::string>> out(100);
  for (int k = 0; k < 100; ++k) l.async_load(k, out[k].handler());
  drain(io);
  EXPECT_EQ(sizes(), (std::vector<std::size_t>{50, 50}));
  for (int k = 0; k < 100; ++k) {
    EXPECT_EQ(out[k].completions, 1);
    EXPECT_EQ(out[k].value, "v" + std::to_string(k));
  }
}

TEST_F(BatchLoader, DuplicateKeysAreSentOnce) {
  loader_t l{io, recording(), cf::batch_options{.window = 10ms}};
  std::vector<outcome<std::string>> out(6);
  for (int i = 0; i < 6; ++i) l.async_load(i % 2, out[i].handler());
  poll(io);  // the keys reach their batch
  cf::manual_clock::advance(10ms);
  run_until(io, [&] { return out[5].done; });
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], (std::vector<int>{0, 1}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(out[i].value, "v" + std::to_string(i % 2));
}

TEST_F(BatchLoader, AMissingKeyFailsAloneAndIsNotRemembered) {
  loader_t l{io, recording({2}), cf::batch_options{.window = 1ms}};
  std::vector<outcome<std::string>> out(3);
  for (int k = 1; k <= 3; ++k) l.async_load(k, out[k - 1].handler());
  poll(io);  // the keys reach their batch
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return out[2].done; });
  drain(io);
  EXPECT_EQ(out[0].value, "v1");
  EXPECT_EQ(out[1].code(), cf::error::key_not_found);
  EXPECT_EQ(out[2].value, "v3");
  // Asked again, the key goes to the batch function again.
  outcome<std::string> again;
  l.async_load(2, again.handler());
  poll(io);  // the keys reach their batch
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return again.done; });
  EXPECT_EQ(calls.size(), 2u);
}

TEST_F(BatchLoader, BatchFunctionFailureReachesEveryCallerOfThatBatchOnly) {
  int call = 0;
  loader_t l{io,
             [&](std::vector<int> keys) -> asio::awaitable<map_t> {
               if (call++ == 0) throw cftest::test_error("batch failed");
               map_t m;
               for (int k : keys) m[k] = "ok";
               co_return m;
             },
             cf::batch_options{.window = 1ms, .max_batch = 2}};
  std::vector<outcome<std::string>> out(4);
  for (int k = 0; k < 4; ++k) l.async_load(k, out[k].handler());
  drain(io);
  EXPECT_THROW(std::rethrow_exception(out[0].error), cftest::test_error);
  EXPECT_EQ(out[0].error, out[1].error);
  EXPECT_EQ(out[2].value, "ok");
  EXPECT_EQ(out[3].value, "ok");
}

// A value whose copy throws for 1.
struct touchy {
  int x = 0;
  touchy() = default;
  explicit touchy(int v) : x(v) {}
  touchy(const touchy& o) : x(o.x) {
    if (x == 1) throw cftest::test_error("copy of 1");
  }
  touchy(touchy&&) = default;
  touchy& operator=(const touchy&) = default;
  touchy& operator=(touchy&&) = default;
};

TEST_F(BatchLoader, AValueWhoseCopyThrowsFailsItsKeyAloneAndFreesTheBatchsTurn) {
  cf::batch_loader<int, touchy> l{io,
                                  [](std::vector<int> keys) -> asio::awaitable<std::vector<touchy>> {
                                    std::vector<touchy> r;
                                    for (int k : keys) r.emplace_back(k);
                                    co_return r;
                                  },
                                  cf::batch_options{.max_concurrent_batches = 1}};
  std::vector<outcome<touchy>> out(4);
  for (int k = 1; k <= 3; ++k) l.async_load(k, out[k].handler());
  EXPECT_NO_THROW(drain(io));
  EXPECT_THROW(std::rethrow_exception(out[1].error), cftest::test_error);
  EXPECT_EQ(out[2].value.x, 2);
  EXPECT_EQ(out[3].value.x, 3);
  outcome<touchy> later;
  l.async_load(9, later.handler());
  drain(io);
  EXPECT_EQ(later.completions, 1);
  EXPECT_EQ(later.value.x, 9);
}

TEST_F(BatchLoader, AHandlerThatThrowsLeavesTheOtherKeysAndTheNextBatchToComplete) {
  cf::batch_loader<int, int> l{io,
                               [](std::vector<int> keys) -> asio::awaitable<std::vector<int>> { co_return keys; },
                               cf::batch_options{.max_concurrent_batches = 1}};
  std::vector<int> got;
  l.async_load(1, [&](std::exception_ptr, int v) {
    got.push_back(v);
    throw cftest::test_error("handler");
  });
  for (int k = 2; k <= 3; ++k) l.async_load(k, [&](std::exception_ptr, int v) { got.push_back(v); });
  EXPECT_THROW(drain(io), cftest::test_error);
  drain(io);
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int>{1, 2, 3}));
  std::optional<int> later;
  l.async_load(9, [&](std::exception_ptr, int v) { later = v; });
  drain(io);
  EXPECT_EQ(later, 9);
}

TEST_F(BatchLoader, BatchesRunConcurrentlyUpToTheCap) {
  std::vector<std::shared_ptr<asio::steady_timer>> held;
  int running = 0, peak = 0;
  loader_t l{io,
             [&](std::vector<int> keys) -> asio::awaitable<map_t> {
               peak = std::max(peak, ++running);
               auto t = std::make_shared<asio::steady_timer>(io, asio::steady_timer::time_point::max());
               held.push_back(t);
               boost::system::error_code ec;
               co_await t->async_wait(asio::redirect_error(asio::use_awaitable, ec));
               --running;
               map_t m;
               for (int k : keys) m[k] = "x";
               co_return m;
             },
             cf::batch_options{.window = 1ms, .max_batch = 1, .max_concurrent_batches = 2}};
  std::vector<outcome<std::string>> out(3);
  for (int k = 0; k < 3; ++k) l.async_load(k, out[k].handler());
  run_until(io, [&] { return held.size() == 2; });
  io.poll();
  EXPECT_EQ(held.size(), 2u);  // the third batch waits its turn
  EXPECT_EQ(running, 2);
  held[0]->cancel();
  run_until(io, [&] { return held.size() == 3; });
  held[1]->cancel();
  held[2]->cancel();
  drain(io);
  EXPECT_EQ(peak, 2);
  for (auto& o : out) EXPECT_EQ(o.value, "x");
}

TEST_F(BatchLoader, CancellingTheCallerThatOpenedABatchLeavesTheOthersAlone) {
  loader_t l{io, recording(), cf::batch_options{.window = 10ms}};
  asio::cancellation_signal sig;
  outcome<std::string> opener, other, same_key;
  l.async_load(1, asio::bind_cancellation_slot(sig.slot(), opener.handler()));
  l.async_load(2, other.handler());
  sig.emit(asio::cancellation_type::terminal);
  run_until(io, [&] { return opener.done; });
  EXPECT_EQ(opener.code(), asio::error::operation_aborted);
  poll(io);  // the keys reach their batch
  cf::manual_clock::advance(10ms);
  run_until(io, [&] { return other.done; });
  drain(io);
  EXPECT_EQ(other.value, "v2");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], std::vector<int>{2});  // key 1 lost its only caller before the batch left
  l.async_load(1, same_key.handler());
  poll(io);  // the keys reach their batch
  cf::manual_clock::advance(10ms);
  run_until(io, [&] { return same_key.done; });
  EXPECT_EQ(same_key.value, "v1");
}

TEST_F(BatchLoader, AsyncOperationBatchFunction) {
  using sig_t = void(boost::system::error_code, map_t);
  int n = 0;
  auto op = [&](std::vector<int> keys, auto&& token) {
    ++n;
    return asio::async_initiate<decltype(token), sig_t>(
        [&io = io](auto h, std::vector<int> keys) {
          map_t m;
          for (int k : keys) m[k] = "op" + std::to_string(k);
          asio::post(io, [h = std::move(h), m = std::move(m)]() mutable {
            std::move(h)(boost::system::error_code{}, std::move(m));
          });
        },
        token, std::move(keys));
  };
  loader_t l{io, op, cf::batch_options{.window = 1ms}};
  outcome<std::string> a, b;
  l.async_load(5, a.handler());
  l.async_load(6, b.handler());
  poll(io);  // the keys reach their batch
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return a.done && b.done; });
  EXPECT_EQ(a.value, "op5");
  EXPECT_EQ(b.value, "op6");
  EXPECT_EQ(n, 1);
}

TEST_F(BatchLoader, LoadManyKeepsOrderAndMarksMissingKeys) {
  loader_t l{io, recording({3}), cf::batch_options{.window = 1ms}};
  std::optional<std::vector<std::optional<std::string>>> got;
  std::exception_ptr err;
  l.async_load_many({4, 3, 1}, [&](std::exception_ptr e, std::vector<std::optional<std::string>> v) {
    err = e;
    got = std::move(v);
  });
  poll(io);  // the keys reach their batch
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return got.has_value(); });
  EXPECT_FALSE(err);
  ASSERT_EQ(got->size(), 3u);
  EXPECT_EQ((*got)[0], "v4");
  EXPECT_EQ((*got)[1], std::nullopt);
  EXPECT_EQ((*got)[2], "v1");
  EXPECT_EQ(calls.size(), 1u);
}

TEST_F(BatchLoader, ImpossibleOptionsAreRejected) {
  EXPECT_THROW((loader_t{io, recording(), cf::batch_options{.window = 0ms}}), boost::system::system_error);
  EXPECT_THROW((loader_t{io, recording(), cf::batch_options{.max_batch = 0}}), boost::system::system_error);
  EXPECT_THROW((loader_t{io, recording(), cf::batch_options{.max_concurrent_batches = 0}}),
               boost::system::system_error);
}

TEST_F(BatchLoader, ConcurrentCacheMissesForDifferentKeysShareBatches) {
  loader_t l{io, recording(), cf::batch_options{.window = 5ms, .max_batch = 100}};
  cf::cache<std::string, cf::manual_clock> c{io};
  std::vector<outcome<std::string>> out(20);
  for (int i = 0; i < 20; ++i) c.async_get("user:" + std::to_string(i % 10), l.bind(i % 10), out[i].handler());
  poll(io);  // the keys reach their batch
  cf::manual_clock::advance(5ms);
  run_until(io, [&] { return out[19].done; });
  drain(io);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].size(), 10u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(out[i].value, "v" + std::to_string(i % 10));
  EXPECT_EQ(c.peek("user:3"), "v3");
  EXPECT_EQ(c.stats().loads, 10u);
}

TEST_F(BatchLoader, CacheTakesABatchLoaderInPlaceOfALoader) {
  std::vector<std::vector<std::string>> seen;
  cf::batch_loader<std::string, int, std::hash<std::string>, cf::manual_clock> by_key{
      io,
      [&](std::vector<std::string> keys) -> asio::awaitable<std::unordered_map<std::string, int>> {
        seen.push_back(keys);
        std::unordered_map<std::string, int> m;
        for (auto& k : keys) m[k] = static_cast<int>(k.size());
        co_return m;
      },
      cf::batch_options{.window = 2ms}};
  cf::cache<int, cf::manual_clock> c{io};
  outcome<> a, b, again;
  c.async_get("a", by_key, a.handler());
  c.async_get("bbb", by_key, b.handler());
  poll(io);
  cf::manual_clock::advance(2ms);
  run_until(io, [&] { return a.done && b.done; });
  EXPECT_EQ(a.value, 1);
  EXPECT_EQ(b.value, 3);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].size(), 2u);
  c.async_get("bbb", by_key, again.handler());  // now a memory hit
  drain(io);
  EXPECT_EQ(again.value, 3);
  EXPECT_EQ(seen.size(), 1u);
}

}  // namespace

TEST_F(BatchLoader, DistinctFloatingPointKeysNeverShareALoad) {
  using dloader = cf::batch_loader<double, std::string, std::hash<double>, cf::manual_clock>;
  std::vector<std::vector<double>> seen;
  dloader l{io,
            [&](std::vector<double> keys) -> asio::awaitable<std::unordered_map<double, std::string>> {
              seen.push_back(keys);
              std::unordered_map<double, std::string> m;
              for (double k : keys) m[k] = std::to_string(k) + (k == 0.1 ? "a" : "b");
              co_return m;
            },
            cf::batch_options{.window = 1ms}};
  outcome<std::string> a, b, c;
  l.async_load(0.1, a.handler());
  l.async_load(0.1000001, b.handler());
  l.async_load(1e300, c.handler());
  poll(io);
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return a.done && b.done && c.done; });
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].size(), 3u);
  EXPECT_EQ(a.value, std::to_string(0.1) + "a");
  EXPECT_EQ(b.value, std::to_string(0.1000001) + "b");
  EXPECT_NE(cf::key_traits<double>::to_string(1e300), cf::key_traits<double>::to_string(std::nextafter(1e300, 2e300)));
  EXPECT_NE(cf::key_traits<float>::to_string(0.1f), cf::key_traits<float>::to_string(0.10000001f));
}

TEST_F(BatchLoader, AKeyCancelledWhileItsBatchWaitsForATurnIsNeverSent) {
  loader_t l{io, holding(), cf::batch_options{.window = 1ms, .max_batch = 1, .max_concurrent_batches = 1}};
  asio::cancellation_signal sig;
  outcome<std::string> first, queued, third;
  l.async_load(1, first.handler());
  l.async_load(2, asio::bind_cancellation_slot(sig.slot(), queued.handler()));
  l.async_load(3, third.handler());
  run_until(io, [&] { return held.size() == 1; });
  poll(io);  // key 2's and key 3's batches wait behind key 1's
  ASSERT_EQ(calls.size(), 1u);
  sig.emit(asio::cancellation_type::terminal);
  run_until(io, [&] { return queued.done; });
  EXPECT_EQ(queued.code(), asio::error::operation_aborted);
  held[0]->cancel();
  run_until(io, [&] { return held.size() == 2; });
  held[1]->cancel();
  drain(io);
  EXPECT_EQ(calls, (std::vector<std::vector<int>>{{1}, {3}}));
  EXPECT_EQ(first.value, "x");
  EXPECT_EQ(third.value, "x");
}

TEST_F(BatchLoader, AcceptsEveryKeyACacheInFrontOfItAccepts) {
  cf::batch_loader<std::string, int, std::hash<std::string>, cf::manual_clock> l{
      io,
      [](std::vector<std::string> keys) -> asio::awaitable<std::unordered_map<std::string, int>> {
        std::unordered_map<std::string, int> m;
        for (auto& k : keys) m[k] = static_cast<int>(k.size());
        co_return m;
      },
      cf::batch_options{.window = 1ms}};
  cf::cache<int, cf::manual_clock> c{io, cf::cache_options{.max_key_length = 4096}};
  outcome<> o;
  c.async_get(std::string(2000, 'k'), l, o.handler());
  poll(io);
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return o.done; });
  EXPECT_FALSE(o.error);
  EXPECT_EQ(o.value, 2000);
}

TEST_F(BatchLoader, DestroyingTheLoaderCancelsItsCallersAndSendsNothingMore) {
  outcome<std::string> running, queued, open;
  {
    loader_t l{io, holding(), cf::batch_options{.window = 1ms, .max_batch = 2, .max_concurrent_batches = 1}};
    l.async_load(1, running.handler());
    l.async_load(2, running.handler());
    l.async_load(3, queued.handler());
    l.async_load(4, queued.handler());
    l.async_load(5, open.handler());
    run_until(io, [&] { return held.size() == 1; });
    poll(io);
  }
  run_until(io, [&] { return running.completions == 2 && queued.completions == 2 && open.completions == 1; });
  EXPECT_EQ(running.code(), cf::error::cancelled);
  EXPECT_EQ(queued.code(), cf::error::cancelled);
  EXPECT_EQ(open.code(), cf::error::cancelled);
  held[0]->cancel();
  cf::manual_clock::advance(1ms);
  drain(io);
  EXPECT_EQ(calls, (std::vector<std::vector<int>>{{1, 2}}));  // keys 3, 4 and 5 were never sent
}

TEST_F(BatchLoader, LoadManyHoldsWorkOnTheHandlersExecutorUntilItRuns) {
  loader_t l{io, recording(), cf::batch_options{.window = 1ms}};
  asio::io_context other;
  std::optional<std::vector<std::optional<std::string>>> got;
  l.async_load_many({1, 2}, asio::bind_executor(other, [&](std::exception_ptr, std::vector<std::optional<std::string>> v) {
                      got = std::move(v);
                    }));
  EXPECT_EQ(other.poll(), 0u);
  EXPECT_FALSE(other.stopped());
  poll(io);
  cf::manual_clock::advance(1ms);
  drain(io);
  other.run();
  ASSERT_TRUE(got);
  EXPECT_EQ((*got)[1], "v2");
}

TEST_F(BatchLoader, ACacheLoadAfterAnEraseDoesNotJoinABatchSentBeforeIt) {
  std::string db = "old";
  using sloader = cf::batch_loader<std::string, std::string, std::hash<std::string>, cf::manual_clock>;
  sloader l{io,
            [&](std::vector<std::string> keys) -> asio::awaitable<std::unordered_map<std::string, std::string>> {
              std::unordered_map<std::string, std::string> m;
              for (auto& k : keys) m[k] = db;  // read when the batch is sent
              auto t = std::make_shared<asio::steady_timer>(io, asio::steady_timer::time_point::max());
              held.push_back(t);
              boost::system::error_code ec;
              co_await t->async_wait(asio::redirect_error(asio::use_awaitable, ec));
              co_return m;
            },
            cf::batch_options{.window = 1ms}};
  cf::cache<std::string, cf::manual_clock> c{io};
  outcome<std::string> before, after;
  c.async_get("k", l, before.handler());
  poll(io);
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return held.size() == 1; });  // the batch read "old" and is in flight
  db = "new";
  bool erased = false;
  c.async_erase("k", [&](std::exception_ptr, bool) { erased = true; });
  run_until(io, [&] { return erased; });
  c.async_get("k", l, after.handler());
  poll(io);
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return held.size() == 2; });  // a batch of its own
  held[0]->cancel();
  held[1]->cancel();
  drain(io);
  EXPECT_EQ(before.value, "old");
  EXPECT_EQ(after.value, "new");
  EXPECT_EQ(c.peek("k"), "new");
}

// Batch functions that answer with a list in the order of their keys.
TEST_F(BatchLoader, AListOfValuesInKeyOrderGoesToItsKeys) {
  loader_t l{io,
             [this](std::vector<int> keys) -> asio::awaitable<std::vector<std::string>> {
               calls.push_back(keys);
               std::vector<std::string> out;
               for (int k : keys) out.push_back("list" + std::to_string(k));
               co_return out;
             },
             cf::batch_options{.window = 1ms}};
  std::map<int, outcome<std::string>> out;
  for (int k : {7, 3, 9, 1}) l.async_load(k, out[k].handler());
  poll(io);
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return out[1].done; });
  drain(io);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], (std::vector<int>{7, 3, 9, 1}));
  for (int k : {7, 3, 9, 1}) {
    EXPECT_FALSE(out[k].error);
    EXPECT_EQ(out[k].value, "list" + std::to_string(k));
  }
}

TEST_F(BatchLoader, OptionalsInKeyOrderMarkKeysWithoutAValue) {
  loader_t l{io,
             [](std::vector<int> keys) -> asio::awaitable<std::vector<std::optional<std::string>>> {
               std::vector<std::optional<std::string>> out;
               for (int k : keys) out.push_back(k % 2 ? std::optional<std::string>("odd" + std::to_string(k)) : std::nullopt);
               co_return out;
             },
             cf::batch_options{.window = 1ms}};
  std::map<int, outcome<std::string>> out;
  for (int k : {1, 2, 3, 4}) l.async_load(k, out[k].handler());
  poll(io);
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return out[4].done; });
  EXPECT_EQ(out[1].value, "odd1");
  EXPECT_EQ(out[3].value, "odd3");
  EXPECT_EQ(out[2].code(), cf::error::key_not_found);
  EXPECT_EQ(out[4].code(), cf::error::key_not_found);
}

TEST_F(BatchLoader, PerKeyErrorsInKeyOrderReachOnlyTheirKeys) {
  struct boom : std::runtime_error {
    using std::runtime_error::runtime_error;
  };
  loader_t l{io,
             [](std::vector<int> keys) -> asio::awaitable<std::vector<cf::batch_item<std::string>>> {
               std::vector<cf::batch_item<std::string>> out;
               for (int k : keys)
                 if (k == 2)
                   out.emplace_back(std::make_exception_ptr(boom("no 2")));
                 else
                   out.emplace_back("item" + std::to_string(k));
               co_return out;
             },
             cf::batch_options{.window = 1ms}};
  std::map<int, outcome<std::string>> out;
  for (int k : {1, 2, 3}) l.async_load(k, out[k].handler());
  poll(io);
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return out[3].done; });
  EXPECT_EQ(out[1].value, "item1");
  EXPECT_EQ(out[3].value, "item3");
  ASSERT_TRUE(out[2].error);
  try {
    std::rethrow_exception(out[2].error);
  } catch (const boom& e) {
    EXPECT_STREQ(e.what(), "no 2");  // the batch function's own exception, unchanged
  } catch (...) {
    ADD_FAILURE() << "another exception";
  }
}

TEST_F(BatchLoader, AListOfTheWrongLengthFailsEveryKeyOfItsBatch) {
  loader_t l{io,
             [this](std::vector<int> keys) -> asio::awaitable<std::vector<std::string>> {
               calls.push_back(keys);
               co_return std::vector<std::string>(keys.size() == 3 ? 2 : keys.size(), "x");
             },
             cf::batch_options{.window = 1ms, .max_batch = 3}};
  std::map<int, outcome<std::string>> out;
  for (int k : {1, 2, 3, 4}) l.async_load(k, out[k].handler());  // batches {1,2,3} and {4}
  poll(io);
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return out[1].done && out[4].done; });
  for (int k : {1, 2, 3}) {
    EXPECT_EQ(out[k].code(), cf::error::batch_size_mismatch) << k;
    try {
      std::rethrow_exception(out[k].error);
    } catch (const boost::system::system_error& e) {
      EXPECT_NE(std::string(e.what()).find("2 results for 3 keys"), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(out[4].error);  // the other batch is not affected
  EXPECT_EQ(out[4].value, "x");
}

TEST_F(BatchLoader, AnAsyncOperationMayAnswerWithAListInKeyOrder) {
  using sig_t = void(std::exception_ptr, std::vector<std::string>);
  auto op = [&](std::vector<int> keys, auto&& token) {
    return asio::async_initiate<decltype(token), sig_t>(
        [&io = io](auto h, std::vector<int> keys) {
          std::vector<std::string> v;
          for (int k : keys) v.push_back("aop" + std::to_string(k));
          asio::post(io, [h = std::move(h), v = std::move(v)]() mutable { std::move(h)(nullptr, std::move(v)); });
        },
        token, std::move(keys));
  };
  loader_t l{io, op, cf::batch_options{.window = 1ms}};
  outcome<std::string> a, b;
  l.async_load(5, a.handler());
  l.async_load(6, b.handler());
  poll(io);
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return a.done && b.done; });
  EXPECT_EQ(a.value, "aop5");
  EXPECT_EQ(b.value, "aop6");
}

TEST_F(BatchLoader, AListIsMatchedToItsKeysByPositionNotByEquality) {
  // NaN equals nothing, and 0.0 == -0.0: a list's results still reach the
  // right callers, as the keys' string forms keep them apart.
  using dloader = cf::batch_loader<double, std::string, std::hash<double>, cf::manual_clock>;
  dloader l{io,
            [](std::vector<double> keys) -> asio::awaitable<std::vector<std::string>> {
              std::vector<std::string> out;
              for (double k : keys) out.push_back(std::isnan(k) ? "nan" : std::signbit(k) ? "minus" : "plus");
              co_return out;
            },
            cf::batch_options{.window = 1ms}};
  outcome<std::string> nan, zero, minus_zero;
  l.async_load(std::numeric_limits<double>::quiet_NaN(), nan.handler());
  l.async_load(0.0, zero.handler());
  l.async_load(-0.0, minus_zero.handler());
  poll(io);
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return nan.done && zero.done && minus_zero.done; });
  EXPECT_FALSE(nan.error);
  EXPECT_EQ(nan.value, "nan");
  EXPECT_EQ(zero.value, "plus");
  EXPECT_EQ(minus_zero.value, "minus");
}

TEST_F(BatchLoader, ListsOfBoolsAndOfExceptionPointersAreValuesToo) {
  cf::batch_loader<int, bool, std::hash<int>, cf::manual_clock> bools{
      io,
      [](std::vector<int> keys) -> asio::awaitable<std::vector<bool>> {
        std::vector<bool> out;
        for (int k : keys) out.push_back(k % 2 == 0);
        co_return out;
      },
      cf::batch_options{.window = 1ms}};
  outcome<bool> even, odd;
  bools.async_load(2, even.handler());
  bools.async_load(3, odd.handler());
  // A value type that is itself an exception pointer: alternative 0 of the
  // batch item is the value, alternative 1 the key's failure.
  using eptr = std::exception_ptr;
  cf::batch_loader<int, eptr, std::hash<int>, cf::manual_clock> ptrs{
      io,
      [](std::vector<int> keys) -> asio::awaitable<std::vector<cf::batch_item<eptr>>> {
        std::vector<cf::batch_item<eptr>> out;
        for (int k : keys)
          out.emplace_back(std::in_place_index<0>, std::make_exception_ptr(std::runtime_error(std::to_string(k))));
        co_return out;
      },
      cf::batch_options{.window = 1ms}};
  outcome<eptr> p;
  ptrs.async_load(7, p.handler());
  poll(io);
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return even.done && odd.done && p.done; });
  EXPECT_TRUE(even.value);
  EXPECT_FALSE(odd.value);
  EXPECT_FALSE(p.error);
  ASSERT_TRUE(p.value);
  try {
    std::rethrow_exception(p.value);
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "7");
  }
}

// An asynchronous batch operation whose completion token has a default.
struct default_token_op {
  asio::io_context* io;
  template <class Token = asio::deferred_t>
  auto operator()(std::vector<int> keys, Token&& token = {}) const {
    return asio::async_initiate<Token, void(boost::system::error_code, std::vector<std::string>)>(
        [io = io](auto h, std::vector<int> keys) {
          std::vector<std::string> v;
          for (int k : keys) v.push_back("d" + std::to_string(k));
          asio::post(*io, [h = std::move(h), v = std::move(v)]() mutable {
            std::move(h)(boost::system::error_code{}, std::move(v));
          });
        },
        token, std::move(keys));
  }
};

TEST_F(BatchLoader, AnAsyncOperationWithADefaultCompletionTokenIsStillAnOperation) {
  loader_t l{io, default_token_op{&io}, cf::batch_options{.window = 1ms}};
  outcome<std::string> a;
  l.async_load(4, a.handler());
  poll(io);
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return a.done; });
  EXPECT_EQ(a.value, "d4");
}

TEST_F(BatchLoader, LoadManyKeepsTheOtherValuesWhenOneKeyFailsOnItsOwn) {
  loader_t l{io,
             [](std::vector<int> keys) -> asio::awaitable<std::vector<cf::batch_item<std::string>>> {
               std::vector<cf::batch_item<std::string>> out;
               for (int k : keys)
                 if (k == 2)
                   out.emplace_back(std::make_exception_ptr(std::runtime_error("two")));
                 else
                   out.emplace_back("m" + std::to_string(k));
               co_return out;
             },
             cf::batch_options{.window = 1ms}};
  std::optional<std::pair<std::exception_ptr, std::vector<std::optional<std::string>>>> got;
  l.async_load_many({1, 2, 3}, [&](std::exception_ptr e, std::vector<std::optional<std::string>> v) {
    got.emplace(e, std::move(v));
  });
  poll(io);
  cf::manual_clock::advance(1ms);
  run_until(io, [&] { return got.has_value(); });
  ASSERT_TRUE(got->first);  // the key's own failure is the call's error
  ASSERT_EQ(got->second.size(), 3u);
  EXPECT_EQ(got->second[0], "m1");
  EXPECT_FALSE(got->second[1]);
  EXPECT_EQ(got->second[2], "m3");
}
