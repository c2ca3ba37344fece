// The element formats the kernels compute: one enum for every kernel family. Each family accepts
// the subset it implements (fake_quant: kInt, kMinifloat; block_quant: kNVFP4, kMX, kNF4; gptq:
// kInt, kMinifloat, kNVFP4; gguf: kGGUF) and rejects the others in its argument check. The format table of
// libmopt (include/mopt/quant/formats.h) maps every quantizer config onto one of these.
#pragma once

namespace mopt::kernels {

/// Element format of a kernel call.
enum class Format {
  kInt,        // b-bit integer, symmetric scale maxbound / amax
  kMinifloat,  // sign + exponent_bits + mantissa_bits float (FP8 E4M3/E5M2, FP6, FP4)
  kNVFP4,      // E2M1 values, E4M3 scale per block, fp32 tensor scale from a global amax
  kMX,         // OCP MX: E8M0 scale per block; minifloat or sign-magnitude integer elements
  kNF4,        // NormalFloat4 table, absmax per block, optional int8 double quantization
  kGGUF,       // llama.cpp's block types (Q8_0, Q4_0, Q5_0, Q4_K): fp16 scales per block
};

/// Lower-case name of a kernel format ("int", "minifloat", "nvfp4", "mx", "nf4", "gguf").
inline const char* format_name(Format f) {
  switch (f) {
    case Format::kInt: return "int";
    case Format::kMinifloat: return "minifloat";
    case Format::kNVFP4: return "nvfp4";
    case Format::kMX: return "mx";
    case Format::kNF4: return "nf4";
    case Format::kGGUF: return "gguf";
  }
  return "unknown";
}

}  // namespace mopt::kernels
