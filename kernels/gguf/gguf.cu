#include "common/launch.cuh"
#include "gguf/gguf.h"
#include "gguf/gguf_math.h"

namespace mopt::kernels::gguf {
namespace {

// One thread per block: the per-block math is sequential (a signed max, then codes), and the
// weights GGUF quantizes are small next to the work of one forward pass.
template <typename T>
__global__ void gguf_quant_kernel(const T* x, T* y, uint8_t* packed, int64_t blocks,
                                  GgufType type) {
  const int bs = block_elements(type), nbytes = block_bytes(type);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < blocks;
       k += stride) {
    float v[kQKK];
    uint8_t bytes[kQ4_KBytes];
    for (int i = 0; i < bs; ++i) v[i] = load_float(x + k * bs + i);
    quantize_block(type, v, bytes);
    if (packed != nullptr) {
      for (int i = 0; i < nbytes; ++i) packed[k * nbytes + i] = bytes[i];
    }
    if (y != nullptr) {
      dequantize_block(type, bytes, v);
      for (int i = 0; i < bs; ++i) store_float(y + k * bs + i, v[i]);
    }
  }
}

}  // namespace

void gguf_quant_cuda(const GgufParams& p, cudaStream_t stream) {
  gguf_check(p);
  if (p.rows * p.row_len == 0) return;
  const int64_t blocks = p.rows * p.row_len / block_elements(p.type);
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    gguf_quant_kernel<T><<<grid_for(blocks), kBlockThreads, 0, stream>>>(
        static_cast<const T*>(p.x), static_cast<T*>(p.y), p.packed, blocks, p.type);
    MOPT_CHECK_LAUNCH();
  });
}

}  // namespace mopt::kernels::gguf
