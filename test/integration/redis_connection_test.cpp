// redis::connection against a real redis-server (started by ctest fixtures):
// pipelining, binary-safe keys and values, AUTH, timeouts, cancellation,
// fail-fast once closed or lost.
#include <cacheflight/error.hpp>
#include <cacheflight/redis/connection.hpp>

#include <boost/asio.hpp>
#include <boost/system/system_error.hpp>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <future>
#include <stdexcept>
#include <thread>

namespace {

namespace asio = boost::asio;
namespace redis = cacheflight::redis;
namespace cf = cacheflight;
using boost::system::error_code;
using namespace std::chrono_literals;

// The servers' directories sit under CACHEFLIGHT_REDIS_ROOT, set by ctest.
std::string port_of(const char* name) {
  const char* root = std::getenv("CACHEFLIGHT_REDIS_ROOT");
  if (!root) return {};
  std::ifstream f(std::string(root) + "/" + name + "/port");
  std::string port;
  f >> port;
  return port;
}

class RedisConnection : public ::testing::Test {
 protected:
  void SetUp() override {
    port = port_of("redis");
    ASSERT_FALSE(port.empty()) << "no redis-server: run through ctest";
  }

  redis::connection_options options() { return redis::connection_options{.host = "127.0.0.1", .port = port}; }

  error_code connect(redis::connection& c) {
    std::optional<error_code> r;
    c.async_connect([&](error_code ec) { r = ec; });
    io.restart();
    while (!r && io.run_one()) {
    }
    return r.value_or(asio::error::timed_out);
  }

  std::pair<error_code, redis::reply> exec(redis::connection& c, std::vector<std::string> args) {
    std::optional<std::pair<error_code, redis::reply>> r;
    c.async_exec(std::move(args), [&](error_code ec, redis::reply rep) { r.emplace(ec, std::move(rep)); });
    io.restart();
    while (!r && io.run_one()) {
    }
    return r.value();
  }

  asio::io_context io;
  std::string port;
};

TEST_F(RedisConnection, SetGetBinarySafe) {
  redis::connection c{io.get_executor(), options()};
  ASSERT_FALSE(connect(c));
  EXPECT_TRUE(c.is_open());
  const std::string key("bin\0key\r\n", 9), value("v\0\r\n*2\r\n$x", 11);
  auto [ec1, set] = exec(c, {"SET", key, value});
  ASSERT_FALSE(ec1);
  EXPECT_EQ(set.str, "OK");
  auto [ec2, got] = exec(c, {"GET", key});
  ASSERT_FALSE(ec2);
  EXPECT_EQ(got.type, redis::reply::kind::bulk);
  EXPECT_EQ(got.str, value);
  auto [ec3, missing] = exec(c, {"GET", "no such key"});
  EXPECT_EQ(missing.type, redis::reply::kind::nil);
  auto [ec4, err] = exec(c, {"NOSUCHCOMMAND"});
  EXPECT_FALSE(ec4);
  EXPECT_TRUE(err.is_error());
}

TEST_F(RedisConnection, AConnectionIsOpenedOnceAndAnotherConnectIsRefusedAsAlreadyStarted) {
  redis::connection c{io.get_executor(), options()};
  std::optional<error_code> first, during;
  c.async_connect([&](error_code ec) { first = ec; });
  c.async_connect([&](error_code ec) { during = ec; });
  EXPECT_FALSE(first || during);  // neither completes inside its call
  io.restart();
  while (!(first && during) && io.run_one()) {
  }
  ASSERT_TRUE(first && during);
  EXPECT_FALSE(*first) << first->message();
  EXPECT_EQ(*during, asio::error::already_started);
  EXPECT_TRUE(c.is_open());
  EXPECT_EQ(connect(c), asio::error::already_started);  // open
  auto [ec, pong] = exec(c, {"PING"});
  EXPECT_FALSE(ec);
  EXPECT_EQ(pong.str, "PONG");  // the open connection is untouched
  c.close();
  EXPECT_EQ(connect(c), asio::error::already_started);  // closed: a new connection reconnects
  EXPECT_FALSE(c.is_open());
}

TEST_F(RedisConnection, ArgumentsAreTakenBeforeExecReturnsWhateverTheToken) {
  redis::connection c{io.get_executor(), options()};
  ASSERT_FALSE(connect(c));
  // Nothing left from an earlier run can make the GET below pass.
  auto [del_ec, del] = exec(c, {"DEL", "deferred:key"});
  ASSERT_FALSE(del_ec);
  // Deferred: the operation starts after the strings its views referred to
  // are gone (and their bytes overwritten). A 300-byte value does not fit the
  // command's own buffer, the key does.
  auto set = [&] {
    std::string key = "deferred:key", value(300, 'v');
    auto op = c.async_exec({"SET", key, value, "PX", "60000"}, asio::deferred);
    std::fill(key.begin(), key.end(), 'x');
    std::fill(value.begin(), value.end(), 'x');
    return op;
  }();
  std::optional<std::pair<error_code, redis::reply>> r;
  std::move(set)([&](error_code ec, redis::reply rep) { r.emplace(ec, std::move(rep)); });
  io.restart();
  while (!r && io.run_one()) {
  }
  ASSERT_TRUE(r);
  ASSERT_FALSE(r->first);
  EXPECT_EQ(r->second.str, "OK");
  // Views of temporaries that die at the end of the call's full expression.
  r.reset();
  c.async_exec({"GET", std::string("deferred:") + "key"}, [&](error_code ec, redis::reply rep) {
    r.emplace(ec, std::move(rep));
  });
  io.restart();
  while (!r && io.run_one()) {
  }
  ASSERT_TRUE(r);
  ASSERT_FALSE(r->first);
  EXPECT_EQ(r->second.str, std::string(300, 'v'));
  // No arguments: refused, not sent.
  auto [ec, none] = exec(c, {});
  EXPECT_EQ(ec, asio::error::invalid_argument);
  r.reset();
  c.async_exec({}, [&](error_code ec, redis::reply rep) { r.emplace(ec, std::move(rep)); });
  io.restart();
  while (!r && io.run_one()) {
  }
  ASSERT_TRUE(r);
  EXPECT_EQ(r->first, asio::error::invalid_argument);
  auto [ec2, pong] = exec(c, {"PING"});
  ASSERT_FALSE(ec2);
  EXPECT_EQ(pong.str, "PONG");
}

// A reply read into the caller's `reply`: the value, a server error, nothing
// on an error code; and the memory the caller lent comes back holding a later
// reply (a string reserved far larger than any reply here, found again with
// its capacity).
TEST_F(RedisConnection, RepliesReadIntoTheCallersReplyTradeMemoryWithTheConnection) {
  redis::connection c{io.get_executor(), options()};
  auto run_into = [&](std::initializer_list<std::string_view> args, redis::reply& into) {
    std::optional<error_code> r;
    c.async_exec(args, into, [&](error_code ec) { r = ec; });
    io.restart();
    while (!r && io.run_one()) {
    }
    return r.value_or(asio::error::timed_out);
  };
  redis::reply r;
  r.type = redis::reply::kind::status;
  r.str = "untouched";
  // Not connected: an error, and `r` as it was.
  EXPECT_EQ(run_into({"PING"}, r), cf::error::not_connected);
  EXPECT_EQ(r.type, redis::reply::kind::status);
  EXPECT_EQ(r.str, "untouched");

  ASSERT_FALSE(connect(c));
  const std::string value(300, 'v');
  ASSERT_FALSE(exec(c, {"SET", "into:key", value}).first);
  r.str.reserve(4096);
  const char* lent = r.str.data();
  bool back = false;
  for (int i = 0; i < 6 && !back; ++i) {
    ASSERT_FALSE(run_into({"GET", "into:key"}, r));
    ASSERT_EQ(r.type, redis::reply::kind::bulk);
    ASSERT_EQ(r.str, value);
    back = r.str.data() == lent && r.str.capacity() >= 4096;
  }
  EXPECT_TRUE(back) << "the memory lent with the reply never came back";

  // A server error is a reply, in `r`.
  ASSERT_FALSE(run_into({"LPUSH", "into:key", "x"}, r));
  EXPECT_TRUE(r.is_error());
  EXPECT_TRUE(r.str.starts_with("WRONGTYPE")) << r.str;
  // Arguments at run time, and an integer reply.
  std::optional<error_code> del;
  c.async_exec(std::vector<std::string>{"DEL", "into:key"}, r, [&](error_code ec) { del = ec; });
  io.restart();
  while (!del && io.run_one()) {
  }
  ASSERT_EQ(del, error_code{});
  EXPECT_EQ(r.type, redis::reply::kind::integer);
  EXPECT_EQ(r.integer, 1);

  // Cancelled once written: the reply that comes later is dropped, and `r`
  // keeps what it had. (BZPOPMIN, which no other test sends: the server's
  // count of its calls shows that it was written.)
  auto bzpopmin_calls = [&] {
    const std::string info = exec(c, {"INFO", "commandstats"}).second.str;
    const auto at = info.find("cmdstat_bzpopmin:calls=");
    return at == std::string::npos ? 0L : std::atol(info.c_str() + at + 23);
  };
  const long calls = bzpopmin_calls();
  r = redis::reply{};
  r.type = redis::reply::kind::status;
  r.str = "untouched";
  asio::cancellation_signal sig;
  std::optional<error_code> cancelled;
  c.async_exec({"BZPOPMIN", "into:empty", "0.2"}, r,
               asio::bind_cancellation_slot(sig.slot(), [&](error_code ec) { cancelled = ec; }));
  io.restart();
  io.poll();
  sig.emit(asio::cancellation_type::terminal);
  while (!cancelled && io.run_one()) {
  }
  EXPECT_EQ(*cancelled, asio::error::operation_aborted);
  redis::reply pong;
  ASSERT_FALSE(run_into({"PING"}, pong));  // answered after the BZPOPMIN's nil
  EXPECT_EQ(pong.str, "PONG");
  EXPECT_EQ(r.type, redis::reply::kind::status);
  EXPECT_EQ(r.str, "untouched");
  EXPECT_GT(bzpopmin_calls(), calls) << "the command was not written before its cancellation";

  // Awaited: the operation returns nothing and fills `r`.
  bool done = false;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        const std::initializer_list<std::string_view> echo{"ECHO", "awaited"};
        co_await c.async_exec(echo, r, asio::use_awaitable);
        EXPECT_EQ(r.str, "awaited");
        done = true;
      },
      asio::detached);
  io.restart();
  while (!done && io.run_one()) {
  }
  EXPECT_TRUE(done);
}

// Replies are read on whichever thread runs the context and handed to the
// connection's strand; each command is issued from a function posted to the
// context (off the strand) and completed on the context's executor, on
// either thread.
TEST_F(RedisConnection, CommandsIssuedAndCompletedOnTwoThreadsOfOneContextEachGetTheirOwnReply) {
  asio::io_context mt(2);
  redis::connection c{mt.get_executor(), options()};
  std::promise<error_code> connected;
  c.async_connect([&](error_code ec) { connected.set_value(ec); });
  auto guard = asio::make_work_guard(mt);
  std::thread t1([&] { mt.run(); }), t2([&] { mt.run(); });
  auto stop = [&] {
    guard.reset();
    c.close();
    mt.stop();
    t1.join();
    t2.join();
  };
  auto ready = connected.get_future();
  const error_code connect_ec =
      ready.wait_for(30s) == std::future_status::ready ? ready.get() : error_code(asio::error::timed_out);
  if (connect_ec) {
    stop();
    FAIL() << "connect: " << connect_ec.message();
  }
  constexpr int chains = 16, per_chain = 300;
  std::atomic<int> finished{0}, wrong{0}, failed{0};
  std::promise<void> all_done;
  std::function<void(int, int)> issue = [&](int chain, int i) {
    std::string payload = std::to_string(chain) + ":" + std::to_string(i) + std::string(static_cast<std::size_t>(i % 40), 'x');
    c.async_exec({"ECHO", payload}, asio::bind_executor(mt.get_executor(), [&, chain, i, payload](error_code ec,
                                                                                                  redis::reply r) {
                   if (ec)
                     ++failed;
                   else if (r.str != payload)
                     ++wrong;
                   if (i + 1 < per_chain)
                     return asio::post(mt, [&issue, chain, i] { issue(chain, i + 1); });
                   if (++finished == chains) all_done.set_value();
                 }));
  };
  for (int ch = 0; ch < chains; ++ch) asio::post(mt, [&, ch] { issue(ch, 0); });
  const bool in_time = all_done.get_future().wait_for(60s) == std::future_status::ready;
  stop();
  ASSERT_TRUE(in_time) << finished.load() << " chains of " << chains << " finished";
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(wrong.load(), 0);
}

TEST_F(RedisConnection, ConcurrentCommandsArePipelinedInOrder) {
  redis::connection c{io.get_executor(), options()};
  ASSERT_FALSE(connect(c));
  constexpr int n = 500;
  std::vector<std::string> got(n);
  int done = 0;
  for (int i = 0; i < n; ++i)
    c.async_exec({"SET", "p" + std::to_string(i), std::to_string(i), "PX", "60000"}, [](error_code, redis::reply) {});
  for (int i = 0; i < n; ++i)
    c.async_exec({"GET", "p" + std::to_string(i)}, [&, i](error_code ec, redis::reply r) {
      EXPECT_FALSE(ec);
      got[i] = r.str;
      ++done;
    });
  while (done < n && io.run_one()) {
  }
  for (int i = 0; i < n; ++i) EXPECT_EQ(got[i], std::to_string(i));
}

// A write far larger than the socket's send buffer: what the socket does not
// take at once is written by an operation, from where the socket stopped, and
// commands queued meanwhile follow it in order.
TEST_F(RedisConnection, AWriteLargerThanTheSocketTakesAtOnceIsFinishedInOrder) {
  auto o = options();
  o.command_timeout = 60s;  // 48 MB each way, also under the sanitizers
  redis::connection c{io.get_executor(), o};
  ASSERT_FALSE(connect(c));
  constexpr int n = 3;
  constexpr std::size_t size = 12 * 1024 * 1024;
  // Value i: a 26-letter cycle starting at letter i, so that a byte out of
  // place or a value swapped for another shows.
  std::string cycle;
  for (std::size_t j = 0; j < size + 26; j += 26) cycle += "abcdefghijklmnopqrstuvwxyz";
  auto value = [&](int i) { return cycle.substr(static_cast<std::size_t>(i), size); };
  std::vector<std::string> got(n + 1);
  int done = 0;
  for (int i = 0; i < n; ++i)
    c.async_exec({"SET", "big" + std::to_string(i), value(i), "PX", "60000"}, [&, i](error_code ec, redis::reply r) {
      EXPECT_FALSE(ec);
      EXPECT_EQ(r.str, "OK");
      if (i != 0) return;
      // Issued while the rest of the first write may still be going out.
      c.async_exec({"SET", "big" + std::to_string(n), value(n), "PX", "60000"}, [](error_code, redis::reply) {});
      c.async_exec({"GET", "big" + std::to_string(n)}, [&](error_code ec2, redis::reply r2) {
        EXPECT_FALSE(ec2);
        got[n] = std::move(r2.str);
        ++done;
      });
    });
  for (int i = 0; i < n; ++i)
    c.async_exec({"GET", "big" + std::to_string(i)}, [&, i](error_code ec, redis::reply r) {
      EXPECT_FALSE(ec);
      got[i] = std::move(r.str);
      ++done;
    });
  while (done < n + 1 && io.run_one()) {
  }
  ASSERT_EQ(done, n + 1);
  for (int i = 0; i <= n; ++i) EXPECT_TRUE(got[i] == value(i)) << "value " << i << " came back altered";
  auto [ec, small] = exec(c, {"PING"});
  EXPECT_FALSE(ec);
  EXPECT_EQ(small.str, "PONG");
}

TEST_F(RedisConnection, TimedOutCommandIsAbandonedAndTheConnectionStaysUsable) {
  auto o = options();
  o.command_timeout = 100ms;
  redis::connection c{io.get_executor(), o};
  ASSERT_FALSE(connect(c));
  const auto issued = std::chrono::steady_clock::now();
  auto [ec, r] = exec(c, {"BLPOP", "empty-list", "0.3"});  // the server answers after 300 ms
  const auto waited = std::chrono::steady_clock::now() - issued;
  EXPECT_EQ(ec, cf::error::timed_out);
  EXPECT_GE(waited, 100ms);  // never before command_timeout
  EXPECT_LT(waited, 300ms);
  asio::steady_timer wait(io, 400ms);  // let the late reply arrive; it is dropped
  wait.async_wait([](error_code) {});
  io.restart();
  io.run_one();
  auto [ec2, pong] = exec(c, {"PING"});
  EXPECT_FALSE(ec2);
  EXPECT_EQ(pong.str, "PONG");
  EXPECT_TRUE(c.is_open());
}

// Runs `io` until `done()`, counting the exceptions handlers threw out of it.
template <class Done>
int run_catching(asio::io_context& io, Done done, std::chrono::milliseconds limit = 5s) {
  int thrown = 0;
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!done() && std::chrono::steady_clock::now() < end) {
    try {
      io.restart();
      io.run_for(5ms);
    } catch (const std::runtime_error&) {
      ++thrown;
    }
  }
  return thrown;
}

TEST_F(RedisConnection, AHandlerThrowingAsTheConnectionClosesLeavesTheOthersCompleted) {
  redis::connection c{io.get_executor(), options()};
  ASSERT_FALSE(connect(c));
  std::vector<error_code> got;
  c.async_exec({"BLPOP", "empty-list", "5"}, [](error_code, redis::reply) { throw std::runtime_error("threw"); });
  for (int i = 0; i < 2; ++i)
    c.async_exec({"BLPOP", "empty-list", "5"}, [&](error_code ec, redis::reply) { got.push_back(ec); });
  io.restart();
  io.poll();
  const auto t0 = std::chrono::steady_clock::now();
  c.close();
  EXPECT_EQ(run_catching(io, [&] { return got.size() == 2; }), 1);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], asio::error::operation_aborted);
  EXPECT_EQ(got[1], asio::error::operation_aborted);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
}

TEST_F(RedisConnection, AHandlerThrowingAsItTimesOutLeavesTheOthersTimingOut) {
  auto o = options();
  o.command_timeout = 200ms;
  redis::connection c{io.get_executor(), o};
  ASSERT_FALSE(connect(c));
  std::vector<error_code> got;
  const auto t0 = std::chrono::steady_clock::now();
  // The server answers after 3 s; all three time out together.
  c.async_exec({"BLPOP", "empty-list", "3"}, [](error_code, redis::reply) { throw std::runtime_error("threw"); });
  for (int i = 0; i < 2; ++i)
    c.async_exec({"BLPOP", "empty-list", "3"}, [&](error_code ec, redis::reply) { got.push_back(ec); });
  EXPECT_EQ(run_catching(io, [&] { return got.size() == 2; }), 1);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], cf::error::timed_out);
  EXPECT_EQ(got[1], cf::error::timed_out);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  // A later command still gets its deadline.
  std::optional<error_code> later;
  c.async_exec({"BLPOP", "empty-list", "3"}, [&](error_code ec, redis::reply) { later = ec; });
  run_catching(io, [&] { return later.has_value(); }, 1s);
  ASSERT_TRUE(later.has_value());
  EXPECT_EQ(*later, cf::error::timed_out);
}

TEST_F(RedisConnection, CancelledCommandCompletesAtOnceWithOperationAborted) {
  redis::connection c{io.get_executor(), options()};
  ASSERT_FALSE(connect(c));
  asio::cancellation_signal sig;
  std::optional<error_code> cancelled;
  c.async_exec({"BLPOP", "empty-list", "0.2"},
               asio::bind_cancellation_slot(sig.slot(), [&](error_code ec, redis::reply) { cancelled = ec; }));
  io.restart();
  io.poll();
  sig.emit(asio::cancellation_type::terminal);
  while (!cancelled && io.run_one()) {
  }
  EXPECT_EQ(*cancelled, asio::error::operation_aborted);
  auto [ec, pong] = exec(c, {"PING"});  // queued behind the abandoned BLPOP, answered after it
  EXPECT_FALSE(ec);
  EXPECT_EQ(pong.str, "PONG");
}

TEST_F(RedisConnection, CancellingOneOfSeveralPipelinedCommandsLeavesTheOthersIntact) {
  auto o = options();
  o.command_timeout = 30s;  // the large write below must not time out on a slow machine
  redis::connection c{io.get_executor(), o};
  ASSERT_FALSE(connect(c));
  // A 64 MiB value keeps the socket busy, so that the next commands most
  // likely wait unwritten when one of them is cancelled (a cancelled unwritten
  // command is skipped; a written one has its reply dropped: both must hold).
  std::optional<error_code> big;
  c.async_exec({"SET", "big", std::string(64 << 20, 'x')}, [&](error_code ec, redis::reply) { big = ec; });
  io.restart();
  io.poll();
  std::vector<std::optional<std::pair<error_code, std::string>>> got(5);
  asio::cancellation_signal sig;
  for (int i = 0; i < 5; ++i) {
    auto h = [&, i](error_code ec, redis::reply r) { got[i].emplace(ec, r.str); };
    if (i == 2)
      c.async_exec({"ECHO", "2"}, asio::bind_cancellation_slot(sig.slot(), h));
    else
      c.async_exec({"ECHO", std::to_string(i)}, h);
  }
  // Cancel the middle one on the connection's strand, behind the commands:
  // before its reply can have been read.
  asio::post(c.get_executor(), [&] { sig.emit(asio::cancellation_type::terminal); });
  auto all = [&] {
    for (auto& g : got)
      if (!g) return false;
    return big.has_value();
  };
  while (!all() && io.run_one()) {
  }
  ASSERT_TRUE(all());
  EXPECT_FALSE(*big);
  for (int i = 0; i < 5; ++i) {
    if (i == 2) {
      EXPECT_EQ(got[i]->first, asio::error::operation_aborted);
      continue;
    }
    EXPECT_FALSE(got[i]->first) << i;
    EXPECT_EQ(got[i]->second, std::to_string(i));
  }
  auto [ec, pong] = exec(c, {"PING"});
  EXPECT_FALSE(ec);
  EXPECT_EQ(pong.str, "PONG");
  exec(c, {"DEL", "big"});
}

TEST_F(RedisConnection, MaxPendingBoundsTheWaitingCommandsAndACancelledOneFreesItsPlace) {
  auto o = options();
  o.max_pending = 2;
  redis::connection c{io.get_executor(), o};
  ASSERT_FALSE(connect(c));
  asio::cancellation_signal sig;
  std::optional<error_code> first, second, third, fourth;
  c.async_exec({"BLPOP", "empty-list", "0.3"},
               asio::bind_cancellation_slot(sig.slot(), [&](error_code ec, redis::reply) { first = ec; }));
  c.async_exec({"BLPOP", "empty-list", "0.3"}, [&](error_code ec, redis::reply) { second = ec; });
  c.async_exec({"PING"}, [&](error_code ec, redis::reply) { third = ec; });
  io.restart();
  while (!third && io.run_one()) {
  }
  EXPECT_EQ(*third, cf::error::queue_full);
  asio::post(c.get_executor(), [&] { sig.emit(asio::cancellation_type::terminal); });
  while (!first && io.run_one()) {
  }
  EXPECT_EQ(*first, asio::error::operation_aborted);
  // The cancelled command's reply is still to come, but its place is free.
  c.async_exec({"PING"}, [&](error_code ec, redis::reply) { fourth = ec; });
  while (!(fourth && second) && io.run_one()) {
  }
  EXPECT_FALSE(*fourth);
  EXPECT_FALSE(*second);
}

// A reply beyond `max_reply_bytes` fails the connection with a protocol
// error, as malformed bytes do: the command waiting for it and those behind
// it fail, and so does every later one. Replies within the bound pass.
TEST_F(RedisConnection, AReplyBeyondTheBoundFailsTheConnectionWithAProtocolError) {
  {
    redis::connection setter{io.get_executor(), options()};
    ASSERT_FALSE(connect(setter));
    ASSERT_FALSE(exec(setter, {"SET", "bounded:big", std::string(8000, 'x')}).first);
    ASSERT_FALSE(exec(setter, {"SET", "bounded:small", std::string(3000, 'y')}).first);
  }
  auto o = options();
  o.max_reply_bytes = 4096;
  redis::connection c{io.get_executor(), o};
  ASSERT_FALSE(connect(c));
  auto [ec1, small] = exec(c, {"GET", "bounded:small"});
  ASSERT_FALSE(ec1);
  EXPECT_EQ(small.str, std::string(3000, 'y'));
  std::optional<error_code> big, behind;
  c.async_exec({"GET", "bounded:big"}, [&](error_code ec, redis::reply) { big = ec; });
  c.async_exec({"PING"}, [&](error_code ec, redis::reply) { behind = ec; });
  io.restart();
  while (!(big && behind) && io.run_one()) {
  }
  EXPECT_EQ(*big, cf::error::protocol_error);
  EXPECT_TRUE(*behind);
  EXPECT_FALSE(c.is_open());
  EXPECT_EQ(exec(c, {"PING"}).first, cf::error::not_connected);
}

TEST_F(RedisConnection, AMaxReplyBytesOfZeroIsAnInvalidOption) {
  auto o = options();
  o.max_reply_bytes = 0;
  try {
    redis::connection c{io.get_executor(), o};
    ADD_FAILURE() << "no exception";
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), cf::error::invalid_option);
  }
}

TEST_F(RedisConnection, FailsFastWhenNotConnectedOrClosed) {
  redis::connection c{io.get_executor(), options()};
  auto [ec, r] = exec(c, {"PING"});
  EXPECT_EQ(ec, cf::error::not_connected);
  ASSERT_FALSE(connect(c));
  c.close();
  auto [ec2, r2] = exec(c, {"PING"});
  EXPECT_EQ(ec2, cf::error::not_connected);
  EXPECT_FALSE(c.is_open());
}

TEST_F(RedisConnection, ConnectionRefusedIsAnError) {
  auto o = options();
  o.port = "1";  // nothing listens there
  redis::connection c{io.get_executor(), o};
  EXPECT_TRUE(connect(c));
  EXPECT_FALSE(c.is_open());
}

class RedisAuth : public RedisConnection {
 protected:
  void SetUp() override {
    port = port_of("redis-auth");
    ASSERT_FALSE(port.empty()) << "no password-protected redis-server: run through ctest";
  }
};

TEST_F(RedisAuth, RightPasswordWorksWrongPasswordIsAClearError) {
  auto good = options();
  good.password = "s3cret";
  good.database = 2;
  redis::connection ok{io.get_executor(), good};
  ASSERT_FALSE(connect(ok));
  auto [ec, pong] = exec(ok, {"PING"});
  EXPECT_EQ(pong.str, "PONG");

  auto bad = options();
  bad.password = "wrong";
  redis::connection refused{io.get_executor(), bad};
  EXPECT_EQ(connect(refused), cf::error::auth_failed);
  EXPECT_FALSE(refused.is_open());

  redis::connection none{io.get_executor(), options()};  // no password: the server refuses PING
  EXPECT_EQ(connect(none), cf::error::auth_failed);
}

}  // namespace
