import sys

from attn_probe.cli import main

sys.exit(main())
