#pragma once
// Turning a list of image inputs into model-ready batches, one bad file never stopping the rest.

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <istream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tve/image.hpp"
#include "tve/input_spec.hpp"

namespace tve {

// Expands command-line inputs into image files, in the order given: a file is kept as is (even
// with an unknown extension: its content decides), a folder contributes its images recursively
// (by extension, sorted; symbolic links to files and folders followed), and "-" reads one path
// per line from `stdin_paths`. Nothing is dropped silently: what a folder scan cannot use (a
// dangling symbolic link, a link loop, a sub-folder it cannot read) comes back as an input with
// an error, to be reported like a bad image. The same file given twice (by two paths, or twice on
// stdin) is kept once, and outputs are never inputs: files under `skip_folder` (the output
// folder) are not taken, or, with `is_output`, only those it calls outputs. Then an output folder
// that is itself an input folder (given as one, or inside one given) is scanned like any other,
// its outputs left out by name, while an output folder met inside an input folder is skipped whole.
struct InputFile {
  InputFile() = default;
  InputFile(std::filesystem::path file, std::string why = {}) : path(std::move(file)), error(std::move(why)) {}  // NOLINT: implicit from a path

  std::filesystem::path path;  // as given, or the folder as given joined with the path inside it
  std::string error;           // why it cannot be an input at all, naming it; empty for a file to read
};
struct InputScanOptions {
  std::optional<std::filesystem::path> skip_folder;
  std::function<bool(const std::string& filename)> is_output;  // names of the outputs in skip_folder
};
std::vector<InputFile> expand_inputs(const std::vector<std::string>& inputs, std::istream& stdin_paths,
                                     const InputScanOptions& options = {});

// One of N disjoint parts of the inputs, for job arrays: input i belongs to shard
// hash(path as given) mod N, so that the split depends only on the paths, not on the order in
// which they were found, and the N shards together cover every input exactly once.
struct Shard {  // hash: FNV-1a 64 of the path's bytes, then MurmurHash3's fmix64
  uint64_t index = 0;  // 0 .. count-1
  uint64_t count = 1;
};
// "K/N"; "auto", which takes K and N from a SLURM job array; or "auto/N", which takes K from
// JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) or SLURM and checks it against N. `lookup` reads
// the environment. A SLURM array A-B:S (S = SLURM_ARRAY_TASK_STEP, 1 when unset) has tasks A, A+S,
// ... up to B: task T is shard (T-A)/S of (B-A)/S+1. An array whose SLURM_ARRAY_TASK_COUNT
// disagrees with that (a list such as 1,4,9), or a task ID off the grid, is refused: its tasks
// cannot be numbered 0..N-1 from the environment alone, and a wrong guess would skip shards.
// Throws InvalidArgument saying what is missing or inconsistent.
Shard parse_shard(const std::string& spec, const std::function<const char*(const char*)>& lookup);
bool in_shard(const std::filesystem::path& input, const Shard& shard);
std::vector<InputFile> take_shard(const std::vector<InputFile>& inputs, const Shard& shard);

// Where an input's outputs go under an output folder: the input path as given, made relative
// (a leading '/' dropped, '..' spelt "_parent_"). Distinct inputs never share outputs, so equal
// file names in different folders do not collide, and the tree under --out mirrors the inputs.
// The file name is kept when it has at most kMaxOutputBaseBytes bytes; a longer one becomes
// output_base_name(name), so that every output name (the name plus a suffix such as
// ".top1000.overlay.png") and its temporary fit the file system's 255 bytes.
std::filesystem::path mirrored_output_path(const std::filesystem::path& input);

// A longer file name's first bytes (at most 183, cut at a UTF-8 character boundary), '~' and 16
// hex digits of a 64-bit hash of the whole name; at most kMaxOutputBaseBytes bytes. Deterministic.
constexpr size_t kMaxOutputBaseBytes = 200;
std::string output_base_name(const std::string& name);

bool has_image_extension(const std::filesystem::path& file);

struct ImageJob {
  InputFile input;
  nlohmann::json previous;     // the record of an earlier run that already did this input (BatchOptions::reuse); null otherwise
  std::optional<Image> image;  // the decoded image, kept only when asked for (overlays)
  torch::Tensor tensor;        // [3,H,W] f32 RGB normalised; undefined when the image failed
  std::string error;           // why it failed; empty on success
  double decode_seconds = 0;

  bool ok() const { return error.empty(); }
  bool reused() const { return !previous.is_null(); }
};

struct BatchOptions {
  int batch_size = 8;
  bool keep_images = false;
  // Decode the next batch on a second thread while `on_batch` runs, so that file reading and
  // decoding overlap the model's work. At most two batches are in memory.
  bool prefetch = true;
  // Threads that decode and resize one batch's images (decode_threads() in tve/runtime.hpp): more
  // than one only when the model does not compute on the CPU (a GPU), which would otherwise wait
  // for one thread decoding ~1,000 images a second.
  int decode_threads = 1;
  // Batches the model computes side by side (model_lanes() in tve/runtime.hpp), for pipelines that
  // run a model over the batches (run_explain). Results do not depend on it.
  int model_lanes = 1;
  ImageLimits limits;
  // Asked before decoding an input: a non-null record means an earlier run already produced this
  // input's outputs (explain --resume); the job then carries that record and is not decoded.
  std::function<nlohmann::json(const InputFile&)> reuse;
};

// Decodes `inputs` in order and calls `on_batch` with consecutive runs of jobs holding up to
// batch_size good images (failed and reused ones ride along in their place, up to a bound). Memory stays bounded by two
// batches, however many inputs there are. An exception from `on_batch` stops the run.
void read_in_batches(const std::vector<InputFile>& inputs, const InputSpec& spec, const BatchOptions& options,
                     const std::function<void(std::vector<ImageJob>&)>& on_batch);

// [B,3,H,W] on `device`, B = the number of decoded jobs, in order.
torch::Tensor stack_good(const std::vector<ImageJob>& jobs, const torch::Device& device);

}  // namespace tve
