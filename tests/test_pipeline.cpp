#include "tve/pipeline.hpp"

#include <sstream>

#include "test_helpers.hpp"
#include "tve/error.hpp"

namespace tve {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

InputSpec spec32() {
  InputSpec spec;
  spec.height = spec.width = 32;
  spec.mean = {0.5f, 0.5f, 0.5f};
  spec.std = {0.25f, 0.25f, 0.25f};
  return spec;
}

// A folder tree: a/x.png, a/sub/y.PNG, a/notes.txt, b/x.png
void make_tree(const fs::path& root) {
  fs::create_directories(root / "a" / "sub");
  fs::create_directories(root / "b");
  fs::copy_file(test::image_fixture("rgb8.png"), root / "a" / "x.png");
  fs::copy_file(test::image_fixture("gray8.png"), root / "a" / "sub" / "y.PNG");
  test::write_text(root / "a" / "notes.txt", "not an image");
  fs::copy_file(test::image_fixture("rgba.png"), root / "b" / "x.png");
}

TEST(ExpandInputs, FoldersRecurseByExtensionInSortedOrder) {
  TempDir tmp;
  make_tree(tmp.path());
  std::istringstream no_stdin;
  const auto files = expand_inputs({(tmp / "a").string()}, no_stdin);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].path, tmp / "a" / "sub" / "y.PNG");
  EXPECT_EQ(files[1].path, tmp / "a" / "x.png");
}

TEST(ExpandInputs, MixesFilesFoldersAndStdin) {
  TempDir tmp;
  make_tree(tmp.path());
  std::istringstream paths((tmp / "b").string() + "\n\n" + (tmp / "a" / "x.png").string() + "\r\n");
  const auto files = expand_inputs({(tmp / "a" / "sub" / "y.PNG").string(), "-"}, paths);
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(files[0].path.filename(), "y.PNG");
  EXPECT_EQ(files[1].path, tmp / "b" / "x.png");
  EXPECT_EQ(files[2].path, tmp / "a" / "x.png");
}

TEST(ExpandInputs, MissingFileIsKeptToFailOnItsOwn) {
  std::istringstream no_stdin;
  const auto files = expand_inputs({"/no/such/file.png"}, no_stdin);
  ASSERT_EQ(files.size(), 1u);
}

TEST(ReadInBatches, BadImagesFailAloneAndOrderIsKept) {
  std::vector<InputFile> inputs;
  for (const char* name : {"rgb8.png", "truncated.png", "gray8.png", "empty.png", "rgba.png", "palette.png", "bomb.png"}) {
    inputs.push_back({test::image_fixture(name)});
  }
  BatchOptions options;
  options.batch_size = 2;
  std::vector<std::string> order;
  std::vector<int> good_per_batch;
  read_in_batches(inputs, spec32(), options, [&](std::vector<ImageJob>& jobs) {
    int good = 0;
    for (const auto& job : jobs) {
      order.push_back(job.input.path.filename().string() + (job.ok() ? "" : "!"));
      if (job.ok()) {
        ++good;
        EXPECT_EQ(job.tensor.sizes(), (std::vector<int64_t>{3, 32, 32}));
        EXPECT_FALSE(job.image.has_value());  // not kept unless asked for
      } else {
        EXPECT_NE(job.error.find(job.input.path.string()), std::string::npos) << job.error;
      }
    }
    good_per_batch.push_back(good);
    EXPECT_EQ(stack_good(jobs, torch::kCPU).size(0), good);
  });
  EXPECT_EQ(order, (std::vector<std::string>{"rgb8.png", "truncated.png!", "gray8.png", "empty.png!", "rgba.png",
                                             "palette.png", "bomb.png!"}));
  EXPECT_EQ(good_per_batch, (std::vector<int>{2, 2, 0}));
}

TEST(ReadInBatches, KeepsDecodedImagesWhenAsked) {
  BatchOptions options;
  options.keep_images = true;
  read_in_batches({{test::image_fixture("rgb16.png")}}, spec32(), options, [](std::vector<ImageJob>& jobs) {
    ASSERT_TRUE(jobs[0].image.has_value());
    EXPECT_EQ(jobs[0].image->pixels.depth(), CV_16U);
  });
}

TEST(MirroredOutputPath, KeepsInputsApart) {
  EXPECT_EQ(mirrored_output_path("a/x.png"), fs::path("a/x.png"));
  EXPECT_EQ(mirrored_output_path("/data/b/x.png"), fs::path("data/b/x.png"));
  EXPECT_EQ(mirrored_output_path("./a/../../x.png"), fs::path("_parent_/x.png"));
  EXPECT_NE(mirrored_output_path("a/x.png"), mirrored_output_path("b/x.png"));
}

TEST(ReadInBatches, SameBatchesWithAndWithoutPrefetch) {
  std::vector<InputFile> inputs;
  for (int i = 0; i < 7; ++i) inputs.push_back({test::image_fixture(i == 3 ? "corrupt.png" : "rgb8.png")});
  auto sizes_with = [&](bool prefetch) {
    BatchOptions options;
    options.batch_size = 3;
    options.prefetch = prefetch;
    std::vector<size_t> sizes;
    read_in_batches(inputs, spec32(), options, [&](std::vector<ImageJob>& jobs) { sizes.push_back(jobs.size()); });
    return sizes;
  };
  EXPECT_EQ(sizes_with(true), (std::vector<size_t>{3, 4}));  // 3 good; then 3 good and the corrupt one
  EXPECT_EQ(sizes_with(false), sizes_with(true));
}

TEST(ReadInBatches, AnErrorInTheConsumerStopsTheRun) {
  std::vector<InputFile> inputs(20, InputFile{test::image_fixture("rgb8.png")});
  BatchOptions options;
  options.batch_size = 2;
  int calls = 0;
  EXPECT_THROW(read_in_batches(inputs, spec32(), options,
                               [&](std::vector<ImageJob>&) {
                                 if (++calls == 2) throw std::runtime_error("disk full");
                               }),
               std::runtime_error);
  EXPECT_EQ(calls, 2);
}

TEST(ReadInBatches, RefusesBatchSizeZero) {
  BatchOptions options;
  options.batch_size = 0;
  test::expect_error<InvalidArgument>([&] { read_in_batches({}, spec32(), options, [](auto&) {}); }, {"--batch-size"});
}

}  // namespace
}  // namespace tve
