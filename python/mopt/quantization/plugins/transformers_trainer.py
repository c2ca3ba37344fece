"""Quantization-aware training (QAT) and distillation (QAD) with the Hugging Face ``Trainer``:
``QATTrainer``, ``QADTrainer`` and ``QuantizationArguments`` under the names of nvidia-modelopt's
``modelopt.torch.quantization.plugins.transformers_trainer``, so a ModelOpt script ports by
changing its imports.

* The model is quantized and calibrated when training (or evaluation, or prediction) starts,
  on the first ``calib_size`` samples of the train dataset (the eval dataset when there is none)
  through the eval dataloader, before the optimizer is built, so learned scales (the ``lsq``
  algorithm) are trained with the weights.
* The quantized state (mode history and every tensor, mopt's safe state file) is written to
  ``<output_dir>/modelopt_state_train.safetensors`` right after calibration; a trainer built
  later on a fresh model with the same ``output_dir`` restores it, so
  ``train(resume_from_checkpoint=...)`` then loads the checkpoint's weights and quantizer tensors
  into quantizers of the same layout. The quantizer tensors are in ``model.state_dict()``, so
  every checkpoint ``Trainer`` saves carries them.
* A quantization config is named by ``quant_cfg=`` (a config dict, an ``mtq.*_CFG`` name or a
  ``mopt ptq`` short name such as ``int4_b32``) or by ``QuantizationArguments(recipe=...)``
  (ModelOpt 0.47 names a recipe YAML file there; mopt takes the names above).
* Training refuses a model whose enabled static quantizers have no calibrated amax, naming them,
  before any step; a config that needs calibration data with neither a train nor an eval dataset
  is refused when the trainer is built, before the model is touched.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from ... import distill as mtd
from ... import opt as mto
from .. import model_quant
from ..config import need_calibration
from ..utils import is_quantized, uncalibrated_quantizers

__all__ = ["QADTrainer", "QATTrainer", "QuantizationArguments", "uncalibrated_quantizers"]

STATE_FILE = "modelopt_state_train.safetensors"
IGNORE_INDEX = nn.CrossEntropyLoss().ignore_index


@dataclass
class QuantizationArguments:
    """Quantization arguments (ModelOpt's fields; usable with ``HfArgumentParser``)."""

    recipe: str | None = field(
        default=None,
        metadata={"help": "Quantization config: a `mopt ptq` short name (int4_b32, nvfp4, ...) "
                          "or an mtq config name (NVFP4_DEFAULT_CFG)."})
    calib_size: int = field(
        default=512,
        metadata={"help": "Samples of the train dataset that calibrate the quantizers."})
    compress: bool = field(
        default=False,
        metadata={"help": "Compress the weights after calibration (QLoRA); not available in "
                          "mopt's trainer."})


def _resolve_config(quant_cfg: Any) -> dict | None:
    if quant_cfg is None:
        return None
    if isinstance(quant_cfg, dict):
        return copy.deepcopy(quant_cfg)
    if isinstance(quant_cfg, str):
        if quant_cfg.endswith((".yaml", ".yml")) or os.sep in quant_cfg:
            raise ValueError(
                f"mopt: quantization recipe {quant_cfg!r} looks like a ModelOpt recipe file; mopt "
                "takes a `mopt ptq` short name (e.g. int4_b32) or an mtq config name "
                "(e.g. INT4_BLOCKWISE_WEIGHT_ONLY_CFG) or a config dict")
        from ...ptq.configs import resolve_configs

        (resolved,) = resolve_configs(quant_cfg)  # ValueError names an unknown name
        return resolved.build()
    raise TypeError(f"mopt: quant_cfg must be a config dict or a config name, got "
                    f"{type(quant_cfg).__name__}")


class QATTrainer(Trainer):
    """A drop-in ``transformers.Trainer`` for quantization-aware training (ModelOpt's
    ``QATTrainer``). Extra keyword arguments: ``quant_args`` (``QuantizationArguments``) and
    ``quant_cfg`` (a config dict or name; wins over ``quant_args.recipe``). Without either, the
    model is trained as given (it may already be quantized)."""

    def __init__(self, *args, quant_args: QuantizationArguments | None = None,
                 quant_cfg: dict | str | None = None, **kwargs) -> None:
        quant_args = quant_args or QuantizationArguments()
        if quant_args.compress:
            raise NotImplementedError(
                "mopt: QuantizationArguments(compress=True) (QLoRA's packed base) is not "
                "available in mopt's QATTrainer; quantize without compress")
        if not (isinstance(quant_args.calib_size, int) and quant_args.calib_size > 0):
            raise ValueError(f"mopt: calib_size must be a positive integer, got "
                             f"{quant_args.calib_size!r}")
        config = _resolve_config(quant_cfg if quant_cfg is not None else quant_args.recipe)
        super().__init__(*args, **kwargs)
        self.quant_args = quant_args
        self.quant_cfg = config
        if (config is not None and need_calibration(config) and self.train_dataset is None
                and self.eval_dataset is None):
            raise ValueError(
                "mopt: the quantization config has static quantizers that need calibration "
                "data, but the trainer has neither a train_dataset nor an eval_dataset to "
                "calibrate on; pass one, or quantize the model yourself before training")
        self._modelopt_state_path = os.path.join(self.args.output_dir, STATE_FILE)
        if os.path.isfile(self._modelopt_state_path) and not is_quantized(self.model):
            mto.restore(self.model, self._modelopt_state_path)

    # -- quantization ---------------------------------------------------------------------------
    def _quantize_model(self) -> None:
        dataset = self.train_dataset if self.train_dataset is not None else self.eval_dataset
        loader = None
        if dataset is not None:
            count = min(self.quant_args.calib_size, len(dataset))
            loader = self.get_eval_dataloader(torch.utils.data.Subset(dataset, range(count)))

        def forward_loop(model: nn.Module) -> None:
            for batch in loader:
                batch = self._prepare_inputs(batch)
                batch.pop("labels", None)
                model(**batch)

        was_training = self.model.training
        self.model.eval()
        try:
            model_quant.quantize(self.model, self.quant_cfg,
                                 forward_loop if loader is not None else None)
        finally:
            self.model.train(was_training)
        if self.args.should_save:
            os.makedirs(self.args.output_dir, exist_ok=True)
            mto.save(self.model, self._modelopt_state_path)

    def _prepare_quantized(self) -> None:
        if self.quant_cfg is not None and not is_quantized(self.model):
            self._quantize_model()

    def _check_calibrated(self) -> None:
        missing = uncalibrated_quantizers(self.model)
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more"
                                              if len(missing) > 8 else "")
            raise RuntimeError(
                f"mopt: cannot train: {len(missing)} enabled static quantizer(s) have no "
                f"calibrated amax: {shown}; calibrate them (mtq.quantize with a forward_loop, or "
                "pass quant_cfg and a train_dataset to the trainer) or disable them")

    def train(self, *args, **kwargs):
        """Quantizes and calibrates the model if it is not yet, checks every enabled static
        quantizer is calibrated, then trains as ``Trainer.train``."""
        self._prepare_quantized()
        self._check_calibrated()
        return super().train(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        """``Trainer.evaluate`` of the quantized model (quantized first if needed)."""
        self._prepare_quantized()
        return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        """``Trainer.predict`` of the quantized model (quantized first if needed)."""
        self._prepare_quantized()
        return super().predict(*args, **kwargs)


def _distill_settings(distill_args: Any, distill_config: Any) -> tuple[nn.Module, nn.Module]:
    source = distill_args if distill_args is not None else distill_config
    if source is None:
        raise ValueError("mopt: QADTrainer needs distill_args (or distill_config) with a "
                         "teacher_model")

    def get(key: str, default: Any = None) -> Any:
        if isinstance(source, dict):
            return source.get(key, default)
        return getattr(source, key, default)

    teacher = get("teacher_model")
    if not isinstance(teacher, nn.Module):
        raise TypeError("mopt: distill_args.teacher_model must be a loaded nn.Module, got "
                        f"{type(teacher).__name__}")
    criterion = get("criterion", "logits_loss")
    temperature = get("temperature", 1.0)
    if isinstance(criterion, str):
        if criterion != "logits_loss":
            raise ValueError(f"mopt: unsupported distillation criterion {criterion!r}; "
                             "supported: 'logits_loss' or an nn.Module loss")
        criterion = mtd.LogitsDistillationLoss(temperature, reduction="none")
    elif isinstance(criterion, dict):  # ModelOpt's older {(student, teacher): loss} form
        losses = list(criterion.values())
        if len(losses) != 1 or not isinstance(losses[0], nn.Module):
            raise ValueError("mopt: distill_config['criterion'] must map the output layers to "
                             "one loss module")
        criterion = losses[0]
    if not isinstance(criterion, nn.Module):
        raise TypeError(f"mopt: criterion must be 'logits_loss' or an nn.Module, got "
                        f"{type(criterion).__name__}")
    return teacher, criterion


class QADTrainer(QATTrainer):
    """``QATTrainer`` that trains on the distillation loss from a teacher (ModelOpt's
    ``QADTrainer``): ``distill_args`` (ModelOpt 0.47: ``teacher_model``, ``criterion``
    ``"logits_loss"``, ``temperature``; a dict or an object) or ``distill_config`` (older
    ModelOpt: ``teacher_model`` and ``criterion``, a loss module or ``{layers: loss}``). The
    teacher runs in eval mode without gradients; the loss is the per-token KL of the shifted
    logits averaged over the tokens whose label is not -100, as ModelOpt's. ``evaluate`` reports
    the same loss as ``eval_loss``."""

    def __init__(self, *args, distill_args: Any = None, distill_config: Any = None,
                 **kwargs) -> None:
        teacher, criterion = _distill_settings(distill_args, distill_config)
        super().__init__(*args, **kwargs)
        teacher.requires_grad_(False)
        self._teacher_model = teacher.to(self.args.device)
        self._kd_criterion = criterion
        # the loss is a mean over one micro-batch: Trainer divides it by the accumulation steps
        self.loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        kd_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**kd_inputs)
        student_logits = outputs.logits[..., :-1, :]
        teacher_logits = mtd.teacher_logits(self._teacher_model, **kd_inputs)[..., :-1, :]
        per_token = self._kd_criterion(student_logits, teacher_logits)
        del teacher_logits
        if per_token.dim() == 0:  # a criterion that reduces by itself
            loss = per_token
        elif labels is None:
            loss = per_token.mean()
        else:
            mask = labels[..., 1:] != IGNORE_INDEX
            loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
        return (loss, outputs) if return_outputs else loss
