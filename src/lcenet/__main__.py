"""``python -m lcenet``: the CLI, also what ``torchrun ... -m lcenet train ...`` starts in every process."""

from lcenet.cli import main

main()
