"""``python -m runtime.controller``: run the controller."""

import sys

from runtime.controller.main import main

sys.exit(main())
