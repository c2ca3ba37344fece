// Restore a model that Python (or C++) quantized and saved with mto.save / mopt::save, run it, and
// save it again from C++: the state files are the same in both languages.
//
//   restore_mlp <state.safetensors> <inputs.safetensors> <outputs.safetensors> [<resaved>]
//
// The MLP is Linear(in, hidden) -> ReLU -> Linear(hidden, out), sized from the state file's
// "0.weight" and "2.weight". inputs.safetensors holds "x"; the outputs file gets "y", the restored
// model's output on x, and the applied modes are printed. With <resaved>, the restored model is
// written back with mopt::save.
#include <mopt/mopt.h>
#include <torch/torch.h>

#include <iostream>
#include <map>
#include <string>

namespace {

torch::Tensor find(const mopt::opt::SafetensorsFile& file, const std::string& name) {
  for (const auto& [n, t] : file.tensors) {
    if (n == name) return t;
  }
  throw std::runtime_error("no tensor '" + name + "' in the file");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: restore_mlp <state.safetensors> <inputs.safetensors> "
                 "<outputs.safetensors> [<resaved.safetensors>]\n";
    return 2;
  }
  try {
    const auto state = mopt::opt::load_safetensors(argv[1]);
    const auto w0 = find(state, "0.weight");
    const auto w2 = find(state, "2.weight");
    torch::nn::Sequential model(torch::nn::Linear(w0.size(1), w0.size(0)), torch::nn::ReLU(),
                                torch::nn::Linear(w2.size(1), w2.size(0)));
    mopt::restore(model, argv[1]);
    std::cout << "modes:";
    for (const auto& m : mopt::applied_modes(*model)) std::cout << " " << m;
    std::cout << "\n";
    mopt::print_quant_summary(*model);

    const auto inputs = mopt::opt::load_safetensors(argv[2]);
    torch::NoGradGuard no_grad;
    const torch::Tensor y = model->forward(find(inputs, "x"));
    mopt::opt::save_safetensors(argv[3], {{"y", y}});
    if (argc > 4) mopt::save(model, argv[4]);
  } catch (const std::exception& e) {
    std::cerr << "restore_mlp: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
