"""Named architectures with random weights, for benchmarks that need a model's shape, not its
knowledge: a GPU benchmark of OPT-13B should not need 26 GB of downloaded weights.

Shapes from the published configs (OPT: Zhang et al. 2022, Table 1 / the Hugging Face configs;
Llama 3.2 1B: its Hugging Face config). The weights are drawn by transformers' own initialisation
under a fixed seed, directly in the requested dtype on the requested device.
"""

from __future__ import annotations

import torch

# name -> (family, shape); OPT's vocabulary is 50272, Llama 3's 128256.
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "opt-125m": ("opt", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072)),
    "opt-1.3b": ("opt", dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192)),
    "opt-6.7b": ("opt", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384)),
    "opt-13b": ("opt", dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, ffn_dim=20480)),
    "llama-1b": ("llama", dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
                               max_position_embeddings=4096, rope_theta=500000.0)),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def random_model(name: str, dtype: str = "bf16", device: str = "cpu", seed: int = 0) -> torch.nn.Module:
    """The architecture ``name`` with seeded random weights, built in ``dtype`` on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    family, shape = ARCHITECTURES[name]
    if family == "opt":
        config = OPTConfig(vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=shape["hidden_size"],
                           **shape)
        cls = OPTForCausalLM
    else:
        config = LlamaConfig(**shape)
        cls = LlamaForCausalLM
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(DTYPES[dtype])
        try:
            model = cls(config)
        finally:
            torch.set_default_dtype(prev)
    return model.eval()


def vocab_size(model: torch.nn.Module) -> int:
    return int(model.config.vocab_size)
