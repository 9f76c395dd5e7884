"""Training-free edits of a model's weights."""

from . import stamp
from .stamp import StampConfig, StampResult, forget, stamp_edit

__all__ = ["StampConfig", "StampResult", "forget", "stamp", "stamp_edit"]
