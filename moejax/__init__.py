"""moejax: Mixture-of-Experts in JAX/Flax — routing ⟂ dispatch ⟂ experts ⟂ parallelism."""

from moejax.config import MoEConfig, RouterConfig
from moejax.moe import DenseFFNLayer, MoEAux, MoELayer, MultiHeadMoELayer, Router

__version__ = "0.1.0"
__all__ = ["DenseFFNLayer", "MoEAux", "MoEConfig", "MoELayer", "MultiHeadMoELayer", "Router",
           "RouterConfig"]
