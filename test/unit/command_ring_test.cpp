// The ring a Redis connection queues its commands in: first in, first out
// across wrap-around and growth, iteration in queue order, moves that leave
// the source empty, and every element destroyed once.
#include "../../src/redis/command_ring.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

namespace {

using cacheflight::redis::detail::ring;

std::vector<std::string> contents(const ring<std::string>& r) {
  std::vector<std::string> v;
  for (const std::string& s : r) v.push_back(s);
  return v;
}

TEST(CommandRing, KeepsOrderAcrossWrapAroundAndGrowth) {
  ring<std::string> r;
  EXPECT_TRUE(r.empty());
  int next_in = 0, next_out = 0;
  auto push = [&](int n) {
    for (int i = 0; i < n; ++i) r.push_back("command " + std::to_string(next_in++) + std::string(20, 'x'));
  };
  auto pop = [&](int n) {
    for (int i = 0; i < n; ++i) {
      ASSERT_FALSE(r.empty());
      EXPECT_EQ(r.front(), "command " + std::to_string(next_out++) + std::string(20, 'x'));
      r.pop_front();
    }
  };
  push(10);
  pop(7);
  push(12);  // wraps around the first 16 slots
  EXPECT_EQ(r.size(), 15u);
  push(30);  // grows while wrapped
  EXPECT_EQ(r.size(), 45u);
  std::vector<std::string> seen = contents(r);
  ASSERT_EQ(seen.size(), 45u);
  for (std::size_t i = 0; i < seen.size(); ++i)
    EXPECT_EQ(seen[i], "command " + std::to_string(next_out + static_cast<int>(i)) + std::string(20, 'x'));
  for (int round = 0; round < 100; ++round) {
    push(3);
    pop(3);
  }
  pop(45);
  EXPECT_TRUE(r.empty());
  EXPECT_EQ(next_in, next_out);
}

TEST(CommandRing, IterationReachesEveryElementInPlace) {
  ring<int> r;
  for (int i = 0; i < 20; ++i) r.push_back(int(i));
  for (int i = 0; i < 5; ++i) r.pop_front();
  for (int& v : r) v *= 10;
  int expected = 50;
  for (const int v : r) {
    EXPECT_EQ(v, expected);
    expected += 10;
  }
  EXPECT_EQ(expected, 200);
}

TEST(CommandRing, AMoveTakesTheElementsAndLeavesAnEmptyUsableRing) {
  ring<std::string> a;
  for (int i = 0; i < 20; ++i) a.push_back(std::to_string(i));
  a.pop_front();
  ring<std::string> b = std::move(a);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(b.size(), 19u);
  EXPECT_EQ(b.front(), "1");
  a.push_back("again");
  EXPECT_EQ(a.size(), 1u);
  EXPECT_EQ(a.front(), "again");
}

TEST(CommandRing, EveryElementIsDestroyedOnceWhetherPoppedClearedOrLeftAtTheEnd) {
  auto token = std::make_shared<int>(0);
  {
    ring<std::shared_ptr<int>> r;
    for (int i = 0; i < 40; ++i) r.push_back(std::shared_ptr<int>(token));
    EXPECT_EQ(token.use_count(), 41);
    for (int i = 0; i < 10; ++i) r.pop_front();
    EXPECT_EQ(token.use_count(), 31);
    ring<std::shared_ptr<int>> moved = std::move(r);
    EXPECT_EQ(token.use_count(), 31);
    moved.clear();
    EXPECT_EQ(token.use_count(), 1);
    for (int i = 0; i < 5; ++i) moved.push_back(std::shared_ptr<int>(token));
    EXPECT_EQ(token.use_count(), 6);
  }
  EXPECT_EQ(token.use_count(), 1);
}

TEST(CommandRing, ElementsBuiltInPlaceAtTheBackAreReachedByIndexAndTheLastCanBeTakenBack) {
  ring<std::string> r;
  for (int i = 0; i < 10; ++i) r.push_back(std::to_string(i));
  for (int i = 0; i < 8; ++i) r.pop_front();  // "8", "9" left, at slots 8 and 9
  for (int i = 10; i < 40; ++i) {            // wraps around, then grows
    std::string& s = r.emplace_back();
    EXPECT_TRUE(s.empty());
    s = std::to_string(i);
  }
  ASSERT_EQ(r.size(), 32u);
  for (std::size_t i = 0; i < r.size(); ++i) EXPECT_EQ(r[i], std::to_string(i + 8));
  r.emplace_back() = "set up, then taken back";
  r.pop_back();
  EXPECT_EQ(r.size(), 32u);
  EXPECT_EQ(r[31], "39");
  r[0] = "changed in place";
  EXPECT_EQ(r.front(), "changed in place");
  const ring<std::string>& c = r;
  EXPECT_EQ(c[1], "9");
}

}  // namespace
