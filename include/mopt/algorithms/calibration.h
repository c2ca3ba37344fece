// The calibration algorithms as typed configs (SPEC §1 `calibrate`): every method's options with
// their defaults and checks, parsed once from the `algorithm` value of a quantize config (JSON at
// the file / language boundary) for both front ends.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "mopt/algorithms/awq.h"
#include "mopt/algorithms/gptq.h"
#include "mopt/calib/calibrator.h"
#include "mopt/calib/step_calibrator.h"

namespace mopt {
class QuantizerCore;
}  // namespace mopt

namespace mopt::algorithms {

/// `max`: running max of |x| per quantizer.
struct MaxCalibration {
  /// When only weight quantizers need calibration (see max_calibration_from_weights), calibrate
  /// them from the layers' weights and skip forward_loop (ModelOpt's option name; its default
  /// is false, mopt's true: the amaxes are the same, only the wasted passes go).
  bool skip_forward_without_activation_calib = true;
};

/// `smoothquant`: a fixed alpha, or {"alpha": "auto"} (with optional alpha_step and
/// max_tokens_per_batch) for a per-layer search.
struct SmoothQuantCalibration {
  double alpha = 1.0;
  std::optional<SmoothQuantSearchOptions> search;  // set for alpha "auto"
  bool debug = false;  // Python: keep what was computed on each layer (module.smoothquant)
};

/// `awq_lite`, `awq_clip` and `awq_full` (lite then clip).
struct AwqCalibration {
  std::optional<AwqLiteOptions> lite;  // set for awq_lite and awq_full
  std::optional<AwqClipOptions> clip;  // set for awq_clip and awq_full
  bool debug = false;
};

/// `gptq`.
struct GptqCalibration {
  GptqOptions solver;
  std::optional<bool> layerwise;  // decoder layer by layer (default: when the model has them)
};

/// `mse`: max calibration, then the amax multiplier with the least output MSE.
struct MseCalibration {
  int64_t num_steps = 10;
  double start_multiplier = 0.25;
  double stop_multiplier = 4.0;
};

/// `entropy`, `percentile`, `histogram_mse`: static activation amax from histograms of |x|.
struct HistogramCalibration {
  HistogramMethod method = HistogramMethod::kEntropy;
  int64_t num_bins = 2048;
  bool skip_zeros = false;
  HistogramAmaxOptions amax;
};

/// `step_percentile`: static activation amax as a percentile over the steps of a sampler that
/// calls the model once per step (diffusion; mopt/calib/step_calibrator.h): call i of the
/// forward loop is step i mod num_steps; each step's calls combine by `collect`.
struct StepPercentileCalibration {
  int64_t num_steps = 0;     // required: model calls per sampling run
  double percentile = 50.0;  // over the per-step amaxes, in [0, 100]
  StepCollect collect = StepCollect::kMax;
};

/// `lsq` (learned scales, ModelOpt's LSQConfig): calibrate with `scale_algorithm`, then make
/// the amax of every static symmetric integer or minifloat weight quantizer trainable, with a
/// quantization ("pre") and a dequantization ("post") amax: w_q = Q(w / s_pre) * s_post,
/// s = amax / B. The C++ ops give the LSQ gradient to whichever of them requires grad.
struct LsqCalibration {
  std::string scale_method = "mse";      // "max" or "mse" (ModelOpt's default: mse)
  std::string scale_options_json = "{}";  // that method's checked options, every field
  bool learn_pre = false;                 // learnable_amax holds "pre"
  bool learn_post = true;                 // learnable_amax holds "post"
  bool tied_amax = false;                 // one amax for both (both learned or both frozen)
  /// ModelOpt's FP8 quantization of the pre scale, which applies to NVFP4 block scales only;
  /// mopt's LSQ formats have unquantized scales, so it is accepted and has no effect.
  bool quantize_pre_scale = true;
};

/// A method registered by a front end (a Python function): its options, unchecked, as JSON.
struct ExternalCalibration {
  std::string options_json = "{}";
};

using CalibrationOptions =
    std::variant<MaxCalibration, SmoothQuantCalibration, AwqCalibration, GptqCalibration,
                 MseCalibration, HistogramCalibration, StepPercentileCalibration,
                 ExternalCalibration, LsqCalibration>;

/// One step of calibration: the method and its options.
struct CalibrationStep {
  std::string method;
  CalibrationOptions options;

  /// The options with every field, as a JSON object (what Python passes as keyword arguments).
  std::string options_json() const;
};

/// A quantizer as max calibration sees it.
struct MaxCalibrationQuantizer {
  const QuantizerCore* core = nullptr;
  /// The weight quantizer (or a stage of one) of a layer whose forward passes the weight the
  /// driver reads from the layer, as it is, to it: no hook, transform or sharding in between.
  bool reads_layer_weight = false;
};

/// True when max calibration needs no forward_loop: every quantizer that needs calibration
/// (QuantizerCore::needs_calibration) reads its layer's weight and collects with a plain
/// MaxCalibrator, so feeding each weight once through its weight quantizer gives the amax that
/// a forward per calibration batch gives (the running max of one tensor is that tensor's max).
/// Also true when no quantizer needs calibration.
bool max_calibration_from_weights(const std::vector<MaxCalibrationQuantizer>& quantizers);

/// The line the front ends print once when max calibration skips forward_loop.
const std::string& max_calibration_from_weights_note();

/// A weight quantizer, or one stage of a SequentialQuantizer, that lsq looks at: its name in
/// the model ("<layer>.weight_quantizer", "...weight_quantizer.<i>" for a stage) and its core.
struct LsqCandidate {
  std::string name;
  const QuantizerCore* core = nullptr;
};

/// The indices of the `candidates` whose amax lsq learns: enabled, fake-quantizing, static,
/// symmetric quantizers of a fake_quant-kernel format (integer per tensor / channel / static
/// blocks, FP8 and other minifloats). NotImplementedError naming the first enabled static
/// block-scaled one (NVFP4, MX, NF4: block scales lsq has no gradient for); ValueError when none
/// is eligible. Both front ends call it before scale_algorithm runs, so an error changes nothing.
std::vector<size_t> lsq_targets(const std::vector<LsqCandidate>& candidates);

/// The calibration lsq runs first: its scale_algorithm as a step (max or mse, with its options).
CalibrationStep lsq_scale_step(const LsqCalibration& options);

/// The built-in methods, sorted.
const std::vector<std::string>& calibration_methods();

/// Parses `algorithm` (JSON: a method name, {"method": name, **options}, a list of those, or
/// null) into checked steps. A method in `external_methods` (registered by a front end) keeps
/// its options unchecked; any other unknown method raises ValueError naming the available ones;
/// an unknown option raises TypeError naming the method and the accepted options; a bad value
/// raises ValueError (or TypeError for a wrong type) naming the option.
std::vector<CalibrationStep> parse_calibration_steps(
    const std::string& algorithm_json, const std::vector<std::string>& external_methods = {});

}  // namespace mopt::algorithms
