"""General helpers with the names of ``modelopt.torch.utils`` (model wrappers, devices, logging).

What mopt has no use for (dataset loaders, ModelOpt's C++-extension loader, its pytree and
serialization helpers) is refused: the name resolves, and using it raises NotImplementedError
naming what is missing (tests/python/compat walks the full list).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import statistics
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

import torch
from torch import nn

from ._compat import define_refusals

# Wrapper type -> the attribute holding the wrapped model.
SUPPORTED_WRAPPERS: dict[type, str] = {
    nn.parallel.DataParallel: "module",
    nn.parallel.DistributedDataParallel: "module",
}
try:  # FSDP is absent from some torch builds
    from torch.distributed.fsdp import FullyShardedDataParallel as _FSDP

    SUPPORTED_WRAPPERS[_FSDP] = "module"
except ImportError:  # pragma: no cover
    pass

ModelLike: TypeAlias = nn.Module | type[nn.Module] | tuple | Callable


# -- models ----------------------------------------------------------------------------------------
def is_parallel(model: nn.Module) -> bool:
    """True for a DataParallel / DistributedDataParallel wrapper."""
    return isinstance(model, (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel))


def unwrap_model(model: nn.Module, warn: bool = False, raise_error: bool = False, msg: str = "",
                 force_unwrap: bool = False) -> nn.Module:
    """The model inside a DataParallel / DDP / FSDP wrapper (the model itself otherwise);
    `raise_error` refuses a wrapped model, `warn` warns while unwrapping."""
    attr = SUPPORTED_WRAPPERS.get(type(model))
    if attr is None:
        return model
    if force_unwrap:
        if not hasattr(model, attr):
            raise ValueError(f"Model of type {type(model)} could not be forcefully unwrapped! "
                             "Please manually unwrap the model before passing it in.")
        return getattr(model, attr)
    if raise_error:
        raise ValueError(msg or f"Model {model} is wrapped by {type(model)}!")
    if warn:
        warnings.warn(msg or f"Model {model} is wrapped by {type(model)}; unwrapping...",
                      stacklevel=2)
    return getattr(model, attr)


def get_unwrapped_name(name: str, model: nn.Module | None = None) -> str:
    """A module name as it is without the wrapper (DDP's ``module.`` prefix and FSDP's
    ``_fsdp_wrapped_module.`` / checkpoint wrappers' ``_checkpoint_wrapped_module.`` parts)."""
    if model is not None and is_parallel(model):
        name = name.removeprefix("module.")
    for wrapped in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.",
                    "_orig_mod."):
        name = name.replace(wrapped, "")
    return name.removesuffix(".")


def get_module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (or buffer; CPU when it has none)."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device)
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def get_model_attributes(model: nn.Module) -> dict[str, Any]:
    """Type and train/eval flag of the model, for logging."""
    return {"type(model)": type(model), "model.forward": getattr(model, "forward", None),
            "training": model.training}


def is_channels_last(model: nn.Module) -> bool:
    """True when every 4-D parameter is in channels_last memory format."""
    params = [p for p in model.parameters() if p.dim() == 4]
    return bool(params) and all(p.is_contiguous(memory_format=torch.channels_last)
                                for p in params)


def set_submodule(model: nn.Module, target: str, target_submodule: nn.Module) -> None:
    """Replaces the submodule called `target` (a dotted name) by `target_submodule`."""
    parent_name, _, attr = target.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not hasattr(parent, attr):
        raise AttributeError(f"{type(parent).__name__} has no attribute `{attr}`")
    setattr(parent, attr, target_submodule)


def zero_grad(model: nn.Module) -> None:
    """Sets every parameter's gradient to None."""
    for p in model.parameters():
        p.grad = None


def compare_dict(dict1: dict, dict2: dict) -> tuple:
    """Keys whose values differ, then keys present in only one of the dicts."""
    unmatched = tuple(k for k in dict1.keys() & dict2.keys() if dict1[k] != dict2[k])
    return unmatched + tuple(dict1.keys() ^ dict2.keys())


def get_same_padding(kernel_size: int | tuple[int, int]) -> int | tuple:
    """The padding that keeps the spatial size for an odd kernel."""
    if isinstance(kernel_size, tuple):
        if len(kernel_size) != 2:
            raise ValueError(f"invalid kernel size: {kernel_size}")
        return get_same_padding(kernel_size[0]), get_same_padding(kernel_size[1])
    if not isinstance(kernel_size, int) or kernel_size % 2 != 1:
        raise ValueError(f"kernel size should be an odd int, got {kernel_size!r}")
    return kernel_size // 2


def make_divisible(v: int | float, divisor: int | None, min_val: int | None = None):
    """`v` rounded to a multiple of `divisor`, at least `min_val` and not below 0.9 * v."""
    if divisor is None:
        return v
    min_val = divisor if min_val is None else min_val
    new_v = max(min_val, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def run_forward_loop(model: nn.Module, data_loader: Iterable, max_iters: int | None = None,
                     collect_func: Callable | None = None, progress_bar: str | None = None,
                     post_process: Callable | None = None) -> None:
    """Runs `model` on the batches of `data_loader` (at most `max_iters`): a batch is passed
    as ``model(*batch)`` for a tuple/list, ``model(**batch)`` for a dict, else ``model(batch)``;
    `collect_func` maps a batch to that form first; `post_process(output, model)` sees each
    output."""
    with torch.no_grad():
        for i, batch in enumerate(data_loader):
            if max_iters is not None and i >= max_iters:
                break
            if collect_func is not None:
                batch = collect_func(batch)
            if isinstance(batch, dict):
                out = model(**batch)
            elif isinstance(batch, (tuple, list)):
                out = model(*batch)
            else:
                out = model(batch)
            if post_process is not None:
                post_process(out, model)


# -- tensors ---------------------------------------------------------------------------------------
def torch_to(data: Any, *args, **kwargs) -> Any:
    """``.to(*args, **kwargs)`` on every tensor of a nested list/tuple/dict."""
    if isinstance(data, torch.Tensor):
        return data.to(*args, **kwargs)
    if isinstance(data, dict):
        return {k: torch_to(v, *args, **kwargs) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(torch_to(v, *args, **kwargs) for v in data)
    return data


def torch_detach(data: Any) -> Any:
    """``.detach()`` on every tensor of a nested list/tuple/dict."""
    if isinstance(data, torch.Tensor):
        return data.detach()
    if isinstance(data, dict):
        return {k: torch_detach(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(torch_detach(v) for v in data)
    return data


def torch_to_numpy(inputs: Any) -> Any:
    """Tensors (nested in lists/tuples/dicts) as numpy arrays."""
    if isinstance(inputs, torch.Tensor):
        return inputs.detach().cpu().numpy()
    if isinstance(inputs, dict):
        return {k: torch_to_numpy(v) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(torch_to_numpy(v) for v in inputs)
    return inputs


def numpy_to_torch(np_outputs: Any) -> Any:
    """numpy arrays (nested in lists/tuples/dicts) as tensors."""
    if isinstance(np_outputs, dict):
        return {k: numpy_to_torch(v) for k, v in np_outputs.items()}
    if isinstance(np_outputs, (list, tuple)):
        return type(np_outputs)(numpy_to_torch(v) for v in np_outputs)
    return torch.from_numpy(np_outputs)


@contextlib.contextmanager
def same_device_as(inputs: Any):
    """Within the context the current CUDA device is that of the first tensor in `inputs`."""
    first = next((t for t in (inputs if isinstance(inputs, (list, tuple)) else [inputs])
                  if isinstance(t, torch.Tensor)), None)
    if first is not None and first.is_cuda:
        with torch.cuda.device(first.device):
            yield
    else:
        yield


# -- lists -----------------------------------------------------------------------------------------
def val2list(val: Any, repeat_time: int = 1) -> list:
    """A list/tuple as a list, anything else repeated `repeat_time` times."""
    if isinstance(val, (list, tuple)):
        return list(val)
    return [val] * repeat_time


def val2tuple(val: Any, min_len: int = 1, idx_repeat: int = -1) -> tuple:
    """`val` as a tuple of at least `min_len`, repeating the element at `idx_repeat`."""
    val = val2list(val)
    if val:
        val[idx_repeat:idx_repeat] = [val[idx_repeat]] * (min_len - len(val))
    return tuple(val)


def stats(vals: list[float]) -> dict[str, float]:
    """min, max, mean, median and std of a list of numbers."""
    if not vals:
        return {}
    return {"min": min(vals), "max": max(vals), "mean": statistics.fmean(vals),
            "median": statistics.median(vals),
            "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0}


def list_closest_to_median(x: list) -> Any:
    """The element of `x` closest to its median."""
    median = statistics.median(x)
    return min(x, key=lambda v: abs(v - median))


def matches_pattern(name: str, patterns, *, allow_callable: bool = True) -> bool:
    """Whether `name` matches a pattern: an fnmatch wildcard, a predicate, or an iterable of
    them; None matches everything."""
    if patterns is None:
        return True
    if isinstance(patterns, str) or callable(patterns):
        patterns = [patterns]
    for p in patterns:
        if isinstance(p, str):
            if fnmatch.fnmatch(name, p):
                return True
        elif callable(p):
            if not allow_callable:
                raise TypeError(f"callable patterns are not allowed here, got {p!r}")
            if p(name):
                return True
        else:
            raise TypeError(f"unsupported pattern type {type(p).__name__}")
    return False


# -- logging ---------------------------------------------------------------------------------------
def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def print_rank_0(*args, **kwargs) -> None:
    """print() on rank 0 only."""
    if _rank() == 0:
        print(*args, **kwargs, flush=True)


def warn_rank_0(message, *args, **kwargs) -> None:
    """warnings.warn() on rank 0 only."""
    if _rank() == 0:
        kwargs.setdefault("stacklevel", 2)
        warnings.warn(message, *args, **kwargs)


def num2hrb(num: float, suffix: str = "") -> str:
    """A number in human-readable form: 1.50K, 2.00M, ..."""
    for unit in ("", "K", "M", "G", "T", "P", "E", "Z"):
        if abs(num) < 1000.0:
            return f"{num:3.2f}{unit}{suffix}"
        num /= 1000.0
    return f"{num:.2f}Y{suffix}"


def print_args(args, title: str = "Arguments") -> None:
    """Prints the fields of an argparse Namespace (or dict), one a line."""
    items = vars(args).items() if not isinstance(args, dict) else args.items()
    print_rank_0(f"{title}:")
    for k, v in sorted(items):
        print_rank_0(f"  {k}: {v}")


@contextlib.contextmanager
def no_stdout():
    """Within the context, stdout is discarded."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


@contextlib.contextmanager
def capture_io(capture_stderr: bool = True):
    """Within the context stdout (and stderr) go to a StringIO, which the context yields."""
    buf = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(buf))
        if capture_stderr:
            stack.enter_context(contextlib.redirect_stderr(buf))
        yield buf


@contextlib.contextmanager
def silence_matched_warnings(pattern: str | None = None):
    """Within the context, warnings whose message matches the regex `pattern` (all if None)
    are ignored."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=pattern or "")
        yield


class DeprecatedError(NotImplementedError):
    """Raised by a feature that was removed."""


def clear_cuda_cache() -> None:
    """Empties the CUDA caching allocator (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def get_cuda_memory_stats(device=None) -> dict[str, float]:
    """Allocated / reserved / max-allocated CUDA memory in GB ({} without CUDA)."""
    if not torch.cuda.is_available():
        return {}
    gb = 1024**3
    return {"allocated": torch.cuda.memory_allocated(device) / gb,
            "reserved": torch.cuda.memory_reserved(device) / gb,
            "max_allocated": torch.cuda.max_memory_allocated(device) / gb}


def get_used_gpu_mem_fraction(device: str = "cuda:0") -> float:
    """Used fraction of the GPU's memory (0.0 without CUDA)."""
    if not torch.cuda.is_available():
        return 0.0
    free, total = torch.cuda.mem_get_info(device)
    return 1.0 - free / total


_MT = "modelopt.torch.utils"
_DATA = ("ModelOpt's dataset loaders (they download from the Hugging Face hub); build a "
         "forward_loop from your own batches, e.g. with mopt.utils.run_forward_loop")
_TREE = "ModelOpt's pytree flattening (use torch.utils._pytree)"
__all__ = [n for n in list(globals()) if not n.startswith("_") and n not in {
    "annotations", "contextlib", "fnmatch", "io", "os", "statistics", "sys", "warnings",
    "Callable", "Iterable", "Any", "TypeAlias", "torch", "nn", "define_refusals"}]
__all__ += define_refusals(globals(), _MT, {
    "create_forward_loop": ("function", _DATA),
    "get_dataset_dataloader": ("function", _DATA),
    "get_dataset_samples": ("function", _DATA),
    "get_jsonl_text_samples": ("function", _DATA),
    "get_supported_datasets": ("function", _DATA),
    "download_hf_dataset_as_jsonl": ("function", _DATA),
    "get_vlm_dataset_dataloader": ("function", _DATA),
    "get_supported_vlm_datasets": ("function", _DATA),
    "get_max_batch_size": ("function", "probing the largest batch that fits in GPU memory"),
    "prepare_messages_for_chat_template": ("function", _DATA),
    "REASONING_CONTENT_MODES": ("object", _DATA),
    "ReasoningContentMode": ("object", _DATA),
    "LossMaskRecovery": ("class", "ModelOpt's distillation loss masks"),
    "get_loss_mask_recovery": ("function", "ModelOpt's distillation loss masks"),
    "register_loss_mask_recovery": ("function", "ModelOpt's distillation loss masks"),
    "TreeSpec": ("class", _TREE),
    "flatten_tree": ("function", _TREE),
    "unflatten_tree": ("function", _TREE),
    "load_cpp_extension": ("function", "mopt's kernels are compiled into mopt._C; it builds no "
                           "extension at run time"),
    "import_plugin": ("function", "ModelOpt's plugin loader; mopt loads its plugins "
                      "(mopt.quantization.plugins) when their library is importable"),
    "safe_save": ("function", "ModelOpt's pickle-based save; use mopt.opt.save "
                  "(safetensors + JSON)"),
    "safe_load": ("function", "ModelOpt's pickle-based load; use mopt.opt.restore "
                  "(safetensors + JSON)"),
    "json_dump": ("function", "ModelOpt's robust JSON writer (use json.dump)"),
    "json_dumps": ("function", "ModelOpt's robust JSON writer (use json.dumps)"),
    "json_load": ("function", "ModelOpt's robust JSON reader (use json.load)"),
    "atomic_print": ("function", "ModelOpt's multi-process print decorator"),
    "TeeStream": ("class", "ModelOpt's stream tee for logs"),
    "Timer": ("class", "ModelOpt's timing helpers (use time.perf_counter)"),
    "AccumulatingTimer": ("class", "ModelOpt's timing helpers (use time.perf_counter)"),
    "report_memory": ("function", "ModelOpt's memory report (use get_cuda_memory_stats)"),
    "model_to": ("function", "ModelOpt's model-like conversion (NAS/pruning model factories)"),
    "init_model_from_model_like": ("function", "ModelOpt's model-like constructors "
                                   "(NAS/pruning model factories)"),
    "standardize_model_like_tuple": ("function", "ModelOpt's model-like constructors "
                                     "(NAS/pruning model factories)"),
    "standardize_constructor_args": ("function", "ModelOpt's model-like constructors "
                                     "(NAS/pruning model factories)"),
    "standardize_model_args": ("function", "ModelOpt's forward-signature helpers (ONNX export "
                               "and NAS)"),
    "standardize_named_model_args": ("function", "ModelOpt's forward-signature helpers (ONNX "
                                     "export and NAS)"),
    "param_num_from_forward": ("function", "counting parameters reached by a forward pass "
                               "(NAS)"),
    "create_param_grad_clear_hook": ("function", "ModelOpt's gradient hooks (NAS/pruning)"),
    "remove_bn": ("function", "ModelOpt's BatchNorm removal (NAS/pruning)"),
    "match": ("function", "ModelOpt's FX graph pattern matching"),
    "to_empty_if_meta_device": ("function", "materializing meta-device modules"),
})
del sys
