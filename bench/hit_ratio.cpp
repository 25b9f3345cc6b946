// Trace simulator: replays synthetic traces through the memory tier's eviction
// policies and prints hit ratios. Usage: cacheflight_hit_ratio [--quick] [--markdown]
#include <cacheflight/detail/l1_store.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

namespace cf = cacheflight;

// Samples ranks 0..n-1 with P(rank k) proportional to 1 / (k + 1)^s.
class zipf {
 public:
  zipf(std::size_t n, double s) : cdf_(n) {
    double sum = 0;
    for (std::size_t k = 0; k < n; ++k) cdf_[k] = (sum += 1.0 / std::pow(double(k + 1), s));
    for (auto& c : cdf_) c /= sum;
  }
  template <class Rng>
  std::uint64_t operator()(Rng& rng) {
    double u = std::uniform_real_distribution<double>(0, 1)(rng);
    return std::uint64_t(std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin());
  }

 private:
  std::vector<double> cdf_;
};

struct trace {
  std::string name;
  std::vector<std::uint64_t> keys;
};

// Ranks are scattered over the key space so that popularity does not follow
// insertion order.
std::uint64_t scatter(std::uint64_t rank) { return rank * 0x9E3779B97F4A7C15ULL; }

trace zipf_trace(std::size_t n_keys, double s, std::size_t length, std::uint32_t seed) {
  std::mt19937_64 rng(seed);
  zipf z(n_keys, s);
  trace t{"zipf " + std::to_string(s).substr(0, 3), {}};
  t.keys.reserve(length);
  for (std::size_t i = 0; i < length; ++i) t.keys.push_back(scatter(z(rng)));
  return t;
}

// Zipf 0.9 traffic interrupted by sequential scans of one-time keys: every
// 10,000 requests, a scan of 1% of the key space that is never read again.
trace scan_trace(std::size_t n_keys, std::size_t length, std::uint32_t seed) {
  std::mt19937_64 rng(seed);
  zipf z(n_keys, 0.9);
  trace t{"zipf 0.9 + scans", {}};
  t.keys.reserve(length);
  std::uint64_t next_cold = std::uint64_t(1) << 62;
  while (t.keys.size() < length) {
    for (int i = 0; i < 10'000 && t.keys.size() < length; ++i) t.keys.push_back(scatter(z(rng)));
    for (std::size_t i = 0; i < n_keys / 100 && t.keys.size() < length; ++i) t.keys.push_back(next_cold++);
  }
  return t;
}

double replay(const trace& t, cf::eviction_policy p, std::size_t capacity) {
  cf::detail::l1_shard<int> shard;
  shard.configure(p, capacity, std::numeric_limits<std::size_t>::max());
  cf::detail::l1_shard<int>::graveyard dead;
  std::uint64_t hits = 0;
  std::string key;
  for (std::uint64_t k : t.keys) {
    key.assign(reinterpret_cast<const char*>(&k), sizeof k);
    const cf::detail::hashed_key hk(key);
    if (shard.find(hk, [] { return std::int64_t(0); }, dead)) {
      ++hits;
    } else {
      shard.put(std::string(key), hk.hash, std::numeric_limits<std::int64_t>::max(), 1, [](auto& n) { n.set_value(1); },
                dead);
    }
    while (auto* n = dead.pop_front()) delete n;
  }
  return double(hits) / double(t.keys.size());
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, markdown = false;
  for (int i = 1; i < argc; ++i) {
    quick |= std::strcmp(argv[i], "--quick") == 0;
    markdown |= std::strcmp(argv[i], "--markdown") == 0;
  }
  const std::size_t n_keys = quick ? 100'000 : 1'000'000;
  const std::size_t length = quick ? 2'000'000 : 10'000'000;
  std::vector<trace> traces;
  traces.push_back(zipf_trace(n_keys, 0.9, length, 1));
  traces.push_back(zipf_trace(n_keys, 1.0, length, 2));
  traces.push_back(scan_trace(n_keys, length, 3));
  const double sizes[] = {0.005, 0.01, 0.05};

  std::printf("%zu keys, %zu requests per trace\n", n_keys, length);
  if (markdown) std::printf("| trace | cache size | lru | s3fifo (default) |\n|---|---|---:|---:|\n");
  for (const auto& t : traces)
    for (double frac : sizes) {
      const auto cap = static_cast<std::size_t>(double(n_keys) * frac);
      const double lru = replay(t, cf::eviction_policy::lru, cap);
      const double s3 = replay(t, cf::eviction_policy::s3fifo, cap);
      if (markdown)
        std::printf("| %s | %.1f%% (%zu) | %.1f%% | %.1f%% |\n", t.name.c_str(), frac * 100, cap, lru * 100, s3 * 100);
      else
        std::printf("%-18s size %4.1f%% (%7zu)  lru %5.1f%%  s3fifo %5.1f%%\n", t.name.c_str(), frac * 100, cap,
                    lru * 100, s3 * 100);
    }
  return 0;
}
