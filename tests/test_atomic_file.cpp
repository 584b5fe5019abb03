#include "tve/atomic_file.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "test_helpers.hpp"
#include "tve/error.hpp"

namespace tve {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

std::string host() {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  std::string out(name);
  for (auto& c : out) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return out;
}

// A pid that no process has: one that ran and ended.
long finished_pid() {
  const pid_t child = fork();
  if (child == 0) _exit(0);
  int status = 0;
  waitpid(child, &status, 0);
  return child;
}

TEST(AtomicFile, WritesWholeFilesAndLeavesNoTemporary) {
  TempDir tmp;
  write_file_atomically(tmp / "a" / "b.txt", "hello");
  std::ifstream in(tmp / "a" / "b.txt");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "hello");
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp / "a"), fs::directory_iterator()), 1);
}

TEST(AtomicFile, FailureNamesTheFileAndIsAnOutputError) {
  TempDir tmp;
  test::write_text(tmp / "file", "x");
  test::expect_error<OutputError>([&] { write_file_atomically(tmp / "file" / "out.png", "x"); },
                                  {(tmp / "file" / "out.png").string(), "cannot create its folder"});
}

TEST(AtomicFile, RecognisesItsTemporaryNames) {
  EXPECT_TRUE(is_temporary_output_name(".x.png.json.myhost-123-456.tve.tmp"));
  EXPECT_TRUE(is_temporary_output_name(".x.png.json.my-host-name-123-456.tve.tmp"));
  EXPECT_TRUE(is_temporary_output_name(".x.png.map.npy.123.456.tmp"));  // tve 0.x
  EXPECT_FALSE(is_temporary_output_name("x.png.json"));
  EXPECT_FALSE(is_temporary_output_name(".x.png.json.tmp"));
  EXPECT_FALSE(is_temporary_output_name(".x.png.json.host-abc-456.tve.tmp"));
  EXPECT_FALSE(is_temporary_output_name("x.123.456.tmp"));  // not hidden: a user's file
}

TEST(AtomicFile, RemovesOnlyTemporariesOfEndedProcessesOfThisHost) {
  TempDir tmp;
  const std::string dead = std::to_string(finished_pid());
  const std::string alive = std::to_string(getppid());
  const std::vector<std::string> stale{"sub/.a.png.json." + host() + "-" + dead + "-1.tve.tmp",
                                       ".b.png.map.npy." + dead + ".7.tmp"};
  const std::vector<std::string> kept{".c.png.json." + host() + "-" + alive + "-1.tve.tmp",
                                      ".d.png.json.elsewhere-" + dead + "-1.tve.tmp", "e.png.json", ".f.tmp"};
  for (const auto& name : stale) test::write_text(tmp / name, "");
  for (const auto& name : kept) test::write_text(tmp / name, "");
  EXPECT_EQ(remove_stale_temporaries(tmp.path()), 2u);
  for (const auto& name : stale) EXPECT_FALSE(fs::exists(tmp / name)) << name;
  for (const auto& name : kept) EXPECT_TRUE(fs::exists(tmp / name)) << name;
}

TEST(AtomicFile, PrepareOutputFolderChecksBeforeAnyWork) {
  TempDir tmp;
  prepare_output_folder(tmp / "new" / "deep");
  EXPECT_TRUE(fs::is_directory(tmp / "new" / "deep"));
  EXPECT_TRUE(fs::is_empty(tmp / "new" / "deep"));  // the write probe is gone
  test::write_text(tmp / "file", "x");
  test::expect_error<OutputError>([&] { prepare_output_folder(tmp / "file"); }, {"exists and is not a folder"});
  test::expect_error<OutputError>([&] { prepare_output_folder(""); }, {"empty"});
}

}  // namespace
}  // namespace tve
