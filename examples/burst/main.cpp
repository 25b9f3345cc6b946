// Fires N concurrent HTTP requests over M keep-alive connections, then prints
// the status counts, latency percentiles and the server's database calls.
//
//   cacheflight_burst --url http://127.0.0.1:8080/user/42 [--requests 1000]
//                     [--connections 1000] [--spread K]
//
// With --spread K, request i asks for /user/{first + i % K}, where `first` is
// the id in the URL. Exits non-zero if any request failed.
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {

struct options {
  std::string host = "127.0.0.1";
  std::string port = "8080";
  std::string path = "/user/42";
  std::size_t requests = 1000;
  std::size_t connections = 1000;
  std::size_t spread = 1;
};

struct tally {
  std::map<int, std::size_t> statuses;  // 0: transport failure
  std::vector<double> latencies_ms;
  std::size_t failed = 0;
};

bool parse_url(std::string_view url, options& o) {
  constexpr std::string_view scheme = "http://";
  if (!url.starts_with(scheme)) return false;
  url.remove_prefix(scheme.size());
  const auto slash = url.find('/');
  std::string_view authority = url.substr(0, slash);
  o.path = slash == std::string_view::npos ? "/" : std::string(url.substr(slash));
  const auto colon = authority.rfind(':');
  o.host = std::string(authority.substr(0, colon));
  o.port = colon == std::string_view::npos ? "80" : std::string(authority.substr(colon + 1));
  return !o.host.empty();
}

// The path of request i: with a spread, the trailing id becomes first + i % spread.
std::string path_for(const options& o, std::size_t i) {
  if (o.spread <= 1) return o.path;
  const auto slash = o.path.rfind('/');
  const long first = std::atol(o.path.c_str() + slash + 1);
  return o.path.substr(0, slash + 1) + std::to_string(first + static_cast<long>(i % o.spread));
}

// One keep-alive connection sending its share of the requests in turn.
asio::awaitable<void> connection(const options& o, const tcp::resolver::results_type& endpoints,
                                 std::vector<std::size_t> mine, tally& t) {
  beast::tcp_stream stream(co_await asio::this_coro::executor);
  beast::flat_buffer buffer;
  bool connected = false;
  for (std::size_t i : mine) {
    const auto t0 = clock_type::now();
    try {
      if (!connected) {
        stream.expires_after(std::chrono::seconds(10));
        co_await stream.async_connect(endpoints, asio::use_awaitable);
        connected = true;
      }
      http::request<http::empty_body> req{http::verb::get, path_for(o, i), 11};
      req.set(http::field::host, o.host);
      req.keep_alive(true);
      stream.expires_after(std::chrono::seconds(10));
      co_await http::async_write(stream, req, asio::use_awaitable);
      http::response<http::string_body> res;
      co_await http::async_read(stream, buffer, res, asio::use_awaitable);
      t.statuses[res.result_int()]++;
      if (res.result() != http::status::ok) ++t.failed;
      if (!res.keep_alive()) {
        stream.close();
        connected = false;
      }
    } catch (const std::exception&) {
      t.statuses[0]++;
      ++t.failed;
      stream.close();
      connected = false;
    }
    t.latencies_ms.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - t0).count());
  }
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
}

asio::awaitable<std::optional<std::uint64_t>> fetch_db_calls(const options& o,
                                                             const tcp::resolver::results_type& endpoints) {
  try {
    beast::tcp_stream stream(co_await asio::this_coro::executor);
    stream.expires_after(std::chrono::seconds(5));
    co_await stream.async_connect(endpoints, asio::use_awaitable);
    http::request<http::empty_body> req{http::verb::get, "/stats", 11};
    req.set(http::field::host, o.host);
    co_await http::async_write(stream, req, asio::use_awaitable);
    beast::flat_buffer buffer;
    http::response<http::string_body> res;
    co_await http::async_read(stream, buffer, res, asio::use_awaitable);
    co_return json::parse(res.body()).at("db_calls").to_number<std::uint64_t>();
  } catch (const std::exception&) {
    co_return std::nullopt;
  }
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    bool ok = v != nullptr;
    if (ok && a == "--url") ok = parse_url(v, o);
    else if (ok && a == "--requests") o.requests = std::strtoull(v, nullptr, 10);
    else if (ok && a == "--connections") o.connections = std::strtoull(v, nullptr, 10);
    else if (ok && a == "--spread") o.spread = std::strtoull(v, nullptr, 10);
    else ok = false;
    if (!ok) {
      std::cerr << "usage: " << argv[0]
                << " --url http://HOST:PORT/PATH [--requests N] [--connections M] [--spread K]\n";
      return 2;
    }
    ++i;
  }
  o.connections = std::max<std::size_t>(1, std::min(o.connections, o.requests));

  asio::io_context io(1);
  tcp::resolver resolver(io);
  const auto endpoints = resolver.resolve(o.host, o.port);

  std::optional<std::uint64_t> before, after;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> { before = co_await fetch_db_calls(o, endpoints); }, asio::detached);
  io.run();
  io.restart();

  tally t;
  std::vector<std::vector<std::size_t>> shares(o.connections);
  for (std::size_t i = 0; i < o.requests; ++i) shares[i % o.connections].push_back(i);
  const auto t0 = clock_type::now();
  for (auto& share : shares) asio::co_spawn(io, connection(o, endpoints, std::move(share), t), asio::detached);
  io.run();
  const double wall_ms = std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
  io.restart();
  asio::co_spawn(io, [&]() -> asio::awaitable<void> { after = co_await fetch_db_calls(o, endpoints); }, asio::detached);
  io.run();

  std::printf("requests:        %zu over %zu connections in %.1f ms\n", o.requests, o.connections, wall_ms);
  std::printf("statuses:       ");
  for (auto& [status, n] : t.statuses) std::printf(" %s=%zu", status ? std::to_string(status).c_str() : "failed", n);
  std::printf("\nlatency:         p50 %.1f ms, p99 %.1f ms, max %.1f ms\n", percentile(t.latencies_ms, 0.50),
              percentile(t.latencies_ms, 0.99), percentile(t.latencies_ms, 1.0));
  if (before && after)
    std::printf("database calls:  %llu\n", static_cast<unsigned long long>(*after - *before));
  else
    std::printf("database calls:  unknown (no /stats)\n");
  return t.failed == 0 ? 0 : 1;
}
