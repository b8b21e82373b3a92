#!/bin/sh
# Start of the vidrec containers in docker-compose.yml (mounted at /etc/vidrec/start.sh, run with sh):
# build the sample gallery from samples/gallery/ once (three labels; kept in the vidrec-cache volume, so
# items added later through POST /gallery/items survive a restart), then run the service, in cluster
# $VIDREC_CLUSTER when it is set (`--cluster`: the nodes of one name share the cameras, docs/cluster.md).
# Arguments go to `vidrec serve` (e.g. -o Global.use_gpu=True).
set -eu
config="${VIDREC_CONFIG:-/etc/vidrec/vidrec.yaml}"
index_dir="${VIDREC_SAMPLE_INDEX:-/cache/sample_index}"
# Scaled replicas share the volume: one builds the gallery while the others wait on the lock, then find it built.
flock "$index_dir.lock" sh -c '
  [ -d "$1" ] || vidrec gallery build --config "$2" \
    -o IndexProcess.data_file=samples/gallery/data_file.txt \
    -o IndexProcess.image_root=samples/gallery \
    -o IndexProcess.index_dir="$1"' build-gallery "$index_dir" "$config"
if [ -n "${VIDREC_CLUSTER:-}" ]; then
  set -- --cluster "$VIDREC_CLUSTER" "$@"
fi
exec vidrec serve --config "$config" "$@"
