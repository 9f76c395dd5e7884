"""Training-free edits of a model's weights."""

from . import causal_tracing, stamp
from .causal_tracing import CausalTraceConfig, CausalTraceResult, Fact, causal_trace, embedded_facts, qa_fact
from .stamp import StampConfig, StampResult, forget, stamp_edit


__all__ = [
    "CausalTraceConfig",
    "CausalTraceResult",
    "Fact",
    "StampConfig",
    "StampResult",
    "causal_trace",
    "causal_tracing",
    "embedded_facts",
    "forget",
    "qa_fact",
    "stamp",
    "stamp_edit",
]
