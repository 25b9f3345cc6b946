// Quickstart, deferred: operations built first and launched later; the key is
// owned by each operation, so the caller's strings may be gone by then.
#include <cacheflight/cacheflight.hpp>

#include <boost/asio.hpp>
#include <boost/asio/deferred.hpp>

#include <cstdio>
#include <string>
#include <vector>

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
  std::vector<decltype(cache.async_get(std::string(), load_greeting, asio::deferred))> ops;
  for (int i = 0; i < 3; ++i) {
    std::string key = "greet";
    key += "ing";  // a temporary: the deferred operation keeps its own copy
    ops.push_back(cache.async_get(key, load_greeting, asio::deferred));
  }
  for (std::size_t i = 0; i < ops.size(); ++i)
    std::move(ops[i])([i](std::exception_ptr e, std::string v) {
      if (e) std::rethrow_exception(e);
      std::printf("caller %zu: %s\n", i, v.c_str());
    });
  io.run();
  std::printf("loads: %d\n", loads);
  return loads == 1 ? 0 : 1;
}
