// Packed weights: a weight quantized by its weight quantizer, held as the format's codes and
// scales instead of a fake-quantized float tensor (mtq.compress keeps these in the model;
// exporters write them). PackedWeight::dequantize() is the fake-quantized weight bit for bit:
// the pack and dequantize kernels (kernels/pack) replay the fake-quant kernels' own float
// operations.
//
// For a weight of shape [..., C] quantized along its last dim (R = numel / C rows):
//   codes      one per element, the weight's shape: int8 (signed int), uint8 (asymmetric or
//              unsigned int: code - qmin), float8_e4m3fn / float8_e5m2 (FP8 and MXFP8), uint8
//              E2M1 bits 0..15 with bit 3 the sign (NVFP4, MXFP4, FP4), uint8 minifloat bits
//              (FP6), int8 (MXINT8), uint8 NF4 table index 0..15.
//   data       storage: 8-bit codes as they are; 4-bit codes two per byte along the last dim
//              (column 2k in the low nibble, 2k + 1 in the high nibble; an odd row ends in a
//              half-filled byte).
//   scale      int / minifloat: fp32 amax / bound per tensor [], per channel (amax's keepdims
//              shape, [R, 1] for a 2-D weight) or per block [..., C / block]; NVFP4:
//              float8_e4m3fn [..., C / 16]; MX: uint8 E8M0 exponents (2^(e - 127))
//              [..., C / 32]; NF4: fp32 absmax per block, or with double quantization the int8
//              codes of the block scales.
//   scale_2    NVFP4: fp32 tensor scale []; NF4 double quantization: fp32 scale per group of
//              block scales (dq_amax / 127); else undefined.
//   scale_offset  NF4 double quantization: the mean the block scale codes are centred on.
//   zero_point asymmetric int: uint8 zero code (same shape as scale), else undefined.
// Values (s = bound / amax, the fake-quant kernel's multiplier; bound = 2^(b-1) - 1, + 1/2 with
// full range or asymmetric, or the minifloat maximum):
//   int          (code - zero_point) / s = (code - zero_point) * scale up to the last rounding
//   minifloat    float(code) / s
//   nvfp4        e2m1(code) * (float(e4m3 scale) * scale_2), sign from bit 3
//   mx           element(code) * 2^(scale - 127)
//   nf4          nf4_table[code] * absmax, or with double quantization
//                nf4_table[code] * max(0, code_s / (1 / scale_2) + scale_offset)
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <map>
#include <string>
#include <vector>

#include "mopt/quant/formats.h"
#include "mopt/quant/quantizer_core.h"

namespace mopt {

/// A weight in its quantizer's format: codes, scales and what it takes to dequantize them.
struct PackedWeight {
  std::string format;          // the format table's concrete name ("int4", "nvfp4", ...)
  FormatFamily family = FormatFamily::kInt;
  std::vector<int64_t> shape;  // the weight's shape
  int64_t block_size = 0;      // along the last dim; 0: per tensor / per channel
  bool is_signed = true;       // false for asymmetric / unsigned integer codes
  at::ScalarType dtype = at::kFloat;  // the weight's dtype (dequantize's default)
  int num_bits = 8;            // int
  bool is_unsigned = false, narrow_range = false, full_range = false, asymmetric = false;
  int exponent_bits = 0, mantissa_bits = 0;  // minifloat / MX elements
  int code_bits = 8;           // bits per stored code: 4 or 8
  int64_t scale_block_size = 0;  // NF4 double quantization (as block_quant: -1 = one group)

  at::Tensor data;          // packed codes, uint8 [rows, bytes per row]
  at::Tensor amax;          // int / minifloat: amax per scale; NF4 double quant: dq amax per group
  at::Tensor zero_point;    // asymmetric int: uint8 zero code per scale
  at::Tensor block_scale;   // NVFP4 / MX / NF4: the stored block scales
  at::Tensor tensor_scale;  // NVFP4: fp32 scale_2
  at::Tensor scale_offset;  // NF4 double quantization: fp32 mean

  /// One code per element in the weight's shape (dtype per format, see the file comment).
  at::Tensor codes() const;
  /// The scales as the file comment lists them.
  at::Tensor scale() const;
  /// NVFP4's tensor scale or NF4's per-group double-quantization scales; undefined otherwise.
  at::Tensor scale_2() const;
  /// The dequantized weight in `dtype` (default: the weight's), computed by the kernel: equal to
  /// the fake-quantized weight bit for bit.
  at::Tensor dequantize(c10::optional<at::ScalarType> dtype = c10::nullopt) const;
  /// Bytes of every stored tensor (data and scales).
  int64_t nbytes() const;
  /// The stored tensors by name (defined ones only): "data", "amax", "zero_point",
  /// "block_scale", "tensor_scale", "scale_offset".
  std::map<std::string, at::Tensor> tensors() const;
  /// Everything but the tensors, as JSON (with tensors(), what from_parts rebuilds it from).
  std::string metadata_json() const;
  /// Rebuilds a PackedWeight from metadata_json() and tensors(); ValueError naming what is
  /// missing or of the wrong shape or dtype.
  static PackedWeight from_parts(const std::string& metadata_json,
                                 const std::map<std::string, at::Tensor>& tensors);
};

/// Packs `weight` as quantizer `q` (with its stored amax, pre_quant_scale and zero_point, as its
/// forward takes them) fake-quantizes it. Errors name the quantizer: disabled or not quantizing
/// (ValueError), a static quantizer without amax (ValueError: calibrate first), non-finite
/// weights (ValueError), and layouts without packed storage (NotImplementedError naming it:
/// integers wider than 8 bits, blocks along another axis than the last, 2-D blocks, LSQ's
/// separate amaxes, rotation).
PackedWeight pack_weight(const at::Tensor& weight, const QuantizerCore& q,
                         const c10::optional<at::Tensor>& amax,
                         const c10::optional<at::Tensor>& pre_quant_scale = c10::nullopt,
                         const c10::optional<at::Tensor>& zero_point = c10::nullopt);

}  // namespace mopt
