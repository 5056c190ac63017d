import sys

from ssnf.cli import main

sys.exit(main())
