#include "mopt/quant/formats.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <optional>

#include "gguf/gguf.h"
#include "mopt/core/error.h"

namespace mopt {
namespace {

std::string em_name(int e, int m) { return "e" + std::to_string(e) + "m" + std::to_string(m); }

std::string num_bits_str(const NumBits& n) {
  if (!n.is_float) return std::to_string(n.bits) + " bits";
  return "(" + std::to_string(n.exponent) + ", " + std::to_string(n.mantissa) + ")";
}

// The block size of the one blocked axis with a size, 0 when there is none.
int64_t first_block_size(const BlockSizes& b) {
  for (const auto& [axis, size] : b.axes) {
    if (size) return *size;
  }
  return 0;
}

std::string minifloat_name(int e, int m) {
  return "fp" + std::to_string(1 + e + m) + "_" + em_name(e, m);
}

}  // namespace

const char* scale_encoding_name(ScaleEncoding scale) {
  switch (scale) {
    case ScaleEncoding::kFloat: return "float";
    case ScaleEncoding::kE4M3TensorScaled: return "e4m3_tensor_scaled";
    case ScaleEncoding::kE8M0: return "e8m0";
    case ScaleEncoding::kAbsmaxDoubleQuant: return "absmax_double_quant";
    case ScaleEncoding::kGGUF: return "gguf";
  }
  return "unknown";
}

const std::vector<FormatFamilyInfo>& format_table() {
  // family, name, element, scale, block, scale bits, tensor scale bits, kernel,
  // dynamic_keeps_tensor_amax, histogram, entropy, gptq, awq_lite, awq_clip, exportable
  static const std::vector<FormatFamilyInfo> table = {
      {FormatFamily::kInt, "int", ElementEncoding::kInteger, ScaleEncoding::kFloat, 0, 0, 0,
       "fake_quant", false, true, true, true, true, true, true},
      {FormatFamily::kMinifloat, "minifloat", ElementEncoding::kMinifloat, ScaleEncoding::kFloat,
       0, 0, 0, "fake_quant", false, true, false, true, true, true, true},
      {FormatFamily::kNVFP4, "nvfp4", ElementEncoding::kMinifloat,
       ScaleEncoding::kE4M3TensorScaled, 16, 8, 32, "block_quant", true, false, false, true, true,
       true, true},
      {FormatFamily::kMX, "mx", ElementEncoding::kMinifloat, ScaleEncoding::kE8M0, 32, 8, 0,
       "block_quant", false, false, false, false, true, false, true},
      {FormatFamily::kNF4, "nf4", ElementEncoding::kLookupTable, ScaleEncoding::kAbsmaxDoubleQuant,
       64, 8, 0, "block_quant", false, false, false, false, true, false, false},
      // scale_bits: Q8_0 / Q4_0 keep one fp16 d per block of 32 (Q4_K: see weight_storage_bits)
      {FormatFamily::kGGUF, "gguf", ElementEncoding::kInteger, ScaleEncoding::kGGUF, 32, 16, 0,
       "gguf", false, false, false, false, false, false, true},
  };
  return table;
}

const FormatFamilyInfo& format_family_info(FormatFamily family) {
  return format_table().at(static_cast<size_t>(family));
}

ResolvedFormat resolve_format(const QuantizerAttributeConfig& cfg) {
  ResolvedFormat f;
  const NumBits& n = cfg.num_bits;
  const auto& b = cfg.block_sizes;
  f.dynamic = cfg.type == "dynamic" || (b && b->dynamic());
  f.block_size = b ? first_block_size(*b) : 0;
  FormatFamily family = n.is_float ? FormatFamily::kMinifloat : FormatFamily::kInt;
  if (b && !b->gguf.empty()) {
    family = FormatFamily::kGGUF;
  } else if (b && b->scale_bits) {
    const NumBits& s = *b->scale_bits;
    if (n == NumBits::minifloat(2, 1) && s == NumBits::minifloat(4, 3)) {
      family = FormatFamily::kNVFP4;
    } else if (s == NumBits::minifloat(8, 0)) {
      family = FormatFamily::kMX;
    } else if (!n.is_float && n.bits == 4 && !s.is_float && s.bits == 8) {
      family = FormatFamily::kNF4;
    } else {
      MOPT_CHECK_IMPLEMENTED(false, "block scales quantized to ", num_bits_str(s), " for elements ",
                             num_bits_str(n), " are only implemented for NVFP4 (num_bits (2, 1), "
                             "scale_bits (4, 3)), MX (scale_bits (8, 0)) and NF4 (num_bits 4, "
                             "scale_bits 8)");
    }
  }
  f.info = &format_family_info(family);
  switch (family) {
    case FormatFamily::kInt:
      f.element_bits = n.bits;
      f.name = (cfg.is_unsigned ? "uint" : "int") + std::to_string(n.bits);
      break;
    case FormatFamily::kMinifloat:
      f.element_bits = n.bits;
      f.exponent_bits = n.exponent;
      f.mantissa_bits = n.mantissa;
      f.name = minifloat_name(n.exponent, n.mantissa);
      break;
    case FormatFamily::kNVFP4:
      f.element_bits = 4;
      f.exponent_bits = 2;
      f.mantissa_bits = 1;
      f.name = "nvfp4";
      break;
    case FormatFamily::kMX:
      f.element_bits = n.bits;
      if (n.is_float) {
        f.exponent_bits = n.exponent;
        f.mantissa_bits = n.mantissa;
        f.name = n.bits == 4 ? "mxfp4" : "mx" + minifloat_name(n.exponent, n.mantissa);
      } else {
        MOPT_CHECK_VALUE(!cfg.is_unsigned, "MX integer elements are signed; unsigned=True is not "
                         "an MX format");
        MOPT_CHECK_VALUE(n.bits <= 8, "MX integer elements have at most 8 bits (MXINT8), got "
                         "num_bits ", n.bits);
        f.exponent_bits = 0;  // sign + (bits - 1) magnitude bits: MXINT8 = E0M7
        f.mantissa_bits = n.bits - 1;
        f.name = "mxint" + std::to_string(n.bits);
      }
      break;
    case FormatFamily::kNF4:
      MOPT_CHECK_VALUE(!cfg.is_unsigned, "NF4 is a signed table; unsigned=True does not apply");
      f.element_bits = 4;
      f.name = "nf4";
      break;
    case FormatFamily::kGGUF: {
      // The layout is llama.cpp's, so every other setting must say what it says.
      const std::string& t = b->gguf;
      const int bits = t == "q8_0" ? 8 : 4;
      const int64_t block = t == "q4_k" ? 256 : 32;
      MOPT_CHECK_VALUE(!n.is_float && n.bits == bits, "GGUF ", t, " has ", bits, "-bit elements; "
                       "set num_bits ", bits, ", got ", num_bits_str(n));
      MOPT_CHECK_VALUE(b->axes.size() == 1 && b->axes[0].first == -1 &&
                           b->axes[0].second == block,
                       "GGUF ", t, " quantizes blocks of ", block, " along the last axis (the "
                       "rows llama.cpp stores); set block_sizes {-1: ", block, ", ...}");
      MOPT_CHECK_VALUE(b->dynamic(), "GGUF ", t, " computes its scales from each block (llama.cpp "
                       "has no calibrated scales); set block_sizes type \"dynamic\"");
      MOPT_CHECK_VALUE(!b->scale_bits && b->scale_block_sizes.empty(), "GGUF ", t, " fixes its "
                       "own scale format (fp16); remove scale_bits / scale_block_sizes");
      MOPT_CHECK_VALUE(!cfg.is_unsigned && !cfg.asymmetric && !cfg.full_range, "GGUF ", t,
                       " fixes its own code range; unsigned / asymmetric / full_range do not "
                       "apply");
      f.element_bits = bits;
      f.gguf_type = t;
      f.name = "gguf_" + t;
      break;
    }
  }
  MOPT_CHECK_IMPLEMENTED(!cfg.asymmetric || family == FormatFamily::kInt, "'asymmetric' (integer "
                         "zero points) applies to plain integer formats, not ", f.name,
                         " (its block scales have no zero point)");
  if (cfg.asymmetric) f.name = "int" + std::to_string(n.bits) + "_asym";
  f.calibrated = !f.dynamic || f.info->dynamic_keeps_tensor_amax;
  return f;
}

std::string format_families_where(bool (*supports)(const FormatFamilyInfo&), bool negate) {
  std::vector<std::string> names;
  for (const auto& row : format_table()) {
    if (supports(row) == negate) continue;
    std::string n = row.name;
    for (auto& c : n) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    names.push_back(n);
  }
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) {
    s += (i == 0 ? "" : i + 1 == names.size() ? " and " : ", ") + names[i];
  }
  return s;
}

WeightStorage weight_storage_bits(const QuantizerAttributeConfig& cfg,
                                  const std::vector<int64_t>& shape) {
  const ResolvedFormat f = resolve_format(cfg);
  const int64_t ndim = static_cast<int64_t>(shape.size());
  auto norm = [&](int64_t a) { return ndim ? ((a % ndim) + ndim) % ndim : 0; };
  double numel = 1;
  for (int64_t d : shape) numel *= static_cast<double>(d);
  // one scale per block (blocked axes), per kept channel (axis), or per tensor
  double count = 1;
  if (cfg.block_sizes) {
    for (int64_t d = 0; d < ndim; ++d) {
      bool listed = false;
      for (const auto& [axis, size] : cfg.block_sizes->axes) {
        if (norm(axis) != d) continue;
        listed = true;
        count *= size ? std::ceil(static_cast<double>(shape[d]) / *size) : 1.0;
      }
      if (!listed) count *= static_cast<double>(shape[d]);
    }
  } else if (cfg.axis) {
    for (int64_t a : *cfg.axis) count *= static_cast<double>(shape[norm(a)]);
  }
  WeightStorage s;
  s.element_bits = numel * f.element_bits;
  const FormatFamilyInfo& info = *f.info;
  if (info.family == FormatFamily::kGGUF) {
    // in the type llama.cpp stores rows of this length in (a Q4_K weight with rows of 64 is
    // Q5_0; one whose rows fit no block stays unquantized, priced at 16 bits as a float weight);
    // scales are the bytes of ggml's block beyond its elements (fp16 d; Q4_K's dmin and codes)
    using kernels::gguf::GgufType;
    const GgufType t = kernels::gguf::gguf_row_type(
        kernels::gguf::gguf_type_from_name(f.gguf_type.c_str()), ndim ? shape.back() : 1);
    if (t == GgufType::kF32) {
      s.element_bits = 16.0 * numel;
      return s;
    }
    const double block = kernels::gguf::block_elements(t);
    const double bits = t == GgufType::kQ8_0 ? 8 : t == GgufType::kQ5_0 ? 5 : 4;
    s.element_bits = bits * numel;
    s.scale_bits = std::ceil(numel / block) * (8.0 * kernels::gguf::block_bytes(t) - block * bits);
    return s;
  }
  const bool block_scales = cfg.block_sizes && cfg.block_sizes->scale_bits;
  if (!block_scales) {
    s.scale_bits = count * (count == 1 ? 32 : 16);
    // zero points are codes of the element format, packed like the weights (AutoAWQ, GPTQ)
    if (cfg.asymmetric) s.scale_bits += count * f.element_bits;
    return s;
  }
  s.scale_bits = count * info.scale_bits + info.tensor_scale_bits;
  if (info.scale == ScaleEncoding::kAbsmaxDoubleQuant) {
    // int8 block scales: an fp32 scale per group of them (one group without
    // scale_block_sizes, as the kernel quantizes) plus their fp32 mean
    const auto& groups_of = cfg.block_sizes->scale_block_sizes;
    const std::optional<int64_t> size = groups_of.empty() ? std::nullopt : groups_of[0].second;
    const double groups = !size || *size < 0 ? 1.0 : std::ceil(count / static_cast<double>(*size));
    s.scale_bits += 32 * groups + 32;
  }
  return s;
}

WeightStorage weight_storage_bits(const std::vector<QuantizerAttributeConfig>& stages,
                                  const std::vector<int64_t>& shape, int64_t pre_quant_scale_numel) {
  MOPT_CHECK_VALUE(!stages.empty(), "weight_storage_bits needs at least one quantizer config");
  WeightStorage total;
  bool first = true;
  for (const auto& cfg : stages) {
    const WeightStorage s = weight_storage_bits(cfg, shape);
    // a multi-stage quantizer (W4A8) stores its narrowest stage and every stage's scales
    total.element_bits = first ? s.element_bits : std::min(total.element_bits, s.element_bits);
    total.scale_bits += s.scale_bits;
    first = false;
  }
  total.scale_bits += 16.0 * static_cast<double>(pre_quant_scale_numel);  // fp16 per channel
  return total;
}

}  // namespace mopt
