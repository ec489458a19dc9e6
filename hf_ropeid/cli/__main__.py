"""``python -m hf_ropeid.cli ...``: the same as the ``hf-ropeid`` console script."""

from . import main

main()
