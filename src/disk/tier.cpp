// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#include <cacheflight/disk/tier.hpp>
#include <cacheflight/error.hpp>

#include "../common/shutdown_registry.hpp"
#include "format.hpp"

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/system/system_error.hpp>

#include <fcntl.h>
#include <lmdb.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace cacheflight::disk {

namespace asio = boost::asio;
using boost::system::error_code;
using std::chrono::milliseconds;

namespace {

// LMDB's own error codes, with its messages.
class lmdb_category_impl final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "lmdb"; }
  std::string message(int ev) const override { return ::mdb_strerror(ev); }
};

const boost::system::error_category& lmdb_category() {
  static const lmdb_category_impl instance;
  return instance;
}

error_code mdb_error(int rc) {
  switch (rc) {
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INCOMPATIBLE:
      return make_error_code(error::corrupt_store);
    default:
      if (rc > 0) return {rc, boost::system::system_category()};
      return {rc, lmdb_category()};
  }
}

[[noreturn]] void throw_error(error_code ec, const std::string& what) { throw boost::system::system_error(ec, what); }

// Whether an LMDB file is shorter than the pages its newer meta page says
// are in use; false for a file without a readable meta page (empty, or not
// LMDB's: LMDB refuses it). Checked before LMDB opens the file, which first
// maps that much: a damaged count would fail the map (ENOMEM) instead of
// being refused. The size is taken after the meta pages are read: another
// process writes a transaction's pages before its meta page, and the file
// never shrinks, so a store being written is never taken for a short one.
// The layout, on 64-bit builds: each meta page starts with a 16-byte page
// header; then the magic (4 bytes) and version (4), two 8-byte words, the two
// 48-byte database records (the first one's first 4 bytes: the page size),
// the last page in use (8) and the transaction id (8).
bool shorter_than_its_meta(const char* file) {
  if constexpr (sizeof(std::size_t) != 8) return false;
  const int fd = ::open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct meta {
    std::uint32_t psize = 0;
    std::uint64_t last_pg = 0, txnid = 0;
  };
  auto read_meta = [fd](off_t at) -> std::optional<meta> {
    unsigned char b[152];
    if (::pread(fd, b, sizeof b, at) != static_cast<ssize_t>(sizeof b)) return std::nullopt;
    std::uint32_t magic = 0, version = 0;
    meta m;
    std::memcpy(&magic, b + 16, 4);
    std::memcpy(&version, b + 20, 4);
    std::memcpy(&m.psize, b + 40, 4);
    std::memcpy(&m.last_pg, b + 136, 8);
    std::memcpy(&m.txnid, b + 144, 8);
    if (magic != 0xBEEFC0DE || version != 1) return std::nullopt;
    return m;
  };
  std::optional<meta> newest = read_meta(0);
  if (newest && newest->psize >= 512 && newest->psize <= 65536)
    if (auto second = read_meta(static_cast<off_t>(newest->psize)); second && second->txnid > newest->txnid)
      newest->last_pg = second->last_pg;
  struct ::stat st {};
  const bool sized = ::fstat(fd, &st) == 0;
  ::close(fd);
  if (!newest || !sized) return false;
  const std::uint64_t pages = newest->last_pg + 1, psize = newest->psize;
  if (pages == 0 || (psize != 0 && pages > std::numeric_limits<std::uint64_t>::max() / psize)) return true;
  return pages * psize > static_cast<std::uint64_t>(st.st_size);
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Directories open in this process, by device and inode.
std::mutex open_dirs_mu;
std::set<std::pair<dev_t, ino_t>> open_dirs;

MDB_val val(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
std::string_view view(const MDB_val& v) { return {static_cast<const char*>(v.mv_data), v.mv_size}; }

// An executor that counts the operation as outstanding work until released.
template <class Handler>
asio::any_completion_executor tracked(const Handler& h, const asio::any_io_executor& fallback) {
  return asio::prefer(asio::get_associated_executor(h, fallback), asio::execution::outstanding_work.tracked);
}

// Aborts a transaction unless it was handed on.
struct txn_guard {
  MDB_txn* t = nullptr;
  txn_guard() = default;
  txn_guard(const txn_guard&) = delete;
  txn_guard& operator=(const txn_guard&) = delete;
  ~txn_guard() {
    if (t) ::mdb_txn_abort(t);
  }
  MDB_txn* release() { return std::exchange(t, nullptr); }
};

}  // namespace

struct tier::impl : std::enable_shared_from_this<impl> {
  using get_handler = asio::any_completion_handler<cacheflight::tier::get_signature>;
  using done_handler = asio::any_completion_handler<cacheflight::tier::done_signature>;

  enum class kind { put, erase, clear, flush };

  struct write_op {
    kind what;
    std::string key;
    std::shared_ptr<const std::string> bytes;
    std::int64_t expires_ms = 0;
    std::uint64_t id = 0;
    done_handler h;
    asio::any_completion_executor work;
  };

  // A read waiting for a reader thread. `state`: 0 queued, 1 taken by a
  // reader, 2 cancelled; whoever moves it from 0 owns the handler.
  struct read_op {
    // Built with its handler: in Boost 1.81, move-assigning an
    // any_completion_handler recurses without end.
    read_op(std::string k, get_handler&& handler, asio::any_completion_executor w)
        : key(std::move(k)), h(std::move(handler)), work(std::move(w)) {}
    std::string key;
    get_handler h;
    asio::any_completion_executor work;
    std::atomic<int> state{0};
  };

  // The latest write of a key not committed yet: its bytes (null: erased).
  struct pending_write {
    std::uint64_t id;
    std::shared_ptr<const std::string> bytes;
    std::int64_t expires_ms;
  };

  executor_type ex;
  tier_options opts;
  MDB_env* env = nullptr;
  MDB_dbi dbi_data = 0, dbi_order = 0, dbi_expiry = 0, dbi_meta = 0;
  std::uint64_t psize = 4096;
  std::uint64_t map_bytes = 0;
  std::uint64_t budget_bytes = 0;  // max_bytes
  std::uint64_t high_bytes = 0;    // the pages in use are kept under it
  std::uint64_t low_bytes = 0;     // eviction brings them down to this
  std::uint64_t max_value = 0;
  std::uint64_t batch_bytes = 0;
  std::pair<dev_t, ino_t> dir_id{};
  bool registered = false;
  std::vector<MDB_txn*> reader_txns;

  std::mutex mu;  // the queues, the pending writes
  std::condition_variable writer_cv, reader_cv;
  bool stopping = false;
  std::deque<write_op> wq;
  std::size_t queued_puts = 0;
  std::uint64_t next_id = 0;
  std::unordered_map<std::string, pending_write> pending;
  std::size_t clears_pending = 0;
  std::deque<std::shared_ptr<read_op>> rq;
  std::size_t readers_waiting = 0;  // blocked on reader_cv
  std::atomic<std::size_t> rq_size{0};  // rq.size(), written under `mu`
  std::atomic<bool> spinning{false};    // a reader polls rq_size before it blocks

  // Completions are dispatched outside every lock. `busy` (under `mu`) counts
  // the threads between deciding to complete operations and having done so:
  // tier threads with a batch, callers completing at once, cancellations. When
  // the tier's execution context shuts down, `shut` is set and the shutdown
  // waits for `busy` to fall to zero, so no handler, and no work count, of
  // that context outlives it; from then on handlers are destroyed instead.
  std::atomic<bool> shut{false};
  std::size_t busy = 0;
  std::condition_variable idle_cv;
  // The first write failure since the last flush, reported by the next flush.
  error_code unflushed_error;

  std::thread writer;
  std::vector<std::thread> readers;

  std::atomic<std::size_t> unfinished_writes{0};
  std::atomic<std::uint64_t> writes{0}, dropped{0}, commits{0}, evicted{0}, expired{0}, too_large{0}, queue_full{0},
      write_errors{0}, entries{0}, used{0};

  impl(executor_type e, tier_options o) : ex(std::move(e)), opts(std::move(o)) {}

  ~impl() {
    for (MDB_txn* t : reader_txns) ::mdb_txn_abort(t);
    if (env) ::mdb_env_close(env);
    if (registered) {
      std::lock_guard lk(open_dirs_mu);
      open_dirs.erase(dir_id);
    }
  }

  // --- opening ---------------------------------------------------------------

  void open() {
    const std::string where = "cacheflight::disk::tier(" + opts.path.string() + ")";
    std::error_code fec;
    std::filesystem::create_directories(opts.path, fec);
    if (fec) throw_error(error_code(fec.value(), boost::system::system_category()), where + ": cannot create the directory");
    struct ::stat st {};
    if (::stat(opts.path.c_str(), &st) != 0) throw_error(error_code(errno, boost::system::system_category()), where);
    if (!S_ISDIR(st.st_mode)) throw_error(error_code(ENOTDIR, boost::system::system_category()), where);
    {
      std::lock_guard lk(open_dirs_mu);
      dir_id = {st.st_dev, st.st_ino};
      if (!open_dirs.insert(dir_id).second)
        throw_error(make_error_code(error::already_open), where);
      registered = true;
    }

    int rc = ::mdb_env_create(&env);
    if (rc) {
      env = nullptr;
      throw_error(mdb_error(rc), where);
    }
    ::mdb_env_set_maxdbs(env, 4);
    ::mdb_env_set_maxreaders(env, static_cast<unsigned>(126 + opts.readers));
    if ((rc = ::mdb_env_set_mapsize(env, static_cast<std::size_t>(opts.max_bytes)))) throw_error(mdb_error(rc), where);
    // A file shorter than its meta page says: refused before LMDB maps it.
    if (shorter_than_its_meta((opts.path / "data.mdb").c_str()))
      throw_error(make_error_code(error::corrupt_store), where + ": data.mdb is truncated");
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD;
    if (opts.durability == durability::relaxed) flags |= MDB_NOMETASYNC;
    if ((rc = ::mdb_env_open(env, opts.path.c_str(), flags, 0644))) {
      ::mdb_env_close(env);
      env = nullptr;
      throw_error(mdb_error(rc), where + ": cannot open the store");
    }

    // A truncated file would fault on the first read of a page past its end:
    // refuse it here. An empty one LMDB has just made a new store of, as it
    // makes every new store (a crash between its creating the file and
    // writing the meta pages leaves it empty).
    MDB_envinfo info{};
    MDB_stat est{};
    ::mdb_env_info(env, &info);
    ::mdb_env_stat(env, &est);
    psize = est.ms_psize;
    struct ::stat dst {};
    const std::filesystem::path data_file = opts.path / "data.mdb";
    if (::stat(data_file.c_str(), &dst) != 0) throw_error(error_code(errno, boost::system::system_category()), where);
    if (static_cast<std::uint64_t>(dst.st_size) < (static_cast<std::uint64_t>(info.me_last_pgno) + 1) * psize)
      throw_error(make_error_code(error::corrupt_store), where + ": data.mdb is truncated");
    int dead = 0;
    ::mdb_reader_check(env, &dead);

    // The map is larger than the budget when a store made with a larger one
    // uses more pages than it: LMDB maps at least the pages in use. Eviction
    // then brings the data down to this budget.
    ::mdb_env_info(env, &info);
    map_bytes = std::max<std::uint64_t>(info.me_mapsize, opts.max_bytes);
    budget_bytes = opts.max_bytes;
    high_bytes = budget_bytes / 4 * 3;
    low_bytes = high_bytes - budget_bytes / 32;
    // LMDB stores a value of at most 2^32 - 1 bytes: a record's header and
    // an entry's key and value must fit in that.
    max_value = std::min<std::uint64_t>(opts.max_bytes / 16, 0xffff'ffffULL - detail::record_header_size);
    batch_bytes = opts.max_bytes / 16;

    open_databases(where);

    reader_txns.resize(opts.readers, nullptr);
    for (MDB_txn*& t : reader_txns) {
      if ((rc = ::mdb_txn_begin(env, nullptr, MDB_RDONLY, &t))) {
        t = nullptr;
        throw_error(mdb_error(rc), where + ": cannot begin a read transaction");
      }
      ::mdb_txn_reset(t);
    }
  }

  void open_databases(const std::string& where) {
    txn_guard g;
    int rc = ::mdb_txn_begin(env, nullptr, 0, &g.t);
    if (rc) throw_error(mdb_error(rc), where + ": cannot begin a write transaction");
    rc = ::mdb_dbi_open(g.t, "meta", 0, &dbi_meta);
    if (rc == MDB_NOTFOUND) {
      // A new store, or someone else's database: only an empty one becomes ours.
      MDB_dbi main = 0;
      MDB_stat ms{};
      if ((rc = ::mdb_dbi_open(g.t, nullptr, 0, &main)) || (rc = ::mdb_stat(g.t, main, &ms)))
        throw_error(mdb_error(rc), where);
      if (ms.ms_entries != 0) throw_error(make_error_code(error::corrupt_store), where + ": not a cacheflight store");
      if ((rc = ::mdb_dbi_open(g.t, "meta", MDB_CREATE, &dbi_meta))) throw_error(mdb_error(rc), where);
      MDB_val k = val("format"), v = val(detail::format_name);
      if ((rc = ::mdb_put(g.t, dbi_meta, &k, &v, 0))) throw_error(mdb_error(rc), where);
    } else if (rc) {
      throw_error(mdb_error(rc), where + ": not a cacheflight store");
    } else {
      MDB_val k = val("format"), v{};
      rc = ::mdb_get(g.t, dbi_meta, &k, &v);
      if (rc == MDB_NOTFOUND || (rc == 0 && view(v) != detail::format_name))
        throw_error(make_error_code(error::corrupt_store), where + ": not a store of this format");
      if (rc) throw_error(mdb_error(rc), where);
    }
    for (auto [name, dbi] : {std::pair{"data", &dbi_data}, {"order", &dbi_order}, {"expiry", &dbi_expiry}})
      if ((rc = ::mdb_dbi_open(g.t, name, MDB_CREATE, dbi))) throw_error(mdb_error(rc), where);
    txn_counts c;
    snapshot(g.t, c);
    if ((rc = ::mdb_txn_commit(g.release()))) throw_error(mdb_error(rc), where);
    publish(c, false);
  }

  void start() {
    auto self = shared_from_this();
    writer = std::thread([self] { self->write_loop(); });
    for (std::size_t i = 0; i < opts.readers; ++i)
      readers.emplace_back([self, t = reader_txns[i]] { self->read_loop(t); });
  }

  bool on_own_thread() const {
    const auto me = std::this_thread::get_id();
    if (writer.get_id() == me) return true;
    return std::any_of(readers.begin(), readers.end(), [me](const std::thread& t) { return t.get_id() == me; });
  }

  void stop() {
    std::deque<std::shared_ptr<read_op>> reads;
    {
      std::lock_guard lk(mu);
      stopping = true;
      reads.swap(rq);
      rq_size.store(0, std::memory_order_relaxed);
    }
    writer_cv.notify_all();
    reader_cv.notify_all();
    for (auto& op : reads) {
      int expected = 0;
      if (op->state.compare_exchange_strong(expected, 1))
        complete_later(std::move(op->h), std::move(op->work), error_code(asio::error::operation_aborted),
                       std::optional<std::string>{});
    }
    const bool detach = on_own_thread();
    auto finish = [detach](std::thread& t) {
      if (!t.joinable()) return;
      if (detach) t.detach();
      else t.join();
    };
    finish(writer);
    for (std::thread& t : readers) finish(t);
  }

  // The execution context shut down: destroy every handler held (see
  // src/common/shutdown_registry.hpp); queued writes are still written.
  void drop_handlers() {
    std::vector<done_handler> doomed;
    std::vector<std::shared_ptr<read_op>> doomed_reads;
    std::vector<asio::any_completion_executor> works;
    shut.store(true);
    std::unique_lock lk(mu);
    for (write_op& op : wq) {
      if (op.h) doomed.emplace_back(std::move(op.h));
      works.emplace_back(std::move(op.work));
    }
    for (auto& op : rq) {
      int expected = 0;
      if (op->state.compare_exchange_strong(expected, 2)) doomed_reads.push_back(std::move(op));
    }
    rq.clear();
    rq_size.store(0, std::memory_order_relaxed);
    idle_cv.wait(lk, [&] { return busy == 0; });
  }

  // --- completing --------------------------------------------------------------

  // Completes `h` through its associated executor, from a tier thread (where
  // a dispatch to an io_context's or a strand's executor is a post).
  template <class Handler, class... Args>
  static void post_one(Handler& h, asio::any_completion_executor& work, const executor_type& fallback, Args... args) {
    auto e = asio::get_associated_executor(h, fallback);
    // The handler may run, and its context's run() return, before the
    // dispatch does: the context is kept busy until it has returned.
    const asio::any_completion_executor hold = work;
    asio::dispatch(e, [h = std::move(h), w = std::move(work), ... a = std::move(args)]() mutable {
      asio::get_associated_cancellation_slot(h).clear();
      std::move(h)(std::move(a)...);
    });
  }

  // Completes `h` later, from an initiating function or a cancellation
  // handler: through the tier's executor, which never runs it inline.
  template <class Handler, class... Args>
  static void post_later(Handler& h, asio::any_completion_executor& work, const executor_type& ex, Args... args) {
    asio::post(ex, [ex, h = std::move(h), w = std::move(work), ... a = std::move(args)]() mutable {
      post_one(h, w, ex, std::move(a)...);
    });
  }

  void enter() {
    std::lock_guard lk(mu);
    ++busy;
  }

  void leave() {
    {
      std::lock_guard lk(mu);
      --busy;
    }
    idle_cv.notify_all();
  }

  // Completes an operation at once, from an initiating function, a
  // cancellation handler or the destructor: through the tier's executor,
  // never inline. After the context's shutdown, destroys the handler instead.
  template <class Handler, class... Args>
  void complete_later(Handler h, asio::any_completion_executor work, Args... args) {
    enter();
    if (!shut.load()) post_later(h, work, ex, std::move(args)...);
    {
      Handler gone(std::move(h));
      asio::any_completion_executor w(std::move(work));
    }
    leave();
  }

  void complete_writes(std::vector<write_op>& batch, const std::vector<error_code>& results) {
    std::vector<done_handler> doomed;
    std::vector<asio::any_completion_executor> works;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      write_op& op = batch[i];
      if (!op.h) continue;
      if (shut.load()) {
        doomed.emplace_back(std::move(op.h));
        works.emplace_back(std::move(op.work));
      } else {
        post_one(op.h, op.work, ex, results[i]);
      }
    }
  }

  // A completed read, on its way to its handler.
  struct read_result {
    get_handler h;
    asio::any_completion_executor work;
    error_code ec;
    std::optional<std::string> value;
  };

  // Runs the handlers of `group`, which share one executor, in order. Should
  // one throw, the rest are handed back to that executor before the exception
  // goes on.
  static void run_group(std::vector<read_result>& group, std::size_t from, const executor_type& fallback) {
    for (std::size_t i = from; i < group.size(); ++i) {
      read_result& r = group[i];
      asio::get_associated_cancellation_slot(r.h).clear();
      try {
        std::move(r.h)(r.ec, std::move(r.value));
      } catch (...) {
        if (i + 1 < group.size()) {
          asio::post(fallback, [g = std::move(group), next = i + 1, fallback]() mutable {
            const auto e = asio::get_associated_executor(g[next].h, fallback);
            asio::dispatch(e, [g = std::move(g), next, fallback]() mutable { run_group(g, next, fallback); });
          });
        }
        throw;
      }
      r.work = {};
    }
  }

  // Completes reads; consecutive ones bound to one executor with one dispatch.
  void complete_reads(std::vector<std::pair<std::shared_ptr<read_op>, error_code>>& done,
                      std::vector<std::optional<std::string>> values) {
    std::vector<get_handler> doomed;
    std::vector<asio::any_completion_executor> works;
    std::size_t i = 0;
    while (i < done.size()) {
      if (shut.load()) {
        read_op& op = *done[i++].first;
        doomed.emplace_back(std::move(op.h));
        works.emplace_back(std::move(op.work));
        continue;
      }
      const auto e = asio::get_associated_executor(done[i].first->h, ex);
      std::vector<read_result> group;
      for (; i < done.size(); ++i) {
        read_op& op = *done[i].first;
        if (!group.empty() && asio::get_associated_executor(op.h, ex) != e) break;
        std::optional<std::string> v;
        if (i < values.size()) v = std::move(values[i]);
        group.push_back(read_result{std::move(op.h), std::move(op.work), done[i].second, std::move(v)});
      }
      const asio::any_completion_executor hold = group.front().work;  // see post_one
      asio::dispatch(e, [g = std::move(group), fallback = ex]() mutable { run_group(g, 0, fallback); });
    }
  }

  // --- reads -------------------------------------------------------------------

  // One reader at a time polls the queue for a short while before it blocks:
  // under a steady stream of reads, callers then queue work without waking a
  // thread (a futex wake per read would cost more than the read).
  void spin_for_reads() {
    bool expected = false;
    if (!spinning.compare_exchange_strong(expected, true, std::memory_order_acquire)) return;
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
    for (unsigned n = 1; rq_size.load(std::memory_order_relaxed) == 0; ++n) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#elif defined(__aarch64__)
      asm volatile("yield");
#endif
      if (n % 64 == 0 && std::chrono::steady_clock::now() >= until) break;
    }
    spinning.store(false, std::memory_order_release);
  }

  void read_loop(MDB_txn* txn) {
    std::vector<std::shared_ptr<read_op>> batch;
    std::vector<std::pair<std::shared_ptr<read_op>, error_code>> done;
    std::vector<std::optional<std::string>> values;
    for (;;) {
      batch.clear();
      spin_for_reads();
      {
        std::unique_lock lk(mu);
        ++readers_waiting;
        reader_cv.wait(lk, [&] { return !rq.empty() || stopping; });
        --readers_waiting;
        if (stopping) return;
        while (!rq.empty() && batch.size() < 256) {
          batch.push_back(std::move(rq.front()));
          rq.pop_front();
        }
        rq_size.store(rq.size(), std::memory_order_relaxed);
        if (!rq.empty()) reader_cv.notify_one();
        ++busy;
      }
      done.clear();
      values.clear();
      const int rc = ::mdb_txn_renew(txn);
      const std::int64_t now = now_ms();
      for (auto& op : batch) {
        int expected = 0;
        if (!op->state.compare_exchange_strong(expected, 1)) continue;  // cancelled
        error_code ec = rc ? mdb_error(rc) : error_code{};
        std::optional<std::string> v;
        if (!rc) ec = lookup(txn, op->key, now, v);
        done.emplace_back(std::move(op), ec);
        values.push_back(std::move(v));
      }
      if (!rc) ::mdb_txn_reset(txn);
      complete_reads(done, std::move(values));
      done.clear();
      batch.clear();
      leave();
    }
  }

  error_code lookup(MDB_txn* txn, std::string_view key, std::int64_t now, std::optional<std::string>& out) {
    const std::string dk = detail::data_key(key);
    MDB_val k = val(dk), v{};
    const int rc = ::mdb_get(txn, dbi_data, &k, &v);
    if (rc == MDB_NOTFOUND) return {};
    if (rc) return mdb_error(rc);
    const auto r = detail::parse_record(dk, view(v));
    if (!r) return make_error_code(error::corrupt_store);
    if (detail::is_digest_key(key) && r->full_key != key) return {};  // another key with the same digest
    if (r->expires_ms != 0 && r->expires_ms <= now) return {};
    out.emplace(r->bytes);
    return {};
  }

  // --- writes ------------------------------------------------------------------

  // What a write transaction changed in the figures; published once it committed.
  struct txn_counts {
    std::uint64_t entries = 0, used = 0, expired = 0, evicted = 0;
  };

  void snapshot(MDB_txn* t, txn_counts& c) const {
    MDB_stat st{};
    if (::mdb_stat(t, dbi_data, &st) == 0) c.entries = st.ms_entries;
    c.used = used_bytes(t);
  }

  void publish(const txn_counts& c, bool committed) {
    entries.store(c.entries, std::memory_order_relaxed);
    used.store(c.used, std::memory_order_relaxed);
    expired.fetch_add(c.expired, std::memory_order_relaxed);
    evicted.fetch_add(c.evicted, std::memory_order_relaxed);
    if (committed) commits.fetch_add(1, std::memory_order_relaxed);
  }

  // The bytes of the pages in use: the two meta pages and every B-tree's
  // pages (the entries, the indexes, LMDB's main database and its free list).
  // The rest of the file is free pages, which LMDB reuses.
  std::uint64_t used_bytes(MDB_txn* t) const {
    std::uint64_t pages = 2;
    for (MDB_dbi d : {MDB_dbi{0}, MDB_dbi{1}, dbi_data, dbi_order, dbi_expiry, dbi_meta}) {
      MDB_stat st{};
      if (::mdb_stat(t, d, &st) == 0) pages += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
    }
    return pages * psize;
  }

  std::uint64_t last_seq(MDB_txn* t, int& rc) const {
    MDB_cursor* c = nullptr;
    if ((rc = ::mdb_cursor_open(t, dbi_order, &c))) return 0;
    MDB_val k{}, v{};
    rc = ::mdb_cursor_get(c, &k, &v, MDB_LAST);
    ::mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND) {
      rc = 0;
      return 0;
    }
    if (rc) return 0;
    return k.mv_size == 8 ? detail::load_be64(static_cast<const char*>(k.mv_data)) : 0;
  }

  // Removes the entry under data key `dk` and its index entries.
  int remove_entry(MDB_txn* t, std::string_view dk) {
    MDB_val k = val(dk), v{};
    int rc = ::mdb_get(t, dbi_data, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (auto r = detail::parse_record(dk, view(v))) {
      char seqk[8];
      detail::store_be64(seqk, r->seq);
      MDB_val ok{8, seqk};
      rc = ::mdb_del(t, dbi_order, &ok, nullptr);
      if (rc && rc != MDB_NOTFOUND) return rc;
      if (r->expires_ms != 0) {
        auto ek = detail::expiry_key(r->expires_ms, r->seq);
        MDB_val ekv{ek.size(), ek.data()};
        rc = ::mdb_del(t, dbi_expiry, &ekv, nullptr);
        if (rc && rc != MDB_NOTFOUND) return rc;
      }
    }
    k = val(dk);
    rc = ::mdb_del(t, dbi_data, &k, nullptr);
    return rc == MDB_NOTFOUND ? 0 : rc;
  }

  int apply_put(MDB_txn* t, write_op& op, std::uint64_t seq) {
    const std::string dk = detail::data_key(op.key);
    if (int rc = remove_entry(t, dk)) return rc;
    const std::string_view bytes = *op.bytes;
    MDB_val k = val(dk), v{detail::record_size(op.key, bytes.size()), nullptr};
    if (int rc = ::mdb_put(t, dbi_data, &k, &v, MDB_RESERVE)) return rc;
    detail::write_record(static_cast<char*>(v.mv_data), seq, op.expires_ms, op.key, bytes);
    char seqk[8];
    detail::store_be64(seqk, seq);
    MDB_val ok{8, seqk}, ov = val(dk);
    if (int rc = ::mdb_put(t, dbi_order, &ok, &ov, MDB_APPEND)) return rc;
    if (op.expires_ms != 0) {
      auto ek = detail::expiry_key(op.expires_ms, seq);
      MDB_val ekv{ek.size(), ek.data()}, ev = val(dk);
      if (int rc = ::mdb_put(t, dbi_expiry, &ekv, &ev, 0)) return rc;
    }
    return 0;
  }

  int apply_erase(MDB_txn* t, const write_op& op) {
    const std::string dk = detail::data_key(op.key);
    if (detail::is_digest_key(op.key)) {
      // Only this key's own record: another key with the same digest stays.
      MDB_val k = val(dk), v{};
      const int rc = ::mdb_get(t, dbi_data, &k, &v);
      if (rc == MDB_NOTFOUND) return 0;
      if (rc) return rc;
      const auto r = detail::parse_record(dk, view(v));
      if (r && r->full_key != op.key) return 0;
    }
    return remove_entry(t, dk);
  }

  int apply_clear(MDB_txn* t) {
    for (MDB_dbi d : {dbi_data, dbi_order, dbi_expiry})
      if (int rc = ::mdb_drop(t, d, 0)) return rc;
    return 0;
  }

  // After the removal of an index entry for data key `dk` and write sequence
  // `seq`: removes the entry it pointed to if that is still the one indexed
  // (an index entry left behind by a damaged record points to nothing, or to
  // a newer record of the key, which stays).
  int remove_indexed(MDB_txn* t, const std::string& dk, std::uint64_t seq, std::uint64_t& removed) {
    MDB_val dkv = val(dk), rv{};
    int rc = ::mdb_get(t, dbi_data, &dkv, &rv);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    const auto r = detail::parse_record(dk, view(rv));
    if (r && r->seq != seq) return 0;
    if ((rc = remove_entry(t, dk))) return rc;
    ++removed;
    return 0;
  }

  // Removes up to `limit` entries whose expiry passed, stopping early once
  // the live data is at most `until` bytes (0: no such stop).
  int sweep(MDB_txn* t, std::int64_t now, std::size_t limit, std::uint64_t until, std::uint64_t& removed) {
    MDB_cursor* c = nullptr;
    if (int rc = ::mdb_cursor_open(t, dbi_expiry, &c)) return rc;
    int rc = 0;
    for (std::size_t n = 0; n < limit; ++n) {
      if (until != 0 && used_bytes(t) <= until) break;
      MDB_val k{}, v{};
      rc = ::mdb_cursor_get(c, &k, &v, MDB_FIRST);
      if (rc == MDB_NOTFOUND) {
        rc = 0;
        break;
      }
      if (rc) break;
      if (k.mv_size != 16) {  // not an index entry of ours: drop it
        if ((rc = ::mdb_cursor_del(c, 0))) break;
        continue;
      }
      const auto exp = static_cast<std::int64_t>(detail::load_be64(static_cast<const char*>(k.mv_data)));
      if (exp > now) break;
      const std::string dk(view(v));
      const std::uint64_t seq = detail::load_be64(static_cast<const char*>(k.mv_data) + 8);
      if ((rc = ::mdb_cursor_del(c, 0)) || (rc = remove_indexed(t, dk, seq, removed))) break;
    }
    ::mdb_cursor_close(c);
    return rc;
  }

  // Drops up to `limit` of the oldest written entries, stopping early once
  // the pages in use are at most `until` bytes.
  int evict_oldest(MDB_txn* t, std::uint64_t until, std::size_t limit, std::uint64_t& removed) {
    MDB_cursor* c = nullptr;
    if (int rc = ::mdb_cursor_open(t, dbi_order, &c)) return rc;
    int rc = 0;
    for (std::size_t n = 0; n < limit && used_bytes(t) > until; ++n) {
      MDB_val k{}, v{};
      rc = ::mdb_cursor_get(c, &k, &v, MDB_FIRST);
      if (rc == MDB_NOTFOUND) {
        rc = 0;
        break;
      }
      if (rc) break;
      const std::string dk(view(v));
      const std::uint64_t seq = k.mv_size == 8 ? detail::load_be64(static_cast<const char*>(k.mv_data)) : 0;
      if ((rc = ::mdb_cursor_del(c, 0)) || (rc = remove_indexed(t, dk, seq, removed))) break;
    }
    ::mdb_cursor_close(c);
    return rc;
  }

  // The pages in use as of the last commit.
  std::uint64_t committed_used() {
    MDB_txn* t = nullptr;
    if (::mdb_txn_begin(env, nullptr, MDB_RDONLY, &t)) return used.load(std::memory_order_relaxed);
    const std::uint64_t u = used_bytes(t);
    ::mdb_txn_abort(t);
    return u;
  }

  // One small transaction that drops up to `limit` entries, expired ones
  // first, then the oldest written, stopping once the pages in use are at
  // most `until` bytes. `removed` counts the entries and the index entries
  // it dropped (an index entry left by a damaged record points to nothing),
  // `left` the pages in use after it.
  int evict_step(std::uint64_t until, std::size_t limit, std::uint64_t& removed, std::uint64_t& left) {
    txn_guard g;
    int rc = ::mdb_txn_begin(env, nullptr, 0, &g.t);
    if (rc) return rc;
    auto index_entries = [&] {
      std::uint64_t n = 0;
      for (MDB_dbi d : {dbi_order, dbi_expiry}) {
        MDB_stat st{};
        if (::mdb_stat(g.t, d, &st) == 0) n += st.ms_entries;
      }
      return n;
    };
    const std::uint64_t indexed = index_entries();
    txn_counts c;
    if ((rc = sweep(g.t, now_ms(), limit, until, c.expired))) return rc;
    if (c.expired < limit && (rc = evict_oldest(g.t, until, limit - c.expired, c.evicted))) return rc;
    removed = std::max(c.expired + c.evicted, indexed - index_entries());
    snapshot(g.t, c);
    left = c.used;
    if (removed == 0) return 0;  // nothing to commit
    if ((rc = ::mdb_txn_commit(g.release()))) return rc;
    publish(c, true);
    return 0;
  }

  // Brings the pages in use down to at most `until` bytes in small committed
  // transactions: each frees the pages of what it drops for the ones after it,
  // where one large transaction would need room for a copy of every page it
  // touches. A step that does not fit is halved, down to one entry. Returns
  // true when it dropped anything.
  bool evict_steps(std::uint64_t until) {
    // A step copies about a page per entry it drops: at most a sixteenth of
    // the budget.
    const auto max_step =
        static_cast<std::size_t>(std::clamp<std::uint64_t>(budget_bytes / 16 / psize, 64, 65536));
    std::size_t step = max_step;
    bool any = false;
    for (;;) {
      std::uint64_t removed = 0, left = 0;
      const int rc = evict_step(until, step, removed, left);
      if (rc == MDB_MAP_FULL && step > 1) {
        step /= 2;
        continue;
      }
      if (rc || removed == 0) return any;
      any = true;
      if (left <= until) return true;
      step = std::min(step * 2, max_step);
    }
  }

  // The pages a put adds to the store, estimated: its nodes in the three
  // databases, twice over for leaves that are half full, and a large value's
  // overflow pages.
  std::uint64_t write_cost(const write_op& op) const {
    constexpr std::uint64_t node = 16;  // node header and alignment
    // The data key: a long key's is its digest.
    const std::uint64_t dk = detail::is_digest_key(op.key) ? 17 : op.key.size() + 1;
    if (op.what != kind::put) return node + dk;
    const std::uint64_t rec = detail::record_size(op.key, op.bytes->size());
    std::uint64_t small = (node + 8 + dk) + (op.expires_ms != 0 ? node + 16 + dk : 0);
    std::uint64_t large = 0;
    if (rec + dk + node > psize / 2) {
      small += node + dk + 8;
      large = (rec + psize - 1) / psize * psize;
    } else {
      small += node + dk + rec;
    }
    return 2 * small + large;
  }

  // Applies ops [from, to) of `batch` in one transaction and commits it;
  // `sweep_limit` expired entries are removed with them.
  int commit_batch(std::vector<write_op>& batch, std::size_t from, std::size_t to, std::size_t sweep_limit,
                   bool& sync) {
    txn_guard g;
    int rc = ::mdb_txn_begin(env, nullptr, 0, &g.t);
    if (rc) return rc;
    std::uint64_t seq = last_seq(g.t, rc) + 1;
    if (rc) return rc;
    bool flushes = false;
    for (std::size_t i = from; i < to; ++i) {
      write_op& op = batch[i];
      switch (op.what) {
        case kind::put: rc = apply_put(g.t, op, seq++); break;
        case kind::erase: rc = apply_erase(g.t, op); break;
        case kind::clear: rc = apply_clear(g.t); break;
        case kind::flush: flushes = true; break;
      }
      if (rc) return rc;
    }
    txn_counts c;
    if (sweep_limit != 0 && (rc = sweep(g.t, now_ms(), sweep_limit, 0, c.expired))) return rc;
    snapshot(g.t, c);
    if ((rc = ::mdb_txn_commit(g.release()))) return rc;
    publish(c, true);
    if (flushes) sync = true;
    return 0;
  }

  // Commits ops [from, to) of `batch`, in order, setting each one's outcome
  // in `results` (an LMDB code). The budget: the pages in use are kept under
  // `high_bytes`. Room is made before a commit that would pass that mark, and
  // after one that did (the estimate may be short), always in small steps.
  // When the map fills up inside the transaction anyway: the reader slots of
  // dead processes are cleared (once a batch), then a range of several
  // writes is split in two; a single write that does not fit has room made
  // for it, down to half the budget, then to a quarter, no further: what then
  // fills the map is pages that read transactions of other processes still
  // see, which dropping entries does not free.
  void commit_range(std::vector<write_op>& batch, std::size_t from, std::size_t to, std::vector<int>& results,
                    bool& sync, bool& readers_checked, bool first) {
    std::uint64_t cost = 0;
    for (std::size_t i = from; i < to; ++i) cost += write_cost(batch[i]);
    if (used.load(std::memory_order_relaxed) + cost > high_bytes)
      evict_steps(low_bytes > cost + budget_bytes / 4 ? low_bytes - cost : budget_bytes / 4);
    int rc = commit_batch(batch, from, to, first ? opts.sweep_batch : 0, sync);
    if (rc == MDB_MAP_FULL && !readers_checked) {
      readers_checked = true;
      int dead = 0;
      ::mdb_reader_check(env, &dead);
      if (dead > 0) rc = commit_batch(batch, from, to, 0, sync);
    }
    if (rc == MDB_MAP_FULL && to - from > 1) {
      const std::size_t mid = from + (to - from) / 2;
      commit_range(batch, from, mid, results, sync, readers_checked, false);
      commit_range(batch, mid, to, results, sync, readers_checked, false);
      return;
    }
    for (std::uint64_t until : {budget_bytes / 2, budget_bytes / 4}) {
      if (rc != MDB_MAP_FULL) break;
      if (evict_steps(until)) rc = commit_batch(batch, from, to, 0, sync);
    }
    for (std::size_t i = from; i < to; ++i) results[i] = rc;
    if (!rc && used.load(std::memory_order_relaxed) > high_bytes) evict_steps(low_bytes);
  }

  void write_batch(std::vector<write_op>& batch) {
    bool sync = false, readers_checked = false;
    std::vector<int> rcs(batch.size(), 0);
    commit_range(batch, 0, batch.size(), rcs, sync, readers_checked, true);
    auto to_error = [](int rc) {
      if (rc == MDB_MAP_FULL) return make_error_code(boost::system::errc::no_space_on_device);
      return rc ? mdb_error(rc) : error_code{};
    };
    error_code sync_ec;
    if (sync && opts.durability == durability::relaxed) {
      if (int src = ::mdb_env_sync(env, 1)) sync_ec = mdb_error(src);
    }

    std::size_t stored = 0, failed = 0;
    std::vector<error_code> results;
    results.reserve(batch.size());
    {
      std::lock_guard lk(mu);
      for (std::size_t i = 0; i < batch.size(); ++i) {
        write_op& op = batch[i];
        error_code ec = to_error(rcs[i]);
        if (op.what == kind::put || op.what == kind::erase) {
          auto it = pending.find(op.key);
          if (it != pending.end() && it->second.id == op.id) pending.erase(it);
        } else if (op.what == kind::clear) {
          --clears_pending;
        }
        if (op.what == kind::flush) {
          if (!ec) ec = sync_ec ? sync_ec : unflushed_error;
          unflushed_error = {};
        } else {
          (rcs[i] ? failed : stored) += 1;
          if (!ec) ec = sync_ec;
          if (ec && !unflushed_error) unflushed_error = ec;
        }
        results.push_back(ec);
      }
    }
    unfinished_writes.fetch_sub(stored + failed, std::memory_order_relaxed);
    writes.fetch_add(stored, std::memory_order_relaxed);
    dropped.fetch_add(failed, std::memory_order_relaxed);
    write_errors.fetch_add(failed, std::memory_order_relaxed);
    complete_writes(batch, results);
  }

  void idle_sweep() {
    int dead = 0;
    ::mdb_reader_check(env, &dead);  // slots of processes that died reading
    {
      txn_guard g;
      if (::mdb_txn_begin(env, nullptr, 0, &g.t)) return;
      txn_counts c;
      if (!sweep(g.t, now_ms(), opts.sweep_batch, 0, c.expired) && c.expired != 0) {
        snapshot(g.t, c);
        if (::mdb_txn_commit(g.release()) == 0) publish(c, true);
      }
    }
    // Over the mark (a store reopened with a smaller budget, or written by
    // another process): back under it.
    if (committed_used() > high_bytes) evict_steps(low_bytes);
  }

  // Queues an erase, a clear or a flush: never refused while the tier runs.
  void enqueue(kind what, std::string key, done_handler h) {
    auto work = tracked(h, ex);
    std::unique_lock lk(mu);
    if (stopping || shut.load()) {
      lk.unlock();
      if (what != kind::flush) dropped.fetch_add(1, std::memory_order_relaxed);
      return complete_later(std::move(h), std::move(work), error_code(asio::error::operation_aborted));
    }
    const std::uint64_t id = ++next_id;
    if (what == kind::erase) {
      pending.insert_or_assign(key, pending_write{id, nullptr, 0});
    } else if (what == kind::clear) {
      pending.clear();
      ++clears_pending;
    }
    if (what != kind::flush) unfinished_writes.fetch_add(1, std::memory_order_relaxed);
    wq.push_back(write_op{what, std::move(key), nullptr, 0, id, std::move(h), std::move(work)});
    lk.unlock();
    writer_cv.notify_one();
  }

  void write_loop() {
    std::vector<write_op> batch;
    for (;;) {
      batch.clear();
      {
        std::unique_lock lk(mu);
        const auto idle = std::min<milliseconds>(opts.sweep_interval, std::chrono::hours(24));
        if (wq.empty() && !stopping) writer_cv.wait_for(lk, idle, [&] { return !wq.empty() || stopping; });
        if (wq.empty()) {
          if (stopping) return;
          lk.unlock();
          idle_sweep();
          continue;
        }
        std::uint64_t bytes = 0;
        while (!wq.empty() && batch.size() < opts.max_write_batch) {
          write_op& op = wq.front();
          const std::uint64_t sz = write_cost(op);
          if (!batch.empty() && bytes + sz > batch_bytes) break;
          bytes += sz;
          if (op.what == kind::put) --queued_puts;
          batch.push_back(std::move(op));
          wq.pop_front();
        }
        ++busy;
      }
      write_batch(batch);
      batch.clear();
      leave();
    }
  }
};

tier::tier(executor_type ex, tier_options opts) {
  using cacheflight::detail::throw_invalid_option;
  if (opts.path.empty()) throw_invalid_option("disk::tier_options::path must not be empty");
  if (opts.max_bytes < (std::uint64_t{1} << 20)) throw_invalid_option("disk::tier_options::max_bytes must be at least 1 MiB");
  if (opts.max_bytes > (std::uint64_t{1} << 46) || opts.max_bytes > std::numeric_limits<std::size_t>::max() / 2)
    throw_invalid_option("disk::tier_options::max_bytes must be at most 64 TiB and half the address space");
  if (opts.durability != durability::durable && opts.durability != durability::relaxed)
    throw_invalid_option("disk::tier_options::durability is not durable or relaxed");
  if (opts.max_queued_writes == 0) throw_invalid_option("disk::tier_options::max_queued_writes must be positive");
  if (opts.max_write_batch == 0) throw_invalid_option("disk::tier_options::max_write_batch must be positive");
  if (opts.readers == 0 || opts.readers > 64) throw_invalid_option("disk::tier_options::readers must be 1 to 64");
  if (opts.sweep_interval <= milliseconds::zero()) throw_invalid_option("disk::tier_options::sweep_interval must be positive");
  if (opts.sweep_batch == 0) throw_invalid_option("disk::tier_options::sweep_batch must be positive");
  impl_ = std::make_shared<impl>(std::move(ex), std::move(opts));
  impl_->open();
  impl_->start();
  cacheflight::detail::drop_handlers_at_shutdown(impl_->ex, impl_);
}

tier::~tier() { impl_->stop(); }

tier_health tier::health() const {
  return tier_health{breaker_state::closed, impl_->unfinished_writes.load(std::memory_order_relaxed),
                     impl_->writes.load(std::memory_order_relaxed), impl_->dropped.load(std::memory_order_relaxed)};
}

store_stats tier::stats() const {
  const impl& s = *impl_;
  constexpr auto r = std::memory_order_relaxed;
  return store_stats{s.entries.load(r),   s.used.load(r),      s.map_bytes, s.commits.load(r),
                    s.evicted.load(r),   s.expired.load(r),   s.too_large.load(r),  s.queue_full.load(r),
                    s.write_errors.load(r)};
}

std::uint64_t tier::max_value_bytes() const noexcept { return impl_->max_value; }

const std::filesystem::path& tier::path() const noexcept { return impl_->opts.path; }

tier::executor_type tier::get_executor() const noexcept { return impl_->ex; }

void tier::do_get(std::string key, get_handler handler) {
  impl& s = *impl_;
  auto work = tracked(handler, s.ex);
  if (key.empty())
    return s.complete_later(std::move(handler), std::move(work), make_error_code(error::invalid_key),
                            std::optional<std::string>{});
  std::unique_lock lk(s.mu);
  if (s.stopping || s.shut.load()) {
    lk.unlock();
    return s.complete_later(std::move(handler), std::move(work), error_code(asio::error::operation_aborted),
                            std::optional<std::string>{});
  }
  // Read your writes: a write not committed yet is what the store will hold.
  if (auto it = s.pending.find(key); it != s.pending.end() || s.clears_pending != 0) {
    std::shared_ptr<const std::string> bytes;
    std::int64_t expires_ms = 0;
    if (it != s.pending.end()) {
      bytes = it->second.bytes;
      expires_ms = it->second.expires_ms;
    }
    lk.unlock();
    std::optional<std::string> v;
    if (bytes && (expires_ms == 0 || expires_ms > now_ms())) v.emplace(*bytes);
    return s.complete_later(std::move(handler), std::move(work), error_code{}, std::move(v));
  }
  // The slot is assigned before the read is visible to a reader thread, in
  // the caller's context, which is where it is emitted and (on completion)
  // cleared.
  auto slot = asio::get_associated_cancellation_slot(handler);
  auto op = std::make_shared<impl::read_op>(std::move(key), std::move(handler), std::move(work));
  if (slot.is_connected()) {
    slot.assign([w = std::weak_ptr<impl::read_op>(op), ws = std::weak_ptr<impl>(impl_)](asio::cancellation_type_t) {
      auto op = w.lock();
      auto self = ws.lock();
      if (!op || !self) return;
      int expected = 0;
      if (!op->state.compare_exchange_strong(expected, 2)) return;
      self->complete_later(std::move(op->h), std::move(op->work), error_code(asio::error::operation_aborted),
                           std::optional<std::string>{});
    });
  }
  // A reader that is not blocked (busy, or polling) looks at the queue before
  // it blocks again.
  const bool wake = s.rq.empty() && s.readers_waiting != 0 && !s.spinning.load(std::memory_order_acquire);
  s.rq.push_back(std::move(op));
  s.rq_size.store(s.rq.size(), std::memory_order_relaxed);
  lk.unlock();
  if (wake) s.reader_cv.notify_one();
}

void tier::do_put(std::string key, std::string bytes, milliseconds ttl, done_handler handler) {
  impl& s = *impl_;
  if (ttl <= milliseconds::zero()) return do_erase(std::move(key), std::move(handler));  // nothing to keep
  auto work = tracked(handler, s.ex);
  auto refuse = [&](error_code ec) {
    s.dropped.fetch_add(1, std::memory_order_relaxed);
    s.complete_later(std::move(handler), std::move(work), ec);
  };
  if (key.empty()) return refuse(make_error_code(error::invalid_key));
  if (key.size() + bytes.size() > s.max_value) {
    s.too_large.fetch_add(1, std::memory_order_relaxed);
    return refuse(make_error_code(error::value_too_large));
  }
  std::int64_t expires_ms = 0;
  if (ttl != milliseconds::max()) {
    const std::int64_t now = now_ms();
    expires_ms = ttl.count() > std::numeric_limits<std::int64_t>::max() - now ? 0 : now + ttl.count();
  }
  std::unique_lock lk(s.mu);
  if (s.stopping || s.shut.load()) {
    lk.unlock();
    return refuse(asio::error::operation_aborted);
  }
  if (s.queued_puts >= s.opts.max_queued_writes) {
    lk.unlock();
    s.queue_full.fetch_add(1, std::memory_order_relaxed);
    return refuse(make_error_code(error::queue_full));
  }
  auto b = std::make_shared<const std::string>(std::move(bytes));
  const std::uint64_t id = ++s.next_id;
  s.pending.insert_or_assign(key, impl::pending_write{id, b, expires_ms});
  s.unfinished_writes.fetch_add(1, std::memory_order_relaxed);
  ++s.queued_puts;
  s.wq.push_back(
      impl::write_op{impl::kind::put, std::move(key), std::move(b), expires_ms, id, std::move(handler), std::move(work)});
  lk.unlock();
  s.writer_cv.notify_one();
}

void tier::do_erase(std::string key, done_handler handler) {
  if (key.empty()) {
    auto work = tracked(handler, impl_->ex);
    impl_->dropped.fetch_add(1, std::memory_order_relaxed);
    return impl_->complete_later(std::move(handler), std::move(work), make_error_code(error::invalid_key));
  }
  impl_->enqueue(impl::kind::erase, std::move(key), std::move(handler));
}

void tier::do_clear(done_handler handler) { impl_->enqueue(impl::kind::clear, {}, std::move(handler)); }

void tier::do_flush(done_handler handler) { impl_->enqueue(impl::kind::flush, {}, std::move(handler)); }

}  // namespace cacheflight::disk
