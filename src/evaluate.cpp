#include "tve/evaluate.hpp"

#include <torch/torch.h>

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>

#include "tve/error.hpp"
#include "tve/image.hpp"
#include "tve/stopwatch.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace tve {
namespace {

std::vector<double> to_vector(const torch::Tensor& t) {
  const auto flat = t.to(torch::kCPU, torch::kDouble).contiguous().reshape(-1);
  return {flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel()};
}

// The explained class's softmax probability along the deletion and the insertion path of one image
// [3,H,W]: after removing (inserting) the first s*G cells of `order`, s = 0..G. Removed pixels take
// the baseline 0; inserted ones come into `start` (0, or a blurred copy).
std::pair<std::vector<double>, std::vector<double>> deletion_insertion(Bundle& bundle, Head& head, const torch::Tensor& image,
                                                                       int64_t cls, const std::vector<int64_t>& order,
                                                                       const torch::Tensor& start) {
  const int grid = bundle.manifest().grid;
  const int64_t cells = int64_t{grid} * grid, steps = grid;
  // Step s has removed the cells ranked below s * cells / steps in `order`.
  std::vector<int64_t> rank_of_cell(order.size());
  for (size_t r = 0; r < order.size(); ++r) rank_of_cell[static_cast<size_t>(order[r])] = static_cast<int64_t>(r);
  const auto ranks = torch::tensor(rank_of_cell, torch::kLong);                                // [N]
  const auto removed_counts = torch::div(torch::arange(steps + 1, torch::kLong) * cells, steps, "floor");  // [S+1]
  const auto removed = (ranks.unsqueeze(0) < removed_counts.unsqueeze(1)).to(torch::kFloat32);  // [S+1,N]
  const auto removed_pixels =
      cells_to_pixels(removed.view({steps + 1, grid, grid}), image.size(1), image.size(2)).unsqueeze(1).to(image.device());
  const auto deleted = image.unsqueeze(0) * (1 - removed_pixels);
  const auto inserted = image.unsqueeze(0) * removed_pixels + start.unsqueeze(0) * (1 - removed_pixels);
  const auto probabilities = torch::softmax(head.logits(bundle.embed(torch::cat({deleted, inserted}))), 1).select(1, cls);
  const auto values = to_vector(probabilities);
  return {{values.begin(), values.begin() + steps + 1}, {values.begin() + steps + 1, values.end()}};
}

torch::Tensor blurred(const torch::Tensor& image) {
  // A Gaussian of sigma 1/16 of the side: the object's shape is gone, its colours stay.
  const double sigma = static_cast<double>(std::max(image.size(1), image.size(2))) / 16;
  const auto radius = static_cast<int64_t>(std::ceil(3 * sigma));
  const auto offsets = torch::arange(-radius, radius + 1, torch::kFloat32);
  auto kernel = torch::exp(-offsets.pow(2) / (2 * sigma * sigma));
  kernel = (kernel / kernel.sum()).to(image.device());
  namespace F = torch::nn::functional;
  auto x = image.unsqueeze(1);  // [3,1,H,W]: each channel alone
  x = F::conv2d(F::pad(x, F::PadFuncOptions({radius, radius, 0, 0}).mode(torch::kReplicate)), kernel.view({1, 1, 1, -1}));
  x = F::conv2d(F::pad(x, F::PadFuncOptions({0, 0, radius, radius}).mode(torch::kReplicate)), kernel.view({1, 1, -1, 1}));
  return x.squeeze(1);
}

json cost_record(const AttributionCost& cost, double ms, double forward_ms) {
  return {{"forward_passes", cost.forward_passes}, {"backward_passes", cost.backward_passes},
          {"explainer_passes", cost.explainer_passes}, {"ms", ms},
          {"forward_equivalents", forward_ms > 0 ? ms / forward_ms : 0.0}};
}

}  // namespace

bool is_mask_file(const fs::path& file) {
  const auto stem = file.stem().string();
  return stem.size() > 5 && stem.compare(stem.size() - 5, 5, ".mask") == 0;
}

std::vector<fs::path> mask_candidates(const fs::path& image, const std::optional<fs::path>& masks) {
  const auto name = image.stem().string() + ".mask.png";
  if (!masks) return {image.parent_path() / name};
  return {*masks / mirrored_output_path(image).parent_path() / name, *masks / name};
}

torch::Tensor object_share_per_cell(const fs::path& mask, int image_width, int image_height, const InputSpec& spec, int grid) {
  const Image decoded = load_image(mask);
  if (decoded.width() != image_width || decoded.height() != image_height) {
    throw ImageError(mask, "mask is " + std::to_string(decoded.width()) + "x" + std::to_string(decoded.height()) +
                               " but its image is " + std::to_string(image_width) + "x" + std::to_string(image_height));
  }
  std::vector<cv::Mat> channels;
  cv::split(decoded.pixels, channels);
  if (channels.size() == 4) channels.pop_back();  // alpha says how to draw the mask, not where the object is
  cv::Mat object = cv::Mat::zeros(decoded.pixels.size(), CV_8U);
  for (const auto& channel : channels) object |= (channel != 0);
  cv::Mat region;
  object(pixel_rect(input_region(image_width, image_height, spec), image_width, image_height)).convertTo(region, CV_32F, 1.0 / 255);
  cv::Mat resized;  // INTER_AREA: each model pixel gets the share of object pixels it covers
  cv::resize(region, resized, cv::Size(spec.width, spec.height), 0, 0, cv::INTER_AREA);
  const auto pixels = torch::from_blob(resized.data, {spec.height, spec.width}, torch::kFloat32).clone();
  return mean_over_cells(pixels, grid);
}

EvaluationReport run_evaluation(Bundle& bundle, Head& head, const std::vector<InputFile>& inputs,
                                const EvaluationOptions& options, const EvaluationCallbacks& callbacks) {
  const Manifest& manifest = bundle.manifest();
  const int grid = manifest.grid;
  EvaluationReport report;
  report.methods = options.methods;
  report.curve_points = grid + 1;
  std::vector<std::unique_ptr<AttributionMethod>> methods;
  for (const auto& name : options.methods) methods.push_back(make_method(name, bundle, options.method_settings));
  // The reference maps: occlusion with the bundle's window and lambdas (TVE's target quantity),
  // shared with the "occlusion" entry when that is one of the methods and left at its defaults.
  std::unique_ptr<AttributionMethod> reference;
  if (options.fidelity) reference = make_method("occlusion", bundle);
  const auto reference_parameters = reference ? reference->parameters() : json();

  BatchOptions batch_options = options.batch;
  batch_options.keep_images = true;  // masks are matched to the image's own size and crop
  size_t done = 0;
  read_in_batches(inputs, manifest.input, batch_options, [&](std::vector<ImageJob>& jobs) {
    for (const auto& job : jobs) {
      if (job.ok()) continue;
      ++report.failed;
      report.failures.emplace_back(job.input.path.string(), job.error);
      if (callbacks.on_record) callbacks.on_record({{"input", job.input.path.string()}, {"error", job.error}});
    }
    const torch::Tensor images = stack_good(jobs, bundle.device());
    if (images.defined()) {
      const auto good = static_cast<double>(images.size(0));
      torch::Tensor embeddings, logits;
      const Stopwatch forward_clock;
      {
        torch::InferenceMode no_autograd;
        embeddings = bundle.embed(images);
        logits = head.logits(embeddings);
      }
      const double forward_ms = forward_clock.milliseconds() / good;
      const auto classes = (options.class_index ? torch::full({images.size(0), 1}, *options.class_index, torch::kLong)
                                                : logits.argmax(1, /*keepdim=*/true))
                               .to(bundle.device());
      const auto probabilities = torch::softmax(logits.to(torch::kCPU, torch::kFloat32), 1);

      std::vector<Attribution> attributions;
      for (auto& method : methods) attributions.push_back(method->explain(bundle, head, images, classes, embeddings));
      torch::Tensor reference_maps;
      if (reference) {
        for (size_t m = 0; m < methods.size(); ++m) {
          if (methods[m]->name() == "occlusion" && methods[m]->parameters() == reference_parameters) {
            reference_maps = attributions[m].maps;
          }
        }
        if (!reference_maps.defined()) reference_maps = reference->explain(bundle, head, images, classes, embeddings).maps;
      }

      torch::InferenceMode no_autograd;
      int64_t row = 0;
      for (const auto& job : jobs) {
        if (!job.ok()) continue;
        const auto image = images[row];
        const int64_t cls = classes[row][0].item<int64_t>();
        std::optional<std::vector<double>> object_share;
        json mask_record;  // null: no mask
        for (const auto& candidate : mask_candidates(job.input.path, options.masks)) {
          std::error_code ec;
          if (!fs::exists(candidate, ec)) continue;
          try {
            object_share = to_vector(object_share_per_cell(candidate, job.image->width(), job.image->height(), manifest.input, grid));
            mask_record = {{"file", candidate.string()}};
          } catch (const Error& e) {
            mask_record = {{"file", candidate.string()}, {"error", e.what()}};
          }
          break;
        }
        const auto start = options.insertion_from_blur ? blurred(image) : torch::zeros_like(image);
        for (size_t m = 0; m < methods.size(); ++m) {
          const auto& name = options.methods[m];
          auto& totals = report.totals[name];
          const auto map = to_vector(attributions[m].maps[row][0]);
          if (!std::all_of(map.begin(), map.end(), [](double v) { return std::isfinite(v); })) {
            // Reported, not averaged in: one NaN would make every median of the method meaningless.
            ++totals.non_finite;
            if (callbacks.on_record) {
              callbacks.on_record({{"input", job.input.path.string()}, {"method", name}, {"error", "map is not finite"}});
            }
            continue;
          }
          const auto [deletion, insertion] = deletion_insertion(bundle, head, image, cls, cells_by_attribution(map), start);
          json record{{"input", job.input.path.string()},
                      {"method", name},
                      {"parameters", methods[m]->parameters()},
                      {"class", {{"index", cls},
                                 {"label", head.spec.labels[static_cast<size_t>(cls)]},
                                 {"probability", probabilities[row][cls].item<double>()}}},
                      {"deletion_auc", area_under_curve(deletion)},
                      {"insertion_auc", area_under_curve(insertion)},
                      {"deletion_curve", deletion},
                      {"insertion_curve", insertion}};
          const double ms = 1e3 * attributions[m].seconds / good;
          record["cost"] = cost_record(attributions[m].cost, ms, forward_ms);
          auto& metrics = totals.metrics;
          metrics["deletion_auc"].push_back(record["deletion_auc"]);
          metrics["insertion_auc"].push_back(record["insertion_auc"]);
          metrics["ms"].push_back(ms);
          metrics["forward_equivalents"].push_back(record["cost"]["forward_equivalents"]);
          if (reference_maps.defined()) {
            const auto occlusion = to_vector(reference_maps[row][0]);
            record["fidelity"] = {{"spearman", spearman(map, occlusion)},
                                  {"pearson", pearson(map, occlusion)},
                                  {"top10_iou", top_fraction_iou(map, occlusion, 0.1)}};
            for (const char* key : {"spearman", "pearson", "top10_iou"}) metrics[key].push_back(record["fidelity"][key]);
          }
          record["mask"] = mask_record;
          if (object_share) {
            record["mask"]["pointing_hit"] = pointing_game_hit(map, *object_share);
            record["mask"]["positive_share_in_mask"] = positive_share_in_mask(map, *object_share);
            metrics["pointing_game"].push_back(record["mask"]["pointing_hit"].get<bool>() ? 1.0 : 0.0);
            metrics["positive_share_in_mask"].push_back(record["mask"]["positive_share_in_mask"]);
          }
          if (totals.deletion_curve_sum.empty()) {
            totals.deletion_curve_sum.assign(deletion.size(), 0.0);
            totals.insertion_curve_sum.assign(insertion.size(), 0.0);
          }
          for (size_t s = 0; s < deletion.size(); ++s) {
            totals.deletion_curve_sum[s] += deletion[s];
            totals.insertion_curve_sum[s] += insertion[s];
          }
          ++totals.curves;
          if (callbacks.on_record) callbacks.on_record(record);
        }
        ++report.images;
        ++row;
      }
    }
    done += jobs.size();
    if (callbacks.on_progress) callbacks.on_progress(done, inputs.size());
  });
  return report;
}

}  // namespace tve
