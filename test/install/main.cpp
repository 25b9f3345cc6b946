// Ten concurrent gets of one key through a cache with a Redis tier in front of
// a server that is not there, then a disk tier in a fresh directory: one load,
// every caller served, the Redis tier's failure counted, and the value on disk
// for a second cache to find without loading. Exits 0 when that is what happened.
#include <cacheflight/cacheflight.hpp>
#include <cacheflight/disk/tier.hpp>
#include <cacheflight/redis/tier.hpp>

#include <filesystem>

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
  std::string dir = (std::filesystem::temp_directory_path() / "cacheflight-consumer-XXXXXX").string();
  if (!::mkdtemp(dir.data())) return 1;
  auto disk = std::make_shared<cf::disk::tier>(io.get_executor(), cf::disk::tier_options{.path = dir, .max_bytes = 1 << 24});
  cf::cache<std::string> users{io, cf::cache_options{.tiers = {redis, disk}}};

  int loads = 0, served = 0;
  auto load = [&]() -> asio::awaitable<std::string> {
    ++loads;
    co_return std::string("Ada");
  };
  for (int i = 0; i < 10; ++i)
    users.async_get("user:1", load, [&](std::exception_ptr e, std::string name) { served += !e && name == "Ada"; });
  io.run_for(std::chrono::milliseconds(200));

  disk->async_flush([](boost::system::error_code) {});
  io.restart();
  io.run_for(std::chrono::milliseconds(200));
  const cf::cache_stats s = users.stats();

  cf::cache<std::string> again{io, cf::cache_options{.tiers = {disk}}};
  std::string from_disk;
  again.async_get("user:1", load, [&](std::exception_ptr, std::string name) { from_disk = name; });
  io.restart();
  io.run_for(std::chrono::milliseconds(200));
  disk.reset();
  std::filesystem::remove_all(dir);

  std::cout << "served " << served << " callers with " << loads << " load; redis errors: " << s.l2_errors
            << "; from disk: " << from_disk << "\n";
  return served == 10 && loads == 1 && s.l2_errors > 0 && from_disk == "Ada" ? 0 : 1;
}
