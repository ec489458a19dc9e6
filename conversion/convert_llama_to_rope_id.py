"""Convert a Llama checkpoint to RoPE-ID: the same as ``hf-ropeid convert`` (see ``--help``).

python conversion/convert_llama_to_rope_id.py                      # SmolLM2-135M-Instruct, verified
python conversion/convert_llama_to_rope_id.py path/to/llama out/   # any LlamaForCausalLM folder
"""

import sys

from hf_ropeid.cli import main

if __name__ == "__main__":
    main(["convert", *sys.argv[1:]])
