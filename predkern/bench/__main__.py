import sys

from predkern.cli import main

raise SystemExit(main(["bench", *sys.argv[1:]]))
