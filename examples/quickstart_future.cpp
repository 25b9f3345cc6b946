// Quickstart, use_future: three concurrent gets of one key, one load, waited
// on from the main thread while another thread runs the io_context.
#include <cacheflight/cacheflight.hpp>

#include <boost/asio.hpp>

#include <atomic>
#include <cstdio>
#include <future>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
namespace cf = cacheflight;

std::atomic<int> loads{0};

asio::awaitable<std::string> load_greeting() {
  ++loads;
  asio::steady_timer slow(co_await asio::this_coro::executor, std::chrono::milliseconds(20));
  co_await slow.async_wait(asio::use_awaitable);
  co_return "hello";
}

int main() {
  asio::io_context io(1);
  cf::cache<std::string> cache{io, cf::cache_options{.max_entries = 100, .default_ttl = std::chrono::minutes(1)}};
  auto work = asio::make_work_guard(io);
  std::thread runner([&] { io.run(); });
  std::vector<std::future<std::string>> results;
  for (int i = 0; i < 3; ++i) results.push_back(cache.async_get("greeting", load_greeting, asio::use_future));
  for (std::size_t i = 0; i < results.size(); ++i) std::printf("caller %zu: %s\n", i, results[i].get().c_str());
  work.reset();
  runner.join();
  std::printf("loads: %d\n", loads.load());
  return loads == 1 ? 0 : 1;
}
