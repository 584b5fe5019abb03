// What `tve eval` reports once every image is done: the summary (median and 95% interval per
// method and metric), the Markdown table made from it, and the plot of the mean curves.

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "tve/evaluate.hpp"

namespace tve {
namespace {

IntervalEstimate estimate(const MetricColumn& column, const std::vector<double>& values) {
  return column.rate ? mean_with_interval(values) : median_with_interval(values);
}

void draw_panel(cv::Mat& canvas, const cv::Rect& area, const std::string& title, const EvaluationReport& report,
                bool deletion) {
  const cv::Scalar axis(0, 0, 0), grid_line(220, 220, 220);
  const int left = area.x + 50, right = area.x + area.width - 15, top = area.y + 30, bottom = area.y + area.height - 40;
  for (int tick = 0; tick <= 4; ++tick) {
    const int y = bottom - (bottom - top) * tick / 4;
    const int x = left + (right - left) * tick / 4;
    cv::line(canvas, {left, y}, {right, y}, grid_line, 1);
    cv::line(canvas, {x, top}, {x, bottom}, grid_line, 1);
    cv::putText(canvas, format_metric(tick / 4.0).substr(0, 4), {area.x + 8, y + 4}, cv::FONT_HERSHEY_SIMPLEX, 0.4, axis, 1, cv::LINE_AA);
    cv::putText(canvas, format_metric(tick / 4.0).substr(0, 4), {x - 12, bottom + 16}, cv::FONT_HERSHEY_SIMPLEX, 0.4, axis, 1, cv::LINE_AA);
  }
  cv::rectangle(canvas, {left, top}, {right, bottom}, axis, 1);
  cv::putText(canvas, title, {left, area.y + 20}, cv::FONT_HERSHEY_SIMPLEX, 0.55, axis, 1, cv::LINE_AA);
  cv::putText(canvas, deletion ? "fraction of cells removed" : "fraction of cells inserted", {left + 60, bottom + 34},
              cv::FONT_HERSHEY_SIMPLEX, 0.45, axis, 1, cv::LINE_AA);
  for (size_t m = 0; m < report.methods.size(); ++m) {
    const auto found = report.totals.find(report.methods[m]);
    if (found == report.totals.end() || found->second.curves == 0) continue;
    const auto& sums = deletion ? found->second.deletion_curve_sum : found->second.insertion_curve_sum;
    std::vector<cv::Point> points;
    for (size_t s = 0; s < sums.size(); ++s) {
      const double mean = sums[s] / static_cast<double>(found->second.curves);
      points.emplace_back(left + static_cast<int>((right - left) * static_cast<double>(s) / static_cast<double>(sums.size() - 1)),
                          bottom - static_cast<int>((bottom - top) * std::clamp(mean, 0.0, 1.0)));
    }
    cv::polylines(canvas, points, false, curve_colour(m), 2, cv::LINE_AA);
  }
}

}  // namespace

const std::vector<MetricColumn>& metric_columns() {
  // Table order; a column appears when some method has values for it.
  static const std::vector<MetricColumn> columns = {
      {"deletion_auc", "deletion AUC (lower is better)", false},
      {"insertion_auc", "insertion AUC (higher is better)", false},
      {"spearman", "Spearman vs occlusion", false},
      {"pearson", "Pearson vs occlusion", false},
      {"top10_iou", "top-10% IoU vs occlusion", false},
      {"pointing_game", "pointing game (hit rate)", true},
      {"above_median_share_on_object", "share above median on object", false},
      {"ms", "ms / image (per batch)", false},
      {"forward_equivalents", "cost (forward passes, per batch)", false},
  };
  return columns;
}

std::string format_metric(double value) {
  char text[32];
  std::snprintf(text, sizeof text, std::abs(value) >= 100 ? "%.0f" : std::abs(value) >= 10 ? "%.1f" : "%.3f", value);
  return text;
}

// A distinct colour per method (BGR), the same in every run.
cv::Scalar curve_colour(size_t index) {
  static const cv::Scalar palette[] = {{40, 40, 220},  {200, 120, 0},  {0, 160, 0},   {160, 0, 160}, {0, 140, 220},
                                       {120, 120, 0}, {60, 60, 60},   {220, 0, 120}, {0, 200, 200}, {100, 50, 0}};
  return palette[index % (sizeof palette / sizeof palette[0])];
}

nlohmann::json EvaluationReport::summary() const {
  nlohmann::json out{{"images", images},
                     {"resumed", resumed},
                     {"failed", failed},
                     {"failures", nlohmann::json::array()},
                     {"mask_failures", nlohmann::json::array()},
                     {"images_without_mask", without_mask},
                     {"methods", nlohmann::json::object()}};
  for (const auto& [input, error] : failures) out["failures"].push_back({{"input", input}, {"error", error}});
  for (const auto& [mask, error] : mask_failures) out["mask_failures"].push_back({{"mask", mask}, {"error", error}});
  for (const auto& name : methods) {
    nlohmann::json per_metric = nlohmann::json::object();
    const auto found = totals.find(name);
    if (found == totals.end()) continue;
    for (const auto& column : metric_columns()) {
      const auto values = found->second.metrics.find(column.key);
      if (values == found->second.metrics.end()) continue;
      const auto e = estimate(column, values->second);
      per_metric[column.key] = {{column.rate ? "mean" : "median", e.value}, {"low", e.low}, {"high", e.high}, {"count", e.count}};
    }
    out["methods"][name] = per_metric;
  }
  return out;
}

std::string EvaluationReport::markdown_table() const {
  std::vector<const MetricColumn*> shown;
  for (const auto& column : metric_columns()) {
    for (const auto& [name, method_totals] : totals) {
      if (method_totals.metrics.count(column.key)) {
        shown.push_back(&column);
        break;
      }
    }
  }
  std::ostringstream table;
  table << "| method |";
  for (const auto* column : shown) table << ' ' << column->heading << " |";
  table << "\n| --- |";
  for (size_t i = 0; i < shown.size(); ++i) table << " ---: |";
  table << '\n';
  for (const auto& name : methods) {
    const auto found = totals.find(name);
    if (found == totals.end()) continue;
    table << "| " << name << " |";
    for (const auto* column : shown) {
      const auto values = found->second.metrics.find(column->key);
      if (values == found->second.metrics.end()) {
        table << " - |";
        continue;
      }
      const auto e = estimate(*column, values->second);
      table << ' ' << format_metric(e.value) << " [" << format_metric(e.low) << ", " << format_metric(e.high) << "] |";
    }
    table << '\n';
  }
  size_t batches = 0;
  for (const auto& [name, method_totals] : totals) {
    const auto ms = method_totals.metrics.find("ms");
    if (ms != method_totals.metrics.end()) batches = std::max(batches, ms->second.size());
  }
  table << "\n" << images << " image(s)" << (failed ? ", " + std::to_string(failed) + " failed" : std::string())
        << "; median [95% bootstrap interval] per image (pointing game: hit rate); time and cost per image of a batch, "
        << batches << " batch(es), the interval over batches.\n";
  return table.str();
}

cv::Mat EvaluationReport::plot_curves() const {
  const int panel_width = 420, panel_height = 320, legend_height = 22 * static_cast<int>((methods.size() + 2) / 3) + 10;
  cv::Mat canvas(panel_height + legend_height, 2 * panel_width, CV_8UC3, cv::Scalar(255, 255, 255));
  draw_panel(canvas, {0, 0, panel_width, panel_height}, "deletion: probability of the class", *this, true);
  draw_panel(canvas, {panel_width, 0, panel_width, panel_height}, "insertion: probability of the class", *this, false);
  for (size_t m = 0; m < methods.size(); ++m) {
    const int x = 50 + static_cast<int>(m % 3) * 260, y = panel_height + 16 + 22 * static_cast<int>(m / 3);
    cv::line(canvas, {x, y - 4}, {x + 24, y - 4}, curve_colour(m), 3, cv::LINE_AA);
    cv::putText(canvas, methods[m], {x + 30, y}, cv::FONT_HERSHEY_SIMPLEX, 0.5, {0, 0, 0}, 1, cv::LINE_AA);
  }
  return canvas;
}

}  // namespace tve
