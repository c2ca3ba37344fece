// The cost of learned scales (lsq) in a C++ training loop: one torch::optim::Adam step (forward,
// backward, update) of an INT4 weight-only MLP (blocks of 32) built with the C++ module API, with
// the amaxes frozen (max calibration: the weights train), learned (lsq post, and untied pre and
// post: weights and amaxes train), and of the same MLP unquantized. Median of timed repeats after
// warm-up, one process, CPU.
//
//   build/mopt_bench_lsq [--hidden H] [--batch B] [--steps S] [--repeats R] [--threads T]
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "mopt/mopt.h"

namespace {

struct Args {
  int64_t hidden = 1024;
  int64_t batch = 256;
  int steps = 5;
  int repeats = 7;
  int threads = 0;  // 0: torch's default
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const long v = std::strtol(argv[i + 1], nullptr, 10);
    if (k == "--hidden") a.hidden = v;
    else if (k == "--batch") a.batch = v;
    else if (k == "--steps") a.steps = static_cast<int>(v);
    else if (k == "--repeats") a.repeats = static_cast<int>(v);
    else if (k == "--threads") a.threads = static_cast<int>(v);
    else throw std::invalid_argument("unknown argument " + k);
  }
  return a;
}

// Median milliseconds of one Adam step; `algorithm` empty: the float model.
double step_ms(const Args& a, const std::string& algorithm) {
  torch::manual_seed(0);
  torch::nn::Sequential model(torch::nn::Linear(a.hidden, a.hidden), torch::nn::ReLU(),
                              torch::nn::Linear(a.hidden, a.hidden), torch::nn::ReLU(),
                              torch::nn::Linear(a.hidden, 64));
  const at::Tensor x = torch::randn({a.batch, a.hidden});
  const at::Tensor target = torch::randn({a.batch, 64});
  if (!algorithm.empty()) {
    mopt::QuantizeConfig config = mopt::QuantizeConfig::from_json(
        R"({"quant_cfg": {"default": {"enable": false}, "*weight_quantizer": {"num_bits": 4,
            "block_sizes": {"-1": 32}}}, "algorithm": )" + algorithm + "}");
    std::ostringstream quiet;  // "Inserted N quantizers"
    auto* old = std::cout.rdbuf(quiet.rdbuf());
    mopt::quantize(model, config, [&](torch::nn::Module&) { model->forward(x); });
    std::cout.rdbuf(old);
  }
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-4));
  auto step = [&] {
    optimizer.zero_grad();
    torch::mse_loss(model->forward(x), target).backward();
    optimizer.step();
  };
  for (int i = 0; i < 2; ++i) step();  // warm-up
  std::vector<double> times;
  for (int r = 0; r < a.repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < a.steps; ++i) step();
    const auto t1 = std::chrono::steady_clock::now();
    times.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count() / a.steps);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  if (a.threads > 0) at::set_num_threads(a.threads);
  std::printf("Adam step of a %lld-%lld-%lld-64 MLP, batch %lld, INT4 weights in blocks of 32, "
              "CPU, %d threads (median of %d x %d steps)\n",
              static_cast<long long>(a.hidden), static_cast<long long>(a.hidden),
              static_cast<long long>(a.hidden), static_cast<long long>(a.batch),
              at::get_num_threads(), a.repeats, a.steps);
  const double base = step_ms(a, R"("max")");
  struct Row {
    const char* name;
    std::string algorithm;
  };
  const std::vector<Row> rows = {
      {"float (no quantizers)", ""},
      {"frozen amax (max)", R"("max")"},
      {"lsq post", R"({"method": "lsq", "scale_algorithm": {"method": "max"}})"},
      {"lsq pre+post (untied)", R"({"method": "lsq", "scale_algorithm": {"method": "max"},
          "learnable_amax": ["pre", "post"]})"},
      {"lsq tied", R"({"method": "lsq", "scale_algorithm": {"method": "max"},
          "learnable_amax": ["pre", "post"], "tied_amax": true})"},
  };
  std::printf("%-24s %10s %16s\n", "amax", "ms/step", "vs frozen amax");
  for (const Row& r : rows) {
    const double ms = r.algorithm == R"("max")" ? base : step_ms(a, r.algorithm);
    std::printf("%-24s %10.2f %15.2fx\n", r.name, ms, ms / base);
  }
  return 0;
}
