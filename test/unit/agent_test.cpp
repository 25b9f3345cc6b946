// The agent layer: read tools (global and per session), write tools that
// invalidate resources, sessions, the loop guard and the counters.
#include <cacheflight/agent.hpp>

#include "memory_tier.hpp"
#include "test_support.hpp"

#include <thread>

using namespace cftest;

namespace {

// The error code an awaitable fails with (none if it succeeds).
template <class T>
boost::system::error_code failure_of(asio::io_context& io, asio::awaitable<T> a, std::string* message = nullptr) {
  try {
    await(io, std::move(a));
  } catch (const boost::system::system_error& e) {
    if (message) *message = e.what();
    return e.code();
  }
  return {};
}

class Agent : public ::testing::Test {
 protected:
  asio::io_context io;
  cf::cache<std::string> results{io};
  std::map<std::string, int> runs;  // tool -> runs
  int cart_total = 0;

  auto counting(std::string tool) {
    return [this, tool](std::string arg) -> asio::awaitable<std::string> {
      ++runs[tool];
      co_return tool + ":" + arg + ":" + std::to_string(cart_total);
    };
  }
};

TEST_F(Agent, FirstCallLoadsSecondHits) {
  cf::agent_cache<std::string> agent{results};
  auto search = agent.read_tool<std::string>("search", counting("search"));
  auto s = agent.open_session("research");
  EXPECT_EQ(await(io, search(s, "shoes")), "search:shoes:0");
  EXPECT_EQ(await(io, search(s, "shoes")), "search:shoes:0");
  EXPECT_EQ(runs["search"], 1);
  EXPECT_EQ(await(io, search("shoes")), "search:shoes:0");  // global: outside the session too
  EXPECT_EQ(runs["search"], 1);
  auto st = s.stats();
  EXPECT_EQ(st.calls, 2u);
  EXPECT_EQ(st.misses, 1u);
  EXPECT_EQ(st.hits, 1u);
  auto g = agent.stats();
  EXPECT_EQ(g.calls, 3u);
  EXPECT_EQ(g.hits, 2u);
  EXPECT_DOUBLE_EQ(g.hit_rate(), 2.0 / 3.0);
}

TEST_F(Agent, AWriteToolInvalidatesItsResourceBeforeItRunsEvenWhenItThrows) {
  cf::agent_cache<std::string> agent{results};
  auto get_cart = agent.read_tool<std::string>("get_cart", counting("get_cart"),
                                               {.resources = {"cart"}, .scope = cf::tool_scope::session});
  auto get_catalog = agent.read_tool<std::string>("catalog", counting("catalog"), {.resources = {"catalog"}});
  std::vector<std::size_t> sizes;
  auto add = agent.write_tool<int, std::string, int>(
      "add_to_cart",
      [&](std::string, int n) -> asio::awaitable<int> {
        sizes.push_back(results.size());
        if (n < 0) throw test_error("negative quantity");
        cart_total += n;
        co_return cart_total;
      },
      {.invalidates = {"cart"}});
  auto s = agent.open_session("shopper");
  EXPECT_EQ(await(io, get_cart(s, "alice")), "get_cart:alice:0");
  await(io, get_catalog(s, "all"));
  EXPECT_EQ(await(io, add(s, "apple", 3)), 3);
  EXPECT_EQ(sizes.back(), 1u);  // the cart entry was gone when the tool ran; the catalog stayed
  EXPECT_EQ(await(io, get_cart(s, "alice")), "get_cart:alice:3");  // the re-read sees the new total
  try {
    await(io, add(s, "pear", -1));
    ADD_FAILURE() << "the tool's exception was lost";
  } catch (const test_error& e) {
    EXPECT_STREQ(e.what(), "negative quantity");
  }
  EXPECT_EQ(sizes.back(), 1u);  // invalidated before the failing run too
  await(io, get_cart(s, "alice"));
  await(io, get_catalog(s, "all"));
  EXPECT_EQ(runs["get_cart"], 3);
  EXPECT_EQ(runs["catalog"], 1);
  EXPECT_EQ(s.stats().invalidations, 2u);
  EXPECT_EQ(agent.stats().invalidations, 2u);
}

TEST_F(Agent, AWriteToolWhoseInvalidationFailsDoesNotRunAndCountsTheAttempt) {
  auto store = std::make_shared<memory_tier>(io.get_executor());
  auto reg = std::make_shared<cf::tag_registry>(io.get_executor(), cf::tag_options{.store = store});
  cf::agent_cache<std::string> agent{results, {.registry = reg}};
  int ran = 0;
  auto edit = agent.write_tool<int, std::string>(
      "edit",
      [&](std::string) -> asio::awaitable<int> {
        ++ran;
        co_return 1;
      },
      {.invalidates = {"notes", "index"}});
  auto s = agent.open_session("writer");
  EXPECT_EQ(await(io, edit(s, "a")), 1);
  EXPECT_EQ(agent.stats().invalidations, 2u);
  store->fail = true;
  EXPECT_EQ(failure_of(io, edit(s, "b")), cf::error::not_connected);  // the store's failure
  EXPECT_EQ(ran, 1);  // the tool did not run
  EXPECT_EQ(agent.stats().invalidations, 4u);
  EXPECT_EQ(s.stats().invalidations, 4u);
}

TEST_F(Agent, SessionsNeverShareEntriesAndTheirEntriesEndWithThem) {
  cf::agent_cache<std::string> agent{results};
  auto ticket = agent.read_tool<std::string>("get_ticket", counting("ticket"), {.scope = cf::tool_scope::session});
  auto kb = agent.read_tool<std::string>("kb", counting("kb"));
  auto a = agent.open_session("support");
  auto b = agent.open_session("support");  // the same name, another session
  EXPECT_NE(a.id(), b.id());
  await(io, ticket(a, "T-1"));
  await(io, ticket(b, "T-1"));
  await(io, ticket(a, "T-1"));
  await(io, kb(a, "reset password"));
  await(io, kb(b, "reset password"));
  EXPECT_EQ(runs["ticket"], 2);  // one per session
  EXPECT_EQ(runs["kb"], 1);      // global entries stay shared
  EXPECT_EQ(results.size(), 3u);
  await(io, a.end());
  EXPECT_FALSE(a.active());
  EXPECT_EQ(results.size(), 2u);  // a's ticket is gone, b's and the global one stay
  EXPECT_EQ(failure_of(io, ticket(a, "T-1")), cf::error::no_session);
  EXPECT_EQ(failure_of(io, ticket("T-1")), cf::error::no_session);  // session-scoped, no session
  {
    auto c = agent.open_session("support");
    await(io, ticket(c, "T-2"));
    EXPECT_EQ(results.size(), 3u);
  }  // destroyed: its entries leave memory at once
  EXPECT_EQ(results.size(), 2u);
  await(io, ticket(b, "T-1"));
  EXPECT_EQ(runs["ticket"], 3);
  auto g = agent.stats();
  EXPECT_EQ(g.sessions_opened, 3u);
  EXPECT_EQ(g.sessions_ended, 2u);
}

TEST_F(Agent, EndingASessionErasesItsEntriesFromTheTiers) {
  auto tier = std::make_shared<memory_tier>(io.get_executor());
  cf::cache<std::string> tiered{io, {.tiers = {tier}}};
  cf::agent_cache<std::string> agent{tiered};
  auto ticket = agent.read_tool<std::string>("get_ticket", counting("ticket"), {.scope = cf::tool_scope::session});
  auto s = agent.open_session("support");
  await(io, ticket(s, "T-1"));
  ASSERT_EQ(tier->data.size(), 1u);
  EXPECT_NE(tier->data.begin()->first.find(s.id()), std::string::npos);
  await(io, s.end());
  EXPECT_TRUE(tier->data.empty());
}

TEST_F(Agent, EndedSessionsFreeTheirRememberedKeys) {
  auto reg = std::make_shared<cf::tag_registry>(io.get_executor(), cf::tag_options{.max_tracked = 4});
  cf::agent_cache<std::string> agent{results, {.registry = reg}};
  auto note = agent.read_tool<std::string>("note", counting("note"),
                                           {.resources = {"notes"}, .scope = cf::tool_scope::session});
  for (int i = 0; i < 10; ++i) {
    auto s = agent.open_session("s");
    await(io, note(s, "n"));
    EXPECT_EQ(results.size(), 1u);
    await(io, s.end());
    EXPECT_EQ(results.size(), 0u) << i;
  }
  EXPECT_EQ(reg->stats().tracked_keys, 0u);
}

TEST_F(Agent, TheFourthIdenticalCallOverALimitOfThreeIsRefused) {
  std::vector<cf::loop_report> reports;
  cf::agent_cache<std::string> agent{results,
                                     {.loop_guard = {.max_identical_calls = 3},
                                      .on_loop = [&](const cf::loop_report& r) { reports.push_back(r); }}};
  auto search = agent.read_tool<std::string>("search", counting("search"));
  auto s = agent.open_session("research");
  for (int i = 0; i < 3; ++i) await(io, search(s, "llm caching"));
  std::string message;
  EXPECT_EQ(failure_of(io, search(s, "llm caching"), &message), cf::error::loop_detected);
  EXPECT_NE(message.find(R"(search("llm caching") called 4 times)"), std::string::npos) << message;
  EXPECT_EQ(failure_of(io, search(s, "another query")), boost::system::error_code{});  // other calls go on
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].kind, cf::loop_kind::identical_calls);
  EXPECT_EQ(reports[0].session, "research");
  EXPECT_EQ(s.stats().loop_detections, 1u);
  EXPECT_EQ(agent.stats().loop_detections, 1u);
  EXPECT_EQ(runs["search"], 2);
  // Another session has its own count.
  auto t = agent.open_session("research");
  EXPECT_EQ(failure_of(io, search(t, "llm caching")), boost::system::error_code{});
}

TEST_F(Agent, AnOscillationIsReportedAsACycle) {
  std::vector<cf::loop_report> reports;
  cf::agent_cache<std::string> agent{results, {.on_loop = [&](const cf::loop_report& r) { reports.push_back(r); }}};
  auto check = agent.read_tool<std::string>("check_stock", counting("check"), {.resources = {"stock"}});
  auto update = agent.write_tool<int, std::string>(
      "update_stock", [](std::string) -> asio::awaitable<int> { co_return 1; }, {.invalidates = {"stock"}});
  auto s = agent.open_session("inventory");
  await(io, check(s, "widget"));
  await(io, update(s, "widget"));
  await(io, check(s, "widget"));
  std::string message;
  EXPECT_EQ(failure_of(io, update(s, "widget"), &message), cf::error::loop_detected);
  EXPECT_NE(message.find(R"(cycle check_stock("widget") -> update_stock("widget") repeated 2 times)"),
            std::string::npos)
      << message;
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].kind, cf::loop_kind::cycle);
  EXPECT_EQ(reports[0].cycle, (std::vector<std::string>{R"(check_stock("widget"))", R"(update_stock("widget"))"}));
  // A longer period: A B C A B C.
  auto t = agent.open_session("inventory", cf::loop_guard_options{.max_identical_calls = 0});
  for (const char* x : {"a", "b", "c", "a", "b"}) await(io, check(t, x));
  EXPECT_EQ(failure_of(io, check(t, "c")), cf::error::loop_detected);
  EXPECT_EQ(reports.back().cycle.size(), 3u);
  // Repeating one call is not a cycle (that is the identical-calls rule).
  auto u = agent.open_session("inventory", cf::loop_guard_options{.max_identical_calls = 0});
  for (int i = 0; i < 8; ++i) EXPECT_EQ(failure_of(io, check(u, "x")), boost::system::error_code{});
}

TEST_F(Agent, TooManyCallsInASession) {
  cf::agent_cache<std::string> agent{results, {.loop_guard = {.max_identical_calls = 0, .max_calls = 5}}};
  auto search = agent.read_tool<std::string>("search", counting("search"));
  auto s = agent.open_session("chatty");
  for (int i = 0; i < 5; ++i) await(io, search(s, std::to_string(i)));
  std::string message;
  EXPECT_EQ(failure_of(io, search(s, "5"), &message), cf::error::loop_detected);
  EXPECT_NE(message.find("is call 6, more than the limit of 5"), std::string::npos) << message;
}

TEST_F(Agent, WarnLetsTheCallThroughAndShortCircuitAnswersFromMemory) {
  std::vector<cf::loop_report> reports;
  cf::agent_cache<std::string> agent{results, {.loop_guard = {.max_identical_calls = 1, .policy = cf::loop_policy::warn},
                                               .on_loop = [&](const cf::loop_report& r) { reports.push_back(r); }}};
  auto search = agent.read_tool<std::string>("search", counting("search"));
  auto flaky = agent.read_tool<std::string>("flaky", counting("flaky"));
  auto s = agent.open_session("w");
  await(io, search(s, "q"));
  EXPECT_EQ(await(io, search(s, "q")), "search:q:0");
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].action, cf::loop_policy::warn);

  auto sc = agent.open_session("sc", cf::loop_guard_options{.max_identical_calls = 1,
                                                           .policy = cf::loop_policy::short_circuit});
  cart_total = 9;  // a run now would answer differently
  await(io, flaky(sc, "q"));
  EXPECT_EQ(runs["flaky"], 1);
  EXPECT_EQ(await(io, flaky(sc, "q")), "flaky:q:9");  // the cached result, the tool not run
  EXPECT_EQ(runs["flaky"], 1);
  EXPECT_EQ(reports.back().action, cf::loop_policy::short_circuit);
  // Nothing in memory to answer with: refused.
  await(io, results.async_clear(asio::use_awaitable));
  EXPECT_EQ(failure_of(io, flaky(sc, "q")), cf::error::loop_detected);
  EXPECT_EQ(runs["flaky"], 1);
  // Impossible rules are refused.
  EXPECT_THROW(agent.open_session("x", cf::loop_guard_options{.max_cycle_length = 3, .cycle_repeats = 1}),
               boost::system::system_error);
  EXPECT_THROW(agent.open_session("x", cf::loop_guard_options{.max_cycle_length = 3, .cycle_repeats = 1025}),
               boost::system::system_error);
  EXPECT_THROW(agent.open_session("x", cf::loop_guard_options{.max_cycle_length = 2,
                                                               .cycle_repeats = (std::size_t(1) << 63) + 1}),
               boost::system::system_error);
  EXPECT_NO_THROW(agent.open_session("x", cf::loop_guard_options{.max_cycle_length = 3, .cycle_repeats = 1024}));
}

TEST_F(Agent, AKeyTooLongForTheCacheFailsAsInvalidKeyUnderEveryPolicy) {
  cf::cache<std::string> small{io, cf::cache_options{.max_key_length = 40}};
  cf::agent_cache<std::string> agent{small};
  auto ticket = agent.read_tool<std::string>("get_ticket", counting("ticket"), {.scope = cf::tool_scope::session});
  // The session's id (the name, a dot, 16 digits) makes the key too long.
  for (auto policy : {cf::loop_policy::raise, cf::loop_policy::warn, cf::loop_policy::short_circuit}) {
    auto s = agent.open_session(std::string(24, 'n'), cf::loop_guard_options{.max_identical_calls = 1,
                                                                              .policy = policy});
    EXPECT_EQ(failure_of(io, ticket(s, "a")), cf::error::invalid_key);
    // The repeat breaks the rule: refused under raise, a key error otherwise.
    EXPECT_EQ(failure_of(io, ticket(s, "a")),
              policy == cf::loop_policy::raise ? cf::error::loop_detected : cf::error::invalid_key);
  }
  EXPECT_EQ(runs["ticket"], 0);
}

TEST_F(Agent, MetricsPerSessionAndGlobalInPrometheusText) {
  cf::agent_cache<std::string> agent{results};
  auto search = agent.read_tool<std::string>("search", counting("search"));
  auto s1 = agent.open_session("a");
  auto s2 = agent.open_session("b");
  await(io, search(s1, "x"));
  await(io, search(s2, "x"));
  await(io, search(s2, "x"));
  EXPECT_EQ(s1.stats().misses, 1u);
  EXPECT_EQ(s2.stats().hits, 2u);
  EXPECT_DOUBLE_EQ(s2.stats().hit_rate(), 1.0);
  const auto text = cf::to_prometheus(s2.stats(), "agent", "session=\"b\"");
  EXPECT_NE(text.find("agent_hits_total{session=\"b\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("agent_loop_detections_total{session=\"b\"} 0\n"), std::string::npos);
  const auto global = cf::to_prometheus(agent.stats());
  EXPECT_NE(global.find("cacheflight_agent_calls_total 3\n"), std::string::npos) << global;
  EXPECT_NE(global.find("cacheflight_agent_sessions_opened_total 2\n"), std::string::npos);
  EXPECT_EQ(search.stats().loads, 1u);
}

TEST_F(Agent, CompletionTokensOnTools) {
  cf::agent_cache<std::string> agent{results};
  auto search = agent.read_tool<std::string>("search", counting("search"));
  auto write = agent.write_tool<void, std::string>("w", [](std::string) -> asio::awaitable<void> { co_return; },
                                                   {.invalidates = {"r"}});
  auto s = agent.open_session("tokens");
  outcome<std::string> o;
  search.async_call(s, "q", o.handler());
  EXPECT_FALSE(o.done);
  drain(io);
  EXPECT_EQ(o.value, "search:q:0");
  bool wrote = false;
  write.async_call(s, "x", [&](std::exception_ptr e) { wrote = !e; });
  drain(io);
  EXPECT_TRUE(wrote);
  auto ended = s.async_end(asio::use_future);
  drain(io);
  ended.get();
}

TEST(AgentThreads, SessionsOnSeveralThreads) {
  asio::io_context io;
  cf::cache<std::string> results{io, {.shards = 8}};
  cf::agent_cache<std::string> agent{results};
  std::atomic<int> runs{0};
  auto search = agent.read_tool<std::string>("search", [&](std::string q) -> asio::awaitable<std::string> {
    runs.fetch_add(1);
    co_return q;
  });
  auto note = agent.read_tool<std::string>(
      "note",
      [&](std::string q) -> asio::awaitable<std::string> {
        runs.fetch_add(1);
        co_return q;
      },
      {.resources = {"notes"}, .scope = cf::tool_scope::session});
  auto edit = agent.write_tool<int, std::string>(
      "edit", [](std::string) -> asio::awaitable<int> { co_return 0; }, {.invalidates = {"notes"}});
  std::vector<decltype(agent)::session> sessions;
  for (int i = 0; i < 8; ++i)
    sessions.push_back(agent.open_session("s" + std::to_string(i),
                                          cf::loop_guard_options{.max_identical_calls = 0, .max_cycle_length = 0}));
  std::atomic<int> ok{0};
  for (int round = 0; round < 20; ++round)
    for (auto& s : sessions) {
      search.async_call(s, std::to_string(round % 5), [&](std::exception_ptr e, std::string) { ok += !e; });
      note.async_call(s, "n", [&](std::exception_ptr e, std::string) { ok += !e; });
      if (round % 7 == 0) edit.async_call(s, "n", [&](std::exception_ptr e, int) { ok += !e; });
    }
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i) ts.emplace_back([&] { io.run(); });
  for (auto& t : ts) t.join();
  EXPECT_EQ(ok.load(), 20 * 8 * 2 + 3 * 8);
  EXPECT_EQ(agent.stats().calls, std::uint64_t(20 * 8 * 2 + 3 * 8));
  sessions.clear();
  io.restart();
  io.run();
  EXPECT_EQ(agent.stats().sessions_ended, 8u);
}

// Sessions ended on one thread while another makes calls through them: every
// call either answers or fails with no_session, and once every call and end
// has completed nothing of any session is left in memory or remembered.
TEST(AgentThreads, SessionsEndedWhileTheirCallsStartLeaveNothingBehind) {
  asio::io_context io;
  cf::cache<std::string> results{io, {.shards = 8}};
  cf::agent_cache<std::string> agent{results};
  auto note = agent.read_tool<int>(
      "note", [](int i) -> asio::awaitable<std::string> { co_return std::to_string(i); },
      {.resources = {"notes"}, .scope = cf::tool_scope::session});
  auto guard = asio::make_work_guard(io);
  std::vector<std::thread> runners;
  for (int i = 0; i < 4; ++i) runners.emplace_back([&] { io.run(); });
  std::atomic<int> pending{0}, answered{0}, no_session{0}, other{0};
  for (int round = 0; round < 50; ++round) {
    auto s = agent.open_session("s", cf::loop_guard_options{.max_identical_calls = 0, .max_calls = 0,
                                                             .max_cycle_length = 0});
    std::thread caller([&] {
      for (int k = 0; k < 40; ++k) {
        ++pending;
        note.async_call(s, k % 7, [&](std::exception_ptr e, std::string) {
          if (!e) {
            ++answered;
          } else {
            try {
              std::rethrow_exception(e);
            } catch (const boost::system::system_error& x) {
              ++(x.code() == cf::error::no_session ? no_session : other);
            } catch (...) {
              ++other;
            }
          }
          --pending;
        });
      }
    });
    std::thread ender([&] {
      ++pending;
      s.async_end([&](std::exception_ptr e) {
        other += e != nullptr;
        --pending;
      });
    });
    caller.join();
    ender.join();
    while (pending.load() != 0) std::this_thread::yield();
  }
  guard.reset();
  for (auto& t : runners) t.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(answered.load() + no_session.load(), 50 * 40);
  EXPECT_EQ(results.size(), 0u);
  EXPECT_EQ(agent.registry()->stats().tracked_keys, 0u);
  EXPECT_EQ(agent.stats().sessions_ended, 50u);
}

}  // namespace
