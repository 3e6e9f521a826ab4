# The worker and generator image used by docker-compose.yml (and deploy/k8s later).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY streams ./streams
COPY agents ./agents
COPY devtools ./devtools
COPY mkpi ./mkpi
COPY schemas ./schemas
RUN pip install --no-cache-dir --no-deps .
RUN useradd --create-home mkpi && mkdir -p /var/lib/mkpi && chown mkpi /var/lib/mkpi
USER mkpi
# The state stores (mount a volume here: a restart then reads only the changelogs' tails).
ENV MKPI_DATA_DIR=/var/lib/mkpi
ENTRYPOINT ["mkpi"]
CMD ["worker"]
