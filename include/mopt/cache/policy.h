// Cache diffusion (SPEC §4): the policy that decides, call by call, whether a cached block of a
// denoiser runs or returns cached features, and what a reuse returns.
// * When to recompute: a schedule (every `interval`-th call, an explicit list of calls, or the
//   front end's select_cache_step_func answer for the call), or adaptively: the relative L1
//   change of a cheap probe (the block's input, or the first block's output, as TeaCache and
//   FirstBlockCache use) is accumulated call by call and the block recomputes once the sum
//   passes `threshold`.
// * What a reuse returns: the last computed features (order 0, DeepCache and ModelOpt's block
//   caching), or a Taylor forecast from the last two or three computed ones (order 1 or 2,
//   TaylorSeer): finite differences over the call index, so unevenly spaced recomputes
//   extrapolate correctly.
// The front end (mopt.cache_diffusion, or a C++ caller) owns the block and its outputs, flattened
// to a list of tensors; a call is decide() then either store(outputs of the block) or reuse().
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mopt::cache {

/// How a policy decides that a block recomputes.
enum class Decision {
  kSchedule,  // every `interval`-th call, or the calls in `recompute_steps`
  kAdaptive,  // when the probe's accumulated relative change passes `threshold`
};

/// A cache policy's settings (JSON: policy_config_from_json).
struct PolicyConfig {
  Decision decision = Decision::kSchedule;
  /// kSchedule: recompute at calls 0, interval, 2 * interval, ... (1: never reuse).
  int64_t interval = 2;
  /// kSchedule: the calls that recompute (call indices from 0, ascending); overrides interval.
  std::vector<int64_t> recompute_steps;
  /// kAdaptive: the accumulated relative L1 change of the probe that triggers a recompute.
  double threshold = 0.1;
  /// The first `warmup` calls always recompute.
  int64_t warmup = 1;
  /// With num_steps known: the last `cooldown` calls always recompute.
  int64_t cooldown = 0;
  /// At most this many consecutive reuses (0: no limit).
  int64_t max_reuse = 0;
  /// What a reuse returns: 0 the last computed features, 1 or 2 a Taylor forecast of that order
  /// from the last order + 1 computed ones (fewer early on: the order they allow).
  int order = 0;
  /// The calls one pipeline run makes when known (a calibrated schedule): a run with more calls
  /// recomputes every call beyond it and warns once; 0 when unknown.
  int64_t num_steps = 0;

  /// The normalized JSON of these settings.
  std::string to_json() const;
};

/// Parses a policy config: {"decision": "schedule" | "adaptive", "interval", "recompute_steps",
/// "threshold", "warmup", "cooldown", "max_reuse", "order", "num_steps"}; omitted keys take the
/// defaults above. ValueError naming the key for unknown keys, wrong types or ranges.
PolicyConfig policy_config_from_json(const std::string& json);

/// What happened at one call of a cached block.
struct StepRecord {
  int64_t step = 0;
  bool recomputed = false;
  /// kAdaptive: the probe's relative L1 change against the previous call (0 at the first call
  /// and without a probe); the accumulated value after this call.
  double change = 0.0;
  double accumulated = 0.0;
};

/// The state of one cached block during pipeline runs.
class CachePolicy {
 public:
  explicit CachePolicy(PolicyConfig config = {});

  const PolicyConfig& config() const { return config_; }

  /// Decides the current call: true when the block must run (then store() its outputs), false
  /// when reuse() gives them. `probe` is this call's cheap signal (kAdaptive; ignored otherwise
  /// except for being recorded). `reuse_requested` is a front end's schedule answer for this
  /// call (select_cache_step_func(step): true = reuse), which replaces the schedule. A call
  /// always recomputes when nothing usable is cached, during warmup and cooldown, after
  /// max_reuse reuses, and beyond num_steps.
  bool decide(const c10::optional<at::Tensor>& probe = c10::nullopt,
              c10::optional<bool> reuse_requested = c10::nullopt);
  /// After decide() returned true: the block's outputs of this call. Features holding NaN or Inf
  /// are not cached (the next call recomputes, with a warning).
  void store(const std::vector<at::Tensor>& outputs);
  /// After decide() returned false: the outputs to return for this call (the cached features,
  /// or their forecast; new tensors, never the cache's own).
  std::vector<at::Tensor> reuse();

  /// Starts a new pipeline run: the call counter, the cache and the probe history are cleared.
  void reset();

  /// Calls made in this run; how many recomputed and reused.
  int64_t step() const { return step_; }
  int64_t recomputes() const { return recomputes_; }
  int64_t reuses() const { return reuses_; }
  /// One record per call of this run.
  const std::vector<StepRecord>& history() const { return history_; }

 private:
  bool scheduled_recompute(int64_t step) const;
  void finish_call(bool recomputed);

  PolicyConfig config_;
  int64_t step_ = 0;
  int64_t recomputes_ = 0;
  int64_t reuses_ = 0;
  int64_t consecutive_reuses_ = 0;
  bool pending_ = false;          // decide() was called, store()/reuse() not yet
  bool pending_recompute_ = false;
  bool warned_steps_ = false;
  // The last computed outputs (newest last) with their call indices; at most order + 1 kept.
  std::vector<std::vector<at::Tensor>> computed_;
  std::vector<int64_t> computed_steps_;
  // Probe history (kAdaptive).
  at::Tensor last_probe_;
  double accumulated_ = 0.0;
  double pending_change_ = 0.0;
  std::vector<StepRecord> history_;
};

/// Relative L1 change mean|a - b| / mean|b| in float64 (0 when both are zero); ValueError for
/// different shapes.
double relative_l1_change(const at::Tensor& a, const at::Tensor& b);

/// The Taylor forecast at call `step` from computed features `values` at calls `steps` (oldest
/// first, strictly increasing, 1 to 3 of them): Newton's divided differences of the order the
/// points allow, evaluated at `step`. One point returns a copy of it.
at::Tensor taylor_forecast(const std::vector<at::Tensor>& values,
                           const std::vector<int64_t>& steps, int64_t step);

/// The denoised-sample estimate of an epsilon-predicting denoiser at a step whose input `x` has
/// noise level `alpha_bar` (the cumulative product of the schedule's alphas, in (0, 1)):
/// x0 = (x - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar), in eps's dtype (computed in at least
/// float32). A step-level cache can keep and forecast x0 instead of eps ("sample" space): x0
/// changes slowly where eps follows the noise injected at every ancestral step.
/// ValueError for an alpha_bar outside (0, 1), different shapes or non-floating tensors.
at::Tensor epsilon_to_sample(const at::Tensor& eps, const at::Tensor& x, double alpha_bar);

/// The inverse of epsilon_to_sample: eps = (x - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar), the
/// prediction a cached (or forecast) x0 stands for at a step with input `x`.
at::Tensor sample_to_epsilon(const at::Tensor& x0, const at::Tensor& x, double alpha_bar);

/// How fast a block's features change over a pipeline run, measured on an uncached run to place
/// recomputes (mtc.calibrate). Keeps only the last three features (bounded memory): at each call
/// it records the norms of the first, second and third differences of the features over calls,
/// relative to the features' norm.
class ChangeProfile {
 public:
  /// The features of the next call.
  void add(const std::vector<at::Tensor>& features);
  /// Calls seen.
  int64_t size() const { return static_cast<int64_t>(diff_[0].size()); }
  /// Relative norm of the `order`-th difference (1 to 3) at each call (0 where it is not
  /// defined yet: the first `order` calls).
  const std::vector<double>& differences(int order) const;
  /// Adds another run's profile of the same length (profiles of several seeds are summed).
  void merge(const ChangeProfile& other);

 private:
  std::vector<std::vector<at::Tensor>> last_;
  std::vector<double> diff_[3];
};

/// Recompute calls for a run of `num_steps` calls with `recomputes` recomputes that extrapolate
/// with Taylor order `order`: the calls are placed at equal quantiles of the density
/// d(s) = D_{order+1}(s)^(1/(order+1)) (D_k the profile's k-th difference), the mesh that
/// equalizes the extrapolation error k-th order polynomials make between recomputes (the error
/// over a gap h grows as f^(k+1) h^(k+1)). Call 0 always recomputes, the first `warmup` calls
/// too; the result is ascending, unique and has exactly `recomputes` calls (at least warmup,
/// at most num_steps).
std::vector<int64_t> schedule_from_profile(const ChangeProfile& profile, int64_t recomputes,
                                           int order, int64_t warmup = 1);

}  // namespace mopt::cache
