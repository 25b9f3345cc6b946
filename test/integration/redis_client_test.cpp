// redis::client against a real redis-server that is killed and restarted:
// commands fail fast while it is down, and the client reconnects by itself.
#include "redis_fixture.hpp"

#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace cftest;

class RedisClient : public redis_fixture {
 protected:
  // `args` issued again while the connection's queue is full (of a health
  // check's PING, when the queue holds one command).
  std::pair<error_code, redis::reply> exec_with_room(redis::client& c, const std::vector<std::string>& args) {
    for (int tries = 1;; ++tries) {
      auto r = exec(c, args);
      if (r.first != cf::error::queue_full || tries == 100) return r;
      run_until([] { return false; }, 5ms);
    }
  }

  // A BLPOP of an empty list for a second: answered nil, on the connection
  // the client opened first.
  void expect_a_blocking_command_answered(redis::client& c) {
    auto [ec, r] = exec_with_room(c, {"BLPOP", "no-such-list", "1"});
    EXPECT_FALSE(ec) << ec.message();
    EXPECT_EQ(r.type, redis::reply::kind::nil);
    EXPECT_EQ(c.connections_opened(), 1u);
  }

  // The unix socket the fixture's server of `dir` listens on.
  std::string socket_path() {
    std::ifstream f(dir + "/socket");
    std::string path;
    f >> path;
    return path;
  }
};

TEST_F(RedisClient, AUnixSocketServesCommandsAndNamesTheServerByItsPath) {
  const std::string path = socket_path();
  ASSERT_FALSE(path.empty()) << "the fixture's server listens on no unix socket";
  auto o = client_options();
  o.connection.host.clear();
  o.connection.port.clear();
  o.connection.unix_socket = path;
  redis::client c(io.get_executor(), o);
  ASSERT_TRUE(run_until([&] { return c.is_connected(); })) << c.last_error().message();
  EXPECT_EQ(c.server(), path);
  EXPECT_EQ(c.masters(), std::vector<std::string>{path});
  auto [ec, set] = exec(c, {"SET", "cf:unix", "over the socket"});
  ASSERT_FALSE(ec) << ec.message();
  auto [ec2, got] = exec(c, {"GET", "cf:unix"});
  ASSERT_FALSE(ec2) << ec2.message();
  EXPECT_EQ(got.str, "over the socket");
  // The server sees a unix-socket client ('U' among its flags).
  auto [ec3, info] = exec(c, {"CLIENT", "INFO"});
  ASSERT_FALSE(ec3) << ec3.message();
  const auto at = info.str.find(" flags=");
  ASSERT_NE(at, std::string::npos) << info.str;
  EXPECT_NE(info.str.substr(at + 7, info.str.find(' ', at + 7) - at - 7).find('U'), std::string::npos) << info.str;
  exec(c, {"DEL", "cf:unix"});
}

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

// A reply read into the caller's `reply`: the handler, which takes only the
// error code, still runs on its own executor, which keeps work meanwhile.
TEST_F(RedisClient, AReplyReadIntoTheCallersReplyCompletesOnTheHandlersExecutor) {
  redis::client c{io.get_executor(), client_options()};
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }));
  asio::io_context other;
  redis::reply r;
  std::optional<error_code> got;
  bool on_other = false;
  c.async_exec({"ECHO", "into"}, r, asio::bind_executor(other, [&](error_code ec) {
                 got = ec;
                 on_other = other.get_executor().running_in_this_thread();
               }));
  EXPECT_EQ(other.poll(), 0u);
  EXPECT_FALSE(other.stopped());
  run_until([&] { return false; }, 100ms);
  other.run();
  ASSERT_EQ(got, error_code{});
  EXPECT_TRUE(on_other);
  EXPECT_EQ(r.type, redis::reply::kind::bulk);
  EXPECT_EQ(r.str, "into");
  // Arguments at run time.
  got.reset();
  c.async_exec(std::vector<std::string>{"ECHO", "again"}, r, [&](error_code ec) { got = ec; });
  ASSERT_TRUE(run_until([&] { return got.has_value(); }));
  EXPECT_EQ(got, error_code{});
  EXPECT_EQ(r.str, "again");
}

// A handler whose executor is an io_context's executor held in an
// `any_io_executor` (a coroutine's, with `use_awaitable`), and one whose
// `any_io_executor` holds a strand: each runs on its own executor, and that
// context keeps work until the handler has run.
TEST_F(RedisClient, AHandlerRunsOnItsTypeErasedExecutorWhichKeepsWork) {
  redis::client c{io.get_executor(), client_options()};
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }));
  asio::io_context other;
  const asio::any_io_executor plain = other.get_executor();
  const auto strand = asio::make_strand(other);
  const asio::any_io_executor stranded = strand;
  std::optional<std::string> got_plain, got_stranded;
  bool plain_on_other = false, stranded_on_strand = false;
  c.async_exec({"ECHO", "plain"}, asio::bind_executor(plain, [&](error_code, redis::reply r) {
                 plain_on_other = other.get_executor().running_in_this_thread();
                 got_plain = r.str;
               }));
  c.async_exec({"ECHO", "stranded"}, asio::bind_executor(stranded, [&](error_code, redis::reply r) {
                 stranded_on_strand = strand.running_in_this_thread();
                 got_stranded = r.str;
               }));
  EXPECT_EQ(other.poll(), 0u);
  EXPECT_FALSE(other.stopped());
  // The replies arrive; the handlers are queued on `other`, which keeps work
  // until they have run.
  ASSERT_TRUE(run_until([&] {
    other.poll();
    if (got_plain && got_stranded) return true;
    EXPECT_FALSE(other.stopped());  // one handler still to come holds work
    return false;
  }));
  EXPECT_EQ(got_plain, "plain");
  EXPECT_EQ(got_stranded, "stranded");
  EXPECT_TRUE(plain_on_other);
  EXPECT_TRUE(stranded_on_strand);
}

// Commands issued together share one write. One of them cancelled before
// that write is never sent, though its cancellation's own turn on the strand
// comes after the write's; the others get their own replies.
TEST_F(RedisClient, ACommandCancelledBeforeItsWriteIsLeftOutOfIt) {
  redis::client c{io.get_executor(), client_options()};
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }));
  asio::cancellation_signal sig;
  std::vector<std::pair<error_code, std::string>> got(4);
  int done = 0;
  auto keep = [&](std::size_t i) {
    return [&, i](error_code ec, redis::reply r) {
      got[i] = {ec, r.str};
      ++done;
    };
  };
  // On the strand: the commands are queued at once and the write is
  // scheduled; the cancellation comes after both.
  asio::post(c.get_strand(), [&] {
    c.async_exec({"ECHO", "first"}, keep(0));
    c.async_exec({"BLPOP", "cftest:never-pushed", "3"}, asio::bind_cancellation_slot(sig.slot(), keep(1)));
    c.async_exec({"ECHO", std::string(100, 'x')}, keep(2));
    c.async_exec({"ECHO", "last"}, keep(3));
    sig.emit(asio::cancellation_type::terminal);
  });
  ASSERT_TRUE(run_until([&] { return done == 4; }));
  // Had the BLPOP been sent, the ECHOs behind it would have waited for it
  // past their timeout.
  EXPECT_EQ(got[0], std::make_pair(error_code{}, std::string("first")));
  EXPECT_EQ(got[1].first, asio::error::operation_aborted);
  EXPECT_EQ(got[2], std::make_pair(error_code{}, std::string(100, 'x')));
  EXPECT_EQ(got[3], std::make_pair(error_code{}, std::string("last")));
  EXPECT_EQ(exec(c, {"PING"}).second.str, "PONG");
}

// A handler that throws propagates out of run(); the replies read with its
// own still reach their handlers, what those issue is sent, and the
// connection reads on.
TEST_F(RedisClient, AThrowingHandlerLeavesTheRepliesReadWithItsOwnDeliveredAndTheConnectionWorking) {
  redis::client c{io.get_executor(), client_options()};
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }));
  std::vector<std::string> got;
  auto keep = [&](error_code ec, redis::reply r) { got.push_back(ec ? ec.message() : r.str); };
  // Issued together: one write, and their replies come back in one read.
  asio::post(c.get_strand(), [&] {
    c.async_exec({"ECHO", "first"}, [](error_code, redis::reply) { throw std::runtime_error("a handler threw"); });
    c.async_exec({"ECHO", "second"}, [&](error_code ec, redis::reply r) {
      keep(ec, std::move(r));
      c.async_exec({"ECHO", "third"}, keep);
    });
  });
  bool thrown = false;
  const auto end = std::chrono::steady_clock::now() + 5s;
  while (!thrown && std::chrono::steady_clock::now() < end) {
    try {
      io.restart();
      io.run_for(5ms);
    } catch (const std::runtime_error&) {
      thrown = true;
    }
  }
  ASSERT_TRUE(thrown);
  // Well within the command timeout (1 s), which would end them otherwise.
  ASSERT_TRUE(run_until([&] { return got.size() == 2; }, 500ms));
  EXPECT_EQ(got, (std::vector<std::string>{"second", "third"}));
  EXPECT_EQ(exec(c, {"PING"}).second.str, "PONG");
}

TEST_F(RedisClient, ACommandCancelledByAnEarlierCompletionOnceItsReplyWasReadIsAborted) {
  redis::client c{io.get_executor(), client_options()};
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }));
  asio::cancellation_signal returned_sig, into_sig;
  std::optional<std::pair<error_code, std::string>> returned;
  std::optional<error_code> into_ec;
  redis::reply into;
  into.str = "untouched";
  // Issued together: one write, and their replies come back in one read. The
  // first one's completion cancels the other two, whose replies are read.
  asio::post(c.get_strand(), [&] {
    c.async_exec({"PING"}, [&](error_code, redis::reply) {
      returned_sig.emit(asio::cancellation_type::terminal);
      into_sig.emit(asio::cancellation_type::terminal);
    });
    c.async_exec({"ECHO", "returned"}, asio::bind_cancellation_slot(returned_sig.slot(), [&](error_code ec, redis::reply r) {
                   returned.emplace(ec, r.str);
                 }));
    c.async_exec({"ECHO", "into"}, into,
                 asio::bind_cancellation_slot(into_sig.slot(), [&](error_code ec) { into_ec = ec; }));
  });
  ASSERT_TRUE(run_until([&] { return returned && into_ec; }));
  EXPECT_EQ(returned->first, asio::error::operation_aborted);
  EXPECT_EQ(returned->second, "");
  EXPECT_EQ(*into_ec, asio::error::operation_aborted);
  EXPECT_EQ(into.str, "untouched");
  EXPECT_EQ(exec(c, {"ECHO", "after"}).second.str, "after");
}

TEST_F(RedisClient, CommandsOnAConnectionGivenUpAfterAFailedHealthCheckFailAsNotConnected) {
  auto opts = client_options();
  opts.connection.command_timeout = 1000ms;
  opts.health_check_interval = 50ms;
  redis::client c{io.get_executor(), opts};
  redis::client pauser{io.get_executor(), client_options()};
  ASSERT_TRUE(run_until([&] { return c.is_connected() && pauser.is_connected(); }));
  // The server answers nobody for 1.5 s: the next health check's PING times
  // out after 1 s, and the client gives its connection up.
  ASSERT_EQ(exec(pauser, {"CLIENT", "PAUSE", "1500", "ALL"}).second.str, "OK");
  run_until([] { return false; }, 200ms);  // a PING is waiting by now
  std::optional<error_code> got;
  c.async_exec({"ECHO", "late"}, [&](error_code ec, redis::reply) { got = ec; });
  ASSERT_TRUE(run_until([&] { return got.has_value(); }, 3s));
  EXPECT_EQ(*got, cf::error::not_connected) << got->message();
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }, 3s));
  EXPECT_EQ(exec(c, {"PING"}).second.str, "PONG");
}

TEST_F(RedisClient, AHealthCheckRefusedByAFullQueueLeavesTheConnectionOpen) {
  auto opts = client_options();
  opts.connection.max_pending = 1;
  opts.connection.command_timeout = 5000ms;
  opts.health_check_interval = 50ms;
  redis::client c{io.get_executor(), opts};
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }));
  // The one command the queue holds blocks on the server for a second, while
  // several health checks find no room for their PING.
  expect_a_blocking_command_answered(c);
  EXPECT_TRUE(c.is_connected());
  EXPECT_EQ(exec_with_room(c, {"PING"}).second.str, "PONG");
}

TEST_F(RedisClient, DurationsStandingForNeverAreTakenAsTenYears) {
  auto opts = client_options();
  opts.connection.connect_timeout = std::chrono::milliseconds::max();
  opts.connection.command_timeout = std::chrono::milliseconds::max();
  opts.health_check_interval = std::chrono::milliseconds::max();
  opts.reconnect_max = std::chrono::milliseconds::max();
  redis::client c{io.get_executor(), opts};
  constexpr auto ten_years = std::chrono::hours(24 * 3653);
  EXPECT_EQ(c.options().connection.command_timeout, ten_years);
  EXPECT_EQ(c.options().health_check_interval, ten_years);
  EXPECT_EQ(c.options().reconnect_max, ten_years);
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }));
  // A command waiting on the server is not timed out at once.
  expect_a_blocking_command_answered(c);
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
