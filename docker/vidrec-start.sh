#!/bin/sh
# Start of the vidrec containers in docker-compose.yml (mounted at /etc/vidrec/start.sh, run with sh):
# build the sample gallery from samples/gallery/ once (three labels; kept in the vidrec-cache volume, so
# items added later through POST /gallery/items survive a restart), then run the service. Arguments go
# to `vidrec serve` (e.g. -o Global.use_gpu=True).
set -eu
config="${VIDREC_CONFIG:-/etc/vidrec/vidrec.yaml}"
index_dir="${VIDREC_SAMPLE_INDEX:-/cache/sample_index}"
if [ ! -d "$index_dir" ]; then
  vidrec gallery build --config "$config" \
    -o IndexProcess.data_file=samples/gallery/data_file.txt \
    -o IndexProcess.image_root=samples/gallery \
    -o IndexProcess.index_dir="$index_dir"
fi
exec vidrec serve --config "$config" "$@"
