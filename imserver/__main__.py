import sys

from imserver.cli import main

sys.exit(main())
