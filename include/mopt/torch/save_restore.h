// mopt::save / mopt::restore for LibTorch C++-frontend models: the C++ counterpart of mto.save /
// mto.restore, reading and writing the same files (one safetensors file: every parameter and
// buffer, plus the mode history as JSON in its metadata), so a model quantized and saved from
// Python restores in a C++ program with the same outputs, and the other way round.
//
// The mode history of a C++ model is kept beside it (a C++ module has no attribute to hold it):
// mopt::quantize records "quantize" there, and restore sets it. A model that carries quantizers
// without a recorded history (built from mopt::QuantLinear members and configured by hand) is
// saved with one "quantize" entry describing its quantizers.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "mopt/opt/state.h"

namespace mopt {

/// The modes applied to `model`, oldest first ("quantize", ...).
std::vector<std::string> applied_modes(const torch::nn::Module& model);

/// Checks that `mode` may be applied to `model` next (opt::check_next_mode on its history).
void check_mode(const torch::nn::Module& model, const std::string& mode);

/// Records that `mode` with `config_json` (and `metadata_json`) was applied to `model`
/// (mopt::quantize and mopt::sparsify call this).
void record_mode(const torch::nn::Module& model, const std::string& mode,
                 const std::string& config_json, const std::string& metadata_json = "{}");

/// The mode history of `model` with the quantize metadata (every quantizer's properties)
/// brought up to date: Python's mto.modelopt_state.
opt::ModeState modelopt_state(torch::nn::Module& model);

/// Writes every parameter and buffer of `model` (the names torch::nn::Module::named_parameters
/// and named_buffers give, which match Python's state_dict for the same architecture) and its
/// mode history to one safetensors file at `path`, atomically.
void save(torch::nn::Module& model, const std::string& path);
/// Same, for a module holder such as torch::nn::Sequential.
template <typename ModuleType>
void save(const torch::nn::ModuleHolder<ModuleType>& model, const std::string& path) {
  save(*model.ptr(), path);
}

/// Restores a file written by mopt::save or Python's mto.save into a fresh `model` of the same
/// architecture: replays its modes (converts the layers, sets every quantizer's attributes,
/// flags and buffers), then copies every tensor. Nothing is calibrated again. Everything is
/// checked first (file, format version, modes and their order, quantizer names and properties,
/// tensor names and shapes, amax values); on any error the model is left exactly as it was.
/// ValueError for a model that is already optimized.
void restore(torch::nn::Module& model, const std::string& path);
/// Same, for a module holder.
template <typename ModuleType>
void restore(const torch::nn::ModuleHolder<ModuleType>& model, const std::string& path) {
  restore(*model.ptr(), path);
}

}  // namespace mopt
