// The mode history of an optimized model and what each mode records (SPEC §3 "mto: state"):
// the mode registry with its chaining rules, the state document (JSON) that mto.save /
// mopt::save write into a safetensors file, and the per-quantizer properties of the quantize
// mode in ModelOpt's layout (`_num_bits`, `_axis`, `_block_sizes`, `_disabled`, ...), so one
// reader serves mopt's files and the states nvidia-modelopt writes. Both front ends (Python
// mopt.opt and the C++ mopt::save / mopt::restore) call these; they only walk their module trees.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mopt/quant/config.h"
#include "mopt/quant/quantizer_core.h"

namespace mopt::opt {

/// The mopt release, written as "modelopt_version" (tests check it equals mopt.__version__ and
/// the CMake project version).
constexpr const char* kMoptVersion = "0.1.0";
/// Layout version mopt writes into every state document; a reader refuses a newer one.
constexpr int kStateFormatVersion = 1;
/// Key of the state document in a safetensors file's `__metadata__`.
constexpr const char* kStateMetadataKey = "mopt_state";
/// Value of "format" in a state document written by mopt.
constexpr const char* kStateFormatName = "mopt.state";

/// What a mode does, for the chaining rules.
enum class ModeKind {
  kQuantize,   // inserts quantizers (`quantize`)
  kCalibrate,  // updates quantizer state only (ModelOpt's `<algorithm>_calibrate` entries)
  kSparsity,   // prunes weights to a pattern (`sparse_magnitude`, `sparsegpt`, `wanda`)
  kExport,     // folds an earlier mode into plain modules (`export_sparse`)
};

/// A registered mode.
struct ModeInfo {
  std::string name;
  ModeKind kind = ModeKind::kQuantize;
  std::string description;
};

/// Every registered mode, in registration order.
std::vector<ModeInfo> modes();
/// The mode named `name`; ValueError naming it and listing the known modes otherwise.
ModeInfo mode_info(const std::string& name);
/// Registers a mode; ValueError when the name is taken or empty.
void register_mode(const ModeInfo& info);

/// Checks that mode `next` may be applied to a model whose applied modes are `history` (oldest
/// first): ValueError for an unknown mode, a sparsity mode after quantize ("sparsify first, then
/// quantize"), a second sparsity mode (masks would compound), and a calibrate mode without a
/// quantize before it. Called before the model is touched.
void check_next_mode(const std::vector<std::string>& history, const std::string& next);

/// One applied mode: its name, config and metadata as JSON objects (text).
struct ModeEntry {
  std::string mode;
  std::string config_json = "{}";
  std::string metadata_json = "{}";
};

/// The mode history of a model (ModelOpt's `modelopt_state`).
struct ModeState {
  std::vector<ModeEntry> modes;
  std::string version;                      // "modelopt_version": the writer's version
  int format_version = kStateFormatVersion;  // 0 for a state nvidia-modelopt wrote
};

/// The state document: {"format", "format_version", "modelopt_version",
/// "modelopt_state_dict": [[mode, {"config", "metadata"}], ...]}.
std::string state_to_json(const ModeState& state);
/// Parses and checks a state document from `source` (a path or "modelopt_state", named in
/// errors): valid JSON of that layout, a format_version this mopt reads (newer: ValueError
/// asking for a newer mopt), known modes in an allowed order. A document without "format" is a
/// state nvidia-modelopt wrote (the same layout after its pickle is read into plain data) and
/// gets format_version 0.
ModeState state_from_json(const std::string& json, const std::string& source);

// -- quantize mode: per-quantizer properties -------------------------------------------------

/// Shape and dtype of a quantizer buffer recorded in its state (`_amax`, `_pre_quant_scale`).
struct BufferSpec {
  std::string dtype = "float32";
  std::vector<int64_t> shape;
};

/// A quantizer with learned scales (algorithm `lsq`): which amaxes are trainable parameters.
/// `_amax` is the dequantization ("post") amax, `_amax_pre` the quantization one; tied, `_amax`
/// is both. Written under ModelOpt's property names (`_lsq`, `_learnable_amax`, `_tied_amax`).
struct LsqState {
  bool learn_pre = false;
  bool learn_post = false;
  bool tied = false;
};

/// The summary suffix of a quantizer with learned scales, as both front ends print it:
/// " lsq(pre=<amax_pre, or tied>, learn=['pre', 'post'])".
std::string lsq_extra_repr(const LsqState& lsq, const c10::optional<at::Tensor>& amax_pre);

/// One quantizer's recorded properties.
struct QuantizerState {
  bool sequential = false;     // a SequentialQuantizer: only num_quantizers is set
  int64_t num_quantizers = 0;
  QuantizerAttributeConfig attributes;
  std::string attributes_json;  // attributes.to_json()
  QuantizerFlags flags;
  std::map<std::string, BufferSpec> buffers;
  /// Set when the file stores `_amax` in another layout of the same values (nvidia-modelopt's
  /// static block quantizer: (rows * blocks, 1)); buffers["_amax"] has mopt's shape, and the
  /// front end reshapes the file's tensor from this shape to it.
  std::optional<std::vector<int64_t>> file_amax_shape;
  /// Set for a quantizer with learned scales; its parameters are listed in `buffers` too.
  std::optional<LsqState> lsq;
};

/// The properties of one TensorQuantizer, as a JSON object in ModelOpt's layout, with the
/// shapes of its defined `buffers` ("_amax", "_pre_quant_scale"); with `lsq`, the learnable
/// amaxes are recorded as parameters and the LSQ properties are written.
std::string quantizer_state_json(const QuantizerCore& core,
                                 const std::map<std::string, at::Tensor>& buffers,
                                 const std::optional<LsqState>& lsq = std::nullopt);
/// The properties of a SequentialQuantizer of `n` quantizers.
std::string sequential_quantizer_state_json(int64_t n);
/// Reads one quantizer's properties (mopt's or nvidia-modelopt's layout). Keys mopt has no
/// counterpart for are accepted at their neutral values (`_bias: null`, `_rotate: false`, ...)
/// and otherwise refused with NotImplementedError naming the quantizer, key and value; wrong
/// types are ValueError.
QuantizerState parse_quantizer_state(const std::string& name, const std::string& json);
/// Reads a whole `quantizer_state` object ({name: properties}) in its order.
std::vector<std::pair<std::string, QuantizerState>> parse_quantizer_states(
    const std::string& json);
/// A state document read for a restore: state_from_json, plus the quantizer_state of every mode
/// whose metadata has one, parsed as parse_quantizer_states does, from the same parse of the
/// text.
struct ModeStateWithQuantizers {
  ModeState state;
  /// One per mode, in order: its quantizer states, or nullopt when its metadata has none.
  std::vector<std::optional<std::vector<std::pair<std::string, QuantizerState>>>>
      quantizer_states;
};
ModeStateWithQuantizers state_from_json_with_quantizers(const std::string& json,
                                                         const std::string& source);

// -- checks before a restore touches the model -------------------------------------------------

/// Name and shape of one tensor.
using TensorShapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

/// ValueError when the tensors a file holds (`file`) are not exactly those the restored model
/// expects (`model`): names missing or unexpected and shapes that differ, the first few of each
/// listed, with `source` named.
void check_tensors_match(const TensorShapes& model, const TensorShapes& file,
                         const std::string& source);

/// ValueError naming `source` and the tensor when a quantizer amax in the file (a name ending in
/// "._amax") is not finite and non-negative: checked before any tensor is copied.
void check_quantizer_tensors(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const std::string& source);

}  // namespace mopt::opt
