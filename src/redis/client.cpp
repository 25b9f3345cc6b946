// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#include <cacheflight/error.hpp>
#include <cacheflight/redis/client.hpp>

#include "cluster.hpp"
#include "exec_cancel.hpp"
#include "options_check.hpp"
#include "strand_hop.hpp"
#include "../common/shutdown_registry.hpp"

#include <boost/asio/any_completion_executor.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <algorithm>
#include <optional>
#include <atomic>
#include <mutex>
#include <random>
#include <vector>

namespace cacheflight::redis {

namespace asio = boost::asio;
using boost::system::error_code;
using std::chrono::milliseconds;

namespace {

std::optional<std::pair<std::string, std::string>> split_address(const std::string& a) {
  return detail::split_address(a, "26379");
}

// A ROLE reply of a master: an array whose first element is "master".
bool is_master(const reply& r) {
  return r.type == reply::kind::array && !r.elements.empty() && r.elements[0].type == reply::kind::bulk &&
         r.elements[0].str == "master";
}

}  // namespace

struct client::impl : std::enable_shared_from_this<impl> {
  impl(asio::any_io_executor ex, client_options o)
      : strand(asio::make_strand(ex)), opts(std::move(o)), timer(strand), backoff(opts.reconnect_min),
        rng(std::random_device{}()) {}

  asio::strand<asio::any_io_executor> strand;
  client_options opts;
  asio::steady_timer timer;
  std::shared_ptr<connection> conn;  // the current connection; touched on the strand only
  milliseconds backoff;
  std::minstd_rand rng;
  bool stopped = false;
  bool connecting = false;  // from connect() until opened_ok() or a failure, on the strand
  std::atomic<bool> connected{false};
  std::atomic<std::size_t> opened{0};
  mutable std::mutex error_mu;
  error_code last_error;  // guarded by error_mu: read from any thread
  std::string server;     // guarded by error_mu
  std::shared_ptr<connection> sentinel_conn;  // the sentinel being asked, on the strand
  // A user of the client's own (a tier): `setup` runs on each new connection
  // before commands are let through; `lost` when a connection that was let
  // through is lost or replaced. On the strand.
  setup_fn setup;
  std::function<void()> lost_hook;
  std::uint64_t hooks_of = 0;  // the claim that set `setup` and `lost_hook`, on the strand
  std::mutex hook_mu;
  std::uint64_t hook_holder = 0;  // the claim holding the hooks now, 0 for none; guarded by hook_mu
  std::uint64_t hook_claims = 0;  // guarded by hook_mu
  bool let_through = false;  // the current connection was let through

  bool holds_hooks(std::uint64_t claim) {
    std::lock_guard lk(hook_mu);
    return claim != 0 && hook_holder == claim;
  }

  void connection_gone() {
    if (!std::exchange(let_through, false)) return;
    if (lost_hook) lost_hook();
  }
  std::size_t first_sentinel = 0;             // the last one that answered

  bool with_sentinel() const { return !opts.sentinel.master_name.empty(); }

  void set_last_error(error_code ec) {
    std::lock_guard lk(error_mu);
    last_error = ec;
  }

  void connect() {
    if (stopped) return;
    connected = false;
    connecting = true;
    connection_gone();
    // Commands still waiting on a connection given up fail as not connected:
    // nobody cancelled them.
    if (conn) std::exchange(conn, nullptr)->close_with(make_error_code(error::not_connected));
    if (sentinel_conn) std::exchange(sentinel_conn, nullptr)->close();
    if (!with_sentinel()) return open(opts.connection, false);
    ask_sentinel(0, make_error_code(error::master_not_found), false);
  }

  // Asks the sentinels in turn, from the last one that answered, for the
  // master's address. What is reported if none gives one: `master_not_found`
  // once one of them was reached, else the last one's error.
  void ask_sentinel(std::size_t tried, error_code failure, bool reached) {
    if (stopped) return;
    const auto& sentinels = opts.sentinel.sentinels;
    if (tried >= sentinels.size()) {
      connecting = false;
      set_last_error(failure);
      return schedule(next_backoff());
    }
    const std::size_t idx = (first_sentinel + tried) % sentinels.size();
    auto [host, port] = *split_address(sentinels[idx]);  // checked by the constructor
    connection_options so;
    so.host = std::move(host);
    so.port = std::move(port);
    so.username = opts.sentinel.username;
    so.password = opts.sentinel.password;
    so.tls = opts.sentinel.tls;
    so.connect_timeout = opts.connection.connect_timeout;
    so.command_timeout = opts.connection.command_timeout;
    auto sc = std::make_shared<connection>(strand, std::move(so));
    sentinel_conn = sc;
    sc->async_connect(asio::bind_executor(strand, [self = shared_from_this(), sc, tried, idx, failure,
                                                   reached](error_code ec) {
      if (self->stopped || sc != self->sentinel_conn) return sc->close();
      if (ec) {
        sc->close();
        return self->ask_sentinel(tried + 1, reached ? failure : ec, reached);
      }
      sc->async_exec({"SENTINEL", "get-master-addr-by-name", self->opts.sentinel.master_name},
                     asio::bind_executor(self->strand, [self, sc, tried, idx, failure, reached](error_code ec,
                                                                                                   reply r) {
                       sc->close();
                       if (self->stopped || sc != self->sentinel_conn) return;
                       self->sentinel_conn.reset();
                       if (!ec && r.type == reply::kind::array && r.elements.size() == 2 &&
                           r.elements[0].type == reply::kind::bulk && r.elements[1].type == reply::kind::bulk) {
                         self->first_sentinel = idx;
                         connection_options co = self->opts.connection;
                         co.host = std::move(r.elements[0].str);
                         co.port = std::move(r.elements[1].str);
                         return self->open(co, true);
                       }
                       if (!ec) return self->ask_sentinel(tried + 1, make_error_code(error::master_not_found), true);
                       self->ask_sentinel(tried + 1, reached ? failure : ec, reached);
                     }));
    }));
  }

  // Opens the data connection; with `check_role`, only to a master.
  void open(const connection_options& co, bool check_role) {
    {
      std::lock_guard lk(error_mu);
      server = co.unix_socket.empty() ? co.host + ":" + co.port : co.unix_socket;
    }
    conn = std::make_shared<connection>(strand, co);
    // A lost connection is noticed at once (not at the next health check):
    // is_connected() turns false and a reconnect is scheduled.
    conn->on_lost([w = weak_from_this(), c = conn.get()] {
      auto self = w.lock();
      // Lost while still being checked (ROLE): that check's failure reconnects.
      if (!self || self->stopped || c != self->conn.get() || self->connecting) return;
      self->connected = false;
      self->connection_gone();
      self->schedule(self->next_backoff());
    });
    conn->async_connect(asio::bind_executor(strand, [self = shared_from_this(), c = conn, check_role](error_code ec) {
      if (self->stopped || c != self->conn) return;
      if (ec) return self->open_failed(ec);
      if (!check_role) return self->set_up(c);
      c->async_exec({"ROLE"}, asio::bind_executor(self->strand, [self, c](error_code ec, reply r) {
        if (self->stopped || c != self->conn) return;
        if (!ec) ec = role_error(r);
        if (ec) return self->open_failed(ec);
        self->set_up(c);
      }));
    }));
  }

  // Why a ROLE reply does not let the client use the server: an ACL refusal
  // is `auth_failed`, another error reply (LOADING, ...) `protocol_error`, a
  // replica `not_master`.
  static error_code role_error(const reply& r) {
    if (r.is_error()) return make_error_code(r.str.starts_with("NOPERM") ? error::auth_failed : error::protocol_error);
    return is_master(r) ? error_code{} : make_error_code(error::not_master);
  }

  // Runs the user's setup on a connection that is open and checked, then lets
  // commands through; a setup that fails closes it for reopening.
  void set_up(const std::shared_ptr<connection>& c) {
    if (!setup) return opened_ok();
    setup(c, [self = shared_from_this(), c](error_code ec) {
      if (self->stopped || c != self->conn) return;
      if (ec) return self->open_failed(ec);
      self->opened_ok();
    });
  }

  void open_failed(error_code ec) {
    connecting = false;
    connected = false;
    if (conn) std::exchange(conn, nullptr)->close_with(make_error_code(error::not_connected));
    set_last_error(ec);
    schedule(next_backoff());
  }

  void opened_ok() {
    connecting = false;
    set_last_error({});
    backoff = opts.reconnect_min;
    connected = true;
    let_through = true;
    ++opened;
    schedule(opts.health_check_interval);
  }

  milliseconds next_backoff() {
    const milliseconds d = backoff;
    backoff = std::min(backoff * 2, opts.reconnect_max);
    std::uniform_int_distribution<long long> jitter(d.count() / 2, std::max<long long>(d.count(), 1));
    return milliseconds(jitter(rng));
  }

  void schedule(milliseconds d) {
    timer.expires_after(d);
    timer.async_wait(asio::bind_executor(strand, [self = shared_from_this()](error_code ec) {
      if (!ec && !self->stopped) self->tick();
    }));
  }

  // Reopens a lost connection; checks an open one with PING (with Sentinel,
  // ROLE: a master demoted in a failover is left for the new one). Nothing
  // to do while a connect is in progress: it schedules what follows.
  void tick() {
    if (connecting) return;
    if (!conn || !conn->is_open()) {
      connected = false;
      return connect();
    }
    const bool role = with_sentinel();
    conn->async_exec({role ? "ROLE" : "PING"}, asio::bind_executor(strand, [self = shared_from_this(), c = conn, role](
                                                                               error_code ec, reply r) {
      if (self->stopped || c != self->conn) return;
      if (!ec && role && role_error(r)) {
        self->set_last_error(role_error(r));
        return self->connect();
      }
      // Refused by the connection itself (its queue full of the caller's
      // commands): says nothing of the server's health; checked next time.
      if (ec == error::queue_full && c->is_open())
        return self->schedule(self->opts.health_check_interval);
      if (ec || r.is_error()) {
        // A lost connection was seen by its hook, which scheduled the reconnect.
        if (!c->is_open()) return;
        self->connected = false;
        return self->connect();
      }
      self->schedule(self->opts.health_check_interval);
    }));
  }

  void exec(detail::command_bytes&& cmd, exec_handler h, std::shared_ptr<detail::exec_cancel> cancel,
            asio::any_completion_executor work) {
    // Not before the connection was checked (with Sentinel: ROLE).
    if (!connected.load() || !conn || !conn->is_open()) {
      // Possibly inside the initiating call: posted, never run inside it.
      auto ex = asio::get_associated_executor(h, strand);
      asio::post(strand, [ex, work = std::move(work), h = std::move(h)]() mutable {
        asio::dispatch(ex, [h = std::move(h), work = std::move(work)]() mutable {
          asio::get_associated_cancellation_slot(h).clear();
          std::move(h)(make_error_code(error::not_connected), reply{});
        });
      });
      return;
    }
    conn->exec_on_strand(std::move(cmd), std::move(h), std::move(cancel), std::move(work));
  }

  void stop() {
    stopped = true;
    connected = false;
    timer.cancel();
    if (conn) conn->close();
    if (sentinel_conn) sentinel_conn->close();
  }
};

client::client(executor_type ex, client_options opts) {
  using cacheflight::detail::throw_invalid_option;
  const sentinel_options& so = opts.sentinel;
  if (so.master_name.empty() != so.sentinels.empty())
    throw_invalid_option("redis::sentinel_options: sentinels and master_name go together");
  for (const std::string& a : so.sentinels)
    if (!split_address(a)) throw_invalid_option(("redis::sentinel_options::sentinels: not HOST:PORT: " + a).c_str());
  if (!so.master_name.empty() && !opts.connection.unix_socket.empty())
    throw_invalid_option("redis: a unix socket cannot be combined with Sentinel");
  detail::check_tls_options(so.tls, "redis::sentinel_options::tls");
  detail::check_connection_options(opts.connection);
  if (opts.reconnect_min <= milliseconds::zero() || opts.reconnect_max < opts.reconnect_min)
    throw_invalid_option("redis::client_options: need 0 < reconnect_min <= reconnect_max");
  if (opts.health_check_interval <= milliseconds::zero())
    throw_invalid_option("redis::client_options: health_check_interval must be positive");
  detail::cap_connection_durations(opts.connection);
  for (milliseconds* d : {&opts.reconnect_min, &opts.reconnect_max, &opts.health_check_interval,
                          &opts.cluster.refresh_interval, &opts.cluster.retry_delay})
    detail::cap_duration(*d);
  const cluster_options& co = opts.cluster;
  if (!co.nodes.empty()) {
    if (!so.master_name.empty()) throw_invalid_option("redis: Cluster and Sentinel cannot be combined");
    if (!opts.connection.unix_socket.empty()) throw_invalid_option("redis: a unix socket cannot be combined with Cluster");
    if (opts.connection.database != 0) throw_invalid_option("redis: Cluster has database 0 only");
    for (const std::string& a : co.nodes)
      if (!detail::split_address(a, "6379"))
        throw_invalid_option(("redis::cluster_options::nodes: not HOST:PORT: " + a).c_str());
    if (co.max_redirects == 0 || co.node_failures == 0)
      throw_invalid_option("redis::cluster_options: max_redirects and node_failures must be positive");
    if (co.refresh_interval <= milliseconds::zero() || co.retry_delay <= milliseconds::zero())
      throw_invalid_option("redis::cluster_options: refresh_interval and retry_delay must be positive");
    cluster_ = std::make_shared<cluster>(ex, std::move(opts));
    cacheflight::detail::drop_handlers_at_shutdown(ex, cluster_);
    asio::post(cluster_->strand, [self = cluster_] { self->start(); });
    return;
  }
  impl_ = std::make_shared<impl>(std::move(ex), std::move(opts));
  asio::post(impl_->strand, [self = impl_] { self->connect(); });
}

client::~client() {
  if (cluster_)
    asio::post(cluster_->strand, [self = cluster_] { self->stop(); });
  else
    asio::post(impl_->strand, [self = impl_] { self->stop(); });
}

client::executor_type client::get_executor() const noexcept {
  return cluster_ ? cluster_->strand.get_inner_executor() : impl_->strand.get_inner_executor();
}

asio::strand<client::executor_type> client::get_strand() const noexcept {
  return cluster_ ? cluster_->strand : impl_->strand;
}

bool client::is_connected() const noexcept { return cluster_ ? cluster_->connected.load() : impl_->connected.load(); }

std::size_t client::connections_opened() const noexcept {
  return cluster_ ? cluster_->opened.load() : impl_->opened.load();
}

error_code client::last_error() const {
  if (cluster_) {
    std::lock_guard lk(cluster_->mu);
    return cluster_->last_error;
  }
  std::lock_guard lk(impl_->error_mu);
  return impl_->last_error;
}

std::string client::server() const {
  if (cluster_) {
    std::lock_guard lk(cluster_->mu);
    return cluster_->server;
  }
  std::lock_guard lk(impl_->error_mu);
  return impl_->server;
}

std::vector<std::string> client::masters() const {
  if (cluster_) {
    std::lock_guard lk(cluster_->mu);
    return cluster_->master_list;
  }
  return {server()};
}

cluster_stats client::cluster_info() const noexcept {
  if (!cluster_) return {};
  return cluster_stats{cluster_->refreshes.load(), cluster_->moved.load(), cluster_->asked.load(),
                       cluster_->retried.load()};
}

const client_options& client::options() const noexcept { return cluster_ ? cluster_->opts : impl_->opts; }

void client::start_exec_at(std::string node, detail::command_bytes&& cmd, exec_handler h,
                           std::optional<asio::any_completion_executor> known) {
  const asio::strand<executor_type>& strand = cluster_ ? cluster_->strand : impl_->strand;
  // The caller's cancellation slot is hooked here, in the initiating function.
  auto cancel = connection::watch_cancel(h, strand);
  // Outstanding work on the handler's executor, from now until it has run.
  auto work = connection::track_work(h, strand, std::move(known));
  if (cluster_) {
    if (strand.running_in_this_thread())
      return cluster_->exec(std::move(cmd), std::move(h), std::move(cancel), std::move(work), std::move(node));
    detail::post_on(strand, [self = cluster_, node = std::move(node), cmd = std::move(cmd), h = std::move(h),
                             cancel = std::move(cancel), work = std::move(work)]() mutable {
      self->exec(std::move(cmd), std::move(h), std::move(cancel), std::move(work), std::move(node));
    });
    return;
  }
  // Already on the strand (a completion issuing the next command): no hop.
  if (strand.running_in_this_thread())
    return impl_->exec(std::move(cmd), std::move(h), std::move(cancel), std::move(work));
  detail::post_on(strand, [self = impl_, cmd = std::move(cmd), h = std::move(h), cancel = std::move(cancel),
                           work = std::move(work)]() mutable {
    self->exec(std::move(cmd), std::move(h), std::move(cancel), std::move(work));
  });
}

void client::exec_on_strand(detail::command_bytes&& cmd, exec_handler h, std::shared_ptr<detail::exec_cancel> cancel) {
  if (cluster_) return cluster_->exec(std::move(cmd), std::move(h), std::move(cancel), {}, {});
  impl_->exec(std::move(cmd), std::move(h), std::move(cancel), {});
}

void client::exec_serialized(std::string_view bytes, direct_fn fn, std::shared_ptr<void> ctx,
                             const std::shared_ptr<detail::exec_cancel>& cancel) {
  impl& c = *impl_;
  if (!c.connected.load() || !c.conn || !c.conn->is_open()) {
    asio::post(c.strand, [fn, ctx = std::move(ctx)] { fn(ctx, make_error_code(error::not_connected), reply{}); });
    return;
  }
  c.conn->exec_direct(bytes, fn, std::move(ctx), cancel);
}

}  // namespace cacheflight::redis

namespace cacheflight::redis {

std::uint64_t client::claim_connection_hook() noexcept {
  if (!impl_) return 0;
  std::lock_guard lk(impl_->hook_mu);
  if (impl_->hook_holder != 0) return 0;
  return impl_->hook_holder = ++impl_->hook_claims;
}

void client::release_connection_hook(std::uint64_t claim) {
  if (!impl_) return;
  {
    // Free for another claim at once; a later on_connection of this one is ignored.
    std::lock_guard lk(impl_->hook_mu);
    if (claim == 0 || impl_->hook_holder != claim) return;
    impl_->hook_holder = 0;
  }
  asio::dispatch(impl_->strand, [self = impl_, claim] {
    if (self->hooks_of != claim) return;
    self->setup = nullptr;
    self->lost_hook = nullptr;
    self->hooks_of = 0;
  });
}

void client::on_connection(std::uint64_t claim, setup_fn setup, std::function<void()> lost) {
  asio::dispatch(impl_->strand, [self = impl_, claim, setup = std::move(setup), lost = std::move(lost)]() mutable {
    if (!self->holds_hooks(claim)) return;  // released meanwhile
    self->hooks_of = claim;
    self->setup = std::move(setup);
    self->lost_hook = std::move(lost);
    // A connection let through before the hook: it had no setup.
    if (self->let_through && self->conn) {
      self->connection_gone();
      self->connect();
    }
  });
}

}  // namespace cacheflight::redis
