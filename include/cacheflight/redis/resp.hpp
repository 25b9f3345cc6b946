// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_REDIS_RESP_HPP
#define CACHEFLIGHT_REDIS_RESP_HPP

// The Redis protocol (RESP2), without I/O: commands are written here by hand
// (an array of bulk strings, so every argument is binary safe and no command is
// ever built by concatenating user input into text); replies are parsed by
// hiredis' reader.

#include <boost/system/error_code.hpp>

#include <charconv>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cacheflight::redis {

namespace detail {

// One bulk string holding `head` then `tail`; returns where its bytes start
// in `out`. Written in place after one resize of `out` (neither view may
// point into `out`).
inline std::size_t append_bulk(std::string& out, std::string_view head, std::string_view tail) {
  const std::size_t n = head.size() + tail.size();
  char len[24];
  const auto r = std::to_chars(len, len + sizeof len, n);
  const auto digits = static_cast<std::size_t>(r.ptr - len);
  const std::size_t old = out.size();
  out.resize(old + digits + n + 5);  // '$', the length, CRLF, the bytes, CRLF
  char* p = out.data() + old;
  *p++ = '$';
  std::memcpy(p, len, digits);
  p += digits;
  *p++ = '\r';
  *p++ = '\n';
  const std::size_t at = old + digits + 3;
  if (!head.empty()) std::memcpy(p, head.data(), head.size());
  p += head.size();
  if (!tail.empty()) std::memcpy(p, tail.data(), tail.size());
  p += tail.size();
  *p++ = '\r';
  *p = '\n';
  return at;
}

// "*<count>\r\n", the header of a command of `count` arguments.
inline void append_header(std::string& out, std::size_t count) {
  char buf[24];
  buf[0] = '*';
  auto r = std::to_chars(buf + 1, buf + sizeof buf - 2, count);
  *r.ptr++ = '\r';
  *r.ptr++ = '\n';
  out.append(buf, r.ptr);
}

inline void append_bulk(std::string& out, std::string_view arg) { append_bulk(out, arg, {}); }

}  // namespace detail

/// Appends one command, `args[0]` being its name, to `out`.
inline void append_command(std::string& out, std::initializer_list<std::string_view> args) {
  detail::append_header(out, args.size());
  for (std::string_view a : args) detail::append_bulk(out, a);
}

/// As above, for a command whose arguments are only known at run time.
inline void append_command(std::string& out, const std::vector<std::string_view>& args) {
  detail::append_header(out, args.size());
  for (std::string_view a : args) detail::append_bulk(out, a);
}

/// As above, from owned strings.
inline void append_command(std::string& out, const std::vector<std::string>& args) {
  detail::append_header(out, args.size());
  for (const std::string& a : args) detail::append_bulk(out, a);
}

struct reply;

namespace detail {

// A command as `async_exec` takes it, owning what it is made of: its RESP
// bytes (an array of bulk strings) when made from views, in place up to
// `inline_capacity` bytes (a GET or a short SET) and on the heap beyond; or
// the arguments' own strings, moved in, serialized by `append_to` straight
// into the connection's pending bytes (a large value is then copied once).
// No arguments: empty. With `into` set (`async_exec(args, into, token)`), the
// caller's reply that its reply is swapped into.
class command_bytes {
 public:
  static constexpr std::size_t inline_capacity = 104;

  command_bytes() noexcept = default;
  explicit command_bytes(std::initializer_list<std::string_view> args) { build(args); }
  explicit command_bytes(std::vector<std::string> args) noexcept : args_(std::move(args)) {}

  command_bytes(command_bytes&& o) noexcept
      : into(std::exchange(o.into, nullptr)), size_(o.size_), heap_(std::move(o.heap_)), args_(std::move(o.args_)) {
    if (!heap_) std::memcpy(buf_, o.buf_, size_);
    o.size_ = 0;
    o.args_.clear();
  }
  command_bytes& operator=(command_bytes&& o) noexcept {
    if (this != &o) {
      size_ = o.size_;
      heap_ = std::move(o.heap_);
      args_ = std::move(o.args_);
      into = std::exchange(o.into, nullptr);
      if (!heap_) std::memcpy(buf_, o.buf_, size_);
      o.size_ = 0;
      o.args_.clear();
    }
    return *this;
  }

  bool empty() const noexcept { return size_ == 0 && args_.empty(); }

  // Appends the command's bytes to `out`.
  void append_to(std::string& out) const {
    if (!args_.empty())
      append_command(out, args_);
    else
      out.append(heap_ ? heap_.get() : buf_, size_);
  }

  // The bytes, for a command kept to be sent again: owned arguments are
  // serialized first.
  std::string_view view() {
    if (!args_.empty()) {
      std::vector<std::string> args = std::move(args_);
      args_.clear();
      build(args);
    }
    return {heap_ ? heap_.get() : buf_, size_};
  }

  // The caller's reply that the reply is swapped into, for
  // `async_exec(args, into, token)`; null otherwise.
  reply* into = nullptr;

 private:
  template <class Range>
  void build(const Range& args) {
    std::size_t count = 0, total = 0;
    for (const auto& a : args) {
      const std::string_view v(a);
      total += 1 + digits(v.size()) + 2 + v.size() + 2;
      ++count;
    }
    if (count == 0) return;
    total += 1 + digits(count) + 2;
    char* p = buf_;
    if (total > inline_capacity) {
      heap_ = std::make_unique_for_overwrite<char[]>(total);
      p = heap_.get();
    }
    *p++ = '*';
    p = number(p, count);
    for (const auto& a : args) {
      const std::string_view v(a);
      *p++ = '$';
      p = number(p, v.size());
      if (!v.empty()) std::memcpy(p, v.data(), v.size());
      p += v.size();
      *p++ = '\r';
      *p++ = '\n';
    }
    size_ = total;
  }

  static std::size_t digits(std::size_t n) noexcept {
    std::size_t d = 1;
    while (n >= 10) {
      n /= 10;
      ++d;
    }
    return d;
  }
  // `n` then CRLF, into exactly the room counted for it.
  static char* number(char* p, std::size_t n) noexcept {
    p = std::to_chars(p, p + digits(n), n).ptr;
    *p++ = '\r';
    *p++ = '\n';
    return p;
  }

  std::size_t size_ = 0;
  std::unique_ptr<char[]> heap_;
  std::vector<std::string> args_;
  char buf_[inline_capacity];
};

}  // namespace detail

/// One reply from the server.
struct reply {
  enum class kind { status, error, integer, bulk, nil, array };
  kind type = kind::nil;
  std::string str;               ///< status, error or bulk
  long long integer = 0;         ///< integer
  std::vector<reply> elements;   ///< array

  bool is_error() const noexcept { return type == kind::error; }

  /// Exchanges the contents of two replies, their memory included: no
  /// allocation, no copy.
  friend void swap(reply& a, reply& b) noexcept {
    std::swap(a.type, b.type);
    a.str.swap(b.str);
    std::swap(a.integer, b.integer);
    a.elements.swap(b.elements);
  }
};

/// What one reply may take by default (`reply_reader`,
/// `connection_options::max_reply_bytes`): 512 MiB, the longest string a
/// Redis server accepts by default (`proto-max-bulk-len`), and 4 KiB more, so
/// that such a string also fits in a small array.
inline constexpr std::size_t default_max_reply_bytes = (std::size_t(512) << 20) + 4096;
/// The largest bound a reader takes: hiredis finds a reply's lines with `int`
/// offsets into what it has buffered.
inline constexpr std::size_t max_max_reply_bytes = (std::size_t(1) << 31) - 4096;

/// Parses replies from a byte stream, in order. Not thread-safe.
///
/// A protocol error is sticky, as hiredis' reader is: after one, `next` keeps
/// failing and the connection must be closed and opened anew.
///
/// Each reply is bounded: its strings' bytes, plus `sizeof(reply)` for each
/// element of each of its arrays, at most `max_reply_bytes`. A reply beyond it
/// is a protocol error, found before its memory is allocated: an array's
/// elements are counted from its header, and a string is refused once more of
/// its bytes are buffered than the bound leaves. The bytes waiting to be
/// parsed are then at most the bound, plus 64 bytes, plus one `feed`; the
/// reader's memory for one reply is about twice the bound at most (its input
/// buffer, which grows ahead of need, and the reply built from it, which
/// coexist while the last string is copied out).
///
/// Replies are built in place, without hiredis' own reply objects: the
/// reader's own allocations are its input buffer's growth and the memory of
/// the replies it builds. With `next(reply&, ec)` a caller can lend that
/// memory back (see there).
class reply_reader {
 public:
  /// With `default_max_reply_bytes`.
  reply_reader();
  /// @throws boost::system::system_error with `error::invalid_option` for a
  /// `max_reply_bytes` of 0 or above `max_max_reply_bytes`.
  explicit reply_reader(std::size_t max_reply_bytes);
  ~reply_reader();
  reply_reader(const reply_reader&) = delete;
  reply_reader& operator=(const reply_reader&) = delete;
  reply_reader(reply_reader&&) noexcept;
  reply_reader& operator=(reply_reader&&) noexcept;

  /// Adds received bytes.
  void feed(std::string_view bytes);

  /// The next complete reply, or nullopt when more bytes are needed. Sets `ec`
  /// to `cacheflight::error::protocol_error` on malformed input and on a reply
  /// beyond the bound.
  std::optional<reply> next(boost::system::error_code& ec);

  /// As above, into `out`: returns true with the next complete reply in
  /// `out`, false when more bytes are needed or on error (`ec` set as above).
  /// `out`'s previous contents are replaced, and its memory passes to the
  /// reader, which builds the next reply in it: a caller that reads
  /// every reply into one `reply` trades two buffers with the reader, so a
  /// status, error or bulk reply allocates only when it is longer than the
  /// buffer it is built in (an array's elements are made anew each time).
  bool next(reply& out, boost::system::error_code& ec);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace cacheflight::redis

#endif
