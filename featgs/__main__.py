import sys

from featgs.cli import main

sys.exit(main())
