#include "tve/evaluate.hpp"

#include <torch/torch.h>

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <set>

#include "tve/error.hpp"
#include "tve/image.hpp"
#include "tve/log.hpp"
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

// The passes are per image; the time is the batch's, divided by its images (a method runs on the
// whole batch at once), with the batch named so that it is counted once in the summary.
json cost_record(const AttributionCost& cost, double ms, double forward_ms, const json& batch) {
  return {{"forward_passes", cost.forward_passes}, {"backward_passes", cost.backward_passes},
          {"explainer_passes", cost.explainer_passes}, {"ms", ms},
          {"forward_equivalents", forward_ms > 0 ? ms / forward_ms : 0.0}, {"batch", batch}};
}

// One method's whole explanation of a batch, its own forward pass included, as `tve explain` runs
// it: the cost column counts every pass an explanation needs (docs/methods.md). The classes come
// from the run's shared forward pass, so that every method explains the same ones.
Attribution explain_with_forward_pass(AttributionMethod& method, Bundle& bundle, Head& head, const torch::Tensor& images,
                                      const torch::Tensor& classes) {
  const Stopwatch stopwatch;
  const ForwardPass pass = method.forward_pass(bundle, images);
  Attribution attribution = method.explain(bundle, head, images, classes, pass);
  attribution.seconds = stopwatch.seconds();
  attribution.cost.forward_passes += 1;
  return attribution;
}

// Adds one record of an image and method to its method's totals. Time and cost enter once per
// batch, from the first record of that batch: copies of one measurement are not independent
// samples, and a bootstrap over them would give intervals far too narrow.
void add_to_totals(EvaluationReport& report, const json& record, std::set<std::string>& timed_batches) {
  const auto& name = record.at("method").get_ref<const std::string&>();
  auto& totals = report.totals[name];
  auto& metrics = totals.metrics;
  metrics["deletion_auc"].push_back(record.at("deletion_auc").get<double>());
  metrics["insertion_auc"].push_back(record.at("insertion_auc").get<double>());
  const auto& cost = record.at("cost");
  const auto& batch = cost.at("batch");
  if (timed_batches.insert(name + "/" + batch.at("run").get<std::string>() + "/" + batch.at("index").dump()).second) {
    metrics["ms"].push_back(cost.at("ms").get<double>());
    metrics["forward_equivalents"].push_back(cost.at("forward_equivalents").get<double>());
  }
  if (const auto fidelity = record.find("fidelity"); fidelity != record.end()) {
    for (const char* key : {"spearman", "pearson", "top10_iou"}) metrics[key].push_back(fidelity->at(key).get<double>());
  }
  const auto& mask = record.at("mask");
  if (mask.is_object() && mask.contains("pointing_hit")) {
    metrics["pointing_game"].push_back(mask.at("pointing_hit").get<bool>() ? 1.0 : 0.0);
    const auto& share = mask.at("above_median_share_on_object");
    if (!share.is_null()) metrics["above_median_share_on_object"].push_back(share.get<double>());
  }
  const auto deletion = record.at("deletion_curve").get<std::vector<double>>();
  const auto insertion = record.at("insertion_curve").get<std::vector<double>>();
  if (totals.deletion_curve_sum.empty()) {
    totals.deletion_curve_sum.assign(deletion.size(), 0.0);
    totals.insertion_curve_sum.assign(insertion.size(), 0.0);
  }
  if (deletion.size() == totals.deletion_curve_sum.size() && insertion.size() == totals.insertion_curve_sum.size()) {
    for (size_t s = 0; s < deletion.size(); ++s) {
      totals.deletion_curve_sum[s] += deletion[s];
      totals.insertion_curve_sum[s] += insertion[s];
    }
    ++totals.curves;
  }
}

// An earlier run's records of one input, one per method asked in that order, when they are
// complete and were made with these settings and parameters; null otherwise. A record with an
// error (the image, its map or its mask) makes the input run again: the file may have been mended.
json reusable_records(const std::vector<json>& records, const std::vector<std::string>& methods,
                      const std::vector<json>& parameters, const json& settings) {
  json out = json::array();
  for (size_t m = 0; m < methods.size(); ++m) {
    const json* found = nullptr;
    for (const auto& record : records) {
      if (record.contains("error") || record.value("method", "") != methods[m] || record.value("settings", json()) != settings ||
          record.value("parameters", json()) != parameters[m] || !record.contains("deletion_auc")) {
        continue;
      }
      const auto mask = record.value("mask", json());
      if (mask.is_object() && mask.contains("error")) return nullptr;
      found = &record;
    }
    if (found == nullptr) return nullptr;
    out.push_back(*found);
  }
  return out;
}

std::string random_run_id() {
  std::random_device source;
  char text[17];
  std::snprintf(text, sizeof text, "%08x%08x", source(), source());
  return text;
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

std::map<std::string, std::vector<json>> read_previous_records(const std::vector<fs::path>& files) {
  std::map<std::string, std::vector<json>> out;
  for (const auto& file : files) {
    std::ifstream in(file, std::ios::binary);
    std::string line;
    while (std::getline(in, line)) {
      // A killed run may have left its last line cut: it does not parse and is skipped.
      const json record = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!record.is_object() || !record.contains("input") || !record["input"].is_string()) continue;
      out[record["input"].get<std::string>()].push_back(record);
    }
  }
  return out;
}

EvaluationReport run_evaluation(Bundle& bundle, Head& head, const std::vector<InputFile>& inputs,
                                const EvaluationOptions& options, const EvaluationCallbacks& callbacks) {
  const Manifest& manifest = bundle.manifest();
  const int grid = manifest.grid;
  EvaluationReport report;
  report.methods = options.methods;
  report.curve_points = grid + 1;
  std::vector<std::unique_ptr<AttributionMethod>> methods;
  std::vector<json> parameters;
  for (const auto& name : options.methods) {
    methods.push_back(make_method(name, bundle, options.method_settings));
    parameters.push_back(methods.back()->parameters());
  }
  // The reference maps: occlusion with the bundle's window and lambdas (TVE's target quantity),
  // shared with the "occlusion" entry when that is one of the methods and left at its defaults.
  std::unique_ptr<AttributionMethod> reference;
  if (options.fidelity) reference = make_method("occlusion", bundle);
  const auto reference_parameters = reference ? reference->parameters() : json();
  std::optional<size_t> reference_index;
  for (size_t m = 0; m < methods.size() && reference; ++m) {
    if (methods[m]->name() == "occlusion" && parameters[m] == reference_parameters) reference_index = m;
  }

  const std::string run_id = random_run_id();
  std::set<std::string> timed_batches;
  int64_t batch_index = 0;
  bool warmed_up = false;
  BatchOptions batch_options = options.batch;
  batch_options.keep_images = true;  // masks are matched to the image's own size and crop
  if (!options.previous.empty()) {
    batch_options.reuse = [&](const InputFile& input) {
      const auto found = options.previous.find(input.path.string());
      return found == options.previous.end() ? json() : reusable_records(found->second, options.methods, parameters, options.settings);
    };
  }
  size_t done = 0;
  read_in_batches(inputs, manifest.input, batch_options, [&](std::vector<ImageJob>& jobs) {
    for (const auto& job : jobs) {
      if (job.reused()) {
        for (const auto& record : job.previous) {
          add_to_totals(report, record, timed_batches);
          if (callbacks.on_record) callbacks.on_record(record);
        }
        if (job.previous[0].value("mask", json()).is_null()) ++report.without_mask;
        ++report.images;
        ++report.resumed;
        continue;
      }
      if (job.ok()) continue;
      ++report.failed;
      report.failures.emplace_back(job.input.path.string(), job.error);
      if (callbacks.on_record) callbacks.on_record({{"input", job.input.path.string()}, {"error", job.error}});
    }
    const torch::Tensor images = stack_good(jobs, bundle.device());
    if (images.defined()) {
      const auto good = static_cast<double>(images.size(0));
      auto pick_classes = [&](const torch::Tensor& logits) {
        return (options.class_index ? torch::full({logits.size(0), 1}, *options.class_index, torch::kLong)
                                    : logits.argmax(1, /*keepdim=*/true))
            .to(bundle.device());
      };
      if (!warmed_up) {
        // Untimed: the first calls of a TorchScript module profile and optimise its graph, and
        // the first passes allocate; timing them made swin's first batch of occlusion cost 22.9
        // forward passes per pass. One image through each method is enough.
        warmed_up = true;
        const auto one = images.slice(0, 0, 1);
        torch::Tensor one_embeddings, one_logits;
        {
          torch::InferenceMode no_autograd;
          one_embeddings = bundle.embed(one);
          one_logits = head.logits(one_embeddings);
        }
        const auto one_classes = pick_classes(one_logits);  // outside inference mode, as below: gradients save it
        for (auto& method : methods) explain_with_forward_pass(*method, bundle, head, one, one_classes);
        if (reference && !reference_index) reference->explain(bundle, head, one, one_classes, one_embeddings);
      }
      torch::Tensor embeddings, logits;
      const Stopwatch forward_clock;
      {
        torch::InferenceMode no_autograd;
        embeddings = bundle.embed(images);
        logits = head.logits(embeddings);
      }
      const double forward_ms = forward_clock.milliseconds() / good;
      const auto classes = pick_classes(logits);
      const auto probabilities = torch::softmax(logits.to(torch::kCPU, torch::kFloat32), 1);
      const json batch{{"run", run_id}, {"index", batch_index++}, {"images", images.size(0)}};

      std::vector<Attribution> attributions;
      for (auto& method : methods) attributions.push_back(explain_with_forward_pass(*method, bundle, head, images, classes));
      torch::Tensor reference_maps;
      if (reference) {
        reference_maps = reference_index ? attributions[*reference_index].maps
                                         : reference->explain(bundle, head, images, classes, embeddings).maps;
      }

      torch::InferenceMode no_autograd;
      int64_t row = 0;
      for (const auto& job : jobs) {
        if (!job.ok() || job.reused()) continue;
        const auto image = images[row];
        const int64_t cls = classes[row][0].item<int64_t>();
        std::optional<std::vector<double>> object_share;
        json mask_record;  // null: no mask
        for (const auto& candidate : mask_candidates(job.input.path, options.masks)) {
          std::error_code ec;
          const bool present = fs::exists(candidate, ec);
          if (!present && !ec) continue;
          try {
            if (ec) throw ImageError(candidate, "cannot check the mask: " + ec.message());
            object_share = to_vector(object_share_per_cell(candidate, job.image->width(), job.image->height(), manifest.input, grid));
            mask_record = {{"file", candidate.string()}};
          } catch (const Error& e) {
            // Said on stderr and in the summary, not only in the records: a mask that cannot be
            // used leaves its image without the localisation measures.
            mask_record = {{"file", candidate.string()}, {"error", e.what()}};
            report.mask_failures.emplace_back(candidate.string(), e.what());
            logger().warn("{}; {} is evaluated without a mask", e.what(), job.input.path.string());
          }
          break;
        }
        if (mask_record.is_null()) ++report.without_mask;
        const auto start = options.insertion_from_blur ? blurred(image) : torch::zeros_like(image);
        for (size_t m = 0; m < methods.size(); ++m) {
          const auto& name = options.methods[m];
          const auto map = to_vector(attributions[m].maps[row][0]);
          if (!std::all_of(map.begin(), map.end(), [](double v) { return std::isfinite(v); })) {
            // Reported, not averaged in: one NaN would make every median of the method meaningless.
            ++report.totals[name].non_finite;
            if (callbacks.on_record) {
              callbacks.on_record({{"input", job.input.path.string()}, {"method", name}, {"error", "map is not finite"}});
            }
            continue;
          }
          if (callbacks.on_map) callbacks.on_map(job, name, attributions[m].maps[row][0].to(torch::kCPU, torch::kFloat32));
          const auto [deletion, insertion] = deletion_insertion(bundle, head, image, cls, cells_by_attribution(map), start);
          json record{{"input", job.input.path.string()},
                      {"method", name},
                      {"parameters", parameters[m]},
                      {"settings", options.settings},
                      {"class", {{"index", cls},
                                 {"label", head.spec.labels[static_cast<size_t>(cls)]},
                                 {"probability", probabilities[row][cls].item<double>()}}},
                      {"deletion_auc", area_under_curve(deletion)},
                      {"insertion_auc", area_under_curve(insertion)},
                      {"deletion_curve", deletion},
                      {"insertion_curve", insertion}};
          record["cost"] = cost_record(attributions[m].cost, 1e3 * attributions[m].seconds / good, forward_ms, batch);
          if (reference_maps.defined()) {
            const auto occlusion = to_vector(reference_maps[row][0]);
            record["fidelity"] = {{"spearman", spearman(map, occlusion)},
                                  {"pearson", pearson(map, occlusion)},
                                  {"top10_iou", top_fraction_iou(map, occlusion, 0.1)}};
          }
          record["mask"] = mask_record;
          if (object_share) {
            record["mask"]["pointing_hit"] = pointing_game_hit(map, *object_share);
            const auto share = above_median_share_on_object(map, *object_share);
            record["mask"]["above_median_share_on_object"] = share ? json(*share) : json(nullptr);
          }
          add_to_totals(report, record, timed_batches);
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
