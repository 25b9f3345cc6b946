// redis::client against a real redis-server that is killed and restarted:
// commands fail fast while it is down, and the client reconnects by itself.
#include <cacheflight/error.hpp>
#include <cacheflight/redis/client.hpp>

#include <boost/asio.hpp>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

namespace {

namespace asio = boost::asio;
namespace redis = cacheflight::redis;
namespace cf = cacheflight;
using boost::system::error_code;
using namespace std::chrono_literals;

class RedisClient : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* root = std::getenv("CACHEFLIGHT_REDIS_ROOT");
    ASSERT_TRUE(root) << "run through ctest";
    dir = std::string(root) + "/redis";
    script = CACHEFLIGHT_REDIS_SCRIPT;
    std::ifstream f(dir + "/port");
    f >> port;
    ASSERT_FALSE(port.empty());
  }

  void server(const char* what) {
    const std::string cmd = "bash " + script + " " + what + " " + dir;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }

  // Runs the context until `pred` holds or `limit` of real time passes.
  template <class Pred>
  bool run_until(Pred pred, std::chrono::milliseconds limit = 5s) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!pred() && std::chrono::steady_clock::now() < end) {
      io.restart();
      io.run_for(10ms);
    }
    return pred();
  }

  std::pair<error_code, redis::reply> exec(redis::client& c, std::vector<std::string> args) {
    std::optional<std::pair<error_code, redis::reply>> r;
    c.async_exec(std::move(args), [&](error_code ec, redis::reply rep) { r.emplace(ec, std::move(rep)); });
    EXPECT_TRUE(run_until([&] { return r.has_value(); }));
    return r.value_or(std::pair<error_code, redis::reply>{asio::error::timed_out, {}});
  }

  asio::io_context io;
  std::string dir, script, port;
};

TEST_F(RedisClient, ReconnectsAfterTheServerRestarts) {
  redis::client c{io.get_executor(),
                  redis::client_options{.connection = {.host = "127.0.0.1", .port = port},
                                        .reconnect_min = 20ms,
                                        .reconnect_max = 200ms,
                                        .health_check_interval = 50ms}};
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }));
  auto [ec, pong] = exec(c, {"PING"});
  EXPECT_FALSE(ec);
  EXPECT_EQ(pong.str, "PONG");

  server("kill");
  ASSERT_TRUE(run_until([&] { return !c.is_connected(); }));
  auto [down, r] = exec(c, {"PING"});
  EXPECT_EQ(down, cf::error::not_connected);  // fails fast, nothing queued

  server("restart");
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }));
  auto [ec2, pong2] = exec(c, {"PING"});
  EXPECT_FALSE(ec2);
  EXPECT_EQ(pong2.str, "PONG");
  EXPECT_EQ(c.connections_opened(), 2u);
}

TEST_F(RedisClient, KeepsRetryingWhileTheServerIsDown) {
  redis::client c{io.get_executor(), redis::client_options{.connection = {.host = "127.0.0.1", .port = "1"},
                                                           .reconnect_min = 10ms,
                                                           .reconnect_max = 40ms}};
  run_until([] { return false; }, 200ms);
  EXPECT_FALSE(c.is_connected());
  auto [ec, r] = exec(c, {"PING"});
  EXPECT_EQ(ec, cf::error::not_connected);
  EXPECT_EQ(c.connections_opened(), 0u);
}

}  // namespace
