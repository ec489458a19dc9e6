"""LoRA (or full) continued training of a RoPE-ID checkpoint; same options as ``hf-ropeid finetune``.

    python conversion/finetune_lora.py --model outputs/SmolLM2-135M-Instruct-rope-id \
        --data corpus/ --eval-data hamlet.txt --output-dir outputs/lora --max-steps 200

Multi-process: ``accelerate launch [--num_processes N | --config_file fsdp2.yaml] conversion/finetune_lora.py ...``
"""

import sys

from hf_ropeid.cli import main

if __name__ == "__main__":
    main(["finetune", *sys.argv[1:]])
