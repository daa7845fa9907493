"""Choices and defaults that the command line shows before any module that needs torch is loaded."""

COMPRESS_METHODS = ("auto", "sparse", "lowrank", "quantized", "dense")
LORA_RANK = 16
