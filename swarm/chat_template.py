"""Conversations rendered as training samples: the base tokenizer's own chat template when it has one
(transformers' ``apply_chat_template``), else nomoat's default template. Only the assistant's answers are
trainable unless the run sets ``train_on_prompts``.

The default template (``nomoat-default-v1``), for tokenizers without one (the ``tiny`` preset's bytes)::

    <|system|>\\n{content}<|end|>\\n        (only as the first message)
    <|user|>\\n{content}<|end|>\\n
    <|assistant|>\\n{content}<|end|>\\n

The trainable part of an assistant turn is ``{content}<|end|>\\n``: the model learns to end its answer. To chat
with a model trained on it, send the conversation so far followed by ``<|assistant|>\\n`` and stop generating
at ``<|end|>`` (``render_prompt`` does the first part).

With a model's template, each assistant turn is found by rendering the conversation up to it with the
generation prompt and then with the turn: the difference is the answer. A template that rewrites earlier turns
(so one rendering is not a prefix of the next) is refused with the reason.

Usage::

    sample = render_conversation(messages, tokenizer, train_on_prompts=False)   # swarm.samples.Sample
    template_name(tokenizer)   # 'nomoat-default-v1' or 'hf:sha256:...', part of the dataset digest
"""

from __future__ import annotations

import hashlib
from typing import Any

from swarm.dataset_files import DatasetError
from swarm.samples import Sample

DEFAULT_TEMPLATE = "nomoat-default-v1"
END = "<|end|>"


def _model_template(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) and hasattr(tokenizer, "render_chat") else None


def template_name(tokenizer: Any) -> str:
    template = _model_template(tokenizer)
    if template is None:
        return DEFAULT_TEMPLATE
    return "hf:sha256:" + hashlib.sha256(template.encode()).hexdigest()


def _default_turn(message: dict[str, str]) -> str:
    return f"<|{message['role']}|>\n{message['content']}{END}\n"


def render_prompt(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """The text a model is given to answer ``messages`` (the conversation so far): for chatting with a result."""
    if _model_template(tokenizer) is not None:
        return _strip_bos(tokenizer.render_chat(messages, add_generation_prompt=True), tokenizer)
    return "".join(_default_turn(message) for message in messages) + "<|assistant|>\n"


def _default_segments(messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    segments: list[tuple[str, bool]] = []
    for message in messages:
        if message["role"] == "assistant":
            segments += [("<|assistant|>\n", False), (f"{message['content']}{END}\n", True)]
        else:
            segments.append((_default_turn(message), False))
    return segments


def _template_segments(messages: list[dict[str, str]], tokenizer: Any, where: str) -> list[tuple[str, bool]]:
    segments: list[tuple[str, bool]] = []
    done = ""  # the text rendered so far, a prefix of every later rendering
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.render_chat(messages[:index], add_generation_prompt=True)
        full = tokenizer.render_chat(messages[: index + 1], add_generation_prompt=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise DatasetError(f"{where}: the base model's chat template does not render this conversation turn by "
                               f"turn (message {index + 1}), so its answers cannot be told from its prompts")
        segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    whole = tokenizer.render_chat(messages, add_generation_prompt=False)
    if whole.startswith(done) and len(whole) > len(done):
        segments.append((whole[len(done):], False))  # messages after the last answer
    return segments


def _strip_bos(text: str, tokenizer: Any) -> str:
    bos = getattr(tokenizer, "bos_text", None)  # encoding adds BOS itself: a template's would be a second one
    return text[len(bos):] if bos and text.startswith(bos) else text


def render_conversation(messages: list[dict[str, str]], tokenizer: Any, train_on_prompts: bool,
                        where: str = "conversation") -> Sample:
    """``messages`` (checked by swarm.formats) as one sample of (text, trainable) segments."""
    if _model_template(tokenizer) is not None:
        segments = _template_segments(messages, tokenizer, where)
        if segments:
            segments[0] = (_strip_bos(segments[0][0], tokenizer), segments[0][1])
    else:
        segments = _default_segments(messages)
    merged: list[tuple[str, bool]] = []
    for text, trainable in segments:
        trainable = trainable or train_on_prompts
        if not text:
            continue
        if merged and merged[-1][1] == trainable:
            merged[-1] = (merged[-1][0] + text, trainable)
        else:
            merged.append((text, trainable))
    if not any(trainable and text.strip() for text, trainable in merged):
        raise DatasetError(f"{where}: the rendered conversation has no answer text to train on")
    return Sample(tuple(merged))
