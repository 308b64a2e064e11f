"""FP8 weights and activations for the DiT's linear layers, through torchao (optional).

LongLive, Krea Realtime and Daydream Scope offer FP8 inference of the Wan DiT on Hopper: each linear
layer of the transformer blocks stores its weight in float8 (e4m3, one scale per output row) and
quantizes its input per row on the fly, so the matmuls run on the FP8 tensor cores (2x bf16's peak on
an H100/H200) and the weights take half the memory. The embedders, the output head and the norms stay
in the model's dtype: they are a negligible share of the FLOPs and the most sensitive to rounding.

Needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell) and `pip install torchao`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (sm_89) and Hopper (sm_90) onwards


def fp8_layer(module: nn.Module, name: str) -> bool:
    """True for the linear layers FP8 applies to: those inside the transformer blocks (`blocks.N.`),
    both of whose sizes are multiples of 16 (the FP8 GEMMs' tile constraint)."""
    return (isinstance(module, nn.Linear) and name.startswith("blocks.")
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def check_fp8_device(device: torch.device | str) -> None:
    """Raises ValueError (one line) unless `device` is a CUDA GPU with FP8 tensor cores."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"FP8 needs a CUDA GPU of compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+ "
                         f"(Ada, Hopper); this run is on {device.type}")
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        raise ValueError(f"FP8 needs compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+ (Ada, Hopper); "
                         f"{torch.cuda.get_device_name(device)} is {cap[0]}.{cap[1]}")


def quantize_fp8(model: nn.Module) -> int:
    """Quantize the model's block linears to FP8 in place (torchao's dynamic float8 activations and
    float8 weights, per-row scales); returns how many layers were converted. Raises ValueError when
    the model is not on an FP8-capable GPU or torchao is not installed."""
    check_fp8_device(next(model.parameters()).device)
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError:
        raise ValueError("FP8 needs torchao: pip install torchao") from None
    names = [name for name, m in model.named_modules() if fp8_layer(m, name)]
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=fp8_layer)
    return len(names)
