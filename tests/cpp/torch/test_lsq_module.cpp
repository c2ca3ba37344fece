// Learned scales (algorithm lsq) in the C++ module API: mopt::quantize / mopt::calibrate make the
// weight amaxes registered parameters that torch::optim::Adam trains, the gradient reaching them
// through a quantized layer's forward matches a float64 finite difference, mopt::save /
// mopt::restore keep them, and bad input leaves the model as it was.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

#include "mopt/mopt.h"

namespace mopt {
namespace {

namespace fs = std::filesystem;

torch::nn::Sequential mlp(uint64_t seed = 0) {
  torch::manual_seed(seed);
  return torch::nn::Sequential(torch::nn::Linear(32, 64), torch::nn::ReLU(),
                               torch::nn::Linear(64, 8));
}

std::string temp_path(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("mopt_lsq_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

// Weight-only quantization of every Linear with `weight_json`, calibrated by `algorithm_json`.
QuantizeConfig weight_only(const std::string& weight_json, const std::string& algorithm_json) {
  return QuantizeConfig::from_json(R"({"quant_cfg": {"default": {"enable": false},
      "*weight_quantizer": )" + weight_json + R"(}, "algorithm": )" + algorithm_json + "}");
}

const char* kInt4Blocks = R"({"num_bits": 4, "block_sizes": {"-1": 16}})";

std::map<std::string, at::Tensor> tensors_of(torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : m.named_parameters(true)) out[p.key()] = p.value().detach().clone();
  for (const auto& b : m.named_buffers(true)) out[b.key()] = b.value().detach().clone();
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

TensorQuantizer weight_quantizer(torch::nn::Module& model, const std::string& layer) {
  for (auto& [name, q] : named_quantizers(model)) {
    if (name == layer + ".weight_quantizer") return q;
  }
  throw std::runtime_error("no weight quantizer for layer " + layer);
}

struct Data {
  at::Tensor x, target;
};

Data regression_data() {
  torch::manual_seed(5);
  const at::Tensor x = torch::randn({256, 32});
  return {x, torch::sin(x.narrow(1, 0, 8) * 2)};
}

TEST(LsqModule, AdamTrainsTheLearnedAmaxAndLowersTheLoss) {
  auto model = mlp();
  const Data d = regression_data();
  quantize(model,
           weight_only(kInt4Blocks,
                       R"({"method": "lsq", "scale_algorithm": {"method": "max"}})"),
           [&](torch::nn::Module&) { model->forward(d.x); });

  // the post amaxes are parameters (and only they learn), the pre amaxes frozen buffers
  std::vector<at::Tensor> scales;
  for (const auto& p : model->named_parameters()) {
    const std::string& n = p.key();
    if (n.size() > 5 && n.compare(n.size() - 5, 5, "_amax") == 0) {
      EXPECT_TRUE(p.value().requires_grad()) << n;
      scales.push_back(p.value());
    } else {
      p.value().requires_grad_(false);  // train the scales alone
    }
  }
  ASSERT_EQ(scales.size(), 2u);
  std::map<std::string, at::Tensor> buffers;
  for (const auto& b : model->named_buffers()) buffers[b.key()] = b.value();
  EXPECT_EQ(buffers.count("0.weight_quantizer._amax_pre"), 1u);
  TensorQuantizer q0 = weight_quantizer(*model, "0");
  EXPECT_EQ(q0->learnable_amax(), std::vector<std::string>{"post"});
  const at::Tensor post_before = q0->amax_post()->detach().clone();
  const at::Tensor pre_before = q0->amax_pre()->detach().clone();
  EXPECT_TRUE(torch::equal(post_before, pre_before));  // both start at the calibrated amax

  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  auto loss_now = [&] { return torch::mse_loss(model->forward(d.x), d.target); };
  const double start = loss_now().item<double>();
  for (int step = 0; step < 30; ++step) {
    optimizer.zero_grad();
    loss_now().backward();
    optimizer.step();
  }
  const double end = loss_now().item<double>();
  EXPECT_LT(end, start);
  EXPECT_FALSE(torch::equal(q0->amax_post()->detach(), post_before));
  EXPECT_TRUE(torch::equal(q0->amax_pre()->detach(), pre_before));  // pre is not learned
  // the module's parameter is the tensor the quantizer applies
  EXPECT_TRUE(q0->amax()->is_same(scales[0]));
}

// The C++ snippet of docs/training.md ("Learned scales (LSQ)"), as written there.
TEST(LsqModule, TrainingDocSnippet) {
  torch::manual_seed(0);
  torch::nn::Sequential model(torch::nn::Linear(32, 64), torch::nn::ReLU(),
                              torch::nn::Linear(64, 8));
  const at::Tensor x = torch::randn({256, 32});
  const at::Tensor target = torch::sin(x.narrow(1, 0, 8) * 2);

  mopt::QuantizeConfig config = mopt::predefined_config("INT4_BLOCKWISE_WEIGHT_ONLY_CFG");
  config.set(mopt::QuantCfgEntry::make("*weight_quantizer",
                                       R"({"num_bits": 4, "block_sizes": {"-1": 16}})"));
  config.algorithm = R"({"method": "lsq", "scale_algorithm": {"method": "max"},
                         "learnable_amax": ["post"]})";
  mopt::quantize(model, config, [&](torch::nn::Module&) { model->forward(x); });

  // the learned amaxes are parameters ("0.weight_quantizer._amax"): parameters() holds them
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  const at::Tensor first = model[0]->as<mopt::QuantLinear>()->weight_quantizer()->amax()->clone();
  for (int step = 0; step < 20; ++step) {
    optimizer.zero_grad();
    torch::mse_loss(model->forward(x), target).backward();
    optimizer.step();
  }
  const at::Tensor now = *model[0]->as<mopt::QuantLinear>()->weight_quantizer()->amax();
  const std::string path = temp_path("lsq_model.safetensors");
  mopt::save(model, path);  // Python's mto.restore reads it; mopt::restore reads mto.save's

  EXPECT_FALSE(torch::equal(first, now));
  torch::manual_seed(1);
  torch::nn::Sequential restored(torch::nn::Linear(32, 64), torch::nn::ReLU(),
                                 torch::nn::Linear(64, 8));
  mopt::restore(restored, path);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(restored->forward(x), model->forward(x)));
  std::remove(path.c_str());
}

// d sum(g * f) / d a of the straight-through surrogate f = (a_post / B) * (clamp(w B / a_pre,
// lo, hi) + r0), r0 the rounding residual of the output y0 held fixed; float64 central
// differences, summed to the amax shape.
std::pair<at::Tensor, at::Tensor> finite_difference(const at::Tensor& w, const at::Tensor& g,
                                                    const at::Tensor& y0, const at::Tensor& a_pre,
                                                    const at::Tensor& a_post, double lo,
                                                    double hi, double bound) {
  const at::Tensor wd = w.to(at::kDouble), gd = g.to(at::kDouble);
  const at::Tensor pre = a_pre.detach().to(at::kDouble), post = a_post.detach().to(at::kDouble);
  const at::Tensor r0 = y0.to(at::kDouble) * bound / post - (wd * bound / pre).clamp(lo, hi);
  auto f = [&](const at::Tensor& ap, const at::Tensor& aq) {
    return gd * (aq / bound) * ((wd * bound / ap).clamp(lo, hi) + r0);
  };
  const double h = 1e-7;
  const at::Tensor d_pre = (f(pre * (1 + h), post) - f(pre * (1 - h), post)) / (2 * h * pre);
  const at::Tensor d_post = (f(pre, post * (1 + h)) - f(pre, post * (1 - h))) / (2 * h * post);
  return {at::sum_to(d_pre, a_pre.sizes()), at::sum_to(d_post, a_post.sizes())};
}

void expect_close(const at::Tensor& got, const at::Tensor& want, const at::Tensor& w,
                  const at::Tensor& g, const at::Tensor& amax) {
  ASSERT_TRUE(got.defined());
  // fp32 terms of size |w| / amax + 1 each: a few ulps of their summed magnitude
  const at::Tensor mass = at::sum_to(
      (g.to(at::kDouble).abs() * (w.to(at::kDouble).abs() / amax.detach().to(at::kDouble) + 1)),
      amax.sizes());
  const at::Tensor err = (got.to(at::kDouble) - want).abs();
  EXPECT_TRUE(at::all(err <= mass * 1e-5 + 1e-6).item<bool>())
      << "max error " << err.max().item<double>();
}

class LsqLayerGradient : public ::testing::TestWithParam<bool> {};

TEST_P(LsqLayerGradient, MatchesFloat64FiniteDifference) {
  const bool tied = GetParam();
  torch::manual_seed(3);
  torch::nn::Sequential model(torch::nn::Linear(24, 16));
  const at::Tensor x = torch::randn({32, 24});
  const std::string algorithm =
      std::string(R"({"method": "lsq", "scale_algorithm": {"method": "max"},
                      "learnable_amax": ["pre", "post"], "tied_amax": )") +
      (tied ? "true" : "false") + "}";
  quantize(model, weight_only(R"({"num_bits": 4, "axis": 0})", algorithm), nullptr);
  TensorQuantizer q = weight_quantizer(*model, "0");
  ASSERT_TRUE(q->lsq().has_value());
  EXPECT_EQ(q->lsq()->tied, tied);
  // below the max, pre and post apart: the clamp binds for some elements, none on its edge
  q->set_amax(*q->amax() * 0.83);
  if (!tied) q->set_amax_pre(*q->amax_pre() * 0.9);

  const at::Tensor g = torch::randn({32, 16});
  (model->forward(x) * g).sum().backward();
  // the layer computes x Wq^T + b, so the loss's gradient to Wq is g^T x
  const at::Tensor gw = g.t().matmul(x);
  auto* layer = model[0]->as<QuantLinear>();
  ASSERT_NE(layer, nullptr);
  at::Tensor wq;
  {
    torch::NoGradGuard no_grad;
    wq = q->forward(layer->weight);
  }
  const auto [d_pre, d_post] = finite_difference(layer->weight.detach(), gw, wq, *q->amax_pre(),
                                                 *q->amax_post(), -8, 7, 7);
  if (tied) {
    EXPECT_TRUE(q->amax()->is_same(*q->amax_pre()));
    expect_close(q->amax()->grad(), d_pre + d_post, layer->weight.detach(), gw, *q->amax());
  } else {
    expect_close(q->amax_pre()->grad(), d_pre, layer->weight.detach(), gw, *q->amax_pre());
    expect_close(q->amax_post()->grad(), d_post, layer->weight.detach(), gw, *q->amax_post());
  }
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, LsqLayerGradient, ::testing::Bool());

TEST(LsqModule, SaveRestoreKeepsLearnedScales) {
  auto model = mlp();
  const Data d = regression_data();
  quantize(model,
           weight_only(kInt4Blocks, R"({"method": "lsq", "learnable_amax": ["pre", "post"]})"),
           [&](torch::nn::Module&) { model->forward(d.x); });
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-2));
  for (int step = 0; step < 3; ++step) {
    optimizer.zero_grad();
    torch::mse_loss(model->forward(d.x), d.target).backward();
    optimizer.step();
  }
  TensorQuantizer q0 = weight_quantizer(*model, "0");
  ASSERT_FALSE(torch::equal(*q0->amax_pre(), *q0->amax_post()));  // trained apart
  const std::string path = temp_path("lsq.safetensors");
  save(model, path);

  auto fresh = mlp(9);  // other weights: everything comes from the file
  restore(fresh, path);
  expect_same_tensors(tensors_of(*model), tensors_of(*fresh));
  {
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::equal(model->forward(d.x), fresh->forward(d.x)));
  }
  for (const char* layer : {"0", "2"}) {
    TensorQuantizer a = weight_quantizer(*model, layer), b = weight_quantizer(*fresh, layer);
    EXPECT_EQ(b->learnable_amax(), (std::vector<std::string>{"pre", "post"}));
    EXPECT_TRUE(b->amax_pre()->requires_grad() && b->amax_post()->requires_grad());
    EXPECT_EQ(a->extra_repr(), b->extra_repr());
    EXPECT_NE(b->extra_repr().find("learn=['pre', 'post']"), std::string::npos);
  }
  int learned = 0;
  for (const auto& p : fresh->named_parameters()) {
    learned += p.key().find("_amax") != std::string::npos;
  }
  EXPECT_EQ(learned, 4);
  // a clone keeps them too, as separate parameters
  auto copy = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(fresh->clone());
  TensorQuantizer c0 = weight_quantizer(*copy, "0");
  ASSERT_TRUE(c0->lsq().has_value());
  EXPECT_TRUE(torch::equal(*c0->amax_pre(), *weight_quantizer(*fresh, "0")->amax_pre()));
  EXPECT_FALSE(c0->amax_pre()->is_same(*weight_quantizer(*fresh, "0")->amax_pre()));
  // recalibrating replaces the learned scales by the calibrated amax
  calibrate(*fresh, algorithms::parse_calibration_steps(R"("max")"),
            [&](torch::nn::Module&) { fresh->forward(d.x); });
  EXPECT_FALSE(weight_quantizer(*fresh, "0")->lsq().has_value());
  for (const auto& p : fresh->named_parameters()) {
    EXPECT_EQ(p.key().find("_amax"), std::string::npos) << p.key();
  }
  std::remove(path.c_str());
}

// torch::save / torch::load of one quantizer: the learned amaxes are written as parameters and
// read back into a quantizer with the same learned-scales state; one without it refuses them.
TEST(LsqModule, TorchSaveLoadOfAQuantizer) {
  torch::manual_seed(6);
  const auto cfg = QuantizerAttributeConfig::from_json(R"({"num_bits": 4, "axis": 0})");
  TensorQuantizer q(cfg);
  q->set_amax(torch::rand({6, 1}) + 0.5);
  q->enable_lsq({true, false, false});  // pre learns, post frozen
  q->set_amax_pre(*q->amax() * 0.8);
  EXPECT_EQ(q->parameters().size(), 1u);
  EXPECT_TRUE(q->parameters()[0].is_same(*q->amax_pre()));
  const at::Tensor w = torch::randn({6, 10});
  const at::Tensor y = q->forward(w);
  std::stringstream stream;
  torch::save(q, stream);

  TensorQuantizer fresh(cfg);
  fresh->set_amax(torch::ones({6, 1}));
  fresh->enable_lsq({true, false, false});
  torch::load(fresh, stream);
  EXPECT_TRUE(torch::equal(*fresh->amax_pre(), *q->amax_pre()));
  EXPECT_TRUE(torch::equal(*fresh->amax_post(), *q->amax_post()));
  EXPECT_TRUE(torch::equal(fresh->forward(w), y));
  EXPECT_TRUE(fresh->amax_pre()->requires_grad());
  EXPECT_FALSE(fresh->amax_post()->requires_grad());

  stream.clear();
  stream.seekg(0);
  TensorQuantizer plain(cfg);
  plain->set_amax(torch::ones({6, 1}));
  EXPECT_THROW(torch::load(plain, stream), c10::Error);
  EXPECT_TRUE(torch::equal(*plain->amax(), torch::ones({6, 1})));  // unchanged
  EXPECT_FALSE(plain->lsq().has_value());
}

TEST(LsqModule, BadInputLeavesTheModelUnchanged) {
  const Data d = regression_data();
  auto loop_of = [&](torch::nn::Sequential& m) {
    return [&](torch::nn::Module&) { m->forward(d.x); };
  };
  // static NVFP4 blocks: refused by name before anything changes
  auto model = mlp();
  auto before = tensors_of(*model);
  try {
    QuantizeConfig nvfp4 = predefined_config("NVFP4_DEFAULT_CFG");
    nvfp4.algorithm = R"("lsq")";
    quantize(model, nvfp4, loop_of(model));
    ADD_FAILURE() << "lsq on NVFP4 static blocks succeeded";
  } catch (const c10::NotImplementedError& e) {
    EXPECT_NE(std::string(e.what()).find("lsq cannot learn the scales of '0.weight_quantizer'"),
              std::string::npos) << e.what();
  }
  EXPECT_FALSE(is_quantized(*model));
  expect_same_tensors(before, tensors_of(*model));

  // no eligible weight quantizer (asymmetric INT4): ValueError before scale_algorithm runs
  quantize(model, weight_only(R"({"num_bits": 4, "block_sizes": {"-1": 16}, "asymmetric":
      true})", R"("max")"), loop_of(model));
  before = tensors_of(*model);
  EXPECT_THROW(calibrate(*model, algorithms::parse_calibration_steps(R"("lsq")"), loop_of(model)),
               c10::ValueError);
  expect_same_tensors(before, tensors_of(*model));

  // bad options: refused when parsed
  EXPECT_THROW(algorithms::parse_calibration_steps(
                   R"({"method": "lsq", "learnable_amax": ["middle"]})"),
               c10::ValueError);
  EXPECT_THROW(algorithms::parse_calibration_steps(
                   R"({"method": "lsq", "learnable_amax": ["post"], "tied_amax": true})"),
               c10::ValueError);

  // enable_lsq without an amax, set_amax_pre without untied learned scales
  TensorQuantizer fresh_q(QuantizerAttributeConfig{});
  EXPECT_THROW(fresh_q->enable_lsq({false, true, false}), c10::ValueError);
  fresh_q->set_amax(torch::tensor(1.0f));
  EXPECT_THROW(fresh_q->set_amax_pre(torch::tensor(1.0f)), c10::ValueError);
  EXPECT_FALSE(fresh_q->lsq().has_value());

  // a file whose untied pre amax holds NaN: restore refuses it and the model stays fresh
  auto trained = mlp();
  quantize(trained,
           weight_only(kInt4Blocks, R"({"method": "lsq", "learnable_amax": ["pre", "post"]})"),
           loop_of(trained));
  const std::string path = temp_path("good.safetensors");
  save(trained, path);
  opt::SafetensorsFile file = opt::load_safetensors(path);
  for (auto& [name, t] : file.tensors) {
    if (name == "2.weight_quantizer._amax_pre") t = t.clone().index_fill_(0, torch::tensor(1), NAN);
  }
  const std::string bad = temp_path("nan_pre.safetensors");
  opt::save_safetensors(bad, file.tensors, file.metadata);
  auto target = mlp(4);
  before = tensors_of(*target);
  try {
    restore(target, bad);
    ADD_FAILURE() << "restore of a NaN _amax_pre succeeded";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("2.weight_quantizer"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(is_quantized(*target));
  EXPECT_TRUE(applied_modes(*target).empty());
  expect_same_tensors(before, tensors_of(*target));
  restore(target, path);  // the good file still restores into it
  EXPECT_TRUE(weight_quantizer(*target, "2")->lsq().has_value());
  std::remove(path.c_str());
  std::remove(bad.c_str());
}

}  // namespace
}  // namespace mopt
