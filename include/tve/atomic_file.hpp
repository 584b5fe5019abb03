#pragma once
// Output files appear whole or not at all: written to a temporary name in the same folder, then
// renamed over the destination (rename is atomic within a file system). Temporaries never outlive
// the run that made them: a signal (Ctrl-C, SIGTERM from a job scheduler) removes those being
// written before the process ends, and a run that was killed outright (kill -9, a crash) leaves
// its temporaries to the next run writing into the same folder, which removes them.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace tve {

// Throws OutputError naming `file` when the folder cannot be made or the write fails (disk full,
// read-only, permissions). The destination is checked as output_destination does.
void write_file_atomically(const std::filesystem::path& file, std::string_view bytes);

// Where an output named `file` goes, and whether it can go there: `file` itself, or, when `file` is
// a symbolic link, the file the link leads to (through any chain of links): the link is kept and
// its target replaced, so that a link such as golden.json -> golden-v3.json still leads to the new
// results. An output is replaced by a rename, which only a regular file (or no file yet) allows:
// throws OutputError naming `file` when it is empty, ends in '/', or is (or leads to) a folder, a
// named pipe, a device or a socket, or when its links loop.
std::filesystem::path output_destination(const std::filesystem::path& file);

// For an output file named on the command line (explain --record, --junit), before any model work:
// output_destination, then its folder created and a temporary written there and removed, so that
// a run whose result could not be saved fails at once instead of after all its compute. Returns
// the destination. Throws OutputError.
std::filesystem::path prepare_output_file(const std::filesystem::path& file);

// Whether `a` and `b` name the same file (the same inode, through any links) or, where either does
// not exist yet, the same place once links and '.', '..' are resolved.
bool same_file(const std::filesystem::path& a, const std::filesystem::path& b);

// A regular file's bytes, read without blocking on a named pipe or reading a device forever.
// Throws Error naming `file` and what it is instead (missing, a folder, a named pipe, a device,
// larger than `max_bytes`, unreadable); callers rethrow it as their kind of error.
std::string read_regular_file(const std::filesystem::path& file, std::uintmax_t max_bytes);

// Writes `line` (one JSON record and its newline) to `fd` whole or not at all: when the write fails
// part-way (a full disk, a quota, a file size limit) and `fd` is a regular file, what was written of
// the line is cut off again, so that every line of the file stays a complete record. Throws
// OutputError naming `name`. (A pipe takes a line whole unless the process is killed mid-line.)
void write_line_whole(int fd, std::string_view line, const std::string& name);

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
  std::filesystem::path file_;         // as named, for messages
  std::filesystem::path destination_;  // output_destination(file_): what the rename replaces
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
