// The RESP2 writer and reply reader, without a socket.
#include <cacheflight/error.hpp>
#include <cacheflight/redis/resp.hpp>

#include <boost/system/system_error.hpp>
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

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

TEST(RespWriter, LengthsOfEveryNumberOfDigitsPrecedeTheirBytes) {
  std::string out = "kept";
  std::string expected = "kept";
  std::vector<std::string> args;
  for (std::size_t n : {0, 1, 9, 10, 99, 100, 999, 1000, 12345}) args.push_back(std::string(n, char('a' + n % 26)));
  redis::append_command(out, args);
  expected += "*9\r\n";
  for (const std::string& a : args) expected += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
  EXPECT_EQ(out, expected);
  // A command of more than 9 arguments: a header of two digits.
  std::string many;
  redis::append_command(many, std::vector<std::string_view>(12, "x"));
  std::string twelve = "*12\r\n";
  for (int i = 0; i < 12; ++i) twelve += "$1\r\nx\r\n";
  EXPECT_EQ(many, twelve);
}

TEST(RespWriter, ACommandTakenAheadIsTheSameBytesInPlaceOnTheHeapOrFromOwnedStrings) {
  using redis::detail::command_bytes;
  auto appended = [](const command_bytes& c) {
    std::string out = "before";
    c.append_to(out);
    return out.substr(6);
  };
  auto expect = [](std::initializer_list<std::string_view> args) {
    std::string out;
    redis::append_command(out, args);
    return out;
  };

  // Short: within the buffer held in place.
  command_bytes get({"GET", "user:42"});
  EXPECT_EQ(get.view(), expect({"GET", "user:42"}));
  EXPECT_EQ(appended(get), expect({"GET", "user:42"}));

  // Longer than the buffer: the same bytes, held on the heap.
  const std::string value(500, 'v');
  const std::string key("a b\r\n*1\0", 8);
  command_bytes set({"SET", key, value, "PX", "1500"});
  EXPECT_EQ(set.view(), expect({"SET", key, value, "PX", "1500"}));
  EXPECT_EQ(appended(set), expect({"SET", key, value, "PX", "1500"}));

  // Owned strings: appended as they are, and serialized when the bytes are asked for.
  command_bytes owned(std::vector<std::string>{"SET", key, value});
  EXPECT_FALSE(owned.empty());
  EXPECT_EQ(appended(owned), expect({"SET", key, value}));
  EXPECT_EQ(owned.view(), expect({"SET", key, value}));
  EXPECT_EQ(appended(owned), expect({"SET", key, value}));

  // Exactly at the edge, and one byte past it: "*2\r\n$3\r\nGET\r\n$NN\r\n" is
  // 18 bytes for a two-digit NN, then the key and CRLF.
  for (std::size_t total : {command_bytes::inline_capacity, command_bytes::inline_capacity + 1}) {
    const std::string k(total - 18 - 2, 'k');
    command_bytes c({"GET", k});
    ASSERT_EQ(expect({"GET", k}).size(), total);
    EXPECT_EQ(c.view(), expect({"GET", k}));
  }

  // Moves keep the bytes, in place, on the heap or owned, and leave the source empty.
  command_bytes source({"PING"});
  command_bytes target(std::move(source));
  EXPECT_TRUE(source.empty());
  EXPECT_EQ(target.view(), "*1\r\n$4\r\nPING\r\n");
  command_bytes heap_source({"SET", key, value});
  command_bytes heap_target(std::move(heap_source));
  EXPECT_TRUE(heap_source.empty());
  EXPECT_EQ(heap_target.view(), expect({"SET", key, value}));
  command_bytes owned_source(std::vector<std::string>{"DEL", key});
  command_bytes owned_target(std::move(owned_source));
  EXPECT_TRUE(owned_source.empty());
  EXPECT_EQ(appended(owned_target), expect({"DEL", key}));
  // Assigned over a command on the heap: now in place.
  heap_target = std::move(target);
  EXPECT_TRUE(target.empty());
  EXPECT_EQ(heap_target.view(), "*1\r\n$4\r\nPING\r\n");
  // Assigned over one in place: now on the heap.
  command_bytes large({"SET", key, value});
  heap_target = std::move(large);
  EXPECT_EQ(heap_target.view(), expect({"SET", key, value}));
  // Assigned to itself: unchanged.
  command_bytes& alias = heap_target;
  heap_target = std::move(alias);
  EXPECT_EQ(heap_target.view(), expect({"SET", key, value}));

  // No arguments: empty (which `async_exec` refuses).
  EXPECT_TRUE(command_bytes(std::vector<std::string>{}).empty());
  EXPECT_TRUE(command_bytes(std::initializer_list<std::string_view>{}).empty());
  EXPECT_TRUE(command_bytes().empty());
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

// hiredis is asked again only once a CRLF (the end of any item) may have
// arrived: these check that no reply is then held back.
TEST(RespReader, LineItemsFedAByteAtATimeEndAtTheirCrlfEvenSplitBetweenFeeds) {
  redis::reply_reader r;
  boost::system::error_code ec;
  const std::string wire = "+PONG\r\n-ERR no\r\n:42\r\n*1\r\n$2\r\nab\r\n";
  std::vector<redis::reply> got;
  for (char ch : wire) {
    r.feed(std::string_view(&ch, 1));
    while (auto v = r.next(ec)) got.push_back(std::move(*v));
    ASSERT_FALSE(ec);
  }
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].str, "PONG");
  EXPECT_EQ(got[1].str, "ERR no");
  EXPECT_EQ(got[2].integer, 42);
  ASSERT_EQ(got[3].elements.size(), 1u);
  EXPECT_EQ(got[3].elements[0].str, "ab");
}

TEST(RespReader, ALongLineArrivingInPiecesIsReadWholeWithTheReplyAfterIt) {
  redis::reply_reader r;
  boost::system::error_code ec;
  const std::string line = "+" + std::string(1 << 20, 'a');
  for (std::size_t at = 0; at < line.size(); at += 16384) {
    r.feed(std::string_view(line).substr(at, 16384));
    EXPECT_FALSE(r.next(ec));
    ASSERT_FALSE(ec);
  }
  r.feed("\r\n:7\r\n");
  auto v = r.next(ec);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->str.size(), std::size_t{1} << 20);
  auto w = r.next(ec);
  ASSERT_TRUE(w);
  EXPECT_EQ(w->integer, 7);
}

TEST(RespReader, AWrongTypeByteIsRefusedAsSoonAsItArrives) {
  redis::reply_reader r;
  boost::system::error_code ec;
  r.feed("+OK\r\n");
  ASSERT_TRUE(r.next(ec));
  EXPECT_FALSE(r.next(ec));
  r.feed("?");
  EXPECT_FALSE(r.next(ec));
  EXPECT_EQ(ec, cacheflight::error::protocol_error);
}

TEST(RespReader, NestedArraysWithNilsAndEmptiesSplitAtEveryByte) {
  const std::string wire = "*4\r\n*2\r\n:1\r\n$1\r\nx\r\n$-1\r\n*0\r\n*-1\r\n+PONG\r\n";
  for (std::size_t split = 1; split < wire.size(); ++split) {
    redis::reply_reader r;
    boost::system::error_code ec;
    r.feed(wire.substr(0, split));
    std::optional<redis::reply> early = r.next(ec);
    EXPECT_FALSE(ec);
    r.feed(wire.substr(split));
    std::optional<redis::reply> a = early ? std::move(early) : r.next(ec);
    ASSERT_TRUE(a) << "split at " << split;
    ASSERT_EQ(a->type, kind::array);
    ASSERT_EQ(a->elements.size(), 4u);
    const redis::reply& inner = a->elements[0];
    ASSERT_EQ(inner.type, kind::array);
    ASSERT_EQ(inner.elements.size(), 2u);
    EXPECT_EQ(inner.elements[0].type, kind::integer);
    EXPECT_EQ(inner.elements[0].integer, 1);
    EXPECT_EQ(inner.elements[1].type, kind::bulk);
    EXPECT_EQ(inner.elements[1].str, "x");
    EXPECT_EQ(a->elements[1].type, kind::nil);
    EXPECT_EQ(a->elements[2].type, kind::array);
    EXPECT_TRUE(a->elements[2].elements.empty());
    EXPECT_EQ(a->elements[3].type, kind::nil);
    auto b = r.next(ec);
    ASSERT_TRUE(b) << "split at " << split;
    EXPECT_EQ(b->type, kind::status);
    EXPECT_EQ(b->str, "PONG");
    EXPECT_TRUE(b->elements.empty());
  }
}

TEST(RespReader, ReadingIntoOneReplyReplacesItAndReusesItsMemory) {
  redis::reply_reader r;
  boost::system::error_code ec;
  redis::reply out;
  const std::string value(64, 'v');
  std::vector<const char*> buffers;
  for (int i = 0; i < 6; ++i) {
    r.feed("$64\r\n" + value + "\r\n");
    ASSERT_TRUE(r.next(out, ec));
    EXPECT_EQ(out.type, kind::bulk);
    EXPECT_EQ(out.str, value);
    buffers.push_back(out.str.data());
  }
  // The reader and the caller trade two buffers: from the third read on, no
  // string is new.
  for (std::size_t i = 2; i < buffers.size(); ++i) EXPECT_EQ(buffers[i], buffers[i - 2]) << "read " << i;

  // A reply of another type replaces everything the last one held.
  r.feed("*1\r\n:5\r\n");
  ASSERT_TRUE(r.next(out, ec));
  r.feed(":9\r\n");
  ASSERT_TRUE(r.next(out, ec));
  EXPECT_EQ(out.type, kind::integer);
  EXPECT_EQ(out.integer, 9);
  EXPECT_TRUE(out.str.empty());
  EXPECT_TRUE(out.elements.empty());
  EXPECT_FALSE(r.next(out, ec));
  EXPECT_FALSE(ec);
}

TEST(RespReply, SwapExchangesContentsAndMemory) {
  redis::reply a, b;
  a.type = redis::reply::kind::bulk;
  a.str.assign(100, 'a');
  b.type = redis::reply::kind::array;
  b.integer = 7;
  b.elements.resize(2);
  b.elements[0].type = redis::reply::kind::integer;
  b.elements[0].integer = 1;
  b.elements[1].type = redis::reply::kind::status;
  b.elements[1].str = "OK";
  const char* a_str = a.str.data();
  const redis::reply* b_elements = b.elements.data();
  using std::swap;
  swap(a, b);
  EXPECT_EQ(a.type, redis::reply::kind::array);
  EXPECT_EQ(a.integer, 7);
  ASSERT_EQ(a.elements.size(), 2u);
  EXPECT_EQ(a.elements.data(), b_elements);
  EXPECT_EQ(a.elements[1].str, "OK");
  EXPECT_TRUE(a.str.empty());
  EXPECT_EQ(b.type, redis::reply::kind::bulk);
  EXPECT_EQ(b.str, std::string(100, 'a'));
  EXPECT_EQ(b.str.data(), a_str);
  EXPECT_EQ(b.integer, 0);
  EXPECT_TRUE(b.elements.empty());
  static_assert(noexcept(swap(a, b)));
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

// An array header declaring more elements than the bound leaves room for is
// refused from the header, before memory for its elements is asked for (ten
// million replies take over 512 MiB, two billion over a hundred gigabytes,
// and each would be constructed as it is made).
TEST(RespReader, AnArrayHeaderBeyondTheBoundIsRefusedBeforeItsElementsAreMade) {
  boost::system::error_code ec;
  for (const char* header : {"*10000000\r\n", "*2000000000\r\n", "*-2\r\n"}) {
    redis::reply_reader r;
    r.feed(header);
    r.feed("$1\r\na\r\n");
    EXPECT_FALSE(r.next(ec)) << header;
    EXPECT_EQ(ec, cacheflight::error::protocol_error) << header;
  }
  // Nested: each level is charged to the same reply.
  redis::reply_reader nested(1000);
  const std::size_t fits = 1000 / sizeof(redis::reply);
  nested.feed("*2\r\n*" + std::to_string(fits) + "\r\n");
  EXPECT_FALSE(nested.next(ec));
  EXPECT_EQ(ec, cacheflight::error::protocol_error);
}

// A bulk string declared longer than the bound is refused once the bytes
// buffered for it pass the bound, not once it has all arrived.
TEST(RespReader, AStringBeyondTheBoundIsRefusedWhileItsBytesArrive) {
  redis::reply_reader r(64 * 1024);
  r.feed("$1000000000\r\n");
  boost::system::error_code ec;
  EXPECT_FALSE(r.next(ec));
  EXPECT_FALSE(ec);  // nothing buffered yet
  const std::string chunk(16 * 1024, 'x');
  int fed = 0;
  while (!ec && fed < 64) {
    r.feed(chunk);
    ++fed;
    EXPECT_FALSE(r.next(ec));
  }
  EXPECT_EQ(ec, cacheflight::error::protocol_error);
  EXPECT_EQ(fed, 5);  // 80 KiB buffered: past 64 KiB and its 64 bytes of headers
}

// The bound counts what a reply holds: strings up to it pass, whole or split
// across reads, and a reply after a large one starts its count anew.
TEST(RespReader, RepliesUpToTheBoundPassAndEachIsCountedOnItsOwn) {
  const std::size_t bound = 4096;
  redis::reply_reader r(bound);
  boost::system::error_code ec;
  const std::string full(bound, 'a');
  const std::string bulk = "$" + std::to_string(bound) + "\r\n" + full + "\r\n";
  for (int i = 0; i < 3; ++i) {
    r.feed(bulk.substr(0, 1000));
    EXPECT_FALSE(r.next(ec));
    r.feed(bulk.substr(1000));
    auto got = r.next(ec);
    ASSERT_TRUE(got) << ec.message();
    EXPECT_EQ(got->str, full);
  }
  // An array whose elements and strings come to the bound exactly.
  const std::size_t n = 4, each = (bound - n * sizeof(redis::reply)) / n;
  std::string arr = "*" + std::to_string(n) + "\r\n";
  for (std::size_t i = 0; i < n; ++i) arr += "$" + std::to_string(each) + "\r\n" + std::string(each, 'b') + "\r\n";
  r.feed(arr);
  auto ok = r.next(ec);
  ASSERT_TRUE(ok) << ec.message();
  EXPECT_EQ(ok->elements.size(), n);
  EXPECT_EQ(ok->elements[3].str, std::string(each, 'b'));
  // One byte more in its last string, and it is refused.
  std::string over = "*" + std::to_string(n) + "\r\n";
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t len = each + (i + 1 == n ? n * sizeof(redis::reply) + n * each - bound + 1 : 0);
    over += "$" + std::to_string(len) + "\r\n" + std::string(len, 'c') + "\r\n";
  }
  r.feed(over);
  EXPECT_FALSE(r.next(ec));
  EXPECT_EQ(ec, cacheflight::error::protocol_error);
}

TEST(RespReader, ABoundOfZeroOrPastWhatHiredisCanBufferIsAnInvalidOption) {
  for (std::size_t bound : {std::size_t(0), redis::max_max_reply_bytes + 1}) {
    try {
      redis::reply_reader r(bound);
      ADD_FAILURE() << "no exception for " << bound;
    } catch (const boost::system::system_error& e) {
      EXPECT_EQ(e.code(), cacheflight::error::invalid_option);
    }
  }
  redis::reply_reader largest(redis::max_max_reply_bytes);
  largest.feed("+OK\r\n");
  boost::system::error_code ec;
  EXPECT_TRUE(largest.next(ec));
}

}  // namespace
