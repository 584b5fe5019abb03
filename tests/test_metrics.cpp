// The measures tve eval reports, against values worked out by hand.

#include "tve/metrics.hpp"

#include <gtest/gtest.h>

#include <cmath>

namespace tve {
namespace {

TEST(Metrics, CorrelationsAgreeWithHandComputedValues) {
  EXPECT_DOUBLE_EQ(pearson({1, 2, 3}, {2, 4, 6}), 1.0);
  EXPECT_DOUBLE_EQ(pearson({1, 2, 3}, {3, 2, 1}), -1.0);
  // Monotone but not linear: Spearman 1, Pearson below 1.
  EXPECT_DOUBLE_EQ(spearman({1, 2, 3, 4}, {1, 8, 27, 64}), 1.0);
  EXPECT_LT(pearson({1, 2, 3, 4}, {1, 8, 27, 64}), 0.99);
  // Ties share their mean rank: ranks (1.5, 1.5, 3) against (1, 2, 3) -> r = 0.866...
  EXPECT_NEAR(spearman({0, 0, 5}, {1, 2, 3}), std::sqrt(3.0) / 2, 1e-12);
  EXPECT_EQ(spearman({1, 1, 1}, {1, 2, 3}), 0.0);  // nothing to rank
}

TEST(Metrics, TopFractionIou) {
  // 10 cells, top 20% = 2 cells: {9, 8} against {9, 0}: one shared of three -> 1/3.
  const std::vector<double> a{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, b{8, 1, 2, 3, 4, 5, 6, 7, 0, 9};
  EXPECT_NEAR(top_fraction_iou(a, b, 0.2), 1.0 / 3, 1e-12);
  EXPECT_EQ(top_fraction_iou(a, a, 0.1), 1.0);
}

TEST(Metrics, CellOrderAndCurves) {
  EXPECT_EQ(cells_by_attribution({0.5, 2, 2, -1}), (std::vector<int64_t>{1, 2, 0, 3}));  // ties by index
  EXPECT_DOUBLE_EQ(area_under_curve({1, 0}), 0.5);
  EXPECT_DOUBLE_EQ(area_under_curve({1, 1, 0}), 0.75);
}

TEST(Metrics, PointingGameAndShareOnTheObject) {
  const std::vector<double> map{0.1, 3, -2, 1}, object{0, 0.5, 1, 0};
  EXPECT_TRUE(pointing_game_hit(map, object));
  EXPECT_FALSE(pointing_game_hit({5, 3, -2, 1}, object));
  // Median 0.55: mass above it 2.45 + 0.45 = 2.9, on the object 2.45 * 0.5 = 1.225.
  EXPECT_NEAR(*above_median_share_on_object(map, object), 1.225 / 2.9, 1e-12);
  // A constant offset or a positive scale decides nothing: an all-negative map scores as its
  // shifted copy (the old "positive share" gave 0 for every such map).
  for (const double offset : {-100.0, -3.5, 0.0, 42.0}) {
    std::vector<double> shifted;
    for (const double v : map) shifted.push_back(3 * v + offset);
    EXPECT_NEAR(*above_median_share_on_object(shifted, object), 1.225 / 2.9, 1e-12) << offset;
  }
  // {-1,-2,-3,-4}: median -2.5, mass above 1.5 + 0.5, on the object 0.5 * 0.5.
  EXPECT_NEAR(*above_median_share_on_object({-1, -2, -3, -4}, object), 0.25 / 2.0, 1e-12);
  EXPECT_FALSE(above_median_share_on_object({-7, -7, -7, -7}, object).has_value());  // flat: no ranking to score
}

TEST(Metrics, BootstrapIntervalsHoldTheEstimateAndAreReproducible) {
  std::vector<double> values;
  for (int i = 0; i < 101; ++i) values.push_back(i);
  const auto median = median_with_interval(values);
  EXPECT_EQ(median.value, 50);
  EXPECT_EQ(median.count, 101);
  EXPECT_LT(median.low, 50);
  EXPECT_GT(median.high, 50);
  EXPECT_GT(median.low, 30);  // the median of 101 values does not wander far
  EXPECT_LT(median.high, 70);
  const auto again = median_with_interval(values);
  EXPECT_EQ(again.low, median.low);
  EXPECT_EQ(again.high, median.high);
  const auto rate = mean_with_interval({1, 1, 1, 0});
  EXPECT_DOUBLE_EQ(rate.value, 0.75);
  EXPECT_EQ(median_with_interval({}).count, 0);
}

}  // namespace
}  // namespace tve
