#include "tve/html_report.hpp"

#include <torch/torch.h>

#include <opencv2/imgcodecs.hpp>

#include "test_helpers.hpp"

namespace tve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::TempDir;

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

json eval_record(const std::string& input, const std::string& method, double deletion) {
  return {{"input", input},
          {"method", method},
          {"class", {{"index", 3}, {"label", "cat & <dog>"}, {"probability", 0.875}}},
          {"deletion_auc", deletion},
          {"insertion_auc", 0.5},
          {"fidelity", {{"spearman", 0.25}, {"pearson", 0.3}, {"top10_iou", 0.125}}},
          {"mask", {{"file", "m.png"}, {"pointing_hit", true}, {"above_median_share_on_object", 0.75}}},
          {"cost", {{"ms", 12.5}}}};
}

TEST(HtmlEscape, EscapesMarkupAndKeepsUtf8) {
  EXPECT_EQ(html_escape(R"(<b>&"x"'.png)"), "&lt;b&gt;&amp;&quot;x&quot;&#39;.png");
  EXPECT_EQ(html_escape("odd name \xC3\xBC \xE2\x82\xAC \xF0\x9F\x90\xB1.png"), "odd name \xC3\xBC \xE2\x82\xAC \xF0\x9F\x90\xB1.png");
  EXPECT_EQ(html_escape("tab\tand\nnewline"), "tab\tand\nnewline");
}

TEST(HtmlEscape, ReplacesWhatIsNotUtf8OrIsAControlCharacter) {
  const std::string replacement = "\xEF\xBF\xBD";
  EXPECT_EQ(html_escape("a\xFFz"), "a" + replacement + "z");                    // never valid
  EXPECT_EQ(html_escape("a\xC3"), "a" + replacement);                           // cut sequence
  EXPECT_EQ(html_escape("\xC0\xAF"), replacement + replacement);                // overlong '/'
  EXPECT_EQ(html_escape("\xED\xA0\x80"), replacement + replacement + replacement);  // a surrogate
  EXPECT_EQ(html_escape("\xF4\x90\x80\x80"), replacement + replacement + replacement + replacement);  // beyond U+10FFFF
  EXPECT_EQ(html_escape(std::string("bell\x07") + "\x7F"), "bell" + replacement + replacement);
}

TEST(RelativeUrl, PercentEncodesAllButUnreservedAndSlashes) {
  EXPECT_EQ(relative_url("overlays/a b/c#1?.png"), "overlays/a%20b/c%231%3F.png");
  EXPECT_EQ(relative_url("100%.png"), "100%25.png");
  EXPECT_EQ(relative_url("\xC3\xBC&<\">'.png"), "%C3%BC%26%3C%22%3E%27.png");
  EXPECT_EQ(relative_url("c:x.png"), "c%3Ax.png");  // not read as a URL scheme
  EXPECT_EQ(relative_url("gradcam++.overlay.png"), "gradcam%2B%2B.overlay.png");
}

TEST(EvalGalleryItem, ShowsTheRecordsNumbersOrItsError) {
  const auto item = eval_gallery_item(eval_record("x.png", "gradcam", 0.123456));
  EXPECT_EQ(item.title, "gradcam");
  EXPECT_FALSE(item.failed);
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"deletion AUC", "0.123"},    {"insertion AUC", "0.500"},  {"Spearman vs occl.", "0.250"}, {"top-10% IoU", "0.125"},
      {"pointing game", "hit"},     {"share on object", "0.750"}, {"ms / image", "12.5"}};
  EXPECT_EQ(item.numbers, expected);

  const auto failed = eval_gallery_item({{"input", "x.png"}, {"method", "ig"}, {"error", "map is not finite"}});
  EXPECT_TRUE(failed.failed);
  EXPECT_EQ(failed.note, "map is not finite");
  EXPECT_TRUE(failed.numbers.empty());

  auto record = eval_record("x.png", "tve", 0.2);
  record["mask"] = {{"file", "x.mask.png"}, {"error", "x.mask.png: mask is 7x7 but its image is 9x9"}};
  const auto mask_failed = eval_gallery_item(record);
  EXPECT_TRUE(mask_failed.failed);
  EXPECT_EQ(mask_failed.note, "mask: x.mask.png: mask is 7x7 but its image is 9x9");
}

TEST(ExplainGalleryEntry, OverlaysRelativeToTheOutputFolderHoweverItIsSpelt) {
  const json record{{"input", "photos/a b.png"},
                    {"explained", {{{"index", 2}, {"label", "cup"}, {"probability", 0.5}},
                                   {{"index", 7}, {"label", "mug"}, {"probability", 0.25}}}},
                    {"outputs", {{"overlay", {"out/photos/a b.png.top1.overlay.png", "out/photos/a b.png.top2.overlay.png"}}}}};
  for (const char* out : {"out", "out/", "./out"}) {
    auto spelt = record;
    if (std::string(out) == "./out") {
      spelt["outputs"]["overlay"] = {"./out/photos/a b.png.top1.overlay.png", "./out/photos/a b.png.top2.overlay.png"};
    }
    const auto entry = explain_gallery_entry(spelt, out);
    ASSERT_EQ(entry.items.size(), 2u) << out;
    EXPECT_EQ(entry.items[0].image, "photos/a b.png.top1.overlay.png") << out;
    EXPECT_EQ(entry.items[1].image, "photos/a b.png.top2.overlay.png") << out;
    EXPECT_EQ(entry.items[1].title, "mug");
    EXPECT_EQ(entry.items[1].numbers[0], std::make_pair(std::string("probability"), std::string("0.250")));
  }
  auto elsewhere = record;
  elsewhere["outputs"]["overlay"] = {"other/x.overlay.png", "out/../y.overlay.png"};
  const auto entry = explain_gallery_entry(elsewhere, "out");
  EXPECT_TRUE(entry.items[0].image.empty());
  EXPECT_TRUE(entry.items[1].image.empty());
  EXPECT_NE(entry.items[0].note.find("outside the report's folder"), std::string::npos);

  const auto failed = explain_gallery_entry({{"input", "bad.png"}, {"error", "bad.png: truncated PNG"}}, "out");
  EXPECT_EQ(failed.error, "bad.png: truncated PNG");
  EXPECT_TRUE(failed.items.empty());
}

EvaluationReport small_report() {
  EvaluationReport report;
  report.methods = {"tve", "grad<cam>"};
  report.images = 3;
  report.failed = 1;
  report.failures = {{"in/<bad> & \"worse\".png", "truncated <PNG>"}};
  report.curve_points = 3;
  for (size_t m = 0; m < report.methods.size(); ++m) {
    auto& totals = report.totals[report.methods[m]];
    totals.metrics["deletion_auc"] = {0.1 + m, 0.2 + m, 0.3 + m};
    totals.metrics["insertion_auc"] = {0.7, 0.8, 0.9};
    totals.metrics["pointing_game"] = {1.0, 0.0, 1.0};
    totals.metrics["ms"] = {123.0 + 10 * m};
    totals.deletion_curve_sum = {3.0, 1.5, 0.3};
    totals.insertion_curve_sum = {0.3, 1.5, 3.0};
    totals.curves = 3;
  }
  return report;
}

TEST(EvalReportHtml, TableHoldsTheSummarysNumbersAndCurvesEveryMethod) {
  const auto report = small_report();
  json summary = report.summary();
  summary["model"] = "tiny <vit>";
  summary["head"] = "default";
  const std::vector<GalleryEntry> gallery = {
      {"in/ok ü.png", "class cat", {{"tve", "overlays/in/ok ü.png.tve.overlay.png", 32, 24, {{"deletion AUC", "0.100"}}, "", false}}, ""},
      {"in/<bad> & \"worse\".png", "", {}, "truncated <PNG>"}};
  const std::string html = eval_report_html(summary, report, gallery);

  for (const auto& name : report.methods) {
    for (const auto& [metric, value] : summary["methods"][name].items()) {
      const double shown = value.contains("median") ? value["median"].get<double>() : value["mean"].get<double>();
      const std::string cell = "<td data-metric=\"" + metric + "\" data-statistic=\"" + (value.contains("median") ? "median" : "mean") +
                               "\" title=\"" + (value.contains("median") ? "median" : "mean") + " of " +
                               std::to_string(value["count"].get<int64_t>()) + "\">" + format_metric(shown) + " <small>[" +
                               format_metric(value["low"].get<double>()) + ", " + format_metric(value["high"].get<double>()) + "]</small></td>";
      EXPECT_NE(html.find(cell), std::string::npos) << name << " " << metric << ": " << cell;
    }
  }
  EXPECT_EQ(count(html, "<tr data-method="), 2u);
  EXPECT_NE(html.find("<tr data-method=\"grad&lt;cam&gt;\">"), std::string::npos);
  EXPECT_EQ(count(html, "<polyline "), 4u);  // two methods, two panels
  // Mean curve: 1.0, 0.5, 0.1 at x = 0, 0.5, 1 of the panel.
  EXPECT_NE(html.find("points=\"46.0,12.0 218.0,131.0 390.0,226.2\""), std::string::npos);

  // Outside text only as escaped text; the image by a percent-encoded relative URL.
  EXPECT_EQ(html.find("<bad>"), std::string::npos);
  EXPECT_EQ(html.find("<PNG>"), std::string::npos);
  EXPECT_EQ(html.find("<vit>"), std::string::npos);
  EXPECT_EQ(html.find("<cam>"), std::string::npos);
  EXPECT_NE(html.find("in/&lt;bad&gt; &amp; &quot;worse&quot;.png"), std::string::npos);
  EXPECT_NE(html.find("src=\"overlays/in/ok%20%C3%BC.png.tve.overlay.png\""), std::string::npos);
  EXPECT_NE(html.find("width=\"32\" height=\"24\""), std::string::npos);
  EXPECT_NE(html.find("failed: truncated &lt;PNG&gt;"), std::string::npos);
  EXPECT_NE(html.find("<h2 id=\"failures\">"), std::string::npos);

  // One page, nothing from the network, readable on a phone.
  EXPECT_EQ(html.find("http:"), std::string::npos);
  EXPECT_EQ(html.find("https:"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_NE(html.find("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"), std::string::npos);
  EXPECT_EQ(count(html, "<section"), count(html, "</section>"));
  EXPECT_EQ(count(html, "<figure"), count(html, "</figure>"));
  EXPECT_EQ(count(html, "<svg"), count(html, "</svg>"));
}

TEST(ExplainReportHtml, ListsFailuresAndTheGallery) {
  const json run{{"model", "resnet"}, {"head", "fashion"}, {"method", "tve"}, {"parameters", {{"smooth", true}}},
                 {"inputs", 2},       {"explained", 1},       {"resumed", 0},     {"failed", 1}};
  const std::vector<GalleryEntry> gallery = {
      {"a'b.png", "", {{"cup", "a%27b.png.overlay.png", 0, 0, {{"probability", "0.500"}}, "", false}}, ""},
      {"<x>.png", "", {}, "<x>.png: not an image"}};
  const std::string html = explain_report_html(run, gallery);
  EXPECT_NE(html.find("2 input(s): 1 explained, 1 failed"), std::string::npos);
  EXPECT_NE(html.find("<li class=\"error\"><span class=\"name\">&lt;x&gt;.png</span>: &lt;x&gt;.png: not an image</li>"),
            std::string::npos);
  EXPECT_NE(html.find("src=\"a%2527b.png.overlay.png\""), std::string::npos);  // a literal % in the name
  EXPECT_NE(html.find("<h3 class=\"name\">a&#39;b.png</h3>"), std::string::npos);
  EXPECT_NE(html.find("{&quot;smooth&quot;:true}"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
}

TEST(GalleryCanvas, ScalesDownToTheLongerSideNeverUp) {
  Image image;
  image.pixels = cv::Mat(400, 1000, CV_8UC3, cv::Scalar(10, 20, 30));
  auto spec = test::spec32();
  spec.resize = ResizePolicy::CenterCrop;  // a region inside the image, to see it scaled
  const auto full = input_region(1000, 400, spec);
  const auto small = gallery_canvas(image, spec, 250);
  EXPECT_EQ(small.display.cols, 250);
  EXPECT_EQ(small.display.rows, 100);
  EXPECT_GT(full.x, 0);
  EXPECT_NEAR(small.region.x, full.x / 4, 1e-9);
  EXPECT_NEAR(small.region.width, full.width / 4, 1e-9);
  EXPECT_NEAR(small.region.height, full.height / 4, 1e-9);
  const auto same = gallery_canvas(image, spec, 2000);
  EXPECT_EQ(same.display.cols, 1000);
  EXPECT_EQ(same.display.rows, 400);
}

TEST(EvalGallery, WritesOverlaysAndKeepsInputOrderAndFailures) {
  TempDir tmp;
  const fs::path out = tmp / "o";
  EvalGallery gallery(out, test::spec32(), {}, 16);
  ImageJob job;
  job.input = InputFile(fs::path("in") / "odd name ü.png");
  job.image = load_image(test::image_fixture("odd name ü.png"));
  const auto map = torch::arange(16, torch::kFloat32).view({4, 4});
  gallery.add_map(job, "gradcam++", map);
  gallery.add_record(eval_record(job.input.path.string(), "gradcam++", 0.25));
  gallery.add_record({{"input", "in/bad.png"}, {"error", "in/bad.png: truncated PNG"}});
  gallery.add_record({{"input", job.input.path.string()}, {"method", "ig"}, {"error", "map is not finite"}});
  // Resumed: a record without a map this run; the overlay an earlier run left is shown.
  test::write_text(out / EvalGallery::overlay_path("in/old.png", "tve"), "png bytes");
  gallery.add_record(eval_record("in/old.png", "tve", 0.5));
  gallery.add_record(eval_record("in/gone.png", "tve", 0.5));

  const auto entries = gallery.entries({InputFile("in/old.png"), InputFile("in/bad.png"), job.input, InputFile("in/gone.png")});
  ASSERT_EQ(entries.size(), 4u);
  EXPECT_EQ(entries[0].input, "in/old.png");
  EXPECT_EQ(entries[0].items[0].image, "overlays/in/old.png.tve.overlay.png");
  EXPECT_EQ(entries[1].error, "in/bad.png: truncated PNG");
  ASSERT_EQ(entries[2].items.size(), 2u);
  EXPECT_EQ(entries[2].subtitle, "class cat & <dog> (probability 0.875)");
  const auto& drawn = entries[2].items[0];
  EXPECT_EQ(drawn.image, "overlays/in/odd name ü.png.gradcam++.overlay.png");
  const cv::Mat png = cv::imread((out / drawn.image).string(), cv::IMREAD_UNCHANGED);
  ASSERT_FALSE(png.empty());
  EXPECT_LE(std::max(png.cols, png.rows), 16);
  EXPECT_EQ(png.cols, drawn.width);
  EXPECT_EQ(png.rows, drawn.height);
  EXPECT_TRUE(entries[2].items[1].failed);
  EXPECT_TRUE(entries[3].items[0].image.empty());
  EXPECT_NE(entries[3].items[0].note.find("earlier run"), std::string::npos);

  // An overlay that cannot be written is said in the report, and the run goes on.
  test::write_text(tmp / "file", "x");
  EvalGallery blocked(tmp / "file", test::spec32());
  blocked.add_map(job, "tve", map);
  blocked.add_record(eval_record(job.input.path.string(), "tve", 0.25));
  const auto blocked_entries = blocked.entries({job.input});
  ASSERT_EQ(blocked_entries.size(), 1u);
  EXPECT_TRUE(blocked_entries[0].items[0].failed);
  EXPECT_TRUE(blocked_entries[0].items[0].image.empty());
  EXPECT_FALSE(blocked_entries[0].items[0].numbers.empty());
}

}  // namespace
}  // namespace tve
