"""Code shared by the API and the runtime: settings, errors, repository, model formats."""
