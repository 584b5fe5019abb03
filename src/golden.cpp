#include "tve/golden.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include "tve/atomic_file.hpp"
#include "tve/error.hpp"
#include "tve/metrics.hpp"

using nlohmann::json;

namespace tve {
namespace {

std::vector<double> flatten(const json& rows) {
  std::vector<double> values;
  for (const auto& row : rows) {
    for (const auto& v : row) values.push_back(v.get<double>());
  }
  return values;
}

// The (row, col) of the largest value of a G x G map given as rows.
std::pair<int64_t, int64_t> peak_of(const json& rows) {
  const auto values = flatten(rows);
  const auto width = static_cast<int64_t>(rows.at(0).size());
  const auto best = static_cast<int64_t>(cells_by_attribution(values).front());
  return {best / width, best % width};
}

std::string fixed(double value, int digits = 4) {
  std::ostringstream out;
  out.precision(digits);
  out << std::fixed << value;
  return out.str();
}

std::string xml_escaped(const std::string& text) {
  std::string out;
  for (const unsigned char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        // XML 1.0 allows no control characters but tab, newline and carriage return.
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
          out += '?';
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out;
}

void compare_image(const json& recorded, const json& record, const GoldenTolerances& tolerances, ImageCheck& check) {
  const auto& was = recorded.at("explained");
  const auto& now = record.at("explained");
  const std::string old_top = recorded.at("top_k").at(0).at("label"), new_top = record.at("top_k").at(0).at("label");
  if (old_top != new_top) {
    check.problems.push_back("top-1 changed: '" + old_top + "' (" + fixed(recorded["top_k"][0]["probability"]) + ") -> '" +
                             new_top + "' (" + fixed(record["top_k"][0]["probability"]) + ")");
  }
  const double old_p = recorded["top_k"][0]["probability"], new_p = record["top_k"][0]["probability"];
  if (old_top == new_top && std::abs(old_p - new_p) > tolerances.probability) {
    check.problems.push_back("probability of '" + old_top + "' moved " + fixed(old_p) + " -> " + fixed(new_p) +
                             " (tolerance " + fixed(tolerances.probability) + ")");
  }
  if (was.size() != now.size()) {
    check.problems.push_back("explains " + std::to_string(now.size()) + " class(es), recorded " + std::to_string(was.size()) +
                             " (another --top-k or --class than the recording's?)");
  }
  for (size_t k = 0; k < std::min(was.size(), now.size()); ++k) {
    const std::string label = was[k].at("label");
    if (now[k].at("label") != label) {
      // The top-1 problem already says so when the explained class is the top-1.
      if (!(label == old_top && now[k].at("label") == new_top)) {
        check.problems.push_back("explained class " + std::to_string(k + 1) + " is '" + now[k].at("label").get<std::string>() +
                                 "', recorded '" + label + "': its map is not compared");
      }
      continue;
    }
    const auto before = flatten(was[k].at("values")), after = flatten(now[k].at("values"));
    if (before.size() != after.size()) {
      check.problems.push_back("map of '" + label + "' is " + std::to_string(after.size()) + " cells, recorded " +
                               std::to_string(before.size()));
      continue;
    }
    const double rho = spearman(before, after);
    if (rho < tolerances.map_spearman) {
      check.problems.push_back("map of '" + label + "' ranks cells differently: Spearman " + fixed(rho, 3) + " < " +
                               fixed(tolerances.map_spearman, 3));
    }
    const auto [old_row, old_col] = peak_of(was[k]["values"]);
    const auto [new_row, new_col] = peak_of(now[k]["values"]);
    const int64_t moved = std::max(std::abs(old_row - new_row), std::abs(old_col - new_col));
    if (moved > tolerances.peak_cells) {
      check.problems.push_back("peak of '" + label + "' moved from cell (" + std::to_string(old_row) + "," +
                               std::to_string(old_col) + ") to (" + std::to_string(new_row) + "," + std::to_string(new_col) +
                               "), " + std::to_string(moved) + " cells");
    }
  }
}

}  // namespace

json make_golden(const json& identity, const std::vector<json>& records) {
  json images = json::object();
  for (const auto& record : records) {
    if (record.contains("error")) continue;
    json explained = json::array();
    for (const auto& e : record.at("explained")) {
      explained.push_back({{"index", e.at("index")}, {"label", e.at("label")}, {"values", e.at("values")}});
    }
    images[record.at("input").get<std::string>()] = {{"top_k", record.at("top_k")}, {"explained", explained}};
  }
  json golden = identity;
  golden["format"] = kGoldenFormat;
  golden["images"] = images;
  return golden;
}

namespace {

// Golden files beyond this size are not ours (10,000 images with 5 maps of 32 x 32 are ~1 GB).
constexpr std::uintmax_t kMaxGoldenBytes = 4ull << 30;

bool is_index(const json& v) { return v.is_number_integer() && v.get<int64_t>() >= 0; }

// What is wrong with a class of an entry (its top_k or explained list), or "" when nothing is.
std::string class_problem(const json& item, bool needs_probability) {
  if (!item.is_object()) return "is not an object";
  if (!item.contains("label") || !item["label"].is_string()) return "has no label";
  if (!item.contains("index") || !is_index(item["index"])) return "has no class index (a whole number from 0)";
  if (needs_probability) {
    const json& p = item.value("probability", json());
    if (!p.is_number() || !(p.get<double>() >= 0 && p.get<double>() <= 1)) return "has no probability between 0 and 1";
  }
  return "";
}

// What is wrong with a recorded map, or "" when it is a square grid of numbers.
std::string map_problem(const json& values) {
  if (!values.is_array() || values.empty()) return "has no map (values: rows of numbers)";
  for (const auto& row : values) {
    if (!row.is_array() || row.size() != values.size()) return "has a map that is not square";
    for (const auto& v : row) {
      if (!v.is_number()) return "has a map with a value that is not a number";
    }
  }
  return "";
}

// What is wrong with a golden file's entry, or "" when nothing is.
std::string entry_problem(const json& image) {
  if (!image.is_object()) return "is not an object";
  const json& top = image.value("top_k", json());
  if (!top.is_array() || top.empty()) return "has no top_k classes";
  for (size_t i = 0; i < top.size(); ++i) {
    if (auto problem = class_problem(top[i], true); !problem.empty()) return "top_k[" + std::to_string(i) + "] " + problem;
  }
  const json& explained = image.value("explained", json());
  if (!explained.is_array() || explained.empty()) return "explains no class (an empty 'explained' list: nothing to check)";
  for (size_t i = 0; i < explained.size(); ++i) {
    std::string problem = class_problem(explained[i], false);
    if (problem.empty()) problem = map_problem(explained[i].value("values", json()));
    if (!problem.empty()) return "explained[" + std::to_string(i) + "] " + problem;
  }
  return "";
}

}  // namespace

json read_golden(const std::filesystem::path& file) {
  const std::string fix = " (write one with --record)";
  std::string text;
  try {
    text = read_regular_file(file, kMaxGoldenBytes);
  } catch (const Error& e) {
    throw InvalidArgument(file, "cannot read the golden file: it " + e.detail());
  }
  json golden = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (golden.is_discarded()) throw InvalidArgument(file, "not a golden file: not valid JSON" + fix);
  if (!golden.is_object() || golden.value("format", json()) != kGoldenFormat || !golden.contains("images") ||
      !golden["images"].is_object()) {
    throw InvalidArgument(file, std::string("not a golden file of format ") + kGoldenFormat + fix);
  }
  if (golden["images"].empty()) throw InvalidArgument(file, "the golden file records no image: it would check nothing" + fix);
  for (const auto& [input, image] : golden["images"].items()) {
    if (input.empty()) throw InvalidArgument(file, "an entry has an empty input name");
    if (const auto problem = entry_problem(image); !problem.empty()) {
      throw InvalidArgument(file, "the entry of '" + input + "' " + problem + fix);
    }
  }
  return golden;
}

void check_golden_classes(const json& golden, const std::filesystem::path& file, const std::vector<std::string>& labels,
                          const std::string& head_name) {
  for (const auto& [input, image] : golden.at("images").items()) {
    for (const char* list : {"top_k", "explained"}) {
      for (const auto& item : image.at(list)) {
        const auto index = item.at("index").get<int64_t>();
        const auto& label = item.at("label").get_ref<const std::string&>();
        if (index < static_cast<int64_t>(labels.size()) && labels[static_cast<size_t>(index)] == label) continue;
        const std::string has = index < static_cast<int64_t>(labels.size())
                                    ? "whose class " + std::to_string(index) + " is '" + labels[static_cast<size_t>(index)] + "'"
                                    : "which has " + std::to_string(labels.size()) + " classes";
        throw InvalidArgument(file, "the entry of '" + input + "' names class '" + label + "' (index " + std::to_string(index) +
                                        ") in " + list + ", which is not a class of head '" + head_name + "' (" + has +
                                        "): was it recorded with another head?");
      }
    }
  }
}

size_t GoldenCheck::failed() const {
  return static_cast<size_t>(std::count_if(images.begin(), images.end(), [](const ImageCheck& c) { return !c.passed(); }));
}

GoldenCheck check_against_golden(const json& golden, const json& identity, const std::vector<json>& records,
                                 const GoldenTolerances& tolerances) {
  GoldenCheck result;
  for (const char* key :
       {"model", "target_sha256", "head", "head_sha256", "explainer_sha256", "method", "parameters", "top_k", "class"}) {
    if (golden.contains(key) && identity.contains(key) && golden[key] != identity[key]) {
      result.run_notes.push_back(std::string(key) + " differs from the recorded one: " + golden[key].dump() + " -> " +
                                 identity[key].dump());
    }
  }
  std::map<std::string, const json*> by_input;
  for (const auto& record : records) by_input[record.at("input").get<std::string>()] = &record;
  for (const auto& [input, recorded] : golden.at("images").items()) {
    ImageCheck check{input, {}, 0};
    const auto found = by_input.find(input);
    if (found == by_input.end()) {
      check.problems.push_back("missing: recorded in the golden file, not among this run's inputs");
    } else if (found->second->contains("error")) {
      check.problems.push_back("failed: " + (*found->second)["error"].get<std::string>());
      by_input.erase(found);
    } else {
      try {
        compare_image(recorded, *found->second, tolerances, check);
      } catch (const json::exception& e) {
        check.problems.push_back(std::string("golden entry unreadable: ") + e.what());
      }
      if (found->second->contains("timings_ms")) {
        double ms = 0;
        for (const auto& [name, value] : (*found->second)["timings_ms"].items()) ms += value.get<double>();
        check.seconds = ms / 1e3;
      }
      by_input.erase(found);
    }
    result.images.push_back(check);
  }
  for (const auto& [input, record] : by_input) {
    ImageCheck extra{input, {"extra: not in the golden file (record it with --record)"}, 0};
    if (record->contains("error")) extra.problems.push_back("failed: " + (*record)["error"].get<std::string>());
    result.images.push_back(extra);
  }
  return result;
}

std::string junit_xml(const GoldenCheck& check, const std::string& suite_name) {
  double total_seconds = 0;
  for (const auto& image : check.images) total_seconds += image.seconds;
  std::ostringstream xml;
  xml << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      << "<testsuites name=\"tve\" tests=\"" << check.images.size() << "\" failures=\"" << check.failed() << "\">\n"
      << "  <testsuite name=\"" << xml_escaped(suite_name) << "\" tests=\"" << check.images.size() << "\" failures=\""
      << check.failed() << "\" errors=\"0\" skipped=\"0\" time=\"" << fixed(total_seconds, 3) << "\">\n";
  if (!check.run_notes.empty()) {
    xml << "    <properties>\n";
    for (size_t i = 0; i < check.run_notes.size(); ++i) {
      xml << "      <property name=\"note" << i << "\" value=\"" << xml_escaped(check.run_notes[i]) << "\"/>\n";
    }
    xml << "    </properties>\n";
  }
  for (const auto& image : check.images) {
    xml << "    <testcase classname=\"" << xml_escaped(suite_name) << "\" name=\"" << xml_escaped(image.input) << "\" time=\""
        << fixed(image.seconds, 3) << "\"";
    if (image.passed()) {
      xml << "/>\n";
      continue;
    }
    std::string details;
    for (const auto& problem : image.problems) details += problem + "\n";
    xml << ">\n      <failure message=\"" << xml_escaped(image.problems.front()) << "\" type=\"expectation\">"
        << xml_escaped(details) << "</failure>\n    </testcase>\n";
  }
  xml << "  </testsuite>\n</testsuites>\n";
  return xml.str();
}

}  // namespace tve
