"""memplan: peak-VRAM planner and feasibility checker for multimodal fine-tuning."""

__version__ = "0.1.0"
