// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_STATS_HPP
#define CACHEFLIGHT_STATS_HPP

#include <cacheflight/tier.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cacheflight {

/// One tier's figures, as seen by one cache (see `cache_stats::tiers`).
struct tier_stats {
  std::string name;                 ///< `tier::name()`
  std::uint64_t hits = 0;           ///< misses in memory that this tier answered
  std::uint64_t misses = 0;         ///< lookups that found nothing usable here (corrupt included)
  /// Failed operations: reads and writes (erases included), breaker-open
  /// refusals, and values the codec could not encode (one for each tier).
  std::uint64_t errors = 0;
  std::uint64_t corrupt = 0;        ///< values read back that were not readable (counted as misses too)
  breaker_state breaker = breaker_state::closed;  ///< from `tier::health()`
  std::size_t queued_writes = 0;    ///< from `tier::health()`
  std::uint64_t writes = 0;         ///< from `tier::health()`
  std::uint64_t writes_dropped = 0; ///< from `tier::health()`
  tier_health health{};             ///< `tier::health()` whole (fleet counters included)
};

/// A snapshot of a cache's counters (see `cache::stats`). Counters only grow.
struct cache_stats {
  /// Callers served from memory: a value, fresh or stale, or a cached failure
  /// (negative caching) handed to a caller that takes failures.
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;               ///< callers that found none (every caller, joined loads included)
  double hit_rate = 0;                    ///< hits / (hits + misses), 0 when both are 0
  std::size_t size = 0;                   ///< entries in memory, cached failures included (expired ones excluded)
  std::size_t weight = 0;                 ///< their total weight (their count without a weigher)
  std::uint64_t loads = 0;                ///< loader runs that produced a value
  std::uint64_t load_failures = 0;        ///< loader runs that failed (cancelled runs excluded)
  std::chrono::nanoseconds load_time{};   ///< total run time of the loads and failures
  std::uint64_t coalesced = 0;            ///< callers that joined a load already in flight
  std::uint64_t evictions = 0;            ///< evictions_capacity + evictions_oversized
  std::uint64_t evictions_capacity = 0;   ///< entries evicted for `max_entries` / `max_weight`
  std::uint64_t evictions_oversized = 0;  ///< values refused because their weight alone exceeds the cap
  std::uint64_t expirations = 0;          ///< expired entries removed
  std::size_t loads_in_flight = 0;        ///< keys being loaded now
  /// The first tier's (the L2's) hits, misses and errors; 0 without tiers.
  std::uint64_t l2_hits = 0;
  std::uint64_t l2_misses = 0;
  std::uint64_t l2_errors = 0;
  /// Every tier, in the order the cache consults them.
  std::vector<tier_stats> tiers;
  /// Hits served past their fresh time (stale-while-revalidate), by any read:
  /// a read with a loader starts the reload unless one is running; `peek` and
  /// reads without a loader start none.
  std::uint64_t stale_hits = 0;
  /// Stale hits served after their reload had failed (stale-if-error).
  std::uint64_t stale_after_error = 0;
  /// Background reloads started: for stale reads, early refreshes and refresh-ahead.
  std::uint64_t refreshes = 0;
  std::uint64_t refreshes_succeeded = 0;  ///< background reloads that produced a value
  std::uint64_t refreshes_failed = 0;     ///< background reloads that failed or timed out
  std::uint64_t early_refreshes = 0;      ///< reloads started early by a read of a fresh value (XFetch)
  std::size_t refresh_ahead_keys = 0;     ///< keys being refreshed ahead now
  /// Keys dropped from memory because a tier reported them changed elsewhere
  /// (`redis::tier_options::invalidation`); notices for keys memory did not
  /// hold are not counted here (the tier's `tier_health::invalidations` counts
  /// every notice).
  std::uint64_t invalidations_received = 0;
  /// Times memory was emptied because a tier's invalidation channel was lost
  /// or re-established (changes may have been missed meanwhile).
  std::uint64_t memory_flushes = 0;
};

namespace detail {
// Appends one metric family with one sample: `# HELP`, `# TYPE`, the sample.
inline void prometheus_family(std::string& out, std::string_view prefix, std::string_view labels,
                              std::string_view name, std::string_view type, std::string_view help,
                              const std::string& value) {
  out.append("# HELP ").append(prefix).append("_").append(name).append(" ").append(help).append("\n");
  out.append("# TYPE ").append(prefix).append("_").append(name).append(" ").append(type).append("\n");
  out.append(prefix).append("_").append(name);
  if (!labels.empty()) out.append("{").append(labels).append("}");
  out.append(" ").append(value).append("\n");
}

// A label value as the text format writes it: backslash, double quote and
// line feed escaped.
inline std::string prometheus_label_value(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (const char c : v) {
    if (c == '\\')
      out.append("\\\\");
    else if (c == '"')
      out.append("\\\"");
    else if (c == '\n')
      out.append("\\n");
    else
      out.push_back(c);
  }
  return out;
}
}  // namespace detail

/// Writes `s` in the Prometheus text exposition format (version 0.0.4), one
/// metric family per counter, each named `<prefix>_<counter>`, with
/// `# HELP` and `# TYPE` lines. `labels`, if not empty, is inserted verbatim
/// between braces (for example `cache="users"`). With tiers, the `tier_*`
/// families hold one sample per tier, labelled `tier="<name>"` with the name
/// escaped (`\`, `"` and line feeds); a tier whose name an earlier tier
/// already took is labelled `<name>#2`, then `#3`, ..., so that no two samples
/// share their labels (two Redis tiers: `redis` and `redis#2`).
inline std::string to_prometheus(const cache_stats& s, std::string_view prefix = "cacheflight",
                                 std::string_view labels = {}) {
  std::string out;
  out.reserve(1536);
  auto family = [&](std::string_view name, std::string_view type, std::string_view help, const std::string& value) {
    detail::prometheus_family(out, prefix, labels, name, type, help, value);
  };
  auto u = [](auto v) { return std::to_string(v); };
  family("hits_total", "counter", "Callers served from memory: a value, fresh or stale, or a cached failure.",
         u(s.hits));
  family("misses_total", "counter", "Callers that found nothing in memory to serve them.", u(s.misses));
  family("hit_ratio", "gauge", "Hits divided by hits plus misses.", std::to_string(s.hit_rate));
  family("entries", "gauge", "Entries in memory, cached failures included.", u(s.size));
  family("weight", "gauge", "Total weight of the entries in memory.", u(s.weight));
  family("loads_total", "counter", "Loader runs that produced a value.", u(s.loads));
  family("load_failures_total", "counter", "Loader runs that failed.", u(s.load_failures));
  family("load_seconds_total", "counter", "Total run time of loader runs.",
         std::to_string(std::chrono::duration<double>(s.load_time).count()));
  family("coalesced_total", "counter", "Callers that joined a load already in flight.", u(s.coalesced));
  family("evictions_total", "counter", "Entries evicted or refused for size.", u(s.evictions));
  family("evictions_capacity_total", "counter", "Entries evicted to respect the size cap.", u(s.evictions_capacity));
  family("evictions_oversized_total", "counter", "Values refused because they alone exceed the size cap.",
         u(s.evictions_oversized));
  family("expirations_total", "counter", "Expired entries removed.", u(s.expirations));
  family("loads_in_flight", "gauge", "Keys being loaded now.", u(s.loads_in_flight));
  family("stale_hits_total", "counter", "Hits served past their fresh time.", u(s.stale_hits));
  family("stale_after_error_total", "counter", "Stale hits served after their reload failed.",
         u(s.stale_after_error));
  family("refreshes_total", "counter", "Background reloads started.", u(s.refreshes));
  family("refreshes_succeeded_total", "counter", "Background reloads that produced a value.",
         u(s.refreshes_succeeded));
  family("refreshes_failed_total", "counter", "Background reloads that failed or timed out.", u(s.refreshes_failed));
  family("early_refreshes_total", "counter", "Reloads started early by a read of a fresh value.",
         u(s.early_refreshes));
  family("refresh_ahead_keys", "gauge", "Keys being refreshed ahead.", u(s.refresh_ahead_keys));
  family("invalidations_received_total", "counter", "Keys dropped from memory on a tier's notice of a change elsewhere.",
         u(s.invalidations_received));
  family("memory_flushes_total", "counter", "Times memory was emptied because changes may have been missed.",
         u(s.memory_flushes));
  if (s.tiers.empty()) return out;
  // Per-tier families: one sample per tier, labelled tier="<name>" (see above).
  // Escaping is one to one and leaves "#2" as it is, so the labels can be
  // told apart as escaped.
  std::vector<std::string> tier_labels;
  tier_labels.reserve(s.tiers.size());
  for (const tier_stats& t : s.tiers) {
    const std::string escaped = detail::prometheus_label_value(t.name);
    std::string v = escaped;
    for (std::size_t k = 2; std::find(tier_labels.begin(), tier_labels.end(), v) != tier_labels.end(); ++k)
      v = escaped + "#" + std::to_string(k);
    tier_labels.push_back(std::move(v));
  }
  auto tier_family = [&](std::string_view name, std::string_view type, std::string_view help, auto value) {
    out.append("# HELP ").append(prefix).append("_").append(name).append(" ").append(help).append("\n");
    out.append("# TYPE ").append(prefix).append("_").append(name).append(" ").append(type).append("\n");
    for (std::size_t i = 0; i < s.tiers.size(); ++i) {
      out.append(prefix).append("_").append(name).append("{");
      if (!labels.empty()) out.append(labels).append(",");
      out.append("tier=\"").append(tier_labels[i]).append("\"} ").append(value(s.tiers[i])).append("\n");
    }
  };
  tier_family("tier_hits_total", "counter", "Memory misses answered by the tier.", [&](auto& t) { return u(t.hits); });
  tier_family("tier_misses_total", "counter", "Tier lookups that found nothing usable.",
              [&](auto& t) { return u(t.misses); });
  tier_family("tier_errors_total", "counter", "Failed tier operations.", [&](auto& t) { return u(t.errors); });
  tier_family("tier_corrupt_total", "counter", "Unreadable values read from the tier.",
              [&](auto& t) { return u(t.corrupt); });
  tier_family("tier_breaker_open", "gauge", "1 while the tier's circuit breaker is not closed.",
              [&](auto& t) { return std::string(t.breaker == breaker_state::closed ? "0" : "1"); });
  tier_family("tier_queued_writes", "gauge", "Writes waiting to be sent to the tier.",
              [&](auto& t) { return u(t.queued_writes); });
  tier_family("tier_writes_dropped_total", "counter", "Writes the tier gave up.",
              [&](auto& t) { return u(t.writes_dropped); });
  return out;
}

}  // namespace cacheflight

#endif
