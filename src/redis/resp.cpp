// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#include <cacheflight/error.hpp>
#include <cacheflight/redis/resp.hpp>

#include <hiredis/hiredis.h>

namespace cacheflight::redis {

namespace {

reply convert(const redisReply* r) {
  reply out;
  switch (r->type) {
    case REDIS_REPLY_STATUS:
      out.type = reply::kind::status;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = reply::kind::error;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = reply::kind::integer;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_STRING:
      out.type = reply::kind::bulk;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ARRAY:
      out.type = reply::kind::array;
      out.elements.reserve(r->elements);
      for (std::size_t i = 0; i < r->elements; ++i) out.elements.push_back(convert(r->element[i]));
      break;
    default:
      out.type = reply::kind::nil;
  }
  return out;
}

}  // namespace

struct reply_reader::impl {
  impl() : r(redisReaderCreate()) {
    if (!r) throw std::bad_alloc();
  }
  ~impl() { redisReaderFree(r); }
  redisReader* r;
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

std::optional<reply> reply_reader::next(boost::system::error_code& ec) {
  ec = {};
  if (impl_->failed) {
    ec = make_error_code(error::protocol_error);
    return std::nullopt;
  }
  void* raw = nullptr;  // always pass a reply pointer: a null one leaks the reply
  if (redisReaderGetReply(impl_->r, &raw) != REDIS_OK) {
    impl_->failed = true;
    ec = make_error_code(error::protocol_error);
    return std::nullopt;
  }
  if (!raw) return std::nullopt;
  auto* r = static_cast<redisReply*>(raw);
  reply out = convert(r);
  freeReplyObject(r);
  return out;
}

}  // namespace cacheflight::redis
