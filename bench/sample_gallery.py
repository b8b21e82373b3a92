"""The bundled sample gallery (samples/gallery), built once for the benchmarks that run `vidrec serve`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def ensure_gallery(index_dir: Path) -> None:
    """Build it unless index_dir already holds it, made by the default recognizer (a gallery of an earlier
    recognizer would be refused by the service: it is rebuilt)."""
    meta = index_dir / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("recognizer") == _default_recognizer():
        return
    print(f"building the sample gallery into {index_dir}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "workers.cli", "gallery", "build",
                    "-o", "IndexProcess.data_file=samples/gallery/data_file.txt",
                    "-o", "IndexProcess.image_root=samples/gallery", "-o", f"IndexProcess.index_dir={index_dir}"],
                   cwd=REPO, check=True)


def _default_recognizer() -> str:
    sys.path.insert(0, str(REPO))
    from config import load_config
    from models.recognizer import recognizer_identity
    from workers.system import _REC_FILES, locate, model_ref

    cfg = load_config(None, [])
    ref = model_ref(cfg.Global.rec_inference_model_dir, cfg.Global.backend)
    folder, _ = locate(ref, cfg.Recognizer.model_file, _REC_FILES[cfg.Global.backend])
    return recognizer_identity(folder)
