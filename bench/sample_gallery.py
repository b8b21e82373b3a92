"""The bundled sample gallery (samples/gallery), built once for the benchmarks that run `vidrec serve`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def ensure_gallery(index_dir: Path) -> None:
    if (index_dir / "meta.json").is_file():
        return
    print(f"building the sample gallery into {index_dir}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "workers.cli", "gallery", "build",
                    "-o", "IndexProcess.data_file=samples/gallery/data_file.txt",
                    "-o", "IndexProcess.image_root=samples/gallery", "-o", f"IndexProcess.index_dir={index_dir}"],
                   cwd=REPO, check=True)
