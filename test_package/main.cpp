// A flight coalescing three callers into one run, and the compiled components
// linked: the RESP writer encodes a command; a disk tier refuses impossible options.
#include <cacheflight/cacheflight.hpp>
#include <cacheflight/disk/tier.hpp>
#include <cacheflight/redis/resp.hpp>

#include <boost/asio.hpp>

#include <iostream>

int main() {
  namespace asio = boost::asio;
  asio::io_context io;
  cacheflight::flight<int> flight{io.get_executor()};
  int runs = 0, answers = 0;
  auto work = [&]() -> asio::awaitable<int> {
    ++runs;
    co_return 42;
  };
  for (int i = 0; i < 3; ++i) flight.async_run("answer", work, [&](std::exception_ptr e, int v) { answers += !e && v == 42; });
  io.run();

  std::string cmd;
  cacheflight::redis::append_command(cmd, {"GET", "answer"});
  bool refused = false;
  try {
    cacheflight::disk::tier t(io.get_executor(), cacheflight::disk::tier_options{.path = "unused", .max_bytes = 1});
  } catch (const boost::system::system_error& e) {
    refused = e.code() == cacheflight::error::invalid_option;
  }
  std::cout << "runs: " << runs << ", answers: " << answers << ", command bytes: " << cmd.size()
            << ", disk options refused: " << refused << "\n";
  return runs == 1 && answers == 3 && refused && cmd == "*2\r\n$3\r\nGET\r\n$6\r\nanswer\r\n" ? 0 : 1;
}
