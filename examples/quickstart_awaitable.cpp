// Quickstart, use_awaitable: three concurrent coroutines get one key, one load;
// a fourth uses the co_get fast path once the value is cached.
#include <cacheflight/cacheflight.hpp>

#include <boost/asio.hpp>

#include <cstdio>
#include <string>

namespace asio = boost::asio;
namespace cf = cacheflight;

int loads = 0;

asio::awaitable<std::string> load_greeting() {
  ++loads;
  asio::steady_timer slow(co_await asio::this_coro::executor, std::chrono::milliseconds(20));
  co_await slow.async_wait(asio::use_awaitable);
  co_return "hello";
}

int main() {
  asio::io_context io(1);
  cf::cache<std::string> cache{io, cf::cache_options{.max_entries = 100, .default_ttl = std::chrono::minutes(1)}};
  for (int i = 0; i < 3; ++i)
    asio::co_spawn(
        io,
        [&cache, i]() -> asio::awaitable<void> {
          std::string v = co_await cache.async_get("greeting", load_greeting, asio::use_awaitable);
          std::printf("caller %d: %s\n", i, v.c_str());
          std::string again = co_await cache.co_get("greeting", load_greeting);  // a hit: no suspension
          std::printf("caller %d again: %s\n", i, again.c_str());
        },
        asio::detached);
  io.run();
  std::printf("loads: %d\n", loads);
  return loads == 1 ? 0 : 1;
}
