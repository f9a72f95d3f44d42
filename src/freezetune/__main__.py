import sys

from freezetune.cli.console import main

sys.exit(main())
