// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#include "cluster.hpp"

#include <cacheflight/error.hpp>

#include "exec_cancel.hpp"
#include "options_check.hpp"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <set>
#include <span>
#include <utility>

namespace cacheflight::redis {

namespace asio = boost::asio;
using boost::system::error_code;
using std::chrono::milliseconds;

namespace {

// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), Redis Cluster's key hash.
constexpr std::array<std::uint16_t, 256> crc16_table = [] {
  std::array<std::uint16_t, 256> t{};
  for (unsigned i = 0; i < 256; ++i) {
    std::uint16_t c = static_cast<std::uint16_t>(i << 8);
    for (int b = 0; b < 8; ++b) c = static_cast<std::uint16_t>((c & 0x8000) ? (c << 1) ^ 0x1021 : c << 1);
    t[i] = c;
  }
  return t;
}();

std::uint16_t crc16(std::string_view s) noexcept {
  std::uint16_t crc = 0;
  for (unsigned char ch : s) crc = static_cast<std::uint16_t>((crc << 8) ^ crc16_table[((crc >> 8) ^ ch) & 0xff]);
  return crc;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::toupper(static_cast<unsigned char>(x)) == y;
         });
}

// Commands that carry no key (`b` is upper case).
bool keyless(std::string_view name) {
  static constexpr std::string_view names[] = {"PING",     "ECHO",    "INFO",    "TIME",    "ROLE",    "DBSIZE",
                                               "SCAN",     "KEYS",    "RANDOMKEY", "CLUSTER", "CLIENT", "CONFIG",
                                               "COMMAND",  "FLUSHALL", "FLUSHDB", "SCRIPT",  "FUNCTION", "PUBLISH",
                                               "WAIT"};
  for (std::string_view n : names)
    if (iequals(name, n)) return true;
  return false;
}

// The first arguments of a command serialized by `detail::command_bytes`
// (at most `a.size()` of them), and how many it has in all.
std::size_t command_args(std::string_view bytes, std::span<std::string_view> a) {
  // "*<count>\r\n" then "$<len>\r\n<bytes>\r\n" for each argument: well formed,
  // since it was built here.
  auto number = [&bytes](char tag) {
    std::size_t n = 0;
    if (bytes.empty() || bytes.front() != tag) return n;
    const auto end = bytes.find('\r');
    std::from_chars(bytes.data() + 1, bytes.data() + end, n);
    bytes.remove_prefix(end + 2);
    return n;
  };
  const std::size_t count = number('*');
  for (std::size_t i = 0; i < count && i < a.size(); ++i) {
    const std::size_t len = number('$');
    a[i] = bytes.substr(0, len);
    bytes.remove_prefix(len + 2);
  }
  return count;
}

// The slot a command is routed by, or -1 for none (see `cluster_options`).
int command_slot(std::string_view bytes) {
  std::array<std::string_view, 4> a;
  const std::size_t n = command_args(bytes, a);
  if (n < 2 || keyless(a[0])) return -1;
  for (std::string_view s : {"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
    if (iequals(a[0], s)) {
      if (n < 4 || a[2] == "0") return -1;
      return key_slot(a[3]);
    }
  return key_slot(a[1]);
}

// "host:port" of a redirection; an IPv6 host comes without brackets, so the
// port is after the last colon.
std::optional<std::pair<std::string, std::string>> split_node(std::string_view a) {
  const auto colon = a.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == a.size()) return std::nullopt;
  std::string host(a.substr(0, colon));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return std::pair{std::move(host), std::string(a.substr(colon + 1))};
}

std::string join_node(const std::string& host, const std::string& port) {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + port;
  return host + ":" + port;
}

// "MOVED 3999 127.0.0.1:6381" / "ASK 3999 127.0.0.1:6381" -> slot and address.
std::optional<std::pair<int, std::string_view>> parse_redirect(std::string_view msg, std::string_view kind) {
  if (!msg.starts_with(kind) || msg.size() <= kind.size() || msg[kind.size()] != ' ') return std::nullopt;
  msg.remove_prefix(kind.size() + 1);
  const auto sp = msg.find(' ');
  if (sp == std::string_view::npos) return std::nullopt;
  int slot = -1;
  auto [p, ec] = std::from_chars(msg.data(), msg.data() + sp, slot);
  if (ec != std::errc{} || p != msg.data() + sp || slot < 0 || slot >= 16384) return std::nullopt;
  return std::pair{slot, msg.substr(sp + 1)};
}

}  // namespace

std::uint16_t key_slot(std::string_view key) noexcept {
  if (const auto open = key.find('{'); open != std::string_view::npos) {
    const auto close = key.find('}', open + 1);
    if (close != std::string_view::npos && close != open + 1) key = key.substr(open + 1, close - open - 1);
  }
  return static_cast<std::uint16_t>(crc16(key) & 16383);
}

client::cluster::cluster(asio::any_io_executor ex, client_options o)
    : strand(asio::make_strand(ex)), opts(std::move(o)), slots(slot_count, nullptr), map_backoff(opts.reconnect_min),
      refresh_timer(strand), periodic_timer(strand), health_timer(strand), rng(std::random_device{}()) {}

void client::cluster::start() {
  schedule_periodic();
  schedule_health();
  start_refresh();
}

void client::cluster::stop() {
  stopped = true;
  connected = false;
  refresh_timer.cancel();
  periodic_timer.cancel();
  health_timer.cancel();
  if (probe) std::exchange(probe, nullptr)->close();
  for (auto& [addr, n] : nodes) {
    n->reconnect.cancel();
    n->retire_timer.cancel();
    if (n->conn) n->conn->close();
    fail_waiting(n.get());
  }
  auto waiting = std::move(delayed);
  delayed.clear();
  for (auto& [raw, w] : waiting)
    if (auto o = w.lock()) finish(o, asio::error::operation_aborted);
}

void client::cluster::drop_handlers() {
  for (auto& [addr, n] : nodes) {
    auto doomed = std::move(n->waiting);
    n->waiting.clear();
  }
}

void client::cluster::set_last_error(error_code ec) {
  std::lock_guard lk(mu);
  last_error = ec;
}

milliseconds client::cluster::jittered(milliseconds& backoff) {
  const milliseconds d = backoff;
  backoff = std::min(backoff * 2, opts.reconnect_max);
  std::uniform_int_distribution<long long> jitter(d.count() / 2, std::max<long long>(d.count(), 1));
  return milliseconds(jitter(rng));
}

// --- commands ----------------------------------------------------------------

void client::cluster::exec(detail::command_bytes&& cmd, exec_handler h, std::shared_ptr<detail::exec_cancel> cancel,
                           asio::any_completion_executor work, std::string at) {
  auto o = std::make_shared<op>();
  o->slot = at.empty() ? command_slot(cmd.view()) : -1;
  o->cmd = std::move(cmd);
  o->handler.emplace(std::move(h));
  o->cancel = std::move(cancel);
  o->work = std::move(work);
  o->owner = weak_from_this();
  o->at = std::move(at);
  o->in_call = true;
  if (o->cmd.empty())
    finish(o, asio::error::invalid_argument);
  else if (stopped)
    finish(o, asio::error::operation_aborted);
  else
    route(o);
  o->in_call = false;
}

client::cluster::node* client::cluster::any_master() {
  // The master of slot 0 when it is up, else the first one up.
  if (slots[0] && slots[0]->up) return slots[0];
  for (auto& [addr, n] : nodes)
    if (n->master && n->up) return n.get();
  return slots[0];
}

void client::cluster::route(const std::shared_ptr<op>& o, node* n, bool asking) {
  if (!o->handler) return;
  if (stopped || (o->cancel && o->cancel->requested.load(std::memory_order_acquire)))
    return finish(o, asio::error::operation_aborted);
  if (!n) {
    if (!o->at.empty()) {
      n = find_node(o->at);
      if (n && !n->master) n = nullptr;
    } else if (o->slot >= 0) {
      n = slots[static_cast<std::size_t>(o->slot)];
    } else {
      n = any_master();
    }
  }
  if (!n) return finish(o, make_error_code(error::not_connected));
  if (n->up) return send(o, n, asking);
  if (n->connecting && !n->was_up) {
    // A node connected for the first time (new in the map, or named by a
    // redirection): the command waits for it, at most the connect timeout.
    if (n->waiting.size() >= opts.connection.max_pending) return finish(o, make_error_code(error::queue_full));
    n->waiting.emplace_back(o, asking);
    return wait_for_cancel(o);
  }
  // A master that was lost: its slots fail at once until it is back.
  finish(o, make_error_code(error::not_connected));
}

// While a command waits (for a node, or before a retry), a cancellation
// completes it at once.
void client::cluster::wait_for_cancel(const std::shared_ptr<op>& o) {
  if (!o->cancel) return;
  o->cancel->conn = std::shared_ptr<void>(o);
  o->cancel->id = 0;
  o->cancel->abandon = [](const std::shared_ptr<void>& p, std::uint64_t) {
    auto w = std::static_pointer_cast<op>(p);
    if (auto self = w->owner.lock()) self->finish(w, asio::error::operation_aborted);
  };
  if (o->cancel->requested.load(std::memory_order_acquire)) finish(o, asio::error::operation_aborted);
}

void client::cluster::send(const std::shared_ptr<op>& o, node* n, bool asking) {
  // The command's bytes are kept for a redirection. ASKING goes in the same
  // entry, so that it is written if and only if the command is, right before it.
  o->current = n;
  if (!asking) return n->conn->exec_direct(o->cmd.view(), &cluster::on_direct, o, o->cancel, 0);
  std::string bytes = "*1\r\n$6\r\nASKING\r\n";
  bytes += o->cmd.view();
  n->conn->exec_direct(bytes, &cluster::on_direct, o, o->cancel, 1);
}

// A command's completion from its connection, on the strand.
void client::cluster::on_direct(const std::shared_ptr<void>& p, error_code ec, reply r) {
  auto o = std::static_pointer_cast<op>(p);
  if (auto self = o->owner.lock()) return self->on_reply(o, o->current, ec, std::move(r));
  // The client is gone (its connections are closing): the caller learns it.
  if (!o->handler) return;
  exec_handler h(std::move(*o->handler));
  o->handler.reset();
  auto ex = asio::get_associated_executor(h);
  asio::dispatch(ex, [h = std::move(h), w = std::move(o->work)]() mutable {
    asio::get_associated_cancellation_slot(h).clear();
    std::move(h)(asio::error::operation_aborted, reply{});
  });
}

void client::cluster::on_reply(const std::shared_ptr<op>& o, node* n, error_code ec, reply r) {
  if (!o->handler || stopped) return finish(o, ec ? ec : error_code(asio::error::operation_aborted), std::move(r));
  if (ec == asio::error::operation_aborted && !(o->cancel && o->cancel->requested.load(std::memory_order_acquire))) {
    // Not the caller's cancellation: the node's connection was closed under
    // the command (too many timeouts, or the client stopping). It may have
    // been executed: not re-sent.
    return finish(o, make_error_code(error::not_connected));
  }
  if (ec) {
    if (ec == error::timed_out && ++n->timeouts >= opts.cluster.node_failures && n->conn) {
      n->timeouts = 0;
      n->conn->close();  // lost: node_down() follows on the strand
    }
    return finish(o, ec, std::move(r));
  }
  n->timeouts = 0;
  if (!r.is_error() || !o->at.empty()) return finish(o, {}, std::move(r));
  const std::string_view msg = r.str;
  if (auto m = parse_redirect(msg, "MOVED")) {
    ++moved;
    request_refresh();
    if (++o->redirects > opts.cluster.max_redirects) return finish(o, {}, std::move(r));
    node* t = redirect_node(std::string(m->second), n->host);
    if (!t) return finish(o, {}, std::move(r));
    // Until the refresh: the slot's new master, so that the next command goes there at once.
    o->slot = m->first;
    slots[static_cast<std::size_t>(m->first)] = t;
    if (!t->master) {
      t->master = true;
      t->was_up = t->up;
      keep(t);
      connect_node(t);
      {
        std::lock_guard lk(mu);
        if (std::find(master_list.begin(), master_list.end(), t->addr) == master_list.end()) {
          master_list.push_back(t->addr);
          std::sort(master_list.begin(), master_list.end());
        }
      }
      update_connected();
    }
    return redirect(o, t, false);
  }
  if (auto a = parse_redirect(msg, "ASK")) {
    ++asked;
    if (++o->redirects > opts.cluster.max_redirects) return finish(o, {}, std::move(r));
    node* t = redirect_node(std::string(a->second), n->host);
    if (!t) return finish(o, {}, std::move(r));
    if (!t->up) connect_node(t);
    return redirect(o, t, true);
  }
  const bool down = msg.starts_with("CLUSTERDOWN");
  if (msg.starts_with("TRYAGAIN") || down) {
    if (down) request_refresh();
    if (o->retries >= opts.cluster.max_retries) return finish(o, {}, std::move(r));
    const auto delay = opts.cluster.retry_delay * (1LL << std::min(o->retries, 20u));
    ++o->retries;
    ++retried;
    return route_after(o, delay, nullptr, false);
  }
  finish(o, {}, std::move(r));
}

// The first redirection of a command is followed at once; each further one
// after `retry_delay`, doubling: while the nodes of a migrated slot learn its
// new owner one after the other, they can send a command back and forth.
void client::cluster::redirect(const std::shared_ptr<op>& o, node* t, bool asking) {
  if (o->redirects <= 1) return route(o, t, asking);
  // After the delay, a MOVED target is read from the map again (a refresh may
  // have changed it since); an ASK target is kept.
  route_after(o, opts.cluster.retry_delay * (1LL << std::min(o->redirects - 2, 20u)), asking ? t : nullptr, asking);
}

void client::cluster::route_after(const std::shared_ptr<op>& o, milliseconds delay, node* t, bool asking) {
  o->retry_timer.emplace(strand);
  detail::cap_duration(delay);  // a long retry_delay, doubled
  o->retry_timer->expires_after(delay);
  delayed.emplace(o.get(), o);
  o->retry_timer->async_wait([self = shared_from_this(), o, t, asking](error_code ec) {
    self->delayed.erase(o.get());
    if (ec) return;  // completed meanwhile (cancelled)
    if (self->stopped) return self->finish(o, asio::error::operation_aborted);
    self->route(o, t, asking);
  });
  wait_for_cancel(o);
}

void client::cluster::finish(const std::shared_ptr<op>& o, error_code ec, reply r) {
  if (!o->handler) return;
  exec_handler h(std::move(*o->handler));
  o->handler.reset();
  if (!ec && o->cmd.into) {
    swap(*o->cmd.into, r);
    reply old;  // `into`'s previous contents, freed here
    swap(old, r);
  }
  if (o->retry_timer) o->retry_timer->cancel();
  if (!o->work && !o->in_call) {
    // No work was taken: the handler's executor is the strand, where this runs.
    asio::get_associated_cancellation_slot(h).clear();
    std::move(h)(ec, std::move(r));
    return;
  }
  // The handler's executor: its work's (asking the erased handler again would
  // wrap it once more), or the strand.
  const asio::any_completion_executor ex =
      o->work ? asio::any_completion_executor(asio::prefer(o->work, asio::execution::outstanding_work.untracked))
              : asio::any_completion_executor(strand);
  auto upcall = [h = std::move(h), w = std::move(o->work), ec, r = std::move(r)]() mutable {
    asio::get_associated_cancellation_slot(h).clear();
    std::move(h)(ec, std::move(r));
  };
  // Inside exec() this may be the initiating function: never run the handler there.
  if (o->in_call)
    asio::post(strand, [ex, upcall = std::move(upcall)]() mutable { asio::dispatch(ex, std::move(upcall)); });
  else
    asio::dispatch(ex, std::move(upcall));
}

// --- nodes -------------------------------------------------------------------

client::cluster::node* client::cluster::find_node(const std::string& addr) {
  auto it = nodes.find(addr);
  return it == nodes.end() ? nullptr : it->second.get();
}

client::cluster::node* client::cluster::ensure_node(const std::string& host, const std::string& port) {
  std::string addr = join_node(host, port);
  if (node* n = find_node(addr)) return n;
  auto n = std::make_unique<node>(strand, addr, host, port, opts.reconnect_min);
  node* p = n.get();
  nodes.emplace(std::move(addr), std::move(n));
  return p;
}

// From a redirection's "host:port"; an empty host is the replying node's.
client::cluster::node* client::cluster::redirect_node(const std::string& addr, const std::string& default_host) {
  auto hp = split_node(addr);
  if (!hp) return nullptr;
  if (hp->first.empty()) hp->first = default_host;
  return ensure_node(hp->first, hp->second);
}

// Every node is reached with the client's connection options, its own
// address in place of theirs.
connection_options client::cluster::node_options(const std::string& host, const std::string& port) const {
  connection_options co = opts.connection;
  co.host = host;
  co.port = port;
  return co;
}

void client::cluster::connect_node(node* n) {
  if (stopped || n->up || n->connecting) return;
  n->connecting = true;
  n->reconnect_pending = false;
  n->reconnect.cancel();
  auto c = std::make_shared<connection>(strand, node_options(n->host, n->port));
  n->conn = c;
  c->on_lost([w = weak_from_this(), n, raw = c.get()] {
    auto self = w.lock();
    if (!self || self->stopped || n->conn.get() != raw) return;
    self->node_down(n);
  });
  c->async_connect(asio::bind_executor(strand, [self = shared_from_this(), n, c](error_code ec) {
    if (self->stopped || n->conn != c) return c->close();
    n->connecting = false;
    if (ec) {
      c->close();
      n->conn.reset();
      self->set_last_error(ec);
      self->fail_waiting(n);
      self->schedule_reconnect(n);
      self->request_refresh();
      return self->update_connected();
    }
    n->up = true;
    n->was_up = true;
    n->timeouts = 0;
    n->backoff = self->opts.reconnect_min;
    ++self->opened;
    auto waiting = std::move(n->waiting);
    n->waiting.clear();
    for (auto& [o, asking] : waiting) self->route(o, n, asking);
    // Not a master (the target of an ASK): closed once its commands are done.
    if (!n->master) self->retire(n);
    self->update_connected();
  }));
}

void client::cluster::node_down(node* n) {
  n->up = false;
  n->connecting = false;
  n->conn.reset();
  fail_waiting(n);
  update_connected();
  request_refresh();  // a replica may be promoted in its place
  schedule_reconnect(n);
}

void client::cluster::fail_waiting(node* n) {
  auto waiting = std::move(n->waiting);
  n->waiting.clear();
  for (auto& [o, asking] : waiting) finish(o, make_error_code(error::not_connected));
}

void client::cluster::schedule_reconnect(node* n) {
  if (stopped || !n->master || n->reconnect_pending || n->up || n->connecting) return;
  n->reconnect_pending = true;
  n->reconnect.expires_after(jittered(n->backoff));
  n->reconnect.async_wait([self = shared_from_this(), n](error_code ec) {
    if (ec || self->stopped || !n->reconnect_pending) return;
    n->reconnect_pending = false;
    if (n->master) self->connect_node(n);
  });
}

void client::cluster::update_connected() {
  bool all = covered;
  for (auto& [addr, n] : nodes)
    if (n->master && !n->up) all = false;
  connected = all && !stopped;
}

// --- the slot map ----------------------------------------------------------------

void client::cluster::schedule_periodic() {
  periodic_timer.expires_after(opts.cluster.refresh_interval);
  periodic_timer.async_wait([self = shared_from_this()](error_code ec) {
    if (ec || self->stopped) return;
    self->request_refresh();
    self->schedule_periodic();
  });
}

// Refreshes the map soon: at once unless one ran in the last `reconnect_min`
// (redirections come in bursts), and once more after a refresh in progress.
void client::cluster::request_refresh() {
  if (stopped) return;
  if (refreshing) {
    refresh_again = true;
    return;
  }
  if (refresh_soon) return;
  const auto next = last_refresh + opts.reconnect_min;
  if (std::chrono::steady_clock::now() >= next) return start_refresh();
  refresh_soon = true;
  refresh_timer.expires_at(next);
  refresh_timer.async_wait([self = shared_from_this()](error_code ec) {
    if (ec || self->stopped) return;
    self->refresh_soon = false;
    self->request_refresh();
  });
}

void client::cluster::start_refresh() {
  if (stopped || refreshing) return;
  refreshing = true;
  last_refresh = std::chrono::steady_clock::now();
  // Masters that are up first (no new connection), then the seeds, then the
  // rest of what the last map named: any of them can answer.
  auto list = std::make_shared<std::vector<std::string>>();
  std::set<std::string> seen;
  auto add = [&](const std::string& a) {
    if (seen.insert(a).second) list->push_back(a);
  };
  for (auto& [addr, n] : nodes)
    if (n->master && n->up) add(addr);
  for (const std::string& s : opts.cluster.nodes) {
    auto hp = detail::split_address(s, "6379");  // checked by the client's constructor
    add(join_node(hp->first, hp->second));
  }
  for (auto& [addr, n] : nodes)
    if (n->master) add(addr);
  for (const std::string& r : replicas) add(r);
  try_candidate(std::move(list), 0, make_error_code(error::not_connected));
}

void client::cluster::try_candidate(std::shared_ptr<std::vector<std::string>> list, std::size_t i, error_code failure) {
  if (stopped) return;
  if (i >= list->size()) {
    refreshing = false;
    refresh_again = false;
    set_last_error(failure);
    // No node answered: try again after the backoff.
    refresh_soon = true;
    refresh_timer.expires_after(jittered(map_backoff));
    refresh_timer.async_wait([self = shared_from_this()](error_code ec) {
      if (ec || self->stopped) return;
      self->refresh_soon = false;
      self->start_refresh();
    });
    return;
  }
  const std::string addr = (*list)[i];
  if (node* n = find_node(addr); n && n->up) {
    n->conn->exec_on_strand(detail::command_bytes({"CLUSTER", "SLOTS"}),
                            exec_handler(asio::bind_executor(strand, [self = shared_from_this(), list, i, addr](
                                                                         error_code ec, reply r) {
                              self->on_slots(list, i, addr, ec, r);
                            })),
                            nullptr, {});
    return;
  }
  // A node without an open connection is asked on a connection of its own.
  auto hp = split_node(addr);
  auto c = std::make_shared<connection>(strand, node_options(hp->first, hp->second));
  probe = c;
  c->async_connect(asio::bind_executor(strand, [self = shared_from_this(), c, list, i, addr](error_code ec) {
    if (self->stopped) return c->close();
    if (ec) {
      c->close();
      return self->on_slots(list, i, addr, ec, reply{});
    }
    c->async_exec({"CLUSTER", "SLOTS"}, asio::bind_executor(self->strand, [self, c, list, i, addr](error_code ec,
                                                                                                 reply r) {
                    c->close();
                    if (self->probe == c) self->probe.reset();
                    self->on_slots(list, i, addr, ec, r);
                  }));
  }));
}

void client::cluster::on_slots(std::shared_ptr<std::vector<std::string>> list, std::size_t i, const std::string& addr,
                               error_code ec, const reply& r) {
  if (stopped) return;
  if (!ec && r.is_error())
    ec = make_error_code(r.str.starts_with("NOPERM") ? error::auth_failed : error::protocol_error);
  if (!ec && !apply(r, split_node(addr)->first)) ec = make_error_code(error::protocol_error);
  if (ec) return try_candidate(std::move(list), i + 1, ec);
  refreshing = false;
  map_backoff = opts.reconnect_min;
  ++refreshes;
  {
    std::lock_guard lk(mu);
    server = addr;
    last_error = {};
  }
  if (std::exchange(refresh_again, false)) request_refresh();
}

// Applies a CLUSTER SLOTS reply: [[start, end, [host, port, id, ...], replicas...], ...].
bool client::cluster::apply(const reply& r, const std::string& asked_host) {
  if (r.type != reply::kind::array || r.elements.empty()) return false;
  std::vector<node*> next(slot_count, nullptr);
  std::set<node*> masters;
  std::vector<std::string> reps;
  auto endpoint = [&](const reply& e) -> std::optional<std::pair<std::string, std::string>> {
    if (e.type != reply::kind::array || e.elements.size() < 2 || e.elements[0].type != reply::kind::bulk ||
        e.elements[1].type != reply::kind::integer)
      return std::nullopt;
    std::string host = e.elements[0].str;
    if (host == "?") return std::nullopt;  // an endpoint the node does not know
    if (host.empty()) host = asked_host;   // the node asked
    return std::pair{std::move(host), std::to_string(e.elements[1].integer)};
  };
  for (const reply& range : r.elements) {
    if (range.type != reply::kind::array || range.elements.size() < 3 ||
        range.elements[0].type != reply::kind::integer || range.elements[1].type != reply::kind::integer)
      return false;
    const long long from = range.elements[0].integer, to = range.elements[1].integer;
    if (from < 0 || to < from || to >= static_cast<long long>(slot_count)) return false;
    auto m = endpoint(range.elements[2]);
    if (!m) continue;
    node* n = ensure_node(m->first, m->second);
    masters.insert(n);
    for (long long s = from; s <= to; ++s) next[static_cast<std::size_t>(s)] = n;
    for (std::size_t k = 3; k < range.elements.size(); ++k)
      if (auto rep = endpoint(range.elements[k])) reps.push_back(join_node(rep->first, rep->second));
  }
  if (masters.empty()) return false;
  slots = std::move(next);
  replicas = std::move(reps);
  covered = std::find(slots.begin(), slots.end(), nullptr) == slots.end();
  std::vector<std::string> list;
  std::vector<std::pair<std::shared_ptr<op>, bool>> reroute;
  for (auto& [addr, n] : nodes) {
    const bool m = masters.count(n.get()) != 0;
    if (m) list.push_back(addr);
    if (m == n->master) {
      if (m && !n->up && !n->reconnect_pending) connect_node(n.get());  // not while it backs off
      continue;
    }
    n->master = m;
    if (m) {
      n->was_up = n->up;
      keep(n.get());
      connect_node(n.get());
    } else {
      // No longer a master (demoted, or gone). Commands waiting for it were
      // never sent: routed again below. Those written to it complete there
      // (a MOVED reply is followed); its connection closes after that.
      for (auto& w : n->waiting) reroute.push_back(std::move(w));
      n->waiting.clear();
      retire(n.get());
    }
  }
  {
    std::lock_guard lk(mu);
    master_list = std::move(list);
  }
  update_connected();
  for (auto& [o, asking] : reroute) route(o, nullptr, false);
  return true;
}

// A node that left the map: no new command goes to it; its connection is
// closed once every command written to it has completed or timed out.
void client::cluster::retire(node* n) {
  n->reconnect_pending = false;
  n->reconnect.cancel();
  n->was_up = false;
  n->retiring = true;
  const std::uint64_t gen = ++n->retire_gen;
  n->retire_timer.expires_after(opts.connection.command_timeout + opts.connection.connect_timeout);
  n->retire_timer.async_wait([self = shared_from_this(), n, gen](error_code) {
    if (self->stopped || !n->retiring || n->retire_gen != gen) return;
    n->retiring = false;
    n->up = false;
    n->connecting = false;
    if (auto c = std::exchange(n->conn, nullptr)) c->close();
    self->fail_waiting(n);
  });
}

// Calls off a node's retirement: it is a master again.
void client::cluster::keep(node* n) {
  if (!n->retiring) return;
  n->retiring = false;
  ++n->retire_gen;
  n->retire_timer.cancel();
}

// Every `health_check_interval`, each master that is up gets a PING; one that
// fails (an error, a timeout) closes its connection, which makes it lost.
void client::cluster::schedule_health() {
  health_timer.expires_after(opts.health_check_interval);
  health_timer.async_wait([self = shared_from_this()](error_code ec) {
    if (ec || self->stopped) return;
    for (auto& [addr, n] : self->nodes) {
      if (!n->master || !n->up || !n->conn) continue;
      n->conn->exec_on_strand(detail::command_bytes({"PING"}), exec_handler(asio::bind_executor(self->strand, [self, n = n.get(), c = n->conn](
                                                                                          error_code ec, reply r) {
                                if (self->stopped || n->conn != c || (!ec && !r.is_error())) return;
                                // Refused here, not by the server: says nothing of its health.
                                if (ec == error::queue_full || ec == error::not_connected ||
                                    ec == asio::error::operation_aborted)
                                  return;
                                c->close();
                              })),
                              nullptr, {});
    }
    self->schedule_health();
  });
}

}  // namespace cacheflight::redis
