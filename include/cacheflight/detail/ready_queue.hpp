// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_READY_QUEUE_HPP
#define CACHEFLIGHT_DETAIL_READY_QUEUE_HPP

#include <cacheflight/detail/intrusive_list.hpp>
#include <cacheflight/detail/shard_mutex.hpp>

#include <boost/asio/execution/allocator.hpp>
#include <boost/asio/execution/blocking.hpp>
#include <boost/asio/execution/relationship.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/recycling_allocator.hpp>
#include <boost/asio/require.hpp>

#include <atomic>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <cstddef>
#include <utility>

namespace cacheflight::detail {

// Immediate completions bound for one io_context, run in rounds, each round
// one scheduling on that context, as a strand runs its queue. A completion
// queued from inside a round (a handler that starts its next operation, which
// completes at once) joins the next round without taking the lock; the next
// round is posted when the current one ends, so other work on the context
// runs between rounds. Every completion runs on a thread running the context,
// never inside the function that queued it, in the order it was queued by its
// thread (a round runs those carried from the previous round first). A round
// runs on one thread: its completions run one after another. Completions
// still queued when the context is shut down are destroyed without being run,
// as the context's own handlers are.
class ready_queue : public std::enable_shared_from_this<ready_queue> {
 public:
  explicit ready_queue(boost::asio::io_context& io) noexcept : io_(&io) {}
  ready_queue(const ready_queue&) = delete;
  ready_queue& operator=(const ready_queue&) = delete;
  ~ready_queue() {
    destroy(std::move(carried_));
    destroy(std::move(shared_));
  }

  boost::asio::io_context& context() const noexcept { return *io_; }

  // Queues `f()` to run in a round on the context. Throws what the
  // allocation of its item throws, and then queues nothing.
  template <class F>
  void push(F&& f) {
    item* it = item_of<std::decay_t<F>>::make(std::forward<F>(f));
    if (draining_ == this) {  // inside a round of this queue, on its thread
      carried_.push_back(it);
      return;
    }
    {
      std::lock_guard lk(mu_);
      shared_.push_back(it);
      has_shared_.store(true, std::memory_order_relaxed);
      if (scheduled_) return;
      scheduled_ = true;
    }
    schedule(shared_from_this(), false);
  }

 private:
  struct item : list_hook {
    explicit item(void (*c)(item*, bool)) noexcept : complete(c) {}
    void (*complete)(item*, bool invoke);
  };
  using list = intrusive_list<item>;

  template <class F>
  struct item_of final : item {
    using allocator = boost::asio::recycling_allocator<item_of>;
    explicit item_of(F&& fn) : item(&run), f(std::move(fn)) {}
    explicit item_of(const F& fn) : item(&run), f(fn) {}
    F f;

    template <class G>
    static item* make(G&& g) {
      allocator a;
      item_of* p = a.allocate(1);
      try {
        return ::new (static_cast<void*>(p)) item_of(std::forward<G>(g));
      } catch (...) {
        a.deallocate(p, 1);
        throw;
      }
    }
    // The memory is released before the call, so that the call's own next
    // completion can reuse it. Not invoked (shutdown), the function is
    // destroyed in place; a move that throws still releases the item.
    static void run(item* base, bool invoke) {
      auto* self = static_cast<item_of*>(base);
      auto release = [self]() noexcept {
        self->~item_of();
        allocator().deallocate(self, 1);
      };
      if (!invoke) {
        release();
        return;
      }
      std::optional<F> fn;
      try {
        fn.emplace(std::move(self->f));
      } catch (...) {
        release();
        throw;
      }
      release();
      std::move(*fn)();
    }
  };

  // The scheduled round: it keeps the queue alive. Destroyed without having
  // run (the context shut down), it destroys the queued completions.
  struct round {
    std::shared_ptr<ready_queue> q;
    explicit round(std::shared_ptr<ready_queue> q) noexcept : q(std::move(q)) {}
    round(round&& o) noexcept : q(std::move(o.q)) {}
    round& operator=(round&&) = delete;
    ~round() {
      if (q) q->discard();
    }
    void operator()() {
      auto self = std::move(q);
      self->drain(self);
    }
  };

  static void destroy(list l) noexcept {
    while (item* it = l.pop_front()) it->complete(it, false);
  }

  // The memory of the one round that is posted at a time (a round's memory
  // is released before it runs, so the next round can take it): scheduling
  // allocates nothing, so it cannot fail.
  template <class T>
  struct round_allocator {
    using value_type = T;
    ready_queue* q;
    explicit round_allocator(ready_queue* q) noexcept : q(q) {}
    template <class U>
    round_allocator(const round_allocator<U>& o) noexcept : q(o.q) {}
    T* allocate(std::size_t) noexcept {
      static_assert(sizeof(T) <= sizeof(slot_) && alignof(T) <= alignof(std::max_align_t),
                    "a posted round fits the queue's slot");
      return static_cast<T*>(static_cast<void*>(q->slot_));
    }
    void deallocate(T*, std::size_t) noexcept {}
    template <class U>
    bool operator==(const round_allocator<U>& o) const noexcept {
      return q == o.q;
    }
  };

  // Posts the round that holds `self`. `continuation`: the caller is a round
  // about to return, so the post may stay on this thread's queue.
  void schedule(std::shared_ptr<ready_queue> self, bool continuation) noexcept {
    namespace asio = boost::asio;
    auto ex = asio::require(io_->get_executor(), asio::execution::blocking.never,
                            asio::execution::allocator(round_allocator<void>(this)));
    if (continuation)
      asio::prefer(ex, asio::execution::relationship.continuation).execute(round{std::move(self)});
    else
      ex.execute(round{std::move(self)});
  }

  // One round: the completions carried over from the previous round (queued
  // by its own completions, without a lock), then those queued by other
  // threads (taken under the lock, only when there are some). Completions
  // queued during the round are carried to the next one.
  void drain(std::shared_ptr<ready_queue>& self) {
    list batch = std::move(carried_);
    if (has_shared_.load(std::memory_order_acquire)) {
      std::lock_guard lk(mu_);
      batch.splice_back(std::move(shared_));
      has_shared_.store(false, std::memory_order_relaxed);
    }
    ready_queue* const outer = draining_;
    draining_ = this;
    // Ends the round, also when a completion throws (the exception leaves
    // the context's run, as any handler's does): what was not run yet, then
    // what the round queued, is carried to the next round.
    struct end_round {
      ready_queue* q;
      ready_queue* outer;
      list& batch;
      std::shared_ptr<ready_queue>& self;
      ~end_round() {
        q->draining_ = outer;
        batch.splice_back(std::move(q->carried_));
        q->carried_ = std::move(batch);
        if (q->carried_.empty()) {
          std::lock_guard lk(q->mu_);
          if (q->shared_.empty()) {
            q->scheduled_ = false;
            return;
          }
        }
        q->schedule(std::move(self), true);
      }
    } end{this, outer, batch, self};
    while (item* it = batch.pop_front()) it->complete(it, true);
  }

  void discard() noexcept {
    list l;
    {
      std::lock_guard lk(mu_);
      l = std::move(carried_);
      l.splice_back(std::move(shared_));
      has_shared_.store(false, std::memory_order_relaxed);
      scheduled_ = false;
    }
    destroy(std::move(l));
  }

  boost::asio::io_context* io_;
  alignas(std::max_align_t) unsigned char slot_[128];
  shard_mutex mu_;
  list shared_;                          // under mu_
  std::atomic<bool> has_shared_{false};  // written under mu_: shared_ is not empty
  bool scheduled_ = false;               // under mu_: a round is posted or running
  list carried_;  // for the next round: touched only by the thread of the running round
  static inline thread_local ready_queue* draining_ = nullptr;
};

}  // namespace cacheflight::detail

#endif
