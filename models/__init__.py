"""Models: the causal Wan DiT, VAE decoders, text encoders, checkpoint loading (import the submodules)."""
