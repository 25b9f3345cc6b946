// Benchmark scenarios shared by the Google Benchmark suite and the comparison
// harness. Each returns the wall time of one run, so both programs measure the
// same code.
#ifndef CACHEFLIGHT_BENCH_SCENARIOS_HPP
#define CACHEFLIGHT_BENCH_SCENARIOS_HPP

#include <cacheflight/cacheflight.hpp>

#include <boost/asio.hpp>

#include <chrono>
#include <cstdio>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace cfbench {

namespace asio = boost::asio;
namespace cf = cacheflight;
using clock_type = std::chrono::steady_clock;
using ns = std::chrono::duration<double, std::nano>;

inline void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "benchmark check failed: %s\n", what);
    std::abort();
  }
}

inline asio::awaitable<int> trivial_work() { co_return 1; }

// ---------------------------------------------------------------------------
// Baseline: N pending Asio operations completed by one post. Each operation is
// what any correct Asio operation must be: its handler moved into a heap node at
// initiation, and on completion dispatched to the handler's associated executor.
// This is the floor for delivering one result to N waiters.
class batch_completion {
 public:
  explicit batch_completion(asio::any_io_executor ex) : ex_(std::move(ex)) {}

  template <class Token>
  auto async_wait(Token&& token) {
    return asio::async_initiate<Token, void(std::exception_ptr, int)>(
        [this](auto handler) {
          using H = decltype(handler);
          struct op final : node {
            H h;
            asio::any_io_executor ex;
            op(H&& hh, const asio::any_io_executor& e) : h(std::move(hh)), ex(asio::get_associated_executor(h, e)) {}
            void complete(int v) override {
              auto hx = std::move(h);
              auto e = std::move(ex);
              delete this;
              asio::dispatch(e, [hx = std::move(hx), v]() mutable { std::move(hx)(nullptr, v); });
            }
          };
          node* n = new op(std::move(handler), ex_);
          n->next = head_;
          head_ = n;
        },
        token);
  }

  // Completes every pending operation from one posted function.
  void complete_all(int v) {
    asio::post(ex_, [this, v] {
      node* n = head_;
      head_ = nullptr;
      while (n) {
        node* next = n->next;
        n->complete(v);
        n = next;
      }
    });
  }

 private:
  struct node {
    node* next = nullptr;
    virtual void complete(int v) = 0;
    virtual ~node() = default;
  };
  asio::any_io_executor ex_;
  node* head_ = nullptr;
};

// ---------------------------------------------------------------------------
// Per-waiter cost: n callers of one key, callbacks on one executor.
inline ns flight_waiters_callback(std::size_t n) {
  asio::io_context io(1);
  cf::flight<int> f{io};
  std::size_t done = 0;
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; ++i) f.async_run("user:42", trivial_work, [&done](std::exception_ptr, int) { ++done; });
  io.run();
  auto t1 = clock_type::now();
  check(done == n, "every waiter completed");
  return t1 - t0;
}

inline ns baseline_waiters_callback(std::size_t n) {
  asio::io_context io(1);
  batch_completion b{io.get_executor()};
  std::size_t done = 0;
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; ++i) b.async_wait([&done](std::exception_ptr, int) { ++done; });
  b.complete_all(1);
  io.run();
  auto t1 = clock_type::now();
  check(done == n, "every baseline waiter completed");
  return t1 - t0;
}

// Per-waiter cost: n coroutines awaiting one key.
inline ns flight_waiters_awaitable(std::size_t n) {
  asio::io_context io(1);
  cf::flight<int> f{io};
  std::size_t done = 0;
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; ++i)
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          done += co_await f.async_run("user:42", trivial_work, asio::use_awaitable);
        },
        asio::detached);
  io.run();
  auto t1 = clock_type::now();
  check(done == n, "every coroutine completed");
  return t1 - t0;
}

// Baseline: n bare coroutines awaiting a posted operation.
inline ns baseline_waiters_awaitable(std::size_t n) {
  asio::io_context io(1);
  std::size_t done = 0;
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; ++i)
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          co_await asio::post(io, asio::use_awaitable);
          ++done;
        },
        asio::detached);
  io.run();
  auto t1 = clock_type::now();
  check(done == n, "every baseline coroutine completed");
  return t1 - t0;
}

// Runs n sequential rounds on `io`: `start(done)` initiates one operation that
// increments `done`, then the context runs until it completes.
template <class Start>
ns time_rounds(asio::io_context& io, std::size_t n, Start start) {
  std::size_t done = 0;
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; ++i) {
    start(done);
    io.run();
    io.restart();
  }
  auto t1 = clock_type::now();
  check(done == n, "every round completed");
  return t1 - t0;
}

// Miss path: one caller, one new key, trivial work; n sequential rounds. The
// context's concurrency hint is 1 (one thread runs it, the recommended setup)
// or the default (any number of threads: each key's work gets a strand).
inline ns flight_miss_coroutine_hint(std::size_t n, int hint) {
  asio::io_context io(hint);
  cf::flight<int> f{io};
  return time_rounds(io, n, [&](std::size_t& done) {
    f.async_run("user:42", trivial_work, [&done](std::exception_ptr, int) { ++done; });
  });
}
inline ns flight_miss_coroutine(std::size_t n) { return flight_miss_coroutine_hint(n, 1); }
inline ns flight_miss_coroutine_multithread_context(std::size_t n) {
  return flight_miss_coroutine_hint(n, BOOST_ASIO_CONCURRENCY_HINT_DEFAULT);
}

// Miss path with the work as an Asio operation completing through one post.
inline ns flight_miss_async_op(std::size_t n) {
  asio::io_context io(1);
  cf::flight<int> f{io};
  auto work = [&io](auto&& token) {
    return asio::async_initiate<decltype(token), void(boost::system::error_code, int)>(
        [&io](auto h) {
          asio::post(io, [h = std::move(h)]() mutable { std::move(h)(boost::system::error_code{}, 1); });
        },
        token);
  };
  return time_rounds(io, n, [&](std::size_t& done) {
    f.async_run("user:42", work, [&done](std::exception_ptr, int) { ++done; });
  });
}

// Baseline for the miss path: one posted operation per round.
inline ns baseline_post_round(std::size_t n) {
  asio::io_context io(1);
  return time_rounds(io, n, [&](std::size_t& done) { asio::post(io, [&done] { ++done; }); });
}

// Reference: the textbook singleflight, a mutex-guarded map of shared_futures.
// Joiners copy the leader's shared_future; the leader computes and publishes.
class naive_singleflight {
 public:
  template <class Fn>
  std::shared_future<int> join(const std::string& key, Fn&& fn, bool& leader) {
    std::lock_guard lk(mu_);
    auto it = calls_.find(key);
    if (it != calls_.end()) {
      leader = false;
      return it->second.second;
    }
    leader = true;
    std::promise<int> p;
    auto sf = p.get_future().share();
    calls_.emplace(key, std::make_pair(std::move(p), sf));
    (void)fn;
    return sf;
  }
  void finish(const std::string& key, int v) {
    std::promise<int> p;
    {
      std::lock_guard lk(mu_);
      auto it = calls_.find(key);
      p = std::move(it->second.first);
      calls_.erase(it);
    }
    p.set_value(v);
  }

 private:
  std::mutex mu_;
  std::unordered_map<std::string, std::pair<std::promise<int>, std::shared_future<int>>> calls_;
};

inline ns naive_waiters(std::size_t n) {
  naive_singleflight sf;
  std::vector<std::shared_future<int>> waiters;
  waiters.reserve(n);
  std::size_t sum = 0;
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; ++i) {
    bool leader = false;
    waiters.push_back(sf.join("user:42", trivial_work, leader));
  }
  sf.finish("user:42", 1);
  for (auto& w : waiters) sum += static_cast<std::size_t>(w.get());
  waiters.clear();
  auto t1 = clock_type::now();
  check(sum == n, "every naive waiter completed");
  return t1 - t0;
}

}  // namespace cfbench

#endif
