// The format table: every number format mopt quantizes to, written once. The quantizer forward,
// the kernels' format enum, calibration (which amax a format keeps), GPTQ's column quantizer,
// AWQ, size accounting and Python (mopt._C.format_table / format_info) all read it; none of them
// infers a format from (num_bits, scale_bits) patterns of its own.
//
// A quantizer config resolves to one row (a format family) plus its concrete element format:
// num_bits 4 without block scales is the "int" family as "int4", num_bits (2, 1) with E4M3 block
// scales the "nvfp4" family, num_bits (2, 1) with E8M0 block scales the "mx" family as "mxfp4".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mopt/quant/config.h"

namespace mopt {

/// Format families: one per kernel code path (the kernels' mopt::kernels::Format, same order).
enum class FormatFamily {
  kInt,        // b-bit integer, scale per tensor / channel / static block
  kMinifloat,  // FP8 / FP6 / FP4 element, scale per tensor / channel / static block
  kNVFP4,      // E2M1 elements, E4M3 scale per block of 16, fp32 tensor scale
  kMX,         // OCP MX: minifloat or INT8 elements, E8M0 scale per block of 32
  kNF4,        // NormalFloat4 table, absmax per block of 64, optional int8 double quantization
  kGGUF,       // llama.cpp's Q8_0 / Q4_0 / Q5_0 / Q4_K blocks with fp16 scales (weights only)
};

/// How the elements of a format are stored.
enum class ElementEncoding {
  kInteger,      // two's complement (or unsigned) integer codes
  kMinifloat,    // sign, exponent and mantissa bits
  kLookupTable,  // an index into a fixed table of values (NF4)
};

/// How the scales of a format are stored.
enum class ScaleEncoding {
  kFloat,             // one float scale per tensor / channel / block (fp32 per tensor, fp16 else)
  kE4M3TensorScaled,  // E4M3 per block, relative to one fp32 tensor scale (NVFP4)
  kE8M0,              // a power of two per block (OCP MX)
  kAbsmaxDoubleQuant, // fp32 absmax per block, or int8 around their mean per group of blocks
  kGGUF,              // llama.cpp's block layouts: fp16 d (and dmin, 6-bit sub-block codes)
};

/// One row of the format table.
struct FormatFamilyInfo {
  FormatFamily family;
  const char* name;          // "int", "minifloat", "nvfp4", "mx", "nf4"
  ElementEncoding element;
  ScaleEncoding scale;
  int64_t default_block_size;  // the block of the predefined configs (0: per tensor/channel)
  int scale_bits;              // bits of one stored block scale (0: a float scale, see kFloat)
  int tensor_scale_bits;       // bits of a second-level per-tensor scale (NVFP4: 32)
  const char* kernel;          // kernel family computing it: "fake_quant" or "block_quant"
  /// A dynamic-block quantizer of this family still calibrates one per-tensor amax (NVFP4's
  /// tensor scale); for the others, dynamic means no calibrated amax at all.
  bool dynamic_keeps_tensor_amax;
  bool histogram_calibration;  // entropy/percentile/histogram_mse and mse can search its amax
  bool entropy_calibration;    // the entropy search applies (integer levels only)
  bool gptq;                   // GPTQ's column quantizer follows it
  bool awq_lite;               // AWQ lite can search scales for it (any format that quantizes)
  bool awq_clip;               // AWQ clip can search its calibrated amax
  bool exportable;             // a checkpoint exporter of mopt.export writes it (NF4: none)
};

/// A quantizer config resolved against the table.
struct ResolvedFormat {
  const FormatFamilyInfo* info = nullptr;
  std::string name;           // concrete: "int8", "int4", "fp8_e4m3", "nvfp4", "mxfp4", "nf4", "gguf_q4_0"...
  int element_bits = 0;       // bits of one stored element
  int exponent_bits = 0;      // minifloat / MX minifloat elements
  int mantissa_bits = 0;      // minifloat elements; MX integer elements: magnitude bits
  int64_t block_size = 0;     // along the blocked axis (0: no block structure)
  bool dynamic = false;       // scales computed from each input rather than calibrated
  /// The quantizer keeps a calibrated amax (static), possibly only a per-tensor one.
  bool calibrated = true;
  /// GGUF family: the ggml type requested ("q8_0", "q4_0", "q4_k"), else empty.
  std::string gguf_type;

  FormatFamily family() const { return info->family; }
};

/// The scale encoding as the format table names it ("float", "e4m3_tensor_scaled", "e8m0", ...).
const char* scale_encoding_name(ScaleEncoding scale);

/// Every row of the table, in FormatFamily order.
const std::vector<FormatFamilyInfo>& format_table();
/// The row of `family`.
const FormatFamilyInfo& format_family_info(FormatFamily family);
/// Resolves `cfg` to its format; NotImplementedError naming the combination when no row
/// implements it (e.g. block scales in a format mopt has no kernel for).
ResolvedFormat resolve_format(const QuantizerAttributeConfig& cfg);

/// Upper-case family names of the rows where `supports(row)` holds (or, with `negate`, does
/// not), joined as "INT, MINIFLOAT and NVFP4", for messages that list what a feature accepts.
std::string format_families_where(bool (*supports)(const FormatFamilyInfo&), bool negate = false);

/// Bits a weight of `shape` takes as deployed with quantizer config `cfg`.
struct WeightStorage {
  double element_bits = 0;  // numel * element bits
  double scale_bits = 0;    // every scale: block/channel/tensor scales and second-level scales
};
/// Storage of a weight as the format table prices it: elements at their width; float scales at
/// fp16 (fp32 for a single per-tensor scale); block scales at the row's scale_bits plus its
/// second level (NVFP4: one fp32 tensor scale; NF4 double quantization: an fp32 scale per group
/// of block scales and their fp32 mean); asymmetric formats add a zero point per scale at the
/// element width.
WeightStorage weight_storage_bits(const QuantizerAttributeConfig& cfg,
                                  const std::vector<int64_t>& shape);
/// Storage of a weight quantized by `stages` in turn (a SequentialQuantizer stores its narrowest
/// stage's elements and every stage's scales) plus `pre_quant_scale_numel` fp16 pre-quant scales.
WeightStorage weight_storage_bits(const std::vector<QuantizerAttributeConfig>& stages,
                                  const std::vector<int64_t>& shape,
                                  int64_t pre_quant_scale_numel = 0);

}  // namespace mopt
