#include "tve/pipeline.hpp"

#include <sys/stat.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <future>
#include <set>
#include <thread>

#include "tve/error.hpp"
#include "tve/log.hpp"
#include "tve/stopwatch.hpp"

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

// A file's identity, so that the same file reached by two paths is one input.
using FileId = std::pair<dev_t, ino_t>;

std::string errno_text(int error) { return std::strerror(error); }

// Collects inputs in order, following links, dropping repeats and outputs, reporting what it
// cannot use.
class InputCollector {
 public:
  InputCollector(std::vector<InputFile>& out, const InputScanOptions& options) : out_(out), is_output_(options.is_output) {
    std::error_code ec;
    if (options.skip_folder && fs::is_directory(*options.skip_folder, ec)) {
      struct stat st {};
      if (stat(options.skip_folder->c_str(), &st) == 0) skip_id_ = FileId{st.st_dev, st.st_ino};
      skip_prefix_ = fs::weakly_canonical(*options.skip_folder, ec).string() + "/";
    }
  }

  ~InputCollector() {
    if (repeats_ > 0) logger().info("{} input(s) given more than once are explained once", repeats_);
    if (outputs_ > 0) logger().info("{} file(s) in the output folder are not taken as inputs", outputs_);
  }

  void add(const std::string& input) {
    const fs::path path(input);
    struct stat st {};
    const bool exists = stat(path.c_str(), &st) == 0;
    if (exists && S_ISDIR(st.st_mode)) {
      // The output folder named as an input folder, or an input folder inside it: its images are
      // inputs, its outputs (by name) are not. Without names to tell them apart, none is taken.
      const bool in_outputs = is_skip_folder(st) || under_skip_folder(path);
      if (in_outputs && !is_output_) {
        ++outputs_;
        return;
      }
      std::vector<FileId> ancestors{{st.st_dev, st.st_ino}};
      add_folder(path, ancestors, in_outputs);
      return;
    }
    // Files, and names that do not exist: the latter fail later with a per-image error, like any
    // other bad input, instead of stopping the run.
    add_file(path, exists ? &st : nullptr, /*listed=*/true);
  }

 private:
  bool is_skip_folder(const struct stat& st) const { return skip_id_ && *skip_id_ == FileId{st.st_dev, st.st_ino}; }
  bool under_skip_folder(const fs::path& path) const {
    std::error_code ec;
    return !skip_prefix_.empty() && fs::weakly_canonical(path, ec).string().rfind(skip_prefix_, 0) == 0;
  }
  // A file found in (or listed from) the output folder that is one of its outputs.
  bool is_output_file(const fs::path& path) const { return !is_output_ || is_output_(path.filename().string()); }

  // `listed`: named by the user (argument or stdin) rather than found in a folder scan, which
  // already stepped around the skip folder; only such a path needs resolving to know where it is.
  void add_file(const fs::path& path, const struct stat* st, bool listed) {
    if (st != nullptr) {
      if (!seen_.insert({st->st_dev, st->st_ino}).second) {
        ++repeats_;
        return;
      }
      if (listed && under_skip_folder(path) && is_output_file(path)) {
        ++outputs_;
        return;
      }
    } else if (!seen_missing_.insert(path.lexically_normal().string()).second) {
      ++repeats_;
      return;
    }
    out_.push_back({path, ""});
  }

  void fail(const fs::path& path, const std::string& why) { out_.push_back({path, path.string() + ": " + why}); }

  // Entries in name order (as std::filesystem::path compares them), sub-folders where they fall.
  // `in_outputs`: `dir` is the output folder or inside it, whose outputs are left out by name.
  void add_folder(const fs::path& dir, std::vector<FileId>& ancestors, bool in_outputs) {
    std::vector<fs::path> entries;
    std::error_code ec;
    for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
      entries.push_back(it->path());
    }
    if (ec) {
      fail(dir, "cannot read folder: " + ec.message());
      return;
    }
    std::sort(entries.begin(), entries.end());
    for (const auto& entry : entries) {
      struct stat st {};
      if (stat(entry.c_str(), &st) != 0) {
        const int error = errno;
        struct stat link {};
        const bool is_link = lstat(entry.c_str(), &link) == 0 && S_ISLNK(link.st_mode);
        if (error == ELOOP) {
          fail(entry, "symbolic link loop");
        } else if (is_link && error == ENOENT) {
          fail(entry, "broken symbolic link (its target does not exist)");
        } else {
          fail(entry, "cannot read: " + errno_text(error));
        }
        continue;
      }
      if (S_ISDIR(st.st_mode)) {
        if (is_skip_folder(st)) {
          ++outputs_;
          continue;
        }
        const FileId id{st.st_dev, st.st_ino};
        if (std::find(ancestors.begin(), ancestors.end(), id) != ancestors.end()) {
          fail(entry, "symbolic link loop: it leads back to a folder that contains it");
          continue;
        }
        ancestors.push_back(id);
        add_folder(entry, ancestors, in_outputs);
        ancestors.pop_back();
      } else if (S_ISREG(st.st_mode) && has_image_extension(entry)) {
        if (in_outputs && is_output_file(entry)) {
          ++outputs_;
          continue;
        }
        add_file(entry, &st, /*listed=*/false);
      }
    }
  }

  std::vector<InputFile>& out_;
  std::function<bool(const std::string&)> is_output_;
  std::optional<FileId> skip_id_;
  std::string skip_prefix_;
  std::set<FileId> seen_;
  std::set<std::string> seen_missing_;
  size_t repeats_ = 0;
  size_t outputs_ = 0;
};

}  // namespace

std::vector<InputFile> expand_inputs(const std::vector<std::string>& inputs, std::istream& stdin_paths,
                                     const InputScanOptions& options) {
  std::vector<InputFile> out;
  InputCollector collector(out, options);
  for (const auto& input : inputs) {
    if (input == "-") {
      std::string line;
      while (std::getline(stdin_paths, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        // Blank and whitespace-only lines separate lists (a trailing newline, `echo`); no file is
        // named only by spaces, so taking one as a path would only report a missing file.
        if (line.find_first_not_of(" \t\v\f") != std::string::npos) collector.add(line);
      }
    } else {
      collector.add(input);
    }
  }
  return out;
}

namespace {

uint64_t parse_count(const std::string& text, const std::string& what) {
  if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos) {
    throw InvalidArgument("--shard: " + what + " '" + text + "' is not a whole number");
  }
  return std::stoull(text);
}

// K and N of a SLURM job array, if this process runs in one: an array A-B:S (pipeline.hpp).
std::optional<Shard> slurm_shard(const std::function<const char*(const char*)>& lookup) {
  const char* id = lookup("SLURM_ARRAY_TASK_ID");
  if (id == nullptr) return std::nullopt;
  const char* min = lookup("SLURM_ARRAY_TASK_MIN");
  const char* max = lookup("SLURM_ARRAY_TASK_MAX");
  const char* count = lookup("SLURM_ARRAY_TASK_COUNT");
  const char* step_text = lookup("SLURM_ARRAY_TASK_STEP");
  const uint64_t task = parse_count(id, "SLURM_ARRAY_TASK_ID");
  const uint64_t first = min ? parse_count(min, "SLURM_ARRAY_TASK_MIN") : 0;
  const uint64_t step = step_text ? parse_count(step_text, "SLURM_ARRAY_TASK_STEP") : 1;
  const std::string array = "the SLURM job array (SLURM_ARRAY_TASK_ID=" + std::string(id) +
                            (min ? ", MIN=" + std::string(min) : "") + (max ? ", MAX=" + std::string(max) : "") +
                            (step_text ? ", STEP=" + std::string(step_text) : "") +
                            (count ? ", COUNT=" + std::string(count) : "") + ")";
  const std::string give_k_n = ": give --shard K/N yourself";
  if (step == 0) throw InvalidArgument("--shard auto: SLURM_ARRAY_TASK_STEP is 0 in " + array + give_k_n);
  if (task < first) throw InvalidArgument("--shard auto: SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN in " + array);
  if ((task - first) % step != 0) {
    throw InvalidArgument("--shard auto: task " + std::string(id) + " is not MIN plus a multiple of STEP in " + array + give_k_n);
  }
  Shard shard;
  shard.index = (task - first) / step;
  if (max) {
    const uint64_t last = parse_count(max, "SLURM_ARRAY_TASK_MAX");
    if (last < task) throw InvalidArgument("--shard auto: SLURM_ARRAY_TASK_ID is above SLURM_ARRAY_TASK_MAX in " + array);
    shard.count = (last - first) / step + 1;
    // A list (--array=1,4,9) has MIN 1 and MAX 9 but 3 tasks: its tasks cannot be numbered from
    // these variables, and taking MAX-MIN+1 shards would leave most of them to no task.
    if (count && parse_count(count, "SLURM_ARRAY_TASK_COUNT") != shard.count) {
      throw InvalidArgument("--shard auto: " + array + " is not an evenly spaced range A-B:S of " +
                            std::to_string(shard.count) + " tasks (a list of task IDs?)" + give_k_n);
    }
  } else if (count) {
    shard.count = parse_count(count, "SLURM_ARRAY_TASK_COUNT");
  } else {
    throw InvalidArgument("--shard auto: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX is");
  }
  return shard;
}

}  // namespace

Shard parse_shard(const std::string& spec, const std::function<const char*(const char*)>& lookup) {
  const auto slash = spec.find('/');
  const std::string first = spec.substr(0, slash);
  std::optional<uint64_t> count;
  if (slash != std::string::npos) count = parse_count(spec.substr(slash + 1), "shard count");
  if (count && *count == 0) throw InvalidArgument("--shard " + spec + ": the shard count must be at least 1");
  Shard shard;
  if (first == "auto") {
    if (const char* index = lookup("JOB_COMPLETION_INDEX")) {
      if (!count) throw InvalidArgument("--shard auto: in a Kubernetes Indexed Job give the number of shards, --shard auto/N");
      shard = {parse_count(index, "JOB_COMPLETION_INDEX"), *count};
    } else if (auto slurm = slurm_shard(lookup)) {
      if (count && *count != slurm->count) {
        throw InvalidArgument("--shard " + spec + ": the SLURM job array has " + std::to_string(slurm->count) + " tasks");
      }
      shard = *slurm;
    } else {
      throw InvalidArgument("--shard auto: neither JOB_COMPLETION_INDEX (Kubernetes) nor SLURM_ARRAY_TASK_ID (SLURM) is set");
    }
  } else {
    if (!count) throw InvalidArgument("--shard takes K/N (0 <= K < N), auto or auto/N; got '" + spec + "'");
    shard = {parse_count(first, "shard index"), *count};
  }
  if (shard.index >= shard.count) {
    throw InvalidArgument("--shard: index " + std::to_string(shard.index) + " is not below the shard count " +
                          std::to_string(shard.count) + " (shards are numbered from 0)");
  }
  return shard;
}

namespace {

// FNV-1a, 64 bits, then MurmurHash3's 64-bit finaliser: both fixed by their definitions, so every
// machine and every build hashes alike. FNV-1a alone spreads names that differ only in their last
// characters (img-0001.png, img-0002.png) unevenly over small moduli; the finaliser mixes every bit
// into the low ones.
uint64_t stable_hash(const std::string& text) {
  uint64_t hash = 14695981039346656037ull;
  for (const unsigned char byte : text) {
    hash ^= byte;
    hash *= 1099511628211ull;
  }
  hash ^= hash >> 33;
  hash *= 0xff51afd7ed558ccdull;
  hash ^= hash >> 33;
  hash *= 0xc4ceb9fe1a85ec53ull;
  hash ^= hash >> 33;
  return hash;
}

}  // namespace

bool in_shard(const fs::path& input, const Shard& shard) {
  if (shard.count <= 1) return true;
  return stable_hash(input.string()) % shard.count == shard.index;
}

std::vector<InputFile> take_shard(const std::vector<InputFile>& inputs, const Shard& shard) {
  std::vector<InputFile> out;
  for (const auto& input : inputs) {
    if (in_shard(input.path, shard)) out.push_back(input);
  }
  return out;
}

std::string output_base_name(const std::string& name) {
  if (name.size() <= kMaxOutputBaseBytes) return name;
  // Outputs add up to 20 bytes to this name (".top1000.overlay.png") and a file system allows 255
  // per name: a longer one keeps its first bytes, cut before a UTF-8 continuation byte, and a
  // hash of the whole name (stable_hash, as in_shard), so that distinct names stay distinct and
  // every run names the same input alike.
  const uint64_t hash = stable_hash(name);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash));
  size_t keep = kMaxOutputBaseBytes - 17;  // room for '~' and 16 hex digits
  while (keep > 0 && (static_cast<unsigned char>(name[keep]) & 0xC0) == 0x80) --keep;
  return name.substr(0, keep) + "~" + hex;
}

fs::path mirrored_output_path(const fs::path& input) {
  fs::path out;
  const fs::path parts = input.lexically_normal().relative_path();
  for (auto it = parts.begin(); it != parts.end(); ++it) {
    const auto& part = *it;
    if (part == "..") {
      out /= "_parent_";
    } else if (part != "." && !part.empty()) {
      // Folders exist under the same names; only the file's name grows a suffix.
      out /= std::next(it) == parts.end() ? fs::path(output_base_name(part.string())) : part;
    }
  }
  return out;
}

namespace {

// Decodes one input into `job`; returns whether it succeeded.
bool decode(ImageJob& job, const InputSpec& spec, const BatchOptions& options) {
  const Stopwatch stopwatch;
  try {
    Image image = load_image(job.input.path, options.limits);
    job.tensor = preprocess(image, spec);
    if (options.keep_images) job.image = std::move(image);
  } catch (const Error& e) {
    job.error = e.what();
  } catch (const cv::Exception& e) {
    job.error = job.input.path.string() + ": OpenCV failed: " + e.msg;
  }
  job.decode_seconds = stopwatch.seconds();
  return job.ok();
}

// Decodes inputs from `cursor` on until the batch holds batch_size good images or inputs run out.
// Failed and reused inputs ride along, up to a bound, so that a long run of them (a resumed run
// skipping thousands of finished images) does not gather into one unbounded batch.
std::vector<ImageJob> decode_batch(const std::vector<InputFile>& inputs, size_t& cursor, const InputSpec& spec,
                                   const BatchOptions& options) {
  const size_t max_jobs = 4 * static_cast<size_t>(options.batch_size) + 64;
  std::vector<ImageJob> batch;
  int good = 0;
  while (cursor < inputs.size() && good < options.batch_size && batch.size() < max_jobs) {
    // The inputs that would complete the batch if they all decode, then their decoding (spread
    // over decode_threads); inputs that fail make room for another round.
    std::vector<size_t> to_decode;
    while (cursor < inputs.size() && good + static_cast<int>(to_decode.size()) < options.batch_size &&
           batch.size() < max_jobs) {
      ImageJob job;
      job.input = inputs[cursor++];
      if (!job.input.error.empty()) {
        job.error = job.input.error;
      } else if (options.reuse) {
        job.previous = options.reuse(job.input);
      }
      if (job.ok() && !job.reused()) to_decode.push_back(batch.size());
      batch.push_back(std::move(job));
    }
    const size_t threads = std::min<size_t>(static_cast<size_t>(std::max(1, options.decode_threads)), to_decode.size());
    if (threads <= 1) {
      for (const size_t i : to_decode) decode(batch[i], spec, options);
    } else {
      // Each thread decodes every threads-th job; decode() catches what decoding throws.
      std::vector<std::thread> workers;
      for (size_t t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
          for (size_t k = t; k < to_decode.size(); k += threads) decode(batch[to_decode[k]], spec, options);
        });
      }
      for (auto& worker : workers) worker.join();
    }
    for (const size_t i : to_decode) good += batch[i].ok() ? 1 : 0;
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
    if (job.tensor.defined()) tensors.push_back(job.tensor);
  }
  if (tensors.empty()) return {};
  if (!device.is_cuda()) return torch::stack(tensors).to(device);  // [B,3,H,W] f32
  // For a GPU, the batch is gathered in page-locked (pinned) host memory, which the GPU copies by
  // DMA while this thread goes on (non_blocking); the caching host allocator keeps the buffer
  // alive until the copy is done. Kernels queued after it on the same stream wait for it.
  const auto& first = tensors.front();
  auto pinned = torch::empty({static_cast<int64_t>(tensors.size()), first.size(0), first.size(1), first.size(2)},
                             torch::TensorOptions().dtype(first.scalar_type()).pinned_memory(true));
  torch::stack_out(pinned, tensors);
  return pinned.to(device, /*non_blocking=*/true);
}

}  // namespace tve
