// Quickstart, callbacks: three concurrent gets of one key, one load.
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
    cache.async_get("greeting", load_greeting, [i](std::exception_ptr e, std::string v) {
      if (e) std::rethrow_exception(e);
      std::printf("caller %d: %s\n", i, v.c_str());
    });
  io.run();
  std::printf("loads: %d\n", loads);
  return loads == 1 ? 0 : 1;
}
