import sys

from gradpack.cli import main

sys.exit(main())
