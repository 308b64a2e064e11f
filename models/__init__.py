"""Models: the causal Wan DiT, VAE decoders, text encoders, checkpoint loading."""

from streamer.models.wan import PRESETS, CausalWanModel, WanConfig, get_config

__all__ = ["PRESETS", "CausalWanModel", "WanConfig", "get_config"]
