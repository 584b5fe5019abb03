#include "tve/runtime.hpp"

#include <ATen/detail/CUDAHooksInterface.h>

#include <dlfcn.h>
#include <sched.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <future>
#include <limits>
#include <map>
#include <sstream>
#include <thread>

#include "detail/model_lanes.hpp"
#include "tve/error.hpp"
#include "tve/log.hpp"
#include "tve/stopwatch.hpp"

namespace tve {
namespace {

// OpenBLAS's control functions, looked up at run time: the binary links the generic libblas.so.3
// and must keep working (slowly) when the alternatives system points it at another BLAS.
using SetThreadsFn = void (*)(int);
using GetConfigFn = char* (*)();

SetThreadsFn openblas_set_threads() {
  return reinterpret_cast<SetThreadsFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
}

using GetThreadsFn = int (*)();

// How wide the vector instructions of each OpenBLAS x86-64 kernel set are (names as
// openblas_get_corename() prints them): 0 SSE, 1 AVX, 2 AVX2 with FMA, 3 AVX-512, 4 AVX-512 BF16.
int openblas_core_level(const std::string& core) {
  static const std::map<std::string, int> levels{
      {"prescott", 0},    {"core2", 0},     {"penryn", 0},      {"dunnington", 0},  {"nehalem", 0},
      {"atom", 0},        {"barcelona", 0}, {"opteron", 0},     {"opteron_sse3", 0}, {"nano", 0},
      {"sandybridge", 1}, {"bulldozer", 1}, {"piledriver", 1},  {"steamroller", 1}, {"excavator", 1},
      {"haswell", 2},     {"zen", 2},       {"skylakex", 3},    {"cooperlake", 4},  {"sapphirerapids", 4}};
  std::string key = core;
  std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return std::tolower(c); });
  const auto found = levels.find(key);
  return found == levels.end() ? -1 : found->second;
}

}  // namespace

bool cuda_compiled() {
  // Not torch::hasCUDA(): in LibTorch 1.13 and 2.x alike that says whether a GPU is usable, so the
  // cuda flavour on a machine without one called itself CPU-only. The CUDA hooks' hasCUDART() is
  // whether the CUDA runtime is linked in: 1 for PyPI's wheel here, 0 for Debian's.
  return at::detail::getCUDAHooks().hasCUDART();
}

std::string build_description() {
  // torch/version.h exists in LibTorch 1.13 and 2.x.
  return std::string("LibTorch ") + TORCH_VERSION + (cuda_compiled() ? " with CUDA" : ", CPU-only");
}

torch::Device select_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  const std::string prefix = "cuda";
  if (name.compare(0, prefix.size(), prefix) != 0 ||
      (name.size() > prefix.size() &&
       (name[prefix.size()] != ':' || name.size() == prefix.size() + 1 || name.size() > prefix.size() + 4 ||
        name.find_first_not_of("0123456789", prefix.size() + 1) != std::string::npos))) {
    throw InvalidArgument("--device '" + name + "' is not a device; expected auto, cpu, cuda or cuda:N (N = 0, 1, ...)");
  }
  const int index = name.size() > prefix.size() ? std::stoi(name.substr(prefix.size() + 1)) : 0;
  if (!cuda_compiled()) {
    throw DeviceError("--device " + name + ": this tve is a CPU-only build (" + build_description() +
                      "); use --device cpu, or a CUDA build (docs/gpu.md)");
  }
  const auto count = static_cast<int>(torch::cuda::device_count());
  if (count == 0) {
    throw DeviceError("--device " + name + ": this tve is built with CUDA (" + build_description() +
                      ") but sees no usable CUDA device (no GPU, no driver, or CUDA_VISIBLE_DEVICES empty); use --device cpu");
  }
  if (index >= count) {
    throw DeviceError("--device " + name + ": this machine shows " + std::to_string(count) + " CUDA device(s) (cuda:0" +
                      (count > 1 ? "..cuda:" + std::to_string(count - 1) : std::string()) + ") to this tve (" +
                      build_description() + ")");
  }
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
}

Precision parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::Fp32;
  if (name == "bf16") return Precision::Bf16;
  if (name == "fp16") return Precision::Fp16;
  throw InvalidArgument("--precision '" + name + "' is not a precision; expected fp32, bf16 or fp16");
}

std::string to_string(Precision precision) {
  switch (precision) {
    case Precision::Bf16: return "bf16";
    case Precision::Fp16: return "fp16";
    case Precision::Fp32: break;
  }
  return "fp32";
}

torch::ScalarType scalar_type(Precision precision) {
  switch (precision) {
    case Precision::Bf16: return torch::kBFloat16;
    case Precision::Fp16: return torch::kHalf;
    case Precision::Fp32: break;
  }
  return torch::kFloat32;
}

void check_precision(const torch::Device& device, Precision precision) {
  if (!device.is_cpu()) return;
  if (precision == Precision::Fp16) {
    // LibTorch 1.13 has no half-precision CPU convolution ("slow_conv2d_cpu" not implemented for
    // 'Half'), and where newer versions have one it is slower than fp32 on x86 CPUs.
    throw DeviceError("--precision fp16 needs a CUDA device; " + build_description() +
                      " cannot run it on the cpu: use --precision bf16 or fp32 there");
  }
  if (precision == Precision::Bf16 && !detect_cpu_features().avx512_bf16) {
    logger().warn("--precision bf16 on a CPU without AVX-512 BF16: emulated, likely slower than fp32");
  }
}

BlasInfo detect_blas() {
  auto config = reinterpret_cast<GetConfigFn>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
  if (!config) {
    return {false, "not OpenBLAS (Debian's reference BLAS runs transformers ~40x slower: apt-get install libopenblas0-pthread)",
            ""};
  }
  auto corename = reinterpret_cast<GetConfigFn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  return {true, config(), corename ? corename() : ""};  // "OpenBLAS 0.3.21 DYNAMIC_ARCH ...", "Cooperlake"
}

CpuFeatures detect_cpu_features() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  CpuFeatures cpu;
  cpu.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  cpu.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  cpu.avx512_bf16 = cpu.avx512 && __builtin_cpu_supports("avx512bf16");
  return cpu;
#else
  return {};
#endif
}

std::optional<std::string> better_openblas_core(const std::string& current, const CpuFeatures& cpu) {
  const int level = openblas_core_level(current);
  if (level < 0) return std::nullopt;
  // A detected AVX-512 set is kept even where BF16 would allow Cooperlake: their single-precision
  // kernels are the same family, and the aim is only to undo a fall-back to a generic set.
  if (cpu.avx512 && level < 3) return cpu.avx512_bf16 ? "Cooperlake" : "SkylakeX";
  if (cpu.avx2_fma && level < 2) return "Haswell";
  return std::nullopt;
}

std::optional<std::string> better_openblas_core(const BlasInfo& blas) {
  if (!blas.is_openblas) return std::nullopt;
  return better_openblas_core(blas.core, detect_cpu_features());
}

std::string to_string(const ThreadSettings& settings) {
  std::ostringstream out;
  out << "LibTorch " << settings.intra_op << ", BLAS " << settings.blas;
  if (settings.lanes > 1) out << ", " << settings.lanes << " lanes";
  return out.str();
}

namespace {
// Lanes are tve's own setting, not a library's: kept here for current_thread_settings().
std::atomic<int> applied_lanes{1};
}  // namespace

void apply_thread_settings(const ThreadSettings& settings) {
  at::set_num_threads(settings.intra_op);
  if (auto set_blas = openblas_set_threads()) set_blas(settings.blas);
  applied_lanes = std::max(1, settings.lanes);
}

bool keep_freed_memory() {
#if defined(__GLIBC__)
  return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max()) == 1;
#else
  return false;
#endif
}

int available_cores() {
  // The cores this process may run on (taskset, a container's or a scheduler's CPU set), which
  // can be fewer than the machine has.
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) == 0) return std::max(1, CPU_COUNT(&allowed));
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

ThreadSettings current_thread_settings() {
  auto get_blas = reinterpret_cast<GetThreadsFn>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return {at::get_num_threads(), get_blas ? get_blas() : 1, applied_lanes.load()};
}

int model_lanes(const torch::Device& device, const ThreadSettings& settings) {
  return device.is_cpu() ? std::max(1, settings.lanes) : 1;
}

bool decode_in_parallel(const torch::Device& device, const ThreadSettings& settings, int cores) {
  if (!device.is_cpu() || settings.lanes > 1) return true;
  return std::max(settings.intra_op, settings.blas) < cores;
}

int decode_threads(const torch::Device& device, int cores) {
  if (device.is_cpu()) return 1;
  return std::clamp(cores - 2, 1, 8);
}

namespace {

// Seconds per workload under `settings`, best of two after two warm-ups (TorchScript's profiling
// executor specialises a graph over its first two runs, and new thread counts pay for thread
// start-up). With several lanes, that many workloads run side by side and share the time.
double seconds_per_workload(const std::function<void()>& workload, const ThreadSettings& settings) {
  apply_thread_settings(settings);
  if (settings.lanes <= 1) {
    workload();
    workload();
    return std::min(seconds_of(workload), seconds_of(workload));
  }
  ModelLanes lanes(settings.lanes, settings.intra_op);
  auto side_by_side = [&] {
    std::vector<std::future<bool>> done;
    for (int lane = 0; lane < settings.lanes; ++lane) {
      done.push_back(lanes.run<bool>([&workload] {
        workload();
        return true;
      }));
    }
    for (auto& one : done) one.get();
  };
  side_by_side();
  side_by_side();
  return std::min(seconds_of(side_by_side), seconds_of(side_by_side)) / settings.lanes;
}

constexpr int kMostMeasuredLanes = 8;

// What a request fixes, within the usable cores; nothing when it fixes nothing.
std::optional<ThreadChoice> requested_threads(const ThreadRequest& request, int cores) {
  if (request.threads && *request.threads < 1) throw InvalidArgument("--threads must be at least 1");
  if (request.lanes && *request.lanes < 1) throw InvalidArgument("--lanes must be at least 1");
  if (request.lanes && *request.lanes > 1 && !request.lanes_possible) {
    throw InvalidArgument("--lanes: this command computes one batch at a time");
  }
  if (!request.threads && !request.lanes) return std::nullopt;
  if (request.lanes && !request.threads) {
    // Each lane gets its share of the cores.
    const int lanes = *request.lanes;
    if (lanes > cores) logger().warn("--lanes {} is more than the {} usable core(s): lanes will take turns on them", lanes, cores);
    const int share = std::max(1, cores / lanes);
    return ThreadChoice{{share, share, lanes}, "--lanes " + std::to_string(lanes) + ", the cores shared out"};
  }
  const int threads = *request.threads, lanes = request.lanes.value_or(1);
  if (!request.lanes && threads > cores) {
    // More threads than cores only take turns on them: each operation waits for its slowest
    // thread, and spinning OpenMP and OpenBLAS threads preempt each other (--threads 1000 on 2
    // cores ran a 1.5 s job in 41 s).
    logger().warn("--threads {} is more than the {} usable core(s); using {}", threads, cores, cores);
    return ThreadChoice{{cores, cores, 1}, "--threads " + std::to_string(threads) + " clamped to the usable cores"};
  }
  if (request.lanes && threads * lanes > cores) {
    logger().warn("--lanes {} of --threads {} each ask for {} threads on {} usable core(s)", lanes, threads, threads * lanes, cores);
  }
  return ThreadChoice{{threads, threads, lanes}, request.lanes ? "forced by --threads and --lanes" : "forced by --threads"};
}

}  // namespace

ThreadChoice choose_threads(const std::function<void()>& workload, const ThreadRequest& request) {
  const int cores = available_cores();
  if (auto requested = requested_threads(request, cores)) {
    apply_thread_settings(requested->settings);
    return *requested;
  }
  std::vector<ThreadSettings> candidates{{cores, cores, 1}};
  if (cores > 1) {
    candidates.push_back({1, cores, 1});
    candidates.push_back({cores, 1, 1});
    if (request.lanes_possible) {
      // One single-threaded lane per core, up to kMostMeasuredLanes; past that, lanes share the
      // cores out: each lane holds up to two batches' activations (a 224 px ViT-B, ~200 MB each).
      // OpenBLAS gets one thread in each: lanes calling its one shared pool at once would queue.
      const int lanes = std::min(cores, kMostMeasuredLanes);
      candidates.push_back({cores / lanes, 1, lanes});
    }
  }
  if (!openblas_set_threads()) candidates.resize(std::min<size_t>(candidates.size(), 1));

  ThreadSettings best = candidates.front();
  double best_seconds = std::numeric_limits<double>::infinity();
  std::ostringstream report;
  for (const auto& candidate : candidates) {
    const double seconds = seconds_per_workload(workload, candidate);
    report << (report.tellp() > 0 ? "; " : "") << to_string(candidate) << ": " << seconds * 1e3 << " ms";
    if (seconds < best_seconds) {
      best_seconds = seconds;
      best = candidate;
    }
  }
  apply_thread_settings(best);
  return {best, "fastest of a timed forward pass each (" + report.str() + ")"};
}

ThreadChoice default_threads(const ThreadRequest& request) {
  const int cores = available_cores();
  if (auto requested = requested_threads(request, cores)) {
    apply_thread_settings(requested->settings);
    return *requested;
  }
  const ThreadSettings settings{1, cores, 1};
  apply_thread_settings(settings);
  return {settings, "default for short runs, not measured"};
}

}  // namespace tve
