// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#include <cacheflight/error.hpp>
#include <cacheflight/redis/resp.hpp>

#include <hiredis/hiredis.h>

#include <new>
#include <utility>

namespace cacheflight::redis {

namespace {

// hiredis' reader, told to build `reply` objects in place: the reply being
// parsed is the reader's own (its `privdata`), an element is its parent's
// `elements[idx]`. A null return is hiredis' out-of-memory error; no
// exception crosses the C code.

reply* target(const redisReadTask* task) {
  if (!task->parent) {
    auto* root = static_cast<reply*>(task->privdata);
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

}  // namespace

struct reply_reader::impl {
  impl() : r(redisReaderCreateWithFunctions(&in_place_functions)) {
    if (!r) throw std::bad_alloc();
    r->privdata = &building;
  }
  ~impl() { redisReaderFree(r); }
  impl(const impl&) = delete;
  impl& operator=(const impl&) = delete;

  redisReader* r;
  reply building;  // the reply being parsed (an array may span several feeds)
  bool failed = false;
};

reply_reader::reply_reader() : impl_(std::make_unique<impl>()) {}
reply_reader::~reply_reader() = default;
reply_reader::reply_reader(reply_reader&&) noexcept = default;
reply_reader& reply_reader::operator=(reply_reader&&) noexcept = default;

void reply_reader::feed(std::string_view bytes) {
  if (impl_->failed || bytes.empty()) return;
  if (redisReaderFeed(impl_->r, bytes.data(), bytes.size()) != REDIS_OK) impl_->failed = true;
}

bool reply_reader::next(reply& out, boost::system::error_code& ec) {
  ec = {};
  if (impl_->failed) {
    ec = make_error_code(error::protocol_error);
    return false;
  }
  void* raw = nullptr;
  if (redisReaderGetReply(impl_->r, &raw) != REDIS_OK) {
    impl_->failed = true;
    ec = make_error_code(error::protocol_error);
    return false;
  }
  if (!raw) return false;
  // The finished reply goes to `out`; `out`'s old memory is reused for the next.
  swap(out, impl_->building);
  return true;
}

std::optional<reply> reply_reader::next(boost::system::error_code& ec) {
  reply out;
  if (!next(out, ec)) return std::nullopt;
  return out;
}

}  // namespace cacheflight::redis
