// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#include <cacheflight/error.hpp>
#include <cacheflight/redis/client.hpp>

#include <boost/asio/any_completion_executor.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <random>

namespace cacheflight::redis {

namespace asio = boost::asio;
using boost::system::error_code;
using std::chrono::milliseconds;

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
  std::atomic<bool> connected{false};
  std::atomic<std::size_t> opened{0};
  mutable std::mutex error_mu;
  error_code last_error;  // guarded by error_mu: read from any thread

  void set_last_error(error_code ec) {
    std::lock_guard lk(error_mu);
    last_error = ec;
  }

  void connect() {
    if (stopped) return;
    if (conn) conn->close();
    conn = std::make_shared<connection>(strand, opts.connection);
    // A lost connection is noticed at once (not at the next health check):
    // is_connected() turns false and a reconnect is scheduled.
    conn->on_lost([w = weak_from_this(), c = conn.get()] {
      auto self = w.lock();
      if (!self || self->stopped || c != self->conn.get()) return;
      self->connected = false;
      self->schedule(self->next_backoff());
    });
    conn->async_connect(asio::bind_executor(strand, [self = shared_from_this(), c = conn](error_code ec) {
      if (self->stopped || c != self->conn) return;
      if (ec) {
        self->connected = false;
        self->set_last_error(ec);
        return self->schedule(self->next_backoff());
      }
      self->set_last_error({});
      self->backoff = self->opts.reconnect_min;
      self->connected = true;
      ++self->opened;
      self->schedule(self->opts.health_check_interval);
    }));
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

  // Reopens a lost connection; checks an open one with PING.
  void tick() {
    if (!conn || !conn->is_open()) {
      connected = false;
      return connect();
    }
    conn->async_exec({"PING"}, asio::bind_executor(strand, [self = shared_from_this(), c = conn](error_code ec, reply r) {
      if (self->stopped || c != self->conn) return;
      if (ec || r.is_error()) {
        // A lost connection was seen by its hook, which scheduled the reconnect.
        if (!c->is_open()) return;
        self->connected = false;
        return self->connect();
      }
      self->schedule(self->opts.health_check_interval);
    }));
  }

  void exec(std::vector<std::string> args, exec_handler h, std::shared_ptr<detail::exec_cancel> cancel,
            asio::any_completion_executor work) {
    if (!conn || !conn->is_open()) {
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
    conn->exec_on_strand(std::move(args), std::move(h), std::move(cancel), std::move(work));
  }

  void stop() {
    stopped = true;
    connected = false;
    timer.cancel();
    if (conn) conn->close();
  }
};

client::client(executor_type ex, client_options opts) : impl_(std::make_shared<impl>(std::move(ex), std::move(opts))) {
  asio::post(impl_->strand, [self = impl_] { self->connect(); });
}

client::~client() {
  asio::post(impl_->strand, [self = impl_] { self->stop(); });
}

client::executor_type client::get_executor() const noexcept { return impl_->strand.get_inner_executor(); }

asio::strand<client::executor_type> client::get_strand() const noexcept { return impl_->strand; }

bool client::is_connected() const noexcept { return impl_->connected.load(); }

std::size_t client::connections_opened() const noexcept { return impl_->opened.load(); }

error_code client::last_error() const {
  std::lock_guard lk(impl_->error_mu);
  return impl_->last_error;
}

void client::start_exec(std::vector<std::string> args, exec_handler h) {
  // The caller's cancellation slot is hooked here, in the initiating function.
  auto cancel = connection::watch_cancel(h, impl_->strand);
  // Outstanding work on the handler's executor, from now until it has run.
  auto work = connection::track_work(h, impl_->strand);
  // Already on the strand (a completion issuing the next command): no hop.
  if (impl_->strand.running_in_this_thread())
    return impl_->exec(std::move(args), std::move(h), std::move(cancel), std::move(work));
  asio::post(impl_->strand, [self = impl_, args = std::move(args), h = std::move(h), cancel = std::move(cancel),
                             work = std::move(work)]() mutable {
    self->exec(std::move(args), std::move(h), std::move(cancel), std::move(work));
  });
}

}  // namespace cacheflight::redis
