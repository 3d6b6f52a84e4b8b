"""Pallas kernels for MoE: grouped matmul (gmm forward, tgmm weight gradient,
tied by a custom VJP) and a fused permute / unpermute for dropless dispatch.

Lowered with Triton on GPU and Mosaic on TPU; run in interpret mode on CPU
(how CI tests them). moejax uses them as the 'pallas' backend of
moejax.grouped_matmul.gmm (MoEConfig.gmm_backend='pallas'), which also makes
dropless dispatch use permute / unpermute.
"""

from pallas_kernels.checks import SUPPORTED_DTYPES, sizes_from_sorted_groups
from pallas_kernels.ops import gmm, tgmm
from pallas_kernels.permute import permute, unpermute, weighted_gather
from pallas_kernels.platform import resolve_platform
from pallas_kernels.tiling import TileSizes, default_tiles

__all__ = ["SUPPORTED_DTYPES", "TileSizes", "default_tiles", "gmm", "permute",
           "resolve_platform", "sizes_from_sorted_groups", "tgmm", "unpermute",
           "weighted_gather"]
