"""Push a converted folder to the Hugging Face Hub: the same as ``hf-ropeid push`` (see ``--help``).

    python conversion/push_to_hub.py outputs/SmolLM2-135M-Instruct-rope-id your-name/SmolLM2-135M-Instruct-rope-id
"""

import typer

from hf_ropeid.conversion_cli import push_command

if __name__ == "__main__":
    typer.run(push_command)
