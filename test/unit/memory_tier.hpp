// A tier in this process's memory, written the way a user would write one.
#ifndef CACHEFLIGHT_TEST_MEMORY_TIER_HPP
#define CACHEFLIGHT_TEST_MEMORY_TIER_HPP

#include <cacheflight/error.hpp>
#include <cacheflight/tier.hpp>

#include <boost/asio.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace cftest {

namespace asio = boost::asio;
namespace cf = cacheflight;

// A tier in this process's memory. Every completion is posted to the
// handler's executor. `fail` makes every operation fail; `hold_gets` keeps
// reads pending until cancelled through their slot (or, with
// `ignore_cancel`, until `release`).
class memory_tier final : public cf::tier {
  using error_code = boost::system::error_code;

 public:
  explicit memory_tier(asio::any_io_executor ex, std::string name = "memory") : ex_(std::move(ex)), name_(name) {}

  std::string_view name() const noexcept override { return name_; }

  struct put_record {
    std::string key, bytes;
    std::chrono::milliseconds ttl;
  };
  std::map<std::string, std::string> data;
  std::vector<put_record> puts;
  std::vector<std::string> log;  // "get k", "put k", "erase k", "clear"
  bool fail = false;
  bool hold_gets = false;
  bool ignore_cancel = false;  // a held read does not listen to its slot
  bool throw_on_get = false;   // do_get throws instead of starting the read
  int fills = 0;  // puts that came through async_fill (loaded values)

  // What a tier shared with other processes does when it learns of a change
  // made elsewhere.
  void report_change(std::string_view key) { listeners()->invalidate(key); }
  void report_lost_link() { listeners()->invalidate_all(); }
  // Run once each, inside do_put: right before and right after the put is applied.
  std::function<void()> before_put, after_put;

 protected:
  void do_get(std::string key, get_handler h) override {
    log.push_back("get " + key);
    if (throw_on_get) throw std::runtime_error("tier read refused");
    if (hold_gets) {
      auto it = data.find(key);
      held_value_ = it == data.end() ? std::nullopt : std::optional<std::string>(it->second);
      auto slot = asio::get_associated_cancellation_slot(h);
      held_.swap(h);  // Boost 1.81's move assignment of any_completion_handler recurses: swap
      if (slot.is_connected() && !ignore_cancel)
        slot.assign([this](asio::cancellation_type) {
          get_handler h(std::move(held_));
          complete(std::move(h), error_code(asio::error::operation_aborted), std::optional<std::string>{});
        });
      return;
    }
    if (fail) return complete(std::move(h), make_error_code(cf::error::not_connected), std::optional<std::string>{});
    auto it = data.find(key);
    complete(std::move(h), error_code{}, it == data.end() ? std::nullopt : std::optional<std::string>(it->second));
  }
  void do_put(std::string key, std::string bytes, std::chrono::milliseconds ttl, done_handler h) override {
    log.push_back("put " + key);
    if (fail) return complete(std::move(h), make_error_code(cf::error::not_connected));
    if (before_put) std::exchange(before_put, nullptr)();
    puts.push_back({key, bytes, ttl});
    data[key] = std::move(bytes);
    if (after_put) std::exchange(after_put, nullptr)();
    complete(std::move(h), error_code{});
  }
  void do_fill(std::string key, std::string bytes, std::chrono::milliseconds ttl, done_handler h) override {
    ++fills;
    do_put(std::move(key), std::move(bytes), ttl, std::move(h));
  }
  void do_erase(std::string key, done_handler h) override {
    log.push_back("erase " + key);
    if (fail) return complete(std::move(h), make_error_code(cf::error::tier_unavailable));
    data.erase(key);
    complete(std::move(h), error_code{});
  }
  void do_clear(done_handler h) override {
    log.push_back("clear");
    if (fail) return complete(std::move(h), make_error_code(cf::error::tier_unavailable));
    data.clear();
    complete(std::move(h), error_code{});
  }

 private:
  template <class H, class... Args>
  void complete(H h, Args... args) {
    // Never inside the do_ call: posted to this tier's executor, then
    // dispatched to the handler's.
    asio::post(ex_, [ex = ex_, h = std::move(h), ... a = std::move(args)]() mutable {
      auto hex = asio::get_associated_executor(h, ex);
      asio::dispatch(hex, [h = std::move(h), ... a = std::move(a)]() mutable { std::move(h)(std::move(a)...); });
    });
  }

  asio::any_io_executor ex_;
  std::string name_;
  get_handler held_;
  std::optional<std::string> held_value_;

 public:
  // Completes the held read with what the key held when it was read.
  void release() {
    asio::get_associated_cancellation_slot(held_).clear();
    get_handler h(std::move(held_));
    complete(std::move(h), error_code{}, std::move(held_value_));
  }
};

}  // namespace cftest

#endif
