"""Routing: who goes where, with what weight — pure functions of logits."""

from moejax.routing.capacity import assign_positions
from moejax.routing.losses import (LOSS_NAMES, aux_losses, importance_loss, load_balance_loss,
                                   router_z_loss, update_expert_bias, zero_losses)
from moejax.routing.metrics import routing_metrics
from moejax.routing.groups import route_in_groups
from moejax.routing.router import route
from moejax.routing.types import AnyRouting, DenseRouting, RouterOutput, Routing

__all__ = [
    "AnyRouting", "DenseRouting", "LOSS_NAMES", "RouterOutput", "Routing", "assign_positions",
    "aux_losses", "importance_loss", "load_balance_loss", "route", "route_in_groups",
    "router_z_loss", "routing_metrics", "update_expert_bias", "zero_losses",
]
