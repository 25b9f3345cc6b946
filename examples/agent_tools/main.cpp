// Caching the tool calls of AI agents with cf::agent_cache.
//
// Four agents call a slow fake backend (every call waits 20 ms and is
// counted): a shopping agent whose cart is cached and invalidated by
// add_to_cart, two support sessions that never share a ticket, a research
// agent whose fourth identical search is refused, and an inventory agent that
// oscillates check -> update -> check -> update until the loop guard stops it.
//
// Prints what happened and exits with 1 if any count differs from the
// expected one.
#include <cacheflight/agent.hpp>

#include <boost/asio.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace cf = cacheflight;
using namespace std::chrono_literals;

namespace {

// The tools' backend: slow, and counting every call it serves.
class backend {
 public:
  explicit backend(asio::any_io_executor ex) : ex_(std::move(ex)) {}

  std::map<std::string, int> calls;

  asio::awaitable<std::string> get_cart(std::string user) {
    co_await slow("get_cart");
    int items = 0;
    for (auto& [item, n] : carts_[user]) items += n;
    co_return "{\"user\":\"" + user + "\",\"items\":" + std::to_string(items) + "}";
  }
  asio::awaitable<int> add_to_cart(std::string user, std::string item, int n) {
    co_await slow("add_to_cart");
    co_return carts_[user][item] += n;
  }
  asio::awaitable<std::string> get_ticket(std::string id, std::string agent) {
    co_await slow("get_ticket");
    co_return "{\"ticket\":\"" + id + "\",\"viewed_by\":\"" + agent + "\"}";
  }
  asio::awaitable<std::string> search(std::string query) {
    co_await slow("search");
    co_return "{\"query\":\"" + query + "\",\"results\":3}";
  }
  asio::awaitable<std::string> check_stock(std::string sku) {
    co_await slow("check_stock");
    co_return "{\"sku\":\"" + sku + "\",\"stock\":" + std::to_string(stock_[sku]) + "}";
  }
  asio::awaitable<int> update_stock(std::string sku, int delta) {
    co_await slow("update_stock");
    co_return stock_[sku] += delta;
  }

 private:
  asio::awaitable<void> slow(const char* tool) {
    ++calls[tool];
    asio::steady_timer t(ex_, 20ms);
    co_await t.async_wait(asio::use_awaitable);
  }

  asio::any_io_executor ex_;
  std::map<std::string, std::map<std::string, int>> carts_;
  std::map<std::string, int> stock_{{"widget", 10}};
};

int failures = 0;

void expect(const char* what, long long got, long long want) {
  std::printf("  %-52s %4lld (expected %lld)%s\n", what, got, want, got == want ? "" : "   <-- MISMATCH");
  if (got != want) ++failures;
}

// The error code an awaitable fails with, if any.
template <class T>
asio::awaitable<boost::system::error_code> failure_of(asio::awaitable<T> a, std::string* message = nullptr) {
  try {
    co_await std::move(a);
  } catch (const boost::system::system_error& e) {
    if (message) *message = e.what();
    co_return e.code();
  }
  co_return boost::system::error_code{};
}

asio::awaitable<void> run(backend& db, cf::cache<std::string>& results) {
  auto ex = co_await asio::this_coro::executor;
  std::vector<std::string> loops;
  cf::agent_cache<std::string> agent{
      results, {.loop_guard = {.max_identical_calls = 3, .max_calls = 50, .max_cycle_length = 4},
                .on_loop = [&](const cf::loop_report& r) { loops.push_back(r.message); }}};

  auto get_cart = agent.read_tool<std::string>(
      "get_cart", [&](std::string user) { return db.get_cart(user); },
      {.resources = {"cart"}, .scope = cf::tool_scope::session});
  auto add_to_cart = agent.write_tool<int, std::string, std::string, int>(
      "add_to_cart", [&](std::string user, std::string item, int n) { return db.add_to_cart(user, item, n); },
      {.invalidates = {"cart"}});
  auto get_ticket = agent.read_tool<std::string, std::string>(
      "get_ticket", [&](std::string id, std::string who) { return db.get_ticket(id, who); },
      {.resources = {"tickets"}, .scope = cf::tool_scope::session});
  auto search = agent.read_tool<std::string>("search", [&](std::string q) { return db.search(q); },
                                             {.resources = {"web"}});
  auto check_stock = agent.read_tool<std::string>(
      "check_stock", [&](std::string sku) { return db.check_stock(sku); }, {.resources = {"stock"}});
  auto update_stock = agent.write_tool<int, std::string, int>(
      "update_stock", [&](std::string sku, int d) { return db.update_stock(sku, d); }, {.invalidates = {"stock"}});

  // 1. A shopping agent: the cart is read, read again by 50 concurrent steps
  // of the agent, changed, and read once more.
  std::printf("shopping agent\n");
  {
    // The burst repeats one call 50 times: this session lifts the
    // identical-calls rule.
    auto s = agent.open_session("shopper", cf::loop_guard_options{.max_identical_calls = 0, .max_calls = 100});
    const std::string first = co_await get_cart(s, "alice");
    std::vector<std::string> burst(50);
    std::size_t done = 0;
    asio::steady_timer all_done(ex, asio::steady_timer::time_point::max());
    for (auto& out : burst)
      get_cart.async_call(s, "alice", [&](std::exception_ptr e, std::string v) {
        if (!e) out = std::move(v);
        if (++done == burst.size()) all_done.cancel();
      });
    boost::system::error_code ignored;
    co_await all_done.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    co_await add_to_cart(s, "alice", "apple", 2);
    const std::string after = co_await get_cart(s, "alice");
    std::printf("  cart before: %s, after add_to_cart: %s\n", first.c_str(), after.c_str());
    expect("get_cart backend calls (1 + 50 cached, 1 after the add)", db.calls["get_cart"], 2);
    expect("add_to_cart backend calls", db.calls["add_to_cart"], 1);
    expect("the re-read sees the new total (items)", after.find("\"items\":2") != std::string::npos, 1);
    expect("session hits", (long long)s.stats().hits, 50);
  }

  // 2. Two support sessions read the same ticket: each its own entry.
  std::printf("support sessions\n");
  {
    auto a = agent.open_session("support");
    auto b = agent.open_session("support");
    const std::string ta = co_await get_ticket(a, "T-100", a.id());
    const std::string tb = co_await get_ticket(b, "T-100", b.id());
    co_await get_ticket(a, "T-100", a.id());
    co_await get_ticket(b, "T-100", b.id());
    std::printf("  session a sees %s\n  session b sees %s\n", ta.c_str(), tb.c_str());
    expect("get_ticket backend calls (one per session)", db.calls["get_ticket"], 2);
    expect("the sessions' answers differ", ta != tb, 1);
    const auto before = results.size();
    co_await a.end();
    expect("entries removed when session a ended", (long long)(before - results.size()), 1);
  }  // b ends here

  // 3. A research agent repeating itself: the fourth identical search is refused.
  std::printf("research agent\n");
  {
    auto s = agent.open_session("researcher");
    int refused = 0;
    std::string message;
    for (int i = 0; i < 4; ++i) {
      auto ec = co_await failure_of(search(s, "c++ coroutines"), &message);
      if (ec == cf::error::loop_detected) ++refused;
    }
    std::printf("  refused: %s\n", message.c_str());
    expect("search backend calls", db.calls["search"], 1);
    expect("searches refused by the loop guard", refused, 1);
  }

  // 4. An inventory agent oscillating check -> update -> check -> update.
  std::printf("inventory agent\n");
  {
    auto s = agent.open_session("inventory");
    std::string message;
    co_await check_stock(s, "widget");
    co_await update_stock(s, "widget", -1);
    co_await check_stock(s, "widget");
    auto ec = co_await failure_of(update_stock(s, "widget", -1), &message);
    std::printf("  stopped: %s\n", message.c_str());
    expect("the fourth call was stopped as a cycle", ec == cf::error::loop_detected, 1);
    expect("check_stock backend calls (update invalidates stock)", db.calls["check_stock"], 2);
    expect("update_stock backend calls (the second one stopped)", db.calls["update_stock"], 1);
  }

  const auto st = agent.stats();
  std::printf("agent totals: %llu calls, %llu hits, %llu misses, hit rate %.2f, %llu invalidations, "
              "%llu loop detections, %llu sessions\n",
              (unsigned long long)st.calls, (unsigned long long)st.hits, (unsigned long long)st.misses,
              st.hit_rate(), (unsigned long long)st.invalidations, (unsigned long long)st.loop_detections,
              (unsigned long long)st.sessions_opened);
  expect("loop detections", (long long)st.loop_detections, 2);
  expect("sessions ended", (long long)st.sessions_ended, 5);
  expect("entries left in memory (search, check_stock: global)", (long long)results.size(), 2);
  std::printf("%s", cf::to_prometheus(st, "agent").c_str());
}

}  // namespace

int main() {
  asio::io_context io;
  backend db{io.get_executor()};
  cf::cache<std::string> results{io, {.max_entries = 1000, .default_ttl = 5min}};
  auto done = asio::co_spawn(io, run(db, results), asio::use_future);
  io.run();
  try {
    done.get();
  } catch (const std::exception& e) {
    std::cerr << "agent_tools: " << e.what() << "\n";
    return 1;
  }
  if (failures) {
    std::printf("%d count(s) differ from the expected ones\n", failures);
    return 1;
  }
  std::printf("all counts as expected\n");
  return 0;
}
