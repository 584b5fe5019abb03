#pragma once
// How good is a map: the faithfulness and localisation measures `tve eval` reports
// (docs/methods.md, "tve eval"). Plain functions over G x G maps given as row-major vectors, so
// they are easy to test and to reuse.

#include <cstdint>
#include <optional>
#include <vector>

namespace tve {

// Spearman's rank correlation (ties share their mean rank) and Pearson's correlation. 0 when
// either side is constant (no ranking to agree with).
double spearman(const std::vector<double>& a, const std::vector<double>& b);
double pearson(const std::vector<double>& a, const std::vector<double>& b);

// |top(a) & top(b)| / |top(a) | top(b)|, top = the ceil(fraction * n) largest cells (ties broken by
// cell index, so the sets always have that size).
double top_fraction_iou(const std::vector<double>& a, const std::vector<double>& b, double fraction);

// Cells in the order a deletion or insertion curve visits them: largest attribution first, ties
// by cell index.
std::vector<int64_t> cells_by_attribution(const std::vector<double>& map);

// The area under a curve sampled at evenly spaced fractions 0, 1/n, ..., 1 (trapezoids).
double area_under_curve(const std::vector<double>& curve);

// Pointing game: whether the cell with the largest attribution holds any object (object_share of
// that cell > 0). object_share[k] is the fraction of cell k's pixels inside the object mask.
bool pointing_game_hit(const std::vector<double>& map, const std::vector<double>& object_share);

// The share of the map's mass above its median that falls on the object:
// sum_k max(m_k - med, 0) s_k / sum_k max(m_k - med, 0), med = the median of the cells, each
// cell's mass split by its object share s_k. Adding a constant to the map or scaling it by a
// positive factor leaves it unchanged (where the zero falls decides nothing). Nothing for a map
// with no cell above its median (a flat map).
std::optional<double> above_median_share_on_object(const std::vector<double>& map, const std::vector<double>& object_share);

// A statistic of `values` and a 95% interval for it: the 2.5th and 97.5th percentiles of the
// statistic over `resamples` bootstrap resamples (seeded, so a report is reproducible). The median
// for continuous scores; the mean for rates (pointing game hits, 0 or 1).
struct IntervalEstimate {
  double value = 0;
  double low = 0;
  double high = 0;
  int64_t count = 0;
};
IntervalEstimate median_with_interval(const std::vector<double>& values, int resamples = 2000, uint64_t seed = 0);
IntervalEstimate mean_with_interval(const std::vector<double>& values, int resamples = 2000, uint64_t seed = 0);

}  // namespace tve
