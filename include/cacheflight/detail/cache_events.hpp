// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_CACHE_EVENTS_HPP
#define CACHEFLIGHT_DETAIL_CACHE_EVENTS_HPP

#include <cacheflight/event.hpp>

#include <string_view>
#include <utility>

namespace cacheflight::detail {

// Hands a cache's events to the user's sink (cache_options::on_event). Shared
// by the memory tier, the tier pipeline and the loads; a sink that throws is
// ignored, as documented, so that reporting never disturbs the cache.
class cache_events {
 public:
  explicit cache_events(cache_event_sink sink) : sink_(std::move(sink)) {}

  explicit operator bool() const noexcept { return static_cast<bool>(sink_); }

  void emit(const cache_event& e) const {
    if (!sink_) return;
    try {
      sink_(e);
    } catch (...) {
      // Documented: a throwing sink does not disturb the cache.
    }
  }

  void emit(cache_event_kind k, std::string_view key) const {
    if (sink_) emit(cache_event{k, key, {}, {}, {}});
  }

 private:
  cache_event_sink sink_;
};

}  // namespace cacheflight::detail

#endif
