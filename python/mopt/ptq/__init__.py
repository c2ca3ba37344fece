"""Post-training quantization of a language model over many configs, one table (``mopt ptq``).

``run_ptq(model="default", configs=["int8", "fp8"], ...)`` loads the model once, evaluates the
float perplexity, then for each config quantizes a fresh copy (``mtq.quantize`` with a forward
loop over calibration text disjoint from the evaluation text), and reports perplexity, its change
against float, the weight bytes as deployed (and effective bits per parameter) and the
calibration seconds. ``--model minilm`` runs the encoder check instead: cosine similarity between
float and quantized all-MiniLM-L6-v2 sentence embeddings of WikiText-2 rows.

Config short names live in ``PTQ_CONFIGS`` (the one registry the CLI, demo and docs use), read
from the C++ recipe table (``mopt._C.recipes()``). A config is *runnable* when
mopt.quantization defines it, each of its calibration algorithms is in
``mtq.calibration_algorithms()``, and quantizing does not raise NotImplementedError; the others
are reported as "not available: <reason>".

Modules:

* ``configs``: the recipe registry (short name -> predefined config), ``resolve_configs``,
  ``config_availability``;
* ``size``: weight bytes as deployed (``deployed_weight_bytes``; the pricing rules are its
  module doc);
* ``models``: ``resolve_model`` (what ``--model`` names) and reading the text files;
* ``run``: ``run_ptq`` and the per-config quantize / time / evaluate step;
* ``report``: ``PtqResult`` rows, results.json, the table (``format_table``) and the plot.
"""

from .configs import _KEEP  # noqa: F401 - benchmarks/compare_modelopt.py reads it
from .configs import PTQ_CONFIGS, PtqConfig, config_availability, config_names, resolve_configs
from .models import ModelSource, resolve_model
from .report import PtqResult, format_table, plot_results
from .run import run_ptq
from .size import WeightBytes, deployed_weight_bytes

__all__ = [
    "PtqConfig",
    "PTQ_CONFIGS",
    "config_names",
    "resolve_configs",
    "config_availability",
    "ModelSource",
    "resolve_model",
    "WeightBytes",
    "deployed_weight_bytes",
    "PtqResult",
    "run_ptq",
    "format_table",
    "plot_results",
]
