"""ModelOpt config names beyond mopt's predefined recipes (mtq.config / mtq).

mopt configs are ``{"quant_cfg": {pattern: attrs}, "algorithm": ...}`` dicts and algorithm
options are ``{"method": name, **options}`` dicts; ModelOpt's pydantic config classes, its
list form of quant_cfg entries and the recipes for formats mopt lacks are refused here (they
resolve, and raise NotImplementedError naming what is missing when used).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

from .. import _C
from .._compat import define_refusals

# Type aliases of the config forms (what a type hint in a ported script names).
QuantizeQuantCfgType: TypeAlias = dict[str | Callable, Any]
RawQuantizeQuantCfgType: TypeAlias = dict[str | Callable, Any]
DeprecatedQuantCfgType: TypeAlias = dict[str | Callable, Any]
QuantizeAlgoCfgType: TypeAlias = str | dict | list | None
ConstructorLike: TypeAlias = Callable | tuple

__all__ = ["QuantizeQuantCfgType", "RawQuantizeQuantCfgType", "DeprecatedQuantCfgType",
           "QuantizeAlgoCfgType", "ConstructorLike"]

_MC = "modelopt.torch.quantization.config"
_ALGO = ("ModelOpt's pydantic algorithm config classes; mopt takes the algorithm as a dict "
         "{'method': name, **options} (or a name), e.g. algorithm={'method': 'awq_lite', "
         "'alpha_step': 0.1}")
_BASE = ("ModelOpt's pydantic config base classes; mopt configs are plain dicts validated by "
         "its C++ parser (mopt._C.normalize_quantize_config)")
_LIST = ("ModelOpt 0.47's list form of quant_cfg entries ({'quantizer_name': ..., ...}); mopt's "
         "quant_cfg is the dict form {pattern: attributes}")
_RECIPE = "this predefined recipe (mopt's recipes are listed by mtq.config.choices): "
_REFUSED = {
    "QuantizeAlgorithmConfig": ("class", _ALGO),
    "MaxCalibConfig": ("class", _ALGO),
    "MseCalibConfig": ("class", _ALGO),
    "SmoothQuantCalibConfig": ("class", _ALGO),
    "AWQLiteCalibConfig": ("class", _ALGO),
    "AWQClipCalibConfig": ("class", _ALGO),
    "AWQFullCalibConfig": ("class", _ALGO),
    "GPTQCalibConfig": ("class", _ALGO),
    "LayerwiseConfig": ("class", _ALGO),
    "LocalHessianCalibConfig": ("class", _ALGO + "; local-Hessian weight calibration is not "
                                "implemented"),
    "NVFP4ActHeadroomCalibConfig": ("class", "NVFP4 activation-headroom calibration"),
    "SVDQuantConfig": ("class", "SVDQuant (low-rank residual branch)"),
    "LSQConfig": ("class", "learned step size (LSQ) quantization-aware training"),
    "RotateConfig": ("class", "Hadamard rotation of quantizer inputs"),
    "ModeloptBaseConfig": ("class", _BASE),
    "ModeloptField": ("function", _BASE),
    "QuantizerCfgEntry": ("class", _LIST),
    "QuantizerCfgListConfig": ("class", _LIST),
    "normalize_quant_cfg_list": ("function", _LIST),
    "find_quant_cfg_entry_by_path": ("function", _LIST),
    "load_config": ("function", "ModelOpt's YAML recipe loader (modelopt_recipes)"),
    "CompressConfig": ("class", "real low-bit weight compression (packed weights); mopt "
                       "fake-quantizes"),
    "CompressCfgType": ("object", "real low-bit weight compression (packed weights); mopt "
                        "fake-quantizes"),
    "BiasMethod": ("object", "affine-bias calibration methods (BiasCalibrator)"),
    "BiasType": ("object", "affine-bias calibration methods (BiasCalibrator)"),
    "FP8_AFFINE_KV_CFG": ("object", _RECIPE + "affine (biased) KV-cache quantization"),
    "NVFP4_AFFINE_KV_CFG": ("object", _RECIPE + "affine (biased) KV-cache quantization"),
    "NVFP4_KV_CFG": ("object", _RECIPE + "NVFP4 KV-cache quantization (FP8_KV_CFG exists)"),
    "NVFP4_KV_ROTATE_CFG": ("object", _RECIPE + "Hadamard-rotated NVFP4 KV cache"),
    "NVFP4_FP8_MHA_CONFIG": ("object", _RECIPE + "quantized attention BMMs/softmax (MHA)"),
    "NVFP4_SVDQUANT_DEFAULT_CFG": ("object", _RECIPE + "SVDQuant"),
    "NVFP4_FOUR_OVER_SIX_CFG": ("object", _RECIPE + "NVFP4 4/6 scale selection"),
    "NVFP4_W4A4_WEIGHT_LOCAL_HESSIAN_CFG": ("object", _RECIPE + "local-Hessian calibration"),
    "NVFP4_W4A4_WEIGHT_MSE_FP8_SWEEP_CFG": ("object", _RECIPE + "FP8-scale MSE sweep"),
    "NVFP4_MLP_ONLY_CFG": ("object", _RECIPE + "MLP-only NVFP4 (select layers with quant_cfg "
                           "patterns on NVFP4_DEFAULT_CFG)"),
    "NVFP4_OMLP_ONLY_CFG": ("object", _RECIPE + "MLP-only NVFP4 (select layers with quant_cfg "
                            "patterns on NVFP4_DEFAULT_CFG)"),
    "NVFP4_MLP_WEIGHT_ONLY_CFG": ("object", _RECIPE + "MLP weight-only NVFP4"),
    "NVFP4_EXPERTS_ONLY_CFG": ("object", _RECIPE + "MoE-experts-only NVFP4"),
    "W4A16_NVFP4_CFG": ("object", _RECIPE + "weight-only NVFP4 (disable the input quantizers "
                        "of NVFP4_DEFAULT_CFG)"),
    "MXFP4_MLP_WEIGHT_ONLY_CFG": ("object", _RECIPE + "MLP weight-only MXFP4"),
    "MAMBA_MOE_FP8_AGGRESSIVE_CFG": ("object", _RECIPE + "Mamba-MoE layer selection"),
    "MAMBA_MOE_FP8_CONSERVATIVE_CFG": ("object", _RECIPE + "Mamba-MoE layer selection"),
    "MAMBA_MOE_NVFP4_AGGRESSIVE_CFG": ("object", _RECIPE + "Mamba-MoE layer selection"),
    "MAMBA_MOE_NVFP4_CONSERVATIVE_CFG": ("object", _RECIPE + "Mamba-MoE layer selection"),
}
# A recipe the C++ table gains later is served by config.py, not refused here.
__all__ += define_refusals(globals(), _MC, {k: v for k, v in _REFUSED.items()
                                            if k not in set(_C.predefined_config_names())})
