// Block-format fake quantization on at::Tensor (SPEC §5): NVFP4, OCP MX and NF4, in blocks along
// the last dim (a partial last block quantizes as if zero padded). Each function calls the
// torch.ops.mopt operator of the same name through the dispatcher, so it has CPU, CUDA, Meta and
// Autograd implementations from C++ and Python alike; CPU and CUDA give bit-identical results.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace mopt {

/// NVFP4: E2M1 values, an E4M3 scale per block of `block_size`, an fp32 tensor scale
/// global_amax / (6 * 448). global_amax (one element) defaults to max |block_amax| when
/// block_amax is given, else to max |x|. block_amax: optional static amax per block, shaped
/// [*x.shape[:-1], ceil(x.shape[-1] / block_size)]. Gradient: straight through where |x| <= the
/// amax the scales came from (block_amax, else global_amax), or everywhere with pass_through_bwd.
at::Tensor fake_quant_nvfp4(const at::Tensor& x,
                            const c10::optional<at::Tensor>& global_amax = c10::nullopt,
                            int64_t block_size = 16,
                            const c10::optional<at::Tensor>& block_amax = c10::nullopt,
                            bool pass_through_bwd = false);

/// OCP MX: an E8M0 scale 2^ceil(log2(block_amax / elem_max)) per block; elements in the
/// minifloat (exponent_bits, mantissa_bits) = (4, 3), (5, 2), (3, 2), (2, 3), (2, 1), or the
/// sign-magnitude integer (0, m) with m magnitude bits: MXINT8 is (0, 7).
at::Tensor fake_quant_mx(const at::Tensor& x, int64_t exponent_bits, int64_t mantissa_bits,
                         int64_t block_size = 32,
                         const c10::optional<at::Tensor>& block_amax = c10::nullopt,
                         bool pass_through_bwd = false);

/// NF4: nearest NormalFloat4 table entry of x / block absmax. scale_block_size 0 keeps fp32
/// block scales; > 0 double-quantizes them to int8 around their mean with one fp32 scale per
/// scale_block_size consecutive block scales; -1 uses one such group for all of them.
at::Tensor fake_quant_nf4(const at::Tensor& x, int64_t block_size = 64,
                          int64_t scale_block_size = 0,
                          const c10::optional<at::Tensor>& block_amax = c10::nullopt,
                          bool pass_through_bwd = false);

}  // namespace mopt
