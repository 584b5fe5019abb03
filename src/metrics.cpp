#include "tve/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "tve/error.hpp"

namespace tve {
namespace {

void require_same_size(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size() || a.empty()) throw InvalidArgument("maps to compare must be non-empty and of one size");
}

// Ranks 1..n, tied values sharing the mean of their ranks.
std::vector<double> ranks(const std::vector<double>& values) {
  std::vector<size_t> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t i, size_t j) { return values[i] < values[j]; });
  std::vector<double> rank(values.size());
  for (size_t start = 0; start < order.size();) {
    size_t end = start;
    while (end + 1 < order.size() && values[order[end + 1]] == values[order[start]]) ++end;
    const double shared = (static_cast<double>(start) + static_cast<double>(end)) / 2 + 1;
    for (size_t i = start; i <= end; ++i) rank[order[i]] = shared;
    start = end + 1;
  }
  return rank;
}

double percentile(std::vector<double>& sorted, double q) {
  // Linear interpolation between closest ranks, as numpy's default.
  const double position = q * static_cast<double>(sorted.size() - 1);
  const auto below = static_cast<size_t>(std::floor(position));
  const auto above = std::min(below + 1, sorted.size() - 1);
  return sorted[below] + (position - static_cast<double>(below)) * (sorted[above] - sorted[below]);
}

double median_of(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return percentile(values, 0.5);
}

}  // namespace

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
  require_same_size(a, b);
  const double n = static_cast<double>(a.size());
  const double mean_a = std::accumulate(a.begin(), a.end(), 0.0) / n;
  const double mean_b = std::accumulate(b.begin(), b.end(), 0.0) / n;
  double covariance = 0, variance_a = 0, variance_b = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    covariance += (a[i] - mean_a) * (b[i] - mean_b);
    variance_a += (a[i] - mean_a) * (a[i] - mean_a);
    variance_b += (b[i] - mean_b) * (b[i] - mean_b);
  }
  if (variance_a <= 0 || variance_b <= 0) return 0;
  return covariance / std::sqrt(variance_a * variance_b);
}

double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  require_same_size(a, b);
  return pearson(ranks(a), ranks(b));
}

std::vector<int64_t> cells_by_attribution(const std::vector<double>& map) {
  std::vector<int64_t> order(map.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t i, int64_t j) {
    return map[static_cast<size_t>(i)] > map[static_cast<size_t>(j)];
  });
  return order;
}

double top_fraction_iou(const std::vector<double>& a, const std::vector<double>& b, double fraction) {
  require_same_size(a, b);
  const auto take = static_cast<size_t>(std::max(1.0, std::ceil(fraction * static_cast<double>(a.size()))));
  auto top = [&](const std::vector<double>& map) {
    auto order = cells_by_attribution(map);
    order.resize(take);
    std::sort(order.begin(), order.end());
    return order;
  };
  const auto top_a = top(a), top_b = top(b);
  std::vector<int64_t> common;
  std::set_intersection(top_a.begin(), top_a.end(), top_b.begin(), top_b.end(), std::back_inserter(common));
  return static_cast<double>(common.size()) / static_cast<double>(2 * take - common.size());
}

double area_under_curve(const std::vector<double>& curve) {
  if (curve.size() < 2) throw InvalidArgument("a curve needs at least two points");
  double area = 0;
  for (size_t i = 1; i < curve.size(); ++i) area += (curve[i - 1] + curve[i]) / 2;
  return area / static_cast<double>(curve.size() - 1);
}

bool pointing_game_hit(const std::vector<double>& map, const std::vector<double>& object_share) {
  require_same_size(map, object_share);
  return object_share[static_cast<size_t>(cells_by_attribution(map).front())] > 0;
}

std::optional<double> above_median_share_on_object(const std::vector<double>& map, const std::vector<double>& object_share) {
  require_same_size(map, object_share);
  // Measured from the map's own median, not from 0: maps that differ by a constant (TVE's
  // explainers with forward_with_embedding, docs/bundle-format.md) rank and point alike, and must
  // score alike here too.
  const double median = median_of(map);
  double inside = 0, total = 0;
  for (size_t k = 0; k < map.size(); ++k) {
    const double above = std::max(map[k] - median, 0.0);
    inside += above * object_share[k];
    total += above;
  }
  if (!(total > 0)) return std::nullopt;  // a flat map points nowhere
  return inside / total;
}

namespace {

IntervalEstimate bootstrap(const std::vector<double>& values, int resamples, uint64_t seed,
                           double (*statistic)(std::vector<double>)) {
  IntervalEstimate result;
  result.count = static_cast<int64_t>(values.size());
  if (values.empty()) return result;
  result.value = statistic(values);
  std::mt19937_64 random(seed);
  std::uniform_int_distribution<size_t> pick(0, values.size() - 1);
  std::vector<double> estimates, sample(values.size());
  estimates.reserve(static_cast<size_t>(resamples));
  for (int r = 0; r < resamples; ++r) {
    for (auto& v : sample) v = values[pick(random)];
    estimates.push_back(statistic(sample));
  }
  std::sort(estimates.begin(), estimates.end());
  result.low = percentile(estimates, 0.025);
  result.high = percentile(estimates, 0.975);
  return result;
}

double mean_of(std::vector<double> values) {
  return std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
}

}  // namespace

IntervalEstimate median_with_interval(const std::vector<double>& values, int resamples, uint64_t seed) {
  return bootstrap(values, resamples, seed, &median_of);
}

IntervalEstimate mean_with_interval(const std::vector<double>& values, int resamples, uint64_t seed) {
  return bootstrap(values, resamples, seed, &mean_of);
}

}  // namespace tve
