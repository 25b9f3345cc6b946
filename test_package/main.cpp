// A flight coalescing three callers into one run, and the Redis component
// linked: the RESP writer encodes a command.
#include <cacheflight/cacheflight.hpp>
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
  std::cout << "runs: " << runs << ", answers: " << answers << ", command bytes: " << cmd.size() << "\n";
  return runs == 1 && answers == 3 && cmd == "*2\r\n$3\r\nGET\r\n$6\r\nanswer\r\n" ? 0 : 1;
}
