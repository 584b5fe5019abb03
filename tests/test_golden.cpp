// Golden files (docs/ci.md): what is recorded, what a file must hold to be used, how a run is
// compared with it.

#include "tve/golden.hpp"

#include <sys/stat.h>

#include <string>
#include <vector>

#include "test_helpers.hpp"
#include "tve/error.hpp"

namespace tve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::TempDir;

const std::vector<std::string> kLabels{"cat", "dog", "bird"};

// An explain record for `input`: top-1 `label` (index in kLabels), a 3 x 3 map peaking at `peak`.
json record(const std::string& input, size_t label, int peak = 4, double probability = 0.8) {
  json values = json::array();
  for (int r = 0; r < 3; ++r) {
    json row = json::array();
    for (int c = 0; c < 3; ++c) row.push_back(r * 3 + c == peak ? 9.0 : 0.1 * (r * 3 + c));
    values.push_back(row);
  }
  const json top{{"index", label}, {"label", kLabels[label]}, {"probability", probability}};
  const json other{{"index", (label + 1) % 3}, {"label", kLabels[(label + 1) % 3]}, {"probability", 1 - probability}};
  return {{"input", input},
          {"top_k", {top, other}},
          {"explained", {{{"index", label}, {"label", kLabels[label]}, {"probability", probability}, {"values", values}}}}};
}

bool has_problem(const ImageCheck& check, const std::string& text) {
  for (const auto& problem : check.problems) {
    if (problem.find(text) != std::string::npos) return true;
  }
  return false;
}

json failed(const std::string& input) { return {{"input", input}, {"error", input + ": PNG is truncated"}}; }

const json kIdentity{{"model", "m"}, {"head", "target"}, {"method", "tve"}, {"top_k", 1}, {"class", nullptr}};

fs::path write_golden(const TempDir& tmp, const json& golden, const std::string& name = "g.json") {
  test::write_text(tmp / name, golden.dump());
  return tmp / name;
}

TEST(Golden, RecordsAndReadsBackLeavingFailuresOut) {
  TempDir tmp;
  const json golden = make_golden(kIdentity, {record("a.png", 0), failed("b.png"), record("c.png", 2)});
  EXPECT_EQ(golden["format"], kGoldenFormat);
  EXPECT_EQ(golden["images"].size(), 2u);
  const json read = read_golden(write_golden(tmp, golden));
  EXPECT_EQ(read, golden);
  EXPECT_NO_THROW(check_golden_classes(read, tmp / "g.json", kLabels, "target"));
}

TEST(Golden, RefusesWhatIsNotAGoldenFileWithoutHanging) {
  TempDir tmp;
  fs::create_directories(tmp / "folder");
  ASSERT_EQ(mkfifo((tmp / "fifo").c_str(), 0600), 0);
  test::expect_error<InvalidArgument>([&] { read_golden(tmp / "folder"); }, {"folder", "is a folder"});
  test::expect_error<InvalidArgument>([&] { read_golden(tmp / "fifo"); }, {"fifo", "named pipe"});
  test::expect_error<InvalidArgument>([&] { read_golden("/dev/zero"); }, {"/dev/zero", "character device"});
  test::expect_error<InvalidArgument>([&] { read_golden(tmp / "missing.json"); }, {"missing.json", "does not exist"});
  test::write_text(tmp / "cut.json", make_golden(kIdentity, {record("a.png", 0)}).dump().substr(0, 40));
  test::expect_error<InvalidArgument>([&] { read_golden(tmp / "cut.json"); }, {"cut.json", "not valid JSON"});
  test::expect_error<InvalidArgument>([&] { read_golden(write_golden(tmp, make_golden(kIdentity, {}))); }, {"records no image"});
}

TEST(Golden, RefusesEntriesThatWouldCheckNothingNamingThem) {
  TempDir tmp;
  const json good = make_golden(kIdentity, {record("a.png", 0), record("b.png", 1)});
  const std::vector<std::pair<std::function<void(json&)>, std::string>> breaks{
      {[](json& e) { e["explained"] = json::array(); }, "explains no class"},
      {[](json& e) { e.erase("explained"); }, "explains no class"},
      {[](json& e) { e["top_k"] = json::array(); }, "has no top_k"},
      {[](json& e) { e["top_k"][0]["probability"] = 1.5; }, "top_k[0] has no probability"},
      {[](json& e) { e["top_k"][1].erase("label"); }, "top_k[1] has no label"},
      {[](json& e) { e["explained"][0]["index"] = -2; }, "explained[0] has no class index"},
      {[](json& e) { e["explained"][0]["index"] = 1.5; }, "explained[0] has no class index"},
      {[](json& e) { e["explained"][0]["values"][2].erase(0); }, "not square"},
      {[](json& e) { e["explained"][0]["values"][0][0] = nullptr; }, "not a number"},
      {[](json& e) { e["explained"][0].erase("values"); }, "has no map"},
      {[](json& e) { e = json::array(); }, "is not an object"},
  };
  for (const auto& [change, message] : breaks) {
    json golden = good;
    change(golden["images"]["b.png"]);
    const fs::path file = write_golden(tmp, golden);
    test::expect_error<InvalidArgument>([&] { read_golden(file); }, {"g.json", "the entry of 'b.png'", message});
  }
}

TEST(Golden, ClassesTheHeadLacksAreRefusedNamingEntryAndClass) {
  TempDir tmp;
  json golden = make_golden(kIdentity, {record("a.png", 0), record("b.png", 1)});
  golden["images"]["b.png"]["explained"][0]["label"] = "horse";
  test::expect_error<InvalidArgument>([&] { check_golden_classes(golden, "g.json", kLabels, "target"); },
                                      {"g.json", "'b.png'", "'horse'", "not a class of head 'target'"});
  golden["images"]["b.png"]["explained"][0] = {{"index", 7}, {"label", "dog"}, {"values", {{1}}}};
  test::expect_error<InvalidArgument>([&] { check_golden_classes(golden, "g.json", kLabels, "target"); },
                                      {"(index 7)", "which has 3 classes"});
  golden = make_golden(kIdentity, {record("a.png", 0)});
  golden["images"]["a.png"]["top_k"][1]["label"] = "cow";
  test::expect_error<InvalidArgument>([&] { check_golden_classes(golden, "g.json", kLabels, "target"); }, {"'cow'", "top_k"});
}

TEST(Golden, AsRecordedPassesAndEachDifferenceIsNamed) {
  const json golden = make_golden(kIdentity, {record("a.png", 0), record("b.png", 1, 0), record("c.png", 2)});
  const GoldenTolerances tolerances;
  auto check =
      check_against_golden(golden, kIdentity, {record("a.png", 0), record("b.png", 1, 0), record("c.png", 2)}, tolerances);
  EXPECT_EQ(check.failed(), 0u);
  EXPECT_EQ(check.images.size(), 3u);

  check = check_against_golden(golden, kIdentity,
                               {record("a.png", 1), record("b.png", 1, 8), record("c.png", 2, 4, 0.5)}, tolerances);
  ASSERT_EQ(check.images.size(), 3u);
  EXPECT_TRUE(has_problem(check.images[0], "top-1 changed: 'cat'"));
  EXPECT_EQ(check.images[0].problems.size(), 1u);  // its map's class changed with it: said once
  EXPECT_TRUE(has_problem(check.images[1], "peak of 'dog' moved from cell (0,0) to (2,2), 2 cells"));
  EXPECT_TRUE(has_problem(check.images[2], "probability of 'bird' moved"));
}

TEST(Golden, AFailedImageIsOneCaseAndAnExtraOneSaysBoth) {
  const json golden = make_golden(kIdentity, {record("a.png", 0), record("b.png", 1)});
  const auto check = check_against_golden(golden, kIdentity, {record("a.png", 0), failed("b.png"), failed("z.png")}, {});
  ASSERT_EQ(check.images.size(), 3u);
  EXPECT_EQ(check.images[1].input, "b.png");
  ASSERT_EQ(check.images[1].problems.size(), 1u);
  EXPECT_NE(check.images[1].problems[0].find("failed: b.png: PNG is truncated"), std::string::npos);
  EXPECT_EQ(check.images[2].input, "z.png");
  ASSERT_EQ(check.images[2].problems.size(), 2u);
  EXPECT_NE(check.images[2].problems[0].find("extra"), std::string::npos);
  EXPECT_NE(check.images[2].problems[1].find("failed"), std::string::npos);
  const std::string xml = junit_xml(check, "suite");
  EXPECT_NE(xml.find("tests=\"3\" failures=\"2\""), std::string::npos) << xml;
}

TEST(Golden, EveryRecordedMapIsAccountedFor) {
  // Recorded with two classes, run with one (or the other way round), or another class in a
  // map's place: a problem, never a silently skipped map.
  json two = record("a.png", 0);
  two["explained"].push_back({{"index", 1}, {"label", "dog"}, {"probability", 0.2}, {"values", two["explained"][0]["values"]}});
  const json golden = make_golden(kIdentity, {two});
  auto check = check_against_golden(golden, kIdentity, {record("a.png", 0)}, {});
  ASSERT_EQ(check.images.at(0).problems.size(), 1u);
  EXPECT_NE(check.images[0].problems[0].find("explains 1 class(es), recorded 2"), std::string::npos);

  json swapped = two;
  swapped["explained"][1]["label"] = "bird";
  swapped["explained"][1]["index"] = 2;
  check = check_against_golden(golden, kIdentity, {swapped}, {});
  ASSERT_EQ(check.images.at(0).problems.size(), 1u);
  EXPECT_NE(check.images[0].problems[0].find("explained class 2 is 'bird', recorded 'dog'"), std::string::npos);

  json other_top_k = kIdentity;
  other_top_k["top_k"] = 2;
  check = check_against_golden(golden, other_top_k, {two}, {});
  EXPECT_EQ(check.failed(), 0u);
  ASSERT_EQ(check.run_notes.size(), 1u);
  EXPECT_NE(check.run_notes[0].find("top_k differs"), std::string::npos);
}

}  // namespace
}  // namespace tve
