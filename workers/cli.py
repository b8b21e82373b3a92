"""The `vidrec` command line.

Every user error (config, model, gallery, input, sink) ends as one line on stderr and exit code 1;
command-line misuse exits 2 (argparse). Tracebacks are for bugs only (or with VIDREC_DEBUG=1).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from config import ConfigError, load_config
from models.errors import GalleryError, ModelError
from stream.errors import SinkError, SourceError

USER_ERRORS = (ConfigError, ModelError, GalleryError, SourceError, SinkError)
log = logging.getLogger("vidrec")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="YAML config (PP-ShiTu inference_general.yaml keys accepted)")
    parser.add_argument(
        "-o", "--override", dest="overrides", action="append", default=[], metavar="Section.key=value",
        help="override one config key, e.g. -o Global.threshold=0.4 (repeatable)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _size_wh(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 640x480, got {text!r}")
    return int(width), int(height)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidrec", description="Video recognition in the manner of PP-ShiTu.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    video = commands.add_parser("video", help="recognise objects in a video file, an image or a folder of images")
    video.add_argument("input", nargs="?", help="video file, image, or folder of images (default: Global.infer_imgs)")
    _add_config_args(video)
    video.add_argument("--json", type=Path, help="write one JSON result per frame to this JSONL file")
    video.add_argument("--out", type=Path, help="write an annotated mp4 here")
    video.add_argument("--tracks-out", type=Path, metavar="FILE.jsonl", help="write the run's track events (JSONL) here")
    video.add_argument("--kafka", metavar="HOST:PORT", help="publish results to this Kafka bootstrap server")
    video.add_argument("--topic", help="Kafka topic (default: Kafka.topic)")
    video.add_argument("--redis", metavar="URL", help="cache results in Redis, e.g. redis://127.0.0.1:6379/0")
    video.add_argument("--every-nth", type=int, metavar="N", help="process every Nth frame (Video.every_nth)")
    video.add_argument("--stream-id", help="stream id in results (default: input file name)")
    video.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)")

    serve = commands.add_parser("serve", help="the live service: many cameras and files at once, results to Kafka/Redis")
    _add_config_args(serve)
    from workers.serve_cmd import add_serve_arguments

    add_serve_arguments(serve)

    gallery = commands.add_parser("gallery", help="manage the gallery index")
    gallery_cmds = gallery.add_subparsers(dest="gallery_command", required=True)
    gallery_help = {
        "build": "build IndexProcess.index_dir from IndexProcess.data_file (honours IndexProcess.index_operation)",
        "append": "embed only the data_file's new lines and add them to the index",
        "remove": "remove the index entries whose lines are in the data_file (no images needed)",
        "list": "print id, label and image of every entry",
        "eval": "recall@1/5, mAP and a suggested score_thres for a query data_file",
    }
    for name, text in gallery_help.items():
        sub = gallery_cmds.add_parser(name, help=text)
        _add_config_args(sub)
        if name == "eval":
            sub.add_argument("--query", type=Path, required=True, help="data_file of query images (path TAB label)")
            sub.add_argument("--query-root", type=Path, help="folder the query paths are relative to (default: IndexProcess.image_root)")
            sub.add_argument("--unknown", type=Path, help="data_file of images of objects the gallery does not hold: "
                             "scored for the acceptance rule (score_thres, margin_thres)")

    models = commands.add_parser("models", help="model files")
    model_cmds = models.add_subparsers(dest="models_command", required=True)
    model_cmds.add_parser("list", help="list known models and where each resolves")
    fetch = model_cmds.add_parser("fetch", help="fetch or build a known model into the cache")
    fetch.add_argument("names", nargs="+")
    convert = model_cmds.add_parser("convert", help="convert a Paddle inference model folder to ONNX (paddle2onnx)")
    convert.add_argument("model_dir", type=Path, help="folder with inference.json/.pdmodel (or model.*) and .pdiparams")
    convert.add_argument("out", type=Path, help="the .onnx file to write")
    convert.add_argument("--opset", type=int, default=13)
    quantize = model_cmds.add_parser(
        "quantize", help="int8 copies of the configured detector and recognizer, with a guard report (docs/int8.md)"
    )
    _add_config_args(quantize)
    quantize.add_argument("--only", choices=("detector", "recognizer"), help="quantize one model (default: both)")
    quantize.add_argument("--footage", type=Path, action="append", metavar="VIDEO",
                          help="calibrate on this video (repeatable; default: samples/bikes.mp4 and .cache/media/vtest.avi)")
    quantize.add_argument("--if-needed", action="store_true", help="skip a model whose int8 copy and report are current")

    track = commands.add_parser(
        "track",
        help="run vidrec's tracker over MOTChallenge detections and write MOTChallenge results (to score it)",
        description="Run the tracker `vidrec video` and `vidrec serve` use (Tracker.* settings honoured) over "
        "MOTChallenge detections (frame,-1,x,y,w,h,score,... with 1-based frames, top-left x/y, scores 0..1) and "
        "write MOTChallenge results (frame,id,x,y,w,h,score,-1,-1,-1), one line per tracked box, for scorers such "
        "as motmetrics or TrackEval. Frame n is at (n-1)/FPS seconds; frames without detections still pass time. "
        "A track is named from its second detection on, so its first has no results line.",
    )
    track.add_argument("detections", type=Path, metavar="DETECTIONS.txt", help="MOTChallenge detections file")
    track.add_argument("--out", type=Path, required=True, metavar="RESULTS.txt", help="MOTChallenge results file to write")
    _add_config_args(track)
    track.add_argument("--frame-rate", type=_positive_float, default=25.0, metavar="FPS", help="frames per second (default: 25)")
    track.add_argument(
        "--size", type=_size_wh, metavar="WxH",
        help="image size: boxes are clipped to it as in `vidrec video` (default: no clipping, any box is kept whole)",
    )

    consume = commands.add_parser(
        "consume", help="read results (and track events) from Kafka: repeats dropped, gaps reported",
        description="The reference consumer of vidrec's topics (workers/consume_job.py: the one to copy). Prints one "
        "line per result or track event, a line for each gap in a stream's seq, or with --summary one line per "
        "stream at the end. Copies started with the same --group share the partitions.",
    )
    _add_config_args(consume)
    consume.add_argument("--kafka", metavar="HOST:PORT", help="Kafka bootstrap server (default: Kafka.bootstrap)")
    consume.add_argument("--topic", action="append", metavar="T",
                         help="topic to read, repeatable: the results' or the track events' (default: Kafka.topic)")
    consume.add_argument("--group", metavar="G", help="consumer group: copies with one group share the partitions "
                         "and resume from its committed offsets (default: no group, every partition from the start)")
    consume.add_argument("--stream", metavar="ID", help="only this stream's messages")
    consume.add_argument("--summary", action="store_true", help="no line per message: one line per stream at the end")
    consume.add_argument("--idle-exit", type=_positive_float, metavar="S",
                         help="stop after S seconds without a message (default: run until Ctrl-C or SIGTERM)")

    config = commands.add_parser("config", help="show the effective configuration")
    _add_config_args(config)
    return parser


def _cmd_video(args: argparse.Namespace) -> int:
    from workers.system import build_system
    from workers.video_job import VideoOutputs, run_video_job

    overrides = list(args.overrides)
    if args.every_nth is not None:
        overrides.append(f"Video.every_nth={args.every_nth}")
    if args.stream_id is not None:
        overrides.append(f"Video.stream_id={args.stream_id}")
    cfg = load_config(args.config, overrides)
    input_path = args.input or cfg.Global.infer_imgs
    if not input_path:
        raise ConfigError("no input: give INPUT or set Global.infer_imgs")
    if args.topic and not (args.kafka or cfg.Kafka.bootstrap):
        raise ConfigError("--topic given without --kafka (or Kafka.bootstrap)")
    system = build_system(cfg)
    outputs = VideoOutputs(
        json_path=args.json, video_path=args.out, kafka_bootstrap=args.kafka, kafka_topic=args.topic, redis_url=args.redis,
        tracks_path=args.tracks_out,
    )
    summary = run_video_job(
        cfg, system, input_path, outputs, class_names=system.detector.class_names, progress=args.progress
    )
    log.info(
        "%d frames in %.1f s (%.1f fps), %d objects, %d named%s",
        summary.frames, summary.seconds, summary.fps, summary.objects, summary.recognised,
        "; wrote " + ", ".join(summary.outputs) if summary.outputs else "",
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from workers.serve_cmd import run_serve
    from workers.service_errors import ServiceError

    try:
        return run_serve(args, log_level=logging.DEBUG if args.verbose else logging.INFO)
    except ServiceError as exc:
        if os.environ.get("VIDREC_DEBUG"):
            raise
        print(f"vidrec: error: {exc}", file=sys.stderr)
        return 1


def _cmd_gallery(args: argparse.Namespace) -> int:
    from workers.gallery_job import run_gallery_command

    cfg = load_config(args.config, args.overrides)
    return run_gallery_command(
        cfg, args.gallery_command, query=getattr(args, "query", None), query_root=getattr(args, "query_root", None),
        unknown=getattr(args, "unknown", None),
    )


def _cmd_models(args: argparse.Namespace) -> int:
    from models.resolve import REGISTRY, find_model_dir, resolve_model_dir

    if args.models_command == "convert":
        from workers.models_convert import convert_paddle_to_onnx

        out = convert_paddle_to_onnx(args.model_dir, args.out, opset=args.opset)
        log.info("wrote %s", out)
        return 0
    if args.models_command == "quantize":
        from workers.models_quantize import ROLES, run_quantize, summary_lines

        cfg = load_config(args.config, args.overrides)
        roles = (args.only,) if args.only else ROLES
        for report in run_quantize(cfg, roles=roles, footage=args.footage, if_needed=args.if_needed):
            print("\n".join(summary_lines(report)))
        return 0
    if args.models_command == "list":
        for spec in REGISTRY.values():
            where = find_model_dir(spec.name)
            print(f"{spec.name}\t{where or 'not fetched'}\t{spec.description}")
        return 0
    for name in args.names:
        if name not in REGISTRY:
            raise ModelError(f"unknown model '{name}'; known: {', '.join(sorted(REGISTRY))}")
        spec = REGISTRY[name]
        needed = tuple(f.name for f in spec.files if f.url is not None or f.packaged is not None)
        print(f"{name}\t{resolve_model_dir(name, needed=needed)}")
    return 0


def _cmd_track(args: argparse.Namespace) -> int:
    from workers.track_job import run_track_job

    cfg = load_config(args.config, args.overrides)
    summary = run_track_job(cfg, args.detections, args.out, frame_rate=args.frame_rate, size=args.size)
    log.info(
        "%d frames, %d detections, %d tracked in %d tracks (tracker: %.0f frames/s); wrote %s",
        summary.frames, summary.detections, summary.tracked_boxes, summary.tracks, summary.tracker_fps, args.out,
    )
    return 0


def _cmd_consume(args: argparse.Namespace) -> int:
    from stream.sinks.kafka import kafka_security_kwargs
    from workers.consume_job import run_consume

    cfg = load_config(args.config, args.overrides)
    bootstrap = args.kafka or cfg.Kafka.bootstrap
    if not bootstrap:
        raise ConfigError("no Kafka to read: give --kafka HOST:PORT or set Kafka.bootstrap")
    return run_consume(bootstrap, args.topic or [cfg.Kafka.topic], group=args.group, stream=args.stream,
                       summary=args.summary, idle_exit_s=args.idle_exit, security=kafka_security_kwargs(cfg.Kafka),
                       connect_timeout_s=cfg.Kafka.connect_timeout_s)


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    cfg = load_config(args.config, args.overrides)
    sys.stdout.write(yaml.safe_dump(cfg.model_dump(), sort_keys=False, allow_unicode=True))
    return 0


COMMANDS = {"video": _cmd_video, "serve": _cmd_serve, "gallery": _cmd_gallery, "models": _cmd_models, "track": _cmd_track,
            "consume": _cmd_consume, "config": _cmd_config}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="vidrec: %(message)s", stream=sys.stderr
    )
    # faiss logs at INFO which CPU kernels it could load; that is noise to a user.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as exc:
        if os.environ.get("VIDREC_DEBUG"):
            raise
        print(f"vidrec: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vidrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
