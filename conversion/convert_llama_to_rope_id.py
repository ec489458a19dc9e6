"""Convert a Llama checkpoint to RoPE-ID: the same as ``hf-ropeid convert`` (see ``--help``).

    python conversion/convert_llama_to_rope_id.py                      # SmolLM2-135M-Instruct, verified
    python conversion/convert_llama_to_rope_id.py path/to/llama out/   # any LlamaForCausalLM folder
"""

import typer

from hf_ropeid.conversion_cli import convert_command

if __name__ == "__main__":
    typer.run(convert_command)
