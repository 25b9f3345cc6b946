// The disk tier against LMDB used directly, in the same process:
//
//   1. get hits (the store in the page cache): the tier with 1 and 64 callers
//      in flight vs one read transaction per get (renew, get, copy, reset);
//   2. durable puts: the tier's group commit with 1 and 64 writers in flight
//      vs one synced commit per put;
//   3. the open time of a store of N entries (10,000,000 by default; built
//      once in --big-dir and reused);
//   4. get-hit latency (p50/p99/max) while 64 durable writers run.
//
//   cacheflight_disk_bench [--dir DIR] [--big-dir DIR] [--big-entries N] [--seconds S]
#include <cacheflight/disk/tier.hpp>

#include <boost/asio.hpp>
#include <lmdb.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
namespace cf = cacheflight;
namespace fs = std::filesystem;
using boost::system::error_code;
using clk = std::chrono::steady_clock;

namespace {

constexpr auto forever = std::chrono::milliseconds::max();
constexpr int keys = 100'000;
const std::string value(100, 'v');

std::string key(long i) { return "user:" + std::to_string(i); }

double seconds_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

// LMDB used directly: one environment, one unnamed database.
struct raw_lmdb {
  MDB_env* env = nullptr;
  MDB_dbi dbi = 0;
  explicit raw_lmdb(const fs::path& dir, bool sync) {
    fs::create_directories(dir);
    ::mdb_env_create(&env);
    ::mdb_env_set_mapsize(env, std::size_t{1} << 30);
    if (::mdb_env_open(env, dir.c_str(), MDB_NOTLS | MDB_NORDAHEAD | (sync ? 0 : MDB_NOSYNC), 0644)) std::abort();
    MDB_txn* t = nullptr;
    ::mdb_txn_begin(env, nullptr, 0, &t);
    ::mdb_dbi_open(t, nullptr, 0, &dbi);
    ::mdb_txn_commit(t);
  }
  ~raw_lmdb() { ::mdb_env_close(env); }
  void put_one(const std::string& k, const std::string& v) {
    MDB_txn* t = nullptr;
    ::mdb_txn_begin(env, nullptr, 0, &t);
    MDB_val kv{k.size(), const_cast<char*>(k.data())}, vv{v.size(), const_cast<char*>(v.data())};
    ::mdb_put(t, dbi, &kv, &vv, 0);
    if (::mdb_txn_commit(t)) std::abort();
  }
  void fill(int n) {
    MDB_txn* t = nullptr;
    ::mdb_txn_begin(env, nullptr, 0, &t);
    for (int i = 0; i < n; ++i) {
      const std::string k = key(i);
      MDB_val kv{k.size(), const_cast<char*>(k.data())}, vv{value.size(), const_cast<char*>(value.data())};
      ::mdb_put(t, dbi, &kv, &vv, 0);
    }
    ::mdb_txn_commit(t);
  }
};

// Ops per second of `n` gets, one read transaction each.
double raw_gets(raw_lmdb& db, long n) {
  MDB_txn* t = nullptr;
  ::mdb_txn_begin(db.env, nullptr, MDB_RDONLY, &t);
  ::mdb_txn_reset(t);
  std::mt19937 rng(1);
  std::size_t bytes = 0;
  const auto start = clk::now();
  for (long i = 0; i < n; ++i) {
    const std::string k = key(static_cast<long>(rng() % keys));
    ::mdb_txn_renew(t);
    MDB_val kv{k.size(), const_cast<char*>(k.data())}, vv{};
    if (::mdb_get(t, db.dbi, &kv, &vv) == 0) {
      std::string v(static_cast<const char*>(vv.mv_data), vv.mv_size);
      bytes += v.size();
    }
    ::mdb_txn_reset(t);
  }
  const double s = seconds_since(start);
  ::mdb_txn_abort(t);
  if (bytes != static_cast<std::size_t>(n) * value.size()) std::abort();
  return static_cast<double>(n) / s;
}

// Ops per second of `n` gets through the tier, `chains` callers in flight on one io_context thread.
double tier_gets(cf::disk::tier& t, asio::io_context& io, long n, int chains) {
  long issued = 0, done = 0;
  std::mt19937 rng(1);
  std::function<void()> next = [&] {
    if (issued == n) return;
    ++issued;
    t.async_get(key(static_cast<long>(rng() % keys)), asio::bind_executor(io, [&](error_code ec, std::optional<std::string> v) {
                  if (ec || !v) std::abort();
                  ++done;
                  next();
                }));
  };
  const auto start = clk::now();
  for (int c = 0; c < chains; ++c) next();
  io.restart();
  io.run();
  if (done != n) std::abort();
  return static_cast<double>(n) / seconds_since(start);
}

// Puts per second through the tier, `chains` writers in flight.
double tier_puts(cf::disk::tier& t, asio::io_context& io, long n, int chains, long base) {
  long issued = 0, done = 0;
  std::function<void()> next = [&] {
    if (issued == n) return;
    const long i = base + issued++;
    t.async_put(key(i), value, forever, asio::bind_executor(io, [&](error_code ec) {
                  if (ec) std::abort();
                  ++done;
                  next();
                }));
  };
  const auto start = clk::now();
  for (int c = 0; c < chains; ++c) next();
  io.restart();
  io.run();
  return static_cast<double>(done) / seconds_since(start);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

cf::disk::tier_options options(const fs::path& p, std::uint64_t max_bytes = std::uint64_t{1} << 30) {
  cf::disk::tier_options o;
  o.path = p;
  o.max_bytes = max_bytes;
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path dir = fs::temp_directory_path() / "cacheflight-disk-bench";
  fs::path big_dir = fs::temp_directory_path() / "cacheflight-disk-bench-big";
  long big_entries = 10'000'000;
  double secs = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--dir") dir = argv[i + 1];
    else if (a == "--big-dir") big_dir = argv[i + 1];
    else if (a == "--big-entries") big_entries = std::stol(argv[i + 1]);
    else if (a == "--seconds") secs = std::stod(argv[i + 1]);
  }
  fs::remove_all(dir);
  asio::io_context io;

  // --- 1. get hits ------------------------------------------------------------
  std::printf("== get hit, %d keys of %zu bytes, in the page cache (ops/s; ratio = tier / raw LMDB)\n", keys,
              value.size());
  {
    raw_lmdb raw(dir / "raw", false);
    raw.fill(keys);
    cf::disk::tier t(io.get_executor(), options(dir / "tier"));
    tier_puts(t, io, keys, 256, 0);
    const long n = 400'000;
    for (int chains : {1, 64}) {
      std::vector<double> raw_r, tier_r;
      for (int rep = 0; rep < 3; ++rep) {  // alternating, medians of 3
        raw_r.push_back(raw_gets(raw, n));
        tier_r.push_back(tier_gets(t, io, n, chains));
      }
      const double r = median(raw_r), d = median(tier_r);
      std::printf("  %2d caller(s): raw LMDB %10.0f   tier %10.0f   ratio %.2f\n", chains, r, d, d / r);
    }
  }

  // --- 2. durable puts ----------------------------------------------------------
  std::printf("\n== durable puts (puts/s; ratio = tier group commit / one synced commit per put)\n");
  {
    raw_lmdb raw(dir / "raw-sync", true);
    const auto start = clk::now();
    long n = 0;
    while (seconds_since(start) < secs) raw.put_one(key(n++), value);
    const double base = static_cast<double>(n) / seconds_since(start);
    cf::disk::tier t(io.get_executor(), options(dir / "tier-sync"));
    for (int chains : {1, 64}) {
      // As many puts as the baseline made in `secs`, times the expected gain.
      const long puts = std::max<long>(200, static_cast<long>(base * secs * (chains == 1 ? 1 : 20)));
      const double d = tier_puts(t, io, puts, chains, chains * 100'000'000L);
      std::printf("  %2d writer(s): one commit per put %8.0f   tier %9.0f   ratio %.2f\n", chains, base, d, d / base);
    }
  }

  // --- 3. open time ---------------------------------------------------------------
  std::printf("\n== open time of a store of %ld entries (%s)\n", big_entries, big_dir.c_str());
  {
    auto opts = options(big_dir, std::uint64_t{16} << 30);
    opts.durability = cf::disk::durability::relaxed;
    bool build = true;
    {
      cf::disk::tier t(io.get_executor(), opts);
      build = t.stats().entries < static_cast<std::uint64_t>(big_entries);
      if (build) {
        std::printf("  building it once (relaxed commits of up to 4096 puts)...\n");
        t.async_clear(asio::bind_executor(io, [](error_code) {}));
        io.restart();
        io.run();
        const auto start = clk::now();
        tier_puts(t, io, big_entries, 1024, 0);
        std::printf("  built in %.1f s\n", seconds_since(start));
      }
      std::printf("  entries %llu, %.2f GB used\n", static_cast<unsigned long long>(t.stats().entries),
                  static_cast<double>(t.stats().used_bytes) / 1e9);
    }
    std::vector<double> times;
    for (int rep = 0; rep < 5; ++rep) {
      const auto start = clk::now();
      cf::disk::tier t(io.get_executor(), opts);
      times.push_back(seconds_since(start));
      if (rep == 0) {
        const auto g = clk::now();
        auto v = t.async_get(key(big_entries / 2), asio::use_future);
        io.restart();
        io.run();
        std::printf("  first get after open: %s in %.3f ms\n", v.get() ? "hit" : "miss", seconds_since(g) * 1e3);
      }
    }
    std::printf("  open: median %.3f ms, max %.3f ms (5 opens)\n", median(times) * 1e3,
                *std::max_element(times.begin(), times.end()) * 1e3);
  }

  // --- 4. get latency under writers ---------------------------------------------------
  std::printf("\n== get-hit latency while 64 durable writers run (%.0f s)\n", secs);
  {
    cf::disk::tier t(io.get_executor(), options(dir / "mixed"));
    tier_puts(t, io, keys, 256, 0);
    std::atomic<bool> stop{false};
    long written = 0;
    std::thread writers([&] {
      asio::io_context wio;
      long i = 1'000'000'000;
      std::function<void()> next = [&] {
        if (stop) return;
        t.async_put(key(i++), value, forever, asio::bind_executor(wio, [&](error_code) {
                      ++written;
                      next();
                    }));
      };
      for (int c = 0; c < 64; ++c) next();
      wio.run();
    });
    std::vector<double> lat;
    std::mt19937 rng(3);
    const auto start = clk::now();
    std::function<void()> next = [&] {
      if (seconds_since(start) > secs) return;
      const auto t0 = clk::now();
      t.async_get(key(static_cast<long>(rng() % keys)), asio::bind_executor(io, [&, t0](error_code ec, std::optional<std::string> v) {
                    if (ec || !v) std::abort();
                    lat.push_back(std::chrono::duration<double, std::micro>(clk::now() - t0).count());
                    next();
                  }));
    };
    next();
    io.restart();
    io.run();
    stop = true;
    writers.join();
    std::sort(lat.begin(), lat.end());
    std::printf("  %zu gets: p50 %.1f us, p99 %.1f us, max %.1f us; %ld puts meanwhile (%.0f/s)\n", lat.size(),
                lat[lat.size() / 2], lat[lat.size() * 99 / 100], lat.back(), written,
                static_cast<double>(written) / secs);
  }
  fs::remove_all(dir);
  return 0;
}
