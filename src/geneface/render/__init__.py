"""The person renderer: a landmark-conditioned head NeRF in canonical head space and a 2-D torso field,
composited over the static background (DESIGN.md step 7), and the super-resolution network that brings its
frames to the output size (step 10).

``geneface train render`` trains one (`train_render`); `PersonRenderer` renders frames for inference.
"""

from .model import ModelConfig, RenderModel, RenderOutput
from .renderer import PersonRenderer
from .sr import SRConfig, SRModel, SRTrainConfig, SuperRes, load_sr, train_sr
from .train import RenderTrainConfig, RenderTrainer, train_render

__all__ = ["ModelConfig", "PersonRenderer", "RenderModel", "RenderOutput", "RenderTrainConfig", "RenderTrainer",
           "SRConfig", "SRModel", "SRTrainConfig", "SuperRes", "load_sr", "train_render", "train_sr"]
