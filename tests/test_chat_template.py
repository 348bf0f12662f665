"""The one chat template: token-for-token equal to the official Qwen3 templates for inference, generation
markers that give an assistant-only mask (through TRL's own path), and the same tokens on SmolLM2's ChatML."""

import json

import pytest

from medqwen.chat import encode_with_assistant_mask, load_chat_template, load_tokenizer, render

TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}]
CALL = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "(12 + 8) * 3"}}}

# Conversations whose next turn is the assistant's: what inference renders with add_generation_prompt=True.
PROMPTS = {
    "single": [{"role": "user", "content": "What is hypertension?"}],
    "system_chinese": [{"role": "system", "content": "你是一名心内科医生。"},
                       {"role": "user", "content": "患者男性，45岁，反复胸痛3天。"}],
    "multi_turn": [{"role": "user", "content": "我头痛。"}, {"role": "assistant", "content": "持续多久了？"},
                   {"role": "user", "content": "三天，伴有发热。"}],
    "think_in_history": [{"role": "user", "content": "1+1?"},
                         {"role": "assistant", "content": "<think>\nsimple\n</think>\n\n2"},
                         {"role": "user", "content": "2+2?"}],
    "tool_call_and_response": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "帮我计算 (12 + 8) * 3"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": "60"}],
    "two_tool_responses": [
        {"role": "user", "content": "compute 2*3 and 4*5"},
        {"role": "assistant", "content": "Let me compute.", "tool_calls": [
            CALL, {"type": "function", "function": {"name": "calculator", "arguments": '{"expression": "4*5"}'}}]},
        {"role": "tool", "content": "6"}, {"role": "tool", "content": "20"}],
}
TOOL_CASES = {"tool_call_and_response", "two_tool_responses"}


@pytest.fixture(scope="module")
def qwen(qwen_reference_dir):
    return load_tokenizer(qwen_reference_dir), qwen_reference_dir


def _official(ref_dir, name):
    return (ref_dir / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("case", sorted(PROMPTS))
@pytest.mark.parametrize("with_tools", [False, True])
def test_inference_prompt_equals_official_instruct_2507(qwen, case, with_tools):
    tokenizer, ref = qwen
    messages, tools = PROMPTS[case], (TOOLS if with_tools or case in TOOL_CASES else None)
    ours = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True,
                                         return_dict=False)
    official = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True,
                                             return_dict=False,
                                             chat_template=_official(ref, "qwen3_instruct_2507.jinja"))
    assert ours == official


@pytest.mark.parametrize("case", sorted(PROMPTS))
@pytest.mark.parametrize("enable_thinking", [None, True, False])
def test_inference_prompt_equals_official_hybrid(qwen, case, enable_thinking):
    tokenizer, ref = qwen
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    tools = TOOLS if case in TOOL_CASES else None
    ours = tokenizer.apply_chat_template(PROMPTS[case], tools=tools, add_generation_prompt=True, tokenize=True,
                                         return_dict=False, **kwargs)
    official = tokenizer.apply_chat_template(PROMPTS[case], tools=tools, add_generation_prompt=True, tokenize=True,
                                             return_dict=False, chat_template=_official(ref, "qwen3_hybrid.jinja"),
                                             **kwargs)
    assert ours == official


def test_known_qwen_ids(qwen):
    """The render the reference folder documents (verify_output.txt), id for id."""
    tokenizer, _ = qwen
    ids = tokenizer.apply_chat_template(PROMPTS["system_chinese"], add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    assert ids == [151644, 8948, 198, 56568, 110124, 63109, 116298, 103998, 1773, 151645, 198, 151644, 872, 198,
                   101924, 105106, 3837, 19, 20, 92015, 3837, 105006, 100277, 100406, 18, 35727, 1773, 151645, 198,
                   151644, 77091, 198]


def test_training_render_history_equals_official_and_last_turn_has_no_empty_think(qwen):
    """Full conversations: identical up to the final reply, which carries no empty <think></think> block
    (deliberate: a non-thinking model must not learn to emit one); with enable_thinking=False the hybrid
    model's empty think block is kept, as prompt."""
    tokenizer, ref = qwen
    conversation = PROMPTS["multi_turn"] + [{"role": "assistant", "content": "建议尽快就医，测量体温。"}]
    ours = render(tokenizer, conversation)
    official = tokenizer.apply_chat_template(conversation, tokenize=False,
                                             chat_template=_official(ref, "qwen3_instruct_2507.jinja"))
    assert official == ours.replace("<|im_start|>assistant\n建议", "<|im_start|>assistant\n<think>\n\n</think>\n\n建议")
    no_think = render(tokenizer, conversation, enable_thinking=False)
    hybrid = tokenizer.apply_chat_template(conversation, tokenize=False, enable_thinking=False,
                                           chat_template=_official(ref, "qwen3_hybrid.jinja"))
    assert no_think == hybrid


def _expected_assistant_mask(tokenizer, ids):
    """Independent reference: 1 from the token after `<|im_start|>assistant\\n` through its `<|im_end|>`."""
    start, end = tokenizer.convert_tokens_to_ids("<|im_start|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")
    header = tokenizer.encode("assistant\n", add_special_tokens=False)
    mask, i = [0] * len(ids), 0
    while i < len(ids):
        if ids[i] == start and ids[i + 1:i + 1 + len(header)] == header:
            i += 1 + len(header)
            while i < len(ids):
                mask[i] = 1
                if ids[i] == end:
                    break
                i += 1
        i += 1
    return mask


CONVERSATIONS = [
    PROMPTS["multi_turn"] + [{"role": "assistant", "content": "建议尽快就医。"}],
    PROMPTS["tool_call_and_response"] + [{"role": "assistant", "content": "(12 + 8) * 3 = 60"}],
    [{"role": "system", "content": "You are MedQwen."}, {"role": "user", "content": "Who are you?"},
     {"role": "assistant", "content": "I am MedQwen, a medical assistant."}],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["multi_turn", "tools", "identity"])
def test_assistant_mask_covers_exactly_replies_and_im_end(tiny_model_dir, conversation):
    tokenizer = load_tokenizer(tiny_model_dir)
    tools = TOOLS if any(m.get("tool_calls") for m in conversation) else None
    ids, mask = encode_with_assistant_mask(tokenizer, conversation, tools=tools)
    assert mask == _expected_assistant_mask(tokenizer, ids)
    replies = [m for m in conversation if m["role"] == "assistant"]
    assert sum(1 for i, t in enumerate(ids) if mask[i] and t == tokenizer.convert_tokens_to_ids("<|im_end|>")) \
        == len(replies)
    masked_text = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    for reply in replies:
        assert (reply["content"] or "") in masked_text


def test_trl_assistant_only_loss_uses_our_template_and_mask(tiny_model_dir, tmp_path):
    """Through TRL's own tokenization (assistant_only_loss=True): the ids are our template's, the mask ours."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(tiny_model_dir)
    rows = [{"messages": c} for c in CONVERSATIONS if not any(m.get("tool_calls") for m in c)]
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, bf16=False, report_to="none",
                     max_length=512, use_cpu=True, **{"activation_checkpointing": False})
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    assert trainer.processing_class.chat_template == load_chat_template()
    for row, example in zip(rows, trainer.train_dataset):
        ids, mask = encode_with_assistant_mask(tokenizer, row["messages"])
        assert example["input_ids"] == ids
        trained = [int(label != -100) for label in example["labels"]]  # TRL 1.16 turns the mask into labels
        assert trained == mask == _expected_assistant_mask(tokenizer, ids)
        assert [label for label in example["labels"] if label != -100] == [t for t, m in zip(ids, mask) if m]


def test_same_template_on_smollm2_chatml(bundled_model_dir):
    """SmolLM2 shares the ChatML tokens: our template renders the same structure there."""
    tokenizer = load_tokenizer(bundled_model_dir)
    text = render(tokenizer, PROMPTS["system_chinese"], add_generation_prompt=True)
    assert text == ("<|im_start|>system\n你是一名心内科医生。<|im_end|>\n<|im_start|>user\n"
                    "患者男性，45岁，反复胸痛3天。<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(PROMPTS["single"], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(ids) == render(tokenizer, PROMPTS["single"], add_generation_prompt=True)


def test_tool_definitions_render_as_json(qwen):
    tokenizer, _ = qwen
    text = render(tokenizer, PROMPTS["single"], tools=TOOLS, add_generation_prompt=True)
    listed = text.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]  # one JSON object per line, as Qwen3 lists them
    assert [json.loads(line) for line in listed.splitlines()] == TOOLS
