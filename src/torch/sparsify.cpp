#include "mopt/torch/sparsify.h"

#include <ATen/core/grad_mode.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/json_parse.h"
#include "mopt/core/error.h"
#include "mopt/core/fnmatch.h"
#include "mopt/sparsity/solvers.h"
#include "mopt/torch/quant_modules.h"
#include "mopt/torch/save_restore.h"
#include "torch/module_tree.h"

namespace mopt {
namespace {

using json = nlohmann::ordered_json;
using sparsity::WeightLayout;
using Rules = std::vector<std::pair<std::string, bool>>;

const char* const kTypes[] = {"nn.Linear", "nn.Conv1d", "nn.Conv2d"};

// Python's rule name of a sparsifiable layer; nullptr for other modules.
const char* type_name(const torch::nn::Module& m) {
  if (dynamic_cast<const torch::nn::LinearImpl*>(&m)) return "nn.Linear";
  if (dynamic_cast<const torch::nn::Conv1dImpl*>(&m)) return "nn.Conv1d";
  if (dynamic_cast<const torch::nn::Conv2dImpl*>(&m)) return "nn.Conv2d";
  return nullptr;
}

at::Tensor layer_weight(torch::nn::Module& m) {
  const at::Tensor w = find_tensor(m.named_parameters(/*recurse=*/false), "weight");
  MOPT_CHECK_VALUE(w.defined(), "sparsify: layer '", m.name(), "' has no weight");
  return w;
}

template <size_t D, typename Impl>
sparsity::ConvGeometry geometry_of(const Impl& conv, const std::string& name) {
  const auto& o = conv.options;
  sparsity::ConvGeometry g;
  g.kernel_size.assign(o.kernel_size()->begin(), o.kernel_size()->end());
  g.stride.assign(o.stride()->begin(), o.stride()->end());
  g.dilation.assign(o.dilation()->begin(), o.dilation()->end());
  MOPT_CHECK_IMPLEMENTED(std::holds_alternative<torch::ExpandingArray<D>>(o.padding()),
                         "sparsify: layer '", name, "': string padding is not supported by "
                         "wanda/sparsegpt (use numeric padding)");
  const auto& pad = std::get<torch::ExpandingArray<D>>(o.padding());
  g.padding.assign(pad->begin(), pad->end());
  MOPT_CHECK_IMPLEMENTED(std::holds_alternative<torch::enumtype::kZeros>(o.padding_mode()),
                         "sparsify: layer '", name, "': only zero padding is supported by "
                         "wanda/sparsegpt");
  g.groups = o.groups();
  return g;
}

sparsity::ConvGeometry geometry(torch::nn::Module& m, const std::string& name) {
  if (auto* c = dynamic_cast<torch::nn::Conv1dImpl*>(&m)) return geometry_of<1>(*c, name);
  if (auto* c = dynamic_cast<torch::nn::Conv2dImpl*>(&m)) return geometry_of<2>(*c, name);
  return {};
}

WeightLayout layout_of(const torch::nn::Module& m) {
  return dynamic_cast<const torch::nn::LinearImpl*>(&m) ? WeightLayout::kLinear
                                                       : WeightLayout::kConv;
}

Rules default_rules() { return {{"*", true}, {"*lm_head*", false}}; }

const Rules& rules_for(const SparsifyConfig& config, const std::string& type,
                       const Rules& fallback) {
  for (const auto& [t, r] : config.rules) {
    if (t == type) return r;
  }
  return fallback;
}

struct Target {
  std::string name;
  torch::nn::Module* module;
  at::Tensor weight;
  WeightLayout layout;
};

}  // namespace

std::vector<std::pair<std::string, Rules>> SparsifyConfig::rules_from_json(
    const std::string& text) {
  const json doc = core::parse_json(text, "sparsity rules");
  MOPT_CHECK_VALUE(doc.is_object(), "sparsity rules must be a JSON object of layer type -> "
                   "rules, got ", doc.type_name());
  std::vector<std::pair<std::string, Rules>> out;
  for (const auto& [type, rules] : doc.items()) {
    bool known = false;
    for (const char* t : kTypes) known = known || type == t;
    MOPT_CHECK_VALUE(known, "unknown layer type '", type,
                     "' in the sparsity rules; known: nn.Linear, nn.Conv1d, nn.Conv2d");
    Rules r;
    if (rules.is_null()) {
      r.push_back({"*", false});
    } else {
      MOPT_CHECK_VALUE(rules.is_object(), "the rules of '", type,
                       "' must map name patterns to {} or null");
      for (const auto& [pattern, value] : rules.items()) {
        MOPT_CHECK_VALUE(value.is_null() || (value.is_object() && value.empty()),
                         "sparsity rule '", type, "': '", pattern, "' must map to {} (sparsify) "
                         "or null (dense), got ", value.dump());
        r.push_back({pattern, !value.is_null()});
      }
    }
    out.push_back({type, r});
  }
  return out;
}

std::string SparsifyConfig::rules_json() const {
  json doc = json::object();
  const Rules fallback = default_rules();
  for (const char* t : kTypes) {
    json r = json::object();
    for (const auto& [pattern, on] : rules_for(*this, t, fallback)) {
      r[pattern] = on ? json::object() : json(nullptr);
    }
    doc[t] = r;
  }
  return doc.dump();
}

void set_weight_mask(torch::nn::Module& layer, const at::Tensor& mask) {
  at::Tensor weight = layer_weight(layer);
  MOPT_CHECK_VALUE(mask.sizes() == weight.sizes(), "sparsify: the mask of layer '", layer.name(),
                   "' has shape ", mask.sizes(), " but its weight ", weight.sizes());
  at::Tensor m = mask.to(weight.device(), at::kBool);
  {
    at::NoGradGuard no_grad;
    weight.mul_(m);
  }
  at::Tensor existing = find_tensor(layer.named_buffers(false), "_weight_mask");
  if (existing.defined()) {
    at::NoGradGuard no_grad;
    existing.copy_(m);
    return;  // its gradient hook is installed already
  }
  layer.register_buffer("_weight_mask", m);
  if (weight.requires_grad()) {
    // pruned weights get no gradient, so an optimizer step leaves them at zero
    weight.register_hook([m](const at::Tensor& grad) { return grad * m; });
  }
}

std::vector<std::string> sparse_layers(torch::nn::Module& model) {
  std::vector<std::string> out;
  for (const Node& node : named_modules(model)) {
    if (type_name(*node.module) &&
        find_tensor(node.module->named_buffers(false), "_weight_mask").defined()) {
      out.push_back(node.name);
    }
  }
  return out;
}

void sparsify(torch::nn::Module& model, const SparsifyConfig& config,
              const ForwardLoop& forward_loop) {
  const std::string& mode = config.mode;
  MOPT_CHECK_VALUE(mode == "sparse_magnitude" || mode == "sparsegpt" || mode == "wanda",
                   "unknown sparsity mode '", mode, "'; modes: sparse_magnitude, sparsegpt, wanda");
  const sparsity::NMPattern pattern = sparsity::parse_pattern(config.pattern);
  check_mode(model, mode);
  MOPT_CHECK_VALUE(!is_quantized(model), "cannot apply '", mode, "' to a quantized model: "
                   "sparsify first, then quantize");
  MOPT_CHECK_VALUE(mode == "sparse_magnitude" || forward_loop, mode,
                   " needs calibration data: pass a forward_loop");
  for (const auto& [type, rules] : config.rules) {
    bool known = false;
    for (const char* t : kTypes) known = known || type == t;
    MOPT_CHECK_VALUE(known, "unknown layer type '", type, "' in the sparsity rules; known: "
                     "nn.Linear, nn.Conv1d, nn.Conv2d");
  }
  const Rules fallback = default_rules();
  std::vector<Target> targets;
  for (const Node& node : named_modules(model)) {
    const char* type = type_name(*node.module);
    if (!type) continue;
    bool on = false;
    for (const auto& [pattern_str, value] : rules_for(config, type, fallback)) {
      if (fnmatch(node.name, pattern_str)) on = value;
    }
    if (!on) continue;
    MOPT_CHECK_VALUE(!find_tensor(node.module->named_buffers(false), "_weight_mask").defined(),
                     "sparsify: layer '",
                     node.name, "' is sparsified already");
    at::Tensor w = layer_weight(*node.module);
    const WeightLayout layout = layout_of(*node.module);
    if (!sparsity::layer_supported(w, layout, pattern)) {
      if (config.skip_incompatible) {
        MOPT_WARN("sparsify: layer '", node.name, "' stays dense: its input dimension is not a ",
                  "multiple of ", pattern.m, " (skip_incompatible)");
        continue;
      }
      sparsity::check_layer(w, layout, pattern, node.name);  // raises, naming the layer
    }
    targets.push_back({node.name, node.module, w, layout});
  }
  MOPT_CHECK_VALUE(!targets.empty(), "sparsify: the rules select no layer of the model");

  // Masks and weights are computed first and installed at the end, so an error changes nothing.
  std::vector<std::pair<at::Tensor, c10::optional<at::Tensor>>> updates(targets.size());
  if (mode == "sparse_magnitude") {
    for (size_t i = 0; i < targets.size(); ++i) {
      updates[i].first = sparsity::magnitude_mask(targets[i].weight, targets[i].layout, pattern,
                                                  targets[i].name);
    }
  } else {
    std::vector<std::shared_ptr<sparsity::SparsityLayer>> solvers;
    for (const Target& t : targets) {
      const sparsity::ConvGeometry g = geometry(*t.module, t.name);
      if (mode == "wanda") {
        solvers.push_back(std::make_shared<sparsity::WandaLayer>(t.weight, t.layout, g, pattern,
                                                                 t.name));
      } else {
        sparsity::SparseGptOptions o;
        o.col_block_size = config.col_block_size;
        o.hessian_damp = config.hessian_damp;
        o.update_weights = config.update_weights;
        solvers.push_back(std::make_shared<sparsity::SparseGptLayer>(t.weight, t.layout, g,
                                                                     pattern, o, t.name));
      }
    }
    std::map<std::string, size_t> index;
    for (size_t i = 0; i < targets.size(); ++i) index[targets[i].name] = i;
    with_observable_layers(model, [&] {
      for (const Node& node : named_modules(model)) {
        auto it = index.find(node.name);
        auto* qm = dynamic_cast<QuantModule*>(node.module);
        if (it == index.end() || !qm) continue;
        auto solver = solvers[it->second];
        qm->set_input_observer([solver](const at::Tensor& x) {
          at::NoGradGuard no_grad;
          solver->collect(x);
        });
      }
      const bool was_training = model.is_training();
      model.eval();
      try {
        at::NoGradGuard no_grad;
        forward_loop(model);
      } catch (...) {
        model.train(was_training);
        throw;
      }
      model.train(was_training);
      for (const Node& node : named_modules(model)) {
        if (auto* qm = dynamic_cast<QuantModule*>(node.module)) qm->set_input_observer(nullptr);
      }
    });
    for (size_t i = 0; i < targets.size(); ++i) {
      solvers[i]->finish();
      if (solvers[i]->num_tokens() == 0) {
        MOPT_WARN("sparsify: layer '", targets[i].name, "' was not reached by the calibration ",
                  "data (or is called through a plain torch layer member); its mask is chosen by "
                  "magnitude instead");
        updates[i].first = sparsity::magnitude_mask(targets[i].weight, targets[i].layout, pattern,
                                                    targets[i].name);
        continue;
      }
      sparsity::SparsityUpdate u = solvers[i]->solve();
      updates[i] = {u.mask, u.weight};
    }
  }
  json names = json::array();
  for (size_t i = 0; i < targets.size(); ++i) {
    if (updates[i].second) {
      at::NoGradGuard no_grad;
      targets[i].weight.copy_(*updates[i].second);
    }
    set_weight_mask(*targets[i].module, updates[i].first);
    names.push_back(targets[i].name);
  }
  json cfg = json::object();
  cfg["rules"] = core::parse_json(config.rules_json(), "rules");
  cfg["pattern"] = pattern.str();
  json meta = json::object();
  meta["sparse_modules"] = names;
  meta["pattern"] = pattern.str();
  record_mode(model, mode, cfg.dump(), meta.dump());
}

}  // namespace mopt
