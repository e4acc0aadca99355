# The clinstream services (gateway and stream workers) for Docker users; compose.yaml runs one container per role.
# The native stack (scripts/bootstrap + `clinstream stack up`) is the primary way to run clinstream locally.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLINSTREAM_SCHEMAS_DIR=/app/schemas \
    CLINSTREAM_DATA_DIR=/var/lib/clinstream

WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
COPY schemas ./schemas
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /var/lib/clinstream --shell /usr/sbin/nologin clinstream \
 && mkdir -p /var/lib/clinstream \
 && chown clinstream: /var/lib/clinstream

USER clinstream
ENTRYPOINT ["clinstream"]
CMD ["--help"]
