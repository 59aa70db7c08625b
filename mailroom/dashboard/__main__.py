"""`python -m mailroom.dashboard`: the dashboard page alone, as the stack's dashboard service runs it. The same as
`mailroom dashboard`, without the imports of every other subcommand (the service holds only its own modules)."""

import argparse
import sys

from config.settings import Settings
from mailroom.dashboard.app import cmd_dashboard

if __name__ == "__main__":
    sys.exit(cmd_dashboard(argparse.Namespace(background=False), Settings.from_env()))
