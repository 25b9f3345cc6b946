// Measures how long a write through one instance of the HTTP example takes to
// reach the others: renames a user with PUT on the writer, then asks each
// reader for that user until it serves the new name, and repeats.
//
//   cacheflight_fleet_probe --writer HOST:PORT --readers HOST:PORT[,HOST:PORT...]
//                           [--id 1] [--writes 1000] [--timeout-ms 2000]
//
// Prints the propagation delay (from the PUT's response to the last reader
// serving the new name) at p50, p99 and its maximum, and how many writes did
// not propagate within --timeout-ms. Exits 1 if any did not, 2 for bad flags.
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using steady = std::chrono::steady_clock;

namespace {

// One keep-alive connection to an instance.
class peer {
 public:
  peer(asio::io_context& io, const std::string& address) : stream_(io) {
    const auto colon = address.rfind(':');
    if (colon == std::string::npos) throw std::invalid_argument("not HOST:PORT: " + address);
    host_ = address;
    tcp::resolver resolver(io);
    stream_.connect(resolver.resolve(address.substr(0, colon), address.substr(colon + 1)));
    stream_.socket().set_option(tcp::no_delay(true));
  }

  std::string call(http::verb verb, const std::string& target, std::string body = {}) {
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, host_);
    req.keep_alive(true);
    if (verb == http::verb::put) {
      req.body() = std::move(body);
      req.prepare_payload();
    }
    http::write(stream_, req);
    http::response<http::string_body> res;
    http::read(stream_, buffer_, res);
    if (res.result() != http::status::ok)
      throw std::runtime_error(host_ + target + ": HTTP " + std::to_string(res.result_int()));
    return std::move(res.body());
  }

 private:
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::string host_;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  std::string writer, readers;
  long id = 1, writes = 1000, timeout_ms = 2000;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--writer")
      writer = value();
    else if (a == "--readers")
      readers = value();
    else if (a == "--id")
      id = std::atol(value().c_str());
    else if (a == "--writes")
      writes = std::atol(value().c_str());
    else if (a == "--timeout-ms")
      timeout_ms = std::atol(value().c_str());
    else {
      std::cerr << "usage: " << argv[0]
                << " --writer HOST:PORT --readers HOST:PORT[,...] [--id 1] [--writes 1000] [--timeout-ms 2000]\n";
      return 2;
    }
  }
  if (writer.empty() || readers.empty() || id < 0 || writes < 1 || timeout_ms < 1) {
    std::cerr << argv[0] << ": --writer and --readers are required; --id >= 0, --writes and --timeout-ms >= 1\n";
    return 2;
  }
  try {
    asio::io_context io;
    peer w(io, writer);
    std::vector<std::unique_ptr<peer>> rs;
    for (std::size_t from = 0;;) {
      const std::size_t to = std::min(readers.find(',', from), readers.size());
      rs.push_back(std::make_unique<peer>(io, readers.substr(from, to - from)));
      if (to == readers.size()) break;
      from = to + 1;
    }
    const std::string target = "/user/" + std::to_string(id);
    // Each reader holds the user in memory before the first write.
    for (auto& r : rs) r->call(http::verb::get, target);
    std::vector<double> delays_ms;
    long late = 0;
    for (long n = 0; n < writes; ++n) {
      const std::string name = "probe-" + std::to_string(n);
      const std::string want = "\"name\":\"" + name + "\"";
      w.call(http::verb::put, target, name);
      const auto t0 = steady::now();
      const auto deadline = t0 + std::chrono::milliseconds(timeout_ms);
      bool all = true;
      for (auto& r : rs) {
        while (r->call(http::verb::get, target).find(want) == std::string::npos) {
          if (steady::now() > deadline) {
            all = false;
            break;
          }
        }
        if (!all) break;
      }
      if (!all) {
        ++late;
        continue;
      }
      delays_ms.push_back(std::chrono::duration<double, std::milli>(steady::now() - t0).count());
    }
    std::printf("writes:          %ld through %s, read back from %zu other instance(s)\n", writes, writer.c_str(),
                rs.size());
    std::printf("propagation:     p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", percentile(delays_ms, 0.50),
                percentile(delays_ms, 0.99), delays_ms.empty() ? 0.0 : *std::max_element(delays_ms.begin(), delays_ms.end()));
    std::printf("not propagated:  %ld within %ld ms\n", late, timeout_ms);
    return late == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << argv[0] << ": " << e.what() << "\n";
    return 1;
  }
}
