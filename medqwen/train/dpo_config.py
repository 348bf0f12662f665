"""The configs of preference training: DpoConfig (trainer/train_dpo.py) and PreferenceDataConfig
(data/prepare_preference.py), built from the shared field groups of medqwen/configlib.py and
medqwen/train/config.py."""

from __future__ import annotations

from dataclasses import dataclass

from medqwen.configlib import DEFAULT_TEMPLATE, ModelFields, RunFields, _f, like
from medqwen.train.config import FastPathFields, TrainerFields

# DPO losses of TRL's DPOTrainer offered here (trl.DPOConfig.loss_type), and ORPO (no reference model).
DPO_LOSSES = ["sigmoid", "ipo", "hinge", "robust", "sigmoid_norm", "apo_zero"]
LOSSES = DPO_LOSSES + ["orpo"]


@dataclass
class DpoConfig(TrainerFields):
    """trainer/train_dpo.py: preference training (DPO or ORPO, TRL DPOTrainer + LoRA) on chosen/rejected pairs, the
    reply scored over the chat template's assistant span as in SFT."""

    model: str | None = like(ModelFields, "model", None, help="Base model folder (HF format) or hub id (None: "
                                                              "model/qwen, or with --adapter the base named in its "
                                                              "run's config.yaml).")
    adapter: str | None = _f(None, "SFT LoRA run folder (a train_lora.py output_dir) to continue: the policy starts "
                                   "as that adapter and the reference is a frozen copy of it (a few MB, not a second "
                                   "model). None: a fresh LoRA on the base, whose reference is the base (the adapter "
                                   "disabled).", aliases=["init_adapter"])
    data_path: str = _f("data/medical_preference_sample.jsonl",
                        "Preference pairs: MedicalGPT's system/history/question/response_chosen/response_rejected, or "
                        "TRL's prompt/chosen/rejected (strings or message lists) in JSONL/JSON "
                        "(data/prepare_preference.py cleans and merges files).")
    output_dir: str = like(TrainerFields, "output_dir", "out/qwen3-4b-dpo-medical")
    chat_template: str = like(ModelFields, "chat_template",
                              help="Chat template (with generation markers): its assistant span is the scored reply.")
    loss: str = _f("sigmoid", "Preference loss: sigmoid (DPO), ipo, hinge, robust, sigmoid_norm (length-normalised "
                              "DPO), apo_zero (TRL's DPOTrainer loss_type), or orpo (odds ratio + NLL on the chosen "
                              "reply, no reference pass).", choices=LOSSES)
    beta: float = _f(0.1, "DPO: how far the policy may move from the reference (higher: less); ORPO: the weight "
                          "lambda of the odds-ratio term.", above=0)
    label_smoothing: float = _f(0.0, "Robust DPO: assumed probability that a pair's label is flipped.",
                                at_least=0, below=0.5)
    max_seq_len: int = _f(1024, "Longest prompt + reply (tokens); longer ones are cut at the end, pairs whose prompt "
                                "alone fills it are dropped.", at_least=1)
    num_train_epochs: float = like(TrainerFields, "num_train_epochs", 1.0, help="Passes over the training pairs.")
    per_device_train_batch_size: int = like(TrainerFields, "per_device_train_batch_size", 4,
                                            help="Pairs per device per micro-batch (each pair is two sequences).")
    per_device_eval_batch_size: int = _f(8, "Pairs per device per evaluation batch.", at_least=1)
    gradient_accumulation_steps: int = like(TrainerFields, "gradient_accumulation_steps", 4)
    learning_rate: float = like(TrainerFields, "learning_rate", 5e-5)
    lr_scheduler_type: str = like(TrainerFields, "lr_scheduler_type", "cosine")
    warmup_steps: float = like(TrainerFields, "warmup_steps", 0.1)
    eval_ratio: float = _f(0.1, "Fraction of pairs held out: reward accuracy and margins before and after, and the "
                                "eval loss that picks the best checkpoint (0: none).", at_least=0, below=1)
    eval_steps: int = _f(50, "Evaluate and checkpoint every N optimizer steps.", at_least=1)
    logging_steps: int = like(TrainerFields, "logging_steps", 1)
    skip_invalid: bool = _f(False, "Skip invalid pairs (counted by reason) instead of stopping at the first.")
    fused_lora: bool = like(FastPathFields, "fused_lora", help="LoRA layers as one fused autograd function (same math "
                                                               "as PEFT; the reference pass still disables them).")
    compile_layers: bool = like(FastPathFields, "compile_layers")
    seed: int = like(RunFields, "seed", help="Random seed (split, LoRA init, shuffling).")


@dataclass
class PreferenceDataConfig:
    """data/prepare_preference.py: read preference pairs, validate, escape control tokens, de-duplicate, filter by
    length, merge and write TRL's conversational prompt/chosen/rejected JSONL with per-reason counts."""

    input: list[str] = _f([], "Preference file or folder (repeatable): MedicalGPT or TRL layout, JSONL or JSON.")
    output: str = _f("data/medical_preference.jsonl", "JSONL to write; <stem>.stats.json and <stem>.config.yaml go "
                                                      "beside it.")
    encoding: str = _f("auto", "Text encoding of the inputs (auto: UTF-8 with or without BOM, else GB18030/GBK).",
                       choices=["auto", "utf-8", "gb18030", "gbk"])
    system_prompt: str | None = _f(None, "System message added to pairs whose prompt has none (None: leave).")
    skip_invalid: bool = _f(False, "Skip invalid pairs (counted by reason) instead of stopping at the first.")
    control_tokens: str = _f("escape", "Text that spells a control token (<|im_start|>, <think>...): escape it (a "
                                       "zero-width space after '<'; counted) or refuse the pair.",
                             choices=["escape", "refuse"])
    dedup: bool = _f(True, "Drop exact duplicate pairs (same prompt, chosen and rejected after normalising "
                           "whitespace).")
    tokenizer: str = _f("auto", "Tokenizer folder for the length filter ('auto': model/qwen if present, else the "
                                "bundled model; 'none': no filter).")
    chat_template: str = _f(DEFAULT_TEMPLATE, "Chat template used to count tokens as training sees them.")
    max_seq_len: int = _f(1024, "Drop pairs whose prompt + longer reply exceeds this many tokens (0: keep all).",
                          at_least=0)
    shuffle: bool = _f(True, "Shuffle the merged output (seeded).")
    seed: int = _f(42, "Random seed for shuffling.")

