// Redis figures against a running redis-server (bench/redis.sh starts one and
// runs redis-benchmark against the same server for the comparison).
//
//   cacheflight_redis_bench client PORT CONNECTIONS PIPELINE SECONDS
//     GET throughput of redis::client: CONNECTIONS clients (one connection
//     each), each keeping PIPELINE GETs of one key outstanding; one thread, as
//     redis-benchmark runs by default. Prints "client GET: <n> requests per second"
//     with the heap allocations and the CPU time (user and system) per GET.
//
//   With CACHEFLIGHT_BENCH_TLS_CA=FILE in the environment, the clients connect
//   with TLS and verify the server with the CA in FILE.
//
//   cacheflight_redis_bench cluster SEED_PORT CONNECTIONS PIPELINE SECONDS
//     GET throughput of redis::client against a Redis Cluster: CONNECTIONS / M
//     cluster clients (M masters; one connection per master each, so
//     CONNECTIONS connections in all, as `redis-benchmark --cluster -c
//     CONNECTIONS` opens), each keeping PIPELINE GETs outstanding per master,
//     of one key per master (absent, as redis-benchmark's are); one thread.
//
//   cacheflight_redis_bench values PORT CONNECTIONS PIPELINE SECONDS
//     As `client`, on a key holding a 64-byte value (written first), each GET
//     read two ways, in three alternating rounds of SECONDS each: returned
//     to the handler (`async_exec(args, token)`), and into the loop's own
//     reply (`async_exec(args, into, token)`). Prints a "client GET" line of
//     medians for each, "(returned)" and "(into)", and the per-round ratios.
//
//   cacheflight_redis_bench count PORT returned|into LOOPS N
//     Exactly N GETs of the 64-byte value of `values` (written first), in
//     LOOPS closed loops on one client, read one of the two ways; prints the
//     heap allocations per GET. A fixed amount of work, for an instruction
//     count under `valgrind --tool=callgrind` (the total divided by N).
//
//   cacheflight_redis_bench coroutines PORT N SECONDS
//     Automatic pipelining: N coroutines on ONE client (one connection), each
//     issuing one GET at a time (`co_await async_exec(..., use_awaitable)`);
//     whatever they queue while a write is in flight goes out in the next
//     write. Prints "coroutines GET: <n> requests per second".
//
//   cacheflight_redis_bench replies N
//     No server: the cost of reading N GET replies of a 64-byte value (fed 16
//     at a time, as one pipelined read brings them), in time and in heap
//     allocations (every malloc of the process is counted, hiredis' own
//     included), through reply_reader::next(reply&) into one reply, through
//     next() returning each reply, and through hiredis' reader with its own
//     reply objects (the baseline, in the same process).
//
//   Every mode that talks to a server also prints the heap allocations per
//   GET of the whole process, beside the rate.
//
//   cacheflight_redis_bench l2 PORT CONCURRENCY SECONDS
//     The cost of an L2 hit: cache::async_get on a cache that keeps nothing in
//     memory (max_entries 0) with a redis::tier, CONCURRENCY callers on
//     distinct keys in a closed loop, against the same loop of bare client
//     GETs of the same keys. Prints both and the cost per hit, and the
//     process's CPU time (user and system) per hit and per GET with their
//     ratio: the two loops may wait on the server for different shares of
//     their time, so the rates alone do not compare the client's cost.
#include <cacheflight/cacheflight.hpp>
#include <cacheflight/redis/client.hpp>
#include <cacheflight/redis/tier.hpp>

#include <boost/asio.hpp>

#include <hiredis/hiredis.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace asio = boost::asio;
namespace cf = cacheflight;
namespace redis = cf::redis;
using boost::system::error_code;
using clk = std::chrono::steady_clock;
using namespace std::chrono_literals;

// Every heap allocation of the process, the C library's included: the
// executable's malloc family takes the place of the C library's for every
// shared library too, and counts calls before handing them on.
std::atomic<std::uint64_t> g_allocations{0};
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void __libc_free(void*);
void* malloc(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_realloc(p, n);
}
void* __libc_memalign(std::size_t, std::size_t);
// Asio's recycling allocator falls back to aligned_alloc when its per-thread
// cache cannot serve a block: counted too.
void* aligned_alloc(std::size_t align, std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_memalign(align, n);
}
void free(void* p) { __libc_free(p); }
}

namespace {

redis::client_options options(const std::string& port) {
  redis::client_options o;
  o.connection.host = "127.0.0.1";
  o.connection.port = port;
  o.connection.command_timeout = 5s;
  o.connection.max_pending = 100'000;
  if (const char* ca = std::getenv("CACHEFLIGHT_BENCH_TLS_CA")) o.connection.tls = {.enabled = true, .ca_file = ca};
  return o;
}

void wait_connected(asio::io_context& io, const std::vector<std::shared_ptr<redis::client>>& cs) {
  const auto end = clk::now() + 5s;
  for (auto& c : cs)
    while (!c->is_connected()) {
      if (clk::now() > end) {
        std::fprintf(stderr, "cannot connect to redis\n");
        std::exit(1);
      }
      io.run_for(1ms);
      io.restart();
    }
}

// Runs `io` until it is stopped, in one call of run(), as a server runs it:
// Asio keeps the memory it recycles (operations, strand and executor
// functions) in the running thread's state for the length of that call, and
// a loop of run_one() calls would start each handler without any.
void run_as_a_server(asio::io_context& io) {
  io.restart();
  io.run();
  io.restart();
}

// The phases of a measurement on `io`: a warmup of a quarter of `seconds`,
// then `seconds` with `measuring` set, then `stopping`. Completions counted
// while measuring give the rate.
struct phases {
  phases(asio::io_context& io, double seconds) : timer(io) {
    auto span = [](double s) { return std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(s)); };
    timer.expires_after(span(seconds / 4));
    timer.async_wait([this, span, seconds](error_code) {
      measuring = true;
      a0 = g_allocations.load();
      c0 = cpu_now();
      t0 = clk::now();
      timer.expires_after(span(seconds));
      timer.async_wait([this](error_code) {
        t1 = clk::now();
        c1 = cpu_now();
        a1 = g_allocations.load();
        measuring = false;
        stopping = true;
      });
    });
  }
  double rate() const { return double(count) / std::chrono::duration<double>(t1 - t0).count(); }
  double allocations() const { return count ? double(a1 - a0) / double(count) : 0.0; }
  // This process's CPU time (user and system, all threads) per completion, in microseconds.
  double cpu_us() const { return count ? 1e6 * (c1 - c0) / double(count) : 0.0; }
  static double cpu_now() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  }

  bool measuring = false, stopping = false;
  std::uint64_t count = 0, a0 = 0, a1 = 0;
  double c0 = 0, c1 = 0;
  clk::time_point t0, t1;
  asio::steady_timer timer;
};

struct loop_result {
  double rate;         // completions per second
  double allocations;  // heap allocations per completion
  double cpu_us;       // this process's CPU time per completion, microseconds
};

// Runs `loops` closed loops of `start(i, done)` on `io` (which must have no
// other work) through `phases`; returns completions per second in the
// measured part, and heap allocations per completion. `done` lives as long
// as the loops: an operation's handler refers to it by address, so that the
// loop itself neither copies nor allocates anything per operation.
loop_result closed_loop(asio::io_context& io, std::size_t loops, double seconds,
                   const std::function<void(std::size_t, const std::function<void()>&)>& start) {
  if (loops == 0) return {0.0, 0.0, 0.0};  // nothing would stop the context
  phases ph(io, seconds);
  std::size_t running = loops;
  std::vector<std::function<void()>> next(loops);
  for (std::size_t i = 0; i < loops; ++i)
    next[i] = [&, i] {
      if (ph.measuring) ++ph.count;
      if (!ph.stopping) return start(i, next[i]);
      // Clients keep health-check timers: stopped when the loops are done
      // rather than when the context is idle.
      if (--running == 0) io.stop();
    };
  for (std::size_t i = 0; i < loops; ++i) start(i, next[i]);
  run_as_a_server(io);
  return {ph.rate(), ph.allocations(), ph.cpu_us()};
}

// Prints "<what> GET: <rate> requests per second", or reports a failed GET.
// With `cpu_us` (this process's CPU time per GET) when it was measured.
int report(const char* what, bool failed, double rate, double allocations, double cpu_us = -1) {
  if (failed) {
    std::fprintf(stderr, "a GET failed\n");
    return 1;
  }
  if (cpu_us >= 0)
    std::printf("%s GET: %.2f requests per second (%.2f heap allocations per GET, %.2f us CPU per GET)\n", what, rate,
                allocations, cpu_us);
  else
    std::printf("%s GET: %.2f requests per second (%.2f heap allocations per GET)\n", what, rate, allocations);
  return 0;
}

// GET replies of a 64-byte value: time and heap allocations per reply, in
// rounds of 16 replies fed at once.
template <class Read>
std::pair<double, double> per_reply(std::size_t n, Read&& read) {
  const std::string one = "$64\r\n" + std::string(64, 'v') + "\r\n";
  std::string sixteen;
  for (int i = 0; i < 16; ++i) sixteen += one;
  read(sixteen, 16);  // warm: buffers grow to their steady sizes
  const auto a0 = g_allocations.load();
  const auto t0 = clk::now();
  for (std::size_t i = 0; i < n; i += 16) read(sixteen, 16);
  const double ns = std::chrono::duration<double, std::nano>(clk::now() - t0).count() / double(n);
  return {ns, double(g_allocations.load() - a0) / double(n)};
}

int replies_bench(std::size_t n) {
  n = std::max<std::size_t>(16, n / 16 * 16);
  std::size_t bytes = 0;
  redis::reply_reader in_place;
  redis::reply out;
  const auto into = per_reply(n, [&](const std::string& wire, int k) {
    in_place.feed(wire);
    error_code ec;
    for (int i = 0; i < k; ++i) {
      if (!in_place.next(out, ec)) std::abort();
      bytes += out.str.size();
    }
  });
  redis::reply_reader returning;
  const auto ret = per_reply(n, [&](const std::string& wire, int k) {
    returning.feed(wire);
    error_code ec;
    for (int i = 0; i < k; ++i) {
      std::optional<redis::reply> r = returning.next(ec);
      if (!r) std::abort();
      bytes += r->str.size();
    }
  });
  redisReader* own = redisReaderCreate();
  const auto base = per_reply(n, [&](const std::string& wire, int k) {
    redisReaderFeed(own, wire.data(), wire.size());
    for (int i = 0; i < k; ++i) {
      void* r = nullptr;
      if (redisReaderGetReply(own, &r) != REDIS_OK || !r) std::abort();
      bytes += static_cast<redisReply*>(r)->len;
      freeReplyObject(r);
    }
  });
  redisReaderFree(own);
  if (bytes != 3 * (n + 16) * 64) std::abort();
  std::printf("GET reply of a 64-byte value, %zu replies, 16 per read        ns/reply  allocations/reply\n", n);
  std::printf("  %-60s %8.1f  %8.2f\n", "reply_reader::next(reply&), one reply reused", into.first, into.second);
  std::printf("  %-60s %8.1f  %8.2f\n", "reply_reader::next() returning each reply", ret.first, ret.second);
  std::printf("  %-60s %8.1f  %8.2f\n", "baseline: hiredis' reader, its own reply objects", base.first, base.second);
  return 0;
}

int client_bench(const std::string& port, std::size_t conns, std::size_t pipeline, double seconds) {
  asio::io_context io(1);
  std::vector<std::shared_ptr<redis::client>> cs;
  for (std::size_t i = 0; i < conns; ++i) cs.push_back(std::make_shared<redis::client>(io.get_executor(), options(port)));
  wait_connected(io, cs);
  bool failed = false;
  const loop_result r = closed_loop(io, conns * pipeline, seconds, [&](std::size_t i, const std::function<void()>& done) {
    cs[i / pipeline]->async_exec({"GET", "key:__rand_int__"}, [&failed, done = &done](error_code ec,
                                                                                                  redis::reply) {
      if (ec) failed = true;
      (*done)();
    });
  });
  return report("client", failed, r.rate, r.allocations, r.cpu_us);
}

// The key of the 64-byte value `values` and `count` read.
constexpr const char* value_key = "bench:values:64";

// Writes that value through `c`; false if the SET failed.
bool write_value(asio::io_context& io, redis::client& c) {
  std::optional<bool> ok;
  c.async_exec({"SET", value_key, std::string(64, 'v')},
               [&](error_code ec, redis::reply r) { ok = !ec && r.str == "OK"; });
  while (!ok) io.run_one();
  return *ok;
}

int values_bench(const std::string& port, std::size_t conns, std::size_t pipeline, double seconds) {
  asio::io_context io(1);
  std::vector<std::shared_ptr<redis::client>> cs;
  for (std::size_t i = 0; i < conns; ++i) cs.push_back(std::make_shared<redis::client>(io.get_executor(), options(port)));
  wait_connected(io, cs);
  const std::string key = value_key;
  bool failed = !write_value(io, *cs[0]);
  std::vector<redis::reply> into(conns * pipeline);
  auto returned = [&] {
    return closed_loop(io, conns * pipeline, seconds, [&](std::size_t i, const std::function<void()>& done) {
      cs[i / pipeline]->async_exec({"GET", key}, [&, done = &done](error_code ec, redis::reply r) {
        if (ec || r.str.size() != 64) failed = true;
        (*done)();
      });
    });
  };
  auto taken = [&] {
    return closed_loop(io, conns * pipeline, seconds, [&](std::size_t i, const std::function<void()>& done) {
      cs[i / pipeline]->async_exec({"GET", key}, into[i], [&, i, done = &done](error_code ec) {
        if (ec || into[i].str.size() != 64) failed = true;
        (*done)();
      });
    });
  };
  // Alternating rounds, so that both ways meet the machine in the same states.
  constexpr int rounds = 3;
  std::vector<loop_result> r, t;
  for (int k = 0; k < rounds; ++k) {
    r.push_back(returned());
    t.push_back(taken());
    if (failed) break;
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  auto field = [](const std::vector<loop_result>& v, double loop_result::*m) {
    std::vector<double> out;
    for (const auto& x : v) out.push_back(x.*m);
    return out;
  };
  if (report("client", failed, median(field(r, &loop_result::rate)), median(field(r, &loop_result::allocations)),
             median(field(r, &loop_result::cpu_us))))
    return 1;
  std::printf("  (returned: a 64-byte value; medians of %d rounds)\n", rounds);
  report("client", failed, median(field(t, &loop_result::rate)), median(field(t, &loop_result::allocations)),
         median(field(t, &loop_result::cpu_us)));
  std::printf("  (into: a 64-byte value read into the loop's own reply; medians of %d rounds)\n", rounds);
  std::vector<double> ratios;
  for (std::size_t k = 0; k < r.size(); ++k) ratios.push_back(t[k].rate / r[k].rate);
  std::printf("  into / returned, requests per second, per round:");
  for (double x : ratios) std::printf(" %.2f", x);
  std::printf("; median %.2fx\n", median(ratios));
  return 0;
}

int count_bench(const std::string& port, const std::string& way, std::size_t loops, std::size_t n) {
  if ((way != "returned" && way != "into") || loops == 0 || n == 0) {
    std::fprintf(stderr, "count: WAY is returned or into; LOOPS and N are positive\n");
    return 2;
  }
  const bool into_way = way == "into";
  asio::io_context io(1);
  auto c = std::make_shared<redis::client>(io.get_executor(), options(port));
  wait_connected(io, {c});
  const std::string key = value_key;
  bool failed = !write_value(io, *c);
  std::vector<redis::reply> into(loops);
  std::size_t issued = 0, ended = 0;
  const std::uint64_t a0 = g_allocations.load();
  std::function<void(std::size_t)> step = [&](std::size_t i) {
    if (issued == n) {
      if (++ended == loops) io.stop();
      return;
    }
    ++issued;
    if (into_way)
      c->async_exec({"GET", key}, into[i], [&, i](error_code ec) {
        if (ec || into[i].str.size() != 64) failed = true;
        step(i);
      });
    else
      c->async_exec({"GET", key}, [&, i](error_code ec, redis::reply r) {
        if (ec || r.str.size() != 64) failed = true;
        step(i);
      });
  };
  for (std::size_t i = 0; i < loops; ++i) step(i);
  run_as_a_server(io);
  const std::uint64_t a1 = g_allocations.load();
  if (failed) {
    std::fprintf(stderr, "a GET failed\n");
    return 1;
  }
  std::printf("%s: %zu GETs (%.2f heap allocations per GET, set-up and the loops' std::function included)\n",
              way.c_str(), n, n ? double(a1 - a0) / double(n) : 0.0);
  return 0;
}

int cluster_bench(const std::string& port, std::size_t conns, std::size_t pipeline, double seconds) {
  asio::io_context io(1);
  redis::client_options o = options(port);
  o.cluster.nodes = {"127.0.0.1:" + port};
  auto first = std::make_shared<redis::client>(io.get_executor(), o);
  wait_connected(io, {first});
  const std::size_t masters = first->masters().size();
  if (masters == 0 || conns % masters != 0) {
    std::fprintf(stderr, "CONNECTIONS must be a multiple of the %zu masters\n", masters);
    return 2;
  }
  std::vector<std::shared_ptr<redis::client>> cs{first};
  while (cs.size() < conns / masters) cs.push_back(std::make_shared<redis::client>(io.get_executor(), o));
  wait_connected(io, cs);
  // One key per master, from the slot map.
  std::vector<std::string> keys;
  {
    bool done = false;
    redis::reply slots;
    first->async_exec({"CLUSTER", "SLOTS"}, [&](error_code, redis::reply r) {
      slots = std::move(r);
      done = true;
    });
    while (!done) io.run_one();
    for (const auto& range : slots.elements)
      for (int i = 0;; ++i) {
        std::string k = "bench:cluster:" + std::to_string(i);
        const auto s = redis::key_slot(k);
        if (s >= range.elements[0].integer && s <= range.elements[1].integer) {
          keys.push_back(std::move(k));
          break;
        }
      }
  }
  const std::size_t per_client = keys.size() * pipeline;
  bool failed = false;
  const loop_result res = closed_loop(io, cs.size() * per_client, seconds, [&](std::size_t i, const std::function<void()>& done) {
    cs[i / per_client]->async_exec({"GET", keys[i % keys.size()]},
                                   [&failed, done = &done](error_code ec, redis::reply r) {
                                     if (ec || r.is_error()) failed = true;
                                     (*done)();
                                   });
  });
  return report("cluster", failed, res.rate, res.allocations, res.cpu_us);
}

int coroutines_bench(const std::string& port, std::size_t n, double seconds) {
  if (n == 0) {
    std::fprintf(stderr, "coroutines: N is positive\n");
    return 2;
  }
  asio::io_context io(1);
  auto c = std::make_shared<redis::client>(io.get_executor(), options(port));
  wait_connected(io, {c});
  phases ph(io, seconds);
  bool failed = false;
  std::size_t running = n;
  for (std::size_t i = 0; i < n; ++i)
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          // Named: GCC 12 does not compile a braced list inside `co_await`.
          const std::initializer_list<std::string_view> get{"GET", "key:__rand_int__"};
          while (!ph.stopping) {
            auto r = co_await c->async_exec(get, asio::use_awaitable);
            if (r.is_error()) failed = true;
            if (ph.measuring) ++ph.count;
          }
        },
        [&](std::exception_ptr e) {
          if (e) failed = true;
          if (--running == 0 || failed) io.stop();
        });
  run_as_a_server(io);
  return report("coroutines", failed, failed ? 0.0 : ph.rate(), ph.allocations(), ph.cpu_us());
}

int l2_bench(const std::string& port, std::size_t concurrency, double seconds) {
  asio::io_context io(1);
  auto raw = std::make_shared<redis::client>(io.get_executor(), options(port));
  auto tier = std::make_shared<redis::tier>(std::make_shared<redis::client>(io.get_executor(), options(port)),
                                            redis::tier_options{.prefix = "bench:l2:"});
  wait_connected(io, {raw, std::shared_ptr<redis::client>(tier, &tier->get_client())});
  cf::cache<std::string> cache{io, cf::cache_options{.max_entries = 0, .tiers = {tier}}};

  // Store the keys through a cache that keeps them, so the bytes are the tier's own format.
  std::vector<std::string> keys;
  {
    cf::cache<std::string> writer{io, cf::cache_options{.tiers = {tier}}};
    for (std::size_t i = 0; i < concurrency; ++i) {
      keys.push_back("user:" + std::to_string(i));
      writer.async_set(keys.back(), std::string(64, 'v'), [](std::exception_ptr) {});
    }
    while (tier->health().writes < concurrency) io.run_one();
  }
  bool failed = false;
  auto never = []() -> asio::awaitable<std::string> {
    throw std::logic_error("the loader ran: not an L2 hit");
    co_return std::string();
  };
  const loop_result l2r = closed_loop(io, concurrency, seconds, [&](std::size_t i, const std::function<void()>& done) {
    cache.async_get(keys[i], never, [&failed, done = &done](std::exception_ptr e, std::string v) {
      if (e || v.size() != 64) failed = true;
      (*done)();
    });
  });
  std::vector<std::string> full;
  for (auto& k : keys) full.push_back("bench:l2:" + k);
  const loop_result bare_r = closed_loop(io, concurrency, seconds, [&](std::size_t i, const std::function<void()>& done) {
    raw->async_exec({"GET", full[i]}, [&failed, done = &done](error_code ec, redis::reply r) {
      if (ec || r.type != redis::reply::kind::bulk) failed = true;
      (*done)();
    });
  });
  const double l2 = l2r.rate, bare = bare_r.rate;
  if (failed || cache.stats().l2_hits == 0) {
    std::fprintf(stderr, "a get failed or missed\n");
    return 1;
  }
  std::printf("concurrency %zu: cache.async_get L2 hit %.0f/s (%.2f us each), bare client GET %.0f/s (%.2f us each): "
              "ratio %.2fx, cost per hit above the GET %.2f us; heap allocations %.2f per hit, %.2f per GET; "
              "CPU %.2f us per hit, %.2f us per GET: CPU ratio %.2fx\n",
              concurrency, l2, 1e6 * concurrency / l2, bare, 1e6 * concurrency / bare, bare / l2,
              1e6 * concurrency / l2 - 1e6 * concurrency / bare, l2r.allocations, bare_r.allocations, l2r.cpu_us,
              bare_r.cpu_us, l2r.cpu_us / bare_r.cpu_us);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "client" && argc == 6)
    return client_bench(argv[2], std::strtoul(argv[3], nullptr, 10), std::strtoul(argv[4], nullptr, 10),
                        std::atof(argv[5]));
  if (mode == "cluster" && argc == 6)
    return cluster_bench(argv[2], std::strtoul(argv[3], nullptr, 10), std::strtoul(argv[4], nullptr, 10),
                         std::atof(argv[5]));
  if (mode == "values" && argc == 6)
    return values_bench(argv[2], std::strtoul(argv[3], nullptr, 10), std::strtoul(argv[4], nullptr, 10),
                        std::atof(argv[5]));
  if (mode == "count" && argc == 6)
    return count_bench(argv[2], argv[3], std::strtoul(argv[4], nullptr, 10), std::strtoul(argv[5], nullptr, 10));
  if (mode == "coroutines" && argc == 5)
    return coroutines_bench(argv[2], std::strtoul(argv[3], nullptr, 10), std::atof(argv[4]));
  if (mode == "l2" && argc == 5) return l2_bench(argv[2], std::strtoul(argv[3], nullptr, 10), std::atof(argv[4]));
  if (mode == "replies" && argc == 3) return replies_bench(std::strtoul(argv[2], nullptr, 10));
  std::fprintf(stderr, "usage: %s client PORT CONNECTIONS PIPELINE SECONDS | cluster SEED_PORT CONNECTIONS PIPELINE SECONDS | "
               "values PORT CONNECTIONS PIPELINE SECONDS | count PORT returned|into LOOPS N | coroutines PORT N SECONDS | l2 PORT CONCURRENCY SECONDS | replies N\n", argv[0]);
  return 2;
}
