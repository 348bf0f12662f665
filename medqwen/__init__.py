"""medqwen: adapt a Qwen3 instruct model to Chinese medicine (data, LoRA/GRPO training, C-Eval, serving, agent, RAG)."""

__version__ = "0.1.0"
