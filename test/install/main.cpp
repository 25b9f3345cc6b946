// Ten concurrent gets of one key through a cache with a Redis tier in front of
// a server that is not there: one load, every caller served, the tier's
// failure counted. Exits 0 when that is what happened.
#include <cacheflight/cacheflight.hpp>
#include <cacheflight/redis/tier.hpp>

#include <boost/asio.hpp>

#include <iostream>
#include <string>

namespace asio = boost::asio;
namespace cf = cacheflight;

int main() {
  asio::io_context io;
  cf::redis::client_options nowhere;
  nowhere.connection.port = "1";  // nothing listens there
  auto redis = std::make_shared<cf::redis::tier>(io.get_executor(), nowhere);
  cf::cache<std::string> users{io, cf::cache_options{.tiers = {redis}}};

  int loads = 0, served = 0;
  auto load = [&]() -> asio::awaitable<std::string> {
    ++loads;
    co_return std::string("Ada");
  };
  for (int i = 0; i < 10; ++i)
    users.async_get("user:1", load, [&](std::exception_ptr e, std::string name) { served += !e && name == "Ada"; });
  io.run_for(std::chrono::milliseconds(200));

  const cf::cache_stats s = users.stats();
  std::cout << "served " << served << " callers with " << loads << " load; redis errors: " << s.l2_errors << "\n";
  return served == 10 && loads == 1 && s.l2_errors > 0 ? 0 : 1;
}
