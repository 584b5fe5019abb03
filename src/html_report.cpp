#include "tve/html_report.hpp"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "tve/atomic_file.hpp"
#include "tve/error.hpp"
#include "tve/log.hpp"
#include "tve/png.hpp"
#include "tve/version.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace tve {
namespace {

// The length of the well-formed UTF-8 sequence at text[i], or 0 when it is not one (a stray
// continuation byte, a truncated or overlong sequence, a surrogate, beyond U+10FFFF).
size_t utf8_sequence_length(std::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  size_t length = 0;
  unsigned char low = 0x80, high = 0xBF;  // the range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;   // overlong
    if (lead == 0xED) high = 0x9F;  // surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;   // overlong
    if (lead == 0xF4) high = 0x8F;  // beyond U+10FFFF
  } else {
    return 0;
  }
  if (i + length > text.size() || byte(i + 1) < low || byte(i + 1) > high) return 0;
  for (size_t k = 2; k < length; ++k) {
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  }
  return length;
}

std::string hex_colour(const cv::Scalar& bgr) {
  char text[8];
  std::snprintf(text, sizeof text, "#%02x%02x%02x", static_cast<int>(bgr[2]), static_cast<int>(bgr[1]), static_cast<int>(bgr[0]));
  return text;
}

// A number for SVG coordinates: short, locale-independent.
std::string coordinate(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", value);
  return text;
}

std::string probability_text(double p) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3f", p);
  return text;
}

// Phone first: one column that widens; the gallery's pictures wrap into as many columns as fit;
// the table scrolls sideways inside its box instead of widening the page.
constexpr const char* kStyle = R"css(
:root{color-scheme:light}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:12px;color:#1d1d1f;background:#fff;line-height:1.4}
h1{font-size:1.35rem;margin:.2em 0 .4em}
h2{font-size:1.1rem;margin:1.4em 0 .5em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{font-size:.95rem;margin:0 0 .2em}
body,.name,.error{overflow-wrap:anywhere}
.meta{color:#555;font-size:.9rem}
.table-box{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.85rem;overflow-wrap:normal}
th,td{padding:4px 8px;border-bottom:1px solid #e3e3e3;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left;white-space:nowrap}
th{font-weight:600;background:#f6f6f6}
td small{color:#666;white-space:nowrap}
.curves{display:flex;flex-wrap:wrap;gap:12px}
.curves figure{flex:1 1 300px;margin:0;min-width:0}
.curves svg{width:100%;height:auto;display:block}
.curves figcaption{font-size:.85rem;color:#444}
.legend{list-style:none;padding:0;margin:.5em 0;display:flex;flex-wrap:wrap;gap:4px 16px;font-size:.9rem}
.legend span{display:inline-block;width:22px;height:4px;vertical-align:middle;margin-right:6px}
.entry{border-top:1px solid #e3e3e3;padding:10px 0}
.items{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:10px}
figure.item{margin:0;min-width:0}
figure.item img{width:100%;height:auto;display:block;background:#eee;border-radius:3px}
figure.item figcaption{font-size:.8rem}
dl{margin:.2em 0;display:grid;grid-template-columns:auto auto;gap:0 8px}
dt{color:#555}
dd{margin:0;text-align:right;font-variant-numeric:tabular-nums}
.error{color:#b00020}
.note{color:#666}
.missing{display:flex;align-items:center;justify-content:center;aspect-ratio:1;background:#f3f3f3;color:#888;font-size:.8rem;border-radius:3px;text-align:center;padding:4px}
ul.failures{padding-left:1.2em}
)css";

void page_start(std::ostringstream& html, const std::string& title) {
  html << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
       << "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
       << "<meta name=\"generator\" content=\"tve " << html_escape(kVersion) << "\">\n"
       << "<title>" << html_escape(title) << "</title>\n<style>" << kStyle << "</style>\n</head>\n<body>\n";
}

void page_end(std::ostringstream& html) { html << "</body>\n</html>\n"; }

void write_item(std::ostringstream& html, const GalleryItem& item) {
  html << "<figure class=\"item\">";
  if (!item.image.empty()) {
    html << "<img src=\"" << html_escape(relative_url(item.image)) << "\" alt=\"" << html_escape(item.title) << "\" loading=\"lazy\"";
    if (item.width > 0 && item.height > 0) html << " width=\"" << item.width << "\" height=\"" << item.height << "\"";
    html << ">";
  } else {
    html << "<div class=\"missing\">no overlay</div>";
  }
  html << "<figcaption><b>" << html_escape(item.title) << "</b>";
  if (!item.numbers.empty()) {
    html << "<dl>";
    for (const auto& [name, value] : item.numbers) html << "<dt>" << html_escape(name) << "</dt><dd>" << html_escape(value) << "</dd>";
    html << "</dl>";
  }
  if (!item.note.empty()) html << "<div class=\"" << (item.failed ? "error" : "note") << "\">" << html_escape(item.note) << "</div>";
  html << "</figcaption></figure>";
}

void write_gallery(std::ostringstream& html, const std::vector<GalleryEntry>& gallery) {
  html << "<h2 id=\"gallery\">Gallery (" << gallery.size() << " image" << (gallery.size() == 1 ? "" : "s") << ")</h2>\n";
  for (const auto& entry : gallery) {
    html << "<section class=\"entry" << (entry.error.empty() ? "" : " failed") << "\"><h3 class=\"name\">"
         << html_escape(entry.input) << "</h3>";
    if (!entry.error.empty()) {
      html << "<p class=\"error\">failed: " << html_escape(entry.error) << "</p></section>\n";
      continue;
    }
    if (!entry.subtitle.empty()) html << "<p class=\"meta\">" << html_escape(entry.subtitle) << "</p>";
    html << "<div class=\"items\">";
    for (const auto& item : entry.items) write_item(html, item);
    html << "</div></section>\n";
  }
}

const json* find_number(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  const auto found = object.find(key);
  return found != object.end() && found->is_number() ? &*found : nullptr;
}

// One panel of mean curves: x the fraction of cells removed (inserted), y the class probability.
void write_curve_panel(std::ostringstream& html, const EvaluationReport& report, bool deletion) {
  constexpr double width = 400, height = 290, left = 46, right = 390, top = 12, bottom = 250;
  const auto x_of = [&](double x) { return left + (right - left) * x; };
  const auto y_of = [&](double y) { return bottom - (bottom - top) * std::clamp(y, 0.0, 1.0); };
  const char* name = deletion ? "deletion" : "insertion";
  html << "<figure><svg viewBox=\"0 0 " << width << ' ' << height
       << "\" role=\"img\" aria-label=\"mean " << name << " curves\" data-curves=\"" << name << "\">";
  html << "<g font-size=\"11\" fill=\"#444\">";
  for (int tick = 0; tick <= 4; ++tick) {
    const double t = tick / 4.0;
    html << "<line x1=\"" << coordinate(left) << "\" x2=\"" << coordinate(right) << "\" y1=\"" << coordinate(y_of(t)) << "\" y2=\""
         << coordinate(y_of(t)) << "\" stroke=\"#e3e3e3\"/>";
    html << "<line x1=\"" << coordinate(x_of(t)) << "\" x2=\"" << coordinate(x_of(t)) << "\" y1=\"" << coordinate(top) << "\" y2=\""
         << coordinate(bottom) << "\" stroke=\"#e3e3e3\"/>";
    html << "<text x=\"" << coordinate(left - 6) << "\" y=\"" << coordinate(y_of(t) + 4) << "\" text-anchor=\"end\">"
         << format_metric(t).substr(0, 4) << "</text>";
    html << "<text x=\"" << coordinate(x_of(t)) << "\" y=\"" << coordinate(bottom + 16) << "\" text-anchor=\"middle\">"
         << format_metric(t).substr(0, 4) << "</text>";
  }
  html << "<text x=\"" << coordinate((left + right) / 2) << "\" y=\"" << coordinate(height - 4) << "\" text-anchor=\"middle\">fraction of cells "
       << (deletion ? "removed" : "inserted") << "</text>";
  html << "<text transform=\"translate(12 " << coordinate((top + bottom) / 2) << ") rotate(-90)\" text-anchor=\"middle\">probability of the class</text>";
  html << "</g><rect x=\"" << coordinate(left) << "\" y=\"" << coordinate(top) << "\" width=\"" << coordinate(right - left)
       << "\" height=\"" << coordinate(bottom - top) << "\" fill=\"none\" stroke=\"#333\"/>";
  for (size_t m = 0; m < report.methods.size(); ++m) {
    const auto found = report.totals.find(report.methods[m]);
    if (found == report.totals.end() || found->second.curves == 0) continue;
    const auto& sums = deletion ? found->second.deletion_curve_sum : found->second.insertion_curve_sum;
    if (sums.size() < 2) continue;
    html << "<polyline fill=\"none\" stroke-width=\"2\" stroke-linejoin=\"round\" stroke=\"" << hex_colour(curve_colour(m))
         << "\" data-method=\"" << html_escape(report.methods[m]) << "\" points=\"";
    for (size_t s = 0; s < sums.size(); ++s) {
      const double mean = sums[s] / static_cast<double>(found->second.curves);
      html << (s ? " " : "") << coordinate(x_of(static_cast<double>(s) / static_cast<double>(sums.size() - 1))) << ','
           << coordinate(y_of(mean));
    }
    html << "\"><title>" << html_escape(report.methods[m]) << "</title></polyline>";
  }
  html << "</svg><figcaption>" << (deletion ? "Deletion: the most important cells removed first (lower is better)"
                                            : "Insertion: the most important cells inserted first (higher is better)")
       << "</figcaption></figure>";
}

}  // namespace

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 8);
  for (size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&quot;"; break;
        case '\'': out += "&#39;"; break;
        default:
          // Control characters but tab and newlines have no business on a page (an error
          // message quoting a binary file): shown as U+FFFD.
          if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F) {
            out += "\xEF\xBF\xBD";
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    const size_t length = utf8_sequence_length(text, i);
    if (length == 0) {
      out += "\xEF\xBF\xBD";  // not UTF-8: the page would otherwise be mis-decoded from here on
      ++i;
    } else {
      out.append(text.substr(i, length));
      i += length;
    }
  }
  return out;
}

std::string relative_url(const fs::path& relative) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (const char ch : relative.generic_string()) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
        c == '~' || c == '/') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

GalleryItem eval_gallery_item(const json& record) {
  GalleryItem item;
  item.title = record.value("method", std::string("?"));
  if (record.contains("error")) {
    item.failed = true;
    item.note = record["error"].is_string() ? record["error"].get<std::string>() : record["error"].dump();
    return item;
  }
  if (const auto* v = find_number(record, "deletion_auc")) item.numbers.emplace_back("deletion AUC", format_metric(v->get<double>()));
  if (const auto* v = find_number(record, "insertion_auc")) item.numbers.emplace_back("insertion AUC", format_metric(v->get<double>()));
  if (const auto fidelity = record.find("fidelity"); fidelity != record.end()) {
    if (const auto* v = find_number(*fidelity, "spearman")) item.numbers.emplace_back("Spearman vs occl.", format_metric(v->get<double>()));
    if (const auto* v = find_number(*fidelity, "top10_iou")) item.numbers.emplace_back("top-10% IoU", format_metric(v->get<double>()));
  }
  if (const auto mask = record.find("mask"); mask != record.end() && mask->is_object()) {
    if (const auto hit = mask->find("pointing_hit"); hit != mask->end() && hit->is_boolean()) {
      item.numbers.emplace_back("pointing game", hit->get<bool>() ? "hit" : "miss");
    }
    if (const auto* v = find_number(*mask, "above_median_share_on_object")) {
      item.numbers.emplace_back("share on object", format_metric(v->get<double>()));
    }
    if (const auto error = mask->find("error"); error != mask->end() && error->is_string()) {
      item.note = "mask: " + error->get<std::string>();
      item.failed = true;
    }
  }
  if (const auto cost = record.find("cost"); cost != record.end()) {
    if (const auto* v = find_number(*cost, "ms")) item.numbers.emplace_back("ms / image", format_metric(v->get<double>()));
  }
  return item;
}

GalleryEntry explain_gallery_entry(const json& record, const fs::path& out_dir) {
  GalleryEntry entry;
  entry.input = record.value("input", std::string());
  if (record.contains("error")) {
    entry.error = record["error"].is_string() ? record["error"].get<std::string>() : record["error"].dump();
    return entry;
  }
  // Paths are out_dir / <mirrored input>...: relative to the folder, however --out was spelt.
  fs::path base = out_dir.lexically_normal();
  if (base.filename().empty()) base = base.parent_path();
  std::vector<std::string> overlays;
  if (const auto outputs = record.find("outputs"); outputs != record.end() && outputs->contains("overlay")) {
    for (const auto& file : outputs->at("overlay")) overlays.push_back(file.get<std::string>());
  }
  const auto explained = record.value("explained", json::array());
  for (size_t k = 0; k < explained.size(); ++k) {
    const auto& cls = explained[k];
    GalleryItem item;
    item.title = cls.value("label", std::string("?"));
    if (const auto* p = find_number(cls, "probability")) item.numbers.emplace_back("probability", probability_text(p->get<double>()));
    if (const auto* index = find_number(cls, "index")) item.numbers.emplace_back("class", std::to_string(index->get<int64_t>()));
    if (k < overlays.size()) {
      const fs::path relative = fs::path(overlays[k]).lexically_normal().lexically_relative(base);
      if (relative.empty() || *relative.begin() == "..") {
        item.note = "overlay outside the report's folder: " + overlays[k];
      } else {
        item.image = relative.string();
      }
    } else {
      item.note = "no overlay written (--format)";
    }
    entry.items.push_back(std::move(item));
  }
  if (record.value("resumed", false)) entry.subtitle = "explained by an earlier run (--resume)";
  return entry;
}

std::string eval_report_html(const json& summary, const EvaluationReport& report, const std::vector<GalleryEntry>& gallery) {
  std::ostringstream html;
  const std::string model = summary.value("model", std::string("?")), head = summary.value("head", std::string("?"));
  page_start(html, "tve eval: " + model + " / " + head);
  html << "<h1>tve eval: <span class=\"name\">" << html_escape(model) << "</span>, head <span class=\"name\">" << html_escape(head)
       << "</span></h1>\n<p class=\"meta\">" << summary.value("images", size_t{0}) << " image(s) evaluated";
  if (summary.value("resumed", size_t{0})) html << " (" << summary.value("resumed", size_t{0}) << " by an earlier run)";
  html << ", " << summary.value("failed", size_t{0}) << " failed";
  if (summary.value("images_without_mask", size_t{0})) html << ", " << summary.value("images_without_mask", size_t{0}) << " without a mask";
  html << "; insertion starts from " << html_escape(summary.value("insertion_start", std::string("baseline")));
  html << "; tve " << html_escape(kVersion) << ".</p>\n";

  // The table: exactly summary.json's numbers, shown as table.md shows them.
  const json methods = summary.value("methods", json::object());
  std::vector<const MetricColumn*> shown;
  for (const auto& column : metric_columns()) {
    for (const auto& [name, metrics] : methods.items()) {
      if (metrics.contains(column.key)) {
        shown.push_back(&column);
        break;
      }
    }
  }
  html << "<h2 id=\"summary\">Summary</h2>\n<div class=\"table-box\"><table id=\"summary-table\"><thead><tr><th>method</th>";
  for (const auto* column : shown) html << "<th data-metric=\"" << column->key << "\">" << html_escape(column->heading) << "</th>";
  html << "</tr></thead><tbody>\n";
  for (const auto& name : report.methods) {
    if (!methods.contains(name)) continue;
    const auto& metrics = methods[name];
    html << "<tr data-method=\"" << html_escape(name) << "\"><th scope=\"row\">" << html_escape(name) << "</th>";
    for (const auto* column : shown) {
      const auto found = metrics.find(column->key);
      if (found == metrics.end()) {
        html << "<td data-metric=\"" << column->key << "\">-</td>";
        continue;
      }
      const char* statistic = column->rate ? "mean" : "median";
      const double value = found->value(statistic, 0.0), low = found->value("low", 0.0), high = found->value("high", 0.0);
      html << "<td data-metric=\"" << column->key << "\" data-statistic=\"" << statistic << "\" title=\"" << statistic << " of "
           << found->value("count", int64_t{0}) << "\">" << format_metric(value) << " <small>[" << format_metric(low) << ", "
           << format_metric(high) << "]</small></td>";
    }
    html << "</tr>\n";
  }
  html << "</tbody></table></div>\n<p class=\"meta\">Median [95% bootstrap interval] per image (pointing game: hit rate); "
          "time and cost per image of a batch, the interval over batches. The same numbers as summary.json.</p>\n";

  html << "<h2 id=\"curves\">Deletion and insertion curves</h2>\n<p class=\"meta\">Mean over the images of the explained "
          "class's probability as the map's cells are removed from the image (deletion) or inserted into the "
          "baseline (insertion), most important first.</p>\n<ul class=\"legend\">";
  for (size_t m = 0; m < report.methods.size(); ++m) {
    html << "<li><span style=\"background:" << hex_colour(curve_colour(m)) << "\"></span>" << html_escape(report.methods[m]) << "</li>";
  }
  html << "</ul>\n<div class=\"curves\">";
  write_curve_panel(html, report, true);
  write_curve_panel(html, report, false);
  html << "</div>\n";

  const auto failures = summary.value("failures", json::array());
  const auto mask_failures = summary.value("mask_failures", json::array());
  if (!failures.empty() || !mask_failures.empty()) {
    html << "<h2 id=\"failures\">Failures</h2>\n<ul class=\"failures\">";
    for (const auto& failure : failures) {
      html << "<li class=\"error\"><span class=\"name\">" << html_escape(failure.value("input", std::string())) << "</span>: "
           << html_escape(failure.value("error", std::string())) << "</li>";
    }
    for (const auto& failure : mask_failures) {
      html << "<li class=\"error\">mask <span class=\"name\">" << html_escape(failure.value("mask", std::string())) << "</span>: "
           << html_escape(failure.value("error", std::string())) << "</li>";
    }
    html << "</ul>\n";
  }
  write_gallery(html, gallery);
  page_end(html);
  return html.str();
}

std::string explain_report_html(const json& run, const std::vector<GalleryEntry>& gallery) {
  std::ostringstream html;
  const std::string model = run.value("model", std::string("?")), head = run.value("head", std::string("?")),
                    method = run.value("method", std::string("?"));
  page_start(html, "tve explain: " + model + " / " + head + " / " + method);
  html << "<h1>tve explain: <span class=\"name\">" << html_escape(model) << "</span>, head <span class=\"name\">" << html_escape(head)
       << "</span>, " << html_escape(method) << "</h1>\n<p class=\"meta\">" << run.value("inputs", size_t{0}) << " input(s): "
       << run.value("explained", size_t{0}) << " explained";
  if (run.value("resumed", size_t{0})) html << ", " << run.value("resumed", size_t{0}) << " by an earlier run";
  html << ", " << run.value("failed", size_t{0}) << " failed";
  if (const auto parameters = run.find("parameters"); parameters != run.end() && !parameters->empty()) {
    html << "; parameters " << html_escape(parameters->dump(-1, ' ', false, json::error_handler_t::replace));
  }
  html << "; tve " << html_escape(kVersion) << ".</p>\n";
  std::vector<const GalleryEntry*> failed;
  for (const auto& entry : gallery) {
    if (!entry.error.empty()) failed.push_back(&entry);
  }
  if (!failed.empty()) {
    html << "<h2 id=\"failures\">Failures</h2>\n<ul class=\"failures\">";
    for (const auto* entry : failed) {
      html << "<li class=\"error\"><span class=\"name\">" << html_escape(entry->input) << "</span>: " << html_escape(entry->error) << "</li>";
    }
    html << "</ul>\n";
  }
  write_gallery(html, gallery);
  page_end(html);
  return html.str();
}

GalleryCanvas gallery_canvas(const Image& image, const InputSpec& spec, int max_side) {
  GalleryCanvas canvas;
  const cv::Mat display = to_display_bgr8(image);
  canvas.region = input_region(display.cols, display.rows, spec);
  const double scale = std::min(1.0, static_cast<double>(max_side) / std::max(display.cols, display.rows));
  if (scale >= 1.0) {
    canvas.display = display;
    return canvas;
  }
  const int width = std::max(1, static_cast<int>(std::lround(display.cols * scale)));
  const int height = std::max(1, static_cast<int>(std::lround(display.rows * scale)));
  cv::resize(display, canvas.display, cv::Size(width, height), 0, 0, cv::INTER_AREA);  // averages, no aliasing
  const double sx = static_cast<double>(width) / display.cols, sy = static_cast<double>(height) / display.rows;
  canvas.region = {canvas.region.x * sx, canvas.region.y * sy, canvas.region.width * sx, canvas.region.height * sy};
  return canvas;
}

EvalGallery::EvalGallery(fs::path out_dir, InputSpec spec, OverlayOptions overlay, int max_side)
    : out_dir_(std::move(out_dir)), spec_(std::move(spec)), overlay_(overlay), max_side_(max_side) {}

fs::path EvalGallery::overlay_path(const fs::path& input, const std::string& method) {
  // The mirrored name is at most kMaxOutputBaseBytes: with ".kernelshap.overlay.png" it fits 255.
  const fs::path mirrored = mirrored_output_path(input);
  return fs::path("overlays") / mirrored.parent_path() / (mirrored.filename().string() + "." + method + ".overlay.png");
}

void EvalGallery::add_map(const ImageJob& job, const std::string& method, const torch::Tensor& map) {
  const std::string input = job.input.path.string();
  Drawn drawn;
  try {
    if (!job.image) throw Error(input + ": the decoded image was not kept for the report's overlays");
    if (canvas_input_ != input) {
      canvas_ = gallery_canvas(*job.image, spec_, max_side_);
      canvas_input_ = input;
    }
    const fs::path relative = overlay_path(job.input.path, method);
    write_file_atomically(out_dir_ / relative, encode_png(render_overlay(canvas_.display, map, canvas_.region, overlay_)));
    drawn.image = relative.string();
    drawn.width = canvas_.display.cols;
    drawn.height = canvas_.display.rows;
  } catch (const Error& e) {
    drawn.error = e.what();
  } catch (const cv::Exception& e) {
    drawn.error = input + ": drawing the overlay failed: " + e.msg;
  }
  if (!drawn.error.empty()) logger().warn("report.html: no {} overlay: {}", method, drawn.error);
  drawn_[{input, method}] = std::move(drawn);
}

void EvalGallery::add_record(const json& record) {
  const std::string input = record.value("input", std::string());
  GalleryEntry& entry = entries_[input];
  entry.input = input;
  if (!record.contains("method")) {  // the image itself failed
    entry.error = record.contains("error") && record["error"].is_string() ? record["error"].get<std::string>() : "failed";
    return;
  }
  GalleryItem item = eval_gallery_item(record);
  const std::string method = record["method"].is_string() ? record["method"].get<std::string>() : "";
  if (const auto found = drawn_.find({input, method}); found != drawn_.end()) {
    item.image = found->second.image;
    item.width = found->second.width;
    item.height = found->second.height;
    if (!found->second.error.empty()) {
      item.failed = true;
      item.note = found->second.error + (item.note.empty() ? "" : "; " + item.note);
    }
    drawn_.erase(found);  // its record has it now
  } else if (!record.contains("error")) {
    const fs::path relative = overlay_path(input, method);
    std::error_code ec;
    if (fs::is_regular_file(out_dir_ / relative, ec)) {
      item.image = relative.string();
    } else {
      item.note = "no overlay: evaluated by an earlier run, which left none";
    }
  }
  if (entry.subtitle.empty()) {
    if (const auto cls = record.find("class"); cls != record.end() && cls->is_object()) {
      entry.subtitle = "class " + cls->value("label", std::string("?"));
      if (const auto* p = find_number(*cls, "probability")) entry.subtitle += " (probability " + probability_text(p->get<double>()) + ")";
    }
  }
  entry.items.push_back(std::move(item));
}

std::vector<GalleryEntry> EvalGallery::entries(const std::vector<InputFile>& inputs) const {
  std::vector<GalleryEntry> out;
  for (const auto& input : inputs) {
    const auto found = entries_.find(input.path.string());
    if (found != entries_.end()) out.push_back(found->second);
  }
  return out;
}

}  // namespace tve
