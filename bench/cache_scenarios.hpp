// Cache and batch-loader scenarios shared by the Google Benchmark suite and
// the comparison harness.
#ifndef CACHEFLIGHT_BENCH_CACHE_SCENARIOS_HPP
#define CACHEFLIGHT_BENCH_CACHE_SCENARIOS_HPP

#include "scenarios.hpp"

#include <boost/unordered/unordered_flat_map.hpp>

#include <atomic>
#include <random>
#include <thread>

namespace cfbench {

inline asio::awaitable<int> load_one() { co_return 1; }

// A key the optimizer cannot see through: a loop over a literal key would
// otherwise hash it at compile time once its lookup is inlined, which happens
// or not depending on how many callers the lookup has in the program.
[[gnu::noinline]] inline std::string opaque_key(const char* k) { return std::string(k); }

// A cache holding `user:42`, on a single-threaded context.
struct warm_cache {
  asio::io_context io{1};
  cf::cache<int> c{io, cf::cache_options{.max_entries = 1000}};
  warm_cache() {
    c.async_set("user:42", 1, [](std::exception_ptr) {});
    io.run();
    io.restart();
  }
};

// peek hit vs a boost::unordered_flat_map under a mutex.
inline ns cache_peek_hit(std::size_t n) {
  warm_cache w;
  std::size_t sum = 0;
  const std::string key = opaque_key("user:42");
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; ++i) sum += static_cast<std::size_t>(*w.c.peek(key));
  auto t1 = clock_type::now();
  check(sum == n, "every peek hit");
  return t1 - t0;
}

inline ns baseline_locked_map_hit(std::size_t n) {
  std::mutex mu;
  boost::unordered_flat_map<std::string, int> m;
  m.emplace("user:42", 1);
  std::size_t sum = 0;
  const std::string key = opaque_key("user:42");
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; ++i) {
    std::optional<int> v;
    {
      std::lock_guard lk(mu);
      auto it = m.find(key);
      if (it != m.end()) v = it->second;
    }
    sum += static_cast<std::size_t>(*v);
  }
  auto t1 = clock_type::now();
  check(sum == n, "every map lookup hit");
  return t1 - t0;
}

// async_get hit with a callback vs a bare posted operation, batches of 1000.
inline ns cache_get_hit_callback(std::size_t n) {
  warm_cache w;
  std::size_t sum = 0;
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; i += 1000) {
    for (std::size_t j = 0; j < 1000; ++j)
      w.c.async_get("user:42", load_one, [&sum](std::exception_ptr, int v) { sum += static_cast<std::size_t>(v); });
    w.io.run();
    w.io.restart();
  }
  auto t1 = clock_type::now();
  check(sum == n, "every get hit");
  return t1 - t0;
}

inline ns baseline_posted_op(std::size_t n) {
  asio::io_context io{1};
  std::size_t sum = 0;
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; i += 1000) {
    for (std::size_t j = 0; j < 1000; ++j)
      asio::post(io, asio::append([&sum](std::exception_ptr, int v) { sum += static_cast<std::size_t>(v); },
                                  std::exception_ptr{}, 1));
    io.run();
    io.restart();
  }
  auto t1 = clock_type::now();
  check(sum == n, "every post ran");
  return t1 - t0;
}

// One coroutine awaiting n hits through co_get / nested trivial awaitables.
inline ns cache_co_get_hit(std::size_t n) {
  warm_cache w;
  std::size_t sum = 0;
  ns took{};
  asio::co_spawn(
      w.io,
      [&]() -> asio::awaitable<void> {
        auto t0 = clock_type::now();
        for (std::size_t i = 0; i < n; ++i) sum += static_cast<std::size_t>(co_await w.c.co_get("user:42", load_one));
        took = clock_type::now() - t0;
      },
      asio::detached);
  w.io.run();
  check(sum == n, "every co_get hit");
  return took;
}

inline asio::awaitable<int> trivial_value() { co_return 1; }

inline ns baseline_nested_awaitable(std::size_t n) {
  asio::io_context io{1};
  std::size_t sum = 0;
  ns took{};
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        auto t0 = clock_type::now();
        for (std::size_t i = 0; i < n; ++i) sum += static_cast<std::size_t>(co_await trivial_value());
        took = clock_type::now() - t0;
      },
      asio::detached);
  io.run();
  check(sum == n, "every nested await ran");
  return took;
}

// One coroutine awaiting n hits through async_get(use_awaitable) / posted ops.
inline ns cache_get_hit_awaitable(std::size_t n) {
  warm_cache w;
  std::size_t sum = 0;
  ns took{};
  asio::co_spawn(
      w.io,
      [&]() -> asio::awaitable<void> {
        auto t0 = clock_type::now();
        for (std::size_t i = 0; i < n; ++i)
          sum += static_cast<std::size_t>(co_await w.c.async_get("user:42", load_one, asio::use_awaitable));
        took = clock_type::now() - t0;
      },
      asio::detached);
  w.io.run();
  check(sum == n, "every awaited get hit");
  return took;
}

inline ns baseline_awaited_post(std::size_t n) {
  asio::io_context io{1};
  std::size_t sum = 0;
  ns took{};
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        auto t0 = clock_type::now();
        for (std::size_t i = 0; i < n; ++i) {
          co_await asio::post(io, asio::use_awaitable);
          ++sum;
        }
        took = clock_type::now() - t0;
      },
      asio::detached);
  io.run();
  check(sum == n, "every awaited post ran");
  return took;
}

// Reads of 1,000 keys from `threads` threads, each running `reads(cache,
// names, rng)` once and adding up what it returns, which must come to `n`
// per thread. With `shared`, one cache serves all threads; otherwise each
// thread has its own (the ceiling the hardware allows). With `warm`, every
// key is read a few times first, as the keys of a warm cache are. Returns
// the wall time of the threads' reads.
template <class Reads>
ns threaded_reads(std::size_t n, unsigned threads, bool shared, bool warm, Reads reads) {
  constexpr int keys = 1000;
  std::vector<std::string> names;
  for (int k = 0; k < keys; ++k) names.push_back("user:" + std::to_string(k));
  asio::io_context cache_io{1};
  std::vector<std::unique_ptr<cf::cache<int>>> caches;
  for (unsigned t = 0; t < (shared ? 1u : threads); ++t) {
    caches.push_back(std::make_unique<cf::cache<int>>(cache_io, cf::cache_options{.max_entries = 100'000, .shards = 16}));
    for (int k = 0; k < keys; ++k) caches.back()->async_set(names[k], k, [](std::exception_ptr) {});
  }
  cache_io.run();
  if (warm)
    for (auto& c : caches)
      for (int r = 0; r < 4; ++r)
        for (int k = 0; k < keys; ++k) check(c->peek(names[k]).has_value(), "a warmed key is in memory");
  std::atomic<std::size_t> total{0};
  std::atomic<unsigned> ready{0};
  std::atomic<bool> go{false};
  auto worker = [&](unsigned id) {
    cf::cache<int>& c = *caches[shared ? 0 : id];
    std::minstd_rand rng(id + 1);
    ready.fetch_add(1);
    while (!go.load()) std::this_thread::yield();
    total.fetch_add(reads(c, names, rng));
  };
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < threads; ++t) ts.emplace_back(worker, t);
  while (ready.load() != threads) std::this_thread::yield();
  auto t0 = clock_type::now();
  go = true;
  for (auto& t : ts) t.join();
  auto t1 = clock_type::now();
  check(total.load() == n * threads, "every threaded read hit");
  return t1 - t0;
}

// Hit-heavy load from `threads` threads, each running its own io_context(1)
// and calling a sharded cache with callbacks bound to its context. Returns
// the wall time for `n` gets per thread.
inline ns cache_hits_threads(std::size_t n, unsigned threads, bool shared = true) {
  return threaded_reads(n, threads, shared, false,
                        [n](cf::cache<int>& c, const std::vector<std::string>& names, std::minstd_rand& rng) {
                          asio::io_context io{1};
                          std::size_t sum = 0;
                          for (std::size_t i = 0; i < n; i += 1000) {
                            for (std::size_t j = 0; j < 1000; ++j)
                              c.async_get(names[rng() % names.size()], load_one,
                                          asio::bind_executor(io, [&sum](std::exception_ptr, int) { ++sum; }));
                            io.run();
                            io.restart();
                          }
                          return sum;
                        });
}

// The same keys read with `peek`, without an executor: what one cache's
// memory allows readers on several cores, apart from the scheduling of
// completions. Returns the wall time for `n` peeks per thread.
inline ns cache_peeks_threads(std::size_t n, unsigned threads, bool shared = true) {
  return threaded_reads(n, threads, shared, true,
                        [n](cf::cache<int>& c, const std::vector<std::string>& names, std::minstd_rand& rng) {
                          std::size_t sum = 0;
                          for (std::size_t i = 0; i < n; ++i) sum += c.peek(names[rng() % names.size()]).has_value();
                          return sum;
                        });
}

// Batch loader throughput: n distinct keys, trivial batch function, batches of 100.
inline ns batch_loader_keys(std::size_t n) {
  asio::io_context io{1};
  using map_t = std::unordered_map<int, int>;
  cf::batch_loader<int, int> l{io,
                               [](std::vector<int> keys) -> asio::awaitable<map_t> {
                                 map_t m;
                                 m.reserve(keys.size());
                                 for (int k : keys) m.emplace(k, k);
                                 co_return m;
                               },
                               cf::batch_options{.window = std::chrono::milliseconds(1), .max_batch = 100}};
  std::size_t done = 0;
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; ++i) l.async_load(static_cast<int>(i), [&done](std::exception_ptr, int) { ++done; });
  io.run();
  auto t1 = clock_type::now();
  check(done == n, "every batched key loaded");
  return t1 - t0;
}

}  // namespace cfbench

#endif
