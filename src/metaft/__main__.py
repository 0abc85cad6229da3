import sys

from .cli import main

if __name__ == "__main__":  # guarded: worker processes of `metaft run` import this module
    sys.exit(main())
