// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_SRC_REDIS_EXEC_CANCEL_HPP
#define CACHEFLIGHT_SRC_REDIS_EXEC_CANCEL_HPP

#include <cacheflight/detail/block_cache.hpp>

#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/post.hpp>

#include <atomic>
#include <cstdint>
#include <memory>

namespace cacheflight::redis::detail {

// A command's cancellation, hooked to the caller's slot in the initiating
// function (where the slot is used), and handed to the strand from there.
struct exec_cancel {
  std::atomic<bool> requested{false};
  // Set on the strand once the command is queued.
  std::weak_ptr<void> conn;
  void (*abandon)(const std::shared_ptr<void>& conn, std::uint64_t id) = nullptr;
  std::uint64_t id = 0;
};

// Hooks a connected `slot` to a new command cancellation, in the caller's
// context (where the slot is used), so that a cancellation emitted as soon as
// the initiating function returns is seen: the command is then dropped before
// it is queued, or abandoned on `strand` (the connection's) once it is.
template <class Strand>
std::shared_ptr<exec_cancel> hook_cancel(boost::asio::cancellation_slot slot, const Strand& strand) {
  auto c = std::allocate_shared<exec_cancel>(cacheflight::detail::block_allocator<exec_cancel>{});
  slot.assign([c, strand](boost::asio::cancellation_type_t) {
    c->requested.store(true, std::memory_order_release);
    boost::asio::post(strand, [c] {
      if (auto conn = c->conn.lock()) c->abandon(conn, c->id);
    });
  });
  return c;
}

}  // namespace cacheflight::redis::detail

#endif
