// Redis Cluster against real processes: three masters and three replicas
// (test/integration/redis_cluster.sh). The client learns the slot map from
// one seed, spreads keys over every master, follows MOVED and ASK while a slot
// is migrated under a burst, clears a tier's prefix on every master, and
// after a master is killed serves the other slots at once and the killed
// one's again once its replica is promoted.
#include "redis_fixture.hpp"

#include <cacheflight/cacheflight.hpp>
#include <cacheflight/redis/tier.hpp>

#include <atomic>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <thread>

namespace {

using namespace cftest;

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> out;
  std::string rest = list;
  for (std::size_t at; (at = rest.find(',')) != std::string::npos; rest = rest.substr(at + 1))
    out.push_back(rest.substr(0, at));
  if (!rest.empty()) out.push_back(rest);
  return out;
}

std::string port_of(const std::string& addr) { return addr.substr(addr.rfind(':') + 1); }

// Runs test/integration/redis_cluster.sh: "WHAT [ARGS]" against a cluster
// directory, with `env` ("NAME=VALUE ...") in its environment.
int cluster_script(const std::string& dir, const std::string& what, const std::string& env = "") {
  const auto sp = what.find(' ');
  const std::string args = sp == std::string::npos ? what + " " + dir : what.substr(0, sp) + " " + dir + what.substr(sp);
  const std::string cmd = env + " bash " + CACHEFLIGHT_CLUSTER_SCRIPT + " " + args;
  return std::system(cmd.c_str());
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::string s, line;
  while (std::getline(f, line)) s += (s.empty() ? "" : ",") + line;
  return s;
}

class cluster_fixture : public redis_fixture {
 public:
  using redis_fixture::run_until;
  const std::string& cluster_dir() const { return dir; }
  // The master ("127.0.0.1:P") that owns `slot` according to the server.
  std::string owner(redis::client& c, int slot) {
    auto [ec, r] = exec(c, {"CLUSTER", "SLOTS"});
    EXPECT_FALSE(ec);
    for (const auto& range : r.elements)
      if (range.elements[0].integer <= slot && slot <= range.elements[1].integer)
        return range.elements[2].elements[0].str + ":" + std::to_string(range.elements[2].elements[1].integer);
    return {};
  }

 protected:
  // The cluster in `dir`: its nodes and masters.
  void use_cluster(const std::string& d) {
    dir = d;
    nodes = split(read_file(dir + "/nodes"));
    masters = split(read_file(dir + "/masters"));
    ASSERT_EQ(nodes.size(), 6u) << "no cluster in " << dir;
    ASSERT_EQ(masters.size(), 3u);
  }

  // A client that knows one seed only: the rest comes from the slot map.
  redis::client_options cluster_options() {
    redis::client_options o{.reconnect_min = 20ms, .reconnect_max = 200ms, .health_check_interval = 50ms};
    o.cluster.nodes = {nodes[0]};
    o.cluster.refresh_interval = 500ms;
    return o;
  }

  std::pair<error_code, redis::reply> exec_at(redis::client& c, std::string node, std::vector<std::string> args) {
    std::optional<std::pair<error_code, redis::reply>> r;
    c.async_exec_at(std::move(node), std::move(args),
                    [&](error_code ec, redis::reply rep) { r.emplace(ec, std::move(rep)); });
    EXPECT_TRUE(run_until([&] { return r.has_value(); }));
    return r.value_or(std::pair<error_code, redis::reply>{asio::error::timed_out, {}});
  }

  // Keys with `prefix` on one master, by SCAN.
  std::set<std::string> keys_on(redis::client& c, const std::string& master, const std::string& prefix) {
    std::set<std::string> out;
    std::string cursor = "0";
    do {
      auto [ec, r] = exec_at(c, master, {"SCAN", cursor, "MATCH", prefix + "*", "COUNT", "1000"});
      EXPECT_FALSE(ec) << ec.message();
      if (ec || r.elements.size() != 2) break;
      cursor = r.elements[0].str;
      for (const auto& k : r.elements[1].elements) out.insert(k.str);
    } while (cursor != "0");
    return out;
  }

  std::vector<std::string> nodes, masters;
};

// The cluster shared by the tests that leave it whole (ctest fixture redis).
class RedisCluster : public cluster_fixture {
 protected:
  void SetUp() override {
    const char* root = std::getenv("CACHEFLIGHT_REDIS_ROOT");
    ASSERT_TRUE(root) << "run through ctest";
    use_cluster(std::string(root) + "/redis-cluster");
  }
};

TEST(RedisKeySlot, MatchesTheSpecification) {
  EXPECT_EQ(redis::key_slot("123456789"), 0x31C3 & 16383);  // CRC16/XMODEM check value
  EXPECT_EQ(redis::key_slot("{user1000}.following"), redis::key_slot("{user1000}.followers"));
  EXPECT_EQ(redis::key_slot("{user1000}.following"), redis::key_slot("user1000"));
  EXPECT_EQ(redis::key_slot("foo{}{bar}"), redis::key_slot("foo{}{bar}"));
  EXPECT_NE(redis::key_slot("foo{}{bar}"), redis::key_slot("bar"));  // an empty tag: the whole key
  EXPECT_EQ(redis::key_slot("foo{{bar}}zap"), redis::key_slot("{bar"));
  EXPECT_EQ(redis::key_slot("foo{bar}{zap}"), redis::key_slot("bar"));
  EXPECT_EQ(redis::key_slot(""), 0);
}

TEST_F(RedisCluster, KeySlotAgreesWithTheServer) {
  redis::client c(io.get_executor(), cluster_options());
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }, 10s)) << c.last_error().message();
  for (std::string key : {"a", "user:42", "{user:42}:name", "x{}y", "caf\xc3\xa9", "{a}{b}", "k:123456"}) {
    auto [ec, r] = exec(c, {"CLUSTER", "KEYSLOT", key});
    ASSERT_FALSE(ec);
    EXPECT_EQ(r.integer, redis::key_slot(key)) << key;
  }
}

TEST_F(RedisCluster, KeysSpreadOverEveryMasterAndReadBackFromOneSeed) {
  redis::client c(io.get_executor(), cluster_options());
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }, 10s)) << c.last_error().message();
  EXPECT_EQ(c.masters(), masters);
  EXPECT_EQ(c.connections_opened(), 3u);  // one per master, the seed's included
  EXPECT_GE(c.cluster_info().map_refreshes, 1u);

  // 300 sets in flight at once, pipelined per master.
  int done = 0, failed = 0;
  for (int i = 0; i < 300; ++i)
    c.async_exec({"SET", "spread:" + std::to_string(i), "v" + std::to_string(i)}, [&](error_code ec, redis::reply r) {
      ++done;
      if (ec || r.is_error()) ++failed;
    });
  ASSERT_TRUE(run_until([&] { return done == 300; }));
  EXPECT_EQ(failed, 0);
  std::size_t total = 0;
  for (const auto& m : masters) {
    const auto on = keys_on(c, m, "spread:");
    EXPECT_GT(on.size(), 50u) << m;  // each master holds about a third
    for (const auto& k : on) EXPECT_EQ(owner(c, redis::key_slot(k)), m) << k;
    total += on.size();
  }
  EXPECT_EQ(total, 300u);
  for (int i = 0; i < 300; ++i) {
    auto [ec, r] = exec(c, {"GET", "spread:" + std::to_string(i)});
    ASSERT_FALSE(ec);
    EXPECT_EQ(r.str, "v" + std::to_string(i));
  }
  EXPECT_EQ(c.cluster_info().moved, 0u);  // the map was right: no redirection

  // Keys that share a hash tag share a slot: one multi-key command.
  EXPECT_FALSE(exec(c, {"MSET", "{tag}:a", "1", "{tag}:b", "2"}).second.is_error());
  auto [ec, r] = exec(c, {"MGET", "{tag}:a", "{tag}:b"});
  ASSERT_EQ(r.elements.size(), 2u);
  EXPECT_EQ(r.elements[1].str, "2");
  // Keys in different slots: the server's CROSSSLOT error reply.
  auto cross = exec(c, {"MGET", "spread:1", "spread:2"}).second;
  EXPECT_TRUE(cross.is_error() && cross.str.starts_with("CROSSSLOT")) << cross.str;
  for (int i = 0; i < 300; ++i) exec(c, {"DEL", "spread:" + std::to_string(i)});
}

TEST_F(RedisCluster, AStaleMapIsCorrectedByMovedAndTheCommandStillSucceeds) {
  redis::client c(io.get_executor(), cluster_options());
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }, 10s));
  // A command sent to the wrong master on purpose gets MOVED as its result
  // (async_exec_at follows nothing); async_exec follows it.
  const std::string key = "moved:key";
  const std::string right = owner(c, redis::key_slot(key));
  const std::string wrong = right == masters[0] ? masters[1] : masters[0];
  auto [ec, r] = exec_at(c, wrong, {"SET", key, "x"});
  ASSERT_FALSE(ec);
  EXPECT_TRUE(r.is_error() && r.str.starts_with("MOVED")) << r.str;
  EXPECT_EQ(exec(c, {"SET", key, "x"}).second.str, "OK");
  EXPECT_EQ(exec(c, {"GET", key}).second.str, "x");
  EXPECT_EQ(exec(c, {"DEL", key}).second.integer, 1);
  // A node outside the map is refused by async_exec_at.
  EXPECT_EQ(exec_at(c, "127.0.0.1:1", {"PING"}).first, cf::error::not_connected);
}

// The same through `async_exec(args, into, token)`: a MOVED reply is the
// result of `async_exec_at` and lands in `into`. With the key's slot marked
// as migrating (no key moved), its owner answers ASK for the absent key;
// `async_exec` follows it, and `into` holds the reply of the node it was
// sent to, not the ASK.
TEST_F(RedisCluster, AReplyReadIntoTheCallersReplyIsTheOneAfterTheRedirections) {
  redis::client c(io.get_executor(), cluster_options());
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }, 10s));
  const std::string key = "into:asked";
  const std::string slot = std::to_string(redis::key_slot(key));
  const std::string from = owner(c, redis::key_slot(key));
  const std::string to = from == masters[0] ? masters[1] : masters[0];
  auto run_into = [&](auto issue) {
    std::optional<error_code> got;
    issue([&](error_code ec) { got = ec; });
    EXPECT_TRUE(run_until([&] { return got.has_value(); }));
    return got.value_or(asio::error::timed_out);
  };
  redis::reply r;
  ASSERT_FALSE(run_into([&](auto h) { c.async_exec_at(to, std::vector<std::string>{"SET", key, "x"}, r, h); }));
  EXPECT_TRUE(r.is_error() && r.str.starts_with("MOVED")) << r.str;

  const std::string from_id = exec_at(c, from, {"CLUSTER", "MYID"}).second.str;
  const std::string to_id = exec_at(c, to, {"CLUSTER", "MYID"}).second.str;
  ASSERT_FALSE(from_id.empty());
  ASSERT_FALSE(to_id.empty());
  ASSERT_EQ(exec_at(c, to, {"CLUSTER", "SETSLOT", slot, "IMPORTING", from_id}).second.str, "OK");
  ASSERT_EQ(exec_at(c, from, {"CLUSTER", "SETSLOT", slot, "MIGRATING", to_id}).second.str, "OK");
  struct stable_again {
    std::function<void()> f;
    ~stable_again() { f(); }
  } guard{[&] {
    exec(c, {"DEL", key});  // on `to`, through ASK
    exec_at(c, from, {"CLUSTER", "SETSLOT", slot, "STABLE"});
    exec_at(c, to, {"CLUSTER", "SETSLOT", slot, "STABLE"});
  }};
  const auto before = c.cluster_info();
  ASSERT_FALSE(run_into([&](auto h) { c.async_exec({"SET", key, "x"}, r, h); }));
  EXPECT_EQ(r.type, redis::reply::kind::status);
  EXPECT_EQ(r.str, "OK");
  ASSERT_FALSE(run_into([&](auto h) { c.async_exec({"GET", key}, r, h); }));
  EXPECT_EQ(r.type, redis::reply::kind::bulk);
  EXPECT_EQ(r.str, "x");
  EXPECT_GE(c.cluster_info().ask, before.ask + 2) << "the commands were not redirected";
  // The key was written to `to`: its owner, asked directly, does not have it
  // and sends the caller there.
  const auto direct = exec_at(c, from, {"EXISTS", key}).second;
  EXPECT_TRUE(direct.is_error() && direct.str.starts_with("ASK")) << direct.str;

  // A node outside the map: an error, and `into` as it was.
  EXPECT_EQ(run_into([&](auto h) { c.async_exec_at("127.0.0.1:1", {"PING"}, r, h); }), cf::error::not_connected);
  EXPECT_EQ(r.str, "x");
}

// 200 keys in one slot (one hash tag), each written and read back by its own
// chain of commands while the slot moves from `from` to `to` key by key
// (redis_cluster.sh migrate; `order` is how the nodes learn the new owner at
// the end). Every GET must read the SET before it.
void burst_while_migrating(cluster_fixture& f, redis::client& c, const std::string& tag, const std::string& from,
                           const std::string& to, const std::string& order) {
  constexpr int keys = 200;
  std::atomic<bool> migrated{false};
  int status = -1;
  const int slot = redis::key_slot(tag);
  std::thread mover([&] {
    status = cluster_script(f.cluster_dir(),
                            "migrate " + std::to_string(slot) + " " + port_of(from) + " " + port_of(to) + " " + order);
    migrated = true;
  });
  int rounds = 0, wrong = 0, errors = 0, running = keys;
  // Each chain ends with a round issued after the migration: sent to the old
  // owner by the client's map, it meets MOVED.
  std::function<void(int, int)> step = [&](int i, int n) {
    const std::string key = tag + std::to_string(i);
    const bool late = migrated;
    c.async_exec({"SET", key, std::to_string(n)}, [&, i, n, key, late](error_code ec, redis::reply r) {
      if (ec || r.str != "OK") {
        ++errors;
        ADD_FAILURE() << "SET " << key << ": " << (ec ? ec.message() : r.str);
      }
      c.async_exec({"GET", key}, [&, i, n, key, late](error_code ec, redis::reply r) {
        ++rounds;
        if (ec) {
          ++errors;
          ADD_FAILURE() << "GET " << key << ": " << ec.message();
        } else if (r.str != std::to_string(n)) {
          ++wrong;
          ADD_FAILURE() << "GET " << key << ": " << r.str << " != " << n;
        }
        if (late && n > 2) return void(--running);
        step(i, n + 1);
      });
    });
  };
  const auto before = c.cluster_info();
  for (int i = 0; i < keys; ++i) step(i, 1);
  const bool finished = f.run_until([&] { return running == 0; }, 60s);
  mover.join();
  ASSERT_TRUE(finished);
  EXPECT_EQ(status, 0);
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(errors, 0);
  const auto after = c.cluster_info();
  EXPECT_GT(after.ask, before.ask) << "no command met the migration half way";
  EXPECT_GT(after.moved, before.moved);
  EXPECT_GT(rounds, 3 * keys);
  EXPECT_EQ(f.owner(c, slot), to);
}

TEST_F(RedisCluster, EveryCallerGetsItsValueWhileASlotIsMigrated) {
  // No periodic refresh of the map during the bursts: only the redirections
  // tell this client where the slot went.
  auto no_refresh = cluster_options();
  no_refresh.cluster.refresh_interval = std::chrono::hours(1);
  redis::client c(io.get_executor(), no_refresh);
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }, 10s));
  const std::string tag = "{migrating}";
  const int slot = redis::key_slot(tag);
  const std::string from = owner(c, slot);
  const std::string to = from == masters[0] ? masters[1] : masters[0];
  for (int i = 0; i < 200; ++i) ASSERT_EQ(exec(c, {"SET", tag + std::to_string(i), "0"}).second.str, "OK");

  // As redis-cli --cluster reshard finishes: the new owner learns it first.
  burst_while_migrating(*this, c, tag, from, to, "new-owner-first");
  // And back, the old owner told first: until the new one learns it, each
  // sends the slot's commands to the other (MOVED back and forth).
  burst_while_migrating(*this, c, tag, to, from, "old-owner-first");

  // Once its map is refreshed, a client routes to the owner directly.
  redis::client d(io.get_executor(), cluster_options());
  ASSERT_TRUE(run_until([&] { return d.is_connected(); }, 10s));
  const auto refreshes = d.cluster_info().map_refreshes;
  ASSERT_TRUE(run_until([&] { return d.cluster_info().map_refreshes > refreshes; }));
  const auto moved_before = d.cluster_info().moved;
  EXPECT_EQ(exec(d, {"GET", tag + "0"}).second.str, exec_at(d, from, {"GET", tag + "0"}).second.str);
  EXPECT_EQ(d.cluster_info().moved, moved_before);
  for (int i = 0; i < 200; ++i) exec(c, {"DEL", tag + std::to_string(i)});
}

TEST_F(RedisCluster, ATierOverTheClusterSharesValuesAndClearsItsPrefixOnEveryMaster) {
  auto client = std::make_shared<redis::client>(io.get_executor(), cluster_options());
  ASSERT_TRUE(run_until([&] { return client->is_connected(); }, 10s));
  auto tier = std::make_shared<redis::tier>(client, redis::tier_options{.prefix = "clr:"});
  cf::cache<int> writer{io, cf::cache_options{.tiers = {tier}}};
  int loaded = 0;
  for (int i = 0; i < 200; ++i)
    writer.async_get("k" + std::to_string(i), [i]() -> asio::awaitable<int> { co_return i; },
                     [&](std::exception_ptr, int) { ++loaded; });
  ASSERT_TRUE(run_until([&] { return loaded == 200 && tier->health().queued_writes == 0; }));
  ASSERT_TRUE(run_until([&] { return tier->health().writes >= 200; }));
  // Keys of other users of the cluster, on every master.
  for (int i = 0; i < 60; ++i) ASSERT_EQ(exec(*client, {"SET", "keep:" + std::to_string(i), "1"}).second.str, "OK");
  std::size_t stored = 0;
  for (const auto& m : masters) {
    const auto on = keys_on(*client, m, "clr:");
    EXPECT_FALSE(on.empty()) << m;
    stored += on.size();
  }
  EXPECT_EQ(stored, 200u);

  // Another cache sharing the cluster reads them without loading.
  cf::cache<int> reader{io, cf::cache_options{.tiers = {tier}}};
  int read = 0, wrong = 0;
  for (int i = 0; i < 200; ++i)
    reader.async_get("k" + std::to_string(i), []() -> asio::awaitable<int> { co_return -1; },
                     [&, i](std::exception_ptr e, int v) {
                       ++read;
                       if (e || v != i) ++wrong;
                     });
  ASSERT_TRUE(run_until([&] { return read == 200; }));
  EXPECT_EQ(wrong, 0);

  std::optional<std::exception_ptr> cleared;
  writer.async_clear([&](std::exception_ptr e) { cleared = e; });
  ASSERT_TRUE(run_until([&] { return cleared.has_value(); }, 10s));
  EXPECT_FALSE(*cleared);
  std::size_t kept = 0;
  for (const auto& m : masters) {
    EXPECT_TRUE(keys_on(*client, m, "clr:").empty()) << m;
    kept += keys_on(*client, m, "keep:").size();
  }
  EXPECT_EQ(kept, 60u);
  for (int i = 0; i < 60; ++i) exec(*client, {"DEL", "keep:" + std::to_string(i)});
}

TEST_F(RedisCluster, ATierReadsItsOwnWritesAndClears) {
  auto client = std::make_shared<redis::client>(io.get_executor(), cluster_options());
  ASSERT_TRUE(run_until([&] { return client->is_connected(); }, 10s));
  auto tier = std::make_shared<redis::tier>(client, redis::tier_options{.prefix = "ryw:"});
  // Issued back to back: the put is being written when the clear is queued,
  // and the read after both must see the clear.
  std::optional<std::optional<std::string>> after_put, after_clear;
  tier->async_put("k", "v1", 60s, [](error_code) {});
  tier->async_get("k", [&](error_code, std::optional<std::string> v) { after_put = v; });
  tier->async_clear([](error_code) {});
  tier->async_get("k", [&](error_code, std::optional<std::string> v) { after_clear = v; });
  ASSERT_TRUE(run_until([&] { return after_put && after_clear; }));
  EXPECT_EQ(after_put->value_or("none"), "v1");
  EXPECT_FALSE(after_clear->has_value()) << **after_clear;
  ASSERT_TRUE(run_until([&] { return tier->health().queued_writes == 0; }));
}

TEST_F(RedisCluster, PublishInvalidationAndLeasesWorkAcrossMasters) {
  const std::string prefix = "cffleet:" + std::to_string(std::random_device{}()) + ":";
  const redis::tier_options o{.prefix = prefix, .invalidation = redis::invalidation_mode::publish, .leases = true};
  auto ta = std::make_shared<redis::tier>(io.get_executor(), cluster_options(), o);
  auto tb = std::make_shared<redis::tier>(io.get_executor(), cluster_options(), o);
  cf::cache<std::string> a{io, cf::cache_options{.tiers = {ta}}};
  cf::cache<std::string> b{io, cf::cache_options{.tiers = {tb}}};
  ASSERT_TRUE(run_until([&] { return ta->linked() && tb->linked(); }, 10s));
  ASSERT_TRUE(run_until([&] { return ta->get_client().is_connected() && tb->get_client().is_connected(); }, 10s));
  std::atomic<int> calls{0};
  auto slow = [&calls](std::string v) {
    return [&calls, v]() -> asio::awaitable<std::string> {
      ++calls;
      asio::steady_timer t(co_await asio::this_coro::executor, 100ms);
      co_await t.async_wait(asio::use_awaitable);
      co_return v;
    };
  };
  // Keys on every master: each cold key is loaded once for both instances.
  std::vector<std::string> keys;
  for (int i = 0; i < 12; ++i) keys.push_back("k" + std::to_string(i));
  std::map<std::string, std::string> got_a, got_b;
  for (auto& k : keys) {
    a.async_get(k, slow("a"), [&got_a, k](std::exception_ptr e, std::string v) { if (!e) got_a[k] = v; });
    b.async_get(k, slow("b"), [&got_b, k](std::exception_ptr e, std::string v) { if (!e) got_b[k] = v; });
  }
  ASSERT_TRUE(run_until([&] { return got_a.size() == keys.size() && got_b.size() == keys.size(); }, 10s));
  EXPECT_EQ(calls, static_cast<int>(keys.size()));
  for (auto& k : keys) EXPECT_EQ(got_a[k], got_b[k]) << k;
  std::set<std::string> used;
  for (auto& k : keys) used.insert(owner(ta->get_client(), redis::key_slot(prefix + k)));
  EXPECT_EQ(used.size(), 3u);  // the keys spread over every master
  // A set through one instance reaches the other, whatever the key's master.
  // b holds every key first (a waiter woken by the fill's message may not
  // have kept what it re-read: the message voids its load), read once every
  // message of a's fills is behind it, or one would void that read too.
  ASSERT_TRUE(run_until([&] { return tb->health().invalidations >= ta->health().writes; }, 5s));
  got_b.clear();
  for (auto& k : keys)
    b.async_get(k, slow("b"), [&got_b, k](std::exception_ptr e, std::string v) { if (!e) got_b[k] = v; });
  ASSERT_TRUE(run_until([&] { return got_b.size() == keys.size(); }, 10s));
  EXPECT_EQ(calls, static_cast<int>(keys.size()));  // from Redis
  for (auto& k : keys) ASSERT_TRUE(b.peek(k)) << k;
  const auto dropped_before = b.stats().invalidations_received;
  for (auto& k : keys) {
    bool done = false;
    a.async_set(k, "new-" + k, [&](std::exception_ptr) { done = true; });
    ASSERT_TRUE(run_until([&] { return done; }));
  }
  ASSERT_TRUE(run_until([&] {
    for (auto& k : keys)
      if (b.peek(k)) return false;
    return true;
  }, 5s));
  // b was told of every set (and of a's fills before them), and dropped each.
  EXPECT_GE(tb->health().invalidations, keys.size());
  EXPECT_EQ(b.stats().invalidations_received - dropped_before, keys.size());
}

TEST_F(RedisCluster, ACancelledCommandCompletesWithOperationAborted) {
  redis::client c(io.get_executor(), cluster_options());
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }, 10s));
  asio::cancellation_signal sig;
  std::optional<error_code> got;
  c.async_exec({"BLPOP", "cancel:list", "5"},
               asio::bind_cancellation_slot(sig.slot(), [&](error_code ec, redis::reply) { got = ec; }));
  sig.emit(asio::cancellation_type::terminal);
  ASSERT_TRUE(run_until([&] { return got.has_value(); }, 2s));
  EXPECT_EQ(*got, asio::error::operation_aborted);
}

TEST_F(RedisCluster, OptionsThatCannotWorkAreRefused) {
  auto refused = [&](redis::client_options o) {
    try {
      redis::client c(io.get_executor(), std::move(o));
    } catch (const boost::system::system_error& e) {
      return e.code() == cf::error::invalid_option;
    }
    return false;
  };
  auto base = cluster_options();
  auto o = base;
  o.sentinel = {.sentinels = {"127.0.0.1:26379"}, .master_name = "m"};
  EXPECT_TRUE(refused(o));
  o = base;
  o.connection.database = 2;
  EXPECT_TRUE(refused(o));
  o = base;
  o.connection.unix_socket = "/tmp/redis.sock";
  EXPECT_TRUE(refused(o));
  o = base;
  o.cluster.nodes = {"127.0.0.1:"};
  EXPECT_TRUE(refused(o));
  o = base;
  o.cluster.max_redirects = 0;
  EXPECT_TRUE(refused(o));
  o = base;
  o.cluster.retry_delay = 0ms;
  EXPECT_TRUE(refused(o));
}

TEST_F(RedisCluster, UnreachableSeedsAreAClearErrorAndNothingHangs) {
  redis::client_options o = cluster_options();
  o.cluster.nodes = {"127.0.0.1:1"};
  redis::client c(io.get_executor(), o);
  ASSERT_TRUE(run_until([&] { return bool(c.last_error()); }, 5s));
  EXPECT_EQ(c.last_error(), asio::error::connection_refused) << c.last_error().message();
  EXPECT_FALSE(c.is_connected());
  EXPECT_EQ(exec(c, {"GET", "k"}).first, cf::error::not_connected);
  EXPECT_TRUE(c.masters().empty());
}

TEST_F(RedisCluster, ASingleServerIsNotACluster) {
  use_server("redis");  // the plain server of the fixture
  redis::client_options o = cluster_options();
  o.cluster.nodes = {"127.0.0.1:" + port};
  redis::client c(io.get_executor(), o);
  ASSERT_TRUE(run_until([&] { return bool(c.last_error()); }, 5s));
  EXPECT_EQ(c.last_error(), cf::error::protocol_error) << c.last_error().message();
  EXPECT_EQ(exec(c, {"GET", "k"}).first, cf::error::not_connected);
}

// A cluster of its own: a master is killed.
class RedisClusterFailover : public cluster_fixture {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "cf-cluster-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    own = tmpl;
    ASSERT_EQ(cluster_script(own, "start"), 0);
    use_cluster(own);
  }
  void TearDown() override {
    cluster_script(own, "stop");
    std::filesystem::remove_all(own);
  }
  std::string own;
};

TEST_F(RedisClusterFailover, AKilledMastersSlotsFailFastTheOthersServeAndItsReplicaTakesOver) {
  auto client = std::make_shared<redis::client>(io.get_executor(), cluster_options());
  ASSERT_TRUE(run_until([&] { return client->is_connected(); }, 10s));
  auto tier = std::make_shared<redis::tier>(client, redis::tier_options{.prefix = "fo:"});
  cf::cache<int> cache{io, cf::cache_options{.max_entries = 0, .tiers = {tier}}};

  // A raw key on the master to be killed and one on a survivor.
  const std::string victim = masters[0];
  const std::string survivor = masters[1];
  std::string on_victim, on_survivor;
  for (int i = 0; on_victim.empty() || on_survivor.empty(); ++i) {
    const std::string key = "raw:" + std::to_string(i);
    const std::string m = owner(*client, redis::key_slot(key));
    if (m == victim && on_victim.empty()) on_victim = key;
    if (m == survivor && on_survivor.empty()) on_survivor = key;
  }
  ASSERT_EQ(exec(*client, {"SET", on_victim, "x"}).second.str, "OK");
  ASSERT_EQ(exec(*client, {"SET", on_survivor, "x"}).second.str, "OK");
  ASSERT_EQ(exec_at(*client, victim, {"WAIT", "1", "1000"}).second.integer, 1);

  // A burst of cache gets over 100 keys (on every master), issued
  // continuously across the kill and the failover: every caller completes
  // with the right value, from Redis, memory or its loader; none hangs.
  std::atomic<int> issued{0}, served{0}, wrong{0};
  auto get = [&] {
    const std::string key = "k" + std::to_string(issued++ % 100);
    cache.async_get(key, [key]() -> asio::awaitable<int> { co_return static_cast<int>(key.size()); },
                    [&, key](std::exception_ptr e, int v) {
                      if (e || v != static_cast<int>(key.size())) ++wrong;
                      ++served;
                    });
  };
  for (int i = 0; i < 200; ++i) get();
  ASSERT_TRUE(run_until([&] { return served == issued; }));

  ASSERT_EQ(cluster_script(own, "kill " + port_of(victim)), 0);
  const auto killed = std::chrono::steady_clock::now();
  // The victim's slots fail at once; the survivor's are served meanwhile.
  ASSERT_TRUE(run_until([&] { return !client->is_connected(); }, 5s));
  bool fast_fail_seen = false;
  const auto t0 = std::chrono::steady_clock::now();
  while (!client->is_connected() && std::chrono::steady_clock::now() - t0 < 20s) {
    for (int i = 0; i < 50; ++i) get();
    auto [ec, r] = exec(*client, {"GET", on_survivor});
    EXPECT_FALSE(ec) << ec.message();
    EXPECT_EQ(r.str, "x");
    const auto before = std::chrono::steady_clock::now();
    auto [vec, vr] = exec(*client, {"GET", on_victim});
    if (vec == cf::error::not_connected) {
      fast_fail_seen = true;
      EXPECT_LT(std::chrono::steady_clock::now() - before, 100ms);  // no wait for a timeout
    }
    run_until([] { return false; }, 20ms);
  }
  EXPECT_TRUE(fast_fail_seen);
  ASSERT_TRUE(client->is_connected()) << "no replica took over: " << client->last_error().message();
  std::cout << "every slot served again "
            << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed).count()
            << " ms after the master was killed\n";
  const auto now_masters = client->masters();
  EXPECT_EQ(now_masters.size(), 3u);
  EXPECT_EQ(std::count(now_masters.begin(), now_masters.end(), victim), 0);
  // The promoted replica serves the victim's keys (replicated before the kill).
  EXPECT_EQ(exec(*client, {"GET", on_victim}).second.str, "x");
  for (int i = 0; i < 200; ++i) get();
  ASSERT_TRUE(run_until([&] { return served == issued; }, 10s)) << served << " of " << issued;
  EXPECT_EQ(wrong, 0);
  // The tier works on every slot again: a value written now is read back.
  bool stored = false;
  tier->async_put("after", "bytes", 60s, [&](error_code ec) { stored = !ec; });
  ASSERT_TRUE(run_until([&] { return stored; }));
  std::optional<std::optional<std::string>> back;
  tier->async_get("after", [&](error_code, std::optional<std::string> v) { back = v; });
  ASSERT_TRUE(run_until([&] { return back.has_value(); }));
  EXPECT_EQ(back->value_or(""), "bytes");
}

TEST_F(RedisClusterFailover, AnIdleClientNoticesAHungMasterByItsHealthCheck) {
  redis::client_options o = cluster_options();
  o.connection.command_timeout = 200ms;
  o.health_check_interval = 50ms;
  redis::client c(io.get_executor(), o);
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }, 10s));
  const std::string victim = masters[2];
  ASSERT_EQ(cluster_script(own, "pause " + port_of(victim)), 0);
  // No command of ours: only the PINGs can tell. Well before the cluster
  // itself fails the master over (500 ms of silence, then an election).
  const auto t0 = std::chrono::steady_clock::now();
  const bool noticed = run_until([&] { return !c.is_connected(); }, 5s);
  const auto took = std::chrono::steady_clock::now() - t0;
  cluster_script(own, "resume " + port_of(victim));
  ASSERT_TRUE(noticed);
  EXPECT_LT(took, 1s);
  // The master is back (or its replica took over): every slot is served again.
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }, 20s)) << c.last_error().message();
  EXPECT_EQ(exec(c, {"SET", "after:hang", "1"}).second.str, "OK");
}

// Three masters that speak TLS only, on the client port, the cluster bus and
// replication (the fixture's throwaway certificates).
TEST(RedisClusterTls, EveryMasterIsReachedWithTlsAndAnUnknownCaIsAClearError) {
  const char* root = std::getenv("CACHEFLIGHT_REDIS_ROOT");
  ASSERT_TRUE(root) << "run through ctest";
  const std::string certs = std::string(root) + "/tls-certs";
  std::string tmpl = (std::filesystem::temp_directory_path() / "cf-cluster-tls-XXXXXX").string();
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  const std::string dir = tmpl;
  struct cleanup {
    std::string dir;
    ~cleanup() {
      cluster_script(dir, "stop");
      std::filesystem::remove_all(dir);
    }
  } stop{dir};
  ASSERT_EQ(cluster_script(dir, "start", "REDIS_TLS_DIR=" + certs + " REDIS_CLUSTER_REPLICAS=0"), 0);
  const auto nodes = split(read_file(dir + "/nodes"));
  const auto masters = split(read_file(dir + "/masters"));
  ASSERT_EQ(masters.size(), 3u);

  asio::io_context io;
  auto run_until = [&](auto pred, std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!pred() && std::chrono::steady_clock::now() < end) {
      io.restart();
      io.run_for(5ms);
    }
    return pred();
  };
  auto options = [&](const std::string& ca) {
    redis::client_options o{.reconnect_min = 20ms, .reconnect_max = 200ms};
    o.connection.tls = {.enabled = true, .ca_file = certs + "/" + ca};
    o.cluster.nodes = {nodes[0]};
    return o;
  };

  redis::client c(io.get_executor(), options("ca.crt"));
  ASSERT_TRUE(run_until([&] { return c.is_connected(); }, 10s)) << c.last_error().message();
  EXPECT_EQ(c.masters(), masters);
  EXPECT_EQ(c.connections_opened(), 3u);
  int done = 0, failed = 0;
  for (int i = 0; i < 60; ++i)
    c.async_exec({"SET", "tls:" + std::to_string(i), std::to_string(i)}, [&](error_code ec, redis::reply r) {
      ++done;
      if (ec || r.str != "OK") ++failed;
    });
  ASSERT_TRUE(run_until([&] { return done == 60; }, 5s));
  EXPECT_EQ(failed, 0);
  for (const auto& m : masters) {
    std::optional<redis::reply> n;
    c.async_exec_at(m, {"DBSIZE"}, [&](error_code, redis::reply r) { n = std::move(r); });
    ASSERT_TRUE(run_until([&] { return n.has_value(); }, 5s));
    EXPECT_GT(n->integer, 0) << m;  // the keys are spread over every master
  }

  redis::client wrong(io.get_executor(), options("other-ca.crt"));
  ASSERT_TRUE(run_until([&] { return bool(wrong.last_error()); }, 5s));
  EXPECT_EQ(wrong.last_error().category().name(), std::string("asio.ssl")) << wrong.last_error().message();
  EXPECT_FALSE(wrong.is_connected());
  EXPECT_TRUE(wrong.masters().empty());
}

}  // namespace
