#pragma once
// Model CI (docs/ci.md): record what a model predicts and where it looks on sample images (a golden
// file), and later check that a run still agrees with it: the same top-1 label, probabilities
// within a tolerance, maps that rank the cells alike and peak in the same place. Works on the
// records explain emits, so any method, head and bundle can be checked.

#include <cstddef>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace tve {

inline constexpr const char* kGoldenFormat = "tve-golden/1";

// Defaults measured in docs/ci.md: far above what threads, batch sizes and runs change (nothing
// beyond float rounding), well below what a retrained or perturbed model changes.
struct GoldenTolerances {
  double probability = 0.01;   // largest change of the top-1 probability
  double map_spearman = 0.95;  // smallest rank correlation of a map with the recorded one
  int peak_cells = 1;          // how far (in cells, either direction) the map's peak may move
};

// A golden file from explain records: per input (the path as given) its top-k classes and the map
// of each explained class, with the model, its target's SHA-256, head, method and parameters.
// `identity` holds those run-wide fields. Records with an error are left out.
nlohmann::json make_golden(const nlohmann::json& identity, const std::vector<nlohmann::json>& records);

// Reads and checks a golden file: a regular file (not a folder, pipe or device) holding at least
// one image, each entry with its top-k classes (label, index, probability in [0,1]) and at least
// one explained class with a square map of numbers. Throws InvalidArgument naming the file, and
// the entry, and what is wrong.
nlohmann::json read_golden(const std::filesystem::path& file);

// Checks that every class the golden file names (top-k and explained, by index and label) is a
// class of the head this run explains, `labels`: a class the head lacks could never be compared.
// Throws InvalidArgument naming the file, the entry and the class.
void check_golden_classes(const nlohmann::json& golden, const std::filesystem::path& file,
                          const std::vector<std::string>& labels, const std::string& head_name);

struct ImageCheck {
  std::string input;
  std::vector<std::string> problems;  // empty: as recorded
  double seconds = 0;
  bool passed() const { return problems.empty(); }
};

struct GoldenCheck {
  std::vector<ImageCheck> images;      // recorded inputs in file order, then inputs the file lacks
  std::vector<std::string> run_notes;  // differences of the run as a whole (another model file, method...)
  size_t failed() const;
};

// Compares a run's records with a golden file: a missing image, an image that failed, one the file
// does not know, a changed top-1 label, probability, map ranking or peak, another number of
// explained classes or another class in a recorded map's place are each a problem. Each input
// is one ImageCheck, however many problems it has.
GoldenCheck check_against_golden(const nlohmann::json& golden, const nlohmann::json& identity,
                                 const std::vector<nlohmann::json>& records, const GoldenTolerances& tolerances);

// The check as JUnit XML: one test case per image, a <failure> for each that did not pass.
std::string junit_xml(const GoldenCheck& check, const std::string& suite_name);

}  // namespace tve
