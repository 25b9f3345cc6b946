// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_SRC_REDIS_EXEC_CANCEL_HPP
#define CACHEFLIGHT_SRC_REDIS_EXEC_CANCEL_HPP

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

}  // namespace cacheflight::redis::detail

#endif
