"""Domain services the views call: predictions, uploads, jobs, identity, audit, monitoring."""
