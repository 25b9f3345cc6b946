// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_CPU_RELAX_HPP
#define CACHEFLIGHT_DETAIL_CPU_RELAX_HPP

namespace cacheflight::detail {

// One iteration of a spin-wait: tells the core that this thread only reads a
// line another thread will change, so that it yields the core's resources to
// its sibling and leaves the wait without a memory-order stall. A no-op where
// the architecture has no such hint.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

}  // namespace cacheflight::detail

#endif
