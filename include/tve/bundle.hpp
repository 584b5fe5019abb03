#pragma once
// Model bundles (docs/bundle-format.md): a folder with manifest.json and TorchScript files.
// read_manifest() checks the manifest alone; Bundle::load() checks everything, files included,
// before any image is processed, and throws BundleError naming the file and the mismatch.

#include <torch/script.h>

#include <array>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "tve/input_spec.hpp"
#include "tve/runtime.hpp"

namespace tve {

inline constexpr int kBundleFormatVersion = 1;

// A linear classification head as the manifest describes it: the target's own or a downstream one.
struct HeadSpec {
  std::string name;  // "target" for the target's own head, else the key under "heads"
  std::string task;
  std::filesystem::path file;  // absolute
  std::string sha256;
  std::vector<std::string> labels;
  nlohmann::json metrics;  // free-form, may be null
};

struct ExplainerSpec {
  std::filesystem::path file;  // absolute
  std::string sha256;
  std::string target_sha256;  // the target.pt the explainer was trained against
  double lambda_pos = 1.0;
  double lambda_neg = 1.0;
  bool smooth = true;
};

// What features(x) returns, which gradient methods read: a feature map [B,D,h,w] (CNNs, Swin) or a
// token sequence [B,1+N,D] with the class token first and N = h*w patch tokens (ViT).
enum class FeaturesLayout { Map, Tokens };

struct Manifest {
  std::filesystem::path dir;  // the bundle folder
  int format_version = 0;
  std::string name;
  std::string description;
  std::string architecture;  // vit, resnet, swin, or any other family name
  // From the manifest's "features_layout" ("map" or "tokens"); when absent, implied by a known
  // architecture (vit: tokens; resnet, swin: map).
  FeaturesLayout features_layout = FeaturesLayout::Map;
  bool features_layout_known = true;  // false: an unknown architecture that does not state it
  InputSpec input;
  int grid = 0;
  int radius = 0;
  int embedding_dim = 0;
  HeadSpec target;
  std::optional<ExplainerSpec> explainer;
  std::vector<HeadSpec> heads;  // downstream heads, in manifest order
  nlohmann::json provenance;    // free-form, may be null
};

// Parses and checks dir/manifest.json (schema, types, version) and reads label files.
// Opens no TorchScript file and computes no hash.
Manifest read_manifest(const std::filesystem::path& bundle_dir);

// A loaded head: an affine map from the encoder's embedding to class logits, logits = z W^T + b.
struct Head {
  HeadSpec spec;
  torch::jit::Module module;
  std::string method = "forward";  // the target's own head is its "head" method
  // W [C,D] and b [C], read off the module once when it is loaded and checked to be affine
  // (b = h(0), row j of W^T = h(e_j) - b). They let TVE apply only the explained classes' rows to
  // the meta-attributions instead of the whole head.
  torch::Tensor weight;
  torch::Tensor bias;
  // What the module computes in: float32, or the bundle's --precision for the target's own head,
  // which lives in the (cast) target. logits() takes and returns float32 either way.
  torch::ScalarType dtype = torch::kFloat32;

  torch::Tensor logits(const torch::Tensor& embedding);  // [B,D] f32 -> [B,C] f32, through the module
};

class Bundle {
 public:
  // Validates everything (docs/bundle-format.md, "What the loader checks") and moves the modules
  // to `device`. Throws BundleError. The checks run in float32; then, for another `precision`, the
  // target and the explainer are cast to it (downstream and external heads stay float32) and run
  // once more on a dummy input: a model this LibTorch cannot run in that precision on that device
  // is a DeviceError. Every method below takes and returns float32 tensors whatever the
  // precision, so that callers (attribution methods, the transfer rule, maps) never see bf16.
  static Bundle load(const std::filesystem::path& bundle_dir, const torch::Device& device,
                     Precision precision = Precision::Fp32);

  const Manifest& manifest() const { return manifest_; }
  const torch::Device& device() const { return device_; }
  Precision precision() const { return precision_; }

  torch::Tensor embed(const torch::Tensor& images);   // [B,3,H,W] normalised -> [B,D]
  torch::Tensor logits(const torch::Tensor& images);  // [B,3,H,W] -> [B,C], the target's own head

  // The target's own head and the manifest's downstream heads, by name ("target" or a task key).
  Head& head(const std::string& name);
  std::vector<std::string> head_names() const;

  // Loads a TorchScript head from outside the bundle and checks it maps [1,D] to [1,C] and is
  // affine. Labels come from `labels` or, when empty, from the module's own `labels` attribute
  // (heads written by `tve fit-head` carry one). Used to explain heads trained after the
  // explainer: TVE's transfer.
  Head load_external_head(const std::filesystem::path& head_file, std::optional<std::vector<std::string>> labels);

  bool has_explainer() const { return explainer_.has_value(); }
  // psi_pos, psi_neg: each [B,G*G,D], cell k = row * G + col. Throws if there is no explainer.
  // With `embeddings` (the target's E(images), [B,D]) and an explainer that defines
  // forward_with_embedding, that method runs instead of forward(): it takes E(x) from the caller
  // rather than estimating it again (docs/bundle-format.md).
  std::pair<torch::Tensor, torch::Tensor> meta_attributions(const torch::Tensor& images,
                                                            const torch::Tensor& embeddings = {});
  bool explainer_takes_embedding() const { return explainer_takes_embedding_; }
  // An explainer that holds an exact copy of the whole encoder (the shipped ResNet and Swin ones,
  // and every explainer train_explainer.py writes) defines embed_and_explain(x): E(x) and the
  // meta-attributions from one pass over the encoder's layers, where embed() followed by
  // meta_attributions() runs the layers they share twice. Returns (z [B,D], psi_pos, psi_neg),
  // psi as meta_attributions(images, z); loading checked that z equals embed(images).
  bool explainer_embeds() const { return explainer_embeds_; }
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> embed_and_explain(const torch::Tensor& images);

  bool has_gradient_methods() const { return has_features_; }
  torch::Tensor features(const torch::Tensor& images);
  torch::Tensor classify(const torch::Tensor& features);
  // features -> z [B,D], so that embed(x) == embed_features(features(x)). Optional in a bundle;
  // without it, gradient methods on features() can explain the target's own head only.
  bool has_embed_features() const { return has_embed_features_; }
  torch::Tensor embed_features(const torch::Tensor& features);
  // The logits of `head` from features(x): head(embed_features(f)), or classify(f) for the target's
  // own head. Throws BundleError when the bundle cannot give them for this head.
  torch::Tensor logits_from_features(const torch::Tensor& features, Head& head);

 private:
  Bundle(Manifest manifest, torch::Device device) : manifest_(std::move(manifest)), device_(device) {}

  // Casts the target and explainer to `precision` and runs each once on `sample`.
  void cast_modules(Precision precision, const torch::Tensor& sample);
  // images (or features, embeddings) cast to the modules' number type; outputs go back to float32
  torch::Tensor to_model(const torch::Tensor& t) const;

  Manifest manifest_;
  torch::Device device_;
  Precision precision_ = Precision::Fp32;
  torch::jit::Module target_;
  std::optional<torch::jit::Module> explainer_;
  std::map<std::string, Head> heads_;  // "target" and each downstream head
  bool has_features_ = false;
  bool has_embed_features_ = false;
  bool explainer_takes_embedding_ = false;
  bool explainer_embeds_ = false;
};

// Reads a labels file: UTF-8, one label per line, trailing empty lines ignored.
std::vector<std::string> read_labels_file(const std::filesystem::path& file);

}  // namespace tve
