"""Training-speed arithmetic: FLOPs of a LoRA train step, MFU, length distributions, step timing.

Used by benchmark/perf_train.py; kept here so the formulas are tested and documented in one place.

    from medqwen.perf import lora_train_flops, synthetic_lengths
    lengths = synthetic_lengths(1000, median=280, cap=1024, seed=0)
    flops = lora_train_flops(model.config, lengths, lora_r=8, targets=[...])   # useful FLOPs of one pass
    mfu = flops / seconds / peak_flops
"""

from medqwen.perf.data import (
                               benchmark_conversations,
                               benchmark_model,
                               benchmark_tokenizer_dir,
                               length_summary,
                               synthetic_conversations,
                               synthetic_lengths,
)
from medqwen.perf.flops import (
                               decode_bytes_per_step,
                               forward_flops,
                               lora_train_flops,
                               matmul_peak_tflops,
                               memory_bandwidth_gbs,
                               projection_shapes,
)
from medqwen.perf.report import write_perf_report
from medqwen.perf.timing import (
                               StepCounter,
                               batch_conversations,
                               kernel_profiler,
                               merge_process_steps,
                               profile_summary,
                               step_fingerprint,
                               time_trainer,
)
from medqwen.perf.variants import VARIANTS, variant_config
