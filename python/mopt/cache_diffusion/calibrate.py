"""``mtc.calibrate``: the cheapest cache policy that meets a fidelity budget (SPEC §4).

1. The pipeline runs uncached on the calibration seeds; the cached target (the whole denoiser,
   or the blocks a config entry names) records a ``_C.CacheChangeProfile``: how fast its
   features change, call by call (1st-3rd differences, three feature sets kept at a time).
2. For every candidate family (a uniform interval, or recompute calls placed by
   ``_C.cache_schedule_from_profile`` at equal quantiles of the error density of a Taylor order)
   and every order (0: reuse, 1 and 2: forecast), in every space of a step-level cache (the
   prediction itself, or its denoised-sample estimate x0: ``forecast_space``; each space has its
   own profile), a bisection finds the fewest recomputes whose
   samples stay within the budget (PSNR in dB against the uncached samples of the same seed,
   ``_C.psnr_db``; every calibration seed must meet it).
3. The cheapest candidate wins; it is checked on ``eval_seeds`` (seeds calibration did not see)
   when given, and returned as a config list ``prepare`` takes.

The profile, the schedules and the metric are C++; this module runs the pipeline and keeps
score.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import torch

from .. import _C
from . import cachify
from .module import _first_tensor, cache_state

__all__ = ["CalibrationResult", "calibrate", "default_sample_fn"]

SampleFn = Callable[[Any, int], torch.Tensor]


def default_sample_fn(pipe: Any, seed: int) -> torch.Tensor:
    """Samples of mopt's DDPMPipeline (8 per seed); other pipelines need their own sample_fn."""
    return pipe(8, seed=seed)


@dataclasses.dataclass
class CalibrationResult:
    """The policy calibrate chose and what it measured."""

    config_list: list[dict]  # for mtc.cachify.prepare
    policy: dict  # the C++ policy settings of the winner
    num_steps: int  # cached-target calls per uncached run
    recomputes: int  # of the winner, per run
    psnr_calib: float  # worst calibration seed
    psnr_eval: float | None  # worst evaluation seed (None without eval_seeds)
    candidates: list[dict]  # every evaluated candidate: family, space, order, recomputes, psnr
    forecast_space: str = "output"  # of the winner: "output" or "sample" (x0)

    @property
    def call_ratio(self) -> float:
        """Uncached calls / cached recomputes of the cached target."""
        return self.num_steps / max(self.recomputes, 1)


def _budget_db(budget: Any) -> float:
    if isinstance(budget, dict):
        unknown = set(budget) - {"psnr"}
        if unknown or "psnr" not in budget:
            raise ValueError(f"mopt: calibrate's budget is {{'psnr': dB}} or a number of dB, got "
                             f"{budget}")
        budget = budget["psnr"]
    if not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise ValueError(f"mopt: calibrate's budget must be a PSNR in dB, got {budget!r}")
    return float(budget)


def _targets(pipe: Any) -> list[torch.nn.Module]:
    den = cachify.denoiser_of(pipe)
    return [m for _, m in den.named_modules() if cache_state(m) is not None]


def _profile(pipe: Any, entry: dict, seeds: Sequence[int], sample_fn: SampleFn,
             alpha_bar: Callable[[int], float] | None):
    """Uncached samples per seed and the summed change profiles of the cached target(s): of
    their outputs ("output") and, with `alpha_bar`, of the denoised-sample estimate x0 of the
    whole denoiser's prediction ("sample")."""
    cachify.prepare(pipe, [{**entry, "select_cache_step_func": lambda step: False}])
    targets = _targets(pipe)
    cachify.remove(pipe)  # the entry matched: profile the same modules, uncached
    merged = {"output": _C.CacheChangeProfile()}
    if alpha_bar is not None:
        merged["sample"] = _C.CacheChangeProfile()
    references = []

    def tensors(out):
        return [x for x in torch.utils._pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]

    def hook(mod, args, kwargs, out, profiles):
        profiles["output"].add(tensors(out))
        if "sample" in profiles:
            x = _first_tensor(args, kwargs)
            ab = float(alpha_bar(len(profiles["sample"])))
            profiles["sample"].add([_C.epsilon_to_sample(t, x, ab) if t.shape == x.shape else t
                                    for t in tensors(out)])

    for seed in seeds:
        per_target = [{k: _C.CacheChangeProfile() for k in merged} for _ in targets]
        handles = [m.register_forward_hook(
            lambda mod, args, kwargs, out, p=p: hook(mod, args, kwargs, out, p), with_kwargs=True)
            for m, p in zip(targets, per_target)]
        try:
            with torch.no_grad():
                references.append(sample_fn(pipe, seed))
        finally:
            for h in handles:
                h.remove()
        for p in per_target:
            for k, prof in p.items():
                merged[k].merge(prof)
    return references, merged, len(targets)


def _evaluate(pipe: Any, entry: dict, policy: dict, seeds: Sequence[int],
              references: Sequence[torch.Tensor], sample_fn: SampleFn) -> tuple[float, int]:
    """Worst PSNR over the seeds and recomputes per run of one candidate policy."""
    cachify.prepare(pipe, [{**entry, "policy": policy}])
    try:
        worst, recomputes = math.inf, 0
        for seed, ref in zip(seeds, references):
            cachify.reset_status(pipe)
            with torch.no_grad():
                out = sample_fn(pipe, seed)
            recomputes = max(s["recomputes"] for s in cachify.stats(pipe).values())
            worst = min(worst, _C.psnr_db(out, ref))
        return worst, recomputes
    finally:
        cachify.remove(pipe)


def calibrate(pipe_or_sampler: Any, budget: Any = 33.0, calib_seeds: Sequence[int] = (0,), *,
              config: dict | None = None, sample_fn: SampleFn | None = None,
              orders: Sequence[int] = (0, 1, 2), families: Sequence[str] = ("interval", "profile"),
              spaces: Sequence[str] | None = None, warmup: int = 1,
              eval_seeds: Sequence[int] | None = None, apply: bool = True) -> CalibrationResult:
    """Finds the policy with the fewest recomputes whose samples stay within `budget` (PSNR dB
    against uncached samples of the same seeds) on every seed of `calib_seeds`, for the cached
    target of `config` (a config entry without policy: {"level": "step"}, the default, caches
    whole denoiser calls; {"wildcard_or_filter_func": ...} blocks). `sample_fn(pipe, seed)`
    returns samples (default: mopt's DDPMPipeline, 8 per seed). With `apply` the pipeline is
    left prepared with the winner; otherwise uncached. `spaces`: what a step-level cache keeps
    and forecasts, "output" (the prediction) and/or "sample" (its denoised-sample estimate x0;
    see the config key forecast_space); default both where the pipeline exposes its noise
    schedule and the target is the whole denoiser, else "output"."""
    target = _budget_db(budget)
    if not calib_seeds:
        raise ValueError("mopt: calibrate needs at least one calibration seed")
    if eval_seeds and set(eval_seeds) & set(calib_seeds):
        raise ValueError(f"mopt: evaluation seeds {sorted(set(eval_seeds) & set(calib_seeds))} "
                         "are also calibration seeds; verify on seeds calibration did not see")
    for o in orders:
        if o not in (0, 1, 2):
            raise ValueError(f"mopt: calibrate's orders must be 0, 1 or 2, got {o}")
    for f in families:
        if f not in ("interval", "profile"):
            raise ValueError(f"mopt: calibrate's families are 'interval' and 'profile', got {f!r}")
    entry = dict(config or {"level": "step"})
    if "policy" in entry or "select_cache_step_func" in entry or "forecast_space" in entry:
        raise ValueError("mopt: calibrate chooses the policy: give the config entry without "
                         "'policy', 'select_cache_step_func' or 'forecast_space'")
    step_level = entry.get("level", "block") == "step"
    if spaces is None:
        spaces = ["output"]
        if step_level:
            try:
                cachify.noise_schedule(pipe_or_sampler)
                spaces.append("sample")
            except ValueError:
                pass
    spaces = list(spaces)
    if not spaces or any(sp not in ("output", "sample") for sp in spaces):
        raise ValueError(f"mopt: calibrate's spaces are 'output' and 'sample', got {spaces}")
    if "sample" in spaces and not step_level:
        raise ValueError("mopt: calibrate's 'sample' space needs a level 'step' config")
    alpha_bar = cachify.noise_schedule(pipe_or_sampler) if "sample" in spaces else None
    if cachify.cached_blocks(pipe_or_sampler):
        raise ValueError("mopt: the pipeline is cached already; call mtc.cachify.remove first")
    sample_fn = sample_fn or default_sample_fn
    # several cached blocks: their profiles are summed call by call (each makes every call)
    references, profiles, _ = _profile(pipe_or_sampler, entry, calib_seeds, sample_fn,
                                       alpha_bar)
    num_steps = len(profiles["output"])
    candidates: list[dict] = []

    def policy_for(family: str, space: str, order: int, recomputes: int) -> dict:
        if family == "interval":
            return {"interval": max(1, num_steps // recomputes), "order": order,
                    "warmup": warmup}
        steps = _C.cache_schedule_from_profile(profiles[space], recomputes, order, warmup)
        return {"recompute_steps": list(steps), "num_steps": num_steps, "order": order,
                "warmup": warmup}

    def meets(family: str, space: str, order: int, count: int):
        policy = policy_for(family, space, order, count)
        psnr, recomputes = _evaluate(pipe_or_sampler, {**entry, "forecast_space": space}, policy,
                                     calib_seeds, references, sample_fn)
        candidates.append({"family": family, "space": space, "order": order,
                           "recomputes": recomputes, "psnr": psnr})
        return (recomputes, psnr, policy, space) if psnr >= target else None

    best = None
    for family, space, order in [(f, sp, o) for sp in spaces for f in families for o in orders]:
        # galloping search from few recomputes (cheap runs) up, then bisection: the runs
        # that cost the most, with many recomputes, are only made when needed
        lo, count, found = max(1, warmup) - 1, max(1, warmup, 4), None
        while found is None:
            found = meets(family, space, order, count)
            if found is None:
                if count >= num_steps:
                    break
                lo, count = count, min(num_steps, 2 * count)
        hi = count - 1
        while found is not None and lo + 1 <= hi:
            mid = (lo + 1 + hi) // 2
            attempt = meets(family, space, order, mid)
            if attempt is not None:
                found, hi = attempt, mid - 1
            else:
                lo = mid
        if found is not None and (best is None or found[0] < best[0]):
            best = found
    if best is None:  # cannot happen: every call recomputing reproduces the uncached samples
        raise RuntimeError("mopt: no cache policy met the budget, not even recomputing every "
                           "call; the pipeline is not deterministic for a seed")
    recomputes, psnr, policy, space = best
    config_list = [{**entry, "policy": policy}]
    if step_level:
        config_list[0]["forecast_space"] = space
    psnr_eval = None
    if eval_seeds:
        refs = []
        for seed in eval_seeds:
            with torch.no_grad():
                refs.append(sample_fn(pipe_or_sampler, seed))
        psnr_eval, _ = _evaluate(pipe_or_sampler, config_list[0], policy, eval_seeds, refs,
                                 sample_fn)
    if apply:
        cachify.prepare(pipe_or_sampler, config_list)
    return CalibrationResult(config_list, policy, num_steps, recomputes, psnr, psnr_eval,
                             candidates, space)
