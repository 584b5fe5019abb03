#pragma once
// Output files appear whole or not at all: written to a temporary name in the same folder, then
// renamed over the destination (rename is atomic within a file system). Temporaries never outlive
// the run that made them: a signal (Ctrl-C, SIGTERM from a job scheduler) removes those being
// written before the process ends, and a run that was killed outright (kill -9, a crash) leaves
// its temporaries to the next run writing into the same folder, which removes them.

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace tve {

// Throws OutputError naming `file` when the folder cannot be made or the write fails (disk full,
// read-only, permissions).
void write_file_atomically(const std::filesystem::path& file, std::string_view bytes);

// The same for a file written piece by piece (a results file that grows with a run): append()
// writes to the temporary, commit() moves it into place; destroyed without commit() (an exception,
// an early return), the temporary is removed and `file` is left as it was. Throws OutputError.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::filesystem::path file);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  void append(std::string_view bytes);
  void commit();

 private:
  void discard() noexcept;
  [[noreturn]] void fail(const std::string& why);
  std::filesystem::path file_;
  std::string temporary_;  // empty once committed or discarded
  int fd_ = -1;
};

// Whether `filename` is a temporary name of write_file_atomically: ".<name>.<host>-<pid>-<n>.tve.tmp"
// (and ".<name>.<pid>.<n>.tmp", the naming of tve 0.x before the host was part of it).
bool is_temporary_output_name(const std::string& filename);

// The temporaries of `file` (in its folder) left by processes of this host that no longer run: what
// a killed run had written of it, complete up to the last whole write (tve eval --resume reads its
// records). Sorted by name.
std::vector<std::filesystem::path> stale_temporaries_of(const std::filesystem::path& file);

// Removes, under `folder` (recursively), the temporaries left by tve processes of this host that
// no longer run. Temporaries of live processes and of other hosts (a shared file system written by
// a job array) are kept. Call before this process writes into `folder`. Returns how many it removed.
size_t remove_stale_temporaries(const std::filesystem::path& folder);

// From now on SIGINT, SIGTERM, SIGHUP and SIGQUIT remove this process's temporaries still being
// written, then end it by the same signal (so a shell or scheduler sees how it ended). The work
// is done by a thread of its own, woken by the signal handler. Call once, early in main().
void clean_up_temporaries_on_signals();

// Makes `folder` ready for outputs before any model work: creates it, checks that it is a folder
// and writable (by writing and removing a probe file), and removes stale temporaries under it.
// Throws OutputError naming the folder and what is wrong (empty name, a file, read-only, ...).
void prepare_output_folder(const std::filesystem::path& folder);

}  // namespace tve
