import sys

from sbtui.cli import main

sys.exit(main())
