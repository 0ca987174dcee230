"""The ``modeldeck`` command: bring the local stack up and down, show status and logs."""
