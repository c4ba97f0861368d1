"""The analyses of trained models (Figs. 5, 8) measure what every block reads, whatever DWA implementation runs."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from denselab.config import register_resolvers
from denselab.models import build_model
from denselab.report.analysis import embedding_similarity
from tests.conftest import REPO

register_resolvers()


@pytest.mark.parametrize("implementation", ["fast", "reference"])
def test_embedding_similarity_has_one_value_per_dwa_output_on_either_implementation(implementation):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=denseformer", "depth=4", "width=32", "heads=1",
                                           f"model.net.mixer.implementation={implementation}"])
    net = build_model(cfg.model, 64).eval()
    x = torch.randint(0, 64, (2, 16))
    sims = embedding_similarity(net, [(x, x)])
    assert len(sims) == 4 + 1  # Y_0 = X_0, then after each of the 4 blocks
    assert sims[0] == pytest.approx(1.0)
    assert net.mixer.implementation == implementation  # restored after the measurement
