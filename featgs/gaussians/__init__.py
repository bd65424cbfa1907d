"""Gaussian scenes: the container, spherical harmonics and PLY files."""

from featgs.gaussians.model import SH_C0, Gaussians, LinearDecoder, num_sh_bases, rgb_to_sh0
from featgs.gaussians.ply import load_ply, save_ply

__all__ = ["SH_C0", "Gaussians", "LinearDecoder", "num_sh_bases", "rgb_to_sh0", "load_ply", "save_ply"]
