# `modeldeck compose smoke` only: MongoDB and Keycloak cannot be pulled here, so this image runs the embedded
# repository server (nx-27017) as `mongodb` and the tests' Keycloak-compatible OIDC server as `keycloak`.
# Build from the repository root (it copies tests/oidc_server.py).
ARG PYTHON_IMAGE=modeldeck-smoke/python:3.11
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -q "nx-27017==0.8.1" "pymongo>=4.10" "fastapi>=0.110" "uvicorn>=0.29" "pyjwt>=2.8" \
      "python-multipart>=0.0.9" "pyyaml>=6.0" "jinja2>=3.1" "cryptography>=42" \
 && /opt/venv/bin/pip install -q --pre --no-deps --ignore-requires-python "keycloak-mockup==0.1.0.post1.dev0" \
 && groupadd --system --gid 10001 standin && useradd --system --uid 10001 --gid standin standin \
 && mkdir -p /data/db && chown 10001:10001 /data/db
COPY tests/oidc_server.py /opt/oidc/oidc_server.py
USER 10001:10001
