// redis::client against a real redis-server that is killed and restarted:
// commands fail fast while it is down, and the client reconnects by itself.
#include "redis_fixture.hpp"

namespace {

using namespace cftest;

using RedisClient = redis_fixture;

TEST_F(RedisClient, ReconnectsAfterTheServerRestarts) {
  redis::client c{io.get_executor(), client_options()};
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
  EXPECT_EQ(c.last_error(), asio::error::connection_refused);
}

}  // namespace
