// llama.cpp's GGUF block types (Q8_0, Q4_0, Q5_0, Q4_K) along the last (contiguous) axis: fake
// quantization (the value llama.cpp dequantizes from the bytes mopt writes) and packing (those
// bytes, in ggml's block layout). Rows must be a multiple of the type's block; which type a row
// gets (llama.cpp's fallbacks for other row lengths) is gguf_row_type's decision.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/cuda_stream.h"
#include "common/dtype.h"
#include "gguf/gguf_math.h"

namespace mopt::kernels::gguf {

/// Arguments of gguf_quant_cpu / gguf_quant_cuda. x is contiguous [rows, row_len] of `dtype`.
/// y (same shape and dtype, may alias x) receives the fake-quantized values and `packed`
/// (rows * row_len / block_elements(type) * block_bytes(type) bytes, row-major) the GGUF
/// blocks; either may be null.
struct GgufParams {
  const void* x = nullptr;
  void* y = nullptr;
  uint8_t* packed = nullptr;
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t row_len = 0;
  GgufType type = GgufType::kQ8_0;
};

/// Lower-case ggml name of a type: "f32", "q8_0", "q4_0", "q5_0", "q4_k".
const char* gguf_type_name(GgufType t);

/// Parses a name of gguf_type_name (not "f32"); throws KernelError listing the accepted ones.
GgufType gguf_type_from_name(const char* name);

/// The type llama.cpp's quantizer gives a row of `row_len` elements when `requested` is asked
/// for (llama-quant.cpp): the requested type when row_len is a multiple of its block; Q4_K on
/// rows that are a multiple of 32 but not 256 falls back to Q5_0; rows that fit no block stay
/// unquantized (kF32; mopt keeps them as they are).
GgufType gguf_row_type(GgufType requested, int64_t row_len);

/// Bytes of `rows` rows of `row_len` elements of `type`.
int64_t gguf_packed_bytes(GgufType type, int64_t rows, int64_t row_len);

/// Validates p; throws KernelError naming the problem.
void gguf_check(const GgufParams& p);

/// CPU implementation (parallel over blocks).
void gguf_quant_cpu(const GgufParams& p);

/// CUDA implementation on `stream` (device pointers), one thread per block; never synchronizes;
/// bit-identical to gguf_quant_cpu.
void gguf_quant_cuda(const GgufParams& p, cudaStream_t stream);

}  // namespace mopt::kernels::gguf
