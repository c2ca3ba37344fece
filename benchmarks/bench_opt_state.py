#!/usr/bin/env python3
"""mopt.opt save / restore: time and file size of ``mto.save`` / ``mto.restore`` against the plain
float state_dict and against nvidia-modelopt's ``mto.save`` / ``mto.restore`` (what a user would
run instead), on stories260K and all-MiniLM-L6-v2 at INT8_DEFAULT_CFG, INT4_AWQ_CFG and
NVFP4_DEFAULT_CFG.

For each (model, config) the float model is quantized once by each library, calibrated on real
text (stories260K: windows of the TinyStories calibration text, disjoint from the evaluation
text; MiniLM: WikiText-2 rows), and the run times, interleaved so that a change of load hits
them alike (median of --repeats samples after one warm-up call of each; a sample averages k calls,
k chosen so that a sample lasts at least --min-sample seconds: the float loads of stories260K
take well under a millisecond):

* float torch      ``torch.save(model.state_dict(), f)`` of the unquantized float model, and
                   ``model.load_state_dict(torch.load(f))`` into a fresh float model (the baseline
                   of the "restore < 2x the plain float load" target),
* float st         safetensors' ``save_model`` / ``load_model`` of the same float model,
* mopt             ``mto.save(qmodel, f)`` (one safetensors file, written atomically: temporary
                   file, fsync, rename) and ``mto.restore(fresh, f)`` (replays the modes on a
                   fresh float model, then loads the tensors),
* modelopt         nvidia-modelopt's ``mto.save`` / ``mto.restore`` (torch.save / torch.load of
                   a pickle) on the same float model, calibration data and config, in a
                   subprocess (mopt and modelopt are never imported into one process).

Fresh models are constructed (``copy.deepcopy`` of the float model) before the clock starts;
files live in a temporary folder and are read from the page cache. Each row also checks that
mopt's restore re-runs nothing: a restore with every calibration entry point patched to count
calls (``mtq.calibrate``, ``TensorQuantizer.enable_calib`` / ``collect``) and a global forward
hook must count zero (the same counters count the quantize call, so they are known to work), and
the restored model's outputs and tensors must equal the saved model's bit for bit.

Run: PYTHONPATH=python python3 benchmarks/bench_opt_state.py [--models stories260K,minilm]
     [--configs int8,int4_awq,nvfp4] [--repeats 7] [--out out/bench_opt_state/results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import io
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]

CONFIGS = {  # row name -> the config's name in both libraries
    "int8": "INT8_DEFAULT_CFG",
    "int4_awq": "INT4_AWQ_CFG",
    "nvfp4": "NVFP4_DEFAULT_CFG",
}
MODELS = ("stories260K", "minilm")
MODEL_LABEL = {"stories260K": "stories260K", "minilm": "MiniLM-L6"}
RESULT_PREFIX = "BENCH_OPT_STATE_RESULT "


# ---------------------------------------------------------------------------------------------
# Shared by both processes (nothing here imports mopt or modelopt).


def machine_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs"


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


@contextlib.contextmanager
def quiet():
    """Both libraries print progress ("Inserted N quantizers", tqdm); kept out of the table."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def time_ops(ops: dict, repeats: int, min_sample: float, max_k: dict | None = None) -> dict:
    """Median seconds per call of each op. ops: name -> (setup, fn); setup() builds what one
    call consumes (a fresh model, outside the clock), fn(arg) is timed. After one warm-up call
    of each op, each of `repeats` rounds takes one sample of every op in turn (interleaved); a
    sample times k calls back to back (their args built first) and divides by k, k chosen from
    the warm-up so that a sample lasts >= min_sample seconds (capped by max_k[name])."""
    ks, samples = {}, {name: [] for name in ops}
    for name, (setup, fn) in ops.items():
        arg = setup()
        t0 = time.perf_counter()
        with quiet():
            fn(arg)
        t = time.perf_counter() - t0
        cap = (max_k or {}).get(name, 200)
        ks[name] = max(1, min(cap, math.ceil(min_sample / max(t, 1e-7))))
    for _ in range(repeats):
        for name, (setup, fn) in ops.items():
            args = [setup() for _ in range(ks[name])]
            gc.collect()
            gc.disable()  # as timeit does: a collection triggered by one op would land on another
            try:
                with quiet():
                    t0 = time.perf_counter()
                    for a in args:
                        fn(a)
                    t = time.perf_counter() - t0
            finally:
                gc.enable()
            samples[name].append(t / ks[name])
            del args
    return {name: {"seconds": statistics.median(v), "calls_per_sample": ks[name],
                   "samples": v} for name, v in samples.items()}


class CallCounter:
    """Replaces attributes (module functions, methods) with wrappers that count their calls, and
    counts every module forward through a global forward pre-hook; undone on exit."""

    def __init__(self, targets: list[tuple[object, str]]):
        self.targets = [(obj, attr) for obj, attr in targets if hasattr(obj, attr)]
        self.counts: dict[str, int] = {}

    def __enter__(self):
        self._saved = []
        for obj, attr in self.targets:
            key = f"{getattr(obj, '__name__', type(obj).__name__)}.{attr}"
            self.counts.setdefault(key, 0)
            self._saved.append((obj, attr, obj.__dict__.get(attr)))
            setattr(obj, attr, self._counting(getattr(obj, attr), key))
        self.counts["module forward calls"] = 0

        def hook(module, args):
            self.counts["module forward calls"] += 1

        self._hook = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def _counting(self, original, key):
        def wrapper(*a, **kw):
            self.counts[key] += 1
            return original(*a, **kw)
        return wrapper

    def __exit__(self, *exc):
        self._hook.remove()
        for obj, attr, own in reversed(self._saved):
            if own is None:  # inherited: drop the override again
                delattr(obj, attr)
            else:
                setattr(obj, attr, own)
        return False

    def total(self) -> int:
        return sum(self.counts.values())


def outputs(kind: str, model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        if kind == "stories260K":
            return model(inputs["eval_ids"]).logits
        return model(input_ids=inputs["eval_ids"],
                     attention_mask=inputs["eval_mask"]).last_hidden_state


def forward_loop_for(kind: str, inputs: dict):
    def loop(model):
        with torch.no_grad():
            if kind == "stories260K":
                for chunk in inputs["calib_ids"].split(4):
                    model(chunk)
            else:
                for ids, mask in zip(inputs["calib_ids"].split(8), inputs["calib_mask"].split(8)):
                    model(input_ids=ids, attention_mask=mask)
    return loop


def state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        not isinstance(v, torch.Tensor) or (v.shape == sb[k].shape and v.dtype == sb[k].dtype
                                            and torch.equal(v, sb[k]))
        for k, v in sa.items())


def count_quantizers(model) -> int:
    return sum(type(m).__name__ in ("TensorQuantizer", "SequentialQuantizer")
               for m in model.modules())


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


# ---------------------------------------------------------------------------------------------
# The nvidia-modelopt side (subprocess: --modelopt-worker SPEC.json).


def modelopt_worker(spec_path: str) -> int:
    spec = json.loads(pathlib.Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    with quiet():
        import modelopt
        import modelopt.torch.opt as mo
        import modelopt.torch.quantization as mq
        from modelopt.torch.quantization import model_calib as mq_calib
        from modelopt.torch.quantization import model_quant as mq_quant
        from modelopt.torch.quantization.nn import TensorQuantizer as MqTensorQuantizer
        from transformers import AutoModel, LlamaForCausalLM
        from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    kind = spec["model"]
    inputs = torch.load(spec["inputs"])
    cls = LlamaForCausalLM if kind == "stories260K" else AutoModel
    with quiet():
        base = cls.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
    result = {"modelopt_version": modelopt.__version__,
              "same_float_model": bool(torch.equal(outputs(kind, base, inputs),
                                                   inputs["float_reference"]))}
    cfg = copy.deepcopy(getattr(mq, spec["cfg_name"]))
    if kind == "minilm":
        # modelopt 0.47 also quantizes LayerNorm inputs (mopt's SPEC modules do not): switched
        # off, as in bench_huggingface.py, so that both quantize the same tensors
        cfg["quant_cfg"] = [*cfg["quant_cfg"],
                            {"quantizer_name": "*LayerNorm.input_quantizer", "enable": False}]
    counter_targets = [(mq, "calibrate"), (mq_quant, "calibrate"), (mq_calib, "max_calibrate"),
                       (mq_calib, "awq"), (MqTensorQuantizer, "enable_calib")]
    qmodel = copy.deepcopy(base)
    try:
        with quiet(), CallCounter(counter_targets) as c_quant:
            mq.quantize(qmodel, cfg, forward_loop_for(kind, inputs))
    except Exception as e:  # noqa: BLE001 - reported in the table
        result.update(status="n/a", reason=f"quantize failed on CPU: {first_line(e)}")
        print(RESULT_PREFIX + json.dumps(result))
        return 0
    tmp = pathlib.Path(spec["tmpdir"])
    path = str(tmp / "modelopt_state.pth")
    float_path = str(tmp / "modelopt_float.pt")
    try:
        with quiet():
            mo.save(qmodel, path)
        fresh = copy.deepcopy(base)
        with quiet(), CallCounter(counter_targets) as c_restore:
            mo.restore(fresh, path)
    except Exception as e:  # noqa: BLE001
        result.update(status="n/a", reason=f"save/restore failed: {first_line(e)}")
        print(RESULT_PREFIX + json.dumps(result))
        return 0
    try:
        with quiet():
            exact = bool(torch.equal(outputs(kind, qmodel, inputs), outputs(kind, fresh, inputs))
                         and state_equal(qmodel, fresh))
        bit_exact = "yes" if exact else "no"
    except Exception as e:  # noqa: BLE001 - modelopt's NVFP4 forward needs CUDA
        bit_exact = f"n/a ({first_line(e)})"
    torch.save(base.state_dict(), float_path)
    ops = {
        "modelopt_save": (lambda: None, lambda _: mo.save(qmodel, path)),
        "modelopt_restore": (lambda: copy.deepcopy(base), lambda m: mo.restore(m, path)),
        # the float load again, in this process: shows whether the two processes time alike
        "float_torch_load": (lambda: copy.deepcopy(base),
                             lambda m: m.load_state_dict(torch.load(float_path))),
    }
    timed = time_ops(ops, spec["repeats"], spec["min_sample"], spec["max_k"])
    result.update(
        status="ok",
        save_s=timed["modelopt_save"]["seconds"],
        restore_s=timed["modelopt_restore"]["seconds"],
        float_torch_load_s=timed["float_torch_load"]["seconds"],
        calls_per_sample={k: v["calls_per_sample"] for k, v in timed.items()},
        bytes=os.path.getsize(path),
        quantizers=count_quantizers(qmodel),
        bit_exact=bit_exact,
        calibration_calls_quantize=c_quant.counts,
        calibration_calls_restore=c_restore.counts,
        mopt_imported="mopt" in sys.modules,
    )
    print(RESULT_PREFIX + json.dumps(result))
    return 0


def run_modelopt(spec: dict, tmp: pathlib.Path) -> dict:
    spec_path = tmp / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no mopt on the path
    env.setdefault("HF_HUB_OFFLINE", "1")
    try:
        proc = subprocess.run(
            [sys.executable, str(pathlib.Path(__file__).resolve()), "--modelopt-worker",
             str(spec_path)], capture_output=True, text=True, env=env, timeout=1800, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "n/a", "reason": "modelopt subprocess timed out"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "n/a", "reason": f"modelopt subprocess failed (rc {proc.returncode}): "
            f"{tail}"}


# ---------------------------------------------------------------------------------------------
# The mopt side (this process).


def load_model(kind: str, args) -> tuple[torch.nn.Module, dict]:
    """The float model (eval mode) and its calibration / evaluation inputs."""
    from mopt import data

    if kind == "stories260K":
        from mopt.eval import text_calibration_batches
        from mopt.models import Llama2cTokenizer, load_llama2c

        model = load_llama2c().eval()
        tok = Llama2cTokenizer.from_file()
        calib = text_calibration_batches(tok.encode(data.default_calib_text()),
                                         args.calib_samples, args.seq_len)
        eval_ids = torch.tensor(tok.encode(data.default_eval_text())[: 2 * 128]).view(2, 128)
        return model, {"calib_ids": calib, "eval_ids": eval_ids}
    from mopt.eval import embeddings as emb

    with quiet():
        enc_model = emb.load_minilm()
    calib = emb.tokenize(enc_model, emb.wikitext_sentences(args.calib_samples * 2, skip=32))
    ev = emb.tokenize(enc_model, emb.wikitext_sentences(8))
    # both libraries get the BERT encoder (a transformers PreTrainedModel, which modelopt's
    # plugin needs); the sentence-embedding wrapper adds only mean pooling
    return enc_model.encoder.eval(), {"calib_ids": calib["input_ids"],
                                      "calib_mask": calib["attention_mask"],
                                      "eval_ids": ev["input_ids"],
                                      "eval_mask": ev["attention_mask"]}


def measure_mopt(kind: str, name: str, base, inputs: dict, tmp: pathlib.Path, args,
                 max_k: dict) -> dict:
    import mopt.opt as mto
    import mopt.quantization as mtq
    import safetensors.torch as st
    from mopt.quantization import model_calib, model_quant
    from mopt.quantization.nn.modules.tensor_quantizer import TensorQuantizer

    counter_targets = [(mtq, "calibrate"), (model_quant, "calibrate"),
                       (model_calib, "calibrate"), (TensorQuantizer, "enable_calib"),
                       (TensorQuantizer, "collect")]
    qmodel = copy.deepcopy(base)
    t0 = time.perf_counter()
    with quiet(), CallCounter(counter_targets) as c_quant:
        mtq.quantize(qmodel, copy.deepcopy(getattr(mtq, CONFIGS[name])),
                     forward_loop_for(kind, inputs))
    quantize_s = time.perf_counter() - t0
    path = str(tmp / "mopt_state.safetensors")
    mto.save(qmodel, path)
    fresh = copy.deepcopy(base)
    with quiet(), CallCounter(counter_targets) as c_restore:
        mto.restore(fresh, path)
    exact = bool(torch.equal(outputs(kind, qmodel, inputs), outputs(kind, fresh, inputs))
                 and state_equal(qmodel, fresh))
    if c_quant.total() == 0:
        raise RuntimeError("the calibration counters saw nothing during quantize: they do not "
                           "hook mopt's calibration any more; fix the counter targets")
    torch_path, st_path = str(tmp / "float.pt"), str(tmp / "float.safetensors")
    ops = {
        "float_torch_save": (lambda: None, lambda _: torch.save(base.state_dict(), torch_path)),
        "float_torch_load": (lambda: copy.deepcopy(base),
                             lambda m: m.load_state_dict(torch.load(torch_path))),
        "float_st_save": (lambda: None, lambda _: st.save_model(base, st_path)),
        "float_st_load": (lambda: copy.deepcopy(base), lambda m: st.load_model(m, st_path)),
        "mopt_save": (lambda: None, lambda _: mto.save(qmodel, path)),
        "mopt_restore": (lambda: copy.deepcopy(base), lambda m: mto.restore(m, path)),
    }
    timed = time_ops(ops, args.repeats, args.min_sample, max_k)
    return {
        "quantize_s": quantize_s,
        "timed": timed,
        "bytes": os.path.getsize(path),
        "float_torch_bytes": os.path.getsize(torch_path),
        "float_st_bytes": os.path.getsize(st_path),
        "quantizers": count_quantizers(qmodel),
        "bit_exact": exact,
        "calibration_calls_quantize": c_quant.counts,
        "calibration_calls_restore": c_restore.counts,
        "restore_calibrated": c_restore.total() != 0,
    }


def fmt_ms(s: float | None) -> str:
    if s is None:
        return "n/a"
    ms = s * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_kb(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 1024:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--min-sample", type=float, default=0.05,
                    help="seconds one timed sample lasts at least (k calls averaged)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib-samples", type=int, default=8,
                    help="stories260K: windows of --seq-len tokens; MiniLM: 2x this many rows")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--no-modelopt", action="store_true", help="mopt and the baselines only")
    ap.add_argument("--out", default="out/bench_opt_state/results.json")
    ap.add_argument("--modelopt-worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.modelopt_worker:
        return modelopt_worker(args.modelopt_worker)

    sys.path.insert(0, str(ROOT / "python"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown config {c!r}; choose from {', '.join(CONFIGS)}")
    import mopt
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        from importlib.metadata import version

        modelopt_version = version("nvidia-modelopt")
    except Exception:  # noqa: BLE001
        modelopt_version = None
    if args.no_modelopt:
        modelopt_version = None
    load_before = load_average()
    started = time.perf_counter()
    setup = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_name(),
        "torch": torch.__version__,
        "threads": args.threads,
        "mopt": getattr(mopt, "__version__", "?"),
        "nvidia_modelopt": modelopt_version,
        "load_average_before": load_before,
        "repeats": args.repeats,
        "min_sample_s": args.min_sample,
        "timing": "median over repeats of per-call seconds; each sample averages k back-to-back "
                  "calls (calls_per_sample); one warm-up call of each op; ops interleaved; "
                  "fresh models built (copy.deepcopy of the float model) outside the clock; "
                  "files in a temporary folder, read from the page cache",
        "calibration": {"stories260K": f"{args.calib_samples} x {args.seq_len} tokens of the "
                        "TinyStories calibration text, batch 4",
                        "minilm": f"{args.calib_samples * 2} WikiText-2 rows, batch 8"},
        "command": " ".join(["PYTHONPATH=python python3 benchmarks/bench_opt_state.py",
                             *sys.argv[1:]]),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_opt_state_") as tmpname:
        tmp = pathlib.Path(tmpname)
        for kind in models:
            print(f"[{kind}] loading", file=sys.stderr, flush=True)
            base, inputs = load_model(kind, args)
            inputs["float_reference"] = outputs(kind, base, inputs)
            model_dir = tmp / f"{kind}_float"
            base.save_pretrained(str(model_dir))
            torch.save(inputs, tmp / f"{kind}_inputs.pt")
            nbytes = sum(t.numel() * t.element_size() for t in base.state_dict().values())
            # k fresh models live at once during a restore sample: at most ~1 GiB of them
            max_k = {n: max(1, (1 << 30) // max(nbytes, 1)) for n in
                     ("float_torch_load", "float_st_load", "mopt_restore", "modelopt_restore")}
            for name in configs:
                print(f"[{kind}] {name}: mopt", file=sys.stderr, flush=True)
                row = {"model": kind, "config": name, "cfg_name": CONFIGS[name]}
                try:
                    r = measure_mopt(kind, name, base, inputs, tmp, args, max_k)
                except Exception as e:  # noqa: BLE001 - reported in the table
                    row.update(status="failed", reason=f"mopt: {first_line(e)}", metric=None)
                    rows.append(row)
                    continue
                t = {k: v["seconds"] for k, v in r["timed"].items()}
                row.update(
                    status="ok",
                    metric=t["mopt_restore"] / t["float_torch_load"],
                    float_torch_save_s=t["float_torch_save"],
                    float_torch_load_s=t["float_torch_load"],
                    float_st_save_s=t["float_st_save"],
                    float_st_load_s=t["float_st_load"],
                    mopt_save_s=t["mopt_save"],
                    mopt_restore_s=t["mopt_restore"],
                    mopt_quantize_s=r["quantize_s"],
                    float_torch_bytes=r["float_torch_bytes"],
                    float_st_bytes=r["float_st_bytes"],
                    mopt_bytes=r["bytes"],
                    mopt_quantizers=r["quantizers"],
                    restore_over_float_torch_load=t["mopt_restore"] / t["float_torch_load"],
                    restore_over_float_st_load=t["mopt_restore"] / t["float_st_load"],
                    restore_under_2x_float_load=t["mopt_restore"] < 2 * t["float_torch_load"],
                    mopt_bit_exact=r["bit_exact"],
                    mopt_restore_calibrated=r["restore_calibrated"],
                    mopt_calibration_calls_quantize=r["calibration_calls_quantize"],
                    mopt_calibration_calls_restore=r["calibration_calls_restore"],
                    calls_per_sample={k: v["calls_per_sample"] for k, v in r["timed"].items()},
                    samples_s={k: v["samples"] for k, v in r["timed"].items()},
                )
                if modelopt_version is None:
                    mo = {"status": "n/a", "reason": "nvidia-modelopt not installed or "
                          "--no-modelopt"}
                else:
                    print(f"[{kind}] {name}: modelopt (subprocess)", file=sys.stderr, flush=True)
                    mo = run_modelopt({
                        "model": kind, "model_dir": str(model_dir), "cfg_name": CONFIGS[name],
                        "inputs": str(tmp / f"{kind}_inputs.pt"), "tmpdir": str(tmp),
                        "threads": args.threads, "repeats": args.repeats,
                        "min_sample": args.min_sample, "max_k": max_k}, tmp)
                row["modelopt"] = mo
                if mo.get("status") == "ok":
                    row.update(
                        modelopt_save_s=mo["save_s"], modelopt_restore_s=mo["restore_s"],
                        modelopt_bytes=mo["bytes"],
                        restore_mopt_over_modelopt=t["mopt_restore"] / mo["restore_s"],
                        save_mopt_over_modelopt=t["mopt_save"] / mo["save_s"],
                        bytes_mopt_over_modelopt=r["bytes"] / mo["bytes"],
                    )
                rows.append(row)
            del base

    print(f"\nmopt.opt save / restore; machine: {setup['machine']}, torch {torch.__version__}, "
          f"{args.threads} thread(s), load average {load_before} at the start; "
          f"mopt {setup['mopt']} vs nvidia-modelopt {modelopt_version or 'n/a'}")
    print(f"median of {args.repeats} samples after one warm-up (a sample averages k calls, "
          f">= {args.min_sample * 1e3:.0f} ms); times in ms, sizes in KiB; float = the "
          "unquantized model's state_dict; restore into a fresh float model built outside the "
          "clock\n")
    header = ["model", "config", "float torch save / load", "float st save / load",
              "mopt save / restore", "modelopt save / restore", "KiB float / mopt / modelopt",
              "mopt restore / float load", "restore mopt / modelopt", "save mopt / modelopt",
              "size mopt / modelopt", "bit-exact, no calibration"]
    table = []
    notes = []
    for row in rows:
        label = MODEL_LABEL[row["model"]]
        if row["status"] != "ok":
            table.append([label, row["config"]] + ["-"] * 9 + [row["reason"]])
            continue
        mo = row["modelopt"]
        if mo.get("same_float_model") is False:
            notes.append(f"{label}: the modelopt subprocess's float model gives other outputs "
                         "than this process's")
        if mo.get("status") == "ok":
            mo_times = f"{fmt_ms(mo['save_s'])} / {fmt_ms(mo['restore_s'])}"
            ratios = [f"{row['restore_mopt_over_modelopt']:.2f}",
                      f"{row['save_mopt_over_modelopt']:.2f}",
                      f"{row['bytes_mopt_over_modelopt']:.2f}"]
            mo_kb = fmt_kb(mo["bytes"])
            if not mo["bit_exact"].startswith("yes"):
                notes.append(f"{label} {row['config']}: modelopt restore bit-exact: "
                             f"{mo['bit_exact']}")
        else:
            mo_times, mo_kb = "n/a", "n/a"
            ratios = ["n/a"] * 3
            notes.append(f"{label} {row['config']}: modelopt n/a: {mo.get('reason')}")
        ok = row["mopt_bit_exact"] and not row["mopt_restore_calibrated"]
        table.append([
            label, row["config"],
            f"{fmt_ms(row['float_torch_save_s'])} / {fmt_ms(row['float_torch_load_s'])}",
            f"{fmt_ms(row['float_st_save_s'])} / {fmt_ms(row['float_st_load_s'])}",
            f"{fmt_ms(row['mopt_save_s'])} / {fmt_ms(row['mopt_restore_s'])}",
            mo_times,
            f"{fmt_kb(row['float_torch_bytes'])} / {fmt_kb(row['mopt_bytes'])} / {mo_kb}",
            f"{row['restore_over_float_torch_load']:.2f}x",
            *ratios,
            "yes" if ok else "NO",
        ])
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h)
              for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join(("-" * (w + 1) + ":") if i > 1 else "-" * (w + 2)
                         for i, w in enumerate(widths)) + "|")
    for r in table:
        print("| " + " | ".join(c.rjust(w) if i > 1 else c.ljust(w)
                                for i, (c, w) in enumerate(zip(r, widths))) + " |")
    load_after = load_average()
    print(f"\nload average {load_after} at the end; {time.perf_counter() - started:.0f} s in all")
    for n in notes:
        print(f"note: {n}")
    setup["load_average_after"] = load_after
    results = {
        "metric": "restore_over_float_torch_load",
        "metric_definition": "mto.restore seconds / model.load_state_dict(torch.load(f)) seconds "
                             "of the unquantized float model (target < 2)",
        "setup": setup,
        "date": setup["date"],
        "machine": setup["machine"],
        "rows": rows,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(results, indent=1))
    os.replace(tmp_out, out)
    print(f"results: {out}")
    bad = [r for r in rows if r["status"] == "ok"
           and (not r["mopt_bit_exact"] or r["mopt_restore_calibrated"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
