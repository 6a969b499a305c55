"""Named model sizes, all in one place.

``geneface`` follows the original GeneFace sizes; ``small`` is about 4x cheaper for CPU training; ``tiny``
exists for tests and smoke runs.
"""

from __future__ import annotations

from dataclasses import replace

from .generator import GeneratorConfig
from .postnet import PostnetConfig
from .syncnet import SyncNetConfig

PRESETS: dict[str, tuple[SyncNetConfig, GeneratorConfig, PostnetConfig]] = {
    "geneface": (SyncNetConfig(), GeneratorConfig(), PostnetConfig()),
    "small": (
        SyncNetConfig(width=64, embed_dim=256, residual_layers=1),
        # 64 SyncNet-loss windows a step, not 256: a sixth less time per generator step on 2 CPU cores
        GeneratorConfig(hidden=128, encoder_layers=4, decoder_layers=3, flow_hidden=32, flow_layers=3, sync_pairs=64),
        PostnetConfig(channels=(64, 128), residual_layers=1, disc_hidden=(64, 128, 64)),
    ),
    "tiny": (
        SyncNetConfig(width=16, embed_dim=32, residual_layers=1),
        GeneratorConfig(cond_dim=16, pitch_bins=32, hidden=32, latent=8, encoder_layers=2, decoder_layers=2,
                        flow_hidden=16, flow_layers=2, flow_blocks=2, sync_pairs=64),
        PostnetConfig(channels=(32,), residual_layers=1, disc_hidden=(32, 32), sync_pairs=64),
    ),
}


def preset(name: str, feature_dim: int) -> tuple[SyncNetConfig, GeneratorConfig, PostnetConfig]:
    """The configs of preset ``name`` for audio features with ``feature_dim`` channels."""
    try:
        s, g, p = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
    return replace(s, feature_dim=feature_dim), replace(g, feature_dim=feature_dim), replace(p)
