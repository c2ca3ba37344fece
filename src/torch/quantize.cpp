#include "mopt/torch/quantize.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/all.h>
#include <ATen/ops/any.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/lt.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>

#include <algorithm>
#include <iomanip>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>

#include "mopt/core/error.h"
#include "mopt/algorithms/calibration.h"
#include "mopt/core/fnmatch.h"
#include "mopt/torch/save_restore.h"
#include "torch/module_tree.h"

namespace mopt {

using json = nlohmann::ordered_json;

std::vector<Node> named_modules(torch::nn::Module& root) {
  std::vector<Node> out;
  std::unordered_set<const torch::nn::Module*> seen;
  std::function<void(torch::nn::Module&, const std::string&)> visit =
      [&](torch::nn::Module& m, const std::string& prefix) {
        for (const auto& item : m.named_children()) {
          const std::shared_ptr<torch::nn::Module>& child = item.value();
          if (!child || !seen.insert(child.get()).second) continue;
          const std::string name = prefix.empty() ? item.key() : prefix + "." + item.key();
          out.push_back({name, child.get(), child, &m, item.key()});
          visit(*child, name);
        }
      };
  seen.insert(&root);
  out.push_back({"", &root, root.weak_from_this().lock(), nullptr, ""});
  visit(root, "");
  return out;
}

namespace {

using ModulePtr = std::shared_ptr<torch::nn::Module>;

std::string join_name(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

bool is_quantizer(const torch::nn::Module* m) {
  return dynamic_cast<const TensorQuantizerImpl*>(m) ||
         dynamic_cast<const SequentialQuantizerImpl*>(m);
}

bool is_sequential(const torch::nn::Module* m) {
  return dynamic_cast<const torch::nn::SequentialImpl*>(m) != nullptr;
}

// The quantized replacement of an exact torch Linear/Conv layer (set up), or null.
ModulePtr make_quant_layer(const ModulePtr& child, torch::nn::AnyModule* any) {
  const std::type_info& t = typeid(*child);
  if (t == typeid(torch::nn::LinearImpl)) {
    auto q = std::make_shared<QuantLinearImpl>(static_cast<const torch::nn::LinearImpl&>(*child));
    q->setup();
    *any = torch::nn::AnyModule(q);
    return q;
  }
  if (t == typeid(torch::nn::Conv1dImpl)) {
    auto q = std::make_shared<QuantConv1dImpl>(static_cast<const torch::nn::Conv1dImpl&>(*child));
    q->setup();
    *any = torch::nn::AnyModule(q);
    return q;
  }
  if (t == typeid(torch::nn::Conv2dImpl)) {
    auto q = std::make_shared<QuantConv2dImpl>(static_cast<const torch::nn::Conv2dImpl&>(*child));
    q->setup();
    *any = torch::nn::AnyModule(q);
    return q;
  }
  if (t == typeid(torch::nn::Conv3dImpl)) {
    auto q = std::make_shared<QuantConv3dImpl>(static_cast<const torch::nn::Conv3dImpl&>(*child));
    q->setup();
    *any = torch::nn::AnyModule(q);
    return q;
  }
  return nullptr;
}

bool is_convertible_torch_layer(const torch::nn::Module& m) {
  const std::type_info& t = typeid(m);
  return t == typeid(torch::nn::LinearImpl) || t == typeid(torch::nn::Conv1dImpl) ||
         t == typeid(torch::nn::Conv2dImpl) || t == typeid(torch::nn::Conv3dImpl);
}

// Everything quantize changed in the module tree, so a failure can put it back.
class Conversion {
 public:
  // Converts every Linear/Conv layer under `root`; returns the number of quantizers added.
  int convert(torch::nn::Module& root) {
    MOPT_CHECK_VALUE(!is_convertible_torch_layer(root), "the model itself is a ", root.name(),
                     "; wrap it in a torch::nn::Sequential (or construct it as mopt::QuantLinear /"
                     " QuantConv*d) so it can be converted in place");
    int count = 0;
    if (auto* qm = dynamic_cast<QuantModule*>(&root)) count += adopt(qm);
    std::unordered_set<const torch::nn::Module*> visited = {&root};
    walk(root, "", visited, count);
    return count;
  }

  // Replaced layers that a custom module (not a Sequential) holds: layer -> (name, parent class).
  const std::unordered_map<const torch::nn::Module*, std::pair<std::string, std::string>>&
  unreachable() const {
    return unreachable_;
  }

  // Puts every registry entry, Sequential slot and quantizer back, newest change first.
  void rollback() {
    for (auto it = actions_.rbegin(); it != actions_.rend(); ++it) {
      try {
        (*it)();
      } catch (...) {
        // Keep restoring the rest; the original error is what the caller sees.
      }
    }
    actions_.clear();
  }

 private:
  int adopt(QuantModule* qm) {
    if (!qm->is_converted()) {
      qm->setup();
      actions_.push_back([qm] { qm->unsetup(); });
      return 3;
    }
    snapshot(qm);
    return 0;
  }

  // A layer quantized before this call: keep copies of its quantizers to restore on failure.
  void snapshot(QuantModule* qm) {
    if (!snapshotted_.insert(qm).second) return;
    std::array<ModulePtr, 3> originals, copies;
    for (size_t i = 0; i < 3; ++i) {
      originals[i] = qm->quantizer(static_cast<QuantModule::Slot>(i));
      copies[i] = originals[i] ? originals[i]->clone() : nullptr;
    }
    actions_.push_back([qm, originals, copies] {
      for (size_t i = 0; i < 3; ++i) {
        if (!originals[i]) continue;
        if (auto* t = dynamic_cast<TensorQuantizerImpl*>(originals[i].get())) {
          *t = dynamic_cast<TensorQuantizerImpl&>(*copies[i]);
        } else if (auto* s = dynamic_cast<SequentialQuantizerImpl*>(originals[i].get())) {
          *s = dynamic_cast<SequentialQuantizerImpl&>(*copies[i]);
        }
        qm->set_quantizer(static_cast<QuantModule::Slot>(i), originals[i]);
      }
    });
  }

  void walk(torch::nn::Module& parent, const std::string& prefix,
            std::unordered_set<const torch::nn::Module*>& visited, int& count) {
    const auto children = parent.named_children();
    for (size_t index = 0; index < children.size(); ++index) {
      const std::string& attr = children[index].key();
      const ModulePtr child = children[index].value();
      if (!child) continue;
      const std::string name = join_name(prefix, attr);
      ModulePtr replacement;
      torch::nn::AnyModule any;
      auto found = replaced_.find(child.get());
      if (found != replaced_.end()) {
        replacement = found->second.first;
        any = found->second.second;
      } else {
        replacement = make_quant_layer(child, &any);
        if (replacement) {
          replaced_.emplace(child.get(), std::make_pair(replacement, any));
          count += 3;
        }
      }
      if (replacement) {
        replace_child(parent, attr, child, replacement, any);
        if (!is_sequential(&parent)) {
          unreachable_.emplace(replacement.get(), std::make_pair(name, parent.name()));
        }
        continue;
      }
      if (auto* qm = dynamic_cast<QuantModule*>(child.get())) {
        if (visited.insert(child.get()).second) count += adopt(qm);
        continue;
      }
      if (visited.insert(child.get()).second) walk(*child, name, visited, count);
    }
  }

  void replace_child(torch::nn::Module& parent, const std::string& attr, const ModulePtr& original,
                     const ModulePtr& replacement, const torch::nn::AnyModule& any) {
    parent.replace_module(attr, replacement);
    torch::nn::Module* p = &parent;
    actions_.push_back([p, attr, original] { p->replace_module(attr, original); });
    if (auto* seq = dynamic_cast<torch::nn::SequentialImpl*>(&parent)) {
      // Sequential::forward runs its AnyModule list, not the registry: swap the entry there.
      size_t i = 0;
      for (auto it = seq->begin(); it != seq->end(); ++it, ++i) {
        if (it->ptr().get() != original.get()) continue;
        const torch::nn::AnyModule saved = *it;
        *it = any;
        actions_.push_back([seq, i, saved] { *(seq->begin() + i) = saved; });
      }
    }
  }

  std::vector<std::function<void()>> actions_;
  std::unordered_map<const torch::nn::Module*, std::pair<ModulePtr, torch::nn::AnyModule>>
      replaced_;
  std::unordered_set<const QuantModule*> snapshotted_;
  std::unordered_map<const torch::nn::Module*, std::pair<std::string, std::string>> unreachable_;
};

// ---------------------------------------------------------------------------------------------
// quant_cfg application

struct CfgItem {
  std::string pattern;
  const QuantCfgEntry* entry;
  std::string class_name;  // empty: any parent
};

// (pattern, entry, class) in application order: "default" (as "*") first, then dict order.
std::vector<CfgItem> iter_cfg(const std::vector<QuantCfgEntry>& quant_cfg) {
  std::vector<CfgItem> items;
  for (const auto& e : quant_cfg) {
    if (e.pattern == "default") items.push_back({"*", &e, ""});
  }
  for (const auto& e : quant_cfg) {
    if (e.pattern == "default") continue;
    if (e.kind == QuantCfgKind::kClassScoped) {
      for (const auto& sub : e.entries) items.push_back({sub.pattern, &sub, e.pattern});
    } else {
      items.push_back({e.pattern, &e, ""});
    }
  }
  return items;
}

// Python's isinstance(parent, QuantModuleRegistry[class_name]) for the classes C++ converts.
bool parent_is_class(const torch::nn::Module* parent, const std::string& class_name) {
  const auto* qm = dynamic_cast<const QuantModule*>(parent);
  if (!qm) return false;
  const std::string cls = qm->quant_class_name();
  return cls == "Quant" + class_name.substr(3);  // "nn.Linear" -> "QuantLinear"
}

std::string class_display_name(const std::string& class_name) {
  return "Quant" + class_name.substr(3);
}

bool entry_enables(const QuantCfgEntry& e) {
  for (const auto& a : e.attributes) {
    const json j = json::parse(a);
    if (!j.contains("enable") || (j["enable"].is_boolean() && j["enable"].get<bool>())) return true;
  }
  return false;
}

}  // namespace

void replace_quantizer(const Node& node, const std::shared_ptr<torch::nn::Module>& fresh) {
  auto* qm = dynamic_cast<QuantModule*>(node.parent);
  const auto& slots = QuantModule::quantizer_slots();
  const auto slot = std::find(slots.begin(), slots.end(), node.attr);
  if (qm && slot != slots.end()) {
    qm->set_quantizer(static_cast<QuantModule::Slot>(slot - slots.begin()), fresh);
  } else {
    node.parent->replace_module(node.attr, fresh);
  }
}

void name_quantizers(torch::nn::Module& model) {
  for (auto& [name, q] : named_quantizers(model)) q->set_quantizer_name(name);
}

namespace {

// Python's _set_one: a list makes a SequentialQuantizer of that length, a dict a single
// TensorQuantizer; `full` resets every attribute, otherwise only the keys given are set.
void set_one(const Node& node, const QuantCfgEntry& entry, bool full) {
  auto* tq = dynamic_cast<TensorQuantizerImpl*>(node.module);
  auto* sq = dynamic_cast<SequentialQuantizerImpl*>(node.module);
  if (entry.kind == QuantCfgKind::kSequential) {
    if (!sq || sq->size() != entry.attributes.size()) {
      MOPT_CHECK_VALUE(node.parent != nullptr, "cannot replace the root quantizer");
      auto fresh = std::make_shared<SequentialQuantizerImpl>(entry.attributes.size());
      replace_quantizer(node, fresh);
      sq = fresh.get();
    }
    if (full) {
      std::vector<QuantizerAttributeConfig> attrs;
      for (const auto& a : entry.attributes) {
        attrs.push_back(QuantizerAttributeConfig::from_json(a));
      }
      sq->set_from_attribute_config(attrs);
    } else {
      sq->set_attributes(entry.attributes);
    }
    return;
  }
  if (sq) {
    MOPT_CHECK_VALUE(node.parent != nullptr, "cannot replace the root quantizer");
    auto fresh = std::make_shared<TensorQuantizerImpl>();
    replace_quantizer(node, fresh);
    tq = fresh.get();
  }
  if (full) {
    tq->set_from_attribute_config(QuantizerAttributeConfig::from_json(entry.attributes.at(0)));
  } else {
    tq->set_attributes(entry.attributes.at(0));
  }
}

int apply_entry(torch::nn::Module& model, const std::string& pattern, const QuantCfgEntry& entry,
                const std::string& class_name, bool full) {
  int count = 0;
  for (const Node& node : named_modules(model)) {
    if (!is_quantizer(node.module)) continue;
    if (dynamic_cast<TensorQuantizerImpl*>(node.module) &&
        dynamic_cast<SequentialQuantizerImpl*>(node.parent)) {
      continue;
    }
    if (!fnmatch(node.name, pattern)) continue;
    if (!class_name.empty() && !parent_is_class(node.parent, class_name)) continue;
    set_one(node, entry, full);
    ++count;
  }
  return count;
}

void apply_quant_cfg_full(torch::nn::Module& model, const std::vector<QuantCfgEntry>& quant_cfg) {
  std::vector<std::string> unmatched;
  for (const CfgItem& item : iter_cfg(quant_cfg)) {
    const int n = apply_entry(model, item.pattern, *item.entry, item.class_name, true);
    if (n == 0 && entry_enables(*item.entry)) {
      unmatched.push_back("'" + (item.class_name.empty()
                                     ? item.pattern
                                     : class_display_name(item.class_name) + "/" + item.pattern) +
                          "'");
    }
  }
  if (!unmatched.empty()) {
    std::string list;
    for (const auto& u : unmatched) list += (list.empty() ? "" : ", ") + u;
    MOPT_CHECK_VALUE(false, "quant_cfg enables quantizers with pattern(s) [", list,
                     "] that match no quantizer in the model; check the names with "
                     "mopt::print_quant_summary(model)");
  }
}

// Converted layers that only a custom module's typed member calls cannot run their quantizers.
void check_reachable(const Conversion& conversion) {
  std::vector<std::string> bad;
  for (const auto& [layer, where] : conversion.unreachable()) {
    const auto* qm = dynamic_cast<const QuantModule*>(layer);
    bool enabled = false;
    for (size_t i = 0; i < 3; ++i) {
      const ModulePtr q = qm->quantizer(static_cast<QuantModule::Slot>(i));
      if (auto* t = dynamic_cast<TensorQuantizerImpl*>(q.get())) enabled |= t->is_enabled();
      if (auto* s = dynamic_cast<SequentialQuantizerImpl*>(q.get())) enabled |= s->is_enabled();
    }
    if (!enabled) continue;
    // "QuantLinear" -> "torch::nn::Linear"
    bad.push_back("'" + where.first + "' (a torch::nn::" +
                  std::string(qm->quant_class_name()).substr(5) + " member of " + where.second +
                  ")");
  }
  if (bad.empty()) return;
  std::sort(bad.begin(), bad.end());
  std::string list;
  for (const auto& b : bad) list += (list.empty() ? "" : ", ") + b;
  MOPT_CHECK_IMPLEMENTED(false, "cannot quantize ", list, ": a custom module calls these layers "
                         "through typed members, which C++ binds at compile time, so their "
                         "quantizers would never run. Declare the members as mopt::QuantLinear / "
                         "mopt::QuantConv1d/2d/3d (drop-in subclasses of the torch layers), put "
                         "the layers in a torch::nn::Sequential, or disable their quantizers in "
                         "the config");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// public API

std::vector<std::pair<std::string, TensorQuantizer>> named_quantizers(torch::nn::Module& model) {
  std::vector<std::pair<std::string, TensorQuantizer>> out;
  for (const Node& node : named_modules(model)) {
    if (!dynamic_cast<TensorQuantizerImpl*>(node.module) || !node.ptr) continue;
    out.emplace_back(node.name,
                     TensorQuantizer(std::static_pointer_cast<TensorQuantizerImpl>(node.ptr)));
  }
  return out;
}

bool is_quantized(torch::nn::Module& model) {
  for (const Node& node : named_modules(model)) {
    if (is_quantizer(node.module)) return true;
  }
  return false;
}

void print_quant_summary(torch::nn::Module& model, std::ostream& stream) {
  int count = 0;
  for (auto& [name, q] : named_quantizers(model)) {
    stream << std::left << std::setw(80) << name << std::setw(0) << " ";
    q->pretty_print(stream);
    stream << "\n";
    ++count;
  }
  stream << count << " TensorQuantizers found in model" << std::endl;
}

int set_quantizer_attribute(torch::nn::Module& model, const std::string& pattern,
                            const std::string& attributes_json) {
  QuantCfgEntry entry = QuantCfgEntry::make(pattern, attributes_json);
  return apply_entry(model, pattern, entry, "", false);
}

void set_quantizer_by_cfg(torch::nn::Module& model, const std::vector<QuantCfgEntry>& quant_cfg) {
  QuantizeConfig probe;
  probe.quant_cfg = quant_cfg;
  probe.validate();
  for (const CfgItem& item : iter_cfg(quant_cfg)) {
    apply_entry(model, item.pattern, *item.entry, item.class_name, false);
  }
  name_quantizers(model);
}

void enable_quantizer(torch::nn::Module& model, const std::string& pattern) {
  for (const Node& node : named_modules(model)) {
    if (!fnmatch(node.name, pattern)) continue;
    if (auto* t = dynamic_cast<TensorQuantizerImpl*>(node.module)) t->enable();
    if (auto* s = dynamic_cast<SequentialQuantizerImpl*>(node.module)) s->enable();
  }
}

void disable_quantizer(torch::nn::Module& model, const std::string& pattern) {
  for (const Node& node : named_modules(model)) {
    if (!fnmatch(node.name, pattern)) continue;
    if (auto* t = dynamic_cast<TensorQuantizerImpl*>(node.module)) t->disable();
    if (auto* s = dynamic_cast<SequentialQuantizerImpl*>(node.module)) s->disable();
  }
}

void convert_layers_then(torch::nn::Module& model, const std::function<void()>& setup) {
  Conversion conversion;
  try {
    conversion.convert(model);
    name_quantizers(model);
    setup();
    name_quantizers(model);
    check_reachable(conversion);
  } catch (...) {
    conversion.rollback();
    throw;
  }
}

void with_observable_layers(torch::nn::Module& model, const std::function<void()>& body) {
  Conversion conversion;
  try {
    conversion.convert(model);
    name_quantizers(model);
    disable_quantizer(model, "*");
    body();
  } catch (...) {
    conversion.rollback();
    throw;
  }
  conversion.rollback();
}

void quantize(torch::nn::Module& model, const QuantizeConfig& config,
              const ForwardLoop& forward_loop) {
  config.validate();
  check_mode(model, "quantize");
  // every method and option checked before the model is touched
  const auto steps = algorithms::parse_calibration_steps(config.algorithm);
  Conversion conversion;
  try {
    const int n = conversion.convert(model);
    name_quantizers(model);
    apply_quant_cfg_full(model, config.quant_cfg);
    name_quantizers(model);
    check_reachable(conversion);
    std::cout << "Inserted " << n << " quantizers" << std::endl;
    // A config that names no algorithm (MX recipes need none) but enables static quantizers
    // (W4A8_MXFP4_FP8's FP8 inputs) still gets their amax from the data: max calibration.
    bool static_quantizers = false;
    for (auto& [name, q] : named_quantizers(model)) {
      static_quantizers = static_quantizers || q->core().needs_calibration();
    }
    if (steps.empty() && forward_loop && static_quantizers) {
      calibrate(model, algorithms::parse_calibration_steps(R"("max")"), forward_loop);
    } else {
      calibrate(model, steps, forward_loop);
    }
  } catch (...) {
    conversion.rollback();
    throw;
  }
  record_mode(model, "quantize", config.to_json());
}

}  // namespace mopt
