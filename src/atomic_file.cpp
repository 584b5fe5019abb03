#include "tve/atomic_file.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "tve/error.hpp"
#include "tve/log.hpp"

namespace fs = std::filesystem;

namespace tve {
namespace {

constexpr std::string_view kTemporarySuffix = ".tve.tmp";

// The temporaries this process is writing. A signal removes them with the lock held and then ends
// the process, so no temporary can be created after they were removed.
struct Temporaries {
  std::mutex mutex;
  std::set<std::string> paths;
};
Temporaries& temporaries() {
  static Temporaries* instance = new Temporaries;  // never destroyed: the signal thread may use it at exit
  return *instance;
}

// This host's name with every character outside [A-Za-z0-9] replaced, so that it cannot contain the
// separators of the temporary name.
const std::string& host_tag() {
  static const std::string tag = [] {
    char name[256] = {};
    if (gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return std::string("host");
    std::string out(name);
    out.resize(std::min<size_t>(out.size(), 64));  // leaves room for the file's name in 255 bytes
    for (auto& c : out) {
      if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    }
    return out;
  }();
  return tag;
}

bool all_digits(std::string_view text) {
  return !text.empty() && text.find_first_not_of("0123456789") == std::string_view::npos;
}

// The host and pid a temporary name was made by; false when `filename` is not one of ours.
bool parse_temporary_name(const std::string& filename, std::string& host, long& pid) {
  if (filename.size() < 2 || filename[0] != '.') return false;
  std::string_view name(filename);
  if (name.size() > kTemporarySuffix.size() && name.substr(name.size() - kTemporarySuffix.size()) == kTemporarySuffix) {
    name.remove_suffix(kTemporarySuffix.size());  // ".<name>.<host>-<pid>-<n>"
    const auto dot = name.rfind('.');
    if (dot == std::string_view::npos || dot == 0) return false;
    const std::string_view tag = name.substr(dot + 1);
    const auto last = tag.rfind('-');
    if (last == std::string_view::npos || last == 0) return false;
    const auto middle = tag.rfind('-', last - 1);
    if (middle == std::string_view::npos || middle == 0) return false;
    const auto pid_text = tag.substr(middle + 1, last - middle - 1);
    if (!all_digits(pid_text) || !all_digits(tag.substr(last + 1)) || pid_text.size() > 9) return false;
    host = std::string(tag.substr(0, middle));
    pid = std::stol(std::string(pid_text));
    return true;
  }
  // tve 0.x: ".<name>.<pid>.<n>.tmp", always of this host.
  constexpr std::string_view kOldSuffix = ".tmp";
  if (name.size() <= kOldSuffix.size() || name.substr(name.size() - kOldSuffix.size()) != kOldSuffix) return false;
  name.remove_suffix(kOldSuffix.size());
  const auto random_dot = name.rfind('.');
  if (random_dot == std::string_view::npos || random_dot == 0) return false;
  const auto pid_dot = name.rfind('.', random_dot - 1);
  if (pid_dot == std::string_view::npos || pid_dot == 0) return false;
  const auto pid_text = name.substr(pid_dot + 1, random_dot - pid_dot - 1);
  if (!all_digits(pid_text) || !all_digits(name.substr(random_dot + 1)) || pid_text.size() > 9) return false;
  host = host_tag();
  pid = std::stol(std::string(pid_text));
  return true;
}

bool process_is_running(long pid) {
  if (pid <= 0) return false;
  if (pid == static_cast<long>(getpid())) return false;  // an earlier process with our pid: we have written nothing yet
  return kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

std::string errno_text(int error) { return std::strerror(error); }

}  // namespace

bool is_temporary_output_name(const std::string& filename) {
  std::string host;
  long pid = 0;
  return parse_temporary_name(filename, host, pid);
}

AtomicFileWriter::AtomicFileWriter(fs::path file) : file_(std::move(file)), destination_(output_destination(file_)) {
  std::error_code ec;
  const fs::path folder = destination_.parent_path();
  if (!folder.empty()) fs::create_directories(folder, ec);
  if (ec) throw OutputError(file_, "cannot create its folder " + folder.string() + ": " + ec.message());

  // Hidden, and unique to this host, process and call, so that concurrent jobs writing into the
  // same folder (a job array on a shared file system) never share a temporary file and
  // half-written files are never mistaken for results.
  static thread_local std::mt19937_64 random{std::random_device{}()};
  const std::string tag = "." + host_tag() + "-" + std::to_string(getpid()) + "-" + std::to_string(random() % 1000000000) +
                          std::string(kTemporarySuffix);
  // A name allows 255 bytes: the destination's name is cut to fit beside the tag (at a UTF-8
  // character boundary); the tag alone identifies the temporary.
  std::string name = destination_.filename().string();
  constexpr size_t kMaxNameBytes = 255;
  if (1 + name.size() + tag.size() > kMaxNameBytes) {
    size_t keep = kMaxNameBytes - 1 - tag.size();
    while (keep > 0 && (static_cast<unsigned char>(name[keep]) & 0xC0) == 0x80) --keep;
    name.resize(keep);
  }
  temporary_ = (folder / ("." + name + tag)).string();
  auto& registry = temporaries();
  std::lock_guard<std::mutex> lock(registry.mutex);
  fd_ = open(temporary_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd_ < 0) throw OutputError(file_, "cannot create a file in its folder: " + errno_text(errno));
  registry.paths.insert(temporary_);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (!temporary_.empty()) discard();
}

void AtomicFileWriter::discard() noexcept {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  unlink(temporary_.c_str());
  auto& registry = temporaries();
  std::lock_guard<std::mutex> lock(registry.mutex);
  registry.paths.erase(temporary_);
  temporary_.clear();
}

void AtomicFileWriter::fail(const std::string& why) {
  discard();
  throw OutputError(file_, why);
}

void AtomicFileWriter::append(std::string_view bytes) {
  if (temporary_.empty()) throw OutputError(file_, "written after it was committed or discarded");
  for (size_t written = 0; written < bytes.size();) {
    const ssize_t n = write(fd_, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("write failed: " + errno_text(n < 0 ? errno : EIO));
    written += static_cast<size_t>(n);
  }
}

void AtomicFileWriter::commit() {
  if (temporary_.empty()) throw OutputError(file_, "committed after it was committed or discarded");
  const int closed = close(fd_);
  fd_ = -1;
  if (closed != 0) fail("write failed: " + errno_text(errno));  // NFS and quotas report here
  if (rename(temporary_.c_str(), destination_.c_str()) != 0) fail("cannot move output into place: " + errno_text(errno));
  auto& registry = temporaries();
  std::lock_guard<std::mutex> lock(registry.mutex);
  registry.paths.erase(temporary_);
  temporary_.clear();
}

namespace {

// What a file of this mode is, when it is not the regular file asked for.
std::string not_a_file(mode_t mode) {
  if (S_ISDIR(mode)) return "is a folder, not a file";
  if (S_ISFIFO(mode)) return "is a named pipe (FIFO), not a file";
  if (S_ISCHR(mode)) return "is a character device, not a file";
  if (S_ISBLK(mode)) return "is a block device, not a file";
  if (S_ISSOCK(mode)) return "is a socket, not a file";
  return "is not a regular file";
}

// Follows `file` through symbolic links (a link's relative target is relative to the link's
// folder) to what they lead to, which need not exist. Returns false when the links loop.
bool follow_links(fs::path& file) {
  constexpr int kMaxLinks = 40;  // as the kernel's own limit on links in one lookup
  for (int links = 0; links <= kMaxLinks; ++links) {
    struct stat st {};
    if (lstat(file.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return true;
    std::error_code ec;
    const fs::path target = fs::read_symlink(file, ec);
    if (ec) return true;  // the write reports it
    file = target.is_absolute() ? target : file.parent_path() / target;
  }
  return false;
}

}  // namespace

fs::path output_destination(const fs::path& file) {
  if (file.empty()) throw OutputError("an output file is named by an empty path");
  if (!file.has_filename()) throw OutputError(file, "ends in '/': it names a folder, not a file");
  fs::path destination = file;
  if (!follow_links(destination)) throw OutputError(file, "symbolic link loop");
  if (!destination.has_filename()) throw OutputError(file, "is a symbolic link to a folder, not to a file");
  struct stat st {};
  if (stat(destination.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    // A rename would replace it with a regular file: a pipe, a device or a folder named as an
    // output is a mistake to report, not a thing to destroy.
    const std::string via = destination == file ? "" : " (the symbolic link leads to " + destination.string() + ")";
    throw OutputError(file, not_a_file(st.st_mode) + via + ": outputs are regular files, written whole and renamed into place");
  }
  return destination;
}

fs::path prepare_output_file(const fs::path& file) {
  const fs::path destination = output_destination(file);
  AtomicFileWriter probe(file);  // creates the folder and a temporary there; removed as it goes out of scope
  return destination;
}

bool same_file(const fs::path& a, const fs::path& b) {
  struct stat sa {}, sb {};
  const bool a_exists = stat(a.c_str(), &sa) == 0, b_exists = stat(b.c_str(), &sb) == 0;
  if (a_exists && b_exists) return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  if (a_exists != b_exists) return false;
  fs::path ra = a, rb = b;
  follow_links(ra);
  follow_links(rb);
  std::error_code ec_a, ec_b;
  const fs::path ca = fs::weakly_canonical(fs::absolute(ra, ec_a), ec_a), cb = fs::weakly_canonical(fs::absolute(rb, ec_b), ec_b);
  return !ec_a && !ec_b && ca == cb;
}

std::string read_regular_file(const fs::path& file, std::uintmax_t max_bytes) {
  // stat before open: opening a named pipe would wait for a writer, opening some devices acts.
  struct stat st {};
  if (stat(file.c_str(), &st) != 0) {
    throw Error(file, errno == ENOENT ? std::string("does not exist") : "cannot be read: " + errno_text(errno));
  }
  if (!S_ISREG(st.st_mode)) throw Error(file, not_a_file(st.st_mode));
  const int fd = open(file.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw Error(file, "cannot be opened: " + errno_text(errno));
  std::string bytes;
  std::string problem;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    problem = "changed while it was opened";
  } else if (static_cast<std::uintmax_t>(st.st_size) > max_bytes) {
    problem = "is " + std::to_string(st.st_size >> 20) + " MiB, over the limit of " + std::to_string(max_bytes >> 20) + " MiB";
  } else {
    bytes.resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < bytes.size()) {
      const ssize_t n = read(fd, bytes.data() + got, bytes.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        problem = n < 0 ? "could not be read: " + errno_text(errno) : "is shorter than its size (changed while reading?)";
        break;
      }
      got += static_cast<size_t>(n);
    }
  }
  close(fd);
  if (!problem.empty()) throw Error(file, problem);
  return bytes;
}

void write_line_whole(int fd, std::string_view line, const std::string& name) {
  size_t written = 0;
  while (written < line.size()) {
    const ssize_t n = write(fd, line.data() + written, line.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n > 0) {
      written += static_cast<size_t>(n);
      continue;
    }
    const int error = n < 0 ? errno : EIO;
    std::string removed;
    struct stat st {};
    if (written > 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
      // The offset is now just past what was written of this line (with O_APPEND too); cut that
      // off, unless another process appended to the file meanwhile.
      const off_t end = lseek(fd, 0, SEEK_CUR);
      const off_t start = end - static_cast<off_t>(written);
      if (end >= 0 && start >= 0 && st.st_size == end && ftruncate(fd, start) == 0 && lseek(fd, start, SEEK_SET) == start) {
        removed = " (the part of the line already written was removed)";
      }
    }
    throw OutputError(name, "cannot write results: " + errno_text(error) + removed);
  }
}

void write_file_atomically(const fs::path& file, std::string_view bytes) {
  AtomicFileWriter writer(file);
  writer.append(bytes);
  writer.commit();
}

std::vector<fs::path> stale_temporaries_of(const fs::path& file) {
  std::vector<fs::path> found;
  const std::string prefix = "." + file.filename().string() + ".";
  std::error_code ec;
  for (auto it = fs::directory_iterator(file.parent_path().empty() ? fs::path(".") : file.parent_path(), ec);
       !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::string host;
    long pid = 0;
    if (name.compare(0, prefix.size(), prefix) != 0 || !parse_temporary_name(name, host, pid)) continue;
    std::error_code ignored;
    if (host == host_tag() && !process_is_running(pid) && it->is_regular_file(ignored)) found.push_back(it->path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

size_t remove_stale_temporaries(const fs::path& folder) {
  size_t removed = 0;
  std::error_code ec;
  const auto options = fs::directory_options::skip_permission_denied;
  for (auto it = fs::recursive_directory_iterator(folder, options, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    std::string host;
    long pid = 0;
    if (!parse_temporary_name(it->path().filename().string(), host, pid)) continue;
    if (host != host_tag() || process_is_running(pid)) continue;
    std::error_code ignored;
    if (it->is_regular_file(ignored) && fs::remove(it->path(), ignored)) {
      ++removed;
      logger().debug("removed {}, a temporary file of an earlier run that was killed", it->path().string());
    }
  }
  return removed;
}

namespace {

// The write end of the pipe through which the signal handler wakes the clean-up thread. A handler
// may run on any thread (OpenBLAS starts its own before main) and may only do async-signal-safe
// things: it writes the signal number, nothing else.
int signal_pipe_write = -1;

extern "C" void forward_signal(int received) {
  const int saved = errno;
  const unsigned char byte = static_cast<unsigned char>(received);
  [[maybe_unused]] const ssize_t ignored = write(signal_pipe_write, &byte, 1);
  errno = saved;
}

}  // namespace

void clean_up_temporaries_on_signals() {
  static std::once_flag once;
  std::call_once(once, [] {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      logger().warn("cannot set up clean-up on signals ({}): an interrupted run may leave temporary files", errno_text(errno));
      return;
    }
    signal_pipe_write = fds[1];
    std::thread([read_end = fds[0]] {
      unsigned char byte = 0;
      while (read(read_end, &byte, 1) != 1) {
      }
      const int received = byte;
      auto& registry = temporaries();
      registry.mutex.lock();  // held until the end: no new temporary after this point
      for (const auto& path : registry.paths) unlink(path.c_str());
      // End by the same signal, as an unhandled one would have, so that a shell or scheduler
      // sees how the run ended.
      signal(received, SIG_DFL);
      raise(received);
      _exit(128 + received);  // not reached
    }).detach();
    struct sigaction action {};
    action.sa_handler = forward_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaction(s, &action, nullptr);
  });
}

void prepare_output_folder(const fs::path& folder) {
  if (folder.empty()) throw OutputError("--out names no folder (an empty path)");
  std::error_code ec;
  if (fs::exists(folder, ec) && !fs::is_directory(folder, ec)) throw OutputError(folder, "exists and is not a folder");
  fs::create_directories(folder, ec);
  if (ec || !fs::is_directory(folder, ec)) {
    throw OutputError(folder, "cannot create output folder: " + (ec ? ec.message() : std::string("unknown error")));
  }
  // Only a real write shows that files can be created here (permissions, read-only mounts, quotas;
  // root passes every permission check).
  write_file_atomically(folder / ".tve-write-check", "");
  fs::remove(folder / ".tve-write-check", ec);
  if (const size_t removed = remove_stale_temporaries(folder)) {
    logger().info("removed {} temporary file(s) left under {} by an interrupted run", removed, folder.string());
  }
}

}  // namespace tve
