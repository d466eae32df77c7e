import sys

from textstream.cli import main

sys.exit(main())
