// The RESP2 writer and reply reader, without a socket.
#include <cacheflight/error.hpp>
#include <cacheflight/redis/resp.hpp>

#include <gtest/gtest.h>

namespace {

namespace redis = cacheflight::redis;
using kind = redis::reply::kind;

TEST(RespWriter, CommandsAreArraysOfBulkStrings) {
  std::string out;
  redis::append_command(out, {"GET", "user:42"});
  EXPECT_EQ(out, "*2\r\n$3\r\nGET\r\n$7\r\nuser:42\r\n");
}

TEST(RespWriter, ArgumentsAreBinarySafe) {
  std::string out;
  const std::string key("a b\r\n*1\0", 8);
  redis::append_command(out, {"SET", key, "", "PX", "1500"});
  EXPECT_EQ(out, "*5\r\n$3\r\nSET\r\n$8\r\n" + key + "\r\n$0\r\n\r\n$2\r\nPX\r\n$4\r\n1500\r\n");
}

TEST(RespWriter, PipelinedCommandsAppend) {
  std::string out;
  redis::append_command(out, {"PING"});
  redis::append_command(out, std::vector<std::string_view>{"DEL", "a", "b"});
  EXPECT_EQ(out, "*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nDEL\r\n$1\r\na\r\n$1\r\nb\r\n");
}

TEST(RespReader, EveryReplyTypeInOrder) {
  redis::reply_reader r;
  r.feed("+OK\r\n-ERR wrong\r\n:42\r\n$5\r\nhe\r\nl\r\n$-1\r\n*2\r\n$1\r\na\r\n:7\r\n");
  boost::system::error_code ec;
  auto a = r.next(ec);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->type, kind::status);
  EXPECT_EQ(a->str, "OK");
  auto b = r.next(ec);
  EXPECT_TRUE(b->is_error());
  EXPECT_EQ(b->str, "ERR wrong");
  auto c = r.next(ec);
  EXPECT_EQ(c->type, kind::integer);
  EXPECT_EQ(c->integer, 42);
  auto d = r.next(ec);
  EXPECT_EQ(d->type, kind::bulk);
  EXPECT_EQ(d->str, "he\r\nl");  // binary safe
  auto e = r.next(ec);
  EXPECT_EQ(e->type, kind::nil);
  auto f = r.next(ec);
  ASSERT_EQ(f->type, kind::array);
  ASSERT_EQ(f->elements.size(), 2u);
  EXPECT_EQ(f->elements[0].str, "a");
  EXPECT_EQ(f->elements[1].integer, 7);
  EXPECT_FALSE(r.next(ec));
  EXPECT_FALSE(ec);
}

TEST(RespReader, RepliesSplitAcrossReads) {
  redis::reply_reader r;
  boost::system::error_code ec;
  const std::string wire = "$11\r\nhello world\r\n";
  for (std::size_t i = 0; i + 1 < wire.size(); ++i) {
    r.feed(wire.substr(i, 1));
    EXPECT_FALSE(r.next(ec)) << "at byte " << i;
    EXPECT_FALSE(ec);
  }
  r.feed(wire.substr(wire.size() - 1));
  auto v = r.next(ec);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->str, "hello world");
}

TEST(RespReader, ProtocolErrorsAreStickyErrors) {
  redis::reply_reader r;
  r.feed("?garbage\r\n");
  boost::system::error_code ec;
  EXPECT_FALSE(r.next(ec));
  EXPECT_EQ(ec, cacheflight::error::protocol_error);
  r.feed("+OK\r\n");  // the connection must be reopened: nothing more is read
  EXPECT_FALSE(r.next(ec));
  EXPECT_EQ(ec, cacheflight::error::protocol_error);
}

}  // namespace
