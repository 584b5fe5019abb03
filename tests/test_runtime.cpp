#include "tve/runtime.hpp"

#include <torch/cuda.h>
#include <torch/torch.h>

#include "test_helpers.hpp"
#include "tve/error.hpp"

namespace tve {
namespace {

TEST(Device, CpuAndAutoWithoutGpu) {
  EXPECT_TRUE(select_device("cpu").is_cpu());
  EXPECT_EQ(select_device("auto").is_cuda(), torch::cuda::is_available());
}

TEST(Device, CudaWithoutCudaIsAClearError) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "a CUDA device is present";
  test::expect_error<DeviceError>([] { select_device("cuda"); }, {"--device cuda", "use --device cpu"});
}

TEST(Device, UnknownName) {
  test::expect_error<InvalidArgument>([] { select_device("tpu"); }, {"unknown device 'tpu'"});
}

TEST(Threads, ForcedCountIsApplied) {
  const auto choice = choose_threads([] {}, 1);
  EXPECT_EQ(choice.settings, (ThreadSettings{1, 1}));
  EXPECT_EQ(at::get_num_threads(), 1);
  test::expect_error<InvalidArgument>([] { choose_threads([] {}, 0); }, {"--threads"});
}

TEST(Threads, MeasuredChoiceIsOneOfTheCandidatesAndApplied) {
  int calls = 0;
  const auto choice = choose_threads([&] { ++calls; }, std::nullopt);
  EXPECT_GE(calls, 4);  // warm-up and timing for at least one candidate
  EXPECT_EQ(at::get_num_threads(), choice.settings.intra_op);
  EXPECT_NE(choice.reason.find("ms"), std::string::npos);
}

TEST(Threads, DefaultForShortRunsIsAppliedWithoutMeasuring) {
  const auto choice = default_threads(std::nullopt);
  EXPECT_EQ(choice.settings, (ThreadSettings{1, available_cores()}));
  EXPECT_EQ(at::get_num_threads(), 1);
  EXPECT_EQ(default_threads(2).settings, (ThreadSettings{2, 2}));  // --threads still wins
}

TEST(Threads, CurrentSettingsAreTheAppliedOnes) {
  apply_thread_settings({1, 2});
  EXPECT_EQ(current_thread_settings(), (ThreadSettings{1, 2}));
  apply_thread_settings({2, 1});
  EXPECT_EQ(current_thread_settings(), (ThreadSettings{2, 1}));
}

TEST(Threads, DecodingGetsItsOwnThreadOnlyWhenACoreIsLeftFree) {
  EXPECT_FALSE(decode_in_parallel(torch::kCPU, {1, 2}, 2));
  EXPECT_FALSE(decode_in_parallel(torch::kCPU, {2, 1}, 2));
  EXPECT_TRUE(decode_in_parallel(torch::kCPU, {1, 1}, 2));
  EXPECT_TRUE(decode_in_parallel(torch::kCPU, {1, 4}, 8));
  EXPECT_TRUE(decode_in_parallel(torch::Device(torch::kCUDA, 0), {1, 2}, 2));  // the CPU is free
}

TEST(Blas, OpenBlasIsInUse) {
  // scripts/setup.sh installs libopenblas0-pthread; without it transformers run ~40x slower.
  const auto blas = detect_blas();
  EXPECT_TRUE(blas.is_openblas) << blas.description;
}

}  // namespace
}  // namespace tve
