#include "mopt/opt/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <streambuf>
#include <string>
#include <tuple>
#include <unordered_set>
#include <utility>
#include <vector>

#include "mopt/core/error.h"

namespace mopt::opt {

// Tensor bytes go between memory and the file as they are; safetensors is little-endian.
static_assert(std::endian::native == std::endian::little,
              "mopt's safetensors I/O supports little-endian hosts only");

namespace {

using json = nlohmann::json;

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

// A valid header nests three levels (header object, tensor entry, shape list); the bound keeps a
// hostile header from building deep values that later recursion (dump, compare) would follow.
constexpr int kMaxHeaderDepth = 16;

// Longest name or JSON value quoted in an error message: a hostile header may hold a 100 MB
// string, which must not become a 100 MB exception message.
constexpr size_t kMaxQuotedChars = 120;

struct DtypeCode {
  const char* code;
  at::ScalarType type;
};

constexpr DtypeCode kDtypeCodes[] = {
    {"BOOL", at::ScalarType::Bool},
    {"U8", at::ScalarType::Byte},
    {"I8", at::ScalarType::Char},
    {"I16", at::ScalarType::Short},
    {"U16", at::ScalarType::UInt16},
    {"I32", at::ScalarType::Int},
    {"U32", at::ScalarType::UInt32},
    {"I64", at::ScalarType::Long},
    {"U64", at::ScalarType::UInt64},
    {"F16", at::ScalarType::Half},
    {"BF16", at::ScalarType::BFloat16},
    {"F32", at::ScalarType::Float},
    {"F64", at::ScalarType::Double},
    {"F8_E4M3", at::ScalarType::Float8_e4m3fn},
    {"F8_E5M2", at::ScalarType::Float8_e5m2},
};

const char* dtype_code(at::ScalarType type) {
  for (const auto& d : kDtypeCodes) {
    if (d.type == type) return d.code;
  }
  return nullptr;
}

const DtypeCode* find_dtype(const std::string& code) {
  for (const auto& d : kDtypeCodes) {
    if (code == d.code) return &d;
  }
  return nullptr;
}

std::string truncated(std::string s) {
  if (s.size() > kMaxQuotedChars) {
    // Cut before a UTF-8 continuation byte's lead, so the message stays valid UTF-8 for Python.
    size_t n = kMaxQuotedChars;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
    s.resize(n);
    s += "...";
  }
  return s;
}

// `name` in quotes for an error message.
std::string quote_name(const std::string& name) {
  std::string s(1, '\'');
  s.append(truncated(name)).push_back('\'');
  return s;
}

// `v` as JSON for an error message.
std::string brief(const json& v) {
  return truncated(v.dump(-1, ' ', false, json::error_handler_t::replace));
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

std::string errno_str(int err) { return std::strerror(err); }

// ------------------------------------------------------------------------------------------------
// Writing.

// An ostream buffer over a POSIX file descriptor (std::ofstream cannot be fsync'ed and hides
// errno, which a user needs to tell a full disk from a missing permission). Writes larger than
// the buffer go straight to the file, so tensor data is not copied once more.
class FdOutBuf : public std::streambuf {
 public:
  explicit FdOutBuf(int fd) : fd_(fd), buf_(1 << 20) { reset(); }

  // errno of the first failed write; 0 when all succeeded.
  int error() const { return error_; }

  bool flush_buffer() {
    const size_t n = static_cast<size_t>(pptr() - pbase());
    reset();
    return write_all(buf_.data(), n);
  }

 protected:
  int_type overflow(int_type ch) override {
    if (!flush_buffer()) return traits_type::eof();
    if (!traits_type::eq_int_type(ch, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(ch);
      pbump(1);
    }
    return traits_type::not_eof(ch);
  }

  std::streamsize xsputn(const char* s, std::streamsize n) override {
    if (n <= 0) return 0;
    const auto len = static_cast<size_t>(n);
    if (len > static_cast<size_t>(epptr() - pptr())) {
      if (!flush_buffer()) return 0;
      if (len >= buf_.size()) return write_all(s, len) ? n : 0;
    }
    std::memcpy(pptr(), s, len);
    pbump(static_cast<int>(len));  // len < buf_.size() = 1 MiB here
    return n;
  }

  int sync() override { return flush_buffer() ? 0 : -1; }

 private:
  void reset() { setp(buf_.data(), buf_.data() + buf_.size()); }

  bool write_all(const char* p, size_t n) {
    if (error_ != 0) return false;
    while (n > 0) {
      // Linux writes at most ~2 GiB per call; larger tensors take several.
      const ssize_t w = ::write(fd_, p, std::min<size_t>(n, size_t{1} << 30));
      if (w < 0) {
        if (errno == EINTR) continue;
        error_ = errno;
        return false;
      }
      if (w == 0) {
        error_ = EIO;
        return false;
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }

  int fd_;
  std::vector<char> buf_;
  int error_ = 0;
};

// The temporary file beside the target; removed on destruction unless it was renamed.
class TempFile {
 public:
  explicit TempFile(const std::filesystem::path& target) {
    // pid + random suffix + O_EXCL: concurrent writers of the same target (threads or processes)
    // never share a temporary file.
    static std::mt19937_64 rng = [] {
      std::random_device rd;
      const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
      return std::mt19937_64((static_cast<uint64_t>(rd()) << 32) ^ static_cast<uint64_t>(now));
    }();
    static std::mutex rng_mutex;
    const std::string base = target.filename().string();
    int err = 0;
    for (int attempt = 0; attempt < 16; ++attempt) {
      uint64_t suffix;
      {
        std::lock_guard<std::mutex> lock(rng_mutex);
        suffix = rng();
      }
      std::ostringstream name;
      name << "." << base << ".tmp." << ::getpid() << "." << std::hex << suffix;
      path_ = (target.parent_path() / name.str()).string();
      fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ >= 0) return;
      err = errno;
      if (err != EEXIST) break;
    }
    MOPT_CHECK_STATE(false, "cannot write ", target.string(), ": cannot create the temporary file ",
                     path_, ": ", errno_str(err));
  }

  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
  }

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

  // Closes the descriptor; returns errno, or 0 (close reports delayed write errors on some file
  // systems, NFS among them).
  int close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc == 0 ? 0 : errno;
  }

  // The file was renamed: nothing to remove any more.
  void release() { path_.clear(); }

 private:
  std::string path_;
  int fd_ = -1;
};

// Flushes the directory entry of a rename to disk. Best effort: the file is already in place,
// and some file systems refuse fsync on a directory (EINVAL), which is no write failure.
void fsync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// The JSON string literal of `s`; ValueError naming `what` if `s` is not valid UTF-8.
std::string json_string(const std::string& s, const char* what) {
  try {
    return json(s).dump();
  } catch (const json::exception& e) {
    // The message shows `s` with its invalid bytes replaced: raw, it could not become a Python str.
    MOPT_CHECK_VALUE(false, "save_safetensors: the ", what, " ", brief(json(s)),
                     " is not valid UTF-8");
  }
  return {};
}

// ------------------------------------------------------------------------------------------------
// Reading.

// A file opened for reading; errors name its path.
class InFile {
 public:
  explicit InFile(const std::string& path) : path_(path) {
    do {
      fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    } while (fd_ < 0 && errno == EINTR);
    MOPT_CHECK_STATE(fd_ >= 0, "cannot open ", path, ": ", errno_str(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int err = errno;
      ::close(fd_);
      MOPT_CHECK_STATE(false, "cannot stat ", path, ": ", errno_str(err));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      MOPT_CHECK_STATE(false, "cannot read ", path, ": not a regular file");
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }

  InFile(const InFile&) = delete;
  InFile& operator=(const InFile&) = delete;
  ~InFile() { ::close(fd_); }

  uint64_t size() const { return size_; }

  // Reads exactly `n` bytes at `offset`; RuntimeError if the file ends early (it changed since
  // its size was taken) or the read fails.
  void read_at(void* dst, uint64_t n, uint64_t offset) const {
    auto* p = static_cast<char*>(dst);
    while (n > 0) {
      const ssize_t r =
          ::pread(fd_, p, std::min<uint64_t>(n, uint64_t{1} << 30), static_cast<off_t>(offset));
      if (r < 0 && errno == EINTR) continue;
      MOPT_CHECK_STATE(r >= 0, "cannot read ", path_, ": ", errno_str(errno));
      MOPT_CHECK_STATE(r > 0, "cannot read ", path_, ": the file ended at byte ", offset,
                       " (was it truncated while being read?)");
      p += r;
      n -= static_cast<uint64_t>(r);
      offset += static_cast<uint64_t>(r);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// SAX handler for the header: keeps the top-level members in file order (a vector, not an
// ordered_json, whose insertion scans all keys and would make a header of a million entries
// quadratic), builds each member's value as a plain json, rejects duplicate keys at any level
// (nlohmann would silently keep the last one, so two readers could disagree about a file), and
// bounds the nesting depth.
class HeaderSax : public nlohmann::json_sax<json> {
 public:
  explicit HeaderSax(const std::string& path) : path_(path) {}

  std::vector<std::pair<std::string, json>> members;

  bool null() override { return add(json(nullptr)); }
  bool boolean(bool v) override { return add(json(v)); }
  bool number_integer(number_integer_t v) override { return add(json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return add(json(v)); }
  bool number_float(number_float_t v, const string_t&) override { return add(json(v)); }
  bool string(string_t& v) override { return add(json(std::move(v))); }
  bool binary(binary_t&) override { return add(json(nullptr)); }  // CBOR etc. only, not JSON

  bool start_object(std::size_t) override { return open(json::object()); }
  bool start_array(std::size_t) override { return open(json::array()); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool key(string_t& k) override {
    if (stack_.empty()) {
      MOPT_CHECK_VALUE(names_.insert(k).second, path_, ": the header names ", quote_name(k),
                       " twice");
      members.emplace_back(k, json());
      slot_ = &members.back().second;
    } else {
      json& object = *stack_.back();
      MOPT_CHECK_VALUE(!object.contains(k), path_, ": a header entry has the key ", quote_name(k),
                       " twice");
      slot_ = &object[k];
    }
    return true;
  }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    MOPT_CHECK_VALUE(false, path_, ": the header is not valid JSON: ", e.what());
    return false;
  }

 private:
  // `v` at the current position; returns where it went (for containers).
  json* place(json v) {
    MOPT_CHECK_VALUE(depth_ > 0, path_, ": the header is not a JSON object");
    if (stack_.empty()) {  // a member of the header object; key() chose the slot
      *slot_ = std::move(v);
      return slot_;
    }
    json& parent = *stack_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(v));
      return &parent.back();
    }
    *slot_ = std::move(v);
    return slot_;
  }

  bool add(json v) {
    place(std::move(v));
    return true;
  }

  bool open(json container) {
    MOPT_CHECK_VALUE(depth_ < kMaxHeaderDepth, path_, ": the header nests deeper than ",
                     kMaxHeaderDepth, " levels");
    if (depth_ == 0) {
      MOPT_CHECK_VALUE(container.is_object(), path_, ": the header is not a JSON object");
    } else {
      stack_.push_back(place(std::move(container)));
    }
    ++depth_;
    return true;
  }

  bool close() {
    --depth_;
    if (!stack_.empty()) stack_.pop_back();
    return true;
  }

  const std::string& path_;
  int depth_ = 0;             // open containers, the header object included
  std::vector<json*> stack_;  // open containers below the header object
  json* slot_ = nullptr;      // where the value after the last key goes
  std::unordered_set<std::string> names_;
};

struct TensorEntry {
  std::string name;
  const DtypeCode* dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

struct Header {
  std::vector<TensorEntry> tensors;  // in the order of the header
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // file offset of the data area
};

// A non-negative JSON integer that fits in int64, or -1. nlohmann keeps 2**63 .. 2**64-1 as
// unsigned and numbers beyond 2**64 as floating point; both are out of range here, and so is
// 4.0, which safetensors' own reader rejects too.
int64_t non_negative_int(const json& v) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    return u <= static_cast<uint64_t>(kInt64Max) ? static_cast<int64_t>(u) : -1;
  }
  if (v.is_number_integer()) {
    const auto i = v.get<int64_t>();  // "-0" parses as a signed 0
    return i >= 0 ? i : -1;
  }
  return -1;
}

TensorEntry parse_entry(const std::string& path, const std::string& name, const json& v,
                        uint64_t data_size) {
  const std::string what = path + ": tensor " + quote_name(name);
  MOPT_CHECK_VALUE(v.is_object() && v.size() == 3 && v.contains("dtype") && v.contains("shape") &&
                       v.contains("data_offsets"),
                   what,
                   " must be an object with exactly the keys dtype, shape and data_offsets, got ",
                   brief(v));
  TensorEntry e{name, nullptr, {}, 0, 0};

  const json& dtype = v["dtype"];
  if (dtype.is_string()) e.dtype = find_dtype(dtype.get_ref<const std::string&>());
  MOPT_CHECK_VALUE(e.dtype != nullptr, what, " has dtype ", brief(dtype),
                   ", which mopt cannot read (supported: BOOL U8 I8 I16 U16 I32 U32 I64 U64 F16 "
                   "BF16 F32 F64 F8_E4M3 F8_E5M2)");

  const json& shape = v["shape"];
  MOPT_CHECK_VALUE(shape.is_array(), what, " has shape ", brief(shape),
                   ", expected a list of non-negative integers");
  // The element count is folded in order with overflow checks, as safetensors' reader and ATen's
  // own numel computation do, so every accepted shape is one at::empty accepts.
  int64_t nbytes = static_cast<int64_t>(c10::elementSize(e.dtype->type));
  bool overflow = false;
  for (const json& d : shape) {
    const int64_t dim = non_negative_int(d);
    MOPT_CHECK_VALUE(dim >= 0, what, " has shape ", brief(shape),
                     ", expected a list of non-negative integers");
    e.shape.push_back(dim);
    overflow = overflow || __builtin_mul_overflow(nbytes, dim, &nbytes);
  }
  MOPT_CHECK_VALUE(!overflow, what, " has shape ", shape_str(e.shape), " of ", e.dtype->code,
                   ", whose size in bytes overflows a 64-bit integer");

  const json& offsets = v["data_offsets"];
  const bool two = offsets.is_array() && offsets.size() == 2;
  const int64_t begin = two ? non_negative_int(offsets[0]) : -1;
  const int64_t end = two ? non_negative_int(offsets[1]) : -1;
  MOPT_CHECK_VALUE(begin >= 0 && end >= 0, what, " has data_offsets ", brief(offsets),
                   ", expected [begin, end], two non-negative integers");
  e.begin = static_cast<uint64_t>(begin);
  e.end = static_cast<uint64_t>(end);
  MOPT_CHECK_VALUE(e.begin <= e.end && e.end <= data_size, what, " has data_offsets [", e.begin,
                   ", ", e.end, "] outside the data area of ", data_size, " bytes");
  MOPT_CHECK_VALUE(e.end - e.begin == static_cast<uint64_t>(nbytes), what, " data_offsets [",
                   e.begin, ", ", e.end, "] do not match shape ", shape_str(e.shape), " of ",
                   e.dtype->code, " (", nbytes, " bytes)");
  return e;
}

// Reads and checks the whole header; no tensor data is read.
Header read_header(const InFile& file, const std::string& path) {
  const uint64_t size = file.size();
  MOPT_CHECK_VALUE(size >= 8, path, ": the file is ", size,
                   " bytes, shorter than the 8-byte header length of a safetensors file");
  unsigned char len_bytes[8];
  file.read_at(len_bytes, 8, 0);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  MOPT_CHECK_VALUE(header_len <= kMaxSafetensorsHeaderBytes, path, ": the header length ",
                   header_len, " exceeds the limit of ", kMaxSafetensorsHeaderBytes,
                   " bytes (not a safetensors file, or a corrupt one)");
  MOPT_CHECK_VALUE(header_len <= size - 8, path, ": the header length ", header_len,
                   " exceeds the file (", size, " bytes); is it truncated?");
  std::string text(header_len, '\0');
  file.read_at(text.data(), header_len, 8);
  // nlohmann's lexer takes a NUL byte for the end of its input, which would hide what follows.
  const size_t nul = text.find('\0');
  MOPT_CHECK_VALUE(nul == std::string::npos, path, ": the header is not valid JSON: a NUL byte at ",
                   nul, " of ", header_len);

  HeaderSax sax(path);
  try {
    json::sax_parse(text, &sax);
  } catch (const json::exception& e) {
    MOPT_CHECK_VALUE(false, path, ": the header is not valid JSON: ", e.what());
  }
  text = std::string();  // a large header need not stay in memory twice

  Header h;
  h.data_start = 8 + header_len;
  const uint64_t data_size = size - h.data_start;
  for (const auto& [name, value] : sax.members) {
    if (name == "__metadata__") {
      MOPT_CHECK_VALUE(value.is_object(), path, ": __metadata__ must be an object of strings, got ",
                       brief(value));
      for (const auto& [key, item] : value.items()) {
        MOPT_CHECK_VALUE(item.is_string(), path, ": __metadata__ ", quote_name(key),
                         " must be a string, got ", brief(item));
        h.metadata.emplace(key, item.get<std::string>());
      }
      continue;
    }
    h.tensors.push_back(parse_entry(path, name, value, data_size));
  }

  std::vector<const TensorEntry*> by_offset;
  by_offset.reserve(h.tensors.size());
  for (const auto& t : h.tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return std::tie(a->begin, a->end) < std::tie(b->begin, b->end);
  });
  // Gaps between tensors are allowed (safetensors' own reader is stricter); overlap is not, since
  // it would let one byte change two tensors. Zero-size tensors overlap nothing.
  const TensorEntry* furthest = nullptr;  // of the tensors so far, the one ending last
  for (const TensorEntry* t : by_offset) {
    if (furthest != nullptr) {
      MOPT_CHECK_VALUE(t->begin >= furthest->end, path, ": tensor ", quote_name(t->name),
                       " data_offsets [", t->begin, ", ", t->end, "] overlap tensor ",
                       quote_name(furthest->name), " [", furthest->begin, ", ", furthest->end, "]");
    }
    if (furthest == nullptr || t->end > furthest->end) furthest = t;
  }
  return h;
}

}  // namespace

void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  MOPT_CHECK_VALUE(target.has_filename(), "cannot write ", quote_name(path), ": not a file path");
  TempFile tmp(target);
  FdOutBuf buf(tmp.fd());
  std::ostream os(&buf);
  // The first failed write throws at once instead of the caller streaming the rest of a model
  // into a full disk.
  os.exceptions(std::ios::badbit);
  try {
    write(os);
    os.flush();
  } catch (...) {
    MOPT_CHECK_STATE(buf.error() == 0, "cannot write ", path, ": ", errno_str(buf.error()));
    throw;
  }
  MOPT_CHECK_STATE(buf.error() == 0 && !os.bad(), "cannot write ", path, ": ",
                   buf.error() ? errno_str(buf.error()) : "the stream reported an error");
  // Without the fsync a crash shortly after the rename could leave an empty file at `path` on
  // file systems that order metadata before data (ext4 with delalloc, XFS).
  MOPT_CHECK_STATE(::fsync(tmp.fd()) == 0, "cannot write ", path,
                   ": fsync failed: ", errno_str(errno));
  const int close_err = tmp.close();
  MOPT_CHECK_STATE(close_err == 0, "cannot write ", path, ": ", errno_str(close_err));
  MOPT_CHECK_STATE(::rename(tmp.path().c_str(), path.c_str()) == 0, "cannot write ", path,
                   ": cannot rename ", tmp.path(), " over it: ", errno_str(errno));
  tmp.release();
  fsync_directory(target.parent_path());
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Everything is checked and the whole header built before the file is opened, so a bad
  // argument never leaves a half-written file or replaces a good one.
  std::unordered_set<std::string> names;
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) header += ',';
      first = false;
      header += json_string(key, "metadata key");
      header += ':';
      header += json_string(value, "metadata value");
    }
    header += '}';
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    MOPT_CHECK_VALUE(!name.empty(), "save_safetensors: a tensor has an empty name");
    MOPT_CHECK_VALUE(name != "__metadata__",
                     "save_safetensors: '__metadata__' is reserved for the header's metadata and "
                     "cannot name a tensor");
    MOPT_CHECK_VALUE(names.insert(name).second, "save_safetensors: the name ", quote_name(name),
                     " is given twice");
    MOPT_CHECK_VALUE(t.defined(), "save_safetensors: tensor ", quote_name(name), " is undefined");
    MOPT_CHECK_VALUE(t.layout() == at::kStrided, "save_safetensors: tensor ", quote_name(name),
                     " has layout ", t.layout(), "; only dense (strided) tensors can be saved");
    MOPT_CHECK_VALUE(!t.is_meta(), "save_safetensors: tensor ", quote_name(name),
                     " is on the meta device and has no data");
    const char* code = dtype_code(t.scalar_type());
    MOPT_CHECK_VALUE(code != nullptr, "save_safetensors: tensor ", quote_name(name), " has dtype ",
                     t.scalar_type(), ", which safetensors has no code for");
    const auto nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    uint64_t end = 0;
    MOPT_CHECK_VALUE(!__builtin_add_overflow(offset, nbytes, &end),
                     "save_safetensors: the tensors hold more than 2**64 bytes");
    if (header.size() > 1) header += ',';
    header += json_string(name, "tensor name");
    header += ":{\"dtype\":\"";
    header += code;
    header += "\",\"shape\":[";
    for (int64_t i = 0; i < t.dim(); ++i) {
      if (i) header += ',';
      header += std::to_string(t.size(i));
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(end) + "]}";
    offset = end;
  }
  header += '}';
  // Padding to a multiple of 8, as safetensors does, keeps the data area 8-byte aligned when the
  // file is memory-mapped.
  header.append((8 - header.size() % 8) % 8, ' ');

  write_file_atomic(path, [&](std::ostream& os) {
    unsigned char len_bytes[8];
    uint64_t len = header.size();
    for (auto& b : len_bytes) {
      b = static_cast<unsigned char>(len & 0xff);
      len >>= 8;
    }
    os.write(reinterpret_cast<const char*>(len_bytes), 8);
    os.write(header.data(), static_cast<std::streamsize>(header.size()));
    // One tensor at a time: a model on the GPU is copied to the host tensor by tensor, never whole.
    // Tensors sharing storage are each copied out; `contiguous` also resolves any strides.
    for (const auto& [name, t] : tensors) {
      const at::Tensor c = t.detach().cpu().contiguous().resolve_conj().resolve_neg();
      const auto nbytes = static_cast<std::streamsize>(c.nbytes());
      if (nbytes > 0) os.write(static_cast<const char*>(c.const_data_ptr()), nbytes);
    }
  });
}

SafetensorsFile load_safetensors(const std::string& path) {
  const InFile file(path);
  Header h = read_header(file, path);
  SafetensorsFile out;
  out.metadata = std::move(h.metadata);
  out.tensors.reserve(h.tensors.size());
  for (const auto& e : h.tensors) {
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype->type));
    const uint64_t nbytes = e.end - e.begin;
    if (nbytes > 0) file.read_at(t.mutable_data_ptr(), nbytes, h.data_start + e.begin);
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

std::map<std::string, std::string> load_safetensors_metadata(const std::string& path) {
  const InFile file(path);
  return read_header(file, path).metadata;
}

}  // namespace mopt::opt
