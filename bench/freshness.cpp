// A hot key expiring under a steady stream of requests, its loader taking
// 50 ms: request latency (p50, p99, p99.9, max) and loads, with a plain TTL,
// with stale-while-revalidate, and with early refresh (XFetch), in alternating
// rounds in one process.
//
//   cacheflight_freshness [--quick]
//
// Open loop on one io_context(1): every millisecond a timer issues `burst`
// `async_get` calls of the key (10 by default: 10,000 requests per second), each
// timed from its call to its handler. The TTL is 1 s; the stale window, when on,
// is 1 s; XFetch's beta is 1 (delta: the key's measured load time). "loads per
// TTL" is the number of loads per second of running time (one load per
// lifetime of the value is 1); "concurrent" the most loads of the key running
// at once.
#include <cacheflight/cacheflight.hpp>

#include <boost/asio.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace cf = cacheflight;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

constexpr std::chrono::milliseconds ttl = 1s;

struct mode {
  const char* name;
  std::chrono::nanoseconds stale;
  double beta;
};

struct result {
  std::vector<double> latency_us;  // every request's
  int loads = 0;
  int max_concurrent = 0;
  double seconds = 0;
};

result run(const mode& m, std::chrono::milliseconds duration, int burst) {
  asio::io_context io(1);
  cf::cache<int> c(io, cf::cache_options{.default_ttl = ttl,
                                         .stale_while_revalidate = m.stale,
                                         .early_refresh_beta = m.beta});
  result r;
  int running = 0;
  auto loader = [&]() -> asio::awaitable<int> {
    ++r.loads;
    r.max_concurrent = std::max(r.max_concurrent, ++running);
    asio::steady_timer t(io, 50ms);  // the database
    co_await t.async_wait(asio::use_awaitable);
    --running;
    co_return r.loads;
  };
  // Fill the key and let one reload happen, so that XFetch knows the load time.
  bool ready = false;
  c.async_get("hot", loader, [&](std::exception_ptr, int) { ready = true; });
  while (!ready) io.run_one();
  io.restart();  // it may have run out of work
  r.loads = 0;
  r.max_concurrent = 0;

  r.latency_us.reserve(std::size_t(duration / 1ms) * std::size_t(burst) + 16);
  asio::steady_timer tick(io);
  const auto start = clk::now();
  auto next = start;
  std::size_t outstanding = 0;
  std::function<void()> issue = [&] {
    for (int i = 0; i < burst; ++i) {
      const auto t0 = clk::now();
      ++outstanding;
      c.async_get("hot", loader, [&, t0](std::exception_ptr, int) {
        r.latency_us.push_back(std::chrono::duration<double, std::micro>(clk::now() - t0).count());
        --outstanding;
      });
    }
    next += 1ms;
    if (next - start >= duration) return;
    tick.expires_at(next);
    tick.async_wait([&](boost::system::error_code) { issue(); });
  };
  issue();
  while (outstanding > 0 || clk::now() - start < duration)
    if (io.run_one() == 0) io.restart();
  r.seconds = std::chrono::duration<double>(clk::now() - start).count();
  io.restart();
  io.run();  // a reload still running
  return r;
}

double pct(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const std::size_t i = std::min(v.size() - 1, std::size_t(p * double(v.size())));
  std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(i), v.end());
  return v[i];
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const auto duration = quick ? 2000ms : 5000ms;
  const int rounds = quick ? 1 : 3;
  const int burst = 10;
  const mode modes[] = {{"plain TTL", 0s, 0}, {"stale-while-revalidate (1 s)", 1s, 0}, {"XFetch (beta 1)", 0s, 1.0}};
  std::printf("hot key, TTL 1 s, loader 50 ms, %d requests per ms, %lld ms per round, %d round%s per mode "
              "(alternating); latency in us, over all rounds\n\n",
              burst, static_cast<long long>(duration.count()), rounds, rounds == 1 ? "" : "s");
  std::vector<result> total(std::size(modes));
  for (int round = 0; round < rounds; ++round)
    for (std::size_t m = 0; m < std::size(modes); ++m) {
      result r = run(modes[m], duration, burst);
      auto& t = total[m];
      t.latency_us.insert(t.latency_us.end(), r.latency_us.begin(), r.latency_us.end());
      t.loads += r.loads;
      t.max_concurrent = std::max(t.max_concurrent, r.max_concurrent);
      t.seconds += r.seconds;
    }
  std::printf("%-30s %10s %10s %10s %10s %10s %8s %14s %12s\n", "mode", "requests", "p50", "p99", "p99.9", "max",
              "loads", "loads per TTL", "concurrent");
  for (std::size_t m = 0; m < std::size(modes); ++m) {
    auto& t = total[m];
    const std::size_t n = t.latency_us.size();
    const double p50 = pct(t.latency_us, 0.50), p99 = pct(t.latency_us, 0.99), p999 = pct(t.latency_us, 0.999);
    const double mx = t.latency_us.empty() ? 0 : *std::max_element(t.latency_us.begin(), t.latency_us.end());
    // Loads per TTL of running time: 1 means one load per lifetime of the value.
    const double per_ttl = double(t.loads) / (t.seconds / std::chrono::duration<double>(ttl).count());
    std::printf("%-30s %10zu %10.1f %10.1f %10.1f %10.1f %8d %14.2f %12d\n", modes[m].name, n, p50, p99, p999, mx,
                t.loads, per_ttl, t.max_concurrent);
  }
  return 0;
}
