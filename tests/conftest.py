"""Test-wide settings."""

import pytest
import torch

# `make test` runs pytest with 2 workers on 2 cores: one intra-op thread each avoids
# oversubscription (OpenMP threads spinning against each other slow small ops ~10x).
torch.set_num_threads(1)


@pytest.fixture
def standin(monkeypatch):
    """Swap the search engine's data and spaces for the tiny stand-ins of tests/standins.py."""
    from standins import SEEN, tiny_dataset, tiny_space

    from chrysalis.search import engine

    monkeypatch.setattr(engine, "_get_dataset", tiny_dataset)
    monkeypatch.setattr(engine, "_create_space", tiny_space)
    SEEN.clear()
