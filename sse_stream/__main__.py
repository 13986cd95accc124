"""`python -m sse_stream`: the `sse-stream` command."""

import sys

from .cli.main import main

sys.exit(main())
