"""Config keys of earlier releases and what replaced them (one line for a user who types one),
read by the schema and by the command line's report of a key Hydra does not know."""

from __future__ import annotations

#: ``train``/``finetune`` key of an earlier release -> what replaced it.
RENAMED_KEYS = {
    "amp": "precision (auto | fp32 | bf16 | fp16)",
    "channels_last": "memory_format (auto | channels_last | contiguous)",
}
#: The groups whose keys were renamed.
RENAMED_IN = ("train", "finetune")


def renamed_key_message(key: str) -> str | None:
    """``train.amp`` -> ``"train.amp was replaced by train.precision (...)"``; None otherwise."""
    group, _, name = key.rpartition(".")
    if group in RENAMED_IN and name in RENAMED_KEYS:
        return f"{key} was replaced by {group}.{RENAMED_KEYS[name]}"
    return None
