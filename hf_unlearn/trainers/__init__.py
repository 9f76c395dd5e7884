from .base import UnlearnConfig, UnlearnTrainer
from .flat import FLATConfig, FLATTrainer, flat_loss
from .grad_ascent import GradAscentConfig, GradAscentTrainer, gradient_ascent_loss
from .grad_diff import GradDiffConfig, GradDiffTrainer, gradient_difference_loss
from .idk_dpo import IdkDPOConfig, IdkDPOTrainer, dpo_loss
from .layer_constrained import LayerConstrainedConfig, LayerConstrainedTrainer, adaptive_alpha, layer_constrained_loss
from .npo import NPOConfig, NPOTrainer, npo_loss
from .rmu import RMUConfig, RMUTrainer, rmu_loss
from .simnpo import SimNPOConfig, SimNPOTrainer, simnpo_loss
from .uld import ULDConfig, ULDTrainer, uld_loss, uniform_loss


# Method names as the CLI and recipes spell them.
METHODS = {
    "flat": (FLATConfig, FLATTrainer),
    "grad_ascent": (GradAscentConfig, GradAscentTrainer),
    "grad_diff": (GradDiffConfig, GradDiffTrainer),
    "npo": (NPOConfig, NPOTrainer),
    "simnpo": (SimNPOConfig, SimNPOTrainer),
    "idk_dpo": (IdkDPOConfig, IdkDPOTrainer),
    "rmu": (RMUConfig, RMUTrainer),
    "uld": (ULDConfig, ULDTrainer),
    "layer_constrained": (LayerConstrainedConfig, LayerConstrainedTrainer),
}

__all__ = [
    "METHODS",
    "FLATConfig",
    "FLATTrainer",
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
    "ULDConfig",
    "ULDTrainer",
    "UnlearnConfig",
    "UnlearnTrainer",
    "adaptive_alpha",
    "dpo_loss",
    "flat_loss",
    "gradient_ascent_loss",
    "gradient_difference_loss",
    "layer_constrained_loss",
    "npo_loss",
    "rmu_loss",
    "simnpo_loss",
    "uld_loss",
    "uniform_loss",
]
