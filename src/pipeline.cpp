#include "tve/pipeline.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <future>
#include <set>

#include "tve/error.hpp"

namespace fs = std::filesystem;

namespace tve {

bool has_image_extension(const fs::path& file) {
  static const std::set<std::string> extensions{".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib",
                                                ".tif", ".tiff", ".webp"};
  std::string ext = file.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return extensions.count(ext) > 0;
}

namespace {

void add_input(const std::string& input, std::vector<InputFile>& out) {
  const fs::path path(input);
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    // Files, and names that do not exist: the latter fail later with a per-image error, like any
    // other bad input, instead of stopping the run.
    out.push_back({path});
    return;
  }
  std::vector<InputFile> found;
  const auto options = fs::directory_options::skip_permission_denied;
  for (auto it = fs::recursive_directory_iterator(path, options, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_regular_file(ec) && has_image_extension(it->path())) {
      found.push_back({it->path()});
    }
  }
  if (ec) throw InvalidArgument(path, "cannot list folder: " + ec.message());
  std::sort(found.begin(), found.end(), [](const InputFile& a, const InputFile& b) { return a.path < b.path; });
  out.insert(out.end(), found.begin(), found.end());
}

}  // namespace

std::vector<InputFile> expand_inputs(const std::vector<std::string>& inputs, std::istream& stdin_paths) {
  std::vector<InputFile> out;
  for (const auto& input : inputs) {
    if (input == "-") {
      std::string line;
      while (std::getline(stdin_paths, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (!line.empty()) add_input(line, out);
      }
    } else {
      add_input(input, out);
    }
  }
  return out;
}

fs::path mirrored_output_path(const fs::path& input) {
  fs::path out;
  for (const auto& part : input.lexically_normal().relative_path()) {
    if (part == "..") {
      out /= "_parent_";
    } else if (part != "." && !part.empty()) {
      out /= part;
    }
  }
  return out;
}

namespace {

// Decodes inputs from `cursor` on until the batch holds batch_size good images or inputs run out.
std::vector<ImageJob> decode_batch(const std::vector<InputFile>& inputs, size_t& cursor, const InputSpec& spec,
                                   const BatchOptions& options) {
  std::vector<ImageJob> batch;
  int good = 0;
  while (cursor < inputs.size() && good < options.batch_size) {
    ImageJob job;
    job.input = inputs[cursor++];
    const auto start = std::chrono::steady_clock::now();
    try {
      Image image = load_image(job.input.path, options.limits);
      job.tensor = preprocess(image, spec);
      if (options.keep_images) job.image = std::move(image);
      ++good;
    } catch (const Error& e) {
      job.error = e.what();
    } catch (const cv::Exception& e) {
      job.error = job.input.path.string() + ": OpenCV failed: " + e.msg;
    }
    job.decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    batch.push_back(std::move(job));
  }
  return batch;
}

}  // namespace

void read_in_batches(const std::vector<InputFile>& inputs, const InputSpec& spec, const BatchOptions& options,
                     const std::function<void(std::vector<ImageJob>&)>& on_batch) {
  if (options.batch_size < 1) throw InvalidArgument("--batch-size must be at least 1");
  // Only the decoding side touches `cursor`, one batch at a time (each future is waited for
  // before the next is started).
  size_t cursor = 0;
  auto decode_next = [&] { return decode_batch(inputs, cursor, spec, options); };
  const auto policy = options.prefetch ? std::launch::async : std::launch::deferred;
  std::future<std::vector<ImageJob>> next = std::async(policy, decode_next);
  while (true) {
    std::vector<ImageJob> batch = next.get();
    if (batch.empty()) break;
    next = std::async(policy, decode_next);  // decodes while on_batch works on this batch
    on_batch(batch);
  }
}

torch::Tensor stack_good(const std::vector<ImageJob>& jobs, const torch::Device& device) {
  std::vector<torch::Tensor> tensors;
  for (const auto& job : jobs) {
    if (job.ok()) tensors.push_back(job.tensor);
  }
  if (tensors.empty()) return {};
  return torch::stack(tensors).to(device);  // [B,3,H,W] f32
}

}  // namespace tve
