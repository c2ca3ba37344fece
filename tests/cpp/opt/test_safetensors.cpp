// The safetensors reader and writer: bit-exact round trips of every dtype, the file layout the
// official library writes, atomic replacement, and hostile input (hand-crafted headers, every
// truncation, seeded random mutations), which must end in an error, never a crash, a sanitizer
// report or a hang. `make test-sanitize` runs these under ASan + UBSan.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <typeinfo>
#include <utility>
#include <vector>

#include "mopt/opt/safetensors.h"

namespace mopt::opt {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kSeed = 20250611;

const std::vector<std::pair<at::ScalarType, const char*>>& all_dtypes() {
  static const std::vector<std::pair<at::ScalarType, const char*>> dtypes = {
      {at::ScalarType::Bool, "BOOL"},
      {at::ScalarType::Byte, "U8"},
      {at::ScalarType::Char, "I8"},
      {at::ScalarType::Short, "I16"},
      {at::ScalarType::UInt16, "U16"},
      {at::ScalarType::Int, "I32"},
      {at::ScalarType::UInt32, "U32"},
      {at::ScalarType::Long, "I64"},
      {at::ScalarType::UInt64, "U64"},
      {at::ScalarType::Half, "F16"},
      {at::ScalarType::BFloat16, "BF16"},
      {at::ScalarType::Float, "F32"},
      {at::ScalarType::Double, "F64"},
      {at::ScalarType::Float8_e4m3fn, "F8_E4M3"},
      {at::ScalarType::Float8_e5m2, "F8_E5M2"},
  };
  return dtypes;
}

// Random bytes of every bit pattern (NaNs and infinities included, which a bit-exact comparison
// must carry too); bools stay 0/1, the only values a bool may hold.
at::Tensor random_tensor(at::IntArrayRef shape, at::ScalarType dtype, std::mt19937_64& rng) {
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
  auto* p = static_cast<uint8_t*>(t.mutable_data_ptr());
  for (size_t i = 0; i < t.nbytes(); ++i) {
    p[i] = static_cast<uint8_t>(dtype == at::ScalarType::Bool ? rng() & 1 : rng() & 0xff);
  }
  return t;
}

// Same dtype, shape and bytes (==, unlike at::equal, tells NaN payloads and -0.0 apart).
::testing::AssertionResult same_bytes(const at::Tensor& actual, const at::Tensor& expected) {
  if (actual.scalar_type() != expected.scalar_type() || actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure()
           << "got " << actual.scalar_type() << " " << actual.sizes() << ", expected "
           << expected.scalar_type() << " " << expected.sizes();
  }
  const at::Tensor a = actual.contiguous();
  const at::Tensor e = expected.contiguous();
  if (a.nbytes() > 0 && std::memcmp(a.const_data_ptr(), e.const_data_ptr(), a.nbytes()) != 0) {
    return ::testing::AssertionFailure() << "the bytes differ";
  }
  return ::testing::AssertionSuccess();
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  // A new file rather than a truncated one: ext4 flushes a file truncated and rewritten to disk
  // on close, which made the fuzz test wait on the disk.
  std::remove(path.c_str());
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string length_field(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file of `header` (unpadded, its true length in the length field) and `data_bytes` bytes.
std::string raw_file(const std::string& header, size_t data_bytes) {
  std::string data(data_bytes, '\0');
  for (size_t i = 0; i < data_bytes; ++i) data[i] = static_cast<char>(i * 37 + 11);
  return length_field(header.size()) + header + data;
}

// The message of the ValueError `f` raises; a test failure if it raises nothing or another error.
template <class F>
std::string value_error(F&& f) {
  try {
    f();
  } catch (const c10::ValueError& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected a ValueError, got " << typeid(e).name() << ": " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected a ValueError, nothing was thrown";
  return "";
}

// The message of the plain c10::Error (RuntimeError in Python) that `f` raises.
template <class F>
std::string runtime_error(F&& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    EXPECT_TRUE(typeid(e) == typeid(c10::Error))
        << "expected a RuntimeError, got " << typeid(e).name() << ": "
        << e.what_without_backtrace();
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected a c10::Error, got " << typeid(e).name() << ": " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected a RuntimeError, nothing was thrown";
  return "";
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("mopt_safetensors." + std::to_string(::getpid()) + "." + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }

  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir_, ec);
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // The names in the test folder: a leftover temporary file shows up here.
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path dir_;
};

using Names = std::vector<std::string>;

// ------------------------------------------------------------------------------------------------
// Round trips.

TEST_F(SafetensorsTest, RoundTripEveryDtypeBitExact) {
  std::mt19937_64 rng(kSeed);
  const std::vector<std::vector<int64_t>> shapes = {{3, 5}, {}, {0, 4}, {17}, {2, 0, 3}};
  NamedTensors tensors;
  for (const auto& [dtype, code] : all_dtypes()) {
    for (const auto& shape : shapes) {
      tensors.emplace_back(std::string(code) + "/" + std::to_string(tensors.size()),
                           random_tensor(shape, dtype, rng));
    }
  }
  const std::string file = path("all.safetensors");
  save_safetensors(file, tensors);
  const SafetensorsFile loaded = load_safetensors(file);
  EXPECT_TRUE(loaded.metadata.empty());
  ASSERT_EQ(loaded.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    SCOPED_TRACE(tensors[i].first);
    EXPECT_EQ(loaded.tensors[i].first, tensors[i].first);  // the order given
    EXPECT_TRUE(same_bytes(loaded.tensors[i].second, tensors[i].second));
    EXPECT_TRUE(loaded.tensors[i].second.device().is_cpu());
  }
  EXPECT_EQ(listing(), Names{"all.safetensors"});
}

TEST_F(SafetensorsTest, RoundTripNonContiguousAndSharedStorage) {
  std::mt19937_64 rng(kSeed + 1);
  const at::Tensor base = random_tensor({6, 8}, at::ScalarType::Float, rng);
  const NamedTensors tensors = {
      {"base", base},
      {"transposed", base.t()},
      {"column_slice", base.narrow(1, 2, 3)},
      {"strided", base.slice(0, 0, 6, 2)},
      {"expanded", base[0].unsqueeze(0).expand({4, 8})},
      {"tied", base},  // a tied weight under a second name
      {"requires_grad", base.clone().requires_grad_(true)},
  };
  const std::string file = path("views.safetensors");
  save_safetensors(file, tensors);
  const SafetensorsFile loaded = load_safetensors(file);
  ASSERT_EQ(loaded.tensors.size(), tensors.size());
  uint64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    SCOPED_TRACE(tensors[i].first);
    EXPECT_EQ(loaded.tensors[i].first, tensors[i].first);
    EXPECT_TRUE(same_bytes(loaded.tensors[i].second, tensors[i].second.detach()));
    EXPECT_TRUE(loaded.tensors[i].second.is_contiguous());
    total += tensors[i].second.numel() * sizeof(float);
  }
  // Separate copies: the data area holds every tensor in full, and nothing loaded aliases.
  const std::string bytes = read_bytes(file);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(bytes.size(), 8 + header_len + total);
  EXPECT_NE(loaded.tensors[0].second.data_ptr(), loaded.tensors[5].second.data_ptr());
  loaded.tensors[0].second.fill_(1.0f);
  EXPECT_TRUE(same_bytes(loaded.tensors[5].second, base));
}

TEST_F(SafetensorsTest, RoundTripFromCuda) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  std::mt19937_64 rng(kSeed + 2);
  const at::Tensor host = random_tensor({5, 7}, at::ScalarType::BFloat16, rng);
  const std::string file = path("cuda.safetensors");
  save_safetensors(file, {{"w", host.to(at::kCUDA).t()}});
  const SafetensorsFile loaded = load_safetensors(file);
  ASSERT_EQ(loaded.tensors.size(), 1u);
  EXPECT_TRUE(same_bytes(loaded.tensors[0].second, host.t()));
}

TEST_F(SafetensorsTest, MetadataRoundTrip) {
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"mopt_state", R"({"modes": [["quantize", {"num_bits": 8}]], "version": "0.1"})"},
      {"unicode", "\xcf\x80 \xe2\x89\x88 3.14"},
      {"empty", ""},
      {"quote\"and\\slash", "line\nbreak\ttab\x01"},
  };
  const NamedTensors tensors = {{"layer.0/w\xc3\xa9ight \"q\"", at::arange(6).reshape({2, 3})}};
  const std::string file = path("meta.safetensors");
  save_safetensors(file, tensors, metadata);
  EXPECT_EQ(load_safetensors_metadata(file), metadata);
  const SafetensorsFile loaded = load_safetensors(file);
  EXPECT_EQ(loaded.metadata, metadata);
  ASSERT_EQ(loaded.tensors.size(), 1u);
  EXPECT_EQ(loaded.tensors[0].first, tensors[0].first);
  EXPECT_TRUE(same_bytes(loaded.tensors[0].second, tensors[0].second));

  // Metadata alone, and a file of nothing at all.
  save_safetensors(file, {}, metadata);
  EXPECT_EQ(load_safetensors(file).metadata, metadata);
  EXPECT_TRUE(load_safetensors(file).tensors.empty());
  save_safetensors(file, {});
  EXPECT_TRUE(load_safetensors_metadata(file).empty());
  EXPECT_TRUE(load_safetensors(file).tensors.empty());
}

TEST_F(SafetensorsTest, HeaderPaddedToEightAndTensorsBackToBack) {
  std::mt19937_64 rng(kSeed + 3);
  // Names of every length mod 8, so each amount of padding occurs.
  for (int extra = 0; extra < 8; ++extra) {
    SCOPED_TRACE(extra);
    const NamedTensors tensors = {
        {"z" + std::string(extra, 'x'), random_tensor({3}, at::ScalarType::Half, rng)},
        {"a", random_tensor({2, 2}, at::ScalarType::Double, rng)},
        {"empty", random_tensor({0}, at::ScalarType::Float, rng)},
        {"m", random_tensor({5}, at::ScalarType::Byte, rng)},
    };
    const std::map<std::string, std::string> metadata =
        extra % 2 ? std::map<std::string, std::string>{{"k", "v"}}
                  : std::map<std::string, std::string>{};
    const std::string file = path("pad.safetensors");
    save_safetensors(file, tensors, metadata);
    const std::string bytes = read_bytes(file);
    ASSERT_GE(bytes.size(), 8u);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[i]);
    EXPECT_EQ(header_len % 8, 0u);
    ASSERT_LE(8 + header_len, bytes.size());
    const std::string header = bytes.substr(8, header_len);
    EXPECT_EQ(header.front(), '{');
    const size_t brace = header.find_last_of('}');
    EXPECT_EQ(header.find_first_not_of(' ', brace + 1), std::string::npos) << header;
    EXPECT_LT(header.size() - brace - 1, 8u);

    const auto parsed = nlohmann::ordered_json::parse(header);
    EXPECT_EQ(parsed.contains("__metadata__"), !metadata.empty());
    uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
      SCOPED_TRACE(name);
      const auto& entry = parsed.at(name);
      EXPECT_EQ(entry.at("shape").get<std::vector<int64_t>>(), t.sizes().vec());
      const auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
      ASSERT_EQ(offsets.size(), 2u);
      EXPECT_EQ(offsets[0], offset);
      offset += t.nbytes();
      EXPECT_EQ(offsets[1], offset);
    }
    EXPECT_EQ(parsed.at("a").at("dtype"), "F64");
    EXPECT_EQ(bytes.size(), 8 + header_len + offset);
  }
}

// ------------------------------------------------------------------------------------------------
// The writer: argument checks and atomic replacement.

TEST_F(SafetensorsTest, WriterRejectsBadArgumentsBeforeWriting) {
  const std::string file = path("model.safetensors");
  write_bytes(file, "old contents");
  const at::Tensor ok = at::ones({2});
  const std::vector<std::pair<NamedTensors, std::string>> cases = {
      {{{"", ok}}, "empty name"},
      {{{"a", ok}, {"b", ok}, {"a", ok}}, "'a' is given twice"},
      {{{"__metadata__", ok}}, "'__metadata__' is reserved"},
      {{{"c", at::ones({2}, at::kComplexFloat)}}, "ComplexFloat"},
      {{{"q", at::quantize_per_tensor(at::ones({2}), 0.1, 0, at::kQInt8)}}, "QInt8"},
      {{{"u", at::Tensor()}}, "undefined"},
      {{{"s", at::ones({2, 2}).to_sparse()}}, "layout"},
      {{{"m", at::empty({2}, at::TensorOptions().device(at::kMeta))}}, "meta"},
      {{{"bad\xff\xfeutf8", ok}}, "not valid UTF-8"},
      {{{"fine", ok}, {"late", at::ones({1}, at::kComplexDouble)}}, "'late'"},
  };
  for (const auto& [tensors, expected] : cases) {
    SCOPED_TRACE(expected);
    const std::string msg = value_error([&] { save_safetensors(file, tensors); });
    EXPECT_NE(msg.find(expected), std::string::npos) << msg;
    EXPECT_EQ(read_bytes(file), "old contents");
    EXPECT_EQ(listing(), Names{"model.safetensors"});
  }
  const std::string msg =
      value_error([&] { save_safetensors(file, {{"a", ok}}, {{"k", "\xc3\x28"}}); });
  EXPECT_NE(msg.find("metadata value"), std::string::npos) << msg;
  EXPECT_EQ(read_bytes(file), "old contents");
  // Nothing is created where no file was.
  value_error([&] { save_safetensors(path("new.safetensors"), {{"", ok}}); });
  EXPECT_EQ(listing(), Names{"model.safetensors"});
}

TEST_F(SafetensorsTest, AtomicWriteKeepsOldFileWhenWriterThrows) {
  const std::string file = path("target.bin");
  write_bytes(file, "old contents");
  // More than the write buffer, so bytes reach the temporary file before the throw.
  const std::string chunk(3 << 20, 'x');
  EXPECT_THROW(write_file_atomic(file,
                                 [&](std::ostream& os) {
                                   os.write(chunk.data(),
                                            static_cast<std::streamsize>(chunk.size()));
                                   os << "more";
                                   throw std::runtime_error("boom");
                                 }),
               std::runtime_error);
  EXPECT_EQ(read_bytes(file), "old contents");
  EXPECT_EQ(listing(), Names{"target.bin"});

  // A c10::Error passes through unchanged, and so does a throw before any byte.
  try {
    write_file_atomic(file, [](std::ostream&) { TORCH_CHECK_VALUE(false, "bad value"); });
    ADD_FAILURE() << "nothing thrown";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("bad value"), std::string::npos);
  }
  EXPECT_EQ(read_bytes(file), "old contents");
  EXPECT_EQ(listing(), Names{"target.bin"});
}

TEST_F(SafetensorsTest, AtomicWriteReplacesFile) {
  const std::string file = path("target.bin");
  write_bytes(file, "old contents, longer than the new ones");
  write_file_atomic(file, [](std::ostream& os) { os << "new"; });
  EXPECT_EQ(read_bytes(file), "new");
  write_file_atomic(path("fresh.bin"), [](std::ostream& os) { os << ""; });
  EXPECT_EQ(read_bytes(path("fresh.bin")), "");
  EXPECT_EQ(listing(), (Names{"fresh.bin", "target.bin"}));
}

TEST_F(SafetensorsTest, WriteIntoMissingFolderIsRuntimeErrorNamingPath) {
  const std::string file = path("no/such/folder/model.safetensors");
  std::string msg = runtime_error([&] { save_safetensors(file, {{"w", at::ones({2})}}); });
  EXPECT_NE(msg.find(file), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::strerror(ENOENT)), std::string::npos) << msg;
  msg = runtime_error([&] { write_file_atomic(file, [](std::ostream& os) { os << "x"; }); });
  EXPECT_NE(msg.find(file), std::string::npos) << msg;
  EXPECT_TRUE(listing().empty());
  // A folder path, not a file path.
  value_error([&] { write_file_atomic(path("") + "/", [](std::ostream&) {}); });
}

// A folder no one can create files in, root included (permission bits do not stop root).
TEST_F(SafetensorsTest, WriteIntoUnwritableFolderIsRuntimeError) {
  const std::string file = "/proc/self/model.safetensors";
  const std::string msg = runtime_error([&] { save_safetensors(file, {{"w", at::ones({2})}}); });
  EXPECT_NE(msg.find(file), std::string::npos) << msg;
}

// A full disk, simulated with a file size limit: write() fails with EFBIG (and SIGXFSZ, ignored
// here) as it fails with ENOSPC on a full disk.
TEST_F(SafetensorsTest, FailedWriteIsRuntimeErrorAndKeepsOldFile) {
  rlimit old_limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  // 64 KiB, or a lower hard limit the environment already imposes (the 4 MiB write fails either
  // way; the 12-byte old file fits any limit a test runner would set)
  const rlim_t kLimit = old_limit.rlim_max == RLIM_INFINITY
                            ? rlim_t{64 << 10}
                            : std::min<rlim_t>(64 << 10, old_limit.rlim_max);
  const std::string file = path("model.safetensors");
  write_bytes(file, "old contents");
  const at::Tensor big = at::ones({1 << 20}, at::kFloat);  // 4 MiB

  struct Restore {
    rlimit limit;
    void (*handler)(int);
    ~Restore() {
      ::setrlimit(RLIMIT_FSIZE, &limit);
      ::signal(SIGXFSZ, handler);
    }
  } restore{old_limit, ::signal(SIGXFSZ, SIG_IGN)};
  rlimit small = old_limit;
  small.rlim_cur = kLimit;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  const std::string msg = runtime_error([&] { save_safetensors(file, {{"a", big}, {"b", big}}); });
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  EXPECT_NE(msg.find(file), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::strerror(EFBIG)), std::string::npos) << msg;
  EXPECT_EQ(read_bytes(file), "old contents");
  EXPECT_EQ(listing(), Names{"model.safetensors"});
}

// ------------------------------------------------------------------------------------------------
// The reader: open errors, hand-crafted headers, truncation, fuzz.

TEST_F(SafetensorsTest, OpenErrorsAreRuntimeErrorsNamingPath) {
  const std::string missing = path("missing.safetensors");
  std::string msg = runtime_error([&] { load_safetensors(missing); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::strerror(ENOENT)), std::string::npos) << msg;
  msg = runtime_error([&] { load_safetensors_metadata(missing); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;
  msg = runtime_error([&] { load_safetensors(dir_.string()); });
  EXPECT_NE(msg.find(dir_.string()), std::string::npos) << msg;
}

struct BadHeader {
  const char* what;
  std::string header;
  size_t data_bytes;
  const char* expected;  // a part of the message
};

TEST_F(SafetensorsTest, RejectsInvalidHeaders) {
  const std::string deep = std::string(100, '[') + std::string(100, ']');
  const std::vector<BadHeader> cases = {
      {"truncated JSON", R"({"a": )", 0, "not valid JSON"},
      {"empty header", "", 0, "not valid JSON"},
      {"trailing garbage", R"({} x)", 0, "not valid JSON"},
      {"NUL padding", std::string("{}\0\0", 4), 0, "not valid JSON"},
      {"invalid UTF-8 name", "{\"\xff\":{}}", 0, "not valid JSON"},
      {"number overflow", R"({"__metadata__": {"k": 1e400}})", 0, "not valid JSON"},
      {"array header", "[1, 2]", 0, "not a JSON object"},
      {"string header", R"("x")", 0, "not a JSON object"},
      {"deep nesting", R"({"__metadata__": )" + deep + "}", 0, "nests deeper"},
      {"entry not an object", R"({"a": 5})", 0, "exactly the keys"},
      {"missing key", R"({"a": {"dtype": "F32", "shape": [1]}})", 4, "exactly the keys"},
      {"extra key", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}})", 4,
       "exactly the keys"},
      {"unknown dtype", R"({"a": {"dtype": "F4", "shape": [1], "data_offsets": [0, 4]}})", 4,
       "has dtype \"F4\""},
      {"complex dtype", R"({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}})", 8,
       "has dtype \"C64\""},
      {"lower-case dtype", R"({"a": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}})", 4,
       "has dtype"},
      {"dtype not a string", R"({"a": {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}})", 4,
       "has dtype 7"},
      {"shape not a list", R"({"a": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}})", 4,
       "has shape 1"},
      {"negative dim", R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4,
       "has shape [-1]"},
      {"float dim", R"({"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}})", 4,
       "has shape [1.0]"},
      {"string dim", R"({"a": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}})", 4,
       "has shape"},
      {"dim above int64", R"({"a": {"dtype": "U8", "shape": [18446744073709551615],
                                 "data_offsets": [0, 4]}})",
       4, "has shape"},
      {"dim above uint64",
       R"({"a": {"dtype": "U8", "shape": [100000000000000000000000], "data_offsets": [0, 4]}})", 4,
       "has shape"},
      {"numel overflow",
       R"({"a": {"dtype": "U8", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", 0,
       "overflows"},
      {"bytes overflow",
       R"({"a": {"dtype": "F32", "shape": [2305843009213693952], "data_offsets": [0, 0]}})", 0,
       "overflows"},
      {"overflow before a zero dim",
       R"({"a": {"dtype": "U8", "shape": [4294967296, 4294967296, 0], "data_offsets": [0, 0]}})", 0,
       "overflows"},
      {"one offset", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 4,
       "expected [begin, end]"},
      {"three offsets", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", 8,
       "expected [begin, end]"},
      {"negative offset", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 4,
       "expected [begin, end]"},
      {"float offset", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}})", 4,
       "expected [begin, end]"},
      {"offsets not a list", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": "0,4"}})", 4,
       "expected [begin, end]"},
      {"offset above int64",
       R"({"a": {"dtype": "U8", "shape": [1],
                 "data_offsets": [18446744073709551615, 18446744073709551616]}})",
       4, "expected [begin, end]"},
      {"begin after end", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", 8,
       "data_offsets [8, 4] outside the data area"},
      {"end beyond the data", R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
       12, "data_offsets [0, 16] outside the data area of 12 bytes"},
      {"end near 2**63",
       R"({"a": {"dtype": "U8", "shape": [1],
                 "data_offsets": [9223372036854775806, 9223372036854775807]}})",
       4, "outside the data area"},
      {"size mismatch", R"({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}})", 16,
       "tensor 'x' data_offsets [0, 12] do not match shape [4] of F32 (16 bytes)"},
      {"scalar mismatch", R"({"x": {"dtype": "F64", "shape": [], "data_offsets": [0, 4]}})", 8,
       "do not match shape [] of F64 (8 bytes)"},
      {"overlap", R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                      "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
       24, "tensor 'b' data_offsets [8, 24] overlap tensor 'a' [0, 16]"},
      {"same range", R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                         "b": {"dtype": "I32", "shape": [4], "data_offsets": [0, 16]}})",
       16, "overlap"},
      {"zero-size inside another",
       R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
           "b": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}})",
       16, "overlap"},
      {"overlap after a gap", R"({"c": {"dtype": "U8", "shape": [2], "data_offsets": [30, 32]},
                                  "a": {"dtype": "U8", "shape": [20], "data_offsets": [0, 20]},
                                  "b": {"dtype": "U8", "shape": [4], "data_offsets": [10, 14]}})",
       32, "overlap"},
      {"duplicate name", R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                             "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
       2, "names 'a' twice"},
      {"duplicate key", R"({"a": {"dtype": "U8", "dtype": "U8", "shape": [1],
                                  "data_offsets": [0, 1]}})",
       1, "key 'dtype' twice"},
      {"duplicate metadata", R"({"__metadata__": {}, "__metadata__": {}})", 0,
       "names '__metadata__' twice"},
      {"duplicate metadata key", R"({"__metadata__": {"k": "1", "k": "2"}})", 0, "key 'k' twice"},
      {"metadata not an object", R"({"__metadata__": ["k", "v"]})", 0,
       "__metadata__ must be an object"},
      {"metadata null", R"({"__metadata__": null})", 0, "__metadata__ must be an object"},
      {"metadata number", R"({"__metadata__": {"k": 1}})", 0, "'k' must be a string, got 1"},
      {"metadata object", R"({"__metadata__": {"k": {"a": "b"}}})", 0, "'k' must be a string"},
  };
  const std::string file = path("bad.safetensors");
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    write_bytes(file, raw_file(c.header, c.data_bytes));
    const std::string msg = value_error([&] { load_safetensors(file); });
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expected), std::string::npos) << msg;
    // The metadata reader checks the same header.
    const std::string meta_msg = value_error([&] { load_safetensors_metadata(file); });
    EXPECT_EQ(meta_msg, msg);
  }
}

TEST_F(SafetensorsTest, RejectsBadLengthField) {
  const std::string file = path("bad.safetensors");
  const std::string header = R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}})";
  const std::vector<std::tuple<const char*, std::string, const char*>> cases = {
      {"empty file", "", "the file is 0 bytes"},
      {"short file", "\x01\x02\x03", "the file is 3 bytes"},
      {"length beyond the file", length_field(header.size() + 2) + header + "x",
       "exceeds the file"},
      {"length beyond the limit", length_field(kMaxSafetensorsHeaderBytes + 1) + header,
       "exceeds the limit"},
      {"length 2**64 - 1", length_field(~uint64_t{0}) + header, "exceeds the limit"},
      {"length zero", length_field(0) + header, "not valid JSON"},
      {"length one short", length_field(header.size() - 1) + header + "x", "not valid JSON"},
  };
  for (const auto& [what, bytes, expected] : cases) {
    SCOPED_TRACE(what);
    write_bytes(file, bytes);
    const std::string msg = value_error([&] { load_safetensors(file); });
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
    EXPECT_NE(msg.find(expected), std::string::npos) << msg;
  }
}

TEST_F(SafetensorsTest, HeaderLengthOfTwoToThe63) {
  const std::string file = path("huge.safetensors");
  write_bytes(file, length_field(uint64_t{1} << 63) + "{}      ");
  const std::string msg = value_error([&] { load_safetensors(file); });
  EXPECT_NE(msg.find("9223372036854775808"), std::string::npos) << msg;
  EXPECT_NE(msg.find("exceeds the limit"), std::string::npos) << msg;
  value_error([&] { load_safetensors_metadata(file); });
}

TEST_F(SafetensorsTest, AcceptsValidEdgeCases) {
  // Header order differs from data order, a gap, zero-size tensors sharing an offset (also at the
  // very end), a 0-dim scalar, unpadded header with whitespace, "-0" as a dim, empty metadata.
  const std::string header = R"( {"__metadata__": {},
      "late": {"dtype": "I16", "shape": [2], "data_offsets": [12, 16]},
      "scalar": {"data_offsets": [0, 8], "shape": [], "dtype": "F64"},
      "none1": {"dtype": "I32", "shape": [0, 3], "data_offsets": [8, 8]},
      "none2": {"dtype": "BF16", "shape": [-0], "data_offsets": [8, 8]},
      "none3": {"dtype": "U8", "shape": [0], "data_offsets": [16, 16]}} )"
                             "\n";
  const std::string file = path("edge.safetensors");
  const std::string bytes = raw_file(header, 16);
  write_bytes(file, bytes);
  const SafetensorsFile loaded = load_safetensors(file);
  EXPECT_TRUE(loaded.metadata.empty());
  ASSERT_EQ(loaded.tensors.size(), 5u);
  const Names order = {"late", "scalar", "none1", "none2", "none3"};
  for (size_t i = 0; i < order.size(); ++i) EXPECT_EQ(loaded.tensors[i].first, order[i]);
  const at::Tensor& late = loaded.tensors[0].second;
  EXPECT_EQ(late.scalar_type(), at::ScalarType::Short);
  EXPECT_EQ(late.sizes(), at::IntArrayRef({2}));
  const char* data = bytes.data() + 8 + header.size();
  EXPECT_EQ(std::memcmp(late.const_data_ptr(), data + 12, 4), 0);
  const at::Tensor& scalar = loaded.tensors[1].second;
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(std::memcmp(scalar.const_data_ptr(), data, 8), 0);
  EXPECT_EQ(loaded.tensors[2].second.sizes(), at::IntArrayRef({0, 3}));
  EXPECT_EQ(loaded.tensors[3].second.sizes(), at::IntArrayRef({0}));
  EXPECT_EQ(loaded.tensors[4].second.scalar_type(), at::ScalarType::Byte);

  write_bytes(file, raw_file("{}", 0));
  EXPECT_TRUE(load_safetensors(file).tensors.empty());
}

// A small valid file with metadata and tensors of several dtypes, the last one non-empty.
std::string small_valid_file(const std::string& file) {
  std::mt19937_64 rng(kSeed + 4);
  save_safetensors(file,
                   {{"w", random_tensor({2, 3}, at::ScalarType::Float, rng)},
                    {"s", random_tensor({}, at::ScalarType::BFloat16, rng)},
                    {"e", random_tensor({0, 2}, at::ScalarType::Long, rng)},
                    {"b", random_tensor({5}, at::ScalarType::Bool, rng)}},
                   {{"format", "pt"}, {"note", "[1, 2]"}});
  return read_bytes(file);
}

TEST_F(SafetensorsTest, EveryTruncationFails) {
  const std::string file = path("small.safetensors");
  const std::string bytes = small_valid_file(file);
  ASSERT_EQ(load_safetensors(file).tensors.size(), 4u);
  const std::string cut = path("cut.safetensors");
  for (size_t n = 0; n < bytes.size(); ++n) {
    SCOPED_TRACE(n);
    write_bytes(cut, bytes.substr(0, n));
    value_error([&] { load_safetensors(cut); });
    value_error([&] { load_safetensors_metadata(cut); });
  }
}

// Seeded random mutations of a valid file: each load succeeds with tensors that fit the file, or
// throws; a crash, a sanitizer report or a hang fails the test run.
TEST_F(SafetensorsTest, FuzzedFilesLoadOrFailCleanly) {
  constexpr int kCases = 3000;
  const std::string base = small_valid_file(path("base.safetensors"));
  uint64_t header_len = 0;
  std::memcpy(&header_len, base.data(), 8);
  const size_t header_end = 8 + header_len;
  const std::string interesting = "{}[]\":,-+.0123456789eE \\u";
  std::mt19937_64 rng(kSeed + 5);
  auto below = [&](size_t n) { return n == 0 ? size_t{0} : static_cast<size_t>(rng() % n); };

  const std::string file = path("fuzz.safetensors");
  int loaded = 0;
  int rejected = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kCases; ++i) {
    std::string bytes = base;
    const int mutations = 1 + static_cast<int>(below(3));
    for (int m = 0; m < mutations; ++m) {
      // Most mutations hit the length field and the header, where the parsing is.
      const size_t limit = std::min(bytes.size(), header_end);
      switch (below(8)) {
        case 0:  // flip a bit
          if (limit) bytes[below(limit)] ^= static_cast<char>(1 << below(8));
          break;
        case 1:  // a JSON-significant character
          if (limit) bytes[below(limit)] = interesting[below(interesting.size())];
          break;
        case 2: {  // change a digit, where offsets and shapes are
          std::vector<size_t> digits;
          for (size_t k = 8; k < limit; ++k) {
            if (bytes[k] >= '0' && bytes[k] <= '9') digits.push_back(k);
          }
          if (!digits.empty())
            bytes[digits[below(digits.size())]] = static_cast<char>('0' + below(10));
          break;
        }
        case 3:  // a byte of the length field
          if (bytes.size() >= 8) bytes[below(8)] = static_cast<char>(rng());
          break;
        case 4:  // truncate
          bytes.resize(below(bytes.size() + 1));
          break;
        case 5: {  // duplicate a slice of the header in place
          if (limit <= 8) break;
          const size_t from = 8 + below(limit - 8);
          const size_t len = 1 + below(std::min<size_t>(40, limit - from));
          bytes.insert(from + below(len + 1), bytes.substr(from, len));
          break;
        }
        case 6: {  // delete a slice
          if (bytes.empty()) break;
          const size_t from = below(bytes.size());
          bytes.erase(from, 1 + below(std::min<size_t>(16, bytes.size() - from)));
          break;
        }
        default:  // fix the length field to the (mutated) header's true length, so the JSON
                  // checks see the mutation rather than a length mismatch
          if (bytes.size() >= 8) {
            const size_t brace = bytes.find_last_of('}', std::min(bytes.size(), header_end + 64));
            if (brace != std::string::npos && brace >= 8) {
              bytes.replace(0, 8, length_field(brace + 1 - 8));
            }
          }
          break;
      }
    }
    write_bytes(file, bytes);
    try {
      const SafetensorsFile f = load_safetensors(file);
      uint64_t total = 0;
      for (const auto& [name, t] : f.tensors) {
        ASSERT_TRUE(t.defined()) << name;
        ASSERT_TRUE(t.is_contiguous()) << name;
        total += t.nbytes();
      }
      ASSERT_LE(total, bytes.size()) << "case " << i;
      ASSERT_EQ(load_safetensors_metadata(file), f.metadata) << "case " << i;
      ++loaded;
    } catch (const std::exception&) {
      ++rejected;
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Both outcomes occur, or the mutations test nothing.
  EXPECT_GT(loaded, 0);
  EXPECT_GT(rejected, 0);
  RecordProperty("loaded", loaded);
  RecordProperty("rejected", rejected);
  std::printf("fuzz: %d loaded, %d rejected in %.2f s\n", loaded, rejected, seconds);
}

}  // namespace
}  // namespace mopt::opt
