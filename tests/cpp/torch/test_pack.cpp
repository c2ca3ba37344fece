// Packed weights from the C++ module API: mopt::pack_weight over a calibrated
// mopt::TensorQuantizer gives a PackedWeight whose dequantize() equals the module's forward bit
// for bit, and refuses what has nothing to pack.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "mopt/mopt.h"

namespace mopt {
namespace {

TensorQuantizer calibrated(const char* json, const at::Tensor& w) {
  TensorQuantizer q(QuantizerAttributeConfig::from_json(json));
  q->set_quantizer_name("layers.0.proj.weight_quantizer");
  if (q->core().is_static()) {
    q->disable_quant();
    q->enable_calib();
    q->forward(w);
    q->load_calib_amax();
    q->disable_calib();
    q->enable_quant();
  }
  return q;
}

TEST(PackWeight, DequantizeEqualsTheModulesForward) {
  torch::manual_seed(0);
  const char* configs[] = {
      R"({"num_bits": 8, "axis": 0})",
      R"({"num_bits": 4, "block_sizes": {"-1": 32}, "asymmetric": true})",
      R"({"num_bits": 4, "block_sizes": {"-1": 128}})",
      R"({"num_bits": [4, 3]})",
      R"({"num_bits": [2, 1], "block_sizes": {"-1": 16, "type": "dynamic", "scale_bits": [4, 3]}})",
      R"({"num_bits": [2, 1], "block_sizes": {"-1": 32, "type": "dynamic", "scale_bits": [8, 0]}})",
      R"({"num_bits": 4,
          "block_sizes": {"-1": 64, "scale_bits": 8, "scale_block_sizes": {"-1": 256}}})",
  };
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const at::Tensor w = (torch::randn({32, 256}) * 0.1).to(dtype);
    for (const char* json : configs) {
      TensorQuantizer q = calibrated(json, w);
      const PackedWeight p = pack_weight(w, *q);
      const at::Tensor want = q->forward(w);
      EXPECT_TRUE(at::equal(p.dequantize(), want)) << json;
      EXPECT_EQ(p.codes().sizes(), w.sizes());
      EXPECT_LT(p.nbytes(), w.numel() * 2) << json;
      const PackedWeight back = PackedWeight::from_parts(p.metadata_json(), p.tensors());
      EXPECT_TRUE(at::equal(back.dequantize(), want)) << json;
    }
  }
}

TEST(PackWeight, RefusesWhatHasNothingToPack) {
  const at::Tensor w = torch::randn({8, 64});
  TensorQuantizer q(QuantizerAttributeConfig::from_json(R"({"num_bits": 8, "axis": 0})"));
  q->set_quantizer_name("layers.0.proj.weight_quantizer");
  try {
    pack_weight(w, *q);
    FAIL() << "an uncalibrated static quantizer was packed";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("'layers.0.proj.weight_quantizer' is static"),
              std::string::npos)
        << e.what();
  }
  TensorQuantizer off = calibrated(R"({"num_bits": 8})", w);
  off->disable();
  EXPECT_THROW(pack_weight(w, *off), c10::ValueError);
  TensorQuantizer two_d = calibrated(R"({"num_bits": 8, "block_sizes": {"-1": 16, "-2": 4}})", w);
  EXPECT_THROW(pack_weight(w, *two_d), c10::NotImplementedError);
}

}  // namespace
}  // namespace mopt
