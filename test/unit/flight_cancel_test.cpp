// cf::flight: per-waiter timeouts, cancellation (one waiter, a key, everything),
// abandonment, stale work and re-entrancy.
#include "test_support.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <thread>

using namespace cftest;

namespace {

using mflight = cf::flight<int, cf::manual_clock>;
using K = cf::event_kind;

class FlightCancel : public ::testing::Test {
 protected:
  void SetUp() override { cf::manual_clock::reset(); }
  asio::io_context io;
  event_log log;
};

TEST_F(FlightCancel, TimeoutIsPerWaiterAndAJoinersTimeoutIsHonoured) {
  mflight f{io, cf::flight_options{.on_event = log.sink()}};
  gate g{io.get_executor()};
  outcome<> first, patient, joiner;
  f.async_run("k", cf::run_options{.timeout = 100ms}, g.fn(), first.handler());
  f.async_run("k", g.fn(), patient.handler());
  f.async_run("k", cf::run_options{.timeout = 50ms}, g.fn(), joiner.handler());
  run_until(io, [&] { return g.calls() == 1; });

  cf::manual_clock::advance(50ms);
  run_until(io, [&] { return joiner.done; });
  EXPECT_EQ(joiner.code(), cf::error::timed_out);
  EXPECT_FALSE(first.done);

  cf::manual_clock::advance(50ms);
  run_until(io, [&] { return first.done; });
  EXPECT_EQ(first.code(), cf::error::timed_out);
  EXPECT_FALSE(patient.done);
  EXPECT_TRUE(f.has("k"));

  g.resolve(8);
  drain(io);
  EXPECT_EQ(patient.value, 8);
  EXPECT_FALSE(patient.error);
  EXPECT_EQ(g.cancelled(), 0);
  EXPECT_EQ(log.count(K::task_timed_out), 0u);
  EXPECT_EQ(log.count(K::task_resolved), 1u);
}

TEST_F(FlightCancel, ACompletionDestroyedUnrunWithItsContextDestroysItsHandler) {
  auto token = std::make_shared<int>(0);
  {
    asio::io_context ctx;
    gate g{ctx.get_executor()};
    {
      mflight f{ctx};
      f.async_run("k", g.fn(), [token](std::exception_ptr, int) {});
      run_until(ctx, [&] { return g.calls() == 1; });
      ctx.stop();
      f.clear();  // the waiter's completion is posted to the stopped context
    }
    EXPECT_EQ(token.use_count(), 2);  // queued, not run
  }
  EXPECT_EQ(token.use_count(), 1);  // destroyed with the context's queue, never called
}

// The waiter, its timer and the timer's wait come from the handler's
// allocator: every block is given back when the context is destroyed with the
// waiter's completion and the timer's wait still queued.
TEST_F(FlightCancel, AWaiterWithATimeoutDestroyedUnrunWithItsContextFreesItsMemory) {
  for (const bool by_option : {true, false}) {
    SCOPED_TRACE(by_option ? "default_timeout" : "run_options::timeout");
    allocation_counts blocks;
    auto token = std::make_shared<int>(0);
    asio::cancellation_signal cancel;
    {
      asio::io_context ctx;
      gate g{ctx.get_executor()};
      {
        mflight f{ctx, cf::flight_options{.default_timeout = by_option ? std::chrono::nanoseconds(1h)
                                                                       : cf::no_timeout}};
        auto h = asio::bind_allocator(counting_allocator<void>(&blocks),
                                      asio::bind_cancellation_slot(cancel.slot(), [token](std::exception_ptr, int) {}));
        if (by_option)
          f.async_run("k", g.fn(), std::move(h));
        else
          f.async_run("k", cf::run_options{.timeout = 1h}, g.fn(), std::move(h));
        run_until(ctx, [&] { return g.calls() == 1; });
        EXPECT_GE(blocks.live, 3);  // the waiter, its timer and the timer's wait
        ctx.stop();
      }  // the flight's destruction posts the waiter's completion to the stopped context
      EXPECT_EQ(token.use_count(), 2);
    }
    EXPECT_EQ(blocks.live, 0);
    EXPECT_EQ(token.use_count(), 1);
  }
}

TEST_F(FlightCancel, WhenEveryWaiterTimesOutTheWorkIsCancelledOnce) {
  mflight f{io, cf::flight_options{.default_timeout = 100ms, .on_event = log.sink()}};
  gate g{io.get_executor()};
  outcome<> a, b;
  f.async_run("k", g.fn(), a.handler());
  f.async_run("k", g.fn(), b.handler());
  run_until(io, [&] { return g.calls() == 1; });
  cf::manual_clock::advance(30ms);
  cf::manual_clock::advance(70ms);
  run_until(io, [&] { return a.done && b.done && g.cancelled() == 1; });
  EXPECT_EQ(a.code(), cf::error::timed_out);
  EXPECT_EQ(b.code(), cf::error::timed_out);
  EXPECT_EQ(log.count(K::task_timed_out), 1u);
  EXPECT_EQ(log.count(K::task_cancelled), 0u);
  EXPECT_EQ(log.events.back().duration, 100ms);
  EXPECT_FALSE(f.has("k"));
  EXPECT_EQ(f.size(), 0u);
  drain(io);
}

TEST_F(FlightCancel, TimeoutAndCancellationTogetherReportTaskCancelled) {
  mflight f{io, cf::flight_options{.on_event = log.sink()}};
  gate g{io.get_executor()};
  asio::cancellation_signal sig;
  outcome<> timed, cancelled;
  f.async_run("k", cf::run_options{.timeout = 10ms}, g.fn(), timed.handler());
  f.async_run("k", g.fn(), asio::bind_cancellation_slot(sig.slot(), cancelled.handler()));
  run_until(io, [&] { return g.calls() == 1; });
  sig.emit(asio::cancellation_type::terminal);
  cf::manual_clock::advance(10ms);
  run_until(io, [&] { return timed.done && cancelled.done && g.cancelled() == 1; });
  EXPECT_EQ(log.count(K::task_cancelled), 1u);
  EXPECT_EQ(log.count(K::task_timed_out), 0u);
}

class FlightCancelType : public FlightCancel, public ::testing::WithParamInterface<asio::cancellation_type> {};

TEST_P(FlightCancelType, OneWaiterCancelledThroughItsSlotLeavesTheOthersWaiting) {
  cf::flight<int> f{io, cf::flight_options{.on_event = log.sink()}};
  gate g{io.get_executor()};
  asio::cancellation_signal sig;
  outcome<> leaving, staying1, staying2;
  f.async_run("k", g.fn(), staying1.handler());
  f.async_run("k", g.fn(), asio::bind_cancellation_slot(sig.slot(), leaving.handler()));
  f.async_run("k", g.fn(), staying2.handler());
  run_until(io, [&] { return g.calls() == 1; });
  sig.emit(GetParam());
  EXPECT_FALSE(leaving.done);  // completion is posted, not run inside emit()
  run_until(io, [&] { return leaving.done; });
  EXPECT_EQ(leaving.code(), asio::error::operation_aborted);
  EXPECT_FALSE(staying1.done);
  EXPECT_FALSE(staying2.done);
  g.resolve(3);
  drain(io);
  EXPECT_EQ(staying1.value, 3);
  EXPECT_EQ(staying2.value, 3);
  EXPECT_EQ(g.cancelled(), 0);
  EXPECT_EQ(leaving.completions, 1);
  // A late emit on the slot after completion is harmless.
  sig.emit(GetParam());
  EXPECT_EQ(log.count(K::task_resolved), 1u);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, FlightCancelType,
                         ::testing::Values(asio::cancellation_type::terminal, asio::cancellation_type::partial,
                                           asio::cancellation_type::total));

TEST_F(FlightCancel, WhenTheLastWaiterCancelsTheWorkIsCancelledAndTheKeyFreed) {
  cf::flight<int> f{io, cf::flight_options{.on_event = log.sink()}};
  gate g{io.get_executor()};
  asio::cancellation_signal s1, s2;
  outcome<> a, b;
  f.async_run("k", g.fn(), asio::bind_cancellation_slot(s1.slot(), a.handler()));
  f.async_run("k", g.fn(), asio::bind_cancellation_slot(s2.slot(), b.handler()));
  run_until(io, [&] { return g.calls() == 1; });
  s1.emit(asio::cancellation_type::terminal);
  EXPECT_TRUE(f.has("k"));
  s2.emit(asio::cancellation_type::terminal);
  EXPECT_FALSE(f.has("k"));  // free at once
  run_until(io, [&] { return a.done && b.done && g.cancelled() == 1; });
  EXPECT_EQ(log.count(K::task_cancelled), 1u);
  EXPECT_EQ(f.size(), 0u);

  // The next call starts fresh work.
  gate g2{io.get_executor()};
  outcome<> c;
  f.async_run("k", g2.fn(), c.handler());
  run_until(io, [&] { return g2.calls() == 1; });
  g2.resolve(5);
  drain(io);
  EXPECT_EQ(c.value, 5);
}

TEST_F(FlightCancel, AbandonPolicyFinishLetsTheWorkCompleteAndNewCallersJoin) {
  cf::flight<int> f{io, cf::flight_options{.on_event = log.sink(), .on_abandon = cf::abandon_policy::finish}};
  gate g{io.get_executor()};
  asio::cancellation_signal sig;
  outcome<> gone, late;
  f.async_run("k", g.fn(), asio::bind_cancellation_slot(sig.slot(), gone.handler()));
  run_until(io, [&] { return g.calls() == 1; });
  sig.emit(asio::cancellation_type::terminal);
  run_until(io, [&] { return gone.done; });
  EXPECT_EQ(gone.code(), asio::error::operation_aborted);
  EXPECT_TRUE(f.has("k"));
  f.async_run("k", g.fn(), late.handler());
  g.resolve(12);
  drain(io);
  EXPECT_EQ(late.value, 12);
  EXPECT_EQ(g.calls(), 1);
  EXPECT_EQ(g.cancelled(), 0);
  EXPECT_EQ(log.count(K::task_resolved), 1u);
  EXPECT_EQ(log.count(K::task_cancelled), 0u);
  EXPECT_EQ(f.size(), 0u);
}

TEST_F(FlightCancel, CancelKeyCompletesEveryWaiterWithCancelled) {
  cf::flight<int> f{io, cf::flight_options{.on_event = log.sink()}};
  gate g{io.get_executor()}, other{io.get_executor()};
  std::vector<outcome<>> out(4);
  outcome<> untouched;
  for (auto& o : out) f.async_run("k", g.fn(), o.handler());
  f.async_run("other", other.fn(), untouched.handler());
  run_until(io, [&] { return g.calls() == 1 && other.calls() == 1; });
  EXPECT_TRUE(f.cancel("k"));
  EXPECT_FALSE(f.cancel("k"));
  EXPECT_FALSE(f.cancel("never"));
  EXPECT_FALSE(f.has("k"));
  run_until(io, [&] { return g.cancelled() == 1; });
  for (auto& o : out) {
    run_until(io, [&] { return o.done; });
    EXPECT_EQ(o.code(), cf::error::cancelled);
  }
  EXPECT_FALSE(untouched.done);
  EXPECT_EQ(log.count(K::task_cancelled), 1u);
  other.resolve(1);
  drain(io);
  EXPECT_EQ(untouched.value, 1);
}

TEST_F(FlightCancel, ClearCancelsEveryKey) {
  cf::flight<int> f{io, cf::flight_options{.on_event = log.sink(), .shards = 4}};
  gate g{io.get_executor()};
  std::vector<outcome<>> out(6);
  for (std::size_t i = 0; i < out.size(); ++i) f.async_run("k" + std::to_string(i % 3), g.fn(), out[i].handler());
  run_until(io, [&] { return g.calls() == 3; });
  EXPECT_EQ(f.clear(), 3u);
  EXPECT_EQ(f.size(), 0u);
  drain(io);
  for (auto& o : out) EXPECT_EQ(o.code(), cf::error::cancelled);
  EXPECT_EQ(g.cancelled(), 3);
  EXPECT_EQ(log.count(K::task_cancelled), 3u);
}

TEST_F(FlightCancel, CancelBeforeTheWorkStartsLeavesNobodyHanging) {
  cf::flight<int> f{io, cf::flight_options{.on_event = log.sink()}};
  gate g{io.get_executor()};
  outcome<> o;
  f.async_run("k", g.fn(), o.handler());
  EXPECT_TRUE(f.cancel("k"));  // the work's first step has not run yet
  io.run();                     // returns: nothing is left waiting
  EXPECT_EQ(o.code(), cf::error::cancelled);
  EXPECT_EQ(g.calls(), 0);
  EXPECT_EQ(log.count(K::task_started), 0u);
  EXPECT_EQ(log.count(K::task_cancelled), 1u);
}

TEST_F(FlightCancel, StaleWorkFinishingAfterCancelDoesNotTouchTheNewEntry) {
  cf::flight<int> f{io, cf::flight_options{.on_event = log.sink()}};
  // Work that ignores cancellation, completed by hand.
  using sig_t = void(boost::system::error_code, int);
  std::vector<std::optional<asio::any_completion_handler<sig_t>>> pending;
  pending.reserve(4);
  int calls = 0;
  auto op = [&](auto&& token) {
    ++calls;
    return asio::async_initiate<decltype(token), sig_t>(
        [&](auto h) {
          pending.emplace_back();
          pending.back().emplace(std::move(h));
        },
        token);
  };
  outcome<> old_waiter, new_waiter;
  f.async_run("k", op, old_waiter.handler());
  run_until(io, [&] { return calls == 1; });
  f.cancel("k");
  f.async_run("k", op, new_waiter.handler());
  run_until(io, [&] { return calls == 2 && old_waiter.done; });

  std::move(*pending[0])(boost::system::error_code{}, 100);  // the stale work finishes
  io.poll();
  EXPECT_TRUE(f.has("k"));
  EXPECT_FALSE(new_waiter.done);

  std::move(*pending[1])(boost::system::error_code{}, 200);
  drain(io);
  EXPECT_EQ(new_waiter.value, 200);
  EXPECT_EQ(old_waiter.code(), cf::error::cancelled);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(log.count(K::task_resolved), 1u);
  EXPECT_EQ(f.size(), 0u);
}

TEST_F(FlightCancel, HandlerStartingTheSameKeyGetsAFreshExecution) {
  cf::flight<int> f{io};
  int calls = 0;
  auto fn = [&]() -> asio::awaitable<int> { co_return ++calls; };
  outcome<> second;
  int first_value = 0;
  f.async_run("k", fn, [&](std::exception_ptr, int v) {
    first_value = v;
    f.async_run("k", fn, second.handler());
  });
  drain(io);
  EXPECT_EQ(first_value, 1);
  EXPECT_EQ(second.value, 2);
  EXPECT_EQ(calls, 2);
}

TEST_F(FlightCancel, HandlerCallingCancelAndClearIsSafe) {
  cf::flight<int> f{io};
  gate other{io.get_executor()};
  outcome<> other_waiter;
  f.async_run("other", other.fn(), other_waiter.handler());
  std::vector<outcome<>> rest(3);
  bool cancel_result = true;
  std::size_t cleared = 0;
  f.async_run("k", []() -> asio::awaitable<int> { co_return 1; }, [&](std::exception_ptr, int) {
    cancel_result = f.cancel("k");  // already settled
    cleared = f.clear();            // cancels "other" from inside a handler
  });
  for (auto& o : rest) f.async_run("k", []() -> asio::awaitable<int> { co_return 1; }, o.handler());
  drain(io);
  EXPECT_FALSE(cancel_result);
  EXPECT_EQ(cleared, 1u);
  for (auto& o : rest) EXPECT_EQ(o.value, 1);
  EXPECT_EQ(other_waiter.code(), cf::error::cancelled);
  EXPECT_EQ(f.size(), 0u);
}

TEST_F(FlightCancel, AwaitableOrTimerReturnsWhenTheTimerFiresAndCancelsTheWork) {
  using namespace asio::experimental::awaitable_operators;
  cf::flight<int> f{io, cf::flight_options{.on_event = log.sink()}};
  gate g{io.get_executor()};
  std::optional<std::size_t> winner;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        asio::basic_waitable_timer<cf::manual_clock> t(co_await asio::this_coro::executor, 20ms);
        auto r = co_await (f.async_run("k", g.fn(), asio::use_awaitable) || t.async_wait(asio::use_awaitable));
        winner = r.index();
      },
      asio::detached);
  run_until(io, [&] { return g.calls() == 1; });
  cf::manual_clock::advance(20ms);
  run_until(io, [&] { return winner.has_value() && g.cancelled() == 1; });
  EXPECT_EQ(*winner, 1u);
  EXPECT_EQ(f.size(), 0u);
  EXPECT_EQ(log.count(K::task_cancelled), 1u);
  drain(io);
}

TEST_F(FlightCancel, CoroutineWaiterCancelledByItsParentGetsOperationAborted) {
  cf::flight<int> f{io};
  gate g{io.get_executor()};
  asio::cancellation_signal sig;
  std::string what;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        try {
          co_await f.async_run("k", g.fn(), asio::use_awaitable);
        } catch (const boost::system::system_error& e) {
          what = e.code() == asio::error::operation_aborted ? "aborted" : e.what();
        }
      },
      asio::bind_cancellation_slot(sig.slot(), asio::detached));
  run_until(io, [&] { return g.calls() == 1; });
  sig.emit(asio::cancellation_type::terminal);
  drain(io);
  EXPECT_EQ(what, "aborted");
  EXPECT_EQ(g.cancelled(), 1);
}

}  // namespace

namespace {

// An io_context built with concurrency hint 1 runs the work without a strand:
// the same guarantees must hold.
class FlightSingleThreaded : public ::testing::Test {
 protected:
  asio::io_context io{1};
  event_log log;
};

TEST_F(FlightSingleThreaded, CoalescesAndCancelsAbandonedWork) {
  cf::flight<int> f{io, cf::flight_options{.on_event = log.sink()}};
  gate g{io.get_executor()};
  std::vector<outcome<>> out(10);
  for (auto& o : out) f.async_run("k", g.fn(), o.handler());
  run_until(io, [&] { return g.calls() == 1; });
  g.resolve(2);
  drain(io);
  for (auto& o : out) EXPECT_EQ(o.value, 2);

  gate g2{io.get_executor()};
  asio::cancellation_signal sig;
  outcome<> leaving;
  f.async_run("k", g2.fn(), asio::bind_cancellation_slot(sig.slot(), leaving.handler()));
  run_until(io, [&] { return g2.calls() == 1; });
  sig.emit(asio::cancellation_type::terminal);
  run_until(io, [&] { return leaving.done && g2.cancelled() == 1; });
  EXPECT_EQ(leaving.code(), asio::error::operation_aborted);
  EXPECT_EQ(f.size(), 0u);
  EXPECT_EQ(log.count(K::task_cancelled), 1u);
}

TEST_F(FlightSingleThreaded, CancelFromAnotherThreadIsSerialisedWithTheWork) {
  cf::flight<int> f{io};
  gate g{io.get_executor()};
  outcome<> o;
  f.async_run("k", g.fn(), o.handler());
  run_until(io, [&] { return g.calls() == 1; });
  std::thread([&] { EXPECT_TRUE(f.cancel("k")); }).join();
  run_until(io, [&] { return o.done && g.cancelled() == 1; });
  EXPECT_EQ(o.code(), cf::error::cancelled);
}

TEST_F(FlightSingleThreaded, HandlerBoundToAStrandRunsOnThatStrand) {
  cf::flight<int> f{io};
  auto strand = asio::make_strand(io);
  bool on_strand = false;
  f.async_run("k", []() -> asio::awaitable<int> { co_return 1; },
              asio::bind_executor(strand, [&](std::exception_ptr, int) { on_strand = strand.running_in_this_thread(); }));
  drain(io);
  EXPECT_TRUE(on_strand);
}

}  // namespace
