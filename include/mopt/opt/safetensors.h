// safetensors files (https://github.com/huggingface/safetensors, format version of 0.4+):
// tensors and string metadata, read without executing anything from the file. mopt's state
// files (mto.save / mopt::save) are safetensors files whose `__metadata__` carries the mode
// history as JSON; Hugging Face tools read them as plain weights.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace mopt::opt {

/// Tensors in file order, with their names.
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

/// What a safetensors file holds.
struct SafetensorsFile {
  NamedTensors tensors;                         // in the order of the file's header
  std::map<std::string, std::string> metadata;  // the header's "__metadata__" (may be empty)
};

/// Largest header a reader accepts (bytes). Real headers are a few hundred bytes per tensor; the
/// bound keeps a corrupt length field from allocating without limit.
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

/// Writes `tensors` and `metadata` as one safetensors file at `path`, atomically: the bytes go to
/// a temporary file in the same folder, which is flushed to disk and renamed over `path`, so a
/// crash or an error mid-write leaves any old file at `path` intact. Tensors on any device and
/// with any strides are written as contiguous little-endian CPU data, one at a time, back to back
/// in the order given (no alignment padding between them); tensors that share storage (tied
/// weights) are each written as a copy of their own. The header is padded with spaces to a
/// multiple of 8 bytes, as the official library does. ValueError for an empty or duplicate name,
/// a name "__metadata__", an undefined, sparse or meta tensor, a name or metadata string that is
/// not UTF-8, or a dtype safetensors has no code for (complex, quantized, ...), before anything
/// is written; RuntimeError naming the path and the system's reason when the file cannot be
/// written.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// Reads a whole safetensors file into CPU tensors. Every header field is checked before any
/// tensor is read: ValueError naming the path and the problem for a file shorter than its
/// header, a header length beyond kMaxSafetensorsHeaderBytes or the file, invalid JSON, an
/// unknown dtype, a negative or overflowing shape, data offsets out of the data area, not
/// matching the shape, or overlapping another tensor, a duplicate name (or any key repeated within
/// one JSON object, which parsers resolve differently), and non-string metadata. Gaps between
/// tensors are accepted. RuntimeError naming the path when it cannot be opened or read.
SafetensorsFile load_safetensors(const std::string& path);

/// Reads only the header's "__metadata__" (the same checks on the header as load_safetensors).
std::map<std::string, std::string> load_safetensors_metadata(const std::string& path);

/// Writes a file atomically: `write` fills a stream opened on a temporary file beside `path`,
/// which is flushed, synced and renamed over `path`. If `write` throws or the disk fills, the
/// temporary file is removed and `path` is left as it was.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);

}  // namespace mopt::opt
