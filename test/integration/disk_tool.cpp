// A process the disk tests start, kill and restart: it opens a store and
// writes or reads it as told on its command line.
//
//   disk_tool put-loop DIR FIRST [relaxed]   puts k<i> = v<i> from i = FIRST on, 16 at a time,
//                                            printing i once its put completed; runs until killed
//   disk_tool put DIR KEY VALUE [TTL_MS]     one put; prints "ok" or "error: ..."
//   disk_tool get DIR KEY                    prints "value:<bytes>", "absent" or "error: ..."
//   disk_tool open DIR                       prints "ok" or "error:<category>:<value>:<message>"
//   disk_tool fill DIR FSIZE_LIMIT           under RLIMIT_FSIZE, puts 64 KiB values until one fails,
//                                            then reads the first back, then flushes twice; prints
//                                            each outcome
//   disk_tool fill-burst DIR FSIZE_LIMIT N   under RLIMIT_FSIZE, N puts of 64 KiB at once (a few
//                                            transactions); prints "failed:<puts that failed>
//                                            write_errors:<the tier's count>"
//   disk_tool forge DIR KEY RECORDED VALUE   writes, with LMDB directly, a record under KEY's slot
//                                            whose full key is RECORDED (a digest collision)
//   disk_tool foreign DIR                    makes an LMDB environment that is not a cacheflight store
#include <cacheflight/disk/tier.hpp>

#include "../../src/disk/format.hpp"

#include <boost/asio.hpp>
#include <lmdb.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>

namespace asio = boost::asio;
namespace cf = cacheflight;
using boost::system::error_code;

namespace {

void say(const std::string& s) {
  std::string line = s + "\n";
  const char* p = line.data();
  std::size_t n = line.size();
  while (n > 0) {
    const ssize_t w = ::write(1, p, n);
    if (w <= 0) return;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

cf::disk::tier_options options(const char* dir, bool relaxed = false) {
  cf::disk::tier_options o;
  o.path = dir;
  o.max_bytes = std::uint64_t{256} << 20;
  o.durability = relaxed ? cf::disk::durability::relaxed : cf::disk::durability::durable;
  return o;
}

int put_loop(const char* dir, long first, bool relaxed) {
  asio::io_context io;
  cf::disk::tier t(io.get_executor(), options(dir, relaxed));
  long next = first;
  std::function<void()> one = [&] {
    const long i = next++;
    t.async_put("k" + std::to_string(i), "v" + std::to_string(i), std::chrono::milliseconds::max(),
                [&, i](error_code ec) {
                  if (ec) {
                    say("error: " + ec.message());
                    std::_Exit(3);
                  }
                  say(std::to_string(i));
                  one();
                });
  };
  for (int k = 0; k < 16; ++k) one();
  io.run();
  return 0;
}

int put(const char* dir, const char* key, const char* value, const char* ttl) {
  asio::io_context io;
  cf::disk::tier t(io.get_executor(), options(dir));
  const auto ms = ttl ? std::chrono::milliseconds(std::stol(ttl)) : std::chrono::milliseconds::max();
  t.async_put(key, value, ms, [](error_code ec) { say(ec ? "error: " + ec.message() : "ok"); });
  io.run();
  return 0;
}

int get(const char* dir, const char* key) {
  asio::io_context io;
  cf::disk::tier t(io.get_executor(), options(dir));
  t.async_get(key, [](error_code ec, std::optional<std::string> v) {
    if (ec)
      say("error: " + ec.message());
    else
      say(v ? "value:" + *v : "absent");
  });
  io.run();
  return 0;
}

int open(const char* dir) {
  asio::io_context io;
  try {
    cf::disk::tier t(io.get_executor(), options(dir));
    say("ok");
    return 0;
  } catch (const boost::system::system_error& e) {
    say(std::string("error:") + e.code().category().name() + ":" + std::to_string(e.code().value()) + ":" +
        e.what());
    return 1;
  }
}

// Files this process writes stop growing at `limit` bytes (a full disk, as
// the store sees it): a write past it fails with EFBIG.
bool limit_file_size(const char* limit) {
  std::signal(SIGXFSZ, SIG_IGN);
  rlimit rl{};
  rl.rlim_cur = rl.rlim_max = std::stoull(limit);
  if (::setrlimit(RLIMIT_FSIZE, &rl) != 0) {
    say("error: setrlimit");
    return false;
  }
  return true;
}

int fill(const char* dir, const char* limit) {
  if (!limit_file_size(limit)) return 2;
  asio::io_context io;
  cf::disk::tier t(io.get_executor(), options(dir));
  const std::string value(64 * 1024, 'x');
  error_code failed;
  for (int i = 0; i < 10'000 && !failed; ++i) {
    t.async_put("f" + std::to_string(i), value, std::chrono::milliseconds::max(), [&](error_code ec) { failed = ec; });
    io.restart();
    io.run();
  }
  say(failed ? "put-error:" + failed.message() : std::string("put-error:none"));
  t.async_get("f0", [&](error_code ec, std::optional<std::string> v) {
    say(ec ? "get-error:" + ec.message() : (v && *v == value ? "get:ok" : "get:absent"));
  });
  io.restart();
  io.run();
  for (const char* what : {"flush:", "flush-again:"}) {
    t.async_flush([what](error_code ec) { say(what + (ec ? ec.message() : std::string("ok"))); });
    io.restart();
    io.run();
  }
  return 0;
}

int fill_burst(const char* dir, const char* limit, const char* count) {
  if (!limit_file_size(limit)) return 2;
  asio::io_context io;
  cf::disk::tier t(io.get_executor(), options(dir));
  int failed = 0;
  const int n = std::stoi(count);
  for (int i = 0; i < n; ++i)
    t.async_put("b" + std::to_string(i), std::string(64 * 1024, 'y'), std::chrono::milliseconds::max(),
                [&](error_code ec) {
                  if (ec) ++failed;
                });
  io.run();
  say("failed:" + std::to_string(failed) + " write_errors:" + std::to_string(t.stats().write_errors));
  return 0;
}

int forge(const char* dir, const char* key, const char* recorded, const char* value) {
  MDB_env* env = nullptr;
  MDB_txn* txn = nullptr;
  MDB_dbi data = 0;
  if (::mdb_env_create(&env) || ::mdb_env_set_maxdbs(env, 4) || ::mdb_env_set_mapsize(env, std::size_t{256} << 20) ||
      ::mdb_env_open(env, dir, 0, 0644) || ::mdb_txn_begin(env, nullptr, 0, &txn) ||
      ::mdb_dbi_open(txn, "data", 0, &data)) {
    say("error: cannot open");
    return 2;
  }
  const std::string dk = cf::disk::detail::data_key(key);
  std::string rec(cf::disk::detail::record_size(recorded, std::strlen(value)), '\0');
  cf::disk::detail::write_record(rec.data(), 1, 0, recorded, value);
  MDB_val k{dk.size(), const_cast<char*>(dk.data())}, v{rec.size(), rec.data()};
  if (::mdb_put(txn, data, &k, &v, 0) || ::mdb_txn_commit(txn)) {
    say("error: cannot write");
    return 2;
  }
  ::mdb_env_close(env);
  say("ok");
  return 0;
}

int foreign(const char* dir) {
  std::filesystem::create_directories(dir);
  MDB_env* env = nullptr;
  MDB_txn* txn = nullptr;
  MDB_dbi main = 0;
  if (::mdb_env_create(&env) || ::mdb_env_open(env, dir, 0, 0644) || ::mdb_txn_begin(env, nullptr, 0, &txn) ||
      ::mdb_dbi_open(txn, nullptr, 0, &main)) {
    say("error: cannot open");
    return 2;
  }
  char key[] = "someone-else";
  char value[] = "data";
  MDB_val k{sizeof key - 1, key}, v{sizeof value - 1, value};
  if (::mdb_put(txn, main, &k, &v, 0) || ::mdb_txn_commit(txn)) {
    say("error: cannot write");
    return 2;
  }
  ::mdb_env_close(env);
  say("ok");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  try {
    if (cmd == "put-loop" && argc >= 4) return put_loop(argv[2], std::stol(argv[3]), argc > 4 && std::string(argv[4]) == "relaxed");
    if (cmd == "put" && argc >= 5) return put(argv[2], argv[3], argv[4], argc > 5 ? argv[5] : nullptr);
    if (cmd == "get" && argc == 4) return get(argv[2], argv[3]);
    if (cmd == "open" && argc == 3) return open(argv[2]);
    if (cmd == "fill" && argc == 4) return fill(argv[2], argv[3]);
    if (cmd == "fill-burst" && argc == 5) return fill_burst(argv[2], argv[3], argv[4]);
    if (cmd == "forge" && argc == 6) return forge(argv[2], argv[3], argv[4], argv[5]);
    if (cmd == "foreign" && argc == 3) return foreign(argv[2]);
  } catch (const std::exception& e) {
    say(std::string("error: ") + e.what());
    return 1;
  }
  std::fprintf(stderr, "usage: see the comment at the top of disk_tool.cpp\n");
  return 2;
}
