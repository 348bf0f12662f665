"""The speed benchmarks' configs (benchmark/perf_*.py, check_data_parallel.py, length_histogram.py)."""

from __future__ import annotations

from dataclasses import dataclass

from medqwen.configlib import DEFAULT_TEMPLATE, DeviceFields, _f, like
from medqwen.exams.config import CevalConfig


@dataclass
class BenchmarkFields:
    """What the speed benchmarks share: a random model of a real shape, the tokenizer that sets the lengths, the
    synthetic length distribution, the seed and the output folder."""

    shape: str = _f("qwen3-4b", "Random model shape from medqwen.modeling.QWEN3_SHAPES.", choices=["qwen3-4b", "tiny"])
    tiny: bool = _f(False, "CPU smoke run: tiny shape, bundled tokenizer, short sequences.")
    tokenizer: str | None = _f(None, "Tokenizer folder (None: model/qwen, else model/qwen3-tokenizer, else the real "
                                     "Qwen3 tokenizer in tests/fixtures/qwen3; --tiny: model/smollm2-135m-instruct).")
    output_dir: str = _f("out/perf", "Where results.json, results.md, config.yaml and metrics.json go.")
    seed: int = _f(0, "Seed of lengths, content and model init.")


@dataclass
class LengthFields:
    """Synthetic conversation lengths."""

    median_len: int = _f(280, "Synthetic lengths: median of the lognormal (tokens).")
    max_seq_len: int = _f(1024, "Longest sequence (tokens); synthetic lengths are capped here.")


@dataclass
class LengthHistogramConfig:
    """benchmark/length_histogram.py: token lengths of a conversation JSONL (our template, truncated like
    training) as the histogram perf_train --lengths real draws from."""

    data: str = _f("data/lora_medical_merged.jsonl", "Prepared conversation JSONL (data/prepare_data.py output).")
    tokenizer: str = _f("model/qwen", "Tokenizer folder (the model's).")
    chat_template: str = _f(DEFAULT_TEMPLATE, "Chat template (with generation markers) used for training.")
    max_seq_len: int = _f(1024, "Lengths are capped here, as training truncates (tokens).", at_least=1)
    output: str = _f("benchmark/data/medical_lengths.json", "Where the histogram goes.")
    note: str = _f("conversations prepared by data/prepare_data.py (docs/data.md), measured by "
                   "benchmark/length_histogram.py", "How the data was made, stored in the file.")


@dataclass
class PerfTrainConfig(LengthFields, BenchmarkFields):
    """benchmark/perf_train.py: time the trainer's real train step for named recipes on a random model of a
    real shape; real tok/s, padded tok/s, MFU, peak memory, ratio to the plain path."""

    tiny: bool = like(BenchmarkFields, "tiny", help="CPU smoke run: tiny shape, bundled tokenizer, sequences of "
                                                    "median 40, at most 128 tokens, optimizer steps of 8 "
                                                    "conversations (4 x 2).")

    variants: list[str] = _f(["original", "packed", "packed+liger", "fused", "fused+varlen", "speed", "24gb"],
                             "Recipes to time (medqwen.perf.VARIANTS; 'name:field=value:...' overrides fields), "
                             "comma-separated or repeated; each runs in its own process.")
    baseline: str = _f("original", "The variant (as written in --variants) the others are compared with: the "
                                   "table's 'steps = original's', loss and 'vs original' columns (e.g. "
                                   "original:per_device_train_batch_size=8:gradient_accumulation_steps=8 with "
                                   "--shape tiny, which otherwise splits steps 4 x 2).")
    data: str | None = _f(None, "Conversation JSONL for a real length distribution (None: synthetic lognormal).")
    lengths: str = _f("lognormal", "Length distribution of the synthetic conversations: lognormal (median "
                                   "--median_len, capped at --max_seq_len) or real (drawn from the medical data's "
                                   "histogram stored in benchmark/data/medical_lengths.json). Ignored with --data.",
                      choices=["lognormal", "real"])
    memory_cap_gib: float = _f(0.0, "Cap each process's GPU memory at this many GiB "
                                    "(torch.cuda.set_per_process_memory_fraction), e.g. 24 to prove a 24 GB "
                                    "setting fits (0: no cap).", at_least=0)
    conversations: int = _f(0, "Conversations to train on (0: enough for all steps).")
    warmup_steps: int = _f(2, "Optimizer steps run before timing (compilation, allocator warm-up).")
    steps: int = _f(3, "Timed optimizer steps per variant (median step time is reported).")
    variant_timeout_s: int = _f(420, "A variant still running after this many seconds is stopped.")
    profile: bool = _f(False, "Run one more optimizer step per variant under torch.profiler (not timed) and write "
                              "its kernel table to profile_<variant>.txt.")
    launchers: list[str] = _f(["single"], "How each variant runs, comma-separated: single (one process, one GPU), "
                                          "ddp, fsdp (accelerate launch with configs/accelerate/<name>_2gpu.yaml "
                                          "and --processes processes, one per GPU; CPU processes over gloo without "
                                          "GPUs). A variant run both single and launched gets a scaling column.",
                              choices=["single", "ddp", "fsdp"])
    processes: int = _f(2, "Processes (GPUs) of the ddp and fsdp launchers; each runs the variant's per-device "
                           "batch, so the global batch grows with them.")
    peak_tflops: float | None = _f(None, "bf16 matmul peak for MFU (None: measured here on 8192^3 products).")
    run_one: str | None = _f(None, "Internal: time only this variant in this process and print its JSON.")


@dataclass
class PerfGrpoConfig(BenchmarkFields):
    """benchmark/perf_grpo.py: time one GRPO optimizer step of a preset on a random model of a real shape, split
    into rollouts, log-prob passes and policy training, for each way of generating the rollouts."""

    preset: str = _f("configs/qwen3-4b/grpo_2x24gb.yaml", "GRPO preset whose per-GPU step is timed (one process "
                                                          "runs one GPU's share: per-device batch x accumulation).")
    tiny: bool = _f(False, "CPU smoke run: tiny shape, bundled tokenizer, steps of 2 prompts x 4 completions of at "
                           "most 8 tokens.")
    variants: list[str] = _f(["plain:gradient_checkpointing=true", "compiled", "graph"],
                             "Rollout engines to time (--rollouts of train_grpo.py: plain is TRL's default, compiled "
                             "transformers' compiled decode step, graph each decode step one CUDA graph; "
                             "'name:field=value:...' overrides preset fields), comma-separated or repeated; each runs "
                             "in its own process.")
    memory_cap_gib: float = like(PerfTrainConfig, "memory_cap_gib")
    warmup_steps: int = _f(1, "Optimizer steps run before timing (the decode step is compiled and recorded in the "
                              "first).", at_least=0)
    steps: int = _f(3, "Timed optimizer steps per variant (medians are reported).", at_least=1)
    variant_timeout_s: int = like(PerfTrainConfig, "variant_timeout_s", 540)
    peak_tflops: float | None = like(PerfTrainConfig, "peak_tflops")
    output_dir: str = like(BenchmarkFields, "output_dir", "out/perf-grpo")
    run_one: str | None = like(PerfTrainConfig, "run_one")


@dataclass
class DataParallelCheckConfig(LengthFields, BenchmarkFields):
    """benchmark/check_data_parallel.py: train N steps on several processes (DDP or FSDP) and on one process with
    the same global batch; the per-step losses and the adapter's update must agree."""

    launcher: str = _f("ddp", "How the several processes run: ddp or fsdp (configs/accelerate/<name>_2gpu.yaml).",
                       choices=["ddp", "fsdp"])
    processes: int = _f(2, "Processes (GPUs) of the parallel run.")
    variant: str = _f("speed", "Training recipe (medqwen.perf.VARIANTS, 'name:field=value:...'); LoRA dropout is "
                               "set to 0 in both runs (its random masks differ with the process count).")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step in each parallel process; the "
                                             "single process takes this x processes, so the global batch matches.")
    steps: int = _f(5, "Optimizer steps of each run.")
    learning_rate: float = _f(1e-3, "Learning rate: large enough that the adapter moves measurably in a few steps.")
    tolerance: float = _f(0.0, "Largest relative difference of a step's loss that passes, and of the adapter "
                               "update unless twice the single run's repeat is larger (0: 1e-4 in fp32 on CPU; "
                               "1e-2 in bf16 on GPU, where FSDP returns the loss in bf16, 3 significant digits).")
    tiny: bool = _f(False, "CPU run: tiny shape, bundled tokenizer, sequences of median 40, at most 128 tokens, "
                           "recipe 'packed'.")
    timeout_s: int = _f(600, "Each run still going after this many seconds is stopped.")
    output_dir: str = like(BenchmarkFields, "output_dir", "out/check-data-parallel",
                           help="Where results.md, metrics.json, config.yaml and each run's log go.")
    run_role: str | None = _f(None, "Internal: run one side (single, its repeat, or parallel) in this process.",
                              choices=["single", "repeat", "parallel"])


@dataclass
class PerfCevalConfig(BenchmarkFields, DeviceFields):
    """benchmark/perf_ceval.py: questions/s of C-Eval loglik scoring (plain batched, shared-prefix KV reuse) vs
    the original one-question-at-a-time generate-and-extract loop, on a random model of a real shape."""

    tiny: bool = _f(False, "CPU smoke run: tiny shape, bundled tokenizer, a few short questions.")
    tokenizer: str | None = _f(None, "Tokenizer that sets the lengths (None: model/qwen, else model/qwen3-tokenizer, "
                                     "else tests/fixtures/qwen3; --tiny: model/smollm2-135m-instruct).")
    data_dir: str = _f("data/benchmark/ceval-exam", "C-Eval root whose medical items seed the synthetic questions.")
    pooled: bool = _f(False, "The pooled medical set instead: C-Eval + CMMLU + CMExam medical subjects, each exam's "
                             "own prompt on its shipped team-written sample (real lengths of those prompts), "
                             "--questions split in the proportions of the exams' scored splits.")
    permute_options: str = _f("none", "With --pooled, cyclic: also time the option-order check (every question under "
                                      "each cyclic rotation of its options).", choices=["none", "cyclic"])
    questions: int = _f(1346, "Five-shot questions scored (spread over the subjects).")
    subjects: int = _f(4, "Subjects (each has its own shared five-shot head).")
    mean_tokens: int = _f(418, "Target mean prompt length (tokens).")
    head_tokens: int = _f(280, "Target length of the shared instruction + five-shot head (tokens).")
    batch_size: int = _f(256, "Questions per forward pass (our paths; the plain path was fastest at 64).")
    compile: bool = _f(False, "torch.compile each decoder layer for the plain and reuse paths (compiled during "
                              "their untimed warm-up call).")
    kernels: str = like(CevalConfig, "kernels")
    profile: bool = _f(False, "After timing, score one subject's questions again per timed plain/reuse path under "
                              "torch.profiler (not timed) and write its kernel table to profile_<path>.txt.")
    original_questions: int = _f(64, "Questions timed for the original loop (its per-question time is "
                                     "extrapolated to all; 0: skip).")
    original_max_new_tokens: int = _f(16, "Tokens the original loop generates per question before extraction.")
    paths: list[str] = _f(["plain", "reuse", "original"], "Paths to time: plain, reuse, original (comma-separated "
                                                           "or repeated).")
    output_dir: str = like(BenchmarkFields, "output_dir", "out/perf_ceval", help="Where results.md, config.yaml "
                                                                                  "and metrics.json go.")


@dataclass
class PerfGenerateConfig(BenchmarkFields):
    """benchmark/perf_generate.py: greedy answers to held-out-style prompts by transformers' generate and by the
    decode engine (medqwen.kernels.decode.DecodeEngine), base and LoRA, and GRPO-shaped sampled rollouts, on a random
    model of a real shape: tok/s, ms per decode step, share of the decode limit, peak memory."""

    tiny: bool = _f(False, "CPU smoke run: tiny shape, bundled tokenizer, rows 2 and 4, 8 new tokens.")
    data: list[str] = _f(["data/medical_sample.jsonl", "data/lora_identity.jsonl"],
                         "Conversation files whose prompts (everything before the last assistant reply, rendered "
                         "with the chat template) are generated for, repeated as needed.")
    max_new_tokens: int = _f(256, "Tokens generated per prompt (random weights never stop early).", at_least=1)
    rows: list[int] = _f([32, 64, 128, 256], "Engine batch sizes (rows decoded together) to time, "
                                             "comma-separated; the best is used for the adapter and the totals.")
    engine_batches: int = _f(2, "Timed engine batches per batch size (after one untimed batch that records the "
                                "graphs).", at_least=1)
    no_window: bool = _f(True, "Also time the best batch size reading the whole static cache each step (no "
                               "attention windows).")
    compiled: bool = _f(False, "Also time the best batch size with the decode step compiled (torch.compile; "
                               "minutes of compiling, whole-cache reads).")
    hf_batch_size: int = _f(8, "Prompts per transformers generate call (the evaluation's default batch_size).")
    hf_batches: int = _f(1, "generate calls timed for the base model and again with the adapter (0: skip).",
                         at_least=0)
    lora_r: int = _f(8, "Rank of the random LoRA adapter (every linear layer of the blocks, as the SFT presets).")
    rollout_rows: int = _f(32, "GRPO-shaped rollouts: completions sampled together (grpo_2x24gb.yaml: batch 8 "
                               "x 4 accumulation steps, one generation batch per optimizer step); 0: skip.", at_least=0)
    rollout_tokens: int = _f(128, "GRPO-shaped rollouts: max_completion_length.")
    rollout_compile: bool = _f(False, "Compile the rollouts' decode step as GRPO's graph rollouts do on a GPU "
                                      "(about 2 minutes of compiling for a 4B model).")
    heldout: int = _f(2500, "Held-out conversations of the original recipe (10% of 25K): base + LoRA evaluation "
                            "time is extrapolated for this many.")
    output_dir: str = like(BenchmarkFields, "output_dir", "out/perf-generate")
