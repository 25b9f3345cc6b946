// Google Benchmark suite for cf::flight. Times are per operation (per waiter
// or per miss); see compare.cpp for the ratio table and RESULTS.md for figures.
#include "cache_scenarios.hpp"

#include <cacheflight/detail/hashed_key.hpp>

#include <benchmark/benchmark.h>
#include <boost/container_hash/hash.hpp>

#include <string>
#include <string_view>
#include <vector>

namespace {

using cfbench::ns;

template <ns (*Scenario)(std::size_t)>
void per_item(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) state.SetIterationTime(Scenario(n).count() / 1e9);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
  state.counters["ns_per_item"] =
      benchmark::Counter(static_cast<double>(state.iterations() * n), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// The key hash of the library's indexes, and Boost's string hash as the
// baseline, over 1,024 keys of the length given, each ending in its own
// counter: each hash picks the next key, so the time is the hash's latency,
// as in a lookup that waits for it.
struct library_hash {
  std::size_t operator()(std::string_view k) const noexcept { return cacheflight::detail::hashed_key::hash_of(k); }
};
template <class Hash>
void key_hash(benchmark::State& state) {
  const auto length = static_cast<std::size_t>(state.range(0));
  std::vector<std::string> keys;
  for (int i = 0; i < 1024; ++i) {
    std::string k(length, 'k');
    const std::string counter = std::to_string(1000 + i);
    k.replace(length - counter.size(), counter.size(), counter);
    keys.push_back(std::move(k));
  }
  std::size_t h = 0;
  for (auto _ : state) {
    h = Hash{}(std::string_view(keys[h & 1023]));
    benchmark::DoNotOptimize(h);
  }
}

}  // namespace

BENCHMARK(key_hash<library_hash>)->Name("key_hash")->Arg(7)->Arg(16)->Arg(40);
BENCHMARK(key_hash<boost::hash<std::string_view>>)->Name("baseline/boost_string_hash")->Arg(7)->Arg(16)->Arg(40);

BENCHMARK(per_item<cfbench::flight_waiters_callback>)->Name("flight/waiters/callback")->Arg(10'000)->UseManualTime();
BENCHMARK(per_item<cfbench::baseline_waiters_callback>)->Name("baseline/batch_post/callback")->Arg(10'000)->UseManualTime();
BENCHMARK(per_item<cfbench::flight_waiters_awaitable>)->Name("flight/waiters/awaitable")->Arg(10'000)->UseManualTime();
BENCHMARK(per_item<cfbench::baseline_waiters_awaitable>)->Name("baseline/coroutine_post/awaitable")->Arg(10'000)->UseManualTime();
BENCHMARK(per_item<cfbench::naive_waiters>)->Name("reference/mutex_shared_future/waiters")->Arg(10'000)->UseManualTime();
BENCHMARK(per_item<cfbench::flight_miss_coroutine>)->Name("flight/miss/coroutine")->Arg(10'000)->UseManualTime();
BENCHMARK(per_item<cfbench::flight_miss_coroutine_multithread_context>)->Name("flight/miss/coroutine/multithread_context")->Arg(10'000)->UseManualTime();
BENCHMARK(per_item<cfbench::flight_miss_async_op>)->Name("flight/miss/async_op")->Arg(10'000)->UseManualTime();
BENCHMARK(per_item<cfbench::baseline_post_round>)->Name("baseline/post_round")->Arg(10'000)->UseManualTime();

BENCHMARK(per_item<cfbench::cache_peek_hit>)->Name("cache/peek_hit")->Arg(100'000)->UseManualTime();
BENCHMARK(per_item<cfbench::baseline_locked_map_hit>)->Name("baseline/locked_flat_map_hit")->Arg(100'000)->UseManualTime();
BENCHMARK(per_item<cfbench::cache_get_hit_callback>)->Name("cache/async_get_hit/callback")->Arg(100'000)->UseManualTime();
BENCHMARK(per_item<cfbench::baseline_posted_op>)->Name("baseline/posted_op")->Arg(100'000)->UseManualTime();
BENCHMARK(per_item<cfbench::cache_co_get_hit>)->Name("cache/co_get_hit")->Arg(100'000)->UseManualTime();
BENCHMARK(per_item<cfbench::baseline_nested_awaitable>)->Name("baseline/nested_awaitable")->Arg(100'000)->UseManualTime();
BENCHMARK(per_item<cfbench::cache_get_hit_awaitable>)->Name("cache/async_get_hit/awaitable")->Arg(100'000)->UseManualTime();
BENCHMARK(per_item<cfbench::baseline_awaited_post>)->Name("baseline/awaited_post")->Arg(100'000)->UseManualTime();
BENCHMARK(per_item<cfbench::batch_loader_keys>)->Name("batch_loader/keys")->Arg(100'000)->UseManualTime();

BENCHMARK_MAIN();
