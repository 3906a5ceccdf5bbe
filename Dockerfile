# The onyx-whatsapp services image (used by docker-compose.kafka.yml).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ONYX_WA_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY onyx_wa ./onyx_wa
COPY schemas ./schemas
COPY store ./store
COPY migrations ./migrations
COPY ingress ./ingress
COPY streams ./streams
COPY answers ./answers
COPY egress ./egress
COPY sim ./sim
COPY ops ./ops
COPY admin ./admin
COPY bench ./bench
COPY analytics ./analytics
RUN pip install --no-cache-dir '.[rocksdb,parquet]' && useradd --create-home app \
    && mkdir -p /data && chown app /data
USER app
EXPOSE 8080 8081 8090
CMD ["onyx-wa", "--help"]
