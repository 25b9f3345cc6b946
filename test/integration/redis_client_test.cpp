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

namespace {

using namespace cftest;

TEST_F(RedisClient, ACancellationEmittedAsSoonAsExecReturnsIsHonoured) {
  redis::client c{io.get_executor(), client_options()};
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }));
  for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                    asio::cancellation_type::total}) {
    asio::cancellation_signal sig;
    std::optional<error_code> got;
    const auto t0 = std::chrono::steady_clock::now();
    // A command that would block for half a second if it ever ran.
    c.async_exec({"BLPOP", "cftest:never-pushed", "0.5"},
                 asio::bind_cancellation_slot(sig.slot(), [&](error_code ec, redis::reply) { got = ec; }));
    sig.emit(type);
    ASSERT_TRUE(run_until([&] { return got.has_value(); }));
    EXPECT_EQ(*got, asio::error::operation_aborted) << static_cast<int>(type);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 300ms) << static_cast<int>(type);
  }
  // The connection is still usable, and nothing is left blocking it.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(exec(c, {"PING"}).second.str, "PONG");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 300ms);
}

TEST_F(RedisClient, AWaitingCommandHoldsWorkOnItsHandlersExecutor) {
  redis::client c{io.get_executor(), client_options()};
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }));
  asio::io_context other;
  std::optional<std::string> got;
  c.async_exec({"PING"}, asio::bind_executor(other, [&](error_code, redis::reply r) { got = r.str; }));
  // The handler's context has nothing to run yet, but must not run out of work.
  EXPECT_EQ(other.poll(), 0u);
  EXPECT_FALSE(other.stopped());
  run_until([&] { return false; }, 100ms);  // the reply arrives; the handler is queued on `other`
  other.run();                              // returns once it ran
  EXPECT_EQ(got, "PONG");
}

TEST_F(RedisClient, IsConnectedTurnsFalseAsSoonAsTheConnectionIsLostAndComesBack) {
  auto opts = client_options();
  opts.health_check_interval = 60s;  // the loss must not wait for a health check
  redis::client c{io.get_executor(), opts};
  redis::client killer{io.get_executor(), client_options()};
  ASSERT_TRUE(run_until([&] { return c.is_connected() && killer.is_connected(); }));
  const auto id = exec(c, {"CLIENT", "ID"}).second.integer;
  ASSERT_GT(id, 0);
  EXPECT_EQ(exec(killer, {"CLIENT", "KILL", "ID", std::to_string(id)}).second.integer, 1);
  ASSERT_TRUE(run_until([&] { return !c.is_connected(); }, 300ms));
  auto [ec, r] = exec(c, {"PING"});
  EXPECT_EQ(ec, cf::error::not_connected);
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }, 2s));  // reconnected without a health check
  EXPECT_EQ(exec(c, {"PING"}).second.str, "PONG");
  EXPECT_EQ(c.connections_opened(), 2u);
}

}  // namespace
