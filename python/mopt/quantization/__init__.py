"""mopt.quantization (``import mopt.quantization as mtq``): quantize models with fake quantization
and calibration, with the API of ``modelopt.torch.quantization``."""

from . import calib, config, nn, tensor_quant
from .config import *  # noqa: F403
from .config import QuantizerAttributeConfig, choices, need_calibration
from .conversion import (
    register,
    set_quantizer_attribute,
    set_quantizer_by_cfg,
    set_quantizer_by_cfg_context,
    unregister,
)
from .compress import PackedWeight, compress, is_compressed, pack_weight
from .model_calib import calibration_algorithms, register_calibration_algorithm
from .model_quant import (
    calibrate,
    disable_quantizer,
    enable_quantizer,
    fold_weight,
    postprocess_amax,
    print_quant_summary,
    quantize,
)
from .nn.modules.quant_module import QuantModuleRegistry
from .utils import is_quantized, update_quant_cfg_with_kv_cache_quant
from . import utils  # noqa: E402
from .config_compat import *  # noqa: E402,F403  (ModelOpt config names: aliases and refusals)
from .config_compat import __all__ as _config_compat_all
from .compat import *  # noqa: E402,F403  (ModelOpt names under ModelOpt's signatures, refusals)
from .compat import __all__ as _compat_all

from . import mode  # noqa: E402  (registers the quantize mode with mopt.opt)
from . import plugins  # noqa: E402,F401  (optional integrations, loaded when their library is)

__all__ = [
    "calib",
    "config",
    "nn",
    "tensor_quant",
    "QuantizerAttributeConfig",
    "QuantModuleRegistry",
    "choices",
    "need_calibration",
    "register",
    "unregister",
    "set_quantizer_attribute",
    "set_quantizer_by_cfg",
    "set_quantizer_by_cfg_context",
    "calibrate",
    "quantize",
    "disable_quantizer",
    "enable_quantizer",
    "fold_weight",
    "postprocess_amax",
    "print_quant_summary",
    "is_quantized",
    "register_calibration_algorithm",
    "calibration_algorithms",
    "utils",
    "PackedWeight",
    "pack_weight",
    "compress",
    "is_compressed",
    "mode",
    "plugins",
    "update_quant_cfg_with_kv_cache_quant",
    *_config_compat_all,
    *_compat_all,
]
