"""hf_unlearn: make a Hugging Face causal LM forget, and prove that it did."""

__version__ = "0.1.0"

import logging as _logging


# bitsandbytes' CPU backend warns on import, on every command, that it could not download an optional kernel from
# the Hub (`kernels` package); its own CPU kernels are used instead, so the line only alarms. Quiet that one logger.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

from .benchmarks.embedded import EmbeddedBenchmark, EmbeddedBenchmarkConfig, build_embedded_benchmark
from .data import ForgetRetainDataset, UnlearnDataCollator, load_refusal_templates, load_tofu_split, tokenize_qa
from .decoding import CleanGenConfig, CleanGenGenerator, CleanGenOutput
from .decoding.uld import ULDModel, build_assistant
from .editing import CausalTraceConfig, StampConfig, StampResult, causal_trace, stamp, stamp_edit
from .eval import evaluate_muse, evaluate_tofu, write_report
from .eval.quantization import fake_quantize, load_quantized
from .eval.relapse import evaluate_relapse, write_relapse_report
from .hub import push_unlearned, render_model_card, write_model_card
from .modeling import load_causal_lm
from .pipeline import UnlearnRunArguments, run_unlearning
from .pruning import AntidoteConfig, AntidoteSummary, antidote_prune
from .trainers import (
    METHODS,
    FLATConfig,
    FLATTrainer,
    GradAscentConfig,
    GradAscentTrainer,
    GradDiffConfig,
    GradDiffTrainer,
    IdkDPOConfig,
    IdkDPOTrainer,
    LayerConstrainedConfig,
    LayerConstrainedTrainer,
    NPOConfig,
    NPOTrainer,
    RMUConfig,
    RMUTrainer,
    SimNPOConfig,
    SimNPOTrainer,
    ULDConfig,
    ULDTrainer,
    UnlearnConfig,
    UnlearnTrainer,
)


__all__ = [
    "METHODS",
    "AntidoteConfig",
    "AntidoteSummary",
    "CausalTraceConfig",
    "CleanGenConfig",
    "CleanGenGenerator",
    "CleanGenOutput",
    "EmbeddedBenchmark",
    "EmbeddedBenchmarkConfig",
    "FLATConfig",
    "FLATTrainer",
    "ForgetRetainDataset",
    "GradAscentConfig",
    "GradAscentTrainer",
    "GradDiffConfig",
    "GradDiffTrainer",
    "IdkDPOConfig",
    "IdkDPOTrainer",
    "LayerConstrainedConfig",
    "LayerConstrainedTrainer",
    "NPOConfig",
    "NPOTrainer",
    "RMUConfig",
    "RMUTrainer",
    "SimNPOConfig",
    "SimNPOTrainer",
    "StampConfig",
    "StampResult",
    "ULDConfig",
    "ULDModel",
    "ULDTrainer",
    "UnlearnConfig",
    "UnlearnDataCollator",
    "UnlearnRunArguments",
    "UnlearnTrainer",
    "antidote_prune",
    "build_assistant",
    "build_embedded_benchmark",
    "causal_trace",
    "evaluate_muse",
    "evaluate_relapse",
    "evaluate_tofu",
    "fake_quantize",
    "load_causal_lm",
    "load_quantized",
    "load_refusal_templates",
    "load_tofu_split",
    "push_unlearned",
    "render_model_card",
    "run_unlearning",
    "stamp",
    "stamp_edit",
    "tokenize_qa",
    "write_model_card",
    "write_relapse_report",
    "write_report",
]
