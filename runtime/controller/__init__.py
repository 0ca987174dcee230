"""The controller: applies each pool's replica count or autoscale policy through a scaler backend."""
