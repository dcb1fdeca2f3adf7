"""The `seqex` console script: deploy.cli.main, with a Ctrl-C during the import of the
command's modules (a second or so on a busy host) ending as quietly as one during the verb
(status 130), not as a traceback."""
from __future__ import annotations

import sys


def main() -> int:
    try:
        from deploy.cli import main as cli_main
    except KeyboardInterrupt:
        return 130
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
