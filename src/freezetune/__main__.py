import sys

from freezetune.cli import main

sys.exit(main())
