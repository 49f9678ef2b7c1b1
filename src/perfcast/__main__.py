"""``python -m perfcast``: the same as the ``perfcast`` console script."""

from perfcast._entry import main

main()
