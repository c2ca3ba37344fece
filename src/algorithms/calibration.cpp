#include "mopt/algorithms/calibration.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <typeinfo>

#include "core/json_parse.h"
#include "mopt/calib/max_calibrator.h"
#include "mopt/core/error.h"
#include "mopt/quant/quantizer_core.h"

namespace mopt::algorithms {

using json = nlohmann::ordered_json;

namespace {

// Bounds on the options that size a search or a buffer: each MSE step quantizes every
// calibration batch again, each AWQ grid point runs the layer again over the cached tokens, and
// a histogram holds num_bins floats per quantizer. Beyond them a recipe would run (or allocate)
// without practical end, so the parser says so instead.
constexpr int64_t kMaxMseSteps = 10000;
constexpr double kMaxAwqGridPoints = 10000;
constexpr int64_t kMaxHistogramBins = int64_t{1} << 24;

std::string quoted_list(const std::vector<std::string>& names) {
  std::string s = "[";
  for (size_t i = 0; i < names.size(); ++i) s += (i ? ", '" : "'") + names[i] + "'";
  return s + "]";
}

// Options of one step, consumed key by key so that leftovers can be reported.
class Options {
 public:
  Options(std::string method, json obj) : method_(std::move(method)), obj_(std::move(obj)) {}

  bool has(const char* key) const { return obj_.contains(key) && !obj_[key].is_null(); }

  double number(const char* key, double fallback) {
    accepted_.push_back(key);
    if (!has(key)) return fallback;
    const json& v = obj_[key];
    MOPT_CHECK_VALUE(v.is_number() && !v.is_boolean(), method_, " ", key, " must be a number, got ",
                     v.dump());
    return v.get<double>();
  }

  int64_t integer(const char* key, int64_t fallback) {
    accepted_.push_back(key);
    if (!has(key)) return fallback;
    const json& v = obj_[key];
    MOPT_CHECK_VALUE(v.is_number_integer() && !v.is_boolean(), method_, " ", key,
                     " must be an int, got ", v.dump());
    // 2**63 .. 2**64-1 are stored unsigned and would wrap to negative numbers
    MOPT_CHECK_VALUE(!v.is_number_unsigned() || v.get<uint64_t>() <= static_cast<uint64_t>(
                                                    std::numeric_limits<int64_t>::max()),
                     method_, " ", key, " = ", v.dump(), " does not fit in a 64-bit integer");
    return v.get<int64_t>();
  }

  bool boolean(const char* key, bool fallback) {
    accepted_.push_back(key);
    if (!has(key)) return fallback;
    const json& v = obj_[key];
    MOPT_CHECK_TYPE(v.is_boolean(), method_, " ", key, " must be a bool, got ", v.dump());
    return v.get<bool>();
  }

  std::string text(const char* key, const std::string& fallback) {
    accepted_.push_back(key);
    if (!has(key)) return fallback;
    const json& v = obj_[key];
    MOPT_CHECK_TYPE(v.is_string(), method_, " ", key, " must be a str, got ", v.dump());
    return v.get<std::string>();
  }

  // The value of `key` as given (null when absent), for options that are objects or lists.
  json raw(const char* key) {
    accepted_.push_back(key);
    return has(key) ? obj_[key] : json();
  }

  std::optional<bool> optional_boolean(const char* key) {
    accepted_.push_back(key);
    if (!has(key)) return std::nullopt;
    return boolean(key, false);
  }

  // TypeError for keys no accessor asked for (as a Python function given an unknown keyword).
  void check_consumed() const {
    std::vector<std::string> unknown;
    for (auto it = obj_.begin(); it != obj_.end(); ++it) {
      if (std::find(accepted_.begin(), accepted_.end(), it.key()) == accepted_.end()) {
        unknown.push_back(it.key());
      }
    }
    if (unknown.empty()) return;
    std::vector<std::string> accepted(accepted_.begin(), accepted_.end());
    std::sort(accepted.begin(), accepted.end());
    accepted.erase(std::unique(accepted.begin(), accepted.end()), accepted.end());
    MOPT_CHECK_TYPE(false, "unknown option(s) ", quoted_list(unknown), " for algorithm '",
                    method_, "'; accepted: ", quoted_list(accepted));
  }

 private:
  std::string method_;
  json obj_;
  std::vector<std::string> accepted_;
};

int64_t positive(int64_t v, const std::string& method, const char* key) {
  MOPT_CHECK_VALUE(v > 0, method, " ", key, " must be a positive int, got ", v);
  return v;
}

AwqClipOptions clip_options(Options& o, const std::string& method) {
  AwqClipOptions c;
  c.max_co_batch_size = positive(o.integer("max_co_batch_size", 1024), method, "max_co_batch_size");
  c.max_tokens_per_batch =
      positive(o.integer("max_tokens_per_batch", 64), method, "max_tokens_per_batch");
  c.min_clip_ratio = o.number("min_clip_ratio", 0.5);
  c.shrink_step = o.number("shrink_step", 0.05);
  MOPT_CHECK_VALUE(!(c.shrink_step > 0.0) || !(c.min_clip_ratio < 1.0) ||
                       (1.0 - c.min_clip_ratio) / c.shrink_step <= kMaxAwqGridPoints,
                   method, " shrink_step ", c.shrink_step, " from min_clip_ratio ",
                   c.min_clip_ratio, " gives more than ", kMaxAwqGridPoints,
                   " clip ratios to search");
  awq_clip_ratios(c.min_clip_ratio, c.shrink_step);  // ValueError for a bad grid
  return c;
}

HistogramCalibration histogram_options(Options& o, const std::string& algorithm,
                                       HistogramMethod method) {
  HistogramCalibration h;
  h.method = method;
  h.num_bins = o.integer("num_bins", 2048);
  h.skip_zeros = o.boolean("skip_zeros", false);
  MOPT_CHECK_VALUE(h.num_bins >= 1 && h.num_bins <= kMaxHistogramBins, algorithm,
                   " option num_bins must be an int in [1, ", kMaxHistogramBins, "], got ",
                   h.num_bins);
  if (method == HistogramMethod::kPercentile) {
    h.amax.percentile = o.number("percentile", 99.99);
    MOPT_CHECK_VALUE(h.amax.percentile >= 0.0 && h.amax.percentile <= 100.0, algorithm,
                     " option percentile must be in [0, 100], got ", h.amax.percentile);
  } else {
    h.amax.stride = o.integer("stride", 1);
    h.amax.start_bin = o.integer("start_bin", 128);
    MOPT_CHECK_VALUE(h.amax.stride >= 1, algorithm, " option stride must be a positive int, got ",
                     h.amax.stride);
    MOPT_CHECK_VALUE(h.amax.start_bin >= 0, algorithm,
                     " option start_bin must be a non-negative int, got ", h.amax.start_bin);
    MOPT_CHECK_VALUE(h.amax.start_bin < h.num_bins, algorithm, ": start_bin ", h.amax.start_bin,
                     " leaves no candidate among num_bins=", h.num_bins, " bins");
  }
  return h;
}

CalibrationOptions parse_options(const std::string& method, const json& obj);

// lsq's options: the scale calibration it runs first, which amaxes learn, and whether they tie.
LsqCalibration lsq_options(Options& o) {
  LsqCalibration l;
  const json scale = o.raw("scale_algorithm");
  json scale_opts = json::object();
  if (!scale.is_null()) {
    MOPT_CHECK_TYPE(scale.is_object() && scale.contains("method") && scale["method"].is_string(),
                    "lsq scale_algorithm must be a dict {'method': 'max' | 'mse', **options} or "
                    "None, got ", scale.dump());
    l.scale_method = scale["method"].get<std::string>();
    for (auto it = scale.begin(); it != scale.end(); ++it) {
      if (it.key() != "method") scale_opts[it.key()] = it.value();
    }
  }
  MOPT_CHECK_VALUE(l.scale_method == "max" || l.scale_method == "mse",
                   "lsq scale_algorithm method must be 'max' or 'mse', got '", l.scale_method, "'");
  l.scale_options_json =
      CalibrationStep{l.scale_method, parse_options(l.scale_method, scale_opts)}.options_json();
  const json learn = o.raw("learnable_amax");
  if (!learn.is_null()) {
    MOPT_CHECK_TYPE(learn.is_string() || learn.is_array(),
                    "lsq learnable_amax must be 'pre', 'post' or a list of them, got ",
                    learn.dump());
    const json entries = learn.is_string() ? json::array({learn}) : learn;
    l.learn_pre = l.learn_post = false;
    for (const json& e : entries) {
      MOPT_CHECK_VALUE(e.is_string() && (e == "pre" || e == "post"),
                       "lsq learnable_amax entries must be 'pre' or 'post', got ", e.dump(),
                       " in ", learn.dump());
      (e == "pre" ? l.learn_pre : l.learn_post) = true;
    }
  }
  l.tied_amax = o.boolean("tied_amax", false);
  MOPT_CHECK_VALUE(!l.tied_amax || l.learn_pre == l.learn_post,
                   "lsq tied_amax shares one amax between pre and post, so learnable_amax must "
                   "be ['pre', 'post'] or [], got ", learn.dump());
  l.quantize_pre_scale = o.boolean("quantize_pre_scale", true);
  return l;
}

CalibrationOptions parse_options(const std::string& method, const json& obj) {
  Options o(method, obj);
  CalibrationOptions out;
  if (method == "max") {
    MaxCalibration m;
    m.skip_forward_without_activation_calib =
        o.boolean("skip_forward_without_activation_calib", true);
    out = m;
  } else if (method == "smoothquant") {
    SmoothQuantCalibration s;
    if (o.has("alpha") && obj["alpha"].is_string()) {
      const std::string alpha = o.text("alpha", "auto");
      MOPT_CHECK_VALUE(alpha == "auto", "smoothquant alpha must be a number in [0, 1] or "
                       "'auto' (a per-layer search), got '", alpha, "'");
      SmoothQuantSearchOptions search;
      search.alpha_step = o.number("alpha_step", search.alpha_step);
      MOPT_CHECK_VALUE(search.alpha_step > 0.0 && search.alpha_step <= 1.0,
                       "smoothquant alpha_step must be a number in (0, 1], got ",
                       search.alpha_step);
      MOPT_CHECK_VALUE(1.0 / search.alpha_step <= kMaxAwqGridPoints, "smoothquant alpha_step ",
                       search.alpha_step, " gives more than ", kMaxAwqGridPoints,
                       " alphas to search");
      search.max_tokens_per_batch =
          positive(o.integer("max_tokens_per_batch", search.max_tokens_per_batch), "smoothquant",
                   "max_tokens_per_batch");
      s.search = search;
    } else {
      s.alpha = o.number("alpha", 1.0);
      MOPT_CHECK_VALUE(s.alpha >= 0.0 && s.alpha <= 1.0,
                       "smoothquant alpha must be a number in [0, 1], got ", s.alpha);
      MOPT_CHECK_VALUE(!o.has("alpha_step") && !o.has("max_tokens_per_batch"),
                       "smoothquant alpha_step and max_tokens_per_batch apply to the alpha search "
                       "only: give alpha='auto' with them");
    }
    s.debug = o.boolean("debug", false);
    out = s;
  } else if (method == "awq_lite" || method == "awq_clip" || method == "awq_full") {
    AwqCalibration a;
    if (method != "awq_clip") {
      a.lite = AwqLiteOptions{o.number("alpha_step", 0.1)};
      MOPT_CHECK_VALUE(!(a.lite->alpha_step > 0.0) || 1.0 / a.lite->alpha_step <= kMaxAwqGridPoints,
                       method, " alpha_step ", a.lite->alpha_step, " gives more than ",
                       kMaxAwqGridPoints, " alphas to search");
      awq_alpha_grid(a.lite->alpha_step);  // ValueError for a bad step
    }
    if (method != "awq_lite") a.clip = clip_options(o, method);
    a.debug = o.boolean("debug", false);
    out = a;
  } else if (method == "gptq") {
    GptqCalibration g;
    g.solver.block_size = positive(o.integer("block_size", 128), "gptq", "block_size");
    g.solver.percdamp = o.number("percdamp", 0.01);
    if (o.has("perc_damp")) g.solver.percdamp = o.number("perc_damp", 0.01);  // ModelOpt's name
    MOPT_CHECK_VALUE(g.solver.percdamp >= 0.0 && g.solver.percdamp <= 1.0,
                     "gptq percdamp must be a number in [0, 1], got ", g.solver.percdamp);
    g.solver.act_order = o.boolean("act_order", false);
    g.layerwise = o.optional_boolean("layerwise");
    out = g;
  } else if (method == "mse") {
    MseCalibration m;
    const bool has_steps = o.has("num_steps"), has_step_size = o.has("step_size");
    MOPT_CHECK_VALUE(!(has_steps && has_step_size),
                     "give num_steps or step_size for algorithm 'mse', not both");
    m.start_multiplier = o.number("start_multiplier", 0.25);
    m.stop_multiplier = o.number("stop_multiplier", 4.0);
    MOPT_CHECK_VALUE(m.start_multiplier >= 0.0 && m.start_multiplier <= m.stop_multiplier,
                     "mse multipliers must satisfy 0 <= start_multiplier <= stop_multiplier, got ",
                     m.start_multiplier, " and ", m.stop_multiplier);
    const double step_size = o.number("step_size", 0.0);
    m.num_steps = o.integer("num_steps", 10);
    if (has_step_size) {
      MOPT_CHECK_VALUE(step_size > 0.0, "mse step_size must be > 0, got ", step_size);
      // nvidia-modelopt >= 0.41's form: ceil((stop - start) / step) + 1 steps; bounded before
      // the cast, which is undefined for a count beyond int64 (a step of 1e-300)
      const double steps = std::ceil((m.stop_multiplier - m.start_multiplier) / step_size) + 1;
      MOPT_CHECK_VALUE(steps <= static_cast<double>(kMaxMseSteps), "mse step_size ", step_size,
                       " from ", m.start_multiplier, " to ", m.stop_multiplier, " gives ", steps,
                       " steps; at most ", kMaxMseSteps, " are allowed");
      m.num_steps = static_cast<int64_t>(steps);
    }
    MOPT_CHECK_VALUE(m.num_steps >= 1 && m.num_steps <= kMaxMseSteps,
                     "mse num_steps must be an int in [1, ", kMaxMseSteps, "], got ", m.num_steps);
    out = m;
  } else if (method == "entropy") {
    out = histogram_options(o, method, HistogramMethod::kEntropy);
  } else if (method == "percentile") {
    out = histogram_options(o, method, HistogramMethod::kPercentile);
  } else if (method == "histogram_mse") {
    out = histogram_options(o, method, HistogramMethod::kMse);
  } else if (method == "step_percentile") {
    StepPercentileCalibration sp;
    MOPT_CHECK_VALUE(o.has("num_steps"), "algorithm 'step_percentile' needs num_steps: the "
                     "model calls of one sampling run (its forward loop makes whole runs)");
    sp.num_steps = positive(o.integer("num_steps", 0), method, "num_steps");
    sp.percentile = o.number("percentile", 50.0);
    MOPT_CHECK_VALUE(std::isfinite(sp.percentile) && sp.percentile >= 0.0 &&
                         sp.percentile <= 100.0,
                     "step_percentile percentile must be a number in [0, 100], got ",
                     sp.percentile);
    sp.collect = parse_step_collect(o.text("collect", "max"));
    out = sp;
  } else if (method == "lsq") {
    out = lsq_options(o);
  }
  o.check_consumed();
  return out;
}

bool is_bare_name(const std::string& s) {
  return !s.empty() && !std::isdigit(static_cast<unsigned char>(s[0])) &&
         std::all_of(s.begin(), s.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
         }) &&
         s != "null" && s != "true" && s != "false";
}

void flatten(const json& a, std::vector<std::pair<std::string, json>>& steps) {
  if (a.is_null()) return;
  if (a.is_string()) {
    steps.emplace_back(a.get<std::string>(), json::object());
    return;
  }
  if (a.is_object()) {
    MOPT_CHECK_VALUE(a.contains("method"), "algorithm dict needs a 'method' key, got ", a.dump());
    if (a["method"].is_null()) return;
    MOPT_CHECK_TYPE(a["method"].is_string(), "algorithm 'method' must be a str or None, got ",
                    a["method"].dump());
    json opts = json::object();
    for (auto it = a.begin(); it != a.end(); ++it) {
      if (it.key() != "method") opts[it.key()] = it.value();
    }
    steps.emplace_back(a["method"].get<std::string>(), opts);
    return;
  }
  if (a.is_array()) {
    for (const auto& s : a) flatten(s, steps);
    return;
  }
  MOPT_CHECK_TYPE(false, "algorithm must be a str, dict, list or None, got ", a.dump());
}

json histogram_json(const HistogramCalibration& h) {
  json j;
  j["num_bins"] = h.num_bins;
  j["skip_zeros"] = h.skip_zeros;
  if (h.method == HistogramMethod::kPercentile) {
    j["percentile"] = h.amax.percentile;
  } else {
    j["stride"] = h.amax.stride;
    j["start_bin"] = h.amax.start_bin;
  }
  return j;
}

}  // namespace

const std::vector<std::string>& calibration_methods() {
  static const std::vector<std::string> names = {
      "awq_clip", "awq_full", "awq_lite", "entropy", "gptq", "histogram_mse", "lsq", "max",
      "mse", "percentile", "smoothquant", "step_percentile"};
  return names;
}

bool max_calibration_from_weights(const std::vector<MaxCalibrationQuantizer>& quantizers) {
  for (const auto& q : quantizers) {
    MOPT_CHECK_VALUE(q.core != nullptr, "max_calibration_from_weights: a quantizer without core");
    if (!q.core->needs_calibration()) continue;
    if (!q.reads_layer_weight) return false;
    // Collecting one tensor once or N times is the same only for a plain running max: a
    // histogram counts each batch, a step calibrator counts calls, track_amax keeps every batch.
    const Calibrator* c = q.core->calibrator().get();
    if (typeid(*c) != typeid(MaxCalibrator)) return false;
    if (static_cast<const MaxCalibrator*>(c)->track_amax()) return false;
  }
  return true;
}

std::vector<size_t> lsq_targets(const std::vector<LsqCandidate>& candidates) {
  std::vector<size_t> found;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const LsqCandidate& c = candidates[i];
    MOPT_CHECK_VALUE(c.core != nullptr, "lsq_targets: quantizer '", c.name, "' without core");
    const QuantizerCore& q = *c.core;
    const ResolvedFormat& fmt = q.format();
    const std::string kernel = fmt.info->kernel;
    if (q.is_enabled() && q.attributes().fake_quant && q.is_static() &&
        !q.attributes().asymmetric && kernel == "fake_quant") {
      found.push_back(i);
      continue;
    }
    MOPT_CHECK_IMPLEMENTED(!(q.is_enabled() && q.is_static() && kernel == "block_quant"),
                           "lsq cannot learn the scales of '", c.name, "': format ",
                           fmt.name, " (static block scales quantized to ",
                           scale_encoding_name(fmt.info->scale), "); lsq learns static "
                           "symmetric integer and FP8/minifloat amaxes");
  }
  MOPT_CHECK_VALUE(!found.empty(),
                   "lsq found no weight quantizer whose amax it can learn: it needs "
                   "enabled, static, symmetric integer or FP8/minifloat weight quantizers "
                   "(fake_quant)");
  return found;
}

CalibrationStep lsq_scale_step(const LsqCalibration& options) {
  const json scale = core::parse_json(options.scale_options_json, "lsq scale_algorithm options");
  return {options.scale_method, parse_options(options.scale_method, scale)};
}

const std::string& max_calibration_from_weights_note() {
  static const std::string note =
      "mopt: max calibration: no quantizer needs activation data, so the weight quantizers "
      "were calibrated from the weights without running forward_loop (algorithm "
      "{\"method\": \"max\", \"skip_forward_without_activation_calib\": false} runs it)";
  return note;
}

std::vector<CalibrationStep> parse_calibration_steps(
    const std::string& algorithm_json, const std::vector<std::string>& external_methods) {
  json a;
  if (is_bare_name(algorithm_json)) {
    a = algorithm_json;  // a bare method name without quotes (C++ shorthand)
  } else {
    a = core::parse_json(algorithm_json, "the quantize config's 'algorithm'");
  }
  std::vector<std::pair<std::string, json>> raw;
  flatten(a, raw);
  std::vector<CalibrationStep> steps;
  const auto& builtin = calibration_methods();
  for (auto& [method, opts] : raw) {
    const bool known = std::find(builtin.begin(), builtin.end(), method) != builtin.end();
    const bool external = std::find(external_methods.begin(), external_methods.end(), method) !=
                          external_methods.end();
    if (!known && !external) {
      std::vector<std::string> available(builtin.begin(), builtin.end());
      available.insert(available.end(), external_methods.begin(), external_methods.end());
      std::sort(available.begin(), available.end());
      available.erase(std::unique(available.begin(), available.end()), available.end());
      MOPT_CHECK_VALUE(false, "unknown calibration algorithm '", method, "'; available: ",
                       quoted_list(available));
    }
    if (external && !known) {
      steps.push_back({method, ExternalCalibration{opts.dump()}});
    } else {
      steps.push_back({method, parse_options(method, opts)});
    }
  }
  return steps;
}

std::string CalibrationStep::options_json() const {
  json j = json::object();
  std::visit(
      [&](const auto& o) {
        using T = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<T, MaxCalibration>) {
          j["skip_forward_without_activation_calib"] = o.skip_forward_without_activation_calib;
        } else if constexpr (std::is_same_v<T, SmoothQuantCalibration>) {
          if (o.search) {
            j["alpha"] = "auto";
            j["alpha_step"] = o.search->alpha_step;
            j["max_tokens_per_batch"] = o.search->max_tokens_per_batch;
          } else {
            j["alpha"] = o.alpha;
          }
          j["debug"] = o.debug;
        } else if constexpr (std::is_same_v<T, AwqCalibration>) {
          if (o.lite) j["alpha_step"] = o.lite->alpha_step;
          if (o.clip) {
            j["max_co_batch_size"] = o.clip->max_co_batch_size;
            j["max_tokens_per_batch"] = o.clip->max_tokens_per_batch;
            j["min_clip_ratio"] = o.clip->min_clip_ratio;
            j["shrink_step"] = o.clip->shrink_step;
          }
          j["debug"] = o.debug;
        } else if constexpr (std::is_same_v<T, GptqCalibration>) {
          j["block_size"] = o.solver.block_size;
          j["percdamp"] = o.solver.percdamp;
          j["act_order"] = o.solver.act_order;
          j["layerwise"] = o.layerwise ? json(*o.layerwise) : json(nullptr);
        } else if constexpr (std::is_same_v<T, MseCalibration>) {
          j["num_steps"] = o.num_steps;
          j["start_multiplier"] = o.start_multiplier;
          j["stop_multiplier"] = o.stop_multiplier;
        } else if constexpr (std::is_same_v<T, HistogramCalibration>) {
          j = histogram_json(o);
        } else if constexpr (std::is_same_v<T, StepPercentileCalibration>) {
          j["num_steps"] = o.num_steps;
          j["percentile"] = o.percentile;
          j["collect"] = step_collect_name(o.collect);
        } else if constexpr (std::is_same_v<T, ExternalCalibration>) {
          j = json::parse(o.options_json);
        } else if constexpr (std::is_same_v<T, LsqCalibration>) {
          json scale = json{{"method", o.scale_method}};
          scale.update(json::parse(o.scale_options_json));
          j["scale_algorithm"] = scale;
          json learn = json::array();
          if (o.learn_pre) learn.push_back("pre");
          if (o.learn_post) learn.push_back("post");
          j["learnable_amax"] = learn;
          j["tied_amax"] = o.tied_amax;
          j["quantize_pre_scale"] = o.quantize_pre_scale;
        }
      },
      options);
  return j.dump();
}

}  // namespace mopt::algorithms
