#include "tve/pipeline.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "test_helpers.hpp"
#include "tve/error.hpp"

namespace tve {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

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

TEST(ExpandInputs, SameFileTwiceIsOneInputAndOutputsAreNeverInputs) {
  TempDir tmp;
  make_tree(tmp.path());
  fs::create_directories(tmp / "a" / "out");
  fs::copy_file(test::image_fixture("rgb8.png"), tmp / "a" / "out" / "x.png.overlay.png");
  std::istringstream paths((tmp / "a" / "x.png").string() + "\n" + (tmp / "a" / "." / "x.png").string() + "\n" +
                           (tmp / "a" / "out" / "x.png.overlay.png").string() + "\n");
  InputScanOptions options;
  options.skip_folder = tmp / "a" / "out";
  const auto files = expand_inputs({(tmp / "a").string(), "-"}, paths, options);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].path, tmp / "a" / "sub" / "y.PNG");
  EXPECT_EQ(files[1].path, tmp / "a" / "x.png");
}

TEST(ExpandInputs, DanglingLinksAndLoopsComeBackAsErrors) {
  TempDir tmp;
  make_tree(tmp.path());
  fs::create_symlink(tmp / "nowhere.png", tmp / "a" / "dangling.png");
  fs::create_directory_symlink(tmp / "a", tmp / "a" / "sub" / "loop");
  std::istringstream no_stdin;
  const auto files = expand_inputs({(tmp / "a").string()}, no_stdin);
  ASSERT_EQ(files.size(), 4u);
  EXPECT_EQ(files[0].path, tmp / "a" / "dangling.png");
  EXPECT_NE(files[0].error.find("broken symbolic link"), std::string::npos) << files[0].error;
  EXPECT_EQ(files[1].path, tmp / "a" / "sub" / "loop");
  EXPECT_NE(files[1].error.find("symbolic link loop"), std::string::npos) << files[1].error;
  EXPECT_TRUE(files[2].error.empty());
  EXPECT_TRUE(files[3].error.empty());
}

TEST(Shards, ParseExplicitAndFromTheEnvironment) {
  auto env = [](std::map<std::string, std::string> vars) {
    return [vars](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  };
  const auto none = env({});
  EXPECT_EQ(parse_shard("2/5", none).index, 2u);
  EXPECT_EQ(parse_shard("2/5", none).count, 5u);
  const auto slurm = parse_shard("auto", env({{"SLURM_ARRAY_TASK_ID", "12"}, {"SLURM_ARRAY_TASK_MIN", "10"},
                                               {"SLURM_ARRAY_TASK_MAX", "14"}}));
  EXPECT_EQ(slurm.index, 2u);
  EXPECT_EQ(slurm.count, 5u);
  const auto counted = parse_shard("auto", env({{"SLURM_ARRAY_TASK_ID", "3"}, {"SLURM_ARRAY_TASK_COUNT", "4"}}));
  EXPECT_EQ(counted.index, 3u);
  EXPECT_EQ(counted.count, 4u);
  const auto indexed = parse_shard("auto/8", env({{"JOB_COMPLETION_INDEX", "7"}}));
  EXPECT_EQ(indexed.index, 7u);
  EXPECT_EQ(indexed.count, 8u);
  for (const char* bad : {"5/5", "1", "a/3", "1/0", "-1/3", "auto"}) {
    EXPECT_THROW(parse_shard(bad, none), InvalidArgument) << bad;
  }
  EXPECT_THROW(parse_shard("auto", env({{"JOB_COMPLETION_INDEX", "1"}})), InvalidArgument);
  EXPECT_THROW(parse_shard("auto/3", env({{"JOB_COMPLETION_INDEX", "3"}})), InvalidArgument);
  EXPECT_THROW(parse_shard("auto/3", env({{"SLURM_ARRAY_TASK_ID", "1"}, {"SLURM_ARRAY_TASK_COUNT", "4"}})),
               InvalidArgument);
}

TEST(Shards, DisjointCoverThatDependsOnlyOnThePaths) {
  std::vector<InputFile> inputs;
  for (int i = 0; i < 1000; ++i) inputs.push_back({"images/" + std::to_string(i) + ".png", ""});
  std::vector<InputFile> reversed(inputs.rbegin(), inputs.rend());
  std::map<std::string, int> owners;
  for (uint64_t k = 0; k < 7; ++k) {
    const auto part = take_shard(inputs, {k, 7});
    EXPECT_GT(part.size(), 100u);  // 1000/7 = 143 expected; a hash this uneven would be a bug
    EXPECT_LT(part.size(), 190u);
    for (const auto& input : part) ++owners[input.path.string()];
    std::vector<std::string> forward, backward;
    for (const auto& input : part) forward.push_back(input.path.string());
    for (const auto& input : take_shard(reversed, {k, 7})) backward.push_back(input.path.string());
    std::sort(forward.begin(), forward.end());
    std::sort(backward.begin(), backward.end());
    EXPECT_EQ(forward, backward);
  }
  EXPECT_EQ(owners.size(), 1000u);
  for (const auto& [path, count] : owners) EXPECT_EQ(count, 1) << path;
  EXPECT_EQ(take_shard(inputs, {0, 1}).size(), 1000u);
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
  read_in_batches(inputs, test::spec32(), options, [&](std::vector<ImageJob>& jobs) {
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
  read_in_batches({{test::image_fixture("rgb16.png")}}, test::spec32(), options, [](std::vector<ImageJob>& jobs) {
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
    read_in_batches(inputs, test::spec32(), options, [&](std::vector<ImageJob>& jobs) { sizes.push_back(jobs.size()); });
    return sizes;
  };
  EXPECT_EQ(sizes_with(true), (std::vector<size_t>{3, 4}));  // 3 good; then 3 good and the corrupt one
  EXPECT_EQ(sizes_with(false), sizes_with(true));
}

TEST(ReadInBatches, DecodeThreadsGiveTheSameBatchesInTheSameOrder) {
  // What a GPU run does (decode_threads > 1): the same jobs, in input order, the same tensors.
  std::vector<InputFile> inputs;
  for (const char* name : {"rgb8.png", "truncated.png", "gray8.png", "empty.png", "rgba.png", "palette.png", "bomb.png",
                           "rgb16.png", "gray16.png"}) {
    inputs.push_back({test::image_fixture(name)});
  }
  auto run = [&](int threads) {
    BatchOptions options;
    options.batch_size = 3;
    options.decode_threads = threads;
    std::vector<std::pair<std::string, torch::Tensor>> jobs_seen;
    std::vector<size_t> sizes;
    read_in_batches(inputs, test::spec32(), options, [&](std::vector<ImageJob>& jobs) {
      sizes.push_back(jobs.size());
      for (const auto& job : jobs) jobs_seen.emplace_back(job.input.path.filename().string() + (job.ok() ? "" : "!"), job.tensor);
    });
    return std::make_pair(sizes, jobs_seen);
  };
  const auto one = run(1), four = run(4);
  EXPECT_EQ(one.first, four.first);
  ASSERT_EQ(one.second.size(), inputs.size());
  ASSERT_EQ(four.second.size(), inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_EQ(one.second[i].first, four.second[i].first);
    if (one.second[i].second.defined()) {
      EXPECT_TRUE(torch::equal(one.second[i].second, four.second[i].second)) << i;
    }
  }
}

TEST(ReadInBatches, ReusedInputsAreNotDecodedAndDoNotGatherIntoOneBatch) {
  std::vector<InputFile> inputs;
  for (int i = 0; i < 500; ++i) inputs.push_back({test::image_fixture(i % 100 == 99 ? "rgb8.png" : "no-such.png"), ""});
  BatchOptions options;
  options.batch_size = 2;
  options.reuse = [](const InputFile& input) -> nlohmann::json {
    if (input.path.filename() == "rgb8.png") return nullptr;
    return {{"input", input.path.string()}};
  };
  size_t reused = 0, decoded = 0, largest = 0;
  read_in_batches(inputs, test::spec32(), options, [&](std::vector<ImageJob>& jobs) {
    largest = std::max(largest, jobs.size());
    for (const auto& job : jobs) {
      EXPECT_TRUE(job.ok()) << job.error;  // the missing files were never opened
      if (job.reused()) {
        ++reused;
        EXPECT_FALSE(job.tensor.defined());
      } else {
        ++decoded;
        EXPECT_TRUE(job.tensor.defined());
      }
    }
    const auto images = stack_good(jobs, torch::kCPU);
    EXPECT_EQ(images.defined() ? images.size(0) : 0, static_cast<int64_t>(std::count_if(jobs.begin(), jobs.end(), [](const ImageJob& j) { return !j.reused(); })));
  });
  EXPECT_EQ(reused, 495u);
  EXPECT_EQ(decoded, 5u);
  EXPECT_LE(largest, 4u * 2 + 64);
}

TEST(ReadInBatches, AnErrorInTheConsumerStopsTheRun) {
  std::vector<InputFile> inputs(20, InputFile{test::image_fixture("rgb8.png")});
  BatchOptions options;
  options.batch_size = 2;
  int calls = 0;
  EXPECT_THROW(read_in_batches(inputs, test::spec32(), options,
                               [&](std::vector<ImageJob>&) {
                                 if (++calls == 2) throw std::runtime_error("disk full");
                               }),
               std::runtime_error);
  EXPECT_EQ(calls, 2);
}

TEST(ReadInBatches, RefusesBatchSizeZero) {
  BatchOptions options;
  options.batch_size = 0;
  test::expect_error<InvalidArgument>([&] { read_in_batches({}, test::spec32(), options, [](auto&) {}); }, {"--batch-size"});
}

TEST(Shards, SlurmArraysWithAStepAndInconsistentOnesRefused) {
  auto env = [](std::map<std::string, std::string> vars) {
    return [vars](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  };
  // --array=0-20:2: tasks 0, 2, ..., 20 are shards 0..10 of 11, each once.
  std::set<uint64_t> seen;
  for (int task = 0; task <= 20; task += 2) {
    const auto shard = parse_shard("auto", env({{"SLURM_ARRAY_TASK_ID", std::to_string(task)}, {"SLURM_ARRAY_TASK_MIN", "0"},
                                                {"SLURM_ARRAY_TASK_MAX", "20"}, {"SLURM_ARRAY_TASK_STEP", "2"},
                                                {"SLURM_ARRAY_TASK_COUNT", "11"}}));
    EXPECT_EQ(shard.count, 11u);
    EXPECT_EQ(shard.index, static_cast<uint64_t>(task / 2));
    seen.insert(shard.index);
  }
  EXPECT_EQ(seen.size(), 11u);
  // --array=3-15:4 without COUNT: tasks 3, 7, 11, 15.
  const auto stepped = parse_shard("auto/4", env({{"SLURM_ARRAY_TASK_ID", "11"}, {"SLURM_ARRAY_TASK_MIN", "3"},
                                                  {"SLURM_ARRAY_TASK_MAX", "15"}, {"SLURM_ARRAY_TASK_STEP", "4"}}));
  EXPECT_EQ(stepped.index, 2u);
  EXPECT_EQ(stepped.count, 4u);
  const std::vector<std::pair<std::map<std::string, std::string>, std::string>> refused{
      // --array=1,4,9: MIN 1, MAX 9, COUNT 3.
      {{{"SLURM_ARRAY_TASK_ID", "4"}, {"SLURM_ARRAY_TASK_MIN", "1"}, {"SLURM_ARRAY_TASK_MAX", "9"}, {"SLURM_ARRAY_TASK_COUNT", "3"}},
       "not an evenly spaced range"},
      {{{"SLURM_ARRAY_TASK_ID", "2"}, {"SLURM_ARRAY_TASK_MIN", "0"}, {"SLURM_ARRAY_TASK_MAX", "9"}, {"SLURM_ARRAY_TASK_COUNT", "5"}},
       "COUNT=5"},
      {{{"SLURM_ARRAY_TASK_ID", "4"}, {"SLURM_ARRAY_TASK_MIN", "3"}, {"SLURM_ARRAY_TASK_MAX", "15"}, {"SLURM_ARRAY_TASK_STEP", "4"}},
       "not MIN plus a multiple of STEP"},
      {{{"SLURM_ARRAY_TASK_ID", "2"}, {"SLURM_ARRAY_TASK_MAX", "4"}, {"SLURM_ARRAY_TASK_STEP", "0"}}, "STEP is 0"},
      {{{"SLURM_ARRAY_TASK_ID", "2"}, {"SLURM_ARRAY_TASK_MAX", "4"}, {"SLURM_ARRAY_TASK_STEP", "x"}}, "SLURM_ARRAY_TASK_STEP"},
      {{{"SLURM_ARRAY_TASK_ID", "6"}, {"SLURM_ARRAY_TASK_MIN", "0"}, {"SLURM_ARRAY_TASK_MAX", "4"}}, "above SLURM_ARRAY_TASK_MAX"},
      {{{"SLURM_ARRAY_TASK_ID", "1"}, {"SLURM_ARRAY_TASK_MIN", "2"}, {"SLURM_ARRAY_TASK_MAX", "4"}}, "below SLURM_ARRAY_TASK_MIN"},
  };
  for (const auto& item : refused) {
    test::expect_error<InvalidArgument>([&] { parse_shard("auto", env(item.first)); }, {"--shard", item.second});
  }
}

TEST(ExpandInputs, OutputFolderThatIsAnInputFolderKeepsItsImagesNotItsOutputs) {
  TempDir tmp;
  make_tree(tmp.path());
  fs::create_directories(tmp / "a" / "a");
  fs::copy_file(test::image_fixture("rgb8.png"), tmp / "a" / "a" / "x.png.overlay.png");  // an earlier run's output
  fs::copy_file(test::image_fixture("rgb8.png"), tmp / "a" / "x.png.top1.overlay.png");
  InputScanOptions options;
  options.skip_folder = tmp / "a";
  options.is_output = [](const std::string& name) { return name.find(".overlay.png") != std::string::npos; };
  std::istringstream no_stdin;
  auto files = expand_inputs({(tmp / "a").string()}, no_stdin, options);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].path, tmp / "a" / "sub" / "y.PNG");
  EXPECT_EQ(files[1].path, tmp / "a" / "x.png");
  // An input folder inside the output folder, and listed paths under it: the same.
  std::istringstream listed((tmp / "a" / "x.png").string() + "\n" + (tmp / "a" / "a" / "x.png.overlay.png").string() + "\n");
  options.skip_folder = tmp.path();
  files = expand_inputs({(tmp / "a" / "sub").string(), "-"}, listed, options);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].path, tmp / "a" / "sub" / "y.PNG");
  EXPECT_EQ(files[1].path, tmp / "a" / "x.png");
  // Without names to tell outputs apart, nothing in the output folder is an input (as before).
  options.is_output = nullptr;
  options.skip_folder = tmp / "a";
  std::istringstream none;
  EXPECT_TRUE(expand_inputs({(tmp / "a").string()}, none, options).empty());
}

}  // namespace
}  // namespace tve
