// include/mopt/sparsity: N:M patterns, weight layouts, the magnitude mask and the calibration-
// driven layer solvers (Wanda, SparseGPT) that mopt.sparsity's driver feeds from forward hooks.
#include "bindings.h"
#include <pybind11/stl.h>

#include "mopt/sparsity/solvers.h"

namespace py = pybind11;

namespace mopt::python {
namespace {

using sparsity::NMPattern;
using sparsity::WeightLayout;

NMPattern pattern_of(int64_t n, int64_t m) {
  // The checks of parse_pattern, for patterns given as numbers.
  return sparsity::parse_pattern(std::to_string(n) + ":" + std::to_string(m));
}

sparsity::ConvGeometry geometry_of(const py::object& g) {
  sparsity::ConvGeometry out;
  if (g.is_none()) return out;
  const py::dict d = g.cast<py::dict>();
  out.kernel_size = d["kernel_size"].cast<std::vector<int64_t>>();
  out.stride = d["stride"].cast<std::vector<int64_t>>();
  out.padding = d["padding"].cast<std::vector<int64_t>>();
  out.dilation = d["dilation"].cast<std::vector<int64_t>>();
  out.groups = d["groups"].cast<int64_t>();
  return out;
}

}  // namespace

void bind_sparsity(py::module_& m) {
  py::enum_<WeightLayout>(m, "SparsityLayout", "How a sparsified layer stores its weight.")
      .value("LINEAR", WeightLayout::kLinear)
      .value("CONV", WeightLayout::kConv)
      .value("TRANSPOSED", WeightLayout::kTransposed);

  m.def(
      "sparsity_parse_pattern",
      [](const std::string& s) {
        const NMPattern p = sparsity::parse_pattern(s);
        return py::make_tuple(p.n, p.m);
      },
      py::arg("pattern"), "(n, m) of 'N:M sparsity'; ValueError naming a bad pattern.");
  m.def(
      "sparsity_check_layer",
      [](const at::Tensor& w, WeightLayout layout, int64_t n, int64_t m, const std::string& name) {
        sparsity::check_layer(w, layout, pattern_of(n, m), name);
      },
      py::arg("weight"), py::arg("layout"), py::arg("n"), py::arg("m"), py::arg("name") = "",
      "ValueError naming the layer unless the N:M pattern applies to this weight.");
  m.def(
      "sparsity_layer_supported",
      [](const at::Tensor& w, WeightLayout layout, int64_t n, int64_t m) {
        return sparsity::layer_supported(w, layout, pattern_of(n, m));
      },
      py::arg("weight"), py::arg("layout"), py::arg("n"), py::arg("m"));
  m.def("sparsity_weight_matrix", &sparsity::weight_matrix, py::arg("weight"), py::arg("layout"),
        "The weight as the [rows, cols] matrix whose column groups the masks are chosen in.");
  m.def("sparsity_weight_from_matrix", &sparsity::weight_from_matrix, py::arg("matrix"),
        py::arg("like"), py::arg("layout"));
  m.def(
      "magnitude_mask",
      no_gil_with_warnings([](const at::Tensor& w, WeightLayout layout, int64_t n, int64_t m,
                              const std::string& name) {
        return sparsity::magnitude_mask(w, layout, pattern_of(n, m), name);
      }),
      py::arg("weight"), py::arg("layout"), py::arg("n"), py::arg("m"), py::arg("name") = "",
      "Bool mask shaped like the weight keeping the n largest |w| of every m inputs.");
  m.def(
      "sparsegpt_prune",
      no_gil_with_warnings([](const at::Tensor& matrix, const at::Tensor& hessian, int64_t n,
                              int64_t m, int64_t col_block_size, double hessian_damp,
                              bool update_weights, const std::string& name) {
        sparsity::SparseGptOptions o;
        o.col_block_size = col_block_size;
        o.hessian_damp = hessian_damp;
        o.update_weights = update_weights;
        return sparsity::sparsegpt_prune(matrix, hessian, pattern_of(n, m), o, name);
      }),
      py::arg("matrix"), py::arg("hessian"), py::arg("n"), py::arg("m"),
      py::arg("col_block_size") = 128, py::arg("hessian_damp") = 0.1,
      py::arg("update_weights") = true, py::arg("name") = "");
  py::class_<sparsity::SparsityUpdate>(m, "SparsityUpdate",
                                       "A layer's new mask, weight, loss and dead inputs.")
      .def_readonly("mask", &sparsity::SparsityUpdate::mask)
      .def_property_readonly("weight",
                             [](const sparsity::SparsityUpdate& u) -> py::object {
                               return u.weight ? py::cast(*u.weight) : py::none();
                             })
      .def_readonly("loss", &sparsity::SparsityUpdate::loss)
      .def_readonly("dead_columns", &sparsity::SparsityUpdate::dead_columns);

  using sparsity::SparsityLayer;
  py::class_<SparsityLayer, py::smart_holder>(
      m, "SparsityLayer", "One layer's mask search: collect() its inputs, finish(), solve().")
      .def_property_readonly("name", &SparsityLayer::name)
      .def("collect", no_gil_with_warnings([](SparsityLayer& s, const at::Tensor& x) {
             s.collect(x);
           }),
           py::arg("x"))
      .def("finish", no_gil_with_warnings([](SparsityLayer& s) { s.finish(); }))
      .def_property_readonly("num_tokens", &SparsityLayer::num_tokens)
      .def("solve", no_gil_with_warnings([](SparsityLayer& s) { return s.solve(); }),
           "The SparsityUpdate (mask, weight, loss, dead_columns).");

  py::class_<sparsity::WandaLayer, SparsityLayer, py::smart_holder>(m, "WandaLayer")
      .def(py::init([](at::Tensor weight, WeightLayout layout, const py::object& geometry,
                       int64_t n, int64_t m, std::string name) {
             return std::make_shared<sparsity::WandaLayer>(std::move(weight), layout,
                                                           geometry_of(geometry),
                                                           pattern_of(n, m), std::move(name));
           }),
           py::arg("weight"), py::arg("layout"), py::arg("geometry"), py::arg("n"),
           py::arg("m"), py::arg("name") = "")
      .def("column_norms", &sparsity::WandaLayer::column_norms);

  py::class_<sparsity::SparseGptLayer, SparsityLayer, py::smart_holder>(m, "SparseGptLayer")
      .def(py::init([](at::Tensor weight, WeightLayout layout, const py::object& geometry,
                       int64_t n, int64_t m, int64_t col_block_size, double hessian_damp,
                       bool update_weights, std::string name) {
             sparsity::SparseGptOptions o;
             o.col_block_size = col_block_size;
             o.hessian_damp = hessian_damp;
             o.update_weights = update_weights;
             return std::make_shared<sparsity::SparseGptLayer>(std::move(weight), layout,
                                                               geometry_of(geometry),
                                                               pattern_of(n, m), o,
                                                               std::move(name));
           }),
           py::arg("weight"), py::arg("layout"), py::arg("geometry"), py::arg("n"),
           py::arg("m"), py::arg("col_block_size") = 128, py::arg("hessian_damp") = 0.1,
           py::arg("update_weights") = true, py::arg("name") = "");
}

}  // namespace mopt::python
