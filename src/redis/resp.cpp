// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#include <cacheflight/error.hpp>
#include <cacheflight/redis/resp.hpp>

#include <hiredis/hiredis.h>

#include <new>
#include <utility>

namespace cacheflight::redis {

namespace {

// hiredis' reader, told to build `reply` objects in place: the reply being
// parsed is the reader's own (`parse::building`, reached from the root task's
// `privdata`), an element is its parent's `elements[idx]`. A null return is
// hiredis' out-of-memory error; no exception crosses the C code. Each string
// and each array's elements are charged to the reply's bound before anything
// is allocated for them.

struct parse {
  reply building;                  // the reply being parsed (an array may span several feeds)
  std::size_t limit;               // max_reply_bytes
  std::size_t used = 0;            // charged to `building` so far

  // Charges `n` bytes to the reply; false, and the reply refused, beyond the bound.
  bool charge(std::size_t n) noexcept {
    if (n > limit - used) return false;
    used += n;
    return true;
  }
};

parse& state_of(const redisReadTask* task) {
  while (task->parent) task = task->parent;
  return *static_cast<parse*>(task->privdata);
}

reply* target(const redisReadTask* task) {
  if (!task->parent) {
    parse& p = *static_cast<parse*>(task->privdata);
    p.used = 0;
    reply* root = &p.building;
    root->type = reply::kind::nil;
    root->str.clear();
    root->integer = 0;
    root->elements.clear();
    return root;
  }
  auto* parent = static_cast<reply*>(task->parent->obj);
  return &parent->elements[static_cast<std::size_t>(task->idx)];
}

void* create_string(const redisReadTask* task, char* str, size_t len) {
  try {
    reply* r = target(task);
    if (!state_of(task).charge(len)) return nullptr;
    r->type = task->type == REDIS_REPLY_ERROR    ? reply::kind::error
              : task->type == REDIS_REPLY_STATUS ? reply::kind::status
                                                 : reply::kind::bulk;
    r->str.assign(str, len);
    return r;
  } catch (...) {
    return nullptr;
  }
}

void* create_array(const redisReadTask* task, int elements) {
  try {
    reply* r = target(task);
    parse& p = state_of(task);
    if (elements < 0 || static_cast<std::size_t>(elements) > p.limit / sizeof(reply) ||
        !p.charge(static_cast<std::size_t>(elements) * sizeof(reply)))
      return nullptr;
    r->type = reply::kind::array;
    r->elements.resize(static_cast<std::size_t>(elements));  // elements are filled in place
    return r;
  } catch (...) {
    return nullptr;
  }
}

void* create_integer(const redisReadTask* task, long long value) {
  reply* r = target(task);  // cannot throw: clearing only
  r->type = reply::kind::integer;
  r->integer = value;
  return r;
}

void* create_nil(const redisReadTask* task) { return target(task); }

void free_object(void*) {}  // every object belongs to the reader's reply

redisReplyObjectFunctions in_place_functions = {create_string, create_array, create_integer, create_nil,
                                                free_object};

// What a header line can take beyond the bytes charged for its string
// ("$<20 digits>\r\n", the string's own "\r\n", a partial next header).
constexpr std::size_t header_slack = 64;

}  // namespace

struct reply_reader::impl {
  explicit impl(std::size_t limit) : r(redisReaderCreateWithFunctions(&in_place_functions)), p{{}, limit} {
    if (!r) throw std::bad_alloc();
    r->privdata = &p;
  }
  ~impl() { redisReaderFree(r); }
  impl(const impl&) = delete;
  impl& operator=(const impl&) = delete;

  redisReader* r;
  parse p;
  bool failed = false;
  // Whether hiredis may find more since it last found the reply incomplete:
  // every item ends with CRLF, so until one arrives nothing new can end, and
  // a line item (which hiredis scans from its start on each call) is not
  // scanned again for every piece of it that comes in.
  bool ready = true;
  bool last_cr = false;  // the last byte fed was '\r'
};

reply_reader::reply_reader() : reply_reader(default_max_reply_bytes) {}
reply_reader::reply_reader(std::size_t max_reply_bytes) {
  if (max_reply_bytes == 0 || max_reply_bytes > max_max_reply_bytes)
    cacheflight::detail::throw_invalid_option("redis::reply_reader: max_reply_bytes must be from 1 to max_max_reply_bytes");
  impl_ = std::make_unique<impl>(max_reply_bytes);
}
reply_reader::~reply_reader() = default;
reply_reader::reply_reader(reply_reader&&) noexcept = default;
reply_reader& reply_reader::operator=(reply_reader&&) noexcept = default;

void reply_reader::feed(std::string_view bytes) {
  if (impl_->failed || bytes.empty()) return;
  // Bytes fed when all before them were read (between items, or after an
  // item's type byte) are looked at at once, so that a wrong type byte is
  // refused as soon as it arrives. (hiredis takes a string's last two bytes
  // without looking at them: one whose end is not CRLF, sent by a broken
  // server, waits here for the next CRLF.)
  if (!impl_->ready)
    impl_->ready = impl_->r->pos == impl_->r->len || (impl_->last_cr && bytes.front() == '\n') ||
                   bytes.find("\r\n") != std::string_view::npos;
  impl_->last_cr = bytes.back() == '\r';
  if (redisReaderFeed(impl_->r, bytes.data(), bytes.size()) != REDIS_OK) impl_->failed = true;
}

bool reply_reader::next(reply& out, boost::system::error_code& ec) {
  ec = {};
  if (impl_->failed) {
    ec = make_error_code(error::protocol_error);
    return false;
  }
  void* raw = nullptr;
  if (impl_->ready && redisReaderGetReply(impl_->r, &raw) != REDIS_OK) {
    impl_->failed = true;
    ec = make_error_code(error::protocol_error);
    return false;
  }
  if (!raw) {
    impl_->ready = false;
    // The bytes waiting for the rest of a reply count toward its bound: a
    // string declared too long is refused once that many bytes are buffered,
    // not once they have all arrived.
    const parse& p = impl_->p;
    const std::size_t buffered = impl_->r->len - impl_->r->pos;
    if (buffered > header_slack && buffered - header_slack > p.limit - p.used) {
      impl_->failed = true;
      ec = make_error_code(error::protocol_error);
    }
    return false;
  }
  // The finished reply goes to `out`; `out`'s old memory is reused for the next.
  swap(out, impl_->p.building);
  impl_->p.used = 0;
  return true;
}

std::optional<reply> reply_reader::next(boost::system::error_code& ec) {
  reply out;
  if (!next(out, ec)) return std::nullopt;
  return out;
}

}  // namespace cacheflight::redis
