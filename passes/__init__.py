"""optc's graph passes (IR -> IR). Importing this package registers every built-in pass.

Passes never import a backend. Each pass module holds a few small passes; see
``optc passes`` for the registry with parameters and one-line docs.
"""

from . import cleanup  # noqa: F401  (registers the passes)
from . import prune  # noqa: F401  (registers prune, prune-zero, sparsify)
from . import quant  # noqa: F401  (registers quantize)
from . import binarize  # noqa: F401  (registers sign-to-threshold, binarize)
from . import control_flow  # noqa: F401  (registers unroll-loops)
