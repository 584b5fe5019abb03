#include "tve/runtime.hpp"

#include <sys/resource.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "test_helpers.hpp"
#include "tve/bundle.hpp"
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

long minor_page_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

// Page faults per forward pass of the shipped ViT on 64 images, counted by the kernel (not timed).
// Its attention matrices are 40 MB, above glibc's largest mmap threshold (32 MB), so by default
// they are mapped afresh, faulted in and zeroed on every pass.
long faults_per_vit_forward_pass(Bundle& vit) {
  torch::InferenceMode no_autograd;
  const auto images = torch::rand({64, 3, 112, 112});
  vit.logits(images);  // grows the heap once
  const long before = minor_page_faults();
  for (int i = 0; i < 3; ++i) vit.logits(images);
  return (minor_page_faults() - before) / 3;
}

TEST(Memory, FreedTensorsAreNotFaultedInAgain) {
  at::set_num_threads(1);
  Bundle vit = Bundle::load(test::shipped_bundle("vit"), torch::kCPU);
  const long by_default = faults_per_vit_forward_pass(vit);
  ASSERT_TRUE(keep_freed_memory());
  const long kept = faults_per_vit_forward_pass(vit);
  // Measured 0-1,576 against 39,326-75,420.
  EXPECT_LT(kept * 4, by_default) << "kept " << kept << ", by default " << by_default;
}

TEST(Blas, OpenBlasIsInUse) {
  // scripts/setup.sh installs libopenblas0-pthread; without it transformers run ~40x slower.
  const auto blas = detect_blas();
  EXPECT_TRUE(blas.is_openblas) << blas.description;
}

}  // namespace
}  // namespace tve
