"""The optimizer hyperparameters of the Sa2VA recipe, shared by the emitted DeepSpeed config and the probe.

Source: Sa2VA's training configs (projects/sa2va/configs/*.py: AdamW, lr = 4e-5, weight_decay = 0.05,
max_norm = 1.0); betas and eps are torch.optim.AdamW's defaults (torch/optim/adamw.py). None of them
moves memory: they are fixed so that a probe and a DeepSpeed run of the same plan train alike.
"""

from __future__ import annotations

LEARNING_RATE = 4e-5
WEIGHT_DECAY = 0.05
GRADIENT_CLIPPING = 1.0
BETAS = (0.9, 0.999)
EPSILON = 1e-8
