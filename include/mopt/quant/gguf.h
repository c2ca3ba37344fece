// llama.cpp's GGUF block types on at::Tensor: fake quantization that equals what llama.cpp
// dequantizes, and the packed block bytes a GGUF file stores. Rows run along the last dim; each
// function calls the torch.ops.mopt operator of the same name through the dispatcher (CPU, CUDA
// and Meta; fake_quant_gguf also Autograd, a straight-through gradient).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace mopt {

/// The type llama.cpp stores a row of `row_len` elements in when `type` ("q8_0", "q4_0",
/// "q4_k") is requested: `type` itself, "q5_0" for Q4_K rows that are a multiple of 32 but not
/// 256, or "f32" (left unquantized) for rows that fit no block.
std::string gguf_row_type(const std::string& type, int64_t row_len);

/// Fake-quantizes x in GGUF `type` along its last dim, after gguf_row_type's fallbacks: the
/// values llama.cpp dequantizes from the bytes gguf_pack writes; rows that stay float are
/// returned unchanged (a copy).
at::Tensor fake_quant_gguf(const at::Tensor& x, const std::string& type);

/// The GGUF blocks of x [rows, row_len] in `type` ("q8_0", "q4_0", "q5_0", "q4_k"; row_len a
/// multiple of its block): a uint8 tensor [rows, row_len / block * block_bytes].
at::Tensor gguf_pack(const at::Tensor& x, const std::string& type);

}  // namespace mopt
