import sys

from freezetune.console import main

sys.exit(main())
