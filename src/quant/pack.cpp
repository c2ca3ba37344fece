#include "mopt/quant/pack.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <memory>
#include <string_view>

#include "core/tensor_utils.h"
#include "fake_quant/fake_quant_math.h"
#include "mopt/core/error.h"
#include "mopt/quant/fake_quant.h"
#include "mopt/quant/quantize_tensor.h"
#include "pack/pack.h"
#include "pack/pack_math.h"
#include "quant/block_formats.h"
#include "quant/kernel_format.h"
#include "quant/pack_launch.h"

namespace mopt {
namespace {

using kernels::pack::PackParams;

int64_t prod(const std::vector<int64_t>& v) {
  int64_t n = 1;
  for (const int64_t d : v) n *= d;
  return n;
}

// Bits each code of the format is stored in: 4-bit formats two per byte, the rest a byte.
int storage_bits(const PackedWeight& w) {
  switch (w.family) {
    case FormatFamily::kInt: return w.num_bits <= 4 ? 4 : 8;
    case FormatFamily::kMinifloat:
    case FormatFamily::kMX:
      return w.exponent_bits > 0 && 1 + w.exponent_bits + w.mantissa_bits <= 4 ? 4 : 8;
    case FormatFamily::kNVFP4:
    case FormatFamily::kNF4: return 4;
  }
  return 8;
}

int64_t row_len_of(const PackedWeight& w) { return w.shape.empty() ? 1 : w.shape.back(); }
int64_t rows_of(const PackedWeight& w) {
  const int64_t c = row_len_of(w);
  return c == 0 ? 0 : prod(w.shape) / c;
}

// Kernel parameters for w's format, shape and stored tensors (the direction-free part).
PackParams base_params(const PackedWeight& w) {
  PackParams p;
  p.rows = rows_of(w);
  p.row_len = row_len_of(w);
  p.block_size = w.block_size;
  p.format = kernel_format(w.family);
  p.num_bits = w.num_bits;
  p.is_unsigned = w.is_unsigned;
  p.narrow_range = w.narrow_range;
  p.full_range = w.full_range || w.asymmetric;
  p.exponent_bits = w.exponent_bits;
  p.mantissa_bits = w.mantissa_bits;
  p.code_bits = w.code_bits;
  p.scale_block_size = w.scale_block_size;
  if (w.block_size == 0 && w.amax.defined() &&
      w.amax.dim() <= static_cast<int64_t>(w.shape.size()) &&
      (w.family == FormatFamily::kInt || w.family == FormatFamily::kMinifloat)) {
    // amax keeps the dims where it varies (keepdims over the weight, leading 1s optional)
    std::vector<bool> keep(w.shape.size(), false);
    const int64_t off = static_cast<int64_t>(w.shape.size()) - w.amax.dim();
    for (int64_t d = 0; d < w.amax.dim(); ++d) {
      if (w.amax.size(d) != 1) keep[off + d] = true;
    }
    std::unique_ptr<bool[]> mask(new bool[std::max<size_t>(keep.size(), 1)]);
    for (size_t d = 0; d < keep.size(); ++d) mask[d] = keep[d];
    p.layout = kernels::make_reduce_layout(w.shape.data(), static_cast<int>(w.shape.size()),
                                           mask.get());
  }
  return p;
}

// The element bound amax maps to (the fake-quant kernels' scale_bound / minifloat maximum).
float element_bound(const PackedWeight& w) {
  if (w.family == FormatFamily::kInt) {
    return kernels::fake_quant::int_scale_bound(w.num_bits, w.is_unsigned,
                                                w.full_range || w.asymmetric);
  }
  return kernels::fake_quant::minifloat_max(w.exponent_bits, w.mantissa_bits);
}

float int_minbound(const PackedWeight& w) {
  return kernels::fake_quant::int_minbound(w.num_bits, w.is_unsigned, w.narrow_range);
}

// The stored tensors' pointers, for pack (mutable) and dequantize alike.
void attach(PackParams& p, const PackedWeight& w, at::Tensor& zp_signed) {
  if (w.amax.defined() && (w.family == FormatFamily::kInt ||
                           w.family == FormatFamily::kMinifloat)) {
    p.amax = w.amax.const_data_ptr<float>();
  }
  if (w.zero_point.defined()) {
    zp_signed = (w.zero_point.to(at::kFloat) + int_minbound(w)).contiguous();
    p.zero_point = zp_signed.const_data_ptr<float>();
  }
  p.data = w.data.defined() ? static_cast<uint8_t*>(w.data.data_ptr()) : nullptr;
  if (w.block_scale.defined()) {
    if (w.block_scale.scalar_type() == at::kFloat) {
      p.block_scale_f32 = w.block_scale.data_ptr<float>();
    } else {
      p.block_scale = static_cast<uint8_t*>(w.block_scale.data_ptr());
    }
  }
  if (w.tensor_scale.defined()) p.tensor_scale = w.tensor_scale.data_ptr<float>();
  if (w.family == FormatFamily::kNF4 && w.amax.defined()) {
    p.group_amax = w.amax.data_ptr<float>();
  }
  if (w.scale_offset.defined()) p.scale_mean = w.scale_offset.data_ptr<float>();
}

std::string label(const QuantizerCore& q) { return "quantizer '" + q.name() + "'"; }

// The keepdims shape of an amax over `view` keeping `keep`.
std::vector<int64_t> keepdims_shape(const at::Tensor& view, const std::vector<int64_t>& keep) {
  std::vector<int64_t> want(view.dim(), 1);
  for (const int64_t d : keep) want[d] = view.size(d);
  return want;
}

// `amax` (calibrated, possibly without leading 1s) as the keepdims shape `want`.
at::Tensor amax_as(const at::Tensor& amax, const std::vector<int64_t>& want,
                   const QuantizerCore& q, const char* what) {
  bool ok = amax.numel() == prod(want) && amax.dim() <= static_cast<int64_t>(want.size());
  for (int64_t i = 0; ok && i < amax.dim(); ++i) {
    ok = amax.size(amax.dim() - 1 - i) == want[want.size() - 1 - i];
  }
  MOPT_CHECK_VALUE(ok || amax.numel() == 1, label(q), ": ", what, " of shape ",
                   core::shape_str(amax.sizes()), " does not fit the weight (expected ",
                   core::shape_str(want), ")");
  return amax.detach().to(at::kFloat).reshape(want).contiguous();
}

}  // namespace

void run_pack(const PackParams& p, const c10::Device& device) {
  if (device.is_cpu()) {
    core::call_kernel([&] { kernels::pack::pack_cpu(p); });
    return;
  }
#if defined(MOPT_WITH_CUDA_OPS)
  if (device.is_cuda()) return run_pack_cuda(p, device);
#endif
  MOPT_CHECK_IMPLEMENTED(false, "packing weights on ", device, " is not supported (CPU",
#if defined(MOPT_WITH_CUDA_OPS)
                         " and CUDA"
#endif
                         " only)");
}

void run_dequantize(const PackParams& p, const c10::Device& device) {
  if (device.is_cpu()) {
    core::call_kernel([&] { kernels::pack::dequantize_cpu(p); });
    return;
  }
#if defined(MOPT_WITH_CUDA_OPS)
  if (device.is_cuda()) return run_dequantize_cuda(p, device);
#endif
  MOPT_CHECK_IMPLEMENTED(false, "dequantizing packed weights on ", device, " is not supported "
                         "(CPU"
#if defined(MOPT_WITH_CUDA_OPS)
                         " and CUDA"
#endif
                         " only)");
}

// ---------------------------------------------------------------------------------------------

at::Tensor PackedWeight::codes() const {
  const int64_t rows = rows_of(*this), len = row_len_of(*this);
  at::Tensor c;
  if (code_bits == 8) {
    c = data.narrow(1, 0, len);
  } else {
    const at::Tensor lo = at::bitwise_and(data, 15);
    const at::Tensor hi = at::bitwise_right_shift(data, 4);
    c = at::stack({lo, hi}, -1).reshape({rows, -1}).narrow(1, 0, len);
  }
  c = c.contiguous();
  switch (family) {
    case FormatFamily::kInt:
      if (is_signed) {
        c = c.view(at::kChar);
        if (code_bits == 4) c = at::sub(at::bitwise_xor(c, 8), 8);
      }
      break;
    case FormatFamily::kMinifloat:
    case FormatFamily::kMX:
      if (exponent_bits == 0) {
        c = c.view(at::kChar);
      } else if (exponent_bits == 4 && mantissa_bits == 3) {
        c = c.view(at::kFloat8_e4m3fn);
      } else if (exponent_bits == 5 && mantissa_bits == 2) {
        c = c.view(at::kFloat8_e5m2);
      }
      break;
    default:
      break;
  }
  return c.reshape(shape);
}

at::Tensor PackedWeight::scale() const {
  switch (family) {
    case FormatFamily::kInt:
    case FormatFamily::kMinifloat:
      return at::div(amax, static_cast<double>(element_bound(*this)));
    case FormatFamily::kNVFP4:
      return block_scale.view(at::kFloat8_e4m3fn);
    default:
      return block_scale;
  }
}

at::Tensor PackedWeight::scale_2() const {
  if (family == FormatFamily::kNVFP4) return tensor_scale;
  if (family == FormatFamily::kNF4 && amax.defined()) {
    return at::div(amax, static_cast<double>(kernels::block_quant::kNf4ScaleMaxbound));
  }
  return at::Tensor();
}

at::Tensor PackedWeight::dequantize(c10::optional<at::ScalarType> out_dtype) const {
  const at::ScalarType dt = out_dtype.value_or(dtype);
  at::Tensor y = at::empty(shape, data.options().dtype(dt));
  PackParams p = base_params(*this);
  at::Tensor zp;
  attach(p, *this, zp);
  p.dtype = core::kernel_dtype(y, "dequantize dtype");
  p.y = y.data_ptr();
  run_dequantize(p, y.device());
  return y;
}

int64_t PackedWeight::nbytes() const {
  int64_t n = 0;
  for (const auto& [name, t] : tensors()) n += t.numel() * static_cast<int64_t>(t.element_size());
  return n;
}

std::map<std::string, at::Tensor> PackedWeight::tensors() const {
  std::map<std::string, at::Tensor> m;
  const std::pair<const char*, const at::Tensor*> all[] = {
      {"data", &data},
      {"amax", &amax},
      {"zero_point", &zero_point},
      {"block_scale", &block_scale},
      {"tensor_scale", &tensor_scale},
      {"scale_offset", &scale_offset}};
  for (const auto& [name, t] : all) {
    if (t->defined()) m[name] = *t;
  }
  return m;
}

std::string PackedWeight::metadata_json() const {
  nlohmann::json j;
  j["format"] = format;
  j["family"] = static_cast<int>(family);
  j["shape"] = shape;
  j["block_size"] = block_size;
  j["signed"] = is_signed;
  j["dtype"] = std::string(c10::toString(dtype));
  j["num_bits"] = num_bits;
  j["unsigned"] = is_unsigned;
  j["narrow_range"] = narrow_range;
  j["full_range"] = full_range;
  j["asymmetric"] = asymmetric;
  j["exponent_bits"] = exponent_bits;
  j["mantissa_bits"] = mantissa_bits;
  j["code_bits"] = code_bits;
  j["scale_block_size"] = scale_block_size;
  return j.dump();
}

PackedWeight PackedWeight::from_parts(const std::string& metadata_json,
                                      const std::map<std::string, at::Tensor>& tensors) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(metadata_json);
  } catch (const std::exception& e) {
    MOPT_CHECK_VALUE(false, "packed weight metadata is not JSON: ", e.what());
  }
  PackedWeight w;
  try {
    w.format = j.at("format").get<std::string>();
    const int fam = j.at("family").get<int>();
    MOPT_CHECK_VALUE(fam >= 0 && fam <= static_cast<int>(FormatFamily::kNF4),
                     "packed weight metadata: unknown format family ", fam);
    w.family = static_cast<FormatFamily>(fam);
    w.shape = j.at("shape").get<std::vector<int64_t>>();
    w.block_size = j.at("block_size").get<int64_t>();
    w.is_signed = j.at("signed").get<bool>();
    const std::string dt = j.at("dtype").get<std::string>();
    bool found = false;
    for (const at::ScalarType t : {at::kFloat, at::kHalf, at::kBFloat16}) {
      if (dt == c10::toString(t)) {
        w.dtype = t;
        found = true;
      }
    }
    MOPT_CHECK_VALUE(found, "packed weight metadata: dtype '", dt,
                     "' is not Float, Half or BFloat16");
    w.num_bits = j.at("num_bits").get<int>();
    w.is_unsigned = j.at("unsigned").get<bool>();
    w.narrow_range = j.at("narrow_range").get<bool>();
    w.full_range = j.at("full_range").get<bool>();
    w.asymmetric = j.at("asymmetric").get<bool>();
    w.exponent_bits = j.at("exponent_bits").get<int>();
    w.mantissa_bits = j.at("mantissa_bits").get<int>();
    w.code_bits = j.at("code_bits").get<int>();
    w.scale_block_size = j.at("scale_block_size").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    MOPT_CHECK_VALUE(false, "packed weight metadata: ", e.what());
  }
  auto get = [&](const char* name) {
    const auto it = tensors.find(name);
    return it == tensors.end() ? at::Tensor() : it->second;
  };
  w.data = get("data");
  w.amax = get("amax");
  w.zero_point = get("zero_point");
  w.block_scale = get("block_scale");
  w.tensor_scale = get("tensor_scale");
  w.scale_offset = get("scale_offset");
  MOPT_CHECK_VALUE(w.data.defined() && w.data.scalar_type() == at::kByte && w.data.dim() == 2 &&
                       w.data.size(0) == rows_of(w) &&
                       w.data.size(1) ==
                           kernels::pack::row_bytes(row_len_of(w), w.code_bits) &&
                       w.data.is_contiguous(),
                   "packed weight '", w.format, "' of shape ", core::shape_str(w.shape),
                   ": 'data' must be contiguous uint8 [", rows_of(w), ", ",
                   kernels::pack::row_bytes(row_len_of(w), w.code_bits), "]");
  for (const auto& [name, t] : w.tensors()) {
    MOPT_CHECK_VALUE(t.device() == w.data.device() && t.is_contiguous(), "packed weight '",
                     w.format, "': '", name, "' must be contiguous on the device of 'data'");
  }
  // The sizes the kernels index: checked here, so a mismatched state cannot read out of bounds.
  PackParams p = base_params(w);
  const int64_t blocks = kernels::pack::pack_num_blocks(p);
  const bool intlike = w.family == FormatFamily::kInt || w.family == FormatFamily::kMinifloat;
  if (intlike) {
    MOPT_CHECK_VALUE(w.amax.defined() && w.amax.scalar_type() == at::kFloat &&
                         w.amax.numel() == (w.block_size > 0 ? blocks : p.layout.out_numel),
                     "packed weight '", w.format, "': 'amax' is missing or of the wrong size");
    MOPT_CHECK_VALUE(!w.asymmetric || (w.zero_point.defined() &&
                                       w.zero_point.numel() == w.amax.numel()),
                     "packed weight '", w.format, "': 'zero_point' is missing or of the wrong "
                     "size");
  } else {
    MOPT_CHECK_VALUE(w.block_scale.defined() && w.block_scale.numel() == blocks,
                     "packed weight '", w.format, "': 'block_scale' is missing or of the wrong "
                     "size");
  }
  if (w.family == FormatFamily::kNVFP4) {
    MOPT_CHECK_VALUE(w.tensor_scale.defined() && w.tensor_scale.numel() == 1 &&
                         w.tensor_scale.scalar_type() == at::kFloat,
                     "packed weight 'nvfp4': 'tensor_scale' must be one fp32 value");
  }
  if (w.family == FormatFamily::kNF4 && w.scale_block_size != 0) {
    MOPT_CHECK_VALUE(w.amax.defined() && w.amax.numel() == kernels::pack::pack_num_scale_groups(p)
                         && w.scale_offset.defined() && w.scale_offset.numel() == 1,
                     "packed weight 'nf4': the double-quantization 'amax' per group and "
                     "'scale_offset' are missing or of the wrong size");
  }
  return w;
}

// ---------------------------------------------------------------------------------------------

PackedWeight pack_weight(const at::Tensor& weight, const QuantizerCore& q,
                         const c10::optional<at::Tensor>& amax_in,
                         const c10::optional<at::Tensor>& pqs,
                         const c10::optional<at::Tensor>& zero_point_in) {
  const QuantizerAttributeConfig& cfg = q.attributes();
  const ResolvedFormat& f = q.format();
  MOPT_CHECK_VALUE(q.is_enabled() && cfg.enable, label(q), " is disabled: there is nothing to "
                   "pack (its weight stays in floating point)");
  MOPT_CHECK_VALUE(q.is_quant_enabled(), label(q), " does not quantize (quant flag off): "
                   "there is nothing to pack");
  MOPT_CHECK_IMPLEMENTED(!cfg.rotate, label(q), ": rotated weights (rotate=True) have no "
                         "packed layout");
  MOPT_CHECK_TYPE(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kHalf ||
                      weight.scalar_type() == at::kBFloat16,
                  label(q), ": the weight is ", c10::toString(weight.scalar_type()),
                  "; only float32, float16 and bfloat16 weights are packed");
  MOPT_CHECK_VALUE(weight.dim() >= 1, label(q), ": a 0-dim weight has no packed layout");
  const bool have_amax = amax_in.has_value() && amax_in->defined();
  MOPT_CHECK_VALUE(!q.is_static() || have_amax, label(q), " is static (", f.name,
                   ") but has no amax: calibrate the model (mtq.quantize with a forward_loop) "
                   "before packing its weights");
  const int64_t ndim = weight.dim();
  const int64_t len = weight.size(-1);

  PackedWeight w;
  w.format = f.name;
  w.family = f.family();
  w.shape = weight.sizes().vec();
  w.dtype = weight.scalar_type();
  w.num_bits = cfg.num_bits.bits;
  w.is_unsigned = cfg.is_unsigned;
  w.narrow_range = cfg.narrow_range;
  w.full_range = cfg.full_range;
  w.asymmetric = cfg.asymmetric;
  w.is_signed = !cfg.is_unsigned && !cfg.asymmetric;
  w.exponent_bits = f.exponent_bits;
  w.mantissa_bits = f.mantissa_bits;
  if (f.family() == FormatFamily::kInt) {
    MOPT_CHECK_IMPLEMENTED(w.num_bits <= 8, label(q), ": ", f.name, " codes are wider than 8 "
                           "bits; packed storage holds 2- to 8-bit integers");
  }
  if (f.family() == FormatFamily::kMinifloat) {
    w.exponent_bits = cfg.num_bits.exponent;
    w.mantissa_bits = cfg.num_bits.mantissa;
    MOPT_CHECK_IMPLEMENTED(cfg.num_bits.bits <= 8, label(q), ": ", f.name, " is wider than 8 "
                           "bits; packed storage holds minifloats of at most 8 bits");
  }
  if (cfg.block_sizes) {
    const auto& axes = cfg.block_sizes->axes;
    std::vector<int64_t> blocked;
    for (const auto& [axis, size] : axes) {
      if (size) blocked.push_back(core::normalize_axes({axis}, ndim, "block_sizes axis")[0]);
    }
    MOPT_CHECK_IMPLEMENTED(blocked.size() == 1 && axes.size() == 1, label(q),
                           ": layout not supported: packed weights take blocks along one axis "
                           "(the last) only; this quantizer's block_sizes name ", axes.size(),
                           " axes", blocked.size() > 1 ? " (2-D blocks)" : "");
    MOPT_CHECK_IMPLEMENTED(blocked[0] == ndim - 1, label(q), ": layout not supported: blocks "
                           "along axis ", blocked[0], " of a ", ndim, "-dim weight; packed "
                           "weights take blocks along the last axis");
    w.block_size = std::min<int64_t>(*axes[0].second, std::max<int64_t>(len, 1));
  }

  at::Tensor x = weight.detach();
  if (pqs.has_value() && pqs->defined()) x = at::mul(x, pqs->to(x.scalar_type()));
  x = x.contiguous();
  MOPT_CHECK_VALUE(at::isfinite(x).all().item<bool>(), label(q), ": the weight (times its "
                   "pre_quant_scale) has NaN or infinite values; they have no packed code");
  w.code_bits = storage_bits(w);
  const int64_t rows = len == 0 ? 0 : x.numel() / len;
  std::vector<int64_t> scale_shape(w.shape.begin(), w.shape.end() - 1);
  if (w.block_size > 0) scale_shape.push_back(kernels::ceil_div(len, w.block_size));
  w.data = at::empty({rows, kernels::pack::row_bytes(len, w.code_bits)},
                     x.options().dtype(at::kByte));

  at::Tensor block_amax, global_amax, zp_signed;
  const bool intlike = f.family() == FormatFamily::kInt || f.family() == FormatFamily::kMinifloat;
  if (intlike) {
    const at::Tensor view = quantizer_calib_view(x, c10::nullopt, q.attributes_json());
    const std::vector<int64_t> keep = quantizer_amax_axes(cfg, ndim);
    const std::vector<int64_t> want = keepdims_shape(view, keep);
    const bool stored = have_amax && !f.dynamic;
    at::Tensor a, zp;
    if (cfg.asymmetric) {
      if (stored) {
        MOPT_CHECK_VALUE(zero_point_in.has_value() && zero_point_in->defined(), label(q),
                         " is asymmetric with an amax but no zero_point: calibrate it again");
        a = amax_as(*amax_in, want, q, "amax");
        zp = amax_as(*zero_point_in, want, q, "zero_point");
      } else {
        const auto [lo, hi] = compute_min_max(view, keep);
        std::tie(a, zp) = int_asym_range(lo, hi, cfg.num_bits.bits);
      }
    } else {
      a = stored ? amax_as(*amax_in, want, q, "amax") : compute_amax(view, keep);
    }
    MOPT_CHECK_IMPLEMENTED(w.block_size > 0 || view.dim() == ndim, label(q),
                           ": layout not supported");
    // per-block amax [..., nb, 1] -> [..., nb]; per channel keeps its keepdims shape; per
    // tensor -> []
    auto shaped = [&](const at::Tensor& t) {
      if (w.block_size > 0) return t.reshape(scale_shape).contiguous();
      if (t.numel() == 1) return t.reshape({}).contiguous();
      return t.contiguous();
    };
    w.amax = shaped(a.to(at::kFloat));
    if (cfg.asymmetric) {
      zp_signed = shaped(zp.to(at::kFloat));
      w.zero_point = (zp_signed - int_minbound(w)).to(at::kByte);
    }
  } else {
    const BlockFormatPlan plan = block_format_plan(cfg, f, ndim);
    MOPT_CHECK_IMPLEMENTED(plan.axis == ndim - 1, label(q), ": layout not supported: blocks "
                           "along axis ", plan.axis, "; packed weights take the last axis");
    w.scale_block_size = f.family() == FormatFamily::kNF4 ? plan.scale_block_size : 0;
    if (!f.dynamic && have_amax) {
      block_amax = amax_in->detach().to(at::kFloat).contiguous();
      MOPT_CHECK_VALUE(block_amax.numel() == rows * scale_shape.back(), label(q),
                       ": static block amax of shape ", core::shape_str(block_amax.sizes()),
                       " does not fit the weight's ", rows * scale_shape.back(), " blocks");
    }
    if (f.family() == FormatFamily::kNVFP4) {
      if (block_amax.defined()) {
        global_amax = compute_amax(block_amax);
      } else {
        MOPT_CHECK_VALUE(amax_in->numel() == 1, label(q), ": NVFP4 with dynamic blocks keeps "
                         "one per-tensor amax, got shape ",
                         core::shape_str(amax_in->sizes()));
        global_amax = amax_in->detach().to(at::kFloat).reshape({}).contiguous();
      }
      w.block_scale = at::empty(scale_shape, x.options().dtype(at::kByte));
      w.tensor_scale = at::empty({}, x.options().dtype(at::kFloat));
    } else if (f.family() == FormatFamily::kMX) {
      w.block_scale = at::empty(scale_shape, x.options().dtype(at::kByte));
    } else if (w.scale_block_size == 0) {
      w.block_scale = at::empty(scale_shape, x.options().dtype(at::kFloat));
    } else {
      w.block_scale = at::empty(scale_shape, x.options().dtype(at::kChar));
      const int64_t blocks = rows * scale_shape.back();
      const int64_t groups = blocks == 0 ? 0 : (w.scale_block_size > 0
                                                    ? kernels::ceil_div(blocks, w.scale_block_size)
                                                    : 1);
      w.amax = at::empty({groups}, x.options().dtype(at::kFloat));
      w.scale_offset = at::zeros({}, x.options().dtype(at::kFloat));
    }
  }

  PackParams p = base_params(w);
  at::Tensor unused;
  attach(p, w, unused);
  if (zp_signed.defined()) p.zero_point = zp_signed.const_data_ptr<float>();
  p.dtype = core::kernel_dtype(x, "weight");
  p.x = x.const_data_ptr();
  if (global_amax.defined()) p.global_amax = global_amax.const_data_ptr<float>();
  if (block_amax.defined()) p.block_amax = block_amax.const_data_ptr<float>();
  at::Tensor flag = at::zeros({1}, x.options().dtype(at::kInt));
  p.unrepresentable = flag.data_ptr<int32_t>();
  run_pack(p, x.device());
  MOPT_CHECK_IMPLEMENTED(flag.item<int32_t>() == 0, label(q), ": an NVFP4 block whose "
                         "calibrated amax is zero holds nonzero weights (its fake-quant scale "
                         "falls back to 1, which E4M3 block scales times the tensor scale "
                         "cannot store)");
  return w;
}

}  // namespace mopt
