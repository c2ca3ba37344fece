"""``mtc.cachify``: cache the blocks (or whole calls) of a diffusion denoiser (SPEC §4).

As ModelOpt's ``cachify`` module::

    import mopt.cache_diffusion as mtc

    mtc.cachify.prepare(pipe, mtc.SDXL_DEFAULT_CONFIG)
    with mtc.cachify.infer(pipe) as cached_pipe:
        images = cached_pipe(prompt, num_inference_steps=30).images

``pipe_or_model`` is a diffusers pipeline (its ``unet`` or ``transformer``), mopt's
``DDPMPipeline`` (its ``denoiser``), any object holding the denoiser as ``denoiser`` / ``unet`` /
``transformer``, or the denoiser ``nn.Module`` itself (a plain step loop calls it; reset the
counters between runs with ``reset_status`` or ``infer``). Counters reset at the start of every
pipeline call. The cacheable blocks are the down/mid/up blocks of a UNet, the transformer blocks
of a DiT / PixArt / SD3 transformer, and any submodule of another denoiser.
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import warnings
from typing import Any, Iterator

from torch import nn

from .config import normalize_config_list
from .module import CacheState, cache_state, make_cached, remove_cached

__all__ = [
    "prepare",
    "enable",
    "disable",
    "reset_status",
    "infer",
    "remove",
    "cached_blocks",
    "stats",
    "denoiser_of",
    "block_layout",
    "noise_schedule",
]

_DENOISER_ATTRS = ("denoiser", "unet", "transformer")


def denoiser_of(pipe_or_model: Any) -> nn.Module:
    """The denoiser a pipeline holds (or the module itself)."""
    if isinstance(pipe_or_model, nn.Module):
        return pipe_or_model
    for attr in _DENOISER_ATTRS:
        m = getattr(pipe_or_model, attr, None)
        if isinstance(m, nn.Module):
            return m
    raise TypeError(f"mopt: cachify needs an nn.Module denoiser or a pipeline holding one as "
                    f"{' / '.join(_DENOISER_ATTRS)}; got {type(pipe_or_model).__name__}")


def block_layout(denoiser: nn.Module) -> tuple[str, list[str]]:
    """The denoiser's block layout ("unet", "dit", "sd3" or "generic") and the names of its
    cacheable blocks, in module order."""
    mods = dict(denoiser.named_children())
    if isinstance(mods.get("down_blocks"), nn.ModuleList) and isinstance(
            mods.get("up_blocks"), nn.ModuleList):
        names = [f"down_blocks.{i}" for i in range(len(mods["down_blocks"]))]
        if isinstance(mods.get("mid_block"), nn.Module):
            names.append("mid_block")
        names += [f"up_blocks.{i}" for i in range(len(mods["up_blocks"]))]
        return "unet", names
    if isinstance(mods.get("transformer_blocks"), nn.ModuleList):
        blocks = mods["transformer_blocks"]
        joint = "SD3" in type(denoiser).__name__ or any(
            "Joint" in type(b).__name__ for b in blocks)
        return ("sd3" if joint else "dit"), [f"transformer_blocks.{i}" for i in range(len(blocks))]
    return "generic", [n for n, _ in denoiser.named_modules() if n]


def noise_schedule(pipe_or_model: Any):
    """step -> alpha_bar of the k-th denoiser call of a pipeline run, read from the pipeline's
    ``alphas_cumprod`` and ``timesteps`` (mopt's DDPMPipeline) or its ``scheduler``'s (diffusers)
    at call time. ValueError for a bare denoiser, a pipeline without a schedule, or a scheduler
    whose model does not predict epsilon."""
    if isinstance(pipe_or_model, nn.Module):
        raise ValueError("mopt: forecast_space 'sample' needs the pipeline's noise schedule; "
                         "prepare the pipeline, not its bare denoiser")
    scheduler = getattr(pipe_or_model, "scheduler", None)
    source = next((s for s in (pipe_or_model, scheduler) if s is not None
                   and hasattr(s, "alphas_cumprod") and hasattr(s, "timesteps")), None)
    if source is None:
        raise ValueError(f"mopt: forecast_space 'sample' needs the noise schedule "
                         f"(alphas_cumprod and timesteps) on {type(pipe_or_model).__name__} or "
                         "its scheduler")
    prediction = getattr(getattr(scheduler, "config", None), "prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ValueError(f"mopt: forecast_space 'sample' converts epsilon predictions; this "
                         f"scheduler's prediction_type is {prediction!r}")

    def alpha_bar(step: int) -> float:
        return float(source.alphas_cumprod[int(source.timesteps[step])])

    return alpha_bar


def _matches(pattern: Any, name: str) -> bool:
    if isinstance(pattern, str):
        return fnmatch.fnmatchcase(name, pattern)
    return bool(pattern(name))


def _states(pipe_or_model: Any) -> dict[str, CacheState]:
    denoiser = denoiser_of(pipe_or_model)
    return {name or "<denoiser>": s for name, m in denoiser.named_modules()
            if (s := cache_state(m)) is not None}


def cached_blocks(pipe_or_model: Any) -> dict[str, CacheState]:
    """Name -> cache of every cached block ("<denoiser>" for step-level caching)."""
    return _states(pipe_or_model)


def stats(pipe_or_model: Any) -> dict[str, dict]:
    """Name -> {calls, recomputes, reuses} of every cached block in the current run."""
    return {name: s.stats() for name, s in _states(pipe_or_model).items()}


def prepare(pipe_or_model: Any, config_list: Any) -> None:
    """Caches the blocks of the denoiser that the entries of `config_list` match (see
    mopt.cache_diffusion.config). Raises before changing anything when an entry matches no
    block, a default config meets a denoiser of another block layout, or the denoiser is cached
    already."""
    entries = normalize_config_list(config_list)
    denoiser = denoiser_of(pipe_or_model)
    if _states(pipe_or_model):
        raise ValueError("mopt: this denoiser is cached already; call mtc.cachify.remove first")
    layout, candidates = block_layout(denoiser)
    wanted = getattr(config_list, "layout", None)
    if wanted is not None and wanted != layout:
        raise ValueError(f"mopt: this cache config is written for the '{wanted}' block layout, "
                         f"but {type(denoiser).__name__} has the '{layout}' layout; pick the "
                         "config of its layout or write a config_list for its block names")
    modules = dict(denoiser.named_modules())
    plan: list[tuple[str, dict]] = []
    step_entries = [e for e in entries if e["level"] == "step"]
    block_entries = [e for e in entries if e["level"] == "block"]
    if step_entries and block_entries:
        raise ValueError("mopt: a config list caches either whole denoiser calls (level 'step') "
                         "or blocks, not both")
    if len(step_entries) > 1:
        raise ValueError("mopt: give one level 'step' entry")
    if step_entries:
        plan.append(("", step_entries[0]))
    matched = [False] * len(block_entries)
    for name in candidates:
        if any(name.startswith(p + ".") for p, _ in plan):
            continue  # inside a block cached already (generic layouts)
        for i, entry in enumerate(block_entries):
            if _matches(entry["wildcard_or_filter_func"], name):
                matched[i] = True
                plan.append((name, entry))
                break
    for i, ok in enumerate(matched):
        if not ok:
            pattern = block_entries[i]["wildcard_or_filter_func"]
            shown = pattern if isinstance(pattern, str) else getattr(pattern, "__name__", pattern)
            raise ValueError(f"mopt: cache config entry {shown!r} matches no cacheable block of "
                             f"{type(denoiser).__name__} (layout '{layout}'; blocks: "
                             f"{', '.join(candidates[:12])}{', ...' if len(candidates) > 12 else ''})")
    for name, entry in plan:
        if entry["probe"] != "input" and entry["probe"] not in modules:
            raise ValueError(f"mopt: cache config probe '{entry['probe']}' names no submodule of "
                             f"{type(denoiser).__name__}")
    states = [(name, CacheState(name or "<denoiser>", entry["policy"],
                                entry.get("select_cache_step_func"), entry["probe"],
                                entry["forecast_space"],
                                noise_schedule(pipe_or_model)
                                if entry["forecast_space"] == "sample" else None))
              for name, entry in plan]  # policies parsed (ValueError) before any change
    for (name, entry), (_, state) in zip(plan, states):
        make_cached(modules[name], state)
        if entry["probe"] != "input":
            state.hook = modules[entry["probe"]].register_forward_hook(state.probe_hook)
    if not isinstance(pipe_or_model, nn.Module):
        _wrap_pipeline_call(pipe_or_model)


def remove(pipe_or_model: Any) -> None:
    """Undoes prepare: every block computes again and the pipeline's call is its own."""
    denoiser = denoiser_of(pipe_or_model)
    for _, m in denoiser.named_modules():
        s = cache_state(m)
        if s is not None:
            hook = getattr(s, "hook", None)
            if hook is not None:
                hook.remove()
            remove_cached(m)
    cls = type(pipe_or_model)
    if getattr(cls, "_mopt_cache_wrapped", False):
        pipe_or_model.__class__ = cls.__bases__[0]


def enable(pipe_or_model: Any) -> None:
    for s in _states(pipe_or_model).values():
        s.enabled = True


def disable(pipe_or_model: Any) -> None:
    """Every cached block computes at every call until enable()."""
    for s in _states(pipe_or_model).values():
        s.enabled = False


def reset_status(pipe_or_model: Any) -> None:
    """Starts a new run: call counters and cached features cleared. Warns when the run that
    ended made fewer calls than a calibrated schedule was made for."""
    for name, s in _states(pipe_or_model).items():
        expected = s.policy_config.get("num_steps", 0)
        if expected and 0 < s.policy.step < expected:
            warnings.warn(f"mopt: cached block '{name}' was calibrated for {expected} calls per "
                          f"run, but the last run made {s.policy.step}; its schedule did not "
                          "fit that run (calibrate again for this number of steps)", stacklevel=2)
        s.reset()


@contextlib.contextmanager
def infer(pipe_or_model: Any) -> Iterator[Any]:
    """Counters reset on entry and exit (ModelOpt's context)."""
    reset_status(pipe_or_model)
    try:
        yield pipe_or_model
    finally:
        for s in _states(pipe_or_model).values():
            s.reset()


def _requested_steps(pipe: Any, args: tuple, kwargs: dict) -> int | None:
    """num_inference_steps of a pipeline call (given, or the signature's default)."""
    if "num_inference_steps" in kwargs:
        return kwargs["num_inference_steps"]
    try:
        sig = inspect.signature(type(pipe).__call__)
        bound = sig.bind_partial(pipe, *args, **kwargs)
    except (TypeError, ValueError):
        return None
    if "num_inference_steps" in bound.arguments:
        return bound.arguments["num_inference_steps"]
    p = sig.parameters.get("num_inference_steps")
    return p.default if p is not None and p.default is not inspect.Parameter.empty else None


def _run_steps(pipe: Any, requested: int | None) -> int | None:
    """The denoiser calls a run makes (a pipeline may say how many per inference step)."""
    if requested is None:
        return None
    per = getattr(pipe, "denoiser_calls_per_step", 1)
    return requested * per if isinstance(requested, int) else None


def _wrap_pipeline_call(pipe: Any) -> None:
    """Makes every call of `pipe` start a new run (counters reset) and refuse to use a schedule
    calibrated for another number of steps."""
    cls = type(pipe)
    if getattr(cls, "_mopt_cache_wrapped", False):
        return

    def __call__(self, *args, **kwargs):
        states = _states(self)
        for s in states.values():
            s.reset()
        calls = _run_steps(self, _requested_steps(self, args, kwargs))
        mismatched = [n for n, s in states.items()
                      if calls is not None and s.policy_config.get("num_steps", 0) not in (0, calls)]
        for n in mismatched:
            warnings.warn(f"mopt: cached block '{n}' was calibrated for "
                          f"{states[n].policy_config['num_steps']} denoiser calls per run but "
                          f"this call makes {calls}: it runs uncached (calibrate again with "
                          "mtc.calibrate for this number of steps)", stacklevel=2)
            states[n].bypass = True
        try:
            return super(wrapped, self).__call__(*args, **kwargs)
        finally:
            for n in mismatched:
                states[n].bypass = False

    wrapped = type(cls.__name__, (cls,), {"__call__": __call__, "_mopt_cache_wrapped": True,
                                          "__module__": cls.__module__,
                                          "__qualname__": cls.__qualname__})
    pipe.__class__ = wrapped
