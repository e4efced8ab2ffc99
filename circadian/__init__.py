"""circadian: a local LLM that learns from you. Chat by day, distill into a LoRA adapter by night."""

__version__ = "0.1.0"
