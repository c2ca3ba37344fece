// mopt::save / mopt::restore on C++-frontend models: bit-identical round trips for every kind of
// quantizer state, the mode history, and the errors that must leave the model untouched.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "mopt/mopt.h"

namespace mopt {
namespace {

namespace fs = std::filesystem;

torch::nn::Sequential mlp(int64_t hidden = 256, uint64_t seed = 0) {
  torch::manual_seed(seed);
  return torch::nn::Sequential(torch::nn::Linear(128, hidden), torch::nn::ReLU(),
                               torch::nn::Linear(hidden, 64));
}

std::string temp_path(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("mopt_save_restore_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

// Every parameter and buffer, by name.
std::map<std::string, at::Tensor> tensors_of(torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : m.named_parameters(true)) out[p.key()] = p.value().clone();
  for (const auto& b : m.named_buffers(true)) out[b.key()] = b.value().clone();
  return out;
}

void expect_same_tensors(const std::map<std::string, at::Tensor>& a,
                         const std::map<std::string, at::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_EQ(b.count(name), 1u) << name;
    EXPECT_TRUE(torch::equal(t, b.at(name))) << name;
  }
}

class SaveRestore : public ::testing::TestWithParam<std::string> {};

TEST_P(SaveRestore, RestoredModelIsBitIdentical) {
  auto model = mlp();
  torch::manual_seed(1);
  std::vector<at::Tensor> calib;
  for (int i = 0; i < 4; ++i) calib.push_back(torch::randn({16, 128}));
  quantize(model, predefined_config(GetParam()), [&](torch::nn::Module&) {
    torch::NoGradGuard no_grad;
    for (const auto& x : calib) model->forward(x);
  });
  const std::string path = temp_path(GetParam() + ".safetensors");
  save(model, path);

  auto fresh = mlp(256, 7);  // other weights: everything must come from the file
  restore(fresh, path);
  EXPECT_EQ(applied_modes(*fresh), std::vector<std::string>{"quantize"});
  const at::Tensor x = torch::randn({8, 128});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(model->forward(x), fresh->forward(x)));
  expect_same_tensors(tensors_of(*model), tensors_of(*fresh));
  const auto a = named_quantizers(*model);
  const auto b = named_quantizers(*fresh);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_EQ(a[i].second->attribute_json(), b[i].second->attribute_json()) << a[i].first;
    EXPECT_EQ(a[i].second->is_enabled(), b[i].second->is_enabled()) << a[i].first;
    EXPECT_EQ(a[i].second->is_quant_enabled(), b[i].second->is_quant_enabled()) << a[i].first;
  }
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Configs, SaveRestore,
                         ::testing::Values("INT8_DEFAULT_CFG", "INT8_SMOOTHQUANT_CFG",
                                           "INT4_AWQ_CFG", "NVFP4_DEFAULT_CFG",
                                           "W4A8_AWQ_BETA_CFG", "FP8_DEFAULT_CFG",
                                           "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"),
                         [](const auto& info) { return info.param; });

TEST(SaveRestoreErrors, LeaveTheModelUntouched) {
  auto model = mlp();
  quantize(model, configs::int8_default(), [&](torch::nn::Module&) {
    torch::NoGradGuard no_grad;
    model->forward(torch::randn({16, 128}));
  });
  const std::string path = temp_path("int8.safetensors");
  save(model, path);

  auto check_untouched = [](torch::nn::Sequential& m, const std::map<std::string, at::Tensor>& before) {
    EXPECT_FALSE(is_quantized(*m));
    EXPECT_TRUE(applied_modes(*m).empty());
    expect_same_tensors(before, tensors_of(*m));
  };

  // another model: hidden size differs
  auto other = mlp(192, 3);
  auto before = tensors_of(*other);
  try {
    restore(other, path);
    ADD_FAILURE() << "restore into another architecture succeeded";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("is not a checkpoint of this model"), std::string::npos)
        << e.what();
  }
  check_untouched(other, before);

  // a truncated file
  const std::string cut = temp_path("cut.safetensors");
  {
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream out(cut, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  auto fresh = mlp(256, 4);
  before = tensors_of(*fresh);
  EXPECT_THROW(restore(fresh, cut), c10::Error);
  check_untouched(fresh, before);

  // onto an optimized model
  EXPECT_THROW(restore(model, path), c10::ValueError);
  // a plain safetensors file without a state
  const std::string plain = temp_path("plain.safetensors");
  opt::save_safetensors(plain, {{"0.weight", torch::ones({256, 128})}});
  EXPECT_THROW(restore(fresh, plain), c10::ValueError);
  check_untouched(fresh, before);
  // a missing file
  EXPECT_THROW(restore(fresh, temp_path("missing.safetensors")), c10::Error);
  check_untouched(fresh, before);
  std::remove(path.c_str());
  std::remove(cut.c_str());
  std::remove(plain.c_str());
}

TEST(SaveRestoreModes, UnquantizedModelAndChainingRules) {
  auto model = mlp();
  const std::string path = temp_path("float.safetensors");
  save(model, path);
  auto fresh = mlp(256, 9);
  restore(fresh, path);
  EXPECT_TRUE(applied_modes(*fresh).empty());
  EXPECT_FALSE(is_quantized(*fresh));
  expect_same_tensors(tensors_of(*model), tensors_of(*fresh));

  quantize(model, configs::int8_weight_only());
  EXPECT_EQ(applied_modes(*model), std::vector<std::string>{"quantize"});
  EXPECT_THROW(check_mode(*model, "sparsegpt"), c10::ValueError);
  // the history is the model's: another model has none
  EXPECT_TRUE(applied_modes(*mlp()).empty());
  std::remove(path.c_str());
}

}  // namespace
}  // namespace mopt
