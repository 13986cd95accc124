"""`python -m sse_stream.cli`: the `sse-stream` command, as `python -m sse_stream`."""

import sys

from .main import main

sys.exit(main())
