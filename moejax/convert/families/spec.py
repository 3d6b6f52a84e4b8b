"""What an HF model family is for moejax, and the registry of them.

A family is one `FamilySpec`, defined as `SPEC` in one module of this package
(named after its model_type): how its config.json becomes a ModelConfig,
where its tensors live, and what export writes into config.json.
`family_specs()` finds the modules, so adding a family is adding a module;
the importer (hf_import.py), the exporter (hf_export.py) and the tensor
layout (layout.py) read the spec and never branch on model_type.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Callable, Dict, List, Optional

from moejax.convert.layout import BackboneNames
from moejax.models.config import ModelConfig


class UnsupportedModelError(ValueError):
  """A config.json that moejax cannot reproduce exactly."""


def _nothing(cfg: ModelConfig, hf: dict) -> None:
  return None


@dataclasses.dataclass(frozen=True)
class FamilySpec:
  """One HF model family.

  model_type: config.json's model_type.
  architecture: the transformers class export names in config.json.
  to_model: config.json -> the ModelConfig that computes what it describes
    (UnsupportedModelError, one line, for what moejax does not implement).
  moe: the family has MoE blocks.
  export: (cfg, config.json being written) -> None: adds the family's own
    fields (expert counts and widths, routing flags, ...) to the Llama-style
    fields hf_export.py writes.
  export_config: (cfg, base config.json) -> the whole config.json, for a
    family whose names are not Llama-style (DBRX); `export` is then unused.
  moe_plan: (cfg, HF block prefix, our block path) -> the layout entries
    of an MoE block's feed-forward (moejax.convert.layout).
  block_plan: the same for a whole block, for a family whose blocks are not
    Llama-style (DBRX); None = attention, norms and FFN the Llama way.
  names: where the embedding, blocks and final norm live.
  interleaved_rope: multi-head attention rotating adjacent channel pairs
    (its query and key channels are reordered on import).
  """

  model_type: str
  architecture: str
  to_model: Callable[[dict], ModelConfig]
  moe: bool = True
  export: Callable[[ModelConfig, dict], None] = _nothing
  export_config: Optional[Callable[[ModelConfig, dict], dict]] = None
  moe_plan: Optional[Callable[[ModelConfig, str, tuple], List]] = None
  block_plan: Optional[Callable[[ModelConfig, str, tuple], List]] = None
  names: BackboneNames = BackboneNames()
  interleaved_rope: bool = False


_SPECS: Dict[str, FamilySpec] = {}


def family_specs() -> Dict[str, FamilySpec]:
  """{model_type: FamilySpec}: MoE families first, then dense, each by name."""
  if not _SPECS:
    import moejax.convert.families as package
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
      spec = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "SPEC", None)
      if spec is not None:
        found[spec.model_type] = spec
    for name in sorted(found, key=lambda n: (not found[n].moe, n)):
      _SPECS[name] = found[name]
  return _SPECS


def family_spec(model_type: Optional[str]) -> FamilySpec:
  """The spec of `model_type`; UnsupportedModelError naming the supported ones."""
  specs = family_specs()
  if model_type not in specs:
    raise UnsupportedModelError(f"config.json model_type={model_type!r} is not supported; "
                                f"supported: {', '.join(specs)}")
  return specs[model_type]
