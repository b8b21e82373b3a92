# vidrec service image (CPU). Model weights are not baked in: mount a folder holding picodet_s_coco/
# at /models, or let vidrec fetch PicoDet from its official URL on first use (cached in /cache).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY config ./config
COPY stream ./stream
COPY models ./models
COPY workers ./workers
COPY samples ./samples
RUN pip install --no-cache-dir -c requirements.lock . \
 && useradd --create-home vidrec && mkdir -p /cache /out && chown vidrec /cache /out
USER vidrec
ENV VIDREC_MODEL_DIR=/models VIDREC_CACHE_DIR=/cache
ENTRYPOINT ["vidrec"]
