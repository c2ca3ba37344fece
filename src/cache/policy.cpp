#include "mopt/cache/policy.h"

#include <ATen/ops/abs.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/sum.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "core/json_parse.h"
#include "mopt/core/error.h"

namespace mopt::cache {

namespace {

using json = nlohmann::ordered_json;

const char* decision_name(Decision d) { return d == Decision::kAdaptive ? "adaptive" : "schedule"; }

int64_t int_field(const json& j, const char* key, int64_t lo, int64_t hi) {
  const json& v = j[key];
  MOPT_CHECK_VALUE(v.is_number_integer(), "cache policy: '", key, "' must be an integer, got ",
                   v.dump());
  const int64_t x = v.get<int64_t>();
  MOPT_CHECK_VALUE(x >= lo && x <= hi, "cache policy: '", key, "' must be in [", lo, ", ", hi,
                   "], got ", x);
  return x;
}

// Features are forecast in at least float32: a half-precision difference of nearby features
// loses most of its bits.
at::Tensor widened(const at::Tensor& t) {
  return t.is_floating_point() && t.element_size() < 4 ? t.to(at::kFloat) : t;
}

bool all_finite(const at::Tensor& t) {
  if (!t.is_floating_point() && !t.is_complex()) return true;
  return at::isfinite(t).all().item<bool>();
}

bool same_layout(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].sizes() != b[i].sizes() || a[i].scalar_type() != b[i].scalar_type() ||
        a[i].device() != b[i].device()) {
      return false;
    }
  }
  return true;
}

}  // namespace

std::string PolicyConfig::to_json() const {
  json j = json::object();
  j["decision"] = decision_name(decision);
  j["interval"] = interval;
  j["recompute_steps"] = recompute_steps;
  j["threshold"] = threshold;
  j["warmup"] = warmup;
  j["cooldown"] = cooldown;
  j["max_reuse"] = max_reuse;
  j["order"] = order;
  j["num_steps"] = num_steps;
  return j.dump();
}

PolicyConfig policy_config_from_json(const std::string& text) {
  const json j = core::parse_json(text, "cache policy config");
  MOPT_CHECK_VALUE(j.is_object(), "cache policy config must be a JSON object, got ",
                   j.type_name());
  static const std::set<std::string> known = {"decision",  "interval", "recompute_steps",
                                              "threshold", "warmup",   "cooldown",
                                              "max_reuse", "order",    "num_steps"};
  for (const auto& [key, value] : j.items()) {
    MOPT_CHECK_VALUE(known.count(key), "cache policy: unknown key '", key,
                     "' (known: decision, interval, recompute_steps, threshold, warmup, cooldown, "
                     "max_reuse, order, num_steps)");
  }
  constexpr int64_t kBig = int64_t{1} << 40;
  PolicyConfig c;
  if (j.contains("decision")) {
    const json& d = j["decision"];
    MOPT_CHECK_VALUE(d == "schedule" || d == "adaptive",
                     "cache policy: 'decision' must be \"schedule\" or \"adaptive\", got ",
                     d.dump());
    c.decision = d == "adaptive" ? Decision::kAdaptive : Decision::kSchedule;
  }
  if (j.contains("interval")) c.interval = int_field(j, "interval", 1, kBig);
  if (j.contains("recompute_steps")) {
    const json& s = j["recompute_steps"];
    MOPT_CHECK_VALUE(s.is_array(), "cache policy: 'recompute_steps' must be a list of call "
                     "indices, got ", s.dump().substr(0, 200));
    int64_t previous = -1;
    for (const json& v : s) {
      MOPT_CHECK_VALUE(v.is_number_integer() && v.get<int64_t>() > previous,
                       "cache policy: 'recompute_steps' must hold increasing call indices >= 0, "
                       "got ", v.dump(), " after ", previous);
      previous = v.get<int64_t>();
      c.recompute_steps.push_back(previous);
    }
  }
  if (j.contains("threshold")) {
    const json& t = j["threshold"];
    MOPT_CHECK_VALUE(t.is_number() && std::isfinite(t.get<double>()) && t.get<double>() >= 0,
                     "cache policy: 'threshold' must be a finite number >= 0, got ", t.dump());
    c.threshold = t.get<double>();
  }
  if (j.contains("warmup")) c.warmup = int_field(j, "warmup", 0, kBig);
  if (j.contains("cooldown")) c.cooldown = int_field(j, "cooldown", 0, kBig);
  if (j.contains("max_reuse")) c.max_reuse = int_field(j, "max_reuse", 0, kBig);
  if (j.contains("order")) c.order = static_cast<int>(int_field(j, "order", 0, 2));
  if (j.contains("num_steps")) c.num_steps = int_field(j, "num_steps", 0, kBig);
  if (!c.recompute_steps.empty() && c.num_steps > 0) {
    MOPT_CHECK_VALUE(c.recompute_steps.back() < c.num_steps, "cache policy: recompute step ",
                     c.recompute_steps.back(), " is beyond num_steps ", c.num_steps);
  }
  return c;
}

double relative_l1_change(const at::Tensor& a, const at::Tensor& b) {
  MOPT_CHECK_VALUE(a.sizes() == b.sizes(), "cache probe changed shape from ", b.sizes(), " to ",
                   a.sizes());
  const at::Tensor a64 = a.detach().to(at::kDouble);
  const at::Tensor b64 = b.detach().to(at::kDouble);
  const double diff = at::sub(a64, b64).abs().sum().item<double>();
  const double base = b64.abs().sum().item<double>();
  if (!std::isfinite(diff) || !std::isfinite(base)) return std::numeric_limits<double>::infinity();
  if (base == 0.0) return diff == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  return diff / base;
}

namespace {

void check_reparameterization(const char* what, const at::Tensor& value, const at::Tensor& x,
                              double alpha_bar) {
  MOPT_CHECK_VALUE(std::isfinite(alpha_bar) && alpha_bar > 0.0 && alpha_bar < 1.0, what,
                   ": alpha_bar must lie in (0, 1), got ", alpha_bar);
  MOPT_CHECK_VALUE(value.defined() && x.defined() && value.is_floating_point() &&
                       x.is_floating_point(),
                   what, ": needs floating tensors");
  MOPT_CHECK_VALUE(value.sizes() == x.sizes(), what, ": the prediction has shape ", value.sizes(),
                   " but the denoiser input has shape ", x.sizes());
}

}  // namespace

at::Tensor epsilon_to_sample(const at::Tensor& eps, const at::Tensor& x, double alpha_bar) {
  check_reparameterization("epsilon_to_sample", eps, x, alpha_bar);
  const at::Tensor e = widened(eps.detach());
  const at::Tensor xs = widened(x.detach()).to(e.scalar_type());
  return ((xs - e * std::sqrt(1.0 - alpha_bar)) / std::sqrt(alpha_bar)).to(eps.scalar_type());
}

at::Tensor sample_to_epsilon(const at::Tensor& x0, const at::Tensor& x, double alpha_bar) {
  check_reparameterization("sample_to_epsilon", x0, x, alpha_bar);
  const at::Tensor s = widened(x0.detach());
  const at::Tensor xs = widened(x.detach()).to(s.scalar_type());
  return ((xs - s * std::sqrt(alpha_bar)) / std::sqrt(1.0 - alpha_bar)).to(x0.scalar_type());
}

at::Tensor taylor_forecast(const std::vector<at::Tensor>& values, const std::vector<int64_t>& steps,
                           int64_t step) {
  MOPT_CHECK_VALUE(!values.empty() && values.size() <= 3 && values.size() == steps.size(),
                   "taylor_forecast needs 1 to 3 values with one call index each, got ",
                   values.size(), " values and ", steps.size(), " indices");
  for (size_t i = 1; i < steps.size(); ++i) {
    MOPT_CHECK_VALUE(steps[i] > steps[i - 1], "taylor_forecast needs increasing call indices");
  }
  const at::Tensor& newest = values.back();
  if (values.size() == 1) return newest.clone();
  const auto dtype = newest.scalar_type();
  const double s = static_cast<double>(step);
  const size_t n = values.size();
  const at::Tensor f1 = widened(values[n - 1]);
  const at::Tensor f0 = widened(values[n - 2]);
  const double s1 = static_cast<double>(steps[n - 1]), s0 = static_cast<double>(steps[n - 2]);
  // first divided difference at the newest pair
  const at::Tensor d_new = (f1 - f0) / (s1 - s0);
  at::Tensor out = f1 + d_new * (s - s1);
  if (n == 3) {
    const at::Tensor fm = widened(values[0]);
    const double sm = static_cast<double>(steps[0]);
    const at::Tensor d_old = (f0 - fm) / (s0 - sm);
    const at::Tensor d2 = (d_new - d_old) / (s1 - sm);
    out = out + d2 * ((s - s1) * (s - s0));
  }
  return out.to(dtype);
}

CachePolicy::CachePolicy(PolicyConfig config) : config_(std::move(config)) {
  MOPT_CHECK_VALUE(config_.interval >= 1, "cache policy: interval must be >= 1, got ",
                   config_.interval);
  MOPT_CHECK_VALUE(config_.order >= 0 && config_.order <= 2,
                   "cache policy: order must be 0, 1 or 2, got ", config_.order);
  MOPT_CHECK_VALUE(config_.threshold >= 0 && std::isfinite(config_.threshold),
                   "cache policy: threshold must be a finite number >= 0, got ",
                   config_.threshold);
}

bool CachePolicy::scheduled_recompute(int64_t step) const {
  if (!config_.recompute_steps.empty()) {
    return std::binary_search(config_.recompute_steps.begin(), config_.recompute_steps.end(),
                              step);
  }
  return step % config_.interval == 0;
}

bool CachePolicy::decide(const c10::optional<at::Tensor>& probe,
                         c10::optional<bool> reuse_requested) {
  MOPT_CHECK_STATE(!pending_, "cache policy: decide() was called again before the previous call "
                   "stored its outputs or reused them");
  double change = 0.0;
  if (probe.has_value() && probe->defined()) {
    if (last_probe_.defined()) change = relative_l1_change(*probe, last_probe_);
    last_probe_ = probe->detach().clone();
  }
  const double accumulated = accumulated_ + change;
  const int64_t s = step_;
  bool recompute;
  if (computed_.empty() || s < config_.warmup) {
    recompute = true;
  } else if (config_.num_steps > 0 && s >= config_.num_steps) {
    if (!warned_steps_) {
      MOPT_WARN("mopt: cache policy calibrated for ", config_.num_steps,
                " calls per run was called ", s + 1, " times in this run; every call beyond ",
                config_.num_steps, " recomputes (calibrate again for this number of steps)");
      warned_steps_ = true;
    }
    recompute = true;
  } else if (config_.num_steps > 0 && s >= config_.num_steps - config_.cooldown) {
    recompute = true;
  } else if (config_.max_reuse > 0 && consecutive_reuses_ >= config_.max_reuse) {
    recompute = true;
  } else if (reuse_requested.has_value()) {
    recompute = !*reuse_requested;
  } else if (config_.decision == Decision::kSchedule) {
    recompute = scheduled_recompute(s);
  } else {
    recompute = !(accumulated < config_.threshold);  // NaN or Inf changes recompute
  }
  accumulated_ = recompute ? 0.0 : accumulated;
  pending_change_ = change;
  pending_ = true;
  pending_recompute_ = recompute;
  return recompute;
}

void CachePolicy::store(const std::vector<at::Tensor>& outputs) {
  MOPT_CHECK_STATE(pending_ && pending_recompute_, "cache policy: store() is for a call that "
                   "decide() chose to recompute");
  bool finite = true;
  for (const at::Tensor& t : outputs) finite = finite && (!t.defined() || all_finite(t));
  if (!finite) {
    MOPT_WARN("mopt: a cached block's features hold NaN or Inf at call ", step_,
              "; they are not reused: the next call recomputes");
    computed_.clear();
    computed_steps_.clear();
  } else {
    std::vector<at::Tensor> kept;
    kept.reserve(outputs.size());
    for (const at::Tensor& t : outputs) kept.push_back(t.defined() ? t.detach() : t);
    if (!computed_.empty() && !same_layout(computed_.back(), kept)) {
      computed_.clear();  // a forecast needs points of one shape
      computed_steps_.clear();
    }
    computed_.push_back(std::move(kept));
    computed_steps_.push_back(step_);
    const size_t keep = static_cast<size_t>(config_.order) + 1;
    while (computed_.size() > keep) {
      computed_.erase(computed_.begin());
      computed_steps_.erase(computed_steps_.begin());
    }
  }
  finish_call(true);
}

std::vector<at::Tensor> CachePolicy::reuse() {
  MOPT_CHECK_STATE(pending_ && !pending_recompute_, "cache policy: reuse() is for a call that "
                   "decide() chose to serve from the cache");
  std::vector<at::Tensor> out;
  const std::vector<at::Tensor>& newest = computed_.back();
  out.reserve(newest.size());
  for (size_t i = 0; i < newest.size(); ++i) {
    if (!newest[i].defined()) {
      out.push_back(newest[i]);
      continue;
    }
    std::vector<at::Tensor> points;
    for (const auto& set : computed_) points.push_back(set[i]);
    out.push_back(newest[i].is_floating_point() ? taylor_forecast(points, computed_steps_, step_)
                                                : newest[i].clone());
  }
  finish_call(false);
  return out;
}

void CachePolicy::finish_call(bool recomputed) {
  history_.push_back({step_, recomputed, pending_change_, accumulated_});
  ++step_;
  if (recomputed) {
    ++recomputes_;
    consecutive_reuses_ = 0;
  } else {
    ++reuses_;
    ++consecutive_reuses_;
  }
  pending_ = false;
}

void CachePolicy::reset() {
  step_ = recomputes_ = reuses_ = consecutive_reuses_ = 0;
  pending_ = pending_recompute_ = false;
  warned_steps_ = false;
  computed_.clear();
  computed_steps_.clear();
  last_probe_ = at::Tensor();
  accumulated_ = pending_change_ = 0.0;
  history_.clear();
}

void ChangeProfile::add(const std::vector<at::Tensor>& features) {
  std::vector<at::Tensor> now;
  now.reserve(features.size());
  for (const at::Tensor& t : features) {
    if (t.defined() && t.is_floating_point()) now.push_back(t.detach().to(at::kDouble));
  }
  if (!last_.empty() && !same_layout(last_.back(), now)) {
    MOPT_CHECK_VALUE(false, "cache profile: the features changed shape at call ", size(),
                     "; a profile needs one shape per run");
  }
  double norm2 = 0.0;
  for (const at::Tensor& t : now) norm2 += t.square().sum().item<double>();
  const double norm = std::sqrt(norm2);
  // k-th differences with binomial coefficients over the newest k + 1 feature sets
  static const double coef[3][4] = {{1, -1, 0, 0}, {1, -2, 1, 0}, {1, -3, 3, -1}};
  for (int k = 0; k < 3; ++k) {
    const size_t need = static_cast<size_t>(k) + 1;
    if (last_.size() < need || norm == 0.0) {
      diff_[k].push_back(last_.size() < need ? 0.0 : std::numeric_limits<double>::infinity());
      continue;
    }
    double d2 = 0.0;
    for (size_t i = 0; i < now.size(); ++i) {
      at::Tensor d = now[i] * coef[k][0];
      for (size_t j = 1; j <= need; ++j) d = d + last_[last_.size() - j][i] * coef[k][j];
      d2 += d.square().sum().item<double>();
    }
    diff_[k].push_back(std::sqrt(d2) / norm);
  }
  last_.push_back(std::move(now));
  if (last_.size() > 3) last_.erase(last_.begin());
}

const std::vector<double>& ChangeProfile::differences(int order) const {
  MOPT_CHECK_VALUE(order >= 1 && order <= 3, "cache profile: difference order must be 1 to 3, "
                   "got ", order);
  return diff_[order - 1];
}

void ChangeProfile::merge(const ChangeProfile& other) {
  if (size() == 0) {
    for (int k = 0; k < 3; ++k) diff_[k] = other.diff_[k];
    return;
  }
  MOPT_CHECK_VALUE(other.size() == size(), "cache profile: cannot merge a run of ",
                   other.size(), " calls into one of ", size());
  for (int k = 0; k < 3; ++k) {
    for (size_t i = 0; i < diff_[k].size(); ++i) diff_[k][i] += other.diff_[k][i];
  }
}

std::vector<int64_t> schedule_from_profile(const ChangeProfile& profile, int64_t recomputes,
                                           int order, int64_t warmup) {
  MOPT_CHECK_VALUE(order >= 0 && order <= 2, "cache schedule: order must be 0, 1 or 2, got ",
                   order);
  const int64_t n = profile.size();
  MOPT_CHECK_VALUE(n > 0, "cache schedule: the profile is empty (no calls recorded)");
  warmup = std::clamp<int64_t>(warmup, 1, n);
  recomputes = std::clamp<int64_t>(recomputes, warmup, n);
  std::vector<int64_t> out;
  for (int64_t s = 0; s < warmup; ++s) out.push_back(s);
  if (recomputes == n) {
    for (int64_t s = warmup; s < n; ++s) out.push_back(s);
    return out;
  }
  const int k = order + 1;
  const std::vector<double>& d = profile.differences(k);
  // density of the calls after warmup; calls whose difference is not defined yet (the first k)
  // or not finite take the largest finite density
  std::vector<double> density(static_cast<size_t>(n), 0.0);
  double top = 0.0;
  for (int64_t s = k; s < n; ++s) {
    if (std::isfinite(d[s])) top = std::max(top, std::pow(d[s], 1.0 / k));
  }
  for (int64_t s = 0; s < n; ++s) {
    density[s] = (s < k || !std::isfinite(d[s])) ? top : std::pow(d[s], 1.0 / k);
  }
  if (top == 0.0) std::fill(density.begin(), density.end(), 1.0);  // no change: spread evenly
  std::vector<double> cumulative(static_cast<size_t>(n), 0.0);
  double total = 0.0;
  for (int64_t s = warmup; s < n; ++s) {
    total += density[s];
    cumulative[s] = total;
  }
  const int64_t r = recomputes - warmup;
  int64_t s = warmup;
  for (int64_t i = 1; i <= r; ++i) {
    const double target = total * static_cast<double>(i) / static_cast<double>(r + 1);
    while (s < n - 1 && cumulative[s] < target) ++s;
    int64_t p = std::max(s, out.back() + 1);
    if (p >= n) break;
    out.push_back(p);
  }
  // points pushed past the end by collisions: fill the largest gaps
  while (static_cast<int64_t>(out.size()) < recomputes) {
    int64_t best = -1, best_gap = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      const int64_t next = i + 1 < out.size() ? out[i + 1] : n;
      if (next - out[i] > best_gap) {
        best_gap = next - out[i];
        best = static_cast<int64_t>(i);
      }
    }
    if (best_gap < 2) break;
    out.insert(out.begin() + best + 1, out[best] + best_gap / 2);
  }
  return out;
}

}  // namespace mopt::cache
