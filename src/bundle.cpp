#include "tve/bundle.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <sstream>

#include "tve/error.hpp"
#include "tve/log.hpp"
#include "detail/sha256.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace tve {
namespace {

// Optional explainer method: forward_with_embedding(x, z) -> (psi_pos, psi_neg), z = the target's E(x).
constexpr const char* kExplainerWithEmbedding = "forward_with_embedding";
// Optional explainer method: embed_and_explain(x) -> (z, psi_pos, psi_neg), z = E(x) from the
// explainer's own copy of the encoder.
constexpr const char* kExplainerEmbedAndExplain = "embed_and_explain";

// Bounds on what a manifest may ask for, so that a malformed bundle fails with a message instead
// of exhausting memory: the loader runs a dummy [1,3,H,W] input, occlusion keeps G*G masks.
constexpr int kMaxInputSide = 4096;
constexpr int kMaxGrid = 128;
constexpr int kMaxEmbeddingDim = 65536;
constexpr std::uintmax_t kMaxManifestBytes = 16u << 20;
// Bounds on the manifest's real numbers: a value outside them is a typo or a broken export, and
// would surface later as a numerical failure (a std of 1e-45 turns every pixel into infinity) or a
// meaningless input (a crop fraction of 1e-6 shows the model one pixel). The ranges hold every
// preprocessing in use: mean 0 and std 1/255 for models on 0..255 inputs, 0.5 and 0.5 for [-1,1].
constexpr double kMinCropFraction = 0.1;
constexpr double kMinStd = 1e-3;
constexpr double kMaxStd = 100;
constexpr double kMaxLambda = 1000;
constexpr std::uintmax_t kMaxLabelsBytes = 16u << 20;

// What kind of thing is at `file` when it is not the regular file the bundle needs; empty if it is one.
std::string not_a_regular_file(const fs::path& file) {
  std::error_code ec;
  const auto status = fs::status(file, ec);
  if (fs::is_regular_file(status)) return "";
  if (fs::is_symlink(fs::symlink_status(file, ec)) && !fs::exists(status)) return "is a broken symbolic link";
  switch (status.type()) {
    case fs::file_type::not_found: return "does not exist";
    case fs::file_type::directory: return "is a folder, not a file";
    case fs::file_type::fifo: return "is a named pipe (FIFO), not a file";
    case fs::file_type::socket: return "is a socket, not a file";
    case fs::file_type::block: return "is a block device, not a file";
    case fs::file_type::character: return "is a character device, not a file";
    default: return ec ? "cannot be read: " + ec.message() : "is not a regular file";
  }
}

// Reads manifest fields with errors that name the manifest file and the key's full path.
class ManifestReader {
 public:
  explicit ManifestReader(fs::path file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& what) const { throw BundleError(file_, what); }

  const json& member(const json& object, const std::string& key, const std::string& where) const {
    if (!object.is_object()) fail("'" + where + "' must be an object");
    auto it = object.find(key);
    if (it == object.end()) fail("missing required key '" + join(where, key) + "'");
    return *it;
  }

  std::string string(const json& object, const std::string& key, const std::string& where) const {
    const json& value = member(object, key, where);
    if (!value.is_string()) fail("'" + join(where, key) + "' must be a string, got " + value.type_name());
    return value.get<std::string>();
  }

  std::string optional_string(const json& object, const std::string& key, const std::string& where,
                              const std::string& fallback) const {
    return object.contains(key) ? string(object, key, where) : fallback;
  }

  // An integer in [minimum, maximum]. Unsigned and signed JSON integers are compared as they are
  // written, so that 4294967297 is not read as 1.
  int int_in_range(const json& object, const std::string& key, const std::string& where, int minimum, int maximum) const {
    const json& value = member(object, key, where);
    if (!value.is_number_integer()) fail("'" + join(where, key) + "' must be an integer, got " + value.dump());
    const bool in_range = value.is_number_unsigned() ? value.get<unsigned long long>() <= static_cast<unsigned long long>(maximum) &&
                                                           value.get<unsigned long long>() >= static_cast<unsigned long long>(std::max(minimum, 0))
                                                     : value.get<long long>() >= minimum && value.get<long long>() <= maximum;
    if (!in_range) {
      fail("'" + join(where, key) + "' is " + value.dump() + ", expected " + std::to_string(minimum) + " to " +
           std::to_string(maximum));
    }
    return static_cast<int>(value.get<long long>());
  }

  // A number in [minimum, maximum]; `fallback` when the key is absent.
  double number(const json& object, const std::string& key, const std::string& where, double fallback, double minimum,
                double maximum) const {
    if (!object.contains(key)) return fallback;
    const json& value = object.at(key);
    if (!value.is_number() || !std::isfinite(value.get<double>())) {
      fail("'" + join(where, key) + "' must be a finite number, got " + value.dump());
    }
    const double given = value.get<double>();
    if (!(given >= minimum && given <= maximum)) {
      fail("'" + join(where, key) + "' is " + value.dump() + ", expected " + bound_text(minimum) + " to " + bound_text(maximum));
    }
    return given;
  }

  bool boolean(const json& object, const std::string& key, const std::string& where, bool fallback) const {
    if (!object.contains(key)) return fallback;
    const json& value = object.at(key);
    if (!value.is_boolean()) fail("'" + join(where, key) + "' must be true or false, got " + value.type_name());
    return value.get<bool>();
  }

  // Three numbers, each in [minimum, maximum] (checked as written, before the cast to float).
  std::array<float, 3> rgb_triple(const json& object, const std::string& key, const std::string& where, double minimum,
                                  double maximum) const {
    const json& value = member(object, key, where);
    if (!value.is_array() || value.size() != 3) fail("'" + join(where, key) + "' must be a list of 3 numbers (R, G, B)");
    std::array<float, 3> out{};
    static const char* const kChannels[] = {"R", "G", "B"};
    for (size_t i = 0; i < 3; ++i) {
      if (!value[i].is_number() || !std::isfinite(value[i].get<double>())) {
        fail("'" + join(where, key) + "' must be a list of 3 finite numbers (R, G, B)");
      }
      const double given = value[i].get<double>();
      if (!(given >= minimum && given <= maximum)) {
        fail("'" + join(where, key) + "' has " + value[i].dump() + " for " + kChannels[i] + ", expected " + bound_text(minimum) +
             " to " + bound_text(maximum));
      }
      out[i] = static_cast<float>(given);
    }
    return out;
  }

  // A file path inside the bundle; absolute paths and '..' are refused so that a manifest cannot
  // point outside its folder.
  fs::path bundle_file(const json& object, const std::string& key, const std::string& where) const {
    const fs::path relative = string(object, key, where);
    if (relative.empty() || relative.is_absolute()) fail("'" + join(where, key) + "' must be a path relative to the bundle");
    for (const auto& part : relative) {
      if (part == "..") fail("'" + join(where, key) + "' must not leave the bundle folder ('..')");
    }
    const fs::path file = file_.parent_path() / relative;
    // Nor through a symbolic link: a bundle is a self-contained folder (its hashes vouch only for it).
    std::error_code ec;
    const fs::path resolved = fs::weakly_canonical(file, ec);
    const fs::path folder = fs::weakly_canonical(file_.parent_path(), ec);
    const auto outside = std::mismatch(folder.begin(), folder.end(), resolved.begin(), resolved.end()).first != folder.end();
    if (!ec && outside) {
      fail("'" + join(where, key) + "' (" + relative.string() + ") is a symbolic link to " + resolved.string() +
           ", outside the bundle folder");
    }
    return file;
  }

  std::string sha256(const json& object, const std::string& where) const {
    std::string value = string(object, "sha256", where);
    const bool hex = value.size() == 64 && value.find_first_not_of("0123456789abcdef") == std::string::npos;
    if (!hex) fail("'" + join(where, "sha256") + "' must be 64 lowercase hex digits");
    return value;
  }

  std::vector<std::string> labels(const json& object, const std::string& where) const {
    if (object.contains("labels")) {
      const json& list = object.at("labels");
      if (!list.is_array() || list.empty()) fail("'" + join(where, "labels") + "' must be a non-empty list of strings");
      std::vector<std::string> out;
      for (const auto& label : list) {
        if (!label.is_string()) fail("'" + join(where, "labels") + "' must be a non-empty list of strings");
        out.push_back(label.get<std::string>());
      }
      return out;
    }
    if (object.contains("labels_file")) {
      auto labels = read_labels_file(bundle_file(object, "labels_file", where));
      if (labels.empty()) fail("'" + join(where, "labels_file") + "' names an empty labels file");
      return labels;
    }
    fail("'" + where + "' needs 'labels' or 'labels_file'");
  }

  HeadSpec head(const json& object, const std::string& name, const std::string& where) const {
    HeadSpec spec;
    spec.name = name;
    spec.file = bundle_file(object, "file", where);
    spec.sha256 = sha256(object, where);
    spec.task = optional_string(object, "task", where, name);
    spec.labels = labels(object, where);
    if (object.contains("metrics")) spec.metrics = object.at("metrics");
    return spec;
  }

 private:
  static std::string bound_text(double bound) {
    std::ostringstream text;
    text << bound;
    return text.str();
  }

  static std::string join(const std::string& where, const std::string& key) {
    return where.empty() ? key : where + "." + key;
  }

  fs::path file_;
};

// Everything below runs with autograd off: loading only needs forward passes.
torch::Tensor call_method(torch::jit::Module& module, const std::string& method, const torch::Tensor& input) {
  return module.get_method(method)({input}).toTensor();
}

std::string shape_of(const torch::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

torch::jit::Module load_module(const fs::path& file, const std::string& expected_sha256, const torch::Device& device) {
  if (const auto problem = not_a_regular_file(file); !problem.empty()) {
    throw BundleError(file, "file named in the manifest " + problem);
  }
  std::string actual;
  try {
    actual = sha256_file(file);
  } catch (const Error& e) {
    throw BundleError(file, e.detail());
  }
  if (actual != expected_sha256) {
    throw BundleError(file, "SHA-256 is " + actual + " but the manifest says " + expected_sha256 +
                                " (file changed or corrupt)");
  }
  try {
    auto module = torch::jit::load(file.string(), device);
    module.eval();
    return module;
  } catch (const c10::Error& e) {
    throw BundleError(file, std::string("not a loadable TorchScript module: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {  // a malformed archive can fail outside c10 (allocation, parsing)
    throw BundleError(file, std::string("not a loadable TorchScript module: ") + e.what());
  }
}

void require_method(const torch::jit::Module& module, const fs::path& file, const std::string& method,
                    const std::string& why) {
  if (!module.find_method(method)) throw BundleError(file, "TorchScript module has no method '" + method + "' (" + why + ")");
}

// Runs `check` and turns TorchScript runtime failures into a BundleError naming the file.
template <typename Fn>
auto checked(const fs::path& file, const std::string& what, Fn&& check) {
  try {
    return check();
  } catch (const c10::Error& e) {
    throw BundleError(file, what + " failed: " + e.what_without_backtrace());
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // std::bad_alloc included: a shape the manifest promises may not fit
    throw BundleError(file, what + " failed: " + e.what());
  }
}

// A head must be affine for TVE's transfer rule: h(a z1 + (1-a) z2) = a h(z1) + (1-a) h(z2).
void check_head(Head& head, int embedding_dim, const torch::Device& device) {
  checked(head.spec.file, "running the head on a [1," + std::to_string(embedding_dim) + "] embedding", [&] {
    const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(device);
    auto out = head.logits(torch::zeros({1, embedding_dim}, options));
    const auto classes = static_cast<int64_t>(head.spec.labels.size());
    if (out.dim() != 2 || out.size(0) != 1 || out.size(1) != classes) {
      throw BundleError(head.spec.file, "head maps [1," + std::to_string(embedding_dim) + "] to " + shape_of(out) +
                                            ", expected [1, " + std::to_string(classes) + "] (one logit per label)");
    }
    auto generator = at::detail::createCPUGenerator(1234);
    auto z1 = torch::randn({4, embedding_dim}, generator).to(device);
    auto z2 = torch::randn({4, embedding_dim}, generator).to(device);
    const double a = 0.3;
    auto mixed = head.logits(a * z1 + (1 - a) * z2);
    auto expected = a * head.logits(z1) + (1 - a) * head.logits(z2);
    const double scale = expected.abs().max().item<double>() + 1.0;
    const double error = (mixed - expected).abs().max().item<double>();
    if (error > 1e-3 * scale) {
      throw BundleError(head.spec.file, "head is not affine (W z + b): TVE applies it to meta-attributions, "
                                        "which is only meaningful for a linear head");
    }
    // An affine h is determined by its values at 0 and at the unit vectors, taken a block of unit
    // vectors at a time so that memory stays bounded for wide embeddings.
    head.bias = head.logits(torch::zeros({1, embedding_dim}, options))[0].clone();  // [C]
    constexpr int64_t kUnitsPerPass = 1024;
    std::vector<torch::Tensor> columns;  // W^T rows, in blocks
    for (int64_t from = 0; from < embedding_dim; from += kUnitsPerPass) {
      const int64_t count = std::min<int64_t>(kUnitsPerPass, embedding_dim - from);
      auto units = torch::zeros({count, embedding_dim}, options);
      units.narrow(1, from, count).copy_(torch::eye(count, options));
      columns.push_back(head.logits(units) - head.bias);  // [count,C]
    }
    head.weight = torch::cat(columns).t().contiguous();  // [C,D]
    return 0;
  });
}

// embed_and_explain(x) must give what embed(x) and forward_with_embedding(x, embed(x)) give: tve
// then uses its z to pick the classes, so an explainer whose copy of the encoder drifted from
// target.pt would explain another model's predictions. Same operations on the same weights agree
// to rounding; the bound is relative to the embeddings' scale (random-weight encoders reach 1e3).
void check_embed_and_explain(Bundle& bundle, const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& pos,
                             const torch::Tensor& neg) {
  const auto& file = bundle.manifest().explainer->file;
  auto [z_own, pos_own, neg_own] =
      checked(file, std::string(kExplainerEmbedAndExplain) + "(x)", [&] { return bundle.embed_and_explain(x); });
  const double scale = std::max(1.0, z.abs().max().item<double>());
  auto differs = [&](const torch::Tensor& a, const torch::Tensor& b) {
    return a.sizes() != b.sizes() || (a - b).abs().max().item<double>() > 1e-4 * scale;
  };
  if (differs(z_own, z)) {
    throw BundleError(file, std::string(kExplainerEmbedAndExplain) + "() gives an embedding " + shape_of(z_own) +
                                " that differs from target.pt's embed(x) " + shape_of(z) +
                                ": its copy of the encoder is not the target's (retrain or re-export the explainer)");
  }
  if (differs(pos_own, pos) || differs(neg_own, neg)) {
    throw BundleError(file, std::string(kExplainerEmbedAndExplain) + "() gives meta-attributions that differ from " +
                                kExplainerWithEmbedding + "(x, embed(x))");
  }
}

}  // namespace

std::vector<std::string> read_labels_file(const fs::path& file) {
  // A named pipe would block the open, a device such as /dev/zero would never end: only regular
  // files and bounded reads (character devices, like /dev/null, are read up to the bound).
  std::error_code ec;
  const auto type = fs::status(file, ec).type();
  if (type == fs::file_type::not_found) throw BundleError(file, "cannot open labels file: it does not exist");
  if (type != fs::file_type::regular && type != fs::file_type::character) {
    throw BundleError(file, "labels file " + not_a_regular_file(file));
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) throw BundleError(file, "cannot open labels file");
  std::string text(kMaxLabelsBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) throw BundleError(file, "read error in labels file");
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxLabelsBytes) {
    throw BundleError(file, "labels file is larger than " + std::to_string(kMaxLabelsBytes >> 20) + " MiB");
  }
  std::vector<std::string> labels;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    labels.push_back(line);
  }
  while (!labels.empty() && labels.back().empty()) labels.pop_back();
  return labels;
}

Manifest read_manifest(const fs::path& bundle_dir) {
  const fs::path file = bundle_dir / "manifest.json";
  std::error_code ec;
  if (!fs::is_directory(bundle_dir, ec)) throw BundleError(bundle_dir, "bundle folder does not exist");
  if (!fs::exists(file, ec)) throw BundleError(file, "bundle has no manifest.json");
  if (const auto problem = not_a_regular_file(file); !problem.empty()) throw BundleError(file, problem);
  if (fs::file_size(file, ec) > kMaxManifestBytes) {
    throw BundleError(file, "manifest is larger than " + std::to_string(kMaxManifestBytes >> 20) + " MiB");
  }

  json root;
  {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw BundleError(file, "cannot open manifest");
    try {
      root = json::parse(in);
    } catch (const json::exception& e) {  // syntax, and numbers out of range such as 1e400
      throw BundleError(file, std::string("not valid JSON: ") + e.what());
    }
  }
  ManifestReader reader(file);
  if (!root.is_object()) reader.fail("manifest must be a JSON object");

  Manifest m;
  m.dir = bundle_dir;
  {
    const json& version = reader.member(root, "format_version", "");
    if (!version.is_number_integer()) reader.fail("'format_version' must be an integer, got " + version.dump());
    if (version != json(kBundleFormatVersion)) {
      reader.fail("format_version " + version.dump() + " is not supported; this tve reads version " +
                  std::to_string(kBundleFormatVersion));
    }
    m.format_version = kBundleFormatVersion;
  }
  m.name = reader.string(root, "name", "");
  m.description = reader.optional_string(root, "description", "", "");
  m.architecture = reader.string(root, "architecture", "");
  if (m.architecture.empty()) reader.fail("'architecture' must name the model family (vit, resnet, swin, ...)");
  if (root.contains("features_layout")) {
    const std::string layout = reader.string(root, "features_layout", "");
    if (layout != "map" && layout != "tokens") reader.fail("'features_layout' is '" + layout + "', expected map or tokens");
    m.features_layout = layout == "tokens" ? FeaturesLayout::Tokens : FeaturesLayout::Map;
  } else if (m.architecture == "vit") {
    m.features_layout = FeaturesLayout::Tokens;
  } else if (m.architecture != "resnet" && m.architecture != "swin") {
    m.features_layout_known = false;
  }

  const json& input = reader.member(root, "input", "");
  m.input.height = reader.int_in_range(input, "height", "input", 1, kMaxInputSide);
  m.input.width = reader.int_in_range(input, "width", "input", 1, kMaxInputSide);
  const std::string resize = reader.string(input, "resize", "input");
  if (resize == "stretch") {
    m.input.resize = ResizePolicy::Stretch;
  } else if (resize == "center_crop") {
    m.input.resize = ResizePolicy::CenterCrop;
    m.input.crop_fraction = reader.number(input, "crop_fraction", "input", 0.875, kMinCropFraction, 1.0);
  } else {
    reader.fail("'input.resize' is '" + resize + "', expected stretch or center_crop");
  }
  // Pixels are in [0,1] before normalisation, so is their mean.
  m.input.mean = reader.rgb_triple(input, "mean", "input", 0.0, 1.0);
  m.input.std = reader.rgb_triple(input, "std", "input", kMinStd, kMaxStd);

  m.grid = reader.int_in_range(root, "grid", "", 1, kMaxGrid);
  m.radius = reader.int_in_range(root, "radius", "", 0, kMaxGrid);
  m.embedding_dim = reader.int_in_range(root, "embedding_dim", "", 1, kMaxEmbeddingDim);
  if (m.grid > m.input.height || m.grid > m.input.width) reader.fail("'grid' is larger than the input size");

  m.target = reader.head(reader.member(root, "target", ""), "target", "target");

  if (root.contains("explainer")) {
    const json& e = root.at("explainer");
    ExplainerSpec spec;
    spec.file = reader.bundle_file(e, "file", "explainer");
    spec.sha256 = reader.sha256(e, "explainer");
    spec.target_sha256 = reader.string(e, "target_sha256", "explainer");
    spec.lambda_pos = reader.number(e, "lambda_pos", "explainer", 1.0, 0.0, kMaxLambda);
    spec.lambda_neg = reader.number(e, "lambda_neg", "explainer", 1.0, 0.0, kMaxLambda);
    if (spec.lambda_pos == 0 && spec.lambda_neg == 0) {
      reader.fail("'explainer.lambda_pos' and 'explainer.lambda_neg' are both 0: every TVE map would be 0");
    }
    spec.smooth = reader.boolean(e, "smooth", "explainer", true);
    m.explainer = spec;
  }
  if (root.contains("heads")) {
    const json& heads = root.at("heads");
    if (!heads.is_object()) reader.fail("'heads' must be an object mapping task names to heads");
    for (const auto& [name, entry] : heads.items()) {
      if (name == "target") reader.fail("'heads.target' is reserved for the target's own head");
      m.heads.push_back(reader.head(entry, name, "heads." + name));
    }
  }
  if (root.contains("provenance")) m.provenance = root.at("provenance");
  return m;
}

torch::Tensor Head::logits(const torch::Tensor& embedding) {
  if (dtype == torch::kFloat32) return call_method(module, method, embedding);
  return call_method(module, method, embedding.to(dtype)).to(torch::kFloat32);
}

Bundle Bundle::load(const fs::path& bundle_dir, const torch::Device& device, Precision precision) {
  Bundle bundle(read_manifest(bundle_dir), device);
  const Manifest& m = bundle.manifest_;

  // Hashes and method presence first: cheap, and the most common ways a bundle goes wrong.
  bundle.target_ = load_module(m.target.file, m.target.sha256, device);
  for (const char* method : {"embed", "head", "forward"}) {
    require_method(bundle.target_, m.target.file, method, "required of every target, see docs/bundle-format.md");
  }
  bundle.has_features_ = bundle.target_.find_method("features").has_value();
  if (bundle.has_features_) {
    require_method(bundle.target_, m.target.file, "classify", "a target with features() must also have classify()");
    bundle.has_embed_features_ = bundle.target_.find_method("embed_features").has_value();
  }
  if (m.explainer) {
    if (m.explainer->target_sha256 != m.target.sha256) {
      throw BundleError(m.explainer->file, "explainer was trained against target SHA-256 " + m.explainer->target_sha256 +
                                               " but the bundle's target.pt is " + m.target.sha256);
    }
    bundle.explainer_ = load_module(m.explainer->file, m.explainer->sha256, device);
    bundle.explainer_takes_embedding_ = bundle.explainer_->find_method(kExplainerWithEmbedding).has_value();
    bundle.explainer_embeds_ =
        bundle.explainer_takes_embedding_ && bundle.explainer_->find_method(kExplainerEmbedAndExplain).has_value();
  }
  std::vector<Head> heads;
  for (const auto& spec : m.heads) heads.push_back(Head{spec, load_module(spec.file, spec.sha256, device), "forward", {}, {}});

  // The modules are loaded outside inference mode: parameters loaded in it would be inference
  // tensors, which autograd refuses, and gradient methods need the weights. The checks need no
  // autograd.
  torch::InferenceMode no_autograd;

  // One dummy forward pass on zeros checks every shape the manifest promises.
  const int64_t d = m.embedding_dim;
  const auto classes = static_cast<int64_t>(m.target.labels.size());
  const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  auto x = torch::zeros({1, 3, m.input.height, m.input.width}, options);  // [1,3,H,W] f32
  const std::string input_shape = shape_of(x);

  auto z = checked(m.target.file, "embed() on a " + input_shape + " input", [&] { return bundle.embed(x); });
  if (z.dim() != 2 || z.size(0) != 1 || z.size(1) != d) {
    throw BundleError(m.target.file, "embed() gives " + shape_of(z) + ", expected [1, " + std::to_string(d) +
                                         "] (embedding_dim " + std::to_string(d) + " in the manifest)");
  }
  auto y = checked(m.target.file, "forward() on a " + input_shape + " input", [&] { return bundle.logits(x); });
  if (y.dim() != 2 || y.size(0) != 1 || y.size(1) != classes) {
    throw BundleError(m.target.file, "forward() gives " + shape_of(y) + ", expected [1, " + std::to_string(classes) +
                                         "] (the manifest lists " + std::to_string(classes) + " labels)");
  }
  if (!torch::allclose(call_method(bundle.target_, "head", z), y, 1e-4, 1e-4)) {
    throw BundleError(m.target.file, "forward(x) differs from head(embed(x)); forward must be head after embed");
  }
  // The target's own head is its head() method; it is checked and then called like any other head.
  heads.insert(heads.begin(), Head{m.target, bundle.target_, "head", {}, {}});
  if (bundle.has_features_) {
    // The layout gradient methods read, stated by the manifest or implied by its architecture
    // (docs/bundle-format.md), must be what features() returns.
    if (!m.features_layout_known) {
      throw BundleError(m.dir / "manifest.json", "architecture '" + m.architecture + "' is not one whose features() layout "
                                                 "tve knows (expected vit, resnet or swin), so the manifest must state "
                                                 "'features_layout' (map or tokens)");
    }
    const auto f = checked(m.target.file, "features() on a " + input_shape + " input", [&] { return bundle.features(x); });
    const bool tokens = m.features_layout == FeaturesLayout::Tokens;
    const bool fits = tokens ? f.dim() == 3 && f.size(0) == 1 && f.size(1) >= 2 && f.size(2) == d
                             : f.dim() == 4 && f.size(0) == 1 && f.size(1) == d;
    if (!fits) {
      throw BundleError(m.target.file, "features() gives " + shape_of(f) + ", but architecture '" + m.architecture +
                                           "' with features layout '" + (tokens ? "tokens" : "map") + "' means " +
                                           (tokens ? "[1, 1+N, " : "[1, ") + std::to_string(d) +
                                           (tokens ? "] (class token and N patch tokens)" : ", h, w] (a feature map)"));
    }
    auto logits_from_features = checked(m.target.file, "classify(features(x))", [&] {
      return bundle.classify(f);
    });
    if (!torch::allclose(logits_from_features, y, 1e-4, 1e-4)) {
      throw BundleError(m.target.file, "classify(features(x)) differs from forward(x)");
    }
    if (bundle.has_embed_features_) {
      auto z_from_features = checked(m.target.file, "embed_features(features(x))", [&] { return bundle.embed_features(f); });
      if (z_from_features.sizes() != z.sizes() || !torch::allclose(z_from_features, z, 1e-4, 1e-4)) {
        throw BundleError(m.target.file, "embed_features(features(x)) gives " + shape_of(z_from_features) +
                                             ", which differs from embed(x) " + shape_of(z));
      }
    }
  }
  if (bundle.explainer_) {
    const int64_t cells = static_cast<int64_t>(m.grid) * m.grid;
    auto [pos, neg] = checked(m.explainer->file, "forward() on a " + input_shape + " input", [&] {
      return bundle.meta_attributions(x);
    });
    for (const auto* t : {&pos, &neg}) {
      if (t->dim() != 3 || t->size(0) != 1 || t->size(1) != cells || t->size(2) != d) {
        throw BundleError(m.explainer->file, "explainer output is " + shape_of(*t) + ", expected [1, " +
                                                 std::to_string(cells) + ", " + std::to_string(d) + "] (grid " +
                                                 std::to_string(m.grid) + "x" + std::to_string(m.grid) +
                                                 ", embedding_dim " + std::to_string(d) + ")");
      }
    }
    if (bundle.explainer_takes_embedding_) {
      // Only psi_neg's estimate of E(x) may change when E(x) is given; psi_pos must not.
      auto [pos_z, neg_z] = checked(m.explainer->file, std::string(kExplainerWithEmbedding) + "(x, embed(x))", [&] {
        return bundle.meta_attributions(x, z);
      });
      if (pos_z.sizes() != pos.sizes() || neg_z.sizes() != neg.sizes()) {
        throw BundleError(m.explainer->file, std::string(kExplainerWithEmbedding) + "() gives " + shape_of(pos_z) + " and " +
                                                 shape_of(neg_z) + ", forward() gives " + shape_of(pos));
      }
      if (!torch::allclose(pos_z, pos, 1e-4, 1e-4)) {
        throw BundleError(m.explainer->file, std::string(kExplainerWithEmbedding) + "() changes psi_pos; only psi_neg may use E(x)");
      }
      if (bundle.explainer_embeds_) check_embed_and_explain(bundle, x, z, pos_z, neg_z);
    }
  }
  for (auto& head : heads) {
    check_head(head, m.embedding_dim, device);
    bundle.heads_.emplace(head.spec.name, std::move(head));
  }
  if (precision != Precision::Fp32) bundle.cast_modules(precision, x);
  return bundle;
}

namespace {

// The floating-point parameters and buffers of `module` to `dtype`, in place. Not Module::to(dtype):
// LibTorch 1.13's casts every tensor, integer buffers too (a Swin's relative_position_index, then
// refused as an index).
void cast_floating(torch::jit::Module& module, torch::ScalarType dtype) {
  for (auto tensor : module.parameters(/*recurse=*/true)) {
    if (tensor.is_floating_point()) tensor.set_data(tensor.to(dtype));
  }
  for (auto tensor : module.buffers(/*recurse=*/true)) {
    if (tensor.is_floating_point()) tensor.set_data(tensor.to(dtype));
  }
}

}  // namespace

void Bundle::cast_modules(Precision precision, const torch::Tensor& sample) {
  // After the float32 checks: their tolerances (1e-4) are for float32, and the heads' W and b are
  // read off in float32. The target's own head is a method of the target, so it is cast with it.
  const auto dtype = scalar_type(precision);
  precision_ = precision;
  {
    // Cast outside inference mode (load() checks in it): parameters made in it would be inference
    // tensors, which autograd refuses, and gradient methods need the weights.
    torch::InferenceMode autograd_allowed(false);
    cast_floating(target_, dtype);
    if (explainer_) cast_floating(*explainer_, dtype);
  }
  heads_.at("target").dtype = dtype;
  const auto refuse = [&](const fs::path& file, const std::string& why) {
    return DeviceError("--precision " + to_string(precision) + " on " + device_.str() + ": " + build_description() +
                       " cannot run " + file.string() + " in it: " + why);
  };
  // One pass of each module in the new precision: an operation without kernels for it on this
  // device fails here, before any image, and not as an internal error mid-run.
  torch::InferenceMode no_autograd;
  for (const auto& [file, run] : std::vector<std::pair<fs::path, std::function<void()>>>{
           {manifest_.target.file, [&] { embed(sample); }},
           {manifest_.explainer ? manifest_.explainer->file : fs::path(), [&] {
              if (explainer_) meta_attributions(sample, embed(sample));
            }}}) {
    try {
      run();
    } catch (const c10::Error& e) {
      throw refuse(file, e.what_without_backtrace());
    }
  }
}

torch::Tensor Bundle::to_model(const torch::Tensor& t) const {
  return precision_ == Precision::Fp32 ? t : t.to(scalar_type(precision_));
}

// Each takes float32 and returns float32; to_model() and .to(kFloat32) are no-ops in fp32 and
// differentiable otherwise (gradient methods take gradients through them).
torch::Tensor Bundle::embed(const torch::Tensor& images) {
  return call_method(target_, "embed", to_model(images)).to(torch::kFloat32);
}

torch::Tensor Bundle::logits(const torch::Tensor& images) {
  return target_.forward({to_model(images)}).toTensor().to(torch::kFloat32);
}

torch::Tensor Bundle::features(const torch::Tensor& images) {
  return call_method(target_, "features", to_model(images)).to(torch::kFloat32);
}

torch::Tensor Bundle::classify(const torch::Tensor& features) {
  return call_method(target_, "classify", to_model(features)).to(torch::kFloat32);
}

torch::Tensor Bundle::embed_features(const torch::Tensor& features) {
  if (!has_embed_features_) throw BundleError(manifest_.target.file, "target has no embed_features() method");
  return call_method(target_, "embed_features", to_model(features)).to(torch::kFloat32);
}

torch::Tensor Bundle::logits_from_features(const torch::Tensor& features, Head& head) {
  if (has_embed_features_) return head.logits(embed_features(features));
  if (head.spec.name == "target" && head.method == "head") return classify(features);
  throw BundleError(manifest_.target.file, "target has no embed_features() method, so a gradient method on features() can "
                                           "explain only the target's own head, not '" + head.spec.name +
                                           "' (re-export the target with embed_features, docs/bundle-format.md)");
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> Bundle::embed_and_explain(const torch::Tensor& images) {
  if (!explainer_embeds_) {
    throw BundleError(manifest_.dir, std::string("bundle's explainer has no ") + kExplainerEmbedAndExplain + "() method");
  }
  auto out = explainer_->get_method(kExplainerEmbedAndExplain)({to_model(images)});
  if (!out.isTuple() || out.toTuple()->elements().size() != 3) {
    throw BundleError(manifest_.explainer->file,
                      std::string("explainer ") + kExplainerEmbedAndExplain + "() must return a tuple (z, psi_pos, psi_neg)");
  }
  const auto& parts = out.toTuple()->elements();
  return {parts[0].toTensor().to(torch::kFloat32), parts[1].toTensor().to(torch::kFloat32),
          parts[2].toTensor().to(torch::kFloat32)};
}

std::pair<torch::Tensor, torch::Tensor> Bundle::meta_attributions(const torch::Tensor& images, const torch::Tensor& embeddings) {
  if (!explainer_) throw BundleError(manifest_.dir, "bundle has no explainer (no 'explainer' in manifest.json)");
  const bool with_embedding = embeddings.defined() && explainer_takes_embedding_;
  auto out = with_embedding ? explainer_->get_method(kExplainerWithEmbedding)({to_model(images), to_model(embeddings)})
                            : explainer_->forward({to_model(images)});
  if (!out.isTuple() || out.toTuple()->elements().size() != 2) {
    throw BundleError(manifest_.explainer->file, std::string("explainer ") + (with_embedding ? kExplainerWithEmbedding : "forward") +
                                                     "() must return a tuple (psi_pos, psi_neg)");
  }
  const auto& parts = out.toTuple()->elements();
  return {parts[0].toTensor().to(torch::kFloat32), parts[1].toTensor().to(torch::kFloat32)};
}

Head& Bundle::head(const std::string& name) {
  auto it = heads_.find(name);
  if (it == heads_.end()) {
    std::string known;
    for (const auto& n : head_names()) known += (known.empty() ? "" : ", ") + n;
    throw InvalidArgument(manifest_.dir, "bundle has no head '" + name + "'; it has: " + known);
  }
  return it->second;
}

std::vector<std::string> Bundle::head_names() const {
  std::vector<std::string> names{"target"};
  for (const auto& spec : manifest_.heads) names.push_back(spec.name);
  return names;
}

Head Bundle::load_external_head(const fs::path& head_file, std::optional<std::vector<std::string>> labels) {
  if (const auto problem = not_a_regular_file(head_file); !problem.empty()) throw BundleError(head_file, "head file " + problem);
  HeadSpec spec;
  spec.name = head_file.stem().string();
  spec.task = spec.name;
  spec.file = head_file;
  spec.sha256 = sha256_file(head_file);
  Head head{spec, load_module(head_file, spec.sha256, device_), "forward", {}, {}};  // outside inference mode: see load()
  torch::InferenceMode no_autograd;
  if (labels) {
    head.spec.labels = std::move(*labels);
  } else if (head.module.hasattr("labels")) {
    try {
      for (const auto& label : head.module.attr("labels").toListRef()) head.spec.labels.push_back(label.toStringRef());
    } catch (const c10::Error&) {
      throw BundleError(head_file, "the head's 'labels' attribute is not a list of strings");
    }
  } else {
    throw BundleError(head_file, "head has no 'labels' attribute; give its labels with --labels FILE (one per line)");
  }
  if (head.spec.labels.empty()) throw BundleError(head_file, "head has no labels (empty labels file?)");
  check_head(head, manifest_.embedding_dim, device_);
  return head;
}

}  // namespace tve
