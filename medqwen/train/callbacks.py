"""Trainer callbacks: one dense log line per logging step (loss, lr, tokens/s, ETA)."""

from __future__ import annotations

import time

from transformers import TrainerCallback


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class LogLineCallback(TrainerCallback):
    """Print `step 20/100 | loss 1.234 | lr 9.5e-05 | 812 tok/s | 0.41 s/step | ETA 0:00:33` on each log."""

    def __init__(self, print_fn=print):
        self.print = print_fn
        self._t0 = self._t_last = 0.0
        self._step0 = self._step_last = 0
        self._tokens_last = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = self._t_last = time.perf_counter()
        self._step0 = self._step_last = state.global_step  # > 0 when resuming
        self._tokens_last = 0.0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now, step = time.perf_counter(), state.global_step
        if "loss" in logs:
            # TRL logs `num_tokens`: cumulative non-padding training tokens over all processes since (re)start.
            tokens = float(logs.get("num_tokens", 0.0))
            dt = max(now - self._t_last, 1e-9)
            tok_s = (tokens - self._tokens_last) / dt
            s_per_step = (now - self._t0) / max(step - self._step0, 1)
            eta = s_per_step * max(state.max_steps - step, 0)
            self.print(f"step {step}/{state.max_steps} | loss {logs['loss']:.4f} | "
                       f"lr {logs.get('learning_rate', 0.0):.3g} | {tok_s:,.0f} tok/s | "
                       f"{s_per_step:.2f} s/step | ETA {_hms(eta)}", flush=True)
            self._t_last, self._step_last, self._tokens_last = now, step, tokens
        elif "eval_loss" in logs:
            best = state.best_metric if state.best_metric is not None else logs["eval_loss"]
            best = min(best, logs["eval_loss"])
            self.print(f"eval step {step} | eval_loss {logs['eval_loss']:.4f} | best {best:.4f}", flush=True)
