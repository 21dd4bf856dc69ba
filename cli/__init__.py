"""``vsearch``: the command line of vectorsearch (``cli.main``): ``up`` a local cluster with
CLIP on Triton, ``index`` image files, ``search`` by text or image, ``status``.

The generated gRPC stubs (package ``vectorsearch``) are inside an installed package (``setup.py``
generates them); in a checkout's editable install they are built by ``python -m vsproto.build``
after the install, so the checkout root is put on ``sys.path`` here when it holds them.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if (Path(_ROOT) / "vectorsearch").is_dir() and _ROOT not in sys.path:
    sys.path.append(_ROOT)
