// Learned scales (algorithm lsq) in the quantize mode's per-quantizer state: the LSQ properties
// and the learned amaxes as parameters round-trip; a state that names parameters or an
// `_amax_pre` it does not declare with `_lsq`, or a bad `_learnable_amax`, is refused.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "mopt/opt/state.h"

namespace mopt::opt {
namespace {

using json = nlohmann::ordered_json;

std::string int4_state(const std::optional<LsqState>& lsq) {
  QuantizerCore core(QuantizerAttributeConfig::from_json(R"({"num_bits": 4, "axis": 0})"));
  std::map<std::string, at::Tensor> tensors = {{"_amax", torch::rand({8, 1})}};
  if (lsq && !lsq->tied) tensors["_amax_pre"] = torch::rand({8, 1});
  return quantizer_state_json(core, tensors, lsq);
}

TEST(OptLsqState, RoundTripsWhichAmaxesAreLearned) {
  for (const LsqState l : {LsqState{false, true, false}, LsqState{true, false, false},
                           LsqState{true, true, true}, LsqState{false, false, false}}) {
    const json j = json::parse(int4_state(l));
    EXPECT_EQ(j["_lsq"], true);
    const json& meta = j["_pytorch_state_metadata"];
    EXPECT_EQ(meta["params"].contains("_amax"), l.learn_post);
    EXPECT_EQ(meta["buffers"].contains("_amax"), !l.learn_post);
    const QuantizerState s = parse_quantizer_state("fc.weight_quantizer", j.dump());
    ASSERT_TRUE(s.lsq.has_value());
    EXPECT_EQ(s.lsq->learn_pre, l.learn_pre);
    EXPECT_EQ(s.lsq->learn_post, l.learn_post);
    EXPECT_EQ(s.lsq->tied, l.tied);
    EXPECT_EQ(s.buffers.count("_amax_pre"), l.tied ? 0u : 1u);
    EXPECT_EQ(s.buffers.at("_amax").shape, (std::vector<int64_t>{8, 1}));
  }
  const json plain = json::parse(int4_state(std::nullopt));
  EXPECT_FALSE(plain.contains("_lsq"));
  EXPECT_FALSE(parse_quantizer_state("q", plain.dump()).lsq.has_value());
}

TEST(OptLsqState, RefusesUndeclaredOrInconsistentLearnedState) {
  json j = json::parse(int4_state(LsqState{true, true, false}));
  json no_lsq = j;
  no_lsq.erase("_lsq");
  no_lsq.erase("_learnable_amax");
  no_lsq.erase("_tied_amax");
  EXPECT_THROW(parse_quantizer_state("q", no_lsq.dump()), c10::NotImplementedError);
  json bad = j;
  bad["_learnable_amax"] = {"post", "scale"};
  EXPECT_THROW(parse_quantizer_state("q", bad.dump()), c10::ValueError);
  bad = j;
  bad["_learnable_amax"] = {"post"};
  bad["_tied_amax"] = true;
  EXPECT_THROW(parse_quantizer_state("q", bad.dump()), c10::ValueError);
  // a learned amax the properties call frozen
  bad = j;
  bad["_learnable_amax"] = {"post"};
  EXPECT_THROW(parse_quantizer_state("q", bad.dump()), c10::NotImplementedError);
  // nvidia-modelopt's own LSQ layout (_amax_post) is not mopt's
  bad = json::parse(int4_state(LsqState{false, false, false}));
  bad["_pytorch_state_metadata"]["buffers"]["_amax_post"] = {{"shape", {8, 1}}};
  EXPECT_THROW(parse_quantizer_state("q", bad.dump()), c10::NotImplementedError);
}

}  // namespace
}  // namespace mopt::opt
