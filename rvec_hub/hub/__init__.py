"""Sharing vectors through a Hugging Face Hub."""
