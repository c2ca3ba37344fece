// include/mopt/opt: safetensors files, the mode registry and state document, and the quantize
// mode's per-quantizer properties, for mopt.opt (mto).

#include "bindings.h"

#include <pybind11/stl.h>

#include "mopt/core/error.h"
#include "mopt/opt/safetensors.h"
#include "mopt/opt/state.h"

namespace py = pybind11;

namespace mopt::python {
namespace {

const char* kind_name(opt::ModeKind k) {
  switch (k) {
    case opt::ModeKind::kQuantize: return "quantize";
    case opt::ModeKind::kCalibrate: return "calibrate";
    case opt::ModeKind::kSparsity: return "sparsity";
    case opt::ModeKind::kExport: return "export";
  }
  return "?";
}

opt::ModeKind kind_from_name(const std::string& s) {
  if (s == "quantize") return opt::ModeKind::kQuantize;
  if (s == "calibrate") return opt::ModeKind::kCalibrate;
  if (s == "export") return opt::ModeKind::kExport;
  MOPT_CHECK_VALUE(s == "sparsity", "unknown mode kind '", s,
                   "'; kinds: quantize, calibrate, sparsity, export");
  return opt::ModeKind::kSparsity;
}

py::dict quantizer_state_to_py(const opt::QuantizerState& s) {
  py::dict out;
  out["sequential"] = s.sequential;
  out["num_quantizers"] = s.num_quantizers;
  out["attributes_json"] = s.attributes_json.empty() ? s.attributes.to_json() : s.attributes_json;
  out["flags"] = py::make_tuple(s.flags.disabled, s.flags.quant, s.flags.calib);
  py::dict buffers;
  for (const auto& [buf, spec] : s.buffers) {
    buffers[py::str(buf)] = py::make_tuple(spec.dtype, spec.shape);
  }
  out["buffers"] = buffers;
  out["file_amax_shape"] =
      s.file_amax_shape ? py::cast(*s.file_amax_shape) : py::object(py::none());
  py::object lsq = py::none();
  if (s.lsq) {
    py::dict d;
    d["learn_pre"] = s.lsq->learn_pre;
    d["learn_post"] = s.lsq->learn_post;
    d["tied"] = s.lsq->tied;
    lsq = d;
  }
  out["lsq"] = lsq;
  return out;
}

}  // namespace

void bind_opt(py::module_& m) {
  m.def(
      "save_safetensors",
      [](const std::string& path, const opt::NamedTensors& tensors,
         const std::map<std::string, std::string>& metadata) {
        py::gil_scoped_release release;
        opt::save_safetensors(path, tensors, metadata);
      },
      py::arg("path"), py::arg("tensors"), py::arg("metadata") = std::map<std::string, std::string>{},
      "Writes [(name, tensor)] and string metadata as one safetensors file, atomically.");
  m.def(
      "load_safetensors",
      [](const std::string& path) {
        opt::SafetensorsFile f;
        {
          py::gil_scoped_release release;
          f = opt::load_safetensors(path);
        }
        return py::make_tuple(f.tensors, f.metadata);
      },
      py::arg("path"), "Reads a safetensors file: ([(name, tensor)], metadata dict).");
  m.def("load_safetensors_metadata", &opt::load_safetensors_metadata, py::arg("path"),
        "Reads only a safetensors file's __metadata__.");
  m.def(
      "write_file_atomic",
      [](const std::string& path, const py::bytes& data) {
        std::string bytes = data;
        py::gil_scoped_release release;
        opt::write_file_atomic(path, [&](std::ostream& out) {
          out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        });
      },
      py::arg("path"), py::arg("data"),
      "Writes bytes to path atomically (temporary file, fsync, rename).");

  m.def(
      "opt_modes",
      [] {
        py::list rows;
        for (const auto& info : opt::modes()) {
          rows.append(py::make_tuple(info.name, kind_name(info.kind), info.description));
        }
        return rows;
      },
      "The registered modes: [(name, kind, description)].");
  m.def(
      "register_mode",
      [](const std::string& name, const std::string& kind, const std::string& description) {
        opt::register_mode({name, kind_from_name(kind), description});
      },
      py::arg("name"), py::arg("kind"), py::arg("description") = "",
      "Registers a mode for the chaining rules (kind: quantize, calibrate or sparsity).");
  m.def("check_next_mode", &opt::check_next_mode, py::arg("history"), py::arg("next"),
        "ValueError when mode `next` cannot follow the applied modes `history`.");
  m.def("state_format_version", [] { return opt::kStateFormatVersion; });
  m.def("state_metadata_key", [] { return std::string(opt::kStateMetadataKey); });
  m.def(
      "state_to_json",
      [](const std::vector<std::tuple<std::string, std::string, std::string>>& entries,
         const std::string& version) {
        opt::ModeState state;
        state.version = version;
        for (const auto& [mode, config, metadata] : entries) {
          state.modes.push_back({mode, config, metadata});
        }
        return opt::state_to_json(state);
      },
      py::arg("modes"), py::arg("version"),
      "The state document for [(mode, config JSON, metadata JSON)].");
  m.def(
      "state_from_json",
      [](const std::string& text, const std::string& source, bool with_quantizer_states) {
        py::list quantizer_states;
        opt::ModeState state;
        if (with_quantizer_states) {
          opt::ModeStateWithQuantizers read = opt::state_from_json_with_quantizers(text, source);
          state = std::move(read.state);
          for (const auto& states : read.quantizer_states) {
            if (!states) {
              quantizer_states.append(py::none());
              continue;
            }
            py::dict parsed;
            for (const auto& [name, s] : *states) parsed[py::str(name)] = quantizer_state_to_py(s);
            quantizer_states.append(parsed);
          }
        } else {
          state = opt::state_from_json(text, source);
        }
        py::list modes;
        for (const auto& e : state.modes) {
          modes.append(py::make_tuple(e.mode, e.config_json, e.metadata_json));
        }
        py::dict out;
        out["modes"] = modes;
        out["version"] = state.version;
        out["format_version"] = state.format_version;
        if (with_quantizer_states) out["quantizer_states"] = quantizer_states;
        return out;
      },
      py::arg("text"), py::arg("source"), py::arg("with_quantizer_states") = false,
      "Parses and checks a state document: {modes: [(mode, config JSON, metadata JSON)], "
      "version, format_version (0: written by nvidia-modelopt)}; with_quantizer_states adds "
      "quantizer_states: per mode, parse_quantizer_states of its metadata's quantizer_state "
      "(None where it has none), read from the same parse.");
  m.def(
      "quantizer_state_json",
      [](const QuantizerCore& core, const std::map<std::string, std::optional<at::Tensor>>& bufs,
         const std::optional<std::tuple<bool, bool, bool>>& lsq) {
        std::map<std::string, at::Tensor> defined;
        for (const auto& [name, t] : bufs) {
          if (t) defined[name] = *t;
        }
        std::optional<opt::LsqState> l;
        if (lsq) l = opt::LsqState{std::get<0>(*lsq), std::get<1>(*lsq), std::get<2>(*lsq)};
        return opt::quantizer_state_json(core, defined, l);
      },
      py::arg("core"), py::arg("buffers"), py::arg("lsq") = py::none(),
      "One quantizer's properties (ModelOpt's layout) as JSON, with its buffers' shapes; "
      "lsq = (learn_pre, learn_post, tied) for a quantizer with learned scales.");
  m.def(
      "lsq_extra_repr",
      [](const std::tuple<bool, bool, bool>& lsq, const std::optional<at::Tensor>& amax_pre) {
        return opt::lsq_extra_repr({std::get<0>(lsq), std::get<1>(lsq), std::get<2>(lsq)},
                                   amax_pre);
      },
      py::arg("lsq"), py::arg("amax_pre"),
      "The summary suffix ' lsq(pre=..., learn=[...])' of a quantizer with learned scales, "
      "lsq = (learn_pre, learn_post, tied).");
  m.def("sequential_quantizer_state_json", &opt::sequential_quantizer_state_json, py::arg("n"));
  m.def(
      "parse_quantizer_state",
      [](const std::string& name, const std::string& text) {
        return quantizer_state_to_py(opt::parse_quantizer_state(name, text));
      },
      py::arg("name"), py::arg("json"),
      "Reads one quantizer's properties: {sequential, num_quantizers, attributes_json, flags "
      "(disabled, quant, calib), buffers {name: (dtype, shape)}, file_amax_shape}.");
  m.def(
      "parse_quantizer_states",
      [](const std::string& text) {
        py::dict out;
        for (const auto& [name, s] : opt::parse_quantizer_states(text)) {
          out[py::str(name)] = quantizer_state_to_py(s);
        }
        return out;
      },
      py::arg("json"), "Reads a whole quantizer_state object: {name: parse_quantizer_state}.");
  m.def("check_tensors_match", &opt::check_tensors_match, py::arg("model"), py::arg("file"),
        py::arg("source"),
        "ValueError listing the first missing, unexpected and mis-shaped tensors.");
  m.def("check_quantizer_tensors", &opt::check_quantizer_tensors, py::arg("tensors"),
        py::arg("source"), "ValueError for a NaN, infinite or negative amax in a file.");
}

}  // namespace mopt::python
