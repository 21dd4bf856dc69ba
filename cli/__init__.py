"""``vsearch``: the command line of vectorsearch (``cli.main``): ``up`` a local cluster with
CLIP on Triton, ``index`` image files, ``search`` by text or image, ``status``.

The generated gRPC stubs (package ``vectorsearch``, built by ``python -m vsproto.build`` into the
checkout and never installed) are found through the checkout root, which is put on ``sys.path``
here, so the ``vsearch`` console script of the editable install works from any directory.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if (Path(_ROOT) / "vectorsearch").is_dir() and _ROOT not in sys.path:
    sys.path.append(_ROOT)
