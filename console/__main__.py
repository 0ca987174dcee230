"""``python -m console``: serve the console with Streamlit (what `modeldeck up` and compose run)."""

from __future__ import annotations

import sys
from pathlib import Path

from streamlit.web import cli

from console.settings import ConsoleSettings


def main() -> None:
    """Run `streamlit run console/app.py` on MODELDECK_CONSOLE_HOST:MODELDECK_CONSOLE_PORT."""
    settings = ConsoleSettings()
    app = Path(__file__).with_name("app.py")
    sys.argv = ["streamlit", "run", str(app), "--server.headless=true", "--browser.gatherUsageStats=false",
                f"--server.address={settings.host}", f"--server.port={settings.port}",
                "--server.fileWatcherType=none", "--client.toolbarMode=minimal"]
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
