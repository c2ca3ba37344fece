"""Model loaders: llama2.c checkpoints (the shipped stories260K by default) and their tokenizer."""

from .llama2c import Llama2cConfig, Llama2cTokenizer, llama2c_config, load_llama2c, read_llama2c

__all__ = ["Llama2cConfig", "Llama2cTokenizer", "llama2c_config", "load_llama2c", "read_llama2c"]
