#pragma once
// What the commands of the tve command line share: exit codes, the options every command has,
// loading the model for a run, JSON lines on stdout, the progress bar. Each command is one file
// (command_<name>.cpp) defining its add_<name>_command, and one line of kCommands in main.cpp.
// Everything else lives in the library (include/tve).

#include <CLI/CLI.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tve/bundle.hpp"
#include "tve/error.hpp"
#include "tve/methods.hpp"
#include "tve/stopwatch.hpp"

namespace tve::cli {

// Documented in README.md, "Exit codes".
enum ExitCode : int {
  kSuccess = 0,
  kSomeInputsFailed = 1,
  kUsage = 2,
  kBundleError = 3,
  kNoInputSucceeded = 4,
  kDeviceError = 5,
  kInternalError = 6,
  kOutputError = 7,
  kExpectationsFailed = 8,  // explain --expect: a result differs from the golden file (docs/ci.md)
};

int exit_code_for_error(const Error& error);
// A run over many inputs: all succeeded, some failed, or none did (or there were none).
int exit_code_for(size_t succeeded, size_t failed);

// CLI11's Range lets NaN through (every comparison with NaN is false); a NaN or infinite lambda or
// alpha would only show up later as a map of NaNs.
extern const CLI::Validator kFinite;

struct CommonOptions {
  std::optional<std::string> models_dir;
  std::string device = "auto";
  std::string precision = "fp32";
  std::optional<int> threads;
  std::optional<int> lanes;
  bool verbose = false;
  bool quiet = false;
};

// Options with the same meaning in every command that has them.
void add_common_options(CLI::App* command, CommonOptions& common);
void add_model_option(CLI::App* command, std::string& model);
// --lanes, for the commands whose model work runs in lanes (explain, bench).
void add_lanes_option(CLI::App* command, CommonOptions& common);
void add_batch_size_option(CLI::App* command, int& batch_size);
void add_max_pixels_option(CLI::App* command, int64_t& max_pixels);

// Which head to explain: one of the bundle's (--head) or a TorchScript file (--head-file, with
// --labels when the file carries none).
struct HeadChoice {
  std::string name = "target";
  std::optional<std::string> file;
  std::optional<std::string> labels_file;
  std::optional<Head> external;  // loaded by choose_head
};
void add_head_options(CLI::App* command, HeadChoice& choice);
Head& choose_head(Bundle& bundle, HeadChoice& choice);

// --method, its choices and help from the registry; methods_help() is that help for other options.
void add_method_option(CLI::App* command, std::string& method);
std::string methods_help(const std::string& lead);
// The settings methods read: --lambda-pos, --lambda-neg, --smooth, --radius, --steps, --samples,
// --seed, --rise-cells.
void add_method_settings(CLI::App* command, MethodSettings& settings);
// --progress: auto (a bar when stderr is a terminal), always, never.
void add_progress_option(CLI::App* command, std::string& mode);
void add_inputs_option(CLI::App* command, std::vector<std::string>& inputs, bool required);

std::optional<std::filesystem::path> as_path(const std::optional<std::string>& text);

// One JSON record per line on stdout, written at once, so that `| jq` and progress watchers see
// results as they come. A line that cannot be written (a full disk) throws OutputError, and what
// was written of it is removed again (write_line_whole): a script reading stdout would otherwise
// get a cut, silent result. (A closed pipe ends the process by SIGPIPE, as for any Unix tool.)
void print_json_line(const nlohmann::json& record);

// Measuring thread counts costs about a dozen forward passes: worth it from this many images on.
constexpr size_t kMeasureThreadsFromImages = 32;

// Loads the bundle named by --model (empty: the default) on the chosen device and picks thread
// counts, by measurement when the run is long enough (`images`) to repay it; lanes are a candidate
// only for a command whose model work runs in them (`runs_in_lanes`: explain, bench).
Bundle load_bundle_for_run(const CommonOptions& common, const std::string& model, int batch_size, size_t images,
                           bool runs_in_lanes = false);

// A one-line progress bar on stderr, redrawn in place; only when stderr is a terminal (or forced).
class ProgressBar {
 public:
  explicit ProgressBar(const std::string& mode);  // auto, always, never
  ~ProgressBar();
  void update(size_t done, size_t total);

 private:
  bool enabled_;
  bool drawn_ = false;
  Stopwatch clock_;
};

// A command: its CLI11 sub-app, and how to run it once the command line is parsed.
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
  bool runs_models = false;  // may compute on the CPU: worth fitting OpenBLAS's kernels first
};

Command add_predict_command(CLI::App& tve, CommonOptions& common);
Command add_explain_command(CLI::App& tve, CommonOptions& common);
Command add_eval_command(CLI::App& tve, CommonOptions& common);
Command add_fit_head_command(CLI::App& tve, CommonOptions& common);
Command add_bench_command(CLI::App& tve, CommonOptions& common);
Command add_models_command(CLI::App& tve, CommonOptions& common);
// Hidden: the bash completion script, the man page (both from these option tables) and bundle names.
Command add_generate_command(CLI::App& tve, CommonOptions& common);

}  // namespace tve::cli
