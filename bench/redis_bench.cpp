// Redis figures against a running redis-server (bench/redis.sh starts one and
// runs redis-benchmark against the same server for the comparison).
//
//   cacheflight_redis_bench client PORT CONNECTIONS PIPELINE SECONDS
//     GET throughput of redis::client: CONNECTIONS clients (one connection
//     each), each keeping PIPELINE GETs of one key outstanding; one thread, as
//     redis-benchmark runs by default. Prints "client GET: <n> requests per second".
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
//   cacheflight_redis_bench coroutines PORT N SECONDS
//     Automatic pipelining: N coroutines on ONE client (one connection), each
//     issuing one GET at a time (`co_await async_exec(..., use_awaitable)`);
//     whatever they queue while a write is in flight goes out in the next
//     write. Prints "coroutines GET: <n> requests per second".
//
//   cacheflight_redis_bench l2 PORT CONCURRENCY SECONDS
//     The cost of an L2 hit: cache::async_get on a cache that keeps nothing in
//     memory (max_entries 0) with a redis::tier, CONCURRENCY callers on
//     distinct keys in a closed loop, against the same loop of bare client
//     GETs of the same keys. Prints both and the cost per hit.
#include <cacheflight/cacheflight.hpp>
#include <cacheflight/redis/client.hpp>
#include <cacheflight/redis/tier.hpp>

#include <boost/asio.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace cf = cacheflight;
namespace redis = cf::redis;
using boost::system::error_code;
using clk = std::chrono::steady_clock;
using namespace std::chrono_literals;

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

// The phases of a measurement on `io`: a warmup of a quarter of `seconds`,
// then `seconds` with `measuring` set, then `stopping`. Completions counted
// while measuring give the rate.
struct phases {
  phases(asio::io_context& io, double seconds) : timer(io) {
    auto span = [](double s) { return std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(s)); };
    timer.expires_after(span(seconds / 4));
    timer.async_wait([this, span, seconds](error_code) {
      measuring = true;
      t0 = clk::now();
      timer.expires_after(span(seconds));
      timer.async_wait([this](error_code) {
        t1 = clk::now();
        measuring = false;
        stopping = true;
      });
    });
  }
  double rate() const { return double(count) / std::chrono::duration<double>(t1 - t0).count(); }

  bool measuring = false, stopping = false;
  std::uint64_t count = 0;
  clk::time_point t0, t1;
  asio::steady_timer timer;
};

// Runs `loops` closed loops of `start(i, done)` on `io` (which must have no
// other work) through `phases`; returns completions per second in the
// measured part.
double closed_loop(asio::io_context& io, std::size_t loops, double seconds,
                   const std::function<void(std::size_t, std::function<void()>)>& start) {
  phases ph(io, seconds);
  std::size_t running = loops;
  std::vector<std::function<void()>> next(loops);
  for (std::size_t i = 0; i < loops; ++i)
    next[i] = [&, i] {
      if (ph.measuring) ++ph.count;
      if (ph.stopping)
        --running;
      else
        start(i, next[i]);
    };
  for (std::size_t i = 0; i < loops; ++i) start(i, next[i]);
  io.restart();
  // Clients keep health-check timers: run until the loops are done rather
  // than until the context is idle.
  while (running > 0) io.run_one();
  return ph.rate();
}

// Prints "<what> GET: <rate> requests per second", or reports a failed GET.
int report(const char* what, bool failed, double rate) {
  if (failed) {
    std::fprintf(stderr, "a GET failed\n");
    return 1;
  }
  std::printf("%s GET: %.2f requests per second\n", what, rate);
  return 0;
}

int client_bench(const std::string& port, std::size_t conns, std::size_t pipeline, double seconds) {
  asio::io_context io(1);
  std::vector<std::shared_ptr<redis::client>> cs;
  for (std::size_t i = 0; i < conns; ++i) cs.push_back(std::make_shared<redis::client>(io.get_executor(), options(port)));
  wait_connected(io, cs);
  bool failed = false;
  const double rate = closed_loop(io, conns * pipeline, seconds, [&](std::size_t i, std::function<void()> done) {
    cs[i / pipeline]->async_exec({"GET", "key:__rand_int__"}, [&failed, done = std::move(done)](error_code ec,
                                                                                                  redis::reply) {
      if (ec) failed = true;
      done();
    });
  });
  return report("client", failed, rate);
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
  const double rate = closed_loop(io, cs.size() * per_client, seconds, [&](std::size_t i, std::function<void()> done) {
    cs[i / per_client]->async_exec({"GET", keys[i % keys.size()]},
                                   [&failed, done = std::move(done)](error_code ec, redis::reply r) {
                                     if (ec || r.is_error()) failed = true;
                                     done();
                                   });
  });
  return report("cluster", failed, rate);
}

int coroutines_bench(const std::string& port, std::size_t n, double seconds) {
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
          while (!ph.stopping) {
            std::vector<std::string> args{"GET", "key:__rand_int__"};
            auto r = co_await c->async_exec(std::move(args), asio::use_awaitable);
            if (r.is_error()) failed = true;
            if (ph.measuring) ++ph.count;
          }
          --running;
        },
        [&failed](std::exception_ptr e) {
          if (e) failed = true;
        });
  while (running > 0 && !failed) io.run_one();
  return report("coroutines", failed, failed ? 0.0 : ph.rate());
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
  const double l2 = closed_loop(io, concurrency, seconds, [&](std::size_t i, std::function<void()> done) {
    cache.async_get(keys[i], never, [&failed, done = std::move(done)](std::exception_ptr e, std::string v) {
      if (e || v.size() != 64) failed = true;
      done();
    });
  });
  std::vector<std::string> full;
  for (auto& k : keys) full.push_back("bench:l2:" + k);
  const double bare = closed_loop(io, concurrency, seconds, [&](std::size_t i, std::function<void()> done) {
    raw->async_exec({"GET", full[i]}, [&failed, done = std::move(done)](error_code ec, redis::reply r) {
      if (ec || r.type != redis::reply::kind::bulk) failed = true;
      done();
    });
  });
  if (failed || cache.stats().l2_hits == 0) {
    std::fprintf(stderr, "a get failed or missed\n");
    return 1;
  }
  std::printf("concurrency %zu: cache.async_get L2 hit %.0f/s (%.2f us each), bare client GET %.0f/s (%.2f us each): "
              "ratio %.2fx, cost per hit above the GET %.2f us\n",
              concurrency, l2, 1e6 * concurrency / l2, bare, 1e6 * concurrency / bare, bare / l2,
              1e6 * concurrency / l2 - 1e6 * concurrency / bare);
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
  if (mode == "coroutines" && argc == 5)
    return coroutines_bench(argv[2], std::strtoul(argv[3], nullptr, 10), std::atof(argv[4]));
  if (mode == "l2" && argc == 5) return l2_bench(argv[2], std::strtoul(argv[3], nullptr, 10), std::atof(argv[4]));
  std::fprintf(stderr, "usage: %s client PORT CONNECTIONS PIPELINE SECONDS | cluster SEED_PORT CONNECTIONS PIPELINE SECONDS | "
               "coroutines PORT N SECONDS | l2 PORT CONCURRENCY SECONDS\n", argv[0]);
  return 2;
}
