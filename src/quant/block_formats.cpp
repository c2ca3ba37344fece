#include "quant/block_formats.h"

#include <cctype>
#include <string>

#include "core/tensor_utils.h"
#include "mopt/core/error.h"
#include "mopt/quant/block_quant.h"

namespace mopt {
namespace {

// "NVFP4", "MX", "NF4" for messages.
std::string family_label(const ResolvedFormat& f) {
  std::string s = f.info->name;
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

BlockFormatPlan block_format_plan(const QuantizerAttributeConfig& cfg, const ResolvedFormat& f,
                                  int64_t ndim) {
  const BlockSizes& b = *cfg.block_sizes;
  const std::string name = family_label(f);
  BlockFormatPlan plan;
  MOPT_CHECK_VALUE(b.axes.size() == 1 && b.axes[0].second.has_value(), name,
                   " quantizes blocks along exactly one axis with a block size, e.g. "
                   "block_sizes={-1: 16, ...}; got ",
                   b.axes.size(), " axis entries", b.axes.size() == 1 ? " with size None" : "");
  plan.axis =
      core::normalize_axes({b.axes[0].first}, std::max<int64_t>(ndim, 1), "block_sizes axis")[0];
  plan.block_size = *b.axes[0].second;
  plan.dynamic = f.dynamic;
  plan.exponent_bits = f.exponent_bits;
  plan.mantissa_bits = f.mantissa_bits;
  if (f.family() != FormatFamily::kNF4) {
    MOPT_CHECK_VALUE(b.scale_block_sizes.empty(),
                     "'scale_block_sizes' (double quantization of "
                     "the block scales) applies to NF4 only; ",
                     name, " scales are not regrouped");
    return plan;
  }
  const auto& s = b.scale_block_sizes;
  MOPT_CHECK_VALUE(s.size() <= 1 && (s.empty() || s[0].first == -1),
                   "NF4 'scale_block_sizes' takes one entry {-1: size} (groups of "
                   "consecutive block scales), got ",
                   s.size(), " entries",
                   s.empty() ? "" : (" starting with axis " + std::to_string(s[0].first)));
  // scale_bits 8 asks for int8 block scales: without scale_block_sizes (or with size None)
  // every block scale of the tensor shares one fp32 double-quantization scale.
  plan.scale_block_size = s.empty() || !s[0].second ? -1 : *s[0].second;
  return plan;
}

namespace {

// The calibrated per-block amax (shape of the static block view: the blocked axis split into
// [n_blocks, 1]) laid out as the kernels want it, [..., n_blocks] with the blocks last.
at::Tensor kernel_block_amax(const at::Tensor& amax, const at::Tensor& x,
                             const BlockFormatPlan& plan, const std::string& name) {
  const int64_t a = plan.axis;
  std::vector<c10::SymInt> want;
  if (x.dim() == 0) {
    want = {c10::SymInt(1), c10::SymInt(1)};
  } else {
    want.assign(x.sym_sizes().begin(), x.sym_sizes().end());
    const auto len = want[a].maybe_as_int();  // a block longer than the axis is one block
    want[a] = len && *len <= plan.block_size ? c10::SymInt(*len > 0 ? 1 : 0)
                                             : (want[a] + plan.block_size - 1) / plan.block_size;
    want.insert(want.begin() + a + 1, c10::SymInt(1));
  }
  bool same = amax.dim() == static_cast<int64_t>(want.size());
  for (size_t d = 0; same && d < want.size(); ++d) same = amax.sym_size(d) == want[d];
  MOPT_CHECK_VALUE(same, "static ", name, " amax of shape ", amax.sym_sizes(),
                   " does not match the input of shape ", x.sym_sizes(), " in blocks of ",
                   plan.block_size, " along axis ", a, "; expected ", c10::SymIntArrayRef(want),
                   " (one amax per block, as calibration produces)");
  const at::Tensor per_block = amax.squeeze(a + 1);
  return x.dim() == 0 ? per_block : per_block.movedim(a, -1);
}

}  // namespace

at::Tensor quantize_block_format(const at::Tensor& x, const at::Tensor& amax,
                                 const QuantizerAttributeConfig& cfg,
                                 const ResolvedFormat& format) {
  const BlockFormatPlan plan = block_format_plan(cfg, format, x.dim());
  const std::string name = family_label(format);
  const bool moved = x.dim() > 1 && plan.axis != x.dim() - 1;
  const at::Tensor xt = moved ? x.movedim(plan.axis, -1) : x;

  c10::optional<at::Tensor> global_amax, block_amax;
  if (amax.defined()) {
    if (!plan.dynamic) {
      block_amax = kernel_block_amax(amax, x, plan, name);
    } else if (format.family() == FormatFamily::kNVFP4) {
      MOPT_CHECK_VALUE(amax.numel() == 1,
                       "NVFP4 with dynamic blocks keeps one per-tensor amax "
                       "for its tensor scale, got amax of shape ",
                       amax.sym_sizes());
      global_amax = amax;
    }
  }

  at::Tensor y;
  switch (format.family()) {
    case FormatFamily::kNVFP4:
      y = fake_quant_nvfp4(xt, global_amax, plan.block_size, block_amax, cfg.pass_through_bwd);
      break;
    case FormatFamily::kMX:
      y = fake_quant_mx(xt, plan.exponent_bits, plan.mantissa_bits, plan.block_size, block_amax,
                        cfg.pass_through_bwd);
      break;
    case FormatFamily::kNF4:
      y = fake_quant_nf4(xt, plan.block_size, plan.scale_block_size, block_amax,
                         cfg.pass_through_bwd);
      break;
    default:
      MOPT_CHECK_STATE(false,
                       "quantize_block_format called for a format that is not a block "
                       "format");
  }
  return moved ? y.movedim(-1, plan.axis) : y;
}

}  // namespace mopt
