"""Chat with the base model (optionally with a LoRA adapter), streaming tokens.

    python run.py                                                     # interactive, model/qwen
    python run.py --model model/smollm2-135m-instruct --prompt "What is the capital of France?"
    python run.py --adapter out/qwen3-4b-lora-medical --prompt "头痛三天，需要做什么检查？"

Interactive commands: /reset clears the history; exit, quit, /exit or Ctrl-D quits (medqwen/repl.py).
"""

from threading import Thread

from medqwen.chat import escape_control_tokens, load_tokenizer
from medqwen.chat_config import ChatConfig
from medqwen.cli import run_script
from medqwen.modeling import load_model
from medqwen.repl import HELP, repl
from medqwen.runs import resolve_model


def print_streamed_reply(generator, tokenizer, messages, cfg: ChatConfig) -> str:
    """Generate one assistant reply for `messages` with a medqwen.kernels.decode.OnePromptGenerator, printing tokens as
    they arrive."""
    import torch
    from transformers import GenerationConfig, TextIteratorStreamer

    kwargs = {} if cfg.enable_thinking is None else {"enable_thinking": cfg.enable_thinking}
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        **kwargs)["input_ids"]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.temperature > 0 \
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    torch.manual_seed(cfg.seed)
    config = GenerationConfig(max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), **sampling)
    worker = Thread(target=generator.generate, args=(list(ids), config, streamer), daemon=True)
    worker.start()
    pieces = []
    for piece in streamer:
        print(piece, end="", flush=True)
        pieces.append(piece)
    worker.join()
    print()
    return "".join(pieces)


def main(cfg: ChatConfig) -> None:
    choice = resolve_model(cfg.model, cfg.adapter, cfg.model_type)
    tokenizer = load_tokenizer(choice.model, cfg.chat_template)
    model = load_model(choice.model, adapter=choice.adapter)
    from medqwen.kernels.decode import OnePromptGenerator  # torch: not needed for --help

    generator = OnePromptGenerator(model, "run.py")
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    if cfg.prompt is not None:
        user = {"role": "user", "content": escape_control_tokens(cfg.prompt)}
        print_streamed_reply(generator, tokenizer, system + [user], cfg)
        return
    print(f"chatting with {choice.label} on {model.device} ({HELP})")
    history = list(system)

    def reply(user: str) -> None:
        print("assistant> ", end="", flush=True)
        turn = {"role": "user", "content": escape_control_tokens(user)}  # typed text cannot forge a turn
        answer = print_streamed_reply(generator, tokenizer, history + [turn], cfg)
        history.extend([turn, {"role": "assistant", "content": answer}])

    repl(reply, on_reset=lambda: history.__setitem__(slice(len(system), None), []))


if __name__ == "__main__":
    run_script(ChatConfig, main)
