"""Timing TRL's GRPO optimizer step, split into its parts: rollouts, log-prob passes, policy training.

    timer = GrpoStepTimer(trainer, sync=torch.cuda.synchronize)
    rows = timer.run(warmup_steps=1, steps=3)   # one dict per timed optimizer step

A GRPO step first generates the rollouts of all its micro-batches at once (TRL's `_generate_single_turn`), scores
them and runs the no-gradient log-prob passes (the reference policy's, and the old policy's when the rollouts are
reused; `_get_per_token_logps_and_entropies` under no_grad), then trains the policy on each micro-batch. The timer
wraps those methods of this one trainer (nothing in TRL changes) and synchronises the GPU at each boundary, so each
kernel counts in the part that launched it.
"""

from __future__ import annotations

import time


class GrpoStepTimer:
    """Per optimizer step: seconds of the whole step, of generating the rollouts, of the no-gradient log-prob
    passes, of the rest of scoring (rewards, advantages), and the policy's forward/backward and optimizer step
    (what remains); the prompt and completion lengths (tokens) and the rollout batch."""

    def __init__(self, trainer, sync=None):
        self.trainer, self.sync = trainer, sync or (lambda: None)
        self.parts = {"rollout_s": 0.0, "logprob_s": 0.0, "score_s": 0.0}
        self.prompt_lengths: list[int] = []
        self.completion_lengths: list[int] = []
        self.logprob_lengths: list[int] = []
        self.rollout_batches: list[int] = []
        self._wrap("_generate_single_turn", "rollout_s", self._count_rollout)
        self._wrap("_get_per_token_logps_and_entropies", "logprob_s", self._count_logprob, no_grad_only=True)
        self._wrap("_generate_and_score_completions", "score_s")

    def _wrap(self, name: str, part: str, count=None, no_grad_only: bool = False) -> None:
        import torch

        method = getattr(self.trainer, name)

        def timed(*args, **kwargs):
            if no_grad_only and torch.is_grad_enabled():  # the policy's own pass belongs to training
                return method(*args, **kwargs)
            self.sync()
            t0 = time.perf_counter()
            result = method(*args, **kwargs)
            self.sync()
            self.parts[part] += time.perf_counter() - t0
            if count:
                count(args, kwargs, result)
            return result

        setattr(self.trainer, name, timed)

    def _count_rollout(self, args, kwargs, result) -> None:
        prompt_ids, (completion_ids, _) = args[0], result
        self.prompt_lengths.extend(len(p) for p in prompt_ids)
        self.completion_lengths.extend(len(c) for c in completion_ids)
        self.rollout_batches.append(len(prompt_ids))

    def _count_logprob(self, args, kwargs, result) -> None:
        # (model, input_ids, attention_mask, logits_to_keep, batch_size, ...): the real tokens of each row
        attention_mask = args[2] if len(args) > 2 else kwargs["attention_mask"]
        self.logprob_lengths.extend(int(n) for n in attention_mask.sum(dim=1).tolist())

    def run(self, warmup_steps: int, steps: int) -> list[dict]:
        """Train warmup + timed optimizer steps; one row per timed step."""
        from transformers import TrainerCallback

        marks: list[tuple] = []
        timer = self

        class Marks(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                self.mark()

            def on_step_end(self, args, state, control, **kwargs):
                self.mark()

            def mark(self):
                timer.sync()
                marks.append((time.perf_counter(), dict(timer.parts), len(timer.prompt_lengths),
                              len(timer.logprob_lengths), len(timer.rollout_batches)))

        self.trainer.add_callback(Marks())
        self.trainer.args.max_steps = warmup_steps + steps
        self.trainer.train()
        rows = []
        for (t0, p0, n0, l0, b0), (t1, p1, n1, l1, b1) in zip(marks[:-1], marks[1:]):
            parts = {k: p1[k] - p0[k] for k in p1}
            # score_s contains the rollout and log-prob passes it called: keep only the rest of it
            parts["score_s"] -= parts["rollout_s"] + parts["logprob_s"]
            seconds = t1 - t0
            rows.append({"seconds": seconds, **parts,
                         "policy_s": seconds - parts["rollout_s"] - parts["logprob_s"] - parts["score_s"],
                         "prompt_lengths": self.prompt_lengths[n0:n1],
                         "completion_lengths": self.completion_lengths[n0:n1],
                         "logprob_lengths": self.logprob_lengths[l0:l1],
                         "rollout_batch": sum(self.rollout_batches[b0:b1])})
        return rows[warmup_steps:]
