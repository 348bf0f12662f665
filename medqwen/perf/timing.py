"""Timing the trainer's real train step: per-step seconds, tokens and conversations; optional profile."""

from __future__ import annotations

import hashlib
import time
from collections import deque


def batch_conversations(batch) -> list[list[int]]:
    """The conversations (token ids, pads dropped) of one micro-batch: padded rows, or one padding-free row whose
    boundaries are `cu_seq_lens_q`."""
    ids = batch["input_ids"]
    if "cu_seq_lens_q" in batch:
        cu = batch["cu_seq_lens_q"].tolist()
        return [ids[0, a:b].tolist() for a, b in zip(cu[:-1], cu[1:])]
    return [row[mask.bool()].tolist() for row, mask in zip(ids, batch["attention_mask"])]


def conversation_key(ids: list[int]) -> str:
    """A short fingerprint of one conversation's token ids."""
    return hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:16]


def step_fingerprint(keys: list[str]) -> str:
    """A fingerprint of the set of conversations one optimizer step trained on (all processes together)."""
    return hashlib.sha1(",".join(sorted(keys)).encode()).hexdigest()[:16]


class StepCounter:
    """Counts what the micro-batches the trainer trains on hold: real and computed (padded) tokens, conversations,
    their lengths and fingerprints. Wraps `trainer.training_step`, so it sees exactly the micro-batches of each
    optimizer step (the data loader reads a batch ahead, so a wrapped collator would not)."""

    def __init__(self):
        self.real = self.computed = self.sequences = 0
        self.lengths: list[int] = []
        self.keys: list[str] = []
        self.losses: list = []  # each micro-batch's loss as the trainer returned it, on the device until the end

    def count(self, batch) -> None:
        conversations = batch_conversations(batch)
        self.computed += batch["input_ids"].numel()
        self.lengths.extend(len(c) for c in conversations)
        self.keys.extend(conversation_key(c) for c in conversations)
        self.real += sum(len(c) for c in conversations)
        self.sequences += len(conversations)

    def wrap(self, trainer) -> None:
        """Count each micro-batch as the trainer trains on it. Counted where the collator builds it, on the host:
        by the time `training_step` gets a batch it is on the GPU, and reading it there would make the host wait
        for the GPU (a sync the trainer itself does not make). The data loader reads a batch ahead, so batches
        are queued here and taken one per `training_step`. With loader worker processes (the collator runs
        elsewhere) or evaluation (its batches would join the queue) the batch is read in `training_step`."""
        collate, training_step = trainer.data_collator, trainer.training_step
        queued: deque = deque()

        def counted_collate(examples):
            batch = collate(examples)
            queued.append(batch)
            return batch

        def counted_step(model, inputs, num_items_in_batch=None):
            self.count(queued.popleft() if queued else inputs)
            loss = training_step(model, inputs, num_items_in_batch)
            self.losses.append(loss.detach())
            return loss

        if not trainer.args.dataloader_num_workers and trainer.args.eval_strategy == "no":
            trainer.data_collator = counted_collate
        trainer.training_step = counted_step


class StepClock:
    """The end time of each optimizer step. On a GPU, CUDA events on the device's own timeline, read once at the
    end: synchronising at every step would stop the host from preparing the next step while the GPU finishes
    this one, and make every step look slower than training runs. On CPU, the host clock."""

    def __init__(self, cuda: bool):
        import torch

        self.cuda, self.marks, self.start = cuda, [], time.perf_counter()
        if cuda:
            self.start_event = torch.cuda.Event(enable_timing=True)
            self.start_event.record()

    def mark(self) -> None:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Seconds since the clock started at each mark."""
        if not self.cuda:
            return [t - self.start for t in self.marks]
        self.marks[-1].synchronize()
        return [self.start_event.elapsed_time(e) / 1000 for e in self.marks]


def time_trainer(trainer, warmup_steps: int, steps: int, cuda: bool = False, profile_step: bool = False) -> dict:
    """Run warmup + timed optimizer steps of `trainer.train()`; per-step seconds (StepClock: on the GPU's timeline
    with `cuda`), tokens, conversations, their lengths and fingerprints ("keys"), and the step's loss.

    With `profile_step`, one more optimizer step runs under torch.profiler (not timed: profiling slows it down);
    the result then has "profile", the profiler's per-kernel table of that step.
    """
    from transformers import TrainerCallback

    counter = StepCounter()
    counter.wrap(trainer)
    clock = StepClock(cuda)
    counts: list[tuple[int, int, int, int, int]] = []  # what the counter had seen at each mark
    profiler = None
    if profile_step:
        profiler = kernel_profiler()

    class Marks(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.mark()

        def on_step_end(self, args, state, control, **kwargs):
            self.mark()
            if profiler is not None and state.global_step == warmup_steps + steps:
                profiler.start()  # only now: the profiler's hooks would slow the timed steps
            elif profiler is not None and state.global_step == warmup_steps + steps + 1:
                # before the end-of-training checkpoint, whose copies to the host are not part of a step
                profiler.stop()

        def mark(self):
            clock.mark()  # after the step's kernels in the stream: the step ends when the GPU finishes them
            counts.append((counter.real, counter.computed, counter.sequences, len(counter.lengths),
                           len(counter.losses)))

    trainer.add_callback(Marks())
    trainer.args.max_steps = warmup_steps + steps + (1 if profiler is not None else 0)
    trainer.train()
    marks = [(t, *c) for t, c in zip(clock.seconds(), counts)]
    losses = [float(x) for x in counter.losses]  # read after the run: no host wait inside a step
    rows = []
    for (t0, r0, c0, s0, l0, m0), (t1, r1, c1, s1, l1, m1) in zip(marks[:-1], marks[1:]):
        # the step's loss: its micro-batches' losses (each normalised over the step's assistant tokens) summed
        rows.append({"seconds": t1 - t0, "real_tokens": r1 - r0, "computed_tokens": c1 - c0,
                     "sequences": s1 - s0, "lengths": counter.lengths[l0:l1], "keys": counter.keys[l0:l1],
                     "loss": sum(losses[m0:m1])})
    result = {"warmup": rows[:warmup_steps], "timed": rows[warmup_steps:warmup_steps + steps]}
    if profiler is not None:
        result["profile"] = profile_summary(profiler, rows[-1]["seconds"])
    return result


def merge_process_steps(per_process: list[list[dict]]) -> list[dict]:
    """One list of step rows from each process's (time_trainer rows): a step lasts as long as its slowest process
    (the gradient all-reduce makes the others wait), and its tokens, sequences and lengths are everyone's."""
    merged = []
    for rows in zip(*per_process):
        merged.append({"seconds": max(r["seconds"] for r in rows),
                       **{k: sum(r[k] for r in rows) for k in ("real_tokens", "computed_tokens", "sequences")},
                       # each process's loss is its share over the global token count, times the process count
                       "loss": sum(r["loss"] for r in rows) / len(rows),
                       "lengths": [n for r in rows for n in r["lengths"]],
                       "keys": [k for r in rows for k in r.get("keys", [])]})
    return merged


def kernel_profiler():
    """A torch.profiler recording CPU ops and, where there is a GPU, its kernels (for profile_summary)."""
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities)


def profile_summary(profiler, step_seconds: float, top: int = 45, what: str = "step") -> str:
    """The kernels of a profiled step (or other `what`) by total device time, and how busy the device was."""
    from torch.autograd import DeviceType

    events = profiler.key_averages()
    # kernels only: CPU-side ops also carry the device time of the kernels they launched
    device_us = sum(e.self_device_time_total for e in events if e.device_type != DeviceType.CPU)
    sort = "self_cuda_time_total" if device_us else "self_cpu_time_total"
    head = (f"profiled {what}: {step_seconds:.3f} s wall, device busy {device_us / 1e6:.3f} s "
            f"({100 * device_us / 1e6 / step_seconds:.0f}% of the {what})\n")
    table = events.table(sort_by=sort, row_limit=top, max_name_column_width=90)
    if not device_us:
        return head + table
    # where the host spends the step: what the GPU waits for when it is not busy
    return (head + table + f"\nhost time of the {what}, by operator (self CPU time):\n"
            + events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=90))
