"""Merge a LoRA adapter into its RoPE-ID base (full checkpoint + model card); same options as ``hf-ropeid merge``.

python conversion/merge_lora.py outputs/lora/adapter outputs/SmolLM2-135M-Instruct-rope-id-lora
"""

import sys

from hf_ropeid.cli import main

if __name__ == "__main__":
    main(["merge", *sys.argv[1:]])
