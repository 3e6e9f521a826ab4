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
RUN useradd --create-home mkpi
USER mkpi
ENV MKPI_DATA_DIR=/home/mkpi/.cache/mkpi/worker-data
ENTRYPOINT ["mkpi"]
CMD ["worker"]
