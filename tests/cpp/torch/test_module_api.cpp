// The C++ module API: TensorQuantizer against the functional definition and a plain ATen
// reference, mopt::quantize on torch::nn::Sequential and on a custom module, config JSON,
// fnmatch, errors, and rollback of a failed quantize.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "mopt/mopt.h"

namespace mopt {
namespace {

// Plain ATen integer fake quant (round half to even, clamp, rescale in fp32), sharing no code
// with the library.
at::Tensor naive_fake_quant_int(const at::Tensor& x, const at::Tensor& amax, int bits) {
  const double maxbound = (1 << (bits - 1)) - 1;
  at::Tensor scale = maxbound / amax.to(at::kFloat);
  return at::round(x * scale).clamp(-maxbound - 1, maxbound) / scale;
}

at::Tensor naive_amax(const at::Tensor& x, std::vector<int64_t> reduce_dims) {
  return x.abs().amax(reduce_dims, /*keepdim=*/true);
}

std::string summary_of(torch::nn::Module& m) {
  std::ostringstream os;
  print_quant_summary(m, os);
  return os.str();
}

// ---------------------------------------------------------------------------------------------
// TensorQuantizer

TEST(TensorQuantizer, CalibratesAndQuantizesLikeTheReference) {
  torch::manual_seed(0);
  TensorQuantizer q(QuantizerAttributeConfig::from_json(R"({"num_bits": 8, "axis": 0})"));
  const at::Tensor a = torch::randn({6, 10}), b = torch::randn({6, 10}) * 3;
  q->disable_quant();
  q->enable_calib();
  EXPECT_TRUE(at::equal(q->forward(a), a));  // calibration only: output unchanged
  q->forward(b);
  q->load_calib_amax();
  q->disable_calib();
  q->enable_quant();
  const at::Tensor amax = at::maximum(naive_amax(a, {1}), naive_amax(b, {1}));
  ASSERT_TRUE(q->amax().has_value());
  EXPECT_TRUE(at::equal(*q->amax(), amax));
  const at::Tensor x = torch::randn({6, 10}) * 2;
  EXPECT_TRUE(at::equal(q->forward(x), naive_fake_quant_int(x, amax, 8)));
  // Same as the functional definition the Python quantizer calls.
  EXPECT_TRUE(at::equal(q->forward(x), quantize_tensor(x, amax, c10::nullopt,
                                                       q->attribute_json())));
}

TEST(TensorQuantizer, PreQuantScaleThenDisabledAndUncalibrated) {
  torch::manual_seed(1);
  TensorQuantizer q;
  const at::Tensor x = torch::randn({4, 8});
  const at::Tensor s = torch::rand({8}) + 0.5;
  q->set_pre_quant_scale(s);
  // Uncalibrated static quantizer: dynamic amax of the scaled input.
  const at::Tensor xs = x * s;
  EXPECT_TRUE(at::equal(q->forward(x), naive_fake_quant_int(xs, naive_amax(xs, {0, 1}), 8)));
  q->disable();
  EXPECT_TRUE(at::equal(q->forward(x), xs));
  q->set_pre_quant_scale(c10::nullopt);
  EXPECT_TRUE(at::equal(q->forward(x), x));
}

TEST(TensorQuantizer, BuffersFollowTheState) {
  TensorQuantizer q;
  EXPECT_EQ(q->named_buffers().size(), 0u);
  q->set_amax(torch::tensor(2.0));
  ASSERT_EQ(q->named_buffers().size(), 1u);
  EXPECT_TRUE(q->named_buffers().contains("_amax"));
  q->set_pre_quant_scale(torch::ones({3}));
  EXPECT_TRUE(q->named_buffers().contains("_pre_quant_scale"));
  EXPECT_THROW(q->set_amax(torch::ones({3})), c10::Error);  // shape change refused
  q->set_amax(torch::tensor(4.0));
  EXPECT_FLOAT_EQ(q->amax()->item<float>(), 4.0f);
  q->reset_amax();
  EXPECT_FALSE(q->amax().has_value());
  EXPECT_FALSE(q->named_buffers().contains("_amax"));
}

TEST(TensorQuantizer, ReprMatchesPythonFormat) {
  TensorQuantizer q(QuantizerAttributeConfig::from_json(R"({"num_bits": 8, "axis": 0})"));
  q->set_amax(torch::linspace(0.186, 0.25, 32).reshape({32, 1}));
  EXPECT_EQ(q->extra_repr(),
            "8 bit fake axis=0 amax=[1.86e-01, 2.50e-01](32) calibrator=MaxCalibrator quant");
  TensorQuantizer fp8(QuantizerAttributeConfig::from_json(R"({"num_bits": [4, 3]})"));
  EXPECT_EQ(fp8->extra_repr(),
            "(4, 3) bit fake per-tensor amax=dynamic calibrator=MaxCalibrator quant");
  fp8->set_amax(torch::tensor(448.0));
  fp8->disable_quant();
  fp8->enable_calib();
  EXPECT_EQ(fp8->extra_repr(),
            "(4, 3) bit fake per-tensor amax=4.48e+02 calibrator=MaxCalibrator calib");
  TensorQuantizer int4(QuantizerAttributeConfig::from_json(
      R"({"num_bits": 4, "block_sizes": {"-1": 128}, "narrow_range": true, "unsigned": true})"));
  EXPECT_EQ(int4->extra_repr(),
            "unsigned 4 bit narrow fake block_sizes={-1: 128, 'type': 'static'}, amax=dynamic "
            "calibrator=MaxCalibrator quant");
  TensorQuantizer nvfp4(QuantizerAttributeConfig::from_json(
      R"({"num_bits": [2, 1],
          "block_sizes": {"-1": 16, "type": "dynamic", "scale_bits": [4, 3]}})"));
  EXPECT_EQ(nvfp4->extra_repr(),
            "(2, 1) bit fake block_sizes={-1: 16, 'type': 'dynamic', 'scale_bits': (4, 3)}, "
            "amax=dynamic calibrator=MaxCalibrator quant");
  TensorQuantizer multi(QuantizerAttributeConfig::from_json(R"({"axis": [0, 2]})"));
  EXPECT_EQ(multi->extra_repr(),
            "8 bit fake axis=(0, 2) amax=dynamic calibrator=MaxCalibrator quant");
  multi->disable();
  EXPECT_EQ(multi->extra_repr(), "disabled");
  std::ostringstream os;
  q->pretty_print(os);
  EXPECT_EQ(os.str(), "TensorQuantizer(" + q->extra_repr() + ")");
}

TEST(TensorQuantizer, CloneAndSaveLoad) {
  torch::manual_seed(2);
  TensorQuantizer q(QuantizerAttributeConfig::from_json(R"({"num_bits": 8, "axis": 0})"));
  q->set_amax(torch::rand({5, 1}) + 0.1);
  auto copy = std::dynamic_pointer_cast<TensorQuantizerImpl>(q->clone());
  ASSERT_TRUE(copy);
  EXPECT_TRUE(at::equal(*copy->amax(), *q->amax()));
  copy->set_amax(torch::ones({5, 1}));
  EXPECT_FALSE(at::equal(*copy->amax(), *q->amax()));  // deep copy

  std::stringstream stream;
  torch::save(q, stream);
  TensorQuantizer fresh(QuantizerAttributeConfig::from_json(R"({"num_bits": 8, "axis": 0})"));
  torch::load(fresh, stream);
  ASSERT_TRUE(fresh->amax().has_value());
  EXPECT_TRUE(at::equal(*fresh->amax(), *q->amax()));
}

// Asymmetric: calibration stores amax (half width of [min, max]) and the zero point; both are
// buffers that clone, save and load; a zero point outside the codes is refused and changes nothing.
TEST(TensorQuantizer, AsymmetricZeroPointsCalibrateSaveAndLoad) {
  const auto cfg =
      QuantizerAttributeConfig::from_json(R"({"num_bits": 4, "axis": 0, "asymmetric": true})");
  TensorQuantizer q(cfg);
  const at::Tensor x = torch::stack({torch::linspace(-0.5, 2.5, 31), torch::linspace(0, 1, 31)});
  q->core().enable_calib();
  q->core().disable_quant();
  q->forward(x);
  q->load_calib_amax();
  q->core().disable_calib();
  q->core().enable_quant();
  ASSERT_TRUE(q->zero_point().has_value());
  EXPECT_TRUE(at::allclose(*q->amax(), torch::tensor({{1.5f}, {0.5f}})));
  // row 0: step 3/15, zero point round(-8 + 0.5 / 0.2) = -5 (half even); row 1: -8
  EXPECT_TRUE(at::equal(*q->zero_point(), torch::tensor({{-6.0f}, {-8.0f}})) ||
              at::equal(*q->zero_point(), torch::tensor({{-5.0f}, {-8.0f}})));
  const at::Tensor y = q->forward(x);
  EXPECT_LE((y - x).abs().max().item<float>(), 0.1f + 1e-6f);  // half a step of row 0
  EXPECT_EQ(y[1][0].item<float>(), 0.0f);  // zero stays exact

  std::stringstream stream;
  torch::save(q, stream);
  TensorQuantizer fresh(cfg);
  torch::load(fresh, stream);
  ASSERT_TRUE(fresh->zero_point().has_value());
  EXPECT_TRUE(at::equal(*fresh->zero_point(), *q->zero_point()));
  EXPECT_TRUE(at::equal(fresh->forward(x), y));

  const at::Tensor before = q->zero_point()->clone();
  EXPECT_THROW(q->set_zero_point(torch::tensor({{8.0f}, {0.0f}})), c10::ValueError);
  EXPECT_THROW(q->set_zero_point(torch::tensor({{0.5f}, {0.0f}})), c10::ValueError);
  EXPECT_TRUE(at::equal(*q->zero_point(), before));
  TensorQuantizer sym(QuantizerAttributeConfig::from_json(R"({"num_bits": 4, "axis": 0})"));
  EXPECT_THROW(sym->set_zero_point(torch::zeros({2, 1})), c10::ValueError);
}

TEST(TensorQuantizer, HistogramCalibratorCalibrates) {
  TensorQuantizer q(QuantizerAttributeConfig::from_json(R"({"calibrator": "histogram"})"));
  EXPECT_EQ(q->extra_repr(),
            "8 bit fake per-tensor amax=dynamic calibrator=HistogramCalibrator quant");
  torch::manual_seed(3);
  const at::Tensor x = torch::randn({64, 32});
  q->enable_calib();
  q->collect(x);
  // a histogram needs a method: the percentile of |x| is below its max
  EXPECT_THROW(q->load_calib_amax(), c10::TypeError);
  q->load_calib_amax(AmaxRequest{HistogramMethod::kPercentile, {1, 128, 99.0}});
  ASSERT_TRUE(q->amax().has_value());
  EXPECT_GT(q->amax()->item<float>(), 0.0f);
  EXPECT_LT(q->amax()->item<float>(), x.abs().max().item<float>());
}

// ---------------------------------------------------------------------------------------------
// Config

TEST(QuantizeConfigJson, PredefinedRoundTrip) {
  for (const auto& name : predefined_config_names()) {
    const QuantizeConfig c = predefined_config(name);
    const std::string j = c.to_json();
    EXPECT_EQ(QuantizeConfig::from_json(j).to_json(), j) << name;
  }
  const QuantizeConfig int8 = configs::int8_default();
  ASSERT_EQ(int8.quant_cfg.size(), 15u);
  EXPECT_EQ(int8.quant_cfg[0].pattern, "*weight_quantizer");
  EXPECT_EQ(int8.quant_cfg[2].pattern, "nn.BatchNorm1d");
  EXPECT_EQ(int8.quant_cfg[2].kind, QuantCfgKind::kClassScoped);
  EXPECT_EQ(int8.quant_cfg.back().pattern, "default");
  EXPECT_EQ(configs::w4a8_awq_beta().find("*weight_quantizer")->kind, QuantCfgKind::kSequential);
  EXPECT_THROW(predefined_config("INT9_CFG"), c10::ValueError);
}

TEST(QuantizeConfigJson, DefaultsAndSet) {
  const QuantizeConfig d = QuantizeConfig::from_json("{}");
  EXPECT_EQ(d.to_json(),
            R"({"quant_cfg":{"default":{"num_bits":8,"axis":null}},"algorithm":"max"})");
  QuantizeConfig c = configs::int8_default();
  c.set(QuantCfgEntry::make("*input_quantizer", R"({"enable": false})"));
  EXPECT_EQ(c.quant_cfg.size(), 15u);  // replaced in place
  EXPECT_EQ(c.quant_cfg[1].attributes[0], R"({"enable": false})");
  c.set(QuantCfgEntry::make("*fc2*", R"({"enable": false})"));
  EXPECT_EQ(c.quant_cfg.back().pattern, "*fc2*");
  c.algorithm = "max";  // bare-name shorthand
  EXPECT_NE(c.to_json().find(R"("algorithm":"max")"), std::string::npos);
}

TEST(QuantizeConfigJson, RejectsBadConfigs) {
  EXPECT_THROW(QuantizeConfig::from_json(R"({"quant_cfg": {}, "algoritm": "max"})"),
               c10::ValueError);
  EXPECT_THROW(QuantizeConfig::from_json(R"({"quant_cfg": {"*w*": {"num_bitz": 8}}})"),
               c10::ValueError);
  EXPECT_THROW(QuantizeConfig::from_json(R"({"quant_cfg": {"nn.Linear": {"enable": false}}})"),
               c10::ValueError);
  EXPECT_THROW(QuantizeConfig::from_json(R"({"quant_cfg": {"*w*": 3}})"), c10::ValueError);
  EXPECT_THROW(QuantizeConfig::from_json(R"({"quant_cfg": {}, "algorithm": {"alpha": 1}})"),
               c10::ValueError);
  EXPECT_THROW(QuantizeConfig::from_json(R"({"quant_cfg": {}, "algorithm": 3})"), c10::TypeError);
  EXPECT_THROW(QuantizeConfig::from_json(R"({"quant_cfg": {"*": {"bias": {"-1": 1}}}})"),
               c10::NotImplementedError);
  try {
    QuantizeConfig::from_json(R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 1}}})");
    FAIL() << "expected ValueError";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("quant_cfg['*weight_quantizer']"), std::string::npos);
  }
  QuantizeConfig dup;
  dup.quant_cfg.push_back(QuantCfgEntry::make("default", "{}"));
  EXPECT_THROW(dup.validate(), c10::ValueError);
}

TEST(Fnmatch, PythonSemantics) {
  EXPECT_TRUE(fnmatch("layers.0.weight_quantizer", "*weight_quantizer"));
  EXPECT_TRUE(fnmatch("a.b.c", "*"));
  EXPECT_TRUE(fnmatch("", "*"));
  EXPECT_FALSE(fnmatch("", "?"));
  EXPECT_TRUE(fnmatch("attn.k_bmm_quantizer", "*[kv]_bmm_quantizer"));
  EXPECT_FALSE(fnmatch("attn.q_bmm_quantizer", "*[kv]_bmm_quantizer"));
  EXPECT_TRUE(fnmatch("attn.q_bmm_quantizer", "*[!kv]_bmm_quantizer"));
  EXPECT_TRUE(fnmatch("x3", "x[0-9]"));
  EXPECT_FALSE(fnmatch("x3", "x[9-0]"));   // empty range
  EXPECT_TRUE(fnmatch("x3", "x[!9-0]"));   // negated empty range: any character
  EXPECT_TRUE(fnmatch("x-", "x[a-]"));     // trailing '-' is a member
  EXPECT_TRUE(fnmatch("x]", "x[]]"));      // leading ']' is a member
  EXPECT_TRUE(fnmatch("x[", "x["));        // unclosed '[' is literal
  EXPECT_TRUE(fnmatch("a\\b", "a\\b"));    // no escapes
  EXPECT_FALSE(fnmatch("Lm_head", "*lm_head*"));  // case sensitive
  EXPECT_TRUE(fnmatch("model.lm_head.input_quantizer", "*lm_head*"));
  EXPECT_TRUE(fnmatch("aXbXc", "a*b*c"));
  EXPECT_FALSE(fnmatch("aXbXcd", "a*b*c"));
  EXPECT_TRUE(fnmatch("\xc3\xa9", "?"));  // one code point
}

// ---------------------------------------------------------------------------------------------
// quantize on torch::nn::Sequential

torch::nn::Sequential make_mlp() {
  torch::manual_seed(3);
  return torch::nn::Sequential(torch::nn::Linear(12, 16), torch::nn::ReLU(),
                               torch::nn::Linear(16, 5));
}

std::vector<at::Tensor> calib_batches(int n, int64_t features) {
  std::vector<at::Tensor> batches;
  for (int i = 0; i < n; ++i) batches.push_back(torch::randn({8, features}));
  return batches;
}

TEST(Quantize, SequentialInt8MatchesReference) {
  torch::nn::Sequential mlp = make_mlp();
  auto* l1 = mlp[0]->as<torch::nn::LinearImpl>();
  auto* l2 = mlp[2]->as<torch::nn::LinearImpl>();
  const at::Tensor w1 = l1->weight.detach().clone(), b1 = l1->bias.detach().clone();
  const at::Tensor w2 = l2->weight.detach().clone(), b2 = l2->bias.detach().clone();
  const void* w1_storage = l1->weight.data_ptr();
  const auto batches = calib_batches(3, 12);
  // Reference amax: float activations seen during calibration.
  at::Tensor in1 = torch::zeros({}), in2 = torch::zeros({});
  for (const auto& b : batches) {
    in1 = at::maximum(in1, b.abs().max());
    in2 = at::maximum(in2, torch::relu(torch::linear(b, w1, b1)).abs().max());
  }
  mopt::quantize(mlp, configs::int8_default(), [&](torch::nn::Module&) {
    for (const auto& b : batches) mlp->forward(b);
  });
  ASSERT_NE(mlp[0]->as<QuantLinearImpl>(), nullptr);
  ASSERT_NE(mlp[2]->as<QuantLinearImpl>(), nullptr);
  EXPECT_EQ(mlp[0]->as<QuantLinearImpl>()->weight.data_ptr(), w1_storage);  // shared, not copied
  const at::Tensor x = torch::randn({4, 12});
  at::Tensor h = torch::linear(naive_fake_quant_int(x, in1, 8),
                               naive_fake_quant_int(w1, naive_amax(w1, {1}), 8), b1);
  h = torch::relu(h);
  const at::Tensor ref = torch::linear(naive_fake_quant_int(h, in2, 8),
                                       naive_fake_quant_int(w2, naive_amax(w2, {1}), 8), b2);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(mlp->forward(x), ref));
  auto* q1 = mlp[0]->as<QuantLinearImpl>();
  EXPECT_TRUE(at::equal(q1->input_quantizer()->amax()->reshape({}), in1));
  EXPECT_TRUE(at::equal(*q1->weight_quantizer()->amax(), naive_amax(w1, {1})));
  EXPECT_FALSE(q1->output_quantizer()->is_enabled());
}

// step_percentile: a forward loop of 2 sampling runs of 3 steps; the input amax of the first
// layer is the median over steps of each step's max |x| (weights keep max calibration).
TEST(Quantize, StepPercentileTakesThePercentileOverSteps) {
  torch::nn::Sequential mlp = make_mlp();
  const auto batches = calib_batches(6, 12);
  std::vector<float> step_max(3, 0.0f);
  for (size_t i = 0; i < batches.size(); ++i) {
    step_max[i % 3] = std::max(step_max[i % 3], batches[i].abs().max().item<float>());
  }
  std::sort(step_max.begin(), step_max.end());
  QuantizeConfig cfg = configs::int8_default();
  cfg.algorithm = R"({"method": "step_percentile", "num_steps": 3, "percentile": 50})";
  mopt::quantize(mlp, cfg, [&](torch::nn::Module&) {
    for (const auto& b : batches) mlp->forward(b);
  });
  auto* q1 = mlp[0]->as<QuantLinearImpl>();
  EXPECT_FLOAT_EQ(q1->input_quantizer()->amax()->item<float>(), step_max[1]);
  const at::Tensor w1 = q1->weight;
  EXPECT_TRUE(at::equal(*q1->weight_quantizer()->amax(), naive_amax(w1, {1})));
  // the calibrators were swapped back: the quantizer holds its max calibrator again
  EXPECT_EQ(q1->input_quantizer()->calibrator()->class_name(), "MaxCalibrator");
}

TEST(Quantize, SummaryFormat) {
  torch::nn::Sequential mlp = make_mlp();
  mopt::quantize(mlp, configs::int8_weight_only());
  const std::string s = summary_of(*mlp);
  std::istringstream lines(s);
  std::string line;
  std::vector<std::string> all;
  while (std::getline(lines, line)) all.push_back(line);
  ASSERT_EQ(all.size(), 7u);
  EXPECT_EQ(all[0], "0.input_quantizer" + std::string(80 - 17, ' ') + " TensorQuantizer(disabled)");
  EXPECT_EQ(all[1].substr(0, 18), "0.output_quantizer");
  EXPECT_EQ(all[2].find("0.weight_quantizer"), 0u);
  EXPECT_NE(all[2].find(" TensorQuantizer(8 bit fake axis=0 amax=["), std::string::npos);
  EXPECT_EQ(all[6], "6 TensorQuantizers found in model");
  EXPECT_TRUE(is_quantized(*mlp));
  EXPECT_EQ(named_quantizers(*mlp)[2].second->quantizer_name(), "0.weight_quantizer");
}

TEST(Quantize, Fp8AndPerTokenMatchFunctionalDefinition) {
  for (const auto& cfg : {configs::fp8_default(), configs::fp8_per_channel_per_token(),
                          configs::int4_blockwise_weight_only()}) {
    torch::nn::Sequential mlp = make_mlp();
    torch::nn::Sequential ref_mlp = make_mlp();  // same seed, same weights
    const auto batches = calib_batches(2, 12);
    mopt::quantize(mlp, cfg, [&](torch::nn::Module&) {
      for (const auto& b : batches) mlp->forward(b);
    });
    // Rebuild the forward from the quantizers' own configs and amax through quantize_tensor.
    const at::Tensor x = torch::randn({3, 12});
    torch::NoGradGuard no_grad;
    at::Tensor h = x;
    for (size_t i : {0, 2}) {
      auto* q = mlp[i]->as<QuantLinearImpl>();
      auto* f = ref_mlp[i]->as<torch::nn::LinearImpl>();
      auto in = q->input_quantizer(), wq = q->weight_quantizer();
      const at::Tensor hq =
          in->is_enabled() ? quantize_tensor(h, in->amax(), c10::nullopt, in->attribute_json()) : h;
      const at::Tensor w =
          quantize_tensor(f->weight, wq->amax(), c10::nullopt, wq->attribute_json());
      h = torch::linear(hq, w, f->bias);
      if (i == 0) h = torch::relu(h);
    }
    EXPECT_TRUE(at::equal(mlp->forward(x), h));
  }
}

TEST(Quantize, WeightOnlyWithoutForwardLoop) {
  torch::nn::Sequential mlp = make_mlp();
  const at::Tensor w1 = mlp[0]->as<torch::nn::LinearImpl>()->weight.detach().clone();
  mopt::quantize(mlp, configs::int8_weight_only());
  auto* q1 = mlp[0]->as<QuantLinearImpl>();
  EXPECT_FALSE(q1->input_quantizer()->is_enabled());
  EXPECT_TRUE(at::equal(*q1->weight_quantizer()->amax(), naive_amax(w1, {1})));
  EXPECT_FALSE(q1->input_quantizer()->amax().has_value());
}

// Max calibration when only weight quantizers need calibration: calibrated from the weights,
// forward_loop not run, amaxes bitwise those of the forward-loop path (forced with the max
// step's skip_forward_without_activation_calib: false), one line on stdout.
TEST(Quantize, WeightOnlyMaxSkipsTheForwardLoopWithTheSameAmax) {
  const auto batches = calib_batches(3, 12);
  QuantizeConfig w4a8_weights = QuantizeConfig::from_json(R"({
    "quant_cfg": {
      "*weight_quantizer": [{"num_bits": 4, "block_sizes": {"-1": 4, "type": "static"}},
                            {"num_bits": [4, 3], "axis": null}],
      "default": {"enable": false}},
    "algorithm": "max"})");
  const std::vector<std::pair<std::string, QuantizeConfig>> cases = {
      {"int8_weight_only", configs::int8_weight_only()},
      {"int8_dynamic", configs::int8_dynamic()},
      {"int4_blockwise_weight_only", configs::int4_blockwise_weight_only()},
      {"fp8_per_channel_per_token", configs::fp8_per_channel_per_token()},
      {"w4a8_weights", w4a8_weights}};
  const std::string note = algorithms::max_calibration_from_weights_note();
  for (const auto& [name, cfg] : cases) {
    SCOPED_TRACE(name);
    QuantizeConfig forced = cfg;
    forced.algorithm = R"({"method": "max", "skip_forward_without_activation_calib": false})";
    torch::nn::Sequential skipped = make_mlp(), looped = make_mlp();
    int skipped_calls = 0, looped_calls = 0;
    testing::internal::CaptureStdout();
    mopt::quantize(skipped, cfg, [&](torch::nn::Module&) {
      ++skipped_calls;
      for (const auto& b : batches) skipped->forward(b);
    });
    const std::string skip_out = testing::internal::GetCapturedStdout();
    testing::internal::CaptureStdout();
    mopt::quantize(looped, forced, [&](torch::nn::Module&) {
      ++looped_calls;
      for (const auto& b : batches) looped->forward(b);
    });
    const std::string loop_out = testing::internal::GetCapturedStdout();
    EXPECT_EQ(skipped_calls, 0);
    EXPECT_EQ(looped_calls, 1);
    EXPECT_NE(skip_out.find(note), std::string::npos);
    EXPECT_EQ(skip_out.find(note), skip_out.rfind(note));  // once
    EXPECT_EQ(loop_out.find(note), std::string::npos);
    const auto a = named_quantizers(*skipped), b = named_quantizers(*looped);
    ASSERT_EQ(a.size(), b.size());
    int calibrated = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      SCOPED_TRACE(a[i].first);
      EXPECT_EQ(a[i].first, b[i].first);
      ASSERT_EQ(a[i].second->amax().has_value(), b[i].second->amax().has_value());
      if (!a[i].second->amax()) continue;
      EXPECT_TRUE(at::equal(*a[i].second->amax(), *b[i].second->amax()));
      ++calibrated;
    }
    EXPECT_GT(calibrated, 0);
    torch::NoGradGuard no_grad;
    const at::Tensor x = torch::randn({4, 12});
    EXPECT_TRUE(at::equal(skipped->forward(x), looped->forward(x)));
  }
}

TEST(Quantize, StaticActivationQuantizersKeepTheForwardLoop) {
  const auto batches = calib_batches(3, 12);
  for (const QuantizeConfig& cfg : {configs::int8_default(), configs::fp8_default()}) {
    torch::nn::Sequential mlp = make_mlp();
    int calls = 0;
    mopt::quantize(mlp, cfg, [&](torch::nn::Module&) {
      ++calls;
      for (const auto& b : batches) mlp->forward(b);
    });
    EXPECT_EQ(calls, 1);
  }
  // so do the other algorithms, whose searches need the data even for weights
  torch::nn::Sequential mlp = make_mlp();
  QuantizeConfig mse = configs::int8_weight_only();
  mse.algorithm = "mse";
  int calls = 0;
  mopt::quantize(mlp, mse, [&](torch::nn::Module&) {
    ++calls;
    for (const auto& b : batches) mlp->forward(b);
  });
  EXPECT_EQ(calls, 2);  // the max step, then the MSE search
}

// The rule both front ends apply (algorithms::max_calibration_from_weights).
TEST(MaxCalibrationFromWeights, OnlyWeightQuantizersWithAPlainMaxCalibrator) {
  using algorithms::max_calibration_from_weights;
  const auto parse = QuantizerAttributeConfig::from_json;
  QuantizerCore weight(parse(R"({"num_bits": 8, "axis": 0})"));
  QuantizerCore static_input(parse(R"({"num_bits": 8})"));
  QuantizerCore dynamic_input(parse(R"({"num_bits": 8, "type": "dynamic"})"));
  QuantizerCore disabled_input(parse(R"({"num_bits": 8, "enable": false})"));
  EXPECT_TRUE(max_calibration_from_weights({}));
  EXPECT_TRUE(max_calibration_from_weights({{&weight, true}, {&dynamic_input, false},
                                            {&disabled_input, false}}));
  EXPECT_FALSE(max_calibration_from_weights({{&weight, true}, {&static_input, false}}));
  // a weight the driver cannot read as the layer's forward sees it
  EXPECT_FALSE(max_calibration_from_weights({{&weight, false}}));
  // a histogram counts every batch; a MaxCalibrator with track_amax keeps each batch's amax
  QuantizerCore histogram = weight;
  histogram.set_calibrator(std::make_shared<HistogramCalibrator>());
  EXPECT_FALSE(max_calibration_from_weights({{&histogram, true}}));
  QuantizerCore tracking = weight;
  tracking.set_calibrator(std::make_shared<MaxCalibrator>(8, std::vector<int64_t>{0}, false,
                                                          /*track_amax=*/true));
  EXPECT_FALSE(max_calibration_from_weights({{&tracking, true}}));
  EXPECT_THROW(max_calibration_from_weights({{nullptr, true}}), c10::ValueError);
}

TEST(Quantize, SequentialQuantizerAndClassScopedEntries) {
  torch::manual_seed(4);
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 4, 3).padding(1)),
                            torch::nn::ReLU(), torch::nn::Flatten(), torch::nn::Linear(4 * 25, 3));
  const QuantizeConfig cfg = QuantizeConfig::from_json(R"({
    "quant_cfg": {
      "*weight_quantizer": [{"num_bits": 4, "block_sizes": {"-1": 4}}, {"num_bits": [4, 3]}],
      "nn.Conv2d": {"*weight_quantizer": {"num_bits": 8, "axis": 0}},
      "default": {"enable": false}},
    "algorithm": "max"})");
  mopt::quantize(net, cfg);
  auto* conv = net[0]->as<QuantConv2dImpl>();
  auto* fc = net[3]->as<QuantLinearImpl>();
  ASSERT_NE(conv, nullptr);
  ASSERT_NE(fc, nullptr);
  // The class-scoped entry turned the conv's weight quantizer back into a single quantizer.
  EXPECT_NE(std::dynamic_pointer_cast<TensorQuantizerImpl>(conv->quantizer(QuantModule::kWeight)),
            nullptr);
  auto seq =
      std::dynamic_pointer_cast<SequentialQuantizerImpl>(fc->quantizer(QuantModule::kWeight));
  ASSERT_NE(seq, nullptr);
  ASSERT_EQ(seq->size(), 2u);
  EXPECT_THROW(fc->weight_quantizer(), c10::TypeError);
  const auto names = named_quantizers(*net);
  ASSERT_EQ(names.size(), 7u);
  EXPECT_EQ(names[5].first, "3.weight_quantizer.0");
  EXPECT_EQ(names[6].first, "3.weight_quantizer.1");
  // Sequential weight quantization = FP8(INT4 blocks(W)), each calibrated on what it sees.
  torch::NoGradGuard no_grad;
  const at::Tensor w = fc->weight;
  const at::Tensor w4 = quantize_tensor(w, seq->at(0)->amax(), c10::nullopt,
                                        seq->at(0)->attribute_json());
  EXPECT_TRUE(at::equal(seq->at(1)->amax()->reshape({}), w4.abs().max()));
  const at::Tensor x = torch::randn({2, 2, 5, 5});
  const at::Tensor wc = quantize_tensor(conv->weight, conv->weight_quantizer()->amax(),
                                        c10::nullopt, conv->weight_quantizer()->attribute_json());
  const at::Tensor h = torch::relu(torch::conv2d(x, wc, conv->bias, 1, 1)).flatten(1);
  const at::Tensor wf = quantize_tensor(w4, seq->at(1)->amax(), c10::nullopt,
                                        seq->at(1)->attribute_json());
  EXPECT_TRUE(at::equal(net->forward(x), torch::linear(h, wf, fc->bias)));
}

TEST(Quantize, UnconvertedConvLayersComputeLikeTorch) {
  torch::manual_seed(5);
  torch::nn::Conv1d c1(torch::nn::Conv1dOptions(3, 4, 3).padding(2).padding_mode(torch::kCircular));
  QuantConv1d q1(*c1);
  const at::Tensor x1 = torch::randn({2, 3, 9});
  EXPECT_TRUE(at::equal(q1->forward(x1), c1->forward(x1)));
  torch::nn::Conv3d c3(torch::nn::Conv3dOptions(2, 2, 2).stride(2).padding(1));
  QuantConv3d q3(*c3);
  const at::Tensor x3 = torch::randn({1, 2, 4, 4, 4});
  EXPECT_TRUE(at::equal(q3->forward(x3), c3->forward(x3)));
  q3->setup();
  q3->input_quantizer()->disable();
  q3->weight_quantizer()->disable();
  EXPECT_TRUE(at::equal(q3->forward(x3), c3->forward(x3)));
  auto copy = std::dynamic_pointer_cast<QuantConv3dImpl>(q3->clone());
  ASSERT_NE(copy, nullptr);
  EXPECT_TRUE(copy->is_converted());
  EXPECT_TRUE(at::equal(copy->forward(x3), c3->forward(x3)));
}

TEST(Quantize, CloneOfQuantizedSequential) {
  torch::nn::Sequential mlp = make_mlp();
  mopt::quantize(mlp, configs::int8_weight_only());
  auto copy = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(mlp->clone());
  ASSERT_NE(copy, nullptr);
  const at::Tensor x = torch::randn({2, 12});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(copy->forward(x), mlp->forward(x)));
  EXPECT_EQ(summary_of(*copy), summary_of(*mlp));
}

TEST(Quantize, SaveLoadRestoresAmax) {
  torch::nn::Sequential mlp = make_mlp();
  const auto batches = calib_batches(2, 12);
  mopt::quantize(mlp, configs::int8_default(), [&](torch::nn::Module&) {
    for (const auto& b : batches) mlp->forward(b);
  });
  std::stringstream stream;
  torch::save(mlp, stream);
  torch::nn::Sequential other = make_mlp();
  mopt::quantize(other, configs::int8_default());  // weights only: no input amax yet
  EXPECT_FALSE(other[0]->as<QuantLinearImpl>()->input_quantizer()->amax().has_value());
  torch::load(other, stream);
  const at::Tensor x = torch::randn({3, 12});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(other->forward(x), mlp->forward(x)));
}

TEST(Quantize, CudaMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::nn::Sequential cpu = make_mlp(), gpu = make_mlp();
  gpu->to(torch::kCUDA);
  const auto batches = calib_batches(2, 12);
  mopt::quantize(cpu, configs::int8_default(), [&](torch::nn::Module&) {
    for (const auto& b : batches) cpu->forward(b);
  });
  mopt::quantize(gpu, configs::int8_default(), [&](torch::nn::Module&) {
    for (const auto& b : batches) gpu->forward(b.cuda());
  });
  const auto cq = named_quantizers(*cpu), gq = named_quantizers(*gpu);
  ASSERT_EQ(cq.size(), gq.size());
  for (size_t i = 0; i < cq.size(); ++i) {
    ASSERT_EQ(cq[i].second->amax().has_value(), gq[i].second->amax().has_value());
    if (cq[i].second->amax()) {
      EXPECT_TRUE(at::equal(cq[i].second->amax()->cpu(), gq[i].second->amax()->cpu()));
    }
  }
  // The quantizers agree bit for bit; the matmuls (cuBLAS vs CPU BLAS) only closely.
  torch::NoGradGuard no_grad;
  auto* c0 = cpu[0]->as<QuantLinearImpl>();
  auto* g0 = gpu[0]->as<QuantLinearImpl>();
  EXPECT_TRUE(at::equal(g0->weight_quantizer()->forward(g0->weight).cpu(),
                        c0->weight_quantizer()->forward(c0->weight)));
  const at::Tensor x = torch::randn({4, 12});
  EXPECT_TRUE(at::equal(g0->input_quantizer()->forward(x.cuda()).cpu(),
                        c0->input_quantizer()->forward(x)));
  EXPECT_TRUE(at::allclose(gpu->forward(x.cuda()).cpu(), cpu->forward(x), 1e-4, 1e-5));
}

// ---------------------------------------------------------------------------------------------
// Custom modules

struct NetImpl : torch::nn::Module {
  NetImpl() {
    torch::manual_seed(6);
    fc1 = register_module("fc1", QuantLinear(10, 16));
    body = register_module("body", torch::nn::Sequential(torch::nn::Linear(16, 16),
                                                         torch::nn::ReLU()));
    head = register_module("head", torch::nn::Linear(16, 4));
  }
  at::Tensor forward(const at::Tensor& x) {
    return head->forward(body->forward(torch::relu(fc1->forward(x))));
  }
  QuantLinear fc1{nullptr};
  torch::nn::Sequential body{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Net);

TEST(Quantize, CustomModuleWithDropInAndSequential) {
  Net net;
  const auto batches = calib_batches(2, 10);
  QuantizeConfig cfg = configs::int8_default();
  cfg.set(QuantCfgEntry::make("head.*", R"({"enable": false})"));
  const at::Tensor x = torch::randn({3, 10});
  at::Tensor float_out;
  {
    torch::NoGradGuard no_grad;
    float_out = net->forward(x);
  }
  mopt::quantize(net, cfg, [&](torch::nn::Module&) {
    for (const auto& b : batches) net->forward(b);
  });
  EXPECT_TRUE(net->fc1->is_converted());
  auto* inner = net->body[0]->as<QuantLinearImpl>();
  ASSERT_NE(inner, nullptr);
  EXPECT_TRUE(inner->input_quantizer()->amax().has_value());
  auto* head = net->named_children()["head"]->as<QuantLinearImpl>();
  ASSERT_NE(head, nullptr);
  EXPECT_FALSE(head->input_quantizer()->is_enabled());
  // The forward now runs the quantized fc1 and body layers: rebuild it by hand.
  torch::NoGradGuard no_grad;
  auto run = [](QuantLinearImpl& l, const at::Tensor& in) {
    return torch::linear(l.input_quantizer()->forward(in), l.weight_quantizer()->forward(l.weight),
                         l.bias);
  };
  const at::Tensor h = torch::relu(run(*inner, torch::relu(run(*net->fc1, x))));
  const at::Tensor ref = torch::linear(h, net->head->weight, net->head->bias);
  const at::Tensor out = net->forward(x);
  EXPECT_TRUE(at::equal(out, ref));
  EXPECT_FALSE(at::equal(out, float_out));
}

TEST(Quantize, CustomModuleTypedMemberIsRefusedAndRolledBack) {
  Net net;
  const auto head_before = net->named_children()["head"];
  const auto body0_before = net->body->ptr(0);
  try {
    mopt::quantize(net, configs::int8_weight_only());
    FAIL() << "expected NotImplementedError";
  } catch (const c10::NotImplementedError& e) {
    EXPECT_NE(std::string(e.what()).find("'head' (a torch::nn::Linear member of"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(net->fc1->is_converted());
  EXPECT_EQ(net->named_children()["head"], head_before);
  EXPECT_EQ(net->body->ptr(0), body0_before);
  EXPECT_EQ(typeid(*net->body->ptr(0)), typeid(torch::nn::LinearImpl));
  EXPECT_FALSE(is_quantized(*net));
}

// ---------------------------------------------------------------------------------------------
// Errors and rollback

void expect_float_mlp(torch::nn::Sequential& mlp, torch::nn::Sequential& fresh) {
  EXPECT_FALSE(is_quantized(*mlp));
  EXPECT_EQ(typeid(*mlp->ptr(0)), typeid(torch::nn::LinearImpl));
  EXPECT_EQ(typeid(*mlp->ptr(2)), typeid(torch::nn::LinearImpl));
  const at::Tensor x = torch::randn({2, 12});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(mlp->forward(x), fresh->forward(x)));
}

TEST(QuantizeErrors, UnmatchedEnablingPatternRollsBack) {
  torch::nn::Sequential mlp = make_mlp(), fresh = make_mlp();
  QuantizeConfig cfg = configs::int8_default();
  cfg.set(QuantCfgEntry::make("*lm_head*", R"({"num_bits": 4})"));
  try {
    mopt::quantize(mlp, cfg);
    FAIL() << "expected ValueError";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("['*lm_head*']"), std::string::npos) << e.what();
  }
  expect_float_mlp(mlp, fresh);
}

TEST(QuantizeErrors, NanCalibrationNamesQuantizerAndRollsBack) {
  torch::nn::Sequential mlp = make_mlp(), fresh = make_mlp();
  at::Tensor bad = torch::randn({4, 12});
  bad[1][3] = std::numeric_limits<float>::quiet_NaN();
  try {
    mopt::quantize(mlp, configs::int8_default(),
                   [&](torch::nn::Module&) { mlp->forward(bad); });
    FAIL() << "expected RuntimeError";
  } catch (const c10::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("quantizer '0.input_quantizer' of module '0' (QuantLinear): amax=nan"),
              std::string::npos)
        << msg;
  }
  expect_float_mlp(mlp, fresh);
}

TEST(QuantizeErrors, ForwardLoopErrorRollsBack) {
  torch::nn::Sequential mlp = make_mlp(), fresh = make_mlp();
  EXPECT_THROW(mopt::quantize(mlp, configs::int8_default(),
                              [&](torch::nn::Module&) { mlp->forward(torch::randn({2, 7})); }),
               c10::Error);
  expect_float_mlp(mlp, fresh);
  EXPECT_TRUE(mlp->is_training());  // training flag restored
}

TEST(QuantizeErrors, UnknownAlgorithmsOptionsAndMethodlessHistogramsAreRefused) {
  torch::nn::Sequential mlp = make_mlp(), fresh = make_mlp();
  EXPECT_THROW(mopt::quantize(mlp, configs::int8_smoothquant()), c10::ValueError);  // no loop
  QuantizeConfig unknown = configs::int8_default();
  unknown.algorithm = R"({"method": "magic"})";
  EXPECT_THROW(mopt::quantize(mlp, unknown), c10::ValueError);
  QuantizeConfig opts = configs::int8_default();
  opts.algorithm = R"({"method": "max", "alpha": 0.5})";
  EXPECT_THROW(mopt::quantize(mlp, opts), c10::TypeError);
  // a histogram calibrator under max calibration has no method to turn counts into amax
  QuantizeConfig hist = QuantizeConfig::from_json(
      R"({"quant_cfg": {"*": {"calibrator": "histogram"}}, "algorithm": "max"})");
  EXPECT_THROW(mopt::quantize(mlp, hist), c10::TypeError);
  expect_float_mlp(mlp, fresh);
  torch::nn::Linear bare(3, 4);
  EXPECT_THROW(mopt::quantize(bare, configs::int8_default()), c10::ValueError);
}

TEST(QuantizeErrors, FailedRequantizeRestoresQuantizers) {
  torch::nn::Sequential mlp = make_mlp();
  const auto batches = calib_batches(2, 12);
  const ForwardLoop loop = [&](torch::nn::Module&) {
    for (const auto& b : batches) mlp->forward(b);
  };
  mopt::quantize(mlp, configs::int8_default(), loop);
  const std::string before = summary_of(*mlp);
  const at::Tensor x = torch::randn({2, 12});
  at::Tensor out_before;
  {
    torch::NoGradGuard no_grad;
    out_before = mlp->forward(x);
  }
  QuantizeConfig cfg = configs::w4a8_mxfp4_fp8();
  cfg.set(QuantCfgEntry::sequential("*weight_quantizer",
                                    {R"({"num_bits": 4})", R"({"num_bits": [4, 3]})"}));
  cfg.set(QuantCfgEntry::make("*nothing*", "{}"));
  EXPECT_THROW(mopt::quantize(mlp, cfg, loop), c10::ValueError);
  EXPECT_EQ(summary_of(*mlp), before);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(mlp->forward(x), out_before));
}

TEST(SetQuantizerAttribute, OnlyGivenKeys) {
  torch::nn::Sequential mlp = make_mlp();
  mopt::quantize(mlp, configs::int8_weight_only());
  EXPECT_EQ(set_quantizer_attribute(*mlp, "*weight_quantizer", R"({"num_bits": 4})"), 2);
  auto* q1 = mlp[0]->as<QuantLinearImpl>();
  EXPECT_EQ(q1->weight_quantizer()->num_bits(), NumBits::integer(4));
  ASSERT_TRUE(q1->weight_quantizer()->axis().has_value());  // kept
  disable_quantizer(*mlp, "2.*");
  EXPECT_FALSE(mlp[2]->as<QuantLinearImpl>()->weight_quantizer()->is_enabled());
  enable_quantizer(*mlp, "2.weight_quantizer");
  EXPECT_TRUE(mlp[2]->as<QuantLinearImpl>()->weight_quantizer()->is_enabled());
}

}  // namespace
}  // namespace mopt
