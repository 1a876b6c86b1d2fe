"""``python -m visroute.cli``: the same as the ``visroute`` console script."""

from visroute.cli import main

main()
