# `modeldeck compose smoke` only: stands in for python:3.11-slim-bookworm where no registry is reachable.
# Built on a Debian bookworm root file system imported from debootstrap (installer/smoke/images.py).
ARG DEBIAN_IMAGE=modeldeck-smoke/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
# python-is-python3: the Dockerfile and health checks call `python`, as in the official image.
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The CA certificates the host's pip trusts (a TLS-inspecting proxy may sit between this machine and PyPI).
COPY host-ca.pem /usr/local/share/modeldeck-smoke/host-ca.pem
ENV PIP_CERT=/usr/local/share/modeldeck-smoke/host-ca.pem
