#include "tve/atomic_file.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
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

TEST(AtomicFile, DestinationsThatAreNotFilesAreRefusedAndLeftAsTheyWere) {
  TempDir tmp;
  fs::create_directories(tmp / "folder");
  ASSERT_EQ(mkfifo((tmp / "fifo").c_str(), 0600), 0);
  fs::create_symlink(tmp / "fifo", tmp / "link-to-fifo");
  fs::create_symlink(tmp / "loop-b", tmp / "loop-a");
  fs::create_symlink(tmp / "loop-a", tmp / "loop-b");
  const std::vector<std::pair<fs::path, std::string>> refused{
      {"/dev/full", "character device"},     {tmp / "fifo", "named pipe"},
      {tmp / "folder", "is a folder"},       {tmp / "link-to-fifo", "leads to " + (tmp / "fifo").string()},
      {tmp / "loop-a", "symbolic link loop"}, {tmp.path().string() + "/new/", "ends in '/'"},
  };
  for (const auto& item : refused) {
    const fs::path& file = item.first;
    test::expect_error<OutputError>([&] { output_destination(file); }, {file.string(), item.second});
    test::expect_error<OutputError>([&] { write_file_atomically(file, "x"); }, {file.string(), item.second});
    test::expect_error<OutputError>([&] { prepare_output_file(file); }, {file.string(), item.second});
  }
  test::expect_error<OutputError>([&] { output_destination(""); }, {"empty"});
  EXPECT_TRUE(fs::is_fifo(tmp / "fifo"));
  EXPECT_TRUE(fs::is_directory(tmp / "folder"));
  EXPECT_TRUE(fs::is_character_file("/dev/full"));
  EXPECT_TRUE(fs::is_empty(tmp / "folder"));
}

TEST(AtomicFile, ALinkIsWrittenThroughAndKept) {
  TempDir tmp;
  test::write_text(tmp / "v" / "golden-1.json", "old");
  fs::create_symlink("v/golden-1.json", tmp / "golden.json");  // relative to the link's folder
  fs::create_symlink("v/golden-2.json", tmp / "next.json");    // dangling: its target is created
  EXPECT_EQ(output_destination(tmp / "golden.json"), tmp / "v/golden-1.json");
  write_file_atomically(tmp / "golden.json", "new");
  write_file_atomically(tmp / "next.json", "two");
  EXPECT_TRUE(fs::is_symlink(tmp / "golden.json"));
  EXPECT_TRUE(fs::is_symlink(tmp / "next.json"));
  std::ifstream one(tmp / "v" / "golden-1.json"), two(tmp / "v" / "golden-2.json");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(one), {}), "new");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(two), {}), "two");
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp / "v"), fs::directory_iterator()), 2);  // no temporary left
}

TEST(AtomicFile, PrepareOutputFileChecksTheFolderWithoutLeavingAnything) {
  TempDir tmp;
  EXPECT_EQ(prepare_output_file(tmp / "deep" / "g.json"), tmp / "deep" / "g.json");
  EXPECT_TRUE(fs::is_directory(tmp / "deep"));
  EXPECT_TRUE(fs::is_empty(tmp / "deep"));
  test::write_text(tmp / "file", "x");
  test::expect_error<OutputError>([&] { prepare_output_file(tmp / "file" / "g.json"); }, {"file/g.json", "cannot create its folder"});
}

TEST(AtomicFile, SameFileHoweverSpelt) {
  TempDir tmp;
  test::write_text(tmp / "g.json", "{}");
  fs::create_symlink(tmp / "g.json", tmp / "link.json");
  fs::create_hard_link(tmp / "g.json", tmp / "hard.json");
  fs::create_directories(tmp / "sub");
  for (const fs::path& other : {tmp / "." / "g.json", tmp / "sub" / ".." / "g.json", tmp / "link.json", tmp / "hard.json"}) {
    EXPECT_TRUE(same_file(tmp / "g.json", other)) << other;
  }
  EXPECT_TRUE(same_file(tmp / "new.json", tmp / "sub" / ".." / "new.json"));  // neither exists yet
  EXPECT_FALSE(same_file(tmp / "g.json", tmp / "new.json"));
  EXPECT_FALSE(same_file(tmp / "new.json", tmp / "other.json"));
}

TEST(AtomicFile, ReadRegularFileRefusesPipesDevicesAndFolders) {
  TempDir tmp;
  test::write_text(tmp / "a.txt", "hello");
  EXPECT_EQ(read_regular_file(tmp / "a.txt", 100), "hello");
  test::expect_error<Error>([&] { read_regular_file(tmp / "a.txt", 3); }, {"a.txt", "over the limit"});
  ASSERT_EQ(mkfifo((tmp / "fifo").c_str(), 0600), 0);
  test::expect_error<Error>([&] { read_regular_file(tmp / "fifo", 100); }, {"named pipe"});
  test::expect_error<Error>([&] { read_regular_file("/dev/zero", 100); }, {"character device"});
  test::expect_error<Error>([&] { read_regular_file(tmp.path(), 100); }, {"is a folder"});
  test::expect_error<Error>([&] { read_regular_file(tmp / "missing", 100); }, {"does not exist"});
}

TEST(AtomicFile, ALineCutByAFullDiskIsRemoved) {
  // A file size limit stands in for a full disk: the write stops part-way, then fails with EFBIG.
  TempDir tmp;
  const fs::path file = tmp / "out.jsonl";
  const int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto previous_handler = signal(SIGXFSZ, SIG_IGN);
  const rlimit limit{100, saved.rlim_max};
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  std::string error;
  try {
    write_line_whole(fd, std::string(60, 'a') + "\n", "stdout");
    write_line_whole(fd, std::string(60, 'b') + "\n", "stdout");  // 39 bytes fit, then EFBIG
  } catch (const OutputError& e) {
    error = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, previous_handler);
  close(fd);
  EXPECT_NE(error.find("stdout: cannot write results"), std::string::npos) << error;
  EXPECT_NE(error.find("removed"), std::string::npos) << error;
  std::ifstream in(file);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), std::string(60, 'a') + "\n");
}

}  // namespace
}  // namespace tve
