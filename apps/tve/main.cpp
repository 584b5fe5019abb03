// tve: the command line. Each command is a file (command_<name>.cpp) that registers its options
// with CLI11 and calls the library; this file puts them together, runs the one given and maps
// errors to exit codes. Results go to stdout as JSON lines, diagnostics to stderr.

#include <CLI/CLI.hpp>
#include <torch/cuda.h>
#include <torch/version.h>

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli.hpp"
#include "tve/atomic_file.hpp"
#include "tve/log.hpp"
#include "tve/runtime.hpp"
#include "tve/version.hpp"

namespace {

using namespace tve::cli;

// The commands, in the order --help lists them. A new command is a file and a line here.
constexpr Command (*kCommands[])(CLI::App&, CommonOptions&) = {
    add_predict_command, add_explain_command, add_eval_command,   add_fit_head_command,
    add_bench_command,   add_models_command,  add_generate_command,
};

// `tve --version`: what a bug report needs first, the LibTorch underneath and whether it can use a
// GPU: CUDA compiled into this LibTorch (Debian's has none) and the devices this process sees.
std::string version_text() {
  std::string devices = "cpu";
  if (tve::cuda_compiled()) {
    devices += ", cuda (compiled in; " + std::to_string(torch::cuda::device_count()) + " device(s) visible)";
  } else {
    devices += " only (no CUDA compiled into this LibTorch)";
  }
  return std::string("tve ") + tve::kVersion + "\nLibTorch " + TORCH_VERSION + "\ndevices: " + devices;
}

// OpenBLAS picked its kernels as this process loaded it, before main(). When it fell back to a
// generic set on a CPU with wider vector units (tve::better_openblas_core), runs this program again
// with the right set requested through OPENBLAS_CORETYPE, which it reads only as it loads: one more
// start-up (0.7-1.1 s here) for matrix multiplies up to 4x faster (docs/performance.md). A user's
// own OPENBLAS_CORETYPE is respected. Returns only when nothing was restarted.
void restart_with_better_blas_kernels(char** argv) {
  if (std::getenv(tve::kOpenBlasCoreVariable) != nullptr) return;
  const auto blas = tve::detect_blas();
  const auto better = tve::better_openblas_core(blas);
  if (!better) return;
  tve::logger().debug("OpenBLAS chose its {} kernels on a CPU that runs its {} ones: restarting with {}={}", blas.core,
                      *better, tve::kOpenBlasCoreVariable, *better);
  setenv(tve::kOpenBlasCoreVariable, better->c_str(), 1);
  execv("/proc/self/exe", argv);
  tve::logger().debug("restart failed ({}); carrying on with the {} kernels", std::strerror(errno), blas.core);
  unsetenv(tve::kOpenBlasCoreVariable);
}

}  // namespace

int main(int argc, char** argv) {
  tve::keep_freed_memory();  // before the first tensor: see runtime.hpp
  CLI::App app{"tve: explain image classifiers with TVE, the Transferable Vision Explainer"};
  app.set_version_flag("--version", version_text, "Print tve's version, its LibTorch's and the devices it supports");
  app.require_subcommand(1);
  app.footer(R"(Examples:
  tve explain image.png --model vit --out out      heatmap overlay, raw map and JSON in out/
  tve explain photos/ --model vit --top-k 3 --out out --format overlay
  tve explain scans/ --model vit --head fashion    a downstream head the explainer never saw
  tve fit-head --model vit --data labelled/ --out my_head.pt
  tve explain labelled/ --model vit --head-file my_head.pt --out out
  tve predict image.png --model vit                classify only, one JSON line per image
  find . -name '*.jpg' | tve explain - --model resnet --out out
  tve models                                       list the model bundles found

Exit codes: 0 all inputs succeeded, 1 some failed, 2 usage error, 3 bad or missing model bundle,
4 no input succeeded, 5 device unavailable, 6 internal error, 7 output could not be written,
8 explain --expect: a result differs from the golden file (docs/ci.md).

Models: looked up in --models-dir, then $TVE_MODELS_DIR, then the shipped bundles: <prefix>/share/tve/models
for an installed tve (<prefix>/bin/tve), the source tree's models/ for one in a build folder.)");

  CommonOptions common;
  std::vector<Command> commands;
  for (const auto add : kCommands) commands.push_back(add(app, common));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? kSuccess : kUsage;
  }
  if (common.quiet) tve::logger().set_level(spdlog::level::err);
  if (common.verbose) tve::logger().set_level(spdlog::level::debug);

  const Command* chosen = nullptr;
  for (const auto& command : commands) {
    if (command.app->parsed()) chosen = &command;
  }
  if (chosen == nullptr) return kUsage;
  if (chosen->runs_models && common.device.rfind("cuda", 0) != 0) restart_with_better_blas_kernels(argv);
  tve::clean_up_temporaries_on_signals();  // Ctrl-C or a scheduler's SIGTERM leaves no temporary file

  int code = kUsage;
  try {
    if (chosen->runs_models) {
      // A device or precision this build or machine cannot give is one line and exit 5 before
      // any input is scanned or output folder made (load_bundle_for_run asks again, at no cost).
      tve::check_precision(tve::select_device(common.device), tve::parse_precision(common.precision));
    }
    code = chosen->run();
  } catch (const tve::Error& e) {
    tve::logger().error("{}", e.what());
    return exit_code_for_error(e);
  } catch (const std::exception& e) {
    tve::logger().error("internal error: {}", e.what());
    return kInternalError;
  }
  // Whatever a command printed must have reached stdout (the listing of `tve models` included).
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    tve::logger().error("stdout: cannot write results: {}", std::strerror(errno));
    return kOutputError;
  }
  return code;
}
