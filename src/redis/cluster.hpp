// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_SRC_REDIS_CLUSTER_HPP
#define CACHEFLIGHT_SRC_REDIS_CLUSTER_HPP

// The Cluster side of `redis::client`: the slot map, one connection per
// master, routing and redirections. Everything below runs on one strand,
// shared by the client and every node's connection, except the members
// marked as published (read from any thread).

#include <cacheflight/redis/client.hpp>

#include <boost/asio/any_completion_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace cacheflight::redis {

struct client::cluster : std::enable_shared_from_this<client::cluster> {
  using strand_type = boost::asio::strand<boost::asio::any_io_executor>;
  static constexpr std::size_t slot_count = 16384;

  struct node;

  // A command on its way: kept until it completes, across redirections.
  struct op {
    detail::command_bytes cmd;  // serialized once, sent again as it is
    std::optional<exec_handler> handler;  // empty once completed
    std::shared_ptr<detail::exec_cancel> cancel;
    boost::asio::any_completion_executor work;
    std::weak_ptr<cluster> owner;
    std::string at;  // async_exec_at: this node only
    node* current = nullptr;  // where it was last sent
    int slot = -1;   // -1: no key
    unsigned redirects = 0;
    unsigned retries = 0;
    bool in_call = false;  // inside exec(): possibly inside the initiating function
    std::optional<boost::asio::steady_timer> retry_timer;
  };

  struct node {
    node(const strand_type& s, std::string a, std::string h, std::string p, std::chrono::milliseconds b)
        : addr(std::move(a)), host(std::move(h)), port(std::move(p)), backoff(b), reconnect(s), retire_timer(s) {}
    std::string addr, host, port;
    std::shared_ptr<connection> conn;
    bool master = false;       // serves slots in the current map
    bool up = false;           // its connection is open
    bool connecting = false;
    bool was_up = false;       // connected since it became a master: commands then never wait for it
    bool retiring = false;     // no longer a master: its connection closes once its commands are done
    bool reconnect_pending = false;
    unsigned timeouts = 0;     // consecutive
    std::chrono::milliseconds backoff;
    boost::asio::steady_timer reconnect;
    boost::asio::steady_timer retire_timer;
    std::uint64_t retire_gen = 0;  // bumped when a retirement starts or is called off
    std::vector<std::pair<std::shared_ptr<op>, bool>> waiting;  // until connected; true: send ASKING first
  };

  cluster(boost::asio::any_io_executor ex, client_options o);

  void start();
  void stop();
  void drop_handlers();
  void exec(detail::command_bytes&& cmd, exec_handler h, std::shared_ptr<detail::exec_cancel> cancel,
            boost::asio::any_completion_executor work, std::string at);

  // Routing.
  void route(const std::shared_ptr<op>& o, node* target = nullptr, bool asking = false);
  void send(const std::shared_ptr<op>& o, node* n, bool asking);
  void on_reply(const std::shared_ptr<op>& o, node* n, boost::system::error_code ec, reply r);
  static void on_direct(const std::shared_ptr<void>& p, boost::system::error_code ec, reply r);
  void finish(const std::shared_ptr<op>& o, boost::system::error_code ec, reply r = {});
  void redirect(const std::shared_ptr<op>& o, node* t, bool asking);
  void route_after(const std::shared_ptr<op>& o, std::chrono::milliseconds delay, node* t, bool asking);
  void wait_for_cancel(const std::shared_ptr<op>& o);
  node* any_master();

  // Nodes.
  node* find_node(const std::string& addr);
  node* ensure_node(const std::string& host, const std::string& port);
  node* redirect_node(const std::string& addr, const std::string& default_host);
  connection_options node_options(const std::string& host, const std::string& port) const;
  void connect_node(node* n);
  void node_down(node* n);
  void schedule_reconnect(node* n);
  void fail_waiting(node* n);

  // The slot map.
  void request_refresh();
  void start_refresh();
  void try_candidate(std::shared_ptr<std::vector<std::string>> list, std::size_t i, boost::system::error_code failure);
  void on_slots(std::shared_ptr<std::vector<std::string>> list, std::size_t i, const std::string& addr,
                boost::system::error_code ec, const reply& r);
  bool apply(const reply& r, const std::string& asked_host);
  void schedule_periodic();
  void schedule_health();
  void retire(node* n);
  void keep(node* n);
  void update_connected();
  std::chrono::milliseconds jittered(std::chrono::milliseconds& backoff);

  void set_last_error(boost::system::error_code ec);

  strand_type strand;
  client_options opts;
  bool stopped = false;
  std::map<std::string, std::unique_ptr<node>> nodes;  // by address; never erased while running
  std::vector<node*> slots;                            // the master of each slot, or null
  std::vector<std::string> replicas;                   // addresses from the last map
  bool covered = false;                                // every slot has a master
  bool refreshing = false;
  bool refresh_again = false;
  bool refresh_soon = false;                           // refresh_timer waits for a rate-limited refresh
  std::chrono::steady_clock::time_point last_refresh{};
  std::chrono::milliseconds map_backoff;
  boost::asio::steady_timer refresh_timer;              // rate limit and retries
  boost::asio::steady_timer periodic_timer;
  boost::asio::steady_timer health_timer;
  std::shared_ptr<connection> probe;                    // a refresh's own connection to a node
  std::map<op*, std::weak_ptr<op>> delayed;             // commands waiting for a retry timer
  std::minstd_rand rng;

  // Published.
  std::atomic<bool> connected{false};
  std::atomic<std::size_t> opened{0};
  std::atomic<std::size_t> refreshes{0};
  std::atomic<std::size_t> moved{0}, asked{0}, retried{0};
  mutable std::mutex mu;
  boost::system::error_code last_error;   // guarded by mu
  std::string server;                     // guarded by mu
  std::vector<std::string> master_list;   // guarded by mu
};

}  // namespace cacheflight::redis

#endif
