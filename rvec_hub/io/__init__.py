"""Reading and writing checkpoints and safetensors files."""
