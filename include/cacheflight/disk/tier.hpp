// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DISK_TIER_HPP
#define CACHEFLIGHT_DISK_TIER_HPP

#include <cacheflight/tier.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

namespace cacheflight::disk {

/// When a completed write is on disk.
enum class durability {
  /// A put or erase completes once its transaction is committed and synced
  /// (`fdatasync` of the data, then of the meta page): a machine crash or power
  /// loss right after the completion keeps it.
  durable,
  /// A put or erase completes once its transaction is committed and its data
  /// pages are synced; the meta page that makes it current is synced with the
  /// next commit or `async_flush`. A process crash (`kill -9`, OOM) loses
  /// nothing that completed. A machine crash or power loss may undo the last
  /// committed transaction (every write that completed in it, which may be the
  /// writes of the last few milliseconds), and never corrupts the store: it
  /// reopens at the transaction before, whole. One sync a commit instead of two.
  relaxed,
};

/// Options of a disk `tier`. An aggregate: use designated initializers.
struct tier_options {
  /// The directory of the store, created (with its parents) if missing. It holds
  /// LMDB's `data.mdb` and `lock.mdb`. Must be on a local file system.
  std::filesystem::path path;
  /// The budget: the store's file never grows past it (it is LMDB's map size;
  /// at least 1 MiB, at most 64 TiB, else `error::invalid_option`). The pages
  /// in use (entries, indexes and LMDB's own, see `store_stats::used_bytes`)
  /// are kept under three quarters of it, the rest being room for LMDB's
  /// copy-on-write pages: before a commit that would pass that mark (by an
  /// estimate of what its puts add), and after one that did, expired entries,
  /// then the oldest written, are dropped, in small transactions of their own.
  /// One entry (key and value) larger than `max_bytes / 16`, or than LMDB's
  /// limit on a value less a record's header (2^32 - 25 bytes), is refused
  /// with `error::value_too_large` (see `tier::max_value_bytes`).
  ///
  /// A store made with a larger budget may be reopened with a smaller one.
  /// Its file keeps its size (LMDB never shrinks it), and LMDB maps it up to
  /// its last page in use when that is past the new budget, so the file does
  /// not grow either (`store_stats::map_bytes` is then that size). The
  /// entries are dropped as above, expired ones first, then the oldest
  /// written, until the pages in use are under three quarters of the new
  /// budget: by the first write, or by the idle writer within
  /// `sweep_interval`. Only a copy of the store (LMDB's `mdb_copy -c`) is
  /// smaller.
  std::uint64_t max_bytes = std::uint64_t{1} << 30;
  /// See `durability`.
  disk::durability durability = disk::durability::durable;
  /// Puts accepted and not yet taken by the writer at most; beyond it a put
  /// fails with `error::queue_full`. Erases, clears and flushes are never refused.
  std::size_t max_queued_writes = 10'000;
  /// Writes committed in one transaction at most (group commit: the writer takes
  /// every queued write up to this count, and up to an estimated `max_bytes / 16`
  /// bytes of pages).
  std::size_t max_write_batch = 4096;
  /// Reader threads (1 to 64). Each serves the reads queued at the moment in
  /// one LMDB read transaction; one of them polls the queue for up to 50 µs
  /// before it blocks. A store created by this tier has 126 + `readers` slots
  /// in LMDB's reader table, shared by every process that opens it.
  std::size_t readers = 2;
  /// How often an idle writer looks for expired entries to remove (and clears
  /// the reader slots of dead processes); values above a day count as a day.
  std::chrono::milliseconds sweep_interval{1000};
  /// Expired entries removed by one sweep at most (the first commit of each
  /// batch of writes sweeps, and so does the idle writer). The budget's
  /// eviction, which drops expired entries before live ones, is not bound by
  /// it: it removes what it must.
  std::size_t sweep_batch = 1000;
};

/// What a disk tier reports of its store (see `tier::stats`).
struct store_stats {
  std::uint64_t entries = 0;        ///< entries in the store (expired ones not yet swept included)
  /// Bytes of the pages in use: those of the entries and their indexes, of
  /// LMDB's free list and main database, and the two meta pages. The rest of
  /// the file is free pages, reused by later writes.
  std::uint64_t used_bytes = 0;
  /// LMDB's map size: `max_bytes`, or, for a store made with a larger budget,
  /// the size of its file up to its last page in use when that is larger.
  std::uint64_t map_bytes = 0;
  /// Write transactions committed by this tier since it opened the store:
  /// those of the batches of writes (one a batch, more for a batch split to
  /// fit the budget; flushes and erases of absent keys count, though LMDB then
  /// writes nothing, and a commit that fails does not), of the idle sweeps and
  /// of the eviction steps that removed entries. The transaction that creates
  /// a new store is not counted.
  std::uint64_t commits = 0;
  std::uint64_t evicted = 0;        ///< entries dropped to stay within the budget
  std::uint64_t expired = 0;        ///< expired entries removed (by the sweeps and the budget's eviction)
  std::uint64_t too_large = 0;      ///< puts refused with `error::value_too_large`
  std::uint64_t queue_full = 0;     ///< puts refused with `error::queue_full`
  /// Puts, erases and clears that failed in the store: no room in the budget
  /// (`errc::no_space_on_device`) or a failed commit (disk full, I/O error).
  /// One for each write, however many failed in one transaction.
  std::uint64_t write_errors = 0;
};

/// A cache tier on the local disk, in an LMDB environment: what it holds
/// survives restarts and crashes of the process, and opening it reads nothing
/// in advance (a copy-on-write B+tree needs no recovery).
///
/// - Values are the cache's encoded bytes, stored with their absolute expiry
///   (wall-clock time, as in Redis); an expired value is never returned, and
///   the writer removes expired entries in bounded passes (every commit, and
///   every `sweep_interval` while idle). Reads never write.
/// - A put with a TTL of zero or less stores nothing: it erases the key.
/// - Keys of any length but zero: a key longer than 510 bytes is stored under a 128-bit
///   digest with the whole key kept beside its value and compared on every
///   read, so two keys never share a value (two long keys with one digest
///   replace each other, like a cache eviction).
/// - Writes: one writer thread takes every queued put, erase, clear and flush,
///   applies them in order in one transaction, commits it (see `durability`),
///   then completes them all. A batch that does not fit in the room the budget
///   leaves is split, in order, into several transactions; each write
///   completes with the outcome of its own.
/// - Reads: `readers` threads; each takes the reads queued at that moment and
///   answers them in one read transaction. Reads see the writes initiated
///   before them: a key with a write not yet committed is answered from the
///   queue, and every key reads as absent while a clear is queued.
/// - Several processes on one host may open one directory (with the same
///   `max_bytes`): each reads what the others committed. Within a process, a
///   directory is open once: a second tier on it, by any path that names it
///   (symbolic links included), is refused with `error::already_open`. Do not
///   use a tier in a child process after `fork()`.
///
/// @par Errors
/// The constructor throws `boost::system::system_error`: `error::invalid_option`
/// for options out of range; the file system's error for a directory that
/// cannot be created or opened for writing (`errc::permission_denied`,
/// `errc::read_only_file_system`, ...); `error::corrupt_store` for files that
/// are not a store of this library (another LMDB database, any other file) or
/// are shorter than the pages their meta page says are in use;
/// `error::already_open`. An empty `data.mdb` is a new store, not a truncated
/// one: LMDB creates the file empty before it writes its first pages, and a
/// crash in between leaves it so. Operations complete with
/// `error::invalid_key` (an empty key), `error::value_too_large`,
/// `error::queue_full`, the file system's error for a failed commit
/// (`errc::no_space_on_device`, `errc::file_too_large`, an I/O error; the
/// writes of that transaction are not stored), `errc::no_space_on_device` too
/// for a write that does not fit in the budget even alone: the tier first
/// clears the reader slots of dead processes, then drops entries down to half,
/// then a quarter, of the budget, no further, since what then fills it is
/// pages that read transactions of other processes still see (an erase needs
/// room too: LMDB copies the pages it changes), `error::corrupt_store` for a
/// record whose header is damaged, or `operation_aborted`.
///
/// @par Damaged files
/// LMDB does not checksum pages. The tier checks a record's header (its magic,
/// and a full-key length that fits its key) and the cache checks its
/// envelope; damage elsewhere is not detected. Bytes damaged inside LMDB's
/// own structures (the B-trees' branch and leaf pages, the free list) can
/// make a read or a write return wrong data or a wrong error, or crash the
/// process (`SIGSEGV`, `SIGBUS`, an LMDB assertion). A store whose file may
/// be damaged should be deleted, not opened.
///
/// @par Threads
/// Every member may be called from any thread, concurrently. The tier owns
/// 1 + `readers` threads. A completion handler runs through its associated
/// executor (the tier's when it has none) and is never invoked inside its
/// initiating function: results known at once are posted to the tier's
/// executor first; results from the tier's threads are dispatched, which for an
/// `io_context`'s executor or a strand is a post. (An executor that runs work
/// inline when dispatched to, such as `system_executor`, would run the handler
/// on a tier thread: bind handlers to an `io_context` or a strand.) Until it
/// completes, an operation counts as outstanding work of that executor. Reads
/// bound to one executor and answered together complete with one dispatch.
///
/// @par Cancellation
/// `async_get` honours its cancellation slot (every cancellation type) while
/// the read is queued: it then completes with `operation_aborted`. A read
/// already taken by a reader thread completes normally. Writes are not
/// cancellable.
///
/// @par Lifetime
/// The destructor commits the writes already accepted, completes the queued
/// reads with `operation_aborted` (posted through the tier's executor), and joins the tier's threads (unless the
/// tier is destroyed on one of them, by a handler the tier released; the
/// threads then finish on their own). When the tier's execution context shuts
/// down, the handlers it still holds are destroyed without being invoked.
class tier final : public cacheflight::tier {
 public:
  using executor_type = boost::asio::any_io_executor;
  /// Completion signature of `async_flush`.
  using flush_signature = void(boost::system::error_code);

  /// Opens (or creates) the store in `opts.path`. Opening reads LMDB's meta
  /// pages and checks the file's size; it reads no entry.
  /// @throws boost::system::system_error as listed under Errors.
  tier(executor_type ex, tier_options opts);
  ~tier() override;

  tier(const tier&) = delete;
  tier& operator=(const tier&) = delete;

  std::string_view name() const noexcept override { return "disk"; }

  /// Never an open breaker: the disk does not go away. `queued_writes` counts
  /// writes accepted and not yet committed; `writes` the committed ones;
  /// `writes_dropped` those refused or failed.
  tier_health health() const override;

  /// The store's figures, as of this tier's last commit (or its opening);
  /// thread-safe, reads no file.
  store_stats stats() const;

  /// The largest entry (key and value bytes) a put accepts: `max_bytes / 16`,
  /// at most 2^32 - 25 (4 GiB less 25 bytes).
  std::uint64_t max_value_bytes() const noexcept;

  /// The store's directory, as given.
  const std::filesystem::path& path() const noexcept;

  /// The executor given at construction.
  executor_type get_executor() const noexcept;

  /// Completes when every write initiated before it is committed and synced
  /// to disk, in both durability modes.
  /// @par Completion signature
  /// @code void(boost::system::error_code ec) @endcode
  /// `ec` is the first write failure (a commit or a sync) since the previous
  /// flush, if any: a flush that succeeds means every write before it is on disk.
  /// @par Cancellation
  /// Not cancellable.
  template <boost::asio::completion_token_for<flush_signature> CompletionToken>
  auto async_flush(CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, flush_signature>(
        [this](auto handler) { do_flush(done_handler(std::move(handler))); }, token);
  }

 protected:
  void do_get(std::string key, get_handler handler) override;
  void do_put(std::string key, std::string bytes, std::chrono::milliseconds ttl, done_handler handler) override;
  void do_erase(std::string key, done_handler handler) override;
  void do_clear(done_handler handler) override;

 private:
  void do_flush(done_handler handler);

  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace cacheflight::disk

#endif
