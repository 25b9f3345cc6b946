// Redis Sentinel against real processes: a master, a replica and three
// sentinels (test/integration/redis_sentinel.sh), all with passwords. The
// client finds the master through the sentinels, follows a failover when the
// master is killed, and callers of a cache meanwhile are served by their
// loaders without hanging; unknown sets and unreachable sentinels are clear
// errors.
#include "redis_fixture.hpp"

#include <cacheflight/cacheflight.hpp>
#include <cacheflight/redis/tier.hpp>

#include <atomic>
#include <filesystem>

namespace {

using namespace cftest;

class RedisSentinel : public redis_fixture {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "cf-sentinel-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir = tmpl;
    ASSERT_EQ(script("start"), 0);
    sentinels = read("sentinels");
    master_port = read("master_port");
    replica_port = read("replica_port");
  }

  void TearDown() override {
    script("stop");
    std::filesystem::remove_all(dir);
  }

  int script(const char* what) {
    const std::string cmd = std::string("bash ") + CACHEFLIGHT_SENTINEL_SCRIPT + " " + what + " " + dir;
    return std::system(cmd.c_str());
  }

  std::string read(const char* name) {
    std::ifstream f(dir + "/" + name);
    std::string s;
    f >> s;
    return s;
  }

  redis::client_options options(std::string master = "cfmaster") {
    redis::client_options o{.connection = {.host = "unused", .port = "0", .password = "data-pw"},
                            .reconnect_min = 20ms,
                            .reconnect_max = 200ms,
                            .health_check_interval = 100ms};
    std::string list = sentinels;
    for (std::size_t at; (at = list.find(',')) != std::string::npos; list = list.substr(at + 1))
      o.sentinel.sentinels.push_back(list.substr(0, at));
    o.sentinel.sentinels.push_back(list);
    o.sentinel.master_name = std::move(master);
    o.sentinel.password = "sentinel-pw";
    return o;
  }

  std::string sentinels, master_port, replica_port;
};

TEST_F(RedisSentinel, TheClientFindsTheMasterAndFollowsAFailover) {
  redis::client c(io.get_executor(), options());
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }, 5s)) << c.last_error().message();
  EXPECT_EQ(c.server(), "127.0.0.1:" + master_port);
  EXPECT_FALSE(exec(c, {"SET", "sentinel:k", "before"}).first);
  EXPECT_FALSE(exec(c, {"WAIT", "1", "1000"}).first);  // on the replica too

  // A cache over the same client's set: its callers keep being served while
  // the master is down, by memory or by their loader, and none hangs.
  auto tier = std::make_shared<redis::tier>(io.get_executor(), options(), redis::tier_options{.prefix = "sentinel:"});
  ASSERT_TRUE(run_until([&] { return tier->get_client().is_connected(); }, 5s));
  cf::cache<int> cache{io, cf::cache_options{.max_entries = 0, .tiers = {tier}}};
  std::atomic<int> issued{0}, served{0};
  auto get = [&] {
    const int i = issued++;
    cache.async_get("key" + std::to_string(i), [i]() -> asio::awaitable<int> { co_return i; },
                    [&, i](std::exception_ptr e, int v) {
                      if (!e && v == i) ++served;
                    });
  };

  ASSERT_EQ(script("kill-master"), 0);
  const auto killed = std::chrono::steady_clock::now();
  const bool moved = run_until(
      [&] {
        if (issued < 400 && issued == served) get();
        return c.is_connected() && c.server() == "127.0.0.1:" + replica_port &&
               tier->get_client().is_connected();
      },
      20s);
  ASSERT_TRUE(moved) << "still on " << c.server() << ": " << c.last_error().message();
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed);
  std::cout << "failover followed in " << took.count() << " ms; " << served << " of " << issued
            << " cache callers served meanwhile\n";
  EXPECT_TRUE(run_until([&] { return served == issued; }, 5s));
  EXPECT_GT(issued.load(), 0);

  // The promoted replica has the data and takes writes.
  auto [ec, r] = exec(c, {"GET", "sentinel:k"});
  EXPECT_FALSE(ec);
  EXPECT_EQ(r.str, "before");
  auto [wec, wr] = exec(c, {"SET", "sentinel:k", "after"});
  EXPECT_FALSE(wec);
  EXPECT_FALSE(wr.is_error()) << wr.str;
}

// A failover the sentinels are told to make while the master keeps running:
// the old master is demoted (its connections may stay up) and the client
// moves to the new one, seen by its ROLE health check if nothing else.
TEST_F(RedisSentinel, TheClientLeavesAMasterDemotedInAForcedFailover) {
  redis::client c(io.get_executor(), options());
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }, 5s)) << c.last_error().message();
  EXPECT_EQ(c.server(), "127.0.0.1:" + master_port);
  const std::string first = sentinels.substr(0, sentinels.find(','));
  const std::string cmd = "redis-cli --no-auth-warning -p " + first.substr(first.rfind(':') + 1) +
                          " -a sentinel-pw sentinel failover cfmaster >/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  EXPECT_TRUE(run_until([&] { return c.is_connected() && c.server() == "127.0.0.1:" + replica_port; }, 20s))
      << "still on " << c.server() << ": " << c.last_error().message();
  auto [ec, r] = exec(c, {"SET", "sentinel:forced", "yes"});
  EXPECT_FALSE(ec);
  EXPECT_FALSE(r.is_error()) << r.str;
}

// One topology for the error cases: setting one up takes seconds.
TEST_F(RedisSentinel, UnknownSetsWrongPasswordsAndUnreachableSentinelsAreClearErrors) {
  {
    redis::client c(io.get_executor(), options("no-such-set"));
    run_until([&] { return bool(c.last_error()); }, 5s);
    EXPECT_FALSE(c.is_connected());
    EXPECT_EQ(c.last_error(), cf::error::master_not_found);
  }
  {
    auto o = options();
    o.sentinel.password = "wrong";
    redis::client c(io.get_executor(), o);
    run_until([&] { return bool(c.last_error()); }, 5s);
    EXPECT_FALSE(c.is_connected());
    EXPECT_EQ(c.last_error(), cf::error::auth_failed);
  }
  {
    auto o = options();
    o.connection.password = "wrong";  // the data node's
    redis::client c(io.get_executor(), o);
    run_until([&] { return bool(c.last_error()); }, 5s);
    EXPECT_FALSE(c.is_connected());
    EXPECT_EQ(c.last_error(), cf::error::auth_failed);
  }
  {
    auto o = options();
    o.sentinel.sentinels.insert(o.sentinel.sentinels.begin(), "127.0.0.1:1");  // nothing listens there
    redis::client c(io.get_executor(), o);
    EXPECT_TRUE(run_until([&] { return c.is_connected(); }, 5s)) << c.last_error().message();
  }
  {
    auto o = options();
    o.sentinel.sentinels = {"127.0.0.1:1"};
    redis::client c(io.get_executor(), o);
    run_until([&] { return bool(c.last_error()); }, 5s);
    EXPECT_FALSE(c.is_connected());
    EXPECT_EQ(c.last_error(), asio::error::connection_refused);
  }
}

}  // namespace
