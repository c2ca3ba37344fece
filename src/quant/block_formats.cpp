#include "quant/block_formats.h"

#include "mopt/core/error.h"

namespace mopt {

at::Tensor quantize_block_format(const at::Tensor& x, const at::Tensor& global_amax,
                                 const QuantizerAttributeConfig& cfg, QuantKind kind) {
  MOPT_CHECK_IMPLEMENTED(false, "NVFP4, MX and NF4 block formats are not built into this "
                         "version of mopt");
  return x;
}

}  // namespace mopt
