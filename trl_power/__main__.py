import sys

from trl_power.cli import main

sys.exit(main())
