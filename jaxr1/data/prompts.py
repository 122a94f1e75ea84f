"""Prompt formatting: system prompt, question template and multiple-choice options on a ParsedRow's turns."""
from __future__ import annotations

import copy
import string

from jaxr1.data.schemas import ParsedRow


def apply_template(template: str, question: str) -> str:
    # str.replace, not str.format: templates hold literal braces ("\\boxed{}") and so do questions.
    return template.replace("{question}", question).replace("{Question}", question)


def format_choices(question: str, choices: list[str] | None) -> str:
    """Append "A. ..." lines unless the question already lists every option."""
    if not choices or all(c in question for c in choices):
        return question
    letters = string.ascii_uppercase
    lines = [c if c[:2] in (f"{letters[i]}.", f"{letters[i]})") else f"{letters[i]}. {c}"
             for i, c in enumerate(choices[: len(letters)])]
    return question.rstrip() + "\n" + "\n".join(lines)


def build_messages(parsed: ParsedRow, system_prompt: str | None, question_template: str,
                   append_choices: bool = True) -> list[dict]:
    """Chat messages for tokenizer.apply_chat_template; the template goes on the last user text part."""
    turns = copy.deepcopy(parsed.turns)
    user = next(t for t in reversed(turns) if t["role"] == "user")
    texts = [p for p in user["content"] if p["type"] == "text"]
    if not texts:
        texts = [{"type": "text", "text": ""}]
        user["content"].append(texts[0])
    question = texts[-1]["text"]
    if append_choices:
        question = format_choices(question, parsed.choices)
    texts[-1]["text"] = apply_template(question_template, question)
    if system_prompt is not None and not any(t["role"] == "system" for t in turns):
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns
