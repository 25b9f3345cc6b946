// The README's quickstart: one flight, three callers (a callback, a coroutine
// and a future), one execution of the work.
#include <cacheflight/cacheflight.hpp>

#include <boost/asio.hpp>

#include <cstdio>
#include <future>
#include <string>
#include <thread>

namespace asio = boost::asio;
namespace cf = cacheflight;

struct user {
  int id = 0;
  std::string name;
};

int loads = 0;

// The expensive work: a coroutine (or any Asio async operation).
asio::awaitable<user> load_user() {
  ++loads;
  asio::steady_timer db(co_await asio::this_coro::executor, std::chrono::milliseconds(50));
  co_await db.async_wait(asio::use_awaitable);  // a slow database
  co_return user{42, "Ada"};
}

int main() {
  asio::io_context io(1);  // one thread runs it
  cf::flight<user> flight{io, cf::flight_options{
                                  .max_keys = 10'000,
                                  .default_timeout = std::chrono::seconds(5),
                              }};

  // 1. A callback.
  flight.async_run("user:42", load_user, [](std::exception_ptr e, user u) {
    if (!e) std::printf("callback: %s\n", u.name.c_str());
  });

  // 2. A coroutine.
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        user u = co_await flight.async_run("user:42", load_user, asio::use_awaitable);
        std::printf("awaitable: %s\n", u.name.c_str());
      },
      asio::detached);

  // 3. A future, waited on from another thread.
  std::future<user> f = flight.async_run("user:42", load_user, asio::use_future);
  std::thread t([&] { std::printf("future: %s\n", f.get().name.c_str()); });

  io.run();  // load_user ran once; three callers got the user
  t.join();
  std::printf("loads: %d\n", loads);
  return loads == 1 ? 0 : 1;
}
