#pragma once
// report.html: what a run of `tve eval` or `tve explain --report` produced, as one page a browser
// opens from disk (a phone's included). No script, no style sheet or font from elsewhere, nothing
// fetched from the network: the curves are inline SVG and the overlays are PNG files beside the
// report, referenced by relative URL. Every text from outside (file names, labels, errors) is
// HTML-escaped, so a file called `<b>&"x".png` shows as its name.

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tve/evaluate.hpp"
#include "tve/image.hpp"
#include "tve/pipeline.hpp"
#include "tve/render.hpp"

namespace tve {

// `text` safe in HTML text and in quoted attribute values: & < > " ' as character references, and
// bytes that are not UTF-8 (a file name may hold any bytes but '/' and NUL) as U+FFFD.
std::string html_escape(std::string_view text);

// A relative path (its bytes as they are on disk) as a relative URL: every byte but unreserved
// ASCII and '/' percent-encoded, so that spaces, '#', '?', '%' and non-ASCII names load.
std::string relative_url(const std::filesystem::path& relative);

// One picture of the gallery: an overlay with what it shows, or why there is none.
struct GalleryItem {
  std::string title;  // the method (eval) or the class label (explain)
  std::string image;  // the overlay's path relative to the report's folder; empty: none
  int width = 0, height = 0;  // its size when known (lets the page lay out before it loads)
  std::vector<std::pair<std::string, std::string>> numbers;  // name, value as shown
  std::string note;   // shown under the numbers (e.g. why there is no overlay)
  bool failed = false;  // `note` is an error
};

// One input: its overlays side by side, or the error that failed it.
struct GalleryEntry {
  std::string input;     // as given on the command line
  std::string subtitle;  // e.g. the explained class and its probability
  std::vector<GalleryItem> items;
  std::string error;  // non-empty: the image failed
};

// A gallery item from one record of results.jsonl: the method, its deletion and insertion AUC,
// agreement with occlusion and the pointing game where measured, or the record's error.
GalleryItem eval_gallery_item(const nlohmann::json& record);

// A gallery entry from one stdout record of `tve explain` with --out: one item per explained class
// (label, probability, class index) with its overlay (record "outputs", made relative to
// `out_dir`), or the record's error.
GalleryEntry explain_gallery_entry(const nlohmann::json& record, const std::filesystem::path& out_dir);

// The page of `tve eval`: a header (model, head, counts), the summary table (every number from
// `summary`, summary.json as written, formatted as table.md formats it), the mean deletion and
// insertion curves of `report` as SVG, the failed images and masks, and the gallery.
std::string eval_report_html(const nlohmann::json& summary, const EvaluationReport& report,
                             const std::vector<GalleryEntry>& gallery);

// The page of `tve explain --report`: a header from `run` (model, head, method, parameters and
// counts: "inputs", "explained", "resumed", "failed") and the gallery.
std::string explain_report_html(const nlohmann::json& run, const std::vector<GalleryEntry>& gallery);

// An image made small for a gallery, with the region of it the model saw: the decoded image as
// 8-bit BGR, scaled down (never up) so that its longer side is at most `max_side` pixels.
struct GalleryCanvas {
  cv::Mat display;  // 8-bit BGR
  CropBox region;   // input_region, in the scaled image's pixels
};
GalleryCanvas gallery_canvas(const Image& image, const InputSpec& spec, int max_side = 320);

// The gallery of a `tve eval` run as it streams: each map drawn as a small overlay into
// out_dir/overlays/<mirrored input>.<method>.overlay.png (written atomically), each record's
// numbers kept, and at the end one entry per input in input order, failures included.
class EvalGallery {
 public:
  EvalGallery(std::filesystem::path out_dir, InputSpec spec, OverlayOptions overlay = {}, int max_side = 320);

  // The overlay of `map` ([G,G]) for the job's image. An overlay that cannot be drawn or written
  // (a full disk) is logged and shown in the report as such; the evaluation goes on.
  void add_map(const ImageJob& job, const std::string& method, const torch::Tensor& map);
  void add_record(const nlohmann::json& record);
  // One entry per input that has records, in the order of `inputs`. An image evaluated by an
  // earlier run (--resume) shows the overlay that run wrote, when it is there.
  std::vector<GalleryEntry> entries(const std::vector<InputFile>& inputs) const;

  // Where the overlay of `input` by `method` goes, relative to out_dir.
  static std::filesystem::path overlay_path(const std::filesystem::path& input, const std::string& method);

 private:
  struct Drawn {
    std::string image;  // relative to out_dir; empty when it failed
    int width = 0, height = 0;
    std::string error;
  };
  std::filesystem::path out_dir_;
  InputSpec spec_;
  OverlayOptions overlay_;
  int max_side_;
  std::string canvas_input_;  // the image `canvas_` was made from: its methods' maps come one after another
  GalleryCanvas canvas_;
  std::map<std::pair<std::string, std::string>, Drawn> drawn_;  // (input, method)
  std::map<std::string, GalleryEntry> entries_;                 // by input
};

}  // namespace tve
