"""optc's graph passes (IR -> IR). Importing this package registers every built-in pass.

Passes never import a backend. Each pass module holds a few small passes; see
``optc passes`` for the registry with parameters and one-line docs.
"""

from . import cleanup  # noqa: F401  (registers the passes)
