"""ModelDeck runtime: Celery workers that load models and run predictions and jobs."""
