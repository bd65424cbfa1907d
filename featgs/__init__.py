"""featgs: distil 2D foundation-model features into 3D Gaussian Splatting scenes."""

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians, LinearDecoder

__version__ = "0.1.0"
__all__ = ["Camera", "FeatgsError", "Gaussians", "LinearDecoder", "__version__"]
