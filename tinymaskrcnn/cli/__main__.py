"""``python -m tinymaskrcnn.cli``: the same as the ``tinymaskrcnn`` command."""
import sys

from . import main

sys.exit(main())
