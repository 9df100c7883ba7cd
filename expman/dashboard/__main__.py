"""``python -m expman.dashboard [BASE_DIR] [--host H] [--port P] [--no-browser]``."""

import argparse
import sys

from expman.cli.serve import add_parser

parser = argparse.ArgumentParser(prog="python -m expman.dashboard")
add_parser(parser.add_subparsers())
args = parser.parse_args(["serve", *sys.argv[1:]])
sys.exit(args.func(args))
