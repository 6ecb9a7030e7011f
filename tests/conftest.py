"""Test-wide settings."""

import torch

# `make test` runs pytest with 2 workers on 2 cores: one intra-op thread each avoids
# oversubscription (OpenMP threads spinning against each other slow small ops ~10x).
torch.set_num_threads(1)
