// TLS to a real redis-server (its TLS port, certificates made by the test):
// the right CA connects, a wrong CA or name is a clear error and never plain
// TCP, verification can be turned off explicitly, mutual TLS with and without
// a client certificate, and a tier shared over TLS.
#include "redis_fixture.hpp"

#include <cacheflight/cacheflight.hpp>
#include <cacheflight/redis/tier.hpp>

#include <boost/asio/ssl/error.hpp>

#include <atomic>

namespace {

using namespace cftest;

class RedisTls : public redis_fixture {
 protected:
  void SetUp() override {
    use_server("redis-tls");
    certs = std::string(std::getenv("CACHEFLIGHT_REDIS_ROOT")) + "/tls-certs/";
  }

  redis::client_options tls_client(redis::tls_options t) {
    redis::client_options o = client_options();
    t.enabled = true;
    o.connection.tls = std::move(t);
    return o;
  }

  // Waits for the client to connect, or for it to report why it cannot.
  bool connects(redis::client& c) {
    run_until([&] { return c.is_connected() || c.last_error(); }, 3s);
    return c.is_connected();
  }

  std::string certs;
};

TEST_F(RedisTls, TheRightCaConnectsAndCommandsWork) {
  redis::client c(io.get_executor(), tls_client({.ca_file = certs + "ca.crt"}));
  ASSERT_TRUE(connects(c)) << c.last_error().message();
  EXPECT_FALSE(exec(c, {"SET", "tls:k", "v"}).first);
  auto [ec, r] = exec(c, {"GET", "tls:k"});
  EXPECT_FALSE(ec);
  EXPECT_EQ(r.str, "v");
  EXPECT_FALSE(c.last_error());
}

TEST_F(RedisTls, TheCaAsADirectoryWorksToo) {
  // OpenSSL looks a CA up in a directory by its subject hash.
  const std::string dir = certs + "ca-dir";
  ASSERT_EQ(std::system(("mkdir -p " + dir + " && cp " + certs + "ca.crt " + dir + "/$(openssl x509 -hash -noout -in " +
                         certs + "ca.crt).0")
                            .c_str()),
            0);
  redis::client c(io.get_executor(), tls_client({.ca_path = dir}));
  EXPECT_TRUE(connects(c)) << c.last_error().message();
}

TEST_F(RedisTls, ACertificateFromAnotherCaIsAClearErrorNeverPlainTcp) {
  redis::client c(io.get_executor(), tls_client({.ca_file = certs + "other-ca.crt"}));
  EXPECT_FALSE(connects(c));
  const error_code ec = c.last_error();
  EXPECT_EQ(ec.category(), asio::error::get_ssl_category()) << ec.message();
  EXPECT_NE(ec.message().find("certificate verify failed"), std::string::npos) << ec.message();
  auto [xec, r] = exec(c, {"PING"});
  EXPECT_TRUE(xec);
}

TEST_F(RedisTls, ANameTheCertificateDoesNotCarryIsRefused) {
  redis::client c(io.get_executor(), tls_client({.ca_file = certs + "ca.crt", .server_name = "redis.example.org"}));
  EXPECT_FALSE(connects(c));
  EXPECT_NE(c.last_error().message().find("certificate verify failed"), std::string::npos) << c.last_error().message();
  // The certificate's own name works.
  redis::client named(io.get_executor(), tls_client({.ca_file = certs + "ca.crt", .server_name = "localhost"}));
  EXPECT_TRUE(connects(named)) << named.last_error().message();
}

TEST_F(RedisTls, VerificationTurnedOffAcceptsAnyCertificate) {
  redis::client c(io.get_executor(), tls_client({.ca_file = certs + "other-ca.crt", .verify_peer = false}));
  EXPECT_TRUE(connects(c)) << c.last_error().message();
}

TEST_F(RedisTls, PlainTcpToATlsPortNeverConnects) {
  redis::client c(io.get_executor(), client_options());
  EXPECT_FALSE(connects(c));
  EXPECT_TRUE(c.last_error());
}

TEST_F(RedisTls, ACaFileThatCannotBeReadIsAClearError) {
  redis::client c(io.get_executor(), tls_client({.ca_file = certs + "missing.crt"}));
  EXPECT_FALSE(connects(c));
  EXPECT_TRUE(c.last_error());
}

TEST_F(RedisTls, ATierOverTlsSharesValuesBetweenCaches) {
  auto opts = tls_client({.ca_file = certs + "ca.crt"});
  auto ta = std::make_shared<redis::tier>(io.get_executor(), opts, redis::tier_options{.prefix = "tls-tier:"});
  auto tb = std::make_shared<redis::tier>(io.get_executor(), opts, redis::tier_options{.prefix = "tls-tier:"});
  ASSERT_TRUE(run_until([&] { return ta->get_client().is_connected() && tb->get_client().is_connected(); }));
  std::atomic<int> loads{0};
  auto load = [&]() -> asio::awaitable<std::string> {
    ++loads;
    co_return "Ada";
  };
  cf::cache<std::string> a{io, cf::cache_options{.tiers = {ta}}};
  cf::cache<std::string> b{io, cf::cache_options{.tiers = {tb}}};
  std::string va, vb;
  a.async_get("user:1", load, [&](std::exception_ptr, std::string v) { va = std::move(v); });
  ASSERT_TRUE(run_until([&] { return !va.empty() && ta->health().writes >= 1; }));
  b.async_get("user:1", load, [&](std::exception_ptr, std::string v) { vb = std::move(v); });
  ASSERT_TRUE(run_until([&] { return !vb.empty(); }));
  EXPECT_EQ(vb, "Ada");
  EXPECT_EQ(loads.load(), 1);
  EXPECT_EQ(b.stats().l2_hits, 1u);
}

class RedisTlsMutual : public RedisTls {
 protected:
  void SetUp() override {
    RedisTls::SetUp();
    use_server("redis-tls-mutual");
  }
};

TEST_F(RedisTlsMutual, AServerThatRequiresAClientCertificateRefusesOneWithout) {
  redis::client c(io.get_executor(), tls_client({.ca_file = certs + "ca.crt"}));
  EXPECT_FALSE(connects(c));
  EXPECT_TRUE(c.last_error());
}

TEST_F(RedisTlsMutual, AndAcceptsOneWithItsCertificate) {
  redis::client c(io.get_executor(), tls_client({.ca_file = certs + "ca.crt",
                                                 .cert_file = certs + "client.crt",
                                                 .key_file = certs + "client.key"}));
  ASSERT_TRUE(connects(c)) << c.last_error().message();
  auto [ec, r] = exec(c, {"PING"});
  EXPECT_FALSE(ec);
}

}  // namespace

namespace {

cftest::error_code construction_error(cftest::redis::client_options o) {
  cftest::asio::io_context io;
  try {
    cftest::redis::client c(io.get_executor(), std::move(o));
  } catch (const boost::system::system_error& e) {
    return e.code();
  }
  return {};
}

TEST(RedisOptions, ImpossibleTlsAndSentinelOptionsAreRefusedAtConstruction) {
  namespace redis = cftest::redis;
  namespace cf = cftest::cf;
  auto with = [](auto change) {
    redis::client_options o;
    change(o);
    return construction_error(std::move(o));
  };
  EXPECT_EQ(with([](auto& o) { o.connection.tls = {.enabled = true, .cert_file = "c.pem"}; }), cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) { o.connection.tls = {.enabled = true, .key_file = "k.pem"}; }), cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) {
              o.connection.unix_socket = "/tmp/redis.sock";
              o.connection.tls.enabled = true;
            }),
            cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) { o.sentinel.master_name = "m"; }), cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) { o.sentinel.sentinels = {"127.0.0.1:26379"}; }), cf::error::invalid_option);
  for (const char* bad : {"", ":26379", "host:", "[::1", "[::1]26379", "[]:1"})
    EXPECT_EQ(with([&](auto& o) {
                o.sentinel = {.sentinels = {bad}, .master_name = "m"};
              }),
              cf::error::invalid_option)
        << bad;
  EXPECT_EQ(with([](auto& o) {
              o.sentinel = {.sentinels = {"127.0.0.1:26379"}, .master_name = "m"};
              o.connection.unix_socket = "/tmp/redis.sock";
            }),
            cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) { o.sentinel.tls = {.enabled = true, .cert_file = "c.pem"}; }), cf::error::invalid_option);
  for (const char* good : {"10.0.0.1:26379", "sentinel-a", "[::1]:26379", "[::1]", "::1", "host:1", "host:65535"})
    EXPECT_FALSE(with([&](auto& o) {
      o.sentinel = {.sentinels = {good}, .master_name = "m"};
    })) << good;
  // Ports that are not numbers from 1 to 65535, extra colons, a bracketed
  // host that is not an IPv6 address.
  for (const char* bad : {"127.0.0.1:26379:5", "host:port:x:y", "127.0.0.1:99999", "127.0.0.1: 1", "host:0",
                          "host:http", "[localhost]:26379", "1:2:3"})
    EXPECT_EQ(with([&](auto& o) {
                o.sentinel = {.sentinels = {bad}, .master_name = "m"};
              }),
              cf::error::invalid_option)
        << bad;
  for (const char* bad : {"127.0.0.1:7000:1", "127.0.0.1:70000", "[x]:7000"})
    EXPECT_EQ(with([&](auto& o) { o.cluster.nodes = {bad}; }), cf::error::invalid_option) << bad;
}

TEST(RedisOptions, ImpossibleTimesAndSizesAreRefusedAtConstruction) {
  namespace redis = cftest::redis;
  namespace cf = cftest::cf;
  using namespace std::chrono_literals;
  auto with = [](auto change) {
    redis::client_options o;
    change(o);
    return construction_error(std::move(o));
  };
  EXPECT_EQ(with([](auto& o) { o.connection.connect_timeout = 0ms; }), cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) { o.connection.command_timeout = 0ms; }), cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) { o.connection.command_timeout = -5ms; }), cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) { o.connection.max_pending = 0; }), cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) { o.connection.database = -1; }), cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) { o.reconnect_min = 0ms; }), cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) { o.reconnect_min = -1ms; }), cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) {
              o.reconnect_min = 100ms;
              o.reconnect_max = 50ms;
            }),
            cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) { o.health_check_interval = 0ms; }), cf::error::invalid_option);
  EXPECT_EQ(with([](auto& o) { o.cluster.nodes = {"127.0.0.1:7000"}; o.health_check_interval = 0ms; }),
            cf::error::invalid_option);
  // The same checks on a bare connection.
  {
    boost::asio::io_context io;
    EXPECT_THROW(redis::connection(io.get_executor(), redis::connection_options{.command_timeout = 0ms}),
                 boost::system::system_error);
    EXPECT_THROW(redis::connection(io.get_executor(), redis::connection_options{.max_pending = 0}),
                 boost::system::system_error);
  }
  EXPECT_FALSE(with([](auto& o) {
    o.reconnect_min = 10ms;
    o.reconnect_max = 10ms;
    o.health_check_interval = 1ms;
  }));
}

}  // namespace
