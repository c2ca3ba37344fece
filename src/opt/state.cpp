#include "mopt/opt/state.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/all.h>
#include <ATen/ops/ge.h>
#include <ATen/ops/isfinite.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <mutex>
#include <set>
#include <sstream>

#include "core/json_parse.h"
#include "mopt/core/error.h"

namespace mopt::opt {
namespace {

using json = nlohmann::ordered_json;

struct Registry {
  std::mutex mutex;
  std::vector<ModeInfo> modes;
};

// The modes mopt knows: its own, and nvidia-modelopt's calibrate entries for the algorithms mopt
// runs (ModelOpt records `<algorithm>_calibrate` after `quantize`; restoring one re-applies the
// quantizer state it carries). The sparsity modes are registered here for the chaining rules;
// the front ends register what each mode does.
Registry& registry() {
  static Registry* r = [] {
    auto* reg = new Registry;
    reg->modes.push_back({"quantize", ModeKind::kQuantize,
                          "inserts quantizers (mtq.quantize); metadata: quantizer_state"});
    for (const char* algo : {"max", "mse", "smoothquant", "awq_lite", "awq_clip", "awq_full",
                             "gptq"}) {
      reg->modes.push_back({std::string(algo) + "_calibrate", ModeKind::kCalibrate,
                            std::string("nvidia-modelopt's record of ") + algo +
                                " calibration; metadata: quantizer_state"});
    }
    reg->modes.push_back({"_no_calibrate", ModeKind::kCalibrate,
                          "nvidia-modelopt's record of a quantize without calibration"});
    for (const char* sparse : {"sparse_magnitude", "sparsegpt", "wanda"}) {
      reg->modes.push_back({sparse, ModeKind::kSparsity, "prunes weights to an N:M pattern"});
    }
    reg->modes.push_back({"export_sparse", ModeKind::kExport,
                          "folds the sparsity masks into plain modules (mts.export)"});
    return reg;
  }();
  return *r;
}

std::string known_mode_names() {
  std::string s;
  for (const auto& m : modes()) s += (s.empty() ? "" : ", ") + m.name;
  return s;
}

bool has_kind(const std::vector<std::string>& history, ModeKind kind, std::string* which) {
  for (const auto& name : history) {
    if (mode_info(name).kind == kind) {
      if (which) *which = name;
      return true;
    }
  }
  return false;
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(t);
  }
}

// ModelOpt quantizer property -> mopt attribute key (same value in both layouts).
const std::vector<std::pair<std::string, std::string>>& attribute_keys() {
  static const std::vector<std::pair<std::string, std::string>> keys = {
      {"_num_bits", "num_bits"},
      {"_axis", "axis"},
      {"_block_sizes", "block_sizes"},
      {"_unsigned", "unsigned"},
      {"_narrow_range", "narrow_range"},
      {"_full_range", "full_range"},  // mopt's, written only when set
      {"_asymmetric", "asymmetric"},  // mopt's, written only when set
      {"_fake_quant", "fake_quant"},
      {"_calibrator", "calibrator"},
      {"_pass_through_bwd", "pass_through_bwd"},
      {"_trt_high_precision_dtype", "trt_high_precision_dtype"},
      {"_rotate", "rotate"},
      {"_learn_amax", "learn_amax"},
      {"_bias", "bias"},
  };
  return keys;
}

// nvidia-modelopt properties mopt has no counterpart for, with the values that mean "not used".
bool neutral_modelopt_key(const std::string& key, const json& v) {
  if (key == "_constant_amax" || key == "backend") return v.is_null();
  if (key == "_use_constant_amax" || key == "_dequantize" || key == "_is_nvfp4_static_quantizer" ||
      key == "_is_static_block_scale_quantizer") {
    return v.is_boolean() && !v.get<bool>();
  }
  if (key == "_enable_pre_quant_scale") return v.is_boolean() && v.get<bool>();
  if (key == "backend_extra_args") return v.is_null() || (v.is_object() && v.empty());
  // Records, not settings: the input dtype seen in calibration, the effective bits of the
  // format (reporting), SmoothQuant's activation statistic (a tensor kept after calibration),
  // and the slices that cut a padded block view back (mopt pads and unpads itself).
  if (key == "_input_dtype" || key == "_effective_bits" || key == "_amax_for_smoothing" ||
      key == "_slices") {
    return true;
  }
  return false;
}

bool flag(const json& j, const char* key, const std::string& name) {
  MOPT_CHECK_VALUE(j.contains(key), "quantizer state of '", name, "' has no '", key, "'");
  MOPT_CHECK_VALUE(j[key].is_boolean(), "quantizer state of '", name, "': '", key,
                   "' must be a boolean, got ", j[key].dump());
  return j[key].get<bool>();
}

std::vector<int64_t> shape_of(const json& v, const std::string& what) {
  MOPT_CHECK_VALUE(v.is_array(), what, " must be a list of sizes, got ", v.dump());
  std::vector<int64_t> shape;
  for (const auto& d : v) {
    MOPT_CHECK_VALUE(d.is_number_integer() && d.get<int64_t>() >= 0, what,
                     " must hold non-negative integers, got ", v.dump());
    shape.push_back(d.get<int64_t>());
  }
  MOPT_CHECK_VALUE(shape.size() <= 16, what, " has ", shape.size(), " dims; at most 16");
  return shape;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// `target` (at most one -1) for a tensor of shape `from`; ValueError when the sizes differ.
std::vector<int64_t> reshaped(const std::vector<int64_t>& from, std::vector<int64_t> target,
                              const std::string& what) {
  int64_t n = 1, known = 1;
  for (int64_t d : from) {
    MOPT_CHECK_VALUE(d == 0 || n <= INT64_MAX / d, what, ": _amax shape overflows");
    n *= d;
  }
  for (int64_t d : target) {
    if (d < 0) continue;
    MOPT_CHECK_VALUE(d == 0 || known <= INT64_MAX / d, what, ": export shape overflows");
    known *= d;
  }
  for (int64_t& d : target) {
    if (d == -1) d = known == 0 ? 0 : n / known;
  }
  int64_t m = 1;
  for (int64_t d : target) m *= d;
  MOPT_CHECK_VALUE(m == n, what, ": _amax shape ", shape_str(from),
                   " does not hold the exported shape ", shape_str(target));
  return target;
}

// `text` cut to `limit` bytes with every byte outside printable ASCII escaped (\xNN), so an
// error message quoting a hostile file stays valid UTF-8 for Python.
std::string ascii(const std::string& text, size_t limit = 120) {
  std::string out;
  for (size_t i = 0; i < text.size() && i < limit; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (text.size() > limit) out += "...";
  return out;
}

std::string first_of(const std::vector<std::string>& items, size_t n = 5) {
  std::string s;
  for (size_t i = 0; i < items.size() && i < n; ++i) s += (i ? ", " : "") + items[i];
  if (items.size() > n) s += ", ... (" + std::to_string(items.size()) + " in all)";
  return s;
}

}  // namespace

std::vector<ModeInfo> modes() {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.modes;
}

ModeInfo mode_info(const std::string& name) {
  {
    auto& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    for (const auto& m : r.modes) {
      if (m.name == name) return m;
    }
  }
  MOPT_CHECK_VALUE(false, "unknown mode '", name, "'; known modes: ", known_mode_names());
  return {};
}

void register_mode(const ModeInfo& info) {
  MOPT_CHECK_VALUE(!info.name.empty(), "register_mode: empty mode name");
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  for (const auto& m : r.modes) {
    MOPT_CHECK_VALUE(m.name != info.name, "register_mode: mode '", info.name,
                     "' is already registered");
  }
  r.modes.push_back(info);
}

void check_next_mode(const std::vector<std::string>& history, const std::string& next) {
  const ModeInfo info = mode_info(next);
  std::string previous;
  switch (info.kind) {
    case ModeKind::kSparsity:
      if (has_kind(history, ModeKind::kQuantize, &previous)) {
        MOPT_CHECK_VALUE(false, "cannot apply '", next, "' after '", previous,
                         "': sparsify first, then quantize (a quantized model's weights are "
                         "calibrated for the dense weights)");
      }
      if (has_kind(history, ModeKind::kSparsity, &previous)) {
        MOPT_CHECK_VALUE(false, "cannot apply '", next, "': the model is already sparsified ",
                         "with '", previous, "' (masks would compound); restore the dense ",
                         "model to sparsify it again");
      }
      break;
    case ModeKind::kCalibrate:
      MOPT_CHECK_VALUE(has_kind(history, ModeKind::kQuantize, nullptr), "mode '", next,
                       "' calibrates quantizers and needs 'quantize' before it");
      break;
    case ModeKind::kExport:
      MOPT_CHECK_VALUE(has_kind(history, ModeKind::kSparsity, nullptr), "mode '", next,
                       "' exports a sparsified model and needs a sparsity mode before it");
      if (has_kind(history, ModeKind::kExport, &previous)) {
        MOPT_CHECK_VALUE(false, "cannot apply '", next, "': the model was exported already");
      }
      break;
    case ModeKind::kQuantize:
      break;
  }
}

std::string state_to_json(const ModeState& state) {
  json doc;
  doc["format"] = kStateFormatName;
  doc["format_version"] = state.format_version;
  doc["modelopt_version"] = state.version;
  json list = json::array();
  for (const auto& m : state.modes) {
    json entry = json::object();
    entry["config"] = core::parse_json(m.config_json, "mode config");
    entry["metadata"] = core::parse_json(m.metadata_json, "mode metadata");
    list.push_back(json::array({m.mode, entry}));
  }
  doc["modelopt_state_dict"] = list;
  return doc.dump();
}

namespace {

// state_from_json on a parsed document; `metadata` (when given) receives each mode's metadata
// object, in order.
ModeState read_state_document(const json& doc, const std::string& source,
                              std::vector<const json*>* metadata) {
  MOPT_CHECK_VALUE(doc.is_object(), source, ": the mode state must be a JSON object, got ",
                   doc.type_name());
  ModeState state;
  if (doc.contains("format")) {
    MOPT_CHECK_VALUE(doc["format"] == kStateFormatName, source, ": format ",
                     doc["format"].dump(), " is not a mopt state (\"", kStateFormatName, "\")");
    MOPT_CHECK_VALUE(doc.contains("format_version") && doc["format_version"].is_number_integer(),
                     source, ": the mode state has no integer format_version");
    const int64_t v = doc["format_version"].get<int64_t>();
    MOPT_CHECK_VALUE(v <= kStateFormatVersion, source, ": written in state format version ", v,
                     " by a newer mopt; this mopt reads versions up to ", kStateFormatVersion,
                     ": upgrade mopt to load it");
    MOPT_CHECK_VALUE(v >= 1, source, ": invalid state format version ", v);
    state.format_version = static_cast<int>(v);
  } else {
    state.format_version = 0;  // nvidia-modelopt's modelopt_state, read into plain data
  }
  MOPT_CHECK_VALUE(doc.contains("modelopt_version") && doc["modelopt_version"].is_string(),
                   source, ": the mode state has no 'modelopt_version' string");
  state.version = doc["modelopt_version"].get<std::string>();
  MOPT_CHECK_VALUE(doc.contains("modelopt_state_dict") && doc["modelopt_state_dict"].is_array(),
                   source, ": the mode state has no 'modelopt_state_dict' list");
  std::vector<std::string> history;
  size_t i = 0;
  for (const auto& entry : doc["modelopt_state_dict"]) {
    const std::string where = source + ": modelopt_state_dict[" + std::to_string(i++) + "]";
    MOPT_CHECK_VALUE(entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
                         entry[1].is_object(),
                     where, " must be a [mode name, {config, metadata}] pair, got ",
                     ascii(entry.dump(), 200));
    const std::string mode = entry[0].get<std::string>();
    const json& body = entry[1];
    MOPT_CHECK_VALUE(body.contains("config") && body["config"].is_object() &&
                         body.contains("metadata") && body["metadata"].is_object(),
                     where, " ('", mode, "') must hold 'config' and 'metadata' objects");
    try {
      check_next_mode(history, mode);
    } catch (const c10::Error& e) {
      MOPT_CHECK_VALUE(false, where, ": ", e.msg());
    }
    history.push_back(mode);
    state.modes.push_back({mode, body["config"].dump(), body["metadata"].dump()});
    if (metadata != nullptr) metadata->push_back(&body["metadata"]);
  }
  return state;
}

}  // namespace

ModeState state_from_json(const std::string& text, const std::string& source) {
  const json doc = core::parse_json(text, (source + ": the mode state").c_str());
  return read_state_document(doc, source, nullptr);
}

std::string quantizer_state_json(const QuantizerCore& core,
                                 const std::map<std::string, at::Tensor>& buffers,
                                 const std::optional<LsqState>& lsq) {
  const json attr = core::parse_json(core.attributes_json(), "quantizer attributes");
  json state = json::object();
  state["_disabled"] = core.flags().disabled;
  state["_if_quant"] = core.flags().quant;
  state["_if_calib"] = core.flags().calib;
  for (const auto& [ours_key, attr_key] : attribute_keys()) {
    if (!attr.contains(attr_key)) continue;
    // an extension nvidia-modelopt does not know stays out of the file at its default
    if ((attr_key == "full_range" || attr_key == "asymmetric") && attr[attr_key] == false) {
      continue;
    }
    state[ours_key] = attr[attr_key];
  }
  // A calibrator given as a Python class cannot be written; restored quantizers are calibrated
  // already, and a recalibration uses max.
  if (state.value("_calibrator", json("max")) == "custom") state["_calibrator"] = "max";
  state["_dynamic"] = attr.value("type", std::string("static")) == "dynamic";
  if (lsq) {
    state["_lsq"] = true;
    json learn = json::array();
    if (lsq->learn_pre) learn.push_back("pre");
    if (lsq->learn_post) learn.push_back("post");
    state["_learnable_amax"] = learn;
    state["_tied_amax"] = lsq->tied;
  }
  json specs = json::object(), params = json::object();
  for (const auto& [name, t] : buffers) {
    if (!t.defined()) continue;
    const bool learned = lsq && ((name == "_amax" && lsq->learn_post) ||
                                 (name == "_amax_pre" && lsq->learn_pre));
    (learned ? params : specs)[name] = {{"dtype", dtype_name(t.scalar_type())},
                                        {"shape", t.sizes().vec()}};
  }
  state["_pytorch_state_metadata"] = {{"buffers", specs}, {"params", params}};
  return state.dump();
}

std::string lsq_extra_repr(const LsqState& lsq, const c10::optional<at::Tensor>& amax_pre) {
  std::string learn = "[";
  if (lsq.learn_pre) learn += "'pre'";
  if (lsq.learn_post) learn += lsq.learn_pre ? ", 'post'" : "'post'";
  learn += "]";
  const std::string pre = lsq.tied ? "tied" : QuantizerCore::short_amax(amax_pre);
  return " lsq(pre=" + pre + ", learn=" + learn + ")";
}

std::string sequential_quantizer_state_json(int64_t n) {
  return json{{"num_quantizers", n}, {"is_sequential_quantizer", true}}.dump();
}

namespace {

// `_lsq`, `_learnable_amax` and `_tied_amax` of a quantizer with learned scales.
LsqState parse_lsq_state(const json& j, const std::string& what) {
  MOPT_CHECK_VALUE(j["_lsq"] == true, what, ": '_lsq' must be a boolean, got ", j["_lsq"].dump());
  LsqState lsq;
  const json learn = j.value("_learnable_amax", json::array());
  MOPT_CHECK_VALUE(learn.is_array() && learn.size() <= 2, what,
                   ": '_learnable_amax' must be a list of 'pre' / 'post', got ", learn.dump());
  for (const json& e : learn) {
    MOPT_CHECK_VALUE(e == "pre" || e == "post", what,
                     ": '_learnable_amax' entries must be 'pre' or 'post', got ", e.dump());
    (e == "pre" ? lsq.learn_pre : lsq.learn_post) = true;
  }
  const json tied = j.value("_tied_amax", json(false));
  MOPT_CHECK_VALUE(tied.is_boolean(), what, ": '_tied_amax' must be a boolean");
  lsq.tied = tied.get<bool>();
  MOPT_CHECK_VALUE(!lsq.tied || lsq.learn_pre == lsq.learn_post, what,
                   ": a tied amax is learned for both pre and post or for neither, got ",
                   learn.dump());
  return lsq;
}

// The properties of one quantizer state (everything but its buffers): flags, attributes (and
// their JSON), and `export_shape` for nvidia-modelopt's flattened block amax.
QuantizerState parse_quantizer_properties(const std::string& name, const json& j,
                                          std::optional<std::vector<int64_t>>& export_shape) {
  const std::string what = "quantizer state of '" + name + "'";
  MOPT_CHECK_VALUE(j.is_object(), what, " must be an object, got ", j.type_name());
  QuantizerState state;
  if (j.contains("is_sequential_quantizer")) {
    MOPT_CHECK_VALUE(j["is_sequential_quantizer"] == true && j.contains("num_quantizers") &&
                         j["num_quantizers"].is_number_integer(),
                     what, ": a SequentialQuantizer needs is_sequential_quantizer: true and an "
                           "integer num_quantizers, got ", j.dump());
    state.sequential = true;
    state.num_quantizers = j["num_quantizers"].get<int64_t>();
    MOPT_CHECK_VALUE(state.num_quantizers >= 1 && state.num_quantizers <= 16, what,
                     ": num_quantizers ", state.num_quantizers, " is not in [1, 16]");
    return state;
  }
  state.flags.disabled = flag(j, "_disabled", name);
  state.flags.quant = flag(j, "_if_quant", name);
  state.flags.calib = flag(j, "_if_calib", name);

  json attr = json::object();
  attr["enable"] = !state.flags.disabled;
  std::set<std::string> used = {"_disabled", "_if_quant", "_if_calib", "_dynamic",
                                "_pytorch_state_metadata"};
  for (const auto& [key, attr_key] : attribute_keys()) {
    if (j.contains(key)) {
      attr[attr_key] = j[key];
      used.insert(key);
    }
  }
  // nvidia-modelopt's static block quantizer (INT4 / FP8 blocks after calibration) also keeps an
  // axis for its internal per-row view and stores amax flattened to (rows * blocks, 1), with
  // the (rows, blocks) shape it exports; mopt's block amax is (rows, blocks, 1).
  export_shape.reset();
  if (j.contains("_is_static_block_scale_quantizer") &&
      j["_is_static_block_scale_quantizer"] == true) {
    used.insert("_is_static_block_scale_quantizer");
    if (attr.contains("block_sizes") && !attr["block_sizes"].is_null()) attr["axis"] = nullptr;
    if (j.contains("_amax_shape_for_export")) {
      // a reshape target: sizes, at most one of them -1 (inferred from the amax's size)
      const json& spec = j["_amax_shape_for_export"];
      MOPT_CHECK_VALUE(spec.is_array() && spec.size() <= 16, what,
                       ": _amax_shape_for_export must be a list of sizes, got ", spec.dump());
      std::vector<int64_t> shape;
      int inferred = 0;
      for (const auto& d : spec) {
        MOPT_CHECK_VALUE(d.is_number_integer() && d.get<int64_t>() >= -1, what,
                         ": _amax_shape_for_export must hold sizes or -1, got ", spec.dump());
        inferred += d.get<int64_t>() == -1;
        shape.push_back(d.get<int64_t>());
      }
      MOPT_CHECK_VALUE(inferred <= 1, what, ": _amax_shape_for_export has more than one -1");
      export_shape = shape;
      used.insert("_amax_shape_for_export");
    }
  }
  if (j.contains("_lsq") && j["_lsq"] != false) {
    state.lsq = parse_lsq_state(j, what);
    used.insert({"_lsq", "_learnable_amax", "_tied_amax"});
  }
  if (j.contains("_dynamic")) {
    MOPT_CHECK_VALUE(j["_dynamic"].is_boolean(), what, ": '_dynamic' must be a boolean");
    attr["type"] = j["_dynamic"].get<bool>() ? "dynamic" : "static";
  }
  for (const auto& [key, value] : j.items()) {
    if (used.count(key) || key == "_quant_max_bound") continue;
    MOPT_CHECK_IMPLEMENTED(neutral_modelopt_key(key, value), what, ": '", key, "' = ",
                           ascii(value.dump(), 200), " is a nvidia-modelopt feature mopt ",
                           "does not support");
  }
  try {
    state.attributes = parse_quantizer_config_cached(attr.dump());
  } catch (const c10::NotImplementedError& e) {
    MOPT_CHECK_IMPLEMENTED(false, what, ": ", e.msg());
  } catch (const c10::Error& e) {
    MOPT_CHECK_VALUE(false, what, ": ", e.msg());
  }
  if (j.contains("_quant_max_bound")) {
    // ModelOpt's copy of the format's largest magnitude: it must be the one mopt derives.
    const double bound = quantizer_maxbound(state.attributes);
    MOPT_CHECK_IMPLEMENTED(j["_quant_max_bound"].is_number() &&
                               j["_quant_max_bound"].get<double>() == bound,
                           what, ": '_quant_max_bound' = ", j["_quant_max_bound"].dump(),
                           " differs from the format's maximum ", bound,
                           "; mopt does not support a custom bound");
  }
  state.attributes_json = state.attributes.to_json();
  return state;
}

// The buffers of one quantizer state (`_pytorch_state_metadata`) into `state`.
void parse_quantizer_buffers(const std::string& name, const json& j,
                             const std::optional<std::vector<int64_t>>& export_shape,
                             QuantizerState& state) {
  const std::string what = "quantizer state of '" + name + "'";
  if (j.contains("_pytorch_state_metadata")) {
    const json& meta = j["_pytorch_state_metadata"];
    MOPT_CHECK_VALUE(meta.is_object(), what, ": '_pytorch_state_metadata' must be an object");
    // learned amaxes (algorithm lsq) are parameters: mopt's own names, as LSQ state says
    json tensors = meta.value("buffers", json::object());
    MOPT_CHECK_VALUE(tensors.is_object(), what, ": buffers must be an object");
    if (meta.contains("params")) {
      const json& params = meta["params"];
      MOPT_CHECK_VALUE(params.is_object(), what, ": params must be an object");
      for (const auto& [name, spec] : params.items()) {
        const bool learned = state.lsq && ((name == "_amax" && state.lsq->learn_post) ||
                                           (name == "_amax_pre" && state.lsq->learn_pre));
        MOPT_CHECK_IMPLEMENTED(learned, what, ": learned parameter '", name, "' of ",
                               ascii(params.dump(), 200), " is not one mopt's quantizers have "
                               "(nvidia-modelopt's learn_amax is not supported; mopt's lsq "
                               "learns _amax and _amax_pre)");
        tensors[name] = spec;
      }
    }
    for (const auto& [buf, spec] : tensors.items()) {
      const bool lsq_pre = buf == "_amax_pre" && state.lsq && !state.lsq->tied;
      MOPT_CHECK_IMPLEMENTED(buf == "_amax" || buf == "_pre_quant_scale" ||
                                 buf == "_zero_point" || lsq_pre, what, ": buffer '", buf,
                             "' is not one mopt's quantizers have (_amax, _pre_quant_scale, "
                             "_zero_point; _amax_pre with untied lsq)");
      MOPT_CHECK_VALUE(spec.is_object() && spec.contains("shape"), what, ": buffer '", buf,
                       "' needs a shape");
      BufferSpec b;
      b.shape = shape_of(spec["shape"], what + ": " + buf + " shape");
      if (spec.contains("dtype")) {
        MOPT_CHECK_VALUE(spec["dtype"].is_string(), what, ": ", buf, " dtype must be a name");
        b.dtype = spec["dtype"].get<std::string>();
        MOPT_CHECK_VALUE(b.dtype == "float32" || b.dtype == "float16" ||
                             b.dtype == "bfloat16" || b.dtype == "float64",
                         what, ": ", buf, " dtype '", ascii(b.dtype),
                         "' is not a floating type (float32, float16, bfloat16, float64)");
      }
      // mopt keeps every amax and zero point in fp32
      if (buf == "_amax" || buf == "_amax_pre" || buf == "_zero_point") b.dtype = "float32";
      if (buf == "_amax" && export_shape) {
        state.file_amax_shape = b.shape;
        b.shape = reshaped(b.shape, *export_shape, what);
        b.shape.push_back(1);
      }
      state.buffers[buf] = b;
    }
  }
}

QuantizerState parse_one_quantizer_state(const std::string& name, const json& j) {
  std::optional<std::vector<int64_t>> export_shape;
  QuantizerState state = parse_quantizer_properties(name, j, export_shape);
  if (!state.sequential) parse_quantizer_buffers(name, j, export_shape, state);
  return state;
}

// True when two quantizer states (objects) hold the same keys in the same order with equal
// values, their buffers (`_pytorch_state_metadata`) aside.
bool same_properties(const json& a, const json& b) {
  if (!a.is_object() || !b.is_object() || a.size() != b.size()) return false;
  for (auto ia = a.begin(), ib = b.begin(); ia != a.end(); ++ia, ++ib) {
    if (ia.key() != ib.key()) return false;
    if (ia.key() != "_pytorch_state_metadata" && *ia != *ib) return false;
  }
  return true;
}

}  // namespace

QuantizerState parse_quantizer_state(const std::string& name, const std::string& text) {
  const std::string what = "quantizer state of '" + name + "'";
  return parse_one_quantizer_state(name, core::parse_json(text, what.c_str()));
}

namespace {

std::vector<std::pair<std::string, QuantizerState>> parse_states_object(const json& j) {
  MOPT_CHECK_VALUE(j.is_object(), "quantizer_state must be an object of quantizer states, got ",
                   j.type_name());
  // A model's quantizers share a handful of property sets: each distinct one is parsed once
  // (the first quantizer holding it names any error), the others copy it and read only their
  // buffers. Bounded, so that a state of all-different quantizers stays linear.
  struct Known {
    const json* state;
    QuantizerState properties;
    std::optional<std::vector<int64_t>> export_shape;
  };
  constexpr size_t kMaxKnown = 16;
  std::vector<Known> known;
  std::vector<std::pair<std::string, QuantizerState>> out;
  out.reserve(j.size());
  for (const auto& [name, state] : j.items()) {
    const Known* like = nullptr;
    for (const Known& k : known) {
      if (same_properties(*k.state, state)) {
        like = &k;
        break;
      }
    }
    if (like != nullptr) {
      QuantizerState parsed = like->properties;
      parse_quantizer_buffers(name, state, like->export_shape, parsed);
      out.emplace_back(name, std::move(parsed));
      continue;
    }
    std::optional<std::vector<int64_t>> export_shape;
    QuantizerState properties = parse_quantizer_properties(name, state, export_shape);
    QuantizerState parsed = properties;
    if (!parsed.sequential) parse_quantizer_buffers(name, state, export_shape, parsed);
    if (!properties.sequential && known.size() < kMaxKnown) {
      known.push_back({&state, std::move(properties), export_shape});
    }
    out.emplace_back(name, std::move(parsed));
  }
  return out;
}

}  // namespace

std::vector<std::pair<std::string, QuantizerState>> parse_quantizer_states(
    const std::string& text) {
  return parse_states_object(core::parse_json(text, "quantizer_state"));
}

ModeStateWithQuantizers state_from_json_with_quantizers(const std::string& text,
                                                         const std::string& source) {
  const json doc = core::parse_json(text, (source + ": the mode state").c_str());
  std::vector<const json*> metadata;
  ModeStateWithQuantizers out;
  out.state = read_state_document(doc, source, &metadata);
  for (const json* m : metadata) {
    if (m->contains("quantizer_state")) {
      out.quantizer_states.emplace_back(parse_states_object((*m)["quantizer_state"]));
    } else {
      out.quantizer_states.emplace_back(std::nullopt);
    }
  }
  return out;
}

void check_tensors_match(const TensorShapes& model, const TensorShapes& file,
                         const std::string& source) {
  std::map<std::string, const std::vector<int64_t>*> in_file;
  for (const auto& [name, shape] : file) in_file[name] = &shape;
  std::set<std::string> in_model;
  std::vector<std::string> missing, shapes;
  for (const auto& [name, shape] : model) {
    in_model.insert(name);
    auto it = in_file.find(name);
    if (it == in_file.end()) {
      missing.push_back(name);
    } else if (*it->second != shape) {
      shapes.push_back(name + " (model " + shape_str(shape) + ", file " +
                       shape_str(*it->second) + ")");
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& [name, shape] : file) {
    if (!in_model.count(name)) unexpected.push_back(name);
  }
  if (missing.empty() && unexpected.empty() && shapes.empty()) return;
  std::ostringstream msg;
  msg << source << " is not a checkpoint of this model:";
  if (!missing.empty()) msg << " missing from the file: " << first_of(missing) << ";";
  if (!unexpected.empty()) msg << " not in the model: " << first_of(unexpected) << ";";
  if (!shapes.empty()) msg << " shapes differ: " << first_of(shapes) << ";";
  MOPT_CHECK_VALUE(false, msg.str());
}

void check_quantizer_tensors(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const std::string& source) {
  static const std::string suffix = "_amax";
  for (const auto& [name, t] : tensors) {
    if (name.size() < suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    MOPT_CHECK_VALUE(t.is_floating_point(), source, ": ", name, " must be a floating tensor, got ",
                     t.scalar_type());
    if (t.numel() == 0) continue;
    bool finite = true, non_negative = true;
    if (t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous()) {
      // the common case, read directly: a model has hundreds of small amax tensors
      const float* p = t.data_ptr<float>();
      for (int64_t i = 0; i < t.numel(); ++i) {
        finite = finite && std::isfinite(p[i]);
        non_negative = non_negative && !(p[i] < 0.0f);
      }
    } else {
      finite = at::isfinite(t).all().item<bool>();
      non_negative = at::ge(t, 0).all().item<bool>() || !finite;
    }
    MOPT_CHECK_VALUE(finite, source, ": ", name, " holds NaN or infinite values");
    MOPT_CHECK_VALUE(non_negative, source, ": ", name, " holds negative values");
  }
}

}  // namespace mopt::opt
