"""streamer: real-time autoregressive video diffusion over a rolling KV cache."""

__version__ = "0.1.0"
