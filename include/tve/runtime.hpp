#pragma once
// Where and how computations run: the device, and the thread counts of LibTorch and of the BLAS.

#include <torch/types.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace tve {

// "cpu", "cuda", "cuda:N" or "auto" (the first CUDA device when this build and machine have one,
// else the CPU). Throws DeviceError for "cuda"/"cuda:N" when this build's LibTorch has no CUDA
// support, sees no device or not device N, naming the build (build_description()) and the device
// asked for; InvalidArgument for any other name.
torch::Device select_device(const std::string& name);

// What this binary was built against, for messages and records: e.g. "LibTorch 1.13.0, CPU-only"
// or "LibTorch 2.5.1 with CUDA".
std::string build_description();
// Whether this LibTorch has the CUDA runtime linked in (the cuda flavour), GPU or not.
bool cuda_compiled();

// The number type the models compute in (--precision). Inputs, the heads' weights and every map
// stay float32; only the encoder's and the explainer's passes run in the lower precision.
enum class Precision { Fp32, Bf16, Fp16 };
Precision parse_precision(const std::string& name);  // "fp32", "bf16", "fp16"; InvalidArgument otherwise
std::string to_string(Precision precision);
torch::ScalarType scalar_type(Precision precision);

// Refuses a precision `device` cannot run in this build, with DeviceError: fp16 on the CPU
// (LibTorch 1.13 has no half-precision CPU convolutions). Warns when bf16 runs on a CPU without
// AVX-512 BF16, where it is emulated and slower than fp32.
void check_precision(const torch::Device& device, Precision precision);

// Which BLAS the process ended up with. Debian's LibTorch links libblas.so.3, whichever
// implementation the alternatives system points it at; OpenBLAS is ~40x faster for transformers.
struct BlasInfo {
  bool is_openblas = false;
  std::string description;  // e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH ..." or "reference BLAS (slow)"
  std::string core;         // OpenBLAS's kernel set, e.g. "Cooperlake" or "Prescott"; empty for others
};
BlasInfo detect_blas();

// The vector instruction sets OpenBLAS's x86-64 kernel sets are built for.
struct CpuFeatures {
  bool avx2_fma = false;
  bool avx512 = false;  // F, DQ, BW and VL: what OpenBLAS's SkylakeX kernels use
  bool avx512_bf16 = false;
};
CpuFeatures detect_cpu_features();

// The environment variable that overrides OpenBLAS's choice of kernels; read once, as it loads.
constexpr const char* kOpenBlasCoreVariable = "OPENBLAS_CORETYPE";

// OpenBLAS (Debian builds it with DYNAMIC_ARCH) picks its kernels when it loads, from a table of
// CPU models, and a CPU newer than its table gets the generic SSE3 kernels, "Prescott". On this
// project's build machine (a Xeon with AVX-512) Debian's OpenBLAS 0.3.21 did: matrix multiplies
// ran 4x slower, the ViT's forward pass 2-3x (docs/performance.md, "OpenBLAS kernels").
// Returns the kernel set to ask for through OPENBLAS_CORETYPE when `current` (BlasInfo::core) is
// one for an older instruction set than `cpu` has, else nothing. A kernel set it does not know
// (a non-x86 one, a newer name) is left alone.
std::optional<std::string> better_openblas_core(const std::string& current, const CpuFeatures& cpu);

// The same for this process: the kernels `blas` reports against this CPU's features; nothing when
// the BLAS is not OpenBLAS.
std::optional<std::string> better_openblas_core(const BlasInfo& blas);

struct ThreadSettings {
  int intra_op = 1;  // LibTorch's intra-op threads (OpenMP): convolutions, element-wise ops
  int blas = 1;      // OpenBLAS's own threads: matrix multiplies
  // Batches computed side by side on the CPU, each on its own thread with intra_op LibTorch
  // threads (src/detail/model_lanes.hpp); 1: one batch at a time.
  int lanes = 1;
  bool operator==(const ThreadSettings& other) const {
    return intra_op == other.intra_op && blas == other.blas && lanes == other.lanes;
  }
};

std::string to_string(const ThreadSettings& settings);

void apply_thread_settings(const ThreadSettings& settings);

struct ThreadChoice {
  ThreadSettings settings;
  std::string reason;  // why these, for the log
};

// What the user fixed: --threads N (both pools) and --lanes L.
struct ThreadRequest {
  std::optional<int> threads;
  std::optional<int> lanes;
  // Whether the work runs in lanes at all (run_explain does; predict, eval and fit-head compute
  // one batch at a time): without, lanes are neither measured nor allowed.
  bool lanes_possible = true;
};

// Chooses thread counts by timing `workload` (one representative forward pass) under each
// candidate and keeping the fastest per workload. Two thread pools that both spin (LibTorch's
// OpenMP and OpenBLAS's pthreads) can slow each other down: on 2 cores a ViT ran fastest with 1
// LibTorch thread and 2 BLAS threads, a ResNet with 2 and 2 (docs/performance.md). No single
// setting wins. One candidate runs one workload per core side by side, single-threaded (lanes; at
// most 8, sharing the cores out beyond);
// `workload` must then be safe to run on several threads at once, as a TorchScript forward is.
// A request skips the measurement: --threads N alone uses N for both pools in one lane, at most
// one per usable core (available_cores(); more is clamped, with a warning); --lanes L alone gives
// each lane its share of the cores; both together are taken as given.
ThreadChoice choose_threads(const std::function<void()>& workload, const ThreadRequest& request);

// Without measuring: 1 LibTorch thread and one BLAS thread per core, the split that was fastest
// or within a few percent of it for every model measured here (docs/performance.md), in one lane.
// Used when a run is too short for a measurement (a dozen forward passes) to pay for itself.
ThreadChoice default_threads(const ThreadRequest& request);

// The cores this process may run on (its CPU affinity mask), at least 1.
int available_cores();

// Tells glibc's malloc to keep freed memory in the process: every block comes from its heap and
// the heap is never trimmed. By default glibc maps each block above its mmap threshold (128 KB,
// adapting up to 32 MB) on malloc and unmaps it on free, so every large tensor (a batch of images,
// occlusion's masked copies, a ViT's attention matrices) is faulted in and zeroed by the kernel
// again each time: occlusion ran 1.6x faster with this setting (docs/performance.md, "Memory
// allocator"). A process keeps its peak heap until it exits. Call once, before the first tensor.
// Returns false where the C library is not glibc (nothing changed).
bool keep_freed_memory();

// The thread counts in effect now: LibTorch's, OpenBLAS's when OpenBLAS is the BLAS (else 1), and
// the lanes of the last apply_thread_settings() (1 before any).
ThreadSettings current_thread_settings();

// How many lanes a pipeline on `device` runs its model work in (BatchOptions::model_lanes): the
// settings' on the CPU, one on a GPU, which runs one batch's kernels across the whole device.
int model_lanes(const torch::Device& device, const ThreadSettings& settings);

// Whether decoding the next batch on a second thread pays off: only when the model runs on a GPU
// or its CPU threads leave a core free. Otherwise the decoding thread preempts one of the model's
// OpenMP or OpenBLAS threads mid-operation and the whole operation waits for it: on 2 cores with
// (LibTorch 1, BLAS 2), a folder run reached 0.50-0.58 of the pure compute with a decoding thread
// and 0.81-0.85 with decoding on the model's thread (docs/performance.md). Lanes do not wait for
// each other, so with more than one the decoding thread is always worth it.
bool decode_in_parallel(const torch::Device& device, const ThreadSettings& settings, int cores = available_cores());

// How many threads decode and resize a batch's images (BatchOptions::decode_threads): one on the
// CPU, where the model's own threads use the cores; for a GPU, the cores but two (the thread that
// feeds the GPU and the writer), at most 8: one thread decodes ~1,000 small JPEGs a second, less
// than a GPU explains.
int decode_threads(const torch::Device& device, int cores = available_cores());

}  // namespace tve
