"""trainer/merge_lora.py: the merged model computes what base + adapter computes."""

import sys
from pathlib import Path

import pytest
import torch

from medqwen.configlib import save_config
from medqwen.train.config import MergeConfig, TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "trainer"))
import merge_lora  # noqa: E402


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA run folder with non-zero B matrices (a fresh LoRA is a no-op) and the config.yaml train writes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from medqwen.chat import load_tokenizer

    out = tmp_path_factory.mktemp("lora-run")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                           init_lora_weights=False))
    peft.save_pretrained(out)
    load_tokenizer(tiny_model_dir).save_pretrained(out)
    save_config(TrainConfig(model=str(tiny_model_dir), output_dir=str(out)), out / "config.yaml")
    return out


def test_merged_logits_equal_base_plus_adapter(tiny_model_dir, adapter_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from medqwen.chat import load_chat_template
    from medqwen.modeling import load_model

    out = merge_lora.main(MergeConfig(adapter=str(adapter_dir), output_dir=str(tmp_path / "merged"), dtype="float32"))
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with_adapter = load_model(tiny_model_dir, adapter=adapter_dir, device="cpu", dtype="float32")
    base = load_model(tiny_model_dir, device="cpu", dtype="float32")
    ids = torch.randint(0, merged.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want, plain = (m(input_ids=ids).logits for m in (merged, with_adapter, base))
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (want - plain).abs().max() > 1e-2  # the adapter matters, so equality below means something
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (out / "chat_template.jinja").read_text() == load_chat_template()
    assert (out / "merge_config.yaml").is_file() and not (tmp_path / ".merged.staging").exists()


def test_merge_saves_base_dtype_and_explains_missing_inputs(adapter_dir, tmp_path):
    out = merge_lora.main(MergeConfig(adapter=str(adapter_dir), output_dir=str(tmp_path / "m"), dtype="bfloat16"))
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    with pytest.raises(FileNotFoundError, match="adapter folder .*nothing.* does not exist"):
        merge_lora.main(MergeConfig(adapter=str(tmp_path / "nothing")))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not an earlier merge"):
        merge_lora.main(MergeConfig(adapter=str(adapter_dir), output_dir=str(occupied)))
    assert (occupied / "keep.txt").read_text() == "user data"
