"""Decoding-time defences: CleanGen against backdoored models."""

from .cleangen import (
    CleanGenConfig,
    CleanGenGenerator,
    CleanGenOutput,
    Replacement,
    first_suspicious_index,
    suspicion_scores,
)


__all__ = [
    "CleanGenConfig",
    "CleanGenGenerator",
    "CleanGenOutput",
    "Replacement",
    "first_suspicious_index",
    "suspicion_scores",
]
