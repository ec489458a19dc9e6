"""What each recipe runs on: the one table behind the README's support claims.

``tests/test_support.py`` checks every cell against what the code does (a cell that says "yes" must run and
agree with eager; "refused" must raise the one-line error) and checks that the README's table is this
table rendered; so a claim cannot drift from behaviour. "where installed" cells need a package this project's
CI cannot install (flash-attn needs CUDA): they are checked where it is installed.
"""

from __future__ import annotations

from .parameters import RECIPES

YES, REFUSED, WHERE_INSTALLED = "yes", "refused (one-line error)", "yes, where flash-attn is installed (GPU)"

# feature: {recipe: claim}. Recipes with a rotary window (far-context) need RoPE-ID's own kernels.
SUPPORT: dict[str, dict[str, str]] = {
    "attention `eager`": {"far-context": YES + " (reference; returns weights)", "portable": YES, "paper": YES},
    "attention `sdpa`": {"far-context": YES + " (two-pass kernel, plain-attention cost)", "portable": YES,
                         "paper": YES},
    "attention `flex_attention`": {"far-context": REFUSED, "portable": YES, "paper": YES},
    "attention `flash_attention_2`": {"far-context": REFUSED, "portable": WHERE_INSTALLED, "paper": WHERE_INSTALLED},
    "a foreign backend (vLLM / SGLang Transformers backend)": {"far-context": REFUSED, "portable": YES, "paper": YES},
    "`DynamicCache`, `generate()`": {"far-context": YES, "portable": YES, "paper": YES},
    "`StaticCache` (`cache_implementation=\"static\"`)": {"far-context": YES, "portable": YES, "paper": YES},
    "left-padded batches (each row as alone)": {"far-context": YES, "portable": YES, "paper": YES},
    "`torch.compile`": {"far-context": YES, "portable": YES, "paper": YES},
    "activation checkpointing": {"far-context": YES, "portable": YES, "paper": YES},
    "`hf-ropeid export-gguf` (llama.cpp)": {"far-context": REFUSED, "portable": YES, "paper": YES},
}

assert all(set(claims) == set(RECIPES) for claims in SUPPORT.values()), "every recipe has a claim per feature"


def support_table() -> str:
    """The table as markdown (what the README shows between its support markers)."""
    recipes = list(RECIPES)
    lines = ["| | " + " | ".join(f"`{r}`" for r in recipes) + " |", "|---|" + "---|" * len(recipes)]
    lines += [f"| {feature} | " + " | ".join(claims[r] for r in recipes) + " |" for feature, claims in SUPPORT.items()]
    return "\n".join(lines)


__all__ = ["SUPPORT", "support_table"]
