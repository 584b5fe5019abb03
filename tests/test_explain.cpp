// Explain runs end to end: files in, overlays / .npy / JSON out, bad inputs reported in place.

#include "tve/explain.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <fstream>

#include <opencv2/imgcodecs.hpp>

#include "test_helpers.hpp"
#include "tve/error.hpp"
#include "tve/methods/occlusion.hpp"
#include "tve/methods/tve.hpp"
#include "tve/npy.hpp"

namespace tve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::TempDir;

// A 64 wide x 32 high grey image with a white block in its top-right corner: not symmetric, and
// not square, so a transposed or flipped map, or a transposed overlay, shows.
fs::path write_top_right_image(const fs::path& file) {
  cv::Mat image(32, 64, CV_8UC3, cv::Scalar(128, 128, 128));
  image(cv::Rect(48, 0, 8, 4)).setTo(cv::Scalar(255, 255, 255));  // oracle cell (0,6) after the stretch to 32x32
  fs::create_directories(file.parent_path());
  EXPECT_TRUE(cv::imwrite(file.string(), image));
  return file;
}

struct ExplainRun {
  std::vector<json> records;
  ExplainSummary summary;
};

ExplainRun explain_files(Bundle& bundle, const std::vector<fs::path>& files, const ExplainOptions& options,
                  const std::string& method = "tve") {
  std::vector<InputFile> inputs;
  for (const auto& file : files) inputs.push_back({file});
  std::unique_ptr<AttributionMethod> m;
  if (method == "tve") {
    m = std::make_unique<TveMethod>(TveMethod::defaults_for(bundle.manifest()));
  } else {
    m = std::make_unique<WindowedOcclusion>(OcclusionOptions{bundle.manifest().radius, 64, 1.0, 1.0});
  }
  ExplainRun run;
  run.summary = run_explain(bundle, bundle.head("target"), *m, inputs, options,
                            {[&](const json& record) { run.records.push_back(record); }, {}});
  return run;
}

size_t count_files(const fs::path& dir) {
  size_t n = 0;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) n += entry.is_regular_file();
  return n;
}

TEST(Explain, OrientationSurvivesTheWholePipeline) {
  TempDir tmp;
  Bundle bundle = Bundle::load(test::fixtures() / "bundles" / "oracle", torch::kCPU);
  const auto image = write_top_right_image(tmp / "in" / "top_right.png");
  ExplainOptions options;
  options.out_dir = tmp / "out";
  options.class_index = 0;
  for (const std::string method : {"tve", "occlusion"}) {
    const ExplainRun run = explain_files(bundle, {image}, options, method);
    ASSERT_EQ(run.records.size(), 1u);
    const json& values = run.records[0]["explained"][0]["values"];
    // The hottest cells are those whose window covers row 0, col 6, in the JSON...
    EXPECT_GT(values[0][6].get<float>(), 0.0f) << method;
    EXPECT_GT(values[1][7].get<float>(), 0.0f) << method;
    EXPECT_LT(values[6][0].get<float>(), 0.0f) << method;  // the transposed place
    EXPECT_LT(values[0][1].get<float>(), 0.0f) << method;  // the mirrored place
    // ...and in the .npy, cell (r, c) at index r * G + c.
    const fs::path base = options.out_dir.value() / mirrored_output_path(image);
    const NpyArray npy = read_npy(base.string() + ".map.npy");
    ASSERT_EQ(npy.shape, (std::vector<int64_t>{1, 8, 8}));
    EXPECT_FLOAT_EQ(npy.values[0 * 8 + 6], values[0][6].get<float>());
    EXPECT_FLOAT_EQ(npy.values[6 * 8 + 0], values[6][0].get<float>());
    // ...and in the overlay, at the original size: jet is red where hot, blue where cold.
    const cv::Mat overlay = cv::imread(base.string() + ".overlay.png");
    ASSERT_EQ(overlay.size(), cv::Size(64, 32));
    const auto hot = overlay.at<cv::Vec3b>(2, 60), cold = overlay.at<cv::Vec3b>(28, 4);  // BGR
    EXPECT_GT(hot[2], hot[0]) << method;
    EXPECT_GT(cold[0], cold[2]) << method;
  }
}

TEST(Explain, WritesMirroredOutputsWithoutCollisions) {
  TempDir tmp;
  Bundle bundle = Bundle::load(test::shipped_bundle("tiny-vit"), torch::kCPU);
  fs::create_directories(tmp / "a");
  fs::create_directories(tmp / "b");
  fs::copy_file(test::image_fixture("rgb8.png"), tmp / "a" / "same.png");
  fs::copy_file(test::image_fixture("gray8.png"), tmp / "b" / "same.png");
  ExplainOptions options;
  options.out_dir = tmp / "out";
  options.top_k = 2;
  const ExplainRun run = explain_files(bundle, {tmp / "a" / "same.png", tmp / "b" / "same.png"}, options);
  EXPECT_EQ(run.summary.succeeded, 2u);
  // Per image: two overlays (top-2), one .npy, one JSON; nothing else (no temporary files).
  EXPECT_EQ(count_files(tmp / "out"), 8u);
  const fs::path a = tmp / "out" / mirrored_output_path(tmp / "a" / "same.png");
  const fs::path b = tmp / "out" / mirrored_output_path(tmp / "b" / "same.png");
  EXPECT_TRUE(fs::exists(a.string() + ".top1.overlay.png"));
  EXPECT_TRUE(fs::exists(b.string() + ".top2.overlay.png"));
  EXPECT_NE(read_npy(a.string() + ".map.npy").values, read_npy(b.string() + ".map.npy").values);
  const json saved = test::read_json(a.string() + ".json");
  EXPECT_EQ(saved["explained"].size(), 2u);
  EXPECT_EQ(saved["explained"][0]["index"], run.records[0]["top_k"][0]["index"]);
  EXPECT_EQ(saved["outputs"]["npy"], a.string() + ".map.npy");
}

TEST(Explain, BadImageInAFolderIsRecordedAndTheRestGoOn) {
  TempDir tmp;
  Bundle bundle = Bundle::load(test::shipped_bundle("tiny-swin"), torch::kCPU);
  fs::create_directories(tmp / "in");
  for (const char* name : {"rgb8.png", "truncated.png", "rgba.png"}) fs::copy_file(test::image_fixture(name), tmp / "in" / name);
  std::istringstream no_stdin;
  std::vector<fs::path> files;
  for (const auto& input : expand_inputs({(tmp / "in").string()}, no_stdin)) files.push_back(input.path);
  ExplainOptions options;
  options.out_dir = tmp / "out";
  options.batch.batch_size = 1;
  const ExplainRun run = explain_files(bundle, files, options);
  EXPECT_EQ(run.summary.succeeded, 2u);
  EXPECT_EQ(run.summary.failed, 1u);
  ASSERT_EQ(run.records.size(), 3u);
  EXPECT_EQ(run.records[0]["input"], (tmp / "in" / "rgb8.png").string());
  EXPECT_TRUE(run.records[1].contains("explained"));  // rgba.png sorts before truncated.png
  EXPECT_NE(run.records[2]["error"].get<std::string>().find("truncated.png: PNG is truncated"), std::string::npos);
  EXPECT_EQ(count_files(tmp / "out"), 6u);  // nothing for the bad image
}

TEST(Explain, NothingWrittenWithoutAnOutputFolder) {
  Bundle bundle = Bundle::load(test::shipped_bundle("tiny-resnet"), torch::kCPU);
  const ExplainRun run = explain_files(bundle, {test::image_fixture("rgb8.png")}, ExplainOptions{});
  ASSERT_EQ(run.records.size(), 1u);
  EXPECT_FALSE(run.records[0].contains("outputs"));
  EXPECT_EQ(run.records[0]["explained"][0]["values"].size(), 4u);  // a 4x4 grid
}

TEST(Explain, UnwritableOutputIsAPerImageFailure) {
  TempDir tmp;
  Bundle bundle = Bundle::load(test::shipped_bundle("tiny-vit"), torch::kCPU);
  test::write_text(tmp / "blocker", "a file where the output folder should be");
  ExplainOptions options;
  options.out_dir = tmp / "blocker";
  const ExplainRun run = explain_files(bundle, {test::image_fixture("rgb8.png")}, options);
  EXPECT_EQ(run.summary.failed, 1u);
  EXPECT_TRUE(run.records[0].contains("error"));
}

TEST(Explain, ClassByIndexOrLabel) {
  Bundle bundle = Bundle::load(test::shipped_bundle("tiny-vit"), torch::kCPU);
  EXPECT_EQ(resolve_class(bundle.head("target"), "class-7"), 7);
  EXPECT_EQ(resolve_class(bundle.head("target"), "3"), 3);
  EXPECT_EQ(resolve_class(bundle.head("parity"), "odd"), 1);
  test::expect_error<InvalidArgument>([&] { resolve_class(bundle.head("target"), "10"); }, {"out of range", "0..9"});
  test::expect_error<InvalidArgument>([&] { resolve_class(bundle.head("parity"), "cat"); }, {"'cat'", "even, odd"});
  ExplainOptions options;
  options.class_index = 7;
  const ExplainRun run = explain_files(bundle, {test::image_fixture("rgb8.png")}, options);
  EXPECT_EQ(run.records[0]["explained"][0]["label"], "class-7");
}

TEST(Explain, FormatsParse) {
  const auto formats = parse_formats("npy,json");
  EXPECT_FALSE(formats.overlay);
  EXPECT_TRUE(formats.npy && formats.json);
  EXPECT_FALSE(parse_formats("none").npy);
  test::expect_error<InvalidArgument>([] { parse_formats("overlay,gif"); }, {"'gif'"});
  // Nothing asked is not "none": an empty list or item is refused instead of writing less.
  for (const char* list : {"", ",", "npy,", ",json", "overlay,,npy"}) {
    test::expect_error<InvalidArgument>([&] { parse_formats(list); }, {"--format"});
  }
}

// `n` distinct small images in `dir`, named img-00.png ...
std::vector<fs::path> distinct_images(const fs::path& dir, int n) {
  fs::create_directories(dir);
  std::vector<fs::path> files;
  for (int i = 0; i < n; ++i) {
    cv::Mat image(24 + i, 40, CV_8UC3, cv::Scalar(10 * i, 200 - 7 * i, 90));
    image(cv::Rect(i % 30, 2, 8, 8)).setTo(cv::Scalar(255, 255, 255));
    files.push_back(dir / ("img-" + std::string(i < 10 ? "0" : "") + std::to_string(i) + ".png"));
    EXPECT_TRUE(cv::imwrite(files.back().string(), image));
  }
  return files;
}

size_t resumed(const ExplainRun& run) {
  return static_cast<size_t>(std::count_if(run.records.begin(), run.records.end(), [](const json& r) { return r.value("resumed", false); }));
}

TEST(Explain, ResumeChecksWhatItSkipsAndIgnoresHowOutIsSpelt) {
  TempDir tmp;
  Bundle bundle = Bundle::load(test::shipped_bundle("tiny-resnet"), torch::kCPU);
  const auto files = distinct_images(tmp / "in", 8);
  ExplainOptions options;
  options.out_dir = tmp / "out";
  options.resume = true;
  options.top_k = 2;
  EXPECT_EQ(resumed(explain_files(bundle, files, options)), 0u);
  options.out_dir = fs::path(tmp.path().string() + "/./out/");  // another spelling of the same folder
  ExplainRun again = explain_files(bundle, files, options);
  EXPECT_EQ(resumed(again), 8u);
  EXPECT_EQ(again.records[0]["outputs"]["npy"], (*options.out_dir / mirrored_output_path(files[0])).string() + ".map.npy");

  const auto base = [&](size_t i) { return (tmp / "out" / mirrored_output_path(files[i])).string(); };
  const auto cut = [](const fs::path& file, size_t bytes) { fs::resize_file(file, fs::file_size(file) - bytes); };
  cut(base(0) + ".map.npy", 4);
  cut(base(1) + ".top2.overlay.png", 12);
  json record = test::read_json(base(2) + ".json");
  record["error"] = "it failed";
  test::write_text(base(2) + ".json", record.dump());
  record = test::read_json(base(3) + ".json");
  record["explained"][1]["values"][0][0] = 123.0;  // no longer the maps of the .npy
  test::write_text(base(3) + ".json", record.dump());
  again = explain_files(bundle, files, options);
  ASSERT_EQ(again.records.size(), 8u);
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(again.records[i].value("resumed", false), i >= 4) << i;
  EXPECT_EQ(resumed(explain_files(bundle, files, options)), 8u);  // all whole again
}

TEST(Explain, MapsDoNotDependOnHowTheInputsFellIntoBatches) {
  // 17 inputs in batches of 2: a full run ends on a batch of one; a resumed run, whose remaining
  // inputs fall into other batches, gives the same bits (partial batches are padded).
  TempDir tmp;
  Bundle bundle = Bundle::load(test::shipped_bundle("tiny-vit"), torch::kCPU);
  const auto files = distinct_images(tmp / "in", 17);
  ExplainOptions options;
  options.batch.batch_size = 2;
  options.formats = parse_formats("npy,json");
  options.out_dir = tmp / "whole";
  const ExplainRun whole = explain_files(bundle, files, options);
  options.out_dir = tmp / "cut";
  explain_files(bundle, files, options);
  for (const size_t i : {0, 3, 4, 9, 10, 16}) fs::remove((tmp / "cut" / mirrored_output_path(files[i])).string() + ".json");
  options.resume = true;
  const ExplainRun resumed_run = explain_files(bundle, files, options);
  EXPECT_EQ(resumed(resumed_run), 11u);
  for (size_t i = 0; i < files.size(); ++i) {
    EXPECT_EQ(resumed_run.records[i]["explained"], whole.records[i]["explained"]) << i;
    EXPECT_EQ(resumed_run.records[i]["top_k"], whole.records[i]["top_k"]) << i;
  }
}

TEST(Explain, LanesGiveTheSameRecordsInTheSameOrder) {
  // 19 inputs in batches of 2, one of them not an image, computed in 1 and in 3 lanes with one
  // LibTorch thread each: each batch is the same batch in whichever lane, so every record, map and
  // output file is the same, in input order, and the bad input is reported in its place.
  TempDir tmp;
  Bundle bundle = Bundle::load(test::shipped_bundle("tiny-resnet"), torch::kCPU);
  auto files = distinct_images(tmp / "in", 18);
  const fs::path broken = tmp / "in" / "broken.png";
  std::ofstream(broken) << "not a PNG";
  files.insert(files.begin() + 7, broken);
  const int threads_before = at::get_num_threads();
  at::set_num_threads(1);
  ExplainOptions options;
  options.batch.batch_size = 2;
  options.formats = parse_formats("npy,json");
  options.out_dir = tmp / "one";
  const ExplainRun one_lane = explain_files(bundle, files, options);
  options.batch.model_lanes = 3;
  options.out_dir = tmp / "three";
  const ExplainRun three_lanes = explain_files(bundle, files, options);
  at::set_num_threads(threads_before);

  ASSERT_EQ(one_lane.records.size(), files.size());
  ASSERT_EQ(three_lanes.records.size(), files.size());
  EXPECT_EQ(three_lanes.summary.failed, 1u);
  EXPECT_EQ(three_lanes.summary.succeeded, files.size() - 1);
  for (size_t i = 0; i < files.size(); ++i) {
    EXPECT_EQ(three_lanes.records[i]["input"], files[i].string()) << i;
    EXPECT_EQ(three_lanes.records[i].contains("error"), files[i] == broken) << i;
    EXPECT_EQ(three_lanes.records[i].value("explained", json()), one_lane.records[i].value("explained", json())) << i;
    EXPECT_EQ(three_lanes.records[i].value("top_k", json()), one_lane.records[i].value("top_k", json())) << i;
    if (files[i] == broken) continue;
    const std::string npy = mirrored_output_path(files[i]).string() + ".map.npy";
    EXPECT_EQ(read_npy(tmp / "three" / npy).values, read_npy(tmp / "one" / npy).values) << i;
  }
}

TEST(Explain, AFailureInALaneStopsTheRunWithItsError) {
  // An error of the model work itself (not of one input) ends the run, as it does without lanes;
  // the lanes' other batches are not left running behind it.
  TempDir tmp;
  Bundle bundle = Bundle::load(test::shipped_bundle("tiny-resnet"), torch::kCPU);
  const auto files = distinct_images(tmp / "in", 9);
  ExplainOptions options;
  options.batch.batch_size = 2;
  options.batch.model_lanes = 2;
  options.class_index = 100000;  // past the head's classes: the attribution's index_select throws
  EXPECT_ANY_THROW(explain_files(bundle, files, options));
}

}  // namespace
}  // namespace tve
