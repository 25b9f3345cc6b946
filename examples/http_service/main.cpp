// An HTTP/1.1 service on Beast whose endpoints hit one cache. A burst of
// concurrent requests for /user/42 reaches the (simulated) database once.
//
//   cacheflight_http_service [--address 127.0.0.1] [--port 8080] [--threads 1]
//                            [--db-latency-ms 50] [--ttl-ms 60000] [--stale-ms 0]
//                            [--redis HOST:PORT] [--redis-prefix demo:users:]
//                            [--redis-tls] [--redis-tls-ca FILE] [--redis-tls-cert FILE --redis-tls-key FILE]
//                            [--redis-sentinel HOST:PORT[,HOST:PORT...] --redis-master NAME]
//                            [--redis-cluster HOST:PORT[,HOST:PORT...]]
//                            [--disk PATH] [--disk-max-mb 1024] [--disk-durability durable]
//                            [--fleet] [--fleet-invalidation tracking|publish] [--lease-ms MS]
//
// `--help` lists every option with its default; a malformed or out-of-range
// value is an error (exit status 2); an address and port it cannot listen on,
// or a disk directory it cannot use, exits with status 1.
//
// With --redis, the cache has a Redis L2 behind memory: instances started with
// the same server and prefix share what any of them loaded. With --disk, a
// disk tier (LMDB) keeps what was loaded across restarts and crashes: memory,
// then Redis, then the disk, then the database. With --stale-ms, a user older
// than --ttl-ms is still served for that long while one background reload
// replaces it, so requests do not wait for the database when a hot user expires.
//
// With --fleet (and a Redis option), instances sharing the server and prefix
// act as one: a write through any of them drops the user from the others'
// memory (Redis client-side caching with tracking, or a PUBLISH channel), and
// a user none of them holds is loaded from the database once for all of them
// (a lease in Redis; the others wait for its fill).
//
// GET /user/{id}  the user, through the cache (JSON)
// PUT /user/{id}  body: the new name; updates the database row and sets the cache
// GET /stats      database calls and cache figures (JSON)
// GET /metrics    the requests, the database's calls and writes, and the cache's
//                 figures (its tiers' included) in the Prometheus text format; the
//                 disk store's and the fleet's own figures are in /stats only
// GET /healthz    "ok"
// GET /constant   a fixed small JSON body (a baseline for load tests)
// GET /           a dashboard that polls /stats and fires bursts from the browser
#include "dashboard.hpp"

#include <cacheflight/cacheflight.hpp>
#ifdef CACHEFLIGHT_EXAMPLE_WITH_REDIS
#include <cacheflight/redis/tier.hpp>
#endif
#ifdef CACHEFLIGHT_EXAMPLE_WITH_DISK
#include <cacheflight/disk/tier.hpp>
#endif

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <boost/program_options.hpp>

#include <atomic>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
namespace cf = cacheflight;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

struct config {
  std::string address = "127.0.0.1";
  unsigned short port = 8080;
  unsigned threads = 1;
  std::chrono::milliseconds db_latency{50};
  std::chrono::milliseconds ttl{60'000};
  std::chrono::milliseconds stale{0};
  std::string redis;  // host:port; empty: memory only
  std::string redis_prefix = "demo:users:";
  bool redis_tls = false;  // set by any --redis-tls* flag
  std::string redis_tls_ca, redis_tls_cert, redis_tls_key, redis_tls_server_name;
  std::string redis_sentinel;  // host:port,...; with redis_master
  std::string redis_cluster;   // host:port,...: seed nodes of a Redis Cluster
  std::string redis_master;
  std::string redis_password, redis_sentinel_password;
  std::string disk;  // a directory; empty: no disk tier
  std::uint64_t disk_max_mb = 1024;
  bool disk_relaxed = false;
  bool fleet = false;
  bool fleet_publish = false;           // --fleet-invalidation publish (forced with a cluster)
  std::chrono::milliseconds lease{0};   // 0: from the database latency
};

// A Redis L2 when asked for.
std::shared_ptr<cf::tier> make_redis(asio::io_context& io, const config& cfg) {
  if (cfg.redis.empty() && cfg.redis_sentinel.empty() && cfg.redis_cluster.empty()) return nullptr;
#ifdef CACHEFLIGHT_EXAMPLE_WITH_REDIS
  const auto colon = cfg.redis.rfind(':');
  cf::redis::client_options c;
  c.connection.host = cfg.redis.substr(0, colon);
  c.connection.port = colon == std::string::npos ? "6379" : cfg.redis.substr(colon + 1);
  c.connection.password = cfg.redis_password;
  c.connection.tls = cf::redis::tls_options{.enabled = cfg.redis_tls,
                                            .ca_file = cfg.redis_tls_ca,
                                            .cert_file = cfg.redis_tls_cert,
                                            .key_file = cfg.redis_tls_key,
                                            .server_name = cfg.redis_tls_server_name};
  auto split = [](std::string list) {
    auto trimmed = [](std::string s) {
      while (!s.empty() && s.front() == ' ') s.erase(0, 1);
      while (!s.empty() && s.back() == ' ') s.pop_back();
      return s;
    };
    std::vector<std::string> out;
    for (std::size_t at; (at = list.find(',')) != std::string::npos; list = list.substr(at + 1))
      out.push_back(trimmed(list.substr(0, at)));
    out.push_back(trimmed(list));
    return out;
  };
  if (!cfg.redis_cluster.empty()) c.cluster.nodes = split(cfg.redis_cluster);
  if (!cfg.redis_sentinel.empty()) {
    c.sentinel.sentinels = split(cfg.redis_sentinel);
    c.sentinel.master_name = cfg.redis_master;
    c.sentinel.tls = c.connection.tls;
    c.sentinel.tls.server_name.clear();  // the sentinels' own addresses
    c.sentinel.password = cfg.redis_sentinel_password;
  }
  cf::redis::tier_options t{.prefix = cfg.redis_prefix};
  if (cfg.fleet) {
    t.invalidation = cfg.fleet_publish || !cfg.redis_cluster.empty() ? cf::redis::invalidation_mode::publish
                                                                      : cf::redis::invalidation_mode::tracking;
    t.leases = true;
    t.lease_ttl = cfg.lease > 0ms ? cfg.lease : std::max(std::chrono::milliseconds(1000), 2 * cfg.db_latency + 500ms);
    t.lease_poll = 20ms;
  }
  return std::make_shared<cf::redis::tier>(io.get_executor(), c, std::move(t));
#else
  (void)io;
  throw std::runtime_error("--redis: this build has no Redis component (CACHEFLIGHT_WITH_REDIS=OFF)");
#endif
}

// A disk tier when asked for.
#ifdef CACHEFLIGHT_EXAMPLE_WITH_DISK
using disk_tier = cf::disk::tier;
#else
using disk_tier = cf::tier;
#endif
std::shared_ptr<disk_tier> make_disk(asio::io_context& io, const config& cfg) {
  if (cfg.disk.empty()) return nullptr;
#ifdef CACHEFLIGHT_EXAMPLE_WITH_DISK
  return std::make_shared<cf::disk::tier>(
      io.get_executor(),
      cf::disk::tier_options{.path = cfg.disk,
                             .max_bytes = cfg.disk_max_mb << 20,
                             .durability = cfg.disk_relaxed ? cf::disk::durability::relaxed : cf::disk::durability::durable});
#else
  (void)io;
  throw std::runtime_error("--disk: this build has no disk component (CACHEFLIGHT_WITH_DISK=OFF)");
#endif
}

std::vector<std::shared_ptr<cf::tier>> tiers_of(std::shared_ptr<cf::tier> redis, std::shared_ptr<cf::tier> disk) {
  std::vector<std::shared_ptr<cf::tier>> out;
  if (redis) out.push_back(std::move(redis));
  if (disk) out.push_back(std::move(disk));
  return out;
}

// The service's shared state: one cache in front of a slow "database". The
// cache keeps each user's rendered JSON body, so a hit does no JSON work.
struct service {
  explicit service(asio::io_context& io, const config& cfg)
      : cfg(cfg),
        disk(make_disk(io, cfg)),
        redis(make_redis(io, cfg)),
        users(io, cf::cache_options{.max_entries = 100'000,
                                    .default_ttl = cfg.ttl,
                                    .shards = 16,
                                    .tiers = tiers_of(redis, disk),
                                    .stale_while_revalidate = cfg.stale}) {}

  static std::string render(long id, const std::string& name) {
    return json::serialize(json::object{{"id", id}, {"name", name}});
  }

  // The database: a timer stands in for the query's latency. A user nobody
  // renamed is called "user-<id>".
  asio::awaitable<std::string> load_user(long id) {
    db_calls.fetch_add(1, std::memory_order_relaxed);
    asio::steady_timer t(co_await asio::this_coro::executor, cfg.db_latency);
    co_await t.async_wait(asio::use_awaitable);
    co_return render(id, name_of(id));
  }

  std::string name_of(long id) {
    std::lock_guard lk(db_mu);
    auto it = renamed.find(id);
    return it != renamed.end() ? it->second : "user-" + std::to_string(id);
  }

  // A write: the database row first, then the cache (memory and the tiers; with
  // --fleet the other instances drop their copy).
  asio::awaitable<std::string> rename_user(long id, std::string name) {
    db_writes.fetch_add(1, std::memory_order_relaxed);
    {
      std::lock_guard lk(db_mu);
      renamed[id] = name;
    }
    std::string body = render(id, name);
    co_await users.async_set("user:" + std::to_string(id), body, asio::use_awaitable);
    co_return body;
  }

  json::object stats_json() const {
    cf::cache_stats s = users.stats();
    json::object out{
        {"requests", requests.load()},
        {"db_calls", db_calls.load()},
        {"db_writes", db_writes.load()},
        {"in_flight", s.loads_in_flight},
        {"cache",
         json::object{{"hits", s.hits},
                      {"misses", s.misses},
                      {"hit_rate", s.hit_rate},
                      {"coalesced", s.coalesced},
                      {"loads", s.loads},
                      {"load_failures", s.load_failures},
                      {"size", s.size},
                      {"evictions", s.evictions},
                      {"expirations", s.expirations},
                      {"stale_hits", s.stale_hits},
                      {"refreshes", s.refreshes},
                      {"refreshes_failed", s.refreshes_failed},
                      {"l2_hits", s.l2_hits},
                      {"l2_misses", s.l2_misses},
                      {"l2_errors", s.l2_errors},
                      {"l2_breaker", s.tiers.empty() ? "none" : to_string(s.tiers[0].breaker)}}},
    };
    if (disk) out["disk"] = disk_json(s);
    if (cfg.fleet && !s.tiers.empty()) {
      const cf::tier_health& h = s.tiers[0].health;
      out["fleet"] = json::object{{"linked", linked()},
                                  {"invalidations", h.invalidations},
                                  {"invalidations_received", s.invalidations_received},
                                  {"memory_flushes", s.memory_flushes},
                                  {"link_flushes", h.link_flushes},
                                  {"leases_granted", h.leases_granted},
                                  {"leases_waited", h.leases_waited},
                                  {"leases_expired", h.leases_expired},
                                  {"leases_lost", h.leases_lost}};
    }
    return out;
  }

  // Whether invalidations from the other instances are flowing now.
  bool linked() const {
#ifdef CACHEFLIGHT_EXAMPLE_WITH_REDIS
    if (auto* r = dynamic_cast<cf::redis::tier*>(redis.get())) return r->linked();
#endif
    return false;
  }

  // The disk tier's figures: the cache's view of it, and the store's.
  json::object disk_json(const cf::cache_stats& s) const {
    json::object d;
    for (const cf::tier_stats& t : s.tiers)
      if (t.name == "disk") {
        d["hits"] = t.hits;
        d["misses"] = t.misses;
        d["errors"] = t.errors;
        d["corrupt"] = t.corrupt;
        d["queued_writes"] = t.queued_writes;
        d["writes"] = t.writes;
        d["writes_dropped"] = t.writes_dropped;
      }
#ifdef CACHEFLIGHT_EXAMPLE_WITH_DISK
    const cf::disk::store_stats st = disk->stats();
    d["path"] = disk->path().string();
    d["entries"] = st.entries;
    d["used_bytes"] = st.used_bytes;
    d["max_bytes"] = std::uint64_t(cfg.disk_max_mb) << 20;  // the budget (--disk-max-mb)
    d["map_bytes"] = st.map_bytes;                          // LMDB's map: the budget, or a larger store's file
    d["commits"] = st.commits;
    d["evicted"] = st.evicted;
    d["expired"] = st.expired;
    d["too_large"] = st.too_large;
    d["write_errors"] = st.write_errors;
#endif
    return d;
  }

  std::string metrics_text() const {
    std::string out = cf::to_prometheus(users.stats(), "cacheflight_cache");
    out += "# HELP demo_requests_total HTTP requests served.\n# TYPE demo_requests_total counter\n";
    out += "demo_requests_total " + std::to_string(requests.load()) + "\n";
    out += "# HELP demo_db_calls_total Calls that reached the database.\n# TYPE demo_db_calls_total counter\n";
    out += "demo_db_calls_total " + std::to_string(db_calls.load()) + "\n";
    out += "# HELP demo_db_writes_total Rows written to the database.\n# TYPE demo_db_writes_total counter\n";
    out += "demo_db_writes_total " + std::to_string(db_writes.load()) + "\n";
    return out;
  }

  const config cfg;
  std::shared_ptr<disk_tier> disk;
  std::shared_ptr<cf::tier> redis;
  cf::cache<std::string> users;
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> db_calls{0};
  std::atomic<std::uint64_t> db_writes{0};
  std::mutex db_mu;
  std::map<long, std::string> renamed;  // the database's rows that were written; guarded by db_mu
};

using request = http::request<http::string_body>;
using response = http::response<http::string_body>;

response make(const request& req, http::status status, std::string_view type, std::string body) {
  response res{status, req.version()};
  res.set(http::field::server, "cacheflight-demo");
  res.set(http::field::content_type, type);
  res.keep_alive(req.keep_alive());
  res.body() = std::move(body);
  res.prepare_payload();
  return res;
}

response text(const request& req, http::status status, std::string body) {
  return make(req, status, "text/plain; charset=utf-8", std::move(body) + "\n");
}

response json_response(const request& req, const json::value& v) {
  return make(req, http::status::ok, "application/json", json::serialize(v));
}

asio::awaitable<response> route(service& svc, const request& req) {
  const std::string_view target = req.target();
  const std::string_view path = target.substr(0, target.find('?'));
  const bool put = req.method() == http::verb::put;
  if (put && !path.starts_with("/user/")) {
    response res = text(req, http::status::method_not_allowed, "only GET is supported here");
    res.set(http::field::allow, "GET, HEAD");
    co_return res;
  }
  if (!put && req.method() != http::verb::get && req.method() != http::verb::head) {
    response res = text(req, http::status::method_not_allowed, "only GET, and PUT on /user/{id}, are supported");
    res.set(http::field::allow, path.starts_with("/user/") ? "GET, HEAD, PUT" : "GET, HEAD");
    co_return res;
  }
  if (path.starts_with("/user/")) {
    const std::string_view digits = path.substr(6);
    long id = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id);
    if (digits.empty() || digits.size() > 18 || ec != std::errc{} || end != digits.data() + digits.size() || id < 0)
      co_return text(req, http::status::bad_request, "the user id must be a non-negative integer");
    if (put) {
      std::string name = req.body();
      while (!name.empty() && (name.back() == '\n' || name.back() == '\r' || name.back() == ' ')) name.pop_back();
      if (name.empty() || name.size() > 256)
        co_return text(req, http::status::bad_request, "the body must be the new name: 1 to 256 bytes");
      std::string body = co_await svc.rename_user(id, std::move(name));
      co_return make(req, http::status::ok, "application/json", std::move(body));
    }
    std::string key = "user:" + std::to_string(id);
    auto loader = [&svc, id] { return svc.load_user(id); };
    std::string body = co_await svc.users.async_get(std::move(key), loader, asio::use_awaitable);
    co_return make(req, http::status::ok, "application/json", std::move(body));
  }
  if (path == "/stats") co_return json_response(req, svc.stats_json());
  if (path == "/metrics") co_return make(req, http::status::ok, "text/plain; version=0.0.4", svc.metrics_text());
  if (path == "/healthz") co_return text(req, http::status::ok, "ok");
  if (path == "/constant") co_return make(req, http::status::ok, "application/json", R"({"id":0,"name":"constant"})");
  if (path == "/") co_return make(req, http::status::ok, "text/html; charset=utf-8", std::string(dashboard_html));
  co_return text(req, http::status::not_found, "not found");
}

asio::awaitable<void> session(service& svc, tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  try {
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.header_limit(8 * 1024);
      parser.body_limit(8 * 1024);  // a new name at most: large bodies are refused
      stream.expires_after(30s);
      boost::system::error_code ec;
      co_await http::async_read(stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
      if (ec == http::error::end_of_stream) break;
      if (ec) {
        // A malformed or oversized request gets 400 and the connection closes.
        if (ec != beast::error::timeout && ec != asio::error::connection_reset && ec != asio::error::eof) {
          request bad;
          bad.version(11);
          bad.keep_alive(false);
          response res = text(bad, http::status::bad_request, "bad request: " + ec.message());
          co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
        }
        break;
      }
      request req = parser.release();
      svc.requests.fetch_add(1, std::memory_order_relaxed);
      response res;
      try {
        res = co_await route(svc, req);
      } catch (const std::exception& e) {
        res = text(req, http::status::internal_server_error, e.what());
      }
      const bool keep_alive = res.keep_alive();
      co_await http::async_write(stream, res, asio::use_awaitable);
      if (!keep_alive) break;
    }
  } catch (const boost::system::system_error&) {
    // The client went away mid-request: nothing to clean up beyond the socket.
  }
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
}

asio::awaitable<void> listen(service& svc, tcp::acceptor& acceptor, std::vector<std::unique_ptr<asio::io_context>>& ios) {
  std::size_t next = 0;
  asio::steady_timer pause(co_await asio::this_coro::executor);
  while (acceptor.is_open()) {
    // Spread connections over the threads' contexts.
    asio::io_context& target = *ios[next++ % ios.size()];
    boost::system::error_code ec;
    tcp::socket socket = co_await acceptor.async_accept(target, asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::operation_aborted) break;
    if (ec) {
      // Out of descriptors, say: keep serving the open connections, retry shortly.
      std::cerr << "accept: " << ec.message() << std::endl;
      pause.expires_after(10ms);
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    asio::co_spawn(target, session(svc, std::move(socket)), asio::detached);
  }
}

// Reads the command line into `cfg`. Returns an exit status when the program
// should stop at once: 0 after --help, 2 for a malformed or out-of-range value.
std::optional<int> parse(int argc, char** argv, config& cfg) {
  namespace po = boost::program_options;
  long port = cfg.port, threads = cfg.threads, db_latency = cfg.db_latency.count(), ttl = cfg.ttl.count(),
       stale = cfg.stale.count();
  long disk_max_mb = static_cast<long>(cfg.disk_max_mb);
  long lease = 0;
  std::string fleet_invalidation = "tracking";
  std::string disk_durability = "durable";
  po::options_description desc(
      "cacheflight_http_service: an HTTP service whose endpoints hit one cache in front of a slow database\n\n"
      "Options", 100, 50);
  desc.add_options()                                                       //
      ("help,h", "print this help and exit")                               //
      ("address", po::value(&cfg.address)->default_value(cfg.address), "address to listen on")  //
      ("port", po::value(&port)->default_value(port), "TCP port to listen on, 0 to 65535 (0: any free port)")  //
      ("threads", po::value(&threads)->default_value(threads),
       "threads, each running its own io_context (1 to 256)")  //
      ("db-latency-ms", po::value(&db_latency)->default_value(db_latency),
       "latency of one call to the simulated database, in ms (0 to 10^12)")  //
      ("ttl-ms", po::value(&ttl)->default_value(ttl), "lifetime of a cached user, in ms (1 to 10^12)")  //
      ("stale-ms", po::value(&stale)->default_value(stale),
       "after --ttl-ms, how long a user is still served while one background reload replaces it, in ms "
       "(0 to 10^12; 0: none)")  //
      ("redis", po::value(&cfg.redis)->value_name("HOST:PORT")->default_value("", "none: memory only"),
       "a Redis L2 behind memory, shared by every instance using the same server and prefix")  //
      ("redis-prefix", po::value(&cfg.redis_prefix)->default_value(cfg.redis_prefix),
       "prefix of this cache's keys in Redis (not empty)")  //
      ("redis-sentinel", po::value(&cfg.redis_sentinel)->value_name("HOST:PORT[,...]"),
       "find the Redis master through these sentinels (with --redis-master), following failovers")  //
      ("redis-master", po::value(&cfg.redis_master)->value_name("NAME"), "the sentinels' name of the master set")  //
      ("redis-cluster", po::value(&cfg.redis_cluster)->value_name("HOST:PORT[,...]"),
       "a Redis Cluster as the L2, learnt from these seed nodes (one connection per master)")  //
      ("redis-password", po::value(&cfg.redis_password)->value_name("PASSWORD"), "AUTH to the Redis server")  //
      ("redis-sentinel-password", po::value(&cfg.redis_sentinel_password)->value_name("PASSWORD"),
       "AUTH to the sentinels")  //
      ("redis-tls", po::bool_switch(&cfg.redis_tls), "connect to Redis with TLS, verifying it with the system's CAs")  //
      ("redis-tls-ca", po::value(&cfg.redis_tls_ca)->value_name("FILE"),
       "TLS to Redis, verifying it with the CA certificates in FILE (PEM)")  //
      ("redis-tls-cert", po::value(&cfg.redis_tls_cert)->value_name("FILE"),
       "TLS client certificate (PEM) for servers that require one; with --redis-tls-key")  //
      ("redis-tls-key", po::value(&cfg.redis_tls_key)->value_name("FILE"), "the private key (PEM) of --redis-tls-cert")  //
      ("redis-tls-server-name", po::value(&cfg.redis_tls_server_name)->value_name("NAME"),
       "the name to expect in the Redis server's certificate (default: the host it is reached at)")  //
      ("disk", po::value(&cfg.disk)->value_name("PATH")->default_value("", "none"),
       "a disk tier (LMDB) in this directory, created if missing: what was loaded survives restarts and crashes")  //
      ("disk-max-mb", po::value(&disk_max_mb)->default_value(disk_max_mb),
       "the disk tier's budget in MiB (1 or more)")  //
      ("disk-durability", po::value(&disk_durability)->default_value(disk_durability),
       "durable (a completed write survives a power loss) or relaxed (one sync a commit)")  //
      ("fleet", po::bool_switch(&cfg.fleet),
       "with a Redis option: instances sharing the server and prefix drop users written through the others, and "
       "load a user nobody holds once for all of them (a lease in Redis)")  //
      ("fleet-invalidation", po::value(&fleet_invalidation)->default_value(fleet_invalidation),
       "how --fleet learns of writes: tracking (Redis client-side caching; any write to Redis is seen) or publish "
       "(a PUBLISH channel; writes made through instances only). A cluster always uses publish")  //
      ("lease-ms", po::value(&lease)->default_value(0, "2 x db-latency + 500, 1000 at least"),
       "with --fleet, how long a lease lasts: an instance that dies mid-load holds the others up this long at most");
  po::variables_map vm;
  auto fail = [&](const std::string& why) {
    std::cerr << argv[0] << ": " << why << " (--help lists the options)\n";
    return 2;
  };
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    return fail(e.what());
  }
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  if (port < 0 || port > 65535) return fail("--port must be in [0, 65535]");
  if (threads < 1 || threads > 256) return fail("--threads must be in [1, 256]");
  // Durations up to 10^12 ms (about 31 years): their sums in nanoseconds fit
  // the clocks' 64 bits.
  constexpr long long max_ms = 1'000'000'000'000;
  if (db_latency < 0 || db_latency > max_ms) return fail("--db-latency-ms must be in [0, 10^12]");
  if (ttl < 1 || ttl > max_ms) return fail("--ttl-ms must be in [1, 10^12]");
  if (stale < 0 || stale > max_ms) return fail("--stale-ms must be in [0, 10^12]");
  {
    boost::system::error_code ec;
    asio::ip::make_address(cfg.address, ec);
    if (ec) return fail("--address must be an IPv4 or IPv6 address, not '" + cfg.address + "'");
  }
  if (cfg.redis_prefix.empty()) return fail("--redis-prefix must not be empty");
  if (cfg.redis_sentinel.empty() != cfg.redis_master.empty())
    return fail("--redis-sentinel and --redis-master go together");
  if (!cfg.redis.empty() + !cfg.redis_sentinel.empty() + !cfg.redis_cluster.empty() > 1)
    return fail("give one of --redis, --redis-sentinel and --redis-cluster");
  if (cfg.redis_tls_cert.empty() != cfg.redis_tls_key.empty())
    return fail("--redis-tls-cert and --redis-tls-key go together");
  // HOST:PORT, the port a number in [1, 65535] (HOST alone if `port_optional`).
  auto host_port = [](const std::string& a, bool port_optional) {
    const auto colon = a.rfind(':');
    if (colon == std::string::npos) return port_optional && !a.empty();
    const std::string p = a.substr(colon + 1);
    if (colon == 0 || p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos) return false;
    const long n = std::stol(p);
    return n >= 1 && n <= 65535;
  };
  // HOST:PORT[,HOST:PORT...].
  auto address_list = [&](const std::string& list) {
    std::size_t from = 0;
    for (;;) {
      const std::size_t to = std::min(list.find(',', from), list.size());
      if (!host_port(list.substr(from, to - from), false)) return false;
      if (to == list.size()) return true;
      from = to + 1;
    }
  };
  if (!cfg.redis.empty() && !host_port(cfg.redis, true))
    return fail("--redis takes HOST:PORT (or HOST, for port 6379), the port in [1, 65535]");
  if (!cfg.redis_cluster.empty() && !address_list(cfg.redis_cluster))
    return fail("--redis-cluster takes HOST:PORT[,HOST:PORT...]");
  if (!cfg.redis_sentinel.empty() && !address_list(cfg.redis_sentinel))
    return fail("--redis-sentinel takes HOST:PORT[,HOST:PORT...]");
  cfg.redis_tls = cfg.redis_tls || !cfg.redis_tls_ca.empty() || !cfg.redis_tls_cert.empty() ||
                  !cfg.redis_tls_server_name.empty();
  if (disk_max_mb < 1 || disk_max_mb > (1L << 24)) return fail("--disk-max-mb must be in [1, 16777216]");
  if (disk_durability != "durable" && disk_durability != "relaxed")
    return fail("--disk-durability must be durable or relaxed");
  if (cfg.fleet && cfg.redis.empty() && cfg.redis_sentinel.empty() && cfg.redis_cluster.empty())
    return fail("--fleet needs --redis, --redis-sentinel or --redis-cluster");
  if (fleet_invalidation != "tracking" && fleet_invalidation != "publish")
    return fail("--fleet-invalidation must be tracking or publish");
  if (lease < 0 || lease > 3'600'000) return fail("--lease-ms must be in [0, 3600000]");
  cfg.fleet_publish = fleet_invalidation == "publish";
  cfg.lease = std::chrono::milliseconds(lease);
  cfg.disk_max_mb = static_cast<std::uint64_t>(disk_max_mb);
  cfg.disk_relaxed = disk_durability == "relaxed";
  cfg.port = static_cast<unsigned short>(port);
  cfg.threads = static_cast<unsigned>(threads);
  cfg.db_latency = std::chrono::milliseconds(db_latency);
  cfg.ttl = std::chrono::milliseconds(ttl);
  cfg.stale = std::chrono::milliseconds(stale);
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  config cfg;
  if (auto status = parse(argc, argv, cfg)) return *status;

  // One io_context per thread, each run by exactly one thread.
  std::vector<std::unique_ptr<asio::io_context>> ios;
  for (unsigned i = 0; i < cfg.threads; ++i) ios.push_back(std::make_unique<asio::io_context>(1));
  asio::io_context& main_io = *ios[0];

  std::optional<service> svc_storage;
  try {
    svc_storage.emplace(main_io, cfg);
  } catch (const std::exception& e) {  // a disk directory that cannot be used, for instance
    std::cerr << argv[0] << ": " << e.what() << "\n";
    return 1;
  }
  service& svc = *svc_storage;
  std::optional<tcp::acceptor> acceptor_storage;
  try {
    acceptor_storage.emplace(main_io, tcp::endpoint{asio::ip::make_address(cfg.address), cfg.port});
  } catch (const boost::system::system_error& e) {  // the port taken, say
    std::cerr << argv[0] << ": cannot listen on " << cfg.address << ":" << cfg.port << ": " << e.code().message()
              << "\n";
    return 1;
  }
  tcp::acceptor& acceptor = *acceptor_storage;
  std::cout << "listening on " << cfg.address << ":" << acceptor.local_endpoint().port() << std::endl;
  if (!cfg.redis_cluster.empty())
    std::cout << "L2: redis cluster from " << cfg.redis_cluster << (cfg.redis_tls ? " (TLS)" : "") << ", prefix "
              << cfg.redis_prefix << std::endl;
  else if (!cfg.redis_sentinel.empty())
    std::cout << "L2: redis master " << cfg.redis_master << " from sentinels " << cfg.redis_sentinel
              << (cfg.redis_tls ? " (TLS)" : "") << ", prefix " << cfg.redis_prefix << std::endl;
  else if (!cfg.redis.empty())
    std::cout << "L2: redis at " << cfg.redis << (cfg.redis_tls ? " (TLS)" : "") << ", prefix " << cfg.redis_prefix
              << std::endl;
  if (!cfg.disk.empty()) std::cout << "disk tier: " << cfg.disk << std::endl;
  if (cfg.fleet)
    std::cout << "fleet: invalidation by "
              << (cfg.fleet_publish || !cfg.redis_cluster.empty() ? "a PUBLISH channel" : "client tracking")
              << ", leases on misses" << std::endl;

  asio::co_spawn(main_io, listen(svc, acceptor, ios), asio::detached);

  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  for (auto& io : ios) guards.push_back(asio::make_work_guard(*io));
  asio::signal_set signals(main_io, SIGINT, SIGTERM);
  signals.async_wait([&](boost::system::error_code, int) {
    boost::system::error_code ignored;
    acceptor.close(ignored);
    for (auto& io : ios) io->stop();
  });

  std::vector<std::thread> threads;
  for (unsigned i = 1; i < cfg.threads; ++i) threads.emplace_back([&io = *ios[i]] { io.run(); });
  main_io.run();
  for (auto& t : threads) t.join();
  std::cout << "stopped after " << svc.requests.load() << " requests, " << svc.db_calls.load() << " database calls"
            << std::endl;
  return 0;
}
