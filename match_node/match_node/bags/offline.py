"""Bag in, bag out: match every frame of a recorded image topic, without ROS or DDS.

    python -m match_node.bags.offline IN_BAG OUT_BAG --topic /camera/image_raw
        [--config FILE.yaml] [--set name=value ...] [--output-topic TOPIC]
        [--storage sqlite3|mcap] [--copy TOPIC ...] [--summary FILE.json] [--quiet]

Runs the node's frame loop (engine/runner.py's FrameRunner: extract each frame once, match it
to the previous one, track ids) on every image of the topic in the bag's order, and writes one
match_node_msgs/Correspondences message per matched frame to OUT_BAG, on `--output-topic`
(default `<camera namespace>/correspondences`, e.g. /camera/correspondences for
/camera/image_raw) at the log (receive) time of its image, with the message's full
definition. The input's CameraInfo topics (and any `--copy` topic) are copied unchanged.

Unlike the node, nothing is dropped for being late: every frame is processed, so with the
latency budget off (`latency_budget_ms: 0`, the default) the same input and parameters give
the same messages (all but the timing fields), run after run. Unusable images are dropped and
counted exactly as the node does (`dropped_frames` of the next message).

Prints a line per frame and a JSON summary (frames, messages, matches per frame, exit layers,
timings and, when the input has /ground_truth/homography from make_bag, precision@3px
against it), also written to `--summary` (default OUT_BAG.summary.json).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from . import msgtypes, rosbag as bags
from .. import params as P
from ..engine.framelog import DROPPED, FIRST, RESTARTED, FrameLog
from ..messages import EXIT_NAMES, correspondence_fields

GROUND_TRUTH_HOMOGRAPHY = "/ground_truth/homography"
TIMINGS = ("preprocess_ms", "extract_ms", "match_ms", "total_ms")


@dataclass
class Output:
    """A message the runner produced, with what the summary needs to evaluate it."""
    topic: str
    log_time_ns: int
    fields: dict[str, Any]
    reference_log_time_ns: int


class MonoRunner:
    """The bag side of the frame loop for one camera: BagImages in, messages to write out.

    `input_topics` are read from the bag (in log-time order) and handed to `process`, which
    returns the messages to write; `log` holds one FrameLog per input frame. A stereo runner
    keeps the same interface (e.g. buffering the left image of a stamp until its right image
    arrives).
    """

    def __init__(self, pipeline, image_topic: str, output_topic: str,
                 on_stamp_backwards: str = "reset", max_input_pixels: int = 1 << 24) -> None:
        from ..engine.runner import FrameRunner

        self.pipeline = pipeline
        self.image_topic = image_topic
        self.output_topic = output_topic
        self.runner = FrameRunner(pipeline, on_stamp_backwards, max_input_pixels)
        self.input_topics = [image_topic]
        self.output_topics = {output_topic: msgtypes.CORRESPONDENCES}
        self.log: list[FrameLog] = []

    def process(self, frame: bags.BagImage) -> list[Output]:
        from ..engine.runner import FrameInput

        # Compressed images are checked against max_input_pixels before decoding (decode);
        # the log time is what the bag writer needs of a frame: the outputs carry it back.
        step = self.runner.take(FrameInput(frame.stamp_ns, frame.frame_id, frame.decode,
                                           frame.log_time_ns))
        self.log.append(step.record)
        frame.image = None  # the stream keeps what it needs
        outputs = []
        for out in step.outputs:
            fields = correspondence_fields(
                out.result, out.current.stamp_ns, out.current.frame_id, out.reference.stamp_ns,
                out.reference.frame_id, pairing=out.pairing, frame_index=out.frame_index,
                dropped_frames=out.dropped_frames, tracks_reset=out.tracks_reset)
            fields["total_ms"] = self.runner.elapsed_ms(step)
            self.runner.published(step, out, fields["total_ms"])
            outputs.append(Output(self.output_topic, out.current.source, fields,
                                  out.reference.source))
        self.runner.finish(step)
        return outputs


def evaluate(fields: dict[str, Any], H: np.ndarray) -> tuple[np.ndarray, int]:
    """Reprojection errors of a message's matches under the true homography H (ref -> cur)."""
    from ..groundtruth.planar import reprojection_errors

    ref = np.stack([fields["reference_x"], fields["reference_y"]], 1).astype(np.float64)
    cur = np.stack([fields["current_x"], fields["current_y"]], 1).astype(np.float64)
    return reprojection_errors(H, ref, cur), len(ref)


def _stats(values: Iterable[float]) -> dict[str, float]:
    v = np.asarray(list(values), np.float64)
    if v.size == 0:
        return {}
    return {"mean": round(float(v.mean()), 3), "p50": round(float(np.percentile(v, 50)), 3),
            "p95": round(float(np.percentile(v, 95)), 3), "max": round(float(v.max()), 3)}


def summarise(log: list[FrameLog], messages: int, errors: list[np.ndarray],
              extra: dict[str, Any]) -> dict[str, Any]:
    matched = [r for r in log if r.matches is not None]
    exit_layers: dict[str, int] = {}
    exit_reasons: dict[str, int] = {}
    for r in matched:
        exit_layers[str(r.exit_layer)] = exit_layers.get(str(r.exit_layer), 0) + 1
        name = EXIT_NAMES.get(r.exit_reason, str(r.exit_reason))
        exit_reasons[name] = exit_reasons.get(name, 0) + 1
    summary: dict[str, Any] = {
        **extra,
        "frames": len(log),
        "messages": messages,
        "dropped": sum(r.status == DROPPED for r in log),
        "restarts": sum(r.status in (FIRST, RESTARTED) for r in log),
        "matches_per_frame": [r.matches for r in matched],
        "matches": {"total": int(sum(r.matches for r in matched)),
                    **_stats(r.matches for r in matched)},
        "exit_layers": dict(sorted(exit_layers.items(), key=lambda kv: int(kv[0]))),
        "exit_reasons": exit_reasons,
        "timings_ms": {name: _stats(r.timings[name] for r in matched) for name in TIMINGS},
        "precision_at_3px": None,
        "precision_per_frame": None,
        "median_error_px": None,
    }
    if errors:
        pooled = np.concatenate(errors) if errors else np.zeros(0)
        summary["precision_at_3px"] = (round(float((pooled < 3).mean()), 4)
                                       if pooled.size else None)
        summary["precision_per_frame"] = [r.precision for r in matched]
        summary["median_error_px"] = round(float(np.median(pooled)), 3) if pooled.size else None
    return summary


@dataclass
class Setup:
    """What a run over one bag needs, checked before anything is written (see `prepare`)."""
    in_bag: str | Path
    topic: str
    values: dict[str, Any]
    pipeline: Any
    runner: MonoRunner
    output_topic: str
    copy_topics: list[str]
    ground_truth: str
    truth: dict[int, np.ndarray]
    storage: str


def copy_topics_of(in_bag: str | Path, in_topics: dict[str, bags.TopicSummary],
                   input_topics: list[str], copy_topics: Iterable[str] | None) -> list[str]:
    """The topics copied unchanged: `copy_topics`, by default the input's CameraInfo topics."""
    if copy_topics is None:
        copy_topics = [t for t, s in in_topics.items() if s.msgtype == bags.CAMERA_INFO]
    copy_topics = [t for t in copy_topics if t not in input_topics]
    missing = [t for t in copy_topics if t not in in_topics]
    if missing:
        raise bags.BagError(f"{in_bag}: no topic(s) {', '.join(missing)} to copy")
    return copy_topics


def prepare(in_bag: str | Path, topic: str, params: dict[str, Any] | None = None, *,
            output_topic: str | None = None, storage: str | None = None,
            copy_topics: Iterable[str] | None = None,
            ground_truth: str = GROUND_TRUTH_HOMOGRAPHY, pipeline=None) -> Setup:
    """Check the bag and the parameters, build the pipeline (unless given) and the runner."""
    values = P.validate(params or {})
    in_topics = bags.topics(in_bag)
    if topic not in in_topics or in_topics[topic].msgtype not in bags.IMAGE_TYPES:
        images = [t for t, s in in_topics.items() if s.msgtype in bags.IMAGE_TYPES]
        raise bags.BagError(f"{in_bag}: no image topic {topic}; image topics: "
                            f"{', '.join(sorted(images)) or 'none'}")
    if pipeline is None:
        from ..engine.pipeline import Pipeline
        pipeline = Pipeline({k: v for k, v in values.items() if P.SPECS[k].scope == "pipeline"})
    output_topic = output_topic or bags.correspondences_topic_for(topic)
    runner = MonoRunner(pipeline, topic, output_topic, values["on_stamp_backwards"],
                        values["max_input_pixels"])
    copy_topics = copy_topics_of(in_bag, in_topics, runner.input_topics, copy_topics)
    truth = bags.read_homographies(in_bag, ground_truth) if ground_truth in in_topics else {}
    storage = storage or bags.storage_of(in_bag)
    return Setup(in_bag, topic, values, pipeline, runner, output_topic, copy_topics,
                 ground_truth, truth, storage)


def score(out: Output, truth: dict[int, np.ndarray], record: FrameLog,
          errors: list[np.ndarray]) -> None:
    """Evaluate a message against the ground truth, when both of its images have one."""
    if out.log_time_ns in truth and out.reference_log_time_ns in truth:
        H = truth[out.log_time_ns] @ np.linalg.inv(truth[out.reference_log_time_ns])
        e, n = evaluate(out.fields, H)
        errors.append(e)
        if n:
            record.precision = round(float((e < 3).mean()), 4)
            record.median_error_px = round(float(np.median(e)), 3)


def copy_message(writer: bags.BagWriter, connections: dict[str, Any],
                 message: bags.BagMessage) -> None:
    """Write a copied message, its topic added first with its own definition and QoS."""
    if message.topic not in connections:
        c = message.connection
        qos = c.ext.offered_qos_profiles[0] if getattr(c.ext, "offered_qos_profiles", None) \
            else "reliable"
        connections[message.topic] = writer.add_topic(
            message.topic, message.msgtype, qos,
            msgdef=c.msgdef.data or None, rihs01=c.digest or None)
    writer.write_raw(message.topic, message.log_time_ns, message.data)


def summary_extra(setup: Setup, out_bag: str | Path) -> dict[str, Any]:
    """The summary's description of the run (what summarise puts first)."""
    pipeline, p = setup.pipeline, setup.pipeline.params
    return {
        "input": str(setup.in_bag), "output": str(out_bag), "storage": setup.storage,
        "topic": setup.topic, "output_topic": setup.output_topic,
        "copied_topics": sorted(setup.copy_topics),
        "ground_truth": setup.ground_truth if setup.truth else None,
        "device": str(pipeline.device), "extractor": pipeline.extractor_name,
        "matcher": pipeline.matcher_name, "max_keypoints": p["max_keypoints"],
        "deterministic": p["latency_budget_ms"] == 0,
    }


def run_offline(in_bag: str | Path, out_bag: str | Path, topic: str,
                params: dict[str, Any] | None = None, *, output_topic: str | None = None,
                storage: str | None = None, copy_topics: Iterable[str] | None = None,
                ground_truth: str = GROUND_TRUTH_HOMOGRAPHY, pipeline=None,
                progress: Callable[[FrameLog], None] | None = None) -> dict[str, Any]:
    """Run the matcher over `topic` of `in_bag`, write `out_bag`, return the summary.

    `params` are node parameters (validated with the shared table; pipeline ones build the
    Pipeline unless `pipeline` is given; on_stamp_backwards and max_input_pixels apply too).
    `copy_topics` defaults to the input's CameraInfo topics.
    """
    started = time.perf_counter()
    setup = prepare(in_bag, topic, params, output_topic=output_topic, storage=storage,
                    copy_topics=copy_topics, ground_truth=ground_truth, pipeline=pipeline)
    runner = setup.runner
    errors: list[np.ndarray] = []
    count = 0
    with bags.BagWriter(out_bag, storage=setup.storage) as writer:
        for name, msgtype in runner.output_topics.items():
            writer.add_topic(name, msgtype)
        connections: dict[str, Any] = {}
        for message in bags.messages(in_bag, runner.input_topics + setup.copy_topics):
            if message.topic in runner.input_topics:
                for out in runner.process(bags.image_from_message(message, decode=False)):
                    writer.write_fields(out.topic, out.log_time_ns, out.fields)
                    count += 1
                    score(out, setup.truth, runner.log[-1], errors)
                if progress:
                    progress(runner.log[-1])
                continue
            copy_message(writer, connections, message)

    summary = summarise(runner.log, count, errors, summary_extra(setup, out_bag))
    summary["wall_s"] = round(time.perf_counter() - started, 3)
    return summary


def _print_frame(record: FrameLog) -> None:
    if record.matches is None:
        print(f"{record.frame_index:5d} {record.status:>8s}  {record.note}", flush=True)
        return
    precision = f"{record.precision:8.3f}" if record.precision is not None else "       -"
    print(f"{record.frame_index:5d} {record.matches:8d} {record.keypoints:5d} {precision} "
          f"{record.exit_layer:3d}/{EXIT_NAMES.get(record.exit_reason, '?'):<12s} "
          f"{record.timings['extract_ms']:7.0f} {record.timings['match_ms']:7.0f} "
          f"{record.timings['total_ms']:7.0f}", flush=True)


def add_run_arguments(parser: argparse.ArgumentParser, storage_default: str) -> None:
    """The options every bag runner takes: topics, parameters, output storage."""
    parser.add_argument("--topic", required=True, help="image topic (Image or CompressedImage)")
    parser.add_argument("--output-topic", help="default: <camera namespace>/correspondences")
    parser.add_argument("--config", help="parameter YAML (the node's config format)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one parameter; repeatable")
    parser.add_argument("--storage", choices=bags.STORAGES, help=f"default: {storage_default}")


def parameters_from(args: argparse.Namespace) -> dict[str, Any]:
    """--config and --set, validated (and whether extractor and matcher fit); raises
    ParameterError or OSError."""
    from ..engine import families
    values = P.load_yaml(args.config) if args.config else {}
    values.update(P.parse_assignments(args.set))
    families.validate(values)
    return values


def write_summary(path: str | Path, summary: dict[str, Any]) -> Path:
    """Write the JSON summary to `path` and print it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m match_node.bags.offline", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Parameters (--set): " + ", ".join(s.name for s in P.PARAMETERS))
    parser.add_argument("in_bag", help="input bag (directory, or a .db3/.mcap file)")
    parser.add_argument("out_bag", help="output bag directory to create (must not exist)")
    add_run_arguments(parser, "the input's")
    parser.add_argument("--copy", action="append", metavar="TOPIC",
                        help="topic to copy unchanged (repeatable; default: CameraInfo topics)")
    parser.add_argument("--ground-truth", default=GROUND_TRUTH_HOMOGRAPHY,
                        help="Float64MultiArray homography topic to evaluate against")
    parser.add_argument("--summary", help="JSON summary file (default: OUT_BAG.summary.json)")
    parser.add_argument("--quiet", action="store_true", help="no per-frame lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        values = parameters_from(args)
    except (P.ParameterError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if Path(args.out_bag).exists():
        print(f"error: {args.out_bag} exists already", file=sys.stderr)
        return 2
    from ..engine.weights import WeightsError

    copy = None
    if args.copy:
        in_topics = bags.topics(args.in_bag)
        copy = sorted({t for t, s in in_topics.items() if s.msgtype == bags.CAMERA_INFO}
                      | set(args.copy))
    if not args.quiet:
        print("frame  matches  kpts prec@3px exit              extract   match   total")
    try:
        summary = run_offline(args.in_bag, args.out_bag, args.topic, values,
                              output_topic=args.output_topic, storage=args.storage,
                              copy_topics=copy, ground_truth=args.ground_truth,
                              progress=None if args.quiet else _print_frame)
    except (bags.BagError, P.ParameterError, WeightsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    path = write_summary(args.summary or str(Path(args.out_bag)).rstrip("/") + ".summary.json",
                         summary)
    precision = summary["precision_at_3px"]
    print(f"[offline] {summary['messages']} Correspondences messages for {summary['frames']} "
          f"frames, {summary['matches'].get('mean', 0):.0f} matches per frame"
          + (f", precision@3px {precision:.3f}" if precision is not None else "")
          + f" -> {args.out_bag} (summary {path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
