"""GRPO rollouts without vLLM: each decode step one CUDA graph (graph, the GPU default), or transformers' generate with
a static KV cache and its compiled decode step (compiled).

`GraphRolloutTrainer` answers TRL's generate call with medqwen.kernels.decode.GraphSampler: the same samples as generate
(the tests compare them token for token on CPU), each decode step after the first few a CUDA graph replay of a
compiled forward with grouped-query attention read in place, sampling included.

TRL's GRPOTrainer generates its rollouts with `model.generate(..., disable_compile=True)` and a dynamic cache, so
every decoded token runs the model's Python again (each decoder layer and each LoRA adapter in it) and launches a
few thousand small kernels: on a GPU a 4B model then decodes at a few percent of what its memory bandwidth allows.
`CompiledRolloutTrainer` changes only how the same rollouts are computed: a static cache lets transformers compile
the one-token decode step once (Inductor, `reduce-overhead`: replayed as CUDA graphs), and prompts are left-padded
to a multiple of PROMPT_BUCKET tokens so the cache length, and with it the compiled graph, stays the same from one
optimizer step to the next. The extra left pads are masked out, so a rollout samples from the same distribution
as TRL's default path; the log-prob and training passes are TRL's own, unpadded.

    choose_rollouts("auto", use_vllm=False, cuda=True)    # -> ("graph", why)
    trainer = GraphRolloutTrainer(model=..., args=grpo_args, ...)   # a GRPOTrainer with these rollouts

On CPU both classes run uncompiled and ungraphed (auto picks TRL's own path there).
"""

from __future__ import annotations

import contextlib

from transformers import CompileConfig
from trl import GRPOTrainer

ROLLOUTS = ("auto", "graph", "compiled", "plain")

# Prompt lengths are rounded up to a multiple of this when generating: one compiled decode graph serves every
# optimizer step whose longest prompt falls in the same bucket, and the static cache never shrinks, so after the
# first steps there is nothing left to compile. 64 pads a 150-token prompt by 21 tokens on average, masked.
PROMPT_BUCKET = 64


@contextlib.contextmanager
def _prompt_bucket(trainer):
    """Pad prompts to a multiple of PROMPT_BUCKET for generation only: TRL pads its log-prob and loss passes with
    the same attribute, and those need no fixed shapes."""
    own = trainer.pad_to_multiple_of
    trainer.pad_to_multiple_of = PROMPT_BUCKET
    try:
        yield
    finally:
        trainer.pad_to_multiple_of = own


def choose_rollouts(choice: str, use_vllm: bool, cuda: bool) -> tuple[str, str]:
    """(engine, reason): "vllm", "graph", "compiled" or "plain" for a `rollouts` setting on this machine."""
    if choice not in ROLLOUTS:
        raise ValueError(f"unknown rollouts {choice!r}: use one of {', '.join(ROLLOUTS)}")
    if use_vllm:
        return "vllm", "--use_vllm: vLLM generates the rollouts"
    if choice == "auto":
        if cuda:
            return "graph", ("a CUDA GPU: static KV cache, each decode step one CUDA graph "
                             "(--rollouts plain: TRL's default)")
        return "plain", "no GPU: CUDA graphs need one, so TRL's default path"
    return choice, f"--rollouts {choice}"


class CompiledRolloutTrainer(GRPOTrainer):
    """A GRPOTrainer whose transformers rollouts use a static KV cache and a compiled (CUDA-graph) decode step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # TRL builds its generation config with disable_compile=True; generate() compiles the decode step only
        # for a static cache, with this config (dynamic=False: the shapes repeat, see PROMPT_BUCKET).
        self.generation_kwargs["cache_implementation"] = "static"  # TRL copies these onto the model's own config
        self.generation_config.cache_implementation = "static"
        self.generation_config.disable_compile = False
        self.generation_config.compile_config = CompileConfig(fullgraph=False, dynamic=False,
                                                              mode="reduce-overhead")

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        with _prompt_bucket(self):
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)


class GraphRolloutTrainer(GRPOTrainer):
    """A GRPOTrainer whose transformers rollouts come from GraphSampler: the same samples as generate, each decode
    step one CUDA graph replay. Configs it cannot graph (history-reading logits processors, vision inputs) fall back
    to TRL's own generate, with a message."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sampler = None
        self._cannot_graph: str | None = None  # why TRL's generate answers instead (the config is fixed per run)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
        from medqwen.kernels.decode import GraphSampler

        model = self.accelerator.unwrap_model(self.model_wrapped)  # the module TRL's generate call goes to
        if self._sampler is None:
            self._sampler = GraphSampler(model)
            self._cannot_graph = self._sampler.unsupported(self.generation_config)
            if self._cannot_graph:
                print(f"rollouts: TRL's generate ({self._cannot_graph})")
        if self._cannot_graph or images is not None or multimodal_fields:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 *args, **kwargs)
        sampler = self._sampler
        # TRL's generate call, answered by the sampler; the prompt bucket keeps the graph's shapes from one
        # optimizer step to the next
        model.generate = lambda input_ids, attention_mask, generation_config, **_: sampler.generate(
            input_ids, attention_mask, generation_config)
        try:
            with _prompt_bucket(self):
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                     *args, **kwargs)
        finally:
            del model.generate
