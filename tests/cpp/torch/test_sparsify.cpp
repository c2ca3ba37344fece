// mopt::sparsify on C++-frontend models: masks equal the core's (and Python's) for each mode,
// the pattern holds through training and through quantize, save / restore round trips, and the
// errors that leave the model untouched.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "mopt/mopt.h"

namespace mopt {
namespace {

namespace fs = std::filesystem;

torch::nn::Sequential net(uint64_t seed = 0) {
  torch::manual_seed(seed);
  return torch::nn::Sequential(torch::nn::Linear(32, 64), torch::nn::ReLU(),
                               torch::nn::Linear(64, 48), torch::nn::ReLU(),
                               torch::nn::Linear(48, 16));
}

torch::Tensor data(uint64_t seed = 1) {
  torch::manual_seed(seed);
  return torch::randn({64, 32});
}

// Every group of m consecutive inputs of a [rows, cols] weight has at most n nonzeros.
bool holds(const torch::Tensor& w, int64_t n, int64_t m) {
  return w.ne(0).reshape({w.size(0), -1, m}).sum(2).le(n).all().item<bool>();
}

torch::Tensor mask_of(torch::nn::Module& layer) {
  const auto buffers = layer.named_buffers(false);  // find() points into this dict
  const at::Tensor* mask = buffers.find("_weight_mask");
  return mask != nullptr ? *mask : torch::Tensor();
}

std::string temp_path(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("mopt_sparsify_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

TEST(Sparsify, MagnitudeMatchesTheCoreMask) {
  auto model = net();
  const torch::Tensor w0 = model[0]->as<torch::nn::Linear>()->weight.detach().clone();
  SparsifyConfig cfg;
  sparsify(model, cfg);
  EXPECT_EQ(sparse_layers(*model), (std::vector<std::string>{"0", "2", "4"}));
  auto& first = *model[0];
  const torch::Tensor expected =
      sparsity::magnitude_mask(w0, sparsity::WeightLayout::kLinear, {2, 4});
  EXPECT_TRUE(torch::equal(mask_of(first), expected));
  EXPECT_TRUE(torch::equal(model[0]->as<torch::nn::Linear>()->weight, w0 * expected));
  EXPECT_EQ(applied_modes(*model), std::vector<std::string>{"sparse_magnitude"});
}

TEST(Sparsify, SparseGptAndWandaUseTheLayerInputs) {
  for (const std::string mode : {"sparsegpt", "wanda"}) {
    auto model = net();
    const torch::Tensor x = data();
    // the first layer's input is x itself: solve it directly with the core
    const torch::Tensor w0 = model[0]->as<torch::nn::Linear>()->weight.detach().clone();
    std::shared_ptr<sparsity::SparsityLayer> solver;
    if (mode == "wanda") {
      solver = std::make_shared<sparsity::WandaLayer>(w0.clone(), sparsity::WeightLayout::kLinear,
                                                      sparsity::ConvGeometry{},
                                                      sparsity::NMPattern{2, 4}, "0");
    } else {
      solver = std::make_shared<sparsity::SparseGptLayer>(
          w0.clone(), sparsity::WeightLayout::kLinear, sparsity::ConvGeometry{},
          sparsity::NMPattern{2, 4}, sparsity::SparseGptOptions{}, "0");
    }
    solver->collect(x);
    solver->finish();
    const sparsity::SparsityUpdate expected = solver->solve();

    SparsifyConfig cfg;
    cfg.mode = mode;
    sparsify(model, cfg, [&](torch::nn::Module& m) {
      dynamic_cast<torch::nn::SequentialImpl&>(m).forward(x);
    });
    auto lin = model[0]->as<torch::nn::Linear>();
    EXPECT_TRUE(torch::equal(mask_of(*model[0]), expected.mask)) << mode;
    if (expected.weight) EXPECT_TRUE(torch::equal(lin->weight, *expected.weight)) << mode;
    for (int i : {0, 2, 4}) {
      EXPECT_TRUE(holds(model[i]->as<torch::nn::Linear>()->weight, 2, 4)) << mode << i;
    }
    // the model's layers are the original torch layers again
    EXPECT_NE(model[0]->as<torch::nn::Linear>(), nullptr);
    EXPECT_FALSE(is_quantized(*model));
  }
}

TEST(Sparsify, PatternHoldsThroughTrainingAndQuantize) {
  auto model = net();
  SparsifyConfig cfg;
  cfg.mode = "sparsegpt";
  const torch::Tensor x = data();
  const ForwardLoop loop = [&](torch::nn::Module& m) {
    dynamic_cast<torch::nn::SequentialImpl&>(m).forward(x);
  };
  sparsify(model, cfg, loop);
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-2).weight_decay(0.1));
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    model->forward(x).square().mean().backward();
    opt.step();
  }
  for (int i : {0, 2, 4}) EXPECT_TRUE(holds(model[i]->as<torch::nn::Linear>()->weight, 2, 4));
  quantize(model, predefined_config("INT8_DEFAULT_CFG"), loop);
  auto* q0 = dynamic_cast<QuantLinearImpl*>(model[0].get());
  ASSERT_NE(q0, nullptr);
  EXPECT_TRUE(q0->named_buffers(false).find("_weight_mask") != nullptr);
  {
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(holds(q0->weight_quantizer()->forward(q0->weight), 2, 4));
  }
  EXPECT_EQ(applied_modes(*model), (std::vector<std::string>{"sparsegpt", "quantize"}));

  const std::string path = temp_path("sparse_int8.safetensors");
  save(model, path);
  auto fresh = net(7);
  restore(fresh, path);
  EXPECT_EQ(applied_modes(*fresh), (std::vector<std::string>{"sparsegpt", "quantize"}));
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(model->forward(x), fresh->forward(x)));
  EXPECT_TRUE(torch::equal(mask_of(*fresh[2]), mask_of(*model[2])));
}

TEST(Sparsify, SparseModelRoundTripKeepsMasksForTraining) {
  auto model = net();
  sparsify(model, SparsifyConfig{});
  const std::string path = temp_path("sparse.safetensors");
  save(model, path);
  auto fresh = net(3);
  restore(fresh, path);
  EXPECT_EQ(sparse_layers(*fresh), sparse_layers(*model));
  torch::optim::SGD opt(fresh->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  fresh->forward(data()).square().mean().backward();
  opt.step();
  for (int i : {0, 2, 4}) EXPECT_TRUE(holds(fresh[i]->as<torch::nn::Linear>()->weight, 2, 4));
}

TEST(Sparsify, ConvLayersGroupInputChannels) {
  torch::manual_seed(0);
  auto model = torch::nn::Sequential(
      torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 16, 3).padding(1)), torch::nn::ReLU(),
      torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 4, 3).stride(2)));
  const torch::Tensor x = torch::randn({2, 8, 9, 9});
  SparsifyConfig cfg;
  cfg.mode = "wanda";
  sparsify(model, cfg, [&](torch::nn::Module& m) {
    dynamic_cast<torch::nn::SequentialImpl&>(m).forward(x);
  });
  const torch::Tensor w = model[2]->as<torch::nn::Conv2d>()->weight;
  EXPECT_TRUE(holds(w.permute({0, 2, 3, 1}).reshape({4, -1}), 2, 4));
  EXPECT_EQ(sparse_layers(*model).size(), 2u);
}

TEST(Sparsify, ErrorsLeaveTheModelUntouched) {
  auto model = torch::nn::Sequential(torch::nn::Linear(8, 8), torch::nn::Linear(8, 6),
                                     torch::nn::Linear(6, 4));
  const torch::Tensor w2 = model[2]->as<torch::nn::Linear>()->weight.detach().clone();
  SparsifyConfig cfg;
  try {
    sparsify(model, cfg);
    FAIL() << "expected an error";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("layer '2'"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(sparse_layers(*model).empty());
  EXPECT_TRUE(applied_modes(*model).empty());
  cfg.mode = "sparsegpt";
  EXPECT_THROW(sparsify(model, cfg), c10::ValueError);  // no forward_loop
  cfg.mode = "sparse_gpt";
  EXPECT_THROW(sparsify(model, cfg), c10::ValueError);
  cfg.mode = "sparse_magnitude";
  cfg.pattern = "5:4 sparsity";
  EXPECT_THROW(sparsify(model, cfg), c10::ValueError);
  cfg.pattern = "2:4 sparsity";
  cfg.rules = SparsifyConfig::rules_from_json(R"({"nn.Linear": {"*": {}, "2": null}})");
  sparsify(model, cfg);
  EXPECT_EQ(sparse_layers(*model), (std::vector<std::string>{"0", "1"}));
  EXPECT_TRUE(torch::equal(model[2]->as<torch::nn::Linear>()->weight, w2));
  EXPECT_THROW(sparsify(model, cfg), c10::ValueError);  // sparsified already
  EXPECT_THROW(SparsifyConfig::rules_from_json(R"({"nn.Linaer": {}})"), c10::ValueError);

  auto quantized = net();
  quantize(quantized, predefined_config("INT8_DEFAULT_CFG"));
  try {
    sparsify(quantized, SparsifyConfig{});
    FAIL() << "expected an error";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("sparsify first"), std::string::npos) << e.what();
  }

  // NaN activations name the layer; nothing is installed
  auto nan_model = net();
  const torch::Tensor before = nan_model[0]->as<torch::nn::Linear>()->weight.detach().clone();
  SparsifyConfig gpt;
  gpt.mode = "sparsegpt";
  try {
    sparsify(nan_model, gpt, [&](torch::nn::Module& m) {
      dynamic_cast<torch::nn::SequentialImpl&>(m).forward(data() * NAN);
    });
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer '0'"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(sparse_layers(*nan_model).empty());
  EXPECT_TRUE(torch::equal(nan_model[0]->as<torch::nn::Linear>()->weight, before));
  EXPECT_FALSE(is_quantized(*nan_model));
}

}  // namespace
}  // namespace mopt
