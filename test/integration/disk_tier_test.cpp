// The disk tier against real files and real processes: round trips, TTLs and
// sweeps, the budget, long keys, restarts, SIGKILL at random points, damaged
// files, read-only directories, two processes on one store, cancellation.
#include <cacheflight/cacheflight.hpp>
#include <cacheflight/disk/tier.hpp>

#include <boost/asio.hpp>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace cf = cacheflight;
namespace fs = std::filesystem;
using boost::system::error_code;
using namespace std::chrono_literals;

constexpr auto forever = std::chrono::milliseconds::max();

// What a process of disk_tool printed, and how it ended.
struct tool_result {
  int status = -1;  // exit code, or -signal
  std::string out;
};

// Starts disk_tool with `args`; as `uid` when not -1 (the tests run as root on CI).
pid_t spawn_tool(const std::vector<std::string>& args, int& out_fd, uid_t uid = static_cast<uid_t>(-1)) {
  std::vector<std::string> all{CACHEFLIGHT_DISK_TOOL};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  int fds[2];
  if (::pipe(fds) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::close(fds[0]);
    ::close(fds[1]);
    if (uid != static_cast<uid_t>(-1) && (::setgid(uid) != 0 || ::setuid(uid) != 0)) ::_exit(97);
    ::execv(argv[0], argv.data());
    ::_exit(98);
  }
  ::close(fds[1]);
  out_fd = fds[0];
  return pid;
}

int wait_status(pid_t pid) {
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

tool_result run_tool(const std::vector<std::string>& args, uid_t uid = static_cast<uid_t>(-1)) {
  int fd = -1;
  const pid_t pid = spawn_tool(args, fd, uid);
  tool_result r;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) r.out.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  r.status = wait_status(pid);
  while (!r.out.empty() && r.out.back() == '\n') r.out.pop_back();
  return r;
}

class DiskTier : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "cf-disk-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir, ec);
  }

  cf::disk::tier_options options(std::uint64_t max_bytes = std::uint64_t{64} << 20) const {
    cf::disk::tier_options o;
    o.path = dir / "store";
    o.max_bytes = max_bytes;
    return o;
  }

  std::shared_ptr<cf::disk::tier> open(cf::disk::tier_options o) {
    return std::make_shared<cf::disk::tier>(pool.get_executor(), std::move(o));
  }
  std::shared_ptr<cf::disk::tier> open() { return open(options()); }

  static std::optional<std::string> get(cf::disk::tier& t, std::string key) {
    return t.async_get(std::move(key), asio::use_future).get();
  }
  static void put(cf::disk::tier& t, std::string key, std::string value, std::chrono::milliseconds ttl = forever) {
    t.async_put(std::move(key), std::move(value), ttl, asio::use_future).get();
  }
  static error_code put_error(cf::disk::tier& t, std::string key, std::string value) {
    std::promise<error_code> p;
    t.async_put(std::move(key), std::move(value), forever, [&](error_code ec) { p.set_value(ec); });
    return p.get_future().get();
  }
  static void flush(cf::disk::tier& t) { t.async_flush(asio::use_future).get(); }

  // The error the constructor throws for these options; a default code if it does not throw.
  error_code open_error(cf::disk::tier_options o) {
    try {
      cf::disk::tier t(pool.get_executor(), std::move(o));
    } catch (const boost::system::system_error& e) {
      return e.code();
    }
    return {};
  }

  fs::path dir;
  asio::thread_pool pool{1};
};

TEST_F(DiskTier, RoundTripOfBytesEraseAndClear) {
  auto t = open();
  const std::string binary("a\0b\xff\x01 z", 7);
  put(*t, "one", binary);
  put(*t, "two", "2");
  EXPECT_EQ(get(*t, "one"), binary);
  EXPECT_EQ(get(*t, "two"), "2");
  EXPECT_EQ(get(*t, "three"), std::nullopt);
  t->async_erase("one", asio::use_future).get();
  EXPECT_EQ(get(*t, "one"), std::nullopt);
  EXPECT_EQ(get(*t, "two"), "2");
  put(*t, "two", "2b");
  EXPECT_EQ(get(*t, "two"), "2b");
  EXPECT_EQ(t->stats().entries, 1u);
  t->async_clear(asio::use_future).get();
  EXPECT_EQ(get(*t, "two"), std::nullopt);
  EXPECT_EQ(t->stats().entries, 0u);
  const auto h = t->health();
  EXPECT_EQ(h.breaker, cf::breaker_state::closed);
  EXPECT_EQ(h.queued_writes, 0u);
  EXPECT_EQ(h.writes, 5u);  // three puts, an erase and a clear
  EXPECT_EQ(t->name(), "disk");
}

TEST_F(DiskTier, ReadsSeeWritesInitiatedBeforeThemWhileTheyAreQueued) {
  auto t = open();
  for (int round = 0; round < 20; ++round) {
    const std::string v = "v" + std::to_string(round);
    auto p = t->async_put("k", v, forever, asio::use_future);
    EXPECT_EQ(get(*t, "k"), v);
    auto e = t->async_erase("k", asio::use_future);
    EXPECT_EQ(get(*t, "k"), std::nullopt);
    auto p2 = t->async_put("k", v + "!", forever, asio::use_future);
    auto c = t->async_clear(asio::use_future);
    EXPECT_EQ(get(*t, "k"), std::nullopt);
    auto p3 = t->async_put("other", v, forever, asio::use_future);
    EXPECT_EQ(get(*t, "other"), v);
    p.get();
    e.get();
    p2.get();
    c.get();
    p3.get();
    EXPECT_EQ(get(*t, "k"), std::nullopt);
    EXPECT_EQ(get(*t, "other"), v);
  }
}

TEST_F(DiskTier, AnExpiredValueIsNeverReturnedAndTheSweepRemovesIt) {
  auto o = options();
  o.sweep_interval = 20ms;
  auto t = open(o);
  put(*t, "short", "s", 600ms);
  put(*t, "long", "l", 1h);
  EXPECT_EQ(get(*t, "short"), "s");
  std::this_thread::sleep_for(700ms);
  EXPECT_EQ(get(*t, "short"), std::nullopt);
  EXPECT_EQ(get(*t, "long"), "l");
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (t->stats().expired == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(t->stats().expired, 1u);
  EXPECT_EQ(t->stats().entries, 1u);
}

TEST_F(DiskTier, EachCommitSweepsAtMostSweepBatchExpiredEntries) {
  auto o = options();
  o.sweep_batch = 10;
  o.sweep_interval = 1h;
  auto t = open(o);
  std::vector<std::future<void>> fs;
  for (int i = 0; i < 100; ++i) fs.push_back(t->async_put("e" + std::to_string(i), "x", 1ms, asio::use_future));
  for (auto& f : fs) f.get();
  flush(*t);
  std::this_thread::sleep_for(20ms);
  const auto before = t->stats().expired;
  put(*t, "trigger", "x");
  EXPECT_EQ(t->stats().expired - before, 10u);
  EXPECT_EQ(get(*t, "e99"), std::nullopt);
}

TEST_F(DiskTier, TheBudgetDropsExpiredEntriesFirstThenTheOldestWritten) {
  auto o = options(std::uint64_t{1} << 20);
  o.sweep_batch = 1;  // leave expired entries to the budget
  o.sweep_interval = 1h;
  auto t = open(o);
  const std::string kb(1000, 'v');
  auto write = [&](const std::string& prefix, int n, std::chrono::milliseconds ttl) {
    std::vector<std::future<void>> fs;
    for (int i = 0; i < n; ++i) fs.push_back(t->async_put(prefix + std::to_string(i), kb, ttl, asio::use_future));
    for (auto& f : fs) f.get();
  };
  write("a", 100, 1ms);
  write("b", 100, forever);
  std::this_thread::sleep_for(10ms);
  int c = 0;
  while (t->stats().evicted == 0 && c < 3000) {
    write("c" + std::to_string(c) + "-", 10, forever);
    c += 10;
  }
  const auto s = t->stats();
  ASSERT_GT(s.evicted, 0u) << "the budget was never reached";
  ASSERT_LT(s.evicted, 100u);
  EXPECT_EQ(s.expired, 100u) << "every expired entry goes before the first live one";
  EXPECT_EQ(get(*t, "b0"), std::nullopt);
  EXPECT_EQ(get(*t, "b99"), kb);
  // Going on, the oldest keep going first, and the store stays within the budget.
  for (int i = 0; i < 200; ++i) write("d" + std::to_string(i) + "-", 10, forever);
  EXPECT_EQ(get(*t, "b99"), std::nullopt);
  EXPECT_EQ(get(*t, "d199-9"), kb);
  EXPECT_LE(t->stats().used_bytes, s.map_bytes / 4 * 3);
  EXPECT_LE(fs::file_size(o.path / "data.mdb"), o.max_bytes);
}

TEST_F(DiskTier, AValueLargerThanTheBudgetAllowsIsRefusedAndEvictsNothing) {
  auto t = open(options(std::uint64_t{1} << 20));
  EXPECT_EQ(t->max_value_bytes(), (std::uint64_t{1} << 20) / 16);
  for (int i = 0; i < 50; ++i) put(*t, "k" + std::to_string(i), std::string(1000, 'x'));
  const auto before = t->stats();
  EXPECT_EQ(put_error(*t, "huge", std::string(2 << 20, 'h')), cf::error::value_too_large);
  // The key counts: "big" and max_value_bytes() - 2 bytes is one byte too many.
  EXPECT_EQ(put_error(*t, "big", std::string(t->max_value_bytes() - 2, 'b')), cf::error::value_too_large);
  const auto after = t->stats();
  EXPECT_EQ(after.too_large, 2u);
  EXPECT_EQ(after.evicted, before.evicted);
  EXPECT_EQ(after.entries, 50u);
  EXPECT_EQ(get(*t, "k0"), std::string(1000, 'x'));
  EXPECT_EQ(get(*t, "huge"), std::nullopt);
  EXPECT_EQ(t->health().writes_dropped, 2u);
  // The largest accepted entry fits.
  put(*t, "fits", std::string(t->max_value_bytes() - 4, 'f'));
  EXPECT_EQ(get(*t, "fits")->size(), t->max_value_bytes() - 4);
}

TEST_F(DiskTier, TheLargestEntryIsWhatLmdbStoresInOneValue) {
  // A budget whose sixteenth is past LMDB's limit on a value (2^32 - 1 bytes).
  auto t = open(options(std::uint64_t{128} << 30));
  EXPECT_EQ(t->max_value_bytes(), 0xffff'ffffULL - 24);
}

TEST_F(DiskTier, AnEraseOfALongKeyIsChargedItsDigestAndEvictsNothing) {
  auto t = open(options(std::uint64_t{1} << 20));
  int n = 0;
  while (t->stats().used_bytes < 450 * 1024) put(*t, "k" + std::to_string(n++), std::string(200, 'x'));
  const auto before = t->stats();
  ASSERT_EQ(before.evicted, 0u);
  // Absent, 400 KB long: what the erase touches is one 17-byte data key.
  t->async_erase(std::string(400 * 1024, 'L'), asio::use_future).get();
  put(*t, std::string(400 * 1024, 'M'), "v", 0ms);  // a put without lifetime erases too
  const auto after = t->stats();
  EXPECT_EQ(after.evicted, 0u);
  EXPECT_EQ(after.entries, before.entries);
  EXPECT_EQ(get(*t, "k0"), std::string(200, 'x'));
}

TEST_F(DiskTier, KeysOfAnyLengthNeverShareAValue) {
  auto t = open();
  const std::string base(600, 'k');
  std::vector<std::string> keys{std::string(510, 'a'), std::string(511, 'a'), std::string(512, 'a'), base + "x",
                                base + "y",           "x" + base,           std::string(100'000, 'z')};
  for (std::size_t i = 0; i < keys.size(); ++i) put(*t, keys[i], "value" + std::to_string(i));
  for (std::size_t i = 0; i < keys.size(); ++i) EXPECT_EQ(get(*t, keys[i]), "value" + std::to_string(i)) << i;
  EXPECT_EQ(get(*t, base), std::nullopt);
  t->async_erase(base + "x", asio::use_future).get();
  EXPECT_EQ(get(*t, base + "x"), std::nullopt);
  EXPECT_EQ(get(*t, base + "y"), "value4");
  EXPECT_EQ(t->stats().entries, keys.size() - 1);
}

TEST_F(DiskTier, ALongKeyWhoseDigestSlotHoldsAnotherKeyReadsAsAbsent) {
  const std::string a(700, 'a'), b(700, 'b');
  { open(); }  // creates the store
  const auto forged = run_tool({"forge", (dir / "store").string(), a, b, "b's value"});
  ASSERT_EQ(forged.out, "ok");
  auto t = open();
  EXPECT_EQ(get(*t, a), std::nullopt);  // the slot of a holds b
  EXPECT_EQ(get(*t, b), std::nullopt);  // b has no value under its own slot
  t->async_erase(a, asio::use_future).get();  // does not remove b's record
  EXPECT_EQ(t->stats().entries, 1u);
  put(*t, a, "a's value");  // replaces it
  EXPECT_EQ(get(*t, a), "a's value");
}

TEST_F(DiskTier, ANewProcessReadsWhatAnotherWroteAndTtlsHoldAcrossRestarts) {
  const std::string store = (dir / "store").string();
  EXPECT_EQ(run_tool({"put", store, "user:1", "Ada"}).out, "ok");
  EXPECT_EQ(run_tool({"put", store, "user:2", "Bob", "1500"}).out, "ok");
  {
    auto t = open();
    EXPECT_EQ(get(*t, "user:1"), "Ada");
    EXPECT_EQ(get(*t, "user:2"), "Bob");
    put(*t, "user:3", "Cy");
  }
  std::this_thread::sleep_for(1600ms);
  EXPECT_EQ(run_tool({"get", store, "user:3"}).out, "value:Cy");
  EXPECT_EQ(run_tool({"get", store, "user:2"}).out, "absent");
  auto t = open();
  EXPECT_EQ(get(*t, "user:1"), "Ada");
  EXPECT_EQ(get(*t, "user:2"), std::nullopt);
}

TEST_F(DiskTier, TheDestructorCommitsTheWritesItAccepted) {
  {
    auto t = open();
    for (int i = 0; i < 500; ++i)
      t->async_put("k" + std::to_string(i), "v", forever, [](error_code) {});
  }
  auto t = open();
  EXPECT_EQ(t->stats().entries, 500u);
  EXPECT_EQ(get(*t, "k499"), "v");
}

// A writer killed with SIGKILL at a random point, over and over: every put it
// saw complete is there afterwards, and the store opens every time.
void kill_loop(const fs::path& dir, bool relaxed, int rounds, asio::thread_pool& pool) {
  std::mt19937 rng(12345);
  const std::string store = (dir / "store").string();
  std::vector<long> acked;
  std::size_t total = 0;
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::string> args{"put-loop", store, std::to_string(round * 1'000'000L)};
    if (relaxed) args.push_back("relaxed");
    int fd = -1;
    const pid_t pid = spawn_tool(args, fd);
    ASSERT_GT(pid, 0);
    // Half the rounds die at a random moment from the start (opening
    // included), the others a random time after their first completed put.
    const bool after_first = round % 2 == 1;
    const auto delay = std::chrono::microseconds(std::uniform_int_distribution<int>(0, 40'000)(rng));
    auto kill_at = std::chrono::steady_clock::now() + delay;
    std::string buf;
    bool killed = false, seen_first = false;
    for (;;) {
      const auto now = std::chrono::steady_clock::now();
      if (!killed && (!after_first || seen_first) && now >= kill_at) {
        ::kill(pid, SIGKILL);
        killed = true;
      }
      pollfd p{fd, POLLIN, 0};
      const int wait_ms = killed ? 1000 : 1;
      if (::poll(&p, 1, wait_ms) <= 0) {
        if (killed) break;
        continue;
      }
      char chunk[4096];
      const ssize_t n = ::read(fd, chunk, sizeof chunk);
      if (n <= 0) break;
      buf.append(chunk, static_cast<std::size_t>(n));
      if (!seen_first && buf.find('\n') != std::string::npos) {
        seen_first = true;
        kill_at = std::chrono::steady_clock::now() + delay;
      }
    }
    ::close(fd);
    const int status = wait_status(pid);
    ASSERT_EQ(status, -SIGKILL) << "the writer ended on its own: " << buf.substr(0, 200);
    acked.clear();
    std::size_t start = 0;
    for (std::size_t nl; (nl = buf.find('\n', start)) != std::string::npos; start = nl + 1) {
      const std::string line = buf.substr(start, nl - start);
      ASSERT_FALSE(line.starts_with("error")) << line;
      acked.push_back(std::stol(line));
    }
    total += acked.size();
    cf::disk::tier_options o;
    o.path = store;
    o.max_bytes = std::uint64_t{256} << 20;
    std::shared_ptr<cf::disk::tier> t;
    ASSERT_NO_THROW(t = std::make_shared<cf::disk::tier>(pool.get_executor(), o)) << "round " << round;
    for (long i : acked) {
      auto v = t->async_get("k" + std::to_string(i), asio::use_future).get();
      ASSERT_EQ(v, "v" + std::to_string(i)) << "round " << round << ": a completed put is missing";
    }
  }
  EXPECT_GT(total, 0u) << "no put ever completed before a kill";
}

TEST_F(DiskTier, AWriterKilledAtRandomPointsLosesNoCompletedDurablePut) { kill_loop(dir, false, 30, pool); }

TEST_F(DiskTier, AWriterKilledAtRandomPointsLosesNoCompletedRelaxedPut) { kill_loop(dir, true, 10, pool); }

TEST_F(DiskTier, FilesThatAreNotAStoreOrAreTruncatedAreRefusedAtOpen) {
  const fs::path store = dir / "store";
  fs::create_directories(store);
  {  // random bytes
    std::ofstream f(store / "data.mdb", std::ios::binary);
    std::mt19937 rng(7);
    for (int i = 0; i < 64 * 1024; ++i) f.put(static_cast<char>(rng()));
  }
  EXPECT_EQ(open_error(options()), cf::error::corrupt_store);
  fs::remove_all(store);

  ASSERT_EQ(run_tool({"foreign", store.string()}).out, "ok");  // somebody else's LMDB database
  EXPECT_EQ(open_error(options()), cf::error::corrupt_store);
  fs::remove_all(store);

  {
    auto t = open();
    std::vector<std::future<void>> fs;
    for (int i = 0; i < 2000; ++i) fs.push_back(t->async_put("k" + std::to_string(i), std::string(500, 'x'), forever,
                                                             asio::use_future));
    for (auto& f : fs) f.get();
  }
  const auto size = fs::file_size(store / "data.mdb");
  fs::resize_file(store / "data.mdb", size / 2);
  EXPECT_EQ(open_error(options()), cf::error::corrupt_store);
  fs::remove_all(store);

  // Meta pages damaged to claim more pages than any map could hold, up to a
  // count whose bytes pass 64 bits: refused, not an error of the map.
  open().reset();
  const long psize = ::sysconf(_SC_PAGESIZE);
  for (std::uint64_t last : {std::uint64_t{1} << 36, std::uint64_t{1} << 40, ~std::uint64_t{0} >> 12}) {
    {
      std::fstream f(store / "data.mdb", std::ios::binary | std::ios::in | std::ios::out);
      for (long page : {0L, psize}) {
        f.seekp(page + 136);  // the meta page's last page in use
        f.write(reinterpret_cast<const char*>(&last), sizeof last);
      }
    }
    EXPECT_EQ(open_error(options()), cf::error::corrupt_store) << last;
  }
}

TEST_F(DiskTier, ADamagedRecordIsAnErrorNotACrash) {
  {
    auto t = open();
    put(*t, "k", std::string(300, 'x'));
  }
  // Overwrite the record's magic wherever it is in the file.
  {
    std::fstream f(dir / "store" / "data.mdb", std::ios::in | std::ios::out | std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::size_t at = 0, n = 0;
    while ((at = all.find("CFD1", at)) != std::string::npos) {
      f.seekp(static_cast<std::streamoff>(at));
      f.write("XXXX", 4);
      at += 4;
      ++n;
    }
    ASSERT_GT(n, 0u);
  }
  auto t = open();
  try {
    get(*t, "k");
    ADD_FAILURE() << "no error";
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), cf::error::corrupt_store);
  }
  put(*t, "k", "fresh");  // a write replaces it
  EXPECT_EQ(get(*t, "k"), "fresh");
}

// Puts whose transaction would not fit in the room the budget leaves: the
// writer makes room in small transactions and splits the batch, and every
// put is stored.
TEST_F(DiskTier, BurstsOfPutsIntoAFullBudgetEvictTheOldestInsteadOfFailing) {
  auto t = open(options(std::uint64_t{1} << 20));
  for (int round = 0; round < 3; ++round) {
    std::vector<std::promise<error_code>> done(4096);
    for (int i = 0; i < 4096; ++i)
      t->async_put("r" + std::to_string(round) + "k" + std::to_string(i), "v" + std::to_string(i), 1h,
                   [&, i](error_code ec) { done[static_cast<std::size_t>(i)].set_value(ec); });
    int errors = 0;
    for (auto& d : done) errors += d.get_future().get() ? 1 : 0;
    ASSERT_EQ(errors, 0) << "round " << round;
    EXPECT_EQ(get(*t, "r" + std::to_string(round) + "k4095"), "v4095");
  }
  const auto s = t->stats();
  EXPECT_GT(s.evicted, 0u);
  EXPECT_EQ(s.write_errors, 0u);
  EXPECT_LE(s.used_bytes, s.map_bytes / 4 * 3);
  EXPECT_EQ(get(*t, "r0k0"), std::nullopt);  // the oldest went first
  EXPECT_EQ(t->health().writes_dropped, 0u);
}

TEST_F(DiskTier, ASteadyLoadOfRandomKeysStaysWithinTheBudgetWithoutErrors) {
  auto o = options(std::uint64_t{4} << 20);
  auto t = open(o);
  std::mt19937_64 rng(1);
  const std::string value(100, 'v');
  for (int round = 0; round < 4; ++round) {
    std::vector<std::future<void>> fs;
    for (int i = 0; i < 4000; ++i)
      fs.push_back(t->async_put("key-" + std::to_string(rng()), value, 1h, asio::use_future));
    for (auto& f : fs) ASSERT_NO_THROW(f.get()) << "round " << round;
  }
  const auto s = t->stats();
  EXPECT_GT(s.evicted, 0u);
  EXPECT_LE(s.used_bytes, o.max_bytes / 4 * 3);
  EXPECT_LE(fs::file_size(o.path / "data.mdb"), o.max_bytes);
}

TEST_F(DiskTier, AStoreReopenedWithASmallerBudgetIsEvictedDownToItAndStaysWritable) {
  auto o = options(std::uint64_t{16} << 20);
  o.max_queued_writes = 100'000;
  {
    auto t = open(o);
    std::vector<std::future<void>> fs;
    for (int i = 0; i < 6000; ++i)
      fs.push_back(t->async_put("k" + std::to_string(i), std::string(1000, 'x'), forever, asio::use_future));
    for (auto& f : fs) f.get();
    ASSERT_GT(t->stats().used_bytes, std::uint64_t{8} << 20);
  }
  const auto file = fs::file_size(o.path / "data.mdb");
  o.max_bytes = std::uint64_t{1} << 20;
  auto t = open(o);
  EXPECT_EQ(t->max_value_bytes(), o.max_bytes / 16);
  EXPECT_GE(t->stats().map_bytes, file);  // the map covers the file
  // An erase is never refused: the entries are dropped down to the new budget
  // first, then the erase is committed.
  t->async_erase("k5998", asio::use_future).get();
  EXPECT_EQ(get(*t, "k5998"), std::nullopt);
  put(*t, "k5999", "newer");
  EXPECT_EQ(get(*t, "k5999"), "newer");
  EXPECT_EQ(get(*t, "k0"), std::nullopt);  // the oldest went first
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(put_error(*t, "n" + std::to_string(i), std::string(1000, 'y'))) << i;
  const auto s = t->stats();
  EXPECT_LE(s.used_bytes, o.max_bytes / 4 * 3);
  EXPECT_GT(s.evicted, 5000u);
  EXPECT_EQ(s.write_errors, 0u);
  EXPECT_EQ(fs::file_size(o.path / "data.mdb"), file);  // the file keeps its size
}

TEST_F(DiskTier, TheIdleWriterEvictsAStoreReopenedWithASmallerBudget) {
  auto o = options(std::uint64_t{8} << 20);
  o.max_queued_writes = 100'000;
  {
    auto t = open(o);
    std::vector<std::future<void>> fs;
    for (int i = 0; i < 3000; ++i)
      fs.push_back(t->async_put("k" + std::to_string(i), std::string(1000, 'x'), forever, asio::use_future));
    for (auto& f : fs) f.get();
  }
  o.max_bytes = std::uint64_t{1} << 20;
  o.sweep_interval = 20ms;
  auto t = open(o);
  for (int i = 0; i < 250 && t->stats().used_bytes > o.max_bytes / 4 * 3; ++i) std::this_thread::sleep_for(20ms);
  EXPECT_LE(t->stats().used_bytes, o.max_bytes / 4 * 3);
  EXPECT_EQ(get(*t, "k0"), std::nullopt);
  EXPECT_EQ(get(*t, "k2999"), std::string(1000, 'x'));
}

TEST_F(DiskTier, WriteErrorsCountsEveryWriteOfAFailedCommit) {
  const auto r = run_tool({"fill-burst", (dir / "store").string(), std::to_string(1 << 20), "32"});
  ASSERT_EQ(r.status, 0) << r.out;
  int failed = -1, counted = -1;
  ASSERT_EQ(std::sscanf(r.out.c_str(), "failed:%d write_errors:%d", &failed, &counted), 2) << r.out;
  EXPECT_GT(failed, 1) << r.out;
  EXPECT_EQ(counted, failed) << r.out;
}

TEST_F(DiskTier, AnEmptyDataFileIsANewStore) {
  {
    auto t = open();
    put(*t, "k", "v");
  }
  // As a crash between LMDB's creating the file and writing its first pages leaves it.
  fs::resize_file(dir / "store" / "data.mdb", 0);
  ASSERT_TRUE(fs::exists(dir / "store" / "lock.mdb"));
  auto t = open();
  EXPECT_EQ(t->stats().entries, 0u);
  EXPECT_EQ(get(*t, "k"), std::nullopt);
  put(*t, "k", "w");
  EXPECT_EQ(get(*t, "k"), "w");
}

// Sets the full-key length of every copy of the record holding `marker` to `klen`.
void damage_key_length(const fs::path& file, const std::string& marker, std::uint32_t klen) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::size_t at = 0, n = 0;
  while ((at = all.find(marker, at)) != std::string::npos) {
    const std::size_t rec = all.rfind("CFD1", at);
    ASSERT_NE(rec, std::string::npos);
    f.seekp(static_cast<std::streamoff>(rec + 20));
    for (int i = 0; i < 4; ++i) f.put(static_cast<char>(klen >> (8 * i)));
    at += marker.size();
    ++n;
  }
  ASSERT_GT(n, 0u);
}

TEST_F(DiskTier, AKeyLengthThatDoesNotFitTheKeyIsADamagedRecord) {
  const std::string long_key = std::string(600, 'L');
  {
    auto t = open();
    put(*t, "plainkey", "PLAIN-ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    put(*t, long_key, "LONG-ABCDEFGHIJKLMNOPQRSTUVWXYZ");
  }
  damage_key_length(dir / "store" / "data.mdb", "PLAIN-ABCDEF", 5);  // a plain key's record has none
  damage_key_length(dir / "store" / "data.mdb", "LONG-ABCDEF", 5);   // a digest key's is a long key
  auto t = open();
  for (const std::string& key : {std::string("plainkey"), long_key}) {
    try {
      const auto v = get(*t, key);
      ADD_FAILURE() << "no error; read " << (v ? "\"" + *v + "\"" : "nothing");
    } catch (const boost::system::system_error& e) {
      EXPECT_EQ(e.code(), cf::error::corrupt_store);
    }
    put(*t, key, "fresh");  // a write replaces it
    EXPECT_EQ(get(*t, key), "fresh");
  }
}

TEST_F(DiskTier, AMissingOrReadOnlyDirectoryIsAClearError) {
  auto o = options();
  o.path = "/proc/self/cacheflight-store";  // cannot be created
  EXPECT_TRUE(open_error(o));
  std::ofstream(dir / "file") << "x";
  o.path = dir / "file" / "store";  // a file in the way
  EXPECT_EQ(open_error(o), boost::system::errc::not_a_directory);

  const fs::path ro = dir / "ro";
  fs::create_directories(ro);
  fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read | fs::perms::group_exec |
                          fs::perms::others_read | fs::perms::others_exec);
  fs::permissions(dir, fs::perms::others_exec | fs::perms::others_read, fs::perm_options::add);
  if (::geteuid() == 0) {
    // root ignores permissions: open it as nobody.
    const auto r = run_tool({"open", (ro / "store").string()}, 65534);
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_TRUE(r.out.starts_with("error:system:" + std::to_string(EACCES))) << r.out;
    fs::permissions(ro, fs::perms::owner_all);
    fs::create_directories(ro / "store");
    fs::permissions(ro / "store", fs::perms::owner_read | fs::perms::owner_exec | fs::perms::others_read |
                                      fs::perms::others_exec);
    const auto r2 = run_tool({"open", (ro / "store").string()}, 65534);
    EXPECT_EQ(r2.status, 1) << r2.out;
    EXPECT_TRUE(r2.out.starts_with("error:system:" + std::to_string(EACCES))) << r2.out;
  } else {
    o.path = ro / "store";
    EXPECT_EQ(open_error(o), boost::system::errc::permission_denied);
  }
}

TEST_F(DiskTier, AFullDiskFailsTheWritesOfThatCommitAndTheStoreGoesOn) {
  // RLIMIT_FSIZE stands for a full disk: past it, writes fail (LMDB reports
  // a short write as an I/O error).
  const auto r = run_tool({"fill", (dir / "store").string(), std::to_string(4 << 20)});
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("put-error:"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("put-error:none"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("get:ok"), std::string::npos) << r.out;
  // The next flush reports the failure; the one after it has nothing to report.
  EXPECT_NE(r.out.find("flush:"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("flush:ok"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("flush-again:ok"), std::string::npos) << r.out;
  auto t = open();
  EXPECT_EQ(get(*t, "f0"), std::string(64 * 1024, 'x'));
}

TEST_F(DiskTier, TwoProcessesShareOneStore) {
  auto t = open();
  put(*t, "mine", "1");
  const std::string store = (dir / "store").string();
  EXPECT_EQ(run_tool({"get", store, "mine"}).out, "value:1");
  EXPECT_EQ(run_tool({"put", store, "theirs", "2"}).out, "ok");
  EXPECT_EQ(get(*t, "theirs"), "2");
  // Both write; neither loses the other's entries.
  put(*t, "mine2", "3");
  EXPECT_EQ(run_tool({"get", store, "mine2"}).out, "value:3");
  EXPECT_EQ(get(*t, "theirs"), "2");
}

TEST_F(DiskTier, OneDirectoryIsOpenOnceInAProcessByAnySpelling) {
  auto first = open();
  EXPECT_EQ(open_error(options()), cf::error::already_open);
  auto o = options();
  o.path = dir / "." / "store" / "";
  EXPECT_EQ(open_error(o), cf::error::already_open);
  fs::create_directory_symlink(dir / "store", dir / "link");
  o.path = dir / "link";
  EXPECT_EQ(open_error(o), cf::error::already_open);
  first.reset();
  EXPECT_FALSE(open_error(o));
}

TEST_F(DiskTier, AnEmptyKeyIsRefusedAndAPutWithoutLifetimeErases) {
  auto t = open();
  EXPECT_EQ(put_error(*t, "", "v"), cf::error::invalid_key);
  try {
    get(*t, "");
    ADD_FAILURE() << "no error";
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), cf::error::invalid_key);
  }
  put(*t, "k", "v");
  put(*t, "k", "w", 0ms);
  EXPECT_EQ(get(*t, "k"), std::nullopt);
  put(*t, "k", "v");
  put(*t, "k", "w", -5ms);
  EXPECT_EQ(get(*t, "k"), std::nullopt);
  EXPECT_EQ(t->stats().entries, 0u);
}

TEST_F(DiskTier, ASweepIntervalOfForeverIsADayNotABusyLoop) {
  auto o = options();
  o.sweep_interval = std::chrono::milliseconds::max();
  auto t = open(o);
  put(*t, "k", "v");
  EXPECT_EQ(get(*t, "k"), "v");
  // An idle writer waking without end would show in this process's CPU time.
  timespec cpu{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
  const double before = static_cast<double>(cpu.tv_sec) + static_cast<double>(cpu.tv_nsec) / 1e9;
  std::this_thread::sleep_for(300ms);
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
  const double after = static_cast<double>(cpu.tv_sec) + static_cast<double>(cpu.tv_nsec) / 1e9;
  EXPECT_LT(after - before, 0.15);
}

TEST_F(DiskTier, ImpossibleOptionsAreRefused) {
  auto bad = [&](auto change) {
    auto o = options();
    change(o);
    return open_error(o);
  };
  EXPECT_EQ(bad([](auto& o) { o.path.clear(); }), cf::error::invalid_option);
  EXPECT_EQ(bad([](auto& o) { o.max_bytes = 1000; }), cf::error::invalid_option);
  EXPECT_EQ(bad([](auto& o) { o.max_bytes = (std::uint64_t{1} << 46) + 1; }), cf::error::invalid_option);
  EXPECT_EQ(bad([](auto& o) { o.max_bytes = std::uint64_t{1} << 60; }), cf::error::invalid_option);
  EXPECT_EQ(bad([](auto& o) { o.readers = 0; }), cf::error::invalid_option);
  EXPECT_EQ(bad([](auto& o) { o.readers = 65; }), cf::error::invalid_option);
  EXPECT_EQ(bad([](auto& o) { o.max_queued_writes = 0; }), cf::error::invalid_option);
  EXPECT_EQ(bad([](auto& o) { o.max_write_batch = 0; }), cf::error::invalid_option);
  EXPECT_EQ(bad([](auto& o) { o.sweep_interval = 0ms; }), cf::error::invalid_option);
  EXPECT_EQ(bad([](auto& o) { o.sweep_batch = 0; }), cf::error::invalid_option);
  EXPECT_EQ(bad([](auto& o) { o.durability = static_cast<cf::disk::durability>(7); }), cf::error::invalid_option);
}

// An executor that holds the thread handing it a function (the tier's
// reader, completing a read) until `open` is set, then posts the function to
// `io`.
struct gate_executor {
  asio::io_context* io;
  std::atomic<bool>* entered;
  std::atomic<bool>* open;

  asio::execution_context& query(asio::execution::context_t) const noexcept { return *io; }
  static constexpr asio::execution::blocking_t query(asio::execution::blocking_t) noexcept {
    return asio::execution::blocking.never;
  }
  template <class F>
  void execute(F f) const {
    entered->store(true);
    while (!open->load()) std::this_thread::yield();
    asio::post(*io, std::move(f));
  }
  friend bool operator==(const gate_executor& a, const gate_executor& b) noexcept { return a.io == b.io; }
  friend bool operator!=(const gate_executor& a, const gate_executor& b) noexcept { return !(a == b); }
};

TEST_F(DiskTier, AQueuedReadCancelledCompletesWithOperationAbortedAndTheOthersAreAnswered) {
  auto o = options();
  o.readers = 1;
  auto t = open(o);
  put(*t, "k", "v");
  asio::io_context io;
  asio::cancellation_signal sig;
  // The one reader is held while it completes a first read, so that every
  // read below is still queued when the last one is cancelled.
  std::atomic<bool> entered{false}, open_gate{false};
  int first = 0;
  t->async_get("k", asio::bind_executor(gate_executor{&io, &entered, &open_gate},
                                        [&](error_code ec, std::optional<std::string> v) {
                                          if (!ec && v == "v") ++first;
                                        }));
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (!entered.load() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  ASSERT_TRUE(entered.load());
  constexpr int n = 20'000;
  std::atomic<int> answered{0}, aborted_other{0};
  error_code last_ec;
  std::optional<std::string> last_v;
  int last_calls = 0;
  for (int i = 0; i < n; ++i)
    t->async_get("k", asio::bind_executor(io, [&](error_code ec, std::optional<std::string> v) {
                   if (!ec && v == "v") ++answered;
                   else ++aborted_other;
                 }));
  t->async_get("k", asio::bind_cancellation_slot(sig.slot(), asio::bind_executor(io, [&](error_code ec,
                                                                                        std::optional<std::string> v) {
                                                   ++last_calls;
                                                   last_ec = ec;
                                                   last_v = std::move(v);
                                                 })));
  sig.emit(asio::cancellation_type::terminal);
  open_gate.store(true);
  io.run();
  EXPECT_EQ(first, 1);
  EXPECT_EQ(last_calls, 1);
  EXPECT_EQ(last_ec, asio::error::operation_aborted);
  EXPECT_EQ(last_v, std::nullopt);
  EXPECT_EQ(answered.load(), n);
  EXPECT_EQ(aborted_other.load(), 0);
}

TEST_F(DiskTier, HandlersRunOnTheirOwnExecutorAndNeverInsideTheInitiatingCall) {
  auto t = open();
  put(*t, "k", "v");
  asio::io_context io;
  auto strand = asio::make_strand(io);
  bool inside = true, on_strand = false;
  int done = 0;
  asio::post(strand, [&] {
    t->async_get("k", asio::bind_executor(strand, [&](error_code, std::optional<std::string>) {
                   on_strand = strand.running_in_this_thread();
                   ++done;
                 }));
    // Answered from the queue of writes: still not inline.
    t->async_put("q", "1", forever, asio::bind_executor(strand, [&](error_code) { ++done; }));
    t->async_get("q", asio::bind_executor(strand, [&](error_code, std::optional<std::string> v) {
                   EXPECT_EQ(v, "1");
                   ++done;
                 }));
    t->async_put("big", std::string(t->max_value_bytes() + 1, 'x'), forever,
                 asio::bind_executor(strand, [&](error_code ec) {
                   EXPECT_EQ(ec, cf::error::value_too_large);
                   ++done;
                 }));
    EXPECT_EQ(done, 0);
    inside = false;
  });
  io.run();  // returns only once every operation completed: each counts as work
  EXPECT_FALSE(inside);
  EXPECT_TRUE(on_strand);
  EXPECT_EQ(done, 4);
}

TEST_F(DiskTier, ABurstOfPutsBeyondTheQueueBoundIsRefusedAndCounted) {
  auto o = options();
  o.max_queued_writes = 1;
  auto t = open(o);
  std::atomic<int> ok{0}, full{0}, other{0};
  std::vector<std::future<void>> fs;
  asio::io_context io;
  for (int i = 0; i < 2000; ++i)
    t->async_put("k" + std::to_string(i), "v", forever, asio::bind_executor(io, [&](error_code ec) {
                   if (!ec) ++ok;
                   else if (ec == cf::error::queue_full) ++full;
                   else ++other;
                 }));
  io.run();
  EXPECT_EQ(ok + full, 2000);
  EXPECT_EQ(other.load(), 0);
  EXPECT_GT(full.load(), 0);
  EXPECT_EQ(t->stats().queue_full, static_cast<std::uint64_t>(full.load()));
  EXPECT_EQ(t->stats().entries, static_cast<std::uint64_t>(ok.load()));
  // Erases are never refused.
  t->async_erase("k0", asio::use_future).get();
}

TEST_F(DiskTier, FlushCompletesAfterEverythingQueuedBeforeIt) {
  for (auto d : {cf::disk::durability::durable, cf::disk::durability::relaxed}) {
    auto o = options();
    o.durability = d;
    auto t = open(o);
    asio::io_context io;
    int done = 0, at_flush = -1;
    for (int i = 0; i < 300; ++i)
      t->async_put("k" + std::to_string(i), "v", forever, asio::bind_executor(io, [&](error_code ec) {
                     EXPECT_FALSE(ec);
                     ++done;
                   }));
    t->async_flush(asio::bind_executor(io, [&](error_code ec) {
      EXPECT_FALSE(ec);
      at_flush = done;
    }));
    io.run();
    EXPECT_EQ(at_flush, 300);
    EXPECT_EQ(t->health().queued_writes, 0u);
    EXPECT_EQ(t->stats().entries, 300u);
    t.reset();
    fs::remove_all(dir / "store");
  }
}

TEST_F(DiskTier, DestroyingTheExecutionContextWithOperationsQueuedDropsTheirHandlers) {
  auto io = std::make_unique<asio::io_context>();
  cf::disk::tier_options o = options();
  auto t = std::make_shared<cf::disk::tier>(io->get_executor(), o);
  auto owner = std::make_shared<int>(1);
  std::weak_ptr<int> watch = owner;
  for (int i = 0; i < 100; ++i) {
    t->async_put("k" + std::to_string(i), "v", forever, [owner, t](error_code) {});
    t->async_get("k", [owner, t](error_code, std::optional<std::string>) {});
  }
  owner.reset();
  t.reset();  // the handlers own the tier now
  io.reset();
  // A batch the writer was committing meanwhile drops its handlers when done.
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!watch.expired() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(watch.expired());
}

// --- the tier under a cache ---------------------------------------------------

TEST_F(DiskTier, ACacheServesWhatAnEarlierInstanceLoadedWithoutItsLoader) {
  asio::io_context io;
  int loads = 0;
  auto loader = [&]() -> asio::awaitable<std::string> {
    ++loads;
    co_return "loaded";
  };
  cf::disk::tier_options o = options();
  {
    auto disk = std::make_shared<cf::disk::tier>(io.get_executor(), o);
    cf::cache<std::string> c(io.get_executor(), cf::cache_options{.tiers = {disk}});
    std::string v;
    c.async_get("user:1", loader, [&](std::exception_ptr, std::string s) { v = std::move(s); });
    io.run();
    io.restart();
    EXPECT_EQ(v, "loaded");
    disk->async_flush([](error_code) {});
    io.run();
    io.restart();
  }
  auto disk = std::make_shared<cf::disk::tier>(io.get_executor(), o);
  cf::cache<std::string> c(io.get_executor(), cf::cache_options{.tiers = {disk}});
  std::string v;
  c.async_get("user:1", loader, [&](std::exception_ptr, std::string s) { v = std::move(s); });
  io.run();
  EXPECT_EQ(v, "loaded");
  EXPECT_EQ(loads, 1);
  EXPECT_EQ(c.stats().tiers.at(0).hits, 1u);
}

TEST_F(DiskTier, AValueKeepsItsFreshTimeAndStaleWindowAcrossARestart) {
  asio::io_context io;
  int loads = 0;
  auto loader = [&]() -> asio::awaitable<std::string> {
    co_return "load " + std::to_string(++loads);
  };
  const cf::cache_options co{.default_ttl = 60s, .stale_while_revalidate = 30s};
  cf::disk::tier_options o = options();
  {
    auto disk = std::make_shared<cf::disk::tier>(io.get_executor(), o);
    cf::cache<std::string> c(io.get_executor(), [&] {
      auto x = co;
      x.tiers = {disk};
      return x;
    }());
    c.async_get("fresh", loader, [](std::exception_ptr, std::string) {});
    io.run();
    io.restart();
    // One that went stale in another process: its fresh time passed a second ago.
    const std::int64_t now_ms = cf::detail::envelope::now_ms();
    disk->async_put("stale", cf::detail::encode_stored<std::string>("old", now_ms + 20'000, now_ms - 1'000), 20s,
                    [](error_code) {});
    disk->async_flush([](error_code) {});
    io.run();
    io.restart();
  }
  auto disk = std::make_shared<cf::disk::tier>(io.get_executor(), o);
  const auto stored = get(*disk, "fresh");
  ASSERT_TRUE(stored);
  const auto env = cf::detail::envelope::unwrap(*stored);
  ASSERT_TRUE(env);
  EXPECT_EQ(env->expires_ms - env->fresh_until_ms, 30'000);  // both times survived the restart

  auto x = co;
  x.tiers = {disk};
  cf::cache<std::string> c(io.get_executor(), x);
  std::vector<std::string> got;
  auto keep = [&](std::exception_ptr, std::string s) { got.push_back(std::move(s)); };
  c.async_get("stale", loader, keep);  // read as stale: served, no load
  io.run();
  io.restart();
  EXPECT_EQ(loads, 1);
  c.async_get("stale", loader, keep);  // a stale hit in memory: served, and one reload
  io.run();
  io.restart();
  EXPECT_EQ(got, (std::vector<std::string>{"old", "old"}));
  EXPECT_EQ(loads, 2);
  EXPECT_EQ(c.peek("stale"), "load 2");
  const auto s = c.stats();
  EXPECT_EQ(s.stale_hits, 1u);
  EXPECT_EQ(s.refreshes_succeeded, 1u);
  EXPECT_EQ(s.tiers.at(0).hits, 1u);
}

TEST_F(DiskTier, BytesThatDoNotDecodeAreAMissAndATierCorruptEvent) {
  asio::io_context io;
  auto disk = std::make_shared<cf::disk::tier>(io.get_executor(), options());
  disk->async_put("user:1", "not an envelope", forever, [](error_code) {});
  io.run();
  io.restart();
  std::vector<cf::cache_event> events;
  cf::cache<std::string> c(io.get_executor(),
                           cf::cache_options{.on_event = [&](const cf::cache_event& e) { events.push_back(e); },
                                             .tiers = {disk}});
  int loads = 0;
  std::string v;
  c.async_get(
      "user:1",
      [&]() -> asio::awaitable<std::string> {
        ++loads;
        co_return "fresh";
      },
      [&](std::exception_ptr, std::string s) { v = std::move(s); });
  io.run();
  EXPECT_EQ(v, "fresh");
  EXPECT_EQ(loads, 1);
  EXPECT_TRUE(std::any_of(events.begin(), events.end(),
                          [](const cf::cache_event& e) { return e.kind == cf::cache_event_kind::tier_corrupt; }));
}

}  // namespace
