"""Counts the parameters of the Hugging Face models that models/*.ron describe.

Builds each config with transformers on the `meta` device (no weights, no download) and counts
unique parameters (tied embeddings once). Run on the device machine, where transformers is
installed:  python3 tools/hf_param_counts.py > models/hf_param_counts.txt
The numbers are the config.json values of each checkpoint on the Hugging Face hub.
"""
import torch
from transformers import LlamaConfig, Qwen2Config, Qwen3Config, AutoModelForCausalLM

QWEN25 = dict(rope_theta=1e6, max_position_embeddings=32768)
MODELS = {
    "qwen2.5-0.5b": Qwen2Config(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True, rms_norm_eps=1e-6, **QWEN25),
    "qwen2.5-1.5b": Qwen2Config(vocab_size=151936, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960, tie_word_embeddings=True, rms_norm_eps=1e-6, **QWEN25),
    "qwen2.5-3b": Qwen2Config(vocab_size=151936, hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, intermediate_size=11008, tie_word_embeddings=True, rms_norm_eps=1e-6, **QWEN25),
    "qwen2.5-7b": Qwen2Config(vocab_size=152064, hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944, tie_word_embeddings=False, rms_norm_eps=1e-6, **QWEN25),
    "qwen2.5-14b": Qwen2Config(vocab_size=152064, hidden_size=5120, num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8, intermediate_size=13824, tie_word_embeddings=False, rms_norm_eps=1e-5, **QWEN25),
    "qwen2.5-32b": Qwen2Config(vocab_size=152064, hidden_size=5120, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8, intermediate_size=27648, tie_word_embeddings=False, rms_norm_eps=1e-5, **QWEN25),
    "llama-3.2-1b": LlamaConfig(vocab_size=128256, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64, intermediate_size=8192, tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=500000.0),
    "llama-3.2-3b": LlamaConfig(vocab_size=128256, hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, head_dim=128, intermediate_size=8192, tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=500000.0),
    "llama-3.1-8b": LlamaConfig(vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=14336, tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=500000.0),
    "smollm2-135m": LlamaConfig(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=1536, tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0),
    "qwen3-0.6b": Qwen3Config(vocab_size=151936, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=3072, tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1e6),
    "qwen3-8b": Qwen3Config(vocab_size=151936, hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=12288, tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=1e6),
}

for name, cfg in MODELS.items():
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    count = sum(p.numel() for p in model.parameters())  # parameters() yields tied tensors once
    print(name, count, flush=True)
