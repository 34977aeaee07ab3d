import sys

from optc.cli import main

sys.exit(main())
