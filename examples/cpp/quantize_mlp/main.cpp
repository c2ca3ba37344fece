// Quantize a LibTorch MLP with mopt: train it briefly, quantize a copy with INT8 and one with FP8
// (max calibration on training batches), print each quant summary and the test accuracy and
// output error against the float model.
//
//   quantize_mlp [digits.csv]
//
// digits.csv: one sample per line, 64 pixel values (0..16) then the label (0..9), e.g.
// scikit-learn's bundled handwritten digits. Without it, seeded synthetic data labelled by a
// random teacher network is used.
#include <mopt/mopt.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Dataset {
  torch::Tensor x;  // [n, 64] float in [0, 1]
  torch::Tensor y;  // [n] int64
};

Dataset load_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<float> values;
  std::vector<int64_t> labels;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::stringstream row(line);
    std::string cell;
    std::vector<float> cells;
    while (std::getline(row, cell, ',')) cells.push_back(std::stof(cell));
    if (cells.size() != 65) {
      throw std::runtime_error("expected 65 columns in " + path + ": " + line);
    }
    values.insert(values.end(), cells.begin(), cells.begin() + 64);
    labels.push_back(static_cast<int64_t>(cells[64]));
  }
  const auto n = static_cast<int64_t>(labels.size());
  if (n < 100) throw std::runtime_error(path + " holds too few samples");
  return {torch::tensor(values).reshape({n, 64}) / 16.0, torch::tensor(labels)};
}

Dataset synthetic(int64_t n) {
  torch::manual_seed(1234);
  torch::Tensor x = torch::rand({n, 64});
  torch::nn::Sequential teacher(torch::nn::Linear(64, 32), torch::nn::Tanh(),
                                torch::nn::Linear(32, 10));
  torch::NoGradGuard no_grad;
  return {x, teacher->forward(x).argmax(1)};
}

double accuracy(torch::nn::Sequential& model, const Dataset& d) {
  torch::NoGradGuard no_grad;
  return model->forward(d.x).argmax(1).eq(d.y).to(torch::kDouble).mean().item<double>();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Dataset all = argc > 1 ? load_csv(argv[1]) : synthetic(1800);
    std::cout << "data: " << (argc > 1 ? argv[1] : "synthetic (seeded)") << ", "
              << all.x.size(0) << " samples" << std::endl;
    torch::manual_seed(0);
    const torch::Tensor perm = torch::randperm(all.x.size(0));
    const int64_t n_train = all.x.size(0) * 4 / 5;
    const Dataset train{all.x.index_select(0, perm.slice(0, 0, n_train)),
                        all.y.index_select(0, perm.slice(0, 0, n_train))};
    const Dataset test{all.x.index_select(0, perm.slice(0, n_train)),
                       all.y.index_select(0, perm.slice(0, n_train))};

    torch::nn::Sequential model(torch::nn::Linear(64, 128), torch::nn::ReLU(),
                                torch::nn::Linear(128, 64), torch::nn::ReLU(),
                                torch::nn::Linear(64, 10));
    torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(3e-3));
    for (int epoch = 0; epoch < 30; ++epoch) {
      for (int64_t start = 0; start < n_train; start += 64) {
        const int64_t end = std::min(start + 64, n_train);
        opt.zero_grad();
        auto loss = torch::nn::functional::cross_entropy(
            model->forward(train.x.slice(0, start, end)), train.y.slice(0, start, end));
        loss.backward();
        opt.step();
      }
    }
    model->eval();
    torch::Tensor float_out;
    {
      torch::NoGradGuard no_grad;
      float_out = model->forward(test.x);
    }
    const double float_acc = accuracy(model, test);
    std::printf("float model: test accuracy %.4f\n", float_acc);

    struct Run {
      const char* name;
      mopt::QuantizeConfig config;
    };
    const std::vector<Run> runs = {{"INT8_DEFAULT_CFG", mopt::configs::int8_default()},
                                   {"FP8_DEFAULT_CFG", mopt::configs::fp8_default()}};
    std::vector<std::string> rows;
    for (const Run& run : runs) {
      // A fresh copy per config: quantize converts in place.
      std::cout << "\n== " << run.name << "\n";
      auto quant = torch::nn::Sequential(
          std::dynamic_pointer_cast<torch::nn::SequentialImpl>(model->clone()));
      mopt::quantize(quant, run.config, [&](torch::nn::Module&) {
        for (int64_t start = 0; start < std::min<int64_t>(n_train, 512); start += 128) {
          quant->forward(train.x.slice(0, start, std::min(start + 128, n_train)));
        }
      });
      mopt::print_quant_summary(*quant);
      torch::Tensor out;
      {
        torch::NoGradGuard no_grad;
        out = quant->forward(test.x);
      }
      const double rel = ((out - float_out).norm() / float_out.norm()).item<double>();
      const double max_abs = (out - float_out).abs().max().item<double>();
      const double acc = accuracy(quant, test);
      char row[256];
      std::snprintf(row, sizeof(row), "RESULT %-18s accuracy=%.4f (float %.4f) rel_error=%.6f "
                    "max_abs_error=%.6f", run.name, acc, float_acc, rel, max_abs);
      rows.emplace_back(row);
    }
    std::cout << "\n";
    for (const auto& r : rows) std::cout << r << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
}
