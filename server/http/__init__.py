"""HTTP plumbing: the Flask app, endpoint declarations, views, the gunicorn worker class."""
