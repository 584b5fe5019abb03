#pragma once
// Turning a list of image inputs into model-ready batches, one bad file never stopping the rest.

#include <torch/types.h>

#include <filesystem>
#include <functional>
#include <istream>
#include <optional>
#include <string>
#include <vector>

#include "tve/bundle.hpp"
#include "tve/image.hpp"

namespace tve {

// Expands command-line inputs into image files, in the order given: a file is kept as is (even
// with an unknown extension: its content decides), a folder contributes its images recursively
// (by extension, sorted), and "-" reads one path per line from `stdin_paths`.
struct InputFile {
  std::filesystem::path path;  // as given, or the folder as given joined with the path inside it
};
std::vector<InputFile> expand_inputs(const std::vector<std::string>& inputs, std::istream& stdin_paths);

// Where an input's outputs go under an output folder: the input path as given, made relative
// (a leading '/' dropped, '..' spelt "_parent_"). Distinct inputs never share outputs, so equal
// file names in different folders do not collide, and the tree under --out mirrors the inputs.
std::filesystem::path mirrored_output_path(const std::filesystem::path& input);

bool has_image_extension(const std::filesystem::path& file);

struct ImageJob {
  InputFile input;
  std::optional<Image> image;  // the decoded image, kept only when asked for (overlays)
  torch::Tensor tensor;        // [3,H,W] f32 RGB normalised; undefined when the image failed
  std::string error;           // why it failed; empty on success
  double decode_seconds = 0;

  bool ok() const { return error.empty(); }
};

struct BatchOptions {
  int batch_size = 8;
  bool keep_images = false;
  // Decode the next batch on a second thread while `on_batch` runs, so that file reading and
  // decoding overlap the model's work. At most two batches are in memory.
  bool prefetch = true;
  ImageLimits limits;
};

// Decodes `inputs` in order and calls `on_batch` with consecutive runs of jobs holding up to
// batch_size good images (failed ones ride along in their place). Memory stays bounded by two
// batches, however many inputs there are. An exception from `on_batch` stops the run.
void read_in_batches(const std::vector<InputFile>& inputs, const InputSpec& spec, const BatchOptions& options,
                     const std::function<void(std::vector<ImageJob>&)>& on_batch);

// [B,3,H,W] on `device`, B = the number of good jobs, in order.
torch::Tensor stack_good(const std::vector<ImageJob>& jobs, const torch::Device& device);

}  // namespace tve
