"""Engines and hubs memplan speaks to: DeepSpeed configs, Hugging Face configs (import, compose)."""
