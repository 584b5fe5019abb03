#include "tve/runtime.hpp"

#include <sys/resource.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <thread>

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
  test::expect_error<InvalidArgument>([] { select_device("tpu"); }, {"--device 'tpu' is not a device", "cuda:N"});
}

TEST(Threads, ForcedCountIsApplied) {
  const auto choice = choose_threads([] {}, {1, std::nullopt});
  EXPECT_EQ(choice.settings, (ThreadSettings{1, 1, 1}));
  EXPECT_EQ(at::get_num_threads(), 1);
  test::expect_error<InvalidArgument>([] { choose_threads([] {}, {0, std::nullopt}); }, {"--threads"});
}

TEST(Threads, MoreThreadsThanCoresAreClamped) {
  const int cores = available_cores();
  const auto choice = choose_threads([] {}, {1000, std::nullopt});
  EXPECT_EQ(choice.settings, (ThreadSettings{cores, cores, 1}));
  EXPECT_EQ(at::get_num_threads(), cores);
  EXPECT_NE(choice.reason.find("clamped"), std::string::npos) << choice.reason;
  EXPECT_LE(cores, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

TEST(Threads, MeasuredChoiceIsOneOfTheCandidatesAndApplied) {
  int calls = 0;
  const auto choice = choose_threads([&] { ++calls; }, {});
  EXPECT_GE(calls, 4);  // warm-up and timing for at least one candidate
  EXPECT_EQ(at::get_num_threads(), choice.settings.intra_op);
  EXPECT_NE(choice.reason.find("ms"), std::string::npos);
}

TEST(Threads, DefaultForShortRunsIsAppliedWithoutMeasuring) {
  const auto choice = default_threads({});
  EXPECT_EQ(choice.settings, (ThreadSettings{1, available_cores(), 1}));
  EXPECT_EQ(at::get_num_threads(), 1);
  const int two = std::min(2, available_cores());
  EXPECT_EQ(default_threads({2, std::nullopt}).settings, (ThreadSettings{two, two, 1}));  // --threads still wins
}

TEST(Threads, MeasuredChoiceRunsTheLanesCandidateSideBySide) {
  if (available_cores() < 2) GTEST_SKIP() << "lanes are a candidate from two cores on";
  // The workload notes how many copies run at once: the lanes candidate must run one per core
  // concurrently, each seeing one LibTorch thread.
  std::atomic<int> running{0}, most{0}, single_threaded_runs{0};
  const auto choice = choose_threads(
      [&] {
        const int now = ++running;
        for (int seen = most.load(); now > seen && !most.compare_exchange_weak(seen, now);) {
        }
        if (at::get_num_threads() == 1) ++single_threaded_runs;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        --running;
      },
      {});
  const int lanes = std::min(available_cores(), 8), per_lane = available_cores() / lanes;
  EXPECT_EQ(most.load(), lanes);
  if (per_lane == 1) {
    EXPECT_GE(single_threaded_runs.load(), 4 * lanes);
  }
  // Copies that overlap fully share out their time: the lanes candidate is the fastest per copy.
  EXPECT_EQ(choice.settings, (ThreadSettings{per_lane, 1, lanes})) << choice.reason;
  EXPECT_EQ(current_thread_settings().lanes, lanes);
  EXPECT_NE(choice.reason.find("lanes"), std::string::npos) << choice.reason;
  apply_thread_settings({1, 1, 1});
}

TEST(Threads, LanesAloneShareOutTheCores) {
  const int cores = available_cores();
  const auto two_lanes = choose_threads([] {}, {std::nullopt, 2});
  EXPECT_EQ(two_lanes.settings, (ThreadSettings{std::max(1, cores / 2), std::max(1, cores / 2), 2}));
  EXPECT_EQ(current_thread_settings().lanes, 2);
  const auto both = default_threads({1, 3});
  EXPECT_EQ(both.settings, (ThreadSettings{1, 1, 3}));
  test::expect_error<InvalidArgument>([] { choose_threads([] {}, {std::nullopt, 0}); }, {"--lanes"});
  test::expect_error<InvalidArgument>([] { choose_threads([] {}, {std::nullopt, 2, false}); }, {"--lanes", "one batch at a time"});
  apply_thread_settings({1, 1, 1});
}

TEST(Threads, NoLanesAreMeasuredForWorkThatDoesNotRunInThem) {
  // predict, eval and fit-head compute one batch at a time: a lanes choice would leave them on
  // one thread. Copies that overlap would make lanes win here if they were a candidate.
  std::atomic<int> running{0}, most{0};
  const auto choice = choose_threads(
      [&] {
        const int now = ++running;
        for (int seen = most.load(); now > seen && !most.compare_exchange_weak(seen, now);) {
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        --running;
      },
      {std::nullopt, std::nullopt, false});
  EXPECT_EQ(most.load(), 1);
  EXPECT_EQ(choice.settings.lanes, 1);
}

TEST(Threads, CurrentSettingsAreTheAppliedOnes) {
  apply_thread_settings({1, 2, 1});
  EXPECT_EQ(current_thread_settings(), (ThreadSettings{1, 2, 1}));
  apply_thread_settings({2, 1, 1});
  EXPECT_EQ(current_thread_settings(), (ThreadSettings{2, 1, 1}));
  apply_thread_settings({1, 1, 2});
  EXPECT_EQ(current_thread_settings(), (ThreadSettings{1, 1, 2}));
  EXPECT_EQ(model_lanes(torch::kCPU, current_thread_settings()), 2);
  EXPECT_EQ(model_lanes(torch::Device(torch::kCUDA, 0), current_thread_settings()), 1);  // a GPU: one lane
  apply_thread_settings({1, 1, 1});
}

TEST(Threads, DecodingGetsItsOwnThreadOnlyWhenACoreIsLeftFree) {
  EXPECT_FALSE(decode_in_parallel(torch::kCPU, {1, 2}, 2));
  EXPECT_FALSE(decode_in_parallel(torch::kCPU, {2, 1}, 2));
  EXPECT_TRUE(decode_in_parallel(torch::kCPU, {1, 1}, 2));
  EXPECT_TRUE(decode_in_parallel(torch::kCPU, {1, 4}, 8));
  EXPECT_TRUE(decode_in_parallel(torch::kCPU, {1, 1, 2}, 2));  // a preempted lane stalls only itself
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
  EXPECT_FALSE(blas.core.empty()) << "openblas_get_corename gave nothing";
}

TEST(Blas, BetterKernelsOnlyWhenOpenBlasFellBackBelowTheCpu) {
  const CpuFeatures sse_only{};
  const CpuFeatures avx2{true, false, false};
  const CpuFeatures avx512{true, true, false};
  const CpuFeatures avx512_bf16{true, true, true};
  // The fall-back seen on this project's machines: generic kernels on an AVX-512 Xeon.
  EXPECT_EQ(better_openblas_core("Prescott", avx512_bf16), "Cooperlake");
  EXPECT_EQ(better_openblas_core("Prescott", avx512), "SkylakeX");
  EXPECT_EQ(better_openblas_core("Sandybridge", avx512), "SkylakeX");
  EXPECT_EQ(better_openblas_core("Haswell", avx512), "SkylakeX");
  EXPECT_EQ(better_openblas_core("Nehalem", avx2), "Haswell");
  EXPECT_EQ(better_openblas_core("PRESCOTT", avx2), "Haswell");  // names compared without case
  // What the CPU supports, or better, is kept.
  EXPECT_EQ(better_openblas_core("Haswell", avx2), std::nullopt);
  EXPECT_EQ(better_openblas_core("Zen", avx2), std::nullopt);
  EXPECT_EQ(better_openblas_core("SkylakeX", avx512_bf16), std::nullopt);
  EXPECT_EQ(better_openblas_core("Cooperlake", avx512_bf16), std::nullopt);
  EXPECT_EQ(better_openblas_core("Prescott", sse_only), std::nullopt);
  // Names it does not know (another architecture, a newer OpenBLAS, not OpenBLAS) are left alone.
  EXPECT_EQ(better_openblas_core("NeoverseN1", avx512), std::nullopt);
  EXPECT_EQ(better_openblas_core("", avx512), std::nullopt);
}

TEST(Blas, CpuFeaturesAgreeWithTheKernel) {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line) && line.rfind("flags", 0) != 0) {
  }
  if (line.empty()) GTEST_SKIP() << "no flags line in /proc/cpuinfo";
  std::istringstream words(line.substr(line.find(':') + 1));
  const std::set<std::string> flags{std::istream_iterator<std::string>(words), std::istream_iterator<std::string>()};
  auto has = [&](const char* flag) { return flags.count(flag) == 1; };
  const CpuFeatures cpu = detect_cpu_features();
  EXPECT_EQ(cpu.avx2_fma, has("avx2") && has("fma"));
  EXPECT_EQ(cpu.avx512, has("avx512f") && has("avx512dq") && has("avx512bw") && has("avx512vl"));
  EXPECT_EQ(cpu.avx512_bf16, cpu.avx512 && has("avx512_bf16"));
}

}  // namespace
}  // namespace tve
