// What the Redis integration tests share: the fixture's servers (started by
// ctest on free loopback ports), a way to kill and restart them, and running an
// io_context against real time with a bound.
#ifndef CACHEFLIGHT_TEST_REDIS_FIXTURE_HPP
#define CACHEFLIGHT_TEST_REDIS_FIXTURE_HPP

#include <cacheflight/error.hpp>
#include <cacheflight/redis/client.hpp>

#include <boost/asio.hpp>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace cftest {

namespace asio = boost::asio;
namespace redis = cacheflight::redis;
namespace cf = cacheflight;
using boost::system::error_code;
using namespace std::chrono_literals;

class redis_fixture : public ::testing::Test {
 protected:
  // The server in `$CACHEFLIGHT_REDIS_ROOT/<name>`: "redis" or "redis-auth".
  void use_server(const char* name) {
    const char* root = std::getenv("CACHEFLIGHT_REDIS_ROOT");
    ASSERT_TRUE(root) << "run through ctest";
    dir = std::string(root) + "/" + name;
    std::ifstream f(dir + "/port");
    f >> port;
    ASSERT_FALSE(port.empty()) << "no redis-server in " << dir;
  }

  void SetUp() override { use_server("redis"); }

  // Runs redis_server.sh: "kill" or "restart".
  void server(const char* what) {
    const std::string cmd = std::string("bash ") + CACHEFLIGHT_REDIS_SCRIPT + " " + what + " " + dir;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }

  // Runs the context until `pred` holds or `limit` of real time passes.
  template <class Pred>
  bool run_until(Pred pred, std::chrono::milliseconds limit = 5s) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!pred() && std::chrono::steady_clock::now() < end) {
      io.restart();
      io.run_for(5ms);
    }
    return pred();
  }

  std::pair<error_code, redis::reply> exec(redis::client& c, std::vector<std::string> args) {
    std::optional<std::pair<error_code, redis::reply>> r;
    c.async_exec(std::move(args), [&](error_code ec, redis::reply rep) { r.emplace(ec, std::move(rep)); });
    EXPECT_TRUE(run_until([&] { return r.has_value(); }));
    return r.value_or(std::pair<error_code, redis::reply>{asio::error::timed_out, {}});
  }

  redis::client_options client_options() {
    return redis::client_options{.connection = {.host = "127.0.0.1", .port = port},
                                 .reconnect_min = 20ms,
                                 .reconnect_max = 200ms,
                                 .health_check_interval = 50ms};
  }

  asio::io_context io;
  std::string dir, port;
};

}  // namespace cftest

#endif
