"""What every family's HF directory shares besides its weights: the tokenizer / processor files copied beside
them, the files' mode, and the error a checkpoint that does not match its model raises."""
from __future__ import annotations

import os
import shutil

from jaxr1.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.json", "chat_template.jinja", "preprocessor_config.json",
                   "generation_config.json")


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not match the model; the message names the file and the key."""


def share_files(out_dir: str) -> None:
    """safetensors writes through a private temporary file (mode 0600); a model directory is for everyone
    who may read the folder, so give the files the mode the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            os.chmod(path, 0o666 & ~umask)


def copy_tokenizer_files(source_dir: str, out_dir: str) -> None:
    for name in TOKENIZER_FILES:
        src = os.path.join(source_dir, name)
        if os.path.isfile(src) and os.path.abspath(src) != os.path.abspath(os.path.join(out_dir, name)):
            shutil.copy2(src, os.path.join(out_dir, name))
