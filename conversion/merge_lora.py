"""Merge a LoRA adapter into its RoPE-ID base (full checkpoint + model card); same options as ``hf-ropeid merge``.

    python conversion/merge_lora.py outputs/lora/adapter outputs/SmolLM2-135M-Instruct-rope-id-lora
"""

import typer

from hf_ropeid.merge import merge_command

if __name__ == "__main__":
    typer.run(merge_command)
