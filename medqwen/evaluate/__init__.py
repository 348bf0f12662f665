"""Open-ended evaluation of base vs LoRA vs GRPO on held-out conversations.

    run.py      generate answers for held-out questions, score them, write predictions/metrics/report
    metrics.py  ROUGE-L, BLEU (character level for Chinese), the identity check, bootstrap intervals
    judge.py    LLM-as-judge through any OpenAI-compatible endpoint, with a written rubric
    report.py   one run's report, or several runs side by side with paired tests and a chart
"""
