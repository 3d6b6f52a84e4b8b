"""Post-training transforms of a trained MoE: pure functions from (config,
variables, calibration statistics) to (config, variables)."""

from moejax.compress.pruning import STATISTICS, expert_statistics, keep_most_used, prune_experts
from moejax.compress.remap import REMAPPABLE_ROUTERS, remap_experts

__all__ = ["REMAPPABLE_ROUTERS", "STATISTICS", "expert_statistics", "keep_most_used",
           "prune_experts", "remap_experts"]
