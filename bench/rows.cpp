// The scenarios of the comparison with jgaa/glad (the other C++/Asio
// coalescing cache), each against its baseline in this process, plus the
// cost of a miss at capacity, heap allocations per hit, and memory per entry.
//
// Usage: cacheflight_rows [--quick | --memory | --miss | --miss1 | --coalesced
//                          | --hit CHAINS THREADS KEYS [--batch]]
//   --memory: memory per entry only; --miss: the miss rows only; --miss1: 2M
//   misses on io_context(1); --coalesced: the coalesced callbacks only; --hit:
//   one chain row only, 20M hits; the last three print no baseline and are
//   meant for profiling
//
// Every ratio is (cacheflight's time per operation) / (the baseline's time per
// operation), both measured here, alternating, median of the rounds. glad's
// ratios are the ones measured outside this project on the same machine
// (bench/RESULTS.md cites them); they are printed for reference only.
// The replaceable allocation functions below pair malloc with free; GCC
// cannot see that they replace the global ones.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

#include "cache_scenarios.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <cstring>
#include <fstream>
#include <new>
#include <thread>
#include <unordered_map>
#include <vector>

// Counts heap allocations of this process: operator new and aligned_alloc.
namespace {
std::atomic<std::uint64_t> allocations{0};
}
void* operator new(std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
// Asio's recycling allocator falls back to aligned_alloc (coroutine frames,
// handlers) when its per-thread cache cannot serve a block: counted too.
extern "C" {
void* __libc_memalign(std::size_t, std::size_t);
void* aligned_alloc(std::size_t align, std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_memalign(align, n);
}
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace {

using namespace cfbench;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs `f(n)` on `threads` threads sharing `io`, returns the wall time.
template <class Start>
ns run_threads(asio::io_context& io, unsigned threads, Start start) {
  auto t0 = clock_type::now();
  start();
  std::vector<std::thread> ts;
  for (unsigned i = 1; i < threads; ++i) ts.emplace_back([&] { io.run(); });
  io.run();
  for (auto& t : ts) t.join();
  return clock_type::now() - t0;
}

// `chains` closed-loop callback chains, each issuing `n / chains` cache hits
// (keys taken in turn from `keys`), on one io_context (default concurrency
// hint, as in the comparison with glad) run by `threads` threads; `batch`:
// with cache_options::batch_hits.
ns cache_chains(std::size_t n, unsigned chains, unsigned threads, std::size_t keys, bool batch = false) {
  asio::io_context io;
  cf::cache<int> c{io, cf::cache_options{.max_entries = 4096, .shards = 16, .batch_hits = batch}};
  std::vector<std::string> names;
  for (std::size_t k = 0; k < keys; ++k) {
    names.push_back("user:" + std::to_string(k));
    c.async_set(names.back(), 1, [](std::exception_ptr) {});
  }
  io.run();
  io.restart();
  std::atomic<std::size_t> total{0};
  struct chain {
    cf::cache<int>* c;
    const std::vector<std::string>* names;
    std::size_t left, at;
    std::atomic<std::size_t>* total;
    void next() {
      if (left-- == 0) return;
      at = (at + 7) % names->size();
      c->async_get((*names)[at], load_one, [this](std::exception_ptr e, int v) {
        if (!e) total->fetch_add(std::size_t(v), std::memory_order_relaxed);
        next();
      });
    }
  };
  std::vector<chain> cs(chains);
  for (unsigned i = 0; i < chains; ++i) cs[i] = chain{&c, &names, n / chains, i, &total};
  auto t = run_threads(io, threads, [&] {
    for (auto& ch : cs) ch.next();
  });
  check(total.load() == (n / chains) * chains, "every chained hit completed");
  return t;
}

// Baseline: the same chains, each step a bare post.
ns post_chains(std::size_t n, unsigned chains, unsigned threads) {
  asio::io_context io;
  std::atomic<std::size_t> total{0};
  struct chain {
    asio::io_context* io;
    std::size_t left;
    std::atomic<std::size_t>* total;
    void next() {
      if (left-- == 0) return;
      asio::post(*io, asio::append(
                          [this](std::exception_ptr, int v) {
                            total->fetch_add(std::size_t(v), std::memory_order_relaxed);
                            next();
                          },
                          nullptr, 1));
    }
  };
  std::vector<chain> cs(chains);
  for (auto& ch : cs) ch = chain{&io, n / chains, &total};
  auto t = run_threads(io, threads, [&] {
    for (auto& ch : cs) ch.next();
  });
  check(total.load() == (n / chains) * chains, "every chained post completed");
  return t;
}

// 10,000 callers of one cold key whose loader waits 1 ms on a timer; the
// time excludes the 1 ms.
ns cache_coalesced(std::size_t n, bool coroutines) {
  asio::io_context io(1);
  cf::cache<int> c{io};
  std::size_t done = 0;
  auto loader = [&io]() -> asio::awaitable<int> {
    asio::steady_timer t(io, std::chrono::milliseconds(1));
    co_await t.async_wait(asio::use_awaitable);
    co_return 1;
  };
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; ++i) {
    if (coroutines)
      asio::co_spawn(
          io, [&]() -> asio::awaitable<void> { done += co_await c.async_get("user:42", loader, asio::use_awaitable); },
          asio::detached);
    else
      c.async_get("user:42", loader, [&](std::exception_ptr, int v) { done += std::size_t(v); });
  }
  io.run();
  auto t1 = clock_type::now();
  check(done == n, "every coalesced caller completed");
  return (t1 - t0) - std::chrono::milliseconds(1);
}

ns cache_coalesced_callbacks(std::size_t n) { return cache_coalesced(n, false); }
ns cache_coalesced_coroutines(std::size_t n) { return cache_coalesced(n, true); }

// Runs `step(i, next)` for i = 0..n-1, each step started by the completion
// of the previous one (which calls `next`); returns the wall time.
template <class Step>
ns run_chain(asio::io_context& io, std::size_t n, Step step) {
  std::size_t i = 0;
  std::function<void()> next = [&] {
    if (i < n) step(i++, next);
  };
  auto t0 = clock_type::now();
  next();
  io.run();
  return clock_type::now() - t0;
}

// A miss on a new key each time, trivial coroutine loader, cache at capacity.
ns cache_miss_at_capacity(std::size_t n, int hint) {
  asio::io_context io(hint);
  cf::cache<int> c{io, cf::cache_options{.max_entries = 10'000}};
  for (int i = 0; i < 10'000; ++i) c.async_set("fill:" + std::to_string(i), 1, [](std::exception_ptr) {});
  io.run();
  io.restart();
  std::size_t done = 0;
  const auto t = run_chain(io, n, [&](std::size_t i, const std::function<void()>& next) {
    c.async_get("miss:" + std::to_string(i), load_one, [&](std::exception_ptr, int v) {
      done += std::size_t(v);
      next();
    });
  });
  check(done == n && c.size() == 10'000, "every miss loaded, the cache stayed at capacity");
  return t;
}

// Baseline of a miss: a chain of spawned trivial coroutines, one per step.
ns spawn_chain(std::size_t n, int hint) {
  asio::io_context io(hint);
  std::size_t done = 0;
  const auto t = run_chain(io, n, [&](std::size_t, const std::function<void()>& next) {
    asio::co_spawn(io, load_one(), [&](std::exception_ptr, int v) {
      done += std::size_t(v);
      next();
    });
  });
  check(done == n, "every spawned coroutine completed");
  return t;
}

struct measured {
  double subject, baseline;
};

template <class S, class B>
measured alternate(S subject, B baseline, std::size_t n, int reps) {
  subject(n);
  baseline(n);
  std::vector<double> s, b;
  for (int i = 0; i < reps; ++i) {
    s.push_back(subject(n).count() / double(n));
    b.push_back(baseline(n).count() / double(n));
  }
  return {median(s), median(b)};
}

void row(const char* name, measured m, double glad_ratio) {
  const double r = m.subject / m.baseline;
  std::printf("%-64s %8.1f ns %8.1f ns  %5.2fx   glad %5.2fx  %s\n", name, m.subject, m.baseline, r, glad_ratio,
              r <= glad_ratio ? "at or below" : "above");
}

// Heap allocations per operation in steady state.
template <class F>
double allocations_per_op(std::size_t n, F run) {
  run(n / 10);  // steady state: recycled memory warmed up
  const auto before = allocations.load();
  run(n);
  return double(allocations.load() - before) / double(n);
}

// RSS growth in bytes per entry for `n` entries built by `fill` in a child process.
template <class Fill>
double bytes_per_entry(std::size_t n, Fill fill) {
  int fds[2];
  check(pipe(fds) == 0, "pipe");
  const pid_t pid = fork();
  check(pid >= 0, "fork");
  if (pid == 0) {
    auto rss = [] {
      std::ifstream statm("/proc/self/statm");
      long pages = 0, resident = 0;
      statm >> pages >> resident;
      return resident * sysconf(_SC_PAGESIZE);
    };
    const long before = rss();
    fill(n);
    const double per = double(rss() - before) / double(n);
    (void)!write(fds[1], &per, sizeof per);
    _exit(0);
  }
  close(fds[1]);
  double per = 0;
  (void)!read(fds[0], &per, sizeof per);
  close(fds[0]);
  waitpid(pid, nullptr, 0);
  return per;
}

std::string short_key(std::size_t i) { return "key:" + std::to_string(i); }

template <cf::eviction_policy P>
void fill_cache(std::size_t n) {
  asio::io_context io(1);
  auto* c = new cf::cache<std::uint64_t>{io, cf::cache_options{.max_entries = n, .policy = P}};
  for (std::size_t i = 0; i < n; ++i) {
    c->async_set(short_key(i), i, [](std::exception_ptr) {});
    if (i % 4096 == 0) {
      io.run();
      io.restart();
    }
  }
  io.run();
  check(c->size() == n, "every entry held");
}

void timings(bool quick, int reps);
void misses(std::size_t count, int reps);
void memory(std::size_t entries);

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const bool memory_only = argc > 1 && std::strcmp(argv[1], "--memory") == 0;
  const int reps = quick ? 3 : 9;
  if (argc > 1 && std::strcmp(argv[1], "--miss") == 0) {
    misses(200'000, reps);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--miss1") == 0) {
    const std::size_t n = 2'000'000;
    std::printf("%.1f ns per miss\n", cache_miss_at_capacity(n, 1).count() / double(n));
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--coalesced") == 0) {
    ns t{};
    for (int i = 0; i < 200; ++i) t += cache_coalesced_callbacks(10'000);
    std::printf("%.1f ns per coalesced callback\n", t.count() / 2e6);
    return 0;
  }
  if (argc > 4 && std::strcmp(argv[1], "--hit") == 0) {
    const auto chains = unsigned(std::atoi(argv[2]));
    const auto threads = unsigned(std::atoi(argv[3]));
    const auto keys = std::size_t(std::atoi(argv[4]));
    const bool batch = argc > 5 && std::strcmp(argv[5], "--batch") == 0;
    const std::size_t n = 20'000'000;
    std::printf("%.1f ns per hit\n", cache_chains(n, chains, threads, keys, batch).count() / double(n));
    return 0;
  }
  if (!memory_only) timings(quick, reps);
  memory(quick ? 200'000 : 1'000'000);
  return 0;
}

namespace {

void misses(std::size_t count, int reps) {
  for (int hint : {1, BOOST_ASIO_CONCURRENCY_HINT_DEFAULT}) {
    auto m = alternate([hint](std::size_t n) { return cache_miss_at_capacity(n, hint); },
                       [hint](std::size_t n) { return spawn_chain(n, hint); }, count, reps);
    std::printf("%-52s %8.1f ns %8.1f ns  %5.2fx   (target <= 1000 ns)\n",
                hint == 1 ? "miss at capacity, trivial loader, io_context(1)" : "miss at capacity, default io_context",
                m.subject, m.baseline, m.subject / m.baseline);
  }
}

void timings(bool quick, int reps) {
  const std::size_t hits = quick ? 160'000 : 1'600'000;
  const std::size_t coalesced = 10'000;

  std::printf("%-64s %11s %11s %7s   %11s\n", "scenario (one io_context, T threads)", "cacheflight", "baseline",
              "ratio", "glad ratio");
  struct chains_row {
    const char* name;
    unsigned chains, threads;
    std::size_t keys;
    double glad;
  };
  for (const chains_row r : {chains_row{"hit, 1 key, 1 callback chain, T=1", 1, 1, 1, 1.92},
                             chains_row{"hit, 1 key, 16 callback chains, T=1", 16, 1, 1, 0.89},
                             chains_row{"hit, 1 key, 16 chains, T=2", 16, 2, 1, 0.28},
                             chains_row{"hit, 1024 keys, 16 chains, T=1", 16, 1, 1024, 1.90},
                             chains_row{"hit, 1024 keys, 16 chains, T=2", 16, 2, 1024, 0.80}})
    for (bool batch : {false, true})
      row((std::string(r.name) + (batch ? ", batch_hits" : "")).c_str(),
          alternate([r, batch](std::size_t n) { return cache_chains(n, r.chains, r.threads, r.keys, batch); },
                    [r](std::size_t n) { return post_chains(n, r.chains, r.threads); }, hits, reps),
          r.glad);
  row("hit, co_await async_get(use_awaitable), T=1",
      alternate(cache_get_hit_awaitable, baseline_awaited_post, hits, reps), 1.09);
  row("10,000 callbacks coalesced on one key (1 ms load)",
      alternate(cache_coalesced_callbacks, baseline_waiters_callback, coalesced, reps), 2.09);
  row("10,000 coroutines coalesced on one key (1 ms load)",
      alternate(cache_coalesced_coroutines, baseline_waiters_awaitable, coalesced, reps), 0.95);

  std::printf("\n");
  misses(quick ? 20'000 : 200'000, reps);

  std::printf("\nheap allocations per operation, steady state\n");
  const std::size_t ops = quick ? 20'000 : 200'000;
  std::printf("  %-50s %6.2f\n", "async_get hit, callback",
              allocations_per_op(ops, [](std::size_t n) { cache_chains(n, 1, 1, 1); }));
  std::printf("  %-50s %6.2f\n", "async_get hit, callback, 16 chains, batch_hits",
              allocations_per_op(ops, [](std::size_t n) { cache_chains(n, 16, 1, 1, true); }));
  std::printf("  %-50s %6.2f\n", "co_get hit", allocations_per_op(ops, [](std::size_t n) { cache_co_get_hit(n); }));
  std::printf("  %-50s %6.2f\n", "peek hit", allocations_per_op(ops, [](std::size_t n) { cache_peek_hit(n); }));
  std::printf("  %-50s %6.2f\n", "miss at capacity, io_context(1) (report)",
              allocations_per_op(ops, [](std::size_t n) { cache_miss_at_capacity(n, 1); }));
  std::printf("  %-50s %6.2f\n", "baseline: chain of posts",
              allocations_per_op(ops, [](std::size_t n) { post_chains(n, 1, 1); }));

}

void memory(std::size_t entries) {
  std::printf("\nmemory per entry, %zu entries, keys \"key:\" + n (RSS growth in a fresh process)\n", entries);
  const double s3 = bytes_per_entry(entries, fill_cache<cf::eviction_policy::s3fifo>);
  const double lru = bytes_per_entry(entries, fill_cache<cf::eviction_policy::lru>);
  const double flat = bytes_per_entry(entries, [](std::size_t n) {
    auto* m = new boost::unordered_flat_map<std::string, std::uint64_t>;
    for (std::size_t i = 0; i < n; ++i) m->emplace(short_key(i), i);
  });
  const double um = bytes_per_entry(entries, [](std::size_t n) {
    auto* m = new std::unordered_map<std::string, std::uint64_t>;
    for (std::size_t i = 0; i < n; ++i) m->emplace(short_key(i), i);
  });
  std::printf("  %-50s %6.0f B  (%.2fx the flat map; target <= 1.5x)\n", "cache<uint64_t>, S3-FIFO", s3, s3 / flat);
  std::printf("  %-50s %6.0f B  (%.2fx the flat map)\n", "cache<uint64_t>, LRU", lru, lru / flat);
  std::printf("  %-50s %6.0f B\n", "boost::unordered_flat_map<std::string, uint64_t>", flat);
  std::printf("  %-50s %6.0f B\n", "std::unordered_map<std::string, uint64_t>", um);
}

}  // namespace
