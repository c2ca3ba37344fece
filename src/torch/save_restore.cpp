#include "mopt/torch/save_restore.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/reshape.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "core/json_parse.h"
#include "mopt/core/error.h"
#include "mopt/opt/safetensors.h"
#include "mopt/torch/quantize.h"
#include "mopt/torch/sparsify.h"
#include "mopt/torch/tensor_quantizer.h"
#include "torch/module_tree.h"

namespace mopt {
namespace {

using json = nlohmann::ordered_json;

// The mode histories of C++ models, by module. A module owned by a shared_ptr (every
// ModuleHolder) is tracked through a weak_ptr, so a history never outlives its module.
struct History {
  std::weak_ptr<const torch::nn::Module> owner;
  bool owned = false;
  opt::ModeState state;
};

struct Histories {
  std::mutex mutex;
  std::unordered_map<const torch::nn::Module*, History> by_module;
};

Histories& histories() {
  static auto* h = new Histories;
  return *h;
}

// The live history of `model` (a copy), or an empty state.
opt::ModeState history_of(const torch::nn::Module& model) {
  auto& h = histories();
  std::lock_guard<std::mutex> lock(h.mutex);
  auto it = h.by_module.find(&model);
  if (it == h.by_module.end()) return {{}, opt::kMoptVersion};
  if (it->second.owned && it->second.owner.expired()) {  // a dead module's address reused
    h.by_module.erase(it);
    return {{}, opt::kMoptVersion};
  }
  return it->second.state;
}

void set_history(const torch::nn::Module& model, const opt::ModeState& state) {
  auto& h = histories();
  std::lock_guard<std::mutex> lock(h.mutex);
  History entry;
  entry.owner = model.weak_from_this();
  entry.owned = !entry.owner.expired();
  entry.state = state;
  h.by_module[&model] = std::move(entry);
}

void drop_history(const torch::nn::Module& model) {
  auto& h = histories();
  std::lock_guard<std::mutex> lock(h.mutex);
  h.by_module.erase(&model);
}

std::vector<std::string> mode_names(const opt::ModeState& state) {
  std::vector<std::string> names;
  for (const auto& m : state.modes) names.push_back(m.mode);
  return names;
}

// Every quantizer's properties by full name (Python's quantizer_state).
json quantizer_state(torch::nn::Module& model) {
  json out = json::object();
  for (const Node& node : named_modules(model)) {
    if (auto* t = dynamic_cast<TensorQuantizerImpl*>(node.module)) {
      std::map<std::string, at::Tensor> buffers;
      if (auto a = t->amax()) buffers["_amax"] = *a;
      if (auto p = t->pre_quant_scale()) buffers["_pre_quant_scale"] = *p;
      if (auto z = t->zero_point()) buffers["_zero_point"] = *z;
      if (t->lsq() && !t->lsq()->tied) {
        if (auto pre = t->amax_pre()) buffers["_amax_pre"] = *pre;
      }
      out[node.name] = json::parse(opt::quantizer_state_json(t->core(), buffers, t->lsq()));
    } else if (auto* s = dynamic_cast<SequentialQuantizerImpl*>(node.module)) {
      out[node.name] = json::parse(
          opt::sequential_quantizer_state_json(static_cast<int64_t>(s->size())));
    }
  }
  return out;
}

// Parameters then buffers of every module, with full names (torch::save's tensors).
std::vector<std::pair<std::string, at::Tensor>> named_tensors(torch::nn::Module& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : model.named_parameters(true)) out.emplace_back(p.key(), p.value());
  for (const auto& b : model.named_buffers(true)) out.emplace_back(b.key(), b.value());
  return out;
}

// Sets every quantizer of a converted model from a quantize mode's `quantizer_state`, taking
// amax and pre_quant_scale from the file. Everything is parsed and matched before any change.
void apply_quantizer_state(torch::nn::Module& model, const json& states,
                           const std::map<std::string, at::Tensor>& file,
                           const std::string& source) {
  MOPT_CHECK_VALUE(states.is_object(), source, ": the quantize metadata has no quantizer_state");
  std::map<std::string, opt::QuantizerState> parsed;
  for (auto& [name, s] : opt::parse_quantizer_states(states.dump())) {
    parsed.emplace(name, std::move(s));
  }
  for (const Node& node : named_modules(model)) {
    auto it = parsed.find(node.name);
    if (it == parsed.end() || !it->second.sequential) continue;
    auto* s = dynamic_cast<SequentialQuantizerImpl*>(node.module);
    const bool is_tq = dynamic_cast<TensorQuantizerImpl*>(node.module) != nullptr;
    if (!(s || is_tq) || (s && s->size() == static_cast<size_t>(it->second.num_quantizers))) {
      continue;
    }
    replace_quantizer(node, std::make_shared<SequentialQuantizerImpl>(
                                static_cast<size_t>(it->second.num_quantizers)));
  }
  opt::TensorShapes in_model, in_state;
  for (const Node& node : named_modules(model)) {
    if (dynamic_cast<TensorQuantizerImpl*>(node.module) ||
        dynamic_cast<SequentialQuantizerImpl*>(node.module)) {
      in_model.push_back({node.name, {}});
    }
  }
  for (const auto& [name, _] : parsed) in_state.push_back({name, {}});
  opt::check_tensors_match(in_model, in_state, source + " (quantizer_state)");
  for (const Node& node : named_modules(model)) {
    auto* t = dynamic_cast<TensorQuantizerImpl*>(node.module);
    if (!t) continue;
    const opt::QuantizerState& st = parsed.at(node.name);
    t->set_from_attribute_config(st.attributes);
    t->core().set_flags(st.flags);
    t->reset_amax();
    t->set_pre_quant_scale(c10::nullopt);
    c10::optional<at::Tensor> amax_pre;  // set once learned scales are enabled, after _amax
    for (const auto& [buf, spec] : st.buffers) {
      const std::string key = node.name + "." + buf;
      auto f = file.find(key);
      MOPT_CHECK_VALUE(f != file.end(), source, ": quantizer '", node.name, "' records ", buf,
                       " but the file holds no tensor '", key, "'");
      at::Tensor value = f->second;
      if (buf == "_amax" && st.file_amax_shape && value.sizes().vec() == *st.file_amax_shape) {
        value = value.reshape(spec.shape);
      }
      MOPT_CHECK_VALUE(value.sizes().vec() == spec.shape, source, ": tensor '", key,
                       "' has shape ", value.sizes(), ", the quantizer state records ",
                       c10::IntArrayRef(spec.shape));
      if (buf == "_amax") {
        t->set_amax(value);
      } else if (buf == "_amax_pre") {
        amax_pre = value;
      } else if (buf == "_zero_point") {  // after _amax (the map is sorted)
        t->set_zero_point(value);
      } else {
        t->set_pre_quant_scale(value);
      }
    }
    if (st.lsq) {
      t->enable_lsq(*st.lsq);  // ValueError, rolled back, for a state without an amax
      if (amax_pre && !st.lsq->tied) t->set_amax_pre(*amax_pre);
    }
  }
}

}  // namespace

std::vector<std::string> applied_modes(const torch::nn::Module& model) {
  return mode_names(history_of(model));
}

void check_mode(const torch::nn::Module& model, const std::string& mode) {
  opt::check_next_mode(applied_modes(model), mode);
}

void record_mode(const torch::nn::Module& model, const std::string& mode,
                 const std::string& config_json, const std::string& metadata_json) {
  opt::ModeState state = history_of(model);
  opt::check_next_mode(mode_names(state), mode);
  state.version = opt::kMoptVersion;
  state.modes.push_back({mode, config_json, metadata_json});
  set_history(model, state);
}

opt::ModeState modelopt_state(torch::nn::Module& model) {
  opt::ModeState state = history_of(model);
  state.version = opt::kMoptVersion;
  state.format_version = opt::kStateFormatVersion;
  const bool quantized = is_quantized(model);
  if (state.modes.empty() && quantized) {
    // quantizers set up by hand: one quantize entry describes them
    state.modes.push_back({"quantize", "{}", "{}"});
  }
  // The latest entry that records quantizers gets their current properties.
  for (auto it = state.modes.rbegin(); it != state.modes.rend(); ++it) {
    const opt::ModeKind kind = opt::mode_info(it->mode).kind;
    if (kind == opt::ModeKind::kQuantize || kind == opt::ModeKind::kCalibrate) {
      json meta = core::parse_json(it->metadata_json, "mode metadata");
      meta["quantizer_state"] = quantizer_state(model);
      it->metadata_json = meta.dump();
      break;
    }
  }
  return state;
}

void save(torch::nn::Module& model, const std::string& path) {
  const std::string text = opt::state_to_json(modelopt_state(model));
  opt::save_safetensors(path, named_tensors(model),
                        {{"format", "pt"}, {opt::kStateMetadataKey, text}});
}

void restore(torch::nn::Module& model, const std::string& path) {
  MOPT_CHECK_VALUE(applied_modes(model).empty() && !is_quantized(model) &&
                       sparse_layers(model).empty(),
                   "cannot restore ", path, " onto a model that is already optimized; restore "
                   "into a fresh model");
  opt::SafetensorsFile file = opt::load_safetensors(path);
  auto meta = file.metadata.find(opt::kStateMetadataKey);
  MOPT_CHECK_VALUE(meta != file.metadata.end(), path, " is a safetensors file without a mode ",
                   "state (no '", opt::kStateMetadataKey, "' in its metadata): it was not written "
                   "by mopt::save / mto.save");
  opt::ModeState state = opt::state_from_json(meta->second, path);
  opt::check_quantizer_tensors(file.tensors, path);
  std::map<std::string, at::Tensor> by_name(file.tensors.begin(), file.tensors.end());

  bool converts = false;
  bool exported = false;
  std::vector<std::string> sparse_names;  // layers a sparsity mode left with a mask
  for (const auto& m : state.modes) {
    const opt::ModeKind kind = opt::mode_info(m.mode).kind;
    converts = converts || kind == opt::ModeKind::kQuantize;
    exported = exported || kind == opt::ModeKind::kExport;
    if (kind == opt::ModeKind::kSparsity) {
      const json metadata = core::parse_json(m.metadata_json, "mode metadata");
      MOPT_CHECK_VALUE(metadata.contains("sparse_modules") && metadata["sparse_modules"].is_array(),
                       path, ": the '", m.mode, "' mode has no list of sparse_modules");
      for (const auto& n : metadata["sparse_modules"]) {
        MOPT_CHECK_VALUE(n.is_string(), path, ": sparse_modules must hold layer names");
        sparse_names.push_back(n.get<std::string>());
      }
    }
  }
  if (exported) sparse_names.clear();  // the masks were folded into the weights
  auto load_all = [&] {
    for (const auto& m : state.modes) {
      const opt::ModeKind kind = opt::mode_info(m.mode).kind;
      if (kind != opt::ModeKind::kQuantize && kind != opt::ModeKind::kCalibrate) continue;
      const json metadata = core::parse_json(m.metadata_json, "mode metadata");
      apply_quantizer_state(model, metadata.contains("quantizer_state")
                                       ? metadata["quantizer_state"] : json(),
                            by_name, path);
    }
    std::map<std::string, torch::nn::Module*> layers;
    for (const Node& node : named_modules(model)) layers[node.name] = node.module;
    std::vector<torch::nn::Module*> sparse;
    for (const std::string& name : sparse_names) {
      auto it = layers.find(name);
      MOPT_CHECK_VALUE(it != layers.end(), path, ": the sparsity mode names layer '", name,
                       "', which this model does not have");
      torch::nn::Module* layer = it->second;
      MOPT_CHECK_VALUE(dynamic_cast<torch::nn::LinearImpl*>(layer) ||
                           dynamic_cast<torch::nn::Conv1dImpl*>(layer) ||
                           dynamic_cast<torch::nn::Conv2dImpl*>(layer),
                       path, ": the sparsity mode names '", name,
                       "', which is not a Linear/Conv1d/Conv2d layer here");
      sparse.push_back(layer);
    }
    opt::TensorShapes expected, in_file;
    const auto model_tensors = named_tensors(model);
    for (const auto& [name, t] : model_tensors) expected.push_back({name, t.sizes().vec()});
    for (size_t i = 0; i < sparse.size(); ++i) {
      const at::Tensor w = find_tensor(sparse[i]->named_parameters(false), "weight");
      if (w.defined() && !find_tensor(sparse[i]->named_buffers(false), "_weight_mask").defined()) {
        expected.push_back({sparse_names[i] + "._weight_mask", w.sizes().vec()});
      }
    }
    for (const auto& [name, t] : file.tensors) {
      at::IntArrayRef shape = t.sizes();
      std::vector<int64_t> s = shape.vec();
      // a quantizer amax the file stores in another layout was reshaped into the quantizer
      for (const auto& [mname, mt] : model_tensors) {
        if (mname == name && mt.numel() == t.numel() && name.size() > 6 &&
            name.compare(name.size() - 6, 6, "._amax") == 0) {
          s = mt.sizes().vec();
        }
      }
      in_file.push_back({name, s});
    }
    opt::check_tensors_match(expected, in_file, path);
    // every name and shape matches: the masks (all ones until their values are copied below)
    for (torch::nn::Module* layer : sparse) {
      const at::Tensor w = find_tensor(layer->named_parameters(false), "weight");
      set_weight_mask(*layer, at::ones(w.sizes(), w.options().dtype(at::kBool)));
    }
    const auto tensors = named_tensors(model);
    at::NoGradGuard no_grad;
    for (const auto& [name, t] : tensors) {
      const at::Tensor& src = by_name.at(name);
      if (name.size() > 6 && name.compare(name.size() - 6, 6, "._amax") == 0) continue;
      if (name.size() > 17 && name.compare(name.size() - 17, 17, "._pre_quant_scale") == 0) {
        continue;  // set with the quantizer
      }
      t.copy_(src.reshape(t.sizes()));
    }
  };
  if (converts) {
    convert_layers_then(model, load_all);
  } else {
    load_all();
  }
  state.version = opt::kMoptVersion;
  set_history(model, state);
}

}  // namespace mopt
