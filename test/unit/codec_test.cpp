// Codecs and the envelope of stored values: round trips, and corrupt or
// foreign bytes refused rather than trusted.
#include <cacheflight/codec.hpp>
#include <cacheflight/json_codec.hpp>

#include <gtest/gtest.h>

#include <random>

namespace {

namespace cf = cacheflight;

struct point {
  int x = 0;
  int y = 0;
  friend bool operator==(const point&, const point&) = default;
};

struct profile {
  std::string name;
  int age = 0;
  friend bool operator==(const profile&, const profile&) = default;
};

void tag_invoke(boost::json::value_from_tag, boost::json::value& jv, const profile& p) {
  jv = {{"name", p.name}, {"age", p.age}};
}

profile tag_invoke(boost::json::value_to_tag<profile>, const boost::json::value& jv) {
  const auto& o = jv.as_object();
  return profile{boost::json::value_to<std::string>(o.at("name")), boost::json::value_to<int>(o.at("age"))};
}

// Trivially copyable, and opted into the JSON codec all the same.
struct pixel {
  int x = 0;
  int y = 0;
  friend bool operator==(const pixel&, const pixel&) = default;
};

void tag_invoke(boost::json::value_from_tag, boost::json::value& jv, const pixel& p) { jv = {p.x, p.y}; }

pixel tag_invoke(boost::json::value_to_tag<pixel>, const boost::json::value& jv) {
  const auto& a = jv.as_array();
  return pixel{boost::json::value_to<int>(a.at(0)), boost::json::value_to<int>(a.at(1))};
}

enum unscoped_colour { red, green };
enum class scoped_colour : std::uint8_t { red, green };

template <class T>
constexpr bool has_codec = requires(std::string_view b) { cf::codec<T>::decode(b); };

}  // namespace

template <>
struct cacheflight::use_json_codec<profile> : std::true_type {};
template <>
struct cacheflight::use_json_codec<pixel> : std::true_type {};

namespace {

TEST(Codec, StringsAreStoredAsTheyAreBinarySafe) {
  const std::string v("a\0b\r\n\xff", 6);
  EXPECT_EQ(cf::codec<std::string>::encode(v), v);
  EXPECT_EQ(cf::codec<std::string>::decode(v), v);
}

TEST(Codec, TriviallyCopyableRoundTripAndWrongSizeRefused) {
  const point p{3, -4};
  const std::string bytes = cf::codec<point>::encode(p);
  EXPECT_EQ(bytes.size(), sizeof(point));
  EXPECT_EQ(cf::codec<point>::decode(bytes), p);
  EXPECT_EQ(cf::codec<point>::decode(bytes.substr(1)), std::nullopt);
  EXPECT_EQ(cf::codec<double>::decode(cf::codec<double>::encode(2.5)), 2.5);
}

TEST(Codec, BoolIsOneByteAndAnyOtherByteIsRefused) {
  EXPECT_EQ(cf::codec<bool>::encode(true), std::string(1, '\1'));
  EXPECT_EQ(cf::codec<bool>::decode(cf::codec<bool>::encode(true)), true);
  EXPECT_EQ(cf::codec<bool>::decode(cf::codec<bool>::encode(false)), false);
  EXPECT_EQ(cf::codec<bool>::decode(std::string(1, '\2')), std::nullopt);
  EXPECT_EQ(cf::codec<bool>::decode(std::string(1, '\xff')), std::nullopt);
  EXPECT_EQ(cf::codec<bool>::decode(""), std::nullopt);
  EXPECT_EQ(cf::codec<bool>::decode(std::string(2, '\1')), std::nullopt);
}

TEST(Codec, TypesWhoseBytesAreNoSafeValueHaveNoBuiltInCodec) {
  static_assert(has_codec<int> && has_codec<double> && has_codec<point> && has_codec<scoped_colour>);
  static_assert(!has_codec<const char*> && !has_codec<int*> && !has_codec<std::nullptr_t>);
  static_assert(!has_codec<std::string_view> && !has_codec<std::span<const int>>);
  static_assert(!has_codec<unscoped_colour>);
  static_assert(!has_codec<int point::*>);
  EXPECT_EQ(cf::codec<scoped_colour>::decode(cf::codec<scoped_colour>::encode(scoped_colour::green)),
            scoped_colour::green);
}

TEST(Codec, ATriviallyCopyableTypeOptedIntoJsonTakesTheJsonCodec) {
  const std::string bytes = cf::codec<pixel>::encode(pixel{1, -2});
  EXPECT_EQ(bytes, "[1,-2]");
  EXPECT_EQ(cf::codec<pixel>::decode(bytes), (pixel{1, -2}));
  EXPECT_EQ(cf::codec<pixel>::decode(std::string(sizeof(pixel), '\0')), std::nullopt);
}

TEST(Codec, JsonRoundTripAndMalformedRefused) {
  const profile p{"Ada", 36};
  const std::string bytes = cf::codec<profile>::encode(p);
  EXPECT_EQ(bytes, R"({"name":"Ada","age":36})");
  EXPECT_EQ(cf::codec<profile>::decode(bytes), p);
  EXPECT_EQ(cf::codec<profile>::decode("{not json"), std::nullopt);
  EXPECT_EQ(cf::codec<profile>::decode(R"({"name":"Ada"})"), std::nullopt);    // a missing field
  EXPECT_EQ(cf::codec<profile>::decode(R"({"name":1,"age":2})"), std::nullopt);  // a wrong type
}

TEST(Envelope, RoundTripWithExpiry) {
  const std::int64_t now = 1'700'000'000'000;
  const std::string stored = cf::detail::encode_stored<std::string>("value", now + 5000);
  std::chrono::milliseconds left{};
  EXPECT_EQ(cf::detail::decode_stored<std::string>(stored, now, &left), "value");
  EXPECT_EQ(left, std::chrono::milliseconds(5000));
  EXPECT_EQ(cf::detail::decode_stored<std::string>(stored, now + 5000, &left), std::nullopt);  // expired
  const std::string forever = cf::detail::encode_stored<std::string>("v", 0);
  EXPECT_EQ(cf::detail::decode_stored<std::string>(forever, now, &left), "v");
  EXPECT_EQ(left, std::chrono::milliseconds::max());
}

TEST(Envelope, CorruptOrForeignBytesAreRefused) {
  const std::int64_t now = 1'700'000'000'000;
  const std::string good = cf::detail::encode_stored<point>(point{1, 2}, 0);
  EXPECT_TRUE(cf::detail::decode_stored<point>(good, now, nullptr));
  EXPECT_FALSE(cf::detail::decode_stored<point>("", now, nullptr));
  EXPECT_FALSE(cf::detail::decode_stored<point>("plain text written by someone else", now, nullptr));
  std::string bad_version = good;
  bad_version[4] = 2;
  EXPECT_FALSE(cf::detail::decode_stored<point>(bad_version, now, nullptr));
  std::string bad_flags = good;
  bad_flags[5] = 1;
  EXPECT_FALSE(cf::detail::decode_stored<point>(bad_flags, now, nullptr));
  EXPECT_FALSE(cf::detail::decode_stored<point>(good.substr(0, good.size() - 1), now, nullptr));  // truncated
  // Random bytes never crash the decoder (run under ASan and UBSan).
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    std::string junk(rng() % 40, '\0');
    for (auto& c : junk) c = static_cast<char>(rng());
    if (i % 2 == 0 && junk.size() >= 4) junk.replace(0, 4, "CFLT");
    (void)cf::detail::decode_stored<point>(junk, now, nullptr);
    (void)cf::detail::decode_stored<profile>(junk, now, nullptr);
  }
}

}  // namespace
