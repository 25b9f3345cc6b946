// Helpers shared by the unit tests.
#ifndef CACHEFLIGHT_TEST_SUPPORT_HPP
#define CACHEFLIGHT_TEST_SUPPORT_HPP

#include <cacheflight/cacheflight.hpp>
#include <cacheflight/manual_clock.hpp>

#include <boost/asio.hpp>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace cftest {

namespace asio = boost::asio;
namespace cf = cacheflight;
using namespace std::chrono_literals;

// The blocks a `counting_allocator` handed out: all of them, and those not
// yet taken back.
struct allocation_counts {
  int made = 0;
  int live = 0;
};

// An allocator that counts its blocks in an `allocation_counts`.
template <class T>
struct counting_allocator {
  using value_type = T;
  allocation_counts* counts;
  explicit counting_allocator(allocation_counts* c) noexcept : counts(c) {}
  template <class U>
  counting_allocator(const counting_allocator<U>& o) noexcept : counts(o.counts) {}
  T* allocate(std::size_t n) {
    T* p = std::allocator<T>{}.allocate(n);
    ++counts->made;
    ++counts->live;
    return p;
  }
  void deallocate(T* p, std::size_t n) noexcept {
    --counts->live;
    std::allocator<T>{}.deallocate(p, n);
  }
  template <class U>
  bool operator==(const counting_allocator<U>& o) const noexcept {
    return counts == o.counts;
  }
};

// What one waiter received.
template <class V = int>
struct outcome {
  bool done = false;
  int completions = 0;
  std::exception_ptr error;
  V value{};

  auto handler() {
    return [this](std::exception_ptr e, V v) {
      ++completions;
      done = true;
      error = std::move(e);
      value = std::move(v);
    };
  }

  // The library error code carried by `error`, or a default code.
  boost::system::error_code code() const {
    if (!error) return {};
    try {
      std::rethrow_exception(error);
    } catch (const boost::system::system_error& e) {
      return e.code();
    } catch (...) {
    }
    return {};
  }
};

// Work whose completion the test decides. The work is a coroutine waiting on a
// timer; `resolve`/`reject` release it, and a cancellation of the work aborts
// its wait, which it records.
class gate {
 public:
  explicit gate(asio::any_io_executor ex) : timer_(std::make_shared<asio::steady_timer>(ex)) {
    timer_->expires_at(asio::steady_timer::time_point::max());
  }

  int calls() const { return *calls_; }
  int cancelled() const { return *cancelled_; }

  void resolve(int v) {
    *value_ = v;
    timer_->cancel();
  }
  void reject(std::exception_ptr e) {
    *error_ = std::move(e);
    timer_->cancel();
  }

  // The work function.
  auto fn() {
    return [timer = timer_, calls = calls_, cancelled = cancelled_, value = value_,
            error = error_]() -> asio::awaitable<int> {
      ++*calls;
      boost::system::error_code ec;
      co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (*error) std::rethrow_exception(*error);
      if (*value) co_return **value;
      ++*cancelled;
      throw boost::system::system_error(ec);
    };
  }

 private:
  std::shared_ptr<asio::steady_timer> timer_;
  std::shared_ptr<int> calls_ = std::make_shared<int>(0);
  std::shared_ptr<int> cancelled_ = std::make_shared<int>(0);
  std::shared_ptr<std::optional<int>> value_ = std::make_shared<std::optional<int>>();
  std::shared_ptr<std::exception_ptr> error_ = std::make_shared<std::exception_ptr>();
};

// Records events, copying keys.
struct event_log {
  struct entry {
    cf::event_kind kind;
    std::string key;
    std::chrono::nanoseconds duration;
    std::exception_ptr error;
  };
  std::vector<entry> events;

  cf::event_sink sink() {
    return [this](const cf::event& e) { events.push_back({e.kind, std::string(e.key), e.duration, e.error}); };
  }
  std::vector<cf::event_kind> kinds() const {
    std::vector<cf::event_kind> k;
    for (auto& e : events) k.push_back(e.kind);
    return k;
  }
  std::size_t count(cf::event_kind k) const {
    std::size_t n = 0;
    for (auto& e : events) n += e.kind == k;
    return n;
  }
};

// Runs handlers until `pred` holds, failing the test if the context runs dry.
template <class Pred>
void run_until(asio::io_context& io, Pred pred) {
  while (!pred()) {
    if (io.stopped()) io.restart();  // a context that ran out of work stops itself
    if (io.run_one() == 0) {
      ADD_FAILURE() << "io_context ran out of work before the condition held";
      io.restart();
      return;
    }
  }
}

// Runs the context until it has no more work, restarting it first if an
// earlier run stopped it.
inline std::size_t drain(asio::io_context& io) {
  if (io.stopped()) io.restart();
  return io.run();
}

// Runs `a` on `io` until the context has no more work; returns its result or
// rethrows its exception.
template <class T>
T await(asio::io_context& io, asio::awaitable<T> a) {
  auto f = asio::co_spawn(io, std::move(a), asio::use_future);
  drain(io);
  return f.get();
}

inline void await(asio::io_context& io, asio::awaitable<void> a) {
  auto f = asio::co_spawn(io, std::move(a), asio::use_future);
  drain(io);
  f.get();
}

// Put first in a function object passed to an initiating function, holds each
// copy and move of the object until `caller_gone` is set (or a bounded while
// passes): a copy that an initiation makes from its arguments after it handed
// the handler on, and the awaiting caller's frame holding them is gone, then
// reads freed memory, which the sanitizer builds report.
struct waits_for_caller {
  static inline std::atomic<bool> caller_gone{false};
  waits_for_caller() = default;
  waits_for_caller(const waits_for_caller&) noexcept { wait(); }
  waits_for_caller(waits_for_caller&&) noexcept { wait(); }
  waits_for_caller& operator=(const waits_for_caller&) = default;
  waits_for_caller& operator=(waits_for_caller&&) = default;
  static void wait() {
    for (int i = 0; i < 200 && !caller_gone.load(); ++i) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
};

struct test_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace cftest

#endif
