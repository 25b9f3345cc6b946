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

}  // namespace

template <>
struct cacheflight::use_json_codec<profile> : std::true_type {};

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
