"""ModelDeck Service API and the core (settings, repository, formats) shared with the runtime.

Importing this package is cheap: Flask is only imported by ``server.http.app``.
"""
