"""The ``mkpi`` command: the top floor, above the runtime (``agents``) and the development
tools (``devtools``). Nothing imports this package."""
