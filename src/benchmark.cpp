#include "tve/benchmark.hpp"

#include <sys/resource.h>
#include <torch/torch.h>

#include <algorithm>
#include <deque>
#include <future>

#include "detail/model_lanes.hpp"
#include "tve/error.hpp"
#include "tve/stopwatch.hpp"

using nlohmann::json;

namespace tve {
namespace {

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

}  // namespace

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // Linux reports KiB
}

json run_benchmark(Bundle& bundle, Head& head, AttributionMethod& method, const BenchmarkOptions& options) {
  if (options.repeats < 1) throw InvalidArgument("--repeats must be at least 1");
  const auto& input = bundle.manifest().input;
  const auto options_f32 = torch::TensorOptions().dtype(torch::kFloat32).device(bundle.device());
  torch::manual_seed(0);

  // The model work of one explanation, exactly as run_explain does it: forward for the class,
  // then the attribution method.
  auto forward = [&](const torch::Tensor& x) {
    torch::InferenceMode no_autograd;
    return head.logits(bundle.embed(x));
  };
  auto explain = [&](const torch::Tensor& x) {
    const ForwardPass pass = method.forward_pass(bundle, x);
    torch::Tensor logits;
    {
      torch::InferenceMode no_autograd;
      logits = head.logits(pass.embeddings);
    }
    // Outside inference mode: gradient methods save the classes for backward, which an inference
    // tensor refuses ("Inference tensors cannot be saved for backward", exit 6 before 2026-12-03).
    const auto classes = std::get<1>(logits.topk(1, 1));
    return method.explain(bundle, head, x, classes, pass).maps;  // in the mode the method needs
  };
  auto synchronize = [&] {
    if (bundle.device().is_cuda()) torch::cuda::synchronize();
  };

  // 1. Per-image latency, batch 1, interleaved so that load on the machine hits both alike.
  const auto one = torch::randn({1, 3, input.height, input.width}, options_f32);
  for (int i = 0; i < 3; ++i) explain(one);  // warm-up (TorchScript profiles its first runs)
  std::vector<double> forward_s, explain_s;
  for (int i = 0; i < options.repeats; ++i) {
    forward_s.push_back(seconds_of([&] { forward(one); synchronize(); }));
    explain_s.push_back(seconds_of([&] { explain(one); synchronize(); }));
  }
  json report{{"model", bundle.manifest().name}, {"method", method.name()}, {"device", bundle.device().str()},
              {"precision", to_string(bundle.precision())},
              {"latency", {{"forward_ms", 1e3 * median(forward_s)},
                           {"explain_ms", 1e3 * median(explain_s)},
                           {"explain_over_forward", median(explain_s) / median(forward_s)},
                           {"repeats", options.repeats}}}};

  // 2. Folder throughput against pure compute on the same number of images.
  if (!options.files.empty()) {
    ExplainOptions explain_options;
    explain_options.batch.batch_size = options.batch_size;
    explain_options.batch.prefetch = options.prefetch;
    explain_options.batch.decode_threads = options.decode_threads;
    explain_options.batch.model_lanes = options.model_lanes;
    explain_options.out_dir = options.out;
    explain_options.formats = options.formats;
    const auto batch = torch::randn({options.batch_size, 3, input.height, input.width}, options_f32);
    // Pure model compute, seconds per image, as the pipeline batches it: in as many lanes, with
    // as many batches in flight as run_explain keeps.
    ModelLanes lanes(options.model_lanes, at::get_num_threads());
    auto compute_seconds_per_image = [&](int64_t images) {
      const double s = seconds_of([&] {
        std::deque<std::future<bool>> running;
        for (int64_t done = 0; done < images; done += options.batch_size) {
          const torch::Tensor x = done + options.batch_size <= images ? batch : batch.slice(0, 0, images - done);
          running.push_back(lanes.run<bool>([&explain, x] {
            explain(x);
            return true;
          }));
          if (running.size() >= lanes.tasks_in_flight()) {
            running.front().get();
            running.pop_front();
          }
        }
        for (auto& waiting : running) waiting.get();
        synchronize();
      });
      return s / static_cast<double>(images);
    };
    // Compute is timed before and after the pipeline and averaged: on a shared machine the load
    // drifts over a minute-long run, and one measurement on one side of the pipeline swung the
    // ratio from 0.66 to 0.89 between runs (docs/performance.md).
    const double compute_before = compute_seconds_per_image(static_cast<int64_t>(options.files.size()));
    ExplainSummary summary;
    const double pipeline_s = seconds_of([&] { summary = run_explain(bundle, head, method, options.files, explain_options, {}); });
    const auto count = static_cast<int64_t>(summary.succeeded);
    if (count == 0) {
      throw ImageError("benchmark: none of the " + std::to_string(options.files.size()) + " images could be explained");
    }
    const double compute_after = compute_seconds_per_image(count);
    const double compute_per_image = 0.5 * (compute_before + compute_after);
    const double pipeline_per_image = pipeline_s / static_cast<double>(count);
    report["throughput"] = {{"images", count},
                            {"failed", summary.failed},
                            {"batch_size", options.batch_size},
                            {"pipeline_images_per_s", 1.0 / pipeline_per_image},
                            {"compute_images_per_s", 1.0 / compute_per_image},
                            {"compute_images_per_s_before", 1.0 / compute_before},
                            {"compute_images_per_s_after", 1.0 / compute_after},
                            {"pipeline_over_compute", compute_per_image / pipeline_per_image},
                            {"writes", options.out.has_value()},
                            {"decode_in_parallel", options.prefetch},
                            {"model_lanes", options.model_lanes}};
  }
  report["peak_rss_mib"] = peak_rss_mib();
  return report;
}

}  // namespace tve
