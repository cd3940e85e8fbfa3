# The poller (python -m chalicelib.poller.main) as a container: ECS, Kubernetes, or any host
# with Docker. Build and run: docs/deployment.md, "4. Poller".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Dependencies first: this layer is rebuilt only when a pin changes.
COPY requirements.txt requirements-poller.txt ./
RUN pip install -r requirements-poller.txt

# Only the package the poller runs (tests/integration/test_dockerfile.py imports the poller
# with nothing else on the path).
COPY chalicelib/ chalicelib/

# A home of its own: the Globus Compute SDK keeps its state under ~/.globus_compute.
RUN useradd --system --uid 10001 --create-home --home-dir /home/first --shell /usr/sbin/nologin first
USER 10001

# No HEALTHCHECK: the poller serves no port, and a poller that stops working exits (its
# orchestrator restarts it); SIGTERM lets in-flight requests finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "chalicelib.poller.main"]
