#include "mopt/quant/quantize_tensor.h"

#include <torch/library.h>

#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/gt.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <string_view>

#include "core/tensor_utils.h"
#include "fake_quant/fake_quant_math.h"
#include "mopt/core/error.h"
#include "mopt/quant/fake_quant.h"
#include "mopt/quant/gguf.h"
#include "quant/block_formats.h"

namespace mopt {
namespace {

// Blocked axes (normalized, with explicit sizes) and whole-axis reductions of a config.
struct BlockPlan {
  std::vector<std::pair<int64_t, int64_t>> blocked;  // ascending axis
  std::vector<int64_t> whole;                        // axes reduced entirely
};

// With the input's shape, a block longer than a static axis becomes one block covering it: the
// same amax and values as padding the axis up to the block, without allocating the padding.
BlockPlan block_plan(const BlockSizes& b, int64_t ndim, c10::SymIntArrayRef shape = {}) {
  BlockPlan plan;
  std::vector<int64_t> seen;
  for (const auto& [axis, size] : b.axes) {
    const int64_t a = core::normalize_axes({axis}, ndim, "block_sizes axis")[0];
    MOPT_CHECK_VALUE(std::find(seen.begin(), seen.end(), a) == seen.end(), "block_sizes names axis ",
                     a, " of a ", ndim, "-dim input twice (axis ", axis,
                     " is another name for it); give each axis once");
    seen.push_back(a);
    if (!size) {
      plan.whole.push_back(a);
      continue;
    }
    const auto len = shape.empty() ? std::nullopt : shape[a].maybe_as_int();
    plan.blocked.emplace_back(a, len && *len > 0 ? std::min(*size, *len) : *size);
  }
  std::sort(plan.blocked.begin(), plan.blocked.end());
  return plan;
}

// Integer/minifloat blocks and static NVFP4/MX/NF4 blocks calibrate one amax per block of the
// view; dynamic block formats compute their block scales from each input.
bool uses_block_view(const QuantizerAttributeConfig& cfg, const ResolvedFormat& f) {
  if (!cfg.block_sizes) return false;
  return f.info->kernel == std::string_view("fake_quant") || !f.dynamic;
}

// [.., L, ..] -> [.., ceil(L / B), B, ..] for every blocked axis, zero padding L up to a multiple.
// Sizes stay symbolic so the composite traces under torch.compile with dynamic shapes; only the
// padding amount is specialized.
at::Tensor block_view(const at::Tensor& x, const BlockPlan& plan) {
  at::Tensor y = x;
  for (auto it = plan.blocked.rbegin(); it != plan.blocked.rend(); ++it) {
    const auto [axis, size] = *it;
    const c10::SymInt len = y.sym_size(axis);
    const int64_t pad = ((size - len % size) % size).guard_int(__FILE__, __LINE__);
    if (pad) {
      std::vector<c10::SymInt> spec(2 * (y.dim() - axis), c10::SymInt(0));
      spec.back() = pad;
      y = at::constant_pad_nd_symint(y, spec, 0);
    }
    std::vector<c10::SymInt> shape(y.sym_sizes().begin(), y.sym_sizes().end());
    shape[axis] = (len + pad) / size;
    shape.insert(shape.begin() + axis + 1, c10::SymInt(size));
    y = y.reshape_symint(shape);
  }
  return y;
}

at::Tensor block_unview(const at::Tensor& y, c10::SymIntArrayRef orig, const BlockPlan& plan) {
  std::vector<c10::SymInt> padded(orig.begin(), orig.end());
  for (const auto& [axis, size] : plan.blocked) padded[axis] = (orig[axis] + size - 1) / size * size;
  at::Tensor out = y.reshape_symint(padded);
  for (const auto& [axis, size] : plan.blocked) {
    if (padded[axis] != orig[axis]) {  // SymInt != guards on the padding
      out = out.narrow_symint(axis, 0, orig[axis]);
    }
  }
  return out;
}

// True when `small` broadcasts to `big` without growing it (trailing dims aligned, each 1 or equal).
bool broadcasts_into(c10::SymIntArrayRef small, c10::SymIntArrayRef big) {
  if (small.size() > big.size()) return false;
  const size_t off = big.size() - small.size();
  for (size_t d = 0; d < small.size(); ++d) {
    if (small[d] != 1 && small[d] != big[off + d]) return false;
  }
  return true;
}

at::Tensor apply_pre_quant_scale(const at::Tensor& x, const c10::optional<at::Tensor>& pqs) {
  if (!pqs.has_value() || !pqs->defined()) return x;
  MOPT_CHECK_VALUE(broadcasts_into(pqs->sym_sizes(), x.sym_sizes()), "pre_quant_scale of shape ",
                   pqs->sym_sizes(), " does not fit the input of shape ", x.sym_sizes(),
                   " (it scales the input channels: one value per entry of the last dim)");
  return at::mul(x, pqs->to(x.scalar_type()));
}

// A static amax must have the shape calibration gives (the view's kept axes, the others 1), up
// to leading 1s: anything else would broadcast along the wrong axes.
void check_static_amax(const at::Tensor& amax, const at::Tensor& view,
                       const std::vector<int64_t>& keep) {
  if (amax.sym_numel() == 1) return;
  std::vector<c10::SymInt> want(view.dim(), c10::SymInt(1));
  for (const int64_t d : keep) want[d] = view.sym_size(d);
  bool ok = amax.dim() <= view.dim();
  for (int64_t i = 0; ok && i < amax.dim(); ++i) {
    ok = amax.sym_size(amax.dim() - 1 - i) == want[view.dim() - 1 - i];
  }
  MOPT_CHECK_VALUE(ok, "amax of shape ", amax.sym_sizes(), " does not fit this quantizer: for an "
                   "input (calibration view) of shape ", view.sym_sizes(), " it must be ",
                   c10::SymIntArrayRef(want), " (one value per kept axis ",
                   c10::IntArrayRef(keep), ", as calibration produces)");
}

at::Tensor fake_quant_with_amax(const at::Tensor& v, const at::Tensor& amax,
                                const QuantizerAttributeConfig& cfg) {
  if (cfg.num_bits.is_float) {
    return fake_quant_fp(v, amax, cfg.num_bits.exponent, cfg.num_bits.mantissa,
                         cfg.pass_through_bwd);
  }
  return fake_quant_int(v, amax, cfg.num_bits.bits, cfg.is_unsigned, cfg.narrow_range,
                        cfg.pass_through_bwd, cfg.uses_full_range());
}

// Asymmetric integers: the stored amax and zero point, or the input's own min/max range.
at::Tensor fake_quant_asym(const at::Tensor& view, const c10::optional<at::Tensor>& amax,
                           const c10::optional<at::Tensor>& zero_point,
                           const QuantizerAttributeConfig& cfg, bool static_amax,
                           const std::vector<int64_t>& keep) {
  at::Tensor a, zp;
  if (static_amax) {
    MOPT_CHECK_VALUE(zero_point.has_value() && zero_point->defined(), "an asymmetric quantizer "
                     "with an amax needs its zero_point too (calibrate it, or set both)");
    MOPT_CHECK_VALUE(zero_point->sym_sizes() == amax->sym_sizes(), "zero_point of shape ",
                     zero_point->sym_sizes(), " does not match amax of shape ", amax->sym_sizes());
    a = *amax;
    zp = *zero_point;
  } else {
    const auto [lo, hi] = compute_min_max(view.detach(), keep);
    std::tie(a, zp) = int_asym_range(lo, hi, cfg.num_bits.bits);
  }
  return fake_quant_int_asym(view, a, zp, cfg.num_bits.bits, cfg.pass_through_bwd);
}

// LSQ's dequantization amax (ModelOpt's dual LSQ, w_q = Q(w / s_pre) * s_post): the output
// quantized with amax, rescaled by amax_post / amax; zero where amax quantizes to zero.
at::Tensor rescale_to_post_amax(const at::Tensor& y, const at::Tensor& amax,
                                const at::Tensor& amax_post) {
  MOPT_CHECK_VALUE(amax_post.sym_sizes() == amax.sym_sizes(), "amax_post of shape ",
                   amax_post.sym_sizes(), " does not match amax of shape ", amax.sym_sizes());
  const at::Tensor a = amax.to(at::kFloat);
  const at::Tensor ratio = at::where(at::gt(a, kernels::fake_quant::kMinAmax),
                                     amax_post.to(at::kFloat) / a, at::zeros_like(a));
  return at::mul(y, ratio).to(y.scalar_type());
}

at::Tensor quantize_tensor_impl(const at::Tensor& x_in, const c10::optional<at::Tensor>& amax,
                                const c10::optional<at::Tensor>& pqs, c10::string_view cfg_json,
                                const c10::optional<at::Tensor>& zero_point,
                                const c10::optional<at::Tensor>& amax_post) {
  const QuantizerAttributeConfig& cfg = parse_quantizer_config_cached(std::string(cfg_json));
  MOPT_CHECK_TYPE(x_in.is_floating_point(), "quantize_tensor got a torch.",
                  c10::getDtypeNames(x_in.scalar_type()).first,
                  " tensor; only floating-point tensors (float32, float16, bfloat16) can be "
                  "quantized");
  at::Tensor x = apply_pre_quant_scale(x_in, pqs);
  if (!cfg.enable) return x;
  const ResolvedFormat format = resolve_format(cfg);
  const bool have_amax = amax.has_value() && amax->defined();
  const bool have_post = amax_post.has_value() && amax_post->defined();
  MOPT_CHECK_IMPLEMENTED(!have_post || (have_amax && !format.dynamic && !cfg.asymmetric &&
                                        format.info->kernel == std::string_view("fake_quant")),
                         "amax_post (LSQ's dequantization amax) needs a static symmetric integer "
                         "or FP8/minifloat quantizer with an amax; this one is ",
                         format.name, cfg.asymmetric ? " asymmetric" : "",
                         format.dynamic ? " dynamic" : "", have_amax ? "" : " without amax");
  if (format.family() == FormatFamily::kGGUF) {
    return fake_quant_gguf(x, format.gguf_type);  // blocks along the last axis (resolve_format)
  }
  if (format.info->kernel == std::string_view("block_quant")) {
    return quantize_block_format(x, have_amax ? *amax : at::Tensor(), cfg, format);
  }
  at::Tensor view = x;
  BlockPlan plan;
  if (cfg.block_sizes) {
    plan = block_plan(*cfg.block_sizes, x.dim(), x.sym_sizes());
    view = block_view(x, plan);
  }
  const auto keep = quantizer_amax_axes(cfg, x.dim());
  if (have_amax && !format.dynamic) check_static_amax(*amax, view, keep);
  if (cfg.asymmetric) {
    const at::Tensor y = fake_quant_asym(view, amax, zero_point, cfg, have_amax && !format.dynamic,
                                         keep);
    return cfg.block_sizes ? block_unview(y, x.sym_sizes(), plan) : y;
  }
  at::Tensor a = (have_amax && !format.dynamic) ? *amax : mopt::compute_amax(view.detach(), keep);
  at::Tensor y = fake_quant_with_amax(view, a, cfg);
  if (have_post) y = rescale_to_post_amax(y, a, *amax_post);
  return cfg.block_sizes ? block_unview(y, x.sym_sizes(), plan) : y;
}

at::Tensor calib_view_impl(const at::Tensor& x_in, const c10::optional<at::Tensor>& pqs,
                           c10::string_view cfg_json) {
  const QuantizerAttributeConfig& cfg = parse_quantizer_config_cached(std::string(cfg_json));
  at::Tensor x = apply_pre_quant_scale(x_in, pqs);
  if (!uses_block_view(cfg, resolve_format(cfg))) return x;
  return block_view(x, block_plan(*cfg.block_sizes, x.dim(), x.sym_sizes()));
}

}  // namespace

std::vector<int64_t> quantizer_amax_axes(const QuantizerAttributeConfig& cfg, int64_t ndim) {
  std::vector<int64_t> keep;
  if (cfg.block_sizes) {
    if (!uses_block_view(cfg, resolve_format(cfg))) return keep;  // dynamic blocks: NVFP4's tensor scale
    const BlockPlan plan = block_plan(*cfg.block_sizes, ndim);
    int64_t v = 0;  // running dim index in the view
    for (int64_t d = 0; d < ndim; ++d) {
      const bool blocked = std::any_of(plan.blocked.begin(), plan.blocked.end(),
                                       [&](const auto& p) { return p.first == d; });
      const bool whole = std::find(plan.whole.begin(), plan.whole.end(), d) != plan.whole.end();
      if (blocked) {
        keep.push_back(v);  // block index kept, block contents reduced
        v += 2;
      } else {
        if (!whole) keep.push_back(v);
        v += 1;
      }
    }
    return keep;
  }
  if (cfg.axis) return core::normalize_axes(*cfg.axis, ndim, "axis");
  return keep;
}

at::Tensor quantize_tensor(const at::Tensor& x, const c10::optional<at::Tensor>& amax,
                           const c10::optional<at::Tensor>& pre_quant_scale,
                           const std::string& cfg_json,
                           const c10::optional<at::Tensor>& zero_point,
                           const c10::optional<at::Tensor>& amax_post) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::quantize_tensor", "")
                       .typed<at::Tensor(const at::Tensor&, const c10::optional<at::Tensor>&,
                                         const c10::optional<at::Tensor>&, c10::string_view,
                                         const c10::optional<at::Tensor>&,
                                         const c10::optional<at::Tensor>&)>();
  return op.call(x, amax, pre_quant_scale, cfg_json, zero_point, amax_post);
}

at::Tensor quantizer_calib_view(const at::Tensor& x,
                                const c10::optional<at::Tensor>& pre_quant_scale,
                                const std::string& cfg_json) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::quantizer_calib_view", "")
                       .typed<at::Tensor(const at::Tensor&, const c10::optional<at::Tensor>&,
                                         c10::string_view)>();
  return op.call(x, pre_quant_scale, cfg_json);
}

TORCH_LIBRARY_FRAGMENT(mopt, m) {
  m.def("quantize_tensor(Tensor x, Tensor? amax, Tensor? pre_quant_scale, str cfg, "
        "Tensor? zero_point=None, Tensor? amax_post=None) -> Tensor");
  m.def("quantizer_calib_view(Tensor x, Tensor? pre_quant_scale, str cfg) -> Tensor");
}

TORCH_LIBRARY_IMPL(mopt, CompositeImplicitAutograd, m) {
  m.impl("quantize_tensor", &quantize_tensor_impl);
  m.impl("quantizer_calib_view", &calib_view_impl);
}

}  // namespace mopt
