"""Push a converted folder to the Hugging Face Hub: the same as ``hf-ropeid push`` (see ``--help``).

python conversion/push_to_hub.py outputs/SmolLM2-135M-Instruct-rope-id your-name/SmolLM2-135M-Instruct-rope-id
"""

import sys

from hf_ropeid.cli import main

if __name__ == "__main__":
    main(["push", *sys.argv[1:]])
