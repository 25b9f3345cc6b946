// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_CACHEFLIGHT_HPP
#define CACHEFLIGHT_CACHEFLIGHT_HPP

/// The whole public API of the header-only core.
#include <cacheflight/agent.hpp>
#include <cacheflight/batch_loader.hpp>
#include <cacheflight/cache.hpp>
#include <cacheflight/clock.hpp>
#include <cacheflight/error.hpp>
#include <cacheflight/event.hpp>
#include <cacheflight/flight.hpp>
#include <cacheflight/memoize.hpp>
#include <cacheflight/options.hpp>
#include <cacheflight/stats.hpp>
#include <cacheflight/tags.hpp>

#endif
