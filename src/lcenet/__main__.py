"""``python -m lcenet``: the same command line as the ``lcenet`` script."""

from lcenet.cli import main

main()
