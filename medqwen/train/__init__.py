"""Training: LoRA SFT, GRPO on verifiable multiple-choice rewards, and merging adapters (TRL trainers + PEFT).

    sft.py        the SFT stage: data split, SFTTrainer construction, atomic checkpoints, resume, reporting
    grpo.py       GRPO over TRL's GRPOTrainer, rewards read with the exam scorer
    rollouts.py   GRPO rollouts without vLLM (one CUDA graph per decode step, or a compiled static cache)
    mcq.py        multiple-choice questions with known answers: GRPO's data
    fast_path.py  the fast path's settings, exact-batch collator and torch settings (kernels in medqwen.kernels)
    callbacks.py  one dense log line per logging step

Imports run one way: this package uses medqwen.kernels, medqwen.exams and the top level, never the reverse.
"""
